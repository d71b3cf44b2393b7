//! The rules of a rollout as pure functions (docs/spec.md §10): how a host's events move its
//! stage, when a rollout halts, when the next wave opens, when a host's turn comes. The
//! engine ([`super::engine`]), the check-in ([`super::offer`]) and the event path of the store
//! call these; they read no clock and no database.

use qx_core::channel::{RolloutPlan, RolloutPolicy, Wave};
use qx_core::fleet::{Event, EventType, Halt, RolloutStage};
use qx_core::rollout::{spread, Draw};

use crate::fleet::clock::rfc3339;
use crate::fleet::store::{Millis, StageCount};

/// The stage an event moves a host to (`None`: it moves nothing).
pub fn stage_of_event(kind: EventType) -> Option<RolloutStage> {
    use EventType::*;
    Some(match kind {
        DownloadStarted | DownloadDone => RolloutStage::Downloading,
        InstallStarted => RolloutStage::Installing,
        Installed | Reboot => RolloutStage::Confirming,
        Confirmed => RolloutStage::Confirmed,
        Failed => RolloutStage::Failed,
        RolledBack => RolloutStage::RolledBack,
        Cancelled => RolloutStage::Cancelled,
        Reverted => RolloutStage::Reverted,
        Offered | Deferred | Dropped => return None,
    })
}

/// The order of stages: offered, downloading, installing, confirming, then the final ones.
fn rank(stage: RolloutStage) -> u8 {
    match stage {
        RolloutStage::Offered => 0,
        RolloutStage::Downloading => 1,
        RolloutStage::Installing => 2,
        RolloutStage::Confirming => 3,
        _ => 4,
    }
}

/// Whether a host in `from` moves to `to`: forward only (a late event of an earlier stage
/// changes nothing); out of a final stage only to `reverted` (a revert after the version
/// took), or from `timed_out` to another final stage (a silent host that reports after all).
pub fn moves(from: RolloutStage, to: RolloutStage) -> bool {
    if from == to {
        return false;
    }
    match rank(from) {
        4 => to == RolloutStage::Reverted || (from == RolloutStage::TimedOut && rank(to) == 4),
        r => rank(to) >= r,
    }
}

/// The stage deadlines of a rollout, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub download: Millis,
    pub install: Millis,
    pub confirm: Millis,
}

/// A host's stage, its deadline and its failure message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub stage: RolloutStage,
    pub deadline: Option<Millis>,
    pub message: Option<String>,
}

/// Where one event moves a host. A deadline is set on entering a stage (downloading:
/// download; installing: install; confirming: confirm); `download_done` starts the install
/// window while the stage stays `downloading` (the signed deadlines count install time from
/// the end of the download). Final stages have no deadline; a failure keeps its message.
pub fn next_position(at: &Position, e: &Event, d: Deadlines, now: Millis) -> Position {
    let Some(to) = stage_of_event(e.kind) else {
        return at.clone();
    };
    if e.kind == EventType::DownloadDone && at.stage == RolloutStage::Downloading {
        return Position {
            deadline: Some(now.saturating_add(d.install)),
            ..at.clone()
        };
    }
    if !moves(at.stage, to) {
        return at.clone();
    }
    let deadline = match (to, e.kind) {
        (RolloutStage::Downloading, EventType::DownloadDone) => Some(d.install),
        (RolloutStage::Downloading, _) => Some(d.download),
        (RolloutStage::Installing, _) => Some(d.install),
        (RolloutStage::Confirming, _) => Some(d.confirm),
        _ => None,
    };
    let message = match to {
        RolloutStage::Failed | RolloutStage::RolledBack => e.message.clone(),
        _ => at.message.clone(),
    };
    Position {
        stage: to,
        deadline: deadline.map(|ms| now.saturating_add(ms)),
        message,
    }
}

/// One wave's hosts by what matters to the gates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Every host offered the version (any stage).
    pub offered: u64,
    pub in_progress: u64,
    pub confirmed: u64,
    /// Failed, rolled back or timed out.
    pub failures: u64,
}

impl Tally {
    /// Confirmed or failed: the hosts that reported an outcome.
    pub fn finished(&self) -> u64 {
        self.confirmed + self.failures
    }

    fn add(&mut self, stage: RolloutStage, hosts: u64) {
        self.offered += hosts;
        if stage.in_progress() {
            self.in_progress += hosts;
        } else if stage == RolloutStage::Confirmed {
            self.confirmed += hosts;
        } else if stage.is_failure() {
            self.failures += hosts;
        }
    }

    /// The confirmed share of the finished hosts, in percent (none finished: `None`).
    pub fn confirmed_share(&self) -> Option<f64> {
        match self.finished() {
            0 => None,
            n => Some(self.confirmed as f64 * 100.0 / n as f64),
        }
    }
}

/// The tallies of `waves` waves from the store's counts, and their sum.
pub fn tally(counts: &[StageCount], waves: usize) -> (Vec<Tally>, Tally) {
    let mut per = vec![Tally::default(); waves];
    let mut total = Tally::default();
    for c in counts {
        if let Some(t) = per.get_mut(c.wave as usize) {
            t.add(c.stage, c.hosts);
        }
        total.add(c.stage, c.hosts);
    }
    (per, total)
}

/// The halt a rollout's counts call for, if any: failures and finished hosts since the last
/// resume (`acknowledged` subtracted) against the plan's cap and rate.
pub fn judge_halt(
    policy: &RolloutPolicy,
    total: &Tally,
    acknowledged: (u64, u64),
    now: Millis,
) -> Option<Halt> {
    let failures = total.failures.saturating_sub(acknowledged.0);
    let finished = total.finished().saturating_sub(acknowledged.1);
    let halt = |rule: &str, reason: String| Halt {
        rule: rule.to_owned(),
        reason,
        failures,
        finished,
        at: rfc3339(now),
    };
    if failures > 0 && failures >= u64::from(policy.max_failures) {
        return Some(halt(
            "max_failures",
            format!(
                "{failures} hosts failed (the cap is {}); {finished} finished",
                policy.max_failures
            ),
        ));
    }
    let rate = failures as f64 * 100.0 / finished.max(1) as f64;
    if finished >= u64::from(policy.min_sample) && finished > 0 && rate > policy.max_failure_rate {
        return Some(halt(
            "max_failure_rate",
            format!(
                "{failures} of {finished} finished hosts failed ({rate:.1} %, the limit is {} %)",
                policy.max_failure_rate
            ),
        ));
    }
    None
}

/// Milliseconds of a timestamp.
pub fn millis(t: jiff::Timestamp) -> Millis {
    t.as_millisecond()
}

/// A wave's soak time: the time between its signed `not_before` and the next wave's (the
/// last wave: none, its hosts are offered as soon as it opens).
pub fn soak(waves: &[Wave], wave: usize) -> Millis {
    match (waves.get(wave), waves.get(wave + 1)) {
        (Some(w), Some(next)) => (millis(next.not_before) - millis(w.not_before)).max(0),
        _ => 0,
    }
}

/// Whether the next wave to open (index `opened.len()`) may open at `now`: its signed time
/// passed; for a wave after the first, the previous wave soaked for its soak time since it
/// opened, and its confirmed share of finished hosts reaches the gate (a wave that offered
/// nobody passes; one whose offered hosts have not finished yet does not).
pub fn may_open(plan: &RolloutPlan, opened: &[Millis], tallies: &[Tally], now: Millis) -> bool {
    let next = opened.len();
    let Some(wave) = plan.waves.get(next) else {
        return false;
    };
    if now < millis(wave.not_before) {
        return false;
    }
    let Some(prev_opened) = next.checked_sub(1).and_then(|p| opened.get(p)) else {
        return true;
    };
    if now < prev_opened.saturating_add(soak(&plan.waves, next - 1)) {
        return false;
    }
    gate_passes(
        &plan.policy,
        &tallies.get(next - 1).copied().unwrap_or_default(),
    )
}

/// Whether a wave's outcome lets the next one open.
pub fn gate_passes(policy: &RolloutPolicy, t: &Tally) -> bool {
    if t.offered == 0 {
        return true;
    }
    t.confirmed_share().is_some_and(|s| s >= policy.gate)
}

/// When a host of wave `wave` is offered: the wave's opening plus its place inside the wave
/// times the wave's soak time, and never before the wave's signed `not_before`; `None` while
/// the wave is not open.
pub fn offer_at(plan: &RolloutPlan, opened: &[Millis], wave: usize, draw: Draw) -> Option<Millis> {
    let at = *opened.get(wave)?;
    let inside = spread(&plan.waves, wave, draw) * soak(&plan.waves, wave) as f64;
    let signed = plan.waves.get(wave).map_or(at, |w| millis(w.not_before));
    Some(at.saturating_add(inside as Millis).max(signed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qx_core::channel::StageDeadlines;

    fn ev(kind: EventType) -> Event {
        Event {
            seq: 1,
            kind,
            time: String::new(),
            version: Some("1.1.0".into()),
            component: None,
            stage: None,
            exit_code: None,
            message: Some("boom".into()),
            count: None,
        }
    }

    const D: Deadlines = Deadlines {
        download: 100,
        install: 200,
        confirm: 300,
    };

    fn pos(stage: RolloutStage) -> Position {
        Position {
            stage,
            deadline: None,
            message: None,
        }
    }

    #[test]
    fn events_move_stages_forward_with_deadlines() {
        let p = next_position(
            &pos(RolloutStage::Offered),
            &ev(EventType::DownloadStarted),
            D,
            10,
        );
        assert_eq!(
            (p.stage, p.deadline),
            (RolloutStage::Downloading, Some(110))
        );
        let p = next_position(&p, &ev(EventType::DownloadDone), D, 20);
        assert_eq!(
            (p.stage, p.deadline),
            (RolloutStage::Downloading, Some(220))
        );
        let p = next_position(&p, &ev(EventType::Reboot), D, 30);
        assert_eq!((p.stage, p.deadline), (RolloutStage::Confirming, Some(330)));
        let back = next_position(&p, &ev(EventType::DownloadStarted), D, 40);
        assert_eq!(back, p, "a late event of an earlier stage changes nothing");
        let f = next_position(&p, &ev(EventType::RolledBack), D, 50);
        assert_eq!((f.stage, f.deadline), (RolloutStage::RolledBack, None));
        assert_eq!(f.message.as_deref(), Some("boom"));
        let c = next_position(&pos(RolloutStage::Confirmed), &ev(EventType::Failed), D, 60);
        assert_eq!(c.stage, RolloutStage::Confirmed, "final stays final");
        let r = next_position(
            &pos(RolloutStage::Confirmed),
            &ev(EventType::Reverted),
            D,
            60,
        );
        assert_eq!(r.stage, RolloutStage::Reverted);
        let t = next_position(
            &pos(RolloutStage::TimedOut),
            &ev(EventType::Confirmed),
            D,
            60,
        );
        assert_eq!(t.stage, RolloutStage::Confirmed);
    }

    fn tally_of(confirmed: u64, failures: u64) -> Tally {
        Tally {
            offered: confirmed + failures,
            in_progress: 0,
            confirmed,
            failures,
        }
    }

    #[test]
    fn halts_on_the_cap_and_on_the_rate_after_the_sample() {
        let p = RolloutPolicy::default();
        assert!(judge_halt(&p, &tally_of(100, 4), (0, 0), 0).is_none());
        let h = judge_halt(&p, &tally_of(100, 5), (0, 0), 0).expect("test value");
        assert_eq!(
            (h.rule.as_str(), h.failures, h.finished),
            ("max_failures", 5, 105)
        );
        let p = RolloutPolicy {
            max_failures: 100,
            ..RolloutPolicy::default()
        };
        assert!(
            judge_halt(&p, &tally_of(5, 4), (0, 0), 0).is_none(),
            "below the sample"
        );
        let h = judge_halt(&p, &tally_of(6, 4), (0, 0), 0).expect("test value");
        assert_eq!(h.rule, "max_failure_rate");
        assert!(
            judge_halt(&p, &tally_of(6, 4), (4, 10), 0).is_none(),
            "acknowledged"
        );
    }

    fn plan(percents: &[(f64, i64)]) -> RolloutPlan {
        RolloutPlan {
            id: "r".into(),
            version: qx_core::Version::parse("1.1.0").expect("test value"),
            manifest_sha256: qx_core::Sha256::of(b"m"),
            salt: "s".into(),
            waves: percents
                .iter()
                .map(|(p, at)| Wave {
                    percent: *p,
                    not_before: jiff::Timestamp::from_millisecond(*at).expect("test value"),
                })
                .collect(),
            policy: RolloutPolicy {
                deadlines: StageDeadlines::default(),
                ..RolloutPolicy::default()
            },
        }
    }

    #[test]
    fn waves_open_on_time_soak_and_gate() {
        let p = plan(&[(10.0, 1000), (100.0, 5000)]);
        assert!(!may_open(&p, &[], &[], 999));
        assert!(may_open(&p, &[], &[], 1000));
        let good = [tally_of(19, 1)];
        assert!(
            !may_open(&p, &[2000], &good, 5000),
            "soaked 4000 ms from 2000"
        );
        assert!(may_open(&p, &[2000], &good, 6000));
        assert!(
            !may_open(&p, &[2000], &[tally_of(18, 2)], 6000),
            "90 % < 95 %"
        );
        assert!(
            may_open(&p, &[2000], &[Tally::default()], 6000),
            "nobody offered"
        );
        let waiting = Tally {
            offered: 3,
            in_progress: 3,
            ..Tally::default()
        };
        assert!(!may_open(&p, &[2000], &[waiting], 6000), "nobody finished");
        assert!(!may_open(&p, &[2000, 6000], &good, 9000), "no wave left");
    }

    #[test]
    fn offers_spread_over_the_soak_and_never_before_not_before() {
        let p = plan(&[(50.0, 1000), (100.0, 11_000)]);
        let first = Draw {
            bucket: 0,
            inside: 0.0,
        };
        let mid = Draw {
            bucket: 2500,
            inside: 0.0,
        };
        assert_eq!(offer_at(&p, &[], 0, mid), None);
        assert_eq!(offer_at(&p, &[1000], 0, first), Some(1000));
        assert_eq!(offer_at(&p, &[1000], 0, mid), Some(6000));
        assert_eq!(offer_at(&p, &[3000], 0, mid), Some(8000));
        let late = Draw {
            bucket: 7500,
            inside: 0.0,
        };
        assert_eq!(
            offer_at(&p, &[1000, 500], 1, late),
            Some(11_000),
            "signed time"
        );
    }
}
