//! The signed channel state's parser and rules, on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qx_core::{ChannelState, UnknownFields};

fuzz_target!(|data: &[u8]| {
    for unknown in [UnknownFields::Reject, UnknownFields::Ignore] {
        let _ = ChannelState::parse(data, unknown);
    }
});
