//! Shared pieces of the server's integration tests: a signing key, real releases (tar.zst
//! artifacts, signed manifests), publish requests, raw HTTP on a TCP socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use qx_core::{KeyPair, Sha256, SigningKey};
use qx_testkit::server::TestServer;
use qx_testkit::stored::Stored;
use serde_json::{json, Value};

pub const TOKEN: &str = "test-token-0123456789";

pub struct Signer {
    pub key: SigningKey,
    pub public_key: String,
    _dir: tempfile::TempDir,
}

impl Signer {
    pub fn new() -> Self {
        let kp = KeyPair::generate().expect("generate a key pair");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("release.key");
        std::fs::write(&path, &kp.secret_key_file).expect("write the secret key");
        let key = SigningKey::from_file(&path).expect("load the secret key");
        Self {
            key,
            public_key: kp.public_key_file,
            _dir: dir,
        }
    }

    pub fn sign(&self, data: &[u8]) -> String {
        self.key.sign(data, "test release").expect("sign")
    }
}

/// A tar.zst archive holding one file `name` with `content`.
pub fn tar_zst(name: &str, content: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    tar.append_data(&mut header, name, content)
        .expect("append to tar");
    let raw = tar.into_inner().expect("finish tar");
    zstd::encode_all(&raw[..], 3).expect("zstd")
}

/// A release ready to publish.
#[derive(Clone)]
pub struct Release {
    pub product: String,
    pub version: String,
    pub manifest: Vec<u8>,
    pub signature: String,
    pub artifacts: Vec<(String, Vec<u8>)>,
}

/// The manifest JSON of a component release listing `artifacts` (one component each).
pub fn manifest_value(
    product: &str,
    channel: &str,
    version: &str,
    artifacts: &[(String, Vec<u8>)],
) -> Value {
    let components: Vec<Value> = artifacts
        .iter()
        .map(|(name, data)| {
            let comp = name.split('.').next().unwrap_or("c");
            json!({
                "name": comp,
                "version": version,
                "artifact": name,
                "sha256": Sha256::of(data).to_hex(),
                "size_bytes": data.len(),
                "install_path": format!("/data/bin/{comp}"),
                "kind": "file",
                "permissions": "0755",
            })
        })
        .collect();
    json!({
        "schema": 1,
        "product": product,
        "version": version,
        "channel": channel,
        "release_date": "2026-01-16T12:00:00Z",
        "expires": "2036-01-16T12:00:00Z",
        "update_type": "component",
        "components": components,
        "release_notes": format!("release {version}"),
    })
}

impl Release {
    /// A release of two artifacts: a real tar.zst and a plain blob.
    pub fn new(signer: &Signer, product: &str, channel: &str, version: &str) -> Self {
        let artifacts = vec![
            (
                "qx-node.tar.zst".to_owned(),
                tar_zst(
                    "qx-node",
                    format!("#!/bin/sh\necho qx-node {version}\n").as_bytes(),
                ),
            ),
            (
                "qx-console.bin".to_owned(),
                format!("console {version} ").repeat(500).into_bytes(),
            ),
        ];
        Self::with_artifacts(signer, product, channel, version, artifacts)
    }

    pub fn with_artifacts(
        signer: &Signer,
        product: &str,
        channel: &str,
        version: &str,
        artifacts: Vec<(String, Vec<u8>)>,
    ) -> Self {
        let v = manifest_value(product, channel, version, &artifacts);
        Self::from_value(signer, &v, artifacts)
    }

    pub fn from_value(signer: &Signer, v: &Value, artifacts: Vec<(String, Vec<u8>)>) -> Self {
        let manifest = serde_json::to_vec_pretty(v).expect("json");
        let signature = signer.sign(&manifest);
        Self {
            product: v["product"].as_str().unwrap_or("").to_owned(),
            version: v["version"].as_str().unwrap_or("").to_owned(),
            manifest,
            signature,
            artifacts,
        }
    }

    /// The multipart form in the order the server wants: manifest, signature, artifacts.
    pub fn form(&self) -> reqwest::multipart::Form {
        form(&self.manifest, &self.signature, &self.artifacts)
    }

    pub fn artifact(&self, name: &str) -> &[u8] {
        &self
            .artifacts
            .iter()
            .find(|(n, _)| n == name)
            .expect("artifact in release")
            .1
    }
}

pub fn form(
    manifest: &[u8],
    signature: &str,
    artifacts: &[(String, Vec<u8>)],
) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new()
        .part(
            "manifest",
            reqwest::multipart::Part::bytes(manifest.to_vec()),
        )
        .part(
            "signature",
            reqwest::multipart::Part::text(signature.to_owned()),
        );
    for (name, data) in artifacts {
        form = form.part(
            name.clone(),
            reqwest::multipart::Part::bytes(data.clone()).file_name(name.clone()),
        );
    }
    form
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

pub fn start(dir: &Path) -> TestServer {
    TestServer::start(dir, TOKEN).expect("start the server")
}

pub async fn publish_form(
    server: &TestServer,
    product: &str,
    form: reqwest::multipart::Form,
) -> reqwest::Response {
    client()
        .post(format!("{}/api/v1/{product}/publish", server.url()))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .expect("send publish")
}

pub async fn publish(server: &TestServer, release: &Release) -> reqwest::Response {
    publish_form(server, &release.product, release.form()).await
}

/// Publishes and insists on 201.
pub async fn published(server: &TestServer, release: &Release) {
    let res = publish(server, release).await;
    let status = res.status();
    let body = res.text().await.unwrap_or_default();
    assert_eq!(status, 201, "publish of {} failed: {body}", release.version);
}

pub async fn get(server: &TestServer, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", server.url()))
        .send()
        .await
        .expect("send GET")
}

/// Asserts the status and that the body is a JSON error; returns the body.
pub async fn expect_error(res: reqwest::Response, status: u16) -> Value {
    let got = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = res.text().await.expect("body");
    assert_eq!(got, status, "unexpected status; body: {text}");
    assert_eq!(ct, "application/json", "error body must be JSON: {text}");
    let v: Value = serde_json::from_str(&text).expect("JSON error body");
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "error sentence missing: {text}"
    );
    assert!(v["details"].is_array(), "details missing: {text}");
    v
}

/// Sends a raw HTTP/1.1 request and returns (status, head, body).
pub fn raw_request(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let body = out[split + 4..].to_vec();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, head, body)
}

pub fn raw_get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    raw_request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Calls `cond` every 20 ms until it returns true or `limit` has passed; returns whether it did.
pub fn wait_until(limit: Duration, cond: impl FnMut() -> bool) -> bool {
    qx_testkit::wait::poll(limit, Duration::from_millis(20), cond)
}

/// Entries of `$RELEASE_DIR/.staging`.
pub fn staging_entries(stored: &Stored) -> Vec<String> {
    match stored.local_dir() {
        Some(root) => match std::fs::read_dir(root.join(".staging")) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        },
        None => {
            let mut uploads: Vec<String> = stored
                .list(".staging")
                .iter()
                .filter_map(|f| f.split('/').next().map(str::to_owned))
                .collect();
            uploads.dedup();
            uploads
        }
    }
}

/// Whether anything is stored under `rel` (a release's directory or prefix).
pub fn has_files(stored: &Stored, rel: &str) -> bool {
    !stored.list(rel).is_empty()
}

/// GET `url` with extra request headers.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("send GET")
}

/// DELETE `url` with the publish token (a yank).
pub async fn delete_authorized(url: &str) -> reqwest::Response {
    client()
        .delete(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("send DELETE")
}

/// Publishes `release` through `first` and, at the same time, the same version with other
/// release notes (so other manifest bytes) through `second`: exactly one must win (201, the
/// other 409), and the stored manifest must be the winner's.
pub async fn race_two_contents(
    first: &TestServer,
    second: &TestServer,
    signer: &Signer,
    release: &Release,
) {
    let mut v: Value = serde_json::from_slice(&release.manifest).unwrap();
    v["release_notes"] = "the other one".into();
    let other = Release::from_value(signer, &v, release.artifacts.clone());
    let (ra, rb) = tokio::join!(publish(first, release), publish(second, &other));
    let (sa, sb) = (ra.status().as_u16(), rb.status().as_u16());
    let mut statuses = [sa, sb];
    statuses.sort();
    assert_eq!(statuses, [201, 409], "{}", release.version);
    let winner = if sa == 201 { release } else { &other };
    let stored = first
        .stored()
        .read(&format!(
            "{}/stable/{}/manifest.json",
            release.product, release.version
        ))
        .unwrap();
    assert_eq!(stored, winner.manifest, "{}", release.version);
}
