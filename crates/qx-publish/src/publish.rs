//! `qx-publish publish`: build, lint (including the version against the server), verify,
//! upload.
//!
//! Partial releases (`--component NAME`): the manifest lists only the named components. An
//! agent applies exactly the components the newest manifest of its channel lists; components
//! it does not list stay as installed. The server keeps every older release, so each one
//! stays fetchable and verifiable on its own. `requires` still refers to any component of the
//! spec, checked by agents against what is installed.

use std::path::PathBuf;

use crate::build::{self, BuildOptions, BuiltRelease};
use crate::error::{Error, Result};
use crate::lint::{self, Finding};
use crate::spec::Spec;
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
}

#[derive(Debug)]
pub struct Published {
    pub release: BuiltRelease,
    /// None on a dry run.
    pub outcome: Option<Outcome>,
    pub warnings: Vec<Finding>,
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
    build::load_key(&opts.build.key)?;
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
    if let Some(client) = client {
        let latest = client.latest_version(spec.product.as_str(), channel.as_str());
        warnings = version_lint(opts, &version, channel.as_str(), latest, note)?;
    }

    let tmp;
    let mut build_opts = opts.build.clone();
    if build_opts.out.as_os_str().is_empty() {
        tmp = tempfile::tempdir().map_err(Error::io(std::env::temp_dir()))?;
        build_opts.out = tmp.path().join("release");
    }
    let release = build::build(&build_opts, note)?;
    warnings.extend(release.warnings.iter().cloned());
    if opts.dry_run {
        return Ok(Published {
            release,
            outcome: None,
            warnings,
        });
    }
    let Some(client) = client else {
        return Err(Error::Usage("publish needs --server URL".into()));
    };
    let outcome = upload(client, &release)?;
    Ok(Published {
        release,
        outcome: Some(outcome),
        warnings,
    })
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
        .map(|a| a.size_bytes)
        .sum();
    let progress = Progress::new(total);
    client.publish(
        &release.dir,
        &release.manifest,
        &release.manifest_bytes,
        &release.signature,
        &progress,
    )
}

/// Where a publish without `--out` builds: nowhere permanent.
pub fn no_out_dir() -> PathBuf {
    PathBuf::new()
}
