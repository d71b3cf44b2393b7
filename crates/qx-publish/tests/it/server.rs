//! `qx-publish publish|promote|yank|verify URL` against a real update server on a loopback
//! port.

use std::path::Path;

use crate::support::{keygen, qx_publish, stderr, stdout, Work, HEADER, TOKEN};
use base64::Engine;
use predicates::prelude::*;
use qx_core::api::{ServerUrl, SIGNATURE_HEADER};
use qx_core::{Manifest, TrustedKeys, UnknownFields};
use qx_testkit::server::TestServer;

pub const PRODUCT: &str = "quantix-demo";

pub struct Env {
    pub work: Work,
    pub server: TestServer,
    _releases: tempfile::TempDir,
}

pub fn start() -> Env {
    let releases = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(releases.path(), TOKEN).expect("server starts");
    Env {
        work: Work::new(),
        server,
        _releases: releases,
    }
}

impl Env {
    pub fn publish(&self, extra: &[&str]) -> assert_cmd::Command {
        self.publish_spec(&self.work.spec(), extra)
    }

    pub fn publish_spec(&self, spec: &Path, extra: &[&str]) -> assert_cmd::Command {
        let mut cmd = qx_publish();
        cmd.env("QX_PUBLISH_TOKEN", TOKEN)
            .arg("publish")
            .arg("--spec")
            .arg(spec)
            .arg("--key")
            .arg(self.work.key())
            .arg("--server")
            .arg(self.server.url())
            .args(extra);
        cmd
    }

    pub fn urls(&self) -> ServerUrl {
        ServerUrl::new(self.server.url())
    }

    pub fn get(&self, url: &str) -> reqwest::blocking::Response {
        reqwest::blocking::get(url).expect("GET")
    }

    /// `qx-publish promote` of `version` from dev to `to`, re-signed with `key`.
    pub fn promote(&self, key: &Path, to: &str, version: &str) -> assert_cmd::Command {
        let mut cmd = qx_publish();
        cmd.env("QX_PUBLISH_TOKEN", TOKEN)
            .arg("promote")
            .arg("--server")
            .arg(self.server.url())
            .arg("--key")
            .arg(key)
            .args(["--product", PRODUCT, "--from", "dev", "--to", to, version]);
        cmd
    }

    /// The current manifest of a channel, with its signature checked.
    pub fn manifest(&self, channel: &str) -> Manifest {
        let resp = self.get(&self.urls().manifest(PRODUCT, channel));
        assert_eq!(resp.status(), 200, "manifest of {channel}");
        let sig = resp.headers()[SIGNATURE_HEADER]
            .to_str()
            .expect("header")
            .to_owned();
        let sig = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(sig)
                .expect("b64"),
        )
        .expect("utf8");
        let bytes = resp.bytes().expect("body");
        let mut keys = TrustedKeys::new();
        keys.add_file(&self.work.pubkey()).expect("pub");
        keys.verify(&bytes, &sig).expect("signature by our key");
        Manifest::parse(&bytes, UnknownFields::Reject).expect("manifest")
    }
}

#[test]
fn publish_uploads_a_release_the_server_serves() {
    let e = start();
    let out = e.work.path().join("dist");
    e.publish(&["--out", out.to_str().unwrap()])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "published quantix-demo 1.0.0 to channel dev",
        ))
        // Not a terminal: plain progress lines.
        .stderr(predicate::str::contains("uploading qx-demo.tar.zst"));
    let served = e
        .get(&e.urls().manifest(PRODUCT, "dev"))
        .bytes()
        .expect("body");
    assert_eq!(
        served.to_vec(),
        std::fs::read(out.join("manifest.json")).expect("built")
    );
    let m = e.manifest("dev");
    for c in &m.components {
        let art = e.get(&e.urls().artifact(PRODUCT, "1.0.0", &c.artifact, "dev"));
        assert_eq!(
            art.bytes().expect("art").to_vec(),
            std::fs::read(out.join(c.artifact.as_str())).expect("built")
        );
    }
}

#[test]
fn publish_never_prints_the_token() {
    let e = start();
    let a = e.publish(&[]).assert().success();
    assert!(!stdout(&a).contains(TOKEN) && !stderr(&a).contains(TOKEN));
}

#[test]
fn publish_token_from_file() {
    let e = start();
    let tf = e.work.path().join("token");
    std::fs::write(&tf, format!("{TOKEN}\n")).expect("write");
    e.publish(&["--token-file", tf.to_str().unwrap()])
        .env_remove("QX_PUBLISH_TOKEN")
        .assert()
        .success();
}

#[test]
fn publish_without_a_token_is_a_usage_error() {
    let e = start();
    e.publish(&[])
        .env_remove("QX_PUBLISH_TOKEN")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "no publish token: set QX_PUBLISH_TOKEN",
        ));
}

#[test]
fn publish_with_a_wrong_token_shows_401_clearly() {
    let e = start();
    let a = e
        .publish(&[])
        .env("QX_PUBLISH_TOKEN", "wrong-token-value")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "refused the publish token (401 Unauthorized)",
        ))
        .stderr(predicate::str::contains("check QX_PUBLISH_TOKEN"));
    assert!(!stderr(&a).contains("wrong-token-value"));
    // Before the build: nothing was packed.
    assert!(!stderr(&a).contains("packed"), "{}", stderr(&a));
}

#[test]
fn publish_same_version_with_other_content_shows_409_clearly() {
    let e = start();
    e.publish(&[]).assert().success();
    std::fs::write(
        e.work.path().join("demo/ui/index.html"),
        "<html>changed</html>",
    )
    .expect("write");
    // Refused after the build, before the upload: the server is never sent the bytes.
    let a = e
        .publish(&[])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("warning[version-not-newer]"))
        .stderr(predicate::str::contains(
            "version 1.0.0 already exists on channel dev with other content",
        ))
        .stderr(predicate::str::contains("bump the version"))
        .stderr(predicate::str::contains("nothing was uploaded"));
    assert!(!stderr(&a).contains("uploading"), "{}", stderr(&a));
}

#[test]
fn publish_identical_release_again_is_idempotent() {
    let e = start();
    let epoch = (jiff::Timestamp::now().as_second() - 60).to_string();
    e.publish(&[])
        .env("SOURCE_DATE_EPOCH", &epoch)
        .assert()
        .success();
    e.publish(&[])
        .env("SOURCE_DATE_EPOCH", &epoch)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "already published to channel dev with identical content",
        ));
}

#[test]
fn publish_to_an_unconfigured_channel_is_refused_before_the_build() {
    let e = start();
    let a = e
        .publish(&["--channel", "nightly"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "channel nightly is not configured on",
        ))
        .stderr(predicate::str::contains("it accepts: dev, beta, stable"));
    assert!(!stderr(&a).contains("packed"), "{}", stderr(&a));
}

#[test]
fn publish_to_a_wrong_base_path_is_refused_before_the_build() {
    let e = start();
    let server = format!("{}/ota", e.server.url());
    let a = qx_publish()
        .env("QX_PUBLISH_TOKEN", TOKEN)
        .args(["publish", "--server", &server, "--spec"])
        .arg(e.work.spec())
        .arg("--key")
        .arg(e.work.key())
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "no update server answers at {server}"
        )))
        .stderr(predicate::str::contains("base path"));
    assert!(!stderr(&a).contains("packed"), "{}", stderr(&a));
}

#[test]
fn publish_with_a_token_that_cannot_publish_is_refused_before_the_build() {
    let e = start();
    let made = reqwest::blocking::Client::new()
        .post(e.urls().tokens())
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"name": "viewer", "scopes": ["read"]}))
        .send()
        .expect("create token");
    assert_eq!(made.status(), 201);
    let body: serde_json::Value = made.json().expect("json");
    let token = body["token"].as_str().expect("token").to_owned();
    let a = e
        .publish(&[])
        .env("QX_PUBLISH_TOKEN", &token)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "token viewer has scope read, which cannot publish",
        ));
    assert!(!stderr(&a).contains("packed"), "{}", stderr(&a));
    assert!(!stderr(&a).contains(&token));
}

#[test]
fn a_public_key_given_as_key_is_named_as_such() {
    let e = start();
    qx_publish()
        .env("QX_PUBLISH_TOKEN", TOKEN)
        .args(["publish", "--server", e.server.url(), "--spec"])
        .arg(e.work.spec())
        .arg("--key")
        .arg(e.work.pubkey())
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "is a public key: --key takes the secret key file",
        ));
}

#[test]
fn publish_too_large_shows_413_clearly() {
    let releases = tempfile::tempdir().expect("tempdir");
    let mut config = qx_server::Config::new(releases.path());
    config.publish_token = TOKEN.into();
    config.token_is_default = false;
    config.max_upload_bytes = 4096;
    let server = TestServer::start_with(config).expect("server");
    let work = Work::new();
    // Incompressible content, well over the limit.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(work.path().join("demo/blob"), data).expect("write");
    let spec = work.write_spec(
        "big.toml",
        &format!("{HEADER}[[component]]\nname = \"blob\"\ninstall_path = \"/data/blob\"\nsource = \"blob\"\n"),
    );
    qx_publish()
        .env("QX_PUBLISH_TOKEN", TOKEN)
        .arg("publish")
        .arg("--spec")
        .arg(&spec)
        .arg("--key")
        .arg(work.key())
        .arg("--server")
        .arg(server.url())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("413 Payload Too Large"))
        .stderr(predicate::str::contains("MAX_UPLOAD_BYTES"));
}

#[test]
fn publish_older_version_warns_and_strict_refuses() {
    let e = start();
    e.publish(&["--release-version", "1.1.0"])
        .assert()
        .success();
    e.publish(&["--release-version", "1.0.5", "--strict"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "error[version-not-newer]: version 1.0.5 is not greater than 1.1.0",
        ));
    // Without --strict: a warning; the server keeps both, and the signed channel state makes
    // the published release current (docs/spec.md §8; `--no-current` would only list it).
    e.publish(&["--release-version", "1.0.5"])
        .assert()
        .success()
        .stderr(predicate::str::contains("warning[version-not-newer]"));
    assert_eq!(e.manifest("dev").version.to_string(), "1.0.5");
}

#[test]
fn publish_dry_run_uploads_nothing() {
    let e = start();
    e.publish(&["--dry-run"])
        .assert()
        .success()
        .stdout(predicate::str::contains("dry run: quantix-demo 1.0.0"));
    assert_eq!(e.get(&e.urls().manifest(PRODUCT, "dev")).status(), 404);
}

#[test]
fn publish_dry_run_works_without_a_server() {
    let w = Work::new();
    qx_publish()
        .arg("publish")
        .arg("--spec")
        .arg(w.spec())
        .arg("--key")
        .arg(w.key())
        .arg("--dry-run")
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing was uploaded"));
}

#[test]
fn publish_one_component_makes_a_complete_release() {
    let e = start();
    e.publish(&[]).assert().success();
    e.publish(&["--component", "qx-demo", "--release-version", "1.0.1"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "carried 2 artifact(s) over from 1.0.0",
        ));
    let m = e.manifest("dev");
    assert_eq!(m.version.to_string(), "1.0.1");
    let mut names: Vec<&str> = m.components.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["quantix-host-ui", "qx-demo", "qx-demo-migrations"]);
    // The older release stays available.
    let r = e.get(
        &e.urls()
            .artifact(PRODUCT, "1.0.0", "quantix-host-ui.tar.zst", "dev"),
    );
    assert_eq!(r.status(), 200);
}

#[test]
fn publish_retries_connection_errors_then_gives_up() {
    let w = Work::new();
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let a = qx_publish()
        .env("QX_PUBLISH_TOKEN", TOKEN)
        .arg("publish")
        .arg("--spec")
        .arg(w.spec())
        .arg("--key")
        .arg(w.key())
        .arg("--server")
        .arg(format!("http://127.0.0.1:{port}"))
        .args(["--retries", "2"])
        .assert()
        .code(1);
    let err = stderr(&a);
    assert_eq!(err.matches("retrying in").count(), 2, "{err}");
    assert!(err.contains("cannot connect to the server"), "{err}");
    assert!(err.contains("gave up after 3 attempts"), "{err}");
}

#[test]
fn promote_then_fetch_from_the_new_channel() {
    let e = start();
    e.publish(&[]).assert().success();
    e.promote(&e.work.key(), "beta", "1.0.0")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "promoted quantix-demo 1.0.0 from dev to beta",
        ));
    let dev = e.manifest("dev");
    let beta = e.manifest("beta");
    assert_eq!(beta.channel.as_str(), "beta");
    assert_eq!(beta.version, dev.version);
    assert_eq!(beta.components, dev.components);
    assert!(beta.expires >= dev.expires);
    // End to end from the new channel, with the stock tool too.
    let url = e.urls().release(PRODUCT, "1.0.0", "beta");
    qx_publish()
        .args(["verify", &url, "--pubkey"])
        .arg(e.work.pubkey())
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "verified quantix-demo 1.0.0 (channel beta)",
        ));
    let dir = e.work.path().join("beta");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for f in ["manifest.json", "manifest.json.minisig"] {
        let b = e
            .get(&e.urls().artifact(PRODUCT, "1.0.0", f, "beta"))
            .bytes()
            .expect("body");
        std::fs::write(dir.join(f), b).expect("write");
    }
    let ok = std::process::Command::new("minisign")
        .arg("-Vq")
        .arg("-p")
        .arg(e.work.pubkey())
        .arg("-m")
        .arg(dir.join("manifest.json"))
        .status()
        .expect("minisign runs");
    assert!(ok.success());
}

#[test]
fn promote_again_is_reported_as_already_done() {
    let e = start();
    e.publish(&[]).assert().success();
    let promote = || e.promote(&e.work.key(), "stable", "1.0.0");
    promote().assert().success();
    let first = e
        .get(&e.urls().manifest(PRODUCT, "stable"))
        .bytes()
        .expect("body");
    promote()
        .assert()
        .success()
        .stdout(predicate::str::contains("already promoted"));
    let second = e
        .get(&e.urls().manifest(PRODUCT, "stable"))
        .bytes()
        .expect("body");
    assert_eq!(first, second);
}

#[test]
fn promote_refuses_a_release_signed_by_another_key() {
    let e = start();
    e.publish(&[]).assert().success();
    let other = e.work.path().join("other");
    keygen(&other);
    e.promote(&other.join("qx-publish.key"), "beta", "1.0.0")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "refusing to re-sign a manifest that is not verified",
        ));
    assert_eq!(e.get(&e.urls().manifest(PRODUCT, "beta")).status(), 404);
}

#[test]
fn promote_missing_version_is_reported() {
    let e = start();
    e.publish(&[]).assert().success();
    e.promote(&e.work.key(), "beta", "9.9.9")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("404"));
}

#[test]
fn yank_falls_back_to_the_previous_release() {
    let e = start();
    e.publish(&[]).assert().success();
    e.publish(&["--release-version", "1.0.1"])
        .assert()
        .success();
    assert_eq!(e.manifest("dev").version.to_string(), "1.0.1");
    qx_publish()
        .env("QX_PUBLISH_TOKEN", TOKEN)
        .arg("yank")
        .arg("--server")
        .arg(e.server.url())
        .arg("--key")
        .arg(e.work.key())
        .args(["--product", "quantix-demo", "--channel", "dev", "1.0.1"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "yanked quantix-demo 1.0.1 from channel dev",
        ));
    assert_eq!(e.manifest("dev").version.to_string(), "1.0.0");
    // A yanked version still counts: publishing it again is not newer.
    e.publish(&["--release-version", "1.0.1", "--strict"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error[version-not-newer]"));
}

#[test]
fn yank_with_a_wrong_token_shows_401() {
    let e = start();
    e.publish(&[]).assert().success();
    e.publish(&["--release-version", "1.0.1"])
        .assert()
        .success();
    qx_publish()
        .env("QX_PUBLISH_TOKEN", "nope")
        .arg("yank")
        .arg("--server")
        .arg(e.server.url())
        .arg("--key")
        .arg(e.work.key())
        .args(["--product", "quantix-demo", "--channel", "dev", "1.0.1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("401"));
    assert_eq!(e.manifest("dev").version.to_string(), "1.0.1");
}

#[test]
fn verify_url_of_the_newest_release() {
    let e = start();
    e.publish(&[]).assert().success();
    let url = e.urls().manifest(PRODUCT, "dev");
    qx_publish()
        .args(["verify", &url, "--key"])
        .arg(e.work.key())
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "archive qx-demo.tar.zst: 1 entries, intact",
        ));
}

#[test]
fn publish_retries_a_transient_server_error() {
    let e = start();
    let proxy = qx_testkit::proxy::FaultProxy::start(e.server.addr()).expect("proxy");
    proxy.set_faults(qx_testkit::proxy::Faults {
        fail_first: 1,
        ..Default::default()
    });
    let a = qx_publish()
        .env("QX_PUBLISH_TOKEN", TOKEN)
        .arg("publish")
        .arg("--spec")
        .arg(e.work.spec())
        .arg("--key")
        .arg(e.work.key())
        .arg("--server")
        .arg(proxy.url())
        .assert()
        .success();
    let err = stderr(&a);
    assert!(err.contains("server answered 500"), "{err}");
    assert_eq!(err.matches("retrying in").count(), 1, "{err}");
    assert_eq!(e.manifest("dev").version.to_string(), "1.0.0");
}

#[test]
fn publish_over_tls_with_a_private_ca() {
    let releases = tempfile::tempdir().expect("tempdir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("certificate");
    let cert = releases.path().join("cert.pem");
    let key = releases.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).expect("write");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write");
    let mut config = qx_server::Config::new(releases.path().join("r"));
    config.publish_token = TOKEN.into();
    config.token_is_default = false;
    config.tls = Some(qx_server::config::TlsFiles {
        cert: cert.clone(),
        key,
    });
    let server = TestServer::start_with(config).expect("server");
    assert!(server.url().starts_with("https://"));
    let work = Work::new();
    let publish = || {
        let mut cmd = qx_publish();
        cmd.env("QX_PUBLISH_TOKEN", TOKEN)
            .arg("publish")
            .arg("--spec")
            .arg(work.spec())
            .arg("--key")
            .arg(work.key())
            .arg("--server")
            .arg(server.url())
            .args(["--retries", "0"]);
        cmd
    };
    // An unknown certificate is refused.
    publish()
        .assert()
        .code(1)
        .stderr(predicate::str::contains("certificate"));
    publish()
        .arg("--ca-cert")
        .arg(&cert)
        .assert()
        .success()
        .stdout(predicate::str::contains("published quantix-demo 1.0.0"));
    let url = ServerUrl::new(server.url()).manifest(PRODUCT, "dev");
    qx_publish()
        .args(["verify", &url, "--ca-cert"])
        .arg(&cert)
        .arg("--pubkey")
        .arg(work.pubkey())
        .assert()
        .success();
}
