//! `/quantix/ab-update-state.json`: the full-image update in flight, or the
//! outcome of the last one.
//!
//! Written atomically (temporary file, fsync, rename, fsync of the directory),
//! so after a power cut it is either the old or the new state.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use qx_core::fs::{under_root, write_atomic};
use qx_core::Outcome;

use crate::error::{BootError, Result};
use crate::slot::Slot;

/// Location of the state file on the host (under the root prefix).
pub const STATE_PATH: &str = "/quantix/ab-update-state.json";

/// The content of the state file. Unknown fields are ignored (an older agent
/// keeps working with a state file written by a newer one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbState {
    /// An update was written into `to` and is waiting for its first good boot.
    pub pending: bool,
    /// The slot the update was installed from (the fallback).
    pub from: Slot,
    /// The slot the update was written into.
    pub to: Slot,
    /// Version of the installed image.
    pub version: String,
    /// When the update was installed.
    pub time: Timestamp,
    /// How it ended, once it has: `success` or `rolled_back` (the A/B code
    /// never writes `failed`: a failed install leaves no pending state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Timestamp>,
    /// Why it ended that way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The update carries out a signed revert (docs/spec.md §8): the version the host leaves.
    /// Its success is reported as `reverted` too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted_from: Option<String>,
}

impl AbState {
    /// A new pending update.
    pub fn pending(from: Slot, to: Slot, version: &str, time: Timestamp) -> Self {
        AbState {
            pending: true,
            from,
            to,
            version: version.to_owned(),
            time,
            outcome: None,
            finished: None,
            reason: None,
            reverted_from: None,
        }
    }

    /// Close the update with an outcome.
    pub fn finish(&mut self, outcome: Outcome, reason: &str, time: Timestamp) {
        self.pending = false;
        self.outcome = Some(outcome);
        self.finished = Some(time);
        self.reason = Some(reason.to_owned());
    }

    /// Path of the state file under `root`.
    pub fn path(root: &Path) -> PathBuf {
        under_root(root, Path::new(STATE_PATH))
    }

    /// Load the state file; `None` if there is none.
    pub fn load(root: &Path) -> Result<Option<AbState>> {
        let path = Self::path(root);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BootError::io(&path, "read A/B state", e)),
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|source| BootError::StateParse { path, source })
    }

    /// Write the state file atomically.
    pub fn store(&self, root: &Path) -> Result<()> {
        let path = Self::path(root);
        let mut data = serde_json::to_vec_pretty(self).map_err(|source| BootError::StateParse {
            path: path.clone(),
            source,
        })?;
        data.push(b'\n');
        Ok(write_atomic(&path, &data)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_field_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(AbState::load(dir.path()).expect("load"), None);
        let t: Timestamp = "2026-01-16T12:00:00Z".parse().expect("ts");
        let s = AbState::pending(Slot::A, Slot::B, "1.2.3", t);
        s.store(dir.path()).expect("store");
        let text =
            std::fs::read_to_string(dir.path().join("quantix/ab-update-state.json")).expect("read");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["pending"], true);
        assert_eq!(v["from"], "A");
        assert_eq!(v["to"], "B");
        assert_eq!(v["version"], "1.2.3");
        assert_eq!(v["time"], "2026-01-16T12:00:00Z");
        assert!(v.get("outcome").is_none());
        assert_eq!(AbState::load(dir.path()).expect("load"), Some(s));
    }

    #[test]
    fn finish_records_outcome() {
        let t: Timestamp = "2026-01-16T12:00:00Z".parse().expect("ts");
        let mut s = AbState::pending(Slot::B, Slot::A, "2.0.0", t);
        s.finish(Outcome::RolledBack, "no tries left", t);
        assert!(!s.pending);
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(v["outcome"], "rolled_back");
        assert_eq!(v["reason"], "no tries left");
    }

    #[test]
    fn corrupt_state_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("quantix")).expect("mkdir");
        std::fs::write(
            dir.path().join("quantix/ab-update-state.json"),
            b"{not json",
        )
        .expect("w");
        let e = AbState::load(dir.path()).expect_err("corrupt");
        assert!(e.to_string().contains("ab-update-state.json"), "{e}");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("quantix")).expect("mkdir");
        std::fs::write(
            dir.path().join("quantix/ab-update-state.json"),
            br#"{"pending":false,"from":"A","to":"B","version":"1","time":"2026-01-16T12:00:00Z","future":1}"#,
        )
        .expect("w");
        let s = AbState::load(dir.path()).expect("load").expect("some");
        assert!(!s.pending);
    }
}
