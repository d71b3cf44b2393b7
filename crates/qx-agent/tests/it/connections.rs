//! The host API's connection limits (issue 11 item 1): thousands of idle sockets (silent TCP,
//! idle after the TLS handshake, half-sent headers inside TLS) are closed within the
//! configured timeouts while the authenticated `/status` keeps answering; a client over its
//! per-address cap is closed at once; a drip-fed body is cut with a JSON 408.
//!
//! The idle sockets come from 127.0.0.2, `/status` from 127.0.0.1. Every wait is bounded and
//! on a condition; a bound well under a long timeout proves that the short one acted.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use qx_agent::daemon;
use qx_agent::daemon::api::{self, ApiState};
use qx_agent::daemon::tls::{self, ApiToken};
use qx_agent::daemon::Runner;
use qx_core::listener::ConnectionLimits;
use qx_testkit::host::Lab;
use qx_testkit::sockets::{
    count_closed, loopback, open, socket_budget, tls_handshake, wait_all_closed, wait_closed,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::watch;

use crate::support::api::{write_config, TOKEN};
use crate::support::host::agent;

const SHORT: Duration = Duration::from_secs(2);
const LONG: Duration = Duration::from_secs(600);

/// The API of a lab's agent served in-process under `limits` on its own runtime.
struct Api {
    addr: SocketAddr,
    _lab: Lab,
    _stop: watch::Sender<bool>,
    _rt: tokio::runtime::Runtime,
}

fn start(limits: ConnectionLimits) -> Api {
    let lab = Lab::new().unwrap();
    write_config(&lab, None, lab.server.url(), "");
    let agent = agent(&lab);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let tls_config =
        tls::server_config(None, None, &agent.root().join(daemon::API_STATE_DIR)).unwrap();
    let state = ApiState::new(Runner::new(agent), ApiToken::new(TOKEN)).with_limits(limits);
    let (stop, stop_rx) = watch::channel(false);
    rt.spawn(api::serve(state, listener, tls_config, stop_rx));
    Api {
        addr,
        _lab: lab,
        _stop: stop,
        _rt: rt,
    }
}

fn limits(idle: Duration, header: Duration, handshake: Duration) -> ConnectionLimits {
    ConnectionLimits {
        idle_timeout: idle,
        header_read_timeout: header,
        tls_handshake_timeout: handshake,
        max_connections: 10_000,
        max_connections_per_client: 5_000,
        ..ConnectionLimits::default()
    }
}

fn status_ok(api: &Api) -> bool {
    let client = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = format!(
        "https://127.0.0.1:{}/api/v1/updates/status",
        api.addr.port()
    );
    client
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .is_ok_and(|r| r.status() == 200)
}

/// One TCP connection to `to` from 127.0.0.2.
fn connect(to: SocketAddr) -> TcpStream {
    open(loopback(2), to, 1, b"").remove(0)
}

/// Accepts any certificate: the test talks to the API's self-signed one.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection from 127.0.0.2 whose handshake is complete and which then sent `prefix`
/// (inside TLS); the raw socket is returned, the session is dropped without a close_notify.
fn tls_open(to: SocketAddr, prefix: &[u8]) -> TcpStream {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let mut s = connect(to);
    tls_handshake(&mut s, Arc::new(cfg), prefix);
    s
}

#[test]
fn api_closes_thousands_of_idle_tls_sockets_after_the_handshake_while_status_answers() {
    let budget = socket_budget();
    let api = start(limits(SHORT, LONG, LONG));
    let mut socks: Vec<TcpStream> = (0..budget.sockets(1000))
        .map(|_| tls_open(api.addr, b""))
        .collect();
    assert!(status_ok(&api));
    wait_all_closed(&mut socks, Duration::from_secs(60), "/status", || {
        status_ok(&api)
    });
}

#[test]
fn api_closes_thousands_of_silent_tcp_sockets_at_the_handshake_timeout() {
    let budget = socket_budget();
    let api = start(limits(LONG, LONG, SHORT));
    let mut socks: Vec<TcpStream> = (0..budget.sockets(2000))
        .map(|_| connect(api.addr))
        .collect();
    assert!(status_ok(&api));
    wait_all_closed(&mut socks, Duration::from_secs(60), "/status", || {
        status_ok(&api)
    });
}

#[test]
fn api_closes_half_sent_headers_at_the_header_read_timeout() {
    let budget = socket_budget();
    let api = start(limits(LONG, SHORT, LONG));
    let half = b"GET /api/v1/updates/status HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    let mut socks: Vec<TcpStream> = (0..budget.sockets(1000))
        .map(|_| tls_open(api.addr, half))
        .collect();
    assert!(status_ok(&api));
    wait_all_closed(&mut socks, Duration::from_secs(60), "/status", || {
        status_ok(&api)
    });
}

#[test]
fn api_closes_a_client_over_its_connection_cap_at_once() {
    let budget = socket_budget();
    let mut l = limits(LONG, LONG, LONG);
    l.max_connections_per_client = 100;
    let api = start(l);
    let mut socks: Vec<TcpStream> = (0..budget.sockets(150))
        .map(|_| connect(api.addr))
        .collect();
    let n = wait_closed(&mut socks, 50, Duration::from_secs(30));
    assert!(
        n >= 50,
        "only {n} connections over the cap of 100 were closed"
    );
    assert!(status_ok(&api), "/status from another address must answer");
    assert_eq!(
        count_closed(&mut socks),
        50,
        "the 100 under the cap stay open"
    );
}
