//! Hostile tar.zst archives: each refused with a named error, and nothing written outside the
//! staging directory (which is itself removed).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use qx_agent::transaction::extract::{extract_tar_zst, ExtractError};
use qx_agent::{Agent, AgentError, ApplyOptions, Config};
use qx_testkit::host::{demo_binary, Lab};
use qx_testkit::release::{tar_zst, ComponentSpec, Content, TarEntry};

const MIB: u64 = 1 << 20;

/// A sandbox: `<tmp>/outside/` holds a victim file; extraction goes to `<tmp>/outside/staging/x`.
struct Sandbox {
    _dir: tempfile::TempDir,
    outside: PathBuf,
    staging: PathBuf,
}

fn sandbox() -> Sandbox {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    let staging = outside.join("staging");
    fs::create_dir_all(&staging).unwrap();
    fs::write(outside.join("victim"), b"precious").unwrap();
    Sandbox {
        _dir: dir,
        outside,
        staging,
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

/// Extracts `entries` with `cap`; asserts the sandbox is exactly as before.
fn refuse(entries: &[TarEntry], cap: u64) -> ExtractError {
    let sb = sandbox();
    let archive = sb.outside.join("staging/a.tar.zst");
    fs::write(&archive, tar_zst(entries).unwrap()).unwrap();
    let before = listing(&sb.outside);
    let dest = sb.staging.join("x");
    let err = extract_tar_zst(&archive, &dest, cap).expect_err("must be refused");
    assert!(!dest.exists(), "staging removed after a refusal");
    assert_eq!(
        listing(&sb.outside),
        before,
        "nothing written outside staging"
    );
    assert_eq!(fs::read(sb.outside.join("victim")).unwrap(), b"precious");
    err
}

fn file(path: &str) -> TarEntry {
    TarEntry::File {
        path: path.into(),
        bytes: b"evil".to_vec(),
        mode: 0o644,
    }
}

#[test]
fn archive_refuses_parent_dir_entry() {
    let e = refuse(&[file("../victim")], MIB);
    assert!(matches!(e, ExtractError::ParentDir { .. }), "{e}");
}

#[test]
fn archive_refuses_nested_parent_dir_entry() {
    let e = refuse(
        &[
            TarEntry::Dir { path: "a".into() },
            file("a/../../../victim"),
        ],
        MIB,
    );
    assert!(matches!(e, ExtractError::ParentDir { .. }), "{e}");
}

#[test]
fn archive_refuses_absolute_path() {
    let sb = sandbox();
    let victim = sb.outside.join("abs-evil");
    let e = refuse(&[file(victim.to_str().unwrap())], MIB);
    assert!(matches!(e, ExtractError::AbsolutePath { .. }), "{e}");
    assert!(!victim.exists());
}

#[test]
fn archive_refuses_symlink_escaping_the_root() {
    let e = refuse(
        &[TarEntry::Symlink {
            path: "link".into(),
            target: "../../victim".into(),
        }],
        MIB,
    );
    assert!(matches!(e, ExtractError::LinkEscapes { .. }), "{e}");
}

#[test]
fn archive_refuses_absolute_symlink() {
    let e = refuse(
        &[TarEntry::Symlink {
            path: "link".into(),
            target: "/etc/passwd".into(),
        }],
        MIB,
    );
    assert!(matches!(e, ExtractError::LinkEscapes { .. }), "{e}");
}

#[test]
fn archive_refuses_symlink_then_write_through_it() {
    // The classic two-step: a link to the parent, then a file through the link.
    let e = refuse(
        &[
            TarEntry::Symlink {
                path: "up".into(),
                target: "..".into(),
            },
            file("up/victim"),
        ],
        MIB,
    );
    assert!(matches!(e, ExtractError::LinkEscapes { .. }), "{e}");
}

#[test]
fn archive_refuses_write_through_an_inside_symlink() {
    let e = refuse(
        &[
            TarEntry::Dir { path: "d".into() },
            TarEntry::Symlink {
                path: "here".into(),
                target: "d".into(),
            },
            file("here/x"),
        ],
        MIB,
    );
    assert!(matches!(e, ExtractError::ThroughSymlink { .. }), "{e}");
}

#[test]
fn archive_refuses_hardlink_escaping_the_root() {
    let e = refuse(
        &[TarEntry::Hardlink {
            path: "h".into(),
            target: "../../victim".into(),
        }],
        MIB,
    );
    assert!(matches!(e, ExtractError::LinkEscapes { .. }), "{e}");
}

#[test]
fn archive_refuses_absolute_hardlink() {
    let e = refuse(
        &[TarEntry::Hardlink {
            path: "h".into(),
            target: "/etc/passwd".into(),
        }],
        MIB,
    );
    assert!(matches!(e, ExtractError::LinkEscapes { .. }), "{e}");
}

#[test]
fn archive_refuses_hardlink_to_a_symlink() {
    let e = refuse(
        &[
            TarEntry::Symlink {
                path: "s".into(),
                target: "missing".into(),
            },
            TarEntry::Hardlink {
                path: "h".into(),
                target: "s".into(),
            },
        ],
        MIB,
    );
    assert!(matches!(e, ExtractError::BadHardLink { .. }), "{e}");
}

#[test]
fn archive_refuses_character_device() {
    let e = refuse(
        &[TarEntry::CharDevice {
            path: "null".into(),
        }],
        MIB,
    );
    assert!(matches!(e, ExtractError::SpecialFile { .. }), "{e}");
}

#[test]
fn archive_refuses_fifo() {
    let e = refuse(
        &[TarEntry::Fifo {
            path: "pipe".into(),
        }],
        MIB,
    );
    assert!(matches!(e, ExtractError::SpecialFile { .. }), "{e}");
}

#[test]
fn archive_refuses_decompression_bomb() {
    // 256 MiB of zeros compress to a few KiB; the cap is 1 MiB.
    let bomb = tar_zst(&[TarEntry::Zeros {
        path: "zeros".into(),
        size: 256 * MIB,
    }])
    .unwrap();
    assert!(bomb.len() < 100_000, "the bomb is small: {}", bomb.len());
    let e = refuse(
        &[TarEntry::Zeros {
            path: "zeros".into(),
            size: 256 * MIB,
        }],
        MIB,
    );
    assert!(
        matches!(e, ExtractError::TooLarge { limit, .. } if limit == MIB),
        "{e}"
    );
}

#[test]
fn archive_refuses_many_files_over_the_cap() {
    let entries: Vec<TarEntry> = (0..5)
        .map(|i| TarEntry::Zeros {
            path: format!("f{i}"),
            size: 300 * 1024,
        })
        .collect();
    let e = refuse(&entries, MIB);
    assert!(matches!(e, ExtractError::TooLarge { .. }), "{e}");
}

#[test]
fn archive_refuses_duplicate_entry() {
    let e = refuse(&[file("a"), file("a")], MIB);
    assert!(matches!(e, ExtractError::Duplicate { .. }), "{e}");
}

#[test]
fn archive_refuses_corrupt_stream() {
    let sb = sandbox();
    let archive = sb.outside.join("staging/a.tar.zst");
    fs::write(&archive, b"this is not zstd at all").unwrap();
    let dest = sb.staging.join("x");
    let e = extract_tar_zst(&archive, &dest, MIB).expect_err("corrupt");
    assert!(matches!(e, ExtractError::Corrupt { .. }), "{e}");
    assert!(!dest.exists());
}

#[test]
fn archive_accepts_a_safe_tree_with_inside_links() {
    let sb = sandbox();
    let archive = sb.outside.join("staging/a.tar.zst");
    fs::write(
        &archive,
        tar_zst(&[
            TarEntry::Dir { path: "./".into() },
            TarEntry::Dir {
                path: "./bin".into(),
            },
            TarEntry::File {
                path: "./bin/tool".into(),
                bytes: b"#!/bin/sh\n".to_vec(),
                mode: 0o755,
            },
            TarEntry::Symlink {
                path: "bin/alias".into(),
                target: "tool".into(),
            },
            TarEntry::Symlink {
                path: "top".into(),
                target: "bin/../bin/tool".into(),
            },
            TarEntry::Hardlink {
                path: "bin/hard".into(),
                target: "bin/tool".into(),
            },
        ])
        .unwrap(),
    )
    .unwrap();
    let dest = sb.staging.join("x");
    let stats = extract_tar_zst(&archive, &dest, MIB).expect("safe archive");
    assert_eq!(stats.files, 1);
    assert_eq!(stats.links, 3);
    assert_eq!(fs::read(dest.join("bin/alias")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(fs::read(dest.join("bin/hard")).unwrap(), b"#!/bin/sh\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(dest.join("bin/tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
}

#[test]
fn apply_refuses_hostile_artifact_and_leaves_the_host_untouched() {
    let lab = Lab::new().unwrap();
    lab.host
        .write_file("/data/bin/qx-node", &demo_binary("1.0.0").unwrap(), 0o755)
        .unwrap();
    lab.host.set_version("qx-node", "1.0.0").unwrap();
    let hostile = tar_zst(&[file("../../../../evil")]).unwrap();
    let mut c = ComponentSpec::file("qx-node", "/data/bin/qx-node", Vec::new());
    c.content = Content::Raw(hostile);
    lab.publish(&lab.release("1.1.0").component(c)).unwrap();
    let root = lab.host.root().to_path_buf();
    let agent = Agent::new(
        Config::load_under(&lab.host.config_path(), &root).unwrap(),
        root.clone(),
    )
    .unwrap();
    let err = agent.apply(&ApplyOptions::default()).expect_err("refused");
    assert!(
        matches!(
            err,
            AgentError::UnsafeArchive(ExtractError::ParentDir { .. })
        ),
        "{err}"
    );
    assert_eq!(err.exit_code(), 33);
    assert_eq!(
        lab.host.read("/data/bin/qx-node").unwrap(),
        demo_binary("1.0.0").unwrap()
    );
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
    let all = listing(root.parent().unwrap());
    assert!(!all.iter().any(|p| p.ends_with("evil")), "{all:?}");
    assert!(!all.iter().any(|p| p.contains(".qx-")), "{all:?}");
}
