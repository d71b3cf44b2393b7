//! A stand-in for a CDN in front of the release store: plain HTTP on a loopback port, serving
//! each stored file at `/<product>/<channel>/<version>/<file>` (the store's own layout, as a CDN
//! whose origin is the store would), with a single `Range`. It can misbehave: send corrupted
//! bytes, or cut its first answer short. It records every request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::stored::Stored;

/// How the CDN misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Every answer carries the file with one byte changed (in the middle of the file).
    Corrupt,
    /// The first answer stops after this many bytes of its body (the connection is cut).
    CutOnce(usize),
}

/// One request the CDN received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
}

struct Shared {
    stored: Stored,
    fault: Fault,
    seen: Mutex<Vec<Seen>>,
}

/// A running CDN; stops when dropped.
pub struct Cdn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Cdn {
    /// Serves `stored` on a free loopback port.
    pub fn start(stored: Stored, fault: Fault) -> Cdn {
        let shared = Arc::new(Shared {
            stored,
            fault,
            seen: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the CDN");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("the CDN's address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the CDN's runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("the CDN's listener");
                let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
                    let state = state.clone();
                    async move { serve(&state, &uri, &headers) }
                });
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Cdn {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The base URL (`ARTIFACT_REDIRECT`).
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:<port>` (an agent's `download.redirect_hosts` entry).
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

impl Drop for Cdn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One answer: the file (or the asked range of it), as the fault says.
fn serve(state: &Shared, uri: &Uri, headers: &HeaderMap) -> Response {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let first = {
        let mut seen = state.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.push(Seen {
            path: uri.path().to_owned(),
            range: range.clone(),
        });
        seen.len() == 1
    };
    let Some(mut bytes) = state.stored.read(uri.path().trim_start_matches('/')) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if state.fault == Fault::Corrupt && !bytes.is_empty() {
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
    }
    let total = bytes.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|s| *s < total);
    let (status, body) = match start {
        Some(s) => (StatusCode::PARTIAL_CONTENT, bytes.split_off(s)),
        None => (StatusCode::OK, bytes),
    };
    let mut res_headers = HeaderMap::new();
    res_headers.insert(header::CONTENT_LENGTH, body.len().into());
    if let Some(s) = start {
        let value = format!("bytes {s}-{}/{total}", total - 1);
        if let Ok(v) = value.parse() {
            res_headers.insert(header::CONTENT_RANGE, v);
        }
    }
    let body = match state.fault {
        Fault::CutOnce(after) if first && after < body.len() => {
            let head = bytes::Bytes::from(body[..after].to_vec());
            let stream = futures_util::stream::iter([
                Ok(head),
                Err(std::io::Error::other("the CDN cuts the connection")),
            ]);
            Body::from_stream(stream)
        }
        _ => Body::from(body),
    };
    (status, res_headers, body).into_response()
}
