//! `qx-update rollback` (docs/spec.md §4): restore what the latest apply replaced, from its
//! backup, restart, verify; the backup is consumed.

use qx_core::fs::remove_any;
use qx_core::status::{Outcome, UpdateState};
use qx_core::ComponentKind;

use crate::transaction::apply::{
    list_backups, lock, new_operation_id, now, read_backup_meta, recover_locked, restore_all,
    temp_paths, ApplyReport, Tx,
};
use crate::transaction::journal::{crash_point, Entry, Journal, OpKind, Phase};
use crate::{Agent, AgentError};

/// `qx-update rollback`: restore what the latest apply replaced, from its backup; restart;
/// verify the restored files run; the backup is consumed.
pub fn rollback(agent: &Agent) -> Result<ApplyReport, AgentError> {
    let _lock = lock(agent.paths())?;
    recover_locked(agent)?;
    let paths = agent.paths();
    let mut backups = list_backups(&paths.backup);
    backups.sort_by(|a, b| b.0.cmp(&a.0));
    let Some((_, dir)) = backups.into_iter().next() else {
        return Err(AgentError::NoBackup {
            dir: paths.backup.clone(),
        });
    };
    let meta = read_backup_meta(&dir).ok_or_else(|| AgentError::NoBackup { dir: dir.clone() })?;
    let op = new_operation_id();
    let entries = meta
        .entries
        .iter()
        .map(|e| {
            let (extract_dir, temp) = temp_paths(&e.target, &e.name, &paths.root, &op);
            Entry {
                extract_dir,
                temp,
                health_command: None,
                migrate_command: None,
                ..e.clone()
            }
        })
        .collect();
    let mut j = Journal {
        operation_id: op.clone(),
        op: OpKind::Rollback,
        product: agent.config().product.to_string(),
        version: meta.from_version.clone().unwrap_or_else(|| "(none)".into()),
        from_version: Some(meta.version.clone()),
        phase: Phase::Installing,
        started: now(),
        backup_dir: dir.clone(),
        staging_dir: paths.staging.join(&meta.version),
        entries,
        services_restarted: false,
        reason: Some(format!("rollback of {} requested", meta.version)),
    };
    let status = agent.status_handle();
    status.set_operation(Some(op));
    let mut tx = Tx::new(agent);
    tx.log.line(&format!(
        "rollback: restoring the state before {} from {}",
        meta.version,
        dir.display()
    ));
    let result = j
        .store(&paths.journal)
        .and_then(|_| finish(&mut tx, &mut j));
    match &result {
        Ok(r) => status.set_state(UpdateState::Done {
            version: r.version.clone(),
        }),
        Err(e) => status.set_state(UpdateState::Failed {
            reason: e.to_string(),
        }),
    }
    tx.log.sync();
    status.set_operation(None);
    status.refresh();
    result
}

pub(super) fn finish(tx: &mut Tx<'_>, j: &mut Journal) -> Result<ApplyReport, AgentError> {
    tx.state(UpdateState::RollingBack {
        reason: j.reason.clone().unwrap_or_default(),
    });
    restore_all(tx, j)?;
    crash_point("rollback-restored");
    let services = j.services();
    if !services.is_empty() {
        j.services_restarted = true;
        tx.store(j)?;
    }
    let mut problems = Vec::new();
    for s in &services {
        tx.state(UpdateState::Restarting { service: s.clone() });
        let ran = tx.services.restart(s);
        tx.log.line(&format!("restart {s}: {}", ran.status));
        if !ran.ok {
            problems.push(format!("restart of {s} failed ({})", ran.status));
        }
    }
    for e in &j.entries {
        if let (Some(s), ComponentKind::File, Some(_)) = (&e.restart_service, e.kind, &e.backup) {
            tx.state(UpdateState::Verifying {
                component: e.name.clone(),
            });
            if let Err(reason) = tx.services.wait_running(s, &e.target) {
                problems.push(format!("{}: {reason}", e.name));
            }
        }
    }
    let reason = (!problems.is_empty()).then(|| problems.join("; "));
    tx.history(
        j,
        if reason.is_none() {
            Outcome::RolledBack
        } else {
            Outcome::Failed
        },
        reason.clone(),
    )?;
    tx.phase(j, Phase::Committed)?;
    // The backup was consumed.
    let _ = remove_any(&j.backup_dir);
    match reason {
        None => {
            tx.log.line(&format!("rollback: now at {}", j.version));
            Ok(ApplyReport {
                version: j.version.clone(),
                components: j.entries.iter().map(|e| e.name.clone()).collect(),
                outcome: Outcome::RolledBack,
                system: None,
            })
        }
        Some(reason) => Err(AgentError::RollbackFailed { reason }),
    }
}
