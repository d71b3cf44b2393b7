//! A fault-injecting TCP proxy on a loopback port, in front of an upstream address (an HTTP
//! server). It runs on its own thread and runtime, so blocking tests can use it directly.
//!
//! Faults are set at any time with [`FaultProxy::set_faults`]:
//! - `cut_every` is taken by each new connection and counts the raw bytes sent downstream on
//!   that connection (response heads included);
//! - `stall` and `flip` are taken by each response when its head goes through, and count the
//!   bytes of that response's **body**; they apply to the responses numbered below their
//!   `responses` field (responses are numbered from 0 across the whole proxy, in the order their
//!   heads arrive). Responses are delimited with `Content-Length` (or the end of the
//!   connection); chunked bodies and responses to `HEAD` are not understood;
//! - `fail_first` is a budget set by `set_faults`: that many of the next connections get one
//!   injected `HTTP/1.1 500` (with `Connection: close`, so one request per connection).
//!
//! Requests are recorded by splitting what the client sends on `\r\n\r\n`, so they are assumed
//! to have no body (GET and HEAD: what the downloader sends).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A pause in the downstream data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// Body bytes forwarded before the pause.
    pub after_body_bytes: u64,
    /// How long; `None` holds the connection until the client gives up (or the proxy stops).
    pub duration: Option<Duration>,
    /// Applies to responses numbered below this.
    pub responses: u64,
}

/// One byte of the body inverted (XOR 0xff).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flip {
    /// Body offset of the byte.
    pub body_offset: u64,
    /// Applies to responses numbered below this.
    pub responses: u64,
}

/// The faults new connections get. `Faults::default()` passes everything through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Close each connection after this many bytes were sent downstream.
    pub cut_every: Option<u64>,
    pub stall: Option<Stall>,
    pub flip: Option<Flip>,
    /// Answer the next this-many requests (one per connection) with `HTTP/1.1 500` and close,
    /// without contacting the upstream; `u64::MAX` for every request.
    pub fail_first: u64,
}

/// What went through the proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyStats {
    pub connections: u64,
    /// Bytes sent to clients (responses, headers included), injected 500s excluded.
    pub bytes_down: u64,
    /// Bytes sent to the upstream (requests).
    pub bytes_up: u64,
    /// Requests answered with an injected 500.
    pub injected_500: u64,
    /// Connections closed by `cut_every`.
    pub cuts: u64,
    pub stalls: u64,
    pub flips: u64,
}

#[derive(Default)]
struct Shared {
    faults: Mutex<Faults>,
    requests: Mutex<Vec<String>>,
    connections: AtomicU64,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
    injected_500: AtomicU64,
    cuts: AtomicU64,
    stalls: AtomicU64,
    flips: AtomicU64,
    responses: AtomicU64,
    fail_left: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The proxy; stops (and closes every connection) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("qx-fault-proxy".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("fault proxy: cannot listen: {e}");
                            return;
                        }
                    };
                    accept_loop(listener, upstream, thread_shared, stop_rx).await;
                });
                // Dropping the runtime here cancels every connection task.
            })?;
        Ok(Self {
            addr,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared
            .fail_left
            .store(faults.fail_first, Ordering::SeqCst);
        *lock(&self.shared.faults) = faults;
    }

    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            connections: s.connections.load(Ordering::SeqCst),
            bytes_down: s.bytes_down.load(Ordering::SeqCst),
            bytes_up: s.bytes_up.load(Ordering::SeqCst),
            injected_500: s.injected_500.load(Ordering::SeqCst),
            cuts: s.cuts.load(Ordering::SeqCst),
            stalls: s.stalls.load(Ordering::SeqCst),
            flips: s.flips.load(Ordering::SeqCst),
        }
    }

    /// The head (request line and headers, without the final blank line) of every request seen
    /// so far, injected-500 ones included, in arrival order per connection.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.requests).clone()
    }

    /// Forgets recorded requests and zeroes the counters (connection numbering goes on).
    pub fn reset_stats(&self) {
        let s = &self.shared;
        lock(&s.requests).clear();
        for c in [
            &s.bytes_down,
            &s.bytes_up,
            &s.injected_500,
            &s.cuts,
            &s.stalls,
            &s.flips,
        ] {
            c.store(0, Ordering::SeqCst);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let mut stopped = stop.clone();
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let faults = lock(&shared.faults).clone();
                let fail = shared
                    .fail_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                let shared = shared.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let _ = handle(client, upstream, fail, faults, shared, stop).await;
                });
            }
        }
    }
}

/// Where the downstream byte stream is: in a response head, or in a body.
#[derive(Default)]
struct ResponseTracker {
    head: Vec<u8>,
    body: Option<Body>,
}

struct Body {
    /// Proxy-wide response number, from 0.
    number: u64,
    pos: u64,
    /// `None`: the body ends with the connection.
    remaining: Option<u64>,
    /// The faults when the response head went through.
    faults: Faults,
}

/// The body length a response head announces (no body for 1xx, 204, 304).
fn body_length(head: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Some(0);
    }
    lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// Splits client bytes into request heads and records them.
#[derive(Default)]
struct RequestRecorder {
    pending: Vec<u8>,
}

impl RequestRecorder {
    /// Feeds bytes; returns the number of complete request heads seen in them.
    fn feed(&mut self, data: &[u8], shared: &Shared) -> u64 {
        self.pending.extend_from_slice(data);
        let mut complete = 0;
        while let Some(end) = find(&self.pending, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
            lock(&shared.requests).push(head);
            self.pending.drain(..end + 4);
            complete += 1;
        }
        if self.pending.len() > 64 * 1024 {
            self.pending.clear();
        }
        complete
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One client connection: an injected 500, or both directions forwarded until either side
/// finishes or the proxy stops.
async fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    fail: bool,
    faults: Faults,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    if fail {
        return answer_injected_500(&mut client, &shared).await;
    }
    let server = TcpStream::connect(upstream).await?;
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let up = forward_up(client_r, server_w, shared.clone());
    let down = forward_down(server_r, client_w, faults, shared);
    // Whichever side finishes first (client gone, upstream closed, cut) ends the connection.
    let mut stop = stop;
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    Ok(())
}

/// Reads one request head, answers 500 without contacting the upstream, closes.
async fn answer_injected_500(client: &mut TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut rec = RequestRecorder::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if rec.feed(&buf[..n], shared) > 0 {
            break;
        }
    }
    shared.injected_500.fetch_add(1, Ordering::SeqCst);
    let body = "{\"error\":\"injected failure\",\"details\":[]}";
    let resp = format!(
        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(resp.as_bytes()).await?;
    client.shutdown().await
}

/// Reads what is there; `None` at the end of the stream or on an error.
async fn read_some(r: &mut OwnedReadHalf, buf: &mut [u8]) -> Option<usize> {
    match r.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

/// Client to upstream: every byte forwarded and counted, request heads recorded.
async fn forward_up(
    mut client_r: OwnedReadHalf,
    mut server_w: OwnedWriteHalf,
    shared: Arc<Shared>,
) {
    let mut rec = RequestRecorder::default();
    let mut buf = vec![0u8; 16 * 1024];
    while let Some(n) = read_some(&mut client_r, &mut buf).await {
        rec.feed(&buf[..n], &shared);
        if server_w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        shared.bytes_up.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = server_w.shutdown().await;
}

/// Upstream to client: each chunk walked through the response tracker (flips applied in
/// place, a stall point noted), then sent, pausing at the stall point.
async fn forward_down(
    mut server_r: OwnedReadHalf,
    mut client_w: OwnedWriteHalf,
    faults: Faults,
    shared: Arc<Shared>,
) {
    let mut sent: u64 = 0;
    let mut tracker = ResponseTracker::default();
    let mut buf = vec![0u8; 16 * 1024];
    while let Some(n) = read_some(&mut server_r, &mut buf).await {
        let mut chunk = buf[..n].to_vec();
        if let Some((at, duration)) = tracker.walk(&mut chunk, &shared) {
            if send(&mut client_w, &chunk[..at], &mut sent, &faults, &shared)
                .await
                .is_err()
            {
                return;
            }
            shared.stalls.fetch_add(1, Ordering::SeqCst);
            // The connection ends when the client goes away (the `up` half finishes) or the
            // proxy stops, which cancels this wait.
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
            chunk.drain(..at);
        }
        if send(&mut client_w, &chunk, &mut sent, &faults, &shared)
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = client_w.shutdown().await;
}

impl ResponseTracker {
    /// Walks one downstream chunk: response heads and bodies. Flips bytes in place; returns
    /// the first stall point in the chunk (offset, duration).
    fn walk(&mut self, chunk: &mut [u8], shared: &Shared) -> Option<(usize, Option<Duration>)> {
        let mut stall_at = None;
        let mut i = 0;
        while i < chunk.len() {
            i += match &mut self.body {
                None => self.take_head(&chunk[i..], shared),
                Some(body) => {
                    let (m, stall) = body.take(&mut chunk[i..], shared);
                    if stall_at.is_none() {
                        stall_at = stall.map(|(at, d)| (i + at, d));
                    }
                    if body.remaining == Some(0) {
                        self.body = None;
                    }
                    m
                }
            };
        }
        stall_at
    }

    /// Adds bytes to the pending response head; at its end, starts the body (numbered, with
    /// the faults of this moment). Returns how many bytes of `data` were the head's.
    fn take_head(&mut self, data: &[u8], shared: &Shared) -> usize {
        let before = self.head.len();
        self.head.extend_from_slice(data);
        let Some(end) = find(&self.head, b"\r\n\r\n") else {
            return data.len();
        };
        let body_len = body_length(&self.head[..end]);
        self.head.clear();
        let number = shared.responses.fetch_add(1, Ordering::SeqCst);
        self.body = (body_len != Some(0)).then(|| Body {
            number,
            pos: 0,
            remaining: body_len,
            faults: lock(&shared.faults).clone(),
        });
        end + 4 - before
    }
}

impl Body {
    /// Takes the part of `data` that belongs to this body: flips a byte in it if the faults
    /// say so, and returns its length and the stall point in it (offset, duration).
    fn take(
        &mut self,
        data: &mut [u8],
        shared: &Shared,
    ) -> (usize, Option<(usize, Option<Duration>)>) {
        let avail = data.len() as u64;
        let m = self.remaining.map_or(avail, |r| r.min(avail));
        let range = self.pos..self.pos + m;
        if let Some(flip) = self.faults.flip.as_ref() {
            if self.number < flip.responses && range.contains(&flip.body_offset) {
                data[(flip.body_offset - range.start) as usize] ^= 0xff;
                shared.flips.fetch_add(1, Ordering::SeqCst);
            }
        }
        let stall = self.faults.stall.as_ref().and_then(|stall| {
            (self.number < stall.responses && range.contains(&stall.after_body_bytes)).then(|| {
                (
                    (stall.after_body_bytes - range.start) as usize,
                    stall.duration,
                )
            })
        });
        self.pos = range.end;
        if let Some(r) = self.remaining.as_mut() {
            *r -= m;
        }
        (m as usize, stall)
    }
}

/// Writes downstream, honouring `cut_every`; an error means the connection is finished.
async fn send(
    client_w: &mut OwnedWriteHalf,
    data: &[u8],
    sent: &mut u64,
    faults: &Faults,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut data = data;
    let mut cut = false;
    if let Some(limit) = faults.cut_every {
        let room = limit.saturating_sub(*sent);
        if (data.len() as u64) >= room {
            data = &data[..room as usize];
            cut = true;
        }
    }
    client_w.write_all(data).await?;
    *sent += data.len() as u64;
    shared
        .bytes_down
        .fetch_add(data.len() as u64, Ordering::SeqCst);
    if cut {
        shared.cuts.fetch_add(1, Ordering::SeqCst);
        let _ = client_w.shutdown().await;
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "cut by the fault proxy",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_length_from_content_length() {
        assert_eq!(
            body_length(b"HTTP/1.1 200 OK\r\nContent-Type: x\r\ncontent-length: 42"),
            Some(42)
        );
        assert_eq!(body_length(b"HTTP/1.1 200 OK\r\nconnection: close"), None);
    }

    #[test]
    fn body_length_is_zero_without_a_body() {
        assert_eq!(
            body_length(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9"),
            Some(0)
        );
        assert_eq!(body_length(b"HTTP/1.1 204 No Content"), Some(0));
        assert_eq!(body_length(b"HTTP/1.1 100 Continue"), Some(0));
    }

    #[test]
    fn recorder_splits_request_heads_across_reads() {
        let shared = Shared::default();
        let mut rec = RequestRecorder::default();
        assert_eq!(rec.feed(b"GET /a HTTP/1.1\r\nhost: x\r\n", &shared), 0);
        assert_eq!(rec.feed(b"\r\nGET /b HTTP/1.1\r\n\r\nGET /c", &shared), 2);
        assert_eq!(
            *lock(&shared.requests),
            vec![
                "GET /a HTTP/1.1\r\nhost: x".to_owned(),
                "GET /b HTTP/1.1".to_owned()
            ]
        );
    }

    #[test]
    fn proxy_passes_through_and_counts() {
        // A one-shot upstream that answers one request.
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = upstream.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = upstream.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let mut seen = Vec::new();
            while find(&seen, b"\r\n\r\n").is_none() {
                let n = s.read(&mut buf).expect("read");
                assert!(n > 0, "client closed early");
                seen.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
                .expect("write");
        });
        let proxy = FaultProxy::start(addr).expect("proxy");
        proxy.set_faults(Faults {
            flip: Some(Flip {
                body_offset: 1,
                responses: 1,
            }),
            ..Faults::default()
        });
        let mut client = std::net::TcpStream::connect(proxy.addr()).expect("connect");
        use std::io::{Read, Write};
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .expect("request");
        let mut response = Vec::new();
        client.read_to_end(&mut response).expect("response");
        server.join().expect("upstream thread");
        assert!(response.ends_with(&[b'h', b'e' ^ 0xff, b'l', b'l', b'o']));
        let stats = proxy.stats();
        assert_eq!((stats.connections, stats.flips), (1, 1));
        assert_eq!(stats.bytes_down, response.len() as u64);
        assert_eq!(
            proxy.requests(),
            vec!["GET / HTTP/1.1\r\nhost: x".to_owned()]
        );
    }
}
