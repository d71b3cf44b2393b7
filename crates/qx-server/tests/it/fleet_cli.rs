//! `qx-update-server token …` and `enrollment-token …`: the real binary opens the store the
//! settings name (here SQLite under `RELEASE_DIR`), and a server over the same directory
//! accepts what it created.

use std::process::{Command, Output};
use std::sync::Arc;

use qx_server::fleet::clock::SystemClock;
use qx_server::Config;
use qx_testkit::server::TestServer;
use serde_json::{json, Value};

use crate::support::*;

fn cli(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qx-update-server"))
        .args(args)
        .env("RELEASE_DIR", dir)
        .env_remove("DATABASE_URL")
        .env_remove("FLEET_DB")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run qx-update-server")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    String::from_utf8(out.stdout.clone()).expect("UTF-8")
}

fn server(dir: &std::path::Path) -> TestServer {
    let mut config = Config::new(dir);
    config.publish_token = TOKEN.to_owned();
    config.token_is_default = false;
    TestServer::start_with_clock(config, Arc::new(SystemClock)).expect("start")
}

async fn status(url: &str, token: &str) -> u16 {
    client()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("send")
        .status()
        .as_u16()
}

#[tokio::test]
async fn token_create_prints_a_token_once_that_the_server_accepts_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(
        dir.path(),
        &["token", "create", "--scope", "read", "--name", "alice"],
    );
    let token = ok(&out).trim().to_owned();
    assert_eq!(
        token.len(),
        43,
        "one 256-bit base64url token on stdout: {token:?}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown this once"));
    let list = ok(&cli(dir.path(), &["token", "list", "--json"]));
    let listed: Value = serde_json::from_str(&list).expect("JSON");
    assert_eq!(listed[0]["name"], "alice");
    assert_eq!(listed[0]["scopes"], json!(["read"]));
    assert!(!list.contains(&token), "the secret is never listed");
    let server = server(dir.path());
    let hosts = server.api().hosts("");
    assert_eq!(status(&hosts, &token).await, 200);
    assert_eq!(
        status(&server.api().tokens(), &token).await,
        403,
        "read is not admin"
    );
    ok(&cli(dir.path(), &["token", "revoke", "alice"]));
    assert_eq!(status(&hosts, &token).await, 401);
    let again = cli(dir.path(), &["token", "revoke", "alice"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no active operator token"));
}

#[tokio::test]
async fn token_cli_usage_errors_exit_2_and_bad_values_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(dir.path(), &["token", "create", "--name", "bob"]);
    assert_eq!(out.status.code(), Some(2), "--scope is required");
    let out = cli(
        dir.path(),
        &["token", "create", "--scope", "root", "--name", "bob"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("read, publish, rollout and admin"));
    let out = cli(
        dir.path(),
        &["token", "create", "--scope", "read", "--name", "Bob Smith"],
    );
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn enrollment_token_create_enrolls_hosts_with_its_labels() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(
        dir.path(),
        &[
            "enrollment-token",
            "create",
            "--product",
            "quantix-os",
            "--label",
            "ring=canary",
            "--expires-in",
            "7d",
            "--uses",
            "2",
        ],
    );
    let token = ok(&out).trim().to_owned();
    let server = server(dir.path());
    for _ in 0..2 {
        let res = client()
            .post(server.api().enroll())
            .bearer_auth(&token)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    let res = client()
        .post(server.api().enroll())
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_error(res, 403).await;
    let res = client()
        .get(server.api().hosts("label=ring%3Dcanary"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["hosts"].as_array().unwrap().len(), 2, "{v}");
}

/// `qx-update-server health` (the container's health check): 0 when the server its settings
/// describe answers `/health`, 1 naming the URL when nothing listens there.
#[test]
fn health_probes_the_server_its_settings_describe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = server(dir.path());
    let probe = |addr: &str| {
        Command::new(env!("CARGO_BIN_EXE_qx-update-server"))
            .arg("health")
            .env("RELEASE_DIR", dir.path())
            .env("LISTEN_ADDR", addr)
            .env("PUBLISH_TOKEN", TOKEN)
            .output()
            .expect("run qx-update-server health")
    };
    let up = probe(&srv.addr().to_string());
    assert!(
        ok(&up).contains("/health: 200"),
        "{}",
        String::from_utf8_lossy(&up.stdout)
    );
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let closed = free.local_addr().expect("its address").to_string();
    drop(free);
    let down = probe(&closed);
    assert_eq!(down.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(
        stderr.contains(&format!("http://{closed}/health")),
        "{stderr}"
    );
}
