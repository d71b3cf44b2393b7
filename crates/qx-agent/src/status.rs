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

use crate::activity::{Activity, DownloadMeter, LastApply, LastCheck};
use crate::daemon::schedule::ScheduleStatus;
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
    /// The last check (by any process: the daemon, the API, `qx-update check`).
    pub last_check: Option<LastCheck>,
    /// The last apply, also one that failed before it changed anything.
    pub last_apply: Option<LastApply>,
    /// Bytes downloaded over the life of the host.
    pub downloaded_bytes: u64,
    /// The daemon's schedule (next check, automatic apply, maintenance window); only in the
    /// daemon's answers (`None` in `qx-update status`).
    pub schedule: Option<ScheduleStatus>,
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
    /// Download progress → bytes downloaded; also serialises the updates of the activity file
    /// in this process.
    meter: std::sync::Mutex<DownloadMeter>,
    /// `updates.metrics.textfile`: rewritten after each check and apply.
    metrics_textfile: Option<std::path::PathBuf>,
}

/// Locks `m`, also when a thread panicked while holding it (the data stays usable).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StatusHandle {
    pub fn new(config: &Config, paths: &HostPaths) -> Self {
        let activity = Activity::read(&paths.activity);
        let snap = StatusSnapshot {
            state: UpdateState::Idle,
            operation_id: None,
            product: config.product.to_string(),
            channel: config.channel.to_string(),
            installed: paths.installed_versions(),
            history: history::read(&paths.history, HISTORY_IN_SNAPSHOT),
            operation: OperationStatus::read(paths),
            last_check: activity.last_check,
            last_apply: activity.last_apply,
            downloaded_bytes: activity.downloaded_bytes,
            schedule: None,
        };
        let (tx, _) = watch::channel(snap);
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        Self {
            tx,
            events,
            history_path: paths.history.clone(),
            paths: paths.clone(),
            settled: std::sync::Mutex::new(UpdateState::Idle),
            meter: std::sync::Mutex::new(DownloadMeter::default()),
            metrics_textfile: config.metrics_textfile.clone(),
        }
    }

    /// The last state that was not an operation in progress.
    pub fn settled_state(&self) -> UpdateState {
        lock(&self.settled).clone()
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

    /// Sends the snapshot again to the event stream's subscribers (something they show
    /// changed outside the snapshot: the daemon's schedule).
    pub fn touch(&self) {
        self.publish();
    }

    pub fn set_state(&self, state: UpdateState) {
        if !state.is_busy() {
            *lock(&self.settled) = state.clone();
        }
        if let UpdateState::Downloading {
            artifact, bytes, ..
        } = &state
        {
            lock(&self.meter).progress(artifact, *bytes);
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
        let activity = Activity::read(&self.paths.activity);
        let changed = self.tx.send_if_modified(|s| {
            let was = (
                &s.installed,
                &s.history,
                &s.operation,
                &s.last_check,
                &s.last_apply,
                s.downloaded_bytes,
            );
            let now = (
                &installed,
                &history,
                &operation,
                &activity.last_check,
                &activity.last_apply,
                activity.downloaded_bytes,
            );
            if was == now {
                return false;
            }
            s.installed = installed;
            s.history = history;
            s.operation = operation;
            s.last_check = activity.last_check;
            s.last_apply = activity.last_apply;
            s.downloaded_bytes = activity.downloaded_bytes;
            true
        });
        if changed {
            self.publish();
        }
    }

    /// Records the end of a check (see [`crate::activity`]) and writes the metrics file.
    pub fn record_check(&self, check: LastCheck) {
        self.record_activity(|a| a.last_check = Some(check));
        self.write_metrics();
    }

    /// Records the end of an apply (see [`crate::activity`]); the apply writes the metrics
    /// file once it has released the host.
    pub fn record_apply(&self, apply: LastApply) {
        self.record_activity(|a| a.last_apply = Some(apply));
    }

    /// Rewrites `updates.metrics.textfile` (when set) from the status; a failure is logged.
    pub fn write_metrics(&self) {
        if let Some(file) = &self.metrics_textfile {
            let text = crate::metrics::render(&self.snapshot());
            if let Err(e) = qx_core::fs::write_atomic(file, text.as_bytes()) {
                tracing::warn!(error = %e, "cannot write the metrics file (updates.metrics.textfile)");
            }
        }
    }

    /// Updates the activity file with `change` and the bytes downloaded since the last
    /// update, then the snapshot. A failure to write is logged: the record is not worth
    /// failing the operation for.
    fn record_activity(&self, change: impl FnOnce(&mut Activity)) {
        {
            let mut meter = lock(&self.meter);
            meter.reset();
            // Re-read: another process (`qx-update check`) may have written it since.
            let mut activity = Activity::read(&self.paths.activity);
            change(&mut activity);
            activity.downloaded_bytes = activity.downloaded_bytes.saturating_add(meter.unrecorded);
            match activity.store(&self.paths.activity) {
                Ok(()) => meter.unrecorded = 0,
                Err(e) => tracing::warn!(error = %e, "cannot record the agent's activity"),
            }
        }
        self.refresh();
    }

    /// Appends one entry to `history.jsonl` (fsynced) and to the snapshot.
    pub fn record(&self, entry: HistoryEntry) -> Result<(), AgentError> {
        history::append(&self.history_path, &entry)?;
        self.refresh();
        Ok(())
    }
}
