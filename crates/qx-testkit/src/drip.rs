//! A hostile slow server on loopback: requests whose path starts with a prefix are answered
//! `200` with a `Content-Length` of `body_len`, the head at once and then the body one byte
//! per `interval` — each byte just inside a client's stall timeout, so only an overall
//! deadline or a minimum rate stops the client. Other requests are forwarded to an upstream
//! server (one request per connection), or answered 404 without one. Bounded: a drip ends
//! with its body, when the client goes away, or when the server is dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

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
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    dripped: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// The longest wait for a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

impl DripServer {
    /// Drips `drip`; everything else goes to `upstream` (404 without one).
    pub fn start(upstream: Option<SocketAddr>, drip: Drip) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let dripped = Arc::new(AtomicU64::new(0));
        let (stop2, dripped2) = (stop.clone(), dripped.clone());
        let thread = std::thread::Builder::new()
            .name(format!("drip-server-{}", addr.port()))
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (drip, stop, dripped) = (drip.clone(), stop2.clone(), dripped2.clone());
                    std::thread::spawn(move || {
                        let _ = serve(stream, upstream, &drip, &stop, &dripped);
                    });
                }
            })
            .context("spawning the drip server")?;
        Ok(Self {
            addr,
            stop,
            dripped,
            thread: Some(thread),
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Body bytes dripped so far, over every connection.
    pub fn dripped(&self) -> u64 {
        self.dripped.load(Ordering::SeqCst)
    }
}

impl Drop for DripServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
    let head = read_head(&mut client)?;
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
    let Some(upstream) = upstream else {
        client.write_all(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )?;
        return client.shutdown(Shutdown::Both);
    };
    let mut server = TcpStream::connect(upstream)?;
    // One request per connection: the upstream closes after its answer.
    let end = head.len() - 2;
    server.write_all(&head[..end])?;
    server.write_all(b"connection: close\r\n\r\n")?;
    std::io::copy(&mut server, &mut client)?;
    client.shutdown(Shutdown::Both)
}

/// The request head, up to and including its blank line (at most 64 KiB).
fn read_head(client: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf)?;
        if n == 0 || head.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |p| p + 4);
    head.truncate(end);
    Ok(head)
}
