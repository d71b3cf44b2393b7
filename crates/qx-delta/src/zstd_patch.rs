//! `zstd-patch`: one zstd frame compressed with the base as its reference prefix, with a window
//! long enough to reach from the end of the target back to the start of the base.

use std::io::{BufReader, Read, Write};

use crate::{copy_capped, DeltaError, Result};

/// Compression level: the strongest (publishing is slower; applying is not).
const LEVEL: i32 = 22;
/// The largest window the decoder accepts (2 GiB): bases and targets beyond it are refused by
/// the encoder before anything is written.
const MAX_WINDOW_LOG: u32 = 31;

/// The smallest window log that covers `len` bytes (zstd's minimum is 10).
fn window_log(len: usize) -> Result<u32> {
    let bits = usize::BITS - len.max(1).leading_zeros();
    if bits > MAX_WINDOW_LOG {
        return Err(DeltaError::Encode(std::io::Error::other(format!(
            "{len} bytes of base and target exceed the 2 GiB window"
        ))));
    }
    Ok(bits.max(10))
}

pub(crate) fn encode(base: &[u8], target: &[u8]) -> Result<Vec<u8>> {
    let log = window_log(base.len() + target.len())?;
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), LEVEL, base)
        .map_err(DeltaError::Encode)?;
    enc.long_distance_matching(true)
        .and_then(|()| enc.window_log(log))
        .and_then(|()| enc.include_checksum(false))
        .and_then(|()| enc.set_pledged_src_size(Some(target.len() as u64)))
        .map_err(DeltaError::Encode)?;
    enc.write_all(target).map_err(DeltaError::Encode)?;
    enc.finish().map_err(DeltaError::Encode)
}

pub(crate) fn decode(base: &[u8], patch: impl Read, out: impl Write, limit: u64) -> Result<u64> {
    let corrupt = |e: std::io::Error| DeltaError::Corrupt(e.to_string());
    let mut dec = zstd::stream::read::Decoder::with_ref_prefix(BufReader::new(patch), base)
        .map_err(corrupt)?;
    dec.window_log_max(MAX_WINDOW_LOG).map_err(corrupt)?;
    copy_capped(dec.single_frame(), out, limit)
}
