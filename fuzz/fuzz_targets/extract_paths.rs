//! The extractor's entry-path check and symbolic-link resolution. The input is lines:
//! `path` (an entry name) or `path\ttarget` (a symbolic link). Every accepted entry path is
//! relative and made of plain names; every accepted link resolves to such a path (inside the
//! tree), also when all links are checked again at the end.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use qx_agent::transaction::extract::{entry_path, LinkTree};

fn inside(p: &Path) -> bool {
    p.components().all(|c| matches!(c, Component::Normal(_)))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut tree = LinkTree::new();
    for line in text.lines().take(256) {
        let (name, target) = match line.split_once('\t') {
            Some((n, t)) => (n, Some(t)),
            None => (line, None),
        };
        let Ok(rel) = entry_path(Path::new("fuzz.tar.zst"), name) else {
            continue;
        };
        assert!(inside(&rel), "{name:?} -> {rel:?}");
        if let (Some(target), false) = (target, rel.as_os_str().is_empty()) {
            if let Ok(at) = tree.add(&rel, target) {
                assert!(inside(&at), "{name:?} -> {target:?} resolved to {at:?}");
            }
        }
    }
    let _ = tree.recheck();
});
