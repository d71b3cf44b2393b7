//! The on-disk journal of one apply (`/data/updates/journal.json`) and the durable file
//! operations the transaction is built from.
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

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use qx_core::ComponentKind;
use serde::{Deserialize, Serialize};

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
    #[serde(default)]
    pub health_command: Option<Vec<String>>,
    #[serde(default)]
    pub migrate_command: Option<Vec<String>>,
    /// Keep the backup after a successful apply (`backup_before_update`).
    #[serde(default = "yes")]
    pub keep_backup: bool,
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
        write_atomic(path, &bytes)
    }

    pub fn set_phase(&mut self, path: &Path, phase: Phase) -> Result<(), AgentError> {
        self.phase = phase;
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
/// here (as a `kill -9` would stop it). Never set in production.
pub fn crash_point(name: &str) {
    if let Ok(at) = std::env::var("QX_TEST_CRASH_AT") {
        if at == name {
            eprintln!("QX_TEST_CRASH_AT={name}: aborting");
            std::process::abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Durable file operations.

/// fsync a directory (makes a rename or a create in it durable).
pub fn fsync_dir(dir: &Path) -> Result<(), AgentError> {
    let f = File::open(dir).map_err(AgentError::io(dir))?;
    f.sync_all().map_err(AgentError::io(dir))
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

/// Replaces `path` with `bytes`: write a temp in the same directory, fsync, rename, fsync the
/// directory. Never opens `path` itself for writing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    let dir = parent(path);
    fs::create_dir_all(dir).map_err(AgentError::io(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per call: two threads of one process (the daemon) may write the same file.
    let tmp = dir.join(format!(
        ".qx-tmp-{name}.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut f = File::create(&tmp).map_err(AgentError::io(&tmp))?;
    f.write_all(bytes).map_err(AgentError::io(&tmp))?;
    f.sync_all().map_err(AgentError::io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(AgentError::io(path))?;
    fsync_dir(dir)
}

/// Removes a file, a symlink or a whole tree if it exists.
pub fn remove_any(path: &Path) -> Result<(), AgentError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(AgentError::io(path)),
        Ok(_) => fs::remove_file(path).map_err(AgentError::io(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AgentError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Copies a file, symlink or tree from `src` to `dst` (which must not exist), preserving modes,
/// and fsyncs every file and directory written.
pub fn copy_durable(src: &Path, dst: &Path) -> Result<(), AgentError> {
    let meta = fs::symlink_metadata(src).map_err(AgentError::io(src))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(src).map_err(AgentError::io(src))?;
        std::os::unix::fs::symlink(target, dst).map_err(AgentError::io(dst))?;
    } else if ft.is_dir() {
        fs::create_dir(dst).map_err(AgentError::io(dst))?;
        for e in fs::read_dir(src).map_err(AgentError::io(src))? {
            let e = e.map_err(AgentError::io(src))?;
            copy_durable(&e.path(), &dst.join(e.file_name()))?;
        }
        fs::set_permissions(
            dst,
            fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
        )
        .map_err(AgentError::io(dst))?;
        fsync_dir(dst)?;
    } else if ft.is_file() {
        let mut from = File::open(src).map_err(AgentError::io(src))?;
        let mut to = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dst)
            .map_err(AgentError::io(dst))?;
        std::io::copy(&mut from, &mut to).map_err(AgentError::io(dst))?;
        to.set_permissions(fs::Permissions::from_mode(
            meta.permissions().mode() & 0o7777,
        ))
        .map_err(AgentError::io(dst))?;
        to.sync_all().map_err(AgentError::io(dst))?;
    } else {
        return Err(AgentError::Io {
            path: src.to_owned(),
            source: std::io::Error::other("not a regular file, directory or symlink"),
        });
    }
    Ok(())
}

/// fsync every file and directory of a tree (after extraction).
pub fn fsync_tree(path: &Path) -> Result<(), AgentError> {
    let meta = fs::symlink_metadata(path).map_err(AgentError::io(path))?;
    if meta.is_dir() {
        for e in fs::read_dir(path).map_err(AgentError::io(path))? {
            let e = e.map_err(AgentError::io(path))?;
            fsync_tree(&e.path())?;
        }
        fsync_dir(path)
    } else if meta.is_file() {
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(AgentError::io(path))
    } else {
        Ok(())
    }
}

/// Puts `temp` in place of `target`: a plain rename for a file (atomic, even while the old
/// file is being executed), `renameat2(RENAME_EXCHANGE)` for a directory that exists (the old
/// tree ends up at `temp`, to be removed by the caller), a plain rename for a first install.
/// The directory is fsynced afterwards.
pub fn swap_into_place(temp: &Path, target: &Path, is_dir: bool) -> Result<(), AgentError> {
    let dir = parent(target);
    let exists = fs::symlink_metadata(target).is_ok();
    if is_dir && exists {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            temp,
            rustix::fs::CWD,
            target,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(|e| AgentError::Io {
            path: target.to_owned(),
            source: std::io::Error::from(e),
        })?;
    } else {
        fs::rename(temp, target).map_err(AgentError::io(target))?;
    }
    fsync_dir(dir)
}

/// (device, inode) of a path, not following a final symlink.
pub fn dev_ino(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}
