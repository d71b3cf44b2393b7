//! Opening files inside the release directory without ever following a symlink
//! (docs/spec.md §14): every path below `RELEASE_DIR` is resolved by the kernel with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from the release directory itself, so a
//! link anywhere on the way (product, channel, version directory or the file) is refused, not
//! followed. `RELEASE_DIR` may itself be reached through a symlink: operators do that.
//! On a kernel without `openat2` each directory on the way is checked with `lstat` and the
//! file is opened with `O_NOFOLLOW`.

use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::storage::{StoreError, StoreResult};

/// The reason given for a refused link.
pub(super) const LINK_REFUSED: &str = "is or passes through a symlink, which the server never follows; replace it with the real directory or file";

/// Opens `rel` (a relative path below `root`) read-only without following any symlink.
/// `Ok(None)` when it does not exist; a link on the way or a non-regular file is damage.
pub(super) fn open_file(root: &Path, rel: &Path) -> StoreResult<Option<fs::File>> {
    let path = root.join(rel);
    let file = match open_beneath(root, rel) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if is_link_refusal(&e) => {
            return Err(StoreError::Corrupt {
                path,
                reason: LINK_REFUSED.into(),
            })
        }
        Err(e) => return Err(StoreError::io(path)(e)),
    };
    if !file.metadata().map_err(StoreError::io(&path))?.is_file() {
        return Err(StoreError::Corrupt {
            path,
            reason: "is not a regular file".into(),
        });
    }
    Ok(Some(file))
}

/// True for the errors a refused link gives: `ELOOP` (a symlink with `RESOLVE_NO_SYMLINKS`
/// or `O_NOFOLLOW`) and `EXDEV` (an escape with `RESOLVE_BENEATH`).
fn is_link_refusal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(c) if c == Errno::LOOP.raw_os_error() || c == Errno::XDEV.raw_os_error())
}

fn open_beneath(root: &Path, rel: &Path) -> io::Result<fs::File> {
    let dir = fs::File::open(root)?;
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    match rustix::fs::openat2(
        &dir,
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    ) {
        Ok(fd) => Ok(fs::File::from(fd)),
        Err(Errno::NOSYS) => open_checked(root, rel, flags),
        Err(e) => Err(e.into()),
    }
}

/// The fallback: `lstat` each directory on the way, then open with `O_NOFOLLOW`.
fn open_checked(root: &Path, rel: &Path, flags: OFlags) -> io::Result<fs::File> {
    let mut at = PathBuf::from(root);
    let mut parts = rel.components().peekable();
    while let Some(part) = parts.next() {
        at.push(part);
        if parts.peek().is_some() && !fs::symlink_metadata(&at)?.is_dir() {
            return Err(Errno::LOOP.into());
        }
    }
    fs::OpenOptions::new()
        .read(true)
        .custom_flags((flags & !OFlags::RDONLY & !OFlags::CLOEXEC).bits() as i32)
        .open(&at)
}

/// Checks that `path` is a real directory (not a symlink). `Ok(false)` when it does not exist.
pub(super) fn is_real_dir(path: &Path) -> StoreResult<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(m) if m.file_type().is_symlink() => Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: LINK_REFUSED.into(),
        }),
        Ok(_) => Err(StoreError::Corrupt {
            path: path.to_owned(),
            reason: "is not a directory".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fallback_refuses_a_linked_directory_on_the_way() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("d")).unwrap();
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW;
        let err = open_checked(root.path(), Path::new("d/f"), flags).unwrap_err();
        assert!(is_link_refusal(&err), "{err}");
        std::fs::create_dir(root.path().join("e")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), root.path().join("e/f")).unwrap();
        let err = open_checked(root.path(), Path::new("e/f"), flags).unwrap_err();
        assert!(is_link_refusal(&err), "{err}");
    }
}
