//! The sandboxed host of a lab: its setup at 1.0.0, the agent over it, the `qx-update` binary
//! run against it, and what it leaves on disk (files, temporaries, update log, history).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use qx_agent::Agent;
use qx_agent::Config;
use qx_testkit::host::{demo_binary, Lab, TestHost};
use qx_testkit::release::{BuiltRelease, ComponentSpec};
use serde_json::Value;

/// The agent of the lab's host, on its configuration.
pub fn agent(lab: &Lab) -> Agent {
    agent_under(&lab.host.config_path(), lab.host.root())
}

/// An agent on the configuration file `config`, for the host root `root`.
pub fn agent_under(config: &Path, root: &Path) -> Agent {
    let config = Config::load_under(config, root).expect("config");
    Agent::new(config, root.to_path_buf()).expect("agent")
}

/// The host at 1.0.0: `qx-node` installed and running as service `quantix-node`.
pub fn host_at_v1(lab: &Lab) {
    lab.host
        .write_file("/data/bin/qx-node", &demo_binary("1.0.0").unwrap(), 0o755)
        .unwrap();
    lab.host.set_version("qx-node", "1.0.0").unwrap();
    lab.host
        .add_service("quantix-node", "/data/bin/qx-node", "infinity")
        .unwrap();
    service(&lab.host, "restart", "quantix-node");
}

/// Runs the host's service manager (`start`, `restart`, `stop`) on `name`. Again, a bounded
/// number of times, when an executable it starts is busy (ETXTBSY): for a few milliseconds
/// after a test writes an executable, a process forked by a parallel test of this binary may
/// hold a copy of the descriptor it was written through.
pub fn service(host: &TestHost, action: &str, name: &str) {
    let mut last = None;
    let done = crate::support::poll(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || match host.service(action, name) {
            Ok(()) => true,
            Err(e) if format!("{e:#}").contains("Text file busy") => {
                last = Some(e);
                false
            }
            Err(e) => panic!("service {action} {name}: {e:#}"),
        },
    );
    assert!(done, "service {action} {name}: {last:?}");
}

/// Component `qx-node` of `version`: the demo binary installed as `/data/bin/qx-node`.
pub fn node(version: &str) -> ComponentSpec {
    ComponentSpec::file(
        "qx-node",
        "/data/bin/qx-node",
        demo_binary(version).unwrap(),
    )
}

/// Publishes `version` with `qx-node` alone, restarting service `quantix-node`.
pub fn node_release(lab: &Lab, version: &str) -> BuiltRelease {
    lab.publish(
        &lab.release(version)
            .component(node(version).service("quantix-node")),
    )
    .unwrap()
}

/// Device and inode of `p`.
pub fn inode(p: &Path) -> (u64, u64) {
    let m = fs::metadata(p).expect("stat");
    (m.dev(), m.ino())
}

/// Every entry below `dir` (directories included, symbolic links not followed); unreadable
/// directories are passed over.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    walk_where(dir, |_| true)
}

/// Every entry below `dir`, descending only into the directories `descend` accepts.
pub fn walk_where(dir: &Path, descend: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() && descend(&p) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Files whose name marks them as the agent's temporaries, anywhere under `dir`.
pub fn stray_temps(dir: &Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".qx-"))
        .map(|p| p.display().to_string())
        .collect()
}

/// The update log under the host root `root` (empty when absent).
pub fn update_log(root: &Path) -> String {
    fs::read_to_string(root.join("var/log/quantix/update.log")).unwrap_or_default()
}

/// The update history under the host root `root`, one JSON value per line (empty when absent).
pub fn history(root: &Path) -> Vec<Value> {
    parse_jsonl(&fs::read_to_string(root.join("data/updates/history.jsonl")).unwrap_or_default())
}

/// One JSON value per line of `text`.
pub fn parse_jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("history line is JSON"))
        .collect()
}

/// The transaction journal under the host root `root`, when there is one.
pub fn journal(root: &Path) -> Option<Value> {
    let bytes = fs::read(root.join("data/updates/journal.json")).ok()?;
    Some(serde_json::from_slice(&bytes).expect("journal is JSON"))
}

/// The `qx-update` binary on the host root `root` (`--root`), stdin closed, no crash point.
pub fn qx_update(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qx-update"));
    c.arg("--root").arg(root);
    c.env_remove("QX_TEST_CRASH_AT");
    c.stdin(Stdio::null());
    c
}

/// `qx-update --root <root> <args>`, run to its end.
pub fn run_qx_update(root: &Path, args: &[&str]) -> std::process::Output {
    qx_update(root).args(args).output().expect("run qx-update")
}

/// The URL of a loopback port nothing listens on (bound, then let go).
pub fn dead_url() -> String {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://127.0.0.1:{}", dead.local_addr().unwrap().port())
}
