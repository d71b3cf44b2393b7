//! Check: fetch the signed channel state of our product and channel, verify it (docs/spec.md
//! §8, see [`crate::channel`]), decide what this host should run
//! ([`ChannelState::target`], or the version the operator chose), fetch that release's manifest
//! (`releases/{version}/manifest.json` and `.minisig`),
//! check its SHA-256 against the state before parsing it, verify it (docs/spec.md §2) and work
//! out what an apply would change: only the components whose version or artifact SHA-256
//! differs from what is installed.
//!
//! A server with no state for the channel (404) gets the Part-I path: the channel's manifest,
//! with replay protection by version (`/data/updates/seen.json`), so existing deployments
//! keep working; once a state was verified on the channel, a 404 is refused.
//!
//! Never touches the host except the replay watermarks, which only move forward and only after
//! a signature check.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use qx_core::api::SIGNATURE_HEADER;
use qx_core::channel::{ChannelState, ReleaseEntry, RevokeAction, Target};
use qx_core::fleet::OfferReason;
use qx_core::manifest::install_path_refusal;
use qx_core::{Component, Manifest, Sha256, SignatureError, UnknownFields, Version};
use serde::Serialize;

use crate::download::{DownloadError, DownloadOptions, Downloader};
use crate::{Agent, AgentError, ApplyOptions, Config};

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub product: String,
    pub channel: String,
    pub version: String,
    pub release_date: String,
    pub release_notes: String,
    pub update_type: String,
    /// True when an apply would change something.
    pub available: bool,
    pub changes: Vec<ComponentChange>,
    /// The `seq` of the verified channel state (none on a server without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_seq: Option<u64>,
    /// True when the installed release is revoked with `revert` and an apply goes back to
    /// `version` (docs/spec.md §8).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub revert: bool,
    /// The fleet server's offer `version` comes from (`rollout` or `pin`), when one was taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offer: Option<OfferReason>,
    /// What the check set aside and why: an offer ignored, a pin to an unlisted version, a
    /// version the server cancelled.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentChange {
    pub name: String,
    pub installed: Option<String>,
    pub offered: String,
    /// `"update"` | `"install"` | `"unchanged"` | `"downgrade"` (only with --allow-downgrade or
    /// a revert) | `"rebuilt"` (same version, other artifact bytes).
    pub action: String,
}

/// A manifest that passed every check, with the components an apply would install.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    pub key_id: String,
    /// Components to install (selected, and whose version or artifact SHA-256 differs from
    /// what is installed).
    pub to_apply: Vec<Component>,
    /// Going back to `current` from a release revoked with `revert` (history `reverted`).
    pub reverted: bool,
    /// May go below what the host runs: `--allow-downgrade` naming the release, a signed
    /// revert, or a fleet pin to a listed release (components and the system image alike).
    pub downgrade_ok: bool,
    /// Where the artifacts come from.
    pub source: ArtifactSource,
}

/// Where an apply takes the artifacts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactSource {
    /// Downloaded from the update server.
    Server,
    /// Extracted (hash-checked) from a bundle file (docs/spec.md §12).
    Bundle(std::path::PathBuf),
}

pub fn download_options(config: &Config) -> DownloadOptions {
    DownloadOptions {
        max_attempts: config.download.max_attempts,
        initial_backoff: config.download.initial_backoff,
        max_backoff: config.download.max_backoff,
        bandwidth_limit: config.bandwidth_limit,
        connect_timeout: config.download.connect_timeout,
        stall_timeout: config.download.stall_timeout,
        document_deadline: config.download.document_deadline,
        min_rate: config.download.min_rate,
        min_rate_window: config.download.min_rate_window,
        redirect_hosts: config.download.redirect_hosts.clone(),
    }
}

pub fn manifest_url(config: &Config) -> String {
    config.server().manifest(&config.product, &config.channel)
}

/// How a check runs: under the apply lock (inside an apply) or not, and whether it checked in
/// (set by [`check`]; a check that failed before its check-in is reported by the caller).
#[derive(Debug, Default)]
pub(crate) struct Turn {
    pub under_lock: bool,
    pub checked_in: bool,
}

/// Fetches and verifies what this host should install; see the module documentation. No
/// [`Verified`] when the host is up to date on a release it need not fetch again (a kept
/// revoked release, or a chosen release above `current`).
pub fn check(
    agent: &Agent,
    opts: &ApplyOptions,
    turn: &mut Turn,
) -> Result<(CheckReport, Option<Verified>), AgentError> {
    if let Some(from) = &opts.from {
        return crate::bundle::check(agent, opts, from);
    }
    let config = agent.config();
    let downloader = Downloader::with_tls(download_options(config), &config.tls)?;
    let Some(fetched) = crate::channel::fetch(config, &downloader)? else {
        let url = config
            .server()
            .channel_state(&config.product, &config.channel);
        crate::channel::refuse_if_seen(agent, &url)?;
        if let Some(v) = &opts.version {
            return Err(AgentError::NotInstallable {
                version: v.clone(),
                channel: config.channel.to_string(),
                reason: "the server publishes no signed channel state for it, so no release can be chosen".into(),
            });
        }
        return check_manifest_only(agent, opts, &downloader).map(|(r, v)| (r, Some(v)));
    };
    let verified = crate::channel::verify(agent, &fetched.url, &fetched.bytes, &fetched.signature)?;
    let state = &verified.state;
    // docs/spec.md §10: the check-in comes after the signed state is verified and before the
    // decision, which takes the server's answer only within that state.
    turn.checked_in = true;
    let answer = agent.fleet().check_in(agent);
    let host = crate::installed::host_version(&agent.paths().installed_versions());
    let mut warnings = Vec::new();
    let cancelled = answer
        .as_ref()
        .and_then(|a| a.answer.cancel.as_deref())
        .and_then(|v| cancel(agent, v, host.as_ref(), turn.under_lock));
    let decision = match answer.as_ref() {
        Some(a) if opts.version.is_none() => {
            decide_offered(agent, state, host.as_ref(), opts, a, &mut warnings)?
        }
        _ => decide(state, host.as_ref(), opts, None)?,
    };
    let decision = decision.filter(|d| match &cancelled {
        Some(c) if &d.entry.version == c && host.as_ref() != Some(c) => {
            warnings.push(format!(
                "the server cancelled {c}: it is not started in this check"
            ));
            false
        }
        _ => true,
    });
    let Some(decision) = decision else {
        let mut report = up_to_date(state, host.as_ref());
        report.warnings = warnings;
        return Ok((report, None));
    };
    let (url, bytes, signature) = fetch_release_manifest(config, &downloader, &decision.entry)?;
    let source = ManifestSource {
        url,
        bytes,
        signature,
        artifacts: ArtifactSource::Server,
    };
    let (mut report, verified) = verify_release(agent, opts, state, &decision, source)?;
    report.warnings = warnings;
    Ok((report, verified))
}

/// The decision with the check-in's answer: its offer judged within the signed state
/// ([`crate::offer`]); without an offer, or one that changes nothing, [`decide`].
fn decide_offered(
    agent: &Agent,
    state: &ChannelState,
    host: Option<&Version>,
    opts: &ApplyOptions,
    checked_in: &crate::fleet::CheckedIn,
    warnings: &mut Vec<String>,
) -> Result<Option<Decision>, AgentError> {
    let Some(offer) = &checked_in.answer.offer else {
        return decide(state, host, opts, None);
    };
    let (key, value) = qx_core::rollout::CANARY_LABEL;
    let facts = crate::offer::Facts {
        state,
        host,
        host_id: &checked_in.host_id,
        canary: agent.config().fleet.labels.get(key).map(String::as_str) == Some(value),
        server_time: &checked_in.answer.server_time,
        host_time: jiff::Timestamp::now(),
    };
    let note = |text: String, warnings: &mut Vec<String>| {
        tracing::warn!("{text}");
        warnings.push(text);
    };
    match crate::offer::judge(offer, &facts)? {
        crate::offer::Choice::Take(d) => Ok(Some(d)),
        crate::offer::Choice::Stay { warning } => {
            note(warning, warnings);
            Ok(None)
        }
        crate::offer::Choice::Follow { note: text } => {
            if let Some(text) = text {
                note(text, warnings);
            }
            decide(state, host, opts, None)
        }
    }
}

/// The server asked to cancel `version` (its rollout halted or was aborted): unless the host
/// runs it, its staged download is dropped and `cancelled` is recorded once. The version
/// cancelled, for the decision to leave out.
fn cancel(
    agent: &Agent,
    version: &str,
    host: Option<&Version>,
    under_lock: bool,
) -> Option<Version> {
    let Ok(v) = Version::parse(version.trim()) else {
        tracing::warn!(version = %crate::untrusted::printable(version), "fleet: the server cancels something that is not a version; ignored");
        return None;
    };
    if host == Some(&v) {
        tracing::info!(version = %v, "fleet: the server cancels the version this host runs; nothing to drop");
        return None;
    }
    crate::transaction::apply::drop_staged(agent, &v.to_string(), under_lock);
    agent.fleet().cancelled(&v.to_string());
    Some(v)
}

/// The Part-I path for a server without a channel state: the channel's manifest.
fn check_manifest_only(
    agent: &Agent,
    opts: &ApplyOptions,
    downloader: &Downloader,
) -> Result<(CheckReport, Verified), AgentError> {
    let config = agent.config();
    let url = manifest_url(config);
    let (bytes, headers) = downloader.get_bytes(&url).map_err(|e| match e {
        DownloadError::NotFound { url } => no_release(config, downloader, url),
        other => fetch_error(&url, other),
    })?;
    let signature = signature_header(&headers, &url)?;
    verify_manifest(agent, &url, bytes, signature, opts)
}

/// A 404 for the channel's manifest: "no release" when `<server_url>/health` is an update
/// server's, else the base path of `server_url` is wrong and the error says so.
fn no_release(config: &Config, downloader: &Downloader, url: String) -> AgentError {
    let server = config.server();
    let health = server.health();
    let detail = match downloader.get_bytes(&health) {
        Ok((body, _)) if is_health(&body) => {
            return AgentError::NoRelease {
                product: config.product.to_string(),
                channel: config.channel.to_string(),
                url,
            }
        }
        Ok(_) => "answers, but not as an update server's health check".to_owned(),
        Err(DownloadError::NotFound { .. }) => "is not found (HTTP 404) either".to_owned(),
        Err(e) => format!("failed too ({e})"),
    };
    AgentError::NotUpdateServer {
        base: config.server_url.clone(),
        health,
        detail,
    }
}

/// True for the body of an update server's `GET /health`: `{"status":"ok",…}`.
fn is_health(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v.get("status").and_then(|s| s.as_str()) == Some("ok"))
}

/// The signature in the `X-Qx-Signature` header (base64 of the `.minisig` text).
pub(crate) fn signature_header(
    headers: &reqwest::header::HeaderMap,
    url: &str,
) -> Result<String, AgentError> {
    let sig_b64 = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if sig_b64.is_empty() {
        return Err(AgentError::SignatureMissing {
            url: url.to_owned(),
        });
    }
    let sig_raw = base64::engine::general_purpose::STANDARD
        .decode(sig_b64)
        .map_err(|e| AgentError::SignatureInvalid {
            reason: format!("header X-Qx-Signature is not base64: {e}"),
        })?;
    String::from_utf8(sig_raw).map_err(|_| AgentError::SignatureInvalid {
        reason: "the signature is not a text .minisig file".into(),
    })
}

/// What the host installs: a release of the state, whether that is a revert, whether it may
/// go below what the host runs (a pin), and the server's offer it came from, if any.
#[derive(Debug, Clone)]
pub(crate) struct Decision {
    pub entry: ReleaseEntry,
    pub revert: bool,
    pub downgrade: bool,
    pub via: Option<OfferReason>,
}

impl Decision {
    pub(crate) fn new(entry: &ReleaseEntry, revert: bool) -> Decision {
        Decision {
            entry: entry.clone(),
            revert,
            downgrade: false,
            via: None,
        }
    }
}

/// docs/spec.md §8: the operator's chosen version (`--version`, or the release a bundle holds:
/// `bundled`) when listed in `releases`; else [`ChannelState::target`]. A host on `current` is
/// checked against `current` (only what differs is applied); `None` when the host is up to
/// date on another release (kept after a revocation, or chosen above `current`).
pub(crate) fn decide(
    state: &ChannelState,
    host: Option<&Version>,
    opts: &ApplyOptions,
    bundled: Option<&Version>,
) -> Result<Option<Decision>, AgentError> {
    let target = state.target(host);
    let chosen = match (&opts.version, bundled) {
        (Some(asked), Some(b)) if Version::parse(asked.trim()).ok().as_ref() != Some(b) => {
            return Err(AgentError::NotInstallable {
                version: asked.clone(),
                channel: state.channel.to_string(),
                reason: format!("the bundle holds release {b}"),
            })
        }
        (_, Some(b)) => Some(b.clone()),
        (Some(asked), None) => {
            Some(
                Version::parse(asked.trim()).map_err(|e| AgentError::NotInstallable {
                    version: asked.clone(),
                    channel: state.channel.to_string(),
                    reason: format!("not a version: {e}"),
                })?,
            )
        }
        (None, None) => None,
    };
    if let Some(v) = chosen {
        let entry = installable(state, &v)?;
        let revert = matches!(target, Target::Revert(e) if e.version == v);
        return Ok(Some(Decision::new(entry, revert)));
    }
    Ok(match target {
        Target::Update(e) => Some(Decision::new(e, false)),
        Target::Revert(e) => Some(Decision::new(e, true)),
        Target::UpToDate if host == Some(&state.current) => {
            state.current_release().map(|e| Decision::new(e, false))
        }
        Target::UpToDate => None,
    })
}

/// The release entry of `version`, or why it cannot be installed.
fn installable<'s>(
    state: &'s ChannelState,
    version: &Version,
) -> Result<&'s ReleaseEntry, AgentError> {
    if let Some(e) = state.release(version) {
        return Ok(e);
    }
    let reason = match state.revocation(version) {
        Some(RevokeAction::Revert) => "it is revoked (revert)".to_owned(),
        Some(RevokeAction::Keep) => "it is revoked (keep)".to_owned(),
        None => format!(
            "it is not listed in the signed channel state (installable: {})",
            state
                .releases
                .iter()
                .map(|r| r.version.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Err(AgentError::NotInstallable {
        version: version.to_string(),
        channel: state.channel.to_string(),
        reason,
    })
}

/// The report of a host that is up to date on a release other than `current`.
fn up_to_date(state: &ChannelState, host: Option<&Version>) -> CheckReport {
    CheckReport {
        product: state.product.to_string(),
        channel: state.channel.to_string(),
        version: host.map(|v| v.to_string()).unwrap_or_default(),
        release_date: String::new(),
        release_notes: String::new(),
        update_type: String::new(),
        available: false,
        changes: Vec::new(),
        channel_seq: Some(state.seq),
        revert: false,
        offer: None,
        warnings: Vec::new(),
    }
}

/// A failed request to the update server: a TLS failure keeps its own error (it names the
/// setting to change), anything else is "cannot fetch".
pub(crate) fn fetch_error(url: &str, e: DownloadError) -> AgentError {
    match e {
        DownloadError::Tls(t) => AgentError::Tls(t),
        other => AgentError::Fetch {
            url: url.to_owned(),
            message: crate::download::without_url(
                &other.to_string(),
                &crate::download::redact_credentials(url),
            ),
        },
    }
}

/// The manifest of a release (bytes, signature) from the server: the release's
/// `manifest.json` and `.minisig` files, so the bytes are those of the version decided on even
/// while the channel changes.
fn fetch_release_manifest(
    config: &Config,
    downloader: &Downloader,
    entry: &ReleaseEntry,
) -> Result<(String, Vec<u8>, String), AgentError> {
    let fetch = |url: &str| downloader.get_bytes(url).map_err(|e| fetch_error(url, e));
    let server = config.server();
    let file = |name: &str| server.artifact(&config.product, &entry.version, name, &config.channel);
    let url = file(qx_core::manifest::MANIFEST_FILE);
    let (bytes, _) = fetch(&url)?;
    let sig_url = file(qx_core::manifest::SIGNATURE_FILE);
    let (sig, _) = fetch(&sig_url)?;
    let signature = String::from_utf8(sig).map_err(|_| AgentError::SignatureInvalid {
        reason: format!(
            "{} is not a text .minisig file",
            crate::download::redact_credentials(&sig_url)
        ),
    })?;
    Ok((url, bytes, signature))
}

/// A release manifest as fetched (or read from a bundle), not yet trusted.
pub(crate) struct ManifestSource {
    pub url: String,
    pub bytes: Vec<u8>,
    pub signature: String,
    pub artifacts: ArtifactSource,
}

/// The manifest of the decided release: its SHA-256 against the state first (before parsing),
/// then signature, rules, identity and the plan.
pub(crate) fn verify_release(
    agent: &Agent,
    opts: &ApplyOptions,
    state: &ChannelState,
    decision: &Decision,
    source: ManifestSource,
) -> Result<(CheckReport, Option<Verified>), AgentError> {
    let entry = &decision.entry;
    let got = Sha256::of(&source.bytes);
    if got != entry.manifest_sha256 {
        return Err(AgentError::ManifestMismatch {
            version: entry.version.to_string(),
            url: source.url,
            expected: entry.manifest_sha256.to_string(),
            got: got.to_string(),
        });
    }
    let config = agent.config();
    let key_id = verify_signature(config, &source.url, &source.bytes, &source.signature)?;
    let manifest = Manifest::parse(&source.bytes, UnknownFields::Ignore)?;
    check_identity(config, &manifest)?;
    if manifest.version != entry.version {
        return Err(AgentError::ManifestMismatch {
            version: entry.version.to_string(),
            url: source.url,
            expected: format!("a manifest of {}", entry.version),
            got: format!("a manifest of {}", manifest.version),
        });
    }
    let downgrade_ok = decision.revert || decision.downgrade || downgrade_allowed(opts, &manifest)?;
    let (mut report, mut verified) = plan(PlanRequest {
        agent,
        manifest,
        key_id,
        opts,
        downgrade_ok,
    })?;
    report.channel_seq = Some(state.seq);
    report.revert = decision.revert;
    report.offer = decision.via;
    verified.reverted = decision.revert;
    verified.source = source.artifacts;
    Ok((report, Some(verified)))
}

/// Every check of docs/spec.md §2 on manifest bytes and their signature, in order: signature,
/// manifest rules, expiry, product, channel, replay (then seen.json moves forward), downgrade,
/// min_version, requires.
pub fn verify_manifest(
    agent: &Agent,
    url: &str,
    bytes: Vec<u8>,
    signature: String,
    opts: &ApplyOptions,
) -> Result<(CheckReport, Verified), AgentError> {
    let config = agent.config();
    let key_id = verify_signature(config, url, &bytes, &signature)?;
    let manifest = Manifest::parse(&bytes, UnknownFields::Ignore)?;
    check_identity(config, &manifest)?;
    let downgrade_ok = downgrade_allowed(opts, &manifest)?;
    check_replay(agent, &manifest, downgrade_ok)?;
    plan(PlanRequest {
        agent,
        manifest,
        key_id,
        opts,
        downgrade_ok,
    })
}

/// The signature against the trusted keys; the id of the key that signed.
pub(crate) fn verify_signature(
    config: &Config,
    url: &str,
    bytes: &[u8],
    signature: &str,
) -> Result<String, AgentError> {
    config
        .trusted_keys
        .verify(bytes, signature)
        .map_err(|e| match e {
            SignatureError::Missing => AgentError::SignatureMissing {
                url: url.to_owned(),
            },
            SignatureError::UntrustedKey { key_id, trusted } => {
                AgentError::UntrustedKey { key_id, trusted }
            }
            other => AgentError::SignatureInvalid {
                reason: other.to_string(),
            },
        })
}

/// Not expired, and for this host's product and channel.
fn check_identity(config: &Config, manifest: &Manifest) -> Result<(), AgentError> {
    if manifest.is_expired(jiff::Timestamp::now()) {
        return Err(AgentError::Expired {
            version: manifest.version.to_string(),
            expires: manifest.expires.to_string(),
        });
    }
    if manifest.product != config.product {
        return Err(AgentError::WrongProduct {
            expected: config.product.to_string(),
            got: manifest.product.to_string(),
        });
    }
    if manifest.channel != config.channel {
        return Err(AgentError::WrongChannel {
            expected: config.channel.to_string(),
            got: manifest.channel.to_string(),
        });
    }
    Ok(())
}

/// True when `--allow-downgrade` names the offered version; an error when it names another.
fn downgrade_allowed(opts: &ApplyOptions, manifest: &Manifest) -> Result<bool, AgentError> {
    let Some(asked) = &opts.allow_downgrade else {
        return Ok(false);
    };
    if Version::parse(asked.trim()).is_ok_and(|v| v == manifest.version) {
        Ok(true)
    } else {
        Err(AgentError::DowngradeMismatch {
            asked: asked.clone(),
            offered: manifest.version.to_string(),
        })
    }
}

/// Replay protection: never go back below the newest manifest seen on this channel; a newer
/// one is recorded in `seen.json`.
fn check_replay(agent: &Agent, manifest: &Manifest, downgrade_ok: bool) -> Result<(), AgentError> {
    let config = agent.config();
    let seen_path = &agent.paths().seen;
    let mut seen = read_seen(seen_path);
    let prev = seen
        .get(config.channel.as_str())
        .and_then(|p| Version::parse(p).ok().map(|v| (p.clone(), v)));
    if let Some((prev, prev_v)) = prev {
        if manifest.version < prev_v && !downgrade_ok {
            return Err(AgentError::Replay {
                channel: config.channel.to_string(),
                seen: prev,
                offered: manifest.version.to_string(),
            });
        }
        if manifest.version <= prev_v {
            // Nothing to record.
            return Ok(());
        }
    }
    seen.insert(config.channel.to_string(), manifest.version.to_string());
    write_seen(seen_path, &seen)
}

/// What [`plan`] works from: a manifest that passed the signature, identity and replay checks.
struct PlanRequest<'a> {
    agent: &'a Agent,
    manifest: Manifest,
    key_id: String,
    opts: &'a ApplyOptions,
    downgrade_ok: bool,
}

/// What an apply would change: the selected components against the installed versions, with
/// the release's min_version and every component's requirements checked.
fn plan(req: PlanRequest<'_>) -> Result<(CheckReport, Verified), AgentError> {
    let manifest = &req.manifest;
    let paths = req.agent.paths();
    let installed = paths.installed_versions();
    let selected = select_components(manifest, req.opts)?;
    check_min_version(manifest, &installed, req.downgrade_ok)?;
    let recorded = |name: &str| crate::installed::artifact_sha(paths, name);
    let (changes, to_apply) = compare(&selected, &installed, &recorded, req.downgrade_ok)?;
    check_install_paths(req.agent.config(), &to_apply)?;
    check_requirements(&to_apply, &installed)?;
    let report = CheckReport {
        product: manifest.product.to_string(),
        channel: manifest.channel.to_string(),
        version: manifest.version.to_string(),
        release_date: manifest.release_date.to_string(),
        release_notes: manifest.release_notes.clone(),
        update_type: serde_json::to_value(manifest.update_type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        available: !to_apply.is_empty(),
        changes,
        channel_seq: None,
        revert: false,
        offer: None,
        warnings: Vec::new(),
    };
    Ok((
        report,
        Verified {
            manifest: req.manifest,
            key_id: req.key_id,
            to_apply,
            reverted: false,
            downgrade_ok: req.downgrade_ok,
            source: ArtifactSource::Server,
        },
    ))
}

/// Every component to install goes to a path this host accepts: no denied system directory
/// unless `updates.allow_install_paths` allows it, never the agent's own paths.
fn check_install_paths(config: &Config, to_apply: &[Component]) -> Result<(), AgentError> {
    let allowed = &config.allow_install_paths;
    match to_apply
        .iter()
        .find_map(|c| Some((c, install_path_refusal(&c.install_path, allowed)?)))
    {
        Some((c, reason)) => Err(AgentError::InstallPathRefused {
            component: c.name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The components the operator asked for (`--component`), each once; all when none.
fn select_components<'m>(
    manifest: &'m Manifest,
    opts: &ApplyOptions,
) -> Result<Vec<&'m Component>, AgentError> {
    let names = match &opts.components {
        Some(names) if !names.is_empty() => names,
        _ => return Ok(manifest.components.iter().collect()),
    };
    let mut out: Vec<&Component> = Vec::new();
    for n in names {
        let c = manifest
            .component(n)
            .ok_or_else(|| AgentError::UnknownComponent {
                name: n.clone(),
                version: manifest.version.to_string(),
                available: manifest
                    .components
                    .iter()
                    .map(|c| c.name.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        if !out.iter().any(|o| o.name == c.name) {
            out.push(c);
        }
    }
    Ok(out)
}

/// The host's version (the newest release any of its components is at) must not be below
/// the release's `min_version`.
fn check_min_version(
    manifest: &Manifest,
    installed: &BTreeMap<String, String>,
    downgrade_ok: bool,
) -> Result<(), AgentError> {
    let Some(min) = &manifest.min_version else {
        return Ok(());
    };
    let host = installed
        .values()
        .filter_map(|v| Version::parse(v).ok())
        .max();
    match host {
        Some(host) if &host < min && !downgrade_ok => Err(AgentError::BelowMinVersion {
            installed: host.to_string(),
            min_version: min.to_string(),
            version: manifest.version.to_string(),
        }),
        _ => Ok(()),
    }
}

fn installed_version(installed: &BTreeMap<String, String>, name: &str) -> Option<Version> {
    installed.get(name).and_then(|v| Version::parse(v).ok())
}

/// Installed against offered, per selected component: the report's changes and the
/// components to install (a downgrade only with `downgrade_ok`). A component at the offered
/// version is installed again only when the artifact SHA-256 recorded for that version
/// (`recorded`) differs from the manifest's.
fn compare(
    selected: &[&Component],
    installed: &BTreeMap<String, String>,
    recorded: &dyn Fn(&str) -> Option<(String, Sha256)>,
    downgrade_ok: bool,
) -> Result<(Vec<ComponentChange>, Vec<Component>), AgentError> {
    let mut changes = Vec::new();
    let mut to_apply = Vec::new();
    for c in selected {
        let inst = installed.get(c.name.as_str()).cloned();
        let rebuilt = || {
            recorded(c.name.as_str()).is_some_and(|(v, sha)| {
                Version::parse(&v).is_ok_and(|v| v == c.version) && sha != c.sha256
            })
        };
        let action = match installed_version(installed, c.name.as_str()) {
            None if inst.is_none() => "install",
            None => "update",
            Some(v) if v < c.version => "update",
            Some(v) if v == c.version && rebuilt() => "rebuilt",
            Some(v) if v == c.version => "unchanged",
            Some(_) if downgrade_ok => "downgrade",
            Some(v) => {
                return Err(AgentError::Downgrade {
                    component: c.name.to_string(),
                    installed: v.to_string(),
                    offered: c.version.to_string(),
                })
            }
        };
        if action != "unchanged" {
            to_apply.push((*c).clone());
        }
        changes.push(ComponentChange {
            name: c.name.to_string(),
            installed: inst,
            offered: c.version.to_string(),
            action: action.into(),
        });
    }
    Ok((changes, to_apply))
}

/// Prerequisites: met by this apply or by what is installed.
fn check_requirements(
    to_apply: &[Component],
    installed: &BTreeMap<String, String>,
) -> Result<(), AgentError> {
    for c in to_apply {
        for r in &c.requires {
            let in_apply = to_apply
                .iter()
                .any(|o| o.name == r.name && o.version >= r.min_version);
            let installed_ok =
                installed_version(installed, r.name.as_str()).is_some_and(|v| v >= r.min_version);
            if !in_apply && !installed_ok {
                return Err(AgentError::UnmetRequirement {
                    component: c.name.to_string(),
                    requires: r.name.to_string(),
                    min_version: r.min_version.to_string(),
                    installed: installed.get(r.name.as_str()).cloned(),
                });
            }
        }
    }
    Ok(())
}

fn read_seen(path: &Path) -> BTreeMap<String, String> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_seen(path: &Path, seen: &BTreeMap<String, String>) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec_pretty(seen).map_err(|e| AgentError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    Ok(qx_core::fs::write_atomic(path, &bytes)?)
}

impl CheckReport {
    /// Human text: one line per component, installed → offered; what came from the server
    /// (the release notes) with its control characters escaped.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} {} on channel {} (released {})\n",
            self.product, self.version, self.channel, self.release_date
        );
        for c in &self.changes {
            out.push_str(&format!(
                "  {:<24} {:>12} -> {:<12} {}\n",
                c.name,
                c.installed.as_deref().unwrap_or("(none)"),
                c.offered,
                c.action
            ));
        }
        if !self.release_notes.is_empty() {
            out.push_str(&format!(
                "\nRelease notes:\n{}\n",
                crate::untrusted::printable(&self.release_notes)
            ));
        }
        if self.revert {
            out.push_str(&format!(
                "\nThe installed release is revoked (revert): an apply goes back to {}.\n",
                self.version
            ));
        }
        out.push_str(match (self.available, self.revert) {
            (true, true) => "\nRun `qx-update apply` to go back.\n",
            (true, false) => "\nAn update is available: run `qx-update apply`.\n",
            (false, _) => "\nThis host is up to date.\n",
        });
        out
    }
}
