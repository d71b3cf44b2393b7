//! Applying a delta: any patch against any base, with any algorithm, never panics and never
//! writes more than the limit. Input: one byte choosing the algorithm (modulo 3), two bytes (little-endian)
//! giving the base's length, the base, then the patch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qx_delta::{decode, DeltaAlgorithm};

const LIMIT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let [choice, lo, hi, rest @ ..] = data else {
        return;
    };
    let algorithm = match choice % 3 {
        0 => DeltaAlgorithm::ZstdPatch,
        1 => DeltaAlgorithm::ExecPatch,
        _ => DeltaAlgorithm::ZstdWindow,
    };
    let split = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
    let (base, patch) = rest.split_at(split);
    let mut out = Vec::new();
    if let Ok(n) = decode(algorithm, base, patch, &mut out, LIMIT) {
        assert_eq!(n, out.len() as u64);
        assert!(n <= LIMIT);
    }
});
