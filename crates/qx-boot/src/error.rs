//! The one error type of this crate. Every variant names the file, device, slot
//! or value it concerns, and the message says what to do where there is
//! something to do.

use std::path::PathBuf;

use crate::slot::Slot;

/// Everything that can go wrong in `qx-boot`.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file-system operation failed.
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A durable file operation (write-temp-rename, append, fsync, mkdir) failed;
    /// the message is the one of [`qx_core::fs::FsError`].
    #[error(transparent)]
    Fs(#[from] qx_core::fs::FsError),

    /// The grubenv file is not a valid GRUB environment block. It is never
    /// rewritten in this case: a "repaired" block could boot the wrong slot.
    #[error(
        "{path}: not a valid GRUB environment block: {reason}; the file was left unchanged \
         (inspect it with `grub-editenv {path} list`; recreate it only with the slot state \
         written back by hand)"
    )]
    GrubenvCorrupt { path: PathBuf, reason: String },

    /// The variables do not fit into the fixed-size block.
    #[error(
        "grubenv: setting {key} would need {needed} bytes but the block holds {capacity}; \
         nothing was changed (remove unused variables with `grub-editenv FILE unset NAME`)"
    )]
    GrubenvFull {
        key: String,
        needed: usize,
        capacity: usize,
    },

    /// A variable name we were asked to set is not acceptable.
    #[error("grubenv: invalid variable name {name:?}: {reason}")]
    GrubenvName { name: String, reason: &'static str },

    /// A value we were asked to set is not acceptable.
    #[error("grubenv: invalid value for {key}: {reason}")]
    GrubenvValue { key: String, reason: &'static str },

    /// The kernel command line has no `quantix.slot=`.
    #[error(
        "{path}: no quantix.slot=A|B on the kernel command line; this system was not booted \
         through the Quantix GRUB configuration (packaging/grub/grub.cfg)"
    )]
    SlotMissing { path: PathBuf },

    /// A slot name other than `A` or `B`.
    #[error("invalid slot {value:?}: expected A or B")]
    SlotInvalid { value: String },

    /// The state file exists but cannot be parsed.
    #[error("{path}: invalid A/B update state: {source}; move the file away to start over")]
    StateParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// The A/B configuration is not usable.
    #[error("invalid A/B configuration: {field}: {reason}")]
    Config { field: String, reason: String },

    /// A slot device could not be resolved, mounted or unmounted.
    #[error("slot {slot}: {device}: {detail}")]
    Device {
        slot: Slot,
        device: String,
        detail: String,
    },

    /// The target slot's device is mounted somewhere: writing it would corrupt a
    /// file system in use (or the running system).
    #[error(
        "slot {slot}: refusing to write {device}: it is mounted at {mountpoint}; \
         check slot_a/slot_b in the A/B configuration"
    )]
    DeviceInUse {
        slot: Slot,
        device: String,
        mountpoint: String,
    },

    /// A file's content differs from its expected SHA-256.
    #[error(
        "{path}: sha256 mismatch (expected {expected}, got {actual}); the slot was left \
         unbootable and the update must be downloaded again"
    )]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    /// An image file of another length than expected.
    #[error(
        "{path}: {actual} bytes where the update says {expected}; the slot was left \
         unbootable and the update must be downloaded again"
    )]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    /// What the disk gives back differs from what was written (read back without the page
    /// cache after the fsync).
    #[error(
        "{path}: the copy in the slot read back from the disk differs from what was written \
         (block at byte {offset}); the slot was left unbootable — check the disk"
    )]
    ReadBack { path: PathBuf, offset: u64 },

    /// Not enough room in the target slot's file system.
    #[error("slot {slot}: {needed} bytes needed but only {available} bytes free in {path}")]
    NoSpace {
        slot: Slot,
        path: PathBuf,
        needed: u64,
        available: u64,
    },

    /// An install that would write into the running slot.
    #[error("slot {slot} is the booted slot; an update can only be written into the other slot")]
    TargetIsBooted { slot: Slot },

    /// The booted slot still runs an unverified update: its fallback must stay.
    #[error(
        "slot {slot} (booted) runs version {version}, which is still pending verification; \
         run `qx-update ab verify` (or mark-good) before installing another update, so that \
         the other slot stays a working fallback"
    )]
    BootedSlotPending { slot: Slot, version: String },

    /// The booted slot is not marked good: it would be a doubtful fallback.
    #[error(
        "slot {slot} (booted) is not marked good ({slot}_OK is not 1 in {path}); run \
         `qx-update ab verify` (or mark-good) first so that a failed update can fall back to it"
    )]
    BootedSlotNotGood { slot: Slot, path: PathBuf },

    /// `mark-bad` would leave no slot to boot.
    #[error(
        "refusing to mark slot {slot} bad: the other slot {other} is not marked good or has \
         no boot attempts left, so no slot would be left to boot"
    )]
    NoFallback { slot: Slot, other: Slot },

    /// A helper program (mount, umount, blkid) could not be run or failed.
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
}

impl BootError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        BootError::Io {
            path: path.into(),
            op,
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = BootError> = std::result::Result<T, E>;
