//! Installing from a bundle (docs/spec.md §12): the bundle's signed channel state and manifest
//! go through exactly the checks of an online update (signature, `seq` watermark, expiry,
//! the manifest's SHA-256 against the state, the manifest's signature and rules, product and
//! channel, downgrade), and only then are the wanted artifacts extracted into staging, each
//! one's size and SHA-256 checked while it streams (`qx_core::bundle::extract_artifacts`). A
//! truncated or tampered bundle is refused before anything on the host changes.
//!
//! A bundle given as an `http(s)` URL is first downloaded into
//! `/data/updates/staging/bundles/` by the resumable downloader (a cut download resumes on the
//! next attempt or the next run), capped at `updates.max_unpacked_bytes` since no size or hash
//! is known before its signed metadata is read; then it takes exactly the path of a file. The
//! downloaded file is removed once its artifacts are extracted.

use std::path::{Path, PathBuf};

use qx_core::bundle::{extract_artifacts, read_metadata, BundleError};
use qx_core::{ArtifactRef, Manifest, Sha256, UpdateLog};

use crate::check::{self, ArtifactSource, CheckReport, ManifestSource, Verified};
use crate::download::Downloader;
use crate::{Agent, AgentError, ApplyOptions};

/// Verifies a bundle and plans its release; see the module documentation.
pub(crate) fn check(
    agent: &Agent,
    opts: &ApplyOptions,
    from: &str,
) -> Result<(CheckReport, Option<Verified>), AgentError> {
    let path = if from.starts_with("http://") || from.starts_with("https://") {
        download(agent, from)?
    } else {
        PathBuf::from(from)
    };
    let meta = read_metadata(&path)?;
    let label = path.display().to_string();
    let channel_sig = text(&path, "channel.json.minisig", meta.channel_signature)?;
    let verified = crate::channel::verify(
        agent,
        &format!("{label} (channel.json)"),
        &meta.channel,
        &channel_sig,
    )?;
    let state = &verified.state;
    let sha = Sha256::of(&meta.manifest);
    let entry = state
        .releases
        .iter()
        .find(|r| r.manifest_sha256 == sha)
        .ok_or_else(|| AgentError::ManifestMismatch {
            version: "(bundled)".into(),
            url: format!("{label} (manifest.json)"),
            expected: "one of the releases of the signed channel state".into(),
            got: sha.to_string(),
        })?;
    let installed = agent.paths().installed_versions();
    let host = crate::installed::host_version(&installed);
    let decision =
        check::decide(state, host.as_ref(), opts, Some(&entry.version))?.ok_or_else(|| {
            AgentError::NotInstallable {
                version: entry.version.to_string(),
                channel: state.channel.to_string(),
                reason: "nothing to install from the bundle".into(),
            }
        })?;
    let source = ManifestSource {
        url: format!("{label} (manifest.json)"),
        signature: text(&path, "manifest.json.minisig", meta.manifest_signature)?,
        bytes: meta.manifest,
        artifacts: ArtifactSource::Bundle(path),
    };
    check::verify_release(agent, opts, state, &decision, source)
}

/// Where a bundle downloaded from a URL is kept (partial data included, for a resumption).
fn download_dir(agent: &Agent) -> PathBuf {
    agent.paths().staging.join("bundles")
}

/// Downloads the bundle at `url` into [`download_dir`] (named after the URL's SHA-256, so a
/// resumption continues the same URL), with its progress in the agent's status.
fn download(agent: &Agent, url: &str) -> Result<PathBuf, AgentError> {
    let config = agent.config();
    let downloader = Downloader::with_tls(check::download_options(config), &config.tls)?;
    let name = format!("{}.qxb", &Sha256::of(url.as_bytes()).to_hex()[..16]);
    let status = agent.status_handle();
    let limit = (config.max_unpacked_bytes, "updates.max_unpacked_bytes");
    tracing::info!(url = %crate::download::redact_credentials(url), "downloading the bundle");
    let path = downloader.fetch_file(url, &download_dir(agent), &name, limit, &mut |p| {
        status.set_state(p.state())
    })?;
    Ok(path)
}

fn text(bundle: &Path, name: &str, bytes: Vec<u8>) -> Result<String, AgentError> {
    String::from_utf8(bytes).map_err(|_| {
        AgentError::Bundle(BundleError::Malformed {
            path: bundle.to_owned(),
            reason: format!("{name} is not a text .minisig file"),
        })
    })
}

/// Extracts the `wanted` artifacts of the verified `manifest` from the bundle into `dir`
/// (checked: size and SHA-256), after checking the file system has room for them.
pub(crate) fn extract(
    agent: &Agent,
    bundle: &Path,
    manifest: &Manifest,
    dir: &Path,
    wanted: &[ArtifactRef],
    log: &mut UpdateLog,
) -> Result<Vec<PathBuf>, AgentError> {
    std::fs::create_dir_all(dir).map_err(AgentError::io(dir))?;
    let needed: u64 = wanted.iter().map(|a| a.size_bytes).sum();
    crate::transaction::apply::ensure_space(dir, needed)?;
    log.line(&format!(
        "extract {} artifact(s) from bundle {}",
        wanted.len(),
        bundle.display()
    ));
    let paths = extract_artifacts(bundle, dir, wanted, &manifest.artifacts())?;
    log.line("bundle artifacts extracted (size and sha256 verified)");
    if bundle.parent() == Some(download_dir(agent).as_path()) {
        match std::fs::remove_file(bundle) {
            Ok(()) => log.line(&format!(
                "removed the downloaded bundle {}",
                bundle.display()
            )),
            Err(e) => log.line(&format!("cannot remove {}: {e}", bundle.display())),
        }
    }
    Ok(paths)
}
