//! The daemon's HTTPS API against a real update server on loopback and a sandboxed host with a
//! running service: each endpoint, authentication, 409 on a concurrent apply, and the status
//! transitions of a real apply observed through the server-sent events.

use qx_core::api::host;
use qx_testkit::host::Lab;
use serde_json::Value;

use crate::support::api::*;
use crate::support::host::{agent, dead_url, host_at_v1};
use crate::support::runtime;

#[test]
fn status_without_token_is_401() {
    let lab = daemon_lab(None, None, "");
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let resp = api
            .client
            .get(api.url("/api/v1/updates/status"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.headers()["www-authenticate"].to_str().unwrap(),
            "Bearer realm=\"qx-update\""
        );
        let (status, body) = error_body(resp).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"], "missing API token");
        api.shutdown().await;
    });
}

#[test]
fn every_endpoint_refuses_a_wrong_token() {
    let lab = daemon_lab(None, None, "");
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        for (method, path) in [
            ("GET", "/api/v1/updates/check"),
            ("POST", "/api/v1/updates/apply"),
            ("GET", "/api/v1/updates/status"),
            ("GET", "/api/v1/updates/events"),
            ("GET", "/api/v1/updates/nope"),
        ] {
            let req = match method {
                "GET" => api.client.get(api.url(path)),
                _ => api.client.post(api.url(path)),
            };
            let (status, body) =
                error_body(req.bearer_auth("wrong-token").send().await.unwrap()).await;
            assert_eq!(status, 401, "{method} {path}");
            assert_eq!(body["error"], "wrong API token", "{method} {path}");
        }
        // The wrong token did not start anything.
        assert_eq!(agent(&lab).status().history.len(), 0);
        api.shutdown().await;
    });
}

#[test]
fn token_in_query_string_is_not_accepted() {
    let lab = daemon_lab(None, None, "");
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let url = api.url(&format!("/api/v1/updates/events?token={TOKEN}"));
        let (status, _) = error_body(api.client.get(url).send().await.unwrap()).await;
        assert_eq!(status, 401);
        api.shutdown().await;
    });
}

#[test]
fn static_page_needs_no_token() {
    let lab = daemon_lab(None, None, "");
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        for path in host::PAGE_ROUTES {
            let ct = match path.rsplit_once('.') {
                Some((_, "js")) => "text/javascript",
                Some((_, "css")) => "text/css",
                _ => "text/html",
            };
            let resp = api.client.get(api.url(path)).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            let got = resp.headers()["content-type"].to_str().unwrap().to_string();
            assert!(got.starts_with(ct), "{path}: {got}");
            assert!(resp.headers().contains_key("content-security-policy"));
        }
        let text = |path: &str| {
            let req = api.client.get(api.url(path));
            async move { req.send().await.unwrap().text().await.unwrap() }
        };
        assert_eq!(
            text(host::PAGE_COMMON_SCRIPT).await,
            qx_core::api::COMMON_JS,
            "the shared script, as embedded"
        );
        assert!(text("/").await.contains("Check for Updates"));
        api.shutdown().await;
    });
}

#[test]
fn status_reports_installed_versions_and_idle_state() {
    let lab = daemon_lab(None, None, "");
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let resp = api.get("/api/v1/updates/status").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["state"]["state"], "idle");
        assert_eq!(body["product"], "quantix-os");
        assert_eq!(body["channel"], "dev");
        assert_eq!(body["installed"]["qx-node"], "1.0.0");
        assert_eq!(body["history"], Value::Array(vec![]));
        api.shutdown().await;
    });
}

#[test]
fn check_reports_the_offered_release_and_changes() {
    let lab = daemon_lab(None, None, "");
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let resp = api.get("/api/v1/updates/check").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["version"], "1.1.0");
        assert_eq!(body["available"], true);
        assert_eq!(body["channel"], "dev");
        assert_eq!(
            body["release_notes"],
            "Release 1.1.0: faster boots and bug fixes."
        );
        let changes = body["changes"].as_array().unwrap();
        let node = changes.iter().find(|c| c["name"] == "qx-node").unwrap();
        assert_eq!(node["installed"], "1.0.0");
        assert_eq!(node["offered"], "1.1.0");
        assert_eq!(node["action"], "update");
        let ui = changes.iter().find(|c| c["name"] == "host-ui").unwrap();
        assert_eq!(ui["installed"], Value::Null);
        assert_eq!(ui["action"], "install");
        // A check changes nothing on the host.
        assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
        api.shutdown().await;
    });
}

#[test]
fn check_with_unreachable_server_is_502_naming_the_server() {
    let lab = Lab::new().unwrap();
    let dead_url = dead_url();
    write_config(&lab, None, &dead_url, "");
    host_at_v1(&lab);
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let (status, body) =
            error_body(api.get("/api/v1/updates/check").send().await.unwrap()).await;
        assert_eq!(status, 502);
        assert_eq!(
            body["error"].as_str().unwrap(),
            format!("the update server at {dead_url} could not be reached")
        );
        let details = body["details"].as_array().unwrap();
        assert!(
            details[0]
                .as_str()
                .unwrap()
                .contains("/api/v1/quantix-os/channels/dev"),
            "{body}"
        );
        assert!(
            details
                .last()
                .unwrap()
                .as_str()
                .unwrap()
                .contains("check updates.server_url in"),
            "{body}"
        );
        assert_eq!(body["code"], 11);
        api.shutdown().await;
    });
}

#[test]
fn check_without_release_on_channel_is_404() {
    let lab = Lab::new().unwrap();
    write_config(&lab, None, lab.server.url(), "");
    host_at_v1(&lab);
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let (status, body) =
            error_body(api.get("/api/v1/updates/check").send().await.unwrap()).await;
        assert_eq!(status, 404);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("no release of quantix-os on channel dev"),
            "{body}"
        );
        api.shutdown().await;
    });
}

/// What an apply request with a bad body must get back: 400, and in the body at `pointer` a
/// text that is (or contains) `expect`.
struct BadApply {
    name: &'static str,
    body: BadBody,
    pointer: &'static str,
    expect: Expect,
}

enum BadBody {
    Raw(&'static str),
    Json(Value),
}

enum Expect {
    Is(&'static str),
    Contains(&'static str),
}

#[test]
fn apply_with_a_bad_body_is_400_and_changes_nothing() {
    let cases = [
        BadApply {
            name: "malformed body",
            body: BadBody::Raw("{not json"),
            pointer: "/error",
            expect: Expect::Is("the request body is not valid JSON for an apply"),
        },
        BadApply {
            name: "unknown field",
            body: BadBody::Json(serde_json::json!({"component": ["qx-node"]})),
            pointer: "/details/0",
            expect: Expect::Contains("unknown field `component`"),
        },
        BadApply {
            name: "invalid component name",
            body: BadBody::Json(serde_json::json!({"components": ["../etc"]})),
            pointer: "/error",
            expect: Expect::Is("component \"../etc\" is not a valid component name"),
        },
    ];
    let lab = daemon_lab(None, None, "");
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        for case in &cases {
            let name = case.name;
            let request = api.post("/api/v1/updates/apply");
            let request = match &case.body {
                BadBody::Raw(text) => request.body(*text),
                BadBody::Json(json) => request.json(json),
            };
            let (status, body) = error_body(request.send().await.unwrap()).await;
            assert_eq!(status, 400, "{name}: {body}");
            let got = body.pointer(case.pointer).and_then(Value::as_str);
            match case.expect {
                Expect::Is(want) => assert_eq!(got, Some(want), "{name}: {body}"),
                Expect::Contains(want) => {
                    assert!(got.is_some_and(|t| t.contains(want)), "{name}: {body}")
                }
            }
            assert_eq!(
                lab.host.version("qx-node").as_deref(),
                Some("1.0.0"),
                "{name}"
            );
        }
        api.shutdown().await;
    });
}

#[test]
fn apply_of_one_component_installs_only_it() {
    let lab = daemon_lab(None, None, "");
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let mut events = Events::new(api.get("/api/v1/updates/events").send().await.unwrap());
        assert_eq!(state_of(&events.next().await), "idle");
        let resp = api
            .post("/api/v1/updates/apply")
            .json(&serde_json::json!({"components": ["host-ui"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let last = events.until(&["done", "failed"]).await;
        assert_eq!(state_of(&last), "done", "{last}");
        assert_eq!(last["installed"]["host-ui"], "1.1.0");
        assert_eq!(last["installed"]["qx-node"], "1.0.0");
        api.shutdown().await;
    });
}

/// The main path: apply → 202 at once; the events show every step in order; a second apply
/// while it runs → 409 (also from another agent on the same host: the file lock); the end
/// state, installed versions and history are right.
#[test]
fn apply_runs_in_background_with_live_status_and_refuses_a_second_apply() {
    let scratch = tempfile::tempdir().unwrap();
    let gates = Gates {
        restart: Gate::new(scratch.path(), "restart"),
        verify: Gate::new(scratch.path(), "verify"),
    };
    // 256 KiB of noise at 128 KiB/s: the download lasts about two seconds.
    let lab = Lab::new().unwrap();
    write_config(
        &lab,
        Some(&gates.restart),
        lab.server.url(),
        "  bandwidth_limit: 128KiB/s\n",
    );
    host_at_v1(&lab);
    publish_release(&lab, "1.1.0", Some(gates.verify.argv()), 256 * 1024);
    let old_pid = lab.host.service_pid("quantix-node").unwrap();

    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let mut events = Events::new(api.get("/api/v1/updates/events").send().await.unwrap());
        assert_eq!(state_of(&events.next().await), "idle");

        let op = start_apply(&api).await;
        let (seen, last) = follow_apply(&api, &lab, &mut events, &op, &gates).await;
        eprintln!("observed states: {seen:?}");
        assert_eq!(state_of(&last), "done", "{last}");
        assert_eq!(last["state"]["version"], "1.1.0");
        assert_steps_in_order(&seen);
        assert_done_in_status(&api).await;

        // A new apply is accepted again once the first has ended (nothing left to do). The
        // `done` state is published just before the apply's thread returns: wait for it.
        api.runner.wait_idle().await;
        let resp = api.post("/api/v1/updates/apply").send().await.unwrap();
        assert_eq!(resp.status(), 202);
        api.shutdown().await;
    });
    let new_pid = lab.host.service_pid("quantix-node").unwrap();
    assert_ne!(new_pid, old_pid, "the service was restarted");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
}

/// The gates that hold the main path's apply at the restart and at the verification.
struct Gates {
    restart: Gate,
    verify: Gate,
}

/// Posts an apply: 202 with an operation id and the status URL. Returns the operation id.
async fn start_apply(api: &ApiServer) -> String {
    let resp = api.post("/api/v1/updates/apply").send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let accepted: Value = resp.json().await.unwrap();
    assert_eq!(accepted["status_url"], "/api/v1/updates/status");
    accepted["operation_id"]
        .as_str()
        .expect("operation id")
        .to_string()
}

/// Follows the events of apply `op` to its end, opening the gates as it reaches them and
/// checking the download progress and the refusals while it is held at the restart. Returns
/// the states seen (each once, in order) and the end snapshot.
async fn follow_apply(
    api: &ApiServer,
    lab: &Lab,
    events: &mut Events,
    op: &str,
    gates: &Gates,
) -> (Vec<String>, Value) {
    let mut seen: Vec<String> = Vec::new();
    let (mut restart_opened, mut verify_opened) = (false, false);
    for _ in 0..100_000 {
        let s = events.next().await;
        let state = state_of(&s);
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        match state.as_str() {
            "downloading" => {
                let st = &s["state"];
                assert!(st["total"].as_u64().unwrap() > 0, "{s}");
                assert!(st["bytes"].as_u64().unwrap() <= st["total"].as_u64().unwrap());
                assert_eq!(s["operation_id"], op);
            }
            "restarting" if !restart_opened => {
                restart_opened = true;
                assert_eq!(s["state"]["service"], "quantix-node");
                refuse_while_held(api, lab, op).await;
                gates.restart.open();
            }
            "verifying" if !verify_opened => {
                verify_opened = true;
                gates.verify.open();
            }
            "done" | "failed" => return (seen, s),
            _ => {}
        }
    }
    panic!("the apply did not end: {seen:?}");
}

/// Held at the restart: a second apply is refused at once, and so is one from another agent
/// on the same host (the apply lock); the status endpoint agrees with the events.
async fn refuse_while_held(api: &ApiServer, lab: &Lab, op: &str) {
    let (status, body) = error_body(api.post("/api/v1/updates/apply").send().await.unwrap()).await;
    assert_eq!(status, 409);
    assert!(
        body["error"].as_str().unwrap().contains("already running"),
        "{body}"
    );
    let other = ApiServer::start(agent(lab), TOKEN);
    let (status, body) =
        error_body(other.post("/api/v1/updates/apply").send().await.unwrap()).await;
    assert_eq!(status, 409);
    assert_eq!(body["code"], 10, "{body}");
    other.shutdown().await;
    let now = status_json(api).await;
    assert_eq!(now["state"]["state"], "restarting");
    assert_eq!(now["operation_id"], op);
}

/// The order of the steps, as observed: a subsequence of the transaction's order, in which
/// every step shows, even a short one (the event stream is lossless).
fn assert_steps_in_order(seen: &[String]) {
    let order = [
        "idle",
        "checking",
        "downloading",
        "installing",
        "migrating",
        "restarting",
        "verifying",
        "done",
    ];
    let positions: Vec<usize> = seen
        .iter()
        .map(|s| {
            order
                .iter()
                .position(|o| o == s)
                .unwrap_or_else(|| panic!("unexpected state {s} in {seen:?}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seen:?}"
    );
    for required in [
        "checking",
        "downloading",
        "installing",
        "restarting",
        "verifying",
        "done",
    ] {
        assert!(
            seen.iter().any(|s| s == required),
            "{required} missing from {seen:?}"
        );
    }
}

/// The status after the main path: done, both components at 1.1.0, a successful history entry.
async fn assert_done_in_status(api: &ApiServer) {
    let status = status_json(api).await;
    assert_eq!(status["state"]["state"], "done");
    assert_eq!(status["installed"]["qx-node"], "1.1.0");
    assert_eq!(status["installed"]["host-ui"], "1.1.0");
    let history = status["history"].as_array().unwrap();
    let entry = history.last().unwrap();
    assert_eq!(entry["version"], "1.1.0");
    assert_eq!(entry["outcome"], "success");
}

async fn status_json(api: &ApiServer) -> Value {
    api.get("/api/v1/updates/status")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
