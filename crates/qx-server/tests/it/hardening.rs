//! Issue 11 (hardening): a damaged release among good ones, strict query strings, a
//! re-published yanked release, a full disk during publish.

use std::path::Path;

use crate::support::*;
use serde_json::Value;

/// Publishes 1.0.0 and 1.1.0 on stable, then cuts 1.1.0's `manifest.json` short.
async fn server_with_damaged_newest(dir: &Path) -> qx_testkit::server::TestServer {
    let server = start(dir);
    let signer = Signer::new();
    for v in ["1.0.0", "1.1.0"] {
        published(&server, &Release::new(&signer, "quantix-os", "stable", v)).await;
    }
    let manifest = "quantix-os/stable/1.1.0/manifest.json";
    let bytes = server.stored().read(manifest).unwrap();
    server.stored().write(manifest, &bytes[..bytes.len() / 2]);
    server
}

/// The body of `path`'s answer, asserting the status and that no file-system path leaks.
async fn body_of(server: &qx_testkit::server::TestServer, path: &str, status: u16) -> String {
    let res = get(server, path).await;
    let got = res.status().as_u16();
    let body = res.text().await.unwrap();
    assert_eq!(got, status, "GET {path}: {body}");
    let root = server.release_dir().to_string_lossy().into_owned();
    assert!(
        !body.contains(&root),
        "GET {path} leaks the release directory: {body}"
    );
    assert!(
        !body.contains("manifest.json"),
        "GET {path} leaks a file name: {body}"
    );
    body
}

#[tokio::test]
async fn truncated_manifest_is_skipped_by_manifest_releases_and_channels() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_damaged_newest(dir.path()).await;

    let res = get(&server, "/api/v1/quantix-os/manifest?channel=stable").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-qx-version"], "1.0.0");

    let list: Value = serde_json::from_str(
        &body_of(&server, "/api/v1/quantix-os/releases?channel=stable", 200).await,
    )
    .unwrap();
    let versions: Vec<&str> = list["releases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["version"].as_str())
        .collect();
    assert_eq!(versions, ["1.0.0"]);

    let channels: Value =
        serde_json::from_str(&body_of(&server, "/api/v1/channels", 200).await).unwrap();
    assert_eq!(channels["products"]["quantix-os"]["stable"], "1.0.0");
}

#[tokio::test]
async fn damaged_release_error_names_no_file_system_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_damaged_newest(dir.path()).await;
    let body = body_of(
        &server,
        "/api/v1/quantix-os/releases/1.1.0/qx-console.bin?channel=stable",
        500,
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("damaged")),
        "{body}"
    );
}

#[tokio::test]
async fn repeated_query_parameter_is_400() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    published(
        &server,
        &Release::new(&signer, "quantix-os", "stable", "1.0.0"),
    )
    .await;
    for path in [
        "/api/v1/quantix-os/manifest?channel=stable&channel=beta",
        "/api/v1/quantix-os/releases?channel=stable&channel=stable",
    ] {
        let v = expect_error(get(&server, path).await, 400).await;
        assert!(
            v["error"].as_str().unwrap().contains("more than once"),
            "{path}: {v}"
        );
    }
}

#[tokio::test]
async fn malformed_query_escape_is_400() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    published(
        &server,
        &Release::new(&signer, "quantix-os", "stable", "1.0.0"),
    )
    .await;
    for path in [
        "/api/v1/quantix-os/manifest?%zz",
        "/api/v1/quantix-os/manifest?channel=stable&x=%4",
        "/api/v1/quantix-os/releases?channel=%ff",
    ] {
        expect_error(get(&server, path).await, 400).await;
    }
}

#[tokio::test]
async fn republish_of_yanked_release_says_it_stays_yanked() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "stable", "1.0.0");
    published(&server, &rel).await;
    let res = publish(&server, &rel).await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["yanked"], false, "{v}");

    let res = delete_authorized(&format!(
        "{}/api/v1/quantix-os/releases/1.0.0?channel=stable",
        server.url()
    ))
    .await;
    assert_eq!(res.status(), 200);

    let res = publish(&server, &rel).await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        v["yanked"], true,
        "a re-publish of a yanked release must say so: {v}"
    );
}

/// A small tmpfs mounted on a fresh directory, unmounted on drop.
struct SmallMount {
    dir: tempfile::TempDir,
}

impl SmallMount {
    fn new(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs (needs root)");
        Self { dir }
    }
}

impl Drop for SmallMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
#[ignore = "slow tier: needs root and a small mount; `cargo xtask test` runs it"]
async fn publish_onto_full_disk_is_507_json() {
    let mount = SmallMount::new("1m");
    let server = start(mount.dir.path());
    let signer = Signer::new();
    // 3 MiB that do not compress, on a 1 MiB file system.
    let mut blob = Vec::with_capacity(3 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while blob.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        blob.extend_from_slice(&x.to_le_bytes());
    }
    let rel = Release::with_artifacts(
        &signer,
        "quantix-os",
        "stable",
        "1.0.0",
        vec![("qx-big.bin".to_owned(), blob)],
    );
    let v = expect_error(publish(&server, &rel).await, 507).await;
    let text = v.to_string();
    assert!(text.contains("full"), "{text}");
    assert!(
        !text.contains(&mount.dir.path().to_string_lossy().into_owned()),
        "the 507 leaks a path: {text}"
    );
    assert!(
        wait_until(std::time::Duration::from_secs(10), || staging_entries(
            &qx_testkit::stored::Stored::Local(mount.dir.path().to_owned())
        )
        .is_empty()),
        "staging not cleaned after a full disk"
    );
    drop(server);
}

/// A raw request's answer must be `status` with a JSON error body.
fn assert_json_answer(server: &qx_testkit::server::TestServer, request: &[u8], status: u16) {
    let (got, head, body) = raw_request(server.addr(), request);
    assert_eq!(got, status, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{status} must be JSON: {head}"
    );
    let v: Value = serde_json::from_slice(&body).expect("a JSON body");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    assert!(v["details"].is_array(), "{v}");
}

#[test]
fn uri_too_long_414_is_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let path = format!("/api/v1/quantix-os/manifest?x={}", "a".repeat(70_000));
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_json_answer(&server, req.as_bytes(), 414);
}

#[test]
fn too_many_headers_431_is_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let mut req = String::from("GET /health HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..150 {
        req.push_str(&format!("x-h{i}: v\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    assert_json_answer(&server, req.as_bytes(), 431);
}

#[test]
fn header_section_too_large_431_is_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let req = format!(
        "GET /health HTTP/1.1\r\nHost: localhost\r\nx-big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(600_000)
    );
    assert_json_answer(&server, req.as_bytes(), 431);
}

/// A server holding quantix-os 1.0.0 on stable.
async fn server_with_one_release(dir: &Path) -> qx_testkit::server::TestServer {
    let server = start(dir);
    let rel = Release::new(&Signer::new(), "quantix-os", "stable", "1.0.0");
    published(&server, &rel).await;
    server
}

/// Copies every stored file of the release at `from` to `to`, as an operator might.
fn copy_stored(stored: &qx_testkit::stored::Stored, from: &str, to: &str) {
    for f in stored.list(from) {
        let bytes = stored.read(&format!("{from}/{f}")).unwrap();
        stored.write(&format!("{to}/{f}"), &bytes);
    }
}

#[tokio::test]
async fn stored_manifest_for_another_channel_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_one_release(dir.path()).await;
    // Channel beta holding a copy of stable's release.
    copy_stored(
        server.stored(),
        "quantix-os/stable/1.0.0",
        "quantix-os/beta/1.0.0",
    );
    let res = get(&server, "/api/v1/quantix-os/manifest?channel=beta").await;
    assert_eq!(res.status(), 404, "{}", res.text().await.unwrap());
    let res = get(
        &server,
        "/api/v1/quantix-os/releases/1.0.0/qx-console.bin?channel=beta",
    )
    .await;
    assert_ne!(res.status(), 200);
}

#[tokio::test]
async fn stored_manifest_for_another_product_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_one_release(dir.path()).await;
    copy_stored(
        server.stored(),
        "quantix-os/stable/1.0.0",
        "evil-os/stable/1.0.0",
    );
    let res = get(&server, "/api/v1/evil-os/manifest?channel=stable").await;
    assert_eq!(res.status(), 404, "{}", res.text().await.unwrap());
}
