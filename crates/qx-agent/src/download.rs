//! Artifact downloads (docs/spec.md §4 step 2): resumable with HTTP `Range`, verified while streaming,
//! retried with exponential backoff and full jitter within a bounded budget, optionally
//! throttled, with progress reports.
//!
//! Files in the target directory, for an artifact `A`:
//! - `A.part`: the bytes received so far (a prefix of the artifact); kept across retries, cuts
//!   and agent restarts, and resumed with `Range: bytes=N-` plus `If-Range: "<sha256>"` (the
//!   server's strong ETag of an artifact is its quoted SHA-256, so a changed file on the server
//!   answers 200 and the download starts again from zero);
//! - `A.part.sha256`: the SHA-256 the partial data is expected to end as; a `.part` left by a
//!   download of other content (another release with the same artifact name) is discarded;
//! - `A`: the verified artifact, fsynced, renamed from `A.part` atomically.
//!
//! A response whose ETag is a quoted SHA-256 other than the expected one is refused before its
//! body is read (as a mismatch); other ETag forms are ignored.
//!
//! A file of unknown content ([`Downloader::fetch_file`]: a bundle, docs/spec.md §12) goes
//! through the same loop: its size is the length the first answer announces (refused above
//! the caller's cap before a byte is read, and when no length is announced), there is no
//! SHA-256 to check (its reader verifies it), and a resumption sends the server's strong ETag
//! as `If-Range` (without one, a cut download starts again from zero); the sidecar then holds
//! `<size> <etag>`.
//!
//! Attempt budget: `max_attempts` bounds the consecutive attempts that end without progress
//! (connection refused, 5xx, a stall or a cut before [`MIN_PROGRESS`] new bytes arrived, ...).
//! An attempt that added at least `MIN_PROGRESS` bytes and was then cut does not use the budget
//! (a link that drops every few megabytes still converges; each such attempt moves the download
//! forward by that much, so the loop stays bounded); it is retried after a short jittered
//! delay (at most `initial_backoff`). A verification failure (size or SHA-256) always uses the
//! budget, and is counted separately too, so a server that keeps serving wrong bytes is given
//! up on after `max_attempts` of them. The `GaveUp` error counts every attempt made.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use qx_core::{ArtifactRef, Sha256, Sha256Hasher};
use rand::Rng;
use reqwest::blocking::{Client, Response};
use reqwest::header::{self, HeaderMap};
use reqwest::StatusCode;

/// The largest body `get_bytes` accepts (manifests and signatures are a few KiB).
pub const MAX_SMALL_BODY: u64 = 16 * 1024 * 1024;

/// Redirects followed in a row before a request fails.
const MAX_REDIRECTS: usize = 3;

/// The longest redirect target an error message quotes.
const MAX_LOCATION_CHARS: usize = 200;

/// An interrupted attempt that added at least this many bytes counts as progress.
pub const MIN_PROGRESS: u64 = 64 * 1024;

/// Read buffer size when no bandwidth limit is set.
const BUF_SIZE: usize = 256 * 1024;

/// Progress is reported at most this often (plus once at the start and once at the end).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// How downloads behave; `Default` gives production values, tests shorten them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadOptions {
    /// Attempts allowed in a row without progress (see the module documentation).
    pub max_attempts: u32,
    /// First retry delay bound; doubled after each failed attempt, with full jitter.
    pub initial_backoff: Duration,
    /// Upper bound of a retry delay.
    pub max_backoff: Duration,
    /// Bytes per second; `None` for no limit.
    pub bandwidth_limit: Option<u64>,
    pub connect_timeout: Duration,
    /// No byte for this long (while waiting for the response head or the body) fails the attempt.
    pub stall_timeout: Duration,
    /// The whole fetch of a small document ([`Downloader::get_bytes`]: manifest, channel
    /// state, signature), retries included.
    pub document_deadline: Duration,
    /// Bytes per second an artifact must average over each `min_rate_window` of its transfer
    /// (0: no minimum; with a bandwidth limit, at most half of it).
    pub min_rate: u64,
    pub min_rate_window: Duration,
    /// Hosts (`host` or `host:port`) a redirect may lead to over plain HTTP; a redirect to
    /// `https://` or to the requested URL's own host and port is followed anyway.
    pub redirect_hosts: Vec<String>,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            bandwidth_limit: None,
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            document_deadline: Duration::from_secs(60),
            min_rate: 1024,
            min_rate_window: Duration::from_secs(60),
            redirect_hosts: Vec::new(),
        }
    }
}

/// One progress report: `bytes` of `total` are on disk (verified prefix), `rate` in bytes/s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadProgress {
    pub artifact: String,
    pub bytes: u64,
    pub total: u64,
    pub rate: u64,
}

impl DownloadProgress {
    /// The agent's state while this download goes on (status, host API, page).
    pub fn state(&self) -> qx_core::status::UpdateState {
        qx_core::status::UpdateState::Downloading {
            artifact: self.artifact.clone(),
            bytes: self.bytes,
            total: self.total,
            rate: self.rate,
        }
    }

    /// Seconds left at the current rate, if there is a rate.
    pub fn eta(&self) -> Option<Duration> {
        (self.rate > 0)
            .then(|| Duration::from_secs(self.total.saturating_sub(self.bytes) / self.rate))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{url}: the server answered HTTP {status}")]
    Http { url: String, status: u16 },
    /// A redirect that was not followed: to another scheme, to a plain-HTTP host not allowed
    /// (see [`DownloadOptions::redirect_hosts`]), or without a
    /// usable `Location`. `location` is redacted of credentials and made printable.
    #[error("{url}: the server redirected (HTTP {status}) to {location}, which was not followed: redirects are followed to https:// URLs, and over plain http:// to the server's own host and port or to a host listed in download.redirect_hosts; point server_url at the final address or list the host")]
    Redirect {
        url: String,
        status: u16,
        location: String,
    },
    #[error(
        "{url}: not found on the update server (HTTP 404); check the product, channel and version"
    )]
    NotFound { url: String },
    #[error("artifact {artifact}: sha256 mismatch (expected {expected}, got {got}); the download was discarded")]
    Mismatch {
        artifact: String,
        expected: Sha256,
        got: Sha256,
    },
    #[error("artifact {artifact}: the server sent {got} bytes where the signed manifest (for a file: the length first announced) says {expected}; the download was discarded")]
    SizeMismatch {
        artifact: String,
        expected: u64,
        /// What the server announced or delivered (when it sent too much: the count at which
        /// the download was stopped).
        got: u64,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A small document did not arrive within `updates.download.document_deadline`.
    #[error("{url}: not received within its deadline of {} ({received} bytes of the last answer had arrived); the server or the link is too slow (updates.download.document_deadline)", humantime::format_duration(*deadline))]
    Deadline {
        url: String,
        deadline: Duration,
        received: u64,
    },
    /// An artifact transfer averaged less than `updates.download.min_rate` over a window.
    #[error("{url}: too slow: {bytes} bytes in {} ({rate} bytes/s), below the minimum of {min_rate} bytes/s (updates.download.min_rate over updates.download.min_rate_window); the transfer was stopped", humantime::format_duration(*window))]
    TooSlow {
        url: String,
        bytes: u64,
        window: Duration,
        rate: u64,
        min_rate: u64,
    },
    #[error("{url}: {}; gave up after {attempts} attempts", without_url(&last.to_string(), url))]
    GaveUp {
        url: String,
        attempts: u32,
        last: Box<DownloadError>,
    },
    #[error("{path}: not enough free space ({needed} bytes needed, {available} available); free some space and retry")]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    /// Connection refused or reset, a stall past the timeout, a body cut short.
    #[error("{url}: {message}")]
    Network { url: String, message: String },
    /// The answer was not HTTP: over plain http:// to a port that speaks TLS, most often.
    /// Not retried: asking again gets the same answer.
    #[error("{url}: the server's answer is not HTTP ({detail}); if that port speaks TLS, updates.server_url must start with https://")]
    NotHttp { url: String, detail: String },
    #[error("{url}: the response is larger than {limit} bytes; refused")]
    TooLarge { url: String, limit: u64 },
    /// A file download ([`Downloader::fetch_file`]) announced more than its cap.
    #[error("{url}: {size} bytes, more than the {limit} bytes allowed ({setting}); refused before downloading")]
    FileTooLarge {
        url: String,
        size: u64,
        limit: u64,
        setting: &'static str,
    },
    /// A file download whose answer announces no length: it could not be told from a cut.
    #[error("{url}: the server announces no length (Content-Length); refused")]
    NoLength { url: String },
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    /// The server's certificate is not trusted, or it wants a client certificate: not retried.
    #[error(transparent)]
    Tls(#[from] crate::client_tls::TlsFailure),
}

impl DownloadError {
    fn io(path: &Path, source: io::Error) -> Self {
        DownloadError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Bytes available to an unprivileged user on the filesystem holding `path`.
pub fn free_space(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// How an attempt failed, and what that means for the retry loop.
struct Failed {
    error: DownloadError,
    kind: FailKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailKind {
    /// Do not retry (404, 401, 403, other 4xx, local I/O errors).
    Fatal,
    /// Retry; `progressed` when at least `MIN_PROGRESS` bytes were added before the failure.
    Transient { progressed: bool },
    /// The received data failed verification and was discarded; retry from zero.
    Corrupt,
}

impl Failed {
    fn fatal(error: DownloadError) -> Self {
        Self {
            error,
            kind: FailKind::Fatal,
        }
    }
    fn transient(error: DownloadError, progressed: bool) -> Self {
        Self {
            error,
            kind: FailKind::Transient { progressed },
        }
    }
    fn corrupt(error: DownloadError) -> Self {
        Self {
            error,
            kind: FailKind::Corrupt,
        }
    }
}

/// Counts failures and decides when to give up; computes backoff delays.
struct RetryBudget<'a> {
    opts: &'a DownloadOptions,
    attempts: u32,
    in_a_row: u32,
    corrupt: u32,
    retry_after: Option<Duration>,
}

impl<'a> RetryBudget<'a> {
    fn new(opts: &'a DownloadOptions) -> Self {
        Self {
            opts,
            attempts: 0,
            in_a_row: 0,
            corrupt: 0,
            retry_after: None,
        }
    }

    /// Records a failed attempt; returns the error to give up with, or the delay before the next.
    fn failed(&mut self, url: &str, failed: Failed) -> Result<Duration, DownloadError> {
        match failed.kind {
            FailKind::Fatal => return Err(failed.error),
            FailKind::Transient { progressed: true } => self.in_a_row = 0,
            FailKind::Transient { progressed: false } => self.in_a_row += 1,
            FailKind::Corrupt => {
                self.in_a_row += 1;
                self.corrupt += 1;
            }
        }
        let max = self.opts.max_attempts.max(1);
        if self.in_a_row >= max || self.corrupt >= max {
            return Err(DownloadError::GaveUp {
                url: redact_credentials(url),
                attempts: self.attempts,
                last: Box::new(failed.error),
            });
        }
        let url = redact_credentials(url);
        let error = without_url(&failed.error.to_string(), &url);
        tracing::warn!(%url, attempt = self.attempts, %error, "download attempt failed; retrying");
        // After progress: a short pause (the first backoff step), not counted.
        let step = self.in_a_row.max(1);
        let delay = backoff_delay(self.opts, step, rand::rng().random::<f64>());
        Ok(match self.retry_after.take() {
            Some(asked) => delay.max(asked.min(self.opts.max_backoff)),
            None => delay,
        })
    }
}

/// Full jitter: a uniform delay in `[0, min(max_backoff, initial * 2^(failures-1))]`;
/// `unit` is the random draw in `[0, 1)`.
fn backoff_delay(opts: &DownloadOptions, failures: u32, unit: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let cap = opts
        .initial_backoff
        .saturating_mul(1u32 << exp)
        .min(opts.max_backoff);
    cap.mul_f64(unit.clamp(0.0, 1.0))
}

/// A token bucket: `rate` bytes per second with a burst of a tenth of a second (at least one
/// read buffer). Pure: the caller passes the current instant and sleeps the returned delay.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl RateLimiter {
    pub fn new(bytes_per_second: u64) -> Self {
        let rate = bytes_per_second.max(1) as f64;
        let burst = (rate / 10.0).max(Self::chunk_for(bytes_per_second) as f64);
        Self {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// The read size that keeps throttling smooth at this rate.
    pub fn chunk_for(bytes_per_second: u64) -> usize {
        usize::try_from(bytes_per_second / 20)
            .unwrap_or(BUF_SIZE)
            .clamp(1024, BUF_SIZE)
    }

    /// Takes `n` bytes at instant `now`; returns how long to wait before reading more.
    pub fn take(&mut self, now: Instant, n: u64) -> Duration {
        let elapsed = self
            .last
            .map(|last| now.saturating_duration_since(last).as_secs_f64())
            .unwrap_or(0.0);
        self.last = Some(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Emits progress at most every `PROGRESS_INTERVAL`, with a smoothed rate.
struct Meter {
    artifact: String,
    total: u64,
    last: Option<(Instant, u64)>,
    rate: f64,
}

impl Meter {
    fn new(artifact: &str, total: u64) -> Self {
        Self {
            artifact: artifact.to_owned(),
            total,
            last: None,
            rate: 0.0,
        }
    }

    fn tick(&mut self, now: Instant, bytes: u64, force: bool) -> Option<DownloadProgress> {
        match self.last {
            None => self.last = Some((now, bytes)),
            Some((at, prev)) => {
                let dt = now.saturating_duration_since(at);
                if dt < PROGRESS_INTERVAL && !force {
                    return None;
                }
                if dt >= PROGRESS_INTERVAL {
                    let sample = bytes.saturating_sub(prev) as f64 / dt.as_secs_f64();
                    self.rate = if self.rate == 0.0 {
                        sample
                    } else {
                        0.7 * self.rate + 0.3 * sample
                    };
                    self.last = Some((now, bytes));
                }
            }
        }
        Some(DownloadProgress {
            artifact: self.artifact.clone(),
            bytes,
            total: self.total,
            rate: self.rate as u64,
        })
    }
}

/// Bytes written to a partial file between two early writebacks (see [`Writeback`]).
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// Starts the disk's writeback of a partial file while the download goes on: every
/// [`WRITEBACK_EVERY`] bytes, a helper thread `fdatasync`s (a clone of) the file's descriptor,
/// so that the final fsync of [`Part::commit`] finds little left to write instead of the
/// whole artifact. Only a head start: its errors are ignored (the commit's fsync is the one
/// that counts and reports), and a kick while the thread is still busy is dropped.
struct Writeback {
    kick: Option<mpsc::SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    written: u64,
}

impl Writeback {
    fn new() -> Self {
        Self {
            kick: None,
            thread: None,
            written: 0,
        }
    }

    /// Counts `n` more bytes written to `file`; starts a writeback when enough have been.
    fn wrote(&mut self, file: &File, n: u64) {
        self.written += n;
        if self.written < WRITEBACK_EVERY {
            return;
        }
        self.written = 0;
        if self.kick.is_none() {
            let Ok(clone) = file.try_clone() else { return };
            let (tx, rx) = mpsc::sync_channel::<()>(1);
            let spawned = std::thread::Builder::new()
                .name("qx-writeback".into())
                .spawn(move || {
                    while rx.recv().is_ok() {
                        let _ = clone.sync_data();
                    }
                });
            let Ok(thread) = spawned else { return };
            self.kick = Some(tx);
            self.thread = Some(thread);
        }
        if let Some(kick) = &self.kick {
            let _ = kick.try_send(());
        }
    }

    /// Stops the helper thread (waiting for a writeback in progress).
    fn stop(&mut self) {
        self.kick = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.written = 0;
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a download must end as: an artifact of the signed manifest (size and SHA-256 known),
/// or a file of unknown content whose size the first answer announces, up to `limit`.
#[derive(Debug, Clone)]
struct Want {
    name: String,
    size: Option<u64>,
    limit: u64,
    /// Where the limit comes from (named in the refusal).
    setting: &'static str,
    sha256: Option<Sha256>,
    /// The server's strong ETag of a file being fetched: `If-Range` of a resumption.
    etag: Option<String>,
}

impl Want {
    fn artifact(a: &ArtifactRef) -> Self {
        Self {
            name: a.artifact.as_str().to_owned(),
            size: Some(a.size_bytes),
            limit: a.size_bytes,
            setting: "the signed manifest's size_bytes",
            sha256: Some(a.sha256),
            etag: None,
        }
    }

    /// What the sidecar holds: the SHA-256 (artifact), or `<size> <etag>` (file); `None`
    /// when a file's partial data could not be resumed (no size or ETag known).
    fn identity(&self) -> Option<String> {
        match (self.sha256, self.size, &self.etag) {
            (Some(sha), _, _) => Some(sha.to_hex()),
            (None, Some(size), Some(etag)) => Some(format!("{size} {etag}")),
            _ => None,
        }
    }

    /// The sidecar of earlier partial data names the same content; for a file, its size and
    /// ETag are taken from it.
    fn resumes(&mut self, sidecar: &str) -> bool {
        let sidecar = sidecar.trim();
        if let Some(sha) = self.sha256 {
            return sidecar == sha.to_hex();
        }
        let Some((size, etag)) = sidecar.split_once(' ') else {
            return false;
        };
        match size.parse::<u64>() {
            Ok(size) if size <= self.limit && !etag.is_empty() => {
                self.size = Some(size);
                self.etag = Some(etag.to_owned());
                true
            }
            _ => false,
        }
    }

    /// `If-Range` of a resumption: the artifact's quoted SHA-256 (the update server's strong
    /// ETag), or the file's ETag.
    fn if_range(&self) -> Option<String> {
        match self.sha256 {
            Some(sha) => Some(format!("\"{sha}\"")),
            None => self.etag.clone(),
        }
    }
}

/// Where the bytes of a download go: a partial file in a staging directory
/// ([`Downloader::fetch`], [`Downloader::fetch_file`]), or a caller's sink
/// ([`Downloader::fetch_into`]: a system image streamed straight into its slot). The
/// download resumes from what the sink holds, checks size and SHA-256 at the end through
/// [`DownloadSink::digest`], and calls [`DownloadSink::restart`] on a mismatch.
pub trait DownloadSink {
    /// Named in errors.
    fn path(&self) -> &Path;
    /// Bytes held (a prefix of the content): the download goes on from there.
    fn held(&self) -> u64;
    /// Called before the first byte of a download that starts from zero, with what
    /// identifies the content (a staging file keeps it beside the data).
    fn begin(&mut self, _identity: &str) -> io::Result<()> {
        Ok(())
    }
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Drops what is held: the download starts again from zero.
    fn restart(&mut self) -> io::Result<()>;
    /// SHA-256 and length of everything held (called once the download is complete).
    fn digest(&mut self) -> io::Result<(Sha256, u64)>;
}

/// One download: what it must end as, and where its bytes go.
struct Part<'s> {
    want: Want,
    sink: &'s mut dyn DownloadSink,
}

impl Part<'_> {
    /// The size the download ends at (0 for a file before its first answer).
    fn size(&self) -> u64 {
        self.want.size.unwrap_or(0)
    }

    fn len(&self) -> u64 {
        self.sink.held()
    }

    fn io(&self, e: io::Error) -> DownloadError {
        DownloadError::io(self.sink.path(), e)
    }

    fn write(&mut self, data: &[u8]) -> Result<(), DownloadError> {
        if self.sink.held() == 0 {
            let identity = self.want.identity().unwrap_or_default();
            self.sink.begin(&identity).map_err(|e| self.io(e))?;
        }
        self.sink.append(data).map_err(|e| self.io(e))
    }

    /// Deletes the partial data: the next write starts from zero.
    fn discard(&mut self) -> Result<(), DownloadError> {
        self.sink.restart().map_err(|e| self.io(e))
    }

    /// Checks the complete content; on a mismatch the data is deleted.
    fn verify(&mut self) -> Result<(), Failed> {
        let (got, len) = self.sink.digest().map_err(|e| Failed::fatal(self.io(e)))?;
        let name = self.want.name.clone();
        let error = match self.want.sha256 {
            _ if len != self.size() => DownloadError::SizeMismatch {
                artifact: name,
                expected: self.size(),
                got: len,
            },
            Some(expected) if got != expected => DownloadError::Mismatch {
                artifact: name,
                expected,
                got,
            },
            _ => return Ok(()),
        };
        match self.discard() {
            Ok(()) => Err(Failed::corrupt(error)),
            Err(e) => Err(Failed::fatal(e)),
        }
    }
}

/// The partial file of one download in a staging directory and the running hash of its
/// content.
struct FilePart {
    path: PathBuf,
    meta: PathBuf,
    file: Option<File>,
    writeback: Writeback,
    hasher: Sha256Hasher,
}

impl FilePart {
    /// Picks up a `.part` left by an earlier attempt or process (re-hashing its content), or
    /// starts empty; for a file, the size and ETag are taken from the sidecar.
    fn open(dir: &Path, want: &mut Want) -> Result<Self, DownloadError> {
        let name = want.name.clone();
        let mut part = Self {
            path: dir.join(format!("{name}.part")),
            meta: dir.join(format!("{name}.part.sha256")),
            file: None,
            writeback: Writeback::new(),
            hasher: Sha256Hasher::new(),
        };
        let same_content = fs::read_to_string(&part.meta)
            .map(|s| want.resumes(&s))
            .unwrap_or(false);
        if !same_content {
            part.discard()?;
            return Ok(part);
        }
        let mut file = match OpenOptions::new().read(true).append(true).open(&part.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(part),
            Err(e) => return Err(DownloadError::io(&part.path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| DownloadError::io(&part.path, e))?
            .len();
        if want.size.is_some_and(|size| len > size) {
            drop(file);
            part.discard()?;
            return Ok(part);
        }
        let mut buf = vec![0u8; BUF_SIZE];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DownloadError::io(&part.path, e)),
            };
            part.hasher.update(&buf[..n]);
        }
        part.file = Some(file);
        tracing::info!(
            artifact = name,
            bytes = part.hasher.len(),
            "resuming partial download"
        );
        Ok(part)
    }

    /// Deletes the partial data (and its sidecar): the next write starts from zero.
    fn discard(&mut self) -> Result<(), DownloadError> {
        self.writeback.stop();
        self.file = None;
        self.hasher = Sha256Hasher::new();
        for p in [&self.path, &self.meta] {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(DownloadError::io(p, e)),
            }
        }
        Ok(())
    }

    /// fsync, rename to the final name, fsync the directory (an empty download: an empty
    /// file, with `identity` beside it until then).
    fn commit(mut self, final_path: &Path, identity: &str) -> Result<(), DownloadError> {
        self.writeback.stop();
        if self.file.is_none() {
            self.begin(identity)
                .map_err(|e| DownloadError::io(&self.path, e))?;
        }
        if let Some(file) = &self.file {
            file.sync_all()
                .map_err(|e| DownloadError::io(&self.path, e))?;
        }
        self.file = None;
        fs::rename(&self.path, final_path).map_err(|e| DownloadError::io(final_path, e))?;
        qx_core::fs::fsync_parent(final_path).map_err(|e| DownloadError::io(&e.path, e.source))?;
        match fs::remove_file(&self.meta) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DownloadError::io(&self.meta, e)),
        }
    }
}

impl DownloadSink for FilePart {
    fn path(&self) -> &Path {
        &self.path
    }

    fn held(&self) -> u64 {
        self.hasher.len()
    }

    fn begin(&mut self, identity: &str) -> io::Result<()> {
        fs::write(&self.meta, format!("{identity}\n"))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&self.path)?;
        self.hasher = Sha256Hasher::new();
        self.file = Some(file);
        Ok(())
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("partial file is not open"));
        };
        file.write_all(data)?;
        self.writeback.wrote(file, data.len() as u64);
        self.hasher.update(data);
        Ok(())
    }

    fn restart(&mut self) -> io::Result<()> {
        self.discard().map_err(|e| match e {
            DownloadError::Io { source, .. } => source,
            other => io::Error::other(other.to_string()),
        })
    }

    fn digest(&mut self) -> io::Result<(Sha256, u64)> {
        Ok(self.hasher.clone().finish())
    }
}

/// The minimum transfer rate of an artifact: the bytes of each window of at least
/// `min_rate_window` must average `min_rate` bytes/s, or the attempt fails.
struct RateFloor {
    min_rate: u64,
    window: Duration,
    since: Instant,
    bytes: u64,
}

impl RateFloor {
    /// `None` when no minimum is set. With a bandwidth limit the minimum is at most half of it.
    fn new(opts: &DownloadOptions, now: Instant) -> Option<Self> {
        let limit = opts.bandwidth_limit.map_or(u64::MAX, |l| l / 2);
        let min_rate = opts.min_rate.min(limit);
        (min_rate > 0).then_some(Self {
            min_rate,
            window: opts.min_rate_window,
            since: now,
            bytes: 0,
        })
    }

    /// Counts `n` bytes; at the end of a window, too few bytes are an error.
    fn add(&mut self, url: &str, now: Instant, n: u64) -> Result<(), DownloadError> {
        self.bytes += n;
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < self.window {
            return Ok(());
        }
        let rate = (self.bytes as f64 / elapsed.as_secs_f64()) as u64;
        if rate < self.min_rate {
            return Err(DownloadError::TooSlow {
                url: redact_credentials(url),
                bytes: self.bytes,
                window: Duration::from_millis(elapsed.as_millis() as u64),
                rate,
                min_rate: self.min_rate,
            });
        }
        self.since = now;
        self.bytes = 0;
        Ok(())
    }
}

/// The blocking download client (callers in async code use `spawn_blocking`).
#[derive(Debug, Clone)]
pub struct Downloader {
    client: Client,
    /// The client of artifact downloads: redirects are followed by [`Downloader::request`]
    /// itself (see [`Route`]).
    artifacts: Client,
    opts: DownloadOptions,
    /// A client certificate is configured (for the wording of a TLS refusal).
    has_client_cert: bool,
}

impl Downloader {
    /// A client that trusts the system's trust store and the bundled roots.
    pub fn new(opts: DownloadOptions) -> Result<Self, DownloadError> {
        Self::with_tls(opts, &crate::client_tls::ClientTls::default())
    }

    /// A client that also trusts `tls.ca_cert` and presents `tls.client_cert` (`updates.tls`).
    pub fn with_tls(
        opts: DownloadOptions,
        tls: &crate::client_tls::ClientTls,
    ) -> Result<Self, DownloadError> {
        let build = |policy: reqwest::redirect::Policy| -> Result<Client, DownloadError> {
            // HTTP/1.1 only, whatever features other crates of a build turn on: a TLS refusal
            // then reaches `client_tls::TlsFailure` as the handshake's own error.
            let builder = Client::builder()
                .http1_only()
                .connect_timeout(opts.connect_timeout)
                // The blocking client applies this to the wait for the response head and to
                // each read of the body: it is a stall timeout, not a limit on the whole
                // transfer.
                .timeout(opts.stall_timeout)
                .redirect(policy)
                .user_agent(concat!("qx-update/", env!("CARGO_PKG_VERSION")));
            tls.apply(builder)
                .map_err(DownloadError::Client)?
                .build()
                .map_err(|e| DownloadError::Client(error_chain(&e)))
        };
        Ok(Self {
            client: build(redirect_policy(opts.redirect_hosts.clone()))?,
            artifacts: build(reqwest::redirect::Policy::none())?,
            opts,
            has_client_cert: tls.client.is_some(),
        })
    }

    /// A request that got no answer: a TLS refusal is final (retrying cannot fix trust), any
    /// other failure is retried.
    fn send_failed(&self, url: &str, e: &reqwest::Error) -> Failed {
        if let Some(tls) = crate::client_tls::TlsFailure::of(url, e, self.has_client_cert) {
            return Failed::fatal(DownloadError::Tls(tls));
        }
        match not_http(e) {
            Some(detail) => Failed::fatal(DownloadError::NotHttp {
                url: redact_credentials(url),
                detail,
            }),
            None => Failed::transient(network(url, e), false),
        }
    }

    pub fn options(&self) -> &DownloadOptions {
        &self.opts
    }

    /// Downloads `url` into `dir/<artifact>` (partial data kept in `dir/<artifact>.part`,
    /// resumed with Range + If-Range after a crash or a cut), SHA-256 and size verified while
    /// streaming; a corrupt file is deleted and fetched again within the attempt budget.
    /// Returns the final path. If `dir/<artifact>` already exists with the right hash, returns
    /// at once.
    pub fn fetch(
        &self,
        url: &str,
        dir: &Path,
        expected: &ArtifactRef,
        progress: &mut dyn FnMut(&DownloadProgress),
    ) -> Result<PathBuf, DownloadError> {
        let name = expected.artifact.as_str();
        let final_path = dir.join(name);
        fs::create_dir_all(dir).map_err(|e| DownloadError::io(dir, e))?;
        let mut meter = Meter::new(name, expected.size_bytes);

        if already_complete(&final_path, expected)? {
            if let Some(p) = meter.tick(Instant::now(), expected.size_bytes, true) {
                progress(&p);
            }
            return Ok(final_path);
        }

        let mut want = Want::artifact(expected);
        let mut file = FilePart::open(dir, &mut want)?;
        let needed = expected.size_bytes - file.held();
        let available = free_space(dir).map_err(|e| DownloadError::io(dir, e))?;
        if available < needed {
            return Err(DownloadError::NoSpace {
                path: dir.to_owned(),
                needed,
                available,
            });
        }
        let identity = want.identity().unwrap_or_default();
        let mut part = Part {
            want,
            sink: &mut file,
        };
        self.run(url, &mut part, &mut meter, progress)?;
        file.commit(&final_path, &identity)?;
        if let Some(p) = meter.tick(Instant::now(), expected.size_bytes, true) {
            progress(&p);
        }
        tracing::info!(artifact = name, bytes = expected.size_bytes, sha256 = %expected.sha256, "artifact downloaded and verified");
        Ok(final_path)
    }

    /// Downloads `url`, whose content is not known in advance (a bundle, docs/spec.md §12),
    /// into `dir/<name>`: the same resumable, retried loop as [`Downloader::fetch`], the size
    /// taken from the first answer and refused above `limit` (named `setting` in the error)
    /// before a byte is read. Nothing checks the content: the caller's reader must. A file
    /// left at `dir/<name>` by an earlier call is replaced (it cannot be verified).
    pub fn fetch_file(
        &self,
        url: &str,
        dir: &Path,
        name: &str,
        (limit, setting): (u64, &'static str),
        progress: &mut dyn FnMut(&DownloadProgress),
    ) -> Result<PathBuf, DownloadError> {
        let final_path = dir.join(name);
        fs::create_dir_all(dir).map_err(|e| DownloadError::io(dir, e))?;
        match fs::remove_file(&final_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DownloadError::io(&final_path, e)),
        }
        let want = Want {
            name: name.to_owned(),
            size: None,
            limit,
            setting,
            sha256: None,
            etag: None,
        };
        let mut want = want;
        let mut file = FilePart::open(dir, &mut want)?;
        let mut part = Part {
            want,
            sink: &mut file,
        };
        let mut meter = Meter::new(name, part.size());
        self.run(url, &mut part, &mut meter, progress)?;
        let size = part.size();
        let identity = part.want.identity().unwrap_or_default();
        file.commit(&final_path, &identity)?;
        if let Some(p) = meter.tick(Instant::now(), size, true) {
            progress(&p);
        }
        tracing::info!(file = name, bytes = size, "file downloaded");
        Ok(final_path)
    }

    /// Downloads artifact `expected` from `url` into `sink`: the same resumable, retried,
    /// verified loop as [`Downloader::fetch`], going on from what the sink holds (a sink that
    /// holds more than the artifact's size starts again). On success the sink holds exactly
    /// the artifact (size and SHA-256 checked); the caller finishes it.
    pub fn fetch_into(
        &self,
        url: &str,
        expected: &ArtifactRef,
        sink: &mut dyn DownloadSink,
        progress: &mut dyn FnMut(&DownloadProgress),
    ) -> Result<(), DownloadError> {
        let name = expected.artifact.as_str();
        let mut meter = Meter::new(name, expected.size_bytes);
        let mut part = Part {
            want: Want::artifact(expected),
            sink,
        };
        if part.len() > expected.size_bytes {
            part.discard()?;
        }
        self.run(url, &mut part, &mut meter, progress)?;
        if let Some(p) = meter.tick(Instant::now(), expected.size_bytes, true) {
            progress(&p);
        }
        tracing::info!(artifact = name, bytes = expected.size_bytes, sha256 = %expected.sha256, "artifact downloaded and verified");
        Ok(())
    }

    /// Attempts until the part is complete and verified, or the retry budget is spent.
    fn run(
        &self,
        url: &str,
        part: &mut Part<'_>,
        meter: &mut Meter,
        progress: &mut dyn FnMut(&DownloadProgress),
    ) -> Result<(), DownloadError> {
        if let Some(p) = meter.tick(Instant::now(), part.len(), true) {
            progress(&p);
        }
        let mut limiter = self.opts.bandwidth_limit.map(RateLimiter::new);
        let mut budget = RetryBudget::new(&self.opts);
        let mut route = Route::default();
        loop {
            budget.attempts += 1;
            let result = self.attempt(
                url,
                part,
                &mut route,
                &mut limiter,
                meter,
                progress,
                &mut budget,
            );
            match result {
                Ok(()) => return Ok(()),
                Err(failed) => {
                    if route.falls_back(url, &failed) && matches!(failed.kind, FailKind::Fatal) {
                        continue;
                    }
                    let delay = budget.failed(url, failed)?;
                    std::thread::sleep(delay);
                }
            }
        }
    }

    /// One request for what is missing of `part`: check the answer's status and headers,
    /// stream the body into the part (capped at the announced size, hashed as it is written,
    /// throttled, with progress), then verify the whole content.
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        url: &str,
        part: &mut Part<'_>,
        route: &mut Route,
        limiter: &mut Option<RateLimiter>,
        meter: &mut Meter,
        progress: &mut dyn FnMut(&DownloadProgress),
        budget: &mut RetryBudget<'_>,
    ) -> Result<(), Failed> {
        if part.want.size == Some(part.len()) {
            // Everything arrived before a crash or a cut: nothing to ask the server for.
            return part.verify();
        }
        let resp = self.request(url, part, route)?;
        accept_status(url, &resp, part, budget)?;
        accept_content(url, &resp, part)?;
        let size = part.size();
        meter.total = size;
        let start = part.len();
        let mut body = Capped::new(resp, size - start);
        let chunk = match self.opts.bandwidth_limit {
            Some(rate) => RateLimiter::chunk_for(rate),
            None => BUF_SIZE,
        };
        let mut buf = vec![0u8; chunk];
        let mut floor = RateFloor::new(&self.opts, Instant::now());
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_failed(url, part, &body, &e, start)),
            };
            part.write(&buf[..n]).map_err(Failed::fatal)?;
            if let Some(floor) = floor.as_mut() {
                let progressed = part.len() >= start + MIN_PROGRESS;
                floor
                    .add(url, Instant::now(), n as u64)
                    .map_err(|e| Failed::transient(e, progressed))?;
            }
            if let Some(limiter) = limiter.as_mut() {
                let wait = limiter.take(Instant::now(), n as u64);
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
            }
            if let Some(p) = meter.tick(Instant::now(), part.len(), false) {
                progress(&p);
            }
        }
        if part.len() < size {
            let message = format!(
                "the server closed the connection after {} of {size} bytes",
                part.len()
            );
            let progressed = part.len() >= start + MIN_PROGRESS;
            return Err(Failed::transient(network_error(url, message), progressed));
        }
        part.verify()
    }

    /// Sends the request: a plain GET, or a resumption (`Range`, plus `If-Range` with the
    /// artifact's SHA-256, the server's strong ETag, to the server) when part of the data is
    /// already here. A redirect the [`Route`] allows is followed, carrying the `Range` (not
    /// the `If-Range`: the target's validators are its own; its bytes are verified as always).
    fn request(&self, url: &str, part: &Part<'_>, route: &mut Route) -> Result<Response, Failed> {
        let offset = part.len();
        let mut target = url.to_owned();
        route.redirected = false;
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.artifacts.get(&target);
            if offset > 0 {
                if let Some(validator) = part.want.if_range() {
                    req = req.header(header::RANGE, format!("bytes={offset}-"));
                    if !route.redirected {
                        req = req.header(header::IF_RANGE, validator);
                    }
                }
            }
            if route.direct {
                req = req.header(qx_core::api::NO_REDIRECT_HEADER, "1");
            }
            let resp = req.send().map_err(|e| self.send_failed(&target, &e))?;
            match followable(&resp, &target, url, &self.opts.redirect_hosts) {
                Some(next) => {
                    target = next;
                    route.redirected = true;
                }
                None => return Ok(resp),
            }
        }
        Err(Failed::fatal(network_error(
            url,
            format!("more than {MAX_REDIRECTS} redirects"),
        )))
    }

    /// Fetches small text/bytes (manifest, signature) with the same retry policy; returns the
    /// body and the response headers. Bodies over [`MAX_SMALL_BODY`] are refused; the whole
    /// fetch, retries included, must end within `document_deadline`.
    pub fn get_bytes(&self, url: &str) -> Result<(Vec<u8>, HeaderMap), DownloadError> {
        let deadline = Deadline {
            at: Instant::now() + self.opts.document_deadline,
            length: self.opts.document_deadline,
        };
        let mut budget = RetryBudget::new(&self.opts);
        loop {
            budget.attempts += 1;
            match self.get_small(url, &mut budget, &deadline) {
                Ok(v) => return Ok(v),
                Err(failed) => {
                    let delay = budget.failed(url, failed)?;
                    std::thread::sleep(delay.min(deadline.left()));
                }
            }
        }
    }

    fn get_small(
        &self,
        url: &str,
        budget: &mut RetryBudget<'_>,
        deadline: &Deadline,
    ) -> Result<(Vec<u8>, HeaderMap), Failed> {
        if deadline.left().is_zero() {
            return Err(Failed::fatal(deadline.passed(url, 0)));
        }
        let resp = self
            .client
            .get(url)
            .timeout(self.opts.stall_timeout.min(deadline.left()))
            .send()
            .map_err(|e| match deadline.left().is_zero() {
                true => Failed::fatal(deadline.passed(url, 0)),
                false => self.send_failed(url, &e),
            })?;
        if resp.status() != StatusCode::OK {
            budget.retry_after = retry_after(&resp);
            return Err(classify_status(url, &resp));
        }
        if resp.content_length().is_some_and(|n| n > MAX_SMALL_BODY) {
            return Err(small_too_large(url));
        }
        let headers = resp.headers().clone();
        let body = read_small(url, resp, deadline)?;
        Ok((body, headers))
    }
}

/// Ranges of an artifact: the pieces of an image's chunk pack a host is missing.
impl Downloader {
    /// Fetches `len` bytes at `offset` of the artifact at `url` whose SHA-256 (the server's
    /// strong ETag) is `sha256`, with the same retry policy as a download. Anything but a
    /// `206` of exactly that range is an error (a `200` means the artifact changed: `If-Range`).
    pub fn get_range(
        &self,
        url: &str,
        sha256: &Sha256,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, DownloadError> {
        let mut budget = RetryBudget::new(&self.opts);
        loop {
            budget.attempts += 1;
            match self.range_once(url, sha256, offset, len) {
                Ok(v) => return Ok(v),
                Err(failed) => std::thread::sleep(budget.failed(url, failed)?),
            }
        }
    }

    fn range_once(
        &self,
        url: &str,
        sha256: &Sha256,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, Failed> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let last = offset + len - 1;
        let resp = self
            .client
            .get(url)
            .header(header::RANGE, format!("bytes={offset}-{last}"))
            .header(header::IF_RANGE, format!("\"{}\"", sha256.to_hex()))
            // Ranges of an artifact come from the server itself, whose ETag `If-Range` names.
            .header(qx_core::api::NO_REDIRECT_HEADER, "1")
            .timeout(self.opts.stall_timeout)
            .send()
            .map_err(|e| self.send_failed(url, &e))?;
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            if resp.status().is_success() {
                return Err(Failed::fatal(network_error(
                    url,
                    format!("asked for bytes {offset}-{last}, the server answered {} with the whole file", resp.status()),
                )));
            }
            return Err(classify_status(url, &resp));
        }
        read_range(url, resp, len)
    }
}

/// Reads exactly `len` bytes of a range answer (more is refused, fewer is a cut).
fn read_range(url: &str, resp: Response, len: u64) -> Result<Vec<u8>, Failed> {
    let mut body = Vec::with_capacity(len as usize);
    let read = resp.take(len + 1).read_to_end(&mut body);
    if let Err(e) = read {
        let message = format!("reading the range failed: {}", error_chain(&e));
        return Err(Failed::transient(network_error(url, message), false));
    }
    match (body.len() as u64).cmp(&len) {
        std::cmp::Ordering::Equal => Ok(body),
        std::cmp::Ordering::Less => Err(Failed::transient(
            network_error(
                url,
                format!("the range ended after {} of {len} bytes", body.len()),
            ),
            false,
        )),
        std::cmp::Ordering::Greater => Err(Failed::fatal(network_error(
            url,
            format!("the range answer is longer than the {len} bytes asked for"),
        ))),
    }
}

/// The deadline of one small document.
struct Deadline {
    at: Instant,
    length: Duration,
}

impl Deadline {
    fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    fn passed(&self, url: &str, received: u64) -> DownloadError {
        DownloadError::Deadline {
            url: redact_credentials(url),
            deadline: self.length,
            received,
        }
    }
}

fn small_too_large(url: &str) -> Failed {
    Failed::fatal(DownloadError::TooLarge {
        url: redact_credentials(url),
        limit: MAX_SMALL_BODY,
    })
}

/// The body of a small document, at most [`MAX_SMALL_BODY`], read before the deadline (the
/// deadline is checked after each read; one read waits at most the request's timeout, the
/// smaller of the stall timeout and the time left when it was sent).
fn read_small(url: &str, mut resp: Response, deadline: &Deadline) -> Result<Vec<u8>, Failed> {
    let mut body = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match resp.read(&mut buf) {
            Ok(0) => return Ok(body),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) if deadline.left().is_zero() => {
                return Err(Failed::fatal(deadline.passed(url, body.len() as u64)))
            }
            Err(e) => {
                let message = format!("reading the response failed: {}", error_chain(&e));
                return Err(Failed::transient(network_error(url, message), false));
            }
        };
        body.extend_from_slice(&buf[..n]);
        if body.len() as u64 > MAX_SMALL_BODY {
            return Err(small_too_large(url));
        }
        if deadline.left().is_zero() {
            return Err(Failed::fatal(deadline.passed(url, body.len() as u64)));
        }
    }
}

/// True when `path` holds the artifact already (right size and SHA-256); a file with other
/// content is removed.
fn already_complete(path: &Path, expected: &ArtifactRef) -> Result<bool, DownloadError> {
    match File::open(path) {
        Ok(f) => {
            let (sha, len) = Sha256::of_reader(f).map_err(|e| DownloadError::io(path, e))?;
            if sha == expected.sha256 && len == expected.size_bytes {
                return Ok(true);
            }
            tracing::warn!(path = %path.display(), "existing file does not match the manifest; downloading again");
            fs::remove_file(path).map_err(|e| DownloadError::io(path, e))?;
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DownloadError::io(path, e)),
    }
}

/// A body reader that delivers at most `limit` bytes: a read that would go past it fails,
/// and `over` records how many bytes that read brought (the server sent more than the
/// signed manifest says).
struct Capped<R> {
    inner: R,
    left: u64,
    over: Option<u64>,
}

impl<R> Capped<R> {
    fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            left: limit,
            over: None,
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.over = Some(n as u64);
            return Err(io::Error::other("more bytes than the signed manifest says"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Checks the status of an answer to [`Downloader::request`]: 200 (the whole artifact: a
/// part kept from before is discarded), 206 with the range asked for, or a failure.
fn accept_status(
    url: &str,
    resp: &Response,
    part: &mut Part<'_>,
    budget: &mut RetryBudget<'_>,
) -> Result<(), Failed> {
    let offset = part.len();
    let size = part.want.size;
    let status = resp.status();
    match status {
        StatusCode::OK if offset > 0 => {
            tracing::info!(
                url,
                "server sent the whole artifact instead of a range; restarting from zero"
            );
            part.discard().map_err(Failed::fatal)
        }
        StatusCode::OK => Ok(()),
        StatusCode::PARTIAL_CONTENT => {
            let range = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range);
            match range {
                Some((_, Some(total))) if size.is_some_and(|s| s != total) => {
                    part.discard().map_err(Failed::fatal)?;
                    Err(Failed::corrupt(DownloadError::SizeMismatch {
                        artifact: part.want.name.clone(),
                        expected: size.unwrap_or(0),
                        got: total,
                    }))
                }
                Some((start, _)) if start == offset => Ok(()),
                _ => {
                    part.discard().map_err(Failed::fatal)?;
                    let message = format!(
                        "the server answered a request for bytes {offset}- with an unusable range; restarting from zero"
                    );
                    Err(Failed::transient(network_error(url, message), false))
                }
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            part.discard().map_err(Failed::fatal)?;
            Err(Failed::transient(http(url, status), false))
        }
        _ => {
            budget.retry_after = retry_after(resp);
            Err(classify_status(url, resp))
        }
    }
}

/// Checks what an answer says of its content before the body is read: an ETag naming other
/// content (the update server's strong ETag is the artifact's quoted SHA-256) or a length
/// that does not complete the artifact is refused (the part is discarded). For a file, the
/// size and ETag are learned here first ([`learn_file`]).
fn accept_content(url: &str, resp: &Response, part: &mut Part) -> Result<(), Failed> {
    let Some(sha256) = part.want.sha256 else {
        return learn_file(url, resp, part);
    };
    let etag = resp
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| {
            t.strip_prefix('"')?
                .strip_suffix('"')?
                .parse::<Sha256>()
                .ok()
        });
    if let Some(tag) = etag.filter(|t| *t != sha256) {
        part.discard().map_err(Failed::fatal)?;
        return Err(Failed::corrupt(DownloadError::Mismatch {
            artifact: part.want.name.clone(),
            expected: sha256,
            got: tag,
        }));
    }
    check_length(resp, part)
}

/// The announced length must complete the part exactly.
fn check_length(resp: &Response, part: &mut Part) -> Result<(), Failed> {
    let size = part.size();
    if let Some(announced) = resp.content_length() {
        if part.len() + announced != size {
            let got = part.len() + announced;
            part.discard().map_err(Failed::fatal)?;
            return Err(Failed::corrupt(DownloadError::SizeMismatch {
                artifact: part.want.name.clone(),
                expected: size,
                got,
            }));
        }
    }
    Ok(())
}

/// A file download's answer: the whole size it announces (`Content-Range`'s total, else
/// `Content-Length` plus what is here) must be known and within the cap, and fit on disk;
/// on a fresh start, the size and the strong ETag (for a later resumption) are taken.
fn learn_file(url: &str, resp: &Response, part: &mut Part) -> Result<(), Failed> {
    let ranged = resp
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_content_range)
        .and_then(|(_, total)| total);
    let total = ranged.or_else(|| resp.content_length().map(|n| part.len() + n));
    let Some(total) = total else {
        part.discard().map_err(Failed::fatal)?;
        return Err(Failed::fatal(DownloadError::NoLength {
            url: redact_credentials(url),
        }));
    };
    if total > part.want.limit {
        part.discard().map_err(Failed::fatal)?;
        return Err(Failed::fatal(DownloadError::FileTooLarge {
            url: redact_credentials(url),
            size: total,
            limit: part.want.limit,
            setting: part.want.setting,
        }));
    }
    if part.len() == 0 {
        part.want.size = Some(total);
        part.want.etag = resp
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .filter(|t| t.starts_with('"'))
            .map(str::to_owned);
        let dir = part.sink.path().parent().unwrap_or(Path::new("."));
        let available = free_space(dir).map_err(|e| Failed::fatal(DownloadError::io(dir, e)))?;
        if available < total {
            return Err(Failed::fatal(DownloadError::NoSpace {
                path: dir.to_owned(),
                needed: total,
                available,
            }));
        }
    }
    check_length(resp, part)
}

/// A failed read of the body: more bytes than the artifact has (the part is discarded), or
/// a cut (progress when at least [`MIN_PROGRESS`] bytes arrived since `start`).
fn read_failed<R>(
    url: &str,
    part: &mut Part<'_>,
    body: &Capped<R>,
    e: &io::Error,
    start: u64,
) -> Failed {
    let size = part.size();
    if let Some(n) = body.over {
        let got = part.len() + n;
        if let Err(e) = part.discard() {
            return Failed::fatal(e);
        }
        return Failed::corrupt(DownloadError::SizeMismatch {
            artifact: part.want.name.clone(),
            expected: size,
            got,
        });
    }
    let message = format!(
        "transfer interrupted after {} of {size} bytes: {}",
        part.len(),
        error_chain(e)
    );
    Failed::transient(
        network_error(url, message),
        part.len() >= start + MIN_PROGRESS,
    )
}

fn network_error(url: &str, message: String) -> DownloadError {
    DownloadError::Network {
        url: redact_credentials(url),
        message,
    }
}

fn http(url: &str, status: StatusCode) -> DownloadError {
    DownloadError::Http {
        url: redact_credentials(url),
        status: status.as_u16(),
    }
}

/// Any status other than 200/206/416: retry 408, 429 and 5xx; fail at once on the rest.
fn classify_status(url: &str, resp: &Response) -> Failed {
    let status = resp.status();
    if status == StatusCode::NOT_FOUND {
        return Failed::fatal(DownloadError::NotFound {
            url: redact_credentials(url),
        });
    }
    if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
        // The client follows http(s) redirects itself; one that reaches here was refused.
        return Failed::fatal(DownloadError::Redirect {
            url: redact_credentials(url),
            status: status.as_u16(),
            location: redirect_target(resp),
        });
    }
    let retryable = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    if retryable {
        Failed::transient(http(url, status), false)
    } else {
        Failed::fatal(http(url, status))
    }
}

/// The redirects of small documents: up to [`MAX_REDIRECTS`] of them, each one
/// [`redirect_allowed`]; another is not followed, so its 3xx answer reaches
/// [`classify_status`], which says what was refused.
fn redirect_policy(hosts: Vec<String>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let origin = attempt.previous().first().cloned();
        let allowed = origin.is_some_and(|o| redirect_allowed(&o, attempt.url(), &hosts));
        if !allowed {
            attempt.stop()
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    })
}

/// Whether a redirect from a request for `origin` may lead to `to`: to `https://`; or over
/// plain HTTP to the origin's own host and port, or to a host `download.redirect_hosts` names.
fn redirect_allowed(origin: &reqwest::Url, to: &reqwest::Url, hosts: &[String]) -> bool {
    match to.scheme() {
        "https" => true,
        "http" => {
            let host = to.host_str().unwrap_or_default();
            let port = to.port_or_known_default();
            let same = origin.host_str() == Some(host) && origin.port_or_known_default() == port;
            let with_port = port.map(|p| format!("{host}:{p}"));
            same || hosts
                .iter()
                .any(|h| h == host || Some(h) == with_port.as_ref())
        }
        _ => false,
    }
}

/// Where an answer to a request for `current` (made for `origin`) redirects, when the
/// redirect may be followed; `None` for any other answer (a refused redirect reaches
/// [`classify_status`]).
fn followable(resp: &Response, current: &str, origin: &str, hosts: &[String]) -> Option<String> {
    if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = resp.headers().get(header::LOCATION)?.to_str().ok()?;
    let next = reqwest::Url::parse(current).ok()?.join(location).ok()?;
    let origin = reqwest::Url::parse(origin).ok()?;
    redirect_allowed(&origin, &next, hosts).then(|| next.to_string())
}

/// How an artifact's requests reach its bytes: through the server's redirect (a CDN, the
/// object store) until the redirect target fails an attempt or the redirect is refused, then
/// from the update server itself ([`qx_core::api::NO_REDIRECT_HEADER`]). The target is not
/// trusted: what it sends is verified like anything else, and bytes that fail send the
/// download back to the server.
#[derive(Debug, Default)]
struct Route {
    /// Ask the server for the bytes themselves.
    direct: bool,
    /// The last request was answered by a redirect target.
    redirected: bool,
}

impl Route {
    /// After a failed attempt: whether it was the redirect's fault (then the next attempts
    /// go to the server itself, for the rest of the download). A cut after progress is not:
    /// the next attempt resumes through the redirect.
    fn falls_back(&mut self, url: &str, failed: &Failed) -> bool {
        let refused = matches!(failed.error, DownloadError::Redirect { .. });
        let progressed = matches!(failed.kind, FailKind::Transient { progressed: true });
        if self.direct || progressed || !(self.redirected || refused) {
            return false;
        }
        self.direct = true;
        tracing::warn!(url = %redact_credentials(url), error = %failed.error, "the server's redirect failed this download; fetching from the update server itself");
        true
    }
}

/// The `Location` of a refused redirect, fit to print: credentials redacted, control
/// characters escaped, cut at [`MAX_LOCATION_CHARS`].
fn redirect_target(resp: &Response) -> String {
    let Some(value) = resp.headers().get(header::LOCATION) else {
        return "no location (the answer has no Location header)".to_owned();
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let mut shown: String = text.chars().take(MAX_LOCATION_CHARS).collect();
    if text.chars().count() > MAX_LOCATION_CHARS {
        shown.push('…');
    }
    format!(
        "\"{}\"",
        crate::untrusted::printable(&redact_credentials(&shown))
    )
}

/// `Retry-After` in seconds (the date form is ignored).
fn retry_after(resp: &Response) -> Option<Duration> {
    resp.headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A request that got no answer, in words that do not repeat the URL the error is about:
/// "cannot connect: Connection refused (os error 111)", "no answer within the timeout".
fn network(url: &str, e: &reqwest::Error) -> DownloadError {
    let cause = std::error::Error::source(e)
        .map(error_chain)
        .unwrap_or_else(|| error_chain(e));
    let message = if e.is_timeout() {
        format!("no answer within the timeout ({cause})")
    } else if e.is_connect() {
        format!("cannot connect: {}", root_cause(e))
    } else {
        cause
    };
    DownloadError::Network {
        url: redact_credentials(url),
        message,
    }
}

/// The innermost error of a chain: "Connection refused (os error 111)".
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    redact_credentials(&cur.to_string())
}

/// The parse error of an answer that is not HTTP (a TLS alert read as a status line).
fn not_http(e: &reqwest::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return h.is_parse().then(|| h.to_string());
        }
        cur = err.source();
    }
    None
}

/// `text` without a leading `"<url>: "`: an error about `url` told inside another that
/// names it already.
pub(crate) fn without_url(text: &str, url: &str) -> String {
    text.strip_prefix(url)
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(text)
        .to_owned()
}

/// An error with its sources, `a: b: c`, so the root cause (timeout, refused) is visible.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    redact_credentials(&out)
}

/// `text` with the credentials of every URL in it (`user:password@` in
/// `https://user:password@host/…`) replaced by `***@`: the one place URLs are made fit to
/// print, in errors, log lines and the update log.
pub fn redact_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | ')' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(i) => {
                out.push_str("***@");
                out.push_str(&authority[i + 1..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `bytes START-END/TOTAL` → (START, TOTAL if not `*`).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_credentials_hides_userinfo_of_every_url() {
        assert_eq!(
            redact_credentials("cannot fetch https://u:p@h:1/a?x (for url (http://u@h/b))"),
            "cannot fetch https://***@h:1/a?x (for url (http://***@h/b))"
        );
        assert_eq!(redact_credentials("http://h/a@b"), "http://h/a@b");
        assert_eq!(redact_credentials("no url"), "no url");
    }

    use super::*;

    #[test]
    fn limiter_schedule_matches_the_rate() {
        // 1000 B/s: burst is max(100, 1024) = 1024 bytes, then one second per 1000 bytes.
        let mut l = RateLimiter::new(1000);
        let t0 = Instant::now();
        let mut now = t0;
        let mut sent = 0u64;
        for _ in 0..100 {
            let wait = l.take(now, 100);
            sent += 100;
            now += wait;
        }
        let elapsed = now.duration_since(t0).as_secs_f64();
        let expected = (sent as f64 - 1024.0) / 1000.0;
        assert!(
            (elapsed - expected).abs() < 0.01,
            "elapsed {elapsed}, expected {expected}"
        );
    }

    #[test]
    fn limiter_does_not_bank_idle_time_beyond_the_burst() {
        let mut l = RateLimiter::new(10_000);
        let t0 = Instant::now();
        assert_eq!(l.take(t0, 1024), Duration::ZERO);
        // Idle for an hour: at most one burst (1024 bytes) is available afterwards.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(l.take(later, 1024), Duration::ZERO);
        let wait = l.take(later, 10_000);
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn limiter_chunk_is_bounded() {
        assert_eq!(RateLimiter::chunk_for(1), 1024);
        assert_eq!(RateLimiter::chunk_for(1_000_000), 50_000);
        assert_eq!(RateLimiter::chunk_for(u64::MAX), BUF_SIZE);
    }

    #[test]
    fn backoff_is_capped_and_doubles() {
        let opts = DownloadOptions {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..DownloadOptions::default()
        };
        let almost_one = 0.999_999;
        assert_eq!(backoff_delay(&opts, 1, 0.0), Duration::ZERO);
        assert!(backoff_delay(&opts, 1, almost_one) <= Duration::from_millis(100));
        assert!(backoff_delay(&opts, 2, almost_one) > Duration::from_millis(199));
        assert!(backoff_delay(&opts, 3, almost_one) > Duration::from_millis(399));
        assert!(backoff_delay(&opts, 10, almost_one) <= Duration::from_millis(1000));
        assert!(backoff_delay(&opts, 1000, almost_one) <= Duration::from_millis(1000));
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes 5-4/10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
    }

    #[test]
    fn meter_throttles_reports() {
        let mut m = Meter::new("a", 1000);
        let t0 = Instant::now();
        assert!(m.tick(t0, 0, false).is_some());
        assert!(m.tick(t0 + Duration::from_millis(10), 10, false).is_none());
        let p = m
            .tick(t0 + Duration::from_millis(200), 200, false)
            .expect("a report after the interval");
        assert_eq!((p.bytes, p.total, p.rate), (200, 1000, 1000));
        assert!(m.tick(t0 + Duration::from_millis(210), 210, true).is_some());
    }

    #[test]
    fn free_space_of_a_real_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(free_space(dir.path()).expect("statvfs") > 0);
    }

    #[test]
    fn writeback_starts_a_helper_only_past_its_threshold_and_stops_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.part");
        let mut f = File::create(&path).expect("create");
        let mut wb = Writeback::new();
        let chunk = vec![5u8; 1024 * 1024];
        f.write_all(&chunk).expect("write");
        wb.wrote(&f, chunk.len() as u64);
        assert!(wb.thread.is_none(), "no helper before the threshold");
        let mut total = chunk.len() as u64;
        while total < 3 * WRITEBACK_EVERY {
            f.write_all(&chunk).expect("write");
            wb.wrote(&f, chunk.len() as u64);
            total += chunk.len() as u64;
        }
        assert!(wb.thread.is_some(), "a helper past the threshold");
        wb.stop();
        assert!(wb.thread.is_none() && wb.kick.is_none());
        // Writing on after a stop starts a new helper; dropping stops it.
        for _ in 0..(WRITEBACK_EVERY / chunk.len() as u64) {
            f.write_all(&chunk).expect("write");
            wb.wrote(&f, chunk.len() as u64);
            total += chunk.len() as u64;
        }
        assert!(wb.thread.is_some());
        drop(wb);
        f.sync_all().expect("fsync");
        assert_eq!(fs::metadata(&path).expect("metadata").len(), total);
    }

    #[test]
    fn budget_gives_up_after_max_attempts_without_progress() {
        let opts = DownloadOptions {
            max_attempts: 3,
            initial_backoff: Duration::ZERO,
            ..DownloadOptions::default()
        };
        let mut b = RetryBudget::new(&opts);
        let err = || DownloadError::Http {
            url: "u".into(),
            status: 500,
        };
        for _ in 0..2 {
            b.attempts += 1;
            assert!(b.failed("u", Failed::transient(err(), false)).is_ok());
        }
        // Progress resets the count of failures in a row.
        b.attempts += 1;
        assert!(b.failed("u", Failed::transient(err(), true)).is_ok());
        for _ in 0..2 {
            b.attempts += 1;
            assert!(b.failed("u", Failed::transient(err(), false)).is_ok());
        }
        b.attempts += 1;
        match b.failed("u", Failed::transient(err(), false)) {
            Err(DownloadError::GaveUp { attempts, .. }) => assert_eq!(attempts, 6),
            other => panic!("expected GaveUp, got {other:?}"),
        }
    }

    #[test]
    fn budget_counts_corruption_even_with_progress_between() {
        let opts = DownloadOptions {
            max_attempts: 2,
            initial_backoff: Duration::ZERO,
            ..DownloadOptions::default()
        };
        let mut b = RetryBudget::new(&opts);
        let corrupt = || {
            Failed::corrupt(DownloadError::SizeMismatch {
                artifact: "a".into(),
                expected: 1,
                got: 2,
            })
        };
        let cut = || {
            Failed::transient(
                DownloadError::Network {
                    url: "u".into(),
                    message: "cut".into(),
                },
                true,
            )
        };
        assert!(b.failed("u", corrupt()).is_ok());
        assert!(b.failed("u", cut()).is_ok());
        assert!(matches!(
            b.failed("u", corrupt()),
            Err(DownloadError::GaveUp { .. })
        ));
    }

    #[test]
    fn fatal_is_not_retried() {
        let opts = DownloadOptions::default();
        let mut b = RetryBudget::new(&opts);
        assert!(matches!(
            b.failed(
                "u",
                Failed::fatal(DownloadError::NotFound { url: "u".into() })
            ),
            Err(DownloadError::NotFound { .. })
        ));
    }
}
