//! The on-disk journal of one apply (`/data/updates/journal.json`); the transaction's durable
//! file operations are `qx_core::fs`.
//!
//! The journal is written with write-temp + fsync + rename + fsync(dir) before every phase
//! change, so after a crash it says exactly which phase the apply had reached:
//!
//! | phase          | on recovery |
//! |----------------|-------------|
//! | `prepared`     | host untouched: delete temporaries and the partial backup |
//! | `installing`   | backups complete, files may be replaced: restore every file from backup |
//! | `rolling_back` | a failure was being undone: finish restoring (and restart if needed) |
//! | `migrated`     | all files new and migrations done: roll forward (restart, verify, versions) |
//! | `committed` / `rolled_back` | finished: only leftover temporaries are removed |
//!
//! While a migration, health or restart command runs, `running` names its process group;
//! recovery first kills what is left of that group and waits until none of it lives.

use std::fs;
use std::path::{Path, PathBuf};

use qx_core::ComponentKind;
use serde::{Deserialize, Serialize};

use crate::transaction::service::ProcessGroup;
use crate::AgentError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Prepared,
    Installing,
    Migrated,
    RollingBack,
    Committed,
    RolledBack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Install a release.
    Apply,
    /// `qx-update rollback`: put the backed-up version back.
    Rollback,
}

/// One component of the transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub kind: ComponentKind,
    /// The installed path on this machine (under the root).
    pub target: PathBuf,
    /// Extraction directory beside the target.
    pub extract_dir: PathBuf,
    /// The new file/tree beside the target, renamed (or exchanged) into place.
    pub temp: PathBuf,
    /// Where the replaced file/tree is backed up; `None` when nothing was installed before.
    pub backup: Option<PathBuf>,
    pub previous_version: Option<String>,
    pub version: String,
    pub restart_service: Option<String>,
    pub permissions: Option<u32>,
    /// The component's `allow_setuid` / `allow_world_writable`: modes its archive may carry.
    #[serde(default)]
    pub allow_setuid: bool,
    #[serde(default)]
    pub allow_world_writable: bool,
    #[serde(default)]
    pub health_command: Option<Vec<String>>,
    #[serde(default)]
    pub migrate_command: Option<Vec<String>>,
    /// Keep the backup after a successful apply (`backup_before_update`).
    #[serde(default = "yes")]
    pub keep_backup: bool,
    /// The SHA-256 of the artifact installed (recorded beside the version file at commit).
    #[serde(default)]
    pub sha256: Option<qx_core::Sha256>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub operation_id: String,
    pub op: OpKind,
    pub product: String,
    pub version: String,
    pub from_version: Option<String>,
    pub phase: Phase,
    pub started: String,
    /// `/data/updates/backup/<version>/`.
    pub backup_dir: PathBuf,
    /// `/data/updates/staging/<version>/`.
    pub staging_dir: PathBuf,
    pub entries: Vec<Entry>,
    /// Set (and written) before the first service restart.
    #[serde(default)]
    pub services_restarted: bool,
    #[serde(default)]
    pub reason: Option<String>,
    /// Going back from a release revoked with `revert` (history outcome `reverted`).
    #[serde(default)]
    pub reverted: bool,
    /// The process group of the migration, health or restart command running now (written
    /// before the agent waits for it, cleared when it has ended).
    #[serde(default)]
    pub running: Option<ProcessGroup>,
    /// Who started the operation (for the history entry, also when recovery writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<qx_core::history::StartedBy>,
}

impl Journal {
    pub fn load(path: &Path) -> Result<Option<Journal>, AgentError> {
        match fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| AgentError::Journal {
                        path: path.to_owned(),
                        message: format!("unreadable ({e}); inspect it and remove it by hand"),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::Io {
                path: path.to_owned(),
                source: e,
            }),
        }
    }

    /// Writes the journal durably (temp + fsync + rename + fsync dir).
    pub fn store(&self, path: &Path) -> Result<(), AgentError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| AgentError::Journal {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(qx_core::fs::write_atomic(path, &bytes)?)
    }

    pub fn set_phase(&mut self, path: &Path, phase: Phase) -> Result<(), AgentError> {
        self.phase = phase;
        self.store(path)
    }

    /// Records (durably) the command running now, or none.
    pub fn set_running(
        &mut self,
        path: &Path,
        group: Option<ProcessGroup>,
    ) -> Result<(), AgentError> {
        self.running = group;
        self.store(path)
    }

    /// True when the transaction still needs recovery.
    pub fn is_open(&self) -> bool {
        !matches!(self.phase, Phase::Committed | Phase::RolledBack)
    }

    /// Services touched by this transaction, each once, in order.
    pub fn services(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in &self.entries {
            if let Some(s) = &e.restart_service {
                if !out.contains(s) {
                    out.push(s.clone());
                }
            }
        }
        out
    }
}

/// The test-only crash hook: when `QX_TEST_CRASH_AT` names this point, the process aborts
/// here (as a `kill -9` would stop it). Compiled only with the `crash-points` feature (the
/// crate's own tests enable it); without it this is an empty function, so a release binary
/// never reads the variable.
#[cfg(feature = "crash-points")]
pub fn crash_point(name: &str) {
    if let Ok(at) = std::env::var("QX_TEST_CRASH_AT") {
        if at == name {
            eprintln!("QX_TEST_CRASH_AT={name}: aborting");
            std::process::abort();
        }
    }
}

/// The test-only pause hook: when `QX_TEST_PAUSE_AT` names this point, the process writes
/// `detail` to `<QX_TEST_PAUSE_FIFO>.reached`, then waits until the test has opened and
/// closed the FIFO `QX_TEST_PAUSE_FIFO` for writing (the test acts in between, e.g. changes
/// a file on the disk). Compiled only with the `crash-points` feature.
#[cfg(feature = "crash-points")]
pub fn pause_point(name: &str, detail: &Path) {
    let (Ok(at), Ok(fifo)) = (
        std::env::var("QX_TEST_PAUSE_AT"),
        std::env::var("QX_TEST_PAUSE_FIFO"),
    ) else {
        return;
    };
    if at != name {
        return;
    }
    let reached = format!("{fifo}.reached");
    if let Err(e) = fs::write(&reached, detail.as_os_str().as_encoded_bytes()) {
        eprintln!("QX_TEST_PAUSE_AT={name}: cannot write {reached}: {e}");
        return;
    }
    // Opening a FIFO for reading blocks until a writer opens it; the read ends when it closes.
    match fs::read(&fifo) {
        Ok(_) => {}
        Err(e) => eprintln!("QX_TEST_PAUSE_AT={name}: cannot read {fifo}: {e}"),
    }
}

/// Without the `crash-points` feature a pause point is nothing.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn pause_point(_name: &str, _detail: &Path) {}

/// Without the `crash-points` feature a crash point is nothing.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn crash_point(_name: &str) {}

/// (device, inode) of a path, not following a final symlink.
pub fn dev_ino(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}
