//! The records an operator reads after the fact: the update log (the agent's
//! `updates.log_path`, one timestamped line per step, written through
//! [`qx_core::UpdateLog`]) and the update history (`/data/updates/history.jsonl`,
//! one [`qx_core::HistoryEntry`] per finished update, written through
//! [`qx_core::history::append`]).

use std::path::Path;

use jiff::Timestamp;
use qx_core::fleet::{Event, EventType};
use qx_core::fleet_queue::EventQueue;
use qx_core::fs::under_root;
use qx_core::history::{self, HistoryEntry, Outcome, UpdateKind, HISTORY_FILE};
use qx_core::UpdateLog;

use crate::error::Result;

/// Prefix of every update-log line written by the A/B code.
pub const LOG_PREFIX: &str = "ab: ";

/// Append a line to the update log: `<RFC 3339 time> ab: <message>`, synced at
/// once. A log that cannot be written is reported through `tracing` by
/// [`UpdateLog`] and does not stop the operation.
pub fn log(log: &mut UpdateLog, message: &str) {
    log.record(&format!("{LOG_PREFIX}{message}"));
}

/// Append an entry for a full-image update to the history file under `root`.
pub fn record(
    root: &Path,
    time: Timestamp,
    version: &str,
    outcome: Outcome,
    reason: &str,
) -> Result<HistoryEntry> {
    let entry = HistoryEntry {
        time,
        kind: UpdateKind::Full,
        version: version.to_owned(),
        from_version: None,
        components: Vec::new(),
        outcome,
        reason: Some(reason.to_owned()),
        started_by: None,
    };
    history::append(&under_root(root, Path::new(HISTORY_FILE)), &entry)?;
    Ok(entry)
}

/// Queue the fleet event that closes a full-image update: `confirmed` (the new
/// slot booted and passed its health checks, or the operator marked it good) or
/// `rolled_back`. A queue that cannot be written is logged: the boot goes on.
pub fn record_event(root: &Path, time: Timestamp, version: &str, outcome: Outcome, reason: &str) {
    let kind = match outcome {
        Outcome::Success => EventType::Confirmed,
        _ => EventType::RolledBack,
    };
    let event = Event {
        seq: 0,
        kind,
        time: time.to_string(),
        version: Some(version.to_owned()),
        component: Some("system".to_owned()),
        stage: (kind == EventType::RolledBack).then(|| "boot".to_owned()),
        exit_code: None,
        message: Some(reason.to_owned()),
        count: None,
    };
    if let Err(e) = EventQueue::under_root(root).record(event) {
        // The boot commands' output goes to the boot log; the update log has the outcome.
        eprintln!("qx-update ab: cannot queue the fleet event: {e}; it is lost");
    }
}

/// Queue `reverted` for a confirmed full image that carried out a signed revert: `left` is
/// the version the host left, `current` the one it went back to.
pub fn record_reverted(root: &Path, time: Timestamp, left: &str, current: &str) {
    let event = Event {
        seq: 0,
        kind: EventType::Reverted,
        time: time.to_string(),
        version: Some(left.to_owned()),
        component: Some("system".to_owned()),
        stage: None,
        exit_code: None,
        message: Some(format!(
            "back to {current} (current): the signed channel state revokes {left} with revert"
        )),
        count: None,
    };
    if let Err(e) = EventQueue::under_root(root).record(event) {
        eprintln!("qx-update ab: cannot queue the fleet event: {e}; it is lost");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_log_and_history_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("var/log/quantix/update.log");
        let mut update_log = UpdateLog::open(&path);
        log(&mut update_log, "first");
        log(&mut update_log, "second");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with(" ab: first"), "{}", lines[0]);
        let t: Timestamp = "2026-01-16T12:00:00Z".parse().expect("ts");
        record(dir.path(), t, "1.0.0", Outcome::RolledBack, "because").expect("rec");
        record(dir.path(), t, "1.0.1", Outcome::Success, "ok").expect("rec");
        let text =
            std::fs::read_to_string(dir.path().join("data/updates/history.jsonl")).expect("read");
        let v: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(
            v[0],
            serde_json::json!({"time":"2026-01-16T12:00:00Z","kind":"full","version":"1.0.0",
                               "outcome":"rolled_back","reason":"because"})
        );
        assert_eq!(v[1]["outcome"], "success");
    }
}
