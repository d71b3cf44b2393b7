//! The layout of an x86-64 ELF64 little-endian file, as far as references go: its loadable
//! segments (file range → address), its executable segments (code to scan for branch and
//! RIP-relative operands), its writable data sections (8-byte pointers), its relocation tables
//! (24-byte entries holding addresses), its symbol table and that table's names, and its unwind
//! tables (the frame index and the frame records, holding addresses relative to themselves).
//! Anything else — another format, another machine, an odd header — has no layout and is
//! diffed as plain bytes.

use super::format::CodeRange;

/// At most this many ranges of each kind are recorded.
pub(crate) const MAX_RANGES: usize = 64;

const PT_LOAD: u32 = 1;
const PT_GNU_EH_FRAME: u32 = 0x6474_e550;
const PF_X: u32 = 1;
const EM_X86_64: u16 = 62;
const SHT_SYMTAB: u32 = 2;
const SHT_RELA: u32 = 4;
const SHT_NOBITS: u32 = 8;
const SHF_WRITE: u64 = 1;
const SHF_ALLOC: u64 = 2;

/// Where references live in one file. Every list is sorted and non-overlapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    pub segments: Vec<CodeRange>,
    pub code: Vec<CodeRange>,
    pub pointers: Vec<CodeRange>,
    pub tables: Vec<CodeRange>,
    /// The frame index (`.eh_frame_hdr`): at most one.
    pub unwind: Vec<CodeRange>,
    /// The frame records (`.eh_frame`) the index names, to the end of their segment.
    pub frames: Vec<CodeRange>,
    /// The symbol table (at most one) and its string table, in `names`.
    pub symbols: Vec<CodeRange>,
    pub names: Vec<CodeRange>,
}

impl Layout {
    /// Every list, in the order the patch header holds them.
    pub fn lists(&self) -> [&Vec<CodeRange>; 8] {
        [
            &self.segments,
            &self.code,
            &self.pointers,
            &self.tables,
            &self.unwind,
            &self.frames,
            &self.symbols,
            &self.names,
        ]
    }

    pub fn lists_mut(&mut self) -> [&mut Vec<CodeRange>; 8] {
        [
            &mut self.segments,
            &mut self.code,
            &mut self.pointers,
            &mut self.tables,
            &mut self.unwind,
            &mut self.frames,
            &mut self.symbols,
            &mut self.names,
        ]
    }

    /// What the decoder needs of the target's layout: where its segments, frame index and
    /// symbol names are.
    pub fn target_part(self) -> Layout {
        Layout {
            segments: self.segments,
            unwind: self.unwind,
            names: self.names,
            ..Layout::default()
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The layout of `file` if it is an x86-64 ELF64 file with loadable segments.
pub(crate) fn layout(file: &[u8]) -> Option<Layout> {
    let ident = file.get(..6)?;
    if ident != b"\x7fELF\x02\x01" || u16_at(file, 18)? != EM_X86_64 {
        return None;
    }
    let mut l = Layout::default();
    for at in entries(file, 32, 54, 56, 56)? {
        program_header(file, at, &mut l);
    }
    let sections = entries(file, 40, 58, 60, 64).unwrap_or_default();
    for &at in &sections {
        section_header(file, at, &sections, &mut l);
    }
    l.symbols.truncate(1);
    l.names.truncate(1);
    frames(file, &mut l);
    for list in l.lists_mut() {
        tidy(list, file.len() as u64);
    }
    if l.symbols.len() != l.names.len() {
        l.symbols.clear();
        l.names.clear();
    }
    (!l.segments.is_empty()).then_some(l)
}

/// The frame records' range, from the frame index's pointer to them (PC-relative, 4 bytes):
/// from there to the end of the loadable segment holding them.
fn frames(file: &[u8], l: &mut Layout) -> Option<()> {
    let hdr = *l.unwind.first()?;
    let at = usize::try_from(hdr.start).ok()?;
    if file.get(at..at + 4)? != [1, 0x1b, 0x03, 0x3b] {
        l.unwind.clear();
        return None;
    }
    let rel = i32::from_le_bytes(file.get(at + 4..at + 8)?.try_into().ok()?);
    let address = hdr
        .address
        .wrapping_add(4)
        .wrapping_add_signed(i64::from(rel));
    let seg = l
        .segments
        .iter()
        .find(|s| address.wrapping_sub(s.address) < s.len)?;
    let start = seg.start + address.wrapping_sub(seg.address);
    l.frames.push(CodeRange {
        start,
        len: seg.end() - start,
        address,
    });
    Some(())
}

/// The offsets of a header table's entries (`off`, `size`, `count` fields; `min` entry size).
fn entries(file: &[u8], off: usize, size: usize, count: usize, min: usize) -> Option<Vec<usize>> {
    let start = usize::try_from(u64_at(file, off)?).ok()?;
    let entsize = usize::from(u16_at(file, size)?);
    let n = usize::from(u16_at(file, count)?);
    if entsize < min {
        return None;
    }
    (0..n)
        .map(|i| start.checked_add(i.checked_mul(entsize)?))
        .collect()
}

fn program_header(file: &[u8], at: usize, l: &mut Layout) -> Option<()> {
    let kind = u32_at(file, at)?;
    let r = CodeRange {
        start: u64_at(file, at + 8)?,
        len: u64_at(file, at + 32)?,
        address: u64_at(file, at + 16)?,
    };
    if kind == PT_GNU_EH_FRAME {
        l.unwind.push(r);
    }
    if kind != PT_LOAD {
        return None;
    }
    l.segments.push(r);
    if u32_at(file, at + 4)? & PF_X != 0 {
        l.code.push(r);
    }
    Some(())
}

fn section_range(file: &[u8], at: usize) -> Option<CodeRange> {
    Some(CodeRange {
        start: u64_at(file, at + 24)?,
        len: u64_at(file, at + 32)?,
        address: u64_at(file, at + 16)?,
    })
}

fn section_header(file: &[u8], at: usize, sections: &[usize], l: &mut Layout) -> Option<()> {
    let kind = u32_at(file, at + 4)?;
    let flags = u64_at(file, at + 8)?;
    let r = section_range(file, at)?;
    if kind == SHT_SYMTAB {
        // The string table is the section its link names.
        let link = usize::try_from(u32_at(file, at + 40)?).ok()?;
        let names = section_range(file, *sections.get(link)?)?;
        l.symbols.push(r);
        l.names.push(names);
    } else if kind == SHT_RELA {
        l.tables.push(r);
    } else if kind != SHT_NOBITS && flags & (SHF_WRITE | SHF_ALLOC) == SHF_WRITE | SHF_ALLOC {
        l.pointers.push(r);
    }
    Some(())
}

/// Clips to the file, drops empty and overlapping ranges, sorts, caps the count.
fn tidy(list: &mut Vec<CodeRange>, file_len: u64) {
    for r in list.iter_mut() {
        r.len = r.len.min(file_len.saturating_sub(r.start));
    }
    list.retain(|r| r.len > 0);
    list.sort_by_key(|r| r.start);
    let mut end = 0;
    list.retain(|r| {
        let keep = r.start >= end;
        if keep {
            end = r.end();
        }
        keep
    });
    list.truncate(MAX_RANGES);
}
