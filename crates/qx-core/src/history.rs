//! The update history (`/data/updates/history.jsonl`): one JSON object per finished update,
//! written by the component transaction and by the A/B boot checks alike, read by the CLI,
//! the host API and page, and (later) fleet reports. One entry type, one writer, one reader.

use std::path::Path;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::fs::{append_line, FsError};

/// Where the history lives on a host (under the agent's root).
pub const HISTORY_FILE: &str = "/data/updates/history.jsonl";

/// How an update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The update took effect (verified; for a full image, the new slot booted and passed).
    Success,
    /// The update failed and the host was restored to what it ran before.
    Failed,
    /// An installed update was abandoned (a failed health check, the boot counter
    /// exhausted, or an operator's rollback).
    RolledBack,
    /// The installed release was revoked with `revert` in the signed channel state and the
    /// host went back to the channel's `current` (docs/spec.md §8).
    Reverted,
}

impl Outcome {
    /// The name used in the history file: `success`, `failed`, `rolled_back`, `reverted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Reverted => "reverted",
        }
    }
}

/// Which kind of update an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateKind {
    /// Components replaced in place (files, directories, migrations).
    Component,
    /// A system image written into the inactive A/B slot.
    Full,
}

impl UpdateKind {
    /// `component` or `full`, as in the history file.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateKind::Component => "component",
            UpdateKind::Full => "full",
        }
    }
}

impl std::fmt::Display for UpdateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an update was started: which door it came through, and who knocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `qx-update apply` (or `rollback`) on the host.
    Cli,
    /// `POST /api/v1/updates/apply` on the host API (the Updates page uses it too).
    Api,
    /// The daemon's automatic apply (`auto_apply`).
    Automatic,
}

impl Origin {
    /// `cli`, `api` or `automatic`, as in the history file.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Cli => "cli",
            Origin::Api => "api",
            Origin::Automatic => "automatic",
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who started an update: `{"via": "cli", "user": "alice"}`, `{"via": "api"}`,
/// `{"via": "automatic"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedBy {
    pub via: Origin,
    /// The user who ran the CLI (the one behind `sudo` when there is one); the API knows only
    /// that the caller had the host's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl StartedBy {
    /// Started through `via`, no user known.
    pub fn via(via: Origin) -> Self {
        Self { via, user: None }
    }
}

/// One past update, one line of the history file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When the update ended (RFC 3339 in the file).
    pub time: Timestamp,
    pub kind: UpdateKind,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    pub outcome: Outcome,
    #[serde(default)]
    pub reason: Option<String>,
    /// Who started it; absent in entries written before it was recorded and in those of the
    /// boot checks (`qx-boot`), which finish an update someone else started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<StartedBy>,
}

/// Append one entry to the history file (created if missing) and fsync it.
pub fn append(path: &Path, entry: &HistoryEntry) -> Result<(), FsError> {
    // Serialising this struct cannot fail: strings, a timestamp and plain enums.
    let line = serde_json::to_string(entry).unwrap_or_default();
    append_line(path, &line)
}

/// The last `max` entries of the history file, oldest first; a missing file is an empty
/// history, and unreadable lines (a torn last line after a power cut) are skipped.
pub fn read(path: &Path, max: usize) -> Vec<HistoryEntry> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let all: Vec<HistoryEntry> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let skip = all.len().saturating_sub(max);
    all.into_iter().skip(skip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(outcome: Outcome, kind: UpdateKind) -> HistoryEntry {
        HistoryEntry {
            time: "2026-01-16T12:00:00Z".parse().expect("time"),
            kind,
            version: "1.0.1".into(),
            from_version: None,
            components: Vec::new(),
            outcome,
            reason: Some("because".into()),
            started_by: None,
        }
    }

    #[test]
    fn started_by_is_kept_and_old_lines_without_it_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.jsonl");
        let old = r#"{"time":"2026-01-16T12:00:00Z","kind":"component","version":"1.0.0","outcome":"success","reason":null}"#;
        std::fs::write(&path, format!("{old}\n")).expect("old line");
        let mut new = entry(Outcome::Failed, UpdateKind::Component);
        new.started_by = Some(StartedBy {
            via: Origin::Cli,
            user: Some("alice".into()),
        });
        append(&path, &new).expect("append");
        let text = std::fs::read_to_string(&path).expect("read");
        let line: serde_json::Value =
            serde_json::from_str(text.lines().nth(1).expect("new line")).expect("json");
        assert_eq!(
            line["started_by"],
            serde_json::json!({"via": "cli", "user": "alice"})
        );
        let all = read(&path, 10);
        assert_eq!(all.len(), 2, "the old line is read too");
        assert_eq!(all[0].started_by, None);
        assert_eq!(all[1], new);
        let api = serde_json::to_value(StartedBy::via(Origin::Automatic)).expect("json");
        assert_eq!(api, serde_json::json!({"via": "automatic"}));
    }

    #[test]
    fn round_trips_and_keeps_the_file_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data/updates/history.jsonl");
        append(&path, &entry(Outcome::RolledBack, UpdateKind::Full)).expect("append");
        let mut comp = entry(Outcome::Success, UpdateKind::Component);
        comp.from_version = Some("1.0.0".into());
        comp.components = vec!["qx-demo".into()];
        append(&path, &comp).expect("append");
        std::fs::write(
            &path,
            std::fs::read_to_string(&path).expect("read") + "{\"torn",
        )
        .expect("tear");
        let text = std::fs::read_to_string(&path).expect("read");
        let first: serde_json::Value =
            serde_json::from_str(text.lines().next().expect("line")).expect("json");
        assert_eq!(
            first,
            serde_json::json!({"time":"2026-01-16T12:00:00Z","kind":"full","version":"1.0.1",
                               "outcome":"rolled_back","reason":"because"})
        );
        let all = read(&path, 10);
        assert_eq!(
            all,
            vec![entry(Outcome::RolledBack, UpdateKind::Full), comp.clone()]
        );
        assert_eq!(read(&path, 1), vec![comp]);
        assert!(read(&dir.path().join("missing"), 5).is_empty());
    }
}
