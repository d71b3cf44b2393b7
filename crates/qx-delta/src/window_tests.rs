//! `zstd-window`: image patches applied from a base in memory or in a file.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::Write;

use crate::tests::noise;
use crate::zstd_window::{encode, Layout};
use crate::{decode, decode_file, DeltaAlgorithm, DeltaError};

const WINDOW: DeltaAlgorithm = DeltaAlgorithm::ZstdWindow;
/// Small segments and windows, so that tests cut a few MiB into many frames.
const SMALL: Layout = Layout {
    segment: 64 << 10,
    window: 192 << 10,
    befores: &[32 << 10, 64 << 10],
};

fn file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> File {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    File::open(path).unwrap()
}

/// What `decode_file` writes for `patch` against `base` held in a file, or its error.
fn from_file(base: &[u8], patch: &[u8], limit: u64) -> Result<Vec<u8>, DeltaError> {
    let dir = tempfile::tempdir().unwrap();
    let b = file(dir.path(), "base", base);
    let mut out = Vec::new();
    decode_file(WINDOW, &b, patch, &mut out, limit)?;
    Ok(out)
}

/// An image-like pair: the target is the base with blocks rewritten, edited and inserted, so
/// that everything after the first insertion sits a little later than in the base.
fn image_pair(len: usize) -> (Vec<u8>, Vec<u8>) {
    let base = noise(len, 11);
    let mut target = Vec::with_capacity(len + len / 8);
    for (i, block) in base.chunks(16 << 10).enumerate() {
        match i % 7 {
            0 => target.extend_from_slice(&noise(block.len(), i as u64 + 100)),
            1 => {
                let mut b = block.to_vec();
                b[block.len() / 3] ^= 0xff;
                target.extend_from_slice(&b);
            }
            2 => {
                target.extend_from_slice(&noise(3000, i as u64 + 500));
                target.extend_from_slice(block);
            }
            _ => target.extend_from_slice(block),
        }
    }
    (base, target)
}

#[test]
fn an_image_patch_rebuilds_the_target_from_a_file_and_from_memory() {
    let (base, target) = image_pair(2 << 20);
    let patch = encode(&base, &target, SMALL).unwrap();
    // A seventh of the blocks is new, and 3000 bytes per seventh are inserted.
    assert!(patch.len() < target.len() / 4, "{} bytes", patch.len());
    assert_eq!(
        from_file(&base, &patch, target.len() as u64).unwrap(),
        target
    );
    let mut in_memory = Vec::new();
    decode(WINDOW, &base, &patch[..], &mut in_memory, u64::MAX).unwrap();
    assert_eq!(in_memory, target);
}

#[test]
fn the_publish_tools_layout_round_trips_a_target_of_several_segments() {
    let base = noise(9 << 20, 3);
    let mut target = base.clone();
    target[5 << 20] ^= 1;
    target.extend_from_slice(&noise(1 << 20, 4));
    let patch = crate::encode(WINDOW, &base, &target).unwrap();
    assert!(
        patch.len() < (1 << 20) + (64 << 10),
        "{} bytes",
        patch.len()
    );
    assert_eq!(from_file(&base, &patch, u64::MAX).unwrap(), target);
}

#[test]
fn empty_targets_and_bases_round_trip() {
    for (base, target) in [
        (vec![], noise(100, 2)),
        (noise(100, 3), vec![]),
        (vec![], vec![]),
    ] {
        let patch = encode(&base, &target, SMALL).unwrap();
        assert_eq!(from_file(&base, &patch, u64::MAX).unwrap(), target);
    }
}

#[test]
fn a_target_over_the_limit_is_refused_before_anything_is_written() {
    let (base, target) = image_pair(256 << 10);
    let patch = encode(&base, &target, SMALL).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    let b = file(dir.path(), "base", &base);
    let err = decode_file(WINDOW, &b, &patch[..], &mut out, target.len() as u64 - 1).unwrap_err();
    assert!(matches!(err, DeltaError::TooLong { .. }), "{err}");
    assert!(out.is_empty());
}

/// The patch with the u64 at `at` replaced.
fn with_u64(patch: &[u8], at: usize, v: u64) -> Vec<u8> {
    let mut p = patch.to_vec();
    p[at..at + 8].copy_from_slice(&v.to_le_bytes());
    p
}

#[test]
fn a_corrupt_truncated_foreign_or_lying_patch_never_rebuilds_the_target() {
    let (base, target) = image_pair(1 << 20);
    let patch = encode(&base, &target, SMALL).unwrap();
    let other_base = noise(base.len(), 99);
    // Header: magic (5), target_len (5), segment_len (13), count (21), entries from 29.
    let mut cases: Vec<(String, &[u8], Vec<u8>)> = vec![
        ("truncated".into(), &base, patch[..patch.len() - 1].to_vec()),
        ("header only".into(), &base, patch[..40].to_vec()),
        ("empty".into(), &base, vec![]),
        ("a byte too many".into(), &base, [&patch[..], &[0]].concat()),
        ("another base".into(), &other_base, patch.clone()),
        (
            "shorter base".into(),
            &base[..base.len() / 2],
            patch.clone(),
        ),
        ("segment of 0".into(), &base, with_u64(&patch, 13, 0)),
        (
            "segment too long".into(),
            &base,
            with_u64(&patch, 13, 1 << 40),
        ),
        (
            "count off by one".into(),
            &base,
            with_u64(&patch, 21, 1 << 20),
        ),
        (
            "window past the base".into(),
            &base,
            with_u64(&patch, 29, u64::MAX - 8),
        ),
        (
            "window too long".into(),
            &base,
            with_u64(&patch, 37, 1 << 40),
        ),
        (
            "frame too long".into(),
            &base,
            with_u64(&patch, 45, 1 << 40),
        ),
    ];
    for at in [2, patch.len() / 4, patch.len() / 2, patch.len() - 3] {
        let mut flipped = patch.clone();
        flipped[at] ^= 0x01;
        cases.push((format!("flipped byte {at}"), &base, flipped));
    }
    for (what, base, patch) in cases {
        match from_file(base, &patch, target.len() as u64) {
            Ok(out) => assert_ne!(out, target, "{what}"),
            Err(e) => assert!(matches!(e, DeltaError::Corrupt(_)), "{what}: {e}"),
        }
    }
}

#[test]
fn other_algorithms_are_not_applied_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let b = file(dir.path(), "b", b"base");
    for a in [DeltaAlgorithm::ZstdPatch, DeltaAlgorithm::ExecPatch] {
        let err = decode_file(a, &b, &b"x"[..], std::io::sink(), 10).unwrap_err();
        assert!(matches!(err, DeltaError::Unsupported(_)), "{err}");
    }
}

#[test]
fn a_write_failure_is_reported_as_one() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (base, target) = image_pair(256 << 10);
    let patch = encode(&base, &target, SMALL).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = file(dir.path(), "b", &base);
    let err = decode_file(WINDOW, &b, &patch[..], Full, u64::MAX).unwrap_err();
    assert!(matches!(err, DeltaError::Write(_)), "{err}");
}
