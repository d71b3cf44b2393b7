//! Where the unwind tables hold addresses. The frame index (`.eh_frame_hdr`, as the linker
//! writes it: PC-relative pointer, 4-byte count, a sorted table of 4-byte pairs relative to the
//! index's own address) and the frame records (`.eh_frame`: each function's record names its
//! common record by distance back, its code and its exception table PC-relative, 4 bytes).
//! Records of another encoding are skipped; a walk that finds something odd stops there.

use std::collections::HashMap;

/// A 4-byte field of the frame records holding a reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// An address relative to the field's own address.
    PcRelative(usize),
    /// The distance back from the field to its record's common record.
    CommonRecord(usize),
}

/// PC-relative, signed 4 bytes: the only pointer encoding followed.
const PCREL_SDATA4: u8 = 0x1b;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The table of the frame index starting at `start` (file offset): the file offsets of its
/// 4-byte entries, each relative to the index's address.
pub(crate) fn index_entries(file: &[u8], start: usize, end: usize) -> std::ops::Range<usize> {
    let table = start.saturating_add(12);
    let count = u32_at(file, start + 8).map_or(0, |c| c as usize);
    let table_end = table.saturating_add(count.saturating_mul(8)).min(end);
    table..table_end.max(table)
}

/// What a common record says of the records that name it.
#[derive(Clone, Copy)]
struct Common {
    /// The augmentation has a data-length ('z').
    sized: bool,
    /// The code pointer is PC-relative 4 bytes.
    pcrel: bool,
    /// The exception-table pointer is present and PC-relative 4 bytes.
    lsda: bool,
}

/// Calls `each` on every reference field of the frame records in `file[start..end]`.
pub(crate) fn frame_fields(file: &[u8], start: usize, end: usize, mut each: impl FnMut(Field)) {
    let mut commons: HashMap<usize, Common> = HashMap::new();
    let mut at = start;
    while let Some(len) = u32_at(file, at).filter(|&l| l != 0 && l != u32::MAX) {
        let Some(next) = at.checked_add(4 + len as usize).filter(|&n| n <= end) else {
            return;
        };
        let Some(id) = u32_at(file, at + 4) else {
            return;
        };
        if id == 0 {
            if let Some(c) = common(&file[..next], at) {
                commons.insert(at, c);
            }
        } else if let Some(c) = (at + 4)
            .checked_sub(id as usize)
            .and_then(|c| commons.get(&c))
        {
            each(Field::CommonRecord(at + 4));
            record(&file[..next], at, *c, &mut each);
        }
        at = next;
    }
}

/// The fields of the function record at `at` whose common record says `c`.
fn record(file: &[u8], at: usize, c: Common, each: &mut impl FnMut(Field)) {
    if !c.pcrel {
        return;
    }
    each(Field::PcRelative(at + 8));
    if !(c.sized && c.lsda) {
        return;
    }
    let Some((len, n)) = uleb(file, at + 16) else {
        return;
    };
    let lsda = at + 16 + n;
    if len >= 4 && lsda + 4 <= file.len() {
        each(Field::PcRelative(lsda));
    }
}

/// Parses the common record at `at`: its augmentation's encodings.
fn common(file: &[u8], at: usize) -> Option<Common> {
    let aug_at = at + 9;
    let aug_len = file.get(aug_at..)?.iter().position(|&b| b == 0)?;
    let aug = &file[aug_at..aug_at + aug_len];
    let mut p = aug_at + aug_len + 1;
    p += uleb(file, p)?.1; // code alignment
    p += uleb(file, p)?.1; // data alignment (signed, same length rule)
    p += if *file.get(at + 8)? == 1 {
        1
    } else {
        uleb(file, p)?.1
    };
    let mut c = Common {
        sized: aug.first() == Some(&b'z'),
        pcrel: false,
        lsda: false,
    };
    if !c.sized {
        return Some(c);
    }
    p += uleb(file, p)?.1;
    for &ch in &aug[1..] {
        match ch {
            b'R' => {
                c.pcrel = *file.get(p)? == PCREL_SDATA4;
                p += 1;
            }
            b'L' => {
                c.lsda = *file.get(p)? == PCREL_SDATA4;
                p += 1;
            }
            b'P' => p += 1 + pointer_size(*file.get(p)?)?,
            b'S' | b'B' => {}
            _ => return None,
        }
    }
    Some(c)
}

/// The size of a pointer of encoding `enc` (its low nibble), if fixed.
fn pointer_size(enc: u8) -> Option<usize> {
    match enc & 0x0F {
        0x02 | 0x0A => Some(2),
        0x03 | 0x0B => Some(4),
        0x00 | 0x04 | 0x0C => Some(8),
        _ => None,
    }
}

/// An unsigned LEB128 value at `at` and its length in bytes.
fn uleb(file: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = *file.get(at + i)?;
        v |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}
