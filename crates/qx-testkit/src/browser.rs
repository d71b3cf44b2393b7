//! A real headless Chromium for the pages' tests (the host's Updates page, the server's
//! dashboard), driven over WebDriver by chromedriver on a free loopback port.
//!
//! Needs the Debian packages `chromium` and `chromium-driver`; [`ensure_chromium`] installs
//! them with `apt-get` when `/usr/bin/chromium` is missing (as CI does, as root). Every wait is
//! a bounded poll of a DOM condition ([`wait_for`]). Screenshots go to
//! `<target>/test-artifacts/` ([`save_screenshot`]).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How often and how many times [`wait_for`] polls: every 100 ms, for at most two minutes.
const POLL_EVERY: Duration = Duration::from_millis(100);
const POLLS: u32 = 1200;

/// Installs Chromium and its driver when missing.
pub fn ensure_chromium() {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return;
    }
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("run apt-get update (the browser tests install chromium; run as root)");
    assert!(update.success(), "apt-get update failed");
    let install = Command::new("apt-get")
        .args(["install", "-y", "-qq", "chromium", "chromium-driver"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("run apt-get install chromium chromium-driver");
    assert!(
        install.success(),
        "apt-get install chromium chromium-driver failed"
    );
}

/// A chromedriver process on a free loopback port; killed when dropped.
pub struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts chromedriver (installing Chromium first when missing).
    pub fn start() -> Driver {
        ensure_chromium();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        // chromedriver says when it listens; a dead driver ends the output (bounded).
        let stdout = child.stdout.take().expect("chromedriver's piped stdout");
        let mut ready = false;
        for line in BufReader::new(stdout).lines().take(50) {
            let line = line.unwrap_or_default();
            if line.contains("started successfully") {
                ready = true;
                break;
            }
        }
        assert!(ready, "chromedriver did not start on port {port}");
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A new headless browser session with its profile in `profile`; accepts self-signed
    /// certificates (the host page is served over HTTPS with one).
    pub async fn browser(&self, profile: &Path) -> Client {
        let caps = serde_json::json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--ignore-certificate-errors", "--disable-dev-shm-usage",
                    "--window-size=1200,1500",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!("a JSON object literal")
        };
        // The WebDriver client's TLS stack needs a process-wide provider (both are compiled in).
        let _ = rustls::crypto::ring::default_provider().install_default();
        ClientBuilder::rustls()
            .expect("webdriver client")
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 100 ms, at most two minutes; panics with the page's source after.
pub async fn wait_for<F, Fut>(client: &Client, what: &str, mut cond: F)
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..POLLS {
        if cond(client.clone()).await {
            return;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    let page = client.source().await.unwrap_or_default();
    panic!("timed out waiting for: {what}\npage:\n{page}");
}

/// The text of the first element matching `css`, if there is one.
pub async fn text(client: &Client, css: &str) -> Option<String> {
    let e = client.find(Locator::Css(css)).await.ok()?;
    e.text().await.ok()
}

/// Whether an element matching `css` exists and is displayed.
pub async fn displayed(client: &Client, css: &str) -> bool {
    match client.find(Locator::Css(css)).await {
        Ok(e) => e.is_displayed().await.unwrap_or(false),
        Err(_) => false,
    }
}

/// Clicks the first element matching `css` (which must exist).
pub async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

/// Types `token` into the pages' sign-in form (`#token`, `#token-save`) once it shows.
pub async fn sign_in(client: &Client, token: &str) {
    wait_for(client, "the token form", |c| async move {
        displayed(&c, "#token").await
    })
    .await;
    let input = client
        .find(Locator::Css("#token"))
        .await
        .expect("the token field");
    input.clear().await.expect("clear the token field");
    input.send_keys(token).await.expect("type the token");
    click(client, "#token-save").await;
}

/// `<target>/test-artifacts/`, where the browser tests keep their screenshots.
pub fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create the test-artifacts directory");
    dir
}

/// Saves a screenshot of the page as `<target>/test-artifacts/<name>` and returns its path.
pub async fn save_screenshot(client: &Client, name: &str) -> PathBuf {
    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = artifacts_dir().join(name);
    std::fs::write(&path, &png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());
    path
}
