//! Interrupted and concurrent publishes, a crash of the real server binary, HTTPS, and bad
//! configuration at start.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use qx_testkit::server::TestServer;
use qx_testkit::stored::Stored;

const BOUNDARY: &str = "qx-test-boundary-7d9f";

/// A publish request as raw bytes: (head, body).
pub(crate) fn raw_publish(rel: &Release) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    let mut part = |name: &str, data: &[u8]| {
        write!(
            body,
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .unwrap();
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    };
    part("manifest", &rel.manifest);
    part("signature", rel.signature.as_bytes());
    for (name, data) in &rel.artifacts {
        part(name, data);
    }
    write!(body, "--{BOUNDARY}--\r\n").unwrap();
    let head = format!(
        "POST /api/v1/{}/publish HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        rel.product,
        body.len()
    );
    (head, body)
}

fn big_release(signer: &Signer, version: &str) -> Release {
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    Release::with_artifacts(
        signer,
        "quantix-os",
        "stable",
        version,
        vec![("system.bin".into(), data)],
    )
}

/// Some upload in staging has received bytes of its artifact.
fn upload_in_progress(root: &Path) -> bool {
    std::fs::read_dir(root.join(".staging"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| std::fs::metadata(d.path().join("system.bin")).is_ok_and(|m| m.len() > 0))
}

/// Sends the head and the first half of the body, then waits until the server is writing the
/// artifact into staging. The returned stream is still open.
fn start_half_publish(addr: SocketAddr, root: &Path, rel: &Release) -> TcpStream {
    let (head, body) = raw_publish(rel);
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..body.len() / 2]).unwrap();
    s.flush().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || upload_in_progress(root)),
        "the server never started writing the upload"
    );
    s
}

#[test]
fn client_disconnecting_mid_publish_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    let rel = big_release(&signer, "1.0.0");
    let s = start_half_publish(server.addr(), dir.path(), &rel);
    drop(s);
    assert!(
        wait_until(Duration::from_secs(30), || staging_entries(server.stored())
            .is_empty()),
        "staging still holds {:?}",
        staging_entries(server.stored())
    );
    assert!(!has_files(server.stored(), "quantix-os/stable/1.0.0"));
    let (status, _, _) = raw_get(server.addr(), "/api/v1/quantix-os/manifest");
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_publishes_one_201_one_200() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    for round in 0..3 {
        let rel = big_release(&signer, &format!("1.0.{round}"));
        let (a, b) = tokio::join!(publish(&server, &rel), publish(&server, &rel));
        let mut statuses = [a.status().as_u16(), b.status().as_u16()];
        statuses.sort();
        assert_eq!(statuses, [200, 201], "round {round}");
    }
    assert!(staging_entries(server.stored()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_different_publishes_of_one_version_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let signer = Signer::new();
    for round in 0..3 {
        let version = format!("2.0.{round}");
        race_two_contents(&server, &server, &signer, &big_release(&signer, &version)).await;
    }
    assert!(staging_entries(server.stored()).is_empty());
}

pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server binary on `127.0.0.1:0` (the OS picks the port, so no other test can take it
/// first); its log is read until it names the address it bound, and collected while it runs.
pub(crate) struct Spawned {
    pub(crate) proc: Proc,
    pub(crate) addr: SocketAddr,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Spawned {
    /// Everything the server logged, once it has exited and its stderr is closed.
    pub(crate) fn log_after_exit(&mut self) -> String {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// `token: None` starts the server without PUBLISH_TOKEN (the default-token path).
pub(crate) fn spawn_server(root: &Path, token: Option<&str>) -> Spawned {
    spawn_server_with(root, token, &[])
}

/// [`spawn_server`] with more environment variables.
pub(crate) fn spawn_server_with(
    root: &Path,
    token: Option<&str>,
    env: &[(&str, String)],
) -> Spawned {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qx-update-server"));
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.env("RELEASE_DIR", root)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match token {
        Some(t) => cmd.env("PUBLISH_TOKEN", t),
        None => cmd.env_remove("PUBLISH_TOKEN"),
    };
    let mut child = cmd.spawn().expect("spawn qx-update-server");
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let sink = Arc::clone(&log);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("qx-update-server listening") {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
            eprintln!("{line}");
            if let Ok(mut all) = sink.lock() {
                all.push_str(&line);
                all.push('\n');
            }
        }
    });
    let proc = Proc(child);
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server binary did not log its listening address within 30 s");
    assert!(
        wait_until(Duration::from_secs(30), || {
            TcpStream::connect(addr).is_ok() && raw_get(addr, "/health").0 == 200
        }),
        "the server binary did not answer /health on {addr}"
    );
    Spawned {
        proc,
        addr,
        log,
        reader: Some(reader),
    }
}

#[test]
fn kill_9_mid_publish_then_restart_shows_no_half_release() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::new();
    let rel = big_release(&signer, "1.0.0");
    let local = Stored::Local(dir.path().to_owned());
    let Spawned { mut proc, addr, .. } = spawn_server(dir.path(), Some(TOKEN));
    let stream = start_half_publish(addr, dir.path(), &rel);
    proc.0.kill().unwrap(); // SIGKILL
    proc.0.wait().unwrap();
    drop(stream);
    assert!(
        !staging_entries(&local).is_empty(),
        "the crash should have left the upload in staging"
    );
    assert!(!has_files(&local, "quantix-os/stable/1.0.0"));

    let server = spawn_server(dir.path(), Some(TOKEN));
    let addr = server.addr;
    assert!(
        staging_entries(&local).is_empty(),
        "staging must be cleaned at start: {:?}",
        staging_entries(&local)
    );
    let (status, _, _) = raw_get(addr, "/api/v1/quantix-os/manifest");
    assert_eq!(status, 404);
    // and the same publish now succeeds in full
    let (head, body) = raw_publish(&rel);
    let mut req = head.into_bytes();
    req.extend_from_slice(&body);
    let (status, _, resp) = raw_request(addr, &req);
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&resp));
    let (status, _, got) = raw_get(addr, "/api/v1/quantix-os/releases/1.0.0/system.bin");
    assert_eq!(status, 200);
    assert_eq!(got, rel.artifact("system.bin"));
}

#[tokio::test]
async fn https_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_pem = ck.cert.pem();
    std::fs::write(tls.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(tls.path().join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
    let mut cfg = qx_server::Config::new(dir.path());
    cfg.publish_token = TOKEN.into();
    cfg.tls = Some(qx_server::config::TlsFiles {
        cert: tls.path().join("cert.pem"),
        key: tls.path().join("key.pem"),
    });
    let server = TestServer::start_with(cfg).unwrap();
    assert!(server.url().starts_with("https://"), "{}", server.url());
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let signer = Signer::new();
    let rel = Release::new(&signer, "quantix-os", "stable", "1.0.0");
    let res = client
        .post(format!("{}/api/v1/quantix-os/publish", server.url()))
        .bearer_auth(TOKEN)
        .multipart(rel.form())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = client
        .get(format!("{}/api/v1/quantix-os/manifest", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), rel.manifest.as_slice());
    // plain HTTP on the TLS port gets no API answer
    let plain = reqwest::get(server.url().replace("https://", "http://") + "/health").await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));
}

pub(crate) fn run_with_env(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qx-update-server"));
    cmd.env("RELEASE_DIR", dir.path())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env_remove("TLS_CERT")
        .env_remove("TLS_KEY");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run qx-update-server");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_listen_addr_exits_2() {
    let (code, err) = run_with_env(&[("LISTEN_ADDR", "not-an-address")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("LISTEN_ADDR"), "{err}");
}

#[test]
fn bad_max_upload_bytes_exits_2() {
    let (code, err) = run_with_env(&[("MAX_UPLOAD_BYTES", "lots")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("MAX_UPLOAD_BYTES"), "{err}");
}

#[test]
fn bad_channels_exits_2() {
    let (code, err) = run_with_env(&[("CHANNELS", "dev,Stable")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("CHANNELS"), "{err}");
}

#[test]
fn tls_cert_without_key_exits_2() {
    let (code, err) = run_with_env(&[("TLS_CERT", "/nonexistent/cert.pem")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("TLS_KEY"), "{err}");
}

#[test]
fn unreadable_tls_files_exit_2() {
    let (code, err) = run_with_env(&[
        ("TLS_CERT", "/nonexistent/cert.pem"),
        ("TLS_KEY", "/nonexistent/key.pem"),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}

#[test]
fn sigterm_stops_the_server_cleanly_and_default_token_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(dir.path(), None);
    let pid = rustix::process::Pid::from_raw(i32::try_from(server.proc.0.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = server.proc.0.wait().unwrap();
    let stderr = server.log_after_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("PUBLISH_TOKEN is not set"), "{stderr}");
    assert!(stderr.contains("dev-token"), "{stderr}");
    assert!(TcpStream::connect(server.addr).is_err(), "still listening");
}

#[test]
fn the_default_token_beyond_loopback_is_refused_at_start_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qx-update-server"))
        .env("RELEASE_DIR", dir.path())
        .env("LISTEN_ADDR", "0.0.0.0:0")
        .env_remove("PUBLISH_TOKEN")
        .env_remove("PUBLISH_TOKEN_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run qx-update-server");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PUBLISH_TOKEN_FILE"), "{err}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing was created: the server never started"
    );
}
