//! Hostile tar.zst archives: each refused with a named error, and nothing written outside the
//! staging directory (which is itself removed).

use std::fs;
use std::path::{Path, PathBuf};

use qx_agent::transaction::extract::ExtractError;
use qx_agent::transaction::extract::{extract_tar_zst, extract_tar_zst_allowing, ModeAllowance};
use qx_agent::AgentError;
use qx_agent::ApplyOptions;
use qx_testkit::host::{demo_binary, Lab};
use qx_testkit::release::{tar_zst, ComponentSpec, Content, TarEntry};

use crate::support::host::{agent, walk};

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

/// Every path below `dir`, relative to it, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
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

/// A hostile archive: its entries and the error variant its refusal must be.
struct Hostile {
    name: &'static str,
    entries: fn() -> Vec<TarEntry>,
    is: fn(&ExtractError) -> bool,
}

fn symlink(path: &str, target: &str) -> TarEntry {
    TarEntry::Symlink {
        path: path.into(),
        target: target.into(),
    }
}

fn hardlink(path: &str, target: &str) -> TarEntry {
    TarEntry::Hardlink {
        path: path.into(),
        target: target.into(),
    }
}

fn dir(path: &str) -> TarEntry {
    TarEntry::Dir { path: path.into() }
}

const HOSTILE: &[Hostile] = &[
    Hostile {
        name: "parent dir entry",
        entries: || vec![file("../victim")],
        is: |e| matches!(e, ExtractError::ParentDir { .. }),
    },
    Hostile {
        name: "nested parent dir entry",
        entries: || vec![dir("a"), file("a/../../../victim")],
        is: |e| matches!(e, ExtractError::ParentDir { .. }),
    },
    Hostile {
        name: "symlink escaping the root",
        entries: || vec![symlink("link", "../../victim")],
        is: |e| matches!(e, ExtractError::LinkEscapes { .. }),
    },
    Hostile {
        name: "absolute symlink",
        entries: || vec![symlink("link", "/etc/passwd")],
        is: |e| matches!(e, ExtractError::LinkEscapes { .. }),
    },
    Hostile {
        // The classic two-step: a link to the parent, then a file through the link.
        name: "symlink then write through it",
        entries: || vec![symlink("up", ".."), file("up/victim")],
        is: |e| matches!(e, ExtractError::LinkEscapes { .. }),
    },
    Hostile {
        name: "write through an inside symlink",
        entries: || vec![dir("d"), symlink("here", "d"), file("here/x")],
        is: |e| matches!(e, ExtractError::ThroughSymlink { .. }),
    },
    Hostile {
        name: "hardlink escaping the root",
        entries: || vec![hardlink("h", "../../victim")],
        is: |e| matches!(e, ExtractError::LinkEscapes { .. }),
    },
    Hostile {
        name: "absolute hardlink",
        entries: || vec![hardlink("h", "/etc/passwd")],
        is: |e| matches!(e, ExtractError::LinkEscapes { .. }),
    },
    Hostile {
        name: "hardlink to a symlink",
        entries: || vec![symlink("s", "missing"), hardlink("h", "s")],
        is: |e| matches!(e, ExtractError::BadHardLink { .. }),
    },
    Hostile {
        name: "character device",
        entries: || {
            vec![TarEntry::CharDevice {
                path: "null".into(),
            }]
        },
        is: |e| matches!(e, ExtractError::SpecialFile { .. }),
    },
    Hostile {
        name: "fifo",
        entries: || {
            vec![TarEntry::Fifo {
                path: "pipe".into(),
            }]
        },
        is: |e| matches!(e, ExtractError::SpecialFile { .. }),
    },
    Hostile {
        name: "many files over the cap",
        entries: || {
            (0..5)
                .map(|i| TarEntry::Zeros {
                    path: format!("f{i}"),
                    size: 300 * 1024,
                })
                .collect()
        },
        is: |e| matches!(e, ExtractError::TooLarge { .. }),
    },
    Hostile {
        name: "duplicate entry",
        entries: || vec![file("a"), file("a")],
        is: |e| matches!(e, ExtractError::Duplicate { .. }),
    },
];

#[test]
fn archive_refuses_each_hostile_entry_with_its_error() {
    for case in HOSTILE {
        let e = refuse(&(case.entries)(), MIB);
        assert!((case.is)(&e), "{}: {e}", case.name);
    }
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
    let err = agent(&lab)
        .apply(&ApplyOptions::default())
        .expect_err("refused");
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

/// A tar.zst holding one directory `d/` with `mode` (the testkit's directories are 0755).
fn dir_with_mode(mode: u32) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_size(0);
    b.append_data(&mut h, "d/", std::io::empty()).unwrap();
    zstd::encode_all(b.into_inner().unwrap().as_slice(), 3).unwrap()
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn archive_refuses_setuid_and_setgid_files_unless_allowed() {
    for mode in [0o4755, 0o2755, 0o6755] {
        let e = refuse(
            &[TarEntry::File {
                path: "tool".into(),
                bytes: b"x".to_vec(),
                mode,
            }],
            MIB,
        );
        assert!(
            matches!(e, ExtractError::ModeRefused { .. }),
            "{mode:o}: {e}"
        );
        assert!(e.to_string().contains("allow_setuid"), "{e}");
    }
    let sb = sandbox();
    let archive = sb.staging.join("a.tar.zst");
    let entry = TarEntry::File {
        path: "tool".into(),
        bytes: b"x".to_vec(),
        mode: 0o4755,
    };
    fs::write(&archive, tar_zst(&[entry]).unwrap()).unwrap();
    let allow = ModeAllowance {
        setuid: true,
        world_writable: false,
    };
    let dest = sb.staging.join("x");
    extract_tar_zst_allowing(&archive, &dest, MIB, allow).expect("allowed");
    assert_eq!(mode_of(&dest.join("tool")), 0o4755);
}

#[test]
fn archive_refuses_world_writable_files_and_directories_unless_allowed() {
    let e = refuse(
        &[TarEntry::File {
            path: "open".into(),
            bytes: b"x".to_vec(),
            mode: 0o666,
        }],
        MIB,
    );
    assert!(matches!(e, ExtractError::ModeRefused { .. }), "{e}");
    let sb = sandbox();
    let archive = sb.staging.join("a.tar.zst");
    fs::write(&archive, dir_with_mode(0o2777)).unwrap();
    let dest = sb.staging.join("x");
    let e = extract_tar_zst(&archive, &dest, MIB).expect_err("2777 directory");
    assert!(matches!(e, ExtractError::ModeRefused { .. }), "{e}");
    assert!(!dest.exists(), "staging removed after a refusal");
    let allow = ModeAllowance {
        setuid: true,
        world_writable: true,
    };
    extract_tar_zst_allowing(&archive, &dest, MIB, allow).expect("allowed");
    assert_eq!(mode_of(&dest.join("d")), 0o2777);
}

#[test]
fn apply_refuses_file_component_whose_entry_is_not_the_install_file_name() {
    let lab = Lab::new().unwrap();
    lab.host
        .write_file("/data/bin/qx-node", &demo_binary("1.0.0").unwrap(), 0o755)
        .unwrap();
    lab.host.set_version("qx-node", "1.0.0").unwrap();
    let misnamed = tar_zst(&[TarEntry::File {
        path: "qx-other".into(),
        bytes: demo_binary("1.1.0").unwrap(),
        mode: 0o755,
    }])
    .unwrap();
    let mut c = ComponentSpec::file("qx-node", "/data/bin/qx-node", Vec::new());
    c.content = Content::Raw(misnamed);
    lab.publish(&lab.release("1.1.0").component(c)).unwrap();
    let err = agent(&lab)
        .apply(&ApplyOptions::default())
        .expect_err("refused");
    assert!(
        matches!(
            &err,
            AgentError::UnsafeArchive(ExtractError::MisnamedFile { entry, expected, .. })
                if entry == "qx-other" && expected == "qx-node"
        ),
        "{err}"
    );
    assert_eq!(
        lab.host.read("/data/bin/qx-node").unwrap(),
        demo_binary("1.0.0").unwrap()
    );
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
}
