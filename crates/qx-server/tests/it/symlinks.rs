//! Issue 11 item 8: the server never follows a symlink inside its release directory. Each
//! link points at a directory or file the test creates outside `RELEASE_DIR`; its content must
//! survive and never be served. (`RELEASE_DIR` itself may be reached through a symlink.)

use std::os::unix::fs::symlink;
use std::path::Path;

use crate::support::*;

/// A file outside the release directory whose content must never be served.
const SECRET: &[u8] = b"root:secret-hash-that-must-never-leave-this-host:19000:0:99999:7:::\n";

/// A server over `<tmp>/releases` with quantix-os 1.0.0 published on stable.
async fn server_with_release(tmp: &Path) -> qx_testkit::server::TestServer {
    let server = start(&tmp.join("releases"));
    let signer = Signer::new();
    published(
        &server,
        &Release::new(&signer, "quantix-os", "stable", "1.0.0"),
    )
    .await;
    server
}

/// Asserts `path` answers 404 (skipped) or 500 (refused as damage) and not the linked bytes.
async fn assert_not_served(server: &qx_testkit::server::TestServer, path: &str) {
    let res = get(server, path).await;
    let status = res.status().as_u16();
    let body = res.bytes().await.unwrap();
    assert!(
        status == 404 || status == 500,
        "GET {path} answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    assert!(
        !body.windows(SECRET.len()).any(|w| w == SECRET),
        "GET {path} served the linked file"
    );
}

#[test]
fn symlinked_staging_dir_is_refused_and_its_target_survives() {
    let tmp = tempfile::tempdir().unwrap();
    let releases = tmp.path().join("releases");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&releases).unwrap();
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("keep.txt"), SECRET).unwrap();
    std::fs::write(outside.join("sub/keep.txt"), SECRET).unwrap();
    symlink(&outside, releases.join(".staging")).unwrap();

    let started = qx_testkit::server::TestServer::start(&releases, TOKEN);

    assert_eq!(std::fs::read(outside.join("keep.txt")).unwrap(), SECRET);
    assert_eq!(std::fs::read(outside.join("sub/keep.txt")).unwrap(), SECRET);
    let err = match started {
        Ok(_) => panic!("the server started over a symlinked .staging"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains(".staging") && err.contains("symlink"),
        "the refusal should name the staging directory and the symlink: {err}"
    );
}

#[tokio::test]
async fn symlinked_product_directory_serves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // Another product's releases, outside this server's release directory.
    let other = tmp.path().join("other");
    let other_server = start(&other);
    let signer = Signer::new();
    published(
        &other_server,
        &Release::new(&signer, "other-os", "stable", "1.0.0"),
    )
    .await;
    drop(other_server);
    let server = server_with_release(tmp.path()).await;
    symlink(other.join("other-os"), tmp.path().join("releases/evil-os")).unwrap();

    let res = get(&server, "/api/v1/evil-os/manifest?channel=stable").await;
    assert_eq!(res.status(), 404, "{}", res.text().await.unwrap());
    for path in [
        "/api/v1/evil-os/releases/1.0.0/manifest.json?channel=stable",
        "/api/v1/evil-os/releases/1.0.0/qx-console.bin?channel=stable",
    ] {
        assert_not_served(&server, path).await;
    }
    let res = get(&server, "/api/v1/evil-os/releases?channel=stable").await;
    let body = res.text().await.unwrap();
    assert!(
        !body.contains("1.0.0"),
        "the linked product is listed: {body}"
    );
    assert!(other.join("other-os/stable/1.0.0/manifest.json").is_file());
}

#[tokio::test]
async fn symlinked_version_directory_serves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("other");
    let other_server = start(&other);
    let signer = Signer::new();
    published(
        &other_server,
        &Release::new(&signer, "quantix-os", "stable", "9.0.0"),
    )
    .await;
    drop(other_server);
    let server = server_with_release(tmp.path()).await;
    symlink(
        other.join("quantix-os/stable/9.0.0"),
        tmp.path().join("releases/quantix-os/stable/9.0.0"),
    )
    .unwrap();

    let res = get(&server, "/api/v1/quantix-os/manifest?channel=stable").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-qx-version"], "1.0.0");
    assert_not_served(
        &server,
        "/api/v1/quantix-os/releases/9.0.0/qx-console.bin?channel=stable",
    )
    .await;
}

#[tokio::test]
async fn artifact_symlinked_to_a_file_outside_is_not_served() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server_with_release(tmp.path()).await;
    let artifact = tmp
        .path()
        .join("releases/quantix-os/stable/1.0.0/qx-console.bin");
    // The secret padded to the artifact's declared size, so only the link gives it away.
    let size = std::fs::metadata(&artifact).unwrap().len() as usize;
    let mut secret = SECRET.to_vec();
    secret.resize(size, b'\n');
    let outside = tmp.path().join("shadow");
    std::fs::write(&outside, &secret).unwrap();
    std::fs::remove_file(&artifact).unwrap();
    symlink(&outside, &artifact).unwrap();

    assert_not_served(
        &server,
        "/api/v1/quantix-os/releases/1.0.0/qx-console.bin?channel=stable",
    )
    .await;
    assert_eq!(std::fs::read(&outside).unwrap(), secret);
}

#[tokio::test]
async fn symlinked_manifest_file_is_not_served() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server_with_release(tmp.path()).await;
    let manifest = tmp
        .path()
        .join("releases/quantix-os/stable/1.0.0/manifest.json");
    let outside = tmp.path().join("manifest-copy.json");
    std::fs::copy(&manifest, &outside).unwrap();
    std::fs::remove_file(&manifest).unwrap();
    symlink(&outside, &manifest).unwrap();

    let res = get(&server, "/api/v1/quantix-os/manifest?channel=stable").await;
    assert_eq!(res.status(), 404);
    assert!(outside.is_file());
}
