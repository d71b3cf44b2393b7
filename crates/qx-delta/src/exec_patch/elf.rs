//! The code ranges of an executable: the file ranges of an ELF64 little-endian x86-64 file's
//! loadable, executable segments, with the address each range is loaded at. Anything else
//! (another format, another machine, a truncated or odd header) has none, and is diffed as
//! plain bytes.

use super::format::CodeRange;

/// At most this many code ranges are recorded (executables have one or two).
pub(crate) const MAX_RANGES: usize = 16;

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const EM_X86_64: u16 = 62;
const PHDR_LEN: usize = 56;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The executable segments of `file` if it is an x86-64 ELF64 file; empty otherwise.
pub(crate) fn code_ranges(file: &[u8]) -> Vec<CodeRange> {
    program_headers(file).unwrap_or_default()
}

fn program_headers(file: &[u8]) -> Option<Vec<CodeRange>> {
    let ident = file.get(..6)?;
    if ident != b"\x7fELF\x02\x01" || u16_at(file, 18)? != EM_X86_64 {
        return None;
    }
    let phoff = usize::try_from(u64_at(file, 32)?).ok()?;
    let entsize = usize::from(u16_at(file, 54)?);
    let count = usize::from(u16_at(file, 56)?);
    if entsize < PHDR_LEN {
        return None;
    }
    let mut ranges = Vec::new();
    for i in 0..count {
        let at = phoff.checked_add(i.checked_mul(entsize)?)?;
        if let Some(r) = code_segment(file, at) {
            ranges.push(r);
        }
    }
    ranges.sort_by_key(|r| r.start);
    let disjoint = ranges.windows(2).all(|w| w[0].end() <= w[1].start);
    (disjoint && ranges.len() <= MAX_RANGES).then_some(ranges)
}

/// The program header at `at` as a code range, when it is a loadable executable segment.
fn code_segment(file: &[u8], at: usize) -> Option<CodeRange> {
    if u32_at(file, at)? != PT_LOAD || u32_at(file, at + 4)? & PF_X == 0 {
        return None;
    }
    let start = u64_at(file, at + 8)?;
    let address = u64_at(file, at + 16)?;
    let len = u64_at(file, at + 32)?;
    let end = start.checked_add(len)?.min(file.len() as u64);
    (start < end).then_some(CodeRange {
        start,
        len: end - start,
        address,
    })
}
