//! What the testkit's hand-made loopback servers share ([`crate::drip`], [`crate::scripted`]):
//! an accept loop on `127.0.0.1:<port>`, one thread per connection, stopped when dropped;
//! reading a request head; forwarding a request without a body to an upstream server.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;

/// A running accept loop; it stops when dropped.
pub struct Loopback {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Loopback {
    /// Listens on a free loopback port and hands each connection to `serve` on its own thread;
    /// `serve` gets the stop flag, which turns true when the server is dropped.
    pub fn start(
        name: &str,
        serve: impl Fn(TcpStream, &AtomicBool) + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let serve = Arc::new(serve);
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{}", addr.port()))
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (serve, stop) = (serve.clone(), stop2.clone());
                    std::thread::spawn(move || serve(stream, &stop));
                }
            })
            .with_context(|| format!("spawning the {name}"))?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The request head up to and including its blank line (at most 64 KiB), and the body bytes
/// read with it.
pub fn read_head(client: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
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
    let rest = head.split_off(end);
    Ok((head, rest))
}

/// Sends a request without a body (its `head`) to `upstream` and its answer back; 404
/// without an upstream. One request per connection: the upstream closes after its answer.
pub fn forward(
    mut client: TcpStream,
    upstream: Option<SocketAddr>,
    head: &[u8],
) -> std::io::Result<()> {
    let Some(upstream) = upstream else {
        client.write_all(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )?;
        return client.shutdown(Shutdown::Both);
    };
    let mut server = TcpStream::connect(upstream)?;
    let end = head.len() - 2;
    server.write_all(&head[..end])?;
    server.write_all(b"connection: close\r\n\r\n")?;
    std::io::copy(&mut server, &mut client)?;
    client.shutdown(Shutdown::Both)
}
