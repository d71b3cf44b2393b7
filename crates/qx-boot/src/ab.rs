//! The A/B state machine: what GRUB's environment and the state file say, and
//! the boot-time operations that move them forward.
//!
//! GRUB's side of the state (`ORDER`, `X_LEFT`, `X_OK`; see
//! packaging/grub/README.md) is read and changed only through the verbs of
//! [`crate::slotenv`].
//!
//! Operations, each taking an [`AbContext`] (the configuration, the root
//! prefix and the update log the agent's configuration names):
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
use qx_core::fs::{create_dir_all_durable, under_root};
use qx_core::{HistoryEntry, Outcome, UpdateLog};
use serde::Serialize;

use crate::config::{AbConfig, SlotTarget};
use crate::error::{BootError, Result};
use crate::grubenv::GrubEnv;
use crate::health::{run_check, CheckResult};
use crate::history;
use crate::slot::Slot;
use crate::slotenv::{self, is_good, left_key, next_boot, ok_key, order, tries_left};
use crate::state::AbState;

/// Lock file serialising A/B operations.
pub const LOCK_PATH: &str = "/quantix/ab.lock";

/// Where an A/B operation works: the agent's A/B configuration, the host root
/// that host paths are resolved under, and the update log.
#[derive(Clone, Copy, Debug)]
pub struct AbContext<'a> {
    /// `updates.ab` of the agent's configuration.
    pub config: &'a AbConfig,
    /// The root prefix (`--root`): grubenv, state file, history, lock and
    /// slot directories are resolved under it.
    pub root: &'a Path,
    /// The update log (`updates.log_path` of the agent's configuration), as a
    /// path on this machine: it is used as it is, not resolved under `root`.
    pub log_path: &'a Path,
    /// Queue fleet events (`confirmed`, `rolled_back`) in the host's event queue
    /// (`qx_core::fleet_queue`, under `root`): set when the host reports to a fleet.
    pub events: bool,
}

impl<'a> AbContext<'a> {
    pub fn new(config: &'a AbConfig, root: &'a Path, log_path: &'a Path) -> Self {
        AbContext {
            config,
            root,
            log_path,
            events: false,
        }
    }

    /// The same context, queueing fleet events when `on`.
    pub fn with_events(self, on: bool) -> Self {
        AbContext { events: on, ..self }
    }

    /// The GRUB environment block under the root.
    pub fn grubenv_path(&self) -> PathBuf {
        under_root(self.root, &self.config.grubenv)
    }

    /// The update log, opened for appending.
    pub(crate) fn open_log(&self) -> UpdateLog {
        UpdateLog::open(self.log_path)
    }

    /// Validate the configuration, find the booted slot and take the A/B lock:
    /// the start of every operation that changes something.
    pub(crate) fn begin(&self) -> Result<(Slot, AbLock)> {
        self.config.validate()?;
        let booted = Slot::booted(self.root)?;
        let lock = lock(self.root)?;
        Ok((booted, lock))
    }
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

/// Close the pending update `state` with `outcome`: the state file and the
/// history both record it, and the fleet event queue when the host reports to
/// a fleet (`confirmed` for a success, `rolled_back` otherwise).
fn finish_update(
    ctx: &AbContext,
    mut state: AbState,
    outcome: Outcome,
    reason: &str,
) -> Result<HistoryEntry> {
    let now = Timestamp::now();
    state.finish(outcome, reason, now);
    state.store(ctx.root)?;
    let entry = history::record(ctx.root, now, &state.version, outcome, reason)?;
    if ctx.events {
        history::record_event(ctx.root, now, &state.version, outcome, reason);
        if let (Outcome::Success, Some(left)) = (outcome, &state.reverted_from) {
            history::record_reverted(ctx.root, now, left, &state.version);
        }
    }
    Ok(entry)
}

/// Marks the pending update of `version` as a signed revert leaving `left` (called right after
/// the image is installed): its confirmation is then also reported as `reverted`.
pub fn mark_revert(ctx: &AbContext, version: &str, left: &str) -> Result<()> {
    let _lock = lock(ctx.root)?;
    match AbState::load(ctx.root)? {
        Some(mut state) if state.pending && state.version == version => {
            state.reverted_from = Some(left.to_owned());
            state.store(ctx.root)
        }
        _ => Ok(()),
    }
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
pub fn status(ctx: &AbContext) -> Result<AbStatus> {
    ctx.config.validate()?;
    let (booted, booted_error) = match Slot::booted(ctx.root) {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let path = ctx.grubenv_path();
    let env = GrubEnv::read(&path)?;
    let state = AbState::load(ctx.root)?;
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
                target: ctx.config.slot(slot).clone(),
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

impl BootCheck {
    /// One line saying what was found: the update log's `boot-check:` line
    /// and the CLI's output are both made from it.
    pub fn summary(&self) -> String {
        match self {
            BootCheck::NoPendingUpdate { booted } => {
                format!("booted slot {booted}; no update pending")
            }
            BootCheck::TrialBoot {
                slot,
                version,
                tries_left,
            } => format!(
                "trial boot of version {version} in slot {slot}; {tries_left} attempt(s) left \
                 after this one"
            ),
            BootCheck::RolledBack { reason, .. } => format!("rollback: {reason}"),
            BootCheck::PendingNotBooted {
                pending,
                booted,
                version,
                tries_left,
            } => format!(
                "booted slot {booted}; version {version} is still pending in slot {pending} \
                 ({tries_left} attempt(s) left; chosen by hand in the boot menu?)"
            ),
        }
    }
}

/// Early boot: if an update is pending for slot X, we booted the other slot
/// and X has no attempts left, GRUB has fallen back: record the rollback in
/// the state file, the update log and the history, and mark X not good.
pub fn boot_check(ctx: &AbContext) -> Result<BootCheck> {
    let (booted, _lock) = ctx.begin()?;
    let result = check_pending(ctx, booted)?;
    history::log(
        &mut ctx.open_log(),
        &format!("boot-check: {}", result.summary()),
    );
    Ok(result)
}

/// The shared part of boot-check and verify; the caller holds the lock.
fn check_pending(ctx: &AbContext, booted: Slot) -> Result<BootCheck> {
    let Some(state) = AbState::load(ctx.root)?.filter(|s| s.pending) else {
        return Ok(BootCheck::NoPendingUpdate { booted });
    };
    let path = ctx.grubenv_path();
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
            slotenv::fall_back(env, failed)?;
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
        state.version, ctx.config.tries
    );
    let version = state.version.clone();
    finish_update(ctx, state, Outcome::RolledBack, &reason)?;
    Ok(BootCheck::RolledBack {
        failed,
        booted,
        version,
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
pub fn verify(ctx: &AbContext) -> Result<VerifyReport> {
    let (booted, _lock) = ctx.begin()?;
    let boot_check = check_pending(ctx, booted)?;
    let mut log = ctx.open_log();
    if let BootCheck::RolledBack { reason, .. } = &boot_check {
        history::log(&mut log, &format!("verify: rollback: {reason}"));
    }
    let checks = run_health_checks(ctx.config, booted, &mut log);
    let passed = checks.iter().all(|c| c.passed);
    let (marked_good, tries_left, completed) = if passed {
        let reason = format!(
            "slot {booted} booted and passed {} health check(s)",
            checks.len()
        );
        let (left, completed) = mark_booted_good(ctx, booted, &reason, &mut log)?;
        (true, left, completed)
    } else {
        (false, log_not_marked(ctx, booted, &mut log)?, None)
    };
    Ok(VerifyReport {
        slot: booted,
        boot_check,
        checks,
        passed,
        marked_good,
        tries_left,
        completed,
    })
}

/// Run the configured health checks in the booted slot, one update-log line each.
fn run_health_checks(cfg: &AbConfig, booted: Slot, log: &mut UpdateLog) -> Vec<CheckResult> {
    let checks: Vec<CheckResult> = cfg
        .health_checks
        .iter()
        .map(|argv| run_check(argv, cfg.health_check_timeout, booted))
        .collect();
    for c in &checks {
        let detail = match (&c.error, c.output.trim()) {
            (Some(e), "") => format!(": {e}"),
            (Some(e), out) => format!(": {e}; output: {out}"),
            (None, _) => String::new(),
        };
        history::log(
            log,
            &format!(
                "verify: health check {:?}: {} ({} ms){detail}",
                c.argv,
                if c.passed { "passed" } else { "FAILED" },
                c.duration_ms,
            ),
        );
    }
    checks
}

/// A failed verify: nothing is marked; say how many attempts are left.
fn log_not_marked(ctx: &AbContext, booted: Slot, log: &mut UpdateLog) -> Result<u8> {
    let env = GrubEnv::read(&ctx.grubenv_path())?;
    let left = tries_left(&env, booted);
    let next = if left == 0 {
        format!(", the next boot falls back to slot {}", booted.other())
    } else {
        String::new()
    };
    history::log(
        log,
        &format!("verify: slot {booted} NOT marked good; {left} boot attempts left{next}"),
    );
    Ok(left)
}

/// Operator: mark the booted slot good without running the health checks.
pub fn mark_good(ctx: &AbContext) -> Result<VerifyReport> {
    let (booted, _lock) = ctx.begin()?;
    let boot_check = check_pending(ctx, booted)?;
    let reason = format!("slot {booted} marked good by the operator (qx-update ab mark-good)");
    let (left, completed) = mark_booted_good(ctx, booted, &reason, &mut ctx.open_log())?;
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
    ctx: &AbContext,
    booted: Slot,
    reason: &str,
    log: &mut UpdateLog,
) -> Result<(u8, Option<HistoryEntry>)> {
    let tries = ctx.config.tries;
    let state = AbState::load(ctx.root)?;
    let other_waits = state
        .as_ref()
        .is_some_and(|s| s.pending && s.to == booted.other());
    GrubEnv::update(&ctx.grubenv_path(), |env| {
        // An update installed into the other slot that has not had its trial
        // boot yet keeps its place at the front.
        let keep_order = other_waits && tries_left(env, booted.other()) > 0;
        slotenv::mark_good(env, booted, tries, keep_order)
    })?;
    let mut completed = None;
    if let Some(s) = state.filter(|s| s.pending && s.to == booted) {
        let version = s.version.clone();
        completed = Some(finish_update(ctx, s, Outcome::Success, reason)?);
        history::log(
            log,
            &format!("update to version {version} in slot {booted} completed: {reason}"),
        );
    }
    history::log(
        log,
        &format!(
            "slot {booted} marked good ({}={tries}, {}=1)",
            left_key(booted),
            ok_key(booted)
        ),
    );
    Ok((tries, completed))
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
pub fn mark_bad(ctx: &AbContext) -> Result<MarkBadReport> {
    let (booted, _lock) = ctx.begin()?;
    let other = booted.other();
    GrubEnv::update(&ctx.grubenv_path(), |env| {
        if !is_good(env, other) || tries_left(env, other) == 0 {
            return Err(BootError::NoFallback {
                slot: booted,
                other,
            });
        }
        slotenv::make_unbootable(env, booted)
    })?;
    let mut rolled_back = None;
    if let Some(s) = AbState::load(ctx.root)?.filter(|s| s.pending && s.to == booted) {
        let reason = format!(
            "slot {booted} marked bad by the operator (qx-update ab mark-bad); \
             the next boot uses slot {other}"
        );
        rolled_back = Some(finish_update(ctx, s, Outcome::RolledBack, &reason)?);
    }
    history::log(
        &mut ctx.open_log(),
        &format!("slot {booted} marked bad; the next boot uses slot {other}"),
    );
    Ok(MarkBadReport {
        slot: booted,
        next_boot: other,
        rolled_back,
    })
}
