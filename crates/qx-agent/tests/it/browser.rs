//! The Settings → Updates page in a real headless Chromium (driven over WebDriver by
//! chromedriver), served over HTTPS with the daemon's self-signed certificate, against a real
//! update server and a sandboxed host with a running service.
//!
//! The driver, the waits and the screenshots are `qx_testkit::browser`'s (it installs Chromium
//! when missing). The screenshot is saved to `<target>/test-artifacts/updates-page.png`.

use std::path::Path;

use fantoccini::{Client, Locator};
use qx_testkit::browser::{click, displayed, save_screenshot, sign_in, text, wait_for, Driver};
use qx_testkit::host::Lab;

use crate::support::api::*;
use crate::support::host::{agent, dead_url, host_at_v1};
use crate::support::runtime;

/// A browser session on the API's page.
async fn open_page(driver: &Driver, profile: &Path, api: &ApiServer) -> Client {
    let client = driver.browser(profile).await;
    client.goto(&api.url("/")).await.unwrap();
    client
}

#[test]
#[ignore = "slow tier: needs a browser; `cargo xtask test` runs it"]
fn updates_page_checks_applies_and_shows_the_new_version() {
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

        save_screenshot(&client, "updates-page.png").await;

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
        save_screenshot(&client, "updates-page-error.png").await;
        client.close().await.unwrap();
        api.shutdown().await;
    });
}
