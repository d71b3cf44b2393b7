//! The A/B state machine: what GRUB's environment and the state file say, and
//! the boot-time operations that move them forward.
//!
//! GRUB environment (see packaging/grub/README.md):
//! - `ORDER`: the slots in boot preference order, `"A B"` or `"B A"`;
//! - `A_LEFT`, `B_LEFT`: boot attempts left (GRUB decrements before booting);
//! - `A_OK`, `B_OK`: `1` once the slot has booted and passed its health checks.
//!
//! Operations, each taking the configuration and the root prefix:
//! - [`status`]: read-only view;
//! - [`boot_check`] (early boot): record a rollback when GRUB abandoned a
//!   pending update;
//! - [`verify`] (late boot): run health checks, then mark the booted slot good
//!   and complete a pending update;
//! - [`mark_good`], [`mark_bad`]: the operator's manual decisions;
//! - [`install_image`](crate::install::install_image): write a new image into
//!   the inactive slot (in `install.rs`).
//!
//! All operations that change something hold an exclusive lock
//! (`/quantix/ab.lock`), so a boot script and an install never interleave.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::Serialize;

use crate::config::{AbConfig, SlotTarget};
use crate::error::{BootError, Result};
use crate::fsutil::{create_dir_all_durable, under_root};
use crate::grubenv::GrubEnv;
use crate::health::{run_check, CheckResult};
use crate::history::{self, HistoryEntry};
use crate::slot::Slot;
use crate::state::{AbState, Outcome};

/// grubenv variable holding the slot order.
pub const ORDER: &str = "ORDER";

/// Lock file serialising A/B operations.
pub const LOCK_PATH: &str = "/quantix/ab.lock";

/// grubenv variable with the boot attempts left of `slot` (`A_LEFT`).
pub fn left_key(slot: Slot) -> String {
    format!("{slot}_LEFT")
}

/// grubenv variable with the good flag of `slot` (`A_OK`).
pub fn ok_key(slot: Slot) -> String {
    format!("{slot}_OK")
}

/// Boot attempts left for `slot`, as GRUB sees them: a missing or
/// unrecognised value counts as 0 (GRUB's lookup chain only knows 1..=9).
pub fn tries_left(env: &GrubEnv, slot: Slot) -> u8 {
    match env.get(&left_key(slot)) {
        Some(v) if v.len() == 1 => v
            .parse::<u8>()
            .ok()
            .filter(|n| *n <= crate::config::MAX_TRIES)
            .unwrap_or(0),
        _ => 0,
    }
}

/// Whether `slot` is marked good (`X_OK=1`).
pub fn is_good(env: &GrubEnv, slot: Slot) -> bool {
    env.get(&ok_key(slot)) == Some("1")
}

/// The slot order as GRUB walks it: the words of `ORDER` that are `A` or `B`
/// (each once); `"A B"` when `ORDER` is not set (the fragment's default).
pub fn order(env: &GrubEnv) -> Vec<Slot> {
    let raw = env.get(ORDER).unwrap_or("A B");
    let mut out = Vec::new();
    for word in raw.split_ascii_whitespace() {
        if let Ok(s) = word.parse::<Slot>() {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

/// The slot GRUB will pick on the next boot, `None` if no slot has attempts
/// left (GRUB's rescue path).
pub fn next_boot(env: &GrubEnv) -> Option<Slot> {
    order(env).into_iter().find(|s| tries_left(env, *s) > 0)
}

/// Set `ORDER` so that `first` comes first.
pub fn set_first(env: &mut GrubEnv, first: Slot) -> Result<()> {
    env.set(ORDER, &format!("{first} {}", first.other()))
}

pub(crate) fn grubenv_path(cfg: &AbConfig, root: &Path) -> PathBuf {
    under_root(root, &cfg.grubenv)
}

/// Exclusive lock held by every changing operation; released on drop.
pub(crate) struct AbLock {
    _file: File,
}

pub(crate) fn lock(root: &Path) -> Result<AbLock> {
    let path = under_root(root, Path::new(LOCK_PATH));
    if let Some(dir) = path.parent() {
        create_dir_all_durable(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| BootError::io(&path, "open lock file", e))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| BootError::io(&path, "lock", e.into()))?;
    Ok(AbLock { _file: file })
}

/// One slot in [`AbStatus`].
#[derive(Clone, Debug, Serialize)]
pub struct SlotStatus {
    pub slot: Slot,
    /// Boot attempts left (`X_LEFT`).
    pub tries_left: u8,
    /// `X_OK=1`.
    pub good: bool,
    pub booted: bool,
    /// Where its file system is, from the configuration.
    pub target: SlotTarget,
}

/// Read-only view of the A/B state.
#[derive(Clone, Debug, Serialize)]
pub struct AbStatus {
    /// The booted slot; `None` when the kernel command line has no
    /// `quantix.slot=` (then `booted_error` says why).
    pub booted: Option<Slot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booted_error: Option<String>,
    pub grubenv: PathBuf,
    /// `ORDER` as GRUB walks it.
    pub order: Vec<Slot>,
    /// The slot GRUB will pick next; `None`: no slot has attempts left.
    pub next_boot: Option<Slot>,
    pub slots: Vec<SlotStatus>,
    /// `/quantix/ab-update-state.json`, if present.
    pub state: Option<AbState>,
}

/// Read-only view: booted slot, grubenv, state file.
pub fn status(cfg: &AbConfig, root: &Path) -> Result<AbStatus> {
    cfg.validate()?;
    let (booted, booted_error) = match Slot::booted(root) {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let path = grubenv_path(cfg, root);
    let env = GrubEnv::read(&path)?;
    let state = AbState::load(root)?;
    Ok(AbStatus {
        booted,
        booted_error,
        grubenv: path,
        order: order(&env),
        next_boot: next_boot(&env),
        slots: Slot::ALL
            .iter()
            .map(|&slot| SlotStatus {
                slot,
                tries_left: tries_left(&env, slot),
                good: is_good(&env, slot),
                booted: booted == Some(slot),
                target: cfg.slot(slot).clone(),
            })
            .collect(),
        state,
    })
}

/// What [`boot_check`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum BootCheck {
    /// No update is pending.
    NoPendingUpdate { booted: Slot },
    /// This is a trial boot of the pending update.
    TrialBoot {
        slot: Slot,
        version: String,
        /// Attempts left after this one.
        tries_left: u8,
    },
    /// GRUB gave up on the pending update: recorded as a rollback.
    RolledBack {
        failed: Slot,
        booted: Slot,
        version: String,
        reason: String,
    },
    /// An update is pending in the other slot, which still has attempts left
    /// (the old slot was picked by hand in the GRUB menu).
    PendingNotBooted {
        pending: Slot,
        booted: Slot,
        version: String,
        tries_left: u8,
    },
}

/// Early boot: if an update is pending for slot X, we booted the other slot
/// and X has no attempts left, GRUB has fallen back: record the rollback in
/// the state file, the update log and the history, and mark X not good.
pub fn boot_check(cfg: &AbConfig, root: &Path) -> Result<BootCheck> {
    cfg.validate()?;
    let booted = Slot::booted(root)?;
    let _lock = lock(root)?;
    let result = check_pending(cfg, root, booted)?;
    let msg = match &result {
        BootCheck::NoPendingUpdate { booted } => {
            format!("boot-check: booted slot {booted}; no update pending")
        }
        BootCheck::TrialBoot {
            slot,
            version,
            tries_left,
        } => format!(
            "boot-check: trial boot of version {version} in slot {slot} \
             ({tries_left} attempts left after this one)"
        ),
        BootCheck::RolledBack { reason, .. } => format!("boot-check: rollback: {reason}"),
        BootCheck::PendingNotBooted {
            pending,
            booted,
            version,
            tries_left,
        } => format!(
            "boot-check: booted slot {booted}, but version {version} is pending in slot \
             {pending} with {tries_left} attempts left (chosen by hand in the boot menu?)"
        ),
    };
    history::log(root, &msg)?;
    Ok(result)
}

/// The shared part of boot-check and verify; the caller holds the lock.
fn check_pending(cfg: &AbConfig, root: &Path, booted: Slot) -> Result<BootCheck> {
    let Some(mut state) = AbState::load(root)?.filter(|s| s.pending) else {
        return Ok(BootCheck::NoPendingUpdate { booted });
    };
    let path = grubenv_path(cfg, root);
    if state.to == booted {
        let env = GrubEnv::read(&path)?;
        return Ok(BootCheck::TrialBoot {
            slot: booted,
            version: state.version.clone(),
            tries_left: tries_left(&env, booted),
        });
    }
    let failed = state.to;
    let left = GrubEnv::update(&path, |env| {
        let left = tries_left(env, failed);
        if left == 0 {
            env.set(&ok_key(failed), "0")?;
            env.set(&left_key(failed), "0")?;
            set_first(env, booted)?;
        }
        Ok(left)
    })?;
    if left > 0 {
        return Ok(BootCheck::PendingNotBooted {
            pending: failed,
            booted,
            version: state.version.clone(),
            tries_left: left,
        });
    }
    let reason = format!(
        "version {} in slot {failed} did not complete a good boot within {} attempts; \
         GRUB fell back to slot {booted}",
        state.version, cfg.tries
    );
    let now = Timestamp::now();
    state.finish(Outcome::RolledBack, &reason, now);
    state.store(root)?;
    history::record(root, now, &state.version, Outcome::RolledBack, &reason)?;
    Ok(BootCheck::RolledBack {
        failed,
        booted,
        version: state.version,
        reason,
    })
}

/// What [`verify`], [`mark_good`] did.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub slot: Slot,
    /// What boot-check found (verify repeats it, in case the early boot script
    /// did not run).
    pub boot_check: BootCheck,
    pub checks: Vec<CheckResult>,
    /// All checks passed (true when there are none).
    pub passed: bool,
    /// The slot was marked good (tries reset, first in ORDER unless another
    /// update waits for its trial boot).
    pub marked_good: bool,
    /// Boot attempts left for the slot afterwards.
    pub tries_left: u8,
    /// The history entry written if a pending update was completed.
    pub completed: Option<HistoryEntry>,
}

/// Late boot: run the health checks; if all pass, mark the booted slot good
/// (tries reset to `tries`, `X_OK=1`, first in `ORDER`) and complete a pending
/// update of this slot (state cleared, history "success"). A failing check
/// leaves everything unmarked, so GRUB's counter keeps running down.
pub fn verify(cfg: &AbConfig, root: &Path) -> Result<VerifyReport> {
    cfg.validate()?;
    let booted = Slot::booted(root)?;
    let _lock = lock(root)?;
    let boot_check = check_pending(cfg, root, booted)?;
    if let BootCheck::RolledBack { reason, .. } = &boot_check {
        history::log(root, &format!("verify: rollback: {reason}"))?;
    }
    let checks: Vec<CheckResult> = cfg
        .health_checks
        .iter()
        .map(|argv| run_check(argv, cfg.health_check_timeout, booted))
        .collect();
    for c in &checks {
        history::log(
            root,
            &format!(
                "verify: health check {:?}: {} ({} ms){}",
                c.argv,
                if c.passed { "passed" } else { "FAILED" },
                c.duration_ms,
                match (&c.error, c.output.trim()) {
                    (Some(e), "") => format!(": {e}"),
                    (Some(e), out) => format!(": {e}; output: {out}"),
                    (None, _) => String::new(),
                }
            ),
        )?;
    }
    let passed = checks.iter().all(|c| c.passed);
    if !passed {
        let env = GrubEnv::read(&grubenv_path(cfg, root))?;
        let left = tries_left(&env, booted);
        history::log(
            root,
            &format!(
                "verify: slot {booted} NOT marked good; {left} boot attempts left{}",
                if left == 0 {
                    format!(", the next boot falls back to slot {}", booted.other())
                } else {
                    String::new()
                }
            ),
        )?;
        return Ok(VerifyReport {
            slot: booted,
            boot_check,
            checks,
            passed,
            marked_good: false,
            tries_left: left,
            completed: None,
        });
    }
    let reason = format!(
        "slot {booted} booted and passed {} health check(s)",
        checks.len()
    );
    let (left, completed) = mark_booted_good(cfg, root, booted, &reason)?;
    Ok(VerifyReport {
        slot: booted,
        boot_check,
        checks,
        passed,
        marked_good: true,
        tries_left: left,
        completed,
    })
}

/// Operator: mark the booted slot good without running the health checks.
pub fn mark_good(cfg: &AbConfig, root: &Path) -> Result<VerifyReport> {
    cfg.validate()?;
    let booted = Slot::booted(root)?;
    let _lock = lock(root)?;
    let boot_check = check_pending(cfg, root, booted)?;
    let reason = format!("slot {booted} marked good by the operator (qx-update ab mark-good)");
    let (left, completed) = mark_booted_good(cfg, root, booted, &reason)?;
    Ok(VerifyReport {
        slot: booted,
        boot_check,
        checks: Vec::new(),
        passed: true,
        marked_good: true,
        tries_left: left,
        completed,
    })
}

/// Mark `booted` good and complete its pending update; the lock is held.
fn mark_booted_good(
    cfg: &AbConfig,
    root: &Path,
    booted: Slot,
    reason: &str,
) -> Result<(u8, Option<HistoryEntry>)> {
    let state = AbState::load(root)?;
    let other_waits = state
        .as_ref()
        .is_some_and(|s| s.pending && s.to == booted.other());
    GrubEnv::update(&grubenv_path(cfg, root), |env| {
        env.set(&left_key(booted), &cfg.tries.to_string())?;
        env.set(&ok_key(booted), "1")?;
        // An update installed into the other slot that has not had its trial
        // boot yet keeps its place at the front.
        if !(other_waits && tries_left(env, booted.other()) > 0) {
            set_first(env, booted)?;
        }
        Ok(())
    })?;
    let mut completed = None;
    if let Some(mut s) = state.filter(|s| s.pending && s.to == booted) {
        let now = Timestamp::now();
        s.finish(Outcome::Success, reason, now);
        s.store(root)?;
        completed = Some(history::record(
            root,
            now,
            &s.version,
            Outcome::Success,
            reason,
        )?);
        history::log(
            root,
            &format!(
                "update to version {} in slot {booted} completed: {reason}",
                s.version
            ),
        )?;
    }
    history::log(
        root,
        &format!(
            "slot {booted} marked good ({}={}, {}=1)",
            left_key(booted),
            cfg.tries,
            ok_key(booted)
        ),
    )?;
    Ok((cfg.tries, completed))
}

/// What [`mark_bad`] did.
#[derive(Clone, Debug, Serialize)]
pub struct MarkBadReport {
    pub slot: Slot,
    /// The slot the next boot will use.
    pub next_boot: Slot,
    /// The history entry if a pending update of this slot was abandoned.
    pub rolled_back: Option<HistoryEntry>,
}

/// Operator: mark the booted slot bad (`X_OK=0`, `X_LEFT=0`, the other slot
/// first), so that the next boot uses the other slot. Refused when the other
/// slot is not good or has no attempts left: no slot would be left to boot.
pub fn mark_bad(cfg: &AbConfig, root: &Path) -> Result<MarkBadReport> {
    cfg.validate()?;
    let booted = Slot::booted(root)?;
    let other = booted.other();
    let _lock = lock(root)?;
    GrubEnv::update(&grubenv_path(cfg, root), |env| {
        if !is_good(env, other) || tries_left(env, other) == 0 {
            return Err(BootError::NoFallback {
                slot: booted,
                other,
            });
        }
        env.set(&left_key(booted), "0")?;
        env.set(&ok_key(booted), "0")?;
        set_first(env, other)
    })?;
    let mut rolled_back = None;
    if let Some(mut s) = AbState::load(root)?.filter(|s| s.pending && s.to == booted) {
        let reason = format!(
            "slot {booted} marked bad by the operator (qx-update ab mark-bad); \
             the next boot uses slot {other}"
        );
        let now = Timestamp::now();
        s.finish(Outcome::RolledBack, &reason, now);
        s.store(root)?;
        rolled_back = Some(history::record(
            root,
            now,
            &s.version,
            Outcome::RolledBack,
            &reason,
        )?);
    }
    history::log(
        root,
        &format!("slot {booted} marked bad; the next boot uses slot {other}"),
    )?;
    Ok(MarkBadReport {
        slot: booted,
        next_boot: other,
        rolled_back,
    })
}
