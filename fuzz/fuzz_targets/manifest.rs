//! The manifest parser and its rules, on any bytes; an accepted manifest serialises to bytes
//! that parse back to the same manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qx_core::{Manifest, UnknownFields};

fuzz_target!(|data: &[u8]| {
    for unknown in [UnknownFields::Reject, UnknownFields::Ignore] {
        if let Ok(m) = Manifest::parse(data, unknown) {
            let again = Manifest::parse(&m.to_bytes(), UnknownFields::Reject)
                .expect("a manifest's own bytes parse");
            assert_eq!(m, again);
        }
    }
});
