//! The wire protocol of `qx_core::api` and the router agree: every route template answers
//! with a handler, never with the fallback.

use qx_core::api::{fill, server as api};
use reqwest::Method;
use serde_json::Value;

use crate::support::*;

/// The methods each route of `api::server::ROUTES` serves.
const METHODS: &[(&str, &[&str])] = &[
    (api::HEALTH, &["GET"]),
    (api::METRICS, &["GET"]),
    (api::CHANNELS, &["GET"]),
    (api::MANIFEST, &["GET"]),
    (api::RELEASES, &["GET"]),
    (api::ARTIFACT, &["GET", "HEAD"]),
    (api::PUBLISH, &["POST"]),
    (api::PROMOTE, &["POST"]),
    (api::RELEASE, &["DELETE"]),
    (api::CHANNEL, &["GET", "PUT"]),
    (api::ENROLLMENT_TOKENS, &["POST"]),
    (api::ENROLLMENT_TOKEN, &["DELETE"]),
    (api::ENROLL, &["POST"]),
    (api::HOSTS, &["GET"]),
    (api::HOST, &["GET", "PATCH", "DELETE"]),
    (api::CHECKIN, &["POST"]),
    (api::HOST_EVENTS, &["POST"]),
    (api::WHOAMI, &["GET"]),
    (api::TOKENS, &["GET", "POST"]),
    (api::TOKEN, &["DELETE"]),
    (api::FLEET_SUMMARY, &["GET"]),
    (api::FLEET_EVENTS, &["GET"]),
    (api::UI, &["GET"]),
    (api::UI_COMMON_SCRIPT, &["GET"]),
    (api::UI_SCRIPT, &["GET"]),
    (api::UI_STYLE, &["GET"]),
    (api::ROLLOUTS, &["GET"]),
    (api::ROLLOUT, &["GET"]),
    (api::ROLLOUT_PAUSE, &["POST"]),
    (api::ROLLOUT_RESUME, &["POST"]),
    (api::ROLLOUT_ABORT, &["POST"]),
    (api::ROLLOUT_PREVIEW, &["GET"]),
    (api::PINS, &["GET", "POST"]),
    (api::PIN, &["DELETE"]),
];

/// The fallback's answer: 404 with the error sentence `no such endpoint`.
async fn is_fallback(res: reqwest::Response) -> (bool, String) {
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    let error = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned));
    let fallback = status == 404 && error.as_deref() == Some(qx_server::routes::NO_SUCH_ENDPOINT);
    (fallback, format!("{status} {text}"))
}

#[tokio::test]
async fn every_api_route_answers_other_than_the_fallback_404() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    published(
        &server,
        &Release::new(&signer, "quantix-os", "stable", "1.0.0"),
    )
    .await;
    let values: [(&str, &dyn std::fmt::Display); 6] = [
        ("product", &"quantix-os"),
        ("version", &"1.0.0"),
        ("artifact", &"qx-node.tar.zst"),
        ("channel", &"stable"),
        ("id", &"0123456789abcdef"),
        ("name", &"alice"),
    ];
    for route in api::ROUTES {
        let methods = METHODS
            .iter()
            .find(|(r, _)| r == route)
            .map(|(_, m)| *m)
            .unwrap_or_else(|| panic!("route {route} has no methods in this test's table"));
        let path = fill(route, &values);
        assert!(!path.contains('{'), "{route}: placeholder left in {path}");
        for method in methods {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let res = client()
                .request(method.clone(), format!("{}{path}", server.url()))
                .send()
                .await
                .unwrap();
            assert_ne!(res.status(), 405, "{method} {path}: method not served");
            let (fallback, answer) = is_fallback(res).await;
            assert!(
                !fallback,
                "{method} {path} fell through to the fallback: {answer}"
            );
        }
    }
}

#[tokio::test]
async fn the_fallback_404_is_json_naming_no_document() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let res = get(&server, "/api/v2/anything").await;
    let v = expect_error(res, 404).await;
    assert_eq!(v["error"], qx_server::routes::NO_SUCH_ENDPOINT);
    let text = v.to_string();
    assert!(text.contains(api::CHANNELS), "{text}");
    for cited in ["SPEC", "spec.md", "seed"] {
        assert!(!text.contains(cited), "the body cites {cited}: {text}");
    }
}
