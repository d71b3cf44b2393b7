//! Issue 11 item 4: a migration (like a health or restart command) runs in its own process
//! group that dies with the agent; recovery kills whatever is left of the group recorded in the
//! journal, and waits until none of it lives, before anything else.

use std::fs;
use std::time::Duration;

use qx_testkit::host::{is_running, Lab};
use qx_testkit::release::ComponentSpec;

use crate::support::gate::{wait_pid, Gate, SHELL_HELPERS};
use crate::support::host::{journal, qx_update, run_qx_update};
use crate::support::poll;

/// A migration that appends `run` to `$QX_ROOT/run/migrations` (and `overlap` first when a
/// worker of an earlier run still lives). While `$QX_ROOT/run/block` exists it starts a worker
/// (a child of its own, which a parent-death signal does not reach) that waits on gate `gate`,
/// and waits for it.
fn migrate_script() -> String {
    format!(
        r#"#!/bin/sh
set -e
{SHELL_HELPERS}
w=$(cat "$run/worker.pid" 2>/dev/null || true)
if [ -n "$w" ] && [ -r "/proc/$w/status" ] && ! grep -q '^State:.*Z' "/proc/$w/status"; then
    echo overlap >> "$run/migrations"
fi
echo run >> "$run/migrations"
if [ -e "$run/block" ]; then
    sh -c 'echo $$ > "$1/worker.pid.tmp" && mv "$1/worker.pid.tmp" "$1/worker.pid" && exec cat "$1/gate" > /dev/null' worker "$run" &
    record_pid migration $$
    wait
fi
"#
    )
}

#[test]
fn killed_agent_takes_its_migration_along_and_recovery_kills_the_orphans_first() {
    let lab = Lab::new().unwrap();
    lab.publish(&lab.release("1.0.0").component(ComponentSpec::migrations(
        "db-migrations",
        "/data/lib/quantix-migrations",
        vec![("migrate.sh".into(), migrate_script().into_bytes(), 0o755)],
        vec!["./migrate.sh".into()],
    )))
    .unwrap();
    let root = lab.host.root();
    let _gate = Gate::new(root, "gate");
    fs::write(root.join("run/block"), b"").unwrap();

    let mut agent = qx_update(root).args(["apply", "--yes"]).spawn().unwrap();
    let migration = wait_pid(root, "migration");
    let worker = wait_pid(root, "worker");
    // The agent has recorded the group (a condition of its progress, like the crash points).
    let recorded = poll(Duration::from_secs(60), Duration::from_millis(10), || {
        journal(root).is_some_and(|j| j["running"]["pgid"] == migration)
    });
    assert!(
        recorded,
        "the journal records the migration's process group"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();

    // The migration process itself dies with the agent.
    let gone = poll(Duration::from_secs(30), Duration::from_millis(10), || {
        !is_running(migration)
    });
    assert!(
        gone,
        "the migration (pid {migration}) still runs 30 s after the agent was killed"
    );
    assert_eq!(journal(root).expect("journal")["phase"], "installing");

    // The next apply recovers first: the worker left of the group is killed before the
    // migration runs again.
    fs::remove_file(root.join("run/block")).unwrap();
    let out = run_qx_update(root, &["apply", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !is_running(worker),
        "the orphaned worker (pid {worker}) of the killed migration still runs after recovery"
    );
    assert_eq!(
        fs::read_to_string(root.join("run/migrations")).unwrap(),
        "run\nrun\n",
        "the migration ran again while a process of its earlier run was alive"
    );
    let j = journal(root).expect("journal");
    assert_eq!(j["phase"], "committed");
    assert!(
        j["running"].is_null(),
        "no command recorded as running: {j}"
    );
}

/// An agent whose session leader lives outside its PID namespace (started in a container, or
/// here by `unshare`) sees session 0: the commands it runs are still started, recorded and
/// waited for, and the apply succeeds.
#[test]
#[ignore = "slow tier: needs root for a PID namespace; `cargo xtask test` runs it"]
fn an_agent_in_its_own_pid_namespace_runs_its_commands() {
    let lab = Lab::new().unwrap();
    let script = "#!/bin/sh\nset -e\necho run >> \"$QX_ROOT/run/migrations\"\n";
    lab.publish(&lab.release("1.0.0").component(ComponentSpec::migrations(
        "db-migrations",
        "/data/lib/quantix-migrations",
        vec![("migrate.sh".into(), script.as_bytes().to_vec(), 0o755)],
        vec!["./migrate.sh".into()],
    )))
    .unwrap();
    let root = lab.host.root();
    let agent = qx_update(root);
    let mut namespaced = std::process::Command::new("unshare");
    namespaced
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(agent.get_program())
        .args(agent.get_args())
        .args(["apply", "--yes"])
        .stdin(std::process::Stdio::null());
    let out = namespaced.output().expect("run unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "apply in a PID namespace: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        fs::read_to_string(root.join("run/migrations")).unwrap(),
        "run\n"
    );
    assert_eq!(lab.host.version("db-migrations").as_deref(), Some("1.0.0"));
}
