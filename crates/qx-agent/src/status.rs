//! The live status of the agent: the state of the current operation (checking, downloading,
//! installing, …), the installed versions and the update history. One [`StatusHandle`] per
//! [`crate::Agent`]; the daemon's page subscribes to it.

use std::collections::BTreeMap;

use qx_core::history::{self, HistoryEntry};
use qx_core::status::UpdateState;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

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
        };
        let (tx, _) = watch::channel(snap);
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        Self {
            tx,
            events,
            history_path: paths.history.clone(),
            paths: paths.clone(),
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
        self.tx.send_modify(|s| s.state = state);
        self.publish();
    }

    pub fn set_operation(&self, id: Option<String>) {
        self.tx.send_modify(|s| s.operation_id = id);
        self.publish();
    }

    /// Re-reads installed versions and history from disk (another process may have applied).
    pub fn refresh(&self) {
        let installed = self.paths.installed_versions();
        let history = history::read(&self.history_path, HISTORY_IN_SNAPSHOT);
        let changed = self.tx.send_if_modified(|s| {
            if s.installed != installed || s.history != history {
                s.installed = installed;
                s.history = history;
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
