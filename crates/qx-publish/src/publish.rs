//! `qx-publish publish`: build, lint (including the version against the server), verify,
//! upload, then sign the channel's new state (docs/spec.md §8).
//!
//! Releases are complete: `--component NAME` builds the named components and carries every
//! other component over from the channel's `current` release unchanged — its manifest is
//! fetched, its signature checked with the trusted keys and its SHA-256 checked against the
//! channel state; each carried component keeps its name, version, artifact, size and SHA-256.
//! The upload leaves the carried artifacts out; the server links them from the earlier
//! release. A channel without a current release has nothing to carry from, so `--component`
//! is refused there (publish every component first). The full image is never carried over:
//! it is a system image installed by its own A/B path, and a hot fix of components does not
//! re-offer it. A dry run without `--server` builds the named components only.
//!
//! After the upload, the channel state lists the release and makes it `current`
//! (`--no-current`: listed, installable on purpose, `current` unchanged).

use std::path::PathBuf;

use jiff::SignedDuration;
use qx_core::channel::ChannelState;
use qx_core::{ChannelName, Component, ComponentName, ProductName, Sha256};

use crate::build::{self, BuildOptions, BuiltRelease};
use crate::channel::{self, Committed, Signer, Update};
use crate::deltas;
use crate::error::{Error, Result};
use crate::lint::{self, Finding};
use crate::preflight;
use crate::spec::Spec;
use crate::state;
use crate::upload::{Client, Outcome, Progress};
use qx_core::Version;

#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// `out` may be empty: the release is then built in a temporary directory.
    pub build: BuildOptions,
    /// Refuse (instead of warn) when the version is not newer than the channel's.
    pub strict: bool,
    /// Build, lint and verify; upload nothing.
    pub dry_run: bool,
    /// Make the release the channel's `current` (else only list it).
    pub make_current: bool,
    /// Validity of the new channel state.
    pub lifetime: SignedDuration,
    /// Public keys trusted besides the signing key's own (`--trusted-key`).
    pub trusted_keys: Vec<PathBuf>,
    /// Start a staged rollout of the release in these waves (it is then listed, not made
    /// current), in the same signed state.
    pub waves: Option<Vec<qx_core::rollout::WaveSpec>>,
    /// The rollout's health rules (with `waves`).
    pub policy: qx_core::channel::RolloutPolicy,
    /// Make deltas from the channel's newest releases, at most this many (0: none).
    pub deltas: usize,
}

#[derive(Debug)]
pub struct Published {
    pub release: BuiltRelease,
    /// None on a dry run.
    pub outcome: Option<Outcome>,
    pub warnings: Vec<Finding>,
    /// The channel state after the publish (None on a dry run).
    pub state: Option<Committed>,
    /// The release the carried components come from.
    pub carried_from: Option<Version>,
}

/// Publishes a release. `client` is None only for a dry run without `--server`.
pub fn publish(
    opts: &PublishOptions,
    client: Option<&Client>,
    note: &mut dyn FnMut(&str),
) -> Result<Published> {
    if client.is_none() && !opts.dry_run {
        return Err(Error::Usage(
            "publish needs --server URL (or --dry-run)".into(),
        ));
    }
    // Cheap checks first, so a refusal does not wait for a long build.
    let signer = Signer::new(build::load_key(&opts.build.key)?, &opts.trusted_keys)?;
    let spec = Spec::load(&opts.build.spec)?;
    let version = opts
        .build
        .version
        .clone()
        .unwrap_or_else(|| spec.version.clone());
    let channel = opts
        .build
        .channel
        .clone()
        .unwrap_or_else(|| spec.channel.clone());
    let mut warnings = Vec::new();
    let mut build_opts = opts.build.clone();
    let mut carried_from = None;
    let mut existing = None;
    if let Some(client) = client {
        existing = preflight::check(
            client,
            spec.product.as_str(),
            &channel,
            &version,
            opts.dry_run,
        )?;
        if existing.is_some() {
            note(&format!("version {version} is on channel {channel} already: the publish goes on only if this build is byte-identical"));
        }
        let at = Target {
            client,
            signer: &signer,
            spec: &spec,
            version: &version,
            channel: &channel,
        };
        (warnings, carried_from) = read_server(opts, &at, &mut build_opts, note)?;
    } else if !opts.build.components.is_empty() {
        note("dry run without --server: only the named components are built (a published release carries the others over from the channel's current release)");
    }

    let tmp;
    if build_opts.out.as_os_str().is_empty() {
        tmp = tempfile::tempdir().map_err(Error::io(std::env::temp_dir()))?;
        build_opts.out = tmp.path().join("release");
    }
    let release = build::build(&build_opts, note)?;
    warnings.extend(release.warnings.iter().cloned());
    let client = match client {
        Some(c) if !opts.dry_run => c,
        _ => {
            return Ok(Published {
                release,
                outcome: None,
                warnings,
                state: None,
                carried_from,
            })
        }
    };
    preflight::same_as_existing(
        existing.as_ref(),
        &release.manifest_bytes,
        &version,
        &channel,
    )?;
    let outcome = upload(client, &release)?;
    let entry = channel::entry(&release.manifest, &release.manifest_bytes);
    let rollout = opts
        .waves
        .as_deref()
        .map(|w| channel::NewRollout::new(w, opts.policy.clone()))
        .transpose()?;
    let make_current = opts.make_current && rollout.is_none();
    let change = |s: &mut ChannelState| {
        state::add_release(s, &entry, make_current)?;
        match &rollout {
            Some(r) => r.apply_to(s, &entry.version),
            None => Ok(()),
        }
    };
    let update = update(client, &signer, &spec.product, &channel, opts.lifetime);
    let committed = update.apply(&change, false)?;
    Ok(Published {
        release,
        outcome: Some(outcome),
        warnings,
        state: Some(committed),
        carried_from,
    })
}

/// What a publish works against: the server, the keys, the spec, the version and channel.
struct Target<'a> {
    client: &'a Client,
    signer: &'a Signer,
    spec: &'a Spec,
    version: &'a Version,
    channel: &'a ChannelName,
}

/// What the build needs from the server, read before it: the version lint, the channel's
/// state (an untrusted one stops here, and so does a rollout that could not start), the
/// components carried over, the bases of the deltas. Returns the lint's warnings and the
/// release the carried components come from.
fn read_server(
    opts: &PublishOptions,
    at: &Target<'_>,
    build_opts: &mut BuildOptions,
    note: &mut dyn FnMut(&str),
) -> Result<(Vec<Finding>, Option<Version>)> {
    let (spec, channel) = (at.spec, at.channel);
    let latest = at
        .client
        .latest_version(spec.product.as_str(), channel.as_str());
    let warnings = version_lint(opts, at.version, channel.as_str(), latest, note)?;
    let update = update(at.client, at.signer, &spec.product, channel, opts.lifetime);
    let (_, base) = update.base()?;
    if let (Some(_), Some(running)) = (&opts.waves, &base.rollout) {
        return Err(Error::ChannelState {
            product: spec.product.to_string(),
            channel: channel.to_string(),
            message: format!(
                "the rollout {} of {} is in progress; it must end before another starts",
                running.id, running.version
            ),
        });
    }
    let mut carried_from = None;
    if !opts.build.components.is_empty() {
        build::select(spec, &opts.build.components)?;
        let (from, carried) = carry_over(at.client, at.signer, &base, &opts.build.components)?;
        note(&format!(
            "carrying {} component(s) over from {from}, the current release of channel {channel}",
            carried.len()
        ));
        build_opts.carried = carried;
        carried_from = Some(from);
    }
    if opts.deltas > 0 {
        let wanted = built_components(spec, &opts.build.components);
        let trusted = at.signer.trusted();
        build_opts.delta_bases = deltas::fetch_bases(
            at.client,
            trusted,
            &base,
            at.version,
            &wanted,
            opts.deltas,
            note,
        )?;
        if spec.full_image.is_some() && opts.build.components.is_empty() {
            build_opts.image_bases = deltas::fetch_image_bases(
                at.client,
                trusted,
                &base,
                at.version,
                opts.deltas,
                note,
            )?;
        }
    }
    Ok((warnings, carried_from))
}

/// The components a build makes: the named ones, or every one of the spec.
fn built_components(spec: &Spec, named: &[String]) -> Vec<ComponentName> {
    spec.components
        .iter()
        .map(|c| c.name.clone())
        .filter(|n| named.is_empty() || named.iter().any(|s| s == n.as_str()))
        .collect()
}

fn update<'a>(
    client: &'a Client,
    signer: &'a Signer,
    product: &ProductName,
    channel: &ChannelName,
    lifetime: SignedDuration,
) -> Update<'a> {
    Update {
        client,
        signer,
        product: product.clone(),
        channel: channel.clone(),
        lifetime,
        conflict_retries: channel::CONFLICT_RETRIES,
    }
}

/// The components of the channel's `current` release that `selected` does not rebuild, from
/// its manifest, verified by signature and by the state's SHA-256 (docs/spec.md §8).
pub fn carry_over(
    client: &Client,
    signer: &Signer,
    base: &ChannelState,
    selected: &[String],
) -> Result<(Version, Vec<Component>)> {
    let (product, channel) = (base.product.as_str(), base.channel.as_str());
    let Some(current) = base.current_release() else {
        return Err(Error::Usage(format!(
            "--component: channel {channel} has no current release to carry the other components over from; publish every component first (without --component)"
        )));
    };
    let (m, bytes, _) =
        channel::fetch_manifest(client, signer.trusted(), product, channel, &current.version)?;
    let sha = Sha256::of(&bytes);
    if sha != current.manifest_sha256 {
        return Err(Error::ChannelState {
            product: product.to_owned(),
            channel: channel.to_owned(),
            message: format!(
                "the manifest of current release {} does not match the signed state (sha256 {}, the state says {}); refusing to carry its components over",
                current.version,
                sha.short(),
                current.manifest_sha256.short()
            ),
        });
    }
    let carried = m
        .components
        .into_iter()
        .filter(|c| !selected.iter().any(|s| s == c.name.as_str()))
        .collect();
    Ok((current.version.clone(), carried))
}

/// The `version-not-newer` lint against the channel's newest version on the server (a dry
/// run goes on with a warning when the server cannot say).
fn version_lint(
    opts: &PublishOptions,
    version: &Version,
    channel: &str,
    latest: Result<Option<Version>>,
    note: &mut dyn FnMut(&str),
) -> Result<Vec<Finding>> {
    let latest = match latest {
        Ok(latest) => latest,
        Err(e) if opts.dry_run => {
            note(&format!(
                "warning: could not ask the server for the channel's versions: {e}"
            ));
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    let f = lint::version_newer(version, channel, latest.as_ref(), opts.strict);
    let warnings = lint::enforce(f.into_iter().collect())?;
    for w in &warnings {
        note(&w.to_string());
    }
    Ok(warnings)
}

/// Uploads a built release with a progress display.
fn upload(client: &Client, release: &BuiltRelease) -> Result<Outcome> {
    let total: u64 = release
        .manifest
        .artifacts()
        .iter()
        .filter(|a| !release.carried.iter().any(|c| c == a.artifact.as_str()))
        .map(|a| a.size_bytes)
        .sum();
    let progress = Progress::new(total);
    client.publish(
        &release.dir,
        &release.manifest,
        &release.manifest_bytes,
        &release.signature,
        &release.carried,
        &progress,
    )
}

/// Where a publish without `--out` builds: nowhere permanent.
pub fn no_out_dir() -> PathBuf {
    PathBuf::new()
}
