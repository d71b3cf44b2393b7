//! The rollout and pin endpoints (docs/fleet-api.md): what operators read (status, list,
//! preview), and every bad input answered with its status and a sentence, each its own test.

use qx_core::channel::RolloutPolicy;
use qx_core::rollout::{draw, wave_of};
use reqwest::Method;
use serde_json::{json, Value};

use crate::fleet_api::{Answer, Engine};
use crate::rollouts::{one_wave, waves, Host, Rig, NEW, OLD, PRODUCT};
use crate::support::TOKEN;

/// A running single-wave rollout `one` and one enrolled host.
async fn rig() -> (Rig, Host) {
    let rig = one_wave(Engine::Sqlite, RolloutPolicy::default()).await;
    let host = rig.hosts(1, json!({})).await.remove(0);
    (rig, host)
}

async fn call(
    rig: &Rig,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let body = body.map(|b| serde_json::to_vec(&b).unwrap());
    rig.lab.call(method, url, token, body).await
}

fn rollout_url(rig: &Rig, id: &str, action: Option<&str>) -> String {
    rig.lab.server.api().rollout(PRODUCT, id, action)
}

/// An operator token with only the `read` scope.
async fn reader(rig: &Rig) -> String {
    let a = rig
        .lab
        .post(
            &rig.lab.server.api().tokens(),
            TOKEN,
            &json!({"name": "reader", "scopes": ["read"]}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.body["token"].as_str().unwrap().to_owned()
}

/// Each case: a request on a fresh rig, the status and a part of the error sentence.
macro_rules! bad_input {
    ($($name:ident: |$rig:ident, $host:ident| $req:expr => $status:expr, $text:expr;)*) => {$(
        #[tokio::test]
        async fn $name() {
            #[allow(unused_variables)]
            let ($rig, $host) = rig().await;
            let a: Answer = $req;
            assert_eq!(a.status, $status, "{}", a.body);
            let error = a.body["error"].as_str().unwrap_or("");
            assert!(error.contains($text), "{error:?} does not say {:?}", $text);
        }
    )*};
}

bad_input! {
    status_of_an_unknown_rollout_is_404: |rig, h|
        call(&rig, Method::GET, &rollout_url(&rig, "nope", None), Some(TOKEN), None).await
        => 404, "has no rollout nope";
    status_with_an_invalid_rollout_id_is_400: |rig, h|
        call(&rig, Method::GET, &rollout_url(&rig, "a.b", None), Some(TOKEN), None).await
        => 400, "rollout id";
    status_of_another_products_rollout_is_404: |rig, h|
        call(&rig, Method::GET, &rig.lab.server.api().rollout("other", "one", None), Some(TOKEN), None).await
        => 404, "product other has no rollout one";
    status_without_a_token_is_401: |rig, h|
        call(&rig, Method::GET, &rollout_url(&rig, "one", None), None, None).await
        => 401, "";
    list_with_an_invalid_channel_is_400: |rig, h|
        call(&rig, Method::GET, &rig.lab.server.api().rollouts(PRODUCT, Some("Bad Channel")), Some(TOKEN), None).await
        => 400, "channel";
    pause_with_a_read_token_is_403: |rig, h| {
        let t = reader(&rig).await;
        call(&rig, Method::POST, &rollout_url(&rig, "one", Some("pause")), Some(&t), None).await
    } => 403, "rollout";
    resume_of_a_running_rollout_is_409: |rig, h|
        call(&rig, Method::POST, &rollout_url(&rig, "one", Some("resume")), Some(TOKEN), None).await
        => 409, "only a paused or halted rollout can be resumed";
    pause_of_an_unknown_rollout_is_404: |rig, h|
        call(&rig, Method::POST, &rollout_url(&rig, "nope", Some("pause")), Some(TOKEN), None).await
        => 404, "has no rollout nope";
    abort_twice_is_409: |rig, h| {
        let url = rollout_url(&rig, "one", Some("abort"));
        assert_eq!(call(&rig, Method::POST, &url, Some(TOKEN), None).await.status, 200);
        call(&rig, Method::POST, &url, Some(TOKEN), None).await
    } => 409, "has ended already";
    preview_without_a_host_is_400: |rig, h|
        call(&rig, Method::GET, &rollout_url(&rig, "one", Some("preview")), Some(TOKEN), None).await
        => 400, "host query parameter is missing";
    preview_of_an_unknown_host_is_404: |rig, h|
        call(&rig, Method::GET, &rig.lab.server.api().rollout_preview(PRODUCT, "one", "nobody"), Some(TOKEN), None).await
        => 404, "host nobody is not enrolled";
    preview_of_an_unknown_rollout_is_404: |rig, h|
        call(&rig, Method::GET, &rig.lab.server.api().rollout_preview(PRODUCT, "nope", &h.id), Some(TOKEN), None).await
        => 404, "has no rollout nope";
    pin_with_host_and_selector_is_400: |rig, h|
        call(&rig, Method::POST, &rig.lab.server.api().pins(PRODUCT), Some(TOKEN),
             Some(json!({"host": h.id, "selector": "a=b", "version": OLD}))).await
        => 400, "exactly one of host and selector";
    pin_with_neither_host_nor_selector_is_400: |rig, h|
        call(&rig, Method::POST, &rig.lab.server.api().pins(PRODUCT), Some(TOKEN),
             Some(json!({"version": OLD}))).await
        => 400, "exactly one of host and selector";
    pin_with_an_invalid_version_is_400: |rig, h|
        call(&rig, Method::POST, &rig.lab.server.api().pins(PRODUCT), Some(TOKEN),
             Some(json!({"host": h.id, "version": "latest"}))).await
        => 400, "not a version";
    pin_with_an_invalid_selector_is_400: |rig, h|
        call(&rig, Method::POST, &rig.lab.server.api().pins(PRODUCT), Some(TOKEN),
             Some(json!({"selector": "site", "version": OLD}))).await
        => 400, "selector \"site\" is invalid";
    pin_of_an_unknown_host_is_404: |rig, h|
        call(&rig, Method::POST, &rig.lab.server.api().pins(PRODUCT), Some(TOKEN),
             Some(json!({"host": "nobody", "version": OLD}))).await
        => 404, "host nobody is not enrolled";
    pin_with_an_unknown_field_is_400: |rig, h|
        call(&rig, Method::POST, &rig.lab.server.api().pins(PRODUCT), Some(TOKEN),
             Some(json!({"host": h.id, "version": OLD, "until": "never"}))).await
        => 400, "unknown field";
    pin_on_an_unconfigured_channel_is_404: |rig, h|
        call(&rig, Method::POST, &rig.lab.server.api().pins(PRODUCT), Some(TOKEN),
             Some(json!({"host": h.id, "version": OLD, "channel": "nightly"}))).await
        => 404, "not configured";
    pin_with_a_read_token_is_403: |rig, h| {
        let t = reader(&rig).await;
        call(&rig, Method::POST, &rig.lab.server.api().pins(PRODUCT), Some(&t),
             Some(json!({"host": h.id, "version": OLD}))).await
    } => 403, "rollout";
    delete_of_an_unknown_pin_is_404: |rig, h|
        call(&rig, Method::DELETE, &rig.lab.server.api().pin(PRODUCT, "0123abcd"), Some(TOKEN), None).await
        => 404, "has no pin 0123abcd";
}

#[tokio::test]
async fn status_names_every_stage_and_counts_eligible_hosts_per_wave() {
    let mut rig = Rig::start(Engine::Sqlite, |_| {}).await;
    let w = waves(&[(10.0, 0), (100.0, 3_600_000)]);
    let plan = rig.plan("two", w.clone(), RolloutPolicy::default());
    rig.start_rollout(plan.clone()).await;
    let hosts = rig.hosts(30, json!({})).await;
    rig.check_in_all(&hosts).await;
    let in_first = hosts
        .iter()
        .filter(|h| wave_of(&w, draw(&plan.salt, &h.id).bucket, false) == Some(0))
        .count() as u64;
    let s = rig.status("two").await;
    assert_eq!(s["waves"][0]["eligible"], in_first, "{s}");
    assert_eq!(s["waves"][1]["eligible"], 30 - in_first, "{s}");
    assert_eq!(s["waves"][0]["gate"], "open");
    assert_eq!(s["waves"][1]["gate"], "waiting_time");
    assert_eq!(
        s["waves"][0]["stages"].as_object().unwrap().len(),
        10,
        "{s}"
    );
    assert_eq!(s["policy"]["gate"], 95.0);
    let list = rig
        .lab
        .get(
            &rig.lab.server.api().rollouts(PRODUCT, Some("stable")),
            TOKEN,
        )
        .await;
    assert_eq!(list.body["rollouts"][0]["id"], "two", "{}", list.body);
    let none = rig
        .lab
        .get(&rig.lab.server.api().rollouts(PRODUCT, Some("beta")), TOKEN)
        .await;
    assert_eq!(none.body["rollouts"], json!([]));
    let p = rig
        .lab
        .get(
            &rig.lab
                .server
                .api()
                .rollout_preview(PRODUCT, "two", &hosts[0].id),
            TOKEN,
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.body["bucket"], draw(&plan.salt, &hosts[0].id).bucket);
    assert_eq!(p.body["version"], NEW);
    assert!(
        p.body["summary"].as_str().unwrap().starts_with("wave "),
        "{}",
        p.body
    );
}

#[tokio::test]
async fn a_revert_aborts_and_hosts_report_reverted() {
    let mut rig = one_wave(Engine::Sqlite, RolloutPolicy::default()).await;
    let mut h = rig.hosts(1, json!({})).await.remove(0);
    rig.check_in(&h).await;
    rig.report(
        &mut h,
        &[
            "download_started",
            "download_done",
            "install_started",
            "installed",
            "confirmed",
        ],
    )
    .await;
    let v = qx_core::Version::parse(NEW).unwrap();
    rig.put(|s| qx_testkit::channel::revoke(s, &v, qx_core::channel::RevokeAction::Revert))
        .await;
    let s = rig.status("one").await;
    assert_eq!(s["state"], "aborted");
    assert!(
        s["ended_reason"].as_str().unwrap().starts_with("revert"),
        "{s}"
    );
    rig.report(&mut h, &["reverted"]).await;
    let s = rig.status("one").await;
    assert_eq!(s["waves"][0]["stages"]["reverted"], 1, "{s}");
}

#[tokio::test]
async fn the_version_becoming_current_completes_the_rollout() {
    let mut rig = one_wave(Engine::Sqlite, RolloutPolicy::default()).await;
    let v = qx_core::Version::parse(NEW).unwrap();
    rig.put(|s| s.current = v).await;
    let s = rig.status("one").await;
    assert_eq!(s["state"], "completed", "{s}");
}

/// The published bucket vectors (`crates/qx-core/tests/vectors/rollout_buckets.json`), as the
/// server's preview answers them: hosts stored with the vectors' ids, a plan with their salt.
#[tokio::test]
async fn the_preview_answers_the_published_bucket_vectors() {
    let vectors: Value = serde_json::from_str(include_str!(
        "../../../qx-core/tests/vectors/rollout_buckets.json"
    ))
    .unwrap();
    let mut rig = Rig::start(Engine::Sqlite, |_| {}).await;
    // `Rig::plan` salts with "salt-" and the id: the vectors of "salt-1".
    let plan = rig.plan("1", waves(&[(100.0, 0)]), RolloutPolicy::default());
    rig.start_rollout(plan).await;
    let enrollment = rig
        .lab
        .enrollment_token(json!({"product": PRODUCT, "uses": 100}))
        .await;
    let db = rig
        .lab
        .server
        .release_dir()
        .join(qx_server::config::DEFAULT_FLEET_DB);
    let store = qx_server::fleet::connect(db.to_str().unwrap())
        .await
        .unwrap();
    let mut checked = 0;
    for v in vectors["vectors"].as_array().unwrap() {
        if v["salt"] != "salt-1" {
            continue;
        }
        let id = v["host_id"].as_str().unwrap();
        let host = qx_server::fleet::store::NewHost {
            id: id.to_owned(),
            token_hash: qx_core::Sha256::of(format!("host-token-{id}").as_bytes()),
            hostname: None,
            labels: Default::default(),
            enrollment_key: None,
            now: crate::fleet_api::T0,
        };
        let token = qx_core::Sha256::of(enrollment.as_bytes());
        store.enroll(token, host).await.unwrap().unwrap();
        let url = rig.lab.server.api().rollout_preview(PRODUCT, "1", id);
        let a = rig.lab.get(&url, TOKEN).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["bucket"], v["bucket"], "host {id}: {}", a.body);
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} vectors of salt-1");
}
