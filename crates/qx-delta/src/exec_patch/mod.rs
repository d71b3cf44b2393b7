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
mod project;
mod unwind;
mod x86;
#[cfg(test)]
mod diagnose;

use std::io::{Read, Write};

use elf::Layout;
use format::{put_varint, zigzag, Header, Transform};
use matcher::{Index, Op};
use project::{Moves, Projection};

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
    let mut header = Header {
        transform: Transform::None,
        target_len: target.len() as u64,
        base: Layout::default(),
        target: Layout::default(),
        stream_lens: [0; 3],
    };
    if let (Some(b), Some(t)) = (elf::layout(base), elf::layout(target)) {
        header.transform = Transform::Projection;
        header.base = b;
        header.target = t.target_part();
    }
    let ops = steps(base, target);
    let (ops, projected) = match header.transform {
        Transform::None => (ops, None),
        Transform::Projection => {
            // Matching again against the projected base finds what the projection made
            // equal (tables of shifted addresses match nothing before it).
            let first = project(base, &header, &ops);
            let ops = steps(&first, target);
            let projected = project(base, &header, &ops);
            (ops, Some(projected))
        }
    };
    let streams = streams(projected.as_deref().unwrap_or(base), target, &ops);
    let mut compressed = Vec::with_capacity(3);
    for s in &streams {
        compressed.push(compress(s)?);
    }
    header.stream_lens = [0, 1, 2].map(|i| compressed[i].len() as u64);
    let mut patch = Vec::new();
    header.write(&mut patch);
    compressed.iter().for_each(|c| patch.extend_from_slice(c));
    Ok(patch)
}

pub(crate) fn decode(base: &[u8], patch: impl Read, out: impl Write, limit: u64) -> Result<u64> {
    apply::apply(base, patch, out, limit)
}

/// The steps rebuilding `target` from `base`; one copy of the whole target if there would be
/// more than a decoder accepts.
fn steps(base: &[u8], target: &[u8]) -> Vec<Op> {
    let ops = fold(&matcher::ops(&Index::new(base), target));
    if ops.len() as u64 > max_steps(target.len() as u64) {
        return vec![Op {
            add: 0,
            copy: target.len(),
            seek: 0,
        }];
    }
    ops
}

/// The most steps a patch rebuilding `target_len` bytes may have (the decoder holds them all:
/// at most about 3/4 of the target's size).
pub(crate) fn max_steps(target_len: u64) -> u64 {
    target_len / 32 + 1024
}

/// The base as the decoder sees it: with the header's projection, if any.
pub(crate) fn project(base: &[u8], header: &Header, ops: &[Op]) -> Vec<u8> {
    let moves = Moves::from_ops(ops);
    let p = Projection {
        base: &header.base,
        target: &header.target,
        moves: &moves,
    };
    p.apply(base)
}

/// A step that neither adds nor copies only moves the base cursor: it is folded into the
/// previous step (only a first step may be empty), so a decoder can refuse runs of empty steps.
fn fold(ops: &[Op]) -> Vec<Op> {
    let mut folded: Vec<Op> = Vec::with_capacity(ops.len());
    for &op in ops {
        match folded.last_mut() {
            Some(prev) if op.add == 0 && op.copy == 0 => prev.seek += op.seek,
            _ => folded.push(op),
        }
    }
    folded
}

/// The control, difference and extra streams of `ops`.
fn streams(base: &[u8], target: &[u8], ops: &[Op]) -> [Vec<u8>; 3] {
    let (mut ctrl, mut diff, mut extra) = (Vec::new(), Vec::new(), Vec::new());
    let (mut old, mut new) = (0usize, 0usize);
    for op in ops {
        put_varint(&mut ctrl, op.add as u64);
        put_varint(&mut ctrl, op.copy as u64);
        put_varint(&mut ctrl, zigzag(op.seek));
        let added = target[new..new + op.add]
            .iter()
            .zip(&base[old..old + op.add]);
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
    let mut enc =
        zstd::stream::write::Encoder::new(Vec::new(), LEVEL).map_err(DeltaError::Encode)?;
    enc.window_log(bits.clamp(10, WINDOW_LOG))
        .and_then(|()| enc.long_distance_matching(true))
        .and_then(|()| enc.include_checksum(false))
        .and_then(|()| enc.set_pledged_src_size(Some(bytes.len() as u64)))
        .map_err(DeltaError::Encode)?;
    enc.write_all(bytes).map_err(DeltaError::Encode)?;
    enc.finish().map_err(DeltaError::Encode)
}
