//! The channel state on local disk (docs/spec.md §8):
//! `$RELEASE_DIR/<product>/<channel>/channel.json` and `channel.json.minisig`.
//!
//! A new state replaces both files at once, as far as anyone can see:
//! 1. under the channel's lock, an interrupted replacement is finished first ([`settle`]);
//! 2. the new signature, then the new bytes, are written durably (temp + rename + fsync) as
//!    `.channel.json.minisig.next` and `.channel.json.next` — the second is the commit point;
//! 3. the signature and then the bytes are renamed into place and the directory is fsynced.
//!
//! A crash before `.channel.json.next` exists leaves the old state (the lone signature is
//! removed); a crash after it is rolled forward by the next read or write. Readers take the
//! same lock, so no request sees a new signature beside old bytes.
//!
//! No symlink is followed: the product and channel directories must be real directories and
//! the files are opened with `O_NOFOLLOW`; a symlink there is reported as damage.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use qx_core::channel::{CHANNEL_FILE, CHANNEL_SIGNATURE_FILE};
use qx_core::fs::{create_dir_all_durable, fsync_dir, write_atomic};
use qx_core::{ChannelName, ChannelState, ProductName, UnknownFields};

use crate::storage::{PutOutcome, StoreError, StoreResult, StoredChannel};

/// The bytes of a replacement in progress.
const NEXT_FILE: &str = ".channel.json.next";
/// The signature of a replacement in progress.
const NEXT_SIGNATURE_FILE: &str = ".channel.json.minisig.next";
/// How many locks channels share (a channel's lock is chosen by hashing its names; two
/// channels on one lock only wait for each other).
const LOCK_STRIPES: usize = 64;
/// The largest stored channel state or signature read back.
const MAX_STORED_BYTES: u64 = 4 << 20;

/// The per-channel locks of one store (shared by its clones).
#[derive(Debug)]
pub(super) struct ChannelLocks {
    stripes: Vec<Mutex<()>>,
}

impl ChannelLocks {
    pub(super) fn new() -> Self {
        Self {
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Holds the lock of one product's channel. A poisoned lock is taken over: the files on
    /// disk, settled on every access, are the truth.
    pub(super) fn lock(&self, product: &ProductName, channel: &ChannelName) -> MutexGuard<'_, ()> {
        let mut h = DefaultHasher::new();
        (product.as_str(), channel.as_str()).hash(&mut h);
        let i = usize::try_from(h.finish() % LOCK_STRIPES as u64).unwrap_or(0);
        self.stripes[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The channel directory, refused if it (or the product directory) is a symlink. `None` when
/// it does not exist.
pub(super) fn channel_dir(
    root: &Path,
    product: &ProductName,
    channel: &ChannelName,
) -> StoreResult<Option<PathBuf>> {
    let product_dir = root.join(product.as_str());
    let dir = product_dir.join(channel.as_str());
    for d in [&product_dir, &dir] {
        match fs::symlink_metadata(d) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::Corrupt {
                    path: d.clone(),
                    reason: "is not a directory (a symlink is never followed)".into(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(d)(e)),
        }
    }
    Ok(Some(dir))
}

/// Reads the stored state of a channel directory (the caller holds the channel's lock).
pub(super) fn read(dir: &Path) -> StoreResult<Option<StoredChannel>> {
    settle(dir)?;
    let path = dir.join(CHANNEL_FILE);
    let Some(bytes) = read_no_follow(&path)? else {
        return Ok(None);
    };
    let sig_path = dir.join(CHANNEL_SIGNATURE_FILE);
    let signature = read_no_follow(&sig_path)?.ok_or_else(|| StoreError::Corrupt {
        path: sig_path.clone(),
        reason: format!("{CHANNEL_FILE} has no signature beside it"),
    })?;
    let state =
        ChannelState::parse(&bytes, UnknownFields::Ignore).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    Ok(Some(StoredChannel {
        bytes: Bytes::from(bytes),
        signature: Bytes::from(signature),
        state,
    }))
}

/// Compare-and-swap of a channel state in `dir` (created if missing; the caller holds the
/// channel's lock).
pub(super) fn put(
    root: &Path,
    product: &ProductName,
    channel: &ChannelName,
    seq: u64,
    bytes: &[u8],
    signature: &[u8],
) -> StoreResult<PutOutcome> {
    let dir = root.join(product.as_str()).join(channel.as_str());
    // Refuse symlinks before creating anything under them.
    channel_dir(root, product, channel)?;
    create_dir_all_durable(&dir)?;
    let dir = channel_dir(root, product, channel)?.ok_or_else(|| StoreError::Io {
        path: dir.clone(),
        source: io::Error::new(io::ErrorKind::NotFound, "vanished after being created"),
    })?;
    if let Some(outcome) = crate::storage::decide_channel_put(read(&dir)?.as_ref(), seq, bytes) {
        return Ok(outcome);
    }
    write_atomic(&dir.join(NEXT_SIGNATURE_FILE), signature)?;
    write_atomic(&dir.join(NEXT_FILE), bytes)?;
    settle(&dir)?;
    Ok(PutOutcome::Stored)
}

/// Finishes a replacement whose bytes were committed (`.channel.json.next` exists) and
/// discards one that was not (a lone `.channel.json.minisig.next`).
fn settle(dir: &Path) -> StoreResult<()> {
    let next = dir.join(NEXT_FILE);
    let next_sig = dir.join(NEXT_SIGNATURE_FILE);
    let sig_pending = is_regular_file(&next_sig)?;
    if is_regular_file(&next)? {
        if sig_pending {
            rename(&next_sig, &dir.join(CHANNEL_SIGNATURE_FILE))?;
        }
        rename(&next, &dir.join(CHANNEL_FILE))?;
        fsync_dir(dir)?;
    } else if sig_pending {
        fs::remove_file(&next_sig).map_err(StoreError::io(&next_sig))?;
        fsync_dir(dir)?;
    }
    Ok(())
}

fn rename(from: &Path, to: &Path) -> StoreResult<()> {
    fs::rename(from, to).map_err(StoreError::io(to))
}

/// True for a regular file, false when absent; anything else there is damage.
fn is_regular_file(path: &Path) -> StoreResult<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Ok(true),
        Ok(_) => Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: "is not a regular file (a symlink is never followed)".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io(path)(e)),
    }
}

/// The bytes of a regular file opened without following a symlink; `None` when absent.
fn read_no_follow(path: &Path) -> StoreResult<Option<Vec<u8>>> {
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                reason: "is a symlink; it is never followed".into(),
            })
        }
        Err(e) => return Err(StoreError::io(path)(e)),
    };
    if !file.metadata().map_err(StoreError::io(path))?.is_file() {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: "is not a regular file".into(),
        });
    }
    let mut out = Vec::new();
    file.take(MAX_STORED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(StoreError::io(path))?;
    if out.len() as u64 > MAX_STORED_BYTES {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: format!("is larger than {MAX_STORED_BYTES} bytes"),
        });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use qx_testkit::channel::state_of;
    use qx_testkit::release::{ComponentSpec, ReleaseSpec};

    fn names() -> (ProductName, ChannelName) {
        (
            ProductName::new("quantix-os").unwrap(),
            ChannelName::new("stable").unwrap(),
        )
    }

    fn state_bytes(seq: u64) -> Vec<u8> {
        let r = ReleaseSpec::new("quantix-os", "stable", "1.0.0")
            .component(ComponentSpec::file(
                "qx-node",
                "/data/bin/qx-node",
                b"x".to_vec(),
            ))
            .build()
            .unwrap();
        state_of(seq, &[&r]).unwrap().to_bytes()
    }

    #[test]
    fn put_is_a_compare_and_swap_on_seq() {
        let root = tempfile::tempdir().unwrap();
        let (p, c) = names();
        let (one, two) = (state_bytes(1), state_bytes(2));
        let put = |seq, b: &[u8]| put(root.path(), &p, &c, seq, b, b"sig").unwrap();
        assert_eq!(put(1, &one), PutOutcome::Stored);
        assert_eq!(put(1, &one), PutOutcome::Identical);
        assert_eq!(put(2, &two), PutOutcome::Stored);
        assert_eq!(put(1, &one), PutOutcome::Stale { stored_seq: 2 });
        let dir = root.path().join("quantix-os/stable");
        let stored = read(&dir).unwrap().unwrap();
        assert_eq!(
            (stored.state.seq, stored.bytes.as_ref()),
            (2, two.as_slice())
        );
    }

    #[test]
    fn a_committed_replacement_is_rolled_forward() {
        let root = tempfile::tempdir().unwrap();
        let (p, c) = names();
        put(root.path(), &p, &c, 1, &state_bytes(1), b"old sig").unwrap();
        let dir = root.path().join("quantix-os/stable");
        // A crash after the commit point, before the renames.
        let two = state_bytes(2);
        std::fs::write(dir.join(NEXT_SIGNATURE_FILE), b"new sig").unwrap();
        std::fs::write(dir.join(NEXT_FILE), &two).unwrap();
        let stored = read(&dir).unwrap().unwrap();
        assert_eq!(stored.bytes.as_ref(), two.as_slice());
        assert_eq!(stored.signature.as_ref(), b"new sig");
        assert!(!dir.join(NEXT_FILE).exists() && !dir.join(NEXT_SIGNATURE_FILE).exists());
    }

    #[test]
    fn an_uncommitted_replacement_is_discarded() {
        let root = tempfile::tempdir().unwrap();
        let (p, c) = names();
        let one = state_bytes(1);
        put(root.path(), &p, &c, 1, &one, b"old sig").unwrap();
        let dir = root.path().join("quantix-os/stable");
        // A crash before the commit point: only the new signature was written.
        std::fs::write(dir.join(NEXT_SIGNATURE_FILE), b"new sig").unwrap();
        let stored = read(&dir).unwrap().unwrap();
        assert_eq!(stored.bytes.as_ref(), one.as_slice());
        assert_eq!(stored.signature.as_ref(), b"old sig");
        assert!(!dir.join(NEXT_SIGNATURE_FILE).exists());
    }

    #[test]
    fn a_symlinked_state_file_is_refused_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("quantix-os/stable");
        std::fs::create_dir_all(&dir).unwrap();
        let elsewhere = root.path().join("elsewhere.json");
        std::fs::write(&elsewhere, state_bytes(1)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join(CHANNEL_FILE)).unwrap();
        assert!(matches!(read(&dir), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn a_symlinked_channel_directory_is_refused_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let (p, c) = names();
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::create_dir_all(root.path().join("quantix-os")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.path().join("quantix-os/stable")).unwrap();
        let res = put(root.path(), &p, &c, 1, &state_bytes(1), b"sig");
        assert!(matches!(res, Err(StoreError::Corrupt { .. })), "{res:?}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }
}
