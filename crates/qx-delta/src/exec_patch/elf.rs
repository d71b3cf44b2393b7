//! The layout of an x86-64 ELF64 little-endian file, as far as references go: its loadable
//! segments (file range → address), its executable segments (code to scan for branch and
//! RIP-relative operands), its writable data sections (8-byte pointers) and its relocation and
//! symbol tables (24-byte entries holding addresses). Anything else — another format, another
//! machine, an odd header — has no layout and is diffed as plain bytes.

use super::format::CodeRange;

/// At most this many ranges of each kind are recorded.
pub(crate) const MAX_RANGES: usize = 64;

const PT_LOAD: u32 = 1;
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
    for at in entries(file, 40, 58, 60, 64).unwrap_or_default() {
        section_header(file, at, &mut l);
    }
    for list in [&mut l.segments, &mut l.code, &mut l.pointers, &mut l.tables] {
        tidy(list, file.len() as u64);
    }
    (!l.segments.is_empty()).then_some(l)
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
    if u32_at(file, at)? != PT_LOAD {
        return None;
    }
    let r = CodeRange {
        start: u64_at(file, at + 8)?,
        len: u64_at(file, at + 32)?,
        address: u64_at(file, at + 16)?,
    };
    l.segments.push(r);
    if u32_at(file, at + 4)? & PF_X != 0 {
        l.code.push(r);
    }
    Some(())
}

fn section_header(file: &[u8], at: usize, l: &mut Layout) -> Option<()> {
    let kind = u32_at(file, at + 4)?;
    let flags = u64_at(file, at + 8)?;
    let r = CodeRange {
        start: u64_at(file, at + 24)?,
        len: u64_at(file, at + 32)?,
        address: u64_at(file, at + 16)?,
    };
    if kind == SHT_RELA || kind == SHT_SYMTAB {
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
