//! The publish tool's rollout health flags (docs/spec.md §10), parsed into the signed plan's
//! [`RolloutPolicy`]: `--gate 95%`, `--max-failures 5`, `--max-failure-rate 5%`,
//! `--min-sample 10`, `--deadline download=2h,install=1h,confirm=30m`. A flag not given keeps
//! the policy's default.

use std::time::Duration;

use crate::channel::{RolloutPolicy, StageDeadlines};

/// The flags as typed; `None`: not given.
#[derive(Debug, Clone, Default)]
pub struct PolicyFlags<'a> {
    pub gate: Option<&'a str>,
    pub max_failures: Option<u32>,
    pub max_failure_rate: Option<&'a str>,
    pub min_sample: Option<u32>,
    pub deadline: Option<&'a str>,
}

impl PolicyFlags<'_> {
    /// True when no flag was given.
    pub fn is_empty(&self) -> bool {
        self.gate.is_none()
            && self.max_failures.is_none()
            && self.max_failure_rate.is_none()
            && self.min_sample.is_none()
            && self.deadline.is_none()
    }
}

/// Why a flag was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("{flag} {value:?}: a percent from 0 to 100 (e.g. 95% or 95)")]
    Percent { flag: &'static str, value: String },
    #[error("--deadline {0:?}: write STAGE=DURATION[,…] with the stages download, install, confirm (e.g. download=2h,install=1h,confirm=30m)")]
    DeadlineSyntax(String),
    #[error("--deadline {part:?}: {message}")]
    Deadline { part: String, message: String },
}

/// The policy the flags describe, the defaults for what they leave out.
pub fn policy(flags: &PolicyFlags<'_>) -> Result<RolloutPolicy, PolicyError> {
    let mut p = RolloutPolicy::default();
    if let Some(g) = flags.gate {
        p.gate = percent("--gate", g)?;
    }
    if let Some(r) = flags.max_failure_rate {
        p.max_failure_rate = percent("--max-failure-rate", r)?;
    }
    if let Some(n) = flags.max_failures {
        p.max_failures = n;
    }
    if let Some(n) = flags.min_sample {
        p.min_sample = n;
    }
    if let Some(d) = flags.deadline {
        p.deadlines = deadlines(d, p.deadlines)?;
    }
    Ok(p)
}

/// `95%` or `95` (two decimals at most), from 0 to 100.
fn percent(flag: &'static str, text: &str) -> Result<f64, PolicyError> {
    let bad = || PolicyError::Percent {
        flag,
        value: text.to_owned(),
    };
    let t = text.trim();
    let number = t.strip_suffix('%').unwrap_or(t).trim();
    let value: f64 = number.parse().map_err(|_| bad())?;
    let exact = (value * 100.0).round() / 100.0 == value;
    if !(0.0..=100.0).contains(&value) || !exact {
        return Err(bad());
    }
    Ok(value)
}

/// `download=2h,install=1h,confirm=30m`, any of them, over `base`.
fn deadlines(text: &str, base: StageDeadlines) -> Result<StageDeadlines, PolicyError> {
    let mut d = base;
    if text.trim().is_empty() {
        return Err(PolicyError::DeadlineSyntax(text.to_owned()));
    }
    for part in text.split(',').map(str::trim) {
        let (stage, value) = part
            .split_once('=')
            .ok_or_else(|| PolicyError::DeadlineSyntax(part.to_owned()))?;
        let secs = stage_duration(part, value.trim())?.as_secs();
        let slot = match stage.trim() {
            "download" => &mut d.download_s,
            "install" => &mut d.install_s,
            "confirm" => &mut d.confirm_s,
            other => {
                return Err(PolicyError::Deadline {
                    part: part.to_owned(),
                    message: format!(
                        "no stage {other:?}; the stages are download, install, confirm"
                    ),
                })
            }
        };
        *slot = secs;
    }
    Ok(d)
}

fn stage_duration(part: &str, text: &str) -> Result<Duration, PolicyError> {
    let d = humantime::parse_duration(text).map_err(|e| PolicyError::Deadline {
        part: part.to_owned(),
        message: format!("{text:?} is not a duration: {e}"),
    })?;
    if d < Duration::from_secs(1) {
        return Err(PolicyError::Deadline {
            part: part.to_owned(),
            message: "a deadline is at least 1s".to_owned(),
        });
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flags_keep_the_defaults() {
        assert_eq!(
            policy(&PolicyFlags::default()),
            Ok(RolloutPolicy::default())
        );
    }

    #[test]
    fn every_flag_lands_in_the_policy() {
        let p = policy(&PolicyFlags {
            gate: Some("90%"),
            max_failures: Some(3),
            max_failure_rate: Some("2.5"),
            min_sample: Some(20),
            deadline: Some("download=10m, confirm=1h"),
        })
        .expect("valid");
        assert_eq!(p.gate, 90.0);
        assert_eq!(p.max_failures, 3);
        assert_eq!(p.max_failure_rate, 2.5);
        assert_eq!(p.min_sample, 20);
        assert_eq!(p.deadlines.download_s, 600);
        assert_eq!(p.deadlines.install_s, 3600, "not given: the default");
        assert_eq!(p.deadlines.confirm_s, 3600);
    }

    #[test]
    fn bad_flags_are_refused_with_the_reason() {
        let gate = |g| {
            policy(&PolicyFlags {
                gate: Some(g),
                ..Default::default()
            })
        };
        for bad in ["101%", "-1", "abc", "95.555%", ""] {
            assert!(
                matches!(gate(bad), Err(PolicyError::Percent { flag: "--gate", .. })),
                "{bad}"
            );
        }
        let deadline = |d| {
            policy(&PolicyFlags {
                deadline: Some(d),
                ..Default::default()
            })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        assert!(deadline("download").contains("STAGE=DURATION"));
        assert!(deadline("").contains("STAGE=DURATION"));
        assert!(deadline("boot=1h").contains("no stage \"boot\""));
        assert!(deadline("install=soon").contains("not a duration"));
        assert!(deadline("confirm=0s").contains("at least 1s"));
    }
}
