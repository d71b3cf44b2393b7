//! Connection limits (issue 11 item 1): thousands of idle sockets (silent, half-sent headers,
//! idle after a keep-alive request, idle after the TLS handshake) are closed by the server
//! within the configured timeouts while `/health` keeps answering; a client over its
//! per-address cap is closed at once; a drip-fed publish is cut (408) and its staging removed.
//!
//! The idle sockets come from other loopback addresses (127.0.0.2, 127.0.0.3) than the
//! `/health` requests (127.0.0.1). Each wait is bounded and on a condition: a bound well under
//! a long timeout proves that the short one closed the sockets.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use qx_core::listener::ConnectionLimits;
use qx_server::Config;
use qx_testkit::server::TestServer;
use qx_testkit::sockets::{
    count_closed, loopback, open, socket_budget, tls_handshake, wait_all_closed, wait_closed,
};

use crate::support::{raw_get, staging_entries, Release, Signer, TOKEN};

const SHORT: Duration = Duration::from_secs(2);
const LONG: Duration = Duration::from_secs(600);

fn limits(idle: Duration, header: Duration) -> ConnectionLimits {
    ConnectionLimits {
        idle_timeout: idle,
        header_read_timeout: header,
        tls_handshake_timeout: LONG,
        max_connections: 10_000,
        max_connections_per_client: 5_000,
        ..ConnectionLimits::default()
    }
}

fn start(dir: &std::path::Path, limits: ConnectionLimits) -> TestServer {
    let mut cfg = Config::new(dir);
    cfg.publish_token = TOKEN.into();
    cfg.limits = limits;
    TestServer::start_with(cfg).expect("start the server")
}

fn health_ok(addr: SocketAddr) -> bool {
    raw_get(addr, "/health").0 == 200
}

#[test]
fn server_closes_thousands_of_idle_plain_sockets_while_health_answers() {
    let budget = socket_budget();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), limits(SHORT, LONG));
    let addr = server.addr();
    let n = budget.sockets(3000);
    let mut socks = open(loopback(2), addr, n * 2 / 3, b"");
    // Keep-alive connections left idle after one answered request.
    let request = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut kept = open(loopback(3), addr, n / 3, request);
    assert!(health_ok(addr));
    for s in &mut kept {
        let mut head = [0u8; 12];
        s.read_exact(&mut head).expect("the keep-alive answer");
        assert_eq!(&head, b"HTTP/1.1 200");
    }
    socks.append(&mut kept);
    wait_all_closed(&mut socks, Duration::from_secs(60), "/health", || {
        health_ok(addr)
    });
}

#[test]
fn server_closes_half_sent_headers_at_the_header_read_timeout() {
    let budget = socket_budget();
    let dir = tempfile::tempdir().unwrap();
    // The idle timeout is long: only the header-read timeout can close these in time.
    let server = start(dir.path(), limits(LONG, SHORT));
    let addr = server.addr();
    let half = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    let mut socks = open(loopback(2), addr, budget.sockets(2000), half);
    assert!(health_ok(addr));
    wait_all_closed(&mut socks, Duration::from_secs(60), "/health", || {
        health_ok(addr)
    });
}

#[test]
fn server_closes_a_client_over_its_connection_cap_at_once() {
    let budget = socket_budget();
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits(LONG, LONG);
    l.max_connections_per_client = 100;
    let server = start(dir.path(), l);
    let addr = server.addr();
    let mut socks = open(loopback(2), addr, budget.sockets(150), b"");
    let n = wait_closed(&mut socks, 50, Duration::from_secs(30));
    assert!(
        n >= 50,
        "only {n} connections over the cap of 100 were closed"
    );
    assert!(health_ok(addr), "/health from another address must answer");
    assert_eq!(
        count_closed(&mut socks),
        50,
        "the 100 under the cap stay open"
    );
}

// ---- TLS ------------------------------------------------------------------------------------

struct Tls {
    _dir: tempfile::TempDir,
    files: qx_server::config::TlsFiles,
    roots: Arc<rustls::RootCertStore>,
    cert_pem: String,
}

fn tls_files() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_pem = ck.cert.pem();
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    Tls {
        files: qx_server::config::TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        },
        _dir: dir,
        roots: Arc::new(roots),
        cert_pem,
    }
}

fn start_tls(dir: &std::path::Path, tls: &Tls, limits: ConnectionLimits) -> TestServer {
    let mut cfg = Config::new(dir);
    cfg.publish_token = TOKEN.into();
    cfg.limits = limits;
    cfg.tls = Some(tls.files.clone());
    TestServer::start_with(cfg).expect("start the server")
}

/// Opens `n` connections from `from` and completes a TLS handshake on each as soon as it is
/// open, then leaves it idle; returns the raw sockets.
fn open_tls(tls: &Tls, from: IpAddr, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(tls.roots.clone())
            .with_no_client_auth(),
    );
    (0..n)
        .map(|_| {
            let mut s = open(from, to, 1, b"").remove(0);
            tls_handshake(&mut s, cfg.clone(), b"");
            s
        })
        .collect()
}

fn tls_health_ok(server: &TestServer, tls: &Tls) -> bool {
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(tls.cert_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/health", server.addr().port());
    client.get(url).send().is_ok_and(|r| r.status() == 200)
}

#[test]
fn server_closes_thousands_of_idle_tls_sockets_after_the_handshake() {
    let budget = socket_budget();
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_files();
    let server = start_tls(dir.path(), &tls, limits(SHORT, LONG));
    let mut socks = open_tls(&tls, loopback(2), server.addr(), budget.sockets(1000));
    assert!(tls_health_ok(&server, &tls));
    wait_all_closed(&mut socks, Duration::from_secs(60), "/health", || {
        tls_health_ok(&server, &tls)
    });
}

#[test]
fn server_closes_unfinished_tls_handshakes_at_the_handshake_timeout() {
    let budget = socket_budget();
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_files();
    let mut l = limits(LONG, LONG);
    l.tls_handshake_timeout = SHORT;
    let server = start_tls(dir.path(), &tls, l);
    // A ClientHello's first bytes only: the handshake never finishes.
    let mut socks = open(
        loopback(2),
        server.addr(),
        budget.sockets(1000),
        &[0x16, 0x03, 0x01],
    );
    assert!(tls_health_ok(&server, &tls));
    wait_all_closed(&mut socks, Duration::from_secs(60), "/health", || {
        tls_health_ok(&server, &tls)
    });
}

// ---- publish body pace ----------------------------------------------------------------------

/// The head and body of a publish whose last artifact part is left open: its bytes are
/// dripped by the test.
fn open_publish(rel: &Release, declared: usize) -> Vec<u8> {
    let b = "qxboundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{b}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(&rel.manifest);
    body.extend_from_slice(
        format!("\r\n--{b}\r\nContent-Disposition: form-data; name=\"signature\"\r\n\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(rel.signature.as_bytes());
    let (name, _) = &rel.artifacts[0];
    body.extend_from_slice(
        format!("\r\n--{b}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n\r\n")
            .as_bytes(),
    );
    let mut req = format!(
        "POST /api/v1/{}/publish HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: multipart/form-data; boundary={b}\r\nContent-Length: {}\r\n\r\n",
        rel.product,
        body.len() + declared
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

#[test]
fn publish_drip_fed_upload_is_cut_with_408_and_its_staging_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits(LONG, LONG);
    l.body_read_timeout = Duration::from_secs(1);
    l.body_min_rate = 1024;
    let server = start(dir.path(), l);
    let signer = Signer::new();
    let artifact = vec![7u8; 64 << 10];
    let rel = Release::with_artifacts(
        &signer,
        "quantix-os",
        "stable",
        "1.0.0",
        vec![("system.bin".into(), artifact.clone())],
    );
    let mut s = open(
        loopback(2),
        server.addr(),
        1,
        &open_publish(&rel, artifact.len() + 20),
    )
    .remove(0);
    // The upload has begun: a staging directory holds it.
    assert!(
        qx_testkit::wait::poll(Duration::from_secs(30), Duration::from_millis(20), || {
            !staging_entries(server.stored()).is_empty()
        }),
        "the upload never reached staging"
    );
    // 10 bytes per round (every 200 ms at most) until the server answers.
    let mut answer = Vec::new();
    let mut sent = 0;
    let answered =
        qx_testkit::wait::poll(Duration::from_secs(60), Duration::from_millis(200), || {
            if sent + 10 <= artifact.len() && s.write_all(&artifact[sent..sent + 10]).is_ok() {
                sent += 10;
            }
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
            }
            s.set_nonblocking(false).unwrap();
            answer.windows(4).any(|w| w == b"\r\n\r\n")
        });
    assert!(
        answered,
        "the drip-fed upload was never cut ({sent} bytes sent)"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("too slowly"), "{text}");
    assert!(
        qx_testkit::wait::poll(Duration::from_secs(30), Duration::from_millis(20), || {
            staging_entries(server.stored()).is_empty()
        }),
        "staging kept: {:?}",
        staging_entries(server.stored())
    );
}
