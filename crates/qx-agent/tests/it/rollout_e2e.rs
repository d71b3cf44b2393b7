//! A staged rollout end to end with real agents (docs/spec.md §10, slow tier): a real update
//! server on loopback, five sandboxed hosts each running the real `qx-update daemon` (enrolled
//! in the fleet, `auto_apply: false`, so the test applies through each daemon's API), and the
//! real `qx-publish` binary publishing, rolling out, reading and aborting.
//!
//! 1.0.0 is published as current and every host installs it; 1.1.0 is published with
//! `--waves 100% --max-failures 1` and a health command that fails on one host only (a file of
//! that host's root). Four hosts take 1.1.0 and confirm; the fifth fails verification, is
//! restored and reports it: the rollout halts at the cap, as the dashboard shows in headless
//! Chromium. `rollout abort --revert` signs the revocation: each of the four hosts applies
//! again, goes back to 1.0.0 and reports `reverted`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use qx_testkit::browser::{save_screenshot, sign_in, text, wait_for, Driver};
use qx_testkit::host::{demo_binary, HostConfig, TestHost};
use qx_testkit::server::TestServer;
use qx_testkit::wait::poll;
use serde_json::{json, Value};

use crate::daemon::Daemon;
use crate::support::host::service;

const PRODUCT: &str = "quantix-os";
const CHANNEL: &str = "dev";
const PUBLISH_TOKEN: &str = "e2e-publish-token";
const ENROLL_TOKEN_FILE: &str = "/etc/limiquantix/fleet-enroll-token";
const API_TOKEN_FILE: &str = "/etc/limiquantix/update-api-token";
/// The file whose presence makes 1.1.0's health command fail on a host.
const FAIL_HEALTH: &str = "/etc/fail-health";
const HOSTS: usize = 5;
/// The host whose health check fails on 1.1.0.
const BAD: usize = 4;
/// Bound on every wait for a state (apply, tick, event delivery).
const WAIT: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_millis(50);

/// The `qx-publish` binary of this workspace, built (once per test process) by cargo: it is
/// another package's binary, so this crate's tests have no `CARGO_BIN_EXE_` for it.
fn qx_publish_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let out = Command::new("timeout")
            .arg("900")
            .arg(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "qx-publish",
                "--bin",
                "qx-publish",
            ])
            .args(["--message-format", "json"])
            .arg("--manifest-path")
            .arg(&manifest)
            .stdin(Stdio::null())
            .output()
            .expect("run cargo build -p qx-publish");
        assert!(
            out.status.success(),
            "cargo build -p qx-publish: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "qx-publish")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the qx-publish executable")
    })
}

/// `qx-publish ARGS`, run to its end (stdin closed, no token in the environment).
fn qx_publish(args: &[&str]) -> Output {
    Command::new(qx_publish_bin())
        .args(args)
        .env_remove("QX_PUBLISH_TOKEN")
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null())
        .output()
        .expect("run qx-publish")
}

/// Its stdout, the run insisted successful.
fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The publisher's side: a key pair made by `qx-publish keygen`, the token file, and a spec
/// per release (the `qx-node` demo binary of that version, restarting `quantix-node`).
struct Publisher {
    dir: tempfile::TempDir,
    server: String,
}

impl Publisher {
    fn new(server: &str) -> Publisher {
        let dir = tempfile::Builder::new()
            .prefix("qx-publisher-")
            .tempdir()
            .unwrap();
        let keys = dir.path().join("keys");
        ok(
            &qx_publish(&["keygen", "--out", keys.to_str().unwrap()]),
            "keygen",
        );
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{PUBLISH_TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        Publisher {
            dir,
            server: server.to_owned(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn public_key(&self) -> String {
        std::fs::read_to_string(self.path("keys/qx-publish.pub")).unwrap()
    }

    /// The spec of `version`; `health`: the component's health command (TOML array).
    fn spec(&self, version: &str, health: Option<&str>) -> String {
        let src = format!("qx-node-{version}");
        std::fs::write(self.path(&src), demo_binary(version).unwrap()).unwrap();
        let health = health
            .map(|h| format!("health_command = {h}\n"))
            .unwrap_or_default();
        let spec = format!(
            "product = \"{PRODUCT}\"\nversion = \"{version}\"\nchannel = \"{CHANNEL}\"\n\
             release_notes = \"qx-node {version}\"\n\n[[component]]\nname = \"qx-node\"\n\
             kind = \"file\"\nsource = \"{src}\"\ninstall_path = \"/data/bin/qx-node\"\n\
             permissions = \"0755\"\nrestart_service = \"quantix-node\"\n{health}"
        );
        let path = self.path(&format!("release-{version}.toml"));
        std::fs::write(&path, spec).unwrap();
        path
    }

    /// `qx-publish publish` of the spec of `version` with `extra`; its JSON answer.
    fn publish(&self, version: &str, health: Option<&str>, extra: &[&str]) -> Value {
        let spec = self.spec(version, health);
        let (key, token) = (self.path("keys/qx-publish.key"), self.path("token"));
        let mut args = vec!["--json", "publish", "--spec", &spec, "--key", &key];
        args.extend(["--server", &self.server, "--token-file", &token]);
        args.extend(extra);
        let out = ok(&qx_publish(&args), &format!("publish {version}"));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// `qx-publish rollout VERB --server … --product … --channel … --token-file … ARGS`.
    fn rollout(&self, verb: &str, args: &[&str]) -> Output {
        let token = self.path("token");
        let mut all = vec!["rollout", verb, "--server", &self.server];
        all.extend(["--product", PRODUCT, "--channel", CHANNEL]);
        all.extend(["--token-file", &token]);
        all.extend(args);
        qx_publish(&all)
    }
}

/// One sandboxed host with its daemon.
struct Node {
    host: TestHost,
    daemon: Option<Daemon>,
    api_token: String,
    http: reqwest::blocking::Client,
}

impl Node {
    /// A host at 0.9.0 (`qx-node` running as `quantix-node`), configured for `server` with
    /// the fleet on (`enrollment`, label `site`), its daemon started.
    fn start(server: &TestServer, trusted_key: &str, enrollment: &str, site: usize) -> Node {
        let host = TestHost::new().unwrap();
        let mut c = HostConfig::new(server.url(), PRODUCT, CHANNEL, trusted_key);
        c.extra = format!(
            "  auto_apply: false\n  api: {{listen: \"127.0.0.1:0\", token_file: {API_TOKEN_FILE}}}\n  fleet: {{enroll_token_file: {ENROLL_TOKEN_FILE}, labels: {{site: lab-{site}}}}}\n"
        );
        host.write_config(&c).unwrap();
        host.write_file(
            ENROLL_TOKEN_FILE,
            format!("{enrollment}\n").as_bytes(),
            0o600,
        )
        .unwrap();
        host.write_file(
            "/proc/sys/kernel/random/boot_id",
            format!("boot-{site}\n").as_bytes(),
            0o644,
        )
        .unwrap();
        host.write_file("/data/bin/qx-node", &demo_binary("0.9.0").unwrap(), 0o755)
            .unwrap();
        host.set_version("qx-node", "0.9.0").unwrap();
        host.add_service("quantix-node", "/data/bin/qx-node", "infinity")
            .unwrap();
        service(&host, "restart", "quantix-node");
        let daemon = Daemon::start_on(host.root());
        let api_token = String::from_utf8(host.read(API_TOKEN_FILE).unwrap())
            .unwrap()
            .trim()
            .to_owned();
        let http = reqwest::blocking::Client::builder()
            .danger_accept_invalid_certs(true)
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Node {
            host,
            daemon: Some(daemon),
            api_token,
            http,
        }
    }

    fn api(&self, path: &str) -> String {
        format!("{}{path}", self.daemon.as_ref().unwrap().base)
    }

    fn status(&self) -> Value {
        let resp = self
            .http
            .get(self.api("/api/v1/updates/status"))
            .bearer_auth(&self.api_token)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().unwrap()
    }

    /// `POST /api/v1/updates/apply`, then the status once that apply ended (`done` or
    /// `failed`) with its entry in the history (each apply here changes the host).
    fn apply(&self) -> Value {
        let entries = |s: &Value| s["history"].as_array().map_or(0, Vec::len);
        let before = entries(&self.status());
        let resp = self
            .http
            .post(self.api("/api/v1/updates/apply"))
            .bearer_auth(&self.api_token)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 202, "{:?}", resp.text());
        let mut last = Value::Null;
        let ended = poll(WAIT, EVERY, || {
            last = self.status();
            entries(&last) > before
                && matches!(last["state"]["state"].as_str(), Some("done" | "failed"))
        });
        assert!(ended, "the apply ends: {last}");
        last
    }

    fn version(&self) -> Option<String> {
        self.host.version("qx-node")
    }

    /// The fleet's id of this host (its identity file, written at enrollment).
    fn id(&self) -> String {
        let identity: Value =
            serde_json::from_slice(&self.host.read("/data/updates/identity.json").unwrap())
                .unwrap();
        identity["host_id"].as_str().unwrap().to_owned()
    }

    fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.sigterm();
            assert_eq!(d.wait_exit(), 0, "the daemon stops cleanly");
        }
    }
}

/// An operator's view of the server: `GET` with the publish token.
struct Operator {
    server: String,
    http: reqwest::blocking::Client,
}

impl Operator {
    fn get(&self, url: &str) -> Value {
        let resp = self
            .http
            .get(url)
            .bearer_auth(PUBLISH_TOKEN)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200, "GET {url}");
        resp.json().unwrap()
    }

    fn rollout(&self, id: &str) -> Value {
        self.get(&qx_core::api::ServerUrl::new(&self.server).rollout(PRODUCT, id, None))
    }

    fn host(&self, id: &str) -> Value {
        self.get(&qx_core::api::ServerUrl::new(&self.server).host(id))
    }

    /// Polls the host's detail until `ready` holds; the detail it held on.
    fn host_until(&self, id: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let held = poll(WAIT, EVERY, || {
            last = self.host(id);
            ready(&last)
        });
        assert!(held, "{id}: {what}: {last}");
        last
    }

    /// Polls the rollout until `ready` holds; the status it held on.
    fn rollout_until(&self, id: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let held = poll(WAIT, EVERY, || {
            last = self.rollout(id);
            ready(&last)
        });
        assert!(held, "{what}: {last}");
        last
    }
}

/// A stage's count summed over the rollout's waves.
fn stage_total(status: &Value, stage: &str) -> u64 {
    status["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["stages"][stage].as_u64().unwrap_or(0))
        .sum()
}

/// The text of cell `n` (from 1) of wave 0's row on the rollout page.
async fn wave_cell(client: &fantoccini::Client, n: usize) -> String {
    let css = format!("#waves-table tr[data-key=\"0\"] td:nth-child({n})");
    text(client, &css).await.unwrap_or_default()
}

/// The rollout page of `id` in headless Chromium: the halt banner and wave 0's counts.
fn dashboard_shows_the_halt(server: &TestServer, id: &str) {
    let rt = crate::support::runtime();
    rt.block_on(async {
        let driver = Driver::start();
        let profile = tempfile::tempdir().unwrap();
        let client = driver.browser(profile.path()).await;
        let page = format!("{}#/rollouts/{PRODUCT}/{id}", server.api().ui());
        client.goto(&page).await.unwrap();
        sign_in(&client, PUBLISH_TOKEN).await;
        wait_for(&client, "the halt banner", |c| async move {
            text(&c, "#rollout-halt")
                .await
                .is_some_and(|t| t.contains("1 failures of 5 finished hosts"))
        })
        .await;
        let banner = text(&client, "#rollout-halt").await.unwrap();
        assert!(banner.starts_with("Halted"), "{banner}");
        let fields = text(&client, "#rollout-fields").await.unwrap();
        assert!(fields.contains("halted"), "{fields}");
        wait_for(&client, "the wave's counts", |c| async move {
            wave_cell(&c, 9).await == "4"
        })
        .await;
        assert_eq!(wave_cell(&client, 6).await, "5", "eligible");
        assert_eq!(wave_cell(&client, 7).await, "5", "offered");
        assert_eq!(wave_cell(&client, 8).await, "0", "in progress");
        assert_eq!(wave_cell(&client, 9).await, "4", "confirmed");
        assert_eq!(wave_cell(&client, 10).await, "0", "failed");
        // A failed health check undoes the update: `rolled_back` (docs/spec.md §9).
        assert_eq!(wave_cell(&client, 11).await, "1", "rolled back");
        let failures = text(&client, "#rollout-failures tbody").await.unwrap();
        assert!(failures.contains("health command"), "{failures}");
        save_screenshot(&client, "rollout-e2e-halted.png").await;
        client.close().await.unwrap();
    });
}

#[test]
#[ignore = "slow tier: five real daemons and headless Chromium; `cargo xtask test` runs it"]
fn a_rollout_halts_on_a_real_hosts_failed_health_check_and_abort_with_revert_brings_the_others_back(
) {
    qx_testkit::browser::ensure_chromium();
    let releases = tempfile::Builder::new()
        .prefix("qx-releases-")
        .tempdir()
        .unwrap();
    let server = TestServer::start(releases.path(), PUBLISH_TOKEN).unwrap();
    let operator = Operator {
        server: server.url().to_owned(),
        http: reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    };
    let publisher = Publisher::new(server.url());

    // Five hosts enrolled with one token made through the server.
    let made: Value = operator
        .http
        .post(server.api().enrollment_tokens())
        .bearer_auth(PUBLISH_TOKEN)
        .json(&json!({"product": PRODUCT, "uses": HOSTS}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let enrollment = made["token"].as_str().expect("an enrollment token");
    let key = publisher.public_key();
    let mut nodes: Vec<Node> = (0..HOSTS)
        .map(|i| Node::start(&server, &key, enrollment, i))
        .collect();

    // 1.0.0, current: every host installs it.
    publisher.publish("1.0.0", None, &[]);
    for n in &nodes {
        let s = n.apply();
        assert_eq!(s["state"]["state"], "done", "{s}");
        assert_eq!(n.version().as_deref(), Some("1.0.0"));
    }
    let ids: Vec<String> = nodes.iter().map(Node::id).collect();
    for id in &ids {
        operator.host_until(id, "checks in at 1.0.0 after its apply", |h| {
            h["versions"]["qx-node"] == "1.0.0"
        });
    }

    // 1.1.0 rolled out in one wave, halting at the first failure; its health command fails
    // where the host's root has the marker file.
    nodes[BAD].host.write_file(FAIL_HEALTH, b"", 0o644).unwrap();
    let health = format!(r#"["/bin/sh", "-c", "test ! -e \"$QX_ROOT{FAIL_HEALTH}\""]"#);
    let published = publisher.publish(
        "1.1.0",
        Some(&health),
        &["--waves", "100%", "--max-failures", "1"],
    );
    let rollout = published["channel_state"]["rollout"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a rollout started: {published}"))
        .to_owned();

    for n in nodes.iter().take(BAD) {
        let s = n.apply();
        assert_eq!(s["state"]["state"], "done", "{s}");
        assert_eq!(n.version().as_deref(), Some("1.1.0"));
    }
    let s = operator.rollout_until(&rollout, "four hosts confirmed", |s| {
        stage_total(s, "confirmed") == 4
    });
    assert_eq!(s["state"], "running", "{s}");

    let bad = &nodes[BAD];
    let s = bad.apply();
    assert_eq!(s["state"]["state"], "failed", "{s}");
    assert_eq!(bad.version().as_deref(), Some("1.0.0"), "restored");
    let reported = |h: &Value, kind: &str| -> Option<Value> {
        h["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == kind && e["version"] == "1.1.0")
            .cloned()
    };
    let host = operator.host_until(&ids[BAD], "reports rolled_back", |h| {
        reported(h, "rolled_back").is_some()
    });
    let rolled_back = reported(&host, "rolled_back").unwrap();
    assert_eq!(rolled_back["stage"], "verify", "{rolled_back}");
    assert!(reported(&host, "failed").is_none(), "{host}");

    // The engine halts it at the cap (ticked shortly after the event batch).
    let s = operator.rollout_until(&rollout, "the rollout halts", |s| s["state"] == "halted");
    assert_eq!(s["halt"]["rule"], "max_failures", "{s}");
    assert_eq!(s["halt"]["failures"], 1, "{s}");
    assert!(
        s["halt"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the cap is 1")),
        "{s}"
    );
    assert_eq!(
        (stage_total(&s, "confirmed"), stage_total(&s, "rolled_back")),
        (4, 1),
        "{s}"
    );
    // The same, as the publisher's CLI reads it.
    let cli: Value = serde_json::from_str(&ok(
        &publisher.rollout("status", &["--json", &rollout]),
        "rollout status",
    ))
    .unwrap();
    assert_eq!(
        (
            &cli["state"],
            &cli["halt"]["rule"],
            &cli["halt"]["failures"]
        ),
        (&json!("halted"), &json!("max_failures"), &json!(1)),
        "{cli}"
    );

    dashboard_shows_the_halt(&server, &rollout);

    // Abort with revert: a signed state revoking 1.1.0; each host that took it goes back.
    let key_file = publisher.path("keys/qx-publish.key");
    let aborted: Value = serde_json::from_str(&ok(
        &publisher.rollout(
            "abort",
            &["--revert", "--key", &key_file, "--json", &rollout],
        ),
        "rollout abort --revert",
    ))
    .unwrap();
    assert_eq!(aborted["outcome"], "aborted_with_revert", "{aborted}");
    for (n, id) in nodes.iter().zip(&ids).take(BAD) {
        let s = n.apply();
        assert_eq!(s["state"]["state"], "done", "{s}");
        assert_eq!(n.version().as_deref(), Some("1.0.0"));
        let host = operator.host_until(id, "reports reverted, back at 1.0.0", |h| {
            reported(h, "reverted").is_some() && h["versions"]["qx-node"] == "1.0.0"
        });
        assert_eq!(host["versions"]["qx-node"], "1.0.0", "{host}");
    }
    let s = operator.rollout_until(&rollout, "four hosts reverted", |s| {
        stage_total(s, "reverted") == 4
    });
    assert_eq!(s["state"], "aborted", "{s}");
    assert_eq!(stage_total(&s, "rolled_back"), 1, "{s}");

    for n in &mut nodes {
        n.stop();
    }
}
