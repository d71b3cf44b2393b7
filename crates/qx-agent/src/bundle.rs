//! Installing from a bundle (docs/spec.md §12): the bundle's signed channel state and manifest
//! go through exactly the checks of an online update (signature, `seq` watermark, expiry,
//! the manifest's SHA-256 against the state, the manifest's signature and rules, product and
//! channel, downgrade), and only then are the wanted artifacts extracted into staging, each
//! one's size and SHA-256 checked while it streams (`qx_core::bundle::extract_artifacts`). A
//! truncated or tampered bundle is refused before anything on the host changes.

use std::path::{Path, PathBuf};

use qx_core::bundle::{extract_artifacts, read_metadata, BundleError};
use qx_core::{ArtifactRef, Manifest, Sha256, UpdateLog};

use crate::check::{self, ArtifactSource, CheckReport, ManifestSource, Verified};
use crate::download::free_space;
use crate::{Agent, AgentError, ApplyOptions};

/// Verifies a bundle and plans its release; see the module documentation.
pub(crate) fn check(
    agent: &Agent,
    opts: &ApplyOptions,
    from: &str,
) -> Result<(CheckReport, Option<Verified>), AgentError> {
    let path = PathBuf::from(from);
    if from.starts_with("http://") || from.starts_with("https://") {
        return Err(AgentError::Bundle(BundleError::Malformed {
            path,
            reason: "installing a bundle from a URL is not supported by this agent yet; download it and pass the file to --from".into(),
        }));
    }
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
    bundle: &Path,
    manifest: &Manifest,
    dir: &Path,
    wanted: &[ArtifactRef],
    log: &mut UpdateLog,
) -> Result<Vec<PathBuf>, AgentError> {
    std::fs::create_dir_all(dir).map_err(AgentError::io(dir))?;
    let needed: u64 = wanted.iter().map(|a| a.size_bytes).sum();
    let available = free_space(dir).map_err(AgentError::io(dir))?;
    if available < needed {
        return Err(AgentError::NoSpace {
            path: dir.to_owned(),
            needed,
            available,
        });
    }
    log.line(&format!(
        "extract {} artifact(s) from bundle {}",
        wanted.len(),
        bundle.display()
    ));
    let paths = extract_artifacts(bundle, dir, wanted, &manifest.artifacts())?;
    log.line("bundle artifacts extracted (size and sha256 verified)");
    Ok(paths)
}
