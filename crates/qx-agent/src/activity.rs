//! What the agent did last, kept across restarts in `/data/updates/activity.json`: the last
//! check and its result, the last apply and its result (also one that failed before it
//! changed anything, which the history does not record), and the bytes downloaded in all.
//! Written atomically (`qx_core::fs::write_atomic`) after each check and apply, by whichever
//! process ran it; read into the status (host API, page) and the metrics ([`crate::metrics`]).

use std::path::Path;

use jiff::Timestamp;
use qx_core::history::{Outcome, StartedBy};
use serde::{Deserialize, Serialize};

use crate::AgentError;

/// The contents of `activity.json`. Unknown or missing fields read as absent, a missing or
/// unreadable file as no activity yet (the file is only a record; nothing depends on it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    #[serde(default)]
    pub last_check: Option<LastCheck>,
    #[serde(default)]
    pub last_apply: Option<LastApply>,
    /// Bytes received for artifacts, system images, deltas and bundles, over the life of the
    /// host (a counter: it only grows).
    #[serde(default)]
    pub downloaded_bytes: u64,
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckResult {
    /// The host runs what the channel offers.
    UpToDate,
    /// An apply would change something.
    Available,
    /// The check failed (server unreachable, release refused, ...).
    Failed,
}

impl CheckResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckResult::UpToDate => "up_to_date",
            CheckResult::Available => "available",
            CheckResult::Failed => "failed",
        }
    }
}

/// The last check: when it ended, its result, the version the channel offered, the error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCheck {
    pub time: Timestamp,
    pub result: CheckResult,
    /// The offered version (absent when the check failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The `qx-update` exit code of the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
}

/// The last apply: when it ended, the release it was about (when it got that far), its
/// result, the error and who started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastApply {
    pub time: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// The release applied; absent when the apply failed before it knew (a refused check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `success` (also when there was nothing to change), `failed`, `rolled_back`, `reverted`.
    pub result: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The `qx-update` exit code of the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<StartedBy>,
}

impl LastCheck {
    /// The record of a check that ended with `result`.
    pub fn of(result: &Result<crate::CheckReport, AgentError>) -> LastCheck {
        let time = Timestamp::now();
        match result {
            Ok(r) => LastCheck {
                time,
                result: if r.available {
                    CheckResult::Available
                } else {
                    CheckResult::UpToDate
                },
                version: Some(r.version.clone()),
                error: None,
                code: None,
            },
            Err(e) => LastCheck {
                time,
                result: CheckResult::Failed,
                version: None,
                error: Some(e.to_string()),
                code: Some(e.exit_code()),
            },
        }
    }
}

impl Activity {
    /// The activity recorded at `path`; none when the file is missing or unreadable.
    pub fn read(path: &Path) -> Activity {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Replaces `path` atomically with this activity.
    pub fn store(&self, path: &Path) -> Result<(), AgentError> {
        // Plain data: serialising cannot fail.
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        qx_core::fs::write_atomic(path, &bytes)?;
        Ok(())
    }
}

/// Counts the bytes downloads add, from the progress they report: for each artifact, what its
/// verified prefix grew by since its previous report (the first report of an artifact is
/// what an earlier attempt left, not downloaded now).
#[derive(Debug, Default)]
pub struct DownloadMeter {
    current: Option<(String, u64)>,
    /// Counted and not yet written to the activity file.
    pub unrecorded: u64,
}

impl DownloadMeter {
    pub fn progress(&mut self, artifact: &str, bytes: u64) {
        match &mut self.current {
            Some((name, seen)) if name == artifact => {
                self.unrecorded += bytes.saturating_sub(*seen);
                *seen = bytes;
            }
            _ => self.current = Some((artifact.to_owned(), bytes)),
        }
    }

    /// An operation ended: the next report starts a new artifact.
    pub fn reset(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_counts_growth_not_what_was_already_there() {
        let mut m = DownloadMeter::default();
        m.progress("a", 100);
        m.progress("a", 150);
        m.progress("a", 400);
        assert_eq!(m.unrecorded, 300);
        m.progress("b", 0);
        m.progress("b", 50);
        // A corrupt prefix discarded: the prefix shrinks, then grows again.
        m.progress("b", 0);
        m.progress("b", 20);
        assert_eq!(m.unrecorded, 370);
        m.reset();
        m.progress("b", 20);
        assert_eq!(m.unrecorded, 370);
    }

    #[test]
    fn missing_or_torn_file_is_no_activity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("activity.json");
        assert_eq!(Activity::read(&path), Activity::default());
        std::fs::write(&path, "{\"last_check\": ").expect("torn");
        assert_eq!(Activity::read(&path), Activity::default());
        let a = Activity {
            downloaded_bytes: 7,
            ..Activity::default()
        };
        a.store(&path).expect("store");
        assert_eq!(Activity::read(&path), a);
    }
}
