//! The dashboard's rollout page in a real headless Chromium (slow tier): a halted rollout's
//! waves, banner and failures, live as hosts report, pause/resume/abort from its buttons, a
//! read-only token told it may not act, and a host's wave line. The rollout is driven by the
//! simulation's rig ([`crate::rollouts::Rig`]) with the injected clock.

use fantoccini::Client;
use qx_core::channel::RolloutPolicy;
use qx_testkit::browser::{click, displayed, save_screenshot, sign_in, text, wait_for, Driver};
use serde_json::json;

use crate::dashboard::wait_text;
use crate::fleet_api::{operator_token, Engine};
use crate::rollouts::{one_wave, PRODUCT};
use crate::support::TOKEN;

/// The text of cell `n` (from 1) of wave 0's row.
async fn wave_cell(client: &Client, n: usize) -> String {
    let css = format!("#waves-table tr[data-key=\"0\"] td:nth-child({n})");
    text(client, &css).await.unwrap_or_default()
}

async fn enabled(client: &Client, css: &str) -> bool {
    let e = client.find(fantoccini::Locator::Css(css)).await.unwrap();
    e.is_enabled().await.unwrap()
}

#[tokio::test]
#[ignore = "slow tier: needs a browser; `cargo xtask test` runs it"]
async fn rollout_page_shows_the_halt_live_counts_and_acts_on_the_rollout() {
    let policy = RolloutPolicy {
        max_failures: 2,
        ..RolloutPolicy::default()
    };
    let rig = one_wave(Engine::Sqlite, policy).await;
    let mut hosts = rig.hosts(6, json!({})).await;
    rig.check_in_all(&hosts).await;
    for h in hosts.iter_mut().take(3) {
        rig.report(
            h,
            &[
                "download_started",
                "download_done",
                "installed",
                "confirmed",
            ],
        )
        .await;
    }
    for h in hosts.iter_mut().skip(3).take(2) {
        rig.report(h, &["download_started", "failed"]).await;
    }
    rig.report(&mut hosts[5], &["download_started"]).await;
    assert_eq!(rig.tick().await.halted, vec!["one".to_owned()]);
    let reader = operator_token(&rig.lab, "viewer", json!(["read"])).await;

    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let client = driver.browser(profile.path()).await;
    client.goto(&rig.lab.server.api().ui()).await.unwrap();
    sign_in(&client, &reader).await;
    let key = format!("#rollouts-table tr[data-key=\"{PRODUCT}/one\"]");
    wait_text(&client, "the rollout in the overview", &key, "halted").await;
    click(&client, &format!("{key} a")).await;

    wait_text(&client, "the halt banner", "#rollout-halt", "2 failures").await;
    assert!(displayed(&client, "#rollout-halt").await);
    let banner = text(&client, "#rollout-halt").await.unwrap();
    assert!(
        banner.contains("max_failures") || banner.contains("cap"),
        "{banner}"
    );
    assert_eq!(wave_cell(&client, 6).await, "6", "eligible");
    assert_eq!(wave_cell(&client, 7).await, "6", "offered");
    assert_eq!(wave_cell(&client, 8).await, "1", "in progress");
    assert_eq!(wave_cell(&client, 9).await, "3", "confirmed");
    assert_eq!(wave_cell(&client, 10).await, "2", "failed");
    let failures = text(&client, "#rollout-failures tbody").await.unwrap();
    assert!(
        failures.contains("failed on test") && failures.ends_with('2'),
        "{failures}"
    );
    save_screenshot(&client, "dashboard-rollout-halted.png").await;

    // Live: the downloading host cancels, as the halt told it; no reload.
    client
        .execute("window.notReloaded = true; return true;", vec![])
        .await
        .unwrap();
    rig.report(&mut hosts[5], &["cancelled"]).await;
    wait_for(&client, "the live count", |c| async move {
        wave_cell(&c, 8).await == "0"
    })
    .await;
    let same = client
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, json!(true), "updated without a reload");

    // A read-only token may look, not act: told so, still signed in.
    click(&client, "#rollout-resume").await;
    wait_text(
        &client,
        "the refusal",
        "#rollout-action-message",
        "rollout scope",
    )
    .await;
    assert!(displayed(&client, "#app").await);
    assert_eq!(rig.status("one").await["state"], "halted");
    client.close().await.unwrap();

    // An operator resumes, pauses and aborts from the buttons.
    let profile = tempfile::tempdir().unwrap();
    let client = driver.browser(profile.path()).await;
    let page = format!("{}#/rollouts/{PRODUCT}/one", rig.lab.server.api().ui());
    client.goto(&page).await.unwrap();
    sign_in(&client, TOKEN).await;
    wait_text(&client, "the rollout page", "#rollout-fields", "halted").await;
    assert!(
        !enabled(&client, "#rollout-pause").await,
        "a halted rollout is not paused"
    );
    click(&client, "#rollout-resume").await;
    wait_text(&client, "resumed", "#rollout-fields", "running").await;
    assert!(
        !displayed(&client, "#rollout-halt").await,
        "no banner once resumed"
    );
    let ack = text(&client, "#rollout-fields").await.unwrap();
    assert!(ack.contains("2 failures of 5 finished hosts"), "{ack}");
    assert_eq!(rig.status("one").await["state"], "running");

    // The host page: its wave and its place in the running rollout.
    let host = format!("{}#/hosts/{}", rig.lab.server.api().ui(), hosts[0].id);
    client.goto(&host).await.unwrap();
    wait_text(&client, "the host's wave", "#host-rollouts", "wave 0").await;
    client.goto(&page).await.unwrap();
    wait_text(
        &client,
        "the rollout page again",
        "#rollout-fields",
        "running",
    )
    .await;

    click(&client, "#rollout-pause").await;
    wait_text(&client, "paused", "#rollout-fields", "paused").await;
    click(&client, "#rollout-abort").await;
    assert!(
        displayed(&client, "#rollout-abort-confirm").await,
        "abort asks first"
    );
    assert_eq!(
        rig.status("one").await["state"],
        "paused",
        "nothing before the confirmation"
    );
    click(&client, "#rollout-abort-yes").await;
    wait_text(&client, "aborted", "#rollout-fields", "aborted").await;
    assert!(!enabled(&client, "#rollout-abort").await);
    assert_eq!(rig.status("one").await["state"], "aborted");
    save_screenshot(&client, "dashboard-rollout-aborted.png").await;
    client.close().await.unwrap();
}
