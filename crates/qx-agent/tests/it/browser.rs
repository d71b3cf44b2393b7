//! The Settings → Updates page in a real headless Chromium (driven over WebDriver by
//! chromedriver), served over HTTPS with the daemon's self-signed certificate, against a real
//! update server and a sandboxed host with a running service.
//!
//! Needs the Debian packages `chromium` and `chromium-driver`; when `/usr/bin/chromium` is
//! missing the test installs them with `apt-get` (as CI does, as root). Every wait is a bounded
//! poll of a DOM condition. The screenshot is saved to
//! `<target>/test-artifacts/updates-page.png`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use qx_testkit::host::Lab;

use crate::support::api::*;
use crate::support::host::{agent, dead_url, host_at_v1};
use crate::support::runtime;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Installs Chromium and its driver when missing.
fn ensure_chromium() {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return;
    }
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("run apt-get update (the browser test installs chromium; run as root)");
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
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        // chromedriver says when it listens; a dead driver ends the output (bounded).
        let stdout = child.stdout.take().unwrap();
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
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
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
        unreachable!()
    };
    // The WebDriver client's TLS stack needs a process-wide provider (both are compiled in).
    let _ = rustls::crypto::ring::default_provider().install_default();
    ClientBuilder::rustls()
        .expect("webdriver client")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session")
}

/// A browser session on the API's page.
async fn open_page(driver: &Driver, profile: &Path, api: &ApiServer) -> Client {
    let client = browser(driver, profile).await;
    client.goto(&api.url("/")).await.unwrap();
    client
}

/// Polls `what` every 100 ms, at most 1200 times (two minutes).
async fn wait_for<F, Fut>(client: &Client, what: &str, mut cond: F)
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1200 {
        if cond(client.clone()).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = client.source().await.unwrap_or_default();
    panic!("timed out waiting for: {what}\npage:\n{page}");
}

async fn text(client: &Client, css: &str) -> Option<String> {
    let e = client.find(Locator::Css(css)).await.ok()?;
    e.text().await.ok()
}

async fn displayed(client: &Client, css: &str) -> bool {
    match client.find(Locator::Css(css)).await {
        Ok(e) => e.is_displayed().await.unwrap_or(false),
        Err(_) => false,
    }
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn sign_in(client: &Client, token: &str) {
    wait_for(client, "the token form", |c| async move {
        displayed(&c, "#token").await
    })
    .await;
    let input = client.find(Locator::Css("#token")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(token).await.unwrap();
    click(client, "#token-save").await;
}

#[test]
#[ignore = "slow tier: needs a browser; `cargo xtask test` runs it"]
fn updates_page_checks_applies_and_shows_the_new_version() {
    ensure_chromium();
    let lab = Lab::new().unwrap();
    // 512 KiB at 512 KiB/s: the progress bar has a second of download to show.
    write_config(
        &lab,
        None,
        lab.server.url(),
        "  bandwidth_limit: 512KiB/s\n",
    );
    host_at_v1(&lab);
    publish_release(&lab, "1.1.0", None, 512 * 1024);
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver::start();

    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let client = open_page(&driver, profile.path(), &api).await;
        assert_eq!(
            client.title().await.unwrap(),
            "Updates · Quantix host settings"
        );
        sign_in_after_a_wrong_token(&client).await;
        check_shows_the_offer(&client).await;
        apply_shows_progress_to_the_new_version(&client).await;

        let png = client.screenshot().await.unwrap();
        let path = artifacts_dir().join("updates-page.png");
        std::fs::write(&path, &png).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        eprintln!("screenshot: {}", path.display());

        client.close().await.unwrap();
        api.shutdown().await;
    });
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
}

/// A wrong token is refused and asked for again; the right one shows the installed versions,
/// the channel and product, and a disabled Apply button.
async fn sign_in_after_a_wrong_token(client: &Client) {
    sign_in(client, "not-the-token").await;
    wait_for(client, "the refusal of a wrong token", |c| async move {
        text(&c, "#token-message")
            .await
            .is_some_and(|t| t.contains("not accepted"))
    })
    .await;

    sign_in(client, TOKEN).await;
    wait_for(client, "the installed versions", |c| async move {
        text(&c, "#installed-table tr[data-component=qx-node]")
            .await
            .is_some_and(|t| t.contains("1.0.0"))
    })
    .await;
    assert_eq!(text(client, "#channel").await.as_deref(), Some("dev"));
    assert_eq!(
        text(client, "#product").await.as_deref(),
        Some("quantix-os")
    );
    assert!(!client
        .find(Locator::Css("#apply"))
        .await
        .unwrap()
        .is_enabled()
        .await
        .unwrap());
}

/// Check: the offered version, its release notes and a row per change.
async fn check_shows_the_offer(client: &Client) {
    click(client, "#check").await;
    wait_for(client, "the offered version", |c| async move {
        text(&c, "#offered-version").await.as_deref() == Some("1.1.0")
    })
    .await;
    let notes = text(client, "#release-notes").await.unwrap();
    assert_eq!(notes, "Release 1.1.0: faster boots and bug fixes.");
    let row = text(client, "#changes tr[data-component=qx-node]")
        .await
        .unwrap();
    assert!(
        row.contains("1.0.0") && row.contains("1.1.0") && row.contains("update"),
        "{row}"
    );
    let row = text(client, "#changes tr[data-component=host-ui]")
        .await
        .unwrap();
    assert!(
        row.contains("not installed") && row.contains("install"),
        "{row}"
    );
}

/// Apply: the progress reaches done at 100 %, then the installed list and the history show
/// the new version.
async fn apply_shows_progress_to_the_new_version(client: &Client) {
    click(client, "#apply").await;
    wait_for(client, "the progress to reach done", |c| async move {
        let Ok(section) = c.find(Locator::Css("#progress")).await else {
            return false;
        };
        section.attr("data-state").await.ok().flatten().as_deref() == Some("done")
    })
    .await;
    let bar = client
        .execute(
            "return document.getElementById('progress-bar').value;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(bar.as_f64(), Some(100.0));
    assert_eq!(
        text(client, "#step").await.as_deref(),
        Some("Update to 1.1.0 completed.")
    );
    wait_for(
        client,
        "the new version in the installed list",
        |c| async move {
            text(&c, "#installed-table tr[data-component=qx-node]")
                .await
                .is_some_and(|t| t.contains("1.1.0"))
        },
    )
    .await;
    let ui = text(client, "#installed-table tr[data-component=host-ui]")
        .await
        .unwrap();
    assert!(ui.contains("1.1.0"), "{ui}");
    let history = text(client, "#history-table tbody").await.unwrap();
    assert!(
        history.contains("1.0.0 → 1.1.0") || history.contains("1.1.0"),
        "{history}"
    );
    assert!(history.contains("success"), "{history}");
}

#[test]
#[ignore = "slow tier: needs a browser; `cargo xtask test` runs it"]
fn updates_page_shows_an_unreachable_server_as_an_actionable_error() {
    ensure_chromium();
    let lab = Lab::new().unwrap();
    let dead_url = dead_url();
    write_config(&lab, None, &dead_url, "");
    host_at_v1(&lab);
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver::start();

    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let client = open_page(&driver, profile.path(), &api).await;
        sign_in(&client, TOKEN).await;
        wait_for(&client, "the page", |c| async move {
            displayed(&c, "#check").await
        })
        .await;
        click(&client, "#check").await;
        wait_for(&client, "the error box", |c| async move {
            displayed(&c, "#error").await
        })
        .await;
        let error = text(&client, "#error").await.unwrap();
        assert!(
            error.contains(&dead_url),
            "the error names the server: {error}"
        );
        assert_eq!(
            text(&client, "#check-message").await.as_deref(),
            Some("The check did not complete.")
        );
        let png = client.screenshot().await.unwrap();
        std::fs::write(artifacts_dir().join("updates-page-error.png"), &png).unwrap();
        client.close().await.unwrap();
        api.shutdown().await;
    });
}
