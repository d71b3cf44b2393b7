//! `qx-publish keygen`: a minisign key pair for signing manifests.
//!
//! The secret key file never exists with wider permissions than 0600, not even briefly: it is
//! written to a temporary file created with mode 0600 in the target directory, synced, then
//! moved into place — without replacing an existing file unless `force` (an atomic link that
//! fails if the name exists, or a rename with `force`).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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

fn write_atomic(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // tempfile creates the file with O_EXCL and mode 0600.
    let mut tmp = tempfile::Builder::new()
        .prefix(".qx-keygen-")
        .tempfile_in(dir)
        .map_err(Error::io(dir))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(Error::io(tmp.path()))?;
    tmp.write_all(bytes).map_err(Error::io(path))?;
    tmp.as_file().sync_all().map_err(Error::io(path))?;
    let persisted = if force {
        tmp.persist(path).map(|_| ())
    } else {
        tmp.persist_noclobber(path).map(|_| ())
    };
    persisted.map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            Error::KeyExists {
                path: path.to_owned(),
            }
        } else {
            Error::io(path)(e.error)
        }
    })?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Generates `<dir>/<name>.key` (0600) and `<dir>/<name>.pub` (0644).
pub fn keygen(dir: &Path, name: &str, force: bool) -> Result<GeneratedKey> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
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
    write_atomic(&secret_key, kp.secret_key_file.as_bytes(), 0o600, force)?;
    write_atomic(&public_key, kp.public_key_file.as_bytes(), 0o644, force)?;
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
