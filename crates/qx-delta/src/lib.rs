//! Deltas: patches that rebuild a release's bytes from bytes a host already holds
//! (docs/spec.md §11).
//!
//! A patch is made by the publish tool ([`encode`], or [`smallest`] over the candidate
//! algorithms) and applied by the agent ([`decode`]). What the base of a component's delta is —
//! its installed content — is defined once, in [`base`], for both sides. Decoding never trusts
//! the patch: its output is capped at the size the signed manifest names, and the caller checks
//! the result's SHA-256 against the manifest before using a byte of it.

pub mod base;
pub mod chunks;
mod exec_patch;
mod zstd_patch;
mod zstd_window;

use std::io::{Read, Write};

pub use qx_core::manifest::DeltaAlgorithm;

/// The algorithms a component's delta is made with, in the order [`smallest`] tries them.
pub const ALGORITHMS: &[DeltaAlgorithm] = &[DeltaAlgorithm::ZstdPatch, DeltaAlgorithm::ExecPatch];
/// The algorithm a system image's delta is made with (applied from the booted slot's image
/// with [`decode_file`]).
pub const IMAGE_ALGORITHM: DeltaAlgorithm = DeltaAlgorithm::ZstdWindow;

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("delta algorithm {0} is not supported by this program")]
    Unsupported(&'static str),
    #[error("the patch would rebuild more than the {limit} bytes expected")]
    TooLong { limit: u64 },
    #[error("the patch is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot write the rebuilt bytes: {0}")]
    Write(std::io::Error),
    #[error("cannot encode the patch: {0}")]
    Encode(std::io::Error),
}

pub type Result<T, E = DeltaError> = std::result::Result<T, E>;

/// A patch that turns `base` into `target` with `algorithm`.
pub fn encode(algorithm: DeltaAlgorithm, base: &[u8], target: &[u8]) -> Result<Vec<u8>> {
    match algorithm {
        DeltaAlgorithm::ZstdPatch => zstd_patch::encode(base, target),
        DeltaAlgorithm::ExecPatch => exec_patch::encode(base, target),
        DeltaAlgorithm::ZstdWindow => zstd_window::encode(base, target, zstd_window::IMAGES),
        other => Err(DeltaError::Unsupported(other.as_str())),
    }
}

/// Applies `patch` to `base`, writing the rebuilt bytes to `out`; at most `limit` bytes are
/// written (more is [`DeltaError::TooLong`]). Returns how many were written.
pub fn decode(
    algorithm: DeltaAlgorithm,
    base: &[u8],
    patch: impl Read,
    out: impl Write,
    limit: u64,
) -> Result<u64> {
    match algorithm {
        DeltaAlgorithm::ZstdPatch => zstd_patch::decode(base, patch, out, limit),
        DeltaAlgorithm::ExecPatch => exec_patch::decode(base, patch, out, limit),
        DeltaAlgorithm::ZstdWindow => zstd_window::decode(base, patch, out, limit),
        other => Err(DeltaError::Unsupported(other.as_str())),
    }
}

/// Applies an image patch to the base in the file `base` (a booted slot's image) without
/// holding either, or the target, in memory: `zstd-window` patches only, whose host side holds
/// one base window, one segment and one frame at a time (under 64 MiB), whatever the sizes.
/// Bytes are written as they are rebuilt, so after an error `out` holds a part of a target
/// that the caller throws away; after success the caller still checks the target's SHA-256.
pub fn decode_file(
    algorithm: DeltaAlgorithm,
    base: &std::fs::File,
    patch: impl Read,
    out: impl Write,
    limit: u64,
) -> Result<u64> {
    match algorithm {
        DeltaAlgorithm::ZstdWindow => {
            let len = base
                .metadata()
                .map_err(|e| DeltaError::Corrupt(format!("cannot read the base: {e}")))?
                .len();
            zstd_window::decode(zstd_window::FileBase { file: base, len }, patch, out, limit)
        }
        other => Err(DeltaError::Unsupported(other.as_str())),
    }
}

/// The smallest patch from `base` to `target` over `algorithms`, with its algorithm. The
/// algorithms encode at once, each on its own thread.
pub fn smallest(
    algorithms: &[DeltaAlgorithm],
    base: &[u8],
    target: &[u8],
) -> Result<Option<(DeltaAlgorithm, Vec<u8>)>> {
    let patches: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = algorithms
            .iter()
            .map(|&a| s.spawn(move || encode(a, base, target).map(|p| (a, p))))
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut best: Option<(DeltaAlgorithm, Vec<u8>)> = None;
    for p in patches {
        let (a, patch) = p.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        if best.as_ref().is_none_or(|(_, b)| patch.len() < b.len()) {
            best = Some((a, patch));
        }
    }
    Ok(best)
}

/// Copies `reader` into `out`, failing once more than `limit` bytes come.
fn copy_capped(mut reader: impl Read, mut out: impl Write, limit: u64) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| DeltaError::Corrupt(e.to_string()))?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        if total > limit {
            return Err(DeltaError::TooLong { limit });
        }
        out.write_all(&buf[..n]).map_err(DeltaError::Write)?;
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod chunks_tests;

#[cfg(test)]
mod window_tests;
