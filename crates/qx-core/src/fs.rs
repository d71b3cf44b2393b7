//! Durable file-system operations: the one home for fsync of files and directories,
//! write-temp-then-rename, durable directory creation, copies, swaps and appends, and for
//! joining a host path under a root prefix (`--root`).
//!
//! Every function names the path and the operation that failed in its [`FsError`], so callers
//! wrap it into their own error type with `From` and keep the message.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// An I/O failure on one path during one operation.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct FsError {
    /// What was being done: `"open"`, `"fsync"`, `"rename into place"`, …
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FsError {
    pub fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// The kind of the underlying I/O error (e.g. `AlreadyExists` for a refused no-clobber
    /// write, `StorageFull` for a full disk).
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

pub type Result<T, E = FsError> = std::result::Result<T, E>;

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError::new(op, path, source)
}

/// The directory holding `path` (`.` for a bare file name, `/` for `/`).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        Some(_) => Path::new("."),
        None => Path::new("/"),
    }
}

/// `root` joined with a host path: `/quantix/x` under `/tmp/r` is `/tmp/r/quantix/x`; a
/// relative path is joined as it is.
pub fn under_root(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix("/") {
        Ok(rel) => root.join(rel),
        Err(_) => root.join(path),
    }
}

/// fsync a directory, so that a create, rename or removal in it is durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(err("open directory", dir))?;
    d.sync_all().map_err(err("fsync directory", dir))
}

/// fsync the directory holding `path`.
pub fn fsync_parent(path: &Path) -> Result<()> {
    fsync_dir(parent_of(path))
}

/// fsync one regular file.
pub fn fsync_file(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(err("open", path))?;
    f.sync_all().map_err(err("fsync", path))
}

/// fsync every file and directory of a tree (symlinks and other entries are skipped).
pub fn fsync_tree(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(err("stat", path))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(err("read directory", path))? {
            let entry = entry.map_err(err("read directory", path))?;
            fsync_tree(&entry.path())?;
        }
        fsync_dir(path)
    } else if meta.is_file() {
        fsync_file(path)
    } else {
        Ok(())
    }
}

/// Create `dir` and its missing parents, fsyncing each directory that gets a new entry.
pub fn create_dir_all_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = parent_of(dir);
    if parent != dir {
        create_dir_all_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => fsync_dir(parent),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(FsError::new("create directory", dir, e)),
    }
}

/// How [`write_atomic_with`] writes.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Permission bits of the new file (default 0644). The temporary file is created 0600
    /// and changed to this mode before any byte is written, so a secret is never readable.
    pub mode: u32,
    /// Refuse to replace an existing file: the error's kind is then `AlreadyExists`.
    pub no_clobber: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            mode: 0o644,
            no_clobber: false,
        }
    }
}

/// Replace `path` with `bytes` atomically (mode 0644): see [`write_atomic_with`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, bytes, WriteOptions::default())
}

/// Replace `path` with `bytes` atomically: a temporary file (`.qx-tmp-*`, created with
/// `O_EXCL`, unique per call) in the same directory is written and fsynced, renamed over
/// `path` (or linked, with `no_clobber`), and the directory is fsynced. `path` itself is
/// never opened for writing, so a running executable can be replaced. Missing parent
/// directories are created durably.
pub fn write_atomic_with(path: &Path, bytes: &[u8], opts: WriteOptions) -> Result<()> {
    let dir = parent_of(path);
    create_dir_all_durable(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".qx-tmp-")
        .tempfile_in(dir)
        .map_err(err("create temporary file in", dir))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(opts.mode))
        .map_err(err("set permissions of", path))?;
    tmp.write_all(bytes).map_err(err("write", path))?;
    tmp.as_file().sync_all().map_err(err("fsync", path))?;
    let persisted = if opts.no_clobber {
        tmp.persist_noclobber(path).map(drop)
    } else {
        tmp.persist(path).map(drop)
    };
    persisted.map_err(|e| FsError::new("rename into place", path, e.error))?;
    fsync_dir(dir)
}

/// Append `line` and a newline to `path` (created with its directory if missing), and
/// fsync it; a new file's directory is fsynced too.
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    let dir = parent_of(path);
    create_dir_all_durable(dir)?;
    let existed = path.exists();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err("open for append", path))?;
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    f.write_all(&buf).map_err(err("append to", path))?;
    f.sync_data().map_err(err("fsync", path))?;
    if !existed {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Remove a file, a symlink or a whole tree if it exists.
pub fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(err("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(err("remove", path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FsError::new("stat", path, e)),
    }
}

/// Copy a file, symlink or tree from `src` to `dst` (which must not exist), keeping
/// permission bits, and fsync every file and directory written.
pub fn copy_durable(src: &Path, dst: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(src).map_err(err("stat", src))?;
    let mode = fs::Permissions::from_mode(meta.permissions().mode() & 0o7777);
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(src).map_err(err("read link", src))?;
        std::os::unix::fs::symlink(target, dst).map_err(err("create symlink", dst))
    } else if ft.is_dir() {
        fs::create_dir(dst).map_err(err("create directory", dst))?;
        for entry in fs::read_dir(src).map_err(err("read directory", src))? {
            let entry = entry.map_err(err("read directory", src))?;
            copy_durable(&entry.path(), &dst.join(entry.file_name()))?;
        }
        fs::set_permissions(dst, mode).map_err(err("set permissions of", dst))?;
        fsync_dir(dst)
    } else if ft.is_file() {
        let mut from = File::open(src).map_err(err("open", src))?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dst)
            .map_err(err("create", dst))?;
        io::copy(&mut from, &mut to).map_err(err("copy into", dst))?;
        to.set_permissions(mode)
            .map_err(err("set permissions of", dst))?;
        to.sync_all().map_err(err("fsync", dst))
    } else {
        let e = io::Error::other("not a regular file, directory or symlink");
        Err(FsError::new("copy", src, e))
    }
}

/// Put `temp` in place of `target` and fsync the directory: a plain rename for a file
/// (atomic, even while the old file is being executed) or a first install, and
/// `renameat2(RENAME_EXCHANGE)` for a directory that exists — the old tree then sits at
/// `temp`, for the caller to keep or remove.
pub fn swap_into_place(temp: &Path, target: &Path, is_dir: bool) -> Result<()> {
    let exists = fs::symlink_metadata(target).is_ok();
    if is_dir && exists {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        renameat_with(CWD, temp, CWD, target, RenameFlags::EXCHANGE)
            .map_err(|e| FsError::new("exchange", target, e.into()))?;
    } else {
        fs::rename(temp, target).map_err(err("rename into place", target))?;
    }
    fsync_parent(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_root_joins_absolute_and_relative_paths() {
        let root = Path::new("/tmp/r");
        assert_eq!(
            under_root(root, Path::new("/quantix/x")),
            root.join("quantix/x")
        );
        assert_eq!(under_root(root, Path::new("a/b")), root.join("a/b"));
        assert_eq!(
            under_root(Path::new("/"), Path::new("/etc")),
            Path::new("/etc")
        );
    }

    #[test]
    fn write_atomic_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub/dir/file");
        write_atomic(&p, b"one").expect("write");
        write_atomic_with(
            &p,
            b"two",
            WriteOptions {
                mode: 0o600,
                no_clobber: false,
            },
        )
        .expect("rewrite");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let mode = fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(p.parent().expect("parent"))
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".qx-tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn write_atomic_no_clobber_refuses_existing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("key");
        let opts = WriteOptions {
            mode: 0o600,
            no_clobber: true,
        };
        write_atomic_with(&p, b"first", opts).expect("first write");
        let e = write_atomic_with(&p, b"second", opts).expect_err("must refuse");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).expect("read"), b"first");
    }

    #[test]
    fn append_copy_swap_and_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log/x.log");
        append_line(&log, "a").expect("append");
        append_line(&log, "b").expect("append");
        assert_eq!(fs::read_to_string(&log).expect("read"), "a\nb\n");

        let src = dir.path().join("src");
        fs::create_dir(&src).expect("mkdir");
        fs::write(src.join("f"), "old").expect("write");
        std::os::unix::fs::symlink("f", src.join("l")).expect("symlink");
        let copy = dir.path().join("copy");
        copy_durable(&src, &copy).expect("copy");
        assert_eq!(fs::read_to_string(copy.join("l")).expect("via link"), "old");

        let new = dir.path().join("new");
        fs::create_dir(&new).expect("mkdir");
        fs::write(new.join("f"), "new").expect("write");
        swap_into_place(&new, &src, true).expect("swap");
        assert_eq!(fs::read_to_string(src.join("f")).expect("read"), "new");
        assert_eq!(fs::read_to_string(new.join("f")).expect("read"), "old");
        remove_any(&new).expect("remove");
        remove_any(&new).expect("remove twice");
        assert!(!new.exists());
        fsync_tree(dir.path()).expect("fsync tree");
    }
}
