//! `qx-publish keygen`: a minisign key pair for signing manifests.
//!
//! The secret key file never exists with wider permissions than 0600, not even briefly: it is
//! written through [`qx_core::fs::write_atomic_with`], whose temporary file gets its mode
//! before any byte is written, is synced, then moved into place — without replacing an
//! existing file unless `force` (an atomic link that fails if the name exists, or a rename
//! with `force`).

use std::path::{Path, PathBuf};

use qx_core::fs::{write_atomic_with, WriteOptions};
use qx_core::KeyPair;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct GeneratedKey {
    pub secret_key: PathBuf,
    pub public_key: PathBuf,
    pub key_id: String,
    /// The base64 line of the public key (what agents put in `trusted_keys`).
    pub public_key_line: String,
}

/// Writes one key file with `mode`; an existing file is [`Error::KeyExists`] unless `force`.
fn write_key(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<()> {
    let opts = WriteOptions {
        mode,
        no_clobber: !force,
    };
    write_atomic_with(path, bytes, opts).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::KeyExists {
                path: path.to_owned(),
            }
        } else {
            Error::from(e)
        }
    })
}

/// Generates `<dir>/<name>.key` (0600) and `<dir>/<name>.pub` (0644).
pub fn keygen(dir: &Path, name: &str, force: bool) -> Result<GeneratedKey> {
    qx_core::fs::create_dir_all_durable(dir)?;
    let secret_key = dir.join(format!("{name}.key"));
    let public_key = dir.join(format!("{name}.pub"));
    if !force {
        for p in [&secret_key, &public_key] {
            if std::fs::symlink_metadata(p).is_ok() {
                return Err(Error::KeyExists { path: p.clone() });
            }
        }
    }
    let kp = KeyPair::generate()?;
    write_key(&secret_key, kp.secret_key_file.as_bytes(), 0o600, force)?;
    write_key(&public_key, kp.public_key_file.as_bytes(), 0o644, force)?;
    let public_key_line = kp
        .public_key_file
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .unwrap_or_default()
        .to_owned();
    Ok(GeneratedKey {
        secret_key,
        public_key,
        key_id: kp.key_id,
        public_key_line,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn secret_key_is_0600_and_loads() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let k = keygen(tmp.path(), "k", false).expect("keygen");
        let mode = std::fs::metadata(&k.secret_key)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let sk = qx_core::SigningKey::from_file(&k.secret_key).expect("loads");
        assert_eq!(sk.key_id(), k.key_id);
    }

    #[test]
    fn refuses_to_overwrite() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = keygen(tmp.path(), "k", false).expect("keygen");
        let e = keygen(tmp.path(), "k", false).expect_err("exists");
        assert!(matches!(e, Error::KeyExists { .. }));
        let again = keygen(tmp.path(), "k", true).expect("forced");
        assert_ne!(first.key_id, again.key_id);
    }
}
