//! End-to-end applies against a real server on loopback, on a sandboxed host root with a
//! real running service.

use std::fs;

use qx_agent::Agent;
use qx_agent::AgentError;
use qx_agent::ApplyOptions;
use qx_agent::Config;
use qx_core::status::{Outcome, UpdateState};
use qx_testkit::host::{demo_binary, exe_inode, is_running, Lab};
use qx_testkit::release::ComponentSpec;

use crate::support::host::{
    agent, host_at_v1, inode, journal, node, node_release, run_qx_update, stray_temps, update_log,
};

#[test]
fn apply_replaces_restarts_and_verifies_a_running_service() {
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    let old_pid = lab.host.service_pid("quantix-node").unwrap();
    node_release(&lab, "1.1.0");

    let agent = agent(&lab);
    let report = agent.apply(&ApplyOptions::default()).expect("apply");
    assert_eq!(report.version, "1.1.0");
    assert_eq!(report.components, vec!["qx-node"]);
    assert_eq!(report.outcome, Outcome::Success);

    let bin = lab.host.path("/data/bin/qx-node");
    assert_eq!(fs::read(&bin).unwrap(), demo_binary("1.1.0").unwrap());
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
    let new_pid = lab.host.service_pid("quantix-node").unwrap();
    assert_ne!(new_pid, old_pid, "service restarted once");
    assert!(is_running(new_pid));
    assert_eq!(
        exe_inode(new_pid),
        Some(inode(&bin)),
        "the service runs the new file"
    );
    // Backup of what was replaced.
    assert_eq!(
        lab.host
            .read("/data/updates/backup/1.1.0/qx-node/qx-node")
            .unwrap(),
        demo_binary("1.0.0").unwrap()
    );
    assert!(
        !lab.host.path("/data/updates/staging/1.1.0").exists(),
        "staging pruned"
    );
    assert!(
        stray_temps(lab.host.root()).is_empty(),
        "{:?}",
        stray_temps(lab.host.root())
    );

    let status = agent.status();
    assert_eq!(
        status.state,
        UpdateState::Done {
            version: "1.1.0".into()
        }
    );
    assert_eq!(
        status.installed.get("qx-node").map(String::as_str),
        Some("1.1.0")
    );
    let last = status.history.last().expect("history");
    assert_eq!(last.outcome, Outcome::Success);
    assert_eq!(last.from_version.as_deref(), Some("1.0.0"));
    let journal = journal(lab.host.root()).expect("journal");
    assert_eq!(journal["phase"], "committed");
    let log = update_log(lab.host.root());
    assert!(
        log.contains("manifest: product=quantix-os version=1.1.0"),
        "{log}"
    );
    assert!(log.contains("verify qx-node: ok"), "{log}");

    // A second apply finds nothing to do.
    let again = agent.apply(&ApplyOptions::default()).expect("apply again");
    assert!(again.components.is_empty());
}

#[test]
fn second_apply_while_one_holds_the_lock_is_busy() {
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    node_release(&lab, "1.1.0");
    let agent = agent(&lab);
    let held = qx_agent::transaction::lock(agent.paths()).expect("first lock");
    let err = agent
        .apply(&ApplyOptions::default())
        .expect_err("must be busy");
    assert!(matches!(err, AgentError::Busy { .. }), "{err}");
    assert!(err.to_string().contains("update in progress"), "{err}");
    assert_eq!(err.exit_code(), 10);

    // Another process gets the same answer.
    let out = run_qx_update(lab.host.root(), &["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("update in progress"));
    drop(held);
    agent
        .apply(&ApplyOptions::default())
        .expect("apply after the lock is released");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
}

#[test]
fn directory_component_is_swapped_whole() {
    let lab = Lab::new().unwrap();
    lab.host
        .write_file("/data/share/quantix-host-ui/index.html", b"old", 0o644)
        .unwrap();
    lab.host
        .write_file("/data/share/quantix-host-ui/old-only.js", b"gone", 0o644)
        .unwrap();
    lab.host.set_version("host-ui", "1.0.0").unwrap();
    lab.publish(&lab.release("1.1.0").component(ComponentSpec::tree(
        "host-ui",
        "/data/share/quantix-host-ui",
        vec![
            ("index.html".into(), b"new".to_vec(), 0o644),
            ("assets/app.js".into(), b"js".to_vec(), 0o644),
        ],
    )))
    .unwrap();
    agent(&lab).apply(&ApplyOptions::default()).expect("apply");
    assert_eq!(
        lab.host
            .read("/data/share/quantix-host-ui/index.html")
            .unwrap(),
        b"new"
    );
    assert_eq!(
        lab.host
            .read("/data/share/quantix-host-ui/assets/app.js")
            .unwrap(),
        b"js"
    );
    assert!(!lab
        .host
        .path("/data/share/quantix-host-ui/old-only.js")
        .exists());
    assert_eq!(
        lab.host
            .read("/data/updates/backup/1.1.0/host-ui/quantix-host-ui/old-only.js")
            .unwrap(),
        b"gone"
    );
    assert!(stray_temps(lab.host.root()).is_empty());
}

#[test]
fn rollback_restores_the_previous_version_and_restarts() {
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    node_release(&lab, "1.1.0");
    let agent = agent(&lab);
    agent.apply(&ApplyOptions::default()).expect("apply");
    let r = agent.rollback().expect("rollback");
    assert_eq!(r.outcome, Outcome::RolledBack);
    let bin = lab.host.path("/data/bin/qx-node");
    assert_eq!(fs::read(&bin).unwrap(), demo_binary("1.0.0").unwrap());
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
    let pid = lab.host.service_pid("quantix-node").unwrap();
    assert_eq!(exe_inode(pid), Some(inode(&bin)));
    assert_eq!(
        agent.status().history.last().unwrap().outcome,
        Outcome::RolledBack
    );
    // The backup was consumed: nothing more to roll back.
    let err = agent.rollback().expect_err("no backup left");
    assert!(matches!(err, AgentError::NoBackup { .. }), "{err}");
}

#[test]
fn selected_component_only() {
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    lab.publish(
        &lab.release("1.1.0")
            .component(node("1.1.0").service("quantix-node"))
            .component(ComponentSpec::file(
                "qx-console",
                "/data/bin/qx-console",
                b"console".to_vec(),
            )),
    )
    .unwrap();
    let agent = agent(&lab);
    let r = agent
        .apply(&ApplyOptions {
            components: Some(vec!["qx-console".into()]),
            allow_downgrade: None,
            ..Default::default()
        })
        .expect("apply");
    assert_eq!(r.components, vec!["qx-console"]);
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
    assert_eq!(lab.host.version("qx-console").as_deref(), Some("1.1.0"));
    let err = agent
        .apply(&ApplyOptions {
            components: Some(vec!["nope".into()]),
            allow_downgrade: None,
            ..Default::default()
        })
        .expect_err("unknown component");
    assert!(matches!(err, AgentError::UnknownComponent { .. }), "{err}");
}

#[test]
fn cli_status_and_check_json() {
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    node_release(&lab, "1.1.0");
    let run = |args: &[&str]| run_qx_update(lab.host.root(), args);
    let out = run(&["--json", "check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], "1.1.0");
    assert_eq!(v["available"], true);
    assert_eq!(v["changes"][0]["installed"], "1.0.0");
    assert_eq!(v["changes"][0]["offered"], "1.1.0");
    assert_eq!(v["changes"][0]["action"], "update");

    let out = run(&["--json", "apply", "--yes"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["--json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["installed"]["qx-node"], "1.1.0");
    assert_eq!(v["history"][0]["outcome"], "success");
    let by = &v["history"][0]["started_by"];
    assert_eq!(by["via"], "cli", "{by}");
    assert!(by["user"].as_str().is_some_and(|u| !u.is_empty()), "{by}");
    assert_eq!(
        v["last_check"]["result"], "available",
        "the check before: {v}"
    );
    let out = run(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("qx-node"), "{text}");
    assert!(text.contains("success (started by cli ("), "{text}");
    assert!(text.contains("last check: "), "{text}");
    // apply without --yes and without a terminal is a usage error.
    let out = run(&["apply"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn health_command_proves_the_effect() {
    let lab = Lab::new().unwrap();
    lab.host
        .write_file("/data/share/quantix-host-ui/index.html", b"old", 0o644)
        .unwrap();
    lab.host.set_version("host-ui", "1.0.0").unwrap();
    lab.publish(
        &lab.release("1.1.0").component(
            ComponentSpec::tree(
                "host-ui",
                "/data/share/quantix-host-ui",
                vec![("index.html".into(), b"new".to_vec(), 0o644)],
            )
            .health(vec![
                "sh".into(),
                "-c".into(),
                "grep -q new \"$QX_ROOT/data/share/quantix-host-ui/index.html\"".into(),
            ]),
        ),
    )
    .unwrap();
    agent(&lab)
        .apply(&ApplyOptions::default())
        .expect("healthy");
    assert_eq!(lab.host.version("host-ui").as_deref(), Some("1.1.0"));
}

#[test]
fn failing_health_command_restores_every_file() {
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    lab.host
        .write_file("/data/share/quantix-host-ui/index.html", b"old", 0o644)
        .unwrap();
    lab.host.set_version("host-ui", "1.0.0").unwrap();
    lab.publish(
        &lab.release("1.1.0")
            .component(node("1.1.0").service("quantix-node"))
            .component(
                ComponentSpec::tree(
                    "host-ui",
                    "/data/share/quantix-host-ui",
                    vec![("index.html".into(), b"new".to_vec(), 0o644)],
                )
                .health(vec![
                    "sh".into(),
                    "-c".into(),
                    "echo ui-is-unhealthy >&2; exit 3".into(),
                ]),
            ),
    )
    .unwrap();
    let err = agent(&lab)
        .apply(&ApplyOptions::default())
        .expect_err("unhealthy");
    assert!(
        matches!(err, AgentError::NotEffective { ref component, .. } if component == "host-ui"),
        "{err}"
    );
    assert_eq!(
        lab.host
            .read("/data/share/quantix-host-ui/index.html")
            .unwrap(),
        b"old"
    );
    assert_eq!(
        lab.host.read("/data/bin/qx-node").unwrap(),
        demo_binary("1.0.0").unwrap()
    );
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
    assert_eq!(lab.host.version("host-ui").as_deref(), Some("1.0.0"));
    // Restarted again onto the restored binary.
    let pid = lab.host.service_pid("quantix-node").unwrap();
    assert_eq!(
        exe_inode(pid),
        Some(inode(&lab.host.path("/data/bin/qx-node")))
    );
    let log = update_log(lab.host.root());
    assert!(log.contains("ui-is-unhealthy"), "{log}");
    assert!(stray_temps(lab.host.root()).is_empty());
}

#[test]
fn old_backups_are_pruned_to_keep_backups() {
    let lab = Lab::with("quantix-os", "dev", "  keep_backups: 1\n").unwrap();
    host_at_v1(&lab);
    let agent = agent(&lab);
    node_release(&lab, "1.1.0");
    agent.apply(&ApplyOptions::default()).expect("1.1.0");
    node_release(&lab, "1.2.0");
    agent.apply(&ApplyOptions::default()).expect("1.2.0");
    assert!(
        !lab.host.path("/data/updates/backup/1.1.0").exists(),
        "pruned"
    );
    assert_eq!(
        lab.host
            .read("/data/updates/backup/1.2.0/qx-node/qx-node")
            .unwrap(),
        demo_binary("1.1.0").unwrap()
    );
}

#[test]
fn agent_refuses_a_config_loaded_under_another_root() {
    let lab = Lab::new().unwrap();
    let config = Config::load_under(&lab.host.config_path(), lab.host.root()).unwrap();
    let err = Agent::new(config, "/somewhere/else".into())
        .err()
        .expect("mismatch");
    assert!(matches!(err, AgentError::Config(_)), "{err}");
}

#[test]
fn pid_command_locates_the_service_process() {
    let lab = Lab::with(
        "quantix-os",
        "dev",
        "  pid_command: [\"sh\", \"-c\", \"cat {root}/run/{service}.pid\"]\n  pidfile: /nowhere/{service}.pid\n",
    )
    .unwrap();
    host_at_v1(&lab);
    node_release(&lab, "1.1.0");
    agent(&lab)
        .apply(&ApplyOptions::default())
        .expect("verified through pid_command");
    let pid = lab.host.service_pid("quantix-node").unwrap();
    assert_eq!(
        exe_inode(pid),
        Some(inode(&lab.host.path("/data/bin/qx-node")))
    );
}

#[test]
fn failed_restart_restores_every_file() {
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    // The service "broken" starts a program that does not exist.
    lab.host
        .add_service("broken", "/data/bin/not-there", "")
        .unwrap();
    lab.publish(
        &lab.release("1.1.0")
            .component(node("1.1.0").service("broken")),
    )
    .unwrap();
    let err = agent(&lab)
        .apply(&ApplyOptions::default())
        .expect_err("restart fails");
    assert!(
        matches!(err, AgentError::RestartFailed { ref service, .. } if service == "broken"),
        "{err}"
    );
    assert_eq!(err.exit_code(), 41);
    assert_eq!(
        lab.host.read("/data/bin/qx-node").unwrap(),
        demo_binary("1.0.0").unwrap()
    );
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
    assert!(stray_temps(lab.host.root()).is_empty());
}
