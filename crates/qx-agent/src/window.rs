//! The daemon's scheduling decision, as pure functions of the time and what the daemon knows:
//! when to check, when an automatic apply may run (inside the maintenance window of
//! [`crate::config::MaintenanceWindow`]), when to reboot. The daemon loop (`daemon`) only
//! executes what [`next_action`] returns, so the policy is tested without clocks or sleeps.

use std::time::Duration;

use jiff::{Timestamp, Zoned};

use crate::config::MaintenanceWindow;
use crate::Config;

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

/// The next moment at or after `now` at which `window` is open: `now` itself when it is open.
/// `None` when it does not open within eight days (a window without days).
pub fn next_open(window: &MaintenanceWindow, now: &Zoned) -> Option<Zoned> {
    if window.contains(now.datetime()) {
        return Some(now.clone());
    }
    let tz = now.time_zone().clone();
    let mut date = now.date();
    for _ in 0..8 {
        if window.days.contains(&date.weekday()) {
            if let Ok(open) = date.to_datetime(window.start).to_zoned(tz.clone()) {
                if open > *now {
                    return Some(open);
                }
            }
        }
        date = date.tomorrow().ok()?;
    }
    None
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
    fn next_open_finds_the_coming_opening() {
        let w = MaintenanceWindow::parse("Sun 02:00-04:00").expect("window");
        assert_eq!(
            next_open(&w, &at("2026-11-20T10:00[UTC]")),
            Some(at("2026-11-22T02:00[UTC]"))
        );
        let inside = at("2026-11-22T03:00[UTC]");
        assert_eq!(next_open(&w, &inside), Some(inside.clone()));
        assert_eq!(
            next_open(&w, &at("2026-11-22T05:00[UTC]")),
            Some(at("2026-11-29T02:00[UTC]"))
        );
        let night = MaintenanceWindow::parse("Sat 23:00-01:00").expect("window");
        assert_eq!(
            next_open(&night, &at("2026-11-22T00:30[UTC]")),
            Some(at("2026-11-22T00:30[UTC]"))
        );
    }
}
