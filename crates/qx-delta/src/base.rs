//! The base of a component's delta: the component's installed content, defined once for the
//! publish tool (which reads it from an earlier release's archive) and the agent (which reads
//! it from the host).
//!
//! - a `file` component: the file's bytes;
//! - a `directory` or `migrations` component: its regular files concatenated in the byte order
//!   of their paths relative to the install path (directories, links and empty names add
//!   nothing; a link is never followed).
//!
//! Anything on the host that is not exactly what the earlier release installed gives other
//! bytes, so another SHA-256 than the delta's `from_sha256`, and the host downloads the whole
//! artifact instead.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use qx_core::manifest::ComponentKind;

/// The largest base a delta is made from or applied to: both sides hold the base in memory.
pub const MAX_BASE_BYTES: u64 = 256 << 20;

/// The base from an earlier release's archive (uncompressed tar). `None` when the archive holds
/// more than `limit` bytes of content (no delta is made from such a base).
pub fn from_archive(
    tar: impl Read,
    kind: ComponentKind,
    limit: u64,
) -> io::Result<Option<Vec<u8>>> {
    let mut archive = tar::Archive::new(tar);
    let mut files: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut total = 0u64;
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            continue;
        }
        total += entry.size();
        if total > limit {
            return Ok(None);
        }
        let name = relative_name(&entry.path()?);
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes)?;
        files.push((name, bytes));
        if kind == ComponentKind::File {
            break;
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Some(files.into_iter().flat_map(|(_, b)| b).collect()))
}

/// The base as installed at `path`. `None` when nothing of the right kind is there, or when it
/// holds more than `limit` bytes.
pub fn from_installed(path: &Path, kind: ComponentKind, limit: u64) -> io::Result<Option<Vec<u8>>> {
    match installed_files(path, kind)? {
        Some(files) => read_all(&files, limit),
        None => Ok(None),
    }
}

/// The size of the base installed at `path`, from the files' metadata (nothing is read):
/// `None` when nothing of the right kind is there.
pub fn installed_size(path: &Path, kind: ComponentKind) -> io::Result<Option<u64>> {
    let Some(files) = installed_files(path, kind)? else {
        return Ok(None);
    };
    let mut total = 0u64;
    for f in files {
        total = total.saturating_add(f.symlink_metadata()?.len());
    }
    Ok(Some(total))
}

/// The regular files that make up the base at `path`, in base order.
fn installed_files(path: &Path, kind: ComponentKind) -> io::Result<Option<Vec<PathBuf>>> {
    let Ok(meta) = path.symlink_metadata() else {
        return Ok(None);
    };
    Ok(match kind {
        ComponentKind::File if meta.is_file() => Some(vec![path.to_owned()]),
        ComponentKind::Directory | ComponentKind::Migrations if meta.is_dir() => {
            let mut found = Vec::new();
            walk(path, path, &mut found)?;
            found.sort_by(|a, b| a.0.cmp(&b.0));
            Some(found.into_iter().map(|(_, p)| p).collect())
        }
        _ => None,
    })
}

/// Reads `files` one after the other, stopping at `limit` bytes.
fn read_all(files: &[PathBuf], limit: u64) -> io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    for f in files {
        let file = File::open(f)?;
        let room = limit.saturating_sub(out.len() as u64);
        let read = file.take(room + 1).read_to_end(&mut out)?;
        if read as u64 > room {
            return Ok(None);
        }
    }
    Ok(Some(out))
}

/// The regular files under `dir` (links not followed), each with its path relative to `top`.
fn walk(top: &Path, dir: &Path, out: &mut Vec<(Vec<u8>, PathBuf)>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            walk(top, &path, out)?;
        } else if kind.is_file() {
            let rel = path.strip_prefix(top).unwrap_or(&path);
            out.push((relative_name(rel), path.clone()));
        }
    }
    Ok(())
}

/// A path as the sort key: its bytes without a leading `./`.
fn relative_name(p: &Path) -> Vec<u8> {
    let bytes = p.as_os_str().as_bytes();
    bytes.strip_prefix(b"./").unwrap_or(bytes).to_vec()
}
