//! Staged rollouts end to end (docs/spec.md §10): real servers on loopback with their clock
//! injected, hosts enrolled and checking in over HTTP, signed channel states carrying the
//! plan, and the rollout engine ticked directly with the injected time (no sleeps). Store
//! cases run on both engines: SQLite in the quick tier, PostgreSQL in the slow tier.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::stream::{self, StreamExt};
use qx_core::channel::{ChannelState, RevokeAction, RolloutPlan, RolloutPolicy, Wave};
use qx_core::rollout::{draw, wave_of};
use qx_core::Version;
use qx_server::config::FleetDatabase;
use qx_server::fleet::clock::Clock;
use qx_server::fleet::rollout::engine::TickReport;
use qx_server::Config;
use qx_testkit::channel::{entry, revoke, sign, state_of};
use qx_testkit::release::{BuiltRelease, ComponentSpec, FixtureKey, ReleaseSpec};
use serde_json::{json, Value};

use crate::fleet_api::{report, Engine, Lab, T0};
use crate::support::TOKEN;

pub(crate) const PRODUCT: &str = "quantix-os";
pub(crate) const OLD: &str = "1.0.0";
pub(crate) const NEW: &str = "1.1.0";
const HOUR: i64 = 3_600_000;
/// Requests in flight at once when many hosts act.
const PARALLEL: usize = 32;

/// A server with releases 1.0.0 (current) and 1.1.0 published, and the key that signs its
/// channel states.
pub(crate) struct Rig {
    pub(crate) lab: Lab,
    key: FixtureKey,
    old: BuiltRelease,
    new: BuiltRelease,
    seq: u64,
    /// One client for the many host requests (a client per request costs more than the
    /// request).
    http: reqwest::Client,
}

/// A host as the simulation drives it.
#[derive(Clone)]
pub(crate) struct Host {
    pub(crate) id: String,
    pub(crate) token: String,
    seq: u64,
    version: String,
}

fn release(key: &FixtureKey, version: &str) -> BuiltRelease {
    ReleaseSpec::new(PRODUCT, "stable", version)
        .component(ComponentSpec::file(
            "qx-node",
            "/data/bin/qx-node",
            format!("node {version}").into_bytes(),
        ))
        .sign(key)
        .unwrap()
}

/// The waves `(percent, not_before offset from T0 in ms)`.
pub(crate) fn waves(spec: &[(f64, i64)]) -> Vec<Wave> {
    spec.iter()
        .map(|(p, at)| Wave {
            percent: *p,
            not_before: jiff::Timestamp::from_millisecond(T0 + at).unwrap(),
        })
        .collect()
}

impl Rig {
    pub(crate) async fn start(engine: Engine, tune: impl FnOnce(&mut Config)) -> Rig {
        let lab = Lab::start_with(engine, |c| {
            c.fleet.rate_limit = 0;
            // The test ticks the engine itself, with its clock's time.
            c.fleet.rollout_tick = std::time::Duration::ZERO;
            tune(c)
        });
        let key = FixtureKey::generate().unwrap();
        let (old, new) = (release(&key, OLD), release(&key, NEW));
        let url = lab.server.url().to_owned();
        let (o, n) = (old.clone(), new.clone());
        tokio::task::spawn_blocking(move || {
            o.publish(&url, TOKEN).unwrap();
            n.publish(&url, TOKEN).unwrap();
        })
        .await
        .unwrap();
        let mut rig = Rig {
            lab,
            key,
            old,
            new,
            seq: 0,
            http: crate::support::client(),
        };
        assert_eq!(rig.put(|_| {}).await, 201);
        rig
    }

    /// The plan of a rollout of 1.1.0.
    pub(crate) fn plan(&self, id: &str, waves: Vec<Wave>, policy: RolloutPolicy) -> RolloutPlan {
        RolloutPlan {
            id: id.to_owned(),
            version: Version::parse(NEW).unwrap(),
            manifest_sha256: entry(&self.new).manifest_sha256,
            salt: format!("salt-{id}"),
            waves,
            policy,
        }
    }

    /// Signs and puts the next channel state (1.0.0 current, 1.1.0 listed, then `change`).
    pub(crate) async fn put(&mut self, change: impl FnOnce(&mut ChannelState)) -> u16 {
        self.seq += 1;
        let mut state = state_of(self.seq, &[&self.new, &self.old]).unwrap();
        change(&mut state);
        let signed = sign(&state, &self.key).unwrap();
        let url = self.lab.server.url().to_owned();
        let (status, body) = tokio::task::spawn_blocking(move || signed.put(&url, TOKEN).unwrap())
            .await
            .unwrap();
        assert!(status < 300, "{status}: {body}");
        status
    }

    /// Starts the rollout of `plan`.
    pub(crate) async fn start_rollout(&mut self, plan: RolloutPlan) {
        self.put(|s| s.rollout = Some(plan)).await;
    }

    /// `n` hosts enrolled with `labels`, running 1.0.0.
    pub(crate) async fn hosts(&self, n: usize, labels: Value) -> Vec<Host> {
        let e = self
            .lab
            .enrollment_token(json!({"product": PRODUCT, "uses": n, "labels": labels}))
            .await;
        let url = self.lab.server.api().enroll();
        stream::iter(0..n)
            .map(|_| async {
                let a = self.send(&url, &e, &json!({"hostname": "node"})).await;
                assert!(a["host_id"].is_string(), "{a}");
                Host {
                    id: a["host_id"].as_str().unwrap().to_owned(),
                    token: a["host_token"].as_str().unwrap().to_owned(),
                    seq: 0,
                    version: OLD.to_owned(),
                }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await
    }

    /// `POST`s `body` with `token` on the rig's client; the answer's body (a 2xx insisted on).
    async fn send(&self, url: &str, token: &str, body: &Value) -> Value {
        let res = self
            .http
            .post(url)
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert!(status.is_success(), "{status}: {body}");
        body
    }

    /// One check-in: the answer's body.
    pub(crate) async fn check_in(&self, h: &Host) -> Value {
        let url = self.lab.server.api().checkin(&h.id);
        self.send(&url, &h.token, &report(&h.version)).await
    }

    /// Every host checks in (in parallel); the answers by host id.
    pub(crate) async fn check_in_all(&self, hosts: &[Host]) -> BTreeMap<String, Value> {
        stream::iter(hosts)
            .map(|h| async { (h.id.clone(), self.check_in(h).await) })
            .buffer_unordered(PARALLEL)
            .collect()
            .await
    }

    /// The host reports `kinds` about 1.1.0 (the last may carry a message).
    pub(crate) async fn report(&self, h: &mut Host, kinds: &[&str]) {
        let events: Vec<Value> = kinds
            .iter()
            .map(|k| {
                h.seq += 1;
                json!({"seq": h.seq, "type": k, "time": "2026-01-01T00:00:00Z",
                       "version": NEW, "message": format!("{k} on {}", "test")})
            })
            .collect();
        let url = self.lab.server.api().host_events(&h.id);
        self.send(&url, &h.token, &json!({ "events": events }))
            .await;
        if kinds.last() == Some(&"confirmed") {
            h.version = NEW.to_owned();
        }
    }

    pub(crate) async fn tick(&self) -> TickReport {
        let now = self.lab.clock.now();
        self.lab.server.rollouts().tick(now).await.unwrap()
    }

    pub(crate) async fn status(&self, id: &str) -> Value {
        let url = self.lab.server.api().rollout(PRODUCT, id, None);
        let a = self.lab.get(&url, TOKEN).await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.body
    }

    pub(crate) async fn act(&self, id: &str, action: &str) -> crate::fleet_api::Answer {
        let url = self.lab.server.api().rollout(PRODUCT, id, Some(action));
        self.lab.post(&url, TOKEN, &json!({})).await
    }

    pub(crate) fn set_time(&self, offset: i64) {
        self.lab.clock.set(T0 + offset);
    }
}

/// A stage's count summed over the status's waves.
fn stage_total(status: &Value, stage: &str) -> u64 {
    status["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["stages"][stage].as_u64().unwrap())
        .sum()
}

fn open_waves(status: &Value) -> usize {
    status["waves"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["gate"] == "open")
        .count()
}

/// What the simulation saw.
struct Outcome {
    status: Value,
    /// Hosts offered after the halt, and hosts told to cancel.
    offered_after_halt: usize,
    cancelled: usize,
    /// Hosts offered outside the waves open when offered.
    outside_open_waves: usize,
}

/// 1,000 hosts; waves 1 %, 10 %, 50 %, 100 % an hour apart; every `fail_every`-th host
/// offered fails (`download_started` at the offer, the outcome at the next step). Steps of
/// 20 minutes until the rollout ends or five hours passed; after a halt, every host checks in
/// once more.
async fn simulate(engine: Engine, fail_every: usize) -> Outcome {
    let mut rig = Rig::start(engine, |_| {}).await;
    let policy = RolloutPolicy {
        max_failures: 50,
        ..RolloutPolicy::default()
    };
    let w = waves(&[(1.0, 0), (10.0, HOUR), (50.0, 2 * HOUR), (100.0, 3 * HOUR)]);
    let plan = rig.plan("sim", w.clone(), policy);
    rig.start_rollout(plan.clone()).await;
    let mut hosts = rig.hosts(1000, json!({})).await;
    let wave: BTreeMap<String, usize> = hosts
        .iter()
        .map(|h| {
            (
                h.id.clone(),
                wave_of(&w, draw(&plan.salt, &h.id).bucket, false).unwrap(),
            )
        })
        .collect();
    let mut failed = std::collections::BTreeSet::new();
    let mut offered_order = 0usize;
    let mut downloading: Vec<usize> = Vec::new();
    let mut outside_open_waves = 0;
    let mut status = rig.status("sim").await;
    for step in 0..16 {
        rig.set_time(step * 20 * 60_000);
        rig.tick().await;
        status = rig.status("sim").await;
        if status["state"] != "running" {
            break;
        }
        let open = open_waves(&status);
        let due: Vec<Host> = hosts
            .iter()
            .filter(|h| h.version == OLD && !failed.contains(&h.id) && wave[&h.id] < open.max(1))
            .cloned()
            .collect();
        let answers = rig.check_in_all(&due).await;
        // Hosts downloading since the last step finish now.
        for i in std::mem::take(&mut downloading) {
            let fails = (i / 1000) % fail_every == fail_every - 1;
            let h = &mut hosts[i % 1000];
            let kinds: &[&str] = if fails {
                &[
                    "download_done",
                    "install_started",
                    "installed",
                    "reboot",
                    "rolled_back",
                ]
            } else {
                &[
                    "download_done",
                    "install_started",
                    "installed",
                    "reboot",
                    "confirmed",
                ]
            };
            let mut one = h.clone();
            rig.report(&mut one, kinds).await;
            *h = one;
            if fails {
                failed.insert(h.id.clone());
            }
        }
        for (i, h) in hosts.iter_mut().enumerate() {
            let Some(offer) = answers.get(&h.id).and_then(|a| a.get("offer")) else {
                continue;
            };
            assert_eq!(offer["version"], NEW, "{offer}");
            if wave[&h.id] >= open {
                outside_open_waves += 1;
            }
            if h.seq == 0 {
                rig.report(h, &["download_started"]).await;
                downloading.push(offered_order * 1000 + i);
                offered_order += 1;
            }
        }
        rig.tick().await;
    }
    let mut offered_after_halt = 0;
    let mut cancelled = 0;
    if status["state"] == "halted" {
        for a in rig.check_in_all(&hosts).await.values() {
            offered_after_halt += usize::from(a.get("offer").is_some());
            cancelled += usize::from(a.get("cancel") == Some(&json!(NEW)));
        }
    }
    Outcome {
        status,
        offered_after_halt,
        cancelled,
        outside_open_waves,
    }
}

async fn ten_percent_failures_halt_the_rollout(engine: Engine) {
    let o = simulate(engine, 10).await;
    let s = &o.status;
    assert_eq!(s["state"], "halted", "{s}");
    let halt = &s["halt"];
    assert_eq!(halt["rule"], "max_failure_rate", "{halt}");
    let failures = halt["failures"].as_u64().unwrap();
    assert!(failures <= 50 + 10, "halted after {failures} failures");
    assert_eq!(o.offered_after_halt, 0, "a halted rollout offers nothing");
    assert_eq!(o.outside_open_waves, 0);
    assert_eq!(
        o.cancelled as u64,
        stage_total(s, "downloading") + stage_total(s, "offered")
    );
    assert!(open_waves(s) < 4, "{s}");
}

async fn two_percent_failures_open_every_wave_and_complete(engine: Engine) {
    let o = simulate(engine, 50).await;
    let s = &o.status;
    assert_eq!(s["state"], "completed", "{s}");
    assert_eq!(open_waves(s), 4, "{s}");
    assert_eq!(o.outside_open_waves, 0);
    let confirmed = stage_total(s, "confirmed");
    let failed = stage_total(s, "rolled_back");
    assert_eq!(confirmed + failed, 1000, "{s}");
    assert!((15..=25).contains(&failed), "{failed} failures");
}

/// A single 100 % wave opening at T0 and the given policy.
pub(crate) async fn one_wave(engine: Engine, policy: RolloutPolicy) -> Rig {
    let mut rig = Rig::start(engine, |_| {}).await;
    let plan = rig.plan("one", waves(&[(100.0, 0)]), policy);
    rig.start_rollout(plan).await;
    rig
}

async fn silent_host_after_reboot_times_out_at_the_confirm_deadline(engine: Engine) {
    let rig = one_wave(engine, RolloutPolicy::default()).await;
    let mut h = rig.hosts(1, json!({})).await.remove(0);
    assert_eq!(rig.check_in(&h).await["offer"]["version"], NEW);
    rig.set_time(60_000);
    rig.report(
        &mut h,
        &[
            "download_started",
            "download_done",
            "install_started",
            "installed",
            "reboot",
        ],
    )
    .await;
    let deadline = 60_000 + 30 * 60_000;
    rig.set_time(deadline - 1);
    assert_eq!(rig.tick().await.timed_out, 0);
    assert_eq!(stage_total(&rig.status("one").await, "confirming"), 1);
    rig.set_time(deadline + 1);
    assert_eq!(rig.tick().await.timed_out, 1);
    let s = rig.status("one").await;
    assert_eq!(stage_total(&s, "timed_out"), 1, "{s}");
    assert_eq!(stage_total(&s, "confirming"), 0, "{s}");
}

async fn resume_does_not_halt_again_on_old_failures(engine: Engine) {
    let policy = RolloutPolicy {
        max_failures: 2,
        ..RolloutPolicy::default()
    };
    let rig = one_wave(engine, policy).await;
    let mut hosts = rig.hosts(5, json!({})).await;
    rig.check_in_all(&hosts).await;
    for h in hosts.iter_mut().take(2) {
        rig.report(h, &["download_started", "failed"]).await;
    }
    rig.report(&mut hosts[4], &["download_started"]).await;
    assert_eq!(rig.tick().await.halted, vec!["one".to_owned()]);
    let told = rig.check_in(&hosts[4]).await;
    assert_eq!(
        told["cancel"], NEW,
        "a halted rollout cancels downloads: {told}"
    );
    assert!(told.get("offer").is_none(), "{told}");
    let a = rig.act("one", "resume").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["state"], "running");
    assert_eq!(a.body["acknowledged_failures"], 2);
    assert!(
        rig.tick().await.halted.is_empty(),
        "old failures are acknowledged"
    );
    rig.report(&mut hosts[2], &["download_started", "failed"])
        .await;
    assert!(
        rig.tick().await.halted.is_empty(),
        "one new failure is below the cap of 2"
    );
    rig.report(&mut hosts[3], &["download_started", "failed"])
        .await;
    assert_eq!(rig.tick().await.halted.len(), 1);
    let s = rig.status("one").await;
    assert_eq!(s["state"], "halted");
    assert_eq!(s["halts"].as_array().unwrap().len(), 2);
    assert_eq!(s["halt"]["failures"], 2);
    assert_eq!(s["top_failures"][0][1], 4, "{s}");
}

async fn a_pin_beats_a_hundred_percent_wave(engine: Engine) {
    let rig = one_wave(engine, RolloutPolicy::default()).await;
    let hosts = rig.hosts(3, json!({})).await;
    let pins = rig.lab.server.api().pins(PRODUCT);
    let a = rig
        .lab
        .post(&pins, TOKEN, &json!({"host": hosts[0].id, "version": OLD}))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let labelled = rig.hosts(1, json!({"site": "lab", "ring": "hold"})).await;
    let a = rig
        .lab
        .post(
            &pins,
            TOKEN,
            &json!({"selector": "ring=hold,site=lab", "version": OLD}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let pinned = rig.check_in(&hosts[0]).await;
    assert_eq!(pinned["offer"], json!({"version": OLD, "reason": "pin"}));
    let selected = rig.check_in(&labelled[0]).await;
    assert_eq!(selected["offer"]["reason"], "pin");
    let free = rig.check_in(&hosts[1]).await;
    assert_eq!(free["offer"]["version"], NEW);
    assert_eq!(free["offer"]["reason"], "rollout");
    let list = rig.lab.get(&pins, TOKEN).await;
    assert_eq!(list.body["pins"].as_array().unwrap().len(), 2);
    let id = a.body["id"].as_str().unwrap();
    let gone = rig
        .lab
        .call(
            reqwest::Method::DELETE,
            &rig.lab.server.api().pin(PRODUCT, id),
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    assert_eq!(
        rig.check_in(&labelled[0]).await["offer"]["reason"],
        "rollout"
    );
}

async fn offers_never_come_before_the_signed_not_before(engine: Engine) {
    let mut rig = Rig::start(engine, |_| {}).await;
    let w = waves(&[(50.0, HOUR), (100.0, 2 * HOUR)]);
    let plan = rig.plan("later", w.clone(), RolloutPolicy::default());
    rig.start_rollout(plan.clone()).await;
    let hosts = rig.hosts(40, json!({})).await;
    let canary = rig.hosts(1, json!({"ring": "canary"})).await;
    rig.set_time(HOUR - 1);
    rig.tick().await;
    for (_, a) in rig.check_in_all(&hosts).await {
        assert!(a.get("offer").is_none(), "{a}");
    }
    assert!(rig.check_in(&canary[0]).await.get("offer").is_none());
    rig.set_time(HOUR);
    let a = rig.check_in(&canary[0]).await;
    if draw(&plan.salt, &canary[0].id).bucket >= 5000 {
        assert_eq!(
            a["offer"]["wave"], 0,
            "a canary outside the first wave goes first: {a}"
        );
    }
    // Wave 0's hosts confirm; wave 1 stays closed until its own time.
    for (id, a) in rig.check_in_all(&hosts).await {
        let wave = wave_of(&w, draw(&plan.salt, &id).bucket, false).unwrap();
        if wave == 1 {
            assert!(a.get("offer").is_none(), "{id} of wave 1 offered at {a}");
        }
    }
    rig.set_time(2 * HOUR - 1);
    rig.tick().await;
    for (id, a) in rig.check_in_all(&hosts).await {
        if wave_of(&w, draw(&plan.salt, &id).bucket, false) == Some(1) {
            assert!(
                a.get("offer").is_none(),
                "{id} offered before its not_before: {a}"
            );
        }
    }
}

async fn a_yank_aborts_the_rollout_and_cancels_downloads(engine: Engine) {
    let mut rig = one_wave(engine, RolloutPolicy::default()).await;
    let mut hosts = rig.hosts(2, json!({})).await;
    rig.check_in_all(&hosts).await;
    rig.report(&mut hosts[0], &["download_started"]).await;
    rig.put(|s| revoke(s, &Version::parse(NEW).unwrap(), RevokeAction::Keep))
        .await;
    let s = rig.status("one").await;
    assert_eq!(s["state"], "aborted", "{s}");
    assert!(
        s["ended_reason"].as_str().unwrap().starts_with("yanked"),
        "{s}"
    );
    let a = rig.check_in(&hosts[0]).await;
    assert!(a.get("offer").is_none(), "{a}");
    assert_eq!(a["cancel"], NEW, "{a}");
    rig.report(&mut hosts[0], &["cancelled"]).await;
    assert_eq!(stage_total(&rig.status("one").await, "cancelled"), 1);
}

async fn pause_stops_new_offers_and_keeps_given_ones(engine: Engine) {
    let rig = one_wave(engine, RolloutPolicy::default()).await;
    let hosts = rig.hosts(2, json!({})).await;
    assert_eq!(rig.check_in(&hosts[0]).await["offer"]["version"], NEW);
    let a = rig.act("one", "pause").await;
    assert_eq!((a.status, a.body["state"].clone()), (200, json!("paused")));
    assert_eq!(rig.check_in(&hosts[0]).await["offer"]["version"], NEW);
    assert!(rig.check_in(&hosts[1]).await.get("offer").is_none());
    let again = rig.act("one", "pause").await;
    assert_eq!(again.status, 409, "{}", again.body);
    let a = rig.act("one", "abort").await;
    assert_eq!((a.status, a.body["state"].clone()), (200, json!("aborted")));
    let late = rig.act("one", "resume").await;
    assert_eq!(late.status, 409, "{}", late.body);
    assert!(
        late.body["error"].as_str().unwrap().contains("aborted"),
        "{}",
        late.body
    );
}

async fn metrics_show_rollout_hosts_and_halts(engine: Engine) {
    let policy = RolloutPolicy {
        max_failures: 1,
        ..RolloutPolicy::default()
    };
    let rig = one_wave(engine, policy).await;
    let mut hosts = rig.hosts(1, json!({})).await;
    rig.check_in_all(&hosts).await;
    rig.report(&mut hosts[0], &["download_started", "failed"])
        .await;
    rig.tick().await;
    rig.tick().await;
    let text = crate::support::get(&rig.lab.server, "/metrics")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"qx_rollout_hosts{rollout="one",wave="0",stage="failed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"qx_rollout_halts_total{reason="max_failures"} 1"#),
        "{text}"
    );
}

/// A host that checked in before the last wave opened and is not yet due again holds the
/// completion (its next check-in is its turn); once it is past its due check-in and the grace
/// (overdue), it no longer does.
async fn a_host_not_due_yet_holds_the_completion_until_it_is_overdue(engine: Engine) {
    let rig = one_wave(engine, RolloutPolicy::default()).await;
    let mut hosts = rig.hosts(2, json!({})).await;
    rig.set_time(-60_000);
    rig.check_in_all(&hosts).await;
    rig.set_time(0);
    assert_eq!(rig.tick().await.opened, vec![("one".to_owned(), 0)]);
    assert_eq!(rig.check_in(&hosts[0]).await["offer"]["version"], NEW);
    rig.report(
        &mut hosts[0],
        &[
            "download_started",
            "download_done",
            "installed",
            "confirmed",
        ],
    )
    .await;
    assert!(rig.tick().await.completed.is_empty());
    let s = rig.status("one").await;
    assert_eq!(s["state"], "running", "{s}");

    // Due at most 990 s after its check-in (900 s ± 10 %), overdue 900 s later.
    rig.set_time(-60_000 + 990_000 + 900_000 + 1);
    assert_eq!(rig.tick().await.completed, vec!["one".to_owned()]);
    assert_eq!(rig.status("one").await["state"], "completed");
}

/// Runs each named case on both engines: `sqlite::<case>` in the quick tier and
/// `postgres::<case>` in the slow tier.
macro_rules! on_both_engines {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $case() {
                super::$case(super::Engine::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            #[ignore = "slow tier: needs a PostgreSQL server; `cargo xtask test` installs one and runs it"]
            async fn $case() {
                super::$case(super::Engine::Postgres).await
            })*
        }
    };
}

on_both_engines!(
    ten_percent_failures_halt_the_rollout,
    two_percent_failures_open_every_wave_and_complete,
    silent_host_after_reboot_times_out_at_the_confirm_deadline,
    resume_does_not_halt_again_on_old_failures,
    a_pin_beats_a_hundred_percent_wave,
    offers_never_come_before_the_signed_not_before,
    a_yank_aborts_the_rollout_and_cancels_downloads,
    pause_stops_new_offers_and_keeps_given_ones,
    metrics_show_rollout_hosts_and_halts,
    a_host_not_due_yet_holds_the_completion_until_it_is_overdue,
    two_servers_record_one_halt_and_one_signed_webhook,
);

/// A loopback receiver of webhook deliveries: their bodies and signature headers.
type Deliveries = Arc<Mutex<Vec<(Vec<u8>, String)>>>;

/// The receiver's URL, what it received, and a bell rung at each delivery.
async fn receiver() -> (String, Deliveries, Arc<tokio::sync::Notify>) {
    use axum::routing::post;
    let got: Deliveries = Arc::default();
    let bell = Arc::new(tokio::sync::Notify::new());
    let (keep, ring) = (got.clone(), bell.clone());
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let (keep, ring) = (keep.clone(), ring.clone());
            async move {
                let sig = headers
                    .get("x-qx-signature-256")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                keep.lock().unwrap().push((body.to_vec(), sig));
                ring.notify_waiters();
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got, bell)
}

async fn two_servers_record_one_halt_and_one_signed_webhook(engine: Engine) {
    let (url, got, bell) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let shared = match engine {
        Engine::Sqlite => FleetDatabase::Sqlite(dir.path().join("fleet.db")),
        Engine::Postgres => FleetDatabase::Postgres(qx_testkit::postgres::database().url),
    };
    let tune = |c: &mut Config| {
        c.fleet.database = shared.clone();
        c.fleet.rollout_webhook_url = Some(url.clone());
        c.fleet.rollout_webhook_secret_file = Some(secret.clone());
        c.fleet.rollout_tick = std::time::Duration::ZERO;
    };
    let mut a = Rig::start(Engine::Sqlite, tune).await;
    let b = Lab::start_with(Engine::Sqlite, tune);
    let policy = RolloutPolicy {
        max_failures: 1,
        ..RolloutPolicy::default()
    };
    let plan = a.plan("shared", waves(&[(100.0, 0)]), policy);
    a.start_rollout(plan).await;
    let mut hosts = a.hosts(1, json!({})).await;
    a.check_in_all(&hosts).await;
    a.report(&mut hosts[0], &["download_started", "failed"])
        .await;
    let now = a.lab.clock.now();
    let (ea, eb) = (a.lab.server.rollouts(), b.server.rollouts());
    let (ra, rb) = tokio::join!(ea.tick(now), eb.tick(now));
    let halted = ra.unwrap().halted.len() + rb.unwrap().halted.len();
    assert_eq!(halted, 1, "exactly one server records the halt");
    let s = a.status("shared").await;
    assert_eq!(s["halts"].as_array().unwrap().len(), 1, "{s}");
    let first = got.lock().unwrap().clone();
    assert_eq!(first.len(), 1, "one delivery");
    let (body, sig) = &first[0];
    assert_eq!(
        sig,
        &qx_server::fleet::rollout::webhook::signature(b"s3cret", body)
    );
    assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["event"], "halted");
    assert_eq!(v["rollout"]["id"], "shared");
    assert_eq!(v["rollout"]["halt"]["rule"], "max_failures");
    // An abort is delivered in the background: wait (bounded) for its delivery.
    let delivered = bell.notified();
    assert_eq!(a.act("shared", "abort").await.status, 200);
    let wait = std::time::Duration::from_secs(20);
    if got.lock().unwrap().len() < 2 {
        tokio::time::timeout(wait, delivered)
            .await
            .expect("the abort's delivery");
    }
    let (body, sig) = got.lock().unwrap()[1].clone();
    assert_eq!(
        sig,
        qx_server::fleet::rollout::webhook::signature(b"s3cret", &body)
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (v["event"].as_str(), v["rollout"]["state"].as_str()),
        (Some("aborted"), Some("aborted"))
    );
}

#[tokio::test]
async fn an_event_batch_about_a_rollout_ticks_the_engine_soon() {
    let hourly = |c: &mut Config| c.fleet.rollout_tick = std::time::Duration::from_secs(3600);
    let mut rig = Rig::start(Engine::Sqlite, hourly).await;
    let policy = RolloutPolicy {
        max_failures: 1,
        ..RolloutPolicy::default()
    };
    let plan = rig.plan("soon", waves(&[(100.0, 0)]), policy);
    rig.start_rollout(plan).await;
    let mut h = rig.hosts(1, json!({})).await.remove(0);
    rig.check_in(&h).await;
    rig.report(&mut h, &["download_started", "failed"]).await;
    // Not the hourly period: the batch asks for a tick, run shortly after it (bounded wait).
    let url = rig.lab.server.api().rollout(PRODUCT, "soon", None);
    let halted = tokio::task::spawn_blocking(move || {
        let client = reqwest::blocking::Client::new();
        qx_testkit::wait::poll(
            std::time::Duration::from_secs(20),
            std::time::Duration::from_millis(50),
            || {
                let s: Value = client
                    .get(&url)
                    .bearer_auth(TOKEN)
                    .send()
                    .unwrap()
                    .json()
                    .unwrap();
                s["state"] == "halted"
            },
        )
    })
    .await
    .unwrap();
    assert!(
        halted,
        "the rollout did not halt after the failure was reported"
    );
}
