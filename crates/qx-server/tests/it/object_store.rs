//! Issue 15: releases in an S3-compatible object store (a real Garage), shared by several
//! servers. The rest of the server suite also runs on Garage (`cargo xtask test` runs it a
//! second time with `QX_TEST_STORE=garage`); these tests are about what only an object store
//! has: a store that is down or refuses the credentials, objects another tool wrote, several
//! servers on one bucket and one PostgreSQL, a node of a three-node cluster killed.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use qx_core::Sha256;
use qx_server::config::{ArtifactRedirect, FleetDatabase, ObjectStoreConfig, ReleaseStoreConfig};
use qx_server::Config;
use qx_testkit::garage::{self, Bucket, Cluster};
use qx_testkit::server::TestServer;
use qx_testkit::wait::{poll, poll_async};

use crate::robustness::{raw_publish, spawn_server_with};
use crate::support::*;

/// A server configuration on `store`, with the test token.
fn config_on(dir: &Path, store: ObjectStoreConfig) -> Config {
    let mut c = Config::new(dir);
    c.publish_token = TOKEN.to_owned();
    c.token_is_default = false;
    c.release_store = ReleaseStoreConfig::Object(store);
    c
}

/// A release whose one artifact is `mib` MiB of varied bytes, other for each version.
fn sized_release(signer: &Signer, version: &str, mib: usize) -> Release {
    let seed = version
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    let data: Vec<u8> = (0..mib << 20)
        .map(|i| ((i ^ seed).wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    Release::with_artifacts(
        signer,
        "quantix-os",
        "stable",
        version,
        vec![("system.bin".into(), data)],
    )
}

/// Runs the server binary with `env` and returns its exit code and error output; it must exit
/// by itself within a minute.
fn run_to_exit(dir: &Path, env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qx-update-server"))
        .env("RELEASE_DIR", dir)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("PUBLISH_TOKEN", TOKEN)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qx-update-server");
    let exited = poll(Duration::from_secs(60), Duration::from_millis(50), || {
        child.try_wait().is_ok_and(|s| s.is_some())
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("the server's output");
    assert!(exited, "the server did not exit within 60 s");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "slow tier: needs Garage"]
fn unreachable_store_at_start_is_a_clear_error_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut env = garage::shared().env("p", 0);
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")));
    let (code, err) = run_to_exit(dir.path(), &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("s3://qx-releases/p"), "{err}");
    assert!(err.contains("listing the bucket"), "{err}");
}

#[test]
#[ignore = "slow tier: needs Garage"]
fn wrong_credentials_or_a_missing_bucket_at_start_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = garage::shared();
    let mut env = bucket.env("p", 0);
    for (k, v) in &mut env {
        if *k == "AWS_SECRET_ACCESS_KEY" {
            *v = "0".repeat(64);
        }
    }
    let (code, err) = run_to_exit(dir.path(), &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(
        !err.contains(&"0".repeat(64)),
        "the secret is never printed: {err}"
    );

    let mut env = bucket.env("p", 0);
    env[0].1 = "s3://no-such-bucket/p".into();
    let (code, err) = run_to_exit(dir.path(), &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("s3://no-such-bucket/p"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: needs Garage"]
async fn store_down_mid_request_is_503_with_retry_after_then_serves_again() {
    let cluster = Cluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let server =
        TestServer::start_with(config_on(dir.path(), cluster.bucket.config("p", 0))).unwrap();
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "stable", "1.0.0");
    published(&server, &rel).await;
    let artifact = "/api/v1/quantix-os/releases/1.0.0/qx-console.bin";

    cluster.nodes[0].kill();
    let res = get(&server, artifact).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("retry-after").is_some());
    let v: serde_json::Value = res.json().await.unwrap();
    assert!(
        !v.to_string().contains("127.0.0.1"),
        "no store address: {v}"
    );
    let next = Release::new(&signer, "quantix-os", "stable", "1.1.0");
    let res = publish(&server, &next).await;
    assert_eq!(res.status(), 503, "a publish while the store is down");

    cluster.nodes[0].start();
    let back = poll_async(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { get(&server, artifact).await.status() == 200 },
    )
    .await;
    assert!(
        back,
        "the server did not serve again once the store was back"
    );
    published(&server, &next).await;
}

#[tokio::test]
#[ignore = "slow tier: needs Garage"]
async fn objects_another_tool_left_half_written_are_invisible_and_swept() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = garage::fresh_prefix();
    let mut store = garage::shared().config(&prefix, 0);
    let server = TestServer::start_with(config_on(dir.path(), store.clone())).unwrap();
    let signer = Signer::new();
    published(
        &server,
        &Release::new(&signer, "quantix-os", "stable", "1.0.0"),
    )
    .await;
    let stored = server.stored();
    // 2.0.0: artifacts without a manifest (an interrupted copy); 3.0.0: a manifest and its
    // signature without the artifacts they name.
    let r2 = Release::new(&signer, "quantix-os", "stable", "2.0.0");
    for (name, data) in &r2.artifacts {
        stored.write(&format!("quantix-os/stable/2.0.0/{name}"), data);
    }
    let r3 = Release::new(&signer, "quantix-os", "stable", "3.0.0");
    stored.write("quantix-os/stable/3.0.0/manifest.json", &r3.manifest);
    stored.write(
        "quantix-os/stable/3.0.0/manifest.json.minisig",
        r3.signature.as_bytes(),
    );

    let res = get(&server, "/api/v1/quantix-os/manifest").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-qx-version"], "1.0.0");
    let res = get(&server, "/api/v1/quantix-os/releases/2.0.0/qx-console.bin").await;
    assert_eq!(res.status(), 404);
    drop(server);

    // A server whose sweep takes everything unfinished removes 2.0.0 and keeps the rest.
    store.sweep_age = Duration::ZERO;
    let server = TestServer::start_with(config_on(dir.path(), store)).unwrap();
    let stored = server.stored();
    assert!(
        !has_files(stored, "quantix-os/stable/2.0.0"),
        "{:?}",
        stored.list("quantix-os")
    );
    assert!(stored.exists("quantix-os/stable/3.0.0/manifest.json"));
    assert!(stored.exists("quantix-os/stable/1.0.0/manifest.json"));
    let res = get(&server, "/api/v1/quantix-os/manifest").await;
    assert_eq!(res.headers()["x-qx-version"], "1.0.0");

    // And while it runs: the sweep comes again (every half STAGING_SWEEP_AGE, at least
    // every second).
    stored.write(".staging/upload-left/system.bin", b"left by a dead server");
    let swept = poll_async(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { staging_entries(server.stored()).is_empty() },
    )
    .await;
    assert!(swept, "{:?}", staging_entries(server.stored()));
}

/// Two servers on one bucket prefix and one PostgreSQL database.
fn two_servers(bucket: &Bucket) -> (TestServer, TestServer, [tempfile::TempDir; 2]) {
    let db = qx_testkit::postgres::database();
    let prefix = garage::fresh_prefix();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let start = |dir: &Path| {
        let mut c = config_on(dir, bucket.config(&prefix, 0));
        c.fleet.database = FleetDatabase::Postgres(db.url.clone());
        TestServer::start_with(c).unwrap()
    };
    (start(dirs[0].path()), start(dirs[1].path()), dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "slow tier: needs Garage and PostgreSQL"]
async fn two_servers_share_a_bucket_one_serves_what_the_other_published() {
    let (a, b, _dirs) = two_servers(garage::shared());
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "stable", "1.0.0");
    published(&a, &rel).await;
    // Served by the other within the manifest cache's lifetime (1 s); polled, not slept.
    let seen = poll_async(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { get(&b, "/api/v1/quantix-os/manifest").await.status() == 200 },
    )
    .await;
    assert!(seen, "server b never served the release a published");
    let res = get(&b, "/api/v1/quantix-os/releases/1.0.0/qx-node.tar.zst").await;
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        rel.artifact("qx-node.tar.zst")
    );
    // A yank on b is seen by a.
    let res = client()
        .delete(b.api().release("quantix-os", "1.0.0", "stable"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let gone = poll_async(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { get(&a, "/api/v1/quantix-os/manifest").await.status() == 404 },
    )
    .await;
    assert!(gone, "server a still offers the release b yanked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "slow tier: needs Garage and PostgreSQL"]
async fn concurrent_publishes_of_one_version_on_two_servers_leave_one_winner() {
    let (a, b, _dirs) = two_servers(garage::shared());
    let signer = Signer::new();
    for round in 0..3 {
        let version = format!("2.0.{round}");
        race_two_contents(&a, &b, &signer, &sized_release(&signer, &version, 2)).await;
        // The same bytes on both: one creates, the other finds them identical.
        let same = sized_release(&signer, &format!("3.0.{round}"), 2);
        let (ra, rb) = tokio::join!(publish(&a, &same), publish(&b, &same));
        let mut statuses = [ra.status().as_u16(), rb.status().as_u16()];
        statuses.sort();
        assert_eq!(statuses, [200, 201], "round {round}");
    }
    assert!(staging_entries(a.stored()).is_empty());
}

/// Regular files under the node's data directory: its blocks.
fn blocks(node: &garage::Node) -> usize {
    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path()),
                Ok(_) => 1,
                Err(_) => 0,
            })
            .sum()
    }
    walk(&node.dir.join("data"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "slow tier: needs Garage and PostgreSQL"]
async fn a_server_killed_mid_publish_leaves_nothing_visible_and_the_publish_then_succeeds() {
    let cluster = Cluster::start(1);
    let db = qx_testkit::postgres::database();
    let prefix = "killed";
    let dir = tempfile::tempdir().unwrap();
    let mut env = cluster.bucket.env(prefix, 0);
    env.push(("DATABASE_URL", db.url.clone()));
    let signer = Signer::new();
    let rel = sized_release(&signer, "1.0.0", 48);
    let before = blocks(&cluster.nodes[0]);
    let mut victim = spawn_server_with(dir.path(), Some(TOKEN), &env);
    let (head, body) = raw_publish(&rel);
    let mut s = TcpStream::connect(victim.addr).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..body.len() * 3 / 4]).unwrap();
    s.flush().unwrap();
    // Parts of the upload have reached the store.
    let storing = poll(Duration::from_secs(60), Duration::from_millis(20), || {
        blocks(&cluster.nodes[0]) > before
    });
    assert!(storing, "the store never received part of the upload");
    victim.proc.0.kill().unwrap(); // SIGKILL
    victim.proc.0.wait().unwrap();
    drop(s);

    let other_dir = tempfile::tempdir().unwrap();
    let mut c = config_on(other_dir.path(), cluster.bucket.config(prefix, 0));
    c.fleet.database = FleetDatabase::Postgres(db.url.clone());
    let other = TestServer::start_with(c).unwrap();
    assert_eq!(
        get(&other, "/api/v1/quantix-os/manifest").await.status(),
        404
    );
    assert!(!has_files(other.stored(), "quantix-os/stable/1.0.0"));
    // The lock the killed server may have held died with its connection.
    let res = publish(&other, &rel).await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let res = get(&other, "/api/v1/quantix-os/releases/1.0.0/system.bin").await;
    let bytes = res.bytes().await.unwrap();
    assert_eq!(Sha256::of(&bytes), Sha256::of(rel.artifact("system.bin")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "slow tier: needs Garage"]
async fn a_three_node_cluster_loses_a_node_during_downloads_and_publishes_go_on() {
    let cluster = Cluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    // The server talks to node 0; node 2 is killed (a replica of every block).
    let server =
        TestServer::start_with(config_on(dir.path(), cluster.bucket.config("p", 0))).unwrap();
    let signer = Signer::new();
    let rel = sized_release(&signer, "1.0.0", 24);
    published(&server, &rel).await;
    let want = Sha256::of(rel.artifact("system.bin"));
    let url = format!(
        "{}/api/v1/quantix-os/releases/1.0.0/system.bin",
        server.url()
    );
    assert_eq!(download_hash(&url, || {}).await, want, "before the kill");
    let killed = download_hash(&url, || cluster.nodes[2].kill()).await;
    assert_eq!(
        killed, want,
        "the download during the kill was cut or damaged"
    );
    // With one node of three down, reads and the next publish still succeed (quorum 2).
    assert_eq!(download_hash(&url, || {}).await, want, "after the kill");
    let next = sized_release(&signer, "1.1.0", 4);
    published(&server, &next).await;
    let res = get(&server, "/api/v1/quantix-os/manifest").await;
    assert_eq!(res.headers()["x-qx-version"], "1.1.0");

    // Node 2 back; node 1 killed while a publish is being stored: the publish succeeds.
    cluster.nodes[2].start();
    cluster.wait_connected();
    let third = sized_release(&signer, "1.2.0", 24);
    let before = blocks(&cluster.nodes[0]);
    let publishing = tokio::spawn({
        let (url, rel) = (server.url().to_owned(), third.clone());
        async move {
            client()
                .post(format!("{url}/api/v1/quantix-os/publish"))
                .bearer_auth(TOKEN)
                .multipart(rel.form())
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    let storing = poll_async(
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async { blocks(&cluster.nodes[0]) > before },
    )
    .await;
    assert!(storing, "the publish never reached the store");
    cluster.nodes[1].kill();
    let status = publishing.await.unwrap().unwrap();
    // Stored, or refused as worth retrying (the store lost its quorum for a moment: node 2
    // may still be catching up) with nothing of it visible; then a publish succeeds.
    assert!(
        matches!(status, 201 | 503),
        "the publish during the kill: {status}"
    );
    if status == 503 {
        // Once the store answers again (it takes a moment to see the node gone), the refused
        // release is absent, or whole if its manifest got stored after all: never half there.
        let artifact = "/api/v1/quantix-os/releases/1.2.0/system.bin";
        let seen = std::cell::Cell::new(503);
        let answered = poll_async(
            Duration::from_secs(60),
            Duration::from_millis(200),
            || async {
                seen.set(get(&server, artifact).await.status().as_u16());
                seen.get() != 503
            },
        )
        .await;
        assert!(answered, "the store never answered again");
        let seen = seen.get();
        assert!(
            matches!(seen, 404 | 200),
            "after the store came back: {seen}"
        );
        let stored = poll_async(
            Duration::from_secs(60),
            Duration::from_millis(200),
            || async { matches!(publish(&server, &third).await.status().as_u16(), 200 | 201) },
        )
        .await;
        assert!(stored, "no publish succeeded with one node of three down");
    }
    let res = client()
        .get(format!(
            "{}/api/v1/quantix-os/releases/1.2.0/system.bin",
            server.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        Sha256::of(&res.bytes().await.unwrap()),
        Sha256::of(third.artifact("system.bin"))
    );

    // Nothing half-visible: exactly the three complete releases are listed.
    let list: serde_json::Value = client()
        .get(server.api().releases("quantix-os", "stable"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["releases"].as_array().map(Vec::len), Some(3), "{list}");
}

/// Downloads `url` whole and hashes it; `mid` runs once the first chunks have arrived.
async fn download_hash(url: &str, mid: impl FnOnce()) -> Sha256 {
    let mut res = client().get(url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut hasher = qx_core::Sha256Hasher::new();
    let (mut chunks, mut mid) = (0, Some(mid));
    while let Some(chunk) = res.chunk().await.unwrap() {
        hasher.update(&chunk);
        chunks += 1;
        if chunks == 4 {
            if let Some(f) = mid.take() {
                f();
            }
        }
    }
    hasher.finish().0
}

#[tokio::test]
async fn artifacts_redirect_to_a_cdn_base_and_a_host_may_ask_for_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::new(dir.path());
    c.publish_token = TOKEN.to_owned();
    c.artifact_redirect = Some(ArtifactRedirect::Base("https://cdn.example/qx".into()));
    let (server, rel, no_follow) = redirecting_server(c).await;
    let url = server
        .api()
        .artifact("quantix-os", "1.0.0", "qx-node.tar.zst", "stable");
    let res = no_follow.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 302);
    assert_eq!(
        res.headers()["location"],
        "https://cdn.example/qx/quantix-os/stable/1.0.0/qx-node.tar.zst"
    );
    assert_eq!(res.headers()["cache-control"], "no-store");
    // The manifest and its signature are never redirected.
    let manifest = server
        .api()
        .artifact("quantix-os", "1.0.0", "manifest.json", "stable");
    assert_eq!(no_follow.get(&manifest).send().await.unwrap().status(), 200);
    // A host that asks for the bytes themselves gets them.
    let res = no_follow
        .get(&url)
        .header(qx_core::api::NO_REDIRECT_HEADER, "1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        rel.artifact("qx-node.tar.zst")
    );
    // An artifact the manifest does not list is still a 404, not a redirect.
    let stray = server
        .api()
        .artifact("quantix-os", "1.0.0", "stray.bin", "stable");
    assert_eq!(no_follow.get(&stray).send().await.unwrap().status(), 404);
}

#[tokio::test]
#[ignore = "slow tier: needs Garage"]
async fn presigned_redirects_point_at_the_store_for_a_short_time() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = garage::shared();
    let mut c = config_on(dir.path(), bucket.config(&garage::fresh_prefix(), 0));
    c.artifact_redirect = Some(ArtifactRedirect::Presign {
        ttl: Duration::from_secs(60),
    });
    let (server, rel, no_follow) = redirecting_server(c).await;
    let url = server
        .api()
        .artifact("quantix-os", "1.0.0", "qx-node.tar.zst", "stable");
    let res = no_follow.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 302);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&bucket.endpoints[0]), "{location}");
    assert!(location.contains("X-Amz-Expires=60"), "{location}");
    let res = no_follow.get(&location).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        rel.artifact("qx-node.tar.zst")
    );
}

/// A server started with `config` holding release 1.0.0, and a client that does not follow
/// redirects.
async fn redirecting_server(config: Config) -> (TestServer, Release, reqwest::Client) {
    let server = TestServer::start_with(config).unwrap();
    let rel = Release::new(&Signer::new(), "quantix-os", "stable", "1.0.0");
    published(&server, &rel).await;
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    (server, rel, no_follow)
}
