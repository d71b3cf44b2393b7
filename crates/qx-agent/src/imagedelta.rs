//! A system image rebuilt from the booted slot's image and a small patch (docs/deltas.md,
//! "Images"), tried before the chunks:
//!
//! 1. [`choose`]: a delta of an algorithm this agent applies to images, not refused before on
//!    this host (`/data/updates/deltas-refused.json`), whose `from_size_bytes` is the size of
//!    the booted slot's image and whose `from_sha256` is its SHA-256 (hashed once, only when a
//!    size matches);
//! 2. the patch is downloaded like an artifact into `staging/<version>/` (resumed after a
//!    cut, size and SHA-256 checked while it streams);
//! 3. [`rebuild`]: the image is rebuilt into the slot's one-pass writer, the base read from the
//!    booted slot's image where the patch says (memory: one base window, one segment, one
//!    frame), the bytes an interrupted apply left in the writer skipped; the writer's SHA-256 is
//!    then compared with the manifest's before the caller goes on.
//!
//! Any failure leaves the choice to the chunks or the whole download. A patch the server sent
//! wrong, or one that rebuilt wrong bytes, is refused on this host from then on.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use qx_core::manifest::Delta;
use qx_core::Sha256;

use crate::download::{DownloadError, DownloadProgress, Downloader};
use crate::transaction::journal::crash_point;

/// Why a rebuild did not happen.
#[derive(Debug)]
pub enum Failure {
    /// Worth trying again later (a cut download, a full disk, a base that cannot be read).
    Transient(String),
    /// The patch or its result was wrong: the delta is refused from now on.
    Bad(String),
}

/// Step 1 of the module documentation: the delta to use, if any, against the booted image at
/// `base`.
pub fn choose<'a>(deltas: &'a [Delta], base: &Path, refused: &[Sha256]) -> Option<&'a Delta> {
    let usable: Vec<&Delta> = deltas
        .iter()
        .filter(|d| d.algorithm == qx_delta::IMAGE_ALGORITHM && !refused.contains(&d.sha256))
        .collect();
    let size = std::fs::metadata(base).ok()?.len();
    if !usable.iter().any(|d| d.from_size_bytes == size) {
        return None;
    }
    let (sha256, _) = Sha256::of_reader(File::open(base).ok()?).ok()?;
    usable
        .into_iter()
        .filter(|d| d.from_size_bytes == size && d.from_sha256 == sha256)
        .min_by_key(|d| d.size_bytes)
}

/// Step 2 of the module documentation: the patch downloaded into `staging`.
pub fn download(
    d: &Downloader,
    url: &str,
    staging: &Path,
    delta: &Delta,
    progress: &mut dyn FnMut(&DownloadProgress),
) -> Result<std::path::PathBuf, Failure> {
    d.fetch(url, staging, &delta.artifact_ref(), progress)
        .map_err(|e| {
            if wrong_bytes(&e) {
                Failure::Bad(format!("the server's patch is not the signed one: {e}"))
            } else {
                Failure::Transient(e.to_string())
            }
        })
}

/// True when the server sent other bytes than the manifest signs (every attempt).
fn wrong_bytes(e: &DownloadError) -> bool {
    let mut d = e;
    while let DownloadError::GaveUp { last, .. } = d {
        d = last.as_ref();
    }
    matches!(
        d,
        DownloadError::Mismatch { .. } | DownloadError::SizeMismatch { .. }
    )
}

/// Step 3 of the module documentation: the image rebuilt from `base` and `patch`, its bytes
/// from `skip` on handed to `out` (which holds those before). `limit` is the image's signed
/// size.
pub fn rebuild(
    delta: &Delta,
    base: &Path,
    patch: &Path,
    skip: u64,
    limit: u64,
    out: &mut dyn FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), Failure> {
    let transient = |what: &str, e: std::io::Error| Failure::Transient(format!("{what}: {e}"));
    let base = File::open(base).map_err(|e| transient("cannot open the booted image", e))?;
    let patch = File::open(patch).map_err(|e| transient("cannot open the patch", e))?;
    let mut writer = Skipping {
        skip,
        at: 0,
        half: limit / 2,
        out,
        failed: None,
    };
    let patch = std::io::BufReader::new(patch);
    let result = qx_delta::decode_file(delta.algorithm, &base, patch, &mut writer, limit);
    if let Some(why) = writer.failed {
        return Err(Failure::Transient(why));
    }
    result.map(|_| ()).map_err(|e| match e {
        qx_delta::DeltaError::Write(e) => Failure::Transient(e.to_string()),
        other => Failure::Bad(other.to_string()),
    })
}

/// Hands the rebuilt bytes from `skip` on to `out`; the crash point `image-delta-rebuilding`
/// fires half-way through the image.
struct Skipping<'a> {
    skip: u64,
    at: u64,
    half: u64,
    out: &'a mut dyn FnMut(&[u8]) -> Result<(), String>,
    /// The writer's own error (the slot's), kept apart from the patch's.
    failed: Option<String>,
}

impl Write for Skipping<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let start = self.at;
        self.at += buf.len() as u64;
        if start < self.half && self.at >= self.half {
            crash_point("image-delta-rebuilding");
        }
        let from = self.skip.saturating_sub(start).min(buf.len() as u64) as usize;
        if from < buf.len() {
            if let Err(e) = (self.out)(&buf[from..]) {
                self.failed = Some(e.clone());
                return Err(std::io::Error::other(e));
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
