//! An answer-scripted server on loopback: requests whose path starts with a prefix are
//! recorded (method, path, headers, body) and answered by a test's function; other requests
//! are forwarded to an upstream server (one request per connection), or answered 404 without
//! one. For what a real server will not do on demand: a 429 with `Retry-After`, a 401 to a
//! host token, an answer out of bounds. It stops when dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::interpose::{forward, read_head, Loopback};

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What the script answers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// `status` with a JSON body.
    pub fn json(status: u16, body: serde_json::Value) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }

    /// The answer with one more header.
    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Script = dyn Fn(&Request) -> Answer + Send + Sync;

/// A running scripted server on `127.0.0.1:<port>`.
pub struct ScriptedServer {
    server: Loopback,
    requests: Arc<Mutex<Vec<Request>>>,
}

/// The longest wait for a request's head and body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body read.
const MAX_BODY: usize = 4 << 20;

impl ScriptedServer {
    /// Answers requests under `prefix` with `script`; forwards the others to `upstream`.
    pub fn start(
        upstream: Option<SocketAddr>,
        prefix: &str,
        script: impl Fn(&Request) -> Answer + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let prefix = prefix.to_owned();
        let server = Loopback::start("scripted-server", move |stream, _| {
            let _ = serve(stream, upstream, &prefix, &script, &recorded);
        })?;
        Ok(Self { server, requests })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every scripted request so far, in order of arrival.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The scripted requests whose path ends with `suffix`.
    pub fn requests_to(&self, suffix: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with(suffix))
            .collect()
    }
}

/// One connection: one request, scripted, forwarded or 404.
fn serve(
    mut client: TcpStream,
    upstream: Option<SocketAddr>,
    prefix: &str,
    script: &Script,
    requests: &Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(READ_TIMEOUT))?;
    let (head, rest) = read_head(&mut client)?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    if !path.starts_with(prefix) {
        return forward(client, upstream, &head);
    }
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    let mut body = rest;
    let mut buf = [0u8; 8192];
    while body.len() < len {
        let n = client.read(&mut buf)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    body.truncate(len);
    let request = Request {
        method,
        path,
        headers,
        body,
    };
    let answer = script(&request);
    if let Ok(mut r) = requests.lock() {
        r.push(request);
    }
    let mut out = format!(
        "HTTP/1.1 {} Scripted\r\ncontent-length: {}\r\nconnection: close\r\n",
        answer.status,
        answer.body.len()
    );
    for (n, v) in &answer.headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&answer.body);
    client.write_all(out.as_bytes())?;
    client.shutdown(Shutdown::Both)
}
