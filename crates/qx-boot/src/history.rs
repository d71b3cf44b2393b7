//! The records an operator reads after the fact: the update log
//! (`/var/log/quantix/update.log`, one timestamped line per step) and the
//! update history (`/data/updates/history.jsonl`, one JSON object per finished
//! update).

use std::path::Path;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fsutil::{append_line, under_root};
use crate::state::Outcome;

/// The update log on the host.
pub const UPDATE_LOG: &str = "/var/log/quantix/update.log";

/// The update history on the host.
pub const HISTORY: &str = "/data/updates/history.jsonl";

/// One line of the history file, for a full-image update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub time: Timestamp,
    /// Always `"full"` here; component updates write `"component"`.
    pub kind: String,
    pub version: String,
    pub outcome: Outcome,
    pub reason: String,
}

/// Append a line to the update log: `<RFC 3339 time> ab: <message>`.
pub fn log(root: &Path, message: &str) -> Result<()> {
    let line = format!("{} ab: {message}", Timestamp::now());
    append_line(&under_root(root, Path::new(UPDATE_LOG)), &line)
}

/// Append an entry for a full-image update to the history file.
pub fn record(
    root: &Path,
    time: Timestamp,
    version: &str,
    outcome: Outcome,
    reason: &str,
) -> Result<HistoryEntry> {
    let entry = HistoryEntry {
        time,
        kind: "full".to_owned(),
        version: version.to_owned(),
        outcome,
        reason: reason.to_owned(),
    };
    // Serialising this struct cannot fail (strings, a timestamp, an enum).
    let line = serde_json::to_string(&entry).unwrap_or_default();
    append_line(&under_root(root, Path::new(HISTORY)), &line)?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_log_and_history_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        log(dir.path(), "first").expect("log");
        log(dir.path(), "second").expect("log");
        let text =
            std::fs::read_to_string(dir.path().join("var/log/quantix/update.log")).expect("read");
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
