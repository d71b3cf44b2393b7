//! Durable file operations: fsync of files and directories, write-temp-then-
//! rename, appends that reach the disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{BootError, Result};

/// fsync a directory, so that a create or rename in it is durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| BootError::io(dir, "open directory", e))?;
    rustix::fs::fsync(&d).map_err(|e| BootError::io(dir, "fsync directory", e.into()))
}

/// fsync the directory holding `path`.
pub fn fsync_parent(path: &Path) -> Result<()> {
    fsync_dir(&parent_of(path))
}

pub(crate) fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Create `dir` and its parents, fsyncing each directory that gets a new entry.
pub fn create_dir_all_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = parent_of(dir);
    if parent != dir {
        create_dir_all_durable(&parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => fsync_dir(&parent),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(BootError::io(dir, "create directory", e)),
    }
}

/// Replace `path` with `data` atomically: write a temporary file in the same
/// directory, fsync it, rename it over `path`, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = parent_of(path);
    create_dir_all_durable(&dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".qx-tmp-")
        .tempfile_in(&dir)
        .map_err(|e| BootError::io(&dir, "create temporary file", e))?;
    tmp.write_all(data)
        .map_err(|e| BootError::io(tmp.path(), "write", e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| BootError::io(tmp.path(), "fsync", e))?;
    tmp.persist(path)
        .map_err(|e| BootError::io(path, "rename into place", e.error))?;
    fsync_dir(&dir)
}

/// Append `line` (a newline is added) to `path`, creating it and its directory
/// if needed, and fsync it.
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    let dir = parent_of(path);
    create_dir_all_durable(&dir)?;
    let existed = path.exists();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| BootError::io(path, "open for append", e))?;
    let mut buf = line.as_bytes().to_vec();
    buf.push(b'\n');
    f.write_all(&buf)
        .map_err(|e| BootError::io(path, "append", e))?;
    f.sync_all().map_err(|e| BootError::io(path, "fsync", e))?;
    if !existed {
        fsync_dir(&dir)?;
    }
    Ok(())
}

/// `root` joined with an absolute host path (`/quantix/x` under `/tmp/r` is
/// `/tmp/r/quantix/x`).
pub fn under_root(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix("/") {
        Ok(rel) => root.join(rel),
        Err(_) => root.join(path),
    }
}
