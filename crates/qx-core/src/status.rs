//! What an agent reports about itself: the state of the current operation, its progress, and
//! the history of past updates. The same types feed the host API, the web page, and (later)
//! fleet status reports to the server.

use serde::{Deserialize, Serialize};

/// The step an update is at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum UpdateState {
    Idle,
    Checking,
    Downloading {
        artifact: String,
        bytes: u64,
        total: u64,
        /// Bytes per second over the last interval.
        rate: u64,
    },
    Installing {
        component: String,
    },
    Migrating {
        component: String,
    },
    Restarting {
        service: String,
    },
    Verifying {
        component: String,
    },
    RollingBack {
        reason: String,
    },
    Done {
        version: String,
    },
    Failed {
        reason: String,
        /// The failure's `qx-update` exit code (e.g. 31: out of space), when an error ended
        /// the operation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        /// The HTTP status the host API gives that error (e.g. 507 for out of space): an
        /// apply started through the API answers 202 at once, so its failure reaches the
        /// client here.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_status: Option<u16>,
    },
}

impl UpdateState {
    pub fn name(&self) -> &'static str {
        match self {
            UpdateState::Idle => "idle",
            UpdateState::Checking => "checking",
            UpdateState::Downloading { .. } => "downloading",
            UpdateState::Installing { .. } => "installing",
            UpdateState::Migrating { .. } => "migrating",
            UpdateState::Restarting { .. } => "restarting",
            UpdateState::Verifying { .. } => "verifying",
            UpdateState::RollingBack { .. } => "rolling_back",
            UpdateState::Done { .. } => "done",
            UpdateState::Failed { .. } => "failed",
        }
    }

    /// True while an operation runs.
    pub fn is_busy(&self) -> bool {
        !matches!(
            self,
            UpdateState::Idle | UpdateState::Done { .. } | UpdateState::Failed { .. }
        )
    }
}

pub use crate::history::{HistoryEntry, Outcome, UpdateKind};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_serialises_with_tag() {
        let s = UpdateState::Downloading {
            artifact: "a".into(),
            bytes: 1,
            total: 2,
            rate: 3,
        };
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(v["state"], "downloading");
        assert_eq!(v["total"], 2);
        assert!(s.is_busy());
        assert!(!UpdateState::Idle.is_busy());
    }
}
