//! The Settings → Updates page in a real headless Chromium (driven over WebDriver by
//! chromedriver), served over HTTPS with the daemon's self-signed certificate, against a real
//! update server and a sandboxed host with a running service.
//!
//! The driver, the waits and the screenshots are `qx_testkit::browser`'s (it installs Chromium
//! when missing). The screenshots are saved to `<target>/test-artifacts/` (`updates-page*.png`).

use std::path::Path;

use fantoccini::{Client, Locator};
use qx_testkit::browser::{click, displayed, save_screenshot, sign_in, text, wait_for, Driver};
use qx_testkit::host::Lab;

use crate::support::api::*;
use crate::support::host::{agent, dead_url, host_at_v1, qx_update};
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

/// The phone and desktop widths the page is checked at.
const WIDTHS: [u32; 2] = [390, 1280];

/// What the page shows besides the offer and the progress: the last and next check, automatic
/// apply and the maintenance window, who started each update, failure reasons in the history,
/// a confirmation before applying again a version whose apply just failed, and a failed check
/// in the check's card while the progress card keeps the last apply. At 390 and 1280 px wide
/// the page never scrolls sideways and these items are on screen.
#[test]
#[ignore = "slow tier: needs a browser; `cargo xtask test` runs it"]
fn updates_page_shows_schedule_failures_and_who_started_each_update_at_phone_and_desktop_widths() {
    let lab = Lab::new().expect("lab");
    let window = closed_window();
    let extra = format!("  auto_apply: true\n  maintenance_window: \"{window}\"\n");
    write_config(&lab, None, lab.server.url(), &extra);
    host_at_v1(&lab);
    // 1.1.0 applied on the host's command line; 1.2.0 fails its health check.
    publish_release(&lab, "1.1.0", None, 1024);
    let out = qx_update(lab.host.root())
        .args(["apply", "--yes"])
        .env("SUDO_USER", "alice")
        .output()
        .expect("run qx-update");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    publish_release(&lab, "1.2.0", Some(vec!["/bin/false".into()]), 1024);
    let profile = tempfile::tempdir().expect("profile");
    let driver = Driver::start();

    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        api.runner.set_next_check(Some(
            jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1),
        ));
        let client = open_page(&driver, profile.path(), &api).await;
        sign_in(&client, TOKEN).await;
        wait_for(&client, "the installed 1.1.0", |c| async move {
            text(&c, "#installed-table tr[data-component=qx-node]")
                .await
                .is_some_and(|t| t.contains("1.1.0"))
        })
        .await;
        schedule_is_shown(&client, &window).await;
        a_failed_apply_shows_its_reason_and_who_started_it(&client).await;
        applying_it_again_asks_first(&client, &api).await;
        client.close().await.expect("close");
        api.shutdown().await;
    });

    // The server moves away (the daemon restarted on a configuration naming a dead address):
    // the failed check shows in the check's card; the progress card keeps the failed apply.
    let dead = dead_url();
    write_config(&lab, None, &dead, &extra);
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let client = open_page(&driver, profile.path(), &api).await;
        sign_in(&client, TOKEN).await;
        wait_for(&client, "the page", |c| async move {
            displayed(&c, "#check").await
        })
        .await;
        click(&client, "#check").await;
        wait_for(&client, "the check's error", |c| async move {
            displayed(&c, "#check-error").await
        })
        .await;
        let error = text(&client, "#check-error").await.expect("error text");
        assert!(error.contains(&dead), "the error names the server: {error}");
        assert_eq!(
            text(&client, "#check-message").await.as_deref(),
            Some("The check did not complete.")
        );
        wait_for(&client, "the failed last check", |c| async move {
            text(&c, "#last-check")
                .await
                .is_some_and(|t| t.contains("failed"))
        })
        .await;
        let step = text(&client, "#step").await.expect("step");
        assert!(
            step.contains("1.2.0") && !step.contains(&dead),
            "the progress card: {step}"
        );
        assert!(
            !displayed(&client, "#error").await,
            "not in the page's error box either"
        );
        for width in WIDTHS {
            fits_and_shows(&client, width, "updates-page").await;
        }
        client.close().await.expect("close");
        api.shutdown().await;
    });
}

/// The schedule card: automatic apply on, the closed window and when it opens, a next check.
async fn schedule_is_shown(client: &Client, window: &str) {
    wait_for(client, "the schedule", |c| async move {
        text(&c, "#auto-apply")
            .await
            .is_some_and(|t| t.starts_with("On"))
    })
    .await;
    let w = text(client, "#window").await.expect("window");
    assert!(w.contains(window) && w.contains("closed, opens"), "{w}");
    let next = text(client, "#next-check").await.expect("next check");
    assert!(next.contains("20"), "a time: {next}");
    let last = text(client, "#last-check").await.expect("last check");
    assert_eq!(last, "Never");
}

/// Apply 1.2.0 from the page: it fails; the progress card says so and who started it; the
/// history shows the reason and who started each update.
async fn a_failed_apply_shows_its_reason_and_who_started_it(client: &Client) {
    click(client, "#check").await;
    wait_for(client, "the offered 1.2.0", |c| async move {
        text(&c, "#offered-version").await.as_deref() == Some("1.2.0")
    })
    .await;
    let last = text(client, "#last-check").await.expect("last check");
    assert!(last.contains("1.2.0 available"), "{last}");
    click(client, "#apply").await;
    wait_for(client, "the apply to fail", |c| async move {
        let Ok(section) = c.find(Locator::Css("#progress")).await else {
            return false;
        };
        section.attr("data-state").await.ok().flatten().as_deref() == Some("failed")
    })
    .await;
    let step = text(client, "#step").await.expect("step");
    assert!(step.starts_with("Update to 1.2.0"), "{step}");
    let by = text(client, "#progress-by").await.expect("started by");
    assert_eq!(by, "Started by the host API or this page.");
    let rows = client
        .find_all(Locator::Css("#history-table tbody tr"))
        .await
        .expect("history rows");
    let mut texts = Vec::new();
    for r in rows {
        texts.push(r.text().await.expect("row text"));
    }
    let failed = texts
        .iter()
        .find(|t| t.contains("1.2.0"))
        .expect("the failed apply");
    assert!(failed.contains("the host API or this page"), "{failed}");
    assert!(failed.contains("health"), "its reason: {failed}");
    let cli = texts
        .iter()
        .find(|t| t.contains("→ 1.1.0"))
        .expect("the CLI apply");
    assert!(cli.contains("qx-update on the host (alice)"), "{cli}");
}

/// Apply again after the failure: a confirmation naming the failure first; Cancel starts
/// nothing, "Apply again" applies (and 1.2.0 fails again).
async fn applying_it_again_asks_first(client: &Client, api: &ApiServer) {
    let entries = api.runner.agent().status().history.len();
    wait_for(client, "the Apply button", |c| async move {
        match c.find(Locator::Css("#apply")).await {
            Ok(b) => b.is_enabled().await.unwrap_or(false),
            Err(_) => false,
        }
    })
    .await;
    click(client, "#apply").await;
    wait_for(client, "the confirmation", |c| async move {
        displayed(&c, "#apply-confirm").await
    })
    .await;
    let asked = text(client, "#apply-confirm").await.expect("question");
    assert!(
        asked.starts_with("The last apply of 1.2.0 failed")
            && asked.contains("health command")
            && asked.contains("Apply it again?"),
        "{asked}"
    );
    fits_and_shows(client, WIDTHS[0], "updates-page-confirm").await;
    click(client, "#apply-cancel").await;
    assert!(!displayed(client, "#apply-confirm").await);
    assert_eq!(
        api.runner.agent().status().history.len(),
        entries,
        "nothing started"
    );
    assert!(!api.runner.is_applying(), "nothing started");
    assert_eq!(api.runner.agent().status().state.name(), "failed");

    click(client, "#apply").await;
    wait_for(client, "the confirmation", |c| async move {
        displayed(&c, "#apply-confirm").await
    })
    .await;
    click(client, "#apply-again").await;
    wait_for(client, "the second failed apply", |c| async move {
        let rows = c
            .find_all(Locator::Css("#history-table tbody tr .outcome-failed, #history-table tbody tr .outcome-rolled_back"))
            .await
            .map(|r| r.len())
            .unwrap_or(0);
        rows == 2
    })
    .await;
    assert_eq!(
        api.runner.agent().status().history.len(),
        entries + 1,
        "applied once more"
    );
}

/// At `width` px (and tall enough for the whole page): the page does not scroll sideways, and
/// the page's new items (and `extra`) are displayed within the width. Saves
/// `<name>-<width>.png`.
async fn fits_and_shows(client: &Client, width: u32, name: &str) {
    client
        .set_window_size(width, 2400)
        .await
        .expect("window size");
    let inner = client
        .execute("return window.innerWidth;", vec![])
        .await
        .expect("inner width");
    assert_eq!(
        inner.as_u64(),
        Some(u64::from(width)),
        "the viewport's width"
    );
    let sizes = client
        .execute(
            "const e = document.scrollingElement; return [e.scrollWidth, e.clientWidth];",
            vec![],
        )
        .await
        .expect("scroll width");
    let (scroll, visible) = (sizes[0].as_u64(), sizes[1].as_u64());
    assert!(
        scroll.is_some() && scroll <= visible,
        "{width} px: scrollWidth {scroll:?} > clientWidth {visible:?}"
    );
    let mut items = vec![
        "#last-check",
        "#next-check",
        "#auto-apply",
        "#window",
        "#progress-by",
        "#history-table .started-by",
        "#history-table .reason",
    ];
    if displayed(client, "#apply-confirm").await {
        items.push("#apply-confirm");
    }
    if displayed(client, "#check-error").await {
        items.push("#check-error");
    }
    for css in items {
        assert!(displayed(client, css).await, "{width} px: {css} is shown");
        let edges = client
            .execute(
                "const r = document.querySelector(arguments[0]).getBoundingClientRect(); return [r.left, r.right];",
                vec![serde_json::json!(css)],
            )
            .await
            .expect("bounds");
        let (left, right) = (edges[0].as_f64(), edges[1].as_f64());
        assert!(
            left.is_some_and(|l| l >= 0.0) && right.is_some_and(|r| r <= f64::from(width)),
            "{width} px: {css} spans {left:?}..{right:?}"
        );
    }
    save_screenshot(client, &format!("{name}-{width}.png")).await;
}
