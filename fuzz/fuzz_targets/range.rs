//! The `Range` header parser: any header against any length; a range it accepts lies inside
//! the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (len, header) = data.split_at(8);
    let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    if let Ok(Some(r)) = qx_server::range::resolve(header, len) {
        assert!(r.start <= r.end && r.end < len, "{header:?} len {len}: {r:?}");
    }
});
