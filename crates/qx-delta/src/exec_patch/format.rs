//! The exec-patch format (all integers little-endian):
//!
//! ```text
//! magic       "QXEP" 0x03
//! transform   u8: 0 none, 1 reference projection (see `project`)
//! target_len  u64: the bytes the patch rebuilds
//! sixteen range lists, each u8 count then count × (start u64, len u64, address u64): the
//!   base's layout, then the target's (segments, code, pointer sections, relocation tables,
//!   frame index, frame records, symbol table, symbol names; of the target only the segments,
//!   the frame index and the symbol names are sent; all empty without a transform)
//! ctrl_len, diff_len, extra_len   u64 each: the sizes of the three raw LZMA2 streams that
//!             follow (8 MiB dictionary)
//! ctrl        stream: LEB128 varints: the step count n, then n adds, n copies, n seeks (zigzag)
//! diff        stream: bytes added (mod 256) to the transformed base for each `add`
//! extra       stream: bytes copied as they are for each `copy`
//! ```

use super::elf::{Layout, MAX_RANGES};
use crate::{DeltaError, Result};

pub(crate) const MAGIC: &[u8; 5] = b"QXEP\x03";

/// A file range of executable code and the address it is loaded at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CodeRange {
    pub start: u64,
    pub len: u64,
    pub address: u64,
}

impl CodeRange {
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transform {
    None = 0,
    Projection = 1,
}

/// What precedes the streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub transform: Transform,
    pub target_len: u64,
    pub base: Layout,
    pub target: Layout,
    pub stream_lens: [u64; 3],
}

impl Header {
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.push(self.transform as u8);
        out.extend_from_slice(&self.target_len.to_le_bytes());
        let (b, t) = (self.base.lists(), self.target.lists());
        for ranges in b.into_iter().chain(t) {
            out.push(ranges.len() as u8);
            for r in ranges {
                for v in [r.start, r.len, r.address] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        for len in self.stream_lens {
            out.extend_from_slice(&len.to_le_bytes());
        }
    }

    /// Parses a header, returning it and the bytes after it. Ranges are checked against the
    /// base's and the target's lengths; stream lengths against what follows.
    pub fn parse(patch: &[u8], base_len: u64) -> Result<(Header, &[u8])> {
        let mut r = Reader(patch);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(corrupt("not an exec-patch (bad magic)"));
        }
        let transform = match r.u8()? {
            0 => Transform::None,
            1 => Transform::Projection,
            t => return Err(corrupt(&format!("unknown transform {t}"))),
        };
        let target_len = r.u64()?;
        let mut base = Layout::default();
        for list in base.lists_mut() {
            *list = r.ranges(base_len)?;
        }
        let mut target = Layout::default();
        for list in target.lists_mut() {
            *list = r.ranges(target_len)?;
        }
        let stream_lens = [r.u64()?, r.u64()?, r.u64()?];
        let total = stream_lens.iter().try_fold(0u64, |a, &l| a.checked_add(l));
        if total != Some(r.0.len() as u64) {
            return Err(corrupt("stream lengths do not match the patch's length"));
        }
        let header = Header {
            transform,
            target_len,
            base,
            target,
            stream_lens,
        };
        Ok((header, r.0))
    }
}

pub(crate) fn corrupt(what: &str) -> DeltaError {
    DeltaError::Corrupt(format!("exec-patch: {what}"))
}

/// A cursor over the header's bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt("truncated header"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    /// A range list; every range inside `len` bytes, in order, not overlapping.
    fn ranges(&mut self, len: u64) -> Result<Vec<CodeRange>> {
        let count = usize::from(self.u8()?);
        if count > MAX_RANGES {
            return Err(corrupt("too many code ranges"));
        }
        let mut out: Vec<CodeRange> = Vec::with_capacity(count);
        for _ in 0..count {
            let r = CodeRange {
                start: self.u64()?,
                len: self.u64()?,
                address: self.u64()?,
            };
            let ordered = out.last().is_none_or(|p| p.end() <= r.start);
            if r.start.checked_add(r.len).is_none_or(|e| e > len) || !ordered {
                return Err(corrupt("code range outside the file"));
            }
            out.push(r);
        }
        Ok(out)
    }
}

/// Appends `v` as a LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}
