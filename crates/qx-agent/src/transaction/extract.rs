//! Safe extraction of a `tar.zst` artifact (or of the plain tar a delta rebuilt, see
//! [`Archive`]) into a fresh staging directory.
//!
//! Every entry is checked before anything is written for it: no absolute path, no `..`, no
//! symbolic link whose target leaves the extraction root (resolved as the kernel would, through
//! the archive's other links: [`LinkTree`]), no hard link to anything but a
//! regular file already extracted, no device node or fifo, no write through a symbolic link,
//! and the total unpacked size is capped (decompression bomb). A file or directory whose mode
//! sets the setuid/setgid bit or is writable by others is refused unless the component allows
//! it ([`ModeAllowance`]). Files are created with
//! `O_EXCL`, so nothing existing is ever overwritten. On any refusal the staging directory is
//! removed; nothing is ever written outside it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{mpsc, Mutex};

pub use qx_core::manifest::ModeAllowance;

mod links;
pub use links::{LinkRefusal, LinkTree, MAX_LINK_HOPS};

/// Upper bound on the number of entries of one archive.
pub const MAX_ENTRIES: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{archive}: entry {entry:?} has an absolute path")]
    AbsolutePath { archive: PathBuf, entry: String },
    #[error("{archive}: entry {entry:?} contains '..'")]
    ParentDir { archive: PathBuf, entry: String },
    #[error("{archive}: entry {entry:?} has an empty or invalid path")]
    BadPath { archive: PathBuf, entry: String },
    #[error("{archive}: link {entry:?} points to {target:?}, outside the extraction root")]
    LinkEscapes {
        archive: PathBuf,
        entry: String,
        target: String,
    },
    #[error("{archive}: link {entry:?} points to {target:?} through more than {MAX_LINK_HOPS} links (a loop?)")]
    LinkLoop {
        archive: PathBuf,
        entry: String,
        target: String,
    },
    #[error("{archive}: hard link {entry:?} points to {target:?}, which is not a regular file extracted before it")]
    BadHardLink {
        archive: PathBuf,
        entry: String,
        target: String,
    },
    #[error("{archive}: entry {entry:?} is a {kind}; only regular files, directories and links are allowed")]
    SpecialFile {
        archive: PathBuf,
        entry: String,
        kind: String,
    },
    #[error("{archive}: entry {entry:?} would be written through the symbolic link {link:?}")]
    ThroughSymlink {
        archive: PathBuf,
        entry: String,
        link: String,
    },
    #[error("{archive}: entry {entry:?}: {reason}")]
    ModeRefused {
        archive: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("{archive}: `file` component entry {entry:?} is not named {expected:?}, the install path's file name; rebuild the release with qx-publish")]
    MisnamedFile {
        archive: PathBuf,
        entry: String,
        expected: String,
    },
    #[error("{archive}: entry {entry:?} appears twice")]
    Duplicate { archive: PathBuf, entry: String },
    #[error("{archive}: unpacks to more than {limit} bytes (decompression bomb?); raise updates.max_unpacked_bytes if this is genuine")]
    TooLarge { archive: PathBuf, limit: u64 },
    #[error("{archive}: more than {limit} entries")]
    TooManyEntries { archive: PathBuf, limit: u64 },
    #[error("{archive}: not a valid tar.zst archive: {message}")]
    Corrupt { archive: PathBuf, message: String },
    #[error("{archive}: {message}")]
    Layout { archive: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A component's archive as staged for extraction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Archive {
    /// The artifact as published: a tar compressed with zstd.
    Zst(PathBuf),
    /// The tar uncompressed, as a delta rebuilt it (its SHA-256 checked against the manifest).
    Tar(PathBuf),
}

impl Archive {
    pub fn path(&self) -> &Path {
        match self {
            Self::Zst(p) | Self::Tar(p) => p,
        }
    }

    /// A reader of the tar stream.
    fn open(&self) -> Result<Box<dyn Read>, ExtractError> {
        let path = self.path();
        let file = File::open(path).map_err(|source| ExtractError::Io {
            path: path.to_owned(),
            source,
        })?;
        match self {
            Self::Tar(_) => Ok(Box::new(io::BufReader::new(file))),
            Self::Zst(_) => {
                let decoder =
                    zstd::stream::read::Decoder::new(file).map_err(|e| ExtractError::Corrupt {
                        archive: path.to_owned(),
                        message: e.to_string(),
                    })?;
                Ok(Box::new(decoder))
            }
        }
    }
}

/// True for "no space left on device" and "disk quota exceeded".
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// What was extracted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractStats {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
}

/// Extracts `archive` (tar.zst) into `dest`, which must not exist yet (it is created; its
/// parent must exist). On error `dest` is removed. Nothing is fsynced. Setuid/setgid and
/// world-writable modes are refused (see [`extract_tar_zst_allowing`]).
pub fn extract_tar_zst(
    archive: &Path,
    dest: &Path,
    max_bytes: u64,
) -> Result<ExtractStats, ExtractError> {
    extract_tar_zst_allowing(archive, dest, max_bytes, ModeAllowance::default())
}

/// [`extract_tar_zst`], with the special modes the component allows kept as they are.
pub fn extract_tar_zst_allowing(
    archive: &Path,
    dest: &Path,
    max_bytes: u64,
    allow: ModeAllowance,
) -> Result<ExtractStats, ExtractError> {
    extract_from(
        &Archive::Zst(archive.to_owned()),
        dest,
        max_bytes,
        allow,
        None,
    )
}

/// Threads fsyncing the regular files of an extraction while it goes on: see
/// [`extract_synced`].
const SYNC_THREADS: usize = 2;
/// Finished files waiting for a syncing thread (each holds a descriptor): bounds the open
/// descriptors and memory whatever the archive's size.
const SYNC_QUEUE: usize = 32;

/// [`extract_tar_zst`], and every regular file extracted is fsynced (data and inode) before
/// this returns `Ok`.
///
/// Each file is fsynced by a small pool of helper threads as soon as its data is written,
/// while the extraction goes on with the next entries: the disk writes back the tree while
/// the archive is still being decompressed, instead of all of it in one wait at the end (the
/// caller's final pass over the tree then finds clean files and costs little). Directories
/// and links are not fsynced here: the caller fsyncs the tree's directories (which records
/// the links) before using it.
pub fn extract_synced(
    archive: &Archive,
    dest: &Path,
    max_bytes: u64,
    allow: ModeAllowance,
) -> Result<ExtractStats, ExtractError> {
    let (tx, rx) = mpsc::sync_channel::<(PathBuf, File)>(SYNC_QUEUE);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..SYNC_THREADS)
            .map(|_| scope.spawn(|| sync_worker(&rx)))
            .collect();
        let mut result = extract_from(archive, dest, max_bytes, allow, Some(&tx));
        // No more files: the workers finish the queue and stop.
        drop(tx);
        for w in workers {
            let synced = w.join().unwrap_or_else(|_| {
                Err(ExtractError::Io {
                    path: dest.to_owned(),
                    source: io::Error::other("an fsync thread panicked"),
                })
            });
            if let (Ok(_), Err(e)) = (&result, synced) {
                result = Err(e);
            }
        }
        if result.is_err() {
            let _ = fs::remove_dir_all(dest);
        }
        result
    })
}

/// One syncing thread: fsyncs the files it is given until the queue is closed; the first
/// failure is returned (the following files are still synced, the extraction fails anyway).
fn sync_worker(rx: &Mutex<mpsc::Receiver<(PathBuf, File)>>) -> Result<(), ExtractError> {
    let mut first_error = None;
    loop {
        // The lock is held only while waiting for the next file, not during its fsync.
        // (A poisoned lock still guards a usable receiver.)
        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((path, file)) = job else { break };
        if let Err(source) = file.sync_all() {
            first_error.get_or_insert(ExtractError::Io { path, source });
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn extract_from(
    archive: &Archive,
    dest: &Path,
    max_bytes: u64,
    allow: ModeAllowance,
    synced: Option<&mpsc::SyncSender<(PathBuf, File)>>,
) -> Result<ExtractStats, ExtractError> {
    fs::create_dir(dest).map_err(|source| ExtractError::Io {
        path: dest.to_owned(),
        source,
    })?;
    let result = archive
        .open()
        .and_then(|reader| extract_inner(reader, archive.path(), dest, max_bytes, allow, synced));
    if result.is_err() {
        let _ = fs::remove_dir_all(dest);
    }
    result
}

/// The extraction; each finished regular file goes to `synced` when given. Every entry is
/// checked (count, path, parents) and then written by the function for its kind.
fn extract_inner<R: Read>(
    reader: R,
    archive: &Path,
    dest: &Path,
    max_bytes: u64,
    allow: ModeAllowance,
    synced: Option<&mpsc::SyncSender<(PathBuf, File)>>,
) -> Result<ExtractStats, ExtractError> {
    let mut x = Extraction {
        archive,
        dest,
        max_bytes,
        allow,
        synced,
        buf: vec![0u8; COPY_BUF],
        stats: ExtractStats::default(),
        links: LinkTree::new(),
    };
    let mut tar = tar::Archive::new(reader);
    let mut count = 0u64;
    for entry in tar.entries().map_err(|e| x.corrupt(e))? {
        let mut entry = entry.map_err(|e| x.corrupt(e))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(ExtractError::TooManyEntries {
                archive: archive.to_owned(),
                limit: MAX_ENTRIES,
            });
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        let rel = safe_relative(archive, &name)?;
        if rel.as_os_str().is_empty() {
            // "./" itself.
            if kind.is_dir() {
                continue;
            }
            return Err(ExtractError::BadPath {
                archive: archive.to_owned(),
                entry: name,
            });
        }
        check_parents(archive, dest, &rel, &name)?;
        x.entry(&mut entry, kind, &rel, name)?;
    }
    x.recheck_links()?;
    Ok(x.stats)
}

/// One extraction in progress.
struct Extraction<'a> {
    archive: &'a Path,
    dest: &'a Path,
    max_bytes: u64,
    allow: ModeAllowance,
    synced: Option<&'a mpsc::SyncSender<(PathBuf, File)>>,
    buf: Vec<u8>,
    stats: ExtractStats,
    /// The symbolic links created so far, for resolving the next ones.
    links: LinkTree,
}

impl Extraction<'_> {
    fn corrupt(&self, e: io::Error) -> ExtractError {
        ExtractError::Corrupt {
            archive: self.archive.to_owned(),
            message: e.to_string(),
        }
    }

    /// The error of creating `out` for entry `name`: an existing entry is a duplicate.
    fn create_failed(&self, name: &str, out: &Path, source: io::Error) -> ExtractError {
        if source.kind() == io::ErrorKind::AlreadyExists {
            ExtractError::Duplicate {
                archive: self.archive.to_owned(),
                entry: name.to_owned(),
            }
        } else {
            ExtractError::Io {
                path: out.to_owned(),
                source,
            }
        }
    }

    /// The mode of a file or directory entry (permission and setuid/setgid/sticky bits),
    /// refused when the component does not allow it.
    fn mode(&self, h: &tar::Header, kind: tar::EntryType, name: &str) -> Result<u32, ExtractError> {
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let checked =
            kind.is_dir() || matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous);
        match self.allow.refusal(mode) {
            Some(reason) if checked => Err(ExtractError::ModeRefused {
                archive: self.archive.to_owned(),
                entry: name.to_owned(),
                reason,
            }),
            _ => Ok(mode),
        }
    }

    /// Writes one checked entry at `rel` below the destination, by its kind.
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: tar::EntryType,
        rel: &Path,
        name: String,
    ) -> Result<(), ExtractError> {
        let out = self.dest.join(rel);
        let mode = self.mode(entry.header(), kind, &name)?;
        let link_target = || {
            entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        match kind {
            tar::EntryType::Directory => self.directory(&out, mode, name),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.file(entry, out, mode, name)
            }
            tar::EntryType::Symlink => {
                let target = link_target();
                self.symlink(rel, &out, &target, &name)
            }
            tar::EntryType::Link => {
                let target = link_target();
                self.hard_link(&out, &target, &name)
            }
            other => {
                let kind = match other {
                    tar::EntryType::Char => "character device",
                    tar::EntryType::Block => "block device",
                    tar::EntryType::Fifo => "fifo",
                    tar::EntryType::GNUSparse => "sparse file",
                    _ => "special entry",
                };
                Err(ExtractError::SpecialFile {
                    archive: self.archive.to_owned(),
                    entry: name,
                    kind: kind.into(),
                })
            }
        }
    }

    fn directory(&mut self, out: &Path, mode: u32, name: String) -> Result<(), ExtractError> {
        let io = |source| ExtractError::Io {
            path: out.to_owned(),
            source,
        };
        match fs::symlink_metadata(out) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ExtractError::Duplicate {
                    archive: self.archive.to_owned(),
                    entry: name,
                })
            }
            Err(_) => fs::create_dir(out).map_err(io)?,
        }
        fs::set_permissions(out, fs::Permissions::from_mode(mode | 0o700)).map_err(io)?;
        self.stats.dirs += 1;
        Ok(())
    }

    /// A regular file: size-capped, created with `O_EXCL | O_NOFOLLOW`, then handed to the
    /// syncing threads when there are some.
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        out: PathBuf,
        mode: u32,
        name: String,
    ) -> Result<(), ExtractError> {
        let size = entry.header().size().map_err(|e| self.corrupt(e))?;
        if self.stats.bytes.saturating_add(size) > self.max_bytes {
            return Err(ExtractError::TooLarge {
                archive: self.archive.to_owned(),
                limit: self.max_bytes,
            });
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&out)
            .map_err(|source| self.create_failed(&name, &out, source))?;
        // A failed write (a full disk) is the host's problem, not the archive's.
        let written = copy_limited(entry, &mut f, size, &mut self.buf).map_err(|e| match e {
            CopyError::Read(e) => self.corrupt(e),
            CopyError::Write(source) => ExtractError::Io {
                path: out.clone(),
                source,
            },
        })?;
        self.stats.bytes += written;
        let io = |source| ExtractError::Io {
            path: out.clone(),
            source,
        };
        f.flush().map_err(io)?;
        // The umask may have narrowed the mode given to open(2).
        fs::set_permissions(&out, fs::Permissions::from_mode(mode)).map_err(io)?;
        self.stats.files += 1;
        if let Some(tx) = self.synced {
            // Fails only if every syncing thread is gone, which they are not before the
            // queue is closed; then the file is synced here.
            if let Err(mpsc::SendError((path, f))) = tx.send((out, f)) {
                f.sync_all()
                    .map_err(|source| ExtractError::Io { path, source })?;
            }
        }
        Ok(())
    }

    /// A symbolic link whose target, resolved as the kernel would through the links created
    /// before it ([`LinkTree`]), stays inside the extraction root.
    fn symlink(
        &mut self,
        rel: &Path,
        out: &Path,
        target: &str,
        name: &str,
    ) -> Result<(), ExtractError> {
        self.links
            .add(rel, target)
            .map_err(|why| self.link_refused(name, target, why))?;
        std::os::unix::fs::symlink(target, out)
            .map_err(|source| self.create_failed(name, out, source))?;
        self.stats.links += 1;
        Ok(())
    }

    /// Every link checked again once all exist: a later link may change where an earlier
    /// target passing through its name leads.
    fn recheck_links(&self) -> Result<(), ExtractError> {
        self.links.recheck().map_err(|(link, why)| {
            let target = fs::read_link(self.dest.join(&link))
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            self.link_refused(&link.display().to_string(), &target, why)
        })
    }

    fn link_refused(&self, name: &str, target: &str, why: LinkRefusal) -> ExtractError {
        let (archive, entry, target) =
            (self.archive.to_owned(), name.to_owned(), target.to_owned());
        match why {
            LinkRefusal::Escapes => ExtractError::LinkEscapes {
                archive,
                entry,
                target,
            },
            LinkRefusal::TooManyHops => ExtractError::LinkLoop {
                archive,
                entry,
                target,
            },
        }
    }

    /// A hard link to a regular file extracted before it.
    fn hard_link(&mut self, out: &Path, target: &str, name: &str) -> Result<(), ExtractError> {
        let archive = self.archive;
        let target_rel = safe_relative(archive, target).map_err(|_| ExtractError::LinkEscapes {
            archive: archive.to_owned(),
            entry: name.to_owned(),
            target: target.to_owned(),
        })?;
        let bad = || ExtractError::BadHardLink {
            archive: archive.to_owned(),
            entry: name.to_owned(),
            target: target.to_owned(),
        };
        if target_rel.as_os_str().is_empty() {
            return Err(bad());
        }
        check_parents(archive, self.dest, &target_rel, target)?;
        let src = self.dest.join(&target_rel);
        match fs::symlink_metadata(&src) {
            Ok(m) if m.file_type().is_file() => {}
            _ => return Err(bad()),
        }
        fs::hard_link(&src, out).map_err(|source| self.create_failed(name, out, source))?;
        self.stats.links += 1;
        Ok(())
    }
}

/// The entry path as a relative path of normal components (`./` segments dropped).
/// Public for the fuzz targets only.
#[doc(hidden)]
pub fn entry_path(archive: &Path, name: &str) -> Result<PathBuf, ExtractError> {
    safe_relative(archive, name)
}

fn safe_relative(archive: &Path, name: &str) -> Result<PathBuf, ExtractError> {
    if name.starts_with('/') {
        return Err(ExtractError::AbsolutePath {
            archive: archive.to_owned(),
            entry: name.to_owned(),
        });
    }
    if name.contains('\0') {
        return Err(ExtractError::BadPath {
            archive: archive.to_owned(),
            entry: name.to_owned(),
        });
    }
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ExtractError::ParentDir {
                    archive: archive.to_owned(),
                    entry: name.to_owned(),
                })
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ExtractError::AbsolutePath {
                    archive: archive.to_owned(),
                    entry: name.to_owned(),
                })
            }
        }
    }
    Ok(out)
}

/// Every parent of `rel` below `dest` must be a real directory (created here if missing):
/// nothing is ever written through a symbolic link.
fn check_parents(archive: &Path, dest: &Path, rel: &Path, name: &str) -> Result<(), ExtractError> {
    let mut at = dest.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for c in &parts[..parts.len().saturating_sub(1)] {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ExtractError::ThroughSymlink {
                    archive: archive.to_owned(),
                    entry: name.to_owned(),
                    link: at.strip_prefix(dest).unwrap_or(&at).display().to_string(),
                })
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ExtractError::Duplicate {
                    archive: archive.to_owned(),
                    entry: name.to_owned(),
                })
            }
            Err(_) => fs::create_dir(&at).map_err(|source| ExtractError::Io {
                path: at.clone(),
                source,
            })?,
        }
    }
    Ok(())
}

/// Size of the buffer a file's data goes through: large, so that the decoder decodes straight
/// into it in big blocks and each file is written in few system calls (a generic copy would
/// use 8 KiB). One per extraction, whatever the archive's size.
const COPY_BUF: usize = 1024 * 1024;

/// Which side of [`copy_limited`] failed: reading the archive or writing the file.
#[derive(Debug)]
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies at most `limit` bytes from `r` to `w` through `buf`; returns the bytes copied.
fn copy_limited(
    r: &mut impl Read,
    w: &mut impl Write,
    limit: u64,
    buf: &mut [u8],
) -> Result<u64, CopyError> {
    let mut copied = 0u64;
    while copied < limit {
        let want = usize::try_from(limit - copied).map_or(buf.len(), |n| n.min(buf.len()));
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(&buf[..n]).map_err(CopyError::Write)?;
        copied += n as u64;
    }
    Ok(copied)
}

/// The unit [`unpacked_size`] counts in: a file takes whole blocks, a directory one.
pub const SPACE_BLOCK: u64 = 4096;

/// The space `archive` (tar.zst) takes once extracted, read from its entry headers (the whole
/// archive is decompressed, nothing is written): each regular file's size rounded up to
/// [`SPACE_BLOCK`], one block per directory. More than `max_bytes` of file data is refused
/// as the extraction would refuse it ([`ExtractError::TooLarge`]), so the count is bounded.
pub fn unpacked_size(staged: &Archive, max_bytes: u64) -> Result<u64, ExtractError> {
    let archive = staged.path();
    let corrupt = |e: io::Error| ExtractError::Corrupt {
        archive: archive.to_owned(),
        message: e.to_string(),
    };
    let mut tar = tar::Archive::new(staged.open()?);
    let (mut data, mut space) = (0u64, 0u64);
    for entry in tar.entries().map_err(corrupt)? {
        let entry = entry.map_err(corrupt)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            space = space.saturating_add(SPACE_BLOCK);
        } else if matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous) {
            let size = entry.header().size().map_err(corrupt)?;
            data = data.saturating_add(size);
            if data > max_bytes {
                return Err(ExtractError::TooLarge {
                    archive: archive.to_owned(),
                    limit: max_bytes,
                });
            }
            space = space.saturating_add(size.div_ceil(SPACE_BLOCK).saturating_mul(SPACE_BLOCK));
        }
    }
    Ok(space)
}

/// The one regular file of a `kind: file` artifact's extraction, which must be named
/// `expected` (the install path's file name, as qx-publish packs it) at the archive's top.
pub fn single_file(archive: &Path, dir: &Path, expected: &str) -> Result<PathBuf, ExtractError> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|source| ExtractError::Io {
            path: d.clone(),
            source,
        })? {
            let e = e.map_err(|source| ExtractError::Io {
                path: d.clone(),
                source,
            })?;
            let ft = e.file_type().map_err(|source| ExtractError::Io {
                path: e.path(),
                source,
            })?;
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                found.push((e.path(), ft.is_file()));
            }
        }
    }
    match found.as_slice() {
        [(p, true)] if p.strip_prefix(dir).is_ok_and(|rel| rel == Path::new(expected)) => {
            Ok(p.clone())
        }
        [(p, true)] => Err(ExtractError::MisnamedFile {
            archive: archive.to_owned(),
            entry: p
                .strip_prefix(dir)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned(),
            expected: expected.to_owned(),
        }),
        _ => Err(ExtractError::Layout {
            archive: archive.to_owned(),
            message: format!(
                "a `file` component's archive must hold exactly one regular file, it holds {} entries",
                found.len()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use qx_testkit::release::{tar_zst, TarEntry};

    fn file(path: &str, len: usize, byte: u8) -> TarEntry {
        TarEntry::File {
            path: path.into(),
            bytes: vec![byte; len],
            mode: 0o640,
        }
    }

    /// More files than the syncing queue holds, some larger than the copy buffer.
    fn entries() -> Vec<TarEntry> {
        let mut v = vec![TarEntry::Dir { path: "d".into() }];
        for i in 0..(SYNC_QUEUE + 8) {
            let len = if i % 8 == 0 {
                COPY_BUF * 2 + 7
            } else {
                i * 100
            };
            v.push(file(&format!("d/f{i}"), len, i as u8));
        }
        v.push(TarEntry::Symlink {
            path: "d/link".into(),
            target: "f1".into(),
        });
        v
    }

    #[test]
    fn synced_extraction_gives_the_same_tree_as_the_plain_one() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar.zst");
        fs::write(&archive, tar_zst(&entries()).unwrap()).unwrap();
        let plain = extract_tar_zst(&archive, &dir.path().join("plain"), 1 << 30).unwrap();
        let synced = extract_synced(
            &Archive::Zst(archive.clone()),
            &dir.path().join("synced"),
            1 << 30,
            ModeAllowance::default(),
        )
        .unwrap();
        assert_eq!(plain, synced);
        assert_eq!(synced.files, SYNC_QUEUE as u64 + 8);
        for i in 0..(SYNC_QUEUE + 8) {
            let rel = format!("d/f{i}");
            let a = fs::read(dir.path().join("plain").join(&rel)).unwrap();
            let b = fs::read(dir.path().join("synced").join(&rel)).unwrap();
            assert_eq!(a, b, "{rel}");
            let mode = fs::metadata(dir.path().join("synced").join(&rel))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o640, "{rel}");
        }
        assert_eq!(
            fs::read_link(dir.path().join("synced/d/link")).unwrap(),
            Path::new("f1")
        );
    }

    #[test]
    fn a_plain_tar_extracts_as_its_compressed_artifact_does_and_counts_the_same_size() {
        let dir = tempfile::tempdir().unwrap();
        let compressed = dir.path().join("a.tar.zst");
        let bytes = tar_zst(&entries()).unwrap();
        fs::write(&compressed, &bytes).unwrap();
        let plain = dir.path().join("a.tar");
        fs::write(&plain, zstd::decode_all(&bytes[..]).unwrap()).unwrap();
        let (zst, tar) = (Archive::Zst(compressed), Archive::Tar(plain));
        let allow = ModeAllowance::default();
        let a = extract_synced(&zst, &dir.path().join("z"), 1 << 30, allow).unwrap();
        let b = extract_synced(&tar, &dir.path().join("t"), 1 << 30, allow).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            unpacked_size(&zst, 1 << 30).unwrap(),
            unpacked_size(&tar, 1 << 30).unwrap()
        );
        // A compressed artifact read as a plain tar is refused, not extracted.
        let wrong = Archive::Tar(zst.path().to_owned());
        assert!(extract_synced(&wrong, &dir.path().join("w"), 1 << 30, allow).is_err());
        assert!(!dir.path().join("w").exists());
    }

    #[test]
    fn synced_extraction_refusal_after_many_files_removes_the_staging_directory() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar.zst");
        let mut v = entries();
        v.push(file("../victim", 4, b'x'));
        fs::write(&archive, tar_zst(&v).unwrap()).unwrap();
        let dest = dir.path().join("x");
        let err = extract_synced(
            &Archive::Zst(archive),
            &dest,
            1 << 30,
            ModeAllowance::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ExtractError::ParentDir { .. }), "{err}");
        assert!(!dest.exists(), "staging removed after a refusal");
        assert!(!dir.path().join("victim").exists());
    }

    #[test]
    fn unpacked_size_counts_whole_blocks_and_stops_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar.zst");
        let v = vec![
            TarEntry::Dir { path: "d".into() },
            file("d/one", 1, 1),
            file("d/exact", SPACE_BLOCK as usize, 2),
            file("d/empty", 0, 3),
        ];
        fs::write(&archive, tar_zst(&v).unwrap()).unwrap();
        let archive = Archive::Zst(archive);
        assert_eq!(unpacked_size(&archive, 1 << 20).unwrap(), 3 * SPACE_BLOCK);
        let err = unpacked_size(&archive, SPACE_BLOCK).unwrap_err();
        assert!(matches!(err, ExtractError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn copy_limited_stops_at_the_limit() {
        let data = vec![7u8; COPY_BUF + 10];
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64];
        let n = copy_limited(&mut data.as_slice(), &mut out, 1000, &mut buf).unwrap();
        assert_eq!(n, 1000);
        assert_eq!(out.len(), 1000);
    }
}
