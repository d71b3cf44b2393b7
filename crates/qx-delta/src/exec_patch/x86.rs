//! Where x86-64 code holds 32-bit relative references: `call`/`jmp` (E8/E9), conditional
//! jumps (0F 80–8F), indirect `call`/`jmp` through memory (FF 15/25) and RIP-relative memory
//! operands of common instructions (mov, lea, add, or, and, sub, xor, cmp, test, movsxd, with
//! or without a REX prefix). The scan is a linear sweep: it takes what looks like one of these
//! instructions and skips its operand; a false find costs only compression, never correctness.

/// Instructions whose ModRM byte may name a RIP-relative operand.
const MODRM_OPCODES: [u8; 17] = [
    0x01, 0x03, 0x09, 0x0B, 0x21, 0x23, 0x29, 0x2B, 0x31, 0x33, 0x39, 0x3B, 0x63, 0x85, 0x89, 0x8B,
    0x8D,
];

/// Where the 32-bit operand of an instruction starting at `i` is, if it has one we follow.
pub(crate) fn operand_at(code: &[u8], i: usize) -> Option<usize> {
    let b0 = *code.get(i)?;
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
    use super::operand_at;

    #[test]
    fn operands_of_calls_jumps_and_rip_relative_loads_are_found() {
        assert_eq!(operand_at(&[0xE8, 1, 2, 3, 4], 0), Some(1));
        assert_eq!(operand_at(&[0x0F, 0x85, 1, 2, 3, 4], 0), Some(2));
        // mov rax, [rip+disp32] and lea rdi, [rip+disp32]
        assert_eq!(operand_at(&[0x48, 0x8B, 0x05, 1, 2, 3, 4], 0), Some(3));
        assert_eq!(operand_at(&[0x48, 0x8D, 0x3D, 1, 2, 3, 4], 0), Some(3));
        // mov rax, [rbx] has no displacement; nop is nothing.
        assert_eq!(operand_at(&[0x48, 0x8B, 0x03, 0, 0, 0, 0], 0), None);
        assert_eq!(operand_at(&[0x90, 0x90], 0), None);
        assert_eq!(operand_at(&[0xE8], 0), None);
    }
}
