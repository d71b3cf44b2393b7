//! `qx-update rollback` (docs/spec.md §4): undo the latest apply from its backup, restart,
//! and verify by the same rule as an apply (the component's health command if it has one,
//! else the restarted service runs the restored file's inode). The backup is consumed, so N
//! rollbacks in a row walk back the last N applies, as far as `updates.keep_backups` keeps
//! their backups.
//!
//! Never past the first install: when nothing of a release was installed before it (no
//! entry of its backup holds a file), rolling it back would remove every component and
//! leave nothing running, so it is refused unless forced (`--force`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use qx_core::fleet::EventType;
use qx_core::fs::remove_any;
use qx_core::status::{Outcome, UpdateState};
use qx_core::Version;
use serde::Serialize;

use crate::transaction::apply::{
    lock, new_operation_id, now, read_backup_meta, recover_locked, restore_all, temp_paths,
    verify_entry, ApplyReport, BackupMeta, Tx,
};
use crate::transaction::journal::{crash_point, Entry, Journal, OpKind, Phase};
use crate::{Agent, AgentError, HostPaths};

/// Options of `qx-update rollback`.
#[derive(Debug, Clone, Default)]
pub struct RollbackOptions {
    /// Roll back a first install too: every component of it is removed (`--force`).
    pub force: bool,
    /// Who asked for it (recorded in the history).
    pub started_by: Option<qx_core::history::StartedBy>,
}

/// What a rollback would do, read from the latest backup; no host change.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackPlan {
    /// The release whose apply is undone.
    pub undoes: String,
    /// The release the host goes back to; `None` for a first install (nothing before it).
    pub to_version: Option<String>,
    pub backup_dir: PathBuf,
    pub components: Vec<RollbackStep>,
    /// Nothing of `undoes` was installed before it: rolling back removes every component.
    pub first_install: bool,
}

/// One component of a [`RollbackPlan`].
#[derive(Debug, Clone, Serialize)]
pub struct RollbackStep {
    pub name: String,
    /// The version the undone apply installed.
    pub installed: String,
    /// The version restored; `None` when the component was not installed before (removed).
    pub restores: Option<String>,
    /// `"restore"` | `"remove"`.
    pub action: &'static str,
}

impl RollbackPlan {
    fn of(meta: &BackupMeta, dir: &Path) -> Self {
        let components: Vec<RollbackStep> = meta
            .entries
            .iter()
            .map(|e| RollbackStep {
                name: e.name.clone(),
                installed: e.version.clone(),
                restores: e.backup.as_ref().map(|_| {
                    e.previous_version
                        .clone()
                        .unwrap_or_else(|| "(the unversioned file it replaced)".into())
                }),
                action: if e.backup.is_some() {
                    "restore"
                } else {
                    "remove"
                },
            })
            .collect();
        RollbackPlan {
            undoes: meta.version.clone(),
            to_version: meta.from_version.clone(),
            backup_dir: dir.to_owned(),
            first_install: components.iter().all(|c| c.restores.is_none()),
            components,
        }
    }

    /// The plan as the confirmation shows it: each component → the version restored, or
    /// "removed".
    pub fn render(&self) -> String {
        let mut out = format!(
            "Rollback undoes the apply of {} (backup {}):\n",
            self.undoes,
            self.backup_dir.display()
        );
        for c in &self.components {
            let to = match &c.restores {
                Some(v) => v.clone(),
                None => format!("removed (not installed before {})", self.undoes),
            };
            let _ = writeln!(out, "  {:<24} {} -> {to}", c.name, c.installed);
        }
        let _ = match (&self.to_version, self.first_install) {
            (_, true) => writeln!(
                out,
                "{} was the first install: every component above is removed and nothing is left installed (only with --force).",
                self.undoes
            ),
            (Some(v), false) => writeln!(out, "The host goes back to {v}."),
            (None, false) => writeln!(out, "The host goes back to what it ran before {}.", self.undoes),
        };
        out
    }
}

/// Complete backups (with `backup.json`), the most recently made first (the order of the
/// applies that made them; the version breaks ties).
pub(super) fn backups_newest_first(backup_root: &Path) -> Vec<(BackupMeta, PathBuf)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(backup_root) {
        for d in rd.flatten() {
            if let Some(meta) = read_backup_meta(&d.path()) {
                out.push((meta, d.path()));
            }
        }
    }
    let key = |m: &BackupMeta| {
        (
            m.created.parse::<jiff::Timestamp>().ok(),
            Version::parse(&m.version).ok(),
        )
    };
    out.sort_by_key(|b| std::cmp::Reverse(key(&b.0)));
    out
}

/// "nothing older": no backup is left to roll back to.
fn nothing_older(agent: &Agent) -> AgentError {
    let paths = agent.paths();
    let installed = paths.installed_versions();
    let installed = if installed.is_empty() {
        "nothing recorded".to_owned()
    } else {
        installed
            .iter()
            .map(|(c, v)| format!("{c} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    AgentError::NoBackup {
        dir: paths.backup.clone(),
        installed,
        keep: agent.config().keep_backups,
    }
}

/// The latest backup and what rolling it back does; no host change.
pub fn plan(agent: &Agent) -> Result<RollbackPlan, AgentError> {
    let (meta, dir) = backups_newest_first(&agent.paths().backup)
        .into_iter()
        .next()
        .ok_or_else(|| nothing_older(agent))?;
    Ok(RollbackPlan::of(&meta, &dir))
}

/// `qx-update rollback`: see the module documentation.
pub fn rollback(agent: &Agent, opts: &RollbackOptions) -> Result<ApplyReport, AgentError> {
    let lock = lock(agent.paths())?;
    recover_locked(agent)?;
    let paths = agent.paths();
    let (meta, dir) = backups_newest_first(&paths.backup)
        .into_iter()
        .next()
        .ok_or_else(|| nothing_older(agent))?;
    let plan = RollbackPlan::of(&meta, &dir);
    if plan.first_install && !opts.force {
        return Err(AgentError::RollbackFirstInstall {
            version: plan.undoes,
            components: plan
                .components
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let op = new_operation_id();
    lock.record(Some(&op));
    let mut j = journal_for(agent, paths, &meta, &dir, &op, opts.started_by.clone());
    let status = agent.status_handle();
    status.set_operation(Some(op));
    let mut tx = Tx::new(agent);
    tx.log.line(&format!(
        "rollback: undoing {} from {}: {}",
        meta.version,
        dir.display(),
        plan.render().replace('\n', " | ")
    ));
    let result = j
        .store(&paths.journal)
        .and_then(|_| finish(&mut tx, &mut j));
    match &result {
        Ok(r) => {
            let mut e = crate::fleet::event(EventType::RolledBack, Some(&meta.version));
            e.message = Some(format!(
                "rolled back by the operator (qx-update rollback) to {}",
                r.version
            ));
            agent.fleet().record(e);
            status.set_state(UpdateState::Done {
                version: r.version.clone(),
            })
        }
        Err(e) => status.set_state(e.failed_state()),
    }
    tx.log.sync();
    status.set_operation(None);
    status.refresh();
    result
}

/// The rollback's journal: the backup's entries (with their health commands, for the
/// verification), new temporaries, phase `installing` (recovery restores from the backup).
fn journal_for(
    agent: &Agent,
    paths: &HostPaths,
    meta: &BackupMeta,
    dir: &Path,
    op: &str,
    started_by: Option<qx_core::history::StartedBy>,
) -> Journal {
    let entries = meta
        .entries
        .iter()
        .map(|e| {
            let (extract_dir, temp) = temp_paths(&e.target, &e.name, &paths.root, op);
            Entry {
                extract_dir,
                temp,
                migrate_command: None,
                ..e.clone()
            }
        })
        .collect();
    Journal {
        operation_id: op.to_owned(),
        op: OpKind::Rollback,
        product: agent.config().product.to_string(),
        version: meta.from_version.clone().unwrap_or_else(|| "(none)".into()),
        from_version: Some(meta.version.clone()),
        phase: Phase::Installing,
        started: now(),
        backup_dir: dir.to_owned(),
        staging_dir: paths.staging.join(&meta.version),
        entries,
        services_restarted: false,
        reason: Some(format!("rollback of {} requested", meta.version)),
        reverted: false,
        running: None,
        started_by,
    }
}

/// Restore, restart, verify, record (also the end of an interrupted rollback, in recovery).
pub(super) fn finish(tx: &mut Tx<'_>, j: &mut Journal) -> Result<ApplyReport, AgentError> {
    tx.state(UpdateState::RollingBack {
        reason: j.reason.clone().unwrap_or_default(),
    });
    restore_all(tx, j)?;
    crash_point("rollback-restored");
    let mut problems = restart_restored(tx, j)?;
    let restored: Vec<_> = j
        .entries
        .iter()
        .filter(|e| e.backup.is_some())
        .cloned()
        .collect();
    for e in &restored {
        tx.state(UpdateState::Verifying {
            component: e.name.clone(),
        });
        match verify_entry(tx, j, e)? {
            Ok(()) => tx.log.line(&format!("verify {} (restored): ok", e.name)),
            Err(reason) => {
                tx.log
                    .line(&format!("verify {} (restored): FAILED: {reason}", e.name));
                problems.push(format!("{}: {reason}", e.name));
            }
        }
    }
    let reason = (!problems.is_empty()).then(|| problems.join("; "));
    let outcome = match reason {
        None => Outcome::RolledBack,
        Some(_) => Outcome::Failed,
    };
    tx.history(j, outcome, reason.clone())?;
    tx.phase(j, Phase::Committed)?;
    // The backup was consumed: the next rollback takes the one before it.
    let _ = remove_any(&j.backup_dir);
    match reason {
        None => {
            tx.log.line(&format!("rollback: now at {}", j.version));
            Ok(ApplyReport {
                version: j.version.clone(),
                components: j.entries.iter().map(|e| e.name.clone()).collect(),
                outcome: Outcome::RolledBack,
                system: None,
                deltas: Vec::new(),
            })
        }
        Some(reason) => Err(AgentError::RollbackFailed { reason }),
    }
}

/// Restarts, once each, the services of the restored components (a removed component's
/// service is not restarted: its executable is gone). Returns the failures.
fn restart_restored(tx: &mut Tx<'_>, j: &mut Journal) -> Result<Vec<String>, AgentError> {
    let mut services: Vec<String> = Vec::new();
    for e in j.entries.iter().filter(|e| e.backup.is_some()) {
        if let Some(s) = &e.restart_service {
            if !services.contains(s) {
                services.push(s.clone());
            }
        }
    }
    if !services.is_empty() {
        j.services_restarted = true;
        tx.store(j)?;
    }
    let mut problems = Vec::new();
    for s in &services {
        tx.state(UpdateState::Restarting { service: s.clone() });
        let ran = tx.run_recorded(j, |m, started| m.restart(s, started))?;
        tx.log.line(&format!("restart {s}: {}", ran.status));
        tx.log.block(
            "stderr",
            crate::untrusted::printable_output(&ran.stderr).as_bytes(),
        );
        if !ran.ok {
            problems.push(format!("restart of {s} failed ({})", ran.status));
        }
    }
    for e in j.entries.iter().filter(|e| e.backup.is_none()) {
        if let Some(s) = &e.restart_service {
            tx.log.line(&format!(
                "{} was removed; its service {s} was not restarted (stop it if it still runs)",
                e.name
            ));
        }
    }
    Ok(problems)
}
