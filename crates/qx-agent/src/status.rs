//! The live status of the agent: the state of the current operation (checking, downloading,
//! installing, …), the installed versions and the update history. One [`StatusHandle`] per
//! [`crate::Agent`]; the daemon's page subscribes to it.
//!
//! `state` is this process's own operation; `operation` is what the host's disk says, whichever
//! process runs it: an operation in progress (a process holds the apply lock) or an interrupted
//! one (its journal is open and nobody holds the lock: recovery will finish it).

use std::collections::BTreeMap;

use qx_core::history::{self, HistoryEntry};
use qx_core::status::UpdateState;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::transaction::journal::{Journal, OpKind, Phase};
use crate::{AgentError, Config, HostPaths};

/// Largest number of history entries kept in a snapshot (newest last).
pub const HISTORY_IN_SNAPSHOT: usize = 50;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusSnapshot {
    pub state: UpdateState,
    pub operation_id: Option<String>,
    pub product: String,
    pub channel: String,
    pub installed: BTreeMap<String, String>,
    pub history: Vec<HistoryEntry>,
    /// An operation in progress on this host (in any process) or an interrupted one; `None`
    /// when the host is at rest.
    pub operation: Option<OperationStatus>,
}

/// Whether an operation runs now or was interrupted.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// A process holds the apply lock.
    InProgress,
    /// The journal is open and nobody holds the lock: the next recovery (at the start of the
    /// daemon, of `qx-update apply`, or `qx-update recover`) finishes it.
    Interrupted,
}

/// What recovery will do with an interrupted operation.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryAction {
    /// Restore every file from the backup (phases `prepared`, `installing`, `rolling_back`).
    RollBack,
    /// Restart, verify and commit the new version (phase `migrated`).
    RollForward,
    /// Finish restoring a `qx-update rollback`.
    FinishRollback,
}

/// One component of the operation: its target version and the one it replaces.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ComponentTarget {
    pub name: String,
    pub version: String,
    pub previous_version: Option<String>,
}

/// The operation on disk (apply lock and journal).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OperationStatus {
    pub state: OperationState,
    /// The lock holder's pid (in progress only).
    pub pid: Option<u32>,
    pub operation_id: Option<String>,
    /// `apply` or `rollback`; `None` before the journal is written.
    pub kind: Option<OpKind>,
    /// The journal's phase; `None` while the operation checks and downloads (no journal yet).
    pub phase: Option<Phase>,
    /// The target release and the one it replaces.
    pub version: Option<String>,
    pub from_version: Option<String>,
    pub started: Option<String>,
    pub components: Vec<ComponentTarget>,
    /// Interrupted only: what recovery will do.
    pub recovery: Option<RecoveryAction>,
}

impl OperationStatus {
    /// The operation on the disk of `paths`' host, if any.
    pub fn read(paths: &HostPaths) -> Option<Self> {
        let holder = crate::transaction::lock_holder(paths);
        // An unreadable journal is reported by recovery; here it is no operation to show.
        let journal = Journal::load(&paths.journal).ok().flatten();
        match holder {
            Some(h) => {
                // The journal of this operation: open, or closed by it a moment ago.
                let j = journal.filter(|j| {
                    j.is_open() || h.operation_id.as_deref() == Some(j.operation_id.as_str())
                });
                let mut op = Self::of(OperationState::InProgress, j.as_ref());
                op.pid = h.pid;
                op.operation_id = op.operation_id.or(h.operation_id);
                Some(op)
            }
            None => journal
                .filter(Journal::is_open)
                .map(|j| Self::of(OperationState::Interrupted, Some(&j))),
        }
    }

    fn of(state: OperationState, j: Option<&Journal>) -> Self {
        let recovery =
            j.filter(|_| state == OperationState::Interrupted)
                .map(|j| match (j.op, j.phase) {
                    (OpKind::Rollback, _) => RecoveryAction::FinishRollback,
                    (OpKind::Apply, Phase::Migrated) => RecoveryAction::RollForward,
                    (OpKind::Apply, _) => RecoveryAction::RollBack,
                });
        Self {
            state,
            pid: None,
            operation_id: j.map(|j| j.operation_id.clone()),
            kind: j.map(|j| j.op),
            phase: j.map(|j| j.phase),
            version: j.map(|j| j.version.clone()),
            from_version: j.and_then(|j| j.from_version.clone()),
            started: j.map(|j| j.started.clone()),
            components: j
                .map(|j| {
                    j.entries
                        .iter()
                        .map(|e| ComponentTarget {
                            name: e.name.clone(),
                            version: e.version.clone(),
                            previous_version: e.previous_version.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            recovery,
        }
    }
}

/// How many changes a slow event subscriber may fall behind before it skips to the latest.
const EVENT_BACKLOG: usize = 256;

pub struct StatusHandle {
    /// The latest snapshot, for readers that want only the present.
    tx: watch::Sender<StatusSnapshot>,
    /// Every change in order, for the event stream (a watch channel keeps only the latest, so
    /// a state that lasts a moment could be missed).
    events: broadcast::Sender<StatusSnapshot>,
    history_path: std::path::PathBuf,
    paths: HostPaths,
    /// The last state that was not an operation in progress: what a check-in sent in the
    /// middle of a check reports as the host's health.
    settled: std::sync::Mutex<UpdateState>,
}

impl StatusHandle {
    pub fn new(config: &Config, paths: &HostPaths) -> Self {
        let snap = StatusSnapshot {
            state: UpdateState::Idle,
            operation_id: None,
            product: config.product.to_string(),
            channel: config.channel.to_string(),
            installed: paths.installed_versions(),
            history: history::read(&paths.history, HISTORY_IN_SNAPSHOT),
            operation: OperationStatus::read(paths),
        };
        let (tx, _) = watch::channel(snap);
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        Self {
            tx,
            events,
            history_path: paths.history.clone(),
            paths: paths.clone(),
            settled: std::sync::Mutex::new(UpdateState::Idle),
        }
    }

    /// The last state that was not an operation in progress.
    pub fn settled_state(&self) -> UpdateState {
        match self.settled.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<StatusSnapshot> {
        self.tx.subscribe()
    }

    /// Every change from now on, in order.
    pub fn subscribe_events(&self) -> broadcast::Receiver<StatusSnapshot> {
        self.events.subscribe()
    }

    fn publish(&self) {
        // No subscriber is not an error: nobody is watching the event stream.
        let _ = self.events.send(self.tx.borrow().clone());
    }

    pub fn set_state(&self, state: UpdateState) {
        if !state.is_busy() {
            match self.settled.lock() {
                Ok(mut s) => *s = state.clone(),
                Err(poisoned) => *poisoned.into_inner() = state.clone(),
            }
        }
        self.tx.send_modify(|s| s.state = state);
        self.publish();
    }

    pub fn set_operation(&self, id: Option<String>) {
        self.tx.send_modify(|s| s.operation_id = id);
        self.publish();
    }

    /// Re-reads installed versions, history and the operation on disk (another process may
    /// be applying or have applied).
    pub fn refresh(&self) {
        let installed = self.paths.installed_versions();
        let history = history::read(&self.history_path, HISTORY_IN_SNAPSHOT);
        let operation = OperationStatus::read(&self.paths);
        let changed = self.tx.send_if_modified(|s| {
            if s.installed != installed || s.history != history || s.operation != operation {
                s.installed = installed;
                s.history = history;
                s.operation = operation;
                true
            } else {
                false
            }
        });
        if changed {
            self.publish();
        }
    }

    /// Appends one entry to `history.jsonl` (fsynced) and to the snapshot.
    pub fn record(&self, entry: HistoryEntry) -> Result<(), AgentError> {
        history::append(&self.history_path, &entry)?;
        self.refresh();
        Ok(())
    }
}
