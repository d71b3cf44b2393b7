//! The arithmetic of staged rollouts (docs/spec.md §10), one home for the server that decides
//! offers and the agent that checks them: which wave a host is in, when inside its wave it is
//! offered, and the `--waves` syntax the publish tool takes.
//!
//! - A host's **bucket** is the first 8 bytes of SHA-256(`"qx-rollout-v1"` ‖ salt ‖ host id)
//!   as a big-endian integer, modulo [`BUCKETS`]. The salt is the plan's, so every rollout
//!   draws its waves anew; `tests/vectors/rollout_buckets.json` holds published vectors.
//! - A host is in the first wave whose cumulative percent × 100 exceeds its bucket; a host
//!   labelled `ring=canary` is in the first wave whatever its bucket. Raising a wave's percent
//!   therefore never moves a host to a later wave.
//! - Inside its wave a host is offered at its position from the wave's lower bound, as a
//!   fraction of the wave's soak time: its bucket, plus where it falls inside its bucket (the
//!   next 8 bytes of the same hash over 2^64), so the wave's hosts spread evenly over the soak
//!   time and not in steps of a bucket (a canary outside the first wave's range goes first).
//! - The **speed limit** an agent keeps ([`speed_limit`]): it takes the rollout's version only
//!   from its wave's signed `not_before` on, judged at the earlier of the server's time and its
//!   own clock, so neither a server nor a host clock running ahead can make it sooner.

use std::time::Duration;

use jiff::Timestamp;

use crate::channel::{RolloutPlan, Wave};
use crate::Sha256;

/// Buckets a host can fall in: a wave's percent counts in hundredths.
pub const BUCKETS: u32 = 10_000;

/// What the bucket's hash starts with.
const DOMAIN: &str = "qx-rollout-v1";

/// The label that puts a host in the first wave.
pub const CANARY_LABEL: (&str, &str) = ("ring", "canary");

/// Where a host falls in a rollout: its bucket, and its place inside the bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// In `0..BUCKETS`.
    pub bucket: u32,
    /// In `0.0..1.0`.
    pub inside: f64,
}

/// The host's draw for the rollout with `salt`.
pub fn draw(salt: &str, host_id: &str) -> Draw {
    let mut input = Vec::with_capacity(DOMAIN.len() + salt.len() + host_id.len());
    input.extend_from_slice(DOMAIN.as_bytes());
    input.extend_from_slice(salt.as_bytes());
    input.extend_from_slice(host_id.as_bytes());
    let digest = Sha256::of(&input);
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&digest.as_bytes()[at..at + 8]);
        u64::from_be_bytes(b)
    };
    Draw {
        // The remainder is below BUCKETS, so it fits.
        bucket: (word(0) % u64::from(BUCKETS)) as u32,
        // 53 bits: exactly representable, and below 1.
        inside: (word(8) >> 11) as f64 / (1u64 << 53) as f64,
    }
}

/// The host's bucket for the rollout with `salt`, in `0..BUCKETS`.
pub fn bucket(salt: &str, host_id: &str) -> u32 {
    draw(salt, host_id).bucket
}

/// A wave's cumulative percent in buckets (hundredths of a percent), within `0..=BUCKETS`.
pub fn buckets_below(percent: f64) -> u32 {
    let hundredths = (percent * 100.0).round();
    if hundredths.is_nan() || hundredths <= 0.0 {
        0
    } else if hundredths >= f64::from(BUCKETS) {
        BUCKETS
    } else {
        hundredths as u32
    }
}

/// The index of the wave the host is in, or `None` when its bucket is past the last wave.
pub fn wave_of(waves: &[Wave], bucket: u32, canary: bool) -> Option<usize> {
    if canary && !waves.is_empty() {
        return Some(0);
    }
    waves.iter().position(|w| buckets_below(w.percent) > bucket)
}

/// When inside wave `wave` the host is offered, as a fraction of the wave's soak time in
/// `0.0..1.0`: its distance from the wave's lower bound over the wave's width (0 for a host
/// whose bucket is outside the wave: a canary).
pub fn spread(waves: &[Wave], wave: usize, host: Draw) -> f64 {
    let Some(w) = waves.get(wave) else {
        return 0.0;
    };
    let lower = match wave {
        0 => 0,
        n => waves.get(n - 1).map_or(0, |p| buckets_below(p.percent)),
    };
    let upper = buckets_below(w.percent);
    if host.bucket < lower || host.bucket >= upper {
        return 0.0;
    }
    (f64::from(host.bucket - lower) + host.inside) / f64::from(upper - lower)
}

/// Where a host stands in a rollout's signed speed limit (docs/spec.md §10): its wave opens at
/// the wave's `not_before`, and no server can make it earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeedLimit {
    /// The host's wave is open at the time judged.
    Open { wave: usize, not_before: Timestamp },
    /// The host's wave opens at `not_before`, after `at`, the time judged.
    TooEarly {
        wave: usize,
        not_before: Timestamp,
        at: Timestamp,
    },
    /// The host's bucket is past the last wave: the rollout never reaches it.
    NeverEligible { bucket: u32 },
}

/// The host's wave in `plan` and the time it opens; `None` when its bucket is past the last
/// wave. `canary` must come from the host's own labels, never from a server.
pub fn earliest(plan: &RolloutPlan, host_id: &str, canary: bool) -> Option<(usize, Timestamp)> {
    let bucket = draw(&plan.salt, host_id).bucket;
    let wave = wave_of(&plan.waves, bucket, canary)?;
    plan.waves.get(wave).map(|w| (wave, w.not_before))
}

/// The speed limit for `host_id` at the earlier of the server's time and the host's own
/// clock: neither clock alone can make the host take the version sooner.
pub fn speed_limit(
    plan: &RolloutPlan,
    host_id: &str,
    canary: bool,
    server_time: Timestamp,
    host_time: Timestamp,
) -> SpeedLimit {
    let Some((wave, not_before)) = earliest(plan, host_id, canary) else {
        return SpeedLimit::NeverEligible {
            bucket: draw(&plan.salt, host_id).bucket,
        };
    };
    let at = server_time.min(host_time);
    if at < not_before {
        SpeedLimit::TooEarly {
            wave,
            not_before,
            at,
        }
    } else {
        SpeedLimit::Open { wave, not_before }
    }
}

/// One wave as the publish tool's `--waves` names it: `10%:4h` (its soak time before the
/// next wave may open), the last one `100%` (no soak).
#[derive(Debug, Clone, PartialEq)]
pub struct WaveSpec {
    /// Cumulative percent of the hosts.
    pub percent: f64,
    /// How long the wave soaks before the next may open; `None` for the last.
    pub soak: Option<Duration>,
}

/// Why a `--waves` text was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WavesError {
    #[error("--waves is empty; write e.g. 1%:1h,10%:4h,50%:12h,100%")]
    Empty,
    #[error("--waves {0:?}: a wave is PERCENT%:SOAK (e.g. 10%:4h), the last PERCENT% (e.g. 100%)")]
    Syntax(String),
    #[error(
        "--waves {0:?}: the percent must be above 0 and at most 100, with at most two decimals"
    )]
    Percent(String),
    #[error("--waves {0:?}: {1}")]
    Soak(String, String),
    #[error("--waves: the percents must grow from wave to wave ({0}% after {1}%)")]
    NotGrowing(String, String),
    #[error(
        "--waves: every wave but the last needs its soak time (PERCENT%:SOAK), and the last none"
    )]
    SoakPlacement,
    #[error("--waves: the last wave must reach 100% (it is {0}%)")]
    NotComplete(String),
}

/// Parses `1%:1h,10%:4h,50%:12h,100%`: percents growing to 100, a soak time (at least a
/// minute) after every wave but the last.
pub fn parse_waves(text: &str) -> Result<Vec<WaveSpec>, WavesError> {
    if text.trim().is_empty() {
        return Err(WavesError::Empty);
    }
    let waves = text
        .split(',')
        .map(|part| parse_wave(part.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    for pair in waves.windows(2) {
        if pair[1].percent <= pair[0].percent {
            return Err(WavesError::NotGrowing(
                pair[1].percent.to_string(),
                pair[0].percent.to_string(),
            ));
        }
    }
    let (last, rest) = waves.split_last().ok_or(WavesError::Empty)?;
    if last.soak.is_some() || rest.iter().any(|w| w.soak.is_none()) {
        return Err(WavesError::SoakPlacement);
    }
    if buckets_below(last.percent) != BUCKETS {
        return Err(WavesError::NotComplete(last.percent.to_string()));
    }
    Ok(waves)
}

fn parse_wave(part: &str) -> Result<WaveSpec, WavesError> {
    let (percent, soak) = match part.split_once(':') {
        Some((p, s)) => (p.trim(), Some(s.trim())),
        None => (part, None),
    };
    let number = percent
        .strip_suffix('%')
        .ok_or_else(|| WavesError::Syntax(part.to_owned()))?;
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| WavesError::Syntax(part.to_owned()))?;
    let exact = (value * 100.0).round() / 100.0 == value;
    if !(value > 0.0 && value <= 100.0 && exact) {
        return Err(WavesError::Percent(part.to_owned()));
    }
    let soak = soak.map(|s| parse_soak(part, s)).transpose()?;
    Ok(WaveSpec {
        percent: value,
        soak,
    })
}

fn parse_soak(part: &str, text: &str) -> Result<Duration, WavesError> {
    let d = humantime::parse_duration(text)
        .map_err(|e| WavesError::Soak(part.to_owned(), format!("soak time {text:?}: {e}")))?;
    if d < Duration::from_secs(60) {
        return Err(WavesError::Soak(
            part.to_owned(),
            "a soak time is at least 1m".to_owned(),
        ));
    }
    Ok(d)
}

/// The plan's waves for a rollout started at `start`: the first opens at `start`, each next
/// one after the soak times of those before it.
pub fn schedule(specs: &[WaveSpec], start: jiff::Timestamp) -> Result<Vec<Wave>, jiff::Error> {
    let mut at = start;
    let mut waves = Vec::with_capacity(specs.len());
    for spec in specs {
        waves.push(Wave {
            percent: spec.percent,
            not_before: at,
        });
        if let Some(soak) = spec.soak {
            at = at.checked_add(jiff::SignedDuration::try_from(soak)?)?;
        }
    }
    Ok(waves)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waves(percents: &[f64]) -> Vec<Wave> {
        percents
            .iter()
            .map(|p| Wave {
                percent: *p,
                not_before: jiff::Timestamp::UNIX_EPOCH,
            })
            .collect()
    }

    #[test]
    fn a_host_is_in_the_first_wave_whose_percent_exceeds_its_bucket() {
        let w = waves(&[1.0, 10.0, 50.0, 100.0]);
        assert_eq!(wave_of(&w, 0, false), Some(0));
        assert_eq!(wave_of(&w, 99, false), Some(0));
        assert_eq!(wave_of(&w, 100, false), Some(1));
        assert_eq!(wave_of(&w, 999, false), Some(1));
        assert_eq!(wave_of(&w, 4999, false), Some(2));
        assert_eq!(wave_of(&w, 9999, false), Some(3));
        assert_eq!(wave_of(&waves(&[0.5, 50.0]), 7000, false), None);
        assert_eq!(wave_of(&w, 9999, true), Some(0), "a canary goes first");
        assert_eq!(wave_of(&[], 0, true), None);
        assert_eq!(buckets_below(0.01), 1);
        assert_eq!(buckets_below(12.345), 1235);
    }

    #[test]
    fn spread_runs_from_the_waves_lower_bound() {
        let w = waves(&[1.0, 10.0, 100.0]);
        let at = |bucket, inside| Draw { bucket, inside };
        assert_eq!(spread(&w, 0, at(0, 0.0)), 0.0);
        assert_eq!(spread(&w, 0, at(50, 0.0)), 0.5);
        assert_eq!(spread(&w, 0, at(50, 0.5)), 0.505);
        assert_eq!(
            spread(&w, 1, at(100, 0.0)),
            0.0,
            "from the lower bound, not 0"
        );
        assert_eq!(spread(&w, 1, at(550, 0.0)), 0.5);
        assert_eq!(
            spread(&w, 0, at(5000, 0.3)),
            0.0,
            "a canary outside the range"
        );
        assert_eq!(spread(&w, 7, at(5, 0.3)), 0.0);
        let d = draw("salt", "host");
        assert!(
            d.bucket < BUCKETS && (0.0..1.0).contains(&d.inside),
            "{d:?}"
        );
    }

    fn plan(percents: &[f64], start: &str) -> RolloutPlan {
        let start: Timestamp = start.parse().expect("time");
        RolloutPlan {
            id: "r-1".into(),
            version: crate::Version::parse("1.1.0").expect("version"),
            manifest_sha256: Sha256::of(b"m"),
            salt: "salt".into(),
            waves: percents
                .iter()
                .enumerate()
                .map(|(i, p)| Wave {
                    percent: *p,
                    not_before: start + jiff::SignedDuration::from_hours(i as i64),
                })
                .collect(),
            policy: Default::default(),
        }
    }

    /// A host id whose bucket for `salt` is at least `min`.
    fn host_at_least(salt: &str, min: u32) -> String {
        (0..)
            .map(|i| format!("host-{i}"))
            .find(|h| bucket(salt, h) >= min)
            .expect("some host")
    }

    #[test]
    fn earliest_is_the_hosts_waves_not_before_and_a_canary_goes_first() {
        let p = plan(&[1.0, 50.0, 100.0], "2026-01-01T00:00:00Z");
        let late = host_at_least("salt", 5000);
        let (wave, at) = earliest(&p, &late, false).expect("eligible");
        assert_eq!(wave, 2);
        assert_eq!(at.to_string(), "2026-01-01T02:00:00Z");
        assert_eq!(earliest(&p, &late, true).expect("canary").0, 0);
        let short = plan(&[1.0, 50.0], "2026-01-01T00:00:00Z");
        assert_eq!(earliest(&short, &late, false), None);
        assert_eq!(
            speed_limit(&short, &late, false, Timestamp::MAX, Timestamp::MAX),
            SpeedLimit::NeverEligible {
                bucket: bucket("salt", &late)
            }
        );
    }

    #[test]
    fn the_speed_limit_judges_by_the_earlier_of_both_clocks() {
        let p = plan(&[100.0], "2026-01-01T00:00:00Z");
        let t = |s: &str| s.parse::<Timestamp>().expect("time");
        let (before, after) = (t("2025-12-31T23:00:00Z"), t("2026-01-01T00:00:00Z"));
        let open = SpeedLimit::Open {
            wave: 0,
            not_before: after,
        };
        assert_eq!(
            speed_limit(&p, "h", false, after, after),
            open,
            "at not_before"
        );
        let early = SpeedLimit::TooEarly {
            wave: 0,
            not_before: after,
            at: before,
        };
        assert_eq!(
            speed_limit(&p, "h", false, before, after),
            early,
            "server earlier"
        );
        assert_eq!(
            speed_limit(&p, "h", false, after, before),
            early,
            "host earlier"
        );
    }

    #[test]
    fn waves_parse_and_schedule() {
        let specs = parse_waves("1%:1h, 10%:4h,50%:12h,100%").expect("parses");
        let hour = Duration::from_secs(3600);
        assert_eq!(specs.len(), 4);
        assert_eq!(specs[1].soak, Some(hour * 4));
        assert_eq!(specs[3].soak, None);
        let start: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let plan = schedule(&specs, start).expect("schedule");
        let at: Vec<String> = plan.iter().map(|w| w.not_before.to_string()).collect();
        assert_eq!(
            at,
            [
                "2026-01-01T00:00:00Z",
                "2026-01-01T01:00:00Z",
                "2026-01-01T05:00:00Z",
                "2026-01-01T17:00:00Z"
            ]
        );
        assert_eq!(parse_waves("0.5%:30m,100%").expect("half")[0].percent, 0.5);
        assert_eq!(parse_waves("100%").expect("one wave").len(), 1);
    }

    #[test]
    fn bad_waves_are_refused_saying_why() {
        use WavesError::*;
        type Expect = fn(&WavesError) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("", |e| matches!(e, Empty)),
            ("10:1h,100%", |e| matches!(e, Syntax(_))),
            ("ten%:1h,100%", |e| matches!(e, Syntax(_))),
            ("0%:1h,100%", |e| matches!(e, Percent(_))),
            ("101%", |e| matches!(e, Percent(_))),
            ("1.234%:1h,100%", |e| matches!(e, Percent(_))),
            ("1%:soon,100%", |e| matches!(e, Soak(..))),
            ("1%:30s,100%", |e| matches!(e, Soak(..))),
            ("10%:1h,5%:1h,100%", |e| matches!(e, NotGrowing(..))),
            ("10%:1h,10%:1h,100%", |e| matches!(e, NotGrowing(..))),
            ("10%,100%", |e| matches!(e, SoakPlacement)),
            ("10%:1h,100%:1h", |e| matches!(e, SoakPlacement)),
            ("10%:1h,50%", |e| {
                matches!(e, SoakPlacement | NotComplete(_))
            }),
            ("10%:1h,50%:1h", |e| matches!(e, SoakPlacement)),
        ];
        for (text, expected) in cases {
            let err = parse_waves(text).expect_err(text);
            assert!(expected(&err), "{text:?}: {err}");
            assert!(err.to_string().contains("--waves"), "{err}");
        }
        assert_eq!(
            parse_waves("10%:1h,50%").expect_err("short"),
            NotComplete("50".into())
        );
    }
}
