//! The Debian packages of `cargo xtask dist` (qx-update-server, qx-update, qx-publish),
//! installed by the real `dpkg --root` into a throwaway root: each program runs there
//! (`chroot … --version`), every file lands where Debian and the init systems look for it,
//! the server's postinst makes its user and a root-only publish token (which a purge
//! removes), the systemd units
//! pass `systemd-analyze verify`, logrotate runs the rotation rules, and `lintian` reports nothing
//! beyond the tags `packaging/debian/lintian-allowed.txt` explains.
//!
//! The throwaway root holds what dpkg and the postinst need: dpkg's database, a static
//! busybox as `/bin/sh` and the few tools the script calls, and two stand-ins recording
//! their arguments: `getent` (no user yet) and `adduser` (its arguments are the assertion;
//! the real one is a Perl program with the whole of Perl behind it). `adduser` is the one
//! dependency, left unmet there (`--force-depends`).

use std::collections::BTreeSet;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::sys::{is_root, run};

const PACKAGES: &[&str] = &["qx-update-server", "qx-update", "qx-publish"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The three `.deb` files of the dist, by package name.
fn debs() -> Vec<PathBuf> {
    let dir = qx_testkit::dist::dir().join("deb");
    PACKAGES
        .iter()
        .map(|p| {
            let found: Vec<PathBuf> = std::fs::read_dir(&dir)
                .expect("the dist's deb directory")
                .map(|e| e.expect("a directory entry").path())
                .filter(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{p}_")) && n.ends_with(".deb"))
                })
                .collect();
            assert_eq!(
                found.len(),
                1,
                "one {p}_*.deb in {}: {found:?}",
                dir.display()
            );
            found.into_iter().next().expect("one")
        })
        .collect()
}

/// A root prepared for `dpkg --root`: its database, busybox as the shell and the tools the
/// maintainer script uses, the `getent`/`adduser` stand-ins logging to `/stub.log`.
fn throwaway_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "bin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "dev",
        "tmp",
    ] {
        std::fs::create_dir_all(r.join(d)).expect("root directory");
    }
    for f in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
        std::fs::write(r.join(f), "").expect("dpkg database file");
    }
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).expect("busybox-static's /bin/busybox");
    for tool in [
        "sh", "head", "od", "tr", "mkdir", "chmod", "rm", "rmdir", "cat", "ls", "sed",
    ] {
        symlink("busybox", r.join("bin").join(tool)).expect("busybox applet");
    }
    // The token comes from /dev/urandom: a regular file of random bytes stands in for it.
    std::fs::write(r.join("dev/urandom"), qx_testkit::data::noise(4096, 16)).expect("urandom");
    stub(r, "usr/bin/getent", "exit 2");
    stub(r, "usr/sbin/adduser", "exit 0");
    root
}

fn stub(root: &Path, path: &str, then: &str) {
    let name = Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a name");
    let p = root.join(path);
    std::fs::write(
        &p,
        format!("#!/bin/sh\necho {name} \"$@\" >>/stub.log\n{then}\n"),
    )
    .expect("stub");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod stub");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Where each program's files must be after installation (relative to the root).
fn expected_files(bin: &str) -> Vec<String> {
    let mut files = vec![
        format!("usr/bin/{bin}"),
        format!("usr/share/man/man1/{bin}.1.gz"),
        format!("usr/share/bash-completion/completions/{bin}"),
        format!("usr/share/zsh/vendor-completions/_{bin}"),
        format!("usr/share/fish/vendor_completions.d/{bin}.fish"),
        format!("usr/share/doc/{bin}/copyright"),
        format!("usr/share/doc/{bin}/changelog.Debian.gz"),
    ];
    let more: &[&str] = match bin {
        "qx-update" => &[
            "usr/share/man/man1/qx-update-apply.1.gz",
            "usr/share/man/man1/qx-update-ab.1.gz",
            "lib/systemd/system/qx-update.service",
            "lib/systemd/system/qx-ab-update-check.service",
            "lib/systemd/system/qx-overlay-mounts.service",
            "lib/systemd/system/qx-ab-update-verify.service",
            "etc/init.d/qx-update",
            "etc/local.d/03-ab-update-check.start",
            "etc/local.d/05-overlay-mounts.start",
            "etc/local.d/99-ab-update-verify.start",
            "etc/logrotate.d/qx-update",
            "usr/share/doc/qx-update/host-api.md",
        ],
        "qx-update-server" => &[
            "usr/share/man/man1/qx-update-server-token.1.gz",
            "lib/systemd/system/qx-update-server.service",
            "etc/init.d/qx-update-server",
            "etc/default/qx-update-server",
            "usr/share/doc/qx-update-server/README.md",
        ],
        _ => &[
            "usr/share/man/man1/qx-publish-publish.1.gz",
            "usr/share/doc/qx-publish/release-spec.md",
        ],
    };
    files.extend(more.iter().map(|s| (*s).to_owned()));
    files
}

#[test]
#[ignore = "slow tier: root (dpkg --root, chroot); needs the dist of `cargo xtask dist`"]
fn packages_install_into_a_throwaway_root_and_run_there() {
    assert!(is_root(), "dpkg --root and chroot need root");
    let debs = debs();
    let root = throwaway_root();
    let r = root.path();
    run(Command::new("dpkg")
        .arg(format!("--root={}", r.display()))
        .args(["--force-depends", "--install"])
        .args(&debs));
    let status = run(Command::new("dpkg-query")
        .arg(format!("--root={}", r.display()))
        .args(["-W", "-f=${Package} ${Status}\n"]));
    for p in PACKAGES {
        assert!(
            status.contains(&format!("{p} install ok installed")),
            "{p} not installed: {status}"
        );
        let version = run(Command::new("chroot")
            .arg(r)
            .arg(format!("/usr/bin/{p}"))
            .arg("--version"));
        assert_eq!(
            version.trim(),
            format!("{p} {}", env!("CARGO_PKG_VERSION")),
            "{p} --version in the root"
        );
        for f in expected_files(p) {
            assert!(r.join(&f).is_file(), "{p}: {f} missing after installation");
        }
        assert_eq!(mode(&r.join(format!("usr/bin/{p}"))), 0o755);
    }
    for script in ["etc/init.d/qx-update", "etc/init.d/qx-update-server"] {
        assert_eq!(mode(&r.join(script)), 0o755, "{script}");
    }
    // The postinst: the system user, and a random token only root can read.
    let stubs = std::fs::read_to_string(r.join("stub.log")).expect("the stand-ins' log");
    assert!(
        stubs.contains("getent passwd qx-update-server"),
        "postinst looks the user up: {stubs}"
    );
    assert!(
        stubs.contains(
            "adduser --system --group --home /var/lib/qx-update-server --no-create-home --quiet qx-update-server"
        ),
        "postinst makes the system user: {stubs}"
    );
    let token_file = r.join("etc/qx-update-server/publish-token");
    let token = std::fs::read_to_string(&token_file).expect("the publish token the postinst wrote");
    assert_eq!(token.len(), 64, "32 random bytes in hex: {token:?}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token:?}");
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(mode(&r.join("etc/qx-update-server")), 0o700);
    verify_units(r);
    logrotate_rotates_the_history_by_size_only(r);
    // A purge takes the token away with the package; a removal keeps it.
    run(Command::new("dpkg")
        .arg(format!("--root={}", r.display()))
        .args(["--remove", "qx-update-server"]));
    assert!(token_file.is_file(), "a removal keeps the configuration");
    run(Command::new("dpkg")
        .arg(format!("--root={}", r.display()))
        .args(["--purge", "qx-update-server"]));
    assert!(
        !r.join("etc/qx-update-server").exists(),
        "a purge removes the token"
    );
    assert!(!r.join("usr/bin/qx-update-server").exists());
}

/// `systemd-analyze verify` on the installed units, against the root (their commands must
/// exist there); systemd's own targets, which they order themselves against, are copied in
/// from this machine first.
fn verify_units(r: &Path) {
    let dir = r.join("lib/systemd/system");
    let mut units: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the installed units")
        .map(|e| e.expect("entry").path())
        .collect();
    units.sort();
    assert_eq!(units.len(), 5, "{units:?}");
    for entry in std::fs::read_dir("/lib/systemd/system").expect("systemd's units") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "target") {
            let name = path.file_name().expect("a name");
            std::fs::copy(&path, dir.join(name)).expect("copying a target");
        }
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", r.display()))
        .args(&units)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
}

/// The installed logrotate rules, run by logrotate on copies of the logs: the update log is
/// rotated by time only (a fresh state rotates nothing), the history only once it is past
/// its size.
fn logrotate_rotates_the_history_by_size_only(r: &Path) {
    let logs = r.join("tmp/logs");
    let rules = std::fs::read_to_string(r.join("etc/logrotate.d/qx-update"))
        .expect("the installed rules")
        .replace("/var/log/quantix/", &format!("{}/", logs.display()))
        .replace("/data/updates/", &format!("{}/", logs.display()));
    std::fs::create_dir_all(&logs).expect("log directory");
    let conf = r.join("tmp/logrotate.conf");
    std::fs::write(&conf, rules).expect("the relocated rules");
    std::fs::write(logs.join("update.log"), "2026-01-01T00:00:00Z a line\n").expect("log");
    let line = format!(
        "{{\"version\":\"1.0.0\",\"pad\":\"{}\"}}\n",
        "x".repeat(200)
    );
    std::fs::write(logs.join("history.jsonl"), line.repeat(6000)).expect("history > 1 MiB");
    let out = Command::new("logrotate")
        .arg("--state")
        .arg(r.join("tmp/logrotate.state"))
        .arg(&conf)
        .output()
        .expect("logrotate (Debian package logrotate)");
    assert!(
        out.status.success(),
        "logrotate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.join("history.jsonl.1").is_file(),
        "the history past 1 MiB is rotated"
    );
    assert!(
        !logs.join("history.jsonl").exists(),
        "nocreate: the agent makes the next one"
    );
    assert!(logs.join("update.log").is_file());
    assert!(
        !logs.join("update.log.1").exists(),
        "the update log waits for its week"
    );
}

/// `packaging/debian/lintian-allowed.txt`: `tag  reason` per line, `#` comments.
fn allowed_tags() -> BTreeSet<String> {
    let path = repo().join("packaging/debian/lintian-allowed.txt");
    let text = std::fs::read_to_string(&path).expect("packaging/debian/lintian-allowed.txt");
    let mut tags = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (tag, reason) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        assert!(
            reason.trim().len() > 10,
            "lintian-allowed.txt: {tag} needs its reason on the line"
        );
        tags.insert(tag.to_owned());
    }
    tags
}

#[test]
#[ignore = "slow tier: lintian on the packages of `cargo xtask dist`"]
fn lintian_reports_only_the_explained_tags() {
    let debs = debs();
    // `--fail-on none`: the tags decide here, lintian fails only when it cannot run.
    let text = run(Command::new("lintian")
        .args(["--allow-root", "--fail-on", "none", "--no-cfg"])
        .args(&debs));
    // `E: qx-update: tag-name extra…`, `W: …`.
    let reported: BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .filter_map(|l| l.split(": ").nth(2))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let allowed = allowed_tags();
    let unexplained: Vec<&String> = reported.difference(&allowed).collect();
    assert!(
        unexplained.is_empty(),
        "lintian tags not in packaging/debian/lintian-allowed.txt: {unexplained:?}\n{text}"
    );
    let stale: Vec<&String> = allowed.difference(&reported).collect();
    assert!(
        stale.is_empty(),
        "lintian-allowed.txt explains tags lintian no longer reports (remove them): {stale:?}\n{text}"
    );
}
