//! The agent's half of staged rollouts (docs/spec.md §10): the check checks in before it
//! decides, and takes a server's offer only within the signed channel state — a rollout's
//! version only from the host's own wave's signed `not_before` (judged at the earlier of the
//! server's time and the host's clock), a pin only to a listed version; `cancel` drops a staged
//! download; a signed revert is reported as `reverted`.
//!
//! The fleet server here is hostile on purpose: a check-in-rewriting server (the scripted
//! fleet of `fleet.rs`) in front of a real update server, answering each check-in with the
//! offer a test chose, while releases, channel states and artifacts come from the real one.

use jiff::{SignedDuration, Timestamp};
use qx_agent::{code, Agent, AgentError, ApplyOptions, CheckReport};
use qx_core::channel::{ChannelState, RevokeAction, RolloutPlan, Wave};
use qx_core::Version;
use qx_testkit::channel::{entry, revoke, sign, state_of};
use qx_testkit::host::Lab;
use qx_testkit::release::BuiltRelease;
use qx_testkit::scripted::Answer;
use serde_json::{json, Value};

use crate::fleet::{fleet_lab_with, FakeFleet};
use crate::support::host::{agent, node_release, run_qx_update};

/// The host id the scripted fleet enrolls.
const HOST_ID: &str = "h-1";

fn hours(n: i64) -> Timestamp {
    Timestamp::now() + SignedDuration::from_hours(n)
}

fn publish(lab: &Lab, state: &ChannelState) {
    sign(state, &lab.key)
        .unwrap()
        .publish(lab.server.url(), &lab.token)
        .unwrap();
}

/// A rollout plan of `release` with `waves` (percent, not_before), drawn with `salt`.
fn plan(release: &BuiltRelease, salt: &str, waves: &[(f64, Timestamp)]) -> RolloutPlan {
    RolloutPlan {
        id: "r-1".into(),
        version: release.manifest.version.clone(),
        manifest_sha256: entry(release).manifest_sha256,
        salt: salt.into(),
        waves: waves
            .iter()
            .map(|(percent, not_before)| Wave {
                percent: *percent,
                not_before: *not_before,
            })
            .collect(),
        policy: Default::default(),
    }
}

/// A host at 1.0.0 reporting to a scripted fleet with its own `labels`; 1.0.0 (current) and
/// 1.1.0 published, and a signed state rolling 1.1.0 out in `waves` with `salt`.
fn rollout_lab(labels: &str, salt: &str, waves: &[(f64, Timestamp)]) -> (Lab, FakeFleet) {
    let (lab, fleet) = fleet_lab_with(labels, "");
    let v1 = node_release(&lab, "1.0.0");
    let v11 = node_release(&lab, "1.1.0");
    let mut state = state_of(1, &[&v11, &v1]).unwrap();
    state.rollout = Some(plan(&v11, salt, waves));
    publish(&lab, &state);
    (lab, fleet)
}

/// A check-in answer at `server_time` with `offer` and `cancel` (JSON or null).
fn answer(server_time: Timestamp, offer: Value, cancel: Value) -> Answer {
    let mut body = json!({"server_time": server_time.to_string(), "next_checkin_s": 900});
    if !offer.is_null() {
        body["offer"] = offer;
    }
    if !cancel.is_null() {
        body["cancel"] = cancel;
    }
    Answer::json(200, body)
}

fn rollout_offer(version: &str, wave: u32) -> Value {
    json!({"version": version, "reason": "rollout", "rollout": "r-1", "wave": wave})
}

fn pin(version: &str) -> Value {
    json!({"version": version, "reason": "pin"})
}

fn qx(lab: &Lab, args: &[&str]) -> (i32, String) {
    let out = run_qx_update(lab.host.root(), args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn check(a: &Agent) -> CheckReport {
    a.check().expect("check")
}

fn refused(a: &Agent) -> AgentError {
    a.check().expect_err("the offer is refused")
}

/// Entries in the host's staging directory.
fn staged(lab: &Lab) -> Vec<String> {
    std::fs::read_dir(lab.host.path("/data/updates/staging"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn assert_contains(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "{p:?} not in: {text}");
    }
}

#[test]
fn a_hostile_server_offering_before_the_signed_not_before_is_refused() {
    let not_before = hours(1);
    let (lab, fleet) = rollout_lab("{site: lab}", "salt", &[(100.0, not_before)]);
    // The server claims it is already time, and that the host is in wave 0.
    let claimed = hours(2);
    fleet.then_checkin(answer(claimed, rollout_offer("1.1.0", 0), Value::Null));
    let (status, text) = qx(&lab, &["check"]);
    assert_eq!(status, code::ROLLOUT_TOO_EARLY, "{text}");
    assert_contains(
        &text,
        &[
            "1.1.0",
            "wave 0",
            &not_before.to_string(),
            &claimed.to_string(),
        ],
    );

    fleet.then_checkin(answer(claimed, rollout_offer("1.1.0", 0), Value::Null));
    let (status, text) = qx(&lab, &["apply", "--yes"]);
    assert_eq!(status, code::ROLLOUT_TOO_EARLY, "{text}");
    assert_contains(&text, &["nothing was downloaded"]);
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
    assert!(staged(&lab).is_empty(), "{:?}", staged(&lab));
    assert!(
        !fleet.types().iter().any(|t| t == "download_started"),
        "{:?}",
        fleet.types()
    );
}

#[test]
fn an_offer_from_the_waves_not_before_on_is_taken() {
    let (lab, fleet) = rollout_lab("{site: lab}", "salt", &[(100.0, hours(-1))]);
    let a = agent(&lab);
    // No offer: the host follows the signed state's current.
    let report = check(&a);
    assert_eq!(
        (report.version.as_str(), report.available),
        ("1.0.0", false)
    );
    assert_eq!(
        fleet.stub.requests_to("/checkin").len(),
        1,
        "one check-in per check"
    );

    fleet.then_checkin(answer(hours(0), rollout_offer("1.1.0", 0), Value::Null));
    let (status, text) = qx(&lab, &["--json", "check"]);
    assert_eq!(status, 0, "{text}");
    let json: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["available"], true);
    assert_eq!(json["version"], "1.1.0");
    assert_eq!(json["offer"], "rollout");

    fleet.then_checkin(answer(hours(0), rollout_offer("1.1.0", 0), Value::Null));
    let report = a.apply(&ApplyOptions::default()).expect("apply");
    assert_eq!(report.version, "1.1.0");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
}

#[test]
fn a_failed_check_in_decides_as_an_anonymous_host() {
    let (lab, fleet) = rollout_lab("{site: lab}", "salt", &[(100.0, hours(-1))]);
    fleet.then_checkin(Answer::json(500, json!({"error": "down", "details": ""})));
    let report = check(&agent(&lab));
    assert_eq!(
        (report.version.as_str(), report.available),
        ("1.0.0", false)
    );
}

#[test]
fn a_server_time_before_not_before_holds_the_host_back_though_its_clock_is_past() {
    let not_before = hours(-1);
    let (lab, fleet) = rollout_lab("{site: lab}", "salt", &[(100.0, not_before)]);
    let server_time = hours(-2);
    fleet.then_checkin(answer(server_time, rollout_offer("1.1.0", 0), Value::Null));
    let e = refused(&agent(&lab));
    assert_eq!(e.exit_code(), code::ROLLOUT_TOO_EARLY, "{e}");
    assert_contains(
        &e.to_string(),
        &[&not_before.to_string(), &server_time.to_string()],
    );
}

/// A salt that puts [`HOST_ID`] outside the first 1 % of buckets.
fn salt_past_first_percent() -> String {
    (0..)
        .map(|i| format!("salt-{i}"))
        .find(|s| qx_core::rollout::bucket(s, HOST_ID) >= 100)
        .unwrap()
}

#[test]
fn a_canary_by_its_own_labels_is_in_wave_0_and_a_server_cannot_make_one() {
    let salt = salt_past_first_percent();
    let waves = [(1.0, hours(-1)), (100.0, hours(10))];
    // The server says wave 0, but the host's own bucket puts it in wave 1, ten hours away.
    let (lab, fleet) = rollout_lab("{site: lab}", &salt, &waves);
    fleet.then_checkin(answer(hours(0), rollout_offer("1.1.0", 0), Value::Null));
    let e = refused(&agent(&lab));
    assert_eq!(e.exit_code(), code::ROLLOUT_TOO_EARLY, "{e}");
    assert_contains(&e.to_string(), &["wave 1"]);

    let (lab, fleet) = rollout_lab("{ring: canary}", &salt, &waves);
    fleet.then_checkin(answer(hours(0), rollout_offer("1.1.0", 0), Value::Null));
    let report = check(&agent(&lab));
    assert_eq!((report.version.as_str(), report.available), ("1.1.0", true));
}

#[test]
fn an_offer_of_a_version_the_plan_does_not_roll_out_is_refused() {
    let (lab, fleet) = rollout_lab("{site: lab}", "salt", &[(100.0, hours(-1))]);
    fleet.then_checkin(answer(hours(0), rollout_offer("1.0.5", 0), Value::Null));
    let e = refused(&agent(&lab));
    assert_eq!(e.exit_code(), code::OFFER_REFUSED, "{e}");
    assert_contains(&e.to_string(), &["1.0.5", "rollout r-1 is of 1.1.0"]);
}

/// A host at 1.0.0 reporting to a scripted fleet; `releases` published, the last `current`.
fn channel_lab(releases: &[&str]) -> (Lab, FakeFleet, ChannelState) {
    let (lab, fleet) = fleet_lab_with("{site: lab}", "");
    let built: Vec<BuiltRelease> = releases.iter().map(|v| node_release(&lab, v)).collect();
    let state = state_of(1, &built.iter().collect::<Vec<_>>()).unwrap();
    publish(&lab, &state);
    (lab, fleet, state)
}

#[test]
fn a_pin_keeps_the_host_on_its_version_while_current_moves() {
    let (lab, fleet, _) = channel_lab(&["1.0.0", "1.1.0"]);
    let a = agent(&lab);
    fleet.then_checkin(answer(hours(0), pin("1.0.0"), Value::Null));
    let report = check(&a);
    assert_eq!(
        (report.version.as_str(), report.available),
        ("1.0.0", false)
    );
    fleet.then_checkin(answer(hours(0), pin("1.0.0"), Value::Null));
    a.apply(&ApplyOptions::default()).expect("apply");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
}

#[test]
fn a_pin_to_an_older_listed_version_downgrades() {
    let (lab, fleet, _) = channel_lab(&["0.9.0", "1.0.0"]);
    fleet.then_checkin(answer(hours(0), pin("0.9.0"), Value::Null));
    let report = agent(&lab).apply(&ApplyOptions::default()).expect("apply");
    assert_eq!(report.version, "0.9.0");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("0.9.0"));
}

#[test]
fn a_pin_to_an_unlisted_version_leaves_the_host_where_it_is_with_a_warning() {
    let (lab, fleet, _) = channel_lab(&["1.0.0", "1.1.0"]);
    fleet.then_checkin(answer(hours(0), pin("2.0.0"), Value::Null));
    let report = check(&agent(&lab));
    assert_eq!(
        (report.version.as_str(), report.available),
        ("1.0.0", false)
    );
    assert_contains(&report.warnings.join("\n"), &["2.0.0", "does not list"]);
}

#[test]
fn cancel_drops_the_staged_download_records_cancelled_once_and_does_not_start_it() {
    let (lab, fleet) = rollout_lab("{site: lab}", "salt", &[(100.0, hours(-1))]);
    // A download of 1.1.0 cut earlier, and one of another release (a check leaves it).
    for dir in ["1.1.0", "1.0.9"] {
        lab.host
            .write_file(
                &format!("/data/updates/staging/{dir}/qx-node.part"),
                b"half",
                0o644,
            )
            .unwrap();
    }
    let a = agent(&lab);
    // The offer and the cancel of the same version: the cancel wins.
    fleet.then_checkin(answer(hours(0), rollout_offer("1.1.0", 0), json!("1.1.0")));
    let report = check(&a);
    assert_eq!(
        (report.version.as_str(), report.available),
        ("1.0.0", false)
    );
    assert_contains(&report.warnings.join("\n"), &["cancelled 1.1.0"]);
    assert_eq!(
        staged(&lab),
        ["1.0.9"],
        "only the cancelled version's download is dropped"
    );

    fleet.then_checkin(answer(hours(0), Value::Null, json!("1.1.0")));
    a.apply(&ApplyOptions::default()).expect("apply");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
    let cancelled: Vec<Value> = fleet
        .events()
        .into_iter()
        .filter(|e| e["type"] == "cancelled")
        .collect();
    assert_eq!(cancelled.len(), 1, "once: {:?}", fleet.types());
    assert_eq!(cancelled[0]["version"], "1.1.0");
}

#[test]
fn a_signed_revert_is_reported_reverted_with_the_version_left() {
    let (lab, fleet, state) = channel_lab(&["1.0.0", "1.1.0"]);
    let a = agent(&lab);
    a.apply(&ApplyOptions::default()).expect("to 1.1.0");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));

    let mut next = state.successor(Timestamp::now(), qx_core::channel::DEFAULT_LIFETIME);
    revoke(
        &mut next,
        &Version::parse("1.1.0").unwrap(),
        RevokeAction::Revert,
    );
    next.current = Version::parse("1.0.0").unwrap();
    publish(&lab, &next);
    a.apply(&ApplyOptions::default()).expect("back to 1.0.0");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));

    let reverted: Vec<Value> = fleet
        .events()
        .into_iter()
        .filter(|e| e["type"] == "reverted")
        .collect();
    assert_eq!(reverted.len(), 1, "{:?}", fleet.types());
    assert_eq!(reverted[0]["version"], "1.1.0", "the version the host left");
    assert_contains(reverted[0]["message"].as_str().unwrap(), &["back to 1.0.0"]);
}
