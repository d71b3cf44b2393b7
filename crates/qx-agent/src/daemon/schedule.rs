//! The daemon's scheduling decision, as pure functions of the time and what the daemon knows:
//! when to check, when an automatic apply may run (inside the maintenance window of
//! [`crate::config::MaintenanceWindow`]), when to reboot. The daemon loop (`daemon`) only
//! executes what [`next_action`] returns, so the policy is tested without clocks or sleeps.

use std::future::Future;
use std::time::Duration;

use jiff::{Timestamp, Zoned};
use tokio::sync::watch;

use crate::daemon::window::{next_open, MaintenanceWindow};
use crate::daemon::{RunError, Runner, MAX_WAIT};
use crate::Config;
use crate::{AgentError, ApplyOptions, ApplyReport};

/// Share of `check_interval` by which each wait is randomly lengthened or shortened (±10%), so
/// that a fleet started at the same moment does not poll the server in lockstep.
pub const JITTER: f64 = 0.10;

/// Intervals are capped at a century before any arithmetic on them.
const CENTURY: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// The parts of the configuration the schedule depends on.
#[derive(Debug, Clone)]
pub struct Policy {
    pub enabled: bool,
    pub check_interval: Duration,
    pub auto_apply: bool,
    pub auto_reboot: bool,
    pub maintenance_window: Option<MaintenanceWindow>,
}

impl Policy {
    pub fn from_config(config: &Config) -> Policy {
        Policy {
            enabled: config.enabled,
            check_interval: config.check_interval,
            auto_apply: config.auto_apply,
            auto_reboot: config.auto_reboot,
            maintenance_window: config.maintenance_window.clone(),
        }
    }
}

/// The daemon's schedule as the status reports it (`schedule` in `GET /api/v1/updates/status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScheduleStatus {
    /// `updates.enabled`: the daemon checks (and applies, with `auto_apply`) by itself.
    pub enabled: bool,
    /// When the daemon checks next; `None` when it does not check by itself (disabled).
    pub next_check: Option<Timestamp>,
    /// `updates.auto_apply`: an available release is applied without an operator.
    pub auto_apply: bool,
    pub auto_reboot: bool,
    /// `updates.maintenance_window`, when one is set.
    pub maintenance_window: Option<WindowStatus>,
}

/// The maintenance window now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WindowStatus {
    /// As configured, e.g. `Sun 02:00-04:00` (the host's local time).
    pub window: String,
    /// Open at the time of the answer.
    pub open: bool,
    /// When it opens next (`None` while open).
    pub next_open: Option<Timestamp>,
}

impl ScheduleStatus {
    /// The schedule under `policy` at `now`, the next check being due at `next_check`.
    pub fn at(now: &Zoned, policy: &Policy, next_check: Option<Timestamp>) -> ScheduleStatus {
        let maintenance_window = policy.maintenance_window.as_ref().map(|w| {
            let open = w.contains(now.datetime());
            WindowStatus {
                window: w.to_string(),
                open,
                next_open: (!open)
                    .then(|| next_open(w, now).map(|z| z.timestamp()))
                    .flatten(),
            }
        });
        ScheduleStatus {
            enabled: policy.enabled,
            next_check: next_check.filter(|_| policy.enabled),
            auto_apply: policy.auto_apply,
            auto_reboot: policy.auto_reboot,
            maintenance_window,
        }
    }
}

/// An available release found by the last check and not applied yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub version: String,
    /// `component` | `full` | `mixed`, as in the manifest.
    pub update_type: String,
}

/// What the daemon remembers between decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    /// When the next check is due; `None` = now.
    pub next_check: Option<Timestamp>,
    pub pending: Option<Pending>,
    /// An automatic apply of this version failed (and was rolled back): it is not applied
    /// automatically again; a newer release, or an operator's apply, is needed.
    pub failed_version: Option<String>,
    /// The version whose automatic apply was reported `deferred` (waiting for the window).
    pub deferred: Option<String>,
}

/// What the daemon does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Updates are disabled (`enabled: false`): do nothing until shut down; the API still
    /// answers.
    Disabled,
    /// Fetch and verify the manifest.
    Check,
    /// Apply the pending release now.
    Apply { version: String },
    /// Nothing to do before `until` (the next check, or the opening of the window).
    Wait { until: Zoned },
}

/// The decision. `now` carries the host's time zone; the maintenance window is local time.
pub fn next_action(now: &Zoned, schedule: &Schedule, policy: &Policy) -> Action {
    if !policy.enabled {
        return Action::Disabled;
    }
    let mut window_opens: Option<Zoned> = None;
    if let Some(pending) = &schedule.pending {
        let failed_before = schedule.failed_version.as_deref() == Some(pending.version.as_str());
        if policy.auto_apply && !failed_before {
            match &policy.maintenance_window {
                None => {
                    return Action::Apply {
                        version: pending.version.clone(),
                    }
                }
                Some(w) if w.contains(now.datetime()) => {
                    return Action::Apply {
                        version: pending.version.clone(),
                    }
                }
                Some(w) => window_opens = next_open(w, now),
            }
        }
    }
    let due = match schedule.next_check {
        None => true,
        Some(t) => now.timestamp() >= t,
    };
    if due {
        return Action::Check;
    }
    let mut until = match schedule.next_check {
        Some(t) => t.to_zoned(now.time_zone().clone()),
        None => now.clone(),
    };
    if let Some(open) = window_opens {
        if open < until {
            until = open;
        }
    }
    Action::Wait { until }
}

/// The version an automatic apply would install now but for the closed maintenance window
/// (reported once per version as a `deferred` fleet event).
pub fn deferred_by_window<'a>(
    now: &Zoned,
    schedule: &'a Schedule,
    policy: &Policy,
) -> Option<&'a str> {
    let pending = schedule.pending.as_ref()?;
    let failed_before = schedule.failed_version.as_deref() == Some(pending.version.as_str());
    let window = policy.maintenance_window.as_ref()?;
    (policy.enabled && policy.auto_apply && !failed_before && !window.contains(now.datetime()))
        .then_some(pending.version.as_str())
}

/// When the next check comes after the fleet server's answer: its `next_checkin_s` or its
/// 429's `Retry-After` (already within [`crate::fleet::NEXT_CHECKIN_BOUNDS`] /
/// [`crate::fleet::RETRY_AFTER_BOUNDS`]), counted from `now`.
pub fn next_check_after(now: Timestamp, hint: crate::fleet::ScheduleHint) -> Timestamp {
    use crate::fleet::ScheduleHint;
    match hint {
        ScheduleHint::NextCheckIn(d) | ScheduleHint::RetryAfter(d) => later(now, d),
    }
}

/// The wait after a check: `interval` lengthened or shortened by up to [`JITTER`]; `unit` is a
/// random number in `[0, 1)`.
pub fn jittered(interval: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let factor = 1.0 + JITTER * (2.0 * unit - 1.0);
    interval.min(CENTURY).mul_f64(factor)
}

/// The wait before the first check after a start: a random share (`unit` in `[0, 1)`) of
/// [`JITTER`] × `interval`, at most five minutes, so hosts booted together spread out.
pub fn initial_delay(interval: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    interval
        .min(CENTURY)
        .mul_f64(JITTER * unit)
        .min(Duration::from_secs(300))
}

/// Whether an automatic apply ends in a reboot: only with `auto_reboot`, and only for releases
/// carrying a full system image (`full` or `mixed`); component updates never reboot. The
/// reboot itself is run by the agent's apply (`updates.reboot_command`).
pub fn should_reboot(update_type: &str, policy: &Policy) -> bool {
    policy.auto_reboot && matches!(update_type, "full" | "mixed")
}

// ---------------------------------------------------------------------------------------------
// The scheduler: executes the decisions above.

/// The time source of the scheduler. The real one is [`SystemClock`]; tests inject a virtual
/// clock whose `wait_until` advances its time at once.
pub trait Clock: Send + Sync {
    /// Now, in the host's time zone (the maintenance window is local time).
    fn now(&self) -> Zoned;
    /// Returns at `until` or a bit earlier (the caller re-evaluates after each wait).
    fn wait_until(&self, until: &Zoned) -> impl Future<Output = ()> + Send;
}

/// The system clock in the host's configured time zone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Zoned {
        Zoned::now()
    }

    fn wait_until(&self, until: &Zoned) -> impl Future<Output = ()> + Send {
        let left = until.timestamp().as_millisecond() - Zoned::now().timestamp().as_millisecond();
        let wait = Duration::from_millis(u64::try_from(left).unwrap_or(0)).min(MAX_WAIT);
        tokio::time::sleep(wait)
    }
}

/// What one scheduler step did.
#[derive(Debug, Clone)]
pub enum Step {
    /// `enabled: false`: nothing will ever be done.
    Disabled,
    /// A check ran at `at`; `offered` is the available version, if any; `error` if it failed.
    Checked {
        at: Zoned,
        offered: Option<String>,
        error: Option<String>,
    },
    /// An automatic apply of `version` ran, started at `at`.
    Applied {
        at: Zoned,
        version: String,
        result: Result<ApplyReport, String>,
        rebooting: bool,
    },
    /// Waited from `from` until about `until`.
    Waited { from: Zoned, until: Zoned },
}

/// `t + d`, with `d` capped at a century (a configured interval of "1000years" must not
/// overflow the time arithmetic).
fn later(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    const CENTURY: Duration = Duration::from_secs(100 * 366 * 24 * 3600);
    let d = jiff::SignedDuration::try_from(d.min(CENTURY)).unwrap_or(jiff::SignedDuration::ZERO);
    t.checked_add(d).unwrap_or(t)
}

/// Executes the schedule decided by [`next_action`].
pub struct Scheduler<C: Clock> {
    runner: Runner,
    clock: C,
    policy: Policy,
    schedule: Schedule,
}

impl<C: Clock> Scheduler<C> {
    /// The first check comes after a short random delay (see [`initial_delay`]).
    pub fn new(runner: Runner, clock: C, policy: Policy) -> Scheduler<C> {
        let delay = initial_delay(policy.check_interval, rand::random::<f64>());
        let first = later(clock.now().timestamp(), delay);
        runner.set_next_check(Some(first));
        Scheduler {
            runner,
            clock,
            policy,
            schedule: Schedule {
                next_check: Some(first),
                ..Schedule::default()
            },
        }
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn after_interval(&self, now: &Zoned) -> jiff::Timestamp {
        let wait = jittered(self.policy.check_interval, rand::random::<f64>());
        later(now.timestamp(), wait)
    }

    /// The fleet server's answer at the last check-in, if any, decides the next check (the
    /// check-in happens inside the check and the apply: see [`crate::fleet`]).
    fn follow_fleet(&mut self) {
        if let Some(hint) = self.runner.agent().fleet().take_hint() {
            let now = self.clock.now().timestamp();
            self.schedule.next_check = Some(next_check_after(now, hint));
            self.runner.set_next_check(self.schedule.next_check);
            tracing::debug!(?hint, "next check set by the fleet server");
        }
    }

    /// Reports `deferred` once per version held back by the maintenance window.
    async fn report_deferred(&mut self, now: &Zoned) {
        let Some(version) = deferred_by_window(now, &self.schedule, &self.policy) else {
            return;
        };
        if self.schedule.deferred.as_deref() == Some(version) {
            return;
        }
        let version = version.to_owned();
        self.schedule.deferred = Some(version.clone());
        let window = self
            .policy
            .maintenance_window
            .as_ref()
            .map(|w| w.to_string());
        self.runner
            .record_event(crate::fleet::Event {
                message: window.map(|w| format!("waiting for the maintenance window {w}")),
                ..crate::fleet::event(qx_core::fleet::EventType::Deferred, Some(&version))
            })
            .await;
    }

    /// Decides and performs one action.
    pub async fn step(&mut self) -> Step {
        let now = self.clock.now();
        match next_action(&now, &self.schedule, &self.policy) {
            Action::Disabled => Step::Disabled,
            Action::Wait { until } => {
                self.report_deferred(&now).await;
                self.clock.wait_until(&until).await;
                Step::Waited { from: now, until }
            }
            Action::Check => {
                self.schedule.next_check = Some(self.after_interval(&now));
                self.runner.set_next_check(self.schedule.next_check);
                let checked = self.runner.check().await;
                self.follow_fleet();
                match checked {
                    Ok(report) => {
                        tracing::info!(version = %report.version, available = report.available, "scheduled check");
                        self.schedule.pending = report.available.then(|| Pending {
                            version: report.version.clone(),
                            update_type: report.update_type.clone(),
                        });
                        Step::Checked {
                            at: now,
                            offered: report.available.then_some(report.version),
                            error: None,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "scheduled check failed; will retry at the next interval");
                        Step::Checked {
                            at: now,
                            offered: None,
                            error: Some(e.to_string()),
                        }
                    }
                }
            }
            Action::Apply { version } => {
                let pending = self.schedule.pending.take();
                let update_type = pending.map(|p| p.update_type).unwrap_or_default();
                tracing::info!(%version, "automatic apply");
                let result = self.runner.apply(ApplyOptions::default()).await;
                self.follow_fleet();
                let mut rebooting = false;
                match &result {
                    Ok(report) if report.outcome == qx_core::status::Outcome::Success => {
                        // The agent itself runs `updates.reboot_command` once the image is in
                        // its slot and `auto_reboot` is set: one place decides, for the CLI,
                        // the API and this loop alike.
                        rebooting =
                            report.system.is_some() && should_reboot(&update_type, &self.policy);
                    }
                    // Busy: an operator's apply runs; the next check sees what is left.
                    Err(RunError::Busy) | Err(RunError::Agent(AgentError::Busy { .. })) => {}
                    Err(RunError::ShuttingDown) => {}
                    _ => self.schedule.failed_version = Some(version.clone()),
                }
                Step::Applied {
                    at: now,
                    version,
                    result: result.map_err(|e| e.to_string()),
                    rebooting,
                }
            }
        }
    }

    /// Steps until `shutdown` turns true. A step cut short by the shutdown leaves a running
    /// apply to finish on its blocking thread (see [`Runner::wait_idle`]).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow_and_update() {
                return;
            }
            let disabled = tokio::select! {
                step = self.step() => matches!(step, Step::Disabled),
                _ = wait_stop(&mut shutdown) => return,
            };
            if disabled {
                tracing::info!(
                    "updates are disabled (updates.enabled: false); the API answers status only"
                );
                wait_stop(&mut shutdown).await;
                return;
            }
        }
    }
}

/// Returns when `shutdown` turns true (never, if its sender is gone without sending it).
async fn wait_stop(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-22 is a Sunday.
    fn at(s: &str) -> Zoned {
        s.parse().expect("test time")
    }

    fn policy(window: Option<&str>) -> Policy {
        Policy {
            enabled: true,
            check_interval: Duration::from_secs(3600),
            auto_apply: true,
            auto_reboot: false,
            maintenance_window: window.map(|w| MaintenanceWindow::parse(w).expect("test window")),
        }
    }

    fn pending(version: &str) -> Schedule {
        Schedule {
            next_check: Some(at("2026-11-22T12:00[UTC]").timestamp()),
            pending: Some(Pending {
                version: version.into(),
                update_type: "component".into(),
            }),
            failed_version: None,
            deferred: None,
        }
    }

    #[test]
    fn first_decision_is_a_check() {
        let a = next_action(
            &at("2026-11-20T10:00[UTC]"),
            &Schedule::default(),
            &policy(None),
        );
        assert_eq!(a, Action::Check);
    }

    #[test]
    fn disabled_does_nothing() {
        let mut p = policy(None);
        p.enabled = false;
        let a = next_action(&at("2026-11-20T10:00[UTC]"), &pending("2.0.0"), &p);
        assert_eq!(a, Action::Disabled);
    }

    #[test]
    fn applies_at_once_without_window() {
        let a = next_action(
            &at("2026-11-20T10:00[UTC]"),
            &pending("2.0.0"),
            &policy(None),
        );
        assert_eq!(
            a,
            Action::Apply {
                version: "2.0.0".into()
            }
        );
    }

    #[test]
    fn applies_inside_window() {
        let a = next_action(
            &at("2026-11-22T02:30[UTC]"),
            &pending("2.0.0"),
            &policy(Some("Sun 02:00-04:00")),
        );
        assert_eq!(
            a,
            Action::Apply {
                version: "2.0.0".into()
            }
        );
    }

    #[test]
    fn waits_for_window_outside_it() {
        let mut s = pending("2.0.0");
        s.next_check = Some(at("2026-11-22T01:10[UTC]").timestamp());
        let a = next_action(
            &at("2026-11-22T00:30[UTC]"),
            &s,
            &policy(Some("Sun 02:00-04:00")),
        );
        assert_eq!(
            a,
            Action::Wait {
                until: at("2026-11-22T01:10[UTC]")
            }
        );
        // The window opens before the next check: wake up at the opening.
        s.next_check = Some(at("2026-11-22T02:40[UTC]").timestamp());
        let a = next_action(
            &at("2026-11-22T01:30[UTC]"),
            &s,
            &policy(Some("Sun 02:00-04:00")),
        );
        assert_eq!(
            a,
            Action::Wait {
                until: at("2026-11-22T02:00[UTC]")
            }
        );
        // Right after the window: a check when due, never an apply.
        let a = next_action(
            &at("2026-11-22T04:00[UTC]"),
            &s,
            &policy(Some("Sun 02:00-04:00")),
        );
        assert_eq!(a, Action::Check);
    }

    #[test]
    fn never_applies_without_auto_apply() {
        let mut p = policy(None);
        p.auto_apply = false;
        let s = pending("2.0.0");
        let a = next_action(&at("2026-11-22T02:30[UTC]"), &s, &p);
        assert_eq!(
            a,
            Action::Wait {
                until: at("2026-11-22T12:00[UTC]")
            }
        );
        let a = next_action(&at("2026-11-22T12:00[UTC]"), &s, &p);
        assert_eq!(a, Action::Check);
    }

    #[test]
    fn does_not_retry_a_failed_version() {
        let mut s = pending("2.0.0");
        s.failed_version = Some("2.0.0".into());
        s.next_check = Some(at("2026-11-22T03:00[UTC]").timestamp());
        let a = next_action(&at("2026-11-22T02:30[UTC]"), &s, &policy(None));
        assert_eq!(
            a,
            Action::Wait {
                until: at("2026-11-22T03:00[UTC]")
            }
        );
        s.pending = Some(Pending {
            version: "2.0.1".into(),
            update_type: "component".into(),
        });
        let a = next_action(&at("2026-11-22T02:30[UTC]"), &s, &policy(None));
        assert_eq!(
            a,
            Action::Apply {
                version: "2.0.1".into()
            }
        );
    }

    #[test]
    fn deferred_only_while_the_window_holds_an_automatic_apply_back() {
        let p = policy(Some("Sun 02:00-04:00"));
        let s = pending("2.0.0");
        assert_eq!(
            deferred_by_window(&at("2026-11-22T00:30[UTC]"), &s, &p),
            Some("2.0.0")
        );
        assert_eq!(
            deferred_by_window(&at("2026-11-22T02:30[UTC]"), &s, &p),
            None
        );
        assert_eq!(
            deferred_by_window(&at("2026-11-22T00:30[UTC]"), &s, &policy(None)),
            None
        );
        let mut manual = p.clone();
        manual.auto_apply = false;
        assert_eq!(
            deferred_by_window(&at("2026-11-22T00:30[UTC]"), &s, &manual),
            None
        );
    }

    #[test]
    fn the_fleet_server_sets_the_next_check() {
        use crate::fleet::ScheduleHint;
        let t: jiff::Timestamp = "2026-11-20T10:00Z".parse().expect("time");
        assert_eq!(
            next_check_after(t, ScheduleHint::NextCheckIn(Duration::from_secs(900))),
            "2026-11-20T10:15Z".parse().expect("time")
        );
        assert_eq!(
            next_check_after(t, ScheduleHint::RetryAfter(Duration::from_secs(30))),
            "2026-11-20T10:00:30Z".parse().expect("time")
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let i = Duration::from_secs(3600);
        assert_eq!(jittered(i, 0.0), Duration::from_secs(3240));
        assert_eq!(jittered(i, 0.5), i);
        assert!(jittered(i, 0.999_999) <= Duration::from_secs(3960));
        assert_eq!(jittered(i, f64::NAN), i);
        assert!(jittered(Duration::MAX, 0.99) > Duration::from_secs(3600));
        assert_eq!(initial_delay(i, 0.5), Duration::from_secs(180));
        assert_eq!(
            initial_delay(Duration::from_secs(86400), 0.99),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn reboot_only_for_full_images_and_only_when_set() {
        let mut p = policy(None);
        assert!(!should_reboot("full", &p));
        p.auto_reboot = true;
        assert!(should_reboot("full", &p));
        assert!(should_reboot("mixed", &p));
        assert!(!should_reboot("component", &p));
    }

    #[test]
    fn schedule_status_tells_the_window_and_the_next_check() {
        let next = at("2026-11-22T12:00[UTC]").timestamp();
        let closed = ScheduleStatus::at(
            &at("2026-11-20T10:00[UTC]"),
            &policy(Some("Sun 02:00-04:00")),
            Some(next),
        );
        assert_eq!(closed.next_check, Some(next));
        assert!(closed.auto_apply && closed.enabled);
        let w = closed.maintenance_window.expect("window");
        assert_eq!(w.window, "Sun 02:00-04:00");
        assert!(!w.open);
        assert_eq!(w.next_open, Some(at("2026-11-22T02:00[UTC]").timestamp()));
        let open = ScheduleStatus::at(
            &at("2026-11-22T02:30[UTC]"),
            &policy(Some("Sun 02:00-04:00")),
            Some(next),
        );
        let w = open.maintenance_window.expect("window");
        assert!(w.open);
        assert_eq!(w.next_open, None);
        let mut off = policy(None);
        off.enabled = false;
        let disabled = ScheduleStatus::at(&at("2026-11-22T02:30[UTC]"), &off, Some(next));
        assert_eq!(
            disabled.next_check, None,
            "a disabled daemon does not check"
        );
        assert_eq!(disabled.maintenance_window, None);
    }

    #[test]
    fn huge_intervals_do_not_overflow() {
        let t: jiff::Timestamp = "2026-11-20T10:00Z".parse().expect("time");
        let far = later(t, Duration::from_secs(u64::MAX));
        assert!(far > t);
        assert_eq!(
            later(t, Duration::from_secs(60)),
            "2026-11-20T10:01Z".parse().expect("time")
        );
    }
}
