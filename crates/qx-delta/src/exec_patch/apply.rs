//! Applying an exec-patch. Nothing in the patch is trusted: every length and position is
//! checked against the base, the target length and the caller's limit before it is used.

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};

use super::format::{corrupt, unzigzag, Header, Transform};
use super::matcher::Op;
use super::{filters, max_steps, project};
use crate::{DeltaError, Result};

/// A patch is never larger than what it rebuilds plus this (header and stream framing).
const PATCH_OVERHEAD: u64 = 1 << 20;
/// The output buffer is reserved up to this size at once, and grows past it as bytes come.
const RESERVE: u64 = 1 << 28;

type Stream<'a> = liblzma::read::XzDecoder<&'a [u8]>;

pub(super) fn apply(base: &[u8], patch: impl Read, mut out: impl Write, limit: u64) -> Result<u64> {
    let patch = read_patch(patch, limit)?;
    let (header, streams) = Header::parse(&patch, base.len() as u64)?;
    if header.target_len > limit {
        return Err(DeltaError::TooLong { limit });
    }
    let [c, d, _] = header.stream_lens.map(|l| l as usize);
    let (ctrl, rest) = streams.split_at(c);
    let (diff, extra) = rest.split_at(d);
    let ops = steps(ctrl, header.target_len)?;
    let base = match header.transform {
        Transform::None => Cow::Borrowed(base),
        Transform::Projection => Cow::Owned(project(base, &header, &ops)),
    };
    let target = rebuild(&base, &ops, header.target_len, diff, extra)?;
    out.write_all(&target).map_err(DeltaError::Write)?;
    Ok(target.len() as u64)
}

fn read_patch(patch: impl Read, limit: u64) -> Result<Vec<u8>> {
    let cap = limit.saturating_add(PATCH_OVERHEAD);
    let mut bytes = Vec::new();
    patch
        .take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| DeltaError::Corrupt(e.to_string()))?;
    if bytes.len() as u64 > cap {
        return Err(corrupt(
            "the patch is larger than anything it could rebuild",
        ));
    }
    Ok(bytes)
}

fn stream(bytes: &[u8]) -> Result<Stream<'_>> {
    let filters = filters().map_err(|e| corrupt(&e.to_string()))?;
    let s =
        liblzma::stream::Stream::new_raw_decoder(&filters).map_err(|e| corrupt(&e.to_string()))?;
    Ok(liblzma::read::XzDecoder::new_stream(bytes, s))
}

/// Every step of the patch, checked to rebuild exactly `target_len` bytes.
fn steps(ctrl: &[u8], target_len: u64) -> Result<Vec<Op>> {
    let mut ctrl = BufReader::new(stream(ctrl)?);
    let count = varint(&mut ctrl)?;
    if count > max_steps(target_len) {
        return Err(corrupt("too many steps"));
    }
    let mut columns: [Vec<u64>; 3] = Default::default();
    for column in &mut columns {
        for _ in 0..count {
            column.push(varint(&mut ctrl)?);
        }
    }
    let mut ops = Vec::with_capacity(count as usize);
    let mut rebuilt = 0u64;
    for ((&add, &copy), &seek) in columns[0].iter().zip(&columns[1]).zip(&columns[2]) {
        if add == 0 && copy == 0 && !ops.is_empty() {
            return Err(corrupt("a step that rebuilds nothing"));
        }
        let room = target_len - rebuilt;
        if add > room || copy > room - add {
            return Err(corrupt("a step rebuilds past the target's length"));
        }
        rebuilt += add + copy;
        let (add, copy) = (add as usize, copy as usize);
        ops.push(Op {
            add,
            copy,
            seek: unzigzag(seek),
        });
    }
    if rebuilt != target_len {
        return Err(corrupt("the steps rebuild less than the target's length"));
    }
    Ok(ops)
}

/// The target, from the (projected) base, the steps and the two byte streams.
fn rebuild(base: &[u8], ops: &[Op], target_len: u64, diff: &[u8], extra: &[u8]) -> Result<Vec<u8>> {
    let (mut diff, mut extra) = (stream(diff)?, stream(extra)?);
    let mut out = Vec::with_capacity(target_len.min(RESERVE) as usize);
    let mut cursor = 0i64;
    for op in ops {
        add_from_base(&mut out, base, cursor, op.add as u64, &mut diff)?;
        read_into(&mut out, op.copy as u64, &mut extra)?;
        cursor = cursor
            .checked_add(op.add as i64)
            .and_then(|c| c.checked_add(op.seek))
            .ok_or_else(|| corrupt("the base cursor overflows"))?;
    }
    Ok(out)
}

/// Appends `add` bytes: the base's from `cursor` plus the next difference bytes.
fn add_from_base(
    out: &mut Vec<u8>,
    base: &[u8],
    cursor: i64,
    add: u64,
    diff: &mut impl Read,
) -> Result<()> {
    let start = usize::try_from(cursor).map_err(|_| corrupt("the base cursor is negative"))?;
    let from = start
        .checked_add(add as usize)
        .and_then(|end| base.get(start..end))
        .ok_or_else(|| corrupt("a step reads past the end of the base"))?;
    let at = out.len();
    read_into(out, add, diff)?;
    for (o, b) in out[at..].iter_mut().zip(from) {
        *o = o.wrapping_add(*b);
    }
    Ok(())
}

/// Appends `n` bytes read from `stream` (already checked to fit the target).
fn read_into(out: &mut Vec<u8>, n: u64, stream: &mut impl Read) -> Result<()> {
    let at = out.len();
    out.resize(at + n as usize, 0);
    stream
        .read_exact(&mut out[at..])
        .map_err(|_| corrupt("a stream ends before the target is rebuilt"))
}

fn varint(r: &mut impl BufRead) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)
            .map_err(|_| corrupt("the step stream ends before the target is rebuilt"))?;
        v |= u64::from(b[0] & 0x7F) << shift;
        if b[0] & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(corrupt("a step length is not a number"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::compress;
    use super::super::elf::Layout;
    use super::super::format::{put_varint, Header, Transform};
    use super::apply;
    use crate::DeltaError;

    /// A patch without projection rebuilding `target_len` bytes with the given control stream
    /// (uncompressed), two zero differences, and `extra` as its new bytes.
    fn patch(target_len: u64, ctrl: &[u8], extra: &[u8]) -> Vec<u8> {
        let streams = [ctrl, &[0, 0][..], extra].map(|s| compress(s).unwrap());
        let header = Header {
            transform: Transform::None,
            target_len,
            base: Layout::default(),
            target: Layout::default(),
            stream_lens: streams.each_ref().map(|s| s.len() as u64),
        };
        let mut out = Vec::new();
        header.write(&mut out);
        streams.iter().for_each(|s| out.extend_from_slice(s));
        out
    }

    fn ctrl(count: u64, ops: &[(u64, u64, u64)]) -> Vec<u8> {
        let mut c = Vec::new();
        put_varint(&mut c, count);
        for column in 0..3 {
            for op in ops {
                put_varint(&mut c, [op.0, op.1, op.2][column]);
            }
        }
        c
    }

    fn rebuild(patch: &[u8]) -> Result<Vec<u8>, DeltaError> {
        let mut out = Vec::new();
        apply(b"base", patch, &mut out, 1 << 20).map(|_| out)
    }

    #[test]
    fn a_well_formed_control_stream_rebuilds_the_target() {
        // Two bytes of the base unchanged, then three new ones.
        assert_eq!(
            rebuild(&patch(5, &ctrl(1, &[(2, 3, 0)]), b"xyz")).unwrap(),
            b"baxyz"
        );
    }

    #[test]
    fn steps_rebuilding_less_than_the_target_length_are_refused() {
        let err = rebuild(&patch(6, &ctrl(1, &[(2, 3, 0)]), b"xyz")).unwrap_err();
        assert!(matches!(err, DeltaError::Corrupt(_)), "{err}");
    }

    #[test]
    fn a_step_count_beyond_the_limit_is_refused_before_reading_the_steps() {
        let err = rebuild(&patch(5, &ctrl(u64::MAX, &[(2, 3, 0)]), b"xyz")).unwrap_err();
        assert!(err.to_string().contains("too many steps"), "{err}");
    }

    #[test]
    fn a_control_stream_shorter_than_its_count_is_refused() {
        let err = rebuild(&patch(5, &ctrl(2, &[(2, 3, 0)]), b"xyz")).unwrap_err();
        assert!(matches!(err, DeltaError::Corrupt(_)), "{err}");
    }
}
