//! Issue 11 item 7: `qx-update status` shows an operation another process is running (from
//! the apply lock's holder and the journal) and an interrupted one that recovery will finish.

use qx_testkit::host::Lab;
use qx_testkit::release::ComponentSpec;
use serde_json::Value;

use crate::support::gate::{wait_pid, Gate, SHELL_HELPERS};
use crate::support::host::{host_at_v1, journal, node, qx_update, run_qx_update};

fn status_json(lab: &Lab) -> Value {
    let out = run_qx_update(lab.host.root(), &["--json", "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn status_text(lab: &Lab) -> String {
    let out = run_qx_update(lab.host.root(), &["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A migration that records its pid and waits on gate `gate`.
fn waiting_migration() -> ComponentSpec {
    let script = format!(
        "#!/bin/sh\n{SHELL_HELPERS}record_pid migration $$\ncat \"$run/gate\" > /dev/null\n"
    );
    ComponentSpec::migrations(
        "db-migrations",
        "/data/lib/quantix-migrations",
        vec![("migrate.sh".into(), script.into_bytes(), 0o755)],
        vec!["./migrate.sh".into()],
    )
}

#[test]
fn status_shows_an_apply_running_in_another_process() {
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    lab.publish(
        &lab.release("2.0.0")
            .component(node("2.0.0").service("quantix-node"))
            .component(waiting_migration()),
    )
    .unwrap();
    let root = lab.host.root();
    let gate = Gate::new(root, "gate");
    let mut agent = qx_update(root).args(["apply", "--yes"]).spawn().unwrap();
    wait_pid(root, "migration");

    let op_id = journal(root).expect("journal")["operation_id"].clone();
    let s = status_json(&lab);
    let op = &s["operation"];
    assert_eq!(op["state"], "in_progress", "{s:#}");
    assert_eq!(op["pid"], agent.id(), "{s:#}");
    assert_eq!(op["operation_id"], op_id, "{s:#}");
    assert_eq!(op["kind"], "apply", "{s:#}");
    assert_eq!(op["phase"], "installing", "{s:#}");
    assert_eq!(op["version"], "2.0.0", "{s:#}");
    assert_eq!(op["from_version"], "1.0.0", "{s:#}");
    let components = op["components"].as_array().expect("components");
    assert!(
        components.iter().any(|c| c["name"] == "qx-node"
            && c["version"] == "2.0.0"
            && c["previous_version"] == "1.0.0"),
        "{s:#}"
    );
    let text = status_text(&lab);
    assert!(text.contains("in progress"), "{text}");
    assert!(text.contains(op_id.as_str().unwrap()), "{text}");
    assert!(text.contains(&format!("pid {}", agent.id())), "{text}");
    assert!(text.contains("qx-node 1.0.0 -> 2.0.0"), "{text}");

    gate.open();
    assert!(agent.wait().unwrap().success());
    let s = status_json(&lab);
    assert!(s["operation"].is_null(), "{s:#}");
    assert_eq!(s["installed"]["qx-node"], "2.0.0");
}

#[test]
fn status_shows_an_interrupted_apply_that_recovery_will_finish() {
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    lab.publish(
        &lab.release("2.0.0")
            .component(node("2.0.0").service("quantix-node")),
    )
    .unwrap();
    let root = lab.host.root();
    // Killed with the new file in place and the journal in `installing`.
    let out = qx_update(root)
        .args(["apply", "--yes"])
        .env("QX_TEST_CRASH_AT", "installed")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(6), "the crash point was reached");
    let j = journal(root).expect("journal");

    let s = status_json(&lab);
    let op = &s["operation"];
    assert_eq!(op["state"], "interrupted", "{s:#}");
    assert!(op["pid"].is_null(), "{s:#}");
    assert_eq!(op["operation_id"], j["operation_id"], "{s:#}");
    assert_eq!(op["phase"], "installing", "{s:#}");
    assert_eq!(op["version"], "2.0.0", "{s:#}");
    assert_eq!(op["recovery"], "roll_back", "{s:#}");
    let text = status_text(&lab);
    assert!(text.contains("interrupted"), "{text}");
    assert!(text.contains("qx-update recover"), "{text}");
    assert!(text.contains("roll back"), "{text}");

    let out = run_qx_update(root, &["recover"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = status_json(&lab);
    assert!(s["operation"].is_null(), "{s:#}");
    assert_eq!(s["installed"]["qx-node"], "1.0.0");
}

#[test]
fn apply_without_a_terminal_prints_a_line_per_step_and_download_quarters() {
    let lab = Lab::new().expect("lab");
    host_at_v1(&lab);
    lab.publish(
        &lab.release("1.1.0")
            .component(node("1.1.0").service("quantix-node"))
            .component(ComponentSpec::migrations(
                "db-migrations",
                "/data/lib/quantix-migrations",
                vec![("001".into(), b"#!/bin/sh\nexit 0\n".to_vec(), 0o755)],
                vec!["001".into()],
            )),
    )
    .expect("publish 1.1.0");
    // stderr is a pipe here, not a terminal.
    let out = run_qx_update(lab.host.root(), &["apply", "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let at = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{stderr}"))
    };
    let order = [
        at("downloading "),
        at("installing "),
        at("migrating db-migrations"),
        at("restarting quantix-node"),
        at("verifying "),
        at("done: 1.1.0"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("downloaded ") && l.ends_with("(100%)")),
        "{stderr}"
    );
    // Each step once.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("restarting quantix-node"))
            .count(),
        1,
        "{stderr}"
    );
    // --json keeps stderr free of progress.
    let out = run_qx_update(lab.host.root(), &["--json", "apply", "--yes"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("downloading "));
}
