//! Safe extraction of a `tar.zst` artifact into a fresh staging directory.
//!
//! Every entry is checked before anything is written for it: no absolute path, no `..`, no
//! symbolic link whose target leaves the extraction root, no hard link to anything but a
//! regular file already extracted, no device node or fifo, no write through a symbolic link,
//! and the total unpacked size is capped (decompression bomb). Files are created with
//! `O_EXCL`, so nothing existing is ever overwritten. On any refusal the staging directory is
//! removed; nothing is ever written outside it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

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

/// What was extracted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractStats {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
}

/// Extracts `archive` (tar.zst) into `dest`, which must not exist yet (it is created; its
/// parent must exist). On error `dest` is removed.
pub fn extract_tar_zst(
    archive: &Path,
    dest: &Path,
    max_bytes: u64,
) -> Result<ExtractStats, ExtractError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ExtractError::Io { path, source }
    };
    fs::create_dir(dest).map_err(io_err(dest))?;
    let result = File::open(archive).map_err(io_err(archive)).and_then(|f| {
        let decoder = zstd::stream::read::Decoder::new(f).map_err(|e| ExtractError::Corrupt {
            archive: archive.to_owned(),
            message: e.to_string(),
        })?;
        extract_tar(decoder, archive, dest, max_bytes)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(dest);
    }
    result
}

/// Extracts a plain tar stream (see [`extract_tar_zst`]); `dest` must exist and be empty.
pub fn extract_tar<R: Read>(
    reader: R,
    archive: &Path,
    dest: &Path,
    max_bytes: u64,
) -> Result<ExtractStats, ExtractError> {
    let corrupt = |e: io::Error| ExtractError::Corrupt {
        archive: archive.to_owned(),
        message: e.to_string(),
    };
    let mut tar = tar::Archive::new(reader);
    let mut stats = ExtractStats::default();
    let mut count = 0u64;
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(ExtractError::TooManyEntries {
                archive: archive.to_owned(),
                limit: MAX_ENTRIES,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
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
        let out = dest.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&out) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(ExtractError::Duplicate {
                            archive: archive.to_owned(),
                            entry: name,
                        })
                    }
                    Err(_) => {
                        fs::create_dir(&out).map_err(|source| ExtractError::Io {
                            path: out.clone(),
                            source,
                        })?;
                    }
                }
                fs::set_permissions(&out, fs::Permissions::from_mode(mode | 0o700)).map_err(
                    |source| ExtractError::Io {
                        path: out.clone(),
                        source,
                    },
                )?;
                stats.dirs += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().map_err(corrupt)?;
                if stats.bytes.saturating_add(size) > max_bytes {
                    return Err(ExtractError::TooLarge {
                        archive: archive.to_owned(),
                        limit: max_bytes,
                    });
                }
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&out)
                    .map_err(|source| {
                        if source.kind() == io::ErrorKind::AlreadyExists {
                            ExtractError::Duplicate {
                                archive: archive.to_owned(),
                                entry: name.clone(),
                            }
                        } else {
                            ExtractError::Io {
                                path: out.clone(),
                                source,
                            }
                        }
                    })?;
                let written = copy_limited(&mut entry, &mut f, size).map_err(corrupt)?;
                stats.bytes += written;
                f.flush().map_err(|source| ExtractError::Io {
                    path: out.clone(),
                    source,
                })?;
                // The umask may have narrowed the mode given to open(2).
                fs::set_permissions(&out, fs::Permissions::from_mode(mode)).map_err(|source| {
                    ExtractError::Io {
                        path: out.clone(),
                        source,
                    }
                })?;
                stats.files += 1;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let escapes = || ExtractError::LinkEscapes {
                    archive: archive.to_owned(),
                    entry: name.clone(),
                    target: target.clone(),
                };
                if target.is_empty() || target.starts_with('/') {
                    return Err(escapes());
                }
                // Resolve lexically from the link's directory; it must stay inside the root.
                let mut depth: i64 = rel.components().count() as i64 - 1;
                for c in Path::new(&target).components() {
                    match c {
                        Component::Normal(_) => depth += 1,
                        Component::CurDir => {}
                        Component::ParentDir => {
                            depth -= 1;
                            if depth < 0 {
                                return Err(escapes());
                            }
                        }
                        Component::RootDir | Component::Prefix(_) => return Err(escapes()),
                    }
                }
                std::os::unix::fs::symlink(&target, &out).map_err(|source| {
                    if source.kind() == io::ErrorKind::AlreadyExists {
                        ExtractError::Duplicate {
                            archive: archive.to_owned(),
                            entry: name.clone(),
                        }
                    } else {
                        ExtractError::Io {
                            path: out.clone(),
                            source,
                        }
                    }
                })?;
                stats.links += 1;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let target_rel =
                    safe_relative(archive, &target).map_err(|_| ExtractError::LinkEscapes {
                        archive: archive.to_owned(),
                        entry: name.clone(),
                        target: target.clone(),
                    })?;
                let bad = || ExtractError::BadHardLink {
                    archive: archive.to_owned(),
                    entry: name.clone(),
                    target: target.clone(),
                };
                if target_rel.as_os_str().is_empty() {
                    return Err(bad());
                }
                check_parents(archive, dest, &target_rel, &target)?;
                let src = dest.join(&target_rel);
                match fs::symlink_metadata(&src) {
                    Ok(m) if m.file_type().is_file() => {}
                    _ => return Err(bad()),
                }
                fs::hard_link(&src, &out).map_err(|source| {
                    if source.kind() == io::ErrorKind::AlreadyExists {
                        ExtractError::Duplicate {
                            archive: archive.to_owned(),
                            entry: name.clone(),
                        }
                    } else {
                        ExtractError::Io {
                            path: out.clone(),
                            source,
                        }
                    }
                })?;
                stats.links += 1;
            }
            other => {
                let kind = match other {
                    tar::EntryType::Char => "character device",
                    tar::EntryType::Block => "block device",
                    tar::EntryType::Fifo => "fifo",
                    tar::EntryType::GNUSparse => "sparse file",
                    _ => "special entry",
                };
                return Err(ExtractError::SpecialFile {
                    archive: archive.to_owned(),
                    entry: name,
                    kind: kind.into(),
                });
            }
        }
    }
    Ok(stats)
}

/// The entry path as a relative path of normal components (`./` segments dropped).
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

fn copy_limited(r: &mut impl Read, w: &mut impl Write, limit: u64) -> io::Result<u64> {
    io::copy(&mut r.take(limit), w)
}

/// The one regular file of a `kind: file` artifact's extraction.
pub fn single_file(archive: &Path, dir: &Path) -> Result<PathBuf, ExtractError> {
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
        [(p, true)] => Ok(p.clone()),
        _ => Err(ExtractError::Layout {
            archive: archive.to_owned(),
            message: format!(
                "a `file` component's archive must hold exactly one regular file, it holds {} entries",
                found.len()
            ),
        }),
    }
}
