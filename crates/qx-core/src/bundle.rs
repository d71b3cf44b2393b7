//! Bundles for offline hosts (docs/spec.md §12): one file that carries a release with every
//! proof an online update has, so a host without a network path to the server installs it
//! with the same checks.
//!
//! The format is an uncompressed tar archive whose entries are, in this order:
//! `channel.json`, `channel.json.minisig`, `manifest.json`, `manifest.json.minisig`, then
//! each artifact of the release under its plain artifact name. The metadata comes first so a
//! reader verifies the signatures before it reads a single artifact byte. Nothing in a bundle
//! is trusted: the reader only splits it; the caller verifies signatures, `seq`, expiry and
//! the manifest's SHA-256 against the channel state, and [`extract_artifacts`] checks every
//! artifact's size and SHA-256 against the verified manifest while it streams.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::channel::{CHANNEL_FILE, CHANNEL_SIGNATURE_FILE};
use crate::fs::{fsync_dir, parent_of, FsError};
use crate::hash::{Sha256, Sha256Hasher};
use crate::manifest::{ArtifactRef, MANIFEST_FILE, SIGNATURE_FILE};

/// The metadata entries, in the order a bundle holds them.
pub const METADATA_ENTRIES: [&str; 4] = [
    CHANNEL_FILE,
    CHANNEL_SIGNATURE_FILE,
    MANIFEST_FILE,
    SIGNATURE_FILE,
];

/// The largest metadata entry a reader accepts (a channel state or manifest is a few KiB).
pub const MAX_METADATA_BYTES: u64 = 1 << 20;

/// The signed documents of a bundle, as their exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleMetadata {
    pub channel: Vec<u8>,
    pub channel_signature: Vec<u8>,
    pub manifest: Vec<u8>,
    pub manifest_signature: Vec<u8>,
}

/// Why a bundle could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("bundle {}: {reason}; it is not a bundle written by `qx-publish bundle`, or it is damaged", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("bundle {}: artifact {artifact}: {reason}; nothing was installed", path.display())]
    Artifact {
        path: PathBuf,
        artifact: String,
        reason: String,
    },
}

fn malformed(path: &Path, reason: impl Into<String>) -> BundleError {
    BundleError::Malformed {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BundleError + 'a {
    move |e| BundleError::Fs(FsError::new(op, path, e))
}

/// Writes a bundle to `out` (through a temporary file in the same directory, fsynced and
/// renamed, so a bundle is either whole or absent). `artifacts` are (name, file) pairs in the
/// manifest's order.
pub fn write_bundle(
    out: &Path,
    meta: &BundleMetadata,
    artifacts: &[(String, PathBuf)],
) -> Result<(), BundleError> {
    let dir = parent_of(out);
    let tmp = tempfile::Builder::new()
        .prefix(".qx-tmp-")
        .tempfile_in(dir)
        .map_err(io_err("create temporary file in", dir))?;
    let mut tar = tar::Builder::new(BufWriter::new(tmp.as_file()));
    let docs = [
        &meta.channel,
        &meta.channel_signature,
        &meta.manifest,
        &meta.manifest_signature,
    ];
    for (name, bytes) in METADATA_ENTRIES.iter().zip(docs) {
        tar.append_data(
            &mut entry_header(bytes.len() as u64),
            name,
            bytes.as_slice(),
        )
        .map_err(io_err("write", out))?;
    }
    for (name, path) in artifacts {
        let file = File::open(path).map_err(io_err("open", path))?;
        let len = file.metadata().map_err(io_err("stat", path))?.len();
        tar.append_data(&mut entry_header(len), name, file)
            .map_err(io_err("write", out))?;
    }
    let mut writer = tar.into_inner().map_err(io_err("write", out))?;
    writer.flush().map_err(io_err("write", out))?;
    drop(writer);
    tmp.as_file().sync_all().map_err(io_err("fsync", out))?;
    tmp.persist(out)
        .map_err(|e| BundleError::Fs(FsError::new("rename into place", out, e.error)))?;
    fsync_dir(dir)?;
    Ok(())
}

/// A reproducible header: a regular file, mode 0644, owner 0, time 0.
fn entry_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn open_archive(path: &Path) -> Result<tar::Archive<BufReader<File>>, BundleError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    Ok(tar::Archive::new(BufReader::with_capacity(1 << 20, file)))
}

/// The plain name of an entry, refusing anything but a regular file with a one-segment name.
fn entry_name<R: Read>(path: &Path, entry: &tar::Entry<'_, R>) -> Result<String, BundleError> {
    if entry.header().entry_type() != tar::EntryType::Regular {
        return Err(malformed(path, "an entry is not a regular file"));
    }
    let name = entry
        .path()
        .map_err(|e| malformed(path, format!("an entry name is unreadable: {e}")))?
        .to_string_lossy()
        .into_owned();
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(malformed(
            path,
            format!("entry {name:?} is not a plain file name"),
        ));
    }
    Ok(name)
}

/// Reads the four signed documents at the start of the bundle (each at most
/// [`MAX_METADATA_BYTES`]), in their fixed order.
pub fn read_metadata(path: &Path) -> Result<BundleMetadata, BundleError> {
    let mut archive = open_archive(path)?;
    let mut entries = archive
        .entries()
        .map_err(|e| malformed(path, format!("not a tar archive: {e}")))?;
    let mut docs = Vec::with_capacity(METADATA_ENTRIES.len());
    for expected in METADATA_ENTRIES {
        let mut entry = entries
            .next()
            .ok_or_else(|| malformed(path, format!("{expected} is missing")))?
            .map_err(|e| malformed(path, format!("truncated before {expected}: {e}")))?;
        let name = entry_name(path, &entry)?;
        if name != expected {
            return Err(malformed(
                path,
                format!("expected {expected}, found {name}"),
            ));
        }
        if entry.size() > MAX_METADATA_BYTES {
            return Err(malformed(path, format!("{expected} is larger than 1 MiB")));
        }
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| malformed(path, format!("{expected} is truncated: {e}")))?;
        docs.push(bytes);
    }
    let mut docs = docs.into_iter();
    let mut next = || docs.next().unwrap_or_default();
    Ok(BundleMetadata {
        channel: next(),
        channel_signature: next(),
        manifest: next(),
        manifest_signature: next(),
    })
}

/// Streams the artifacts named in `wanted` (from a verified manifest) out of the bundle into
/// `dir/<artifact>`, checking each one's size and SHA-256 as it goes. An artifact the bundle
/// holds but `wanted` does not name is skipped when the manifest lists it (`listed`) and
/// refused otherwise; a wanted artifact missing from the bundle is an error. On any error the
/// files written so far are removed. Returns the paths in `wanted`'s order.
pub fn extract_artifacts(
    path: &Path,
    dir: &Path,
    wanted: &[ArtifactRef],
    listed: &[ArtifactRef],
) -> Result<Vec<PathBuf>, BundleError> {
    let mut written: Vec<Option<PathBuf>> = vec![None; wanted.len()];
    let result = extract_into(path, dir, wanted, listed, &mut written);
    if result.is_err() {
        for p in written.iter().flatten() {
            let _ = std::fs::remove_file(p);
        }
    }
    result?;
    written
        .into_iter()
        .zip(wanted)
        .map(|(p, a)| {
            p.ok_or_else(|| BundleError::Artifact {
                path: path.to_owned(),
                artifact: a.artifact.to_string(),
                reason: "missing from the bundle".into(),
            })
        })
        .collect()
}

fn extract_into(
    path: &Path,
    dir: &Path,
    wanted: &[ArtifactRef],
    listed: &[ArtifactRef],
    written: &mut [Option<PathBuf>],
) -> Result<(), BundleError> {
    let mut archive = open_archive(path)?;
    let entries = archive
        .entries()
        .map_err(|e| malformed(path, format!("not a tar archive: {e}")))?;
    for (i, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| malformed(path, format!("truncated: {e}")))?;
        if i < METADATA_ENTRIES.len() {
            continue;
        }
        let name = entry_name(path, &entry)?;
        let Some(slot) = wanted.iter().position(|a| a.artifact.as_str() == name) else {
            if listed.iter().any(|a| a.artifact.as_str() == name) {
                continue;
            }
            return Err(BundleError::Artifact {
                path: path.to_owned(),
                artifact: name,
                reason: "not listed in the signed manifest".into(),
            });
        };
        if written[slot].is_some() {
            return Err(malformed(path, format!("{name} is in the bundle twice")));
        }
        let target = dir.join(&name);
        written[slot] = Some(target.clone());
        copy_verified(path, &mut entry, &target, &wanted[slot])?;
    }
    Ok(())
}

/// Copies one entry to `target`, refusing it unless its size and SHA-256 match `expected`.
fn copy_verified(
    bundle: &Path,
    entry: &mut impl Read,
    target: &Path,
    expected: &ArtifactRef,
) -> Result<(), BundleError> {
    let fail = |reason: String| BundleError::Artifact {
        path: bundle.to_owned(),
        artifact: expected.artifact.to_string(),
        reason,
    };
    let mut out = BufWriter::new(File::create(target).map_err(io_err("create", target))?);
    let mut hasher = Sha256Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| fail(format!("truncated: {e}")))?;
        if n == 0 {
            break;
        }
        if hasher.len() + n as u64 > expected.size_bytes {
            return Err(fail(format!(
                "larger than the {} bytes signed",
                expected.size_bytes
            )));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err("write", target))?;
    }
    let (got, len): (Sha256, u64) = hasher.finish();
    if len != expected.size_bytes {
        return Err(fail(format!(
            "{len} bytes, the manifest signs {}",
            expected.size_bytes
        )));
    }
    if got != expected.sha256 {
        return Err(fail(format!(
            "sha256 mismatch (expected {}, got {})",
            expected.sha256.short(),
            got.short()
        )));
    }
    let file = out
        .into_inner()
        .map_err(|e| io_err("write", target)(e.into_error()))?;
    file.sync_all().map_err(io_err("fsync", target))?;
    Ok(())
}

#[cfg(test)]
mod tests;
