//! The daemon's scheduler driven by a virtual clock (its waits advance the clock at once; no
//! sleeps): checks every interval with jitter, applies automatically only inside the
//! maintenance window, not without `auto_apply`, nothing when disabled. The applies are real:
//! a real update server on loopback, a sandboxed host with a running service.

use std::time::Duration;

use jiff::Zoned;
use qx_agent::daemon::{Clock, MaintenanceWindow, Policy, Runner, Scheduler, Step};
use qx_agent::Agent;
use qx_core::status::Outcome;
use qx_testkit::host::Lab;

use crate::support::api::daemon_lab;
use crate::support::clock::FakeClock;
use crate::support::host::agent;
use crate::support::runtime;

fn lab(extra: &str) -> Lab {
    daemon_lab(None, None, extra)
}

/// The scheduler of `agent`'s configuration on `clock`.
fn scheduler(agent: &Agent, clock: &FakeClock) -> Scheduler<FakeClock> {
    Scheduler::new(
        Runner::new(agent.clone()),
        clock.clone(),
        Policy::from_config(agent.config()),
    )
}

/// Steps the scheduler until an automatic apply, or until the virtual clock passes `end`.
async fn drive(
    scheduler: &mut Scheduler<FakeClock>,
    clock: &FakeClock,
    end: &Zoned,
    lab: &Lab,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for _ in 0..10_000 {
        if clock.now() > *end {
            return steps;
        }
        let step = scheduler.step().await;
        let applied = matches!(step, Step::Applied { .. });
        let disabled = matches!(step, Step::Disabled);
        if !applied {
            assert_eq!(
                lab.host.version("qx-node").as_deref(),
                Some("1.0.0"),
                "nothing is installed except by an automatic apply (step {step:?})"
            );
        }
        steps.push(step);
        if applied || disabled {
            return steps;
        }
    }
    panic!("the scheduler did not reach the end time in 10000 steps");
}

fn check_times(steps: &[Step]) -> Vec<Zoned> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Checked { at, error, .. } => {
                assert_eq!(error, &None, "scheduled check failed");
                Some(at.clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn auto_apply_happens_inside_the_window_and_not_outside() {
    let lab = lab("  auto_apply: true\n  maintenance_window: \"Sun 02:00-04:00\"\n");
    let agent = agent(&lab);
    let policy = Policy::from_config(agent.config());
    assert_eq!(policy.check_interval, Duration::from_secs(3600));
    let window = MaintenanceWindow::parse("Sun 02:00-04:00").unwrap();
    // Friday 10:00; the window opens on Sunday 02:00.
    let clock = FakeClock::at("2026-11-20T10:00[UTC]");
    let end: Zoned = "2026-11-22T05:00[UTC]".parse().unwrap();
    runtime().block_on(async {
        let mut scheduler = Scheduler::new(Runner::new(agent.clone()), clock.clone(), policy);
        let steps = drive(&mut scheduler, &clock, &end, &lab).await;

        let checks = check_times(&steps);
        // About one check per hour from Friday 10:00 to Sunday 02:00 (40 hours, ±10% jitter).
        assert!((34..=46).contains(&checks.len()), "{} checks", checks.len());
        for pair in checks.windows(2) {
            let gap = pair[1]
                .timestamp()
                .duration_since(pair[0].timestamp())
                .as_secs();
            assert!(
                (3240..=3960).contains(&gap),
                "check interval {gap}s is outside 1h ±10%"
            );
        }
        for s in &steps {
            if let Step::Checked { offered, .. } = s {
                assert_eq!(offered.as_deref(), Some("1.1.0"));
            }
        }
        // Every check before the window found the release; none applied it.
        let Some(Step::Applied {
            at,
            version,
            result,
            rebooting,
        }) = steps.last()
        else {
            panic!("no automatic apply by Sunday 05:00: {:?}", steps.last());
        };
        assert!(
            window.contains(at.datetime()),
            "applied at {at}, outside the window"
        );
        assert_eq!(
            at.to_string(),
            "2026-11-22T02:00:00+00:00[UTC]",
            "applied as the window opened"
        );
        assert_eq!(version, "1.1.0");
        let report = result.as_ref().expect("the automatic apply succeeded");
        assert_eq!(report.outcome, Outcome::Success);
        assert!(!rebooting, "a component update never reboots");
        assert!(steps[..steps.len() - 1]
            .iter()
            .all(|s| !matches!(s, Step::Applied { .. })));
    });
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
    let status = agent.status();
    let history = status.history;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].outcome, Outcome::Success);
    let automatic = Some(qx_core::history::StartedBy::via(
        qx_core::history::Origin::Automatic,
    ));
    assert_eq!(history[0].started_by, automatic, "who started it");
    let last = status.last_apply.expect("the last apply");
    assert_eq!(last.started_by, automatic);
    assert_eq!(last.version.as_deref(), Some("1.1.0"));
}

#[test]
fn no_auto_apply_between_windows() {
    let lab = lab("  auto_apply: true\n  maintenance_window: \"Sun 02:00-04:00\"\n");
    let agent = agent(&lab);
    // From Sunday 04:00 (the window has just closed) to Saturday 23:59: nothing is applied.
    let clock = FakeClock::at("2026-11-22T04:00[UTC]");
    let end: Zoned = "2026-11-28T23:59[UTC]".parse().unwrap();
    runtime().block_on(async {
        let mut scheduler = scheduler(&agent, &clock);
        let steps = drive(&mut scheduler, &clock, &end, &lab).await;
        assert!(steps.iter().all(|s| !matches!(s, Step::Applied { .. })));
        assert!(check_times(&steps).len() > 100);
    });
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
    assert!(agent.status().history.is_empty());
}

#[test]
fn auto_apply_without_window_applies_after_the_first_check() {
    let lab = lab("  auto_apply: true\n");
    let agent = agent(&lab);
    let clock = FakeClock::at("2026-11-18T13:00[UTC]");
    let end: Zoned = "2026-11-18T16:00[UTC]".parse().unwrap();
    runtime().block_on(async {
        let mut scheduler = scheduler(&agent, &clock);
        let steps = drive(&mut scheduler, &clock, &end, &lab).await;
        assert_eq!(check_times(&steps).len(), 1);
        let Some(Step::Applied { at, result, .. }) = steps.last() else {
            panic!("no automatic apply: {:?}", steps.last());
        };
        // The first check comes within 10% of the interval (6 minutes) after the start.
        assert!(at.timestamp().duration_since(clock_start()).as_secs() <= 360);
        assert!(result.is_ok(), "{result:?}");
    });
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
}

fn clock_start() -> jiff::Timestamp {
    "2026-11-18T13:00Z".parse().unwrap()
}

#[test]
fn without_auto_apply_only_checks() {
    let lab = lab("  auto_apply: false\n");
    let agent = agent(&lab);
    let clock = FakeClock::at("2026-11-20T10:00[UTC]");
    let end: Zoned = "2026-11-21T10:00[UTC]".parse().unwrap();
    runtime().block_on(async {
        let mut scheduler = scheduler(&agent, &clock);
        let steps = drive(&mut scheduler, &clock, &end, &lab).await;
        assert!(steps.iter().all(|s| !matches!(s, Step::Applied { .. })));
        assert!((21..=27).contains(&check_times(&steps).len()));
    });
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
}

#[test]
fn disabled_updates_do_nothing() {
    let lab = lab("  auto_apply: true\n");
    // `enabled: true` is written by the helper; turn it off.
    let path = lab.host.config_path();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("enabled: true", "enabled: false");
    std::fs::write(&path, text).unwrap();
    let agent = agent(&lab);
    assert!(!agent.config().enabled);
    let clock = FakeClock::at("2026-11-20T10:00[UTC]");
    runtime().block_on(async {
        let mut scheduler = scheduler(&agent, &clock);
        assert!(matches!(scheduler.step().await, Step::Disabled));
        assert!(matches!(scheduler.step().await, Step::Disabled));
        // The API side still answers status.
        let runner = Runner::new(agent.clone());
        let status = runner.status().await.unwrap();
        assert_eq!(status.installed["qx-node"], "1.0.0");
    });
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
}

#[test]
fn a_failed_automatic_apply_is_not_retried_for_the_same_version() {
    // 1.1.0's health command fails: the apply rolls back; the daemon keeps checking but does
    // not apply 1.1.0 again.
    let lab = daemon_lab(
        None,
        Some(vec!["/bin/false".into()]),
        "  auto_apply: true\n",
    );
    let agent = agent(&lab);
    let clock = FakeClock::at("2026-11-20T10:00[UTC]");
    let end: Zoned = "2026-11-20T20:00[UTC]".parse().unwrap();
    runtime().block_on(async {
        let mut scheduler = scheduler(&agent, &clock);
        let first = drive(&mut scheduler, &clock, &end, &lab).await;
        let Some(Step::Applied { result, .. }) = first.last() else {
            panic!("no automatic apply: {:?}", first.last());
        };
        assert!(result.is_err(), "the apply must fail: {result:?}");
        assert_eq!(
            scheduler.schedule().failed_version.as_deref(),
            Some("1.1.0")
        );
        let rest = drive(&mut scheduler, &clock, &end, &lab).await;
        assert!(
            rest.iter().all(|s| !matches!(s, Step::Applied { .. })),
            "{rest:?}"
        );
        assert!(check_times(&rest).len() >= 8);
    });
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
}
