//! The HTTP client of the update server's publisher API: publish (multipart upload with a
//! progress bar), promote, yank, and the read endpoints. Blocking (a command-line tool does one
//! thing at a time); do not call it from inside an async runtime without `spawn_blocking`.
//! Every URL comes from [`qx_core::api::ServerUrl`].
//!
//! Connection errors and 500/502/503/504 answers (transient server trouble; a publish is
//! idempotent, so sending it again is safe) are retried a bounded number of times with
//! exponential backoff ([`retry`]); every other answer is final. Server errors
//! (`{"error", "details"}`) become messages that say what to do ([`answer`]).

mod answer;
mod progress;
mod retry;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use qx_core::api::{ServerUrl, SIGNATURE_HEADER};
use qx_core::fleet::{RolloutList, RolloutStatus};
use qx_core::{ArtifactRef, Manifest, Sha256Hasher, Version, MANIFEST_FILE, SIGNATURE_FILE};
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;

use self::answer::{check, check_parts, describe_transport, transport, Action};
pub use self::progress::Progress;
use self::retry::{Request, RetryPolicy};
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

/// Timeout of a read, a yank or other small request.
const SHORT_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of a promotion (the server copies the stored artifacts).
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(300);
/// Added to the error when a publish gives up.
const PUBLISH_GIVE_UP_HINT: &str = "; if the server closed the connection during the upload, the release may be larger than its MAX_UPLOAD_BYTES";
const USER_AGENT: &str = concat!("qx-publish/", env!("CARGO_PKG_VERSION"));

/// A client for one update server.
#[derive(Debug, Clone)]
pub struct Client {
    server: ServerUrl,
    token: Option<Token>,
    http: reqwest::blocking::Client,
    /// An extra trusted CA (a server with a self-signed certificate).
    ca: Option<reqwest::Certificate>,
    retry: RetryPolicy,
}

fn blocking_http(
    server: &str,
    ca: Option<&reqwest::Certificate>,
) -> Result<reqwest::blocking::Client> {
    let mut b = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(None::<Duration>)
        .user_agent(USER_AGENT);
    if let Some(ca) = ca {
        b = b.add_root_certificate(ca.clone());
    }
    b.build().map_err(|e| Error::Transport {
        url: server.to_owned(),
        message: format!("cannot create the HTTP client: {e}"),
    })
}

/// One multipart upload (publish or promote): parts `manifest`, `signature`, then one part
/// per file, streamed from disk.
struct Upload<'a> {
    url: String,
    manifest_bytes: &'a [u8],
    signature: &'a str,
    files: Vec<UploadFile>,
    timeout: Option<Duration>,
    give_up_hint: &'static str,
}

/// A file part of an upload: its path on disk, its part and file name, its size.
struct UploadFile {
    path: PathBuf,
    name: String,
    size: u64,
}

/// How the server took a publish or promote, from its status.
fn outcome(status: StatusCode) -> Outcome {
    if status == StatusCode::CREATED {
        Outcome::Created
    } else {
        Outcome::AlreadyThere
    }
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
            server: ServerUrl::new(server),
            token,
            http,
            ca: None,
            retry: RetryPolicy {
                retries,
                backoff: Duration::from_millis(500),
            },
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
        self.http = blocking_http(self.server.base(), Some(&ca))?;
        self.ca = Some(ca);
        Ok(self)
    }

    /// Sets the first retry delay (doubled at each attempt).
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.retry.backoff = backoff;
        self
    }

    /// The server's base URL, without a trailing slash.
    pub fn server(&self) -> &str {
        self.server.base()
    }

    /// The URLs of the server's routes.
    pub fn urls(&self) -> &ServerUrl {
        &self.server
    }

    fn token(&self) -> Result<&Token> {
        self.token.as_ref().ok_or_else(|| {
            Error::Usage(format!(
                "no publish token: set {TOKEN_ENV} or pass --token-file FILE"
            ))
        })
    }

    /// Sends a request built by `make` (called again for every attempt), retried by the
    /// client's policy.
    fn send(
        &self,
        url: &str,
        mut make: impl FnMut() -> Result<RequestBuilder>,
    ) -> Result<Response> {
        let req = Request {
            url,
            give_up_hint: "",
        };
        self.retry
            .run(&req, || Ok(make()?.send()), Response::status, || {})
    }

    /// `GET url` with the short timeout.
    fn get(&self, url: &str) -> Result<Response> {
        self.send(url, || Ok(self.http.get(url).timeout(SHORT_TIMEOUT)))
    }

    /// The highest version the channel has (yanked releases included), or None when it has
    /// none.
    pub fn latest_version(&self, product: &str, channel: &str) -> Result<Option<Version>> {
        Ok(self
            .releases(product, channel)?
            .into_iter()
            .map(|(v, _)| v)
            .max())
    }

    /// The channel's current manifest bytes and signature text.
    pub fn latest_manifest(&self, product: &str, channel: &str) -> Result<(Vec<u8>, String)> {
        let url = self.server.manifest(product, channel);
        let resp = self.get(&url)?;
        let sig = resp
            .headers()
            .get(SIGNATURE_HEADER)
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
        let url = self.server.artifact(product, version, name, channel);
        let resp = self.get(&url)?;
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
        let url = self.server.artifact(product, version, name, channel);
        let mut resp = self.send(&url, || Ok(self.http.get(&url)))?;
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
    /// artifact named after it, streamed from disk. Artifacts named in `carried` (carried
    /// over from an earlier release, docs/spec.md §8) are left out: the server links them.
    pub fn publish(
        &self,
        dir: &Path,
        manifest: &Manifest,
        manifest_bytes: &[u8],
        signature: &str,
        carried: &[String],
        progress: &Progress,
    ) -> Result<Outcome> {
        let files = manifest
            .artifacts()
            .iter()
            .filter(|a| !carried.iter().any(|c| c == a.artifact.as_str()))
            .map(|a| UploadFile {
                path: dir.join(a.artifact.as_str()),
                name: a.artifact.to_string(),
                size: a.size_bytes,
            })
            .collect();
        let upload = Upload {
            url: self.server.publish(&manifest.product),
            manifest_bytes,
            signature,
            files,
            timeout: None,
            give_up_hint: PUBLISH_GIVE_UP_HINT,
        };
        let action = Action::Publish {
            version: manifest.version.to_string(),
            channel: manifest.channel.to_string(),
        };
        self.upload(&upload, progress, &action)
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
        let upload = Upload {
            url: self.server.promote(product, version, from),
            manifest_bytes,
            signature,
            files: Vec::new(),
            timeout: Some(PROMOTE_TIMEOUT),
            give_up_hint: "",
        };
        let action = Action::Promote {
            version: version.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
        };
        self.upload(&upload, &Progress::with_terminal(0, false), &action)
    }

    /// Yanks a release from a channel.
    pub fn yank(&self, product: &str, version: &str, channel: &str) -> Result<()> {
        let token = self.token()?.clone();
        let url = self.server.release(product, version, channel);
        let resp = self.send(&url, || {
            Ok(self
                .http
                .delete(&url)
                .bearer_auth(&token.0)
                .timeout(SHORT_TIMEOUT))
        })?;
        let action = Action::Yank {
            version: version.to_owned(),
            channel: channel.to_owned(),
        };
        check(resp, &url, &action)?;
        Ok(())
    }

    /// The channel's signed state (docs/spec.md §8): its exact bytes and `.minisig` text, or
    /// None when the channel has no state yet (404).
    pub fn channel_state(&self, product: &str, channel: &str) -> Result<Option<(Vec<u8>, String)>> {
        let url = self.server.channel_state(product, channel);
        let resp = self.get(&url)?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let sig = signature_header(&resp);
        let body = check(resp, &url, &Action::Read)?;
        let sig = sig.ok_or_else(|| Error::Transport {
            url: url.clone(),
            message: format!("the server sent the channel state without its signature ({SIGNATURE_HEADER} header)"),
        })?;
        Ok(Some((body, sig)))
    }

    /// `PUT`s a signed channel state. A 409 (the stored state's `seq` is not lower) is an
    /// answer, not an error: the caller decides what to do with it.
    pub fn put_channel_state(
        &self,
        product: &str,
        channel: &str,
        bytes: &[u8],
        signature: &str,
    ) -> Result<StatePut> {
        let token = self.token()?.clone();
        let url = self.server.channel_state(product, channel);
        let sig = base64::engine::general_purpose::STANDARD.encode(signature.as_bytes());
        let resp = self.send(&url, || {
            Ok(self
                .http
                .put(&url)
                .bearer_auth(&token.0)
                .header(SIGNATURE_HEADER, &sig)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes.to_vec())
                .timeout(SHORT_TIMEOUT))
        })?;
        let status = resp.status();
        if status == StatusCode::CONFLICT {
            let body = resp.bytes().map_err(|e| transport(&url, e))?.to_vec();
            return Ok(StatePut::Conflict { body });
        }
        let action = Action::ChannelState {
            channel: channel.to_owned(),
        };
        check(resp, &url, &action)?;
        Ok(StatePut::Stored(outcome(status)))
    }

    /// Whether an update server answers under the base URL: its `GET /health` is
    /// `{"status":"ok"}` (a wrong base path gets a 404 or another server's page).
    pub fn answers_as_update_server(&self) -> Result<bool> {
        let url = self.server.health();
        let resp = self.get(&url)?;
        if !resp.status().is_success() {
            return Ok(false);
        }
        let body = resp.bytes().map_err(|e| transport(&url, e))?;
        Ok(serde_json::from_slice::<serde_json::Value>(&body)
            .is_ok_and(|v| v["status"].as_str() == Some("ok")))
    }

    /// The channels the server accepts (`GET /api/v1/channels`, its `CHANNELS`).
    pub fn channels(&self) -> Result<Vec<String>> {
        let url = self.server.channels();
        let body = check(self.get(&url)?, &url, &Action::Read)?;
        let v: serde_json::Value = json_answer(&url, &body, "channel list")?;
        Ok(v["channels"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect())
    }

    /// The token's name and scopes (`GET /api/v1/whoami`); a refused token is the 401 error.
    pub fn whoami(&self) -> Result<(String, Vec<String>)> {
        let url = self.server.whoami();
        let resp = self.authorized(&url, reqwest::Method::GET)?;
        let body = check(resp, &url, &Action::Read)?;
        let v: serde_json::Value = json_answer(&url, &body, "token description")?;
        let name = v["name"].as_str().unwrap_or_default().to_owned();
        let scopes = v["scopes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        Ok((name, scopes))
    }

    /// The channel's rollouts, newest first (docs/spec.md §10).
    pub fn rollouts(&self, product: &str, channel: &str) -> Result<RolloutList> {
        let url = self.server.rollouts(product, Some(channel));
        let resp = self.authorized(&url, reqwest::Method::GET)?;
        let body = check(resp, &url, &Action::Read)?;
        json_answer(&url, &body, "rollout list")
    }

    /// One rollout's status.
    pub fn rollout(&self, product: &str, id: &str) -> Result<RolloutStatus> {
        let url = self.server.rollout(product, id, None);
        let resp = self.authorized(&url, reqwest::Method::GET)?;
        let body = check(resp, &url, &Action::Rollout { id: id.to_owned() })?;
        json_answer(&url, &body, "rollout status")
    }

    /// `POST`s `action` (`pause`, `resume`, `abort`) to a rollout; its status after.
    pub fn rollout_action(&self, product: &str, id: &str, action: &str) -> Result<RolloutStatus> {
        let url = self.server.rollout(product, id, Some(action));
        let resp = self.authorized(&url, reqwest::Method::POST)?;
        let body = check(resp, &url, &Action::Rollout { id: id.to_owned() })?;
        json_answer(&url, &body, "rollout status")
    }

    /// A request with the token and the short timeout, retried by the client's policy.
    fn authorized(&self, url: &str, method: reqwest::Method) -> Result<Response> {
        let token = self.token()?.clone();
        self.send(url, || {
            Ok(self
                .http
                .request(method.clone(), url)
                .bearer_auth(&token.0)
                .timeout(SHORT_TIMEOUT))
        })
    }

    /// Every release of a channel as (version, yanked), newest first; empty when the server
    /// knows none.
    pub fn releases(&self, product: &str, channel: &str) -> Result<Vec<(Version, bool)>> {
        let url = self.server.releases(product, channel);
        let resp = self.get(&url)?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let body = check(resp, &url, &Action::Read)?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| Error::Transport {
            url: url.clone(),
            message: format!("the release list is not JSON: {e}"),
        })?;
        let releases = v["releases"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        releases
            .iter()
            .map(|r| {
                let version = r["version"].as_str().and_then(|s| Version::parse(s).ok());
                let version = version.ok_or_else(|| Error::Transport {
                    url: url.clone(),
                    message: format!(
                        "the release list holds an entry without a valid version: {r}"
                    ),
                })?;
                Ok((version, r["yanked"].as_bool().unwrap_or(false)))
            })
            .collect()
    }

    /// Streams one artifact of a release to `dest`, checking its size and SHA-256 against
    /// `expected` as it arrives; a file that does not match is removed.
    pub fn download_verified(
        &self,
        product: &str,
        version: &str,
        channel: &str,
        expected: &ArtifactRef,
        dest: &Path,
    ) -> Result<()> {
        let url = self
            .server
            .artifact(product, version, &expected.artifact, channel);
        let resp = self.send(&url, || Ok(self.http.get(&url)))?;
        if !resp.status().is_success() {
            check(resp, &url, &Action::Read)?;
            return Err(Error::Transport {
                url,
                message: "unexpected answer".into(),
            });
        }
        let result = copy_verified(resp, &url, expected, dest);
        if result.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        result
    }

    /// Sends a multipart upload, retried by the client's policy, and judges the answer.
    ///
    /// Uploads use the asynchronous client on a private runtime: when the server answers
    /// before the whole body is sent (413 for a too-large release, 401 for a bad token), that
    /// answer is what the user sees, not a broken-pipe error.
    fn upload(&self, upload: &Upload<'_>, progress: &Progress, action: &Action) -> Result<Outcome> {
        let token = self.token()?.clone();
        let url = upload.url.as_str();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Transport {
                url: url.to_owned(),
                message: format!("cannot start the upload runtime: {e}"),
            })?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(USER_AGENT);
        if let Some(ca) = &self.ca {
            builder = builder.add_root_certificate(ca.clone());
        }
        let http = builder.build().map_err(|e| transport(url, e))?;
        let req = Request {
            url,
            give_up_hint: upload.give_up_hint,
        };
        let result = self.retry.run(
            &req,
            || runtime.block_on(send_upload(&http, upload, &token, progress)),
            |(status, _)| *status,
            || progress.restart(),
        );
        progress.finish();
        let (status, body) = result?;
        check_parts(status, body, url, action)?;
        Ok(outcome(status))
    }
}

/// How the server took a channel state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatePut {
    /// 201 stored, or 200: byte-identical to the stored one.
    Stored(Outcome),
    /// 409: the stored state's `seq` is not lower; the body names it.
    Conflict { body: Vec<u8> },
}

/// The `.minisig` text carried base64-encoded in the signature header, if any.
fn signature_header(resp: &Response) -> Option<String> {
    let value = resp.headers().get(SIGNATURE_HEADER)?.to_str().ok()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Copies a response body to `dest`, refusing more bytes than signed, fewer, or other ones.
fn copy_verified(mut resp: Response, url: &str, expected: &ArtifactRef, dest: &Path) -> Result<()> {
    use std::io::{Read, Write};
    let fail = |message: String| Error::Transport {
        url: url.to_owned(),
        message: format!("artifact {}: {message}", expected.artifact),
    };
    let file = std::fs::File::create(dest).map_err(Error::io(dest))?;
    let mut out = std::io::BufWriter::new(file);
    let mut hasher = Sha256Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = resp
            .read(&mut buf)
            .map_err(|e| fail(format!("download interrupted: {e}")))?;
        if n == 0 {
            break;
        }
        if hasher.len() + n as u64 > expected.size_bytes {
            return Err(fail(format!(
                "larger than the {} bytes the manifest signs",
                expected.size_bytes
            )));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(Error::io(dest))?;
    }
    let (sha, len) = hasher.finish();
    if len != expected.size_bytes {
        return Err(fail(format!(
            "{len} bytes, the manifest signs {}",
            expected.size_bytes
        )));
    }
    if sha != expected.sha256 {
        return Err(fail(format!(
            "sha256 mismatch (manifest {}, downloaded {})",
            expected.sha256.short(),
            sha.short()
        )));
    }
    let file = out
        .into_inner()
        .map_err(|e| Error::io(dest)(e.into_error()))?;
    file.sync_all().map_err(Error::io(dest))?;
    Ok(())
}

/// One attempt of an upload: the outer error is a local failure (a file that cannot be
/// opened), the inner one a transport error worth judging for a retry.
async fn send_upload(
    http: &reqwest::Client,
    upload: &Upload<'_>,
    token: &Token,
    progress: &Progress,
) -> Result<reqwest::Result<(StatusCode, Vec<u8>)>> {
    let form = upload_form(upload, progress).await?;
    let mut request = http.post(&upload.url).bearer_auth(&token.0).multipart(form);
    if let Some(timeout) = upload.timeout {
        request = request.timeout(timeout);
    }
    Ok(match request.send().await {
        Ok(resp) => {
            let status = resp.status();
            resp.bytes().await.map(|body| (status, body.to_vec()))
        }
        Err(e) => Err(e),
    })
}

/// The multipart body of an upload, its files streamed from disk through `progress`.
async fn upload_form(upload: &Upload<'_>, progress: &Progress) -> Result<Form> {
    let url = upload.url.as_str();
    let manifest = Part::bytes(upload.manifest_bytes.to_vec())
        .file_name(MANIFEST_FILE)
        .mime_str("application/json")
        .map_err(|e| transport(url, e))?;
    let signature = Part::text(upload.signature.to_owned()).file_name(SIGNATURE_FILE);
    let mut form = Form::new()
        .part("manifest", manifest)
        .part("signature", signature);
    for f in &upload.files {
        let file = tokio::fs::File::open(&f.path)
            .await
            .map_err(Error::io(&f.path))?;
        let part = Part::stream_with_length(file_body(file, f, progress), f.size)
            .file_name(f.name.clone())
            .mime_str("application/octet-stream")
            .map_err(|e| transport(url, e))?;
        form = form.part(f.name.clone(), part);
    }
    Ok(form)
}

/// A file streamed in 64 KiB chunks, reported to `progress` as it goes.
fn file_body(file: tokio::fs::File, f: &UploadFile, progress: &Progress) -> reqwest::Body {
    let name = f.name.clone();
    let size = f.size;
    let progress = progress.clone();
    let mut started = false;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 16).map(move |chunk| {
        if !started {
            started = true;
            progress.start_file(&name, size);
        }
        if let Ok(bytes) = &chunk {
            progress.advance(bytes.len() as u64);
        }
        chunk
    });
    reqwest::Body::wrap_stream(stream)
}

/// An answer's JSON body as `T`, or a transport error naming `what` was expected.
fn json_answer<T: serde::de::DeserializeOwned>(url: &str, body: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::Transport {
        url: url.to_owned(),
        message: format!("the server's {what} is not what the API says: {e}"),
    })
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
    fn server_url_must_be_http() {
        assert!(Client::new("ftp://x", None, 0).is_err());
        assert!(Client::new("not a url", None, 0).is_err());
        assert!(Client::new("http://127.0.0.1:1/", None, 0).is_ok());
    }
}
