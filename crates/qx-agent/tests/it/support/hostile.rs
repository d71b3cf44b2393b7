//! A hostile update server on loopback: it answers the paths it was given (by path prefix,
//! query ignored) with fixed responses and everything else with 404 — or, in front of a real
//! server ([`HostileServer::in_front_of`]), forwards everything else there — and counts the
//! requests per path. For what a correct server never does: a replayed channel state, a
//! manifest without a signature, a bundle cut short, a channel-state route an old server does
//! not have. A canned `200` honours `Range: bytes=N-` (answering `206`), so a bundle served by
//! it can be resumed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One canned answer.
#[derive(Debug, Clone)]
pub struct Canned {
    pub path: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Announce the whole body but close the connection once the body is sent up to this
    /// offset (of the whole body, whatever range was asked for).
    pub cut_at: Option<usize>,
}

impl Canned {
    pub fn ok(path: &str, headers: Vec<(String, String)>, body: Vec<u8>) -> Self {
        Canned {
            path: path.to_owned(),
            status: 200,
            headers,
            body,
            cut_at: None,
        }
    }

    /// A JSON error with `status` (e.g. a 404 for a route the server does not have).
    pub fn error(path: &str, status: u16) -> Self {
        Canned {
            path: path.to_owned(),
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: br#"{"error":"not found","details":[]}"#.to_vec(),
            cut_at: None,
        }
    }
}

pub struct HostileServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    hits: Arc<Mutex<BTreeMap<String, usize>>>,
    thread: Option<JoinHandle<()>>,
}

impl HostileServer {
    /// Answers `routes` and 404 to everything else.
    pub fn start(routes: Vec<Canned>) -> Self {
        Self::serve(routes, None)
    }

    /// Answers `routes` and forwards every other request to the server at `upstream`.
    pub fn in_front_of(upstream: SocketAddr, routes: Vec<Canned>) -> Self {
        Self::serve(routes, Some(upstream))
    }

    fn serve(routes: Vec<Canned>, upstream: Option<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(Mutex::new(BTreeMap::new()));
        let (flag, counter) = (stop.clone(), hits.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut s) = conn else { continue };
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                let head = read_head(&mut s);
                let text = String::from_utf8_lossy(&head).into_owned();
                let target = text.split(' ').nth(1).unwrap_or("/").to_owned();
                let path = target.split('?').next().unwrap_or("/").to_owned();
                *counter
                    .lock()
                    .expect("hits")
                    .entry(path.clone())
                    .or_default() += 1;
                match (routes.iter().find(|c| c.path == path), upstream) {
                    (Some(c), _) => answer(&mut s, c, range_start(&text)),
                    (None, Some(up)) => forward(&mut s, &text, up),
                    (None, None) => answer(&mut s, &Canned::error(&path, 404), None),
                }
            }
        });
        HostileServer {
            addr,
            stop,
            hits,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen for `path` so far.
    pub fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .expect("hits")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

/// The request head (up to the blank line; requests here have no body).
fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// `N` of a `Range: bytes=N-` header.
fn range_start(head: &str) -> Option<usize> {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("range").then(|| v.trim())
        })?
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()
}

fn answer(s: &mut TcpStream, c: &Canned, range: Option<usize>) {
    let total = c.body.len();
    let start = match range {
        Some(n) if c.status == 200 && n < total => n,
        _ => 0,
    };
    let mut resp = if start > 0 {
        format!(
            "HTTP/1.1 206 X\r\nContent-Range: bytes {start}-{}/{total}\r\n",
            total - 1
        )
    } else {
        format!("HTTP/1.1 {} X\r\n", c.status)
    };
    resp.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n",
        total - start
    ));
    for (k, v) in &c.headers {
        resp.push_str(&format!("{k}: {v}\r\n"));
    }
    resp.push_str("\r\n");
    let end = c.cut_at.unwrap_or(total).clamp(start, total);
    let _ = s.write_all(resp.as_bytes());
    let _ = s.write_all(&c.body[start..end]);
}

/// Sends the request to `upstream` (one request per connection) and copies the answer back.
fn forward(s: &mut TcpStream, head: &str, upstream: SocketAddr) {
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return;
    };
    let mut request: String = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| {
            !l.split_once(':')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        })
        .map(|l| format!("{l}\r\n"))
        .collect();
    request.push_str("Connection: close\r\n\r\n");
    if up.write_all(request.as_bytes()).is_ok() {
        let _ = std::io::copy(&mut up, s);
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
