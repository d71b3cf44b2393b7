//! The fleet API end to end (docs/spec.md §9, docs/fleet-api.md): a real server on loopback
//! over a real store, its clock injected. Every case runs on both engines: SQLite in the quick
//! tier, PostgreSQL (a throwaway cluster of `qx_testkit::postgres`) in the slow tier.

use std::sync::Arc;
use std::time::Duration;

use qx_core::fleet::{MAX_EVENTS_PER_BATCH, MAX_LABELS, MAX_MESSAGE};
use qx_server::config::FleetDatabase;
use qx_server::fleet::clock::{rfc3339, ManualClock};
use qx_server::Config;
use qx_testkit::server::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

/// 2026-01-01T00:00:00Z: the injected clock's start.
pub(crate) const T0: i64 = 1_767_225_600_000;
/// The check-in interval of these servers: 15 minutes.
pub(crate) const INTERVAL_S: u64 = 900;

#[derive(Clone, Copy)]
pub(crate) enum Engine {
    Sqlite,
    Postgres,
}

/// A server on its own release directory with a manual clock.
pub(crate) struct Lab {
    pub(crate) server: TestServer,
    pub(crate) clock: ManualClock,
    _dir: tempfile::TempDir,
}

/// What a request answered: status, headers, JSON body (`Null` when empty).
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: Value,
}

impl Lab {
    pub(crate) fn start(engine: Engine) -> Lab {
        Self::start_with(engine, |_| {})
    }

    pub(crate) fn start_with(engine: Engine, tune: impl FnOnce(&mut Config)) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path());
        config.publish_token = TOKEN.to_owned();
        config.token_is_default = false;
        config.fleet.checkin_interval = Duration::from_secs(INTERVAL_S);
        config.fleet.checkin_grace = Duration::from_secs(INTERVAL_S);
        config.fleet.offline_after = Duration::from_secs(3 * INTERVAL_S);
        if let Engine::Postgres = engine {
            config.fleet.database = FleetDatabase::Postgres(qx_testkit::postgres::database().url);
        }
        tune(&mut config);
        let clock = ManualClock::new(T0);
        let server = TestServer::start_with_clock(config, Arc::new(clock.clone())).unwrap();
        Lab {
            server,
            clock,
            _dir: dir,
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut req = client().request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let res = req.send().await.expect("send");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: not JSON: {text}"))
        };
        if status >= 400 {
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{body}"
            );
            assert!(body["details"].is_array(), "{body}");
        }
        Answer {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn post(&self, url: &str, token: &str, body: &Value) -> Answer {
        let bytes = serde_json::to_vec(body).unwrap();
        self.call(Method::POST, url, Some(token), Some(bytes)).await
    }

    pub(crate) async fn get(&self, url: &str, token: &str) -> Answer {
        self.call(Method::GET, url, Some(token), None).await
    }

    /// An enrollment token for `quantix-os` (admin: the bootstrap token).
    pub(crate) async fn enrollment_token(&self, body: Value) -> String {
        let a = self
            .post(&self.server.api().enrollment_tokens(), TOKEN, &body)
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        a.body["token"].as_str().unwrap().to_owned()
    }

    /// Enrolls a host; returns `(host_id, host_token)`.
    pub(crate) async fn enroll(&self, enrollment: &str, labels: Value) -> (String, String) {
        let body = json!({"hostname": "node", "labels": labels});
        let a = self
            .post(&self.server.api().enroll(), enrollment, &body)
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        let id = a.body["host_id"].as_str().unwrap().to_owned();
        let token = a.body["host_token"].as_str().unwrap().to_owned();
        (id, token)
    }

    /// A fresh host of `quantix-os`.
    pub(crate) async fn host(&self) -> (String, String) {
        let e = self
            .enrollment_token(json!({"product": "quantix-os"}))
            .await;
        self.enroll(&e, json!({})).await
    }

    pub(crate) async fn check_in(&self, host: &(String, String), body: &Value) -> Answer {
        self.post(&self.server.api().checkin(&host.0), &host.1, body)
            .await
    }

    pub(crate) async fn events(&self, host: &(String, String), events: Value) -> Answer {
        let url = self.server.api().host_events(&host.0);
        self.post(&url, &host.1, &json!({ "events": events })).await
    }

    pub(crate) async fn detail(&self, id: &str) -> Value {
        let a = self.get(&self.server.api().host(id), TOKEN).await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.body
    }

    pub(crate) async fn hosts(&self, query: &str) -> Vec<Value> {
        let a = self.get(&self.server.api().hosts(query), TOKEN).await;
        assert_eq!(a.status, 200, "{query}: {}", a.body);
        a.body["hosts"].as_array().unwrap().clone()
    }
}

pub(crate) fn report(version: &str) -> Value {
    json!({
        "reason": "check",
        "agent_version": "0.1.0",
        "channel": "stable",
        "installed": {"qx-node": version},
        "booted_slot": "a",
        "slots": [{"name": "a", "version": version, "state": "good"}, {"name": "b", "state": "empty"}],
        "uptime_s": 42,
        "labels": {"site": "lab"},
    })
}

pub(crate) fn event(seq: u64, kind: &str) -> Value {
    json!({"seq": seq, "type": kind, "time": "2026-01-01T00:00:00Z", "version": "1.1.0"})
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
    enroll_check_in_and_events_show_in_the_host_list_and_detail,
    check_in_uses_the_server_clock_not_the_hosts,
    liveness_follows_the_expected_check_in,
    check_in_for_an_unknown_host_is_403,
    detail_of_an_unknown_host_is_404,
    wrong_host_token_is_401,
    host_token_on_another_hosts_path_is_403,
    decommissioned_host_token_is_401,
    enroll_with_unknown_token_is_401,
    enroll_with_revoked_token_is_401,
    enroll_with_expired_token_is_403,
    enroll_with_used_up_token_is_403,
    enrollment_sent_again_with_its_key_answers_the_same_host_with_a_new_token,
    enrollment_key_of_a_decommissioned_host_enrolls_a_new_one,
    enrollment_key_with_another_token_is_409_and_a_short_key_400,
    replayed_event_batch_is_counted_once,
    out_of_order_seqs_are_stored,
    oversized_body_is_413,
    malformed_json_is_400,
    unknown_field_is_400,
    ten_thousand_labels_are_400,
    one_megabyte_message_is_cut_to_max_message,
    too_many_events_in_a_batch_is_400,
    host_list_filters_and_pages,
    labels_patch_sets_and_removes,
    operator_token_scopes_are_enforced,
    whoami_names_the_token_and_its_scopes,
    publish_accepts_an_operator_token_with_publish_scope,
    overload_answers_429_with_retry_after,
);

async fn enroll_check_in_and_events_show_in_the_host_list_and_detail(engine: Engine) {
    let lab = Lab::start(engine);
    let e = lab
        .enrollment_token(json!({"product": "quantix-os", "labels": {"ring": "canary"}, "uses": 2}))
        .await;
    let host = lab.enroll(&e, json!({"site": "lab"})).await;
    assert_eq!(host.1.len(), 43, "a 256-bit base64url token");
    let a = lab.check_in(&host, &report("1.0.0")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["server_time"], rfc3339(T0));
    let next = a.body["next_checkin_s"].as_u64().unwrap();
    assert!((810..=990).contains(&next), "{next}: 15 min ± 10 %");
    assert!(a.body.get("offer").is_none(), "{}", a.body);
    let a = lab
        .events(
            &host,
            json!([
                event(1, "offered"),
                event(2, "installed"),
                event(3, "confirmed")
            ]),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"accepted": 3, "duplicates": 0, "last_seq": 3})
    );
    let hosts = lab.hosts("").await;
    assert_eq!(hosts.len(), 1);
    let h = &hosts[0];
    assert_eq!(h["id"], host.0.as_str());
    assert_eq!(h["product"], "quantix-os");
    assert_eq!(h["channel"], "stable");
    assert_eq!(h["versions"], json!({"qx-node": "1.0.0"}));
    assert_eq!(h["state"], "confirmed");
    assert_eq!(h["liveness"], "online");
    assert_eq!(h["labels"]["ring"], "canary");
    assert_eq!(h["labels"]["site"], "lab");
    assert_eq!(h["last_checkin"], rfc3339(T0));
    let d = lab.detail(&host.0).await;
    let seqs: Vec<u64> = d["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 2, 1], "newest first");
    assert_eq!(d["events"][0]["type"], "confirmed");
    assert_eq!(d["booted_slot"], "a");
    assert_eq!(d["slots"].as_array().unwrap().len(), 2);
}

async fn check_in_uses_the_server_clock_not_the_hosts(engine: Engine) {
    let lab = Lab::start(engine);
    let host = lab.host().await;
    lab.clock.advance(Duration::from_secs(60));
    let mut body = report("1.0.0");
    body["time"] = json!("1999-12-31T23:59:59Z");
    let a = lab.check_in(&host, &body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let now = T0 + 60_000;
    assert_eq!(a.body["server_time"], rfc3339(now));
    let d = lab.detail(&host.0).await;
    assert_eq!(
        d["last_checkin"],
        rfc3339(now),
        "the server's clock, not the host's"
    );
    let next = a.body["next_checkin_s"].as_i64().unwrap();
    assert_eq!(d["next_checkin_due"], rfc3339(now + next * 1000));
}

async fn liveness_follows_the_expected_check_in(engine: Engine) {
    let lab = Lab::start(engine);
    let host = lab.host().await;
    let a = lab.check_in(&host, &report("1.0.0")).await;
    let next = a.body["next_checkin_s"].as_u64().unwrap();
    let liveness = |d: Value| d["liveness"].as_str().unwrap().to_owned();
    lab.clock.advance(Duration::from_secs(next + INTERVAL_S));
    assert_eq!(
        liveness(lab.detail(&host.0).await),
        "online",
        "within the grace"
    );
    lab.clock.advance(Duration::from_secs(1));
    assert_eq!(liveness(lab.detail(&host.0).await), "overdue");
    assert_eq!(lab.hosts("overdue=true").await.len(), 1);
    assert_eq!(lab.hosts("liveness=online").await.len(), 0);
    lab.clock.advance(Duration::from_secs(2 * INTERVAL_S));
    assert_eq!(liveness(lab.detail(&host.0).await), "offline");
    assert_eq!(lab.hosts("liveness=offline").await.len(), 1);
    assert_eq!(lab.check_in(&host, &report("1.0.0")).await.status, 200);
    assert_eq!(
        liveness(lab.detail(&host.0).await),
        "online",
        "back after a check-in"
    );
}

async fn check_in_for_an_unknown_host_is_403(engine: Engine) {
    let lab = Lab::start(engine);
    let host = lab.host().await;
    let unknown = (
        "0123456789abcdef0123456789abcdef".to_owned(),
        host.1.clone(),
    );
    let a = lab.check_in(&unknown, &report("1.0.0")).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.body["error"].as_str().unwrap().contains("own host"),
        "{}",
        a.body
    );
    assert!(
        lab.detail(&host.0).await["last_checkin"].is_null(),
        "nothing stored"
    );
    assert_eq!(lab.hosts("").await.len(), 1);
}

async fn detail_of_an_unknown_host_is_404(engine: Engine) {
    let lab = Lab::start(engine);
    let a = lab
        .get(&lab.server.api().host("0123456789abcdef"), TOKEN)
        .await;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = lab.get(&lab.server.api().host("NOT..valid"), TOKEN).await;
    assert_eq!(a.status, 400, "{}", a.body);
}

async fn wrong_host_token_is_401(engine: Engine) {
    let lab = Lab::start(engine);
    let host = lab.host().await;
    let wrong = (host.0.clone(), "not-the-token".to_owned());
    let a = lab.check_in(&wrong, &report("1.0.0")).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.headers["www-authenticate"], "Bearer");
    let a = lab.events(&wrong, json!([event(1, "offered")])).await;
    assert_eq!(a.status, 401, "{}", a.body);
    let a = lab
        .call(
            Method::POST,
            &lab.server.api().checkin(&host.0),
            None,
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(a.status, 401, "no token: {}", a.body);
    // An operator token is not a host token.
    let a = lab
        .post(&lab.server.api().checkin(&host.0), TOKEN, &report("1.0.0"))
        .await;
    assert_eq!(a.status, 401, "{}", a.body);
    let d = lab.detail(&host.0).await;
    assert!(
        d["last_checkin"].is_null() && d["events"].as_array().unwrap().is_empty(),
        "{d}"
    );
}

async fn host_token_on_another_hosts_path_is_403(engine: Engine) {
    let lab = Lab::start(engine);
    let a_host = lab.host().await;
    let b_host = lab.host().await;
    let crossed = (b_host.0.clone(), a_host.1.clone());
    let a = lab.check_in(&crossed, &report("6.6.6")).await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = lab.events(&crossed, json!([event(1, "failed")])).await;
    assert_eq!(a.status, 403, "{}", a.body);
    let d = lab.detail(&b_host.0).await;
    assert!(
        d["last_checkin"].is_null() && d["events"].as_array().unwrap().is_empty(),
        "{d}"
    );
}

async fn decommissioned_host_token_is_401(engine: Engine) {
    let lab = Lab::start(engine);
    let host = lab.host().await;
    assert_eq!(lab.check_in(&host, &report("1.0.0")).await.status, 200);
    let url = lab.server.api().host(&host.0);
    let a = lab.call(Method::DELETE, &url, Some(TOKEN), None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["liveness"], "decommissioned");
    let a = lab.check_in(&host, &report("2.0.0")).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        a.body["error"].as_str().unwrap().contains("decommissioned"),
        "{}",
        a.body
    );
    assert_eq!(
        lab.detail(&host.0).await["versions"]["qx-node"],
        "1.0.0",
        "nothing stored"
    );
    assert!(
        lab.hosts("").await.is_empty(),
        "hidden from the default list"
    );
    assert_eq!(lab.hosts("liveness=decommissioned").await.len(), 1);
    let again = lab.call(Method::DELETE, &url, Some(TOKEN), None).await;
    assert_eq!(again.status, 200, "twice is fine: {}", again.body);
}

async fn enroll_with_unknown_token_is_401(engine: Engine) {
    let lab = Lab::start(engine);
    let a = lab
        .post(
            &lab.server.api().enroll(),
            "no-such-enrollment-token",
            &json!({}),
        )
        .await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(lab.hosts("").await.is_empty());
}

async fn enroll_with_revoked_token_is_401(engine: Engine) {
    let lab = Lab::start(engine);
    let a = lab
        .post(
            &lab.server.api().enrollment_tokens(),
            TOKEN,
            &json!({"product": "quantix-os", "uses": 5}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let (id, token) = (
        a.body["id"].as_str().unwrap(),
        a.body["token"].as_str().unwrap(),
    );
    let url = lab.server.api().enrollment_token(id);
    assert_eq!(
        lab.call(Method::DELETE, &url, Some(TOKEN), None)
            .await
            .status,
        200
    );
    let a = lab
        .post(&lab.server.api().enroll(), token, &json!({}))
        .await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        a.body["error"].as_str().unwrap().contains("revoked"),
        "{}",
        a.body
    );
    assert!(lab.hosts("").await.is_empty());
    assert_eq!(
        lab.call(Method::DELETE, &url, Some(TOKEN), None)
            .await
            .status,
        404
    );
}

async fn enroll_with_expired_token_is_403(engine: Engine) {
    let lab = Lab::start(engine);
    let e = lab
        .enrollment_token(json!({"product": "quantix-os", "expires_in": "1h"}))
        .await;
    lab.clock.advance(Duration::from_secs(3601));
    let a = lab.post(&lab.server.api().enroll(), &e, &json!({})).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.body["error"].as_str().unwrap().contains("expired"),
        "{}",
        a.body
    );
    assert!(lab.hosts("").await.is_empty());
}

async fn enroll_with_used_up_token_is_403(engine: Engine) {
    let lab = Lab::start(engine);
    let e = lab.enrollment_token(json!({"product": "quantix-os"})).await;
    lab.enroll(&e, json!({})).await;
    let a = lab.post(&lab.server.api().enroll(), &e, &json!({})).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.body["error"].as_str().unwrap().contains("used up"),
        "{}",
        a.body
    );
    assert_eq!(
        lab.hosts("").await.len(),
        1,
        "a single-use token enrolls one host"
    );
}

/// A single-use token, an enrollment with `key`: its answer.
async fn enroll_with_key(lab: &Lab, token: &str, key: &str) -> Answer {
    let body = json!({"hostname": "node", "labels": {"role": "db"}, "enrollment_key": key});
    lab.post(&lab.server.api().enroll(), token, &body).await
}

const KEY: &str = "k7Yc1mQ0fW2xR9tL4vB8nD3sH6gJ5pZaE0uI1oK2yTq";

async fn enrollment_sent_again_with_its_key_answers_the_same_host_with_a_new_token(engine: Engine) {
    let lab = Lab::start(engine);
    let e = lab.enrollment_token(json!({"product": "quantix-os"})).await;
    let first = enroll_with_key(&lab, &e, KEY).await;
    assert_eq!(first.status, 201, "{}", first.body);
    // The answer was lost: the host sends the same request again, the token's one use spent.
    let again = enroll_with_key(&lab, &e, KEY).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(
        again.body["host_id"], first.body["host_id"],
        "the same host"
    );
    assert_ne!(again.body["host_token"], first.body["host_token"]);
    let hosts = lab.hosts("").await;
    assert_eq!(hosts.len(), 1, "enrolled once: {hosts:?}");
    assert_eq!(hosts[0]["labels"]["role"], "db");
    let id = first.body["host_id"].as_str().unwrap().to_owned();
    let old = (
        id.clone(),
        first.body["host_token"].as_str().unwrap().to_owned(),
    );
    let new = (id, again.body["host_token"].as_str().unwrap().to_owned());
    assert_eq!(lab.check_in(&new, &report("1.0.0")).await.status, 200);
    assert_eq!(
        lab.check_in(&old, &report("1.0.0")).await.status,
        401,
        "the lost token no longer acts"
    );
    // Without the key, the spent token enrolls nothing.
    let a = lab.post(&lab.server.api().enroll(), &e, &json!({})).await;
    assert_eq!(a.status, 403, "{}", a.body);
}

async fn enrollment_key_of_a_decommissioned_host_enrolls_a_new_one(engine: Engine) {
    let lab = Lab::start(engine);
    let e = lab
        .enrollment_token(json!({"product": "quantix-os", "uses": 2}))
        .await;
    let first = enroll_with_key(&lab, &e, KEY).await;
    let id = first.body["host_id"].as_str().unwrap().to_owned();
    let gone = lab
        .call(
            Method::DELETE,
            &lab.server.api().host(&id),
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    let again = enroll_with_key(&lab, &e, KEY).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_ne!(again.body["host_id"], first.body["host_id"], "a new host");
    assert_eq!(lab.hosts("").await.len(), 1);
    assert_eq!(lab.hosts("liveness=decommissioned").await.len(), 1);
}

async fn enrollment_key_with_another_token_is_409_and_a_short_key_400(engine: Engine) {
    let lab = Lab::start(engine);
    let e1 = lab.enrollment_token(json!({"product": "quantix-os"})).await;
    let e2 = lab.enrollment_token(json!({"product": "quantix-os"})).await;
    assert_eq!(enroll_with_key(&lab, &e1, KEY).await.status, 201);
    let a = enroll_with_key(&lab, &e2, KEY).await;
    assert_eq!(a.status, 409, "{}", a.body);
    let a = enroll_with_key(&lab, &e2, "short").await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body["error"].as_str().unwrap().contains("enrollment_key"),
        "{}",
        a.body
    );
    assert_eq!(lab.hosts("").await.len(), 1, "nothing stored");
    // Both refusals left e2's use: it still enrolls a host.
    assert_eq!(
        enroll_with_key(&lab, &e2, &KEY.replace('k', "m"))
            .await
            .status,
        201
    );
}

async fn replayed_event_batch_is_counted_once(engine: Engine) {
    let lab = Lab::start(engine);
    let host = lab.host().await;
    let batch = json!([event(1, "offered"), event(2, "download_started")]);
    let first = lab.events(&host, batch.clone()).await;
    assert_eq!(
        first.body,
        json!({"accepted": 2, "duplicates": 0, "last_seq": 2})
    );
    let replay = lab.events(&host, batch).await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(
        replay.body,
        json!({"accepted": 0, "duplicates": 2, "last_seq": 2})
    );
    assert_eq!(
        lab.detail(&host.0).await["events"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

async fn out_of_order_seqs_are_stored(engine: Engine) {
    let lab = Lab::start(engine);
    let host = lab.host().await;
    let a = lab.events(&host, json!([event(3, "failed")])).await;
    assert_eq!(a.body["last_seq"], 3);
    let a = lab
        .events(&host, json!([event(2, "installed"), event(1, "offered")]))
        .await;
    assert_eq!(
        a.body,
        json!({"accepted": 2, "duplicates": 0, "last_seq": 3})
    );
    let d = lab.detail(&host.0).await;
    let seqs: Vec<u64> = d["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 2, 1]);
    assert_eq!(d["state"], "failed", "the state follows the highest seq");
    let a = lab.events(&host, json!([event(0, "offered")])).await;
    assert_eq!(a.status, 400, "seq 0: {}", a.body);
}

async fn oversized_body_is_413(engine: Engine) {
    let lab = Lab::start(engine);
    let host = lab.host().await;
    let mut body = report("1.0.0");
    body["health"] = json!("x".repeat(2 << 20));
    let a = lab.check_in(&host, &body).await;
    assert_eq!(a.status, 413, "{}", a.body);
    let big: Vec<Value> = (1..=2)
        .map(|s| json!({"seq": s, "type": "failed", "time": "t", "message": "m".repeat(3 << 20)}))
        .collect();
    let a = lab.events(&host, json!(big)).await;
    assert_eq!(a.status, 413, "{}", a.body);
    let d = lab.detail(&host.0).await;
    assert!(
        d["last_checkin"].is_null() && d["events"].as_array().unwrap().is_empty(),
        "{d}"
    );
}

async fn malformed_json_is_400(engine: Engine) {
    let lab = Lab::start(engine);
    let host = lab.host().await;
    for (url, token) in [
        (lab.server.api().checkin(&host.0), host.1.as_str()),
        (lab.server.api().host_events(&host.0), host.1.as_str()),
        (lab.server.api().tokens(), TOKEN),
        (lab.server.api().enrollment_tokens(), TOKEN),
    ] {
        let a = lab
            .call(
                Method::POST,
                &url,
                Some(token),
                Some(b"{\"reason\": ".to_vec()),
            )
            .await;
        assert_eq!(a.status, 400, "{url}: {}", a.body);
    }
    assert!(lab.detail(&host.0).await["last_checkin"].is_null());
}

async fn unknown_field_is_400(engine: Engine) {
    let lab = Lab::start(engine);
    let host = lab.host().await;
    let mut body = report("1.0.0");
    body["colour"] = json!("blue");
    let a = lab.check_in(&host, &body).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body["error"].as_str().unwrap().contains("colour"),
        "{}",
        a.body
    );
    let mut e = event(1, "offered");
    e["extra"] = json!(1);
    assert_eq!(lab.events(&host, json!([e])).await.status, 400);
    let a = lab
        .post(
            &lab.server.api().tokens(),
            TOKEN,
            &json!({"name": "x", "scopes": ["read"], "admin": true}),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    let d = lab.detail(&host.0).await;
    assert!(
        d["last_checkin"].is_null() && d["events"].as_array().unwrap().is_empty(),
        "{d}"
    );
    let a = lab.get(&lab.server.api().tokens(), TOKEN).await;
    assert!(
        a.body["tokens"].as_array().unwrap().is_empty(),
        "{}",
        a.body
    );
}

async fn ten_thousand_labels_are_400(engine: Engine) {
    let lab = Lab::start(engine);
    let host = lab.host().await;
    let labels: serde_json::Map<String, Value> =
        (0..10_000).map(|i| (format!("k{i}"), json!("v"))).collect();
    let mut body = report("1.0.0");
    body["labels"] = Value::Object(labels.clone());
    let a = lab.check_in(&host, &body).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body["error"]
            .as_str()
            .unwrap()
            .contains(&MAX_LABELS.to_string()),
        "{}",
        a.body
    );
    let e = lab.enrollment_token(json!({"product": "quantix-os"})).await;
    let a = lab
        .post(&lab.server.api().enroll(), &e, &json!({"labels": labels}))
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(lab.detail(&host.0).await["last_checkin"].is_null());
    assert_eq!(lab.hosts("").await.len(), 1);
}

async fn one_megabyte_message_is_cut_to_max_message(engine: Engine) {
    let lab = Lab::start(engine);
    let host = lab.host().await;
    let mut e = event(1, "failed");
    e["message"] = json!("é".repeat(500_000));
    let a = lab.events(&host, json!([e])).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let d = lab.detail(&host.0).await;
    let m = d["events"][0]["message"].as_str().unwrap();
    assert!(m.len() <= MAX_MESSAGE, "{}", m.len());
    assert!(
        m.ends_with("[cut from 1000000 bytes]"),
        "{}",
        &m[m.len() - 40..]
    );
    let mut body = report("1.0.0");
    body["last_result"] = json!({"version": "1.0.0", "outcome": "failed", "message": "x".repeat(1_000_000), "time": "t"});
    assert_eq!(lab.check_in(&host, &body).await.status, 200);
}

async fn too_many_events_in_a_batch_is_400(engine: Engine) {
    let lab = Lab::start(engine);
    let host = lab.host().await;
    let events: Vec<Value> = (1..=MAX_EVENTS_PER_BATCH as u64 + 1)
        .map(|s| event(s, "offered"))
        .collect();
    let a = lab.events(&host, json!(events)).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(lab.detail(&host.0).await["events"]
        .as_array()
        .unwrap()
        .is_empty());
}

async fn host_list_filters_and_pages(engine: Engine) {
    let lab = Lab::start(engine);
    let e = lab
        .enrollment_token(json!({"product": "quantix-os", "uses": 10}))
        .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let site = if i % 2 == 0 { "lab" } else { "field" };
        let host = lab.enroll(&e, json!({"site": site})).await;
        let mut body = report(if i < 3 { "1.0.0" } else { "2.0.0" });
        body["channel"] = json!(if i == 4 { "beta" } else { "stable" });
        body["labels"] = json!({"site": site});
        assert_eq!(lab.check_in(&host, &body).await.status, 200);
        ids.push(host);
    }
    lab.events(&ids[0], json!([event(1, "failed")])).await;
    let l = &lab;
    let count = |q: &'static str| async move { l.hosts(q).await.len() };
    assert_eq!(count("product=quantix-os").await, 5);
    assert_eq!(count("product=other").await, 0);
    assert_eq!(count("channel=beta").await, 1);
    assert_eq!(count("version=2.0.0").await, 2);
    assert_eq!(count("label=site%3Dlab").await, 3);
    assert_eq!(count("label=site!%3Dlab").await, 2);
    assert_eq!(count("label=site%3Dlab&label=site!%3Dlab").await, 0);
    assert_eq!(count("state=failed").await, 1);
    let mut seen = Vec::new();
    let mut query = "limit=2".to_owned();
    loop {
        let a = lab.get(&lab.server.api().hosts(&query), TOKEN).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let page = a.body["hosts"].as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|h| h["id"].as_str().unwrap().to_owned()));
        match a.body["next"].as_str() {
            Some(c) => query = format!("limit=2&cursor={}", qx_core::api::encode(c)),
            None => break,
        }
    }
    let mut want: Vec<String> = ids.iter().map(|h| h.0.clone()).collect();
    want.sort();
    seen.sort();
    assert_eq!(seen, want, "every host exactly once");
    for bad in [
        "limit=1001",
        "limit=0",
        "state=happy",
        "label=site",
        "colour=red",
    ] {
        let a = lab.get(&lab.server.api().hosts(bad), TOKEN).await;
        assert_eq!(a.status, 400, "{bad}: {}", a.body);
    }
}

async fn labels_patch_sets_and_removes(engine: Engine) {
    let lab = Lab::start(engine);
    let host = lab.host().await;
    let url = lab.server.api().host(&host.0);
    let patch = |body: Value| serde_json::to_vec(&body).unwrap();
    let a = lab
        .call(
            Method::PATCH,
            &url,
            Some(TOKEN),
            Some(patch(json!({"labels": {"ring": "canary", "rack": "3"}}))),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["labels"], json!({"ring": "canary", "rack": "3"}));
    let a = lab
        .call(
            Method::PATCH,
            &url,
            Some(TOKEN),
            Some(patch(json!({"labels": {"rack": null}}))),
        )
        .await;
    assert_eq!(a.body["labels"], json!({"ring": "canary"}));
    let many: serde_json::Map<String, Value> = (0..MAX_LABELS)
        .map(|i| (format!("k{i}"), json!("v")))
        .collect();
    let a = lab
        .call(
            Method::PATCH,
            &url,
            Some(TOKEN),
            Some(patch(json!({"labels": many}))),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    let a = lab
        .call(
            Method::PATCH,
            &url,
            Some(TOKEN),
            Some(patch(json!({"labels": {"bad key": "v"}}))),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(
        lab.detail(&host.0).await["labels"],
        json!({"ring": "canary"}),
        "nothing changed"
    );
    let unknown = lab.server.api().host("0123456789abcdef");
    let a = lab
        .call(
            Method::PATCH,
            &unknown,
            Some(TOKEN),
            Some(patch(json!({"labels": {}}))),
        )
        .await;
    assert_eq!(a.status, 404, "{}", a.body);
}

/// Creates an operator token through the API (bootstrap admin); returns its secret.
pub(crate) async fn operator_token(lab: &Lab, name: &str, scopes: Value) -> String {
    let a = lab
        .post(
            &lab.server.api().tokens(),
            TOKEN,
            &json!({"name": name, "scopes": scopes}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["name"], name);
    a.body["token"].as_str().unwrap().to_owned()
}

async fn operator_token_scopes_are_enforced(engine: Engine) {
    let lab = Lab::start(engine);
    let read = operator_token(&lab, "alice", json!(["read"])).await;
    let admin = operator_token(&lab, "root", json!(["admin"])).await;
    let api = lab.server.api();
    assert_eq!(lab.get(&api.hosts(""), &read).await.status, 200);
    let a = lab
        .post(
            &api.tokens(),
            &read,
            &json!({"name": "eve", "scopes": ["admin"]}),
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.body["error"].as_str().unwrap().contains("alice"),
        "{}",
        a.body
    );
    let a = lab
        .post(
            &api.enrollment_tokens(),
            &read,
            &json!({"product": "quantix-os"}),
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = lab
        .post(
            &api.tokens(),
            &admin,
            &json!({"name": "alice", "scopes": ["read"]}),
        )
        .await;
    assert_eq!(a.status, 409, "a taken name: {}", a.body);
    let listed = lab.get(&api.tokens(), &admin).await;
    let names: Vec<&str> = listed.body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{}", listed.body);
    assert!(
        listed.body.to_string().find(&read).is_none(),
        "secrets are never listed"
    );
    let a = lab
        .call(Method::DELETE, &api.token("alice"), Some(&admin), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = lab.get(&api.hosts(""), &read).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(
        a.body["error"].as_str().unwrap().contains("revoked"),
        "{}",
        a.body
    );
    let a = lab
        .call(Method::DELETE, &api.token("alice"), Some(&admin), None)
        .await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(lab.get(&api.hosts(""), "unknown").await.status, 401);
}

async fn publish_accepts_an_operator_token_with_publish_scope(engine: Engine) {
    let lab = Lab::start(engine);
    let publisher = operator_token(&lab, "ci", json!(["publish"])).await;
    let reader = operator_token(&lab, "viewer", json!(["read"])).await;
    let signer = Signer::new();
    let release = Release::new(&signer, "quantix-os", "stable", "1.0.0");
    let url = format!("{}/api/v1/quantix-os/publish", lab.server.url());
    let send = |token: String| {
        let form = release.form();
        let url = url.clone();
        async move {
            client()
                .post(url)
                .bearer_auth(token)
                .multipart(form)
                .send()
                .await
                .unwrap()
        }
    };
    expect_error(send(reader).await, 403).await;
    let res = send(publisher.clone()).await;
    assert_eq!(
        res.status(),
        201,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let a = lab.get(&lab.server.api().hosts(""), &publisher).await;
    assert_eq!(a.status, 200, "publish includes read: {}", a.body);
    let a = lab.get(&lab.server.api().tokens(), &publisher).await;
    assert_eq!(a.status, 403, "{}", a.body);
}

async fn overload_answers_429_with_retry_after(engine: Engine) {
    let lab = Lab::start_with(engine, |c| {
        c.fleet.rate_limit = 1;
        c.fleet.rate_burst = 3;
    });
    let host = lab.host().await; // the enrollment takes one token
    assert_eq!(lab.check_in(&host, &report("1.0.0")).await.status, 200);
    assert_eq!(lab.check_in(&host, &report("1.0.0")).await.status, 200);
    let a = lab.check_in(&host, &report("2.0.0")).await;
    assert_eq!(a.status, 429, "{}", a.body);
    let secs: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    let bound = 1 + qx_server::fleet::limit::RETRY_SPREAD_S;
    assert!((1..=bound).contains(&secs), "{secs}");
    assert_eq!(a.body["details"][0]["retry_after_s"], secs);
    assert_eq!(
        lab.detail(&host.0).await["versions"]["qx-node"],
        "1.0.0",
        "nothing stored"
    );
    assert_eq!(
        lab.get(&lab.server.api().hosts(""), TOKEN).await.status,
        200,
        "operators are not limited"
    );
    lab.clock.advance(Duration::from_secs(1));
    assert_eq!(lab.check_in(&host, &report("2.0.0")).await.status, 200);
}

async fn whoami_names_the_token_and_its_scopes(engine: Engine) {
    let lab = Lab::start(engine);
    let url = lab.server.api().whoami();
    let a = lab.get(&url, TOKEN).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"name": "PUBLISH_TOKEN", "scopes": ["admin"]})
    );
    let viewer = operator_token(&lab, "viewer", json!(["read"])).await;
    let a = lab.get(&url, &viewer).await;
    assert_eq!(a.body, json!({"name": "viewer", "scopes": ["read"]}));
    let a = lab.get(&url, "not-a-token").await;
    assert_eq!(a.status, 401, "{}", a.body);
    let a = lab.call(Method::GET, &url, None, None).await;
    assert_eq!(a.status, 401, "{}", a.body);
}
