//! A hostile slow server on loopback: requests whose path starts with a prefix are answered
//! `200` with a `Content-Length` of `body_len`, the head at once and then the body one byte
//! per `interval` — each byte just inside a client's stall timeout, so only an overall
//! deadline or a minimum rate stops the client. Other requests are forwarded to an upstream
//! server (one request per connection), or answered 404 without one. Bounded: a drip ends
//! with its body, when the client goes away, or when the server is dropped.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::interpose::{forward, read_head, Loopback};

/// What is dripped.
#[derive(Debug, Clone)]
pub struct Drip {
    /// Requests whose path (query included) starts with this are dripped.
    pub path_prefix: String,
    /// The pause after each body byte.
    pub interval: Duration,
    /// The announced body length.
    pub body_len: u64,
}

/// A running drip server on `127.0.0.1:<port>`; it stops when dropped.
pub struct DripServer {
    server: Loopback,
    dripped: Arc<AtomicU64>,
}

/// The longest wait for a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

impl DripServer {
    /// Drips `drip`; everything else goes to `upstream` (404 without one).
    pub fn start(upstream: Option<SocketAddr>, drip: Drip) -> anyhow::Result<Self> {
        let dripped = Arc::new(AtomicU64::new(0));
        let counter = dripped.clone();
        let server = Loopback::start("drip-server", move |stream, stop| {
            let _ = serve(stream, upstream, &drip, stop, &counter);
        })?;
        Ok(Self { server, dripped })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Body bytes dripped so far, over every connection.
    pub fn dripped(&self) -> u64 {
        self.dripped.load(Ordering::SeqCst)
    }
}

/// One connection: one request, dripped, forwarded or 404.
fn serve(
    mut client: TcpStream,
    upstream: Option<SocketAddr>,
    drip: &Drip,
    stop: &AtomicBool,
    dripped: &AtomicU64,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(HEAD_TIMEOUT))?;
    let (head, _) = read_head(&mut client)?;
    let path = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    if path.starts_with(&drip.path_prefix) {
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            drip.body_len
        );
        client.write_all(answer.as_bytes())?;
        for _ in 0..drip.body_len {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            client.write_all(b"x")?;
            dripped.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(drip.interval);
        }
        return client.shutdown(Shutdown::Both);
    }
    forward(client, upstream, &head)
}
