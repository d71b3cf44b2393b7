//! The dashboard (`/ui`) and what it reads: the fleet summary and the change stream (quick
//! tier, real server on loopback), then the page itself in a real headless Chromium (slow
//! tier; `qx_testkit::browser`), over a fleet each test makes through the API with the
//! injected clock. Screenshots go to `<target>/test-artifacts/dashboard-*.png`.

use std::time::Duration;

use fantoccini::{Client, Locator};
use qx_core::fleet::{FleetSummary, Liveness, Scope};
use qx_core::Sha256;
use qx_server::config::DEFAULT_FLEET_DB;
use qx_server::fleet::store::NewOperatorToken;
use qx_testkit::browser::{click, displayed, save_screenshot, sign_in, text, wait_for, Driver};
use serde_json::{json, Value};

use crate::fleet_api::{event, operator_token, report, Engine, Lab, INTERVAL_S, T0};
use crate::support::*;

/// The most a change event may take to arrive on the stream (a bounded wait, not a pace).
const STREAM_WAIT: Duration = Duration::from_secs(30);

/// The fleet of the overview tests: `late` checked in at T0 and is overdue now; `a` runs
/// 1.0.0, `b` 1.1.0 (confirmed), `c` 1.2.0 (failed with a message), `d` 1.1.0.
struct Fleet {
    late: (String, String),
    a: (String, String),
    c: (String, String),
}

const FAILURE: &str = "disk full at /data";

async fn make_fleet(lab: &Lab) -> Fleet {
    let e = lab
        .enrollment_token(json!({"product": "quantix-os", "uses": 10}))
        .await;
    let late = lab.enroll(&e, json!({})).await;
    assert_eq!(lab.check_in(&late, &report("1.0.0")).await.status, 200);
    // Past the longest interval (+10 %) and its grace: overdue, not yet offline.
    lab.clock
        .advance(Duration::from_secs(INTERVAL_S * 11 / 10 + INTERVAL_S + 10));
    let mut hosts = Vec::new();
    for version in ["1.0.0", "1.1.0", "1.2.0", "1.1.0"] {
        let h = lab.enroll(&e, json!({})).await;
        assert_eq!(lab.check_in(&h, &report(version)).await.status, 200);
        hosts.push(h);
    }
    let [a, b, c, _d] = <[_; 4]>::try_from(hosts).unwrap();
    assert_eq!(
        lab.events(&b, json!([event(1, "confirmed")])).await.status,
        200
    );
    let mut failed = event(2, "failed");
    failed["stage"] = json!("install");
    failed["message"] = json!(FAILURE);
    let batch = json!([event(1, "install_started"), failed]);
    assert_eq!(lab.events(&c, batch).await.status, 200);
    Fleet { late, a, c }
}

async fn summary(lab: &Lab, token: &str) -> FleetSummary {
    let a = lab.get(&lab.server.api().fleet_summary(), token).await;
    assert_eq!(a.status, 200, "{}", a.body);
    serde_json::from_value(a.body).unwrap()
}

fn hosts_at(s: &FleetSummary, version: &str) -> u64 {
    s.by_version
        .iter()
        .filter(|v| v.component == "qx-node" && v.version == version)
        .map(|v| v.hosts)
        .sum()
}

fn live(s: &FleetSummary, l: Liveness) -> u64 {
    s.by_liveness
        .iter()
        .find(|c| c.liveness == l)
        .map_or(0, |c| c.hosts)
}

async fn summary_counts_the_fleet(engine: Engine) {
    let lab = Lab::start(engine);
    let fleet = make_fleet(&lab).await;
    let reader = operator_token(&lab, "viewer", json!(["read"])).await;
    let s = summary(&lab, &reader).await;
    assert_eq!(
        [
            hosts_at(&s, "1.0.0"),
            hosts_at(&s, "1.1.0"),
            hosts_at(&s, "1.2.0")
        ],
        [2, 2, 1]
    );
    assert_eq!(live(&s, Liveness::Online), 4);
    assert_eq!(live(&s, Liveness::Overdue), 1);
    assert_eq!(live(&s, Liveness::Offline), 0);
    let stable: u64 = s
        .by_channel
        .iter()
        .filter(|c| c.channel == "stable")
        .map(|c| c.hosts)
        .sum();
    assert_eq!(stable, 5);
    let state = |name: &str| {
        s.by_state
            .iter()
            .find(|c| c.state == name)
            .map_or(0, |c| c.hosts)
    };
    assert_eq!((state("failed"), state("confirmed")), (1, 1));
    assert_eq!(s.recent_failures.len(), 1, "{:?}", s.recent_failures);
    let f = &s.recent_failures[0];
    assert_eq!(
        (f.kind.as_str(), f.message.as_str(), f.count),
        ("failed", FAILURE, 1)
    );

    // Decommissioned hosts leave the counts; failures older than the window leave the list.
    let gone = lab
        .call(
            reqwest::Method::DELETE,
            &lab.server.api().host(&fleet.late.0),
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    lab.clock.advance(Duration::from_secs(25 * 3600));
    let s = summary(&lab, TOKEN).await;
    assert_eq!(hosts_at(&s, "1.0.0"), 1);
    assert_eq!(live(&s, Liveness::Overdue), 0, "{:?}", s.by_liveness);
    assert!(s.recent_failures.is_empty(), "{:?}", s.recent_failures);
}

#[tokio::test]
async fn summary_counts_versions_channels_states_liveness_and_failures() {
    summary_counts_the_fleet(Engine::Sqlite).await;
}

#[tokio::test]
#[ignore = "slow tier: needs a PostgreSQL server; `cargo xtask test` installs one and runs it"]
async fn summary_counts_versions_channels_states_liveness_and_failures_on_postgres() {
    summary_counts_the_fleet(Engine::Postgres).await;
}

/// An operator token whose stored scopes hold no `read` (every scope the API creates
/// includes it, so it is written into the store directly).
async fn token_without_read(lab: &Lab) -> String {
    let db = lab.server.release_dir().join(DEFAULT_FLEET_DB);
    let store = qx_server::fleet::connect(db.to_str().unwrap())
        .await
        .unwrap();
    let secret = "a-token-with-no-scope";
    store
        .create_operator_token(NewOperatorToken {
            name: "noscope".into(),
            scopes: Vec::<Scope>::new(),
            hash: Sha256::of(secret.as_bytes()),
            now: T0,
        })
        .await
        .unwrap();
    secret.to_owned()
}

#[tokio::test]
async fn summary_and_change_stream_need_a_read_token() {
    let lab = Lab::start(Engine::Sqlite);
    let no_read = token_without_read(&lab).await;
    for url in [
        lab.server.api().fleet_summary(),
        lab.server.api().fleet_events(),
    ] {
        let a = lab.call(reqwest::Method::GET, &url, None, None).await;
        assert_eq!(a.status, 401, "{url}: {}", a.body);
        let a = lab.get(&url, "not-a-token").await;
        assert_eq!(a.status, 401, "{url}: {}", a.body);
        let a = lab.get(&url, &no_read).await;
        assert_eq!(a.status, 403, "{url}: {}", a.body);
        assert!(
            a.body["error"].as_str().unwrap().contains("read"),
            "{}",
            a.body
        );
    }
}

/// Reads the stream until an event named `name` arrives; returns its data.
async fn next_event(stream: &mut reqwest::Response, buffer: &mut String, name: &str) -> Value {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if event == name {
                return serde_json::from_str(&data).unwrap();
            }
            continue;
        }
        let chunk = tokio::time::timeout(STREAM_WAIT, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {name} event within {STREAM_WAIT:?}"))
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn change_stream_tells_each_check_in_event_batch_and_decommission() {
    let lab = Lab::start(Engine::Sqlite);
    let reader = operator_token(&lab, "viewer", json!(["read"])).await;
    let host = lab.host().await;
    let mut stream = client()
        .get(lab.server.api().fleet_events())
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let kind = stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("text/event-stream"), "{kind}");
    let mut buf = String::new();
    next_event(&mut stream, &mut buf, "ready").await;

    assert_eq!(lab.check_in(&host, &report("1.0.0")).await.status, 200);
    let c = next_event(&mut stream, &mut buf, "change").await;
    assert_eq!(c, json!({"kind": "checkin", "host": host.0}));
    assert_eq!(
        lab.events(&host, json!([event(1, "offered")])).await.status,
        200
    );
    let c = next_event(&mut stream, &mut buf, "change").await;
    assert_eq!(c, json!({"kind": "events", "host": host.0}));
    let gone = lab
        .call(
            reqwest::Method::DELETE,
            &lab.server.api().host(&host.0),
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(gone.status, 200);
    let c = next_event(&mut stream, &mut buf, "change").await;
    assert_eq!(c, json!({"kind": "decommission", "host": host.0}));
}

#[tokio::test]
async fn change_stream_ends_cleanly_when_the_server_stops() {
    let lab = Lab::start(Engine::Sqlite);
    let mut stream = client()
        .get(lab.server.api().fleet_events())
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut buf = String::new();
    next_event(&mut stream, &mut buf, "ready").await;
    // Stopping the server (the drop waits for it): the stream must end as a complete response,
    // not be cut when the graceful shutdown gives up on it.
    drop(lab);
    let end = tokio::time::timeout(STREAM_WAIT, async {
        loop {
            match stream.chunk().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ended");
    assert!(
        matches!(end, Ok(None)),
        "the stream was cut instead of ended: {end:?}"
    );
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_without_a_token() {
    let lab = Lab::start(Engine::Sqlite);
    for (path, kind) in [
        (qx_core::api::server::UI, "text/html"),
        (qx_core::api::server::UI_COMMON_SCRIPT, "text/javascript"),
        (qx_core::api::server::UI_SCRIPT, "text/javascript"),
        (qx_core::api::server::UI_STYLE, "text/css"),
    ] {
        let res = get(&lab.server, path).await;
        assert_eq!(res.status(), 200, "{path}");
        let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        let csp = res.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
    }
    let common = get(&lab.server, qx_core::api::server::UI_COMMON_SCRIPT).await;
    assert_eq!(
        common.text().await.unwrap(),
        qx_core::api::COMMON_JS,
        "the shared script, as embedded"
    );
}

// ---- The page in headless Chromium (slow tier) ----

async fn open_dashboard(driver: &Driver, profile: &std::path::Path, lab: &Lab) -> Client {
    let client = driver.browser(profile).await;
    client.goto(&lab.server.api().ui()).await.unwrap();
    assert_eq!(
        client.title().await.unwrap(),
        "Fleet · Quantix update server"
    );
    client
}

async fn cell_text(client: &Client, table: &str, key: &str, col: &str) -> Option<String> {
    text(client, &format!("#{table} tr[data-key=\"{key}\"] {col}")).await
}

pub(crate) async fn wait_text(client: &Client, what: &str, css: &str, want: &str) {
    let (css, want) = (css.to_owned(), want.to_owned());
    wait_for(client, what, |c| {
        let (css, want) = (css.clone(), want.clone());
        async move { text(&c, &css).await.is_some_and(|t| t.contains(&want)) }
    })
    .await;
}

async fn wait_count(client: &Client, version: &str, want: &str) {
    let css = format!("#versions-table tr[data-key=\"quantix-os/qx-node/{version}\"] td.count");
    wait_text(client, &format!("{want} hosts at {version}"), &css, want).await;
}

#[tokio::test]
#[ignore = "slow tier: needs a browser; `cargo xtask test` runs it"]
async fn dashboard_shows_the_fleet_a_host_and_a_live_check_in() {
    let lab = Lab::start(Engine::Sqlite);
    let fleet = make_fleet(&lab).await;
    let reader = operator_token(&lab, "viewer", json!(["read"])).await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let client = open_dashboard(&driver, profile.path(), &lab).await;

    sign_in(&client, "not-the-token").await;
    wait_text(&client, "the refusal", "#token-message", "not accepted").await;
    assert!(!displayed(&client, "#app").await);
    sign_in(&client, &reader).await;

    wait_count(&client, "1.0.0", "2").await;
    wait_count(&client, "1.1.0", "2").await;
    wait_count(&client, "1.2.0", "1").await;
    assert_eq!(text(&client, "#count-total").await.as_deref(), Some("5"));
    assert_eq!(text(&client, "#count-online").await.as_deref(), Some("4"));
    assert_eq!(text(&client, "#count-overdue").await.as_deref(), Some("1"));
    assert_eq!(text(&client, "#count-offline").await.as_deref(), Some("0"));
    let failure = cell_text(&client, "failures-table", &format!("failed/{FAILURE}"), "")
        .await
        .unwrap();
    assert!(
        failure.contains(FAILURE) && failure.ends_with('1'),
        "{failure}"
    );
    let state = cell_text(&client, "states-table", "quantix-os/failed", "td.count").await;
    assert_eq!(state.as_deref(), Some("1"));
    wait_text(
        &client,
        "the overdue host",
        "#late-table tbody",
        &fleet.late.0,
    )
    .await;
    let late = cell_text(&client, "late-table", &fleet.late.0, "")
        .await
        .unwrap();
    assert!(late.contains("overdue"), "{late}");
    save_screenshot(&client, "dashboard-overview.png").await;

    // Live: a check-in made here moves host a from 1.0.0 to 1.2.0 without a reload.
    wait_for(&client, "the live stream", |c| async move {
        let Ok(e) = c.find(Locator::Css("#live")).await else {
            return false;
        };
        e.attr("data-state").await.ok().flatten().as_deref() == Some("live")
    })
    .await;
    client
        .execute("window.notReloaded = true; return true;", vec![])
        .await
        .unwrap();
    assert_eq!(lab.check_in(&fleet.a, &report("1.2.0")).await.status, 200);
    wait_count(&client, "1.2.0", "2").await;
    wait_count(&client, "1.0.0", "1").await;
    let same_page = client
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same_page, json!(true), "updated without a reload");

    // The failed host's page: versions, slots and its event timeline, newest first.
    let url = format!("{}#/hosts/{}", lab.server.api().ui(), fleet.c.0);
    client.goto(&url).await.unwrap();
    wait_text(
        &client,
        "the timeline",
        "#timeline tr[data-key=\"2\"]",
        FAILURE,
    )
    .await;
    let failed = text(&client, "#timeline tr[data-key=\"2\"]").await.unwrap();
    assert!(
        failed.contains("failed") && failed.contains("stage install"),
        "{failed}"
    );
    let first = text(&client, "#timeline tbody tr:first-child")
        .await
        .unwrap();
    assert!(first.starts_with('2'), "newest first: {first}");
    let started = text(&client, "#timeline tr[data-key=\"1\"]").await.unwrap();
    assert!(started.contains("install started"), "{started}");
    let version = cell_text(&client, "host-versions", "qx-node", "td.version").await;
    assert_eq!(version.as_deref(), Some("1.2.0"));
    let slot = cell_text(&client, "host-slots", "a", "").await.unwrap();
    assert!(slot.contains("1.2.0") && slot.contains("good"), "{slot}");
    save_screenshot(&client, "dashboard-host.png").await;
    client.close().await.unwrap();
}

/// The ids of the rows of the host table's page.
async fn page_ids(client: &Client) -> Vec<String> {
    let v = client
        .execute(
            "return [...document.querySelectorAll('#hosts-table tbody tr')].map(r => r.dataset.key);",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
#[ignore = "slow tier: needs a browser; `cargo xtask test` runs it"]
async fn dashboard_pages_through_250_hosts_and_filters_them() {
    let lab = Lab::start(Engine::Sqlite);
    let e = lab
        .enrollment_token(json!({"product": "quantix-os", "uses": 250}))
        .await;
    for i in 0..250 {
        let labels = if i % 5 == 0 {
            json!({"ring": "canary"})
        } else {
            json!({})
        };
        lab.enroll(&e, labels).await;
    }
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let client = open_dashboard(&driver, profile.path(), &lab).await;
    sign_in(&client, TOKEN).await;
    wait_text(&client, "the first page", "#page-info", "Hosts 1–50").await;
    assert_eq!(text(&client, "#count-total").await.as_deref(), Some("250"));

    let mut seen = std::collections::BTreeSet::new();
    for page in 0..5 {
        let first = page * 50 + 1;
        let want = format!("Hosts {first}–{}", first + 49);
        wait_text(&client, &want, "#page-info", &want).await;
        let ids = page_ids(&client).await;
        assert_eq!(ids.len(), 50, "page {page}");
        seen.extend(ids);
        if page < 4 {
            click(&client, "#next").await;
        }
    }
    assert_eq!(seen.len(), 250, "every host once");
    wait_text(&client, "the last page", "#page-info", "(last page)").await;
    let next_enabled = client
        .find(Locator::Css("#next"))
        .await
        .unwrap()
        .is_enabled()
        .await
        .unwrap();
    assert!(!next_enabled, "no page after the last");
    click(&client, "#prev").await;
    wait_text(&client, "the page before", "#page-info", "Hosts 151–200").await;
    save_screenshot(&client, "dashboard-hosts.png").await;

    let label = client.find(Locator::Css("#f-label")).await.unwrap();
    label.send_keys("ring=canary").await.unwrap();
    click(&client, "#f-apply").await;
    wait_text(
        &client,
        "the filtered page",
        "#page-info",
        "Hosts 1–50 (last page)",
    )
    .await;
    assert_eq!(page_ids(&client).await.len(), 50);
    client.close().await.unwrap();
}

#[tokio::test]
#[ignore = "slow tier: needs a browser; `cargo xtask test` runs it"]
async fn dashboard_with_ten_thousand_hosts_renders_one_page_of_them() {
    let lab = Lab::start(Engine::Sqlite);
    // Written into the store at once (enrolling them one by one over HTTP is what the fleet
    // API tests and the load generator do; here it would take minutes).
    let db = lab.server.release_dir().join(DEFAULT_FLEET_DB);
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000) \
         INSERT INTO hosts (id, token_hash, product, enrolled_at) \
         SELECT printf('h%05d', i), printf('t%05d', i), 'quantix-os', 0 FROM n",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let client = open_dashboard(&driver, profile.path(), &lab).await;
    sign_in(&client, TOKEN).await;
    wait_text(&client, "the first page", "#page-info", "Hosts 1–50").await;
    assert_eq!(
        text(&client, "#count-total").await.as_deref(),
        Some("10000")
    );
    assert_eq!(page_ids(&client).await.len(), 50);
    // One page of the fleet is in the document, never the fleet.
    let rows = client
        .execute("return document.querySelectorAll('tr').length;", vec![])
        .await
        .unwrap();
    assert!(
        rows.as_u64().unwrap() < 200,
        "{rows} table rows in the page"
    );
    save_screenshot(&client, "dashboard-10000-hosts.png").await;
    client.close().await.unwrap();
}
