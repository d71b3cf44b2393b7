//! What the agent did last, as the host API's status and the metrics tell it: the last check
//! and its result, the last apply, its result and who started it (host API, CLI), the bytes
//! downloaded, the daemon's schedule; the metrics textfile after real checks and applies, the
//! metrics endpoint, and the values after a restart. Real update server, sandboxed host.

use std::path::Path;

use serde_json::Value;

use crate::support::api::*;
use crate::support::host::{agent, dead_url, history, host_at_v1, qx_update};
use crate::support::runtime;

const TEXTFILE: &str = "/var/lib/node_exporter/textfile/qx_update.prom";

/// The status of the API, as JSON.
async fn status(api: &ApiServer) -> Value {
    let resp = api
        .get("/api/v1/updates/status")
        .send()
        .await
        .expect("status");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("status JSON")
}

/// Checks through the API; returns the answer's status.
async fn check(api: &ApiServer) -> u16 {
    let resp = api
        .get("/api/v1/updates/check")
        .send()
        .await
        .expect("check");
    resp.status().as_u16()
}

/// Posts an apply and follows the events to its end; returns the end snapshot.
async fn apply_through_the_api(api: &ApiServer) -> Value {
    let mut events = Events::new(
        api.get("/api/v1/updates/events")
            .send()
            .await
            .expect("events"),
    );
    events.next().await;
    let resp = api
        .post("/api/v1/updates/apply")
        .send()
        .await
        .expect("apply");
    assert_eq!(resp.status(), 202);
    events.until(&["done", "failed"]).await
}

#[test]
fn status_tells_the_last_check_the_last_apply_who_started_it_and_the_schedule() {
    let window = closed_window();
    let lab = daemon_lab(
        None,
        None,
        &format!("  auto_apply: true\n  maintenance_window: \"{window}\"\n"),
    );
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let fresh = status(&api).await;
        assert_eq!(fresh["last_check"], Value::Null, "{fresh}");
        assert_eq!(fresh["last_apply"], Value::Null, "{fresh}");
        assert_eq!(fresh["downloaded_bytes"], 0);
        let schedule = &fresh["schedule"];
        assert_eq!(schedule["enabled"], true, "{schedule}");
        assert_eq!(schedule["auto_apply"], true, "{schedule}");
        assert_eq!(schedule["auto_reboot"], false, "{schedule}");
        assert_eq!(schedule["next_check"], Value::Null, "no scheduler yet");
        let w = &schedule["maintenance_window"];
        assert_eq!(w["window"], window.as_str(), "{w}");
        assert_eq!(w["open"], false, "{w}");
        let opens: jiff::Timestamp = w["next_open"]
            .as_str()
            .expect("next opening")
            .parse()
            .expect("an RFC 3339 time");
        let now = jiff::Timestamp::now();
        assert!(
            opens > now && opens < now + jiff::SignedDuration::from_hours(4),
            "{w}"
        );

        // The scheduler's next check shows (it sets it the same way), in the status and at
        // once in the event stream.
        let mut events = Events::new(
            api.get("/api/v1/updates/events")
                .send()
                .await
                .expect("events"),
        );
        assert_eq!(events.next().await["schedule"]["next_check"], Value::Null);
        let next: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().expect("time");
        api.runner.set_next_check(Some(next));
        assert_eq!(
            events.next().await["schedule"]["next_check"],
            next.to_string()
        );
        assert_eq!(
            status(&api).await["schedule"]["next_check"],
            next.to_string()
        );

        assert_eq!(check(&api).await, 200);
        let checked = status(&api).await;
        let c = &checked["last_check"];
        assert_eq!(c["result"], "available", "{c}");
        assert_eq!(c["version"], "1.1.0", "{c}");
        assert!(
            c["time"]
                .as_str()
                .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
            "{c}"
        );

        let end = apply_through_the_api(&api).await;
        assert_eq!(state_of(&end), "done", "{end}");
        let applied = status(&api).await;
        let a = &applied["last_apply"];
        assert_eq!(a["result"], "success", "{a}");
        assert_eq!(a["version"], "1.1.0", "{a}");
        assert_eq!(a["started_by"], serde_json::json!({"via": "api"}), "{a}");
        assert!(a["operation_id"].is_string(), "{a}");
        let entry = applied["history"]
            .as_array()
            .and_then(|h| h.last())
            .expect("an entry");
        assert_eq!(
            entry["started_by"],
            serde_json::json!({"via": "api"}),
            "{entry}"
        );
        let downloaded = applied["downloaded_bytes"].as_u64().expect("a number");
        assert!(
            downloaded >= 1024,
            "the release's 1 KiB of noise at least: {downloaded}"
        );
        api.shutdown().await;
    });

    // A CLI apply that fails verification: recorded as failed, with its reason and the user.
    publish_release(&lab, "1.2.0", Some(vec!["/bin/false".into()]), 1024);
    let out = qx_update(lab.host.root())
        .args(["apply", "--yes"])
        .env("SUDO_USER", "alice")
        .output()
        .expect("run qx-update");
    assert!(!out.status.success(), "the apply fails its health check");
    let entry = history(lab.host.root()).pop().expect("an entry");
    assert_eq!(entry["version"], "1.2.0", "{entry}");
    assert_ne!(entry["outcome"], "success", "{entry}");
    assert_eq!(
        entry["started_by"],
        serde_json::json!({"via": "cli", "user": "alice"}),
        "{entry}"
    );
    runtime().block_on(async {
        // A new daemon on the same host: what the other process did is there.
        let api = ApiServer::start(agent(&lab), TOKEN);
        let s = status(&api).await;
        let a = &s["last_apply"];
        assert_eq!(a["result"], "failed", "{a}");
        assert_eq!(a["version"], "1.2.0", "{a}");
        assert_eq!(a["started_by"]["user"], "alice", "{a}");
        assert!(a["reason"].as_str().is_some_and(|r| !r.is_empty()), "{a}");
        assert!(a["code"].is_i64(), "{a}");
        api.shutdown().await;
    });
}

#[test]
fn a_failed_check_is_recorded_apart_from_the_last_apply() {
    let lab = qx_testkit::host::Lab::new().expect("lab");
    let dead = dead_url();
    write_config(&lab, None, &dead, "");
    host_at_v1(&lab);
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        assert_eq!(check(&api).await, 502);
        let s = status(&api).await;
        let c = &s["last_check"];
        assert_eq!(c["result"], "failed", "{c}");
        assert_eq!(c["code"], 11, "{c}");
        assert!(
            c["error"].as_str().is_some_and(|e| e.contains(&dead)),
            "{c}"
        );
        assert_eq!(s["last_apply"], Value::Null, "a check is not an apply: {s}");
        api.shutdown().await;
    });
}

/// The metrics file's lines.
fn textfile(root: &Path) -> String {
    std::fs::read_to_string(root.join(TEXTFILE.trim_start_matches('/'))).unwrap_or_default()
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// The value of the sample `name` (no labels).
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_follow_real_checks_and_applies_in_the_textfile_and_on_the_api_across_a_restart() {
    let lab = daemon_lab(
        None,
        None,
        &format!("  metrics: {{textfile: {TEXTFILE}}}\n"),
    );
    let root = lab.host.root();
    assert_eq!(textfile(root), "", "nothing written before the first check");

    let first = agent(&lab);
    first.check().expect("check");
    let text = textfile(root);
    for line in [
        "qx_update_last_check_success 1",
        "qx_update_available 1",
        "qx_update_last_check_info{result=\"available\",version=\"1.1.0\"} 1",
        "qx_update_downloaded_bytes_total 0",
        "qx_update_installed_info{component=\"qx-node\",version=\"1.0.0\"} 1",
    ] {
        assert!(has_line(&text, line), "{line} in\n{text}");
    }
    assert!(
        !text.contains("qx_update_last_apply"),
        "no apply yet:\n{text}"
    );

    first.apply(&Default::default()).expect("apply");
    let text = textfile(root);
    for line in [
        "qx_update_last_apply_success 1",
        "qx_update_last_apply_info{result=\"success\",version=\"1.1.0\",started_by=\"\"} 1",
        "qx_update_installed_info{component=\"qx-node\",version=\"1.1.0\"} 1",
        "qx_update_operation_in_progress 0",
    ] {
        assert!(has_line(&text, line), "{line} in\n{text}");
    }
    let downloaded = sample(&text, "qx_update_downloaded_bytes_total").expect("the counter");
    assert!(downloaded >= 1024, "{downloaded} bytes:\n{text}");
    let dir = root.join("var/lib/node_exporter/textfile");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .expect("the textfile directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["qx_update.prom"], "no temporary file left");

    // A restart: a new agent and daemon on the same host serve the same values.
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let resp = api
            .client
            .get(api.url("/api/v1/updates/metrics"))
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), 401, "the metrics need the token");
        let resp = api
            .get("/api/v1/updates/metrics")
            .send()
            .await
            .expect("metrics");
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        let served = resp.text().await.expect("text");
        assert_eq!(
            sample(&served, "qx_update_downloaded_bytes_total"),
            Some(downloaded)
        );
        assert!(
            has_line(&served, "qx_update_last_apply_success 1"),
            "{served}"
        );

        // A check of the new agent (nothing to download) keeps the counter.
        assert_eq!(check(&api).await, 200);
        api.shutdown().await;
    });
    let text = textfile(root);
    assert!(has_line(&text, "qx_update_available 0"), "{text}");
    assert_eq!(
        sample(&text, "qx_update_downloaded_bytes_total"),
        Some(downloaded)
    );
}
