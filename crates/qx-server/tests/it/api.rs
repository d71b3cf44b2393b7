//! Every endpoint of docs/spec.md §3 on its happy path, with real signed releases on a real server.

use crate::support::*;
use base64::Engine;
use qx_core::{Sha256, TrustedKeys};
use serde_json::Value;

#[tokio::test]
async fn health_answers_ok_with_version() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let res = get(&server, "/health").await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn publish_then_manifest_serves_exact_signed_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "stable", "1.2.3");
    let res = publish(&server, &rel).await;
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["product"], "quantix-os");
    assert_eq!(v["channel"], "stable");
    assert_eq!(v["version"], "1.2.3");
    let mut names: Vec<&str> = v["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["qx-console.bin", "qx-node.tar.zst"]);

    // channel defaults to stable
    let res = get(&server, "/api/v1/quantix-os/manifest").await;
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["cache-control"], "no-cache");
    let etag = format!("\"{}\"", Sha256::of(&rel.manifest).to_hex());
    assert_eq!(h["etag"].to_str().unwrap(), etag);
    let sig = base64::engine::general_purpose::STANDARD
        .decode(h["x-qx-signature"].to_str().unwrap())
        .unwrap();
    let body = res.bytes().await.unwrap();
    assert_eq!(body.as_ref(), rel.manifest.as_slice());
    // The agent's check: the signature verifies with the publisher's key.
    let mut keys = TrustedKeys::new();
    keys.add(&signer.public_key).unwrap();
    keys.verify(&body, std::str::from_utf8(&sig).unwrap())
        .expect("signature from the header verifies over the manifest bytes");

    // the layout of docs/spec.md §3 (files on disk, or objects under the store's prefix)
    let stored = server.stored();
    assert_eq!(
        stored
            .read("quantix-os/stable/1.2.3/manifest.json")
            .unwrap(),
        rel.manifest
    );
    assert_eq!(
        stored
            .read("quantix-os/stable/1.2.3/qx-node.tar.zst")
            .unwrap(),
        rel.artifact("qx-node.tar.zst")
    );
}

#[tokio::test]
async fn manifest_if_none_match_gives_304() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "dev", "0.1.0");
    published(&server, &rel).await;
    let etag = format!("\"{}\"", Sha256::of(&rel.manifest).to_hex());
    let res = get_with(
        &format!("{}/api/v1/quantix-os/manifest?channel=dev", server.url()),
        &[("If-None-Match", etag.as_str())],
    )
    .await;
    assert_eq!(res.status(), 304);
    assert_eq!(res.headers()["etag"].to_str().unwrap(), etag);
    assert!(res.bytes().await.unwrap().is_empty());
    // another tag: full answer
    let res = get_with(
        &format!("{}/api/v1/quantix-os/manifest?channel=dev", server.url()),
        &[("If-None-Match", "\"0000\"")],
    )
    .await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn manifest_picks_newest_by_semver_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    for v in ["1.9.0", "1.10.0", "1.10.0-rc.1", "1.2.0"] {
        published(&server, &Release::new(&signer, "quantix-os", "beta", v)).await;
    }
    let res = get(&server, "/api/v1/quantix-os/manifest?channel=beta").await;
    assert_eq!(res.headers()["x-qx-version"], "1.10.0");
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["version"], "1.10.0");

    let res = get(&server, "/api/v1/quantix-os/releases?channel=beta").await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["product"], "quantix-os");
    assert_eq!(v["channel"], "beta");
    let versions: Vec<&str> = v["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1.10.0", "1.10.0-rc.1", "1.9.0", "1.2.0"]);
    let first = &v["releases"][0];
    assert_eq!(first["yanked"], false);
    assert_eq!(first["update_type"], "component");
    assert_eq!(first["release_date"], "2026-01-16T12:00:00Z");
    assert_eq!(first["artifacts"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn channels_lists_latest_per_product_and_channel() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    published(
        &server,
        &Release::new(&signer, "quantix-os", "dev", "0.2.0"),
    )
    .await;
    published(
        &server,
        &Release::new(&signer, "quantix-os", "dev", "0.3.0"),
    )
    .await;
    published(
        &server,
        &Release::new(&signer, "quantix-os", "stable", "0.1.0"),
    )
    .await;
    published(
        &server,
        &Release::new(&signer, "quantix-vdc", "beta", "2.0.0"),
    )
    .await;
    let v: Value = get(&server, "/api/v1/channels").await.json().await.unwrap();
    assert_eq!(v["channels"], serde_json::json!(["dev", "beta", "stable"]));
    assert_eq!(
        v["products"],
        serde_json::json!({
            "quantix-os": {"dev": "0.3.0", "stable": "0.1.0"},
            "quantix-vdc": {"beta": "2.0.0"},
        })
    );
}

#[tokio::test]
async fn artifact_download_whole_with_etag_and_length() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "stable", "1.0.0");
    published(&server, &rel).await;
    let data = rel.artifact("qx-node.tar.zst");
    let res = get(&server, "/api/v1/quantix-os/releases/1.0.0/qx-node.tar.zst").await;
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["content-length"], data.len().to_string().as_str());
    assert_eq!(
        h["etag"].to_str().unwrap(),
        format!("\"{}\"", Sha256::of(data).to_hex())
    );
    assert_eq!(res.bytes().await.unwrap().as_ref(), data);
    // It is a real archive: unpack it.
    let raw = zstd::decode_all(data).unwrap();
    let mut ar = tar::Archive::new(&raw[..]);
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["qx-node"]);
}

#[tokio::test]
async fn artifact_head_has_headers_and_no_body() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "stable", "1.0.0");
    published(&server, &rel).await;
    let len = rel.artifact("qx-console.bin").len();
    let (status, head, body) = raw_request(
        server.addr(),
        b"HEAD /api/v1/quantix-os/releases/1.0.0/qx-console.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    let head = head.to_ascii_lowercase();
    assert!(head.contains(&format!("content-length: {len}")), "{head}");
    assert!(head.contains("accept-ranges: bytes"), "{head}");
    assert!(head.contains("etag: \""), "{head}");
    assert!(body.is_empty());
}

#[tokio::test]
async fn artifact_single_range_gives_206() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "stable", "1.0.0");
    published(&server, &rel).await;
    let data = rel.artifact("qx-console.bin");
    let url = format!(
        "{}/api/v1/quantix-os/releases/1.0.0/qx-console.bin",
        server.url()
    );
    for (range, start, end) in [
        ("bytes=10-19", 10usize, 19usize),
        ("bytes=100-", 100, data.len() - 1),
        ("bytes=-7", data.len() - 7, data.len() - 1),
        ("bytes=5-99999999", 5, data.len() - 1),
    ] {
        let res = get_with(&url, &[("Range", range)]).await;
        assert_eq!(res.status(), 206, "{range}");
        assert_eq!(
            res.headers()["content-range"].to_str().unwrap(),
            format!("bytes {start}-{end}/{}", data.len()),
            "{range}"
        );
        assert_eq!(
            res.headers()["content-length"].to_str().unwrap(),
            (end - start + 1).to_string()
        );
        assert_eq!(
            res.bytes().await.unwrap().as_ref(),
            &data[start..=end],
            "{range}"
        );
    }
}

#[tokio::test]
async fn artifact_if_range_matching_etag_gives_206_else_200() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "stable", "1.0.0");
    published(&server, &rel).await;
    let data = rel.artifact("qx-console.bin");
    let etag = format!("\"{}\"", Sha256::of(data).to_hex());
    let url = format!(
        "{}/api/v1/quantix-os/releases/1.0.0/qx-console.bin",
        server.url()
    );
    let res = get_with(&url, &[("Range", "bytes=4-"), ("If-Range", etag.as_str())]).await;
    assert_eq!(res.status(), 206);
    assert_eq!(res.bytes().await.unwrap().as_ref(), &data[4..]);
    let res = get_with(
        &url,
        &[("Range", "bytes=4-"), ("If-Range", "\"an-older-file\"")],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), data);
}

#[tokio::test]
async fn artifact_endpoint_serves_manifest_and_signature_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "dev", "1.0.0");
    published(&server, &rel).await;
    let base = "/api/v1/quantix-os/releases/1.0.0";
    let res = get(&server, &format!("{base}/manifest.json?channel=dev")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["etag"].to_str().unwrap(),
        format!("\"{}\"", Sha256::of(&rel.manifest).to_hex())
    );
    assert_eq!(res.bytes().await.unwrap().as_ref(), rel.manifest.as_slice());
    let res = get(
        &server,
        &format!("{base}/manifest.json.minisig?channel=dev"),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), rel.signature);
    // ranges work on them too
    let res = get_with(
        &format!("{}{base}/manifest.json?channel=dev", server.url()),
        &[("Range", "bytes=0-0")],
    )
    .await;
    assert_eq!(res.status(), 206);
    assert_eq!(res.bytes().await.unwrap().as_ref(), &rel.manifest[..1]);
}

#[tokio::test]
async fn republish_byte_identical_is_200() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "stable", "1.0.0");
    published(&server, &rel).await;
    let res = publish(&server, &rel).await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["version"], "1.0.0");
}

#[tokio::test]
async fn promote_hard_links_artifacts_into_the_target_channel() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "dev", "2.0.0");
    published(&server, &rel).await;
    let mut v: Value = serde_json::from_slice(&rel.manifest).unwrap();
    v["channel"] = "beta".into();
    let beta = Release::from_value(&signer, &v, vec![]);
    let url = format!(
        "{}/api/v1/quantix-os/releases/2.0.0/promote?from=dev",
        server.url()
    );
    let res = client()
        .post(&url)
        .bearer_auth(TOKEN)
        .multipart(beta.form())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    if let Some(root) = server.stored().local_dir() {
        let src = root.join("quantix-os/dev/2.0.0/qx-node.tar.zst");
        let dst = root.join("quantix-os/beta/2.0.0/qx-node.tar.zst");
        let (a, b) = (
            std::fs::metadata(&src).unwrap(),
            std::fs::metadata(&dst).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "promoted artifact must be a hard link");
        assert_eq!(a.nlink(), 2);
    } else {
        // An object store copies it server-side.
        assert_eq!(
            server
                .stored()
                .read("quantix-os/beta/2.0.0/qx-node.tar.zst")
                .unwrap(),
            rel.artifact("qx-node.tar.zst")
        );
    }
    let res = get(&server, "/api/v1/quantix-os/manifest?channel=beta").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        beta.manifest.as_slice()
    );
    let res = get(
        &server,
        "/api/v1/quantix-os/releases/2.0.0/qx-node.tar.zst?channel=beta",
    )
    .await;
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        rel.artifact("qx-node.tar.zst")
    );

    // the same promote again: identical, 200
    let res = client()
        .post(&url)
        .bearer_auth(TOKEN)
        .multipart(beta.form())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn yank_falls_back_to_previous_release_and_keeps_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let old = Release::new(&signer, "quantix-os", "stable", "1.0.0");
    let new = Release::new(&signer, "quantix-os", "stable", "1.1.0");
    published(&server, &old).await;
    published(&server, &new).await;
    let res = get(&server, "/api/v1/quantix-os/manifest").await;
    assert_eq!(res.headers()["x-qx-version"], "1.1.0");

    let res = delete_authorized(&format!(
        "{}/api/v1/quantix-os/releases/1.1.0?channel=stable",
        server.url()
    ))
    .await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["yanked"], true);

    let res = get(&server, "/api/v1/quantix-os/manifest").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), old.manifest.as_slice());
    let v: Value = get(&server, "/api/v1/quantix-os/releases")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["releases"][0]["version"], "1.1.0");
    assert_eq!(v["releases"][0]["yanked"], true);
    assert_eq!(v["releases"][1]["yanked"], false);
    let v: Value = get(&server, "/api/v1/channels").await.json().await.unwrap();
    assert_eq!(v["products"]["quantix-os"]["stable"], "1.0.0");
    // files kept, and still downloadable for hosts in the middle of a download
    let res = get(&server, "/api/v1/quantix-os/releases/1.1.0/qx-node.tar.zst").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        new.artifact("qx-node.tar.zst")
    );
    // yanking again is harmless
    let res = delete_authorized(&format!(
        "{}/api/v1/quantix-os/releases/1.1.0",
        server.url()
    ))
    .await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn yank_of_only_release_makes_manifest_404() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    published(
        &server,
        &Release::new(&signer, "quantix-os", "stable", "1.0.0"),
    )
    .await;
    let res = delete_authorized(&format!(
        "{}/api/v1/quantix-os/releases/1.0.0",
        server.url()
    ))
    .await;
    assert_eq!(res.status(), 200);
    let v = expect_error(get(&server, "/api/v1/quantix-os/manifest").await, 404).await;
    assert!(v["error"].as_str().unwrap().contains("yanked"), "{v}");
}

#[tokio::test]
async fn metrics_count_requests_bytes_and_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "stable", "1.0.0");
    published(&server, &rel).await;
    let _ = get(&server, "/api/v1/quantix-os/releases/1.0.0/qx-console.bin")
        .await
        .bytes()
        .await;
    let _ = get(&server, "/api/v1/nope/manifest").await;
    let res = get(&server, "/metrics").await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(
        text.contains(r#"qx_http_requests_total{method="POST",route="/api/v1/{product}/publish",status="201"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"qx_http_requests_total{method="GET",route="/api/v1/{product}/manifest",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"qx_publishes_total{outcome="created"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"qx_errors_total{kind="client"} 1"#),
        "{text}"
    );
    let served: u64 = text
        .lines()
        .find(|l| l.starts_with("qx_served_bytes_total "))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|n| n.parse().ok())
        .expect("served bytes line");
    assert!(
        served >= rel.artifact("qx-console.bin").len() as u64,
        "{text}"
    );
}

#[tokio::test]
async fn restart_finds_releases_again() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "stable", "3.0.0");
    {
        let server = start(dir.path());
        published(&server, &rel).await;
    }
    let server = start(dir.path());
    let res = get(&server, "/api/v1/quantix-os/manifest").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), rel.manifest.as_slice());
    let res = get(&server, "/api/v1/quantix-os/releases/3.0.0/qx-node.tar.zst").await;
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        rel.artifact("qx-node.tar.zst")
    );
}

#[tokio::test]
async fn full_image_release_with_kernel_and_initramfs() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let image = vec![7u8; 300_000];
    let kernel = b"kernel".to_vec();
    let initramfs = b"initramfs".to_vec();
    let v = serde_json::json!({
        "schema": 1, "product": "quantix-os", "version": "5.0.0", "channel": "stable",
        "release_date": "2026-01-16T12:00:00Z", "expires": "2036-01-16T12:00:00Z",
        "update_type": "full",
        "full_image": {
            "artifact": "system.squashfs", "sha256": Sha256::of(&image).to_hex(), "size_bytes": image.len(),
            "kernel": {"artifact": "vmlinuz", "sha256": Sha256::of(&kernel).to_hex(), "size_bytes": kernel.len()},
            "initramfs": {"artifact": "initramfs", "sha256": Sha256::of(&initramfs).to_hex(), "size_bytes": initramfs.len()},
            "requires_reboot": true, "target_slot": "auto"
        }
    });
    let rel = Release::from_value(
        &signer,
        &v,
        vec![
            ("system.squashfs".into(), image.clone()),
            ("vmlinuz".into(), kernel),
            ("initramfs".into(), initramfs),
        ],
    );
    published(&server, &rel).await;
    let res = get(&server, "/api/v1/quantix-os/releases/5.0.0/system.squashfs").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), image.as_slice());
    let res = get(&server, "/api/v1/quantix-os/releases/5.0.0/vmlinuz").await;
    assert_eq!(res.text().await.unwrap(), "kernel");
}

#[tokio::test]
async fn artifact_if_none_match_gives_304() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "stable", "1.0.0");
    published(&server, &rel).await;
    let etag = format!(
        "\"{}\"",
        Sha256::of(rel.artifact("qx-node.tar.zst")).to_hex()
    );
    let res = get_with(
        &format!(
            "{}/api/v1/quantix-os/releases/1.0.0/qx-node.tar.zst",
            server.url()
        ),
        &[("If-None-Match", etag.as_str())],
    )
    .await;
    assert_eq!(res.status(), 304);
    assert_eq!(res.headers()["etag"].to_str().unwrap(), etag);
}

#[tokio::test]
async fn channels_on_an_empty_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let v: Value = get(&server, "/api/v1/channels").await.json().await.unwrap();
    assert_eq!(
        v,
        serde_json::json!({"channels": ["dev", "beta", "stable"], "products": {}})
    );
}

#[tokio::test]
async fn release_copied_into_the_store_while_running_is_served() {
    // Another server on shared storage (or an operator) adds a release behind this server's
    // back: it shows once the in-memory lookup of the newest release expires (1 s at most).
    // The copy writes the manifest last, as a publish does.
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let old = Release::new(&signer, "quantix-os", "stable", "1.0.0");
    published(&server, &old).await;
    let res = get(&server, "/api/v1/quantix-os/manifest").await;
    assert_eq!(res.headers()["x-qx-version"], "1.0.0");
    let writer = start(other.path());
    published(
        &writer,
        &Release::new(&signer, "quantix-os", "stable", "1.1.0"),
    )
    .await;
    {
        let from = writer.stored();
        let mut files = from.list("quantix-os/stable/1.1.0");
        files.sort_by_key(|f| f == "manifest.json");
        for f in files {
            let rel = format!("quantix-os/stable/1.1.0/{f}");
            server.stored().write(&rel, &from.read(&rel).unwrap());
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let res = get(&server, "/api/v1/quantix-os/manifest").await;
        if res.headers()["x-qx-version"] == "1.1.0" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the release added on disk was not served within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn publish_ignores_the_filename_attribute_of_parts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "stable", "1.0.0");
    let mut form = reqwest::multipart::Form::new()
        .part(
            "manifest",
            reqwest::multipart::Part::bytes(rel.manifest.clone()),
        )
        .part(
            "signature",
            reqwest::multipart::Part::text(rel.signature.clone()).file_name("x.minisig"),
        );
    for (name, data) in &rel.artifacts {
        form = form.part(
            name.clone(),
            reqwest::multipart::Part::bytes(data.clone()).file_name("../../some/local/path.bin"),
        );
    }
    let res = publish_form(&server, "quantix-os", form).await;
    assert_eq!(res.status(), 201);
    assert!(server
        .stored()
        .exists("quantix-os/stable/1.0.0/qx-node.tar.zst"));
    assert!(!has_files(server.stored(), "some"));
    assert!(server.stored().list("some").is_empty());
}
