//! The downloader against a real HTTP server on loopback, through the fault-injecting proxy:
//! cuts, stalls, flipped bytes, server errors, resumes after a dropped or killed download,
//! wrong sizes, missing space.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qx_agent::download::DownloadError;
use qx_agent::download::DownloadOptions;
use qx_agent::download::DownloadProgress;
use qx_agent::download::Downloader;
use qx_core::{ArtifactRef, KeyPair, Manifest, Sha256, SigningKey, UnknownFields};
use qx_testkit::proxy::{FaultProxy, Faults, Flip, Stall};

use crate::support::poll;
use crate::support::sys::Mount;

const PRODUCT: &str = "quantix-os";
const CHANNEL: &str = "dev";
const VERSION: &str = "1.2.3";
const ARTIFACT: &str = "qx-node.tar.zst";
const PART: &str = "qx-node.tar.zst.part";
const SIZE: usize = 1024 * 1024 + 12_345;

/// Deterministic, incompressible-looking content.
fn content(len: usize, seed: u64) -> Vec<u8> {
    qx_testkit::data::noise(len, seed)
}

/// A release on a real server: signed manifest and one artifact in
/// `$RELEASE_DIR/<product>/<channel>/<version>/`.
struct Release {
    _release_dir: tempfile::TempDir,
    server: qx_testkit::server::TestServer,
    data: Vec<u8>,
    expected: ArtifactRef,
}

impl Release {
    fn new(data: Vec<u8>) -> Self {
        let (size, sha) = (data.len(), Sha256::of(&data));
        let release_dir = tempfile::tempdir().expect("tempdir");
        let dir = release_dir.path().join(PRODUCT).join(CHANNEL).join(VERSION);
        std::fs::create_dir_all(&dir).expect("release dir");
        std::fs::write(dir.join(ARTIFACT), &data).expect("artifact");
        let manifest = serde_json::json!({
            "schema": 1, "product": PRODUCT, "version": VERSION, "channel": CHANNEL,
            "release_date": "2026-01-16T12:00:00Z", "expires": "2036-01-16T12:00:00Z",
            "update_type": "component",
            "components": [{
                "name": "qx-node", "version": VERSION, "artifact": ARTIFACT,
                "sha256": sha.to_hex(), "size_bytes": size,
                "install_path": "/data/bin/qx-node", "kind": "file"
            }],
            "release_notes": "test"
        });
        let manifest = Manifest::parse(manifest.to_string().as_bytes(), UnknownFields::Reject)
            .expect("valid manifest");
        let bytes = manifest.to_bytes();
        let kp = KeyPair::generate().expect("keygen");
        let key_path = release_dir.path().join("test.key");
        std::fs::write(&key_path, &kp.secret_key_file).expect("key");
        let sig = SigningKey::from_file(&key_path)
            .expect("load key")
            .sign(&bytes, "test")
            .expect("sign");
        std::fs::remove_file(&key_path).expect("remove key");
        std::fs::write(dir.join(qx_core::MANIFEST_FILE), &bytes).expect("manifest");
        std::fs::write(dir.join(qx_core::SIGNATURE_FILE), sig).expect("signature");
        let server = qx_testkit::server::TestServer::start(release_dir.path(), "test-token")
            .expect("server starts");
        let expected = manifest.artifact(ARTIFACT).expect("artifact in manifest");
        Self {
            _release_dir: release_dir,
            server,
            data,
            expected,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The artifact's URL on the server at `base` (the server itself or a proxy).
    fn url(&self, base: &str) -> String {
        format!("{base}{}", self.path(ARTIFACT))
    }

    fn path(&self, artifact: &str) -> String {
        format!("/api/v1/{PRODUCT}/releases/{VERSION}/{artifact}?channel={CHANNEL}")
    }

    fn proxy(&self) -> FaultProxy {
        FaultProxy::start(self.addr()).expect("proxy starts")
    }
}

fn opts() -> DownloadOptions {
    DownloadOptions {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(10),
        bandwidth_limit: None,
        connect_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(10),
        ..DownloadOptions::default()
    }
}

/// A release of [`SIZE`] bytes of `content(SIZE, seed)` behind a proxy injecting `faults`.
fn through_faults(seed: u64, faults: Faults) -> (Release, FaultProxy) {
    let rel = Release::new(content(SIZE, seed));
    let proxy = rel.proxy();
    proxy.set_faults(faults);
    (rel, proxy)
}

fn attempts(max_attempts: u32) -> DownloadOptions {
    DownloadOptions {
        max_attempts,
        ..opts()
    }
}

fn downloader(options: DownloadOptions) -> Downloader {
    Downloader::new(options).unwrap()
}

/// The reference of artifact [`ARTIFACT`] with this hash and size.
fn artifact_ref(sha256: Sha256, size_bytes: u64) -> ArtifactRef {
    ArtifactRef {
        artifact: ARTIFACT.parse().unwrap(),
        sha256,
        size_bytes,
    }
}

/// The partial download of [`ARTIFACT`] as a crash leaves it: `bytes`, and the hash of the
/// content they are the start of.
fn write_part(staging: &Path, bytes: impl AsRef<[u8]>, sha256: &Sha256) {
    std::fs::write(staging.join(PART), bytes).unwrap();
    std::fs::write(
        staging.join(format!("{PART}.sha256")),
        format!("{sha256}\n"),
    )
    .unwrap();
}

/// The error of a download that gave up after exactly `attempts` attempts: the last attempt's.
fn gave_up<T: std::fmt::Debug>(result: Result<T, DownloadError>, attempts: u32) -> DownloadError {
    match result {
        Err(DownloadError::GaveUp {
            attempts: made,
            last,
            ..
        }) => {
            assert_eq!(made, attempts, "attempts made: {last:?}");
            *last
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
}

fn fetch(
    dl: &Downloader,
    url: &str,
    dir: &Path,
    expected: &ArtifactRef,
) -> Result<PathBuf, DownloadError> {
    dl.fetch(url, dir, expected, &mut |_| {})
}

fn assert_no_leftovers(dir: &Path) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec![ARTIFACT.to_owned()],
        "only the final artifact is left"
    );
}

fn range_requests(proxy: &FaultProxy) -> Vec<String> {
    proxy
        .requests()
        .into_iter()
        .filter(|r| r.to_ascii_lowercase().contains("\r\nrange: bytes="))
        .collect()
}

#[test]
fn happy_path_downloads_and_verifies() {
    let rel = Release::new(content(SIZE, 1));
    let staging = tempfile::tempdir().unwrap();
    let dl = downloader(opts());
    let url = rel.url(rel.server.url());
    let mut reports: Vec<DownloadProgress> = Vec::new();
    let path = dl
        .fetch(&url, staging.path(), &rel.expected, &mut |p| {
            reports.push(p.clone())
        })
        .expect("download succeeds");
    assert_eq!(path, staging.path().join(ARTIFACT));
    assert_eq!(std::fs::read(&path).unwrap(), rel.data);
    assert_no_leftovers(staging.path());
    let last = reports.last().expect("progress was reported");
    assert_eq!((last.bytes, last.total), (SIZE as u64, SIZE as u64));
    assert_eq!(last.artifact, ARTIFACT);
    assert!(reports.windows(2).all(|w| w[0].bytes <= w[1].bytes));
}

#[test]
fn existing_verified_file_is_returned_without_a_request() {
    let rel = Release::new(content(SIZE, 2));
    let proxy = rel.proxy();
    let staging = tempfile::tempdir().unwrap();
    std::fs::write(staging.path().join(ARTIFACT), &rel.data).unwrap();
    let dl = downloader(opts());
    let url = rel.url(&proxy.url());
    fetch(&dl, &url, staging.path(), &rel.expected).expect("already there");
    assert_eq!(proxy.stats().connections, 0);
}

#[test]
fn existing_corrupt_file_is_replaced() {
    let rel = Release::new(content(SIZE, 3));
    let staging = tempfile::tempdir().unwrap();
    std::fs::write(staging.path().join(ARTIFACT), b"stale").unwrap();
    let dl = downloader(opts());
    let url = rel.url(rel.server.url());
    let path = fetch(&dl, &url, staging.path(), &rel.expected).expect("downloaded again");
    assert_eq!(std::fs::read(path).unwrap(), rel.data);
}

/// A fault the download must get through: the proxy's faults, the downloader's options, and
/// what the proxy must have seen (`check`, given the case's name and the staging directory).
struct Converges {
    name: &'static str,
    faults: fn() -> Faults,
    options: fn() -> DownloadOptions,
    check: fn(&str, &FaultProxy, &Path),
}

const CONVERGES: &[Converges] = &[
    Converges {
        name: "connection cut every 200 KiB",
        faults: || Faults {
            cut_every: Some(200 * 1024),
            ..Faults::default()
        },
        options: opts,
        check: |name, proxy, staging| {
            assert_no_leftovers(staging);
            let stats = proxy.stats();
            // ~1 MiB in 200 KiB pieces: at least 5 cuts, each resumed with a Range request.
            assert!(stats.cuts >= 5, "{name}: {stats:?}");
            assert!(
                range_requests(proxy).len() as u64 >= stats.cuts,
                "{name}: {:?}",
                proxy.requests()
            );
            // Resuming never re-downloads much: total bytes stay close to the artifact size.
            assert!(
                stats.bytes_down < SIZE as u64 + 64 * 1024,
                "{name}: {stats:?}"
            );
        },
    },
    Converges {
        name: "stall times out, the retry resumes",
        faults: || Faults {
            stall: Some(Stall {
                after_body_bytes: 300_000,
                duration: None,
                responses: 1,
            }),
            ..Faults::default()
        },
        options: || DownloadOptions {
            stall_timeout: Duration::from_secs(1),
            ..opts()
        },
        check: |name, proxy, _| {
            assert_eq!(proxy.stats().stalls, 1, "{name}");
            let ranges = range_requests(proxy);
            assert_eq!(ranges.len(), 1, "{name}: {:?}", proxy.requests());
            assert!(ranges[0].contains("bytes=300000-"), "{name}: {}", ranges[0]);
        },
    },
    Converges {
        name: "flipped byte detected, discarded and refetched",
        faults: || Faults {
            flip: Some(Flip {
                body_offset: 777_777,
                responses: 1,
            }),
            ..Faults::default()
        },
        options: opts,
        check: |name, proxy, staging| {
            assert_no_leftovers(staging);
            assert_eq!(proxy.stats().flips, 1, "{name}");
            let requests = proxy.requests();
            assert_eq!(
                requests.len(),
                2,
                "{name}: one corrupt pass, one good: {requests:?}"
            );
            assert!(
                range_requests(proxy).is_empty(),
                "{name}: the refetch starts from zero"
            );
        },
    },
    Converges {
        name: "server 500s for the first 3 requests",
        faults: || Faults {
            fail_first: 3,
            ..Faults::default()
        },
        options: opts,
        check: |name, proxy, _| {
            assert_eq!(proxy.stats().injected_500, 3, "{name}");
            assert_eq!(proxy.requests().len(), 4, "{name}");
        },
    },
];

#[test]
fn download_converges_through_each_fault() {
    for (seed, case) in (4..).zip(CONVERGES) {
        let name = case.name;
        let rel = Release::new(content(SIZE, seed));
        let proxy = rel.proxy();
        proxy.set_faults((case.faults)());
        let staging = tempfile::tempdir().unwrap();
        let dl = downloader((case.options)());
        let url = rel.url(&proxy.url());
        let path = fetch(&dl, &url, staging.path(), &rel.expected)
            .unwrap_or_else(|e| panic!("{name}: does not converge: {e}"));
        assert_eq!(std::fs::read(path).unwrap(), rel.data, "{name}");
        (case.check)(name, &proxy, staging.path());
    }
}

#[test]
fn always_corrupt_gives_up_with_mismatch_and_leaves_nothing() {
    let (rel, proxy) = through_faults(
        7,
        Faults {
            flip: Some(Flip {
                body_offset: 10,
                responses: u64::MAX,
            }),
            ..Faults::default()
        },
    );
    let staging = tempfile::tempdir().unwrap();
    let dl = downloader(attempts(2));
    let url = rel.url(&proxy.url());
    match gave_up(fetch(&dl, &url, staging.path(), &rel.expected), 2) {
        DownloadError::Mismatch { expected, got, .. } => {
            assert_eq!(expected, rel.expected.sha256);
            assert_ne!(got, expected);
        }
        other => panic!("expected a sha256 mismatch, got {other:?}"),
    }
    assert_eq!(std::fs::read_dir(staging.path()).unwrap().count(), 0);
}

#[test]
fn always_failing_server_gives_up_after_exactly_max_attempts() {
    let (rel, proxy) = through_faults(
        9,
        Faults {
            fail_first: u64::MAX,
            ..Faults::default()
        },
    );
    let staging = tempfile::tempdir().unwrap();
    let dl = downloader(attempts(5));
    let url = rel.url(&proxy.url());
    let result = fetch(&dl, &url, staging.path(), &rel.expected);
    if let Err(DownloadError::GaveUp { url: u, .. }) = &result {
        assert_eq!(u, &url);
    }
    let last = gave_up(result, 5);
    assert!(
        matches!(last, DownloadError::Http { status: 500, .. }),
        "{last:?}"
    );
    assert_eq!(proxy.stats().injected_500, 5);
    assert_eq!(proxy.requests().len(), 5);
}

#[test]
fn not_found_is_not_retried() {
    let rel = Release::new(content(1000, 10));
    let proxy = rel.proxy();
    let staging = tempfile::tempdir().unwrap();
    let dl = downloader(opts());
    let url = format!("{}{}", proxy.url(), rel.path("missing.tar.zst"));
    let expected = ArtifactRef {
        artifact: "missing.tar.zst".parse().unwrap(),
        ..rel.expected.clone()
    };
    match fetch(&dl, &url, staging.path(), &expected) {
        Err(DownloadError::NotFound { url: u }) => assert_eq!(u, url),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(proxy.requests().len(), 1);
}

#[test]
fn connection_refused_gives_up_after_max_attempts() {
    // A port that was just free: nothing listens on it.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let staging = tempfile::tempdir().unwrap();
    let dl = downloader(attempts(3));
    let data = content(100, 11);
    let expected = artifact_ref(Sha256::of(&data), 100);
    let last = gave_up(
        fetch(&dl, &format!("http://{addr}/x"), staging.path(), &expected),
        3,
    );
    assert!(matches!(last, DownloadError::Network { .. }), "{last:?}");
}

#[test]
fn resume_after_an_aborted_download_uses_range() {
    let rel = Release::new(content(SIZE, 12));
    let proxy = rel.proxy();
    const FIRST: u64 = 400_000;
    // A pause after FIRST bytes makes the next progress report come right after it.
    proxy.set_faults(Faults {
        stall: Some(Stall {
            after_body_bytes: FIRST,
            duration: Some(Duration::from_millis(300)),
            responses: 1,
        }),
        ..Faults::default()
    });
    let staging = tempfile::tempdir().unwrap();
    let url = rel.url(&proxy.url());
    {
        // The download is torn down from inside (as when the agent's task dies): the progress
        // callback panics once more than FIRST bytes are on disk.
        let dl = downloader(opts());
        let aborted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            dl.fetch(&url, staging.path(), &rel.expected, &mut |p| {
                if p.bytes > FIRST {
                    panic!("simulated abort at {} bytes", p.bytes);
                }
            })
        }));
        assert!(aborted.is_err(), "the download was aborted");
    }
    let part = staging.path().join(PART);
    let have = std::fs::metadata(&part).unwrap().len();
    assert!(have > FIRST && have < SIZE as u64, "{have}");

    proxy.set_faults(Faults::default());
    proxy.reset_stats();
    let dl = downloader(opts());
    let path = fetch(&dl, &url, staging.path(), &rel.expected).expect("resumes");
    assert_eq!(std::fs::read(path).unwrap(), rel.data);
    assert_no_leftovers(staging.path());
    let requests = proxy.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let lower = requests[0].to_ascii_lowercase();
    assert!(lower.contains(&format!("range: bytes={have}-")), "{lower}");
    assert!(
        lower.contains(&format!("if-range: \"{}\"", rel.expected.sha256)),
        "{lower}"
    );
    assert!(proxy.stats().bytes_down < SIZE as u64 - have + 4096);
}

/// Runs only as the child of `resume_after_the_agent_is_killed`: downloads until killed.
#[test]
fn child_download_until_killed() {
    let (Ok(url), Ok(dir), Ok(sha), Ok(size)) = (
        std::env::var("QX_DL_CHILD_URL"),
        std::env::var("QX_DL_CHILD_DIR"),
        std::env::var("QX_DL_CHILD_SHA"),
        std::env::var("QX_DL_CHILD_SIZE"),
    ) else {
        return;
    };
    let expected = artifact_ref(sha.parse().unwrap(), size.parse().unwrap());
    let dl = downloader(DownloadOptions {
        stall_timeout: Duration::from_secs(120),
        ..opts()
    });
    let _ = fetch(&dl, &url, Path::new(&dir), &expected);
    panic!("the child download was expected to be killed while stalled");
}

#[test]
fn resume_after_the_agent_is_killed() {
    let rel = Release::new(content(SIZE, 13));
    let proxy = rel.proxy();
    const FIRST: u64 = 500_000;
    proxy.set_faults(Faults {
        stall: Some(Stall {
            after_body_bytes: FIRST,
            duration: None,
            responses: u64::MAX,
        }),
        ..Faults::default()
    });
    let staging = tempfile::tempdir().unwrap();
    let url = rel.url(&proxy.url());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "download::child_download_until_killed",
            "--exact",
            "--nocapture",
        ])
        .env("QX_DL_CHILD_URL", &url)
        .env("QX_DL_CHILD_DIR", staging.path())
        .env("QX_DL_CHILD_SHA", rel.expected.sha256.to_hex())
        .env("QX_DL_CHILD_SIZE", rel.expected.size_bytes.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let part = staging.path().join(PART);
    let reached = poll(Duration::from_secs(60), Duration::from_millis(10), || {
        if std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) >= FIRST {
            return true;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child exited early: {status}");
        }
        false
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(reached, "the child never wrote {FIRST} bytes");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), FIRST);

    proxy.set_faults(Faults::default());
    proxy.reset_stats();
    let dl = downloader(opts());
    let path = fetch(&dl, &url, staging.path(), &rel.expected).expect("resumes");
    assert_eq!(std::fs::read(path).unwrap(), rel.data);
    assert_no_leftovers(staging.path());
    let ranges = range_requests(&proxy);
    assert_eq!(ranges.len(), 1, "{:?}", proxy.requests());
    assert!(
        ranges[0].contains(&format!("bytes={FIRST}-")),
        "{}",
        ranges[0]
    );
    assert!(proxy.stats().bytes_down < SIZE as u64 - FIRST + 4096);
}

#[test]
fn partial_file_of_other_content_is_discarded() {
    let rel = Release::new(content(SIZE, 14));
    let proxy = rel.proxy();
    let staging = tempfile::tempdir().unwrap();
    // A .part from another release with the same artifact name.
    write_part(staging.path(), content(1000, 99), &Sha256::of(b"other"));
    let dl = downloader(opts());
    let url = rel.url(&proxy.url());
    let path = fetch(&dl, &url, staging.path(), &rel.expected).expect("downloads");
    assert_eq!(std::fs::read(path).unwrap(), rel.data);
    assert!(range_requests(&proxy).is_empty());
    assert_no_leftovers(staging.path());
}

#[test]
fn complete_partial_file_is_verified_without_a_request() {
    let rel = Release::new(content(SIZE, 15));
    let proxy = rel.proxy();
    let staging = tempfile::tempdir().unwrap();
    // A crash after the last byte, before the rename.
    write_part(staging.path(), &rel.data, &rel.expected.sha256);
    let dl = downloader(opts());
    let url = rel.url(&proxy.url());
    let path = fetch(&dl, &url, staging.path(), &rel.expected).expect("verified");
    assert_eq!(std::fs::read(path).unwrap(), rel.data);
    assert_eq!(proxy.stats().connections, 0);
    assert_no_leftovers(staging.path());
}

/// A raw HTTP responder: answers every connection with `head` followed by `body_len` bytes and
/// closes (no Content-Length: the body ends with the connection). Counts connections and the
/// bytes it managed to write.
struct RawServer {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
}

impl RawServer {
    fn start(head: String, body_len: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(head.as_bytes());
                let body = content(body_len, 17);
                let _ = stream.write_all(&body);
            }
        });
        Self { addr, connections }
    }
}

#[test]
fn stream_longer_than_expected_is_stopped_and_refused() {
    let raw = RawServer::start(
        "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".into(),
        4 * 1024 * 1024,
    );
    let staging = tempfile::tempdir().unwrap();
    let dl = downloader(attempts(1));
    let expected = artifact_ref(Sha256::of(b"x"), 1000);
    let url = format!("http://{}/artifact", raw.addr);
    match gave_up(fetch(&dl, &url, staging.path(), &expected), 1) {
        DownloadError::SizeMismatch { expected, got, .. } => {
            assert_eq!(expected, 1000);
            assert!(got > 1000, "{got}");
        }
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
    assert_eq!(std::fs::read_dir(staging.path()).unwrap().count(), 0);
    assert_eq!(raw.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn announced_length_larger_than_the_manifest_is_refused() {
    const LEN: usize = 2 * 1024 * 1024;
    let raw = RawServer::start(
        format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\nconnection: close\r\n\r\n"),
        LEN,
    );
    let staging = tempfile::tempdir().unwrap();
    let dl = downloader(attempts(2));
    let expected = artifact_ref(Sha256::of(b"x"), 1000);
    let url = format!("http://{}/artifact", raw.addr);
    match gave_up(fetch(&dl, &url, staging.path(), &expected), 2) {
        DownloadError::SizeMismatch { expected, got, .. } => {
            assert_eq!((expected, got), (1000, LEN as u64));
        }
        other => panic!("expected SizeMismatch, got {other:?}"),
    }
    assert_eq!(std::fs::read_dir(staging.path()).unwrap().count(), 0);
    assert_eq!(raw.connections.load(Ordering::SeqCst), 2);
}

#[test]
fn forbidden_is_not_retried() {
    let raw = RawServer::start(
        "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
        0,
    );
    let staging = tempfile::tempdir().unwrap();
    let dl = downloader(opts());
    let expected = artifact_ref(Sha256::of(b"x"), 1);
    let url = format!("http://{}/artifact", raw.addr);
    match fetch(&dl, &url, staging.path(), &expected) {
        Err(DownloadError::Http { status, url: u }) => {
            assert_eq!(status, 403);
            assert_eq!(u, url);
        }
        other => panic!("expected Http 403, got {other:?}"),
    }
    assert_eq!(raw.connections.load(Ordering::SeqCst), 1);
    match dl.get_bytes(&url) {
        Err(DownloadError::Http { status: 403, .. }) => {}
        other => panic!("expected Http 403, got {other:?}"),
    }
    assert_eq!(raw.connections.load(Ordering::SeqCst), 2);
}

#[test]
#[ignore = "slow tier: needs root and a tmpfs mount; `cargo xtask test` runs it"]
fn not_enough_free_space_is_refused_before_any_request() {
    let rel = Release::new(content(2 * 1024 * 1024, 18));
    let proxy = rel.proxy();
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Mount::tmpfs(dir.path(), "1m");
    let staging = tmpfs.dir.join("staging");
    let dl = downloader(opts());
    let url = rel.url(&proxy.url());
    match fetch(&dl, &url, &staging, &rel.expected) {
        Err(DownloadError::NoSpace {
            path,
            needed,
            available,
        }) => {
            assert_eq!(path, staging);
            assert_eq!(needed, 2 * 1024 * 1024);
            assert!(available <= 1024 * 1024, "{available}");
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert_eq!(proxy.stats().connections, 0);
}

#[test]
fn bandwidth_limited_download_still_verifies() {
    let rel = Release::new(content(256 * 1024, 19));
    let staging = tempfile::tempdir().unwrap();
    let dl = downloader(DownloadOptions {
        bandwidth_limit: Some(4 * 1024 * 1024),
        ..opts()
    });
    let url = rel.url(rel.server.url());
    let path = fetch(&dl, &url, staging.path(), &rel.expected).expect("downloads");
    assert_eq!(std::fs::read(path).unwrap(), rel.data);
}

#[test]
fn get_bytes_fetches_the_manifest_through_server_errors() {
    let rel = Release::new(content(1000, 20));
    let proxy = rel.proxy();
    proxy.set_faults(Faults {
        fail_first: 2,
        ..Faults::default()
    });
    let dl = downloader(opts());
    let url = format!("{}{}", proxy.url(), rel.path(qx_core::MANIFEST_FILE));
    let (body, _headers) = dl.get_bytes(&url).expect("fetched");
    let manifest = Manifest::parse(&body, UnknownFields::Ignore).expect("the signed manifest");
    assert_eq!(manifest.version.to_string(), VERSION);
    assert_eq!(proxy.stats().injected_500, 2);
}

#[test]
fn get_bytes_not_found_is_not_retried() {
    let rel = Release::new(content(1000, 21));
    let proxy = rel.proxy();
    let dl = downloader(opts());
    let url = format!(
        "{}/api/v1/{PRODUCT}/releases/9.9.9/manifest.json?channel={CHANNEL}",
        proxy.url()
    );
    match dl.get_bytes(&url) {
        Err(DownloadError::NotFound { url: u }) => assert_eq!(u, url),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(proxy.requests().len(), 1);
}

/// A `.part` of the right content, and a server that ignores `Range` (answers 200 with the
/// whole artifact).
fn part_and_range_ignoring_server(staging: &Path) -> (RawServer, ArtifactRef, Vec<u8>) {
    const LEN: usize = 300_000;
    let raw = RawServer::start(
        format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\nconnection: close\r\n\r\n"),
        LEN,
    );
    let data = content(LEN, 17);
    let expected = artifact_ref(Sha256::of(&data), LEN as u64);
    write_part(staging, &data[..1000], &expected.sha256);
    (raw, expected, data)
}

#[test]
fn server_ignoring_range_restarts_from_zero() {
    let staging = tempfile::tempdir().unwrap();
    let (raw, expected, data) = part_and_range_ignoring_server(staging.path());
    let dl = downloader(opts());
    let url = format!("http://{}/artifact", raw.addr);
    let path = fetch(&dl, &url, staging.path(), &expected).expect("downloads");
    assert_eq!(std::fs::read(path).unwrap(), data);
    assert_eq!(raw.connections.load(Ordering::SeqCst), 1);
    assert_no_leftovers(staging.path());
}

#[test]
fn cuts_after_a_trickle_use_the_attempt_budget() {
    // Every connection is cut after 8 KiB: less than MIN_PROGRESS, so no attempt counts as
    // progress and the budget bounds the loop.
    let (rel, proxy) = through_faults(
        35,
        Faults {
            cut_every: Some(8 * 1024),
            ..Faults::default()
        },
    );
    let staging = tempfile::tempdir().unwrap();
    let dl = downloader(attempts(3));
    let url = rel.url(&proxy.url());
    let last = gave_up(fetch(&dl, &url, staging.path(), &rel.expected), 3);
    assert!(matches!(last, DownloadError::Network { .. }), "{last:?}");
    assert_eq!(proxy.requests().len(), 3);
    // What did arrive is kept for the next try.
    let part = staging.path().join(PART);
    assert!(std::fs::metadata(part).unwrap().len() > 0);
}

#[test]
fn etag_naming_other_content_is_refused_before_the_body() {
    const LEN: usize = 2 * 1024 * 1024;
    let other = Sha256::of(b"another artifact");
    let raw = RawServer::start(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\netag: \"{other}\"\r\nconnection: close\r\n\r\n"
        ),
        LEN,
    );
    let staging = tempfile::tempdir().unwrap();
    let dl = downloader(attempts(2));
    let data = content(LEN, 17);
    let expected = artifact_ref(Sha256::of(&data), LEN as u64);
    let url = format!("http://{}/artifact", raw.addr);
    match gave_up(fetch(&dl, &url, staging.path(), &expected), 2) {
        DownloadError::Mismatch {
            expected: e, got, ..
        } => {
            assert_eq!((e, got), (expected.sha256, other));
        }
        other => panic!("expected Mismatch, got {other:?}"),
    }
    assert_eq!(std::fs::read_dir(staging.path()).unwrap().count(), 0);
}

#[test]
fn redirect_to_a_non_http_url_says_what_was_refused() {
    let raw = RawServer::start(
        "HTTP/1.1 302 Found\r\nlocation: ftp://mirror:s3cret@mirror.test/qx-node.tar.zst\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
        0,
    );
    let staging = tempfile::tempdir().unwrap();
    let dl = downloader(opts());
    let expected = artifact_ref(Sha256::of(b"x"), 1);
    let url = format!("http://{}/artifact", raw.addr);
    let check = |err: DownloadError| {
        let text = err.to_string();
        match err {
            DownloadError::Redirect {
                status, location, ..
            } => {
                assert_eq!(status, 302);
                assert_eq!(location, "\"ftp://***@mirror.test/qx-node.tar.zst\"");
            }
            other => panic!("expected a refused redirect, got {other:?}"),
        }
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("redirects are followed to https:// URLs"),
            "{text}"
        );
    };
    check(fetch(&dl, &url, staging.path(), &expected).unwrap_err());
    // Once, then once more asking the server for the bytes themselves; no more.
    assert_eq!(
        raw.connections.load(Ordering::SeqCst),
        2,
        "asked directly once"
    );
    check(dl.get_bytes(&url).unwrap_err());
    assert_eq!(raw.connections.load(Ordering::SeqCst), 3, "not retried");
}
