#![allow(clippy::unwrap_used)]

use std::io::Write;

use qx_core::manifest::ComponentKind;

use crate::base::{from_archive, from_installed, installed_size};
use crate::{decode, encode, smallest, DeltaAlgorithm, DeltaError, ALGORITHMS};

/// Pseudo-random bytes (xorshift), the same for the same seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `base` with a few bytes changed and a block inserted: what a rebuilt release looks like.
fn edited(base: &[u8]) -> Vec<u8> {
    let mut t = base.to_vec();
    for i in (0..t.len()).step_by(4099) {
        t[i] ^= 0x5a;
    }
    let mid = t.len() / 2;
    t.splice(mid..mid, noise(3000, 9));
    t
}

fn rebuild(
    a: DeltaAlgorithm,
    base: &[u8],
    patch: &[u8],
    limit: u64,
) -> Result<Vec<u8>, DeltaError> {
    let mut out = Vec::new();
    decode(a, base, patch, &mut out, limit)?;
    Ok(out)
}

#[test]
fn every_algorithm_rebuilds_the_target_and_a_related_target_costs_little() {
    let base = noise(1 << 20, 1);
    let target = edited(&base);
    for &a in ALGORITHMS {
        let patch = encode(a, &base, &target).unwrap();
        assert!(
            patch.len() < target.len() / 20,
            "{a:?}: {} bytes",
            patch.len()
        );
        assert_eq!(
            rebuild(a, &base, &patch, target.len() as u64).unwrap(),
            target
        );
    }
}

#[test]
fn empty_base_and_empty_target_round_trip() {
    for &a in ALGORITHMS {
        for (base, target) in [
            (vec![], noise(100, 2)),
            (noise(100, 3), vec![]),
            (vec![], vec![]),
        ] {
            let patch = encode(a, &base, &target).unwrap();
            assert_eq!(
                rebuild(a, &base, &patch, target.len() as u64).unwrap(),
                target
            );
        }
    }
}

#[test]
fn output_beyond_the_limit_is_refused() {
    let base = noise(10_000, 4);
    let target = edited(&base);
    for &a in ALGORITHMS {
        let patch = encode(a, &base, &target).unwrap();
        let err = rebuild(a, &base, &patch, target.len() as u64 - 1).unwrap_err();
        assert!(matches!(err, DeltaError::TooLong { .. }), "{err}");
    }
}

#[test]
fn corrupt_or_truncated_patch_or_another_base_never_rebuilds_the_target() {
    let base = noise(50_000, 5);
    let target = edited(&base);
    for &a in ALGORITHMS {
        let patch = encode(a, &base, &target).unwrap();
        let limit = target.len() as u64;
        let mut flipped = patch.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x01;
        let other_base = noise(50_000, 6);
        for (what, base, patch) in [
            ("flipped byte", &base, &flipped[..]),
            ("truncated", &base, &patch[..patch.len() / 2]),
            ("empty", &base, &[][..]),
            ("another base", &other_base, &patch[..]),
        ] {
            if let Ok(out) = rebuild(a, base, patch, limit) {
                assert_ne!(out, target, "{a:?}: {what}");
            }
        }
    }
}

#[test]
fn smallest_names_the_algorithm_of_the_patch_it_returns() {
    let base = noise(20_000, 7);
    let target = edited(&base);
    let (a, patch) = smallest(ALGORITHMS, &base, &target).unwrap().unwrap();
    assert_eq!(rebuild(a, &base, &patch, u64::MAX).unwrap(), target);
    assert!(smallest(&[], &base, &target).unwrap().is_none());
}

#[test]
fn unknown_algorithm_is_refused_on_both_sides() {
    let err = encode(DeltaAlgorithm::Unknown, b"a", b"b").unwrap_err();
    assert!(matches!(err, DeltaError::Unsupported(_)), "{err}");
    let err = rebuild(DeltaAlgorithm::Unknown, b"a", b"x", 10).unwrap_err();
    assert!(matches!(err, DeltaError::Unsupported(_)), "{err}");
}

/// A tar of `files` (path, bytes) in the given order, plus a directory and a link entry.
fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    b.append_data(&mut dir, "./sub", &[][..]).unwrap();
    for (path, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        b.append_data(&mut h, path, *bytes).unwrap();
    }
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    b.append_link(&mut link, "ln", "b.txt").unwrap();
    b.into_inner().unwrap()
}

#[test]
fn base_from_an_archive_equals_the_base_read_from_the_installed_tree() {
    let files: [(&str, &[u8]); 3] = [("./sub/z", b"zz"), ("b.txt", b"bb"), ("a", b"aaa")];
    let from_tar = from_archive(&archive(&files)[..], ComponentKind::Directory, 1 << 20)
        .unwrap()
        .unwrap();
    assert_eq!(from_tar, b"aaabbzz");

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    for (path, bytes) in files {
        std::fs::File::create(dir.path().join(path))
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }
    std::os::unix::fs::symlink("b.txt", dir.path().join("ln")).unwrap();
    for kind in [ComponentKind::Directory, ComponentKind::Migrations] {
        let installed = from_installed(dir.path(), kind, 1 << 20).unwrap().unwrap();
        assert_eq!(installed, from_tar, "{kind:?}");
        let size = installed_size(dir.path(), kind).unwrap();
        assert_eq!(size, Some(from_tar.len() as u64), "{kind:?}");
    }
    // A file where a directory is expected (and the reverse) is no base.
    assert!(from_installed(dir.path(), ComponentKind::File, 1 << 20)
        .unwrap()
        .is_none());
    let file = dir.path().join("a");
    assert!(from_installed(&file, ComponentKind::Directory, 1 << 20)
        .unwrap()
        .is_none());
    assert_eq!(
        from_installed(&file, ComponentKind::File, 1 << 20)
            .unwrap()
            .unwrap(),
        b"aaa"
    );
}

#[test]
fn base_beyond_the_limit_is_no_base() {
    let files: [(&str, &[u8]); 2] = [("a", b"aaa"), ("b", b"bbb")];
    assert!(
        from_archive(&archive(&files)[..], ComponentKind::Directory, 5)
            .unwrap()
            .is_none()
    );
    assert!(
        from_archive(&archive(&files)[..], ComponentKind::Directory, 6)
            .unwrap()
            .is_some()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"123456").unwrap();
    let f = dir.path().join("f");
    assert!(from_installed(&f, ComponentKind::File, 5)
        .unwrap()
        .is_none());
    assert!(from_installed(&f, ComponentKind::File, 6)
        .unwrap()
        .is_some());
    assert!(
        from_installed(&dir.path().join("missing"), ComponentKind::File, 6)
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_file_component_base_is_its_one_file() {
    let files: [(&str, &[u8]); 1] = [("qx-node", b"binary")];
    let base = from_archive(&archive(&files)[..], ComponentKind::File, 100).unwrap();
    assert_eq!(base.unwrap(), b"binary");
}
