//! Reference projection: the base rewritten as the target would hold it. A first alignment of
//! base and target (the patch's own steps) says where each base byte went in the target. Each
//! reference found in the base — a branch or RIP-relative operand in code, a pointer in writable
//! data, an address in a relocation or symbol entry — is rewritten to point where its target
//! went, from where it now sits. Code that moved, or that calls code that moved, then equals
//! the target byte for byte where it did not otherwise change.
//!
//! Both sides compute the projection the same way from the base, the two layouts and the steps,
//! so nothing of it is sent; the target is never transformed.

use super::elf::{u64_at, Layout};
use super::format::CodeRange;
use super::matcher::Op;
use super::unwind::{frame_fields, index_entries, Field};
use super::x86::operand_at;

/// Where base file offsets went in the target: (base start, target start, length), by base start.
pub(crate) struct Moves(Vec<(u64, u64, u64)>);

impl Moves {
    pub fn from_ops(ops: &[Op]) -> Moves {
        let mut v = Vec::with_capacity(ops.len());
        let (mut old, mut new) = (0i64, 0u64);
        for op in ops {
            if op.add > 0 && old >= 0 {
                v.push((old as u64, new, op.add as u64));
            }
            old = old.saturating_add(op.add as i64).saturating_add(op.seek);
            new += (op.add + op.copy) as u64;
        }
        v.sort_unstable();
        Moves(disjoint(v))
    }

    /// Where a base offset went: by the step that read it, or, for a byte no step read (code
    /// or a name that changed), at the same distance from where the bytes before it went.
    fn target_offset(&self, base_offset: u64) -> Option<u64> {
        let i = self
            .0
            .partition_point(|m| m.0 <= base_offset)
            .checked_sub(1)?;
        let (old, new, _) = self.0[i];
        new.checked_add(base_offset - old)
    }
}

/// The moves, sorted by base start, made disjoint: a base byte that several steps read (the
/// target repeats it) keeps the first of them, so a lookup finds it whatever shorter range
/// starts after that one.
fn disjoint(sorted: Vec<(u64, u64, u64)>) -> Vec<(u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64)> = Vec::with_capacity(sorted.len());
    let mut covered = 0u64;
    for (old, new, len) in sorted {
        let end = old.saturating_add(len);
        if end <= covered {
            continue;
        }
        let skip = covered.saturating_sub(old);
        out.push((old + skip, new + skip, len - skip));
        covered = end;
    }
    out
}

fn offset_of(segments: &[CodeRange], address: u64) -> Option<u64> {
    let s = segments
        .iter()
        .find(|s| address.wrapping_sub(s.address) < s.len)?;
    Some(s.start.wrapping_add(address - s.address))
}

fn address_of(segments: &[CodeRange], offset: u64) -> Option<u64> {
    let s = segments
        .iter()
        .find(|s| offset.wrapping_sub(s.start) < s.len)?;
    Some(s.address.wrapping_add(offset - s.start))
}

/// The two layouts and the moves between them.
pub(crate) struct Projection<'a> {
    pub base: &'a Layout,
    pub target: &'a Layout,
    pub moves: &'a Moves,
}

impl Projection<'_> {
    /// Where the base address went in the target.
    fn address(&self, base_address: u64) -> Option<u64> {
        let off = offset_of(&self.base.segments, base_address)?;
        address_of(&self.target.segments, self.moves.target_offset(off)?)
    }

    /// The base with every reference projected.
    pub fn apply(&self, base: &[u8]) -> Vec<u8> {
        let mut out = base.to_vec();
        for r in &self.base.code {
            self.code(&mut out, r);
        }
        for r in &self.base.pointers {
            self.words(&mut out, r, 8, &[0]);
        }
        for r in &self.base.tables {
            // A relocation's offset and addend.
            self.words(&mut out, r, 24, &[0, 16]);
        }
        for r in &self.base.symbols {
            // A symbol's value.
            self.words(&mut out, r, 24, &[8]);
        }
        self.symbol_names(&mut out);
        self.unwind_index(&mut out);
        for r in &self.base.frames {
            self.frames(&mut out, r);
        }
        out
    }

    fn code(&self, out: &mut [u8], r: &CodeRange) {
        let (start, end) = (r.start as usize, r.end() as usize);
        let mut i = start;
        while i + 4 < end {
            let Some(at) = operand_at(&out[..end], i) else {
                i += 1;
                continue;
            };
            if at + 4 > end {
                return;
            }
            if let Some(v) = self.relative(out, at, 4) {
                out[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            i = at + 4;
        }
    }

    /// The projected value of the 4-byte relative reference at file offset `at`, relative to
    /// its own address plus `bias` (4 for an instruction operand, 0 for a data field).
    fn relative(&self, out: &[u8], at: usize, bias: u64) -> Option<i32> {
        let rel = i32::from_le_bytes(out.get(at..at + 4)?.try_into().ok()?);
        let from = address_of(&self.base.segments, at as u64)?.wrapping_add(bias);
        let to = self.address(from.wrapping_add_signed(i64::from(rel)))?;
        let at_t = self.moves.target_offset(at as u64)?;
        let from_t = address_of(&self.target.segments, at_t)?.wrapping_add(bias);
        i32::try_from(to.wrapping_sub(from_t) as i64).ok()
    }

    /// Projects the 8-byte words at `fields` of each `stride`-byte entry of range `r`.
    fn words(&self, out: &mut [u8], r: &CodeRange, stride: usize, fields: &[usize]) {
        let (start, end) = (r.start as usize, r.end() as usize);
        let first = start.next_multiple_of(8);
        for entry in (first..end).step_by(stride) {
            for f in fields {
                let at = entry + f;
                let Some(w) = u64_at(&out[..end], at) else {
                    continue;
                };
                if let Some(p) = self.address(w).filter(|&p| p != w) {
                    out[at..at + 8].copy_from_slice(&p.to_le_bytes());
                }
            }
        }
    }

    /// Each symbol's name offset, to where its name went in the target's string table.
    fn symbol_names(&self, out: &mut [u8]) -> Option<()> {
        let (syms, names) = (self.base.symbols.first()?, self.base.names.first()?);
        let names_t = self.target.names.first()?;
        let end = syms.end() as usize;
        for at in (syms.start as usize..end).step_by(24) {
            let Some(name) = out.get(at..(at + 4).min(end)) else { break };
            let Ok(name) = <[u8; 4]>::try_from(name) else { break };
            let name = names.start + u64::from(u32::from_le_bytes(name));
            let moved = self.moves.target_offset(name).filter(|_| name < names.end());
            let Some(to) = moved.and_then(|t| t.checked_sub(names_t.start)) else {
                continue;
            };
            if let Ok(to) = u32::try_from(to) {
                out[at..at + 4].copy_from_slice(&to.to_le_bytes());
            }
        }
        Some(())
    }

    /// The frame index's table: addresses relative to the index's own address.
    fn unwind_index(&self, out: &mut [u8]) -> Option<()> {
        let (b, t) = (self.base.unwind.first()?, self.target.unwind.first()?);
        for at in index_entries(out, b.start as usize, b.end() as usize).step_by(4) {
            let Some(v) = out.get(at..at + 4).and_then(|v| <[u8; 4]>::try_from(v).ok()) else {
                break;
            };
            let to = b.address.wrapping_add_signed(i64::from(i32::from_le_bytes(v)));
            let Some(p) = self.address(to) else { continue };
            if let Ok(p) = i32::try_from(p.wrapping_sub(t.address) as i64) {
                out[at..at + 4].copy_from_slice(&p.to_le_bytes());
            }
        }
        Some(())
    }

    /// The frame records' code and exception-table pointers and common-record distances.
    fn frames(&self, out: &mut [u8], r: &CodeRange) {
        let mut fields = Vec::new();
        frame_fields(out, r.start as usize, r.end() as usize, |f| fields.push(f));
        for f in fields {
            let (at, v) = match f {
                Field::PcRelative(at) => (at, self.relative(out, at, 0)),
                Field::CommonRecord(at) => (at, self.distance_back(out, at)),
            };
            if let Some(v) = v {
                out[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
    }

    /// The distance back from the field at `at` to the record it names, as in the target.
    fn distance_back(&self, out: &[u8], at: usize) -> Option<i32> {
        let d = u32::from_le_bytes(out.get(at..at + 4)?.try_into().ok()?);
        let to = (at as u64).checked_sub(u64::from(d))?;
        let (at_t, to_t) = (self.moves.target_offset(at as u64)?, self.moves.target_offset(to)?);
        i32::try_from(at_t.checked_sub(to_t)?).ok()
    }
}

#[cfg(test)]
impl Moves {
    pub fn target_offset_pub(&self, base_offset: u64) -> Option<u64> {
        self.target_offset(base_offset)
    }
}
