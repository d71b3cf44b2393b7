//! The daemon's HTTPS API against a real update server on loopback and a sandboxed host with a
//! running service: each endpoint, authentication, 409 on a concurrent apply, and the status
//! transitions of a real apply observed through the server-sent events.
#![allow(clippy::unwrap_used)]

mod api_support;

use api_support::*;
use qx_testkit::host::Lab;
use serde_json::Value;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A lab whose host is at 1.0.0, configured with `extra`, with release 1.1.0 published.
fn lab_with_release(restart_gate: Option<&Gate>, health: Option<Vec<String>>, extra: &str) -> Lab {
    let lab = Lab::new().unwrap();
    write_config(&lab, restart_gate, lab.server.url(), extra);
    host_at_v1(&lab);
    publish_release(&lab, "1.1.0", health, 4096);
    lab
}

async fn error_body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("error body is JSON");
    (status, body)
}

#[test]
fn status_without_token_is_401() {
    let lab = lab_with_release(None, None, "");
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
    let lab = lab_with_release(None, None, "");
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
    let lab = lab_with_release(None, None, "");
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
    let lab = lab_with_release(None, None, "");
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        for (path, ct) in [
            ("/", "text/html"),
            ("/app.js", "text/javascript"),
            ("/style.css", "text/css"),
        ] {
            let resp = api.client.get(api.url(path)).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            let got = resp.headers()["content-type"].to_str().unwrap().to_string();
            assert!(got.starts_with(ct), "{path}: {got}");
            assert!(resp.headers().contains_key("content-security-policy"));
        }
        let page = api
            .client
            .get(api.url("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("Check for Updates"));
        api.shutdown().await;
    });
}

#[test]
fn status_reports_installed_versions_and_idle_state() {
    let lab = lab_with_release(None, None, "");
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
    let lab = lab_with_release(None, None, "");
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
    // A port nothing listens on: bind one, then let it go.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://127.0.0.1:{}", dead.local_addr().unwrap().port());
    drop(dead);
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
                .contains("/api/v1/quantix-os/manifest?channel=dev"),
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

#[test]
fn apply_with_malformed_body_is_400() {
    let lab = lab_with_release(None, None, "");
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let (status, body) = error_body(
            api.post("/api/v1/updates/apply")
                .body("{not json")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(
            body["error"],
            "the request body is not valid JSON for an apply"
        );
        assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
        api.shutdown().await;
    });
}

#[test]
fn apply_with_unknown_field_is_400() {
    let lab = lab_with_release(None, None, "");
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let (status, body) = error_body(
            api.post("/api/v1/updates/apply")
                .json(&serde_json::json!({"component": ["qx-node"]}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            body["details"][0]
                .as_str()
                .unwrap()
                .contains("unknown field `component`"),
            "{body}"
        );
        api.shutdown().await;
    });
}

#[test]
fn apply_with_invalid_component_name_is_400() {
    let lab = lab_with_release(None, None, "");
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let (status, body) = error_body(
            api.post("/api/v1/updates/apply")
                .json(&serde_json::json!({"components": ["../etc"]}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(
            body["error"],
            "component \"../etc\" is not a valid component name"
        );
        api.shutdown().await;
    });
}

#[test]
fn apply_of_one_component_installs_only_it() {
    let lab = lab_with_release(None, None, "");
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
        let last = wait_for_end(&mut events).await;
        assert_eq!(state_of(&last), "done", "{last}");
        assert_eq!(last["installed"]["host-ui"], "1.1.0");
        assert_eq!(last["installed"]["qx-node"], "1.0.0");
        api.shutdown().await;
    });
}

/// Reads events until the state is `done` or `failed`; returns that snapshot.
async fn wait_for_end(events: &mut Events) -> Value {
    for _ in 0..100_000 {
        let s = events.next().await;
        if matches!(state_of(&s).as_str(), "done" | "failed") {
            return s;
        }
    }
    panic!("no end state");
}

/// The main path: apply → 202 at once; the events show every step in order; a second apply
/// while it runs → 409 (also from another agent on the same host: the file lock); the end
/// state, installed versions and history are right.
#[test]
fn apply_runs_in_background_with_live_status_and_refuses_a_second_apply() {
    let scratch = tempfile::tempdir().unwrap();
    let restart_gate = Gate::new(scratch.path(), "restart");
    let verify_gate = Gate::new(scratch.path(), "verify");
    // 256 KiB of noise at 128 KiB/s: the download lasts about two seconds.
    let lab = Lab::new().unwrap();
    write_config(
        &lab,
        Some(&restart_gate),
        lab.server.url(),
        "  bandwidth_limit: 128KiB/s\n",
    );
    host_at_v1(&lab);
    publish_release(&lab, "1.1.0", Some(verify_gate.argv()), 256 * 1024);
    let old_pid = lab.host.service_pid("quantix-node").unwrap();

    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let mut events = Events::new(api.get("/api/v1/updates/events").send().await.unwrap());
        assert_eq!(state_of(&events.next().await), "idle");

        let resp = api.post("/api/v1/updates/apply").send().await.unwrap();
        assert_eq!(resp.status(), 202);
        let accepted: Value = resp.json().await.unwrap();
        let op = accepted["operation_id"]
            .as_str()
            .expect("operation id")
            .to_string();
        assert_eq!(accepted["status_url"], "/api/v1/updates/status");

        let mut seen: Vec<String> = Vec::new();
        let mut last = Value::Null;
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
                    assert_eq!(s["operation_id"], op.as_str());
                }
                "restarting" if !restart_opened => {
                    restart_opened = true;
                    assert_eq!(s["state"]["service"], "quantix-node");
                    // Held at the restart: a second apply is refused at once…
                    let (status, body) =
                        error_body(api.post("/api/v1/updates/apply").send().await.unwrap()).await;
                    assert_eq!(status, 409);
                    assert!(
                        body["error"].as_str().unwrap().contains("already running"),
                        "{body}"
                    );
                    // …and so is one from another agent on the same host (the apply lock).
                    let other = ApiServer::start(agent(&lab), TOKEN);
                    let (status, body) =
                        error_body(other.post("/api/v1/updates/apply").send().await.unwrap()).await;
                    assert_eq!(status, 409);
                    assert_eq!(body["code"], 10, "{body}");
                    other.shutdown().await;
                    // The status endpoint agrees with the events.
                    let now: Value = api
                        .get("/api/v1/updates/status")
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert_eq!(now["state"]["state"], "restarting");
                    assert_eq!(now["operation_id"], op.as_str());
                    restart_gate.open();
                }
                "verifying" if !verify_opened => {
                    verify_opened = true;
                    verify_gate.open();
                }
                "done" | "failed" => {
                    last = s;
                    break;
                }
                _ => {}
            }
        }
        eprintln!("observed states: {seen:?}");
        assert_eq!(state_of(&last), "done", "{last}");
        assert_eq!(last["state"]["version"], "1.1.0");

        // The order of the steps, as observed: a subsequence of the transaction's order.
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
        // The event stream is lossless, so every step of the transaction shows, even a short one.
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

        let status: Value = api
            .get("/api/v1/updates/status")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(status["state"]["state"], "done");
        assert_eq!(status["installed"]["qx-node"], "1.1.0");
        assert_eq!(status["installed"]["host-ui"], "1.1.0");
        let history = status["history"].as_array().unwrap();
        let entry = history.last().unwrap();
        assert_eq!(entry["version"], "1.1.0");
        assert_eq!(entry["outcome"], "success");

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
