//! `exec-patch`: an executable-aware block-copy patch.
//!
//! A suffix array of the base finds approximate matches of the target ([`matcher`]): steps
//! that add differences to base bytes or copy new ones. In two x86-64 ELF files, the base's
//! references (code operands, pointers, relocation and symbol entries, unwind tables) are then
//! rewritten to where the steps say their targets went ([`project`]), the projected base is
//! matched again, and the differences are taken against it; the decoder computes the same
//! projection, so nothing of it is sent. The steps, differences and new bytes are three LZMA2
//! streams. The format is in [`format`]; docs/deltas.md has the whole description.
//!
//! Decoding memory: the caller's base, a projected copy of it (only with the projection), the
//! rebuilt target (at most `limit` bytes), the patch itself (at most `limit` + 1 MiB), the steps
//! and the LZMA2 dictionaries of 8 MiB each.

mod apply;
mod elf;
mod format;
mod matcher;
mod project;
mod unwind;
mod x86;

use std::io::{Read, Write};

use elf::Layout;
use format::{put_varint, zigzag, Header, Transform};
use matcher::{Index, Op};
use project::{Moves, Projection};

use crate::{DeltaError, Result};

/// The dictionary of each stream's LZMA2 coder (8 MiB): the decoder sets it itself, so a patch
/// cannot make it hold more.
const DICT_SIZE: u32 = 8 << 20;

pub(crate) fn encode(base: &[u8], target: &[u8]) -> Result<Vec<u8>> {
    if base.len() > i32::MAX as usize || target.len() > i32::MAX as usize {
        return Err(DeltaError::Encode(std::io::Error::other(
            "exec-patch handles bases and targets of at most 2 GiB",
        )));
    }
    let (mut header, ops, projected) = plan(base, target);
    let streams = streams(projected.as_deref().unwrap_or(base), target, &ops);
    let compressed = compress_all(&streams)?;
    header.stream_lens = [0, 1, 2].map(|i| compressed[i].len() as u64);
    let mut patch = Vec::new();
    header.write(&mut patch);
    compressed.iter().for_each(|c| patch.extend_from_slice(c));
    Ok(patch)
}

/// The header (without stream lengths), the steps, and the base the differences are taken
/// against: projected when both files are x86-64 ELF files.
fn plan(base: &[u8], target: &[u8]) -> (Header, Vec<Op>, Option<Vec<u8>>) {
    let mut header = Header {
        transform: Transform::None,
        target_len: target.len() as u64,
        base: Layout::default(),
        target: Layout::default(),
        stream_lens: [0; 3],
    };
    let layouts = elf::layout(base).zip(elf::layout(target));
    let ops = steps(base, target);
    let Some((b, t)) = layouts else {
        return (header, ops, None);
    };
    header.transform = Transform::Projection;
    header.base = b;
    header.target = t.target_part();
    // Matching again against the projected base finds what the projection made equal
    // (tables of shifted addresses match nothing before it).
    let first = project(base, &header, &ops);
    let ops = steps(&first, target);
    let projected = project(base, &header, &ops);
    (header, ops, Some(projected))
}

pub(crate) fn decode(base: &[u8], patch: impl Read, out: impl Write, limit: u64) -> Result<u64> {
    apply::apply(base, patch, out, limit)
}

/// The steps rebuilding `target` from `base`; one copy of the whole target if there would be
/// more than a decoder accepts.
fn steps(base: &[u8], target: &[u8]) -> Vec<Op> {
    let ops = fold(&matcher::ops_parallel(&Index::new(base), target));
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

/// The control, difference and extra streams of `ops`. The control stream is the step count
/// then three columns (adds, copies, seeks as zigzag), each LEB128 varints: a column of like
/// numbers compresses better than the steps interleaved.
fn streams(base: &[u8], target: &[u8], ops: &[Op]) -> [Vec<u8>; 3] {
    let mut columns: [Vec<u8>; 3] = Default::default();
    let (mut diff, mut extra) = (Vec::new(), Vec::new());
    let (mut old, mut new) = (0usize, 0usize);
    for op in ops {
        put_varint(&mut columns[0], op.add as u64);
        put_varint(&mut columns[1], op.copy as u64);
        put_varint(&mut columns[2], zigzag(op.seek));
        let added = target[new..new + op.add]
            .iter()
            .zip(&base[old..old + op.add]);
        diff.extend(added.map(|(t, b)| t.wrapping_sub(*b)));
        new += op.add;
        extra.extend_from_slice(&target[new..new + op.copy]);
        new += op.copy;
        old = (old + op.add).wrapping_add_signed(op.seek as isize);
    }
    let mut ctrl = Vec::new();
    put_varint(&mut ctrl, ops.len() as u64);
    columns.iter().for_each(|c| ctrl.extend_from_slice(c));
    [ctrl, diff, extra]
}

/// The LZMA2 filter both sides use: its strongest preset with an 8 MiB dictionary.
pub(crate) fn filters() -> std::io::Result<liblzma::stream::Filters> {
    let mut opts = liblzma::stream::LzmaOptions::new_preset(9 | liblzma::stream::PRESET_EXTREME)?;
    opts.dict_size(DICT_SIZE);
    let mut f = liblzma::stream::Filters::new();
    f.lzma2(&opts);
    Ok(f)
}

/// The three streams compressed at once, each on its own thread.
fn compress_all(streams: &[Vec<u8>; 3]) -> Result<Vec<Vec<u8>>> {
    let results = std::thread::scope(|s| {
        let handles = streams.each_ref().map(|b| s.spawn(|| compress(b)));
        handles.map(|h| h.join())
    });
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        .collect()
}

fn compress(bytes: &[u8]) -> Result<Vec<u8>> {
    let stream = liblzma::stream::Stream::new_raw_encoder(&filters().map_err(DeltaError::Encode)?)
        .map_err(|e| DeltaError::Encode(e.into()))?;
    let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    enc.write_all(bytes).map_err(DeltaError::Encode)?;
    enc.finish().map_err(DeltaError::Encode)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{plan, streams};
    use crate::tests::{build_c, c_program};

    #[test]
    fn projection_leaves_almost_no_code_differences_between_two_c_builds() {
        let dir = tempfile::tempdir().unwrap();
        let old = build_c(dir.path(), "v1", &c_program(1500, 2));
        let new = build_c(dir.path(), "v2", &c_program(1500, 40));
        let (_, ops, projected) = plan(&old, &new);
        let projected = projected.expect("two x86-64 ELF files are projected");
        let non_zero = |base: &[u8]| {
            let [_, diff, _] = streams(base, &new, &ops);
            diff.iter().filter(|&&d| d != 0).count()
        };
        let (plain, with) = (non_zero(&old), non_zero(&projected));
        // Every call after the grown function moved: unprojected, thousands of operands differ.
        assert!(plain > 5_000, "{plain} non-zero differences unprojected");
        assert!(
            with * 10 < plain,
            "{with} non-zero differences projected, {plain} unprojected"
        );
    }
}
