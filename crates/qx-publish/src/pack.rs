//! Reproducible `tar.zst` archives: the same input gives the same bytes.
//!
//! Entries are sorted by name, every mtime is the same fixed instant, owner and group are
//! 0 with empty names, modes come from the files (group/other write and set-id bits dropped)
//! or from the component's `permissions`. Headers are GNU tar headers (long names use GNU
//! long-name entries), which GNU tar and every common tar reader read. Compression is zstd,
//! multi-threaded; zstd's multi-threaded output does not depend on the number of threads.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component as PathComponent, Path, PathBuf};

use qx_core::{Sha256, Sha256Hasher};

use crate::error::{Error, Result};

/// The zstd level used unless `--level` says otherwise.
pub const DEFAULT_LEVEL: i32 = 10;

#[derive(Debug, Clone, Copy)]
pub struct PackOptions {
    /// Modification time stamped on every entry (seconds since the epoch).
    pub mtime: u64,
    /// zstd compression level (1..=22).
    pub level: i32,
    /// zstd worker threads (at least 1).
    pub threads: u32,
}

impl PackOptions {
    /// Options from the environment: `SOURCE_DATE_EPOCH` for the mtime (else 0), one zstd
    /// worker per CPU.
    pub fn from_env(level: i32) -> Result<Self> {
        let mtime = source_date_epoch()?.unwrap_or(0);
        let threads = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Ok(Self {
            mtime,
            level,
            threads,
        })
    }
}

/// `SOURCE_DATE_EPOCH` (seconds since 1970), when set: the one time of a reproducible build.
pub fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
            Error::Usage(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970"
            ))
        }),
        Err(_) => Ok(None),
    }
}

/// A written artifact: where, its SHA-256 and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub path: PathBuf,
    pub sha256: Sha256,
    pub size: u64,
}

/// A writer that hashes what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl HashingWriter<BufWriter<File>> {
    /// Creates `out` (must not exist), to be written through the hasher.
    fn create(out: &Path) -> Result<Self> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(out)
            .map_err(Error::io(out))?;
        Ok(Self {
            inner: BufWriter::new(file),
            hasher: Sha256Hasher::new(),
        })
    }

    /// Flushes and fsyncs `out`; the written artifact with its SHA-256 and size.
    fn finish(mut self, out: &Path) -> Result<Packed> {
        self.flush().map_err(Error::io(out))?;
        let file = self
            .inner
            .into_inner()
            .map_err(|e| Error::io(out)(e.into_error()))?;
        file.sync_all().map_err(Error::io(out))?;
        let (sha256, size) = self.hasher.finish();
        Ok(Packed {
            path: out.to_owned(),
            sha256,
            size,
        })
    }
}

/// Mode bits kept from a source file: no group/other write, no set-id or sticky bits.
pub fn normalise_mode(mode: u32) -> u32 {
    mode & 0o755
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Creates `out` (must not exist) and writes a tar.zst into it through `fill`.
fn write_archive(
    out: &Path,
    opts: &PackOptions,
    fill: impl FnOnce(
        &mut tar::Builder<zstd::Encoder<'static, HashingWriter<BufWriter<File>>>>,
    ) -> Result<()>,
) -> Result<Packed> {
    let hashing = HashingWriter::create(out)?;
    let mut encoder = zstd::Encoder::new(hashing, opts.level).map_err(Error::io(out))?;
    encoder
        .multithread(opts.threads.max(1))
        .map_err(Error::io(out))?;
    encoder.include_checksum(true).map_err(Error::io(out))?;
    let mut builder = tar::Builder::new(encoder);
    builder.mode(tar::HeaderMode::Deterministic);
    fill(&mut builder)?;
    let encoder = builder.into_inner().map_err(Error::io(out))?;
    let hashing = encoder.finish().map_err(Error::io(out))?;
    hashing.finish(out)
}

/// Packs one regular file as the archive's only entry, named `entry_name`, with `mode`
/// (or the file's own mode, normalised).
pub fn pack_file(
    src: &Path,
    entry_name: &str,
    mode: Option<u32>,
    out: &Path,
    opts: &PackOptions,
) -> Result<Packed> {
    let meta = std::fs::metadata(src).map_err(Error::io(src))?;
    if !meta.is_file() {
        return Err(Error::Archive {
            path: src.to_owned(),
            message: "is not a regular file".into(),
        });
    }
    let mode = mode.unwrap_or_else(|| normalise_mode(meta.permissions().mode()));
    write_archive(out, opts, |b| {
        let f = File::open(src).map_err(Error::io(src))?;
        let mut h = header(tar::EntryType::Regular, mode, meta.len(), opts.mtime);
        b.append_data(&mut h, entry_name, f).map_err(Error::io(src))
    })
}

/// Packs a directory tree: its entries relative to `src`, sorted, directories included.
/// Symbolic links are kept when they stay inside the tree; other special files are refused.
pub fn pack_dir(src: &Path, out: &Path, opts: &PackOptions) -> Result<Packed> {
    let meta = std::fs::metadata(src).map_err(Error::io(src))?;
    if !meta.is_dir() {
        return Err(Error::Archive {
            path: src.to_owned(),
            message: "is not a directory".into(),
        });
    }
    let mut entries = Vec::new();
    for entry in walkdir::WalkDir::new(src)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| Error::Archive {
            path: e.path().unwrap_or(src).to_owned(),
            message: e.to_string(),
        })?;
        entries.push(entry);
    }
    write_archive(out, opts, |b| {
        for entry in entries {
            let path = entry.path();
            let rel = path.strip_prefix(src).map_err(|_| Error::Archive {
                path: path.to_owned(),
                message: "is outside the packed directory".into(),
            })?;
            let mut name = rel
                .to_str()
                .ok_or_else(|| Error::Archive {
                    path: path.to_owned(),
                    message: "file name is not UTF-8".into(),
                })?
                .to_owned();
            let meta = std::fs::symlink_metadata(path).map_err(Error::io(path))?;
            let ft = meta.file_type();
            let mode = normalise_mode(meta.permissions().mode());
            if ft.is_dir() {
                name.push('/');
                let mut h = header(tar::EntryType::Directory, mode, 0, opts.mtime);
                b.append_data(&mut h, &name, io::empty())
                    .map_err(Error::io(path))?;
            } else if ft.is_file() {
                let f = File::open(path).map_err(Error::io(path))?;
                let mut h = header(tar::EntryType::Regular, mode, meta.len(), opts.mtime);
                b.append_data(&mut h, &name, f).map_err(Error::io(path))?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(path).map_err(Error::io(path))?;
                if !link_stays_inside(rel, &target) {
                    return Err(Error::Archive {
                        path: path.to_owned(),
                        message: format!(
                            "symbolic link to {} points outside the directory; agents refuse such links",
                            target.display()
                        ),
                    });
                }
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, opts.mtime);
                b.append_link(&mut h, &name, &target)
                    .map_err(Error::io(path))?;
            } else {
                return Err(Error::Archive {
                    path: path.to_owned(),
                    message: "is a device, socket or FIFO; only files, directories and links can be released".into(),
                });
            }
        }
        Ok(())
    })
}

/// True when a link at relative path `at` pointing to `target` stays inside the tree.
pub fn link_stays_inside(at: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = at.components().count() as i64 - 1;
    for part in target.components() {
        match part {
            PathComponent::Normal(_) => depth += 1,
            PathComponent::CurDir => {}
            PathComponent::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            PathComponent::RootDir | PathComponent::Prefix(_) => return false,
        }
    }
    true
}

/// What an archive entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    Other,
}

/// One entry of an archive, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    pub link_target: Option<String>,
}

/// Decompresses a whole tar.zst and walks every entry (reading every byte, so a truncated or
/// corrupt archive is an error). Returns the entries in archive order.
pub fn inspect(path: &Path) -> Result<Vec<EntryInfo>> {
    let bad = |message: String| Error::Archive {
        path: path.to_owned(),
        message,
    };
    let file = File::open(path).map_err(Error::io(path))?;
    let decoder = zstd::Decoder::new(file).map_err(|e| bad(format!("not a zstd stream: {e}")))?;
    let mut archive = tar::Archive::new(decoder);
    let mut out = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("cannot read the tar entries: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("corrupt archive: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| bad(format!("entry with an unreadable name: {e}")))?
            .to_string_lossy()
            .into_owned();
        let kind = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Directory,
            tar::EntryType::Symlink => EntryKind::Symlink,
            _ => EntryKind::Other,
        };
        let mode = entry.header().mode().unwrap_or(0);
        let link_target = entry
            .link_name()
            .ok()
            .flatten()
            .map(|l| l.to_string_lossy().into_owned());
        let size = io::copy(&mut entry, &mut io::sink())
            .map_err(|e| bad(format!("entry {name}: corrupt data: {e}")))?;
        out.push(EntryInfo {
            path: name,
            kind,
            size,
            mode,
            link_target,
        });
    }
    // Anything after the end-of-archive marker must still decompress cleanly.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| bad(format!("corrupt zstd stream: {e}")))?;
    Ok(out)
}

/// Problems with an entry path: absolute, `..`, empty.
pub fn entry_path_problem(name: &str) -> Option<String> {
    let p = Path::new(name);
    if name.is_empty() {
        return Some("an entry has an empty name".into());
    }
    if p.is_absolute() {
        return Some(format!("entry {name} is an absolute path"));
    }
    if p.components()
        .any(|c| matches!(c, PathComponent::ParentDir))
    {
        return Some(format!("entry {name} contains '..'"));
    }
    None
}

/// Copies a file as-is into `out` (must not exist), hashing it on the way.
pub fn copy_file(src: &Path, out: &Path) -> Result<Packed> {
    let mut input = File::open(src).map_err(Error::io(src))?;
    if !input.metadata().map_err(Error::io(src))?.is_file() {
        return Err(Error::Archive {
            path: src.to_owned(),
            message: "is not a regular file".into(),
        });
    }
    let mut writer = HashingWriter::create(out)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = input.read(&mut buf).map_err(Error::io(src))?;
        if n == 0 {
            break;
        }
        writer.write_all(&buf[..n]).map_err(Error::io(out))?;
    }
    writer.finish(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(threads: u32) -> PackOptions {
        PackOptions {
            mtime: 0,
            level: 3,
            threads,
        }
    }

    fn tree(dir: &Path) {
        std::fs::create_dir_all(dir.join("b/sub")).expect("mkdir");
        std::fs::create_dir_all(dir.join("a")).expect("mkdir");
        std::fs::write(dir.join("b/sub/z.txt"), "z").expect("write");
        std::fs::write(dir.join("a/y.txt"), "y".repeat(100_000)).expect("write");
        std::fs::write(dir.join("index.html"), "<html>").expect("write");
        std::os::unix::fs::symlink("index.html", dir.join("home.html")).expect("link");
    }

    #[test]
    fn directory_entries_are_sorted_and_relative() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        tree(&src);
        let out = tmp.path().join("t.tar.zst");
        pack_dir(&src, &out, &opts(2)).expect("pack");
        let names: Vec<String> = inspect(&out)
            .expect("inspect")
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            names,
            [
                "a/",
                "a/y.txt",
                "b/",
                "b/sub/",
                "b/sub/z.txt",
                "home.html",
                "index.html"
            ]
        );
    }

    #[test]
    fn same_input_gives_same_bytes_whatever_the_thread_count() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        tree(&src);
        let one = pack_dir(&src, &tmp.path().join("1.tar.zst"), &opts(1)).expect("pack");
        let four = pack_dir(&src, &tmp.path().join("4.tar.zst"), &opts(4)).expect("pack");
        assert_eq!(one.sha256, four.sha256);
        assert_eq!(
            std::fs::read(&one.path).expect("read"),
            std::fs::read(&four.path).expect("read")
        );
        let (sha, size) = Sha256::of_reader(File::open(&one.path).expect("open")).expect("hash");
        assert_eq!((sha, size), (one.sha256, one.size));
    }

    #[test]
    fn file_archive_holds_one_entry_with_the_given_mode() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("prog");
        std::fs::write(&src, "#!/bin/sh\n").expect("write");
        let out = tmp.path().join("p.tar.zst");
        pack_file(&src, "qx-demo", Some(0o750), &out, &opts(1)).expect("pack");
        let e = inspect(&out).expect("inspect");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].path, "qx-demo");
        assert_eq!(e[0].kind, EntryKind::File);
        assert_eq!(e[0].mode, 0o750);
    }

    #[test]
    fn link_escaping_the_tree_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).expect("mkdir");
        std::os::unix::fs::symlink("../../etc/passwd", src.join("x")).expect("link");
        let e = pack_dir(&src, &tmp.path().join("o.tar.zst"), &opts(1)).expect_err("refused");
        assert!(e.to_string().contains("points outside"), "{e}");
    }

    #[test]
    fn link_checks() {
        assert!(link_stays_inside(Path::new("a/b"), Path::new("../c")));
        assert!(!link_stays_inside(Path::new("a"), Path::new("../c")));
        assert!(!link_stays_inside(Path::new("a"), Path::new("/etc")));
        assert!(link_stays_inside(Path::new("a"), Path::new("./b")));
    }

    #[test]
    fn truncated_archive_is_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        tree(&src);
        let out = tmp.path().join("t.tar.zst");
        let p = pack_dir(&src, &out, &opts(1)).expect("pack");
        let bytes = std::fs::read(&out).expect("read");
        std::fs::write(&out, &bytes[..(p.size as usize) / 2]).expect("truncate");
        assert!(inspect(&out).is_err());
    }
}
