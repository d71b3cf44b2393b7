//! What is installed, per component: the version file (`/data/versions/<component>`) and,
//! beside it, the SHA-256 of the artifact that installed it
//! (`/data/versions/.artifacts/<component>`: `<version> <sha256>`), so that an apply updates
//! only the components whose version or bytes changed (docs/spec.md §8, complete releases).
//! A record is trusted only for the version it names: after a rollback the version file
//! changes and the stale record is ignored.

use std::collections::BTreeMap;

use qx_core::{Sha256, Version};

use crate::{AgentError, HostPaths};

/// The artifact SHA-256 recorded for `component`, if any, with the version it was recorded for.
pub fn artifact_sha(paths: &HostPaths, component: &str) -> Option<(String, Sha256)> {
    let text = std::fs::read_to_string(paths.artifacts.join(component)).ok()?;
    let (version, hex) = text.trim().split_once(' ')?;
    Some((version.to_owned(), hex.trim().parse::<Sha256>().ok()?))
}

/// Records the artifact SHA-256 of an installed component (durably).
pub fn record_artifact_sha(
    paths: &HostPaths,
    component: &str,
    version: &str,
    sha256: &Sha256,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&paths.artifacts).map_err(AgentError::io(&paths.artifacts))?;
    qx_core::fs::write_atomic(
        &paths.artifacts.join(component),
        format!("{version} {sha256}\n").as_bytes(),
    )?;
    Ok(())
}

/// The host's release: the highest version any component is at (docs/spec.md §14).
pub fn host_version(installed: &BTreeMap<String, String>) -> Option<Version> {
    installed
        .values()
        .filter_map(|v| Version::parse(v).ok())
        .max()
}
