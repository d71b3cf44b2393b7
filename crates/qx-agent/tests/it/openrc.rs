//! The OpenRC restart path for real: Debian's `openrc` is the init system of a throwaway root
//! (openrc/guest.rs), and `qx-update apply`, run in there with `service_manager: openrc`,
//! restarts the services of a release with `rc-service NAME restart`.
//!
//! The host runs the demo product's program (examples/quantix-demo/src/qx-demo.sh) as
//! service `qx-demo`, with the demo's OpenRC script (examples/quantix-demo/host/openrc/qx-demo),
//! and an ELF program as service `quantix-node`. Releases come from a real update server on
//! loopback. An update is verified by the demo's health command (`qx-demo --check`: the
//! running program is the installed version) and, for the ELF program, by the pid OpenRC
//! wrote to `/run/quantix-node.pid` running the newly installed file. A release whose program
//! exits at start fails `rc-service qx-demo restart`; the agent restores the files and
//! restarts the service through OpenRC again, and the previous version answers its health
//! check. Then `qx-update rollback` undoes 2.0.0, restarting both services through OpenRC on
//! 1.0.0.
//!
//! Slow tier: needs root; downloads Debian's openrc packages once into
//! target/tmp/openrc-cache; console and logs under target/tmp/openrc/.
//!
//!     cargo test -p qx-agent --test it openrc -- --include-ignored --nocapture

mod guest;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use qx_agent::code;
use qx_testkit::host::{demo_binary, Lab};
use qx_testkit::release::ComponentSpec;

use crate::support::host::{history, update_log};
use crate::support::poll;
use crate::support::sys::ensure_packages;
use guest::{add_service, build_root, put, Guest};

/// The demo's program; `@VERSION@` is stamped by its build (src/build.sh).
const DEMO_PROGRAM: &str = include_str!("../../../../examples/quantix-demo/src/qx-demo.sh");
/// The demo's OpenRC service.
const DEMO_SERVICE: &str = include_str!("../../../../examples/quantix-demo/host/openrc/qx-demo");
/// A release of the demo program that cannot start.
const BROKEN_PROGRAM: &str =
    "#!/bin/sh\necho \"qx-demo 3.0.0: cannot open its database\" >&2\nexit 1\n";
/// The OpenRC service of an ELF program: start-stop-daemon writes its pidfile where the
/// agent looks by default (`/run/{service}.pid`); stop waits until the daemon is gone (the
/// demo's service says why).
const NODE_SERVICE: &str = "#!/sbin/openrc-run\ndescription=\"Quantix node test program\"\n\
    command=/data/bin/qx-node\ncommand_args=infinity\ncommand_background=yes\n\
    pidfile=\"/run/${RC_SVCNAME}.pid\"\nretry=\"TERM/10/KILL/5\"\n";

/// The demo program of `version`.
fn demo_program(version: &str) -> Vec<u8> {
    DEMO_PROGRAM.replace("@VERSION@", version).into_bytes()
}

/// Component `qx-demo`: the program, restarted as service `qx-demo`, checked by its health
/// command.
fn demo(bytes: Vec<u8>) -> ComponentSpec {
    ComponentSpec::file("qx-demo", "/data/bin/qx-demo", bytes)
        .service("qx-demo")
        .health(vec!["/data/bin/qx-demo".into(), "--check".into()])
}

/// The guest's node.yaml: the lab's server and key, OpenRC (the default) named anyway.
fn node_yaml(lab: &Lab) -> String {
    format!(
        "updates:\n  enabled: true\n  server_url: \"{}\"\n  product: {}\n  channel: {}\n  \
         trusted_keys: [/etc/limiquantix/update-key.pub]\n  service_manager: openrc\n  \
         verify_timeout: 10s\n",
        lab.server.url(),
        lab.product,
        lab.channel
    )
}

/// One guest at a time: the tests share the package cache.
static ONE_GUEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The agent's own OpenRC service, as the packages ship it.
const AGENT_SERVICE: &str = include_str!("../../../../packaging/openrc/init.d/qx-update");

/// The guest's root with 1.0.0 of both programs installed and both services in the default
/// runlevel; work files under target/tmp/openrc.
fn host_at_v1(lab: &Lab) -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let root = tmp.join("openrc/root");
    build_root(
        &root,
        &tmp.join("openrc-cache"),
        Path::new(env!("CARGO_BIN_EXE_qx-update")),
    );
    put(
        &root,
        "/etc/limiquantix/node.yaml",
        node_yaml(lab).as_bytes(),
        0o644,
    );
    put(
        &root,
        "/etc/limiquantix/update-key.pub",
        lab.key.public_key_file.as_bytes(),
        0o644,
    );
    put(&root, "/data/bin/qx-demo", &demo_program("1.0.0"), 0o755);
    put(
        &root,
        "/data/bin/qx-node",
        &demo_binary("1.0.0").expect("demo binary"),
        0o755,
    );
    for c in ["qx-demo", "qx-node"] {
        put(&root, &format!("/data/versions/{c}"), b"1.0.0\n", 0o644);
    }
    add_service(&root, "qx-demo", DEMO_SERVICE);
    add_service(&root, "quantix-node", NODE_SERVICE);
    root
}

/// Everything a failed assertion should show.
fn report(g: &Guest, out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}\n--- update.log:\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        update_log(g.root()),
        g.console_text()
    )
}

/// `qx-update <args>` in the guest; asserts its exit code.
fn qx(g: &Guest, args: &[&str], expect: i32) -> Output {
    let argv: Vec<&str> = std::iter::once("qx-update")
        .chain(args.iter().copied())
        .collect();
    let out = g.run(&argv);
    assert_eq!(
        out.status.code(),
        Some(expect),
        "{args:?}: {}",
        report(g, &out)
    );
    out
}

/// True while process `pid` of the guest exists and is not a zombie.
fn alive(g: &Guest, pid: &str) -> bool {
    let status = g.read(&format!("/proc/{pid}/status"));
    !status.is_empty()
        && !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
}

/// OpenRC reports `service` started, its pidfile names a live process, and that process is
/// not `before`, which is gone; returns its pid.
fn started_anew(g: &Guest, service: &str, before: &str) -> String {
    let status = g.ok(&["rc-service", service, "status"]);
    assert!(status.contains("started"), "rc-service status: {status}");
    let pid = g.read(&format!("/run/{service}.pid")).trim().to_owned();
    assert!(!pid.is_empty(), "OpenRC wrote no /run/{service}.pid");
    assert_ne!(pid, before, "{service} was not restarted");
    assert!(alive(g, &pid), "{service}: pid {pid} does not run");
    // Stopped (retry) means gone, but pid 1 may not have reaped it yet.
    let gone = poll(Duration::from_secs(10), Duration::from_millis(20), || {
        !alive(g, before)
    });
    assert!(gone, "{service}: the old process {before} still runs");
    pid
}

/// The demo service runs `version` (its health command says so) and the host records it.
fn demo_runs(g: &Guest, version: &str) {
    let check = g.ok(&["/data/bin/qx-demo", "--check"]);
    assert_eq!(check.trim(), format!("qx-demo {version} is running"));
    assert_eq!(g.read("/data/versions/qx-demo").trim(), version);
}

#[test]
#[ignore = "slow tier: needs root (namespaces, chroot) and Debian's openrc packages; `cargo xtask test` runs it"]
fn openrc_restarts_the_updated_services_and_the_restored_ones() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    ensure_packages(guest::HOST_PACKAGES, "the OpenRC test");
    let t0 = Instant::now();
    let lab = Lab::with("quantix-demo", "dev", "").expect("lab");
    let root = host_at_v1(&lab);
    let console = root.with_file_name("console.log");
    let g = Guest::boot(&root, &console, &["qx-demo", "quantix-node"]);
    eprintln!(
        "[openrc] root built and booted in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    demo_runs(&g, "1.0.0");
    let demo_v1 = g.read("/run/qx-demo.pid").trim().to_owned();
    let node_v1 = g.read("/run/quantix-node.pid").trim().to_owned();

    // 2.0.0: both programs; the agent restarts both services through OpenRC.
    lab.publish(
        &lab.release("2.0.0")
            .component(demo(demo_program("2.0.0")))
            .component(
                ComponentSpec::file(
                    "qx-node",
                    "/data/bin/qx-node",
                    demo_binary("2.0.0").expect("demo binary"),
                )
                .service("quantix-node"),
            ),
    )
    .expect("publish 2.0.0");
    let out = qx(&g, &["apply", "--yes"], code::SUCCESS);
    let log = update_log(g.root());
    for s in ["qx-demo", "quantix-node"] {
        let line = format!("restart {s}: [\"rc-service\", \"{s}\", \"restart\"] -> exit status: 0");
        assert!(log.contains(&line), "no `{line}`:\n{}", report(&g, &out));
        // OpenRC's own words, captured from rc-service's output.
        assert!(
            log.contains(&format!("Starting {s}")),
            "{}",
            report(&g, &out)
        );
    }
    let demo_v2 = started_anew(&g, "qx-demo", &demo_v1);
    demo_runs(&g, "2.0.0");
    let node_v2 = started_anew(&g, "quantix-node", &node_v1);
    assert!(
        log.contains("verify qx-node: service quantix-node pid"),
        "the ELF program was not verified by OpenRC's pidfile:\n{log}"
    );
    assert_eq!(g.read("/data/versions/qx-node").trim(), "2.0.0");

    // 3.0.0: the program exits at start; rc-service fails, the agent restores 2.0.0 and
    // restarts it through OpenRC.
    lab.publish(
        &lab.release("3.0.0")
            .component(demo(BROKEN_PROGRAM.as_bytes().to_vec())),
    )
    .expect("publish 3.0.0");
    let out = qx(&g, &["apply", "--yes"], code::RESTART_FAILED);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("qx-demo"), "{}", report(&g, &out));
    let log = update_log(g.root());
    for want in [
        "restart qx-demo: [\"rc-service\", \"qx-demo\", \"restart\"] -> exit status: 1",
        "qx-demo exited at start",
        "restart qx-demo (after restore): exit status: 0",
    ] {
        assert!(log.contains(want), "no `{want}`:\n{}", report(&g, &out));
    }
    let demo_v2 = started_anew(&g, "qx-demo", &demo_v2);
    demo_runs(&g, "2.0.0");
    let last = history(g.root()).pop().expect("history");
    assert_eq!(last["version"], "3.0.0", "{last}");
    assert_eq!(last["outcome"], "failed", "{last}");

    // The operator's rollback undoes 2.0.0: both services restarted through OpenRC on 1.0.0.
    let out = qx(&g, &["rollback", "--yes"], code::SUCCESS);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2.0.0 -> 1.0.0"), "{}", report(&g, &out));
    started_anew(&g, "qx-demo", &demo_v2);
    demo_runs(&g, "1.0.0");
    started_anew(&g, "quantix-node", &node_v2);
    assert_eq!(g.read("/data/versions/qx-node").trim(), "1.0.0");
    let last = history(g.root()).pop().expect("history");
    assert_eq!(last["outcome"], "rolled_back", "{last}");
    eprintln!("[openrc] done in {:.1}s", t0.elapsed().as_secs_f64());
}

/// The daemon's log in the guest (the packaged script's `output_log`).
const DAEMON_LOG: &str = "/var/log/quantix/qx-update-daemon.log";

#[test]
#[ignore = "slow tier: needs root (namespaces, chroot) and Debian's openrc packages; `cargo xtask test` runs it"]
fn the_packaged_agent_service_starts_restarts_and_stops_under_openrc() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    ensure_packages(guest::HOST_PACKAGES, "the OpenRC test");
    let lab = Lab::with("quantix-demo", "dev", "").expect("lab");
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let root = tmp.join("openrc-agent/root");
    build_root(
        &root,
        &tmp.join("openrc-cache"),
        Path::new(env!("CARGO_BIN_EXE_qx-update")),
    );
    let api = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let yaml = format!("{}  api: {{listen: \"{api}\"}}\n", node_yaml(&lab));
    put(&root, "/etc/limiquantix/node.yaml", yaml.as_bytes(), 0o644);
    put(
        &root,
        "/etc/limiquantix/update-key.pub",
        lab.key.public_key_file.as_bytes(),
        0o644,
    );
    add_service(&root, "qx-update", AGENT_SERVICE);
    let console = root.with_file_name("console.log");
    let g = Guest::boot(&root, &console, &["qx-update"]);
    let starts = |n: usize| {
        poll(Duration::from_secs(30), Duration::from_millis(50), || {
            g.read(DAEMON_LOG).matches("daemon started").count() >= n
                && std::net::TcpStream::connect(api).is_ok()
        })
    };
    assert!(
        starts(1),
        "the daemon did not start: {}{}",
        g.read(DAEMON_LOG),
        g.console_text()
    );
    let log = g.read(DAEMON_LOG);
    assert!(
        log.contains(&api.to_string()),
        "the start line names the address: {log}"
    );
    // A restart through OpenRC starts a second daemon; a stop leaves none.
    g.ok(&["rc-service", "qx-update", "restart"]);
    assert!(starts(2), "no second start: {}", g.read(DAEMON_LOG));
    g.ok(&["rc-service", "qx-update", "stop"]);
    let status = g.run(&["rc-service", "qx-update", "status"]);
    assert!(!status.status.success(), "still started after stop");
    let closed = poll(Duration::from_secs(30), Duration::from_millis(50), || {
        std::net::TcpStream::connect(api).is_err()
    });
    assert!(
        closed,
        "the daemon still listens after stop: {}",
        g.read(DAEMON_LOG)
    );
}
