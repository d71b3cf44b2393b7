//! Shared by the API, daemon, scheduler and browser tests: a lab (real update server on loopback, signed
//! fixture releases, a sandboxed host running a real service), the daemon's HTTPS API started
//! in-process on a free loopback port, an HTTPS client that accepts its self-signed
//! certificate, a reader of its server-sent events, and gates (named pipes) that hold an
//! apply at a chosen step until the test opens them.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use qx_agent::daemon;
use qx_agent::daemon::api::{self, ApiState};
use qx_agent::daemon::tls::{self, ApiToken};
use qx_agent::daemon::Runner;
use qx_agent::Agent;
use qx_testkit::host::{demo_binary, Lab};
use qx_testkit::release::{BuiltRelease, ComponentSpec};
use tokio::sync::watch;

use crate::support::host::host_at_v1;

pub const TOKEN: &str = "test-api-token-0123456789abcdef";

/// Bound on every wait for an event or a state.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// A named pipe; a command `read`ing it blocks until [`Gate::open`].
pub struct Gate {
    pub fifo: PathBuf,
}

impl Gate {
    pub fn new(dir: &Path, name: &str) -> Gate {
        let fifo = dir.join(format!("{name}.gate"));
        let st = Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("run mkfifo");
        assert!(st.success(), "mkfifo {}", fifo.display());
        Gate { fifo }
    }

    /// Shell that waits for the gate (at most 90 s, so a failing test cannot hang forever).
    pub fn wait_shell(&self) -> String {
        format!("timeout 90 sh -c 'read x < {}'", self.fifo.display())
    }

    /// An argv that waits for the gate, then succeeds.
    pub fn argv(&self) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), self.wait_shell()]
    }

    /// Lets the waiting command go on (the writer blocks until the reader is there).
    pub fn open(&self) {
        let fifo = self.fifo.clone();
        std::thread::spawn(move || {
            if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&fifo) {
                let _ = f.write_all(b"go\n");
            }
        });
    }
}

/// The `updates:` configuration of the lab's host, written by hand so the restart command can
/// go through a gate. `extra` lines are two-space indented.
pub fn write_config(lab: &Lab, restart_gate: Option<&Gate>, server_url: &str, extra: &str) {
    let host = &lab.host;
    std::fs::write(
        host.path("/etc/limiquantix/update-key.pub"),
        &lab.key.public_key_file,
    )
    .unwrap();
    let manager = host.path("/usr/local/bin/qx-test-service");
    let restart: Vec<String> = match restart_gate {
        None => host.restart_command(),
        Some(g) => vec![
            "/bin/sh".into(),
            "-c".into(),
            format!(
                "{} && exec {} {} restart \"$0\"",
                g.wait_shell(),
                manager.display(),
                host.root().display()
            ),
            "{service}".into(),
        ],
    };
    let yaml = format!(
        "node:\n  name: test-host\nupdates:\n  enabled: true\n  server_url: \"{server_url}\"\n  product: {}\n  channel: {}\n  check_interval: 1h\n  trusted_keys: [/etc/limiquantix/update-key.pub]\n  service_manager: command\n  restart_command: {}\n  verify_timeout: 100s\n  download: {{max_attempts: 2, initial_backoff: 10ms, max_backoff: 50ms, connect_timeout: 2s, stall_timeout: 10s}}\n  api: {{listen: \"127.0.0.1:0\", token_file: /etc/limiquantix/update-api-token}}\n{extra}",
        lab.product,
        lab.channel,
        serde_json::to_string(&restart).unwrap(),
    );
    std::fs::write(host.config_path(), yaml).unwrap();
}

/// A daily maintenance window that is closed now and opens in two to three hours
/// (`daily HH:00-HH:30`, host time).
pub fn closed_window() -> String {
    let hour = (jiff::Zoned::now().hour() + 3) % 24;
    format!("daily {hour:02}:00-{hour:02}:30")
}

/// A lab whose host is at 1.0.0, configured by [`write_config`] with `extra`, with release
/// 1.1.0 (see [`publish_release`]) published.
pub fn daemon_lab(restart_gate: Option<&Gate>, health: Option<Vec<String>>, extra: &str) -> Lab {
    let lab = Lab::new().unwrap();
    write_config(&lab, restart_gate, lab.server.url(), extra);
    host_at_v1(&lab);
    publish_release(&lab, "1.1.0", health, 1024);
    lab
}

/// Publishes `version` with `qx-node` (restarted service; verified by `health` when given)
/// and `host-ui` (a directory with `padding` bytes of incompressible data, to make the
/// download last while the bandwidth is limited).
pub fn publish_release(
    lab: &Lab,
    version: &str,
    health: Option<Vec<String>>,
    padding: usize,
) -> BuiltRelease {
    let mut node = ComponentSpec::file(
        "qx-node",
        "/data/bin/qx-node",
        demo_binary(version).unwrap(),
    )
    .service("quantix-node");
    if let Some(h) = health {
        node = node.health(h);
    }
    let mut noise = vec![0u8; padding];
    rand::Rng::fill(&mut rand::rng(), &mut noise[..]);
    let ui = ComponentSpec::tree(
        "host-ui",
        "/data/share/quantix-host-ui",
        vec![
            (
                "index.html".into(),
                format!("<h1>host ui {version}</h1>").into_bytes(),
                0o644,
            ),
            ("assets/blob.bin".into(), noise, 0o644),
        ],
    );
    let mut spec = lab.release(version).component(node).component(ui);
    spec.release_notes = format!("Release {version}: faster boots and bug fixes.");
    lab.publish(&spec).unwrap()
}

/// The daemon's API and page, served in-process over TLS on a free loopback port.
pub struct ApiServer {
    pub base: String,
    pub client: reqwest::Client,
    pub runner: Runner,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ApiServer {
    /// Must be called inside a tokio runtime. The self-signed certificate is generated (and
    /// kept) under the agent's root, as the daemon does.
    pub fn start(agent: Agent, token: &str) -> ApiServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls_config =
            tls::server_config(None, None, &agent.root().join(daemon::API_STATE_DIR)).unwrap();
        let runner = Runner::new(agent);
        let state = ApiState::new(runner.clone(), ApiToken::new(token));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(api::serve(state, listener, tls_config, stop_rx));
        ApiServer {
            base: format!("https://127.0.0.1:{port}"),
            client: client(),
            runner,
            stop,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(TOKEN)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(TOKEN)
    }

    /// Stops the server and waits for it (and for a running apply).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let served = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("server stops within the deadline");
        served.expect("server task").expect("server result");
        self.runner.wait_idle().await;
    }
}

/// An HTTPS client for the self-signed certificate, no proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .build()
        .unwrap()
}

/// Reads `text/event-stream` events from a response.
pub struct Events {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buffer: String,
}

impl Events {
    pub fn new(response: reqwest::Response) -> Events {
        assert_eq!(response.status(), 200, "events endpoint status");
        let ct = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "content type {ct}");
        Events {
            stream: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next `status` event's data as JSON (waits at most [`DEADLINE`]).
    pub async fn next(&mut self) -> serde_json::Value {
        tokio::time::timeout(DEADLINE, self.next_inner())
            .await
            .expect("an event within the deadline")
    }

    /// Reads events until the state is one of `states`; returns that snapshot.
    pub async fn until(&mut self, states: &[&str]) -> serde_json::Value {
        for _ in 0..100_000 {
            let s = self.next().await;
            if states.contains(&state_of(&s).as_str()) {
                return s;
            }
        }
        panic!("no event with a state of {states:?}");
    }

    async fn next_inner(&mut self) -> serde_json::Value {
        loop {
            if let Some(idx) = self.buffer.find("\n\n") {
                let block: String = self.buffer[..idx].to_string();
                self.buffer.drain(..idx + 2);
                let mut event = "message".to_string();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if event == "status" && !data.is_empty() {
                    return serde_json::from_str(&data).expect("event data is JSON");
                }
                continue;
            }
            let chunk = self
                .stream
                .next()
                .await
                .expect("the event stream stays open")
                .expect("event stream read");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// The state name of a status snapshot.
pub fn state_of(snapshot: &serde_json::Value) -> String {
    snapshot["state"]["state"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

/// The status code and JSON body of an error response.
pub async fn error_body(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let body = resp.json().await.expect("error body is JSON");
    (status, body)
}

/// POSTs `body` to `path` of the API at `base` (`https://host:port`) over HTTP/2 (ALPN `h2`,
/// any certificate); returns the status and the response body.
pub async fn post_h2(base: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let addr = base.trim_start_matches("https://").to_owned();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!("{base}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    // Sent in the background: the server may answer before it has read it all.
    tokio::spawn(async move {
        for chunk in body.chunks(16 << 10) {
            send.reserve_capacity(chunk.len());
            if send
                .send_data(axum::body::Bytes::copy_from_slice(chunk), false)
                .is_err()
            {
                return;
            }
        }
        let _ = send.send_data(axum::body::Bytes::new(), true);
    });
    let response = response.await.expect("an HTTP/2 response with a status");
    let status = response.status().as_u16();
    let mut recv = response.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("response body");
        let _ = recv.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, out)
}

/// Accepts the daemon's self-signed certificate (tests only).
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
