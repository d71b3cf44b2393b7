//! The fleet's metrics (docs/spec.md §9): after a scripted enrollment, check-ins and event
//! batches through the API, `/metrics` shows the exact counts. SQLite in the quick tier,
//! PostgreSQL in the slow tier.

use std::sync::Arc;

use qx_server::config::FleetDatabase;
use qx_server::fleet::clock::ManualClock;
use qx_server::Config;
use qx_testkit::server::TestServer;
use serde_json::{json, Value};

use crate::support::{client, TOKEN};

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;

fn start(postgres: bool) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.publish_token = TOKEN.to_owned();
    config.token_is_default = false;
    if postgres {
        config.fleet.database = FleetDatabase::Postgres(qx_testkit::postgres::database().url);
    }
    let server = TestServer::start_with_clock(config, Arc::new(ManualClock::new(T0))).unwrap();
    (server, dir)
}

async fn post(url: &str, token: &str, body: &Value, want: u16) -> Value {
    let res = client()
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await;
    let res = res.expect("send");
    let status = res.status().as_u16();
    let body: Value = res.json().await.expect("JSON body");
    assert_eq!(status, want, "{url}: {body}");
    body
}

fn report(reason: &str, version: &str) -> Value {
    json!({
        "reason": reason,
        "agent_version": "0.1.0",
        "channel": "stable",
        "installed": {"qx-node": version},
        "uptime_s": 5,
    })
}

fn batch(events: &[(u64, &str)]) -> Value {
    let events: Vec<Value> = events
        .iter()
        .map(|(seq, kind)| json!({"seq": seq, "type": kind, "time": "2026-01-01T00:00:00Z"}))
        .collect();
    json!({ "events": events })
}

/// Three hosts: two check in on 1.0.0 (one of them also after a boot), one on 1.1.0; one
/// reports an update to confirmation, replays that batch, one reports a failure.
async fn metrics_count_checkins_events_and_hosts(postgres: bool) {
    let (server, _dir) = start(postgres);
    let api = server.api();
    let enrollment = post(
        &api.enrollment_tokens(),
        TOKEN,
        &json!({"product": "quantix-os", "uses": 3}),
        201,
    )
    .await;
    let enrollment = enrollment["token"].as_str().unwrap();
    let mut hosts = Vec::new();
    for _ in 0..3 {
        let id = post(&api.enroll(), enrollment, &json!({}), 201).await;
        let host = id["host_id"].as_str().unwrap().to_owned();
        hosts.push((host, id["host_token"].as_str().unwrap().to_owned()));
    }
    let [(a, a_token), (b, b_token), (c, c_token)] = &hosts[..] else {
        panic!("three hosts");
    };
    for (id, token, reason, version) in [
        (a, a_token, "boot", "1.0.0"),
        (a, a_token, "check", "1.0.0"),
        (b, b_token, "check", "1.0.0"),
        (c, c_token, "check", "1.1.0"),
    ] {
        post(&api.checkin(id), token, &report(reason, version), 200).await;
    }
    let update = batch(&[(1, "offered"), (2, "download_started"), (3, "confirmed")]);
    let first = post(&api.host_events(a), a_token, &update, 200).await;
    assert_eq!(first["accepted"], 3, "{first}");
    let replay = post(&api.host_events(a), a_token, &update, 200).await;
    assert_eq!(replay["duplicates"], 3, "{replay}");
    post(&api.host_events(b), b_token, &batch(&[(1, "failed")]), 200).await;

    let text = client().get(api.metrics()).send().await.unwrap();
    let text = text.text().await.unwrap();
    let os = r#"product="quantix-os""#;
    for line in [
        r#"qx_fleet_checkins_total{reason="boot"} 1"#.to_owned(),
        r#"qx_fleet_checkins_total{reason="check"} 3"#.to_owned(),
        r#"qx_fleet_events_total{type="offered"} 2"#.to_owned(),
        r#"qx_fleet_events_total{type="download_started"} 2"#.to_owned(),
        r#"qx_fleet_events_total{type="confirmed"} 2"#.to_owned(),
        r#"qx_fleet_events_total{type="failed"} 1"#.to_owned(),
        "qx_fleet_duplicate_events_total 3".to_owned(),
        r#"qx_fleet_ingest_seconds_count{kind="checkin"} 4"#.to_owned(),
        r#"qx_fleet_ingest_seconds_count{kind="events"} 3"#.to_owned(),
        format!(r#"qx_fleet_hosts{{{os},channel="stable",component="qx-node",version="1.0.0"}} 2"#),
        format!(r#"qx_fleet_hosts{{{os},channel="stable",component="qx-node",version="1.1.0"}} 1"#),
        format!(r#"qx_fleet_hosts_by_state{{{os},state="confirmed"}} 1"#),
        format!(r#"qx_fleet_hosts_by_state{{{os},state="failed"}} 1"#),
        format!(r#"qx_fleet_hosts_by_state{{{os},state="idle"}} 1"#),
        r#"qx_fleet_hosts_by_liveness{liveness="online"} 3"#.to_owned(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line} in:\n{text}"
        );
    }
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("qx_fleet_hosts{"))
            .count(),
        2,
        "{text}"
    );
}

#[tokio::test]
async fn sqlite_metrics_count_checkins_events_and_hosts() {
    metrics_count_checkins_events_and_hosts(false).await;
}

#[tokio::test]
#[ignore = "slow tier: needs a PostgreSQL server; `cargo xtask test` installs one and runs it"]
async fn postgres_metrics_count_checkins_events_and_hosts() {
    metrics_count_checkins_events_and_hosts(true).await;
}
