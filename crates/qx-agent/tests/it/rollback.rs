//! `qx-update rollback` end to end (docs/spec.md §4): the real binary on a sandboxed host with
//! a real running service, releases from a real server. A rollback is verified by the same
//! rule as an apply, walks back one apply at a time, and never goes past the first install
//! without `--force`.

use std::process::Output;

use qx_agent::code;
use qx_testkit::host::{demo_binary, exe_inode, is_running, Lab};
use qx_testkit::release::ComponentSpec;

use crate::support::host::{
    history, host_at_v1, inode, node, node_release, run_qx_update, service,
};

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `qx-update <args>` on the lab's host; asserts the exit code.
fn qx(lab: &Lab, args: &[&str], expect: i32) -> Output {
    let out = run_qx_update(lab.host.root(), args);
    assert_eq!(out.status.code(), Some(expect), "{args:?}: {}", text(&out));
    out
}

/// A host with service `quantix-node` declared but nothing installed yet.
fn empty_host_with_service(lab: &Lab) {
    lab.host
        .add_service("quantix-node", "/data/bin/qx-node", "infinity")
        .unwrap();
}

/// The service runs the installed `/data/bin/qx-node` of `version`; returns its pid.
fn assert_runs(lab: &Lab, version: &str) -> u32 {
    let bin = lab.host.path("/data/bin/qx-node");
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        demo_binary(version).unwrap(),
        "the file of {version}"
    );
    assert_eq!(lab.host.version("qx-node").as_deref(), Some(version));
    let pid = lab.host.service_pid("quantix-node").expect("pidfile");
    assert!(is_running(pid), "service runs");
    assert_eq!(exe_inode(pid), Some(inode(&bin)), "service runs {version}");
    pid
}

#[test]
fn rollback_twice_walks_back_two_updates() {
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    for v in ["1.0.1", "1.0.2"] {
        node_release(&lab, v);
        qx(&lab, &["apply", "--yes"], code::SUCCESS);
        assert_runs(&lab, v);
    }

    let out = qx(&lab, &["rollback", "--yes"], code::SUCCESS);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("qx-node") && stdout.contains("1.0.2 -> 1.0.1"),
        "{stdout}"
    );
    assert!(stdout.contains("Rolled back to 1.0.1"), "{stdout}");
    assert_runs(&lab, "1.0.1");

    let out = qx(&lab, &["rollback", "--yes"], code::SUCCESS);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1.0.1 -> 1.0.0"), "{stdout}");
    assert_runs(&lab, "1.0.0");

    let h = history(lab.host.root());
    let last: Vec<(&str, &str, &str)> = h[h.len() - 2..]
        .iter()
        .map(|e| {
            (
                e["from_version"].as_str().unwrap(),
                e["version"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        last,
        vec![
            ("1.0.2", "1.0.1", "rolled_back"),
            ("1.0.1", "1.0.0", "rolled_back")
        ]
    );
    // Who rolled back: the CLI, and the user running it.
    for e in &h[h.len() - 2..] {
        assert_eq!(e["started_by"]["via"], "cli", "{e}");
        assert!(e["started_by"]["user"].is_string(), "{e}");
    }

    // 1.0.0 was there before the agent: nothing older, said so, nothing changed.
    let out = qx(&lab, &["rollback", "--yes"], code::NO_BACKUP);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nothing older to roll back to") && stderr.contains("qx-node 1.0.0"),
        "{stderr}"
    );
    assert_runs(&lab, "1.0.0");
}

#[test]
fn rollback_after_a_failed_apply_undoes_the_last_apply_that_took_effect() {
    // A failed apply restores from its own backup, so nothing of it is left to undo: the
    // operator's rollback goes back from the version that runs, not to it again.
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    node_release(&lab, "1.0.1");
    qx(&lab, &["apply", "--yes"], code::SUCCESS);
    lab.publish(
        &lab.release("1.0.2").component(
            node("1.0.2")
                .service("quantix-node")
                .health(vec!["false".into()]),
        ),
    )
    .unwrap();
    qx(&lab, &["apply", "--yes"], code::NOT_EFFECTIVE);
    assert_runs(&lab, "1.0.1");
    assert!(
        !lab.host.path("/data/updates/backup/1.0.2").exists(),
        "the failed apply kept its backup"
    );

    let out = qx(&lab, &["rollback", "--yes"], code::SUCCESS);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1.0.1 -> 1.0.0"), "{stdout}");
    assert_runs(&lab, "1.0.0");
}

#[test]
fn rollback_walks_back_in_the_order_of_the_applies_not_of_the_versions() {
    // 1.0.0 (there) -> 1.0.2 -> 1.0.1 (a downgrade on purpose): the first rollback undoes
    // the downgrade, even though backup 1.0.2 has the higher version; with keep_backups: 1
    // the backup of the latest apply is the one kept.
    let lab = Lab::with("quantix-os", "dev", "  keep_backups: 1\n").unwrap();
    host_at_v1(&lab);
    node_release(&lab, "1.0.2");
    qx(&lab, &["apply", "--yes"], code::SUCCESS);
    // The server offers its newest release; an older one is published on another channel
    // layout only through a new server, so take the downgrade through a fresh lab server.
    let lab2 = Lab::with("quantix-os", "dev", "").unwrap();
    node_release(&lab2, "1.0.1");
    let cfg = std::fs::read_to_string(lab.host.config_path()).unwrap();
    let cfg = cfg.replace(lab.server.url(), lab2.server.url());
    std::fs::write(lab.host.config_path(), cfg).unwrap();
    std::fs::write(
        lab.host.path("/etc/limiquantix/update-key.pub"),
        &lab2.key.public_key_file,
    )
    .unwrap();
    qx(
        &lab,
        &["apply", "--yes", "--allow-downgrade", "1.0.1"],
        code::SUCCESS,
    );
    assert_runs(&lab, "1.0.1");

    let out = qx(&lab, &["rollback", "--yes"], code::SUCCESS);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1.0.1 -> 1.0.2"),
        "{}",
        text(&out)
    );
    assert_runs(&lab, "1.0.2");
}

#[test]
fn rollback_at_the_first_install_is_refused_without_force() {
    let lab = Lab::new().unwrap();
    empty_host_with_service(&lab);
    node_release(&lab, "1.0.0");
    qx(&lab, &["apply", "--yes"], code::SUCCESS);
    let pid = assert_runs(&lab, "1.0.0");
    let before = history(lab.host.root()).len();

    let out = qx(&lab, &["rollback", "--yes"], code::ROLLBACK_FIRST_INSTALL);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("1.0.0 -> removed (not installed before 1.0.0)"),
        "the plan names what would be removed: {stdout}"
    );
    assert!(
        stderr.contains("1.0.0 was the first install")
            && stderr.contains("remove qx-node")
            && stderr.contains("--force"),
        "{stderr}"
    );
    // Nothing changed: same file, same running process, no history entry.
    assert_eq!(assert_runs(&lab, "1.0.0"), pid);
    assert_eq!(history(lab.host.root()).len(), before);

    // With --force it is removed, and said so.
    let out = qx(&lab, &["rollback", "--yes", "--force"], code::SUCCESS);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed"),
        "{}",
        text(&out)
    );
    assert!(!lab.host.path("/data/bin/qx-node").exists());
    assert_eq!(lab.host.version("qx-node"), None);
    let h = history(lab.host.root());
    assert_eq!(h.last().unwrap()["outcome"], "rolled_back");
    assert_eq!(h.last().unwrap()["from_version"], "1.0.0");
}

#[test]
fn rollback_after_a_first_install_and_an_update_stops_at_the_first_install() {
    let lab = Lab::new().unwrap();
    empty_host_with_service(&lab);
    for v in ["1.0.0", "1.0.1"] {
        node_release(&lab, v);
        qx(&lab, &["apply", "--yes"], code::SUCCESS);
    }
    qx(&lab, &["rollback", "--yes"], code::SUCCESS);
    let pid = assert_runs(&lab, "1.0.0");
    qx(&lab, &["rollback", "--yes"], code::ROLLBACK_FIRST_INSTALL);
    assert_eq!(
        assert_runs(&lab, "1.0.0"),
        pid,
        "the service was left running"
    );
}

/// A shell-script service: `/proc/<pid>/exe` is the shell, never the script, so only the
/// component's health command can prove the restore took effect.
fn script(version: &str) -> Vec<u8> {
    format!("#!/bin/sh\n# qx-script {version}\nwhile :; do sleep 1; done\n").into_bytes()
}

#[test]
fn rollback_of_a_component_with_a_health_command_is_a_success() {
    let lab = Lab::new().unwrap();
    lab.host
        .write_file("/data/bin/qx-script", &script("1.0.0"), 0o755)
        .unwrap();
    lab.host.set_version("qx-script", "1.0.0").unwrap();
    lab.host
        .add_service("qx-script", "/data/bin/qx-script", "")
        .unwrap();
    service(&lab.host, "restart", "qx-script");
    let health = vec![
        "sh".into(),
        "-c".into(),
        "kill -0 \"$(cat \"$QX_ROOT/run/qx-script.pid\")\"".into(),
    ];
    lab.publish(
        &lab.release("1.0.1").component(
            ComponentSpec::file("qx-script", "/data/bin/qx-script", script("1.0.1"))
                .service("qx-script")
                .health(health),
        ),
    )
    .unwrap();
    qx(&lab, &["apply", "--yes"], code::SUCCESS);
    assert_eq!(lab.host.version("qx-script").as_deref(), Some("1.0.1"));

    qx(&lab, &["rollback", "--yes"], code::SUCCESS);
    assert_eq!(
        lab.host.read("/data/bin/qx-script").unwrap(),
        script("1.0.0")
    );
    assert_eq!(lab.host.version("qx-script").as_deref(), Some("1.0.0"));
    let pid = lab.host.service_pid("qx-script").unwrap();
    assert!(is_running(pid));
    let last = history(lab.host.root()).pop().unwrap();
    assert_eq!(last["outcome"], "rolled_back", "{last}");
    assert_eq!(last["version"], "1.0.0");
}
