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
    Some(s.start.wrapping_add(address.wrapping_sub(s.address)))
}

fn address_of(segments: &[CodeRange], offset: u64) -> Option<u64> {
    let s = segments
        .iter()
        .find(|s| offset.wrapping_sub(s.start) < s.len)?;
    Some(s.address.wrapping_add(offset.wrapping_sub(s.start)))
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
            let Some(name) = out.get(at..(at + 4).min(end)) else {
                break;
            };
            let Ok(name) = <[u8; 4]>::try_from(name) else {
                break;
            };
            let name = names.start + u64::from(u32::from_le_bytes(name));
            let moved = self
                .moves
                .target_offset(name)
                .filter(|_| name < names.end());
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
            let Some(v) = out
                .get(at..at + 4)
                .and_then(|v| <[u8; 4]>::try_from(v).ok())
            else {
                break;
            };
            let to = b
                .address
                .wrapping_add_signed(i64::from(i32::from_le_bytes(v)));
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
        let (at_t, to_t) = (
            self.moves.target_offset(at as u64)?,
            self.moves.target_offset(to)?,
        );
        i32::try_from(at_t.checked_sub(to_t)?).ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::elf::Layout;
    use super::super::format::CodeRange;
    use super::super::matcher::Op;
    use super::{Moves, Projection};

    /// The address the one segment of [`build`]'s files is loaded at.
    const ADDR: u64 = 0x40_0000;
    /// Where [`build`] inserts bytes into the code.
    const INSERT_AT: usize = 0x40;

    fn put(f: &mut [u8], at: usize, bytes: &[u8]) {
        f[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn rel(to: usize, from: usize) -> [u8; 4] {
        (i32::try_from(to).unwrap() - i32::try_from(from).unwrap()).to_le_bytes()
    }

    fn range(start: usize, len: usize, address: u64) -> CodeRange {
        CodeRange {
            start: start as u64,
            len: len as u64,
            address,
        }
    }

    /// A file with `k` bytes (a multiple of 8, so the data stays aligned) inserted into its code
    /// at [`INSERT_AT`], holding one reference of each kind, every one written as a linker would
    /// for that layout: a call across the insertion, a frame record (common-record distance,
    /// code pointer before the insertion), a frame index entry, a data pointer, a symbol's name
    /// and value. Offsets are addresses less [`ADDR`].
    fn build(k: usize) -> (Vec<u8>, Layout) {
        let (callee, frames) = (0x80 + k, 0x100 + k);
        let (index, pointer) = (frames + 52, (frames + 72).next_multiple_of(8));
        let (symbols, names) = (pointer + 8, pointer + 32);
        let mut f = vec![0x90u8; names + 3];
        put(&mut f, 0x10, &[0xE8]);
        put(&mut f, 0x11, &rel(callee, 0x15));
        // Common record: "zR", code alignment 1, data alignment -8, return column 16,
        // augmentation data 1 byte: PC-relative 4-byte pointers; then no-ops.
        put(
            &mut f,
            frames,
            &[
                20, 0, 0, 0, 0, 0, 0, 0, 1, b'z', b'R', 0, 1, 0x78, 16, 1, 0x1b,
            ],
        );
        put(&mut f, frames + 17, &[0; 7]);
        put(&mut f, frames + 24, &[20, 0, 0, 0]);
        put(&mut f, frames + 28, &28u32.to_le_bytes());
        put(&mut f, frames + 32, &rel(0x20, frames + 32));
        put(
            &mut f,
            frames + 36,
            &[0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        );
        put(&mut f, index, &[1, 0x1b, 3, 0x3b]);
        put(&mut f, index + 4, &rel(frames, index + 4));
        put(&mut f, index + 8, &1u32.to_le_bytes());
        put(&mut f, index + 12, &rel(0x20, index));
        put(&mut f, index + 16, &rel(frames + 24, index));
        put(&mut f, pointer, &(ADDR + callee as u64).to_le_bytes());
        put(&mut f, symbols, &[1, 0, 0, 0, 0x12, 0, 1, 0]);
        put(&mut f, symbols + 8, &(ADDR + callee as u64).to_le_bytes());
        put(&mut f, symbols + 16, &0x10u64.to_le_bytes());
        put(&mut f, names, b"\0f\0");
        let layout = Layout {
            segments: vec![range(0, f.len(), ADDR)],
            code: vec![range(0, frames, ADDR)],
            pointers: vec![range(pointer, 8, ADDR + pointer as u64)],
            unwind: vec![range(index, 20, ADDR + index as u64)],
            frames: vec![range(frames, 52, ADDR + frames as u64)],
            symbols: vec![range(symbols, 24, 0)],
            names: vec![range(names, 3, 0)],
            ..Layout::default()
        };
        (f, layout)
    }

    /// What the steps rebuild from `base`: its first bytes, `k` new ones, the rest.
    fn rebuild(base: &[u8], target: &[u8], k: usize) -> Vec<u8> {
        let mut out = base[..INSERT_AT].to_vec();
        out.extend_from_slice(&target[INSERT_AT..INSERT_AT + k]);
        out.extend_from_slice(&base[INSERT_AT..]);
        out
    }

    #[test]
    fn every_reference_to_moved_bytes_is_projected_to_the_targets_value() {
        for k in [8, 24, 4096] {
            let (base, base_layout) = build(0);
            let (target, target_layout) = build(k);
            let ops = [
                Op {
                    add: INSERT_AT,
                    copy: k,
                    seek: 0,
                },
                Op {
                    add: base.len() - INSERT_AT,
                    copy: 0,
                    seek: 0,
                },
            ];
            let moves = Moves::from_ops(&ops);
            let target_layout = target_layout.target_part();
            let p = Projection {
                base: &base_layout,
                target: &target_layout,
                moves: &moves,
            };
            let projected = p.apply(&base);
            assert_ne!(
                rebuild(&base, &target, k),
                target,
                "the references differ unprojected"
            );
            assert_eq!(
                rebuild(&projected, &target, k),
                target,
                "{k} bytes inserted"
            );
        }
    }

    #[test]
    fn a_base_byte_read_by_two_steps_is_found_by_the_first_of_them() {
        // Base bytes 0..100 rebuild target 0..100; then base 10..20 again at target 100..110.
        let ops = [
            Op {
                add: 100,
                copy: 0,
                seek: -90,
            },
            Op {
                add: 10,
                copy: 0,
                seek: 0,
            },
        ];
        let moves = Moves::from_ops(&ops);
        assert_eq!(moves.target_offset(15), Some(15));
        assert_eq!(moves.target_offset(50), Some(50));
        // A byte no step read keeps its distance from the bytes before it.
        let gap = Moves::from_ops(&[
            Op {
                add: 10,
                copy: 5,
                seek: 8,
            },
            Op {
                add: 10,
                copy: 0,
                seek: 0,
            },
        ]);
        assert_eq!(gap.target_offset(12), Some(12));
        assert_eq!(gap.target_offset(19), Some(16));
    }
}
