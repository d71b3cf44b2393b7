//! The agent's YAML configuration (`node.yaml`), on any text. Key files named in it are looked
//! up under a root that does not exist.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = qx_agent::Config::parse(
        text,
        Path::new("node.yaml"),
        Path::new("/nonexistent/qx-fuzz-root"),
    );
});
