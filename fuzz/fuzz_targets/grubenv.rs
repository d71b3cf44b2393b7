//! The GRUB environment block parser: any bytes, and any 1024 bytes; an accepted block is
//! written back to a block that parses to the same variables.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qx_boot::grubenv::{GrubEnv, BLOCK_SIZE};

fuzz_target!(|data: &[u8]| {
    let _ = GrubEnv::parse(data);
    let mut block = vec![0u8; BLOCK_SIZE];
    let n = data.len().min(BLOCK_SIZE);
    block[..n].copy_from_slice(&data[..n]);
    if let Ok(env) = GrubEnv::parse(&block) {
        let bytes = env.to_bytes();
        assert_eq!(bytes.len(), BLOCK_SIZE);
        let again = GrubEnv::parse(&bytes).expect("a block written back parses");
        assert!(env.vars().eq(again.vars()));
    }
});
