#![allow(clippy::unwrap_used)]

use std::io::Write;

use qx_core::manifest::ComponentKind;

use crate::base::{from_archive, from_installed, installed_size};
use crate::{decode, encode, smallest, DeltaAlgorithm, DeltaError, ALGORITHMS};

/// Pseudo-random bytes (xorshift), the same for the same seed.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
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

/// A C program of `n` functions calling each other and referring to a table of strings;
/// `extra` adds statements to the first function, which shifts all the code after it.
pub(crate) fn c_program(n: usize, extra: usize) -> String {
    let mut s = String::from("#include <stdio.h>\n#include <string.h>\n");
    s.push_str("static const char *names[] = {");
    for i in 0..n {
        s.push_str(&format!("\"name-{i}\","));
    }
    s.push_str("};\nint f0(int x) { int y = x;\n");
    for k in 0..extra {
        s.push_str(&format!(
            "  y = y * {} + (int)strlen(names[y & 7]);\n",
            k + 3
        ));
    }
    s.push_str("  return y; }\n");
    for i in 1..n {
        s.push_str(&format!(
            "int f{i}(int x) {{ if (x > {i}) return f{}(x - 1) + (int)strlen(names[{i}]); \
             printf(\"%d %s\\n\", x, names[{}]); return x * {i}; }}\n",
            i - 1,
            (i * 7) % n
        ));
    }
    s.push_str(&format!(
        "int main(int argc, char **argv) {{ (void)argv; return f{}(argc) & 1; }}\n",
        n - 1
    ));
    s
}

/// Builds `source` with the system's C compiler; the executable's bytes.
pub(crate) fn build_c(dir: &std::path::Path, name: &str, source: &str) -> Vec<u8> {
    let src = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    std::fs::write(&src, source).unwrap();
    let st = std::process::Command::new("cc")
        .args(["-O1", "-fno-inline", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) on the test machine");
    assert!(st.success(), "cc failed");
    std::fs::read(exe).unwrap()
}

#[test]
fn exec_patch_between_two_builds_with_shifted_code_round_trips_and_beats_zstd_patch() {
    let dir = tempfile::tempdir().unwrap();
    let old = build_c(dir.path(), "v1", &c_program(1500, 2));
    let new = build_c(dir.path(), "v2", &c_program(1500, 40));
    assert_ne!(old, new);
    let exec = encode(DeltaAlgorithm::ExecPatch, &old, &new).unwrap();
    let zstd = encode(DeltaAlgorithm::ZstdPatch, &old, &new).unwrap();
    assert_eq!(
        rebuild(DeltaAlgorithm::ExecPatch, &old, &exec, new.len() as u64).unwrap(),
        new
    );
    assert!(
        exec.len() < zstd.len(),
        "exec-patch {} bytes, zstd-patch {} bytes",
        exec.len(),
        zstd.len()
    );
}

#[test]
fn exec_patch_of_a_non_executable_round_trips_without_the_projection() {
    let base = noise(200_000, 11);
    let target = edited(&base);
    let patch = encode(DeltaAlgorithm::ExecPatch, &base, &target).unwrap();
    // The transform byte (after the 5-byte magic) says none.
    assert_eq!(patch[5], 0);
    let out = rebuild(
        DeltaAlgorithm::ExecPatch,
        &base,
        &patch,
        target.len() as u64,
    )
    .unwrap();
    assert_eq!(out, target);
}

#[test]
fn exec_patch_with_a_header_naming_ranges_outside_the_base_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let old = build_c(dir.path(), "v1", &c_program(50, 1));
    let new = build_c(dir.path(), "v2", &c_program(50, 3));
    let patch = encode(DeltaAlgorithm::ExecPatch, &old, &new).unwrap();
    assert_eq!(patch[5], 1, "two ELF executables are projected");
    // A shorter base than the one the patch's ranges were recorded for.
    let err = rebuild(DeltaAlgorithm::ExecPatch, &old[..100], &patch, 1 << 30).unwrap_err();
    assert!(matches!(err, DeltaError::Corrupt(_)), "{err}");
}

#[test]
fn exec_patch_that_claims_a_huge_target_is_refused_before_allocating() {
    let base = noise(1000, 12);
    let mut patch = encode(DeltaAlgorithm::ExecPatch, &base, &edited(&base)).unwrap();
    patch[6..14].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = rebuild(DeltaAlgorithm::ExecPatch, &base, &patch, 1 << 20).unwrap_err();
    assert!(matches!(err, DeltaError::TooLong { .. }), "{err}");
}
