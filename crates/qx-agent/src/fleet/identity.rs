//! The host's fleet identity, `/data/updates/identity.json` (mode 0600, durable write): the
//! `host_id` and `host_token` the server gave at enrollment, the server it is for, and, once
//! the server answered 401 to it, when the host found out it was decommissioned.
//!
//! Before it enrolls, the host keeps an enrollment key beside it
//! (`/data/updates/enrollment-key.json`, mode 0600): the same key is sent until the identity
//! is kept, so an enrollment whose answer was lost (a crash, a broken connection) is answered
//! again with the same host instead of enrolling it twice. The key is removed once the
//! identity is kept.

use std::path::Path;

use qx_core::fleet::Identity;
use qx_core::fs::{write_atomic_with, WriteOptions};
use serde::{Deserialize, Serialize};

use super::FleetError;

/// What the agent keeps: the server's answer to the enrollment, and the decommissioning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredIdentity {
    #[serde(flatten)]
    pub identity: Identity,
    /// When the server refused the host token (401): the host was decommissioned (or its
    /// token revoked). Reporting stops; the host is not enrolled again by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decommissioned_at: Option<String>,
}

impl StoredIdentity {
    /// Issued by the server at `server_url` (an identity without a server is taken to be for
    /// the configured one).
    pub fn is_for(&self, server_url: &str) -> bool {
        self.identity
            .server_url
            .as_deref()
            .is_none_or(|s| s.trim_end_matches('/') == server_url)
    }
}

/// The identity file, when there is one.
pub fn load(path: &Path) -> Result<Option<StoredIdentity>, FleetError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(FleetError::Identity {
                path: path.to_owned(),
                message: e.to_string(),
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| FleetError::Identity {
            path: path.to_owned(),
            message: format!("not an identity file: {e}"),
        })
}

/// Writes the identity file: mode 0600 from its first byte, fsynced, renamed into place.
pub fn store(path: &Path, identity: &StoredIdentity) -> Result<(), FleetError> {
    write_private(path, identity)
}

/// `value` as JSON at `path`: mode 0600 from its first byte, fsynced, renamed into place.
fn write_private(path: &Path, value: &impl Serialize) -> Result<(), FleetError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| FleetError::Identity {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    write_atomic_with(
        path,
        &bytes,
        WriteOptions {
            mode: 0o600,
            no_clobber: false,
        },
    )?;
    Ok(())
}

/// The enrollment key kept until the identity is: for one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PendingKey {
    server_url: String,
    key: String,
}

/// The enrollment key file beside the identity file.
pub fn key_path(identity_path: &Path) -> std::path::PathBuf {
    identity_path.with_file_name("enrollment-key.json")
}

/// The key to enroll with at `server_url`: the one kept for it, or a new one kept durably
/// before it is returned (a key kept for another server is replaced; an unreadable file too).
pub fn enrollment_key(identity_path: &Path, server_url: &str) -> Result<String, FleetError> {
    let path = key_path(identity_path);
    let kept = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<PendingKey>(&b).ok())
        .filter(|k| k.server_url == server_url);
    if let Some(k) = kept {
        return Ok(k.key);
    }
    let pending = PendingKey {
        server_url: server_url.to_owned(),
        key: qx_core::fleet::new_secret(),
    };
    write_private(&path, &pending)?;
    Ok(pending.key)
}

/// Writes `identity`, then removes the enrollment key it no longer needs.
pub fn store_enrolled(path: &Path, identity: &StoredIdentity) -> Result<(), FleetError> {
    store(path, identity)?;
    qx_core::fs::remove_any(&key_path(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data/updates/identity.json");
        assert_eq!(load(&path).expect("load"), None);
        let id = StoredIdentity {
            identity: Identity {
                host_id: "h1".into(),
                host_token: "secret".into(),
                product: "quantix-os".into(),
                server_url: Some("http://127.0.0.1:9000/".into()),
            },
            decommissioned_at: None,
        };
        store(&path, &id).expect("store");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = load(&path).expect("load").expect("some");
        assert_eq!(back, id);
        assert!(back.is_for("http://127.0.0.1:9000"));
        assert!(!back.is_for("http://127.0.0.1:9001"));
        std::fs::write(&path, "{").expect("write");
        let err = load(&path).expect_err("torn").to_string();
        assert!(err.contains("identity.json"), "{err}");
    }

    #[test]
    fn the_enrollment_key_is_kept_until_the_identity_is() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("identity.json");
        let a = enrollment_key(&path, "http://a").expect("key");
        assert_eq!(a.len(), 43);
        let mode = std::fs::metadata(key_path(&path))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(enrollment_key(&path, "http://a").expect("again"), a, "kept");
        let b = enrollment_key(&path, "http://b").expect("other server");
        assert_ne!(a, b, "a key is for one server");
        let id = StoredIdentity {
            identity: Identity {
                host_id: "h1".into(),
                host_token: "secret".into(),
                product: "quantix-os".into(),
                server_url: Some("http://b".into()),
            },
            decommissioned_at: None,
        };
        store_enrolled(&path, &id).expect("store");
        assert!(
            !key_path(&path).exists(),
            "removed once the identity is kept"
        );
        assert_ne!(enrollment_key(&path, "http://b").expect("new"), b);
    }
}
