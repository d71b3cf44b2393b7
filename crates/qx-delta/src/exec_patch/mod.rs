//! `exec-patch`: an executable-aware block-copy patch.
//!
//! Both files are first transformed so that code which only moved becomes equal bytes (in an
//! x86-64 ELF file, branch and RIP-relative operands are rewritten as the addresses they point
//! at: see [`x86`]); a suffix array of the transformed base then finds approximate matches
//! ([`matcher`]), written as three streams — steps, byte differences, new bytes — each
//! compressed with zstd at its strongest level. The decoder rebuilds the transformed target and
//! undoes the transform. The format is in [`format`].
//!
//! Decoding memory: the caller's base, a transformed copy of it (only when the patch uses a
//! transform), the rebuilt target (at most `limit` bytes), the patch itself (at most `limit` +
//! 1 MiB) and three zstd windows of at most 8 MiB each.

mod apply;
mod elf;
mod format;
mod matcher;
mod x86;

use std::io::{Read, Write};

use format::{put_varint, zigzag, CodeRange, Header, Transform};
use matcher::{Index, Op};

use crate::{DeltaError, Result};

/// zstd level of the three streams: the strongest.
const LEVEL: i32 = 22;
/// The window of each stream (8 MiB): the decoder refuses larger ones.
const WINDOW_LOG: u32 = 23;

pub(crate) fn encode(base: &[u8], target: &[u8]) -> Result<Vec<u8>> {
    if base.len() > i32::MAX as usize || target.len() > i32::MAX as usize {
        return Err(DeltaError::Encode(std::io::Error::other(
            "exec-patch handles bases and targets of at most 2 GiB",
        )));
    }
    let (transform, base_ranges, target_ranges) = plan_transform(base, target);
    let tbase = transformed(base, &base_ranges);
    let ttarget = transformed(target, &target_ranges);
    let ops = matcher::ops(&Index::new(&tbase), &ttarget);
    let streams = streams(&tbase, &ttarget, &ops);
    let mut compressed = Vec::with_capacity(3);
    for s in &streams {
        compressed.push(compress(s)?);
    }
    let header = Header {
        transform,
        target_len: target.len() as u64,
        base_ranges,
        target_ranges,
        stream_lens: [0, 1, 2].map(|i| compressed[i].len() as u64),
    };
    let mut patch = Vec::new();
    header.write(&mut patch);
    compressed.iter().for_each(|c| patch.extend_from_slice(c));
    Ok(patch)
}

pub(crate) fn decode(base: &[u8], patch: impl Read, out: impl Write, limit: u64) -> Result<u64> {
    apply::apply(base, patch, out, limit)
}

/// The transform both files get: the x86-64 one when both are x86-64 executables.
fn plan_transform(base: &[u8], target: &[u8]) -> (Transform, Vec<CodeRange>, Vec<CodeRange>) {
    let (b, t) = (elf::code_ranges(base), elf::code_ranges(target));
    if b.is_empty() || t.is_empty() {
        return (Transform::None, Vec::new(), Vec::new());
    }
    (Transform::X86Branches, b, t)
}

fn transformed(bytes: &[u8], ranges: &[CodeRange]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    x86::forward(&mut out, ranges);
    out
}

/// The control, difference and extra streams of `ops`. A step that neither adds nor copies
/// only moves the base cursor: it is folded into the previous step (only a first step may be
/// empty), so a decoder can refuse runs of empty steps.
fn streams(base: &[u8], target: &[u8], ops: &[Op]) -> [Vec<u8>; 3] {
    let mut folded: Vec<Op> = Vec::with_capacity(ops.len());
    for &op in ops {
        match folded.last_mut() {
            Some(prev) if op.add == 0 && op.copy == 0 => prev.seek += op.seek,
            _ => folded.push(op),
        }
    }
    let (mut ctrl, mut diff, mut extra) = (Vec::new(), Vec::new(), Vec::new());
    let (mut old, mut new) = (0usize, 0usize);
    for op in &folded {
        put_varint(&mut ctrl, op.add as u64);
        put_varint(&mut ctrl, op.copy as u64);
        put_varint(&mut ctrl, zigzag(op.seek));
        let added = target[new..new + op.add].iter().zip(&base[old..old + op.add]);
        diff.extend(added.map(|(t, b)| t.wrapping_sub(*b)));
        new += op.add;
        extra.extend_from_slice(&target[new..new + op.copy]);
        new += op.copy;
        old = (old + op.add).wrapping_add_signed(op.seek as isize);
    }
    [ctrl, diff, extra]
}

fn compress(bytes: &[u8]) -> Result<Vec<u8>> {
    let bits = usize::BITS - bytes.len().max(1).leading_zeros();
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), LEVEL).map_err(DeltaError::Encode)?;
    enc.window_log(bits.clamp(10, WINDOW_LOG))
        .and_then(|()| enc.long_distance_matching(true))
        .and_then(|()| enc.include_checksum(false))
        .and_then(|()| enc.set_pledged_src_size(Some(bytes.len() as u64)))
        .map_err(DeltaError::Encode)?;
    enc.write_all(bytes).map_err(DeltaError::Encode)?;
    enc.finish().map_err(DeltaError::Encode)
}
