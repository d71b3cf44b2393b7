//! The x86-64 branch transform: inside code ranges, the 32-bit relative operands of
//! `call`/`jmp` (E8/E9), conditional jumps (0F 80–8F) and RIP-relative memory operands of common
//! instructions are rewritten as the address they point at. When code moves between two
//! builds, every relative operand that crosses the move changes, but the address it points at
//! changes only if its target moved: after the transform, unchanged code is unchanged bytes.
//!
//! The rewrite is a bijection: only operands whose value lies in `[-REACH, REACH)` are
//! rewritten, into a value in the same interval (addition modulo `2 * REACH`), so the inverse
//! rewrites exactly the values the forward pass did. The scan decides where an operand is from
//! opcode bytes that neither direction changes, so both passes find the same operands.

use super::format::CodeRange;

/// Half the interval of rewritten operands: 32 MiB each way covers nearly every branch.
const REACH: i64 = 1 << 25;

/// Instructions whose ModRM byte may name a RIP-relative operand: mov, lea, add, or, and, sub,
/// xor, cmp, test, xchg, movsxd, and the indirect call/jmp group.
const MODRM_OPCODES: [u8; 17] = [
    0x01, 0x03, 0x09, 0x0B, 0x21, 0x23, 0x29, 0x2B, 0x31, 0x33, 0x39, 0x3B, 0x63, 0x85, 0x89,
    0x8B, 0x8D,
];

#[derive(Clone, Copy)]
enum Direction {
    Forward,
    Inverse,
}

/// Rewrites the operands of `bytes` (a whole file) inside `ranges` as addresses.
pub(crate) fn forward(bytes: &mut [u8], ranges: &[CodeRange]) {
    rewrite(bytes, ranges, Direction::Forward);
}

/// Undoes [`forward`].
pub(crate) fn inverse(bytes: &mut [u8], ranges: &[CodeRange]) {
    rewrite(bytes, ranges, Direction::Inverse);
}

fn rewrite(bytes: &mut [u8], ranges: &[CodeRange], dir: Direction) {
    for r in ranges {
        let (Ok(start), Ok(len)) = (usize::try_from(r.start), usize::try_from(r.len)) else {
            continue;
        };
        let end = start.saturating_add(len).min(bytes.len());
        if let Some(code) = bytes.get_mut(start..end) {
            rewrite_range(code, r.address, dir);
        }
    }
}

/// One code range loaded at `address`.
fn rewrite_range(code: &mut [u8], address: u64, dir: Direction) {
    let mut i = 0;
    while i + 4 < code.len() {
        let Some(at) = operand_at(code, i) else {
            i += 1;
            continue;
        };
        if at + 4 > code.len() {
            return;
        }
        let next = address.wrapping_add(at as u64 + 4) as i64;
        let mut word = [0u8; 4];
        word.copy_from_slice(&code[at..at + 4]);
        let value = i64::from(i32::from_le_bytes(word));
        if (-REACH..REACH).contains(&value) {
            let moved = match dir {
                Direction::Forward => value.wrapping_add(next),
                Direction::Inverse => value.wrapping_sub(next),
            };
            let wrapped = (moved.wrapping_add(REACH)).rem_euclid(2 * REACH) - REACH;
            code[at..at + 4].copy_from_slice(&(wrapped as i32).to_le_bytes());
        }
        i = at + 4;
    }
}

/// Where the 32-bit operand of an instruction starting at `i` is, if it has one we rewrite.
fn operand_at(code: &[u8], i: usize) -> Option<usize> {
    let b0 = code[i];
    let b1 = *code.get(i + 1)?;
    if b0 == 0xE8 || b0 == 0xE9 {
        return Some(i + 1);
    }
    if b0 == 0x0F && (0x80..=0x8F).contains(&b1) {
        return Some(i + 2);
    }
    let rip_relative = |modrm: u8| modrm & 0xC7 == 0x05;
    if (0x40..=0x4F).contains(&b0) && MODRM_OPCODES.contains(&b1) {
        return rip_relative(*code.get(i + 2)?).then_some(i + 3);
    }
    if MODRM_OPCODES.contains(&b0) && rip_relative(b1) {
        return Some(i + 2);
    }
    if b0 == 0xFF && (b1 == 0x15 || b1 == 0x25) {
        return Some(i + 2);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(len: usize) -> Vec<CodeRange> {
        vec![CodeRange {
            start: 0,
            len: len as u64,
            address: 0x40_1000,
        }]
    }

    #[test]
    fn a_call_becomes_its_target_address_and_back() {
        // call +0x10 at offset 0: the next instruction is at 0x401005, the target 0x401015.
        let original = [0xE8, 0x10, 0, 0, 0, 0x90, 0x90, 0x90];
        let mut b = original;
        forward(&mut b, &range(8));
        let target = (0x40_1015i64 + REACH).rem_euclid(2 * REACH) - REACH;
        assert_eq!(b[1..5], (target as i32).to_le_bytes());
        inverse(&mut b, &range(8));
        assert_eq!(b, original);
    }

    #[test]
    fn the_same_call_moved_elsewhere_transforms_to_the_same_bytes() {
        let mut a = vec![0x90; 64];
        a[0..5].copy_from_slice(&[0xE8, 0x30, 0, 0, 0]); // to 0x401035
        let mut b = vec![0x90; 64];
        b[8..13].copy_from_slice(&[0xE8, 0x28, 0, 0, 0]); // from 8 bytes later, same target
        forward(&mut a, &range(64));
        forward(&mut b, &range(64));
        assert_eq!(a[1..5], b[9..13]);
    }

    #[test]
    fn every_byte_string_round_trips() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let original: Vec<u8> = (0..100_000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Many opcode bytes and small operands, so most rules fire.
                [0xE8, 0x0F, 0x85, 0x48, 0x8B, 0x05, 0xFF, 0x00][(x % 8) as usize] ^ (i % 3) as u8
            })
            .collect();
        let ranges = [
            CodeRange { start: 10, len: 40_000, address: 0x1000 },
            CodeRange { start: 60_000, len: 90_000, address: u64::MAX - 5 },
        ];
        let mut b = original.clone();
        forward(&mut b, &ranges);
        assert_ne!(b, original);
        inverse(&mut b, &ranges);
        assert_eq!(b, original);
    }
}
