//! The HTTP client of the update server's publisher API: publish (multipart upload with a
//! progress bar), promote, yank, and the read endpoints. Blocking (a command-line tool does one
//! thing at a time); do not call it from inside an async runtime without `spawn_blocking`.
//!
//! Connection errors and 500/502/503/504 answers (transient server trouble; a publish is
//! idempotent, so sending it again is safe) are retried a bounded number of times with
//! exponential backoff; every other answer is final. Server errors (`{"error", "details"}`)
//! become messages that say what to do.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use qx_core::{Manifest, Version, MANIFEST_FILE, SIGNATURE_FILE};
use reqwest::blocking::{multipart, RequestBuilder, Response};
use reqwest::StatusCode;

use crate::error::{Error, Result};

/// The environment variable holding the publish token.
pub const TOKEN_ENV: &str = "QX_PUBLISH_TOKEN";

/// A publish token. Never printed: its `Debug` is redacted and it has no `Display`.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    pub fn new(value: &str) -> Result<Self> {
        let v = value.trim();
        if v.is_empty() {
            return Err(Error::Usage("the publish token is empty".into()));
        }
        Ok(Self(v.to_owned()))
    }

    /// From `--token-file FILE` when given, else from `QX_PUBLISH_TOKEN`.
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Self> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
            return Self::new(&text)
                .map_err(|_| Error::Usage(format!("token file {} is empty", path.display())));
        }
        match std::env::var(TOKEN_ENV) {
            Ok(v) if !v.trim().is_empty() => Self::new(&v),
            _ => Err(Error::Usage(format!(
                "no publish token: set {TOKEN_ENV} or pass --token-file FILE"
            ))),
        }
    }
}

/// How the server took a publish or promote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 201: the release is new.
    Created,
    /// 200: an identical release was already there (idempotent re-publish).
    AlreadyThere,
}

/// What a request was for, to word its errors.
#[derive(Debug, Clone)]
enum Action {
    Publish {
        version: String,
        channel: String,
    },
    Promote {
        version: String,
        from: String,
        to: String,
    },
    Yank {
        version: String,
        channel: String,
    },
    Read,
}

/// Upload progress: a bar on a terminal, plain lines otherwise.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<ProgressInner>,
}

struct ProgressInner {
    bar: Option<ProgressBar>,
    total: u64,
    done: AtomicU64,
    /// Next percentage at which a plain line is printed.
    next_mark: AtomicU64,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn new(total: u64) -> Self {
        Self::with_terminal(total, std::io::stderr().is_terminal())
    }

    pub fn with_terminal(total: u64, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg:28!} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Self {
            inner: Arc::new(ProgressInner {
                bar,
                total,
                done: AtomicU64::new(0),
                next_mark: AtomicU64::new(25),
            }),
        }
    }

    fn start_file(&self, name: &str, size: u64) {
        match &self.inner.bar {
            Some(bar) => bar.set_message(name.to_owned()),
            None => eprintln!("uploading {name} ({size} bytes)"),
        }
    }

    fn advance(&self, n: u64) {
        let done = self.inner.done.fetch_add(n, Ordering::Relaxed) + n;
        match &self.inner.bar {
            Some(bar) => bar.set_position(done),
            None => {
                if self.inner.total == 0 {
                    return;
                }
                let pct = done.saturating_mul(100) / self.inner.total;
                let mark = self.inner.next_mark.load(Ordering::Relaxed);
                if pct >= mark && mark <= 100 {
                    self.inner
                        .next_mark
                        .store((pct / 25 + 1) * 25, Ordering::Relaxed);
                    eprintln!("uploaded {done}/{} bytes ({pct}%)", self.inner.total);
                }
            }
        }
    }

    fn restart(&self) {
        self.inner.done.store(0, Ordering::Relaxed);
        self.inner.next_mark.store(25, Ordering::Relaxed);
        if let Some(bar) = &self.inner.bar {
            bar.set_position(0);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.inner.bar {
            bar.finish_and_clear();
        }
    }
}

/// A client for one update server.
#[derive(Debug, Clone)]
pub struct Client {
    server: String,
    token: Option<Token>,
    http: reqwest::blocking::Client,
    /// An extra trusted CA (a server with a self-signed certificate).
    ca: Option<reqwest::Certificate>,
    /// Extra attempts after the first on a connection error.
    retries: u32,
    backoff: Duration,
}

fn blocking_http(
    server: &str,
    ca: Option<&reqwest::Certificate>,
) -> Result<reqwest::blocking::Client> {
    let mut b = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(None::<Duration>)
        .user_agent(concat!("qx-publish/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca {
        b = b.add_root_certificate(ca.clone());
    }
    b.build().map_err(|e| Error::Transport {
        url: server.to_owned(),
        message: format!("cannot create the HTTP client: {e}"),
    })
}

impl Client {
    pub fn new(server: &str, token: Option<Token>, retries: u32) -> Result<Self> {
        let parsed = reqwest::Url::parse(server)
            .map_err(|e| Error::Usage(format!("--server {server}: not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::Usage(format!(
                "--server {server}: only http:// and https:// are supported"
            )));
        }
        let http = blocking_http(server, None)?;
        Ok(Self {
            server: server.trim_end_matches('/').to_owned(),
            token,
            http,
            ca: None,
            retries,
            backoff: Duration::from_millis(500),
        })
    }

    /// Also trusts the CA certificate (PEM) in `path`: for a server whose certificate is
    /// self-signed or from a private CA.
    pub fn with_ca_cert(mut self, path: &Path) -> Result<Self> {
        let pem = std::fs::read(path).map_err(Error::io(path))?;
        let ca = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            Error::Usage(format!(
                "--ca-cert {}: not a PEM certificate: {e}",
                path.display()
            ))
        })?;
        self.http = blocking_http(&self.server, Some(&ca))?;
        self.ca = Some(ca);
        Ok(self)
    }

    /// Sets the first retry delay (doubled at each attempt).
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.server)
    }

    fn token(&self) -> Result<&Token> {
        self.token.as_ref().ok_or_else(|| {
            Error::Usage(format!(
                "no publish token: set {TOKEN_ENV} or pass --token-file FILE"
            ))
        })
    }

    /// Sends a request built by `make` (called again for every attempt).
    fn send(
        &self,
        url: &str,
        mut make: impl FnMut() -> Result<RequestBuilder>,
        mut on_retry: impl FnMut(),
    ) -> Result<Response> {
        let mut delay = self.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt > self.retries;
            let outcome = make()?.send();
            let why = match outcome {
                Ok(resp) => {
                    let s = resp.status();
                    if last || !matches!(s.as_u16(), 500 | 502..=504) {
                        return Ok(resp);
                    }
                    format!("server answered {s}")
                }
                Err(e) => {
                    if last || e.is_status() || e.is_builder() {
                        let mut message = describe_transport(&e);
                        if attempt > 1 {
                            message.push_str(&format!(" (gave up after {attempt} attempts)"));
                        }
                        return Err(Error::Transport {
                            url: url.to_owned(),
                            message,
                        });
                    }
                    describe_transport(&e)
                }
            };
            eprintln!(
                "{url}: {why}; retrying in {} ms (attempt {}/{})",
                delay.as_millis(),
                attempt + 1,
                self.retries + 1
            );
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(30));
            on_retry();
        }
    }

    /// The highest version the channel has (yanked releases included), or None when it has
    /// none.
    pub fn latest_version(&self, product: &str, channel: &str) -> Result<Option<Version>> {
        let url = self.url(&format!("{product}/releases?channel={channel}"));
        let resp = self.send(
            &url,
            || Ok(self.http.get(&url).timeout(Duration::from_secs(60))),
            || {},
        )?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = check(resp, &url, &Action::Read)?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| Error::Transport {
            url: url.clone(),
            message: format!("the release list is not JSON: {e}"),
        })?;
        let mut best: Option<Version> = None;
        for r in v["releases"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(Ok(ver)) = r["version"].as_str().map(Version::parse) {
                if best.as_ref().is_none_or(|b| &ver > b) {
                    best = Some(ver);
                }
            }
        }
        Ok(best)
    }

    /// The channel's current manifest bytes and signature text.
    pub fn latest_manifest(&self, product: &str, channel: &str) -> Result<(Vec<u8>, String)> {
        let url = self.url(&format!("{product}/manifest?channel={channel}"));
        let resp = self.send(
            &url,
            || Ok(self.http.get(&url).timeout(Duration::from_secs(60))),
            || {},
        )?;
        let sig = resp
            .headers()
            .get("x-qx-signature")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = check(resp, &url, &Action::Read)?;
        let sig = sig
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        Ok((body, sig))
    }

    /// Fetches one file of a release (an artifact, `manifest.json` or its signature) into
    /// memory. For small files only.
    pub fn fetch(
        &self,
        product: &str,
        version: &str,
        name: &str,
        channel: &str,
    ) -> Result<Vec<u8>> {
        let url = self.url(&format!(
            "{product}/releases/{version}/{name}?channel={channel}"
        ));
        let resp = self.send(
            &url,
            || Ok(self.http.get(&url).timeout(Duration::from_secs(60))),
            || {},
        )?;
        check(resp, &url, &Action::Read)
    }

    /// Streams one file of a release to `dest`.
    pub fn download(
        &self,
        product: &str,
        version: &str,
        name: &str,
        channel: &str,
        dest: &Path,
    ) -> Result<()> {
        let url = self.url(&format!(
            "{product}/releases/{version}/{name}?channel={channel}"
        ));
        let mut resp = self.send(&url, || Ok(self.http.get(&url)), || {})?;
        if !resp.status().is_success() {
            check(resp, &url, &Action::Read)?;
            return Err(Error::Transport {
                url,
                message: "unexpected answer".into(),
            });
        }
        let mut file = std::fs::File::create(dest).map_err(Error::io(dest))?;
        resp.copy_to(&mut file).map_err(|e| Error::Transport {
            url: url.clone(),
            message: format!("download interrupted: {}", describe_transport(&e)),
        })?;
        Ok(())
    }

    /// Uploads a built release directory: parts `manifest`, `signature`, then one part per
    /// artifact named after it, streamed from disk.
    ///
    /// This one request uses the asynchronous client on a private runtime: when the server
    /// answers before the whole body is sent (413 for a too-large release, 401 for a bad
    /// token), that answer is what the user sees, not a broken-pipe error.
    pub fn publish(
        &self,
        dir: &Path,
        manifest: &Manifest,
        manifest_bytes: &[u8],
        signature: &str,
        progress: &Progress,
    ) -> Result<Outcome> {
        let token = self.token()?.clone();
        let url = self.url(&format!("{}/publish", manifest.product));
        let action = Action::Publish {
            version: manifest.version.to_string(),
            channel: manifest.channel.to_string(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Transport {
                url: url.clone(),
                message: format!("cannot start the upload runtime: {e}"),
            })?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("qx-publish/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &self.ca {
            builder = builder.add_root_certificate(ca.clone());
        }
        let http = builder.build().map_err(|e| transport(&url, e))?;
        let artifacts = manifest.artifacts();
        let attempt = || async {
            let mut form = reqwest::multipart::Form::new()
                .part(
                    "manifest",
                    reqwest::multipart::Part::bytes(manifest_bytes.to_vec())
                        .file_name(MANIFEST_FILE)
                        .mime_str("application/json")
                        .map_err(|e| transport(&url, e))?,
                )
                .part(
                    "signature",
                    reqwest::multipart::Part::text(signature.to_owned()).file_name(SIGNATURE_FILE),
                );
            for a in &artifacts {
                let path = dir.join(a.artifact.as_str());
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(Error::io(&path))?;
                let name = a.artifact.to_string();
                let size = a.size_bytes;
                let progress = progress.clone();
                let mut started = false;
                let stream =
                    tokio_util::io::ReaderStream::with_capacity(file, 1 << 16).map(move |chunk| {
                        if !started {
                            started = true;
                            progress.start_file(&name, size);
                        }
                        if let Ok(bytes) = &chunk {
                            progress.advance(bytes.len() as u64);
                        }
                        chunk
                    });
                form = form.part(
                    a.artifact.to_string(),
                    reqwest::multipart::Part::stream_with_length(
                        reqwest::Body::wrap_stream(stream),
                        a.size_bytes,
                    )
                    .file_name(a.artifact.to_string())
                    .mime_str("application/octet-stream")
                    .map_err(|e| transport(&url, e))?,
                );
            }
            let resp = http
                .post(&url)
                .bearer_auth(&token.0)
                .multipart(form)
                .send()
                .await;
            Ok::<_, Error>(match resp {
                Ok(r) => {
                    let status = r.status();
                    match r.bytes().await {
                        Ok(body) => Ok((status, body.to_vec())),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            })
        };
        let result = runtime.block_on(async {
            let mut delay = self.backoff;
            let mut n = 0;
            loop {
                n += 1;
                let last = n > self.retries;
                let why = match attempt().await? {
                    Ok((status, body)) => {
                        if last || !matches!(status.as_u16(), 500 | 502..=504) {
                            return Ok((status, body));
                        }
                        format!("server answered {status}")
                    }
                    Err(e) => {
                        if last {
                            let mut message = describe_transport(&e);
                            if n > 1 {
                                message.push_str(&format!(" (gave up after {n} attempts)"));
                            }
                            message.push_str(
                                "; if the server closed the connection during the upload, the release may be larger than its MAX_UPLOAD_BYTES",
                            );
                            return Err(Error::Transport {
                                url: url.clone(),
                                message,
                            });
                        }
                        describe_transport(&e)
                    }
                };
                eprintln!(
                    "{url}: {why}; retrying in {} ms (attempt {}/{})",
                    delay.as_millis(),
                    n + 1,
                    self.retries + 1
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                progress.restart();
            }
        });
        progress.finish();
        let (status, body) = result?;
        check_parts(status, body, &url, &action)?;
        Ok(if status == StatusCode::CREATED {
            Outcome::Created
        } else {
            Outcome::AlreadyThere
        })
    }

    /// Sends a re-signed manifest for `to` to the promote endpoint of `version` on `from`.
    pub fn promote(
        &self,
        product: &str,
        version: &str,
        from: &str,
        to: &str,
        manifest_bytes: &[u8],
        signature: &str,
    ) -> Result<Outcome> {
        let token = self.token()?.clone();
        let url = self.url(&format!("{product}/releases/{version}/promote?from={from}"));
        let make = || -> Result<RequestBuilder> {
            let form = multipart::Form::new()
                .part(
                    "manifest",
                    multipart::Part::bytes(manifest_bytes.to_vec())
                        .file_name(MANIFEST_FILE)
                        .mime_str("application/json")
                        .map_err(|e| transport(&url, e))?,
                )
                .part(
                    "signature",
                    multipart::Part::text(signature.to_owned()).file_name(SIGNATURE_FILE),
                );
            Ok(self
                .http
                .post(&url)
                .bearer_auth(&token.0)
                .timeout(Duration::from_secs(300))
                .multipart(form))
        };
        let resp = self.send(&url, make, || {})?;
        let status = resp.status();
        check(
            resp,
            &url,
            &Action::Promote {
                version: version.to_owned(),
                from: from.to_owned(),
                to: to.to_owned(),
            },
        )?;
        Ok(if status == StatusCode::CREATED {
            Outcome::Created
        } else {
            Outcome::AlreadyThere
        })
    }

    /// Yanks a release from a channel.
    pub fn yank(&self, product: &str, version: &str, channel: &str) -> Result<()> {
        let token = self.token()?.clone();
        let url = self.url(&format!("{product}/releases/{version}?channel={channel}"));
        let resp = self.send(
            &url,
            || {
                Ok(self
                    .http
                    .delete(&url)
                    .bearer_auth(&token.0)
                    .timeout(Duration::from_secs(60)))
            },
            || {},
        )?;
        check(
            resp,
            &url,
            &Action::Yank {
                version: version.to_owned(),
                channel: channel.to_owned(),
            },
        )?;
        Ok(())
    }
}

fn transport(url: &str, e: reqwest::Error) -> Error {
    Error::Transport {
        url: url.to_owned(),
        message: describe_transport(&e),
    }
}

/// A transport error in words, with its causes.
fn describe_transport(e: &reqwest::Error) -> String {
    let mut msg = if e.is_connect() {
        "cannot connect to the server".to_owned()
    } else if e.is_timeout() {
        "the request timed out".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    let mut depth = 0;
    while let Some(s) = source {
        depth += 1;
        if depth > 6 {
            break;
        }
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    if msg.contains("certificate") {
        msg.push_str(
            " (for a server with a self-signed or private certificate, pass --ca-cert FILE)",
        );
    }
    msg
}

/// Returns the body of a successful answer; turns any other into an error that says what
/// the server refused and what to do.
fn check(resp: Response, url: &str, action: &Action) -> Result<Vec<u8>> {
    let status = resp.status();
    let body = resp.bytes().map_err(|e| transport(url, e))?.to_vec();
    check_parts(status, body, url, action)
}

fn check_parts(status: StatusCode, body: Vec<u8>, url: &str, action: &Action) -> Result<Vec<u8>> {
    if status.is_success() {
        return Ok(body);
    }
    let (error, details) = parse_error_body(&body);
    let what = match (status.as_u16(), action) {
        (401, _) => "the server refused the publish token (401 Unauthorized); check QX_PUBLISH_TOKEN or --token-file against the server's PUBLISH_TOKEN".to_owned(),
        (409, Action::Publish { version, channel }) => format!(
            "version {version} already exists on channel {channel} with different content (409 Conflict); releases are immutable: bump the version in the spec"
        ),
        (409, Action::Promote { version, to, .. }) => format!(
            "channel {to} already has version {version} with different content (409 Conflict)"
        ),
        (413, _) => "the release is larger than the server accepts (413 Payload Too Large); raise the server's MAX_UPLOAD_BYTES or make the release smaller".to_owned(),
        (422, Action::Publish { version, .. }) => format!(
            "the server rejected release {version} (422 Unprocessable Entity)"
        ),
        (422, _) => "the server rejected the manifest (422 Unprocessable Entity)".to_owned(),
        (400, _) => "the server could not read the request (400 Bad Request)".to_owned(),
        (404, Action::Promote { version, from, .. }) => format!(
            "version {version} is not on channel {from} (404 Not Found)"
        ),
        (404, Action::Yank { version, channel }) => format!(
            "version {version} is not on channel {channel} (404 Not Found)"
        ),
        (404, _) => "not found (404)".to_owned(),
        (s, _) => format!("the server answered {s}"),
    };
    let mut message = what;
    if let Some(e) = error {
        message.push_str(&format!("\n  server says: {e}"));
    }
    for d in details {
        message.push_str(&format!("\n    - {d}"));
    }
    Err(Error::Server {
        url: url.to_owned(),
        status: status.as_u16(),
        message,
    })
}

/// `{"error": "...", "details": [...]}`; details may be strings or `{path, message}` objects.
fn parse_error_body(body: &[u8]) -> (Option<String>, Vec<String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        let text = String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(500)
            .collect::<String>();
        return ((!text.is_empty()).then_some(text), Vec::new());
    };
    let error = v["error"].as_str().map(str::to_owned);
    let details = v["details"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| match d {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Object(o) => {
                        let msg = o.get("message").and_then(|m| m.as_str());
                        let path = o.get("path").and_then(|m| m.as_str()).unwrap_or("");
                        match msg {
                            Some(m) if !path.is_empty() => format!("{path}: {m}"),
                            Some(m) => m.to_owned(),
                            None => o
                                .iter()
                                .map(|(k, v)| match v {
                                    serde_json::Value::String(s) => format!("{k}: {s}"),
                                    other => format!("{k}: {other}"),
                                })
                                .collect::<Vec<_>>()
                                .join(", "),
                        }
                    }
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    (error, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_redacted() {
        let t = Token::new("s3cret\n").expect("token");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert_eq!(t.0, "s3cret");
    }

    #[test]
    fn error_body_with_string_and_object_details() {
        let (e, d) = parse_error_body(
            br#"{"error":"bad","details":["one",{"path":"components[0].sha256","message":"mismatch"}]}"#,
        );
        assert_eq!(e.as_deref(), Some("bad"));
        assert_eq!(d, ["one", "components[0].sha256: mismatch"]);
    }

    #[test]
    fn error_body_that_is_not_json() {
        let (e, d) = parse_error_body(b"gateway exploded\n");
        assert_eq!(e.as_deref(), Some("gateway exploded"));
        assert!(d.is_empty());
    }

    #[test]
    fn server_url_must_be_http() {
        assert!(Client::new("ftp://x", None, 0).is_err());
        assert!(Client::new("not a url", None, 0).is_err());
        assert!(Client::new("http://127.0.0.1:1/", None, 0).is_ok());
    }
}
