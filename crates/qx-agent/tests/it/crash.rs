//! Crash safety: the `qx-update` process is killed at every named step of an apply (the
//! test-only hook `QX_TEST_CRASH_AT=<step>` makes it abort there) and at random offsets
//! (SIGKILL of its whole process group, which also takes the processes it started, like a
//! power cut), then `qx-update recover` runs. Every trial asserts the host is entirely on the
//! old or entirely on the new version (every file's hash and every version file), the service
//! runs the installed binary, no temporary file is left, and the journal is closed.
//!
//! The same for a revert (a host on a release revoked with `revert` goes back to `current`,
//! docs/spec.md §8) and for an apply from a bundle (docs/spec.md §12).
//!
//! `QX_CRASH_TRIALS` sets the number of random-offset trials of each test (default 40 for an
//! apply, 20 for a revert and a bundle apply; the stress run uses 200 or more).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use qx_core::bundle::{write_bundle, BundleMetadata};
use qx_core::channel::RevokeAction;
use qx_core::Sha256;
use qx_testkit::channel::{revoke, sign, state_of};
use qx_testkit::host::{demo_binary, is_running, HostConfig, TestHost};
use qx_testkit::release::{BuiltRelease, ComponentSpec, FixtureKey, ReleaseSpec};
use qx_testkit::server::TestServer;

use crate::support::host::{journal, qx_update, service, walk, walk_where};
use crate::support::poll;

struct World {
    server: TestServer,
    key: FixtureKey,
    /// Release 2.0.0 as published.
    v2: BuiltRelease,
    _releases: tempfile::TempDir,
}

fn ui_v1() -> Vec<(String, Vec<u8>, u32)> {
    vec![
        ("index.html".into(), b"<h1>v1</h1>".to_vec(), 0o644),
        ("old-only.js".into(), b"old".to_vec(), 0o644),
    ]
}

fn ui_v2() -> Vec<(String, Vec<u8>, u32)> {
    vec![
        ("index.html".into(), b"<h1>v2</h1>".to_vec(), 0o644),
        ("assets/app.js".into(), b"new".to_vec(), 0o644),
    ]
}

fn mig_v1() -> Vec<(String, Vec<u8>, u32)> {
    vec![("migrate.sh".into(), b"#!/bin/sh\necho v1\n".to_vec(), 0o755)]
}

fn mig_v2() -> Vec<(String, Vec<u8>, u32)> {
    vec![
        (
            "migrate.sh".into(),
            b"#!/bin/sh\necho migrated to v2\n".to_vec(),
            0o755,
        ),
        ("sql/002.sql".into(), b"SELECT 1;".to_vec(), 0o644),
    ]
}

/// Release `version` (1.0.0 or 2.0.0) of three components (a running binary, a directory,
/// migrations), signed.
fn release(key: &FixtureKey, version: &str, node_install_path: &str) -> BuiltRelease {
    let (ui, mig) = if version == "1.0.0" {
        (ui_v1(), mig_v1())
    } else {
        (ui_v2(), mig_v2())
    };
    ReleaseSpec::new("quantix-os", "dev", version)
        .component(
            ComponentSpec::file("qx-node", node_install_path, demo_binary(version).unwrap())
                .service("quantix-node"),
        )
        .component(ComponentSpec::tree(
            "host-ui",
            "/data/share/quantix-host-ui",
            ui,
        ))
        .component(ComponentSpec::migrations(
            "db-migrations",
            "/data/lib/quantix-migrations",
            mig,
            vec!["./migrate.sh".into()],
        ))
        .sign(key)
        .unwrap()
}

/// A server with release 2.0.0 (no channel state: the manifest-only path).
fn world(node_install_path: &str) -> World {
    let releases = tempfile::tempdir().unwrap();
    let server = TestServer::start(releases.path(), "t").unwrap();
    let key = FixtureKey::generate().unwrap();
    let v2 = release(&key, "2.0.0", node_install_path);
    v2.publish(server.url(), "t").unwrap();
    World {
        server,
        key,
        v2,
        _releases: releases,
    }
}

/// A fresh host at 1.0.0 with the service running.
fn host_v1(w: &World) -> TestHost {
    host_at(w, "1.0.0")
}

/// A fresh host with every component at `version` (1.0.0 or 2.0.0, not installed by the
/// agent) and the service running.
fn host_at(w: &World, version: &str) -> TestHost {
    let host = TestHost::new().unwrap();
    host.write_config(&HostConfig::new(
        w.server.url(),
        "quantix-os",
        "dev",
        &w.key.public_key_file,
    ))
    .unwrap();
    let (ui, mig) = if version == "1.0.0" {
        (ui_v1(), mig_v1())
    } else {
        (ui_v2(), mig_v2())
    };
    host.write_file("/data/bin/qx-node", &demo_binary(version).unwrap(), 0o755)
        .unwrap();
    for (p, b, m) in ui {
        host.write_file(&format!("/data/share/quantix-host-ui/{p}"), &b, m)
            .unwrap();
    }
    for (p, b, m) in mig {
        host.write_file(&format!("/data/lib/quantix-migrations/{p}"), &b, m)
            .unwrap();
    }
    for c in ["qx-node", "host-ui", "db-migrations"] {
        host.set_version(c, version).unwrap();
    }
    host.add_service("quantix-node", "/data/bin/qx-node", "infinity")
        .unwrap();
    service(&host, "start", "quantix-node");
    host
}

/// path -> sha256 of every file (and symlink target) of the installed state.
fn fingerprint(host: &TestHost) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for top in ["data/bin", "data/share", "data/lib", "data/versions"] {
        for p in walk(&host.root().join(top)) {
            // The installed-artifact hashes are trusted only for the version they name, so a
            // stale one is not a mix.
            if p.symlink_metadata().unwrap().is_dir()
                || p.to_string_lossy().contains("/.artifacts/")
            {
                continue;
            }
            let rel = p.strip_prefix(host.root()).unwrap().display().to_string();
            let content = fs::read(&p).unwrap();
            let mode = {
                use std::os::unix::fs::PermissionsExt;
                fs::metadata(&p).unwrap().permissions().mode() & 0o777
            };
            out.insert(rel, format!("{} {mode:o}", Sha256::of(&content)));
        }
    }
    out
}

fn expected(version: &str) -> BTreeMap<String, String> {
    let host = TestHost::new().unwrap();
    let (bin, ui, mig) = if version == "1.0.0" {
        (demo_binary("1.0.0").unwrap(), ui_v1(), mig_v1())
    } else {
        (demo_binary("2.0.0").unwrap(), ui_v2(), mig_v2())
    };
    host.write_file("/data/bin/qx-node", &bin, 0o755).unwrap();
    for (p, b, m) in ui {
        host.write_file(&format!("/data/share/quantix-host-ui/{p}"), &b, m)
            .unwrap();
    }
    for (p, b, m) in mig {
        host.write_file(&format!("/data/lib/quantix-migrations/{p}"), &b, m)
            .unwrap();
    }
    for c in ["qx-node", "host-ui", "db-migrations"] {
        host.set_version(c, version).unwrap();
    }
    fingerprint(&host)
}

fn qx(host: &TestHost, args: &[&str]) -> Command {
    let mut c = qx_update(host.root());
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Runs recovery and checks every invariant; returns which version the host is on.
fn recover_and_check(
    host: &TestHost,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    what: &str,
) -> &'static str {
    let out = qx(host, &["--json", "recover"]).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: recover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fp = fingerprint(host);
    let on = if &fp == old {
        "old"
    } else if &fp == new {
        "new"
    } else {
        panic!("{what}: host is a mix of versions:\n got {fp:#?}\n old {old:#?}\n new {new:#?}")
    };
    // No temporaries anywhere (download partials in staging are kept on purpose for resume).
    for p in walk_where(host.root(), |d| !d.ends_with("data/updates/staging")) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".qx-"),
            "{what}: stray temporary {}",
            p.display()
        );
    }
    // The journal is closed.
    if let Some(j) = journal(host.root()) {
        assert!(
            j["phase"] == "committed" || j["phase"] == "rolled_back",
            "{what}: journal left open: {}",
            j["phase"]
        );
    }
    // The service runs the installed binary (content, since a restore may re-create the inode
    // of an unchanged file while the old process keeps running).
    let pid = host.service_pid("quantix-node").unwrap_or(0);
    if pid == 0 || !is_running(pid) {
        panic!("{what}: the service is not running after recovery (on {on})");
    }
    let running = fs::read(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        Sha256::of(&running),
        Sha256::of(&fs::read(host.path("/data/bin/qx-node")).unwrap()),
        "{what}: the service runs another binary than the installed one"
    );
    // Status is readable and agrees with the version files (which match one side).
    let out = qx(host, &["--json", "status"]).output().unwrap();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = host.version("qx-node").unwrap();
    assert_eq!(s["installed"]["qx-node"], v.as_str(), "{what}");
    on
}

/// Applies with the crash hook set; returns true when the process aborted there.
fn apply_crashing_at(host: &TestHost, point: &str) -> bool {
    run_crashing_at(host, &["apply", "--yes"], point)
}

/// The user the crashing runs are started by (`SUDO_USER`): the history entry recovery writes
/// names it, from the journal.
const CRASHED_RUN_USER: &str = "crashed-run-user";

/// Runs `qx-update <args>` with the crash hook set; true when the process aborted there.
fn run_crashing_at(host: &TestHost, args: &[&str], point: &str) -> bool {
    let out = qx(host, args)
        .env("QX_TEST_CRASH_AT", point)
        .env("SUDO_USER", CRASHED_RUN_USER)
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    match out.status.signal() {
        Some(6) => true,
        _ => {
            assert!(
                out.status.success(),
                "{point}: apply failed without crashing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            false
        }
    }
}

const POINTS: &[&str] = &[
    "downloaded",
    "prepared",
    "extracted",
    "backed-up",
    "installing",
    "installed:qx-node",
    "exchanged",
    "installed:host-ui",
    "installed:db-migrations",
    "installed",
    "migrated:db-migrations",
    "migrated",
    "restarted",
    "verified",
    "versions",
    "committed",
];

#[test]
fn crash_at_every_named_step_then_recover() {
    let w = world("/data/bin/qx-node");
    let (old, new) = (expected("1.0.0"), expected("2.0.0"));
    for point in POINTS {
        let host = host_v1(&w);
        assert!(
            apply_crashing_at(&host, point),
            "{point}: the crash point was not reached"
        );
        let on = recover_and_check(&host, &old, &new, point);
        let want = match *point {
            "migrated" | "restarted" | "verified" | "versions" | "committed" => "new",
            _ => "old",
        };
        assert_eq!(on, want, "{point}: recovered to the wrong side");
        // After recovery a normal apply completes.
        let out = qx(&host, &["apply", "--yes"]).output().unwrap();
        assert!(
            out.status.success(),
            "{point}: apply after recovery: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(recover_and_check(&host, &old, &new, point), "new");
    }
}

#[test]
fn crash_while_rolling_back_a_failed_update_then_recover() {
    // qx-node installed where the service does not run: verification fails, rollback starts.
    let w = world("/data/bin/qx-node-misnamed");
    let old = expected("1.0.0");
    for point in [
        "rolling-back",
        "restored:qx-node",
        "restored:host-ui",
        "restored:db-migrations",
    ] {
        let host = host_v1(&w);
        let old_here = {
            // This release adds a file; the old state is still exactly v1.
            fingerprint(&host)
        };
        assert_eq!(old_here, old);
        assert!(apply_crashing_at(&host, point), "{point}: not reached");
        let on = recover_and_check(&host, &old, &BTreeMap::new(), point);
        assert_eq!(on, "old", "{point}");
        let hist = fs::read_to_string(host.path("/data/updates/history.jsonl")).unwrap();
        assert!(
            hist.contains("\"failed\""),
            "{point}: failure recorded: {hist}"
        );
        let who = format!("\"started_by\":{{\"via\":\"cli\",\"user\":\"{CRASHED_RUN_USER}\"}}");
        assert!(hist.contains(&who), "{point}: who started it: {hist}");
    }
}

#[test]
fn crash_during_recovery_then_recover_again() {
    let w = world("/data/bin/qx-node");
    let (old, new) = (expected("1.0.0"), expected("2.0.0"));
    for (first, second) in [
        ("installed:host-ui", "restored:qx-node"),
        ("installed", "restored:host-ui"),
        ("migrated", "restarted"),
        ("migrated", "verified"),
    ] {
        let host = host_v1(&w);
        assert!(apply_crashing_at(&host, first));
        let out = qx(&host, &["recover"])
            .env("QX_TEST_CRASH_AT", second)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(6),
            "{first}/{second}: recovery crash not reached"
        );
        let what = format!("{first} then {second}");
        recover_and_check(&host, &old, &new, &what);
    }
}

/// True while a process of process group `pgid` exists that has not exited yet (a zombie has
/// released everything it held).
fn group_alive(pgid: i32) -> bool {
    let Ok(rd) = fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        group == Some(pgid) && state != "Z" && state != "X"
    })
}

/// Waits (bounded) until every process of the killed process group `pgid` has exited.
fn wait_group_gone(pgid: i32, what: &str) {
    let gone = poll(Duration::from_secs(60), Duration::from_millis(1), || {
        !group_alive(pgid)
    });
    assert!(
        gone,
        "{what}: a process of the killed group {pgid} is still running after 60 s"
    );
}

/// The number of random-offset trials (`QX_CRASH_TRIALS`, default `default`).
fn trials(default: u32) -> u32 {
    std::env::var("QX_CRASH_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `trials` runs of `qx-update <args>` on a fresh host from `host`, each killed (`kill -9` of
/// its process group) at a random point, then recovered and checked: entirely `old` or
/// entirely `new`. The kill point is a point of the agent's progress, not of the clock: the
/// moment its update log has grown by a random share of what an uninterrupted run writes there
/// (a line at every step, before the step's work), so kills land all through the transaction.
fn kill_9_at_random_points(
    host: &dyn Fn() -> TestHost,
    args: &[&str],
    (old, new): (&BTreeMap<String, String>, &BTreeMap<String, String>),
    trials: u32,
) {
    let log_len = |h: &TestHost| {
        std::fs::metadata(h.path("/var/log/quantix/update.log"))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let first = host();
    let before = log_len(&first);
    let out = qx(&first, args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fingerprint(&first),
        *new,
        "an uninterrupted run ends on new"
    );
    let full = log_len(&first) - before;
    assert!(full > 0, "a run writes its update log");
    drop(first);
    let (mut on_old, mut on_new) = (0, 0);
    for i in 0..trials {
        let host = host();
        let share = rand::random_range(0..=full);
        let target = log_len(&host) + share;
        let mut child = qx(&host, args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        poll(Duration::from_secs(60), Duration::from_millis(1), || {
            log_len(&host) >= target || child.try_wait().unwrap().is_some()
        });
        let pgid = child.id() as i32;
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{pgid}")])
            .status();
        let _ = child.wait();
        let what = format!("trial {i} (kill -9 after {share} of {full} update-log bytes)");
        // As after a power cut, recovery starts once nothing of the killed run is left: a
        // process of the group may still be exiting (the kill is delivered to all, but each
        // releases its files, e.g. a copy of the apply lock's descriptor in a child between
        // fork and exec, only when it runs again), which can take a while on a loaded machine.
        wait_group_gone(pgid, &what);
        match recover_and_check(&host, old, new, &what) {
            "old" => on_old += 1,
            _ => on_new += 1,
        }
    }
    eprintln!("{args:?}: {trials} random kills: {on_old} recovered to old, {on_new} to new");
}

#[test]
fn kill_9_at_random_offsets_then_recover() {
    let w = world("/data/bin/qx-node");
    let (old, new) = (expected("1.0.0"), expected("2.0.0"));
    kill_9_at_random_points(
        &|| host_v1(&w),
        &["apply", "--yes"],
        (&old, &new),
        trials(40),
    );
}

/// A server with 1.0.0 and 2.0.0 and a signed channel state that revokes 2.0.0 with
/// `revert`, current 1.0.0 (docs/spec.md §8): a host on 2.0.0 goes back to 1.0.0.
fn revert_world() -> World {
    let w = world("/data/bin/qx-node");
    let v1 = release(&w.key, "1.0.0", "/data/bin/qx-node");
    v1.publish(w.server.url(), "t").unwrap();
    let mut state = state_of(1, &[&v1]).unwrap();
    revoke(&mut state, &w.v2.manifest.version, RevokeAction::Revert);
    sign(&state, &w.key)
        .unwrap()
        .publish(w.server.url(), "t")
        .unwrap();
    w
}

/// Named crash points of a revert: old is 2.0.0, new is 1.0.0, and the history says
/// `reverted` once the host is on new.
#[test]
fn crash_at_every_named_step_of_a_revert_then_recover() {
    let w = revert_world();
    let (old, new) = (expected("2.0.0"), expected("1.0.0"));
    for point in POINTS {
        let host = host_at(&w, "2.0.0");
        assert!(
            run_crashing_at(&host, &["apply", "--yes"], point),
            "{point}: the crash point was not reached"
        );
        let on = recover_and_check(&host, &old, &new, point);
        let want = match *point {
            "migrated" | "restarted" | "verified" | "versions" | "committed" => "new",
            _ => "old",
        };
        assert_eq!(on, want, "{point}: recovered to the wrong side");
        if on == "new" {
            let hist = fs::read_to_string(host.path("/data/updates/history.jsonl")).unwrap();
            assert!(hist.contains("\"reverted\""), "{point}: {hist}");
        }
    }
}

#[test]
fn kill_9_at_random_points_of_a_revert_then_recover() {
    let w = revert_world();
    let (old, new) = (expected("2.0.0"), expected("1.0.0"));
    kill_9_at_random_points(
        &|| host_at(&w, "2.0.0"),
        &["apply", "--yes"],
        (&old, &new),
        trials(20),
    );
}

/// A bundle of 2.0.0 with a signed state offering it (docs/spec.md §12), in `dir`.
fn bundle_of_v2(w: &World, dir: &std::path::Path) -> std::path::PathBuf {
    let signed = sign(&state_of(1, &[&w.v2]).unwrap(), &w.key).unwrap();
    let mut files = Vec::new();
    for (name, bytes) in &w.v2.artifacts {
        let p = dir.join(format!("art-{name}"));
        fs::write(&p, bytes).unwrap();
        files.push((name.clone(), p));
    }
    let meta = BundleMetadata {
        channel: signed.bytes,
        channel_signature: signed.signature.into_bytes(),
        manifest: w.v2.manifest_bytes.clone(),
        manifest_signature: w.v2.signature.clone().into_bytes(),
    };
    let out = dir.join("release.qxb");
    write_bundle(&out, &meta, &files).unwrap();
    out
}

#[test]
fn crash_at_every_named_step_of_a_bundle_apply_then_recover() {
    let w = world("/data/bin/qx-node");
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle_of_v2(&w, dir.path());
    let args = ["apply", "--yes", "--from", bundle.to_str().unwrap()];
    let (old, new) = (expected("1.0.0"), expected("2.0.0"));
    for point in POINTS {
        let host = host_v1(&w);
        assert!(
            run_crashing_at(&host, &args, point),
            "{point}: the crash point was not reached"
        );
        let on = recover_and_check(&host, &old, &new, point);
        let want = match *point {
            "migrated" | "restarted" | "verified" | "versions" | "committed" => "new",
            _ => "old",
        };
        assert_eq!(on, want, "{point}: recovered to the wrong side");
    }
}

#[test]
fn kill_9_at_random_points_of_a_bundle_apply_then_recover() {
    let w = world("/data/bin/qx-node");
    let dir = tempfile::tempdir().unwrap();
    let bundle = bundle_of_v2(&w, dir.path());
    let (old, new) = (expected("1.0.0"), expected("2.0.0"));
    kill_9_at_random_points(
        &|| host_v1(&w),
        &["apply", "--yes", "--from", bundle.to_str().unwrap()],
        (&old, &new),
        trials(20),
    );
}

#[test]
fn crash_during_rollback_command_then_recover() {
    let w = world("/data/bin/qx-node");
    let (old, new) = (expected("1.0.0"), expected("2.0.0"));
    for point in ["restored:qx-node", "restored:host-ui", "rollback-restored"] {
        let host = host_v1(&w);
        let out = qx(&host, &["apply", "--yes"]).output().unwrap();
        assert!(out.status.success());
        assert_eq!(recover_and_check(&host, &old, &new, point), "new");
        let out = qx(&host, &["rollback", "--yes"])
            .env("QX_TEST_CRASH_AT", point)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(6), "{point}: not reached");
        // Recovery finishes the rollback.
        assert_eq!(
            recover_and_check(&host, &old, &new, point),
            "old",
            "{point}"
        );
    }
}
