//! The agent's side of the fleet (docs/spec.md §9): enrollment and the identity file, a
//! check-in on every check and after a boot, the events of an apply and of the A/B boot
//! commands, the bounded queue, a decommissioned host, and the schedule following the
//! server's `next_checkin_s` and a 429's `Retry-After`.
//!
//! The fleet API is played by an answer-scripted server ([`qx_testkit::scripted`]) in front of
//! a real update server (releases, channel states and artifacts are forwarded to it), so each
//! test can make it answer what a real server will not on demand (401, 429, an absurd
//! interval).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qx_agent::daemon::{Policy, Runner, Scheduler, Step};
use qx_agent::{AgentError, ApplyOptions};
use qx_boot::grubenv::GrubEnv;
use qx_boot::{AbState, Slot};
use qx_core::fleet_queue::EventQueue;
use qx_testkit::host::Lab;
use qx_testkit::scripted::{Answer, Request, ScriptedServer};
use serde_json::{json, Value};

use crate::support::clock::FakeClock;
use crate::support::host::{agent, host_at_v1, node, node_release, run_qx_update};
use crate::support::runtime;

const ENROLL_TOKEN: &str = "enroll-secret-1";
const TOKEN_FILE: &str = "/etc/limiquantix/fleet-enroll-token";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// A fleet server played by a script: enrollment (with [`ENROLL_TOKEN`]), check-ins (the
/// answers a test queued, else 200 with `next_checkin_s` 900) and event batches, each event
/// stored once by its sequence number.
pub(crate) struct FakeFleet {
    pub(crate) stub: ScriptedServer,
    state: Arc<Mutex<FleetState>>,
}

#[derive(Default)]
struct FleetState {
    checkin_answers: VecDeque<Answer>,
    events: BTreeMap<u64, Value>,
}

impl FakeFleet {
    fn start(upstream: SocketAddr) -> FakeFleet {
        let state = Arc::new(Mutex::new(FleetState::default()));
        let s = state.clone();
        let stub =
            ScriptedServer::start(Some(upstream), "/api/v1/hosts", move |r| answer(&s, r)).unwrap();
        FakeFleet { stub, state }
    }

    /// The next check-in is answered `a`.
    pub(crate) fn then_checkin(&self, a: Answer) {
        self.state.lock().unwrap().checkin_answers.push_back(a);
    }

    /// Every event stored, by sequence number.
    pub(crate) fn events(&self) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .events
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn types(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn ok_checkin(next: u64) -> Answer {
    Answer::json(
        200,
        json!({"server_time": "2026-12-01T10:00:00Z", "next_checkin_s": next}),
    )
}

fn answer(state: &Mutex<FleetState>, r: &Request) -> Answer {
    let mut s = state.lock().unwrap();
    let refused = Answer::json(401, json!({"error": "token refused", "details": ""}));
    let auth = r.header("authorization").unwrap_or("");
    match r.path.as_str() {
        "/api/v1/hosts/enroll" if auth == format!("Bearer {ENROLL_TOKEN}") => Answer::json(
            200,
            json!({"host_id": "h-1", "host_token": "tok-1", "product": "quantix-os"}),
        ),
        _ if !r.path.starts_with("/api/v1/hosts/h-1/") || auth != "Bearer tok-1" => refused,
        "/api/v1/hosts/h-1/checkin" => s
            .checkin_answers
            .pop_front()
            .unwrap_or_else(|| ok_checkin(900)),
        "/api/v1/hosts/h-1/events" => {
            let (mut accepted, mut duplicates) = (0, 0);
            for e in r.json()["events"].as_array().cloned().unwrap_or_default() {
                let seq = e["seq"].as_u64().unwrap();
                match s.events.entry(seq) {
                    std::collections::btree_map::Entry::Occupied(_) => duplicates += 1,
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(e);
                        accepted += 1;
                    }
                }
            }
            let last = s.events.keys().last().copied().unwrap_or(0);
            Answer::json(
                200,
                json!({"accepted": accepted, "duplicates": duplicates, "last_seq": last}),
            )
        }
        _ => Answer::json(404, json!({"error": "not found", "details": r.path})),
    }
}

/// A lab whose host reports to a [`FakeFleet`] (in front of the lab's server): enrollment
/// token file, a label, a boot id; the host at 1.0.0. `extra`: more `updates:` lines.
fn fleet_lab(extra: &str) -> (Lab, FakeFleet) {
    fleet_lab_with("{site: lab}", extra)
}

/// [`fleet_lab`] with the host's own `labels` (YAML flow mapping).
pub(crate) fn fleet_lab_with(labels: &str, extra: &str) -> (Lab, FakeFleet) {
    let lab = Lab::new().unwrap();
    let fleet = FakeFleet::start(lab.server.addr());
    let mut c = lab.host_config();
    c.server_url = fleet.stub.url();
    c.extra =
        format!("  fleet:\n    enroll_token_file: {TOKEN_FILE}\n    labels: {labels}\n{extra}");
    lab.host.write_config(&c).unwrap();
    lab.host
        .write_file(TOKEN_FILE, format!("{ENROLL_TOKEN}\n").as_bytes(), 0o600)
        .unwrap();
    lab.host.write_file(BOOT_ID, b"boot-1\n", 0o644).unwrap();
    host_at_v1(&lab);
    (lab, fleet)
}

fn queued(lab: &Lab) -> Vec<qx_core::fleet::Event> {
    EventQueue::under_root(lab.host.root())
        .pending(10_000)
        .unwrap()
}

#[test]
fn the_first_check_enrolls_the_host_and_no_later_check_does() {
    let (lab, fleet) = fleet_lab("");
    node_release(&lab, "1.1.0");
    agent(&lab).check().unwrap();
    // A new agent, as the next process would be.
    agent(&lab).check().unwrap();

    let enrolls = fleet.stub.requests_to("/enroll");
    assert_eq!(enrolls.len(), 1, "enrolled once");
    assert_eq!(
        enrolls[0].header("authorization"),
        Some(format!("Bearer {ENROLL_TOKEN}").as_str())
    );
    assert_eq!(enrolls[0].json()["labels"], json!({"site": "lab"}));

    let path = lab.host.path("/data/updates/identity.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "identity.json is the host's secret");
    let id: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(id["host_id"], "h-1");
    assert_eq!(id["host_token"], "tok-1");
    assert_eq!(id["server_url"], fleet.stub.url());

    let checkins = fleet.stub.requests_to("/checkin");
    assert_eq!(checkins.len(), 2, "one check-in per check");
    for c in &checkins {
        assert_eq!(c.header("authorization"), Some("Bearer tok-1"));
    }
    let first = checkins[0].json();
    assert_eq!(first["reason"], "boot", "the first check-in since the boot");
    assert_eq!(checkins[1].json()["reason"], "check");
    assert_eq!(first["installed"], json!({"qx-node": "1.0.0"}));
    assert_eq!(first["channel"], "dev");
    assert_eq!(first["labels"], json!({"site": "lab"}));
    assert_eq!(first["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(first["health"], "ok");
    // The offer was reported once, although two checks found it.
    assert_eq!(fleet.types(), vec!["offered"]);
    assert_eq!(fleet.events()[0]["version"], "1.1.0");
    assert!(queued(&lab).is_empty(), "delivered events are forgotten");

    // A reboot: the next check-in says so again.
    lab.host.write_file(BOOT_ID, b"boot-2\n", 0o644).unwrap();
    agent(&lab).check().unwrap();
    let checkins = fleet.stub.requests_to("/checkin");
    assert_eq!(checkins[2].json()["reason"], "boot");
}

#[test]
fn the_daemon_checks_in_at_its_start_after_a_boot_only() {
    let (lab, fleet) = fleet_lab("");
    let runner = Runner::new(agent(&lab));
    runtime().block_on(async {
        runner.boot_check_in().await;
        runner.boot_check_in().await;
    });
    let checkins = fleet.stub.requests_to("/checkin");
    assert_eq!(checkins.len(), 1, "the second start is in the same boot");
    assert_eq!(checkins[0].json()["reason"], "boot");
}

#[test]
fn a_component_apply_reports_each_step_and_ends_in_confirmed() {
    let (lab, fleet) = fleet_lab("");
    node_release(&lab, "1.1.0");
    let a = agent(&lab);
    a.check().unwrap();
    a.apply(&ApplyOptions::default()).unwrap();

    assert_eq!(
        fleet.types(),
        vec![
            "offered",
            "download_started",
            "download_done",
            "install_started",
            "installed",
            "confirmed"
        ]
    );
    let events = fleet.events();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<u64>>());
    assert!(events.iter().all(|e| e["version"] == "1.1.0"), "{events:?}");
    assert!(queued(&lab).is_empty());
    // The check-in after the apply carries what it changed.
    let last = fleet.stub.requests_to("/checkin").pop().unwrap().json();
    assert_eq!(last["installed"], json!({"qx-node": "1.1.0"}));
    assert_eq!(last["last_result"]["outcome"], "success");
    assert_eq!(last["last_result"]["version"], "1.1.0");
}

#[test]
fn a_failed_health_check_is_reported_rolled_back_with_its_stage_and_exit_code() {
    let (lab, fleet) = fleet_lab("");
    let health = vec!["sh".into(), "-c".into(), "exit 3".into()];
    lab.publish(
        &lab.release("1.1.0")
            .component(node("1.1.0").service("quantix-node").health(health)),
    )
    .unwrap();
    let a = agent(&lab);
    let err = a
        .apply(&ApplyOptions::default())
        .expect_err("the health command fails");
    assert!(matches!(err, AgentError::NotEffective { .. }), "{err}");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));

    assert_eq!(
        fleet.types(),
        vec![
            "download_started",
            "download_done",
            "install_started",
            "installed",
            "rolled_back"
        ],
        "never confirmed: installed, then undone"
    );
    let undone = fleet.events().pop().unwrap();
    assert_eq!(undone["stage"], "verify");
    assert_eq!(undone["exit_code"], 42);
    assert!(
        undone["message"]
            .as_str()
            .unwrap()
            .contains("did not take effect"),
        "{undone}"
    );
    let last = fleet.stub.requests_to("/checkin").pop().unwrap().json();
    assert_eq!(last["last_result"]["outcome"], "failed");

    // The next check checks in while it runs: the health is still the failure's.
    a.check().unwrap();
    let during = fleet.stub.requests_to("/checkin").pop().unwrap().json();
    let health = during["health"].as_str().unwrap_or_default();
    assert!(health.starts_with("last operation failed"), "{during}");
}

#[test]
fn a_decommissioned_host_stops_reporting_and_still_updates() {
    let (lab, fleet) = fleet_lab("");
    node_release(&lab, "1.1.0");
    fleet.then_checkin(Answer::json(
        401,
        json!({"error": "host token refused", "details": "decommissioned"}),
    ));
    let a = agent(&lab);
    a.check()
        .expect("a refused check-in does not fail the check");
    let id: Value =
        serde_json::from_slice(&lab.host.read("/data/updates/identity.json").unwrap()).unwrap();
    assert!(id["decommissioned_at"].is_string(), "{id}");
    let seen = fleet.stub.requests().len();
    let queue_before = queued(&lab).len();

    let report = a.apply(&ApplyOptions::default()).unwrap();
    assert_eq!(report.version, "1.1.0");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
    agent(&lab).check().unwrap();
    assert_eq!(
        fleet.stub.requests().len(),
        seen,
        "no fleet request after the 401"
    );
    assert_eq!(
        fleet.stub.requests_to("/enroll").len(),
        1,
        "not enrolled again"
    );
    assert_eq!(queued(&lab).len(), queue_before, "no event queued any more");
}

#[test]
fn the_schedule_waits_for_retry_after_then_follows_next_checkin_s() {
    let (lab, fleet) = fleet_lab("");
    node_release(&lab, "1.1.0");
    fleet.then_checkin(
        Answer::json(429, json!({"error": "overloaded", "details": "try later"}))
            .header("retry-after", "120"),
    );
    fleet.then_checkin(ok_checkin(900));
    // Out of bounds (under 10 s): ignored, the local check_interval (1 h ± 10 %) applies.
    fleet.then_checkin(ok_checkin(1));
    let a = agent(&lab);
    let clock = FakeClock::at("2026-11-20T10:00[UTC]");
    let checks = runtime().block_on(async {
        let policy = Policy::from_config(a.config());
        let mut scheduler = Scheduler::new(Runner::new(a.clone()), clock.clone(), policy);
        let mut checks = Vec::new();
        for _ in 0..100 {
            match scheduler.step().await {
                Step::Checked { at, error, .. } => {
                    assert_eq!(error, None);
                    checks.push(at.timestamp());
                }
                Step::Waited { .. } => {}
                other => panic!("unexpected step {other:?}"),
            }
            if checks.len() == 4 {
                break;
            }
        }
        checks
    });
    assert_eq!(checks.len(), 4);
    let gap = |i: usize| checks[i + 1].duration_since(checks[i]).as_secs();
    assert_eq!(gap(0), 120, "Retry-After");
    assert_eq!(gap(1), 900, "next_checkin_s");
    assert!((3240..=3960).contains(&gap(2)), "{}", gap(2));
    assert_eq!(fleet.stub.requests_to("/checkin").len(), 4);
    assert_eq!(
        fleet.types(),
        vec!["offered"],
        "sent once the server took it"
    );
}

/// A host root with A/B: booted `slot`, the GRUB variables `vars`, and an update of
/// `version` pending from `from` into `to`.
fn ab_host(lab: &Lab, slot: &str, vars: &[(&str, &str)], from: Slot, to: Slot, version: &str) {
    lab.host
        .write_file(
            "/proc/cmdline",
            format!("quiet quantix.slot={slot}\n").as_bytes(),
            0o644,
        )
        .unwrap();
    let env_path = lab.host.path("/boot/grub/grubenv");
    let _ = std::fs::remove_file(&env_path);
    std::fs::create_dir_all(env_path.parent().unwrap()).unwrap();
    let mut env = GrubEnv::new();
    for (k, v) in vars {
        env.set(k, v).unwrap();
    }
    env.create(&env_path).unwrap();
    for d in ["/slots/a", "/slots/b"] {
        std::fs::create_dir_all(lab.host.path(d)).unwrap();
    }
    AbState::pending(from, to, version, jiff::Timestamp::now())
        .store(lab.host.root())
        .unwrap();
}

const AB_CONFIG: &str = "  ab:\n    slot_a: {path: /slots/a}\n    slot_b: {path: /slots/b}\n";

#[test]
fn boot_check_reports_a_grub_fallback_as_rolled_back_and_verify_confirms() {
    let (lab, fleet) = fleet_lab(AB_CONFIG);
    let root = lab.host.root();
    // Version 2.0.0 was written into B; B used up its tries and GRUB booted A again.
    let fell_back = [
        ("ORDER", "B A"),
        ("A_LEFT", "2"),
        ("A_OK", "1"),
        ("B_LEFT", "0"),
        ("B_OK", "0"),
    ];
    ab_host(&lab, "A", &fell_back, Slot::A, Slot::B, "2.0.0");
    let out = run_qx_update(root, &["ab", "boot-check"]);
    assert!(out.status.success(), "{out:?}");
    let q = queued(&lab);
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].kind, qx_core::fleet::EventType::RolledBack);
    assert_eq!(q[0].version.as_deref(), Some("2.0.0"));
    assert_eq!(q[0].component.as_deref(), Some("system"));
    assert_eq!(q[0].stage.as_deref(), Some("boot"));

    // Version 2.0.1 in B: B booted and `ab verify` passed.
    let trial = [
        ("ORDER", "B A"),
        ("A_LEFT", "3"),
        ("A_OK", "1"),
        ("B_LEFT", "2"),
        ("B_OK", "0"),
    ];
    ab_host(&lab, "B", &trial, Slot::A, Slot::B, "2.0.1");
    let out = run_qx_update(root, &["ab", "verify"]);
    assert!(out.status.success(), "{out:?}");

    // The next check delivers both.
    agent(&lab).check().ok();
    assert_eq!(fleet.types(), vec!["rolled_back", "confirmed"]);
    let events = fleet.events();
    assert_eq!(events[1]["version"], "2.0.1");
    assert_eq!(events[1]["component"], "system");
    let checkin = fleet.stub.requests_to("/checkin").pop().unwrap().json();
    assert_eq!(checkin["booted_slot"], "B");
    assert_eq!(
        checkin["slots"][1],
        json!({"name": "B", "version": "2.0.1", "state": "good"})
    );
}

#[test]
fn a_full_queue_drops_the_oldest_events_and_reports_how_many() {
    let (lab, fleet) = fleet_lab("");
    node_release(&lab, "1.1.0");
    // 1,000 undelivered events: the default bound.
    let mut text = String::new();
    for seq in 1..=1000u64 {
        let e = json!({"seq": seq, "type": "deferred", "time": "2026-12-01T10:00:00Z", "version": "1.0.0"});
        text.push_str(&format!("{e}\n"));
    }
    lab.host
        .write_file("/data/updates/fleet/events.jsonl", text.as_bytes(), 0o644)
        .unwrap();
    agent(&lab).check().unwrap();

    let events = fleet.events();
    assert_eq!(events.len(), 1000, "the queue holds 1,000 at most");
    let first = events.first().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(first, 3, "the two oldest were dropped");
    let dropped = &events[events.len() - 2];
    assert_eq!(dropped["type"], "dropped");
    assert_eq!(dropped["seq"], 1001);
    assert_eq!(dropped["count"], 2);
    let offered = events.last().unwrap();
    assert_eq!(offered["type"], "offered");
    assert_eq!(offered["seq"], 1002);
    assert!(
        queued(&lab).is_empty(),
        "delivered in batches, all forgotten"
    );
    let batches = fleet.stub.requests_to("/events");
    assert!(batches.len() >= 2, "at most 500 events per batch");
}

#[test]
fn an_enrollment_token_file_others_can_write_is_refused() {
    let (lab, _fleet) = fleet_lab("");
    let file = lab.host.path(TOKEN_FILE);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
    let err = qx_agent::Config::load_under(&lab.host.config_path(), lab.host.root())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("fleet enrollment token file") && err.contains("chmod go-w"),
        "{err}"
    );
}

#[test]
fn without_a_fleet_block_the_agent_sends_nothing_and_queues_nothing() {
    let lab = Lab::new().unwrap();
    let fleet = FakeFleet::start(lab.server.addr());
    let mut c = lab.host_config();
    c.server_url = fleet.stub.url();
    lab.host.write_config(&c).unwrap();
    host_at_v1(&lab);
    node_release(&lab, "1.1.0");
    let a = agent(&lab);
    a.check().unwrap();
    a.apply(&ApplyOptions::default()).unwrap();
    assert!(fleet.stub.requests().is_empty());
    assert!(!lab.host.path("/data/updates/fleet/events.jsonl").exists());
    assert!(!lab.host.path("/data/updates/identity.json").exists());
}

/// `qx-update check` on the host at `root`, aborted at the crash point `point`.
fn check_aborted_at(root: &std::path::Path, point: &str) {
    let out = crate::support::host::qx_update(root)
        .arg("check")
        .env("QX_TEST_CRASH_AT", point)
        .output()
        .unwrap();
    assert!(!out.status.success(), "aborted at {point}: {out:?}");
}

#[test]
fn a_crash_between_send_and_acknowledgement_resends_and_the_server_counts_once() {
    let (lab, fleet) = fleet_lab("");
    node_release(&lab, "1.1.0");
    let root = lab.host.root();
    // `qx-update check` aborts after the server stored the batch, before the queue forgets it.
    check_aborted_at(root, "fleet-events-sent");
    assert_eq!(fleet.types(), vec!["offered"], "the server has it");
    assert_eq!(
        queued(&lab).len(),
        1,
        "the host does not know it was delivered"
    );

    let out = run_qx_update(root, &["check"]);
    assert!(out.status.success(), "{out:?}");
    let batches = fleet.stub.requests_to("/events");
    assert_eq!(batches.len(), 2, "sent again");
    assert_eq!(
        batches[1].json()["events"][0]["seq"],
        1,
        "the same event, same seq"
    );
    assert_eq!(fleet.types(), vec!["offered"], "counted once");
    assert!(queued(&lab).is_empty());
    // The next event continues the sequence.
    node_release(&lab, "1.2.0");
    assert!(run_qx_update(root, &["check"]).status.success());
    let seqs: Vec<u64> = fleet
        .events()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2]);
}

#[test]
fn an_apply_held_back_by_the_maintenance_window_is_reported_deferred_once() {
    let (lab, fleet) = fleet_lab("  auto_apply: true\n  maintenance_window: \"Sun 02:00-04:00\"\n");
    node_release(&lab, "1.1.0");
    let a = agent(&lab);
    // Friday: the window opens on Sunday.
    let clock = FakeClock::at("2026-11-20T10:00[UTC]");
    runtime().block_on(async {
        let policy = Policy::from_config(a.config());
        let mut scheduler = Scheduler::new(Runner::new(a.clone()), clock.clone(), policy);
        let mut checks = 0;
        for _ in 0..100 {
            match scheduler.step().await {
                Step::Checked { error, .. } => {
                    assert_eq!(error, None);
                    checks += 1;
                }
                Step::Waited { .. } => {}
                other => panic!("unexpected step {other:?}"),
            }
            if checks == 3 {
                break;
            }
        }
    });
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
    assert_eq!(fleet.types(), vec!["offered", "deferred"]);
    let deferred = fleet.events().pop().unwrap();
    assert_eq!(deferred["version"], "1.1.0");
    assert!(
        deferred["message"]
            .as_str()
            .unwrap()
            .contains("Sun 02:00-04:00"),
        "{deferred}"
    );
}

// ---------------------------------------------------------------------------------------------
// Against the real update server's fleet API (its SQLite store, the default).

/// An operator's call to the lab's server with the bootstrap admin token.
fn operator(lab: &Lab, method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::blocking::Client::new();
    let mut req = client.request(method, url).bearer_auth(&lab.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let answer = req.send().unwrap();
    let status = answer.status().as_u16();
    let text = answer.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A lab whose host enrolls with a single-use token the real server issued.
fn real_fleet_lab() -> Lab {
    let lab = Lab::new().unwrap();
    let (status, created) = operator(
        &lab,
        reqwest::Method::POST,
        &lab.server.api().enrollment_tokens(),
        Some(json!({"product": "quantix-os", "labels": {"site": "lab"}, "uses": 1})),
    );
    assert!((200..300).contains(&status), "{status} {created}");
    let token = created["token"].as_str().unwrap();
    lab.host
        .write_file(TOKEN_FILE, format!("{token}\n").as_bytes(), 0o600)
        .unwrap();
    lab.write_config(&format!(
        "  fleet:\n    enroll_token_file: {TOKEN_FILE}\n    labels: {{role: node}}\n"
    ))
    .unwrap();
    lab.host.write_file(BOOT_ID, b"boot-1\n", 0o644).unwrap();
    host_at_v1(&lab);
    lab
}

/// The server's list of hosts.
fn server_hosts(lab: &Lab) -> Vec<Value> {
    let (status, list) = operator(lab, reqwest::Method::GET, &lab.server.api().hosts(""), None);
    assert_eq!(status, 200, "{list}");
    list["hosts"].as_array().cloned().unwrap_or_default()
}

fn host_id(lab: &Lab) -> String {
    let id: Value =
        serde_json::from_slice(&lab.host.read("/data/updates/identity.json").unwrap()).unwrap();
    id["host_id"].as_str().unwrap().to_owned()
}

/// The host as the server shows it, its events oldest first.
fn server_view(lab: &Lab) -> (Value, Vec<String>) {
    let (status, detail) = operator(
        lab,
        reqwest::Method::GET,
        &lab.server.api().host(host_id(lab)),
        None,
    );
    assert_eq!(status, 200, "{detail}");
    let mut types: Vec<(u64, String)> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    types.sort();
    (detail, types.into_iter().map(|(_, t)| t).collect())
}

#[test]
fn real_server_a_host_enrolls_once_and_its_apply_is_confirmed_and_counted_once() {
    let lab = real_fleet_lab();
    node_release(&lab, "1.1.0");
    let a = agent(&lab);
    a.check().unwrap();
    a.apply(&ApplyOptions::default()).unwrap();
    // A second agent (the next process) checks with the identity: the single-use token is
    // spent, so a second enrollment would have failed and left no check-in.
    agent(&lab).check().unwrap();

    let hosts = server_hosts(&lab);
    assert_eq!(hosts.len(), 1, "one host: {hosts:?}");
    let (detail, types) = server_view(&lab);
    assert_eq!(
        types,
        vec![
            "offered",
            "download_started",
            "download_done",
            "install_started",
            "installed",
            "confirmed"
        ]
    );
    assert_eq!(detail["versions"], json!({"qx-node": "1.1.0"}));
    assert_eq!(detail["state"], "confirmed");
    assert_eq!(detail["labels"]["site"], "lab");
    assert_eq!(detail["labels"]["role"], "node");
    assert!(queued(&lab).is_empty());

    // Killed between the batch and its acknowledgement: sent again, counted once.
    node_release(&lab, "1.2.0");
    let root = lab.host.root();
    check_aborted_at(root, "fleet-events-sent");
    assert_eq!(queued(&lab).len(), 1);
    assert!(run_qx_update(root, &["check"]).status.success());
    assert!(queued(&lab).is_empty());
    let (_, types) = server_view(&lab);
    assert_eq!(
        types.iter().filter(|t| *t == "offered").count(),
        2,
        "{types:?}"
    );
    assert_eq!(types.len(), 7, "{types:?}");
}

#[test]
fn real_server_a_crash_before_the_identity_is_kept_enrolls_the_host_once() {
    let lab = real_fleet_lab();
    node_release(&lab, "1.1.0");
    let root = lab.host.root();
    // The server enrolled the host (spending the single-use token); the agent died before it
    // kept the identity.
    check_aborted_at(root, "fleet-enrolled");
    assert!(lab.host.read("/data/updates/identity.json").is_err());
    assert!(lab.host.read("/data/updates/enrollment-key.json").is_ok());

    let out = run_qx_update(root, &["check"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        lab.host.read("/data/updates/enrollment-key.json").is_err(),
        "the key goes once the identity is kept"
    );
    let hosts = server_hosts(&lab);
    assert_eq!(hosts.len(), 1, "enrolled once: {hosts:?}");
    assert_eq!(hosts[0]["id"].as_str().unwrap(), host_id(&lab));
    let (detail, types) = server_view(&lab);
    assert!(
        detail["last_checkin"].is_string(),
        "the identity it kept works: {detail}"
    );
    assert_eq!(types, vec!["offered"]);
}

#[test]
fn real_server_a_decommissioned_host_stops_reporting_and_keeps_updating() {
    let lab = real_fleet_lab();
    agent(&lab).check().ok();
    let id = host_id(&lab);
    let (status, body) = operator(
        &lab,
        reqwest::Method::DELETE,
        &lab.server.api().host(&id),
        None,
    );
    assert!((200..300).contains(&status), "{status} {body}");
    node_release(&lab, "1.1.0");
    let a = agent(&lab);
    a.check().expect("the check goes on");
    let stored: Value =
        serde_json::from_slice(&lab.host.read("/data/updates/identity.json").unwrap()).unwrap();
    assert!(stored["decommissioned_at"].is_string(), "{stored}");
    a.apply(&ApplyOptions::default()).unwrap();
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
    assert_eq!(host_id(&lab), id, "not enrolled again");
}

#[test]
fn real_server_overloaded_answers_429_and_the_schedule_waits_for_its_retry_after() {
    use qx_server::fleet::clock::ManualClock;
    // A server whose fleet takes one host request per second, on a clock the test moves:
    // the enrollment takes the only token, the check-in right after is refused.
    let releases = tempfile::tempdir().unwrap();
    let mut config = qx_server::Config::new(releases.path());
    config.publish_token = "overload-admin".into();
    config.token_is_default = false;
    config.fleet.rate_limit = 1;
    config.fleet.rate_burst = 1;
    let server_clock = ManualClock::new(1_767_225_600_000);
    let server =
        qx_testkit::server::TestServer::start_with_clock(config, Arc::new(server_clock.clone()))
            .unwrap();
    let created: Value = reqwest::blocking::Client::new()
        .post(server.api().enrollment_tokens())
        .bearer_auth("overload-admin")
        .json(&json!({"product": "quantix-os"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let lab = Lab::new().unwrap();
    let token = created["token"].as_str().unwrap();
    lab.host
        .write_file(TOKEN_FILE, format!("{token}\n").as_bytes(), 0o600)
        .unwrap();
    let mut c = lab.host_config();
    c.server_url = server.url().to_owned();
    c.extra = format!("  fleet:\n    enroll_token_file: {TOKEN_FILE}\n");
    lab.host.write_config(&c).unwrap();

    let a = agent(&lab);
    let clock = FakeClock::at("2026-11-20T10:00[UTC]");
    let checks = runtime().block_on(async {
        let policy = Policy::from_config(a.config());
        let mut scheduler = Scheduler::new(Runner::new(a.clone()), clock.clone(), policy);
        let mut checks = Vec::new();
        for _ in 0..100 {
            // The server has no release for the host: each check fails, each checks in.
            if let Step::Checked { at, .. } = scheduler.step().await {
                checks.push(at.timestamp());
                // The server's bucket refills before the next attempt.
                server_clock.advance(Duration::from_secs(60));
            }
            if checks.len() == 3 {
                break;
            }
        }
        checks
    });
    let gap = |i: usize| checks[i + 1].duration_since(checks[i]).as_secs();
    // Retry-After: at least 1 s until the token is back, plus up to 10 s of spread.
    assert!((1..=11).contains(&gap(0)), "{}", gap(0));
    // Then the server's interval (15 min ± 10 %).
    assert!((810..=990).contains(&gap(1)), "{}", gap(1));
}
