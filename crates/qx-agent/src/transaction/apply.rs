//! The component-update transaction (docs/spec.md §4 steps 1–8) and its crash recovery
//! (`qx-update rollback` is [`super::rollback`]).
//!
//! Order of an apply, each phase change written to the journal (fsynced) first:
//! 1. lock `/data/updates/lock` (a second apply gets [`AgentError::Busy`]); finish any
//!    interrupted apply from its journal; fetch + verify the manifest (`check`);
//! 2. remove what other releases left in `staging/`; free-space check, download every artifact
//!    to `staging/<version>/` (resumable, verified); free-space check for the unpacked size and
//!    the backups. A failed apply removes its staging unless a network or server failure cut a
//!    download (the next attempt resumes it);
//! 3. journal `prepared`; extract each artifact beside its target (`.qx-x-<name>.<op>`, then
//!    `.qx-new-<name>.<op>`), permissions from the manifest, fsync;
//! 4. back up every target that exists to `backup/<version>/<component>/`, fsync, write
//!    `backup.json`; journal `installing`; replace each target by rename (a file) or
//!    `renameat2(RENAME_EXCHANGE)` (a directory), fsync the directory. An installed file is
//!    never opened for writing (ETXTBSY, docs/spec.md §4);
//! 5. run migrations (cwd = the installed migrations directory, output into the update log);
//!    failure: restore every file, no restart, error (docs/spec.md §4); journal `migrated`;
//! 6. restart each service once, verify the effect (`/proc/<pid>/exe` is the new inode, or the
//!    health command passes); failure: restore, restart again, error (docs/spec.md §4);
//! 7. write `/data/versions/<component>`; journal `committed`; history; prune staging/backups.
//!
//! Recovery (at every start): `prepared` → remove temporaries; `installing`/`rolling_back` →
//! restore every file from backup; `migrated` → roll forward from step 6.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use qx_core::fleet::EventType;
use qx_core::fs::{
    copy_durable, fsync_dir, fsync_tree, remove_any, swap_into_place, under_root, write_atomic,
};
use qx_core::status::{HistoryEntry, Outcome, UpdateState};
use qx_core::{ArtifactRef, ComponentKind, UpdateLog, Version};
use serde::{Deserialize, Serialize};

use crate::check::{self, download_options};
use crate::download::{free_space, Downloader};
use crate::transaction::extract;
use crate::transaction::journal::{crash_point, Entry, Journal, OpKind, Phase};
use crate::transaction::service::{self, ServiceManager};
use crate::{Agent, AgentError, HostPaths};

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApplyOptions {
    /// Only these components (`--component`); `None` or empty = all of the release.
    #[serde(default)]
    pub components: Option<Vec<String>>,
    /// Accept a lower version, naming it exactly (`--allow-downgrade VERSION`).
    #[serde(default)]
    pub allow_downgrade: Option<String>,
    /// Install this release of the channel state's `releases` (`--version V`, docs/spec.md §8).
    #[serde(default)]
    pub version: Option<String>,
    /// Install from a bundle file or URL (`--from`, docs/spec.md §12); never from the host API.
    #[serde(skip)]
    pub from: Option<String>,
    /// Who started the apply (recorded in the history): set by the CLI, the host API and the
    /// daemon's automatic apply.
    #[serde(skip)]
    pub started_by: Option<qx_core::history::StartedBy>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub version: String,
    /// Components applied (empty when the host was already up to date).
    pub components: Vec<String>,
    pub outcome: Outcome,
    /// The system image written into the inactive slot (`full`/`mixed` releases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<crate::fullimage::SystemInstall>,
    /// Components rebuilt from a delta instead of downloaded whole (docs/spec.md §11).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<super::DeltaUse>,
}

/// What recovery did with an interrupted operation.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    pub operation_id: String,
    pub version: String,
    /// The phase the journal was in.
    pub phase: Phase,
    /// `"rolled_back"` | `"rolled_forward"` | `"rollback_completed"`.
    pub action: String,
    pub outcome: Outcome,
    pub reason: Option<String>,
}

/// `backup/<version>/backup.json`: what `qx-update rollback` restores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupMeta {
    pub version: String,
    pub from_version: Option<String>,
    pub created: String,
    pub entries: Vec<Entry>,
}

pub const BACKUP_META: &str = "backup.json";

/// The apply lock: held (flock) for the whole transaction, released when dropped. The file
/// names its holder ([`LockHolder`]) for `qx-update status` in other processes.
pub struct ApplyLock {
    file: fs::File,
}

/// Who holds the apply lock: written into the lock file by the holder (in place: the lock is
/// on the file's inode; not fsynced, it describes a running process).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: Option<u32>,
    /// The operation it runs, once it has one.
    pub operation_id: Option<String>,
}

impl ApplyLock {
    /// Records this process, and the operation it runs, as the holder.
    pub fn record(&self, operation_id: Option<&str>) {
        use std::os::unix::fs::FileExt;
        let holder = LockHolder {
            pid: Some(std::process::id()),
            operation_id: operation_id.map(str::to_owned),
        };
        if let Ok(bytes) = serde_json::to_vec(&holder) {
            // Best effort: status then shows the holder without its pid.
            let _ = self
                .file
                .set_len(0)
                .and_then(|()| self.file.write_all_at(&bytes, 0));
        }
    }
}

pub fn lock(paths: &HostPaths) -> Result<ApplyLock, AgentError> {
    fs::create_dir_all(&paths.updates).map_err(AgentError::io(&paths.updates))?;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&paths.lock)
        .map_err(AgentError::io(&paths.lock))?;
    use rustix::fs::{flock, FlockOperation};
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            let lock = ApplyLock { file };
            lock.record(None);
            Ok(lock)
        }
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(AgentError::Busy {
            lock: paths.lock.clone(),
        }),
        Err(e) => Err(AgentError::Io {
            path: paths.lock.clone(),
            source: e.into(),
        }),
    }
}

/// The holder of the apply lock, when a process holds it now; never takes the lock (that
/// would make an apply starting at that moment fail as busy). The kernel's table of file
/// locks (`/proc/locks`) says whether the lock file is locked; the file names the holder.
pub fn lock_holder(paths: &HostPaths) -> Option<LockHolder> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(&paths.lock).ok()?;
    let (major, minor) = (rustix::fs::major(m.dev()), rustix::fs::minor(m.dev()));
    let table = fs::read_to_string("/proc/locks").ok()?;
    // "1: FLOCK  ADVISORY  WRITE 1234 fd:00:5654740 0 EOF"; a waiter has "->" after "1:".
    let kernel_pid = table.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, "FLOCK", _, "WRITE", pid, id, ..] = f.as_slice() else {
            return None;
        };
        let mut id = id.split(':');
        let same = id.next().and_then(|x| u32::from_str_radix(x, 16).ok()) == Some(major)
            && id.next().and_then(|x| u32::from_str_radix(x, 16).ok()) == Some(minor)
            && id.next().and_then(|x| x.parse::<u64>().ok()) == Some(m.ino());
        same.then(|| pid.parse::<u32>().ok().filter(|p| *p != 0))
    })?;
    let recorded: LockHolder = fs::read(&paths.lock)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    Some(LockHolder {
        pid: recorded.pid.or(kernel_pid),
        ..recorded
    })
}

pub(super) fn new_operation_id() -> String {
    let n: u64 = rand::random();
    format!("{n:016x}")
}

pub(super) fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// Everything one running operation needs.
pub(super) struct Tx<'a> {
    pub(super) agent: &'a Agent,
    pub(super) paths: &'a HostPaths,
    pub(super) log: UpdateLog,
    pub(super) services: ServiceManager,
    /// The release being applied and the step it is at, for the fleet's `failed` event; no
    /// stage before the download (a refused check is not a failed update).
    pub(super) fleet_version: Option<String>,
    pub(super) stage: Option<&'static str>,
    /// The deltas this apply used instead of whole artifacts.
    pub(super) deltas: Vec<super::DeltaUse>,
    /// Who started the operation (into its journal).
    pub(super) started_by: Option<qx_core::history::StartedBy>,
}

impl<'a> Tx<'a> {
    pub(super) fn new(agent: &'a Agent) -> Self {
        Tx {
            agent,
            paths: agent.paths(),
            log: UpdateLog::open(&agent.config().log_path),
            services: ServiceManager::new(agent.config(), agent.root()),
            fleet_version: None,
            stage: None,
            deltas: Vec::new(),
            started_by: None,
        }
    }

    /// Enters `stage` of the apply of `version`: a failure from here on is a `failed` event.
    pub(super) fn stage(&mut self, version: &str, stage: &'static str) {
        self.fleet_version = Some(version.to_owned());
        self.stage = Some(stage);
    }

    /// Queues a fleet event about release `version` (when the host reports to a fleet).
    pub(super) fn event(&self, kind: EventType, version: &str, component: Option<&str>) {
        let mut e = crate::fleet::event(kind, Some(version));
        e.component = component.map(str::to_owned);
        self.agent.fleet().record(e);
    }

    pub(super) fn state(&self, s: UpdateState) {
        self.agent.status_handle().set_state(s);
    }

    pub(super) fn store(&mut self, j: &Journal) -> Result<(), AgentError> {
        j.store(&self.paths.journal)
    }

    pub(super) fn phase(&mut self, j: &mut Journal, phase: Phase) -> Result<(), AgentError> {
        self.log
            .line(&format!("journal {}: phase {:?}", j.operation_id, phase));
        self.log.sync();
        j.set_phase(&self.paths.journal, phase)
    }

    /// Runs one migration, health or restart command (`run`, given the service manager and
    /// the hook told its process group): the group is in the journal while the agent waits
    /// for it, so that recovery can kill what is left of it after a crash.
    pub(super) fn run_recorded(
        &mut self,
        j: &mut Journal,
        run: impl FnOnce(&ServiceManager, service::Started<'_>) -> service::Ran,
    ) -> Result<service::Ran, AgentError> {
        let path = &self.paths.journal;
        let ran = run(&self.services, &mut |group| {
            j.set_running(path, Some(group)).map_err(|e| {
                format!("cannot record the command's process group in the journal: {e}")
            })
        });
        if j.running.is_some() {
            j.set_running(path, None)?;
        }
        Ok(ran)
    }

    pub(super) fn history(
        &mut self,
        j: &Journal,
        outcome: Outcome,
        reason: Option<String>,
    ) -> Result<(), AgentError> {
        let entry = HistoryEntry {
            time: jiff::Timestamp::now(),
            kind: qx_core::UpdateKind::Component,
            version: j.version.clone(),
            from_version: j.from_version.clone(),
            components: j.entries.iter().map(|e| e.name.clone()).collect(),
            outcome,
            reason,
            started_by: j.started_by.clone(),
        };
        self.agent.status_handle().record(entry)
    }
}

// ---------------------------------------------------------------------------------------------
// apply

pub fn apply(agent: &Agent, opts: &ApplyOptions) -> Result<ApplyReport, AgentError> {
    let lock = lock(agent.paths())?;
    if let Some(r) = recover_locked(agent)? {
        tracing::warn!(operation = %r.operation_id, action = %r.action, "finished an interrupted operation before applying");
    }
    let status = agent.status_handle();
    let op = new_operation_id();
    lock.record(Some(&op));
    status.set_operation(Some(op.clone()));
    status.set_state(UpdateState::Checking);
    let mut tx = Tx::new(agent);
    tx.started_by = opts.started_by.clone();
    let result = apply_locked(&mut tx, opts, &op);
    status.record_apply(last_apply(&tx, opts, &op, &result));
    match &result {
        Ok(r) => status.set_state(UpdateState::Done {
            version: r.version.clone(),
        }),
        Err(e) => {
            tx.log.line(&format!("apply {op} FAILED: {e}"));
            if let (Some(version), Some(stage)) = (&tx.fleet_version, tx.stage) {
                agent
                    .fleet()
                    .record(crate::fleet::failed(version, stage, e));
            }
            status.set_state(e.failed_state())
        }
    }
    tx.log.sync();
    status.set_operation(None);
    drop(lock);
    status.refresh();
    status.write_metrics();
    result
}

/// The activity record of the apply `op` that ended with `result`.
fn last_apply(
    tx: &Tx<'_>,
    opts: &ApplyOptions,
    op: &str,
    result: &Result<ApplyReport, AgentError>,
) -> crate::LastApply {
    let (version, result, reason, code) = match result {
        Ok(r) => (Some(r.version.clone()), r.outcome, None, None),
        Err(e) => (
            tx.fleet_version.clone().or_else(|| opts.version.clone()),
            Outcome::Failed,
            Some(e.to_string()),
            Some(e.exit_code()),
        ),
    };
    crate::LastApply {
        time: jiff::Timestamp::now(),
        operation_id: Some(op.to_owned()),
        version,
        result,
        reason,
        code,
        started_by: opts.started_by.clone(),
    }
}

/// Steps 1–8 under the lock: check, log the manifest, stage a system image, download,
/// journal, extract, back up, install, migrate, then restart, verify and commit.
fn apply_locked(tx: &mut Tx<'_>, opts: &ApplyOptions, op: &str) -> Result<ApplyReport, AgentError> {
    let agent = tx.agent;
    tx.log.line(&format!(
        "apply {op}: checking {}",
        crate::download::redact_credentials(&check::manifest_url(agent.config()))
    ));
    let mut turn = check::Turn {
        under_lock: true,
        ..Default::default()
    };
    let (report, verified) = check::check(agent, opts, &mut turn)?;
    let Some(verified) = verified else {
        tx.log.line(&format!(
            "nothing to apply: the host is up to date on {}",
            report.version
        ));
        return Ok(ApplyReport {
            version: report.version,
            components: Vec::new(),
            outcome: Outcome::Success,
            system: None,
            deltas: Vec::new(),
        });
    };
    log_manifest(&mut tx.log, &report, &verified);
    let version = verified.manifest.version.to_string();
    let keep = staging_of(&version, opts.from.is_some());
    sweep_staging(tx, &keep);
    let result = install_release(tx, opts, &verified, op);
    if let Err(e) = &result {
        // A download cut by the network resumes at the next attempt; anything else of this
        // release is of no further use, and a full disk must not stay full.
        let keep = if resumes(e) { keep } else { Vec::new() };
        sweep_staging(tx, &keep);
    }
    result
}

/// The entries of `staging/` an apply of `version` uses: its artifacts, its system image
/// files and, when it comes from a bundle, the downloaded bundle.
fn staging_of(version: &str, from_bundle: bool) -> Vec<String> {
    let mut keep = vec![
        version.to_owned(),
        format!("{}-{version}", crate::fullimage::SYSTEM),
    ];
    if from_bundle {
        keep.push("bundles".to_owned());
    }
    keep
}

/// True for a failure whose partial download the next attempt resumes (the network, the
/// server): its staging is kept.
fn resumes(e: &AgentError) -> bool {
    use crate::download::DownloadError as D;
    matches!(
        e,
        AgentError::Fetch { .. }
            | AgentError::Download(D::Network { .. } | D::GaveUp { .. } | D::Http { .. })
    )
}

/// Removes every entry of `staging/` but those named in `keep` (docs/spec.md §4): what an
/// earlier or failed apply of another release left behind. Failures are logged.
fn sweep_staging(tx: &mut Tx<'_>, keep: &[String]) {
    remove_staging(tx, |name| !keep.iter().any(|k| k == name));
}

/// Removes the entries of `staging/` whose name `drop` accepts; failures are logged.
fn remove_staging(tx: &mut Tx<'_>, drop: impl Fn(&str) -> bool) {
    let Ok(entries) = fs::read_dir(&tx.paths.staging) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !drop(&name) {
            continue;
        }
        match remove_any(&entry.path()) {
            Ok(()) => tx
                .log
                .line(&format!("removed staging {}", entry.path().display())),
            Err(e) => tx.log.line(&format!("cannot remove staging: {e}")),
        }
    }
}

/// Drops what `staging/` holds of release `version` (its artifacts and system image files),
/// as a server's `cancel` asks (docs/spec.md §10). Takes the apply lock unless the caller
/// holds it; while another apply holds it, nothing is dropped (logged).
pub(crate) fn drop_staged(agent: &Agent, version: &str, under_lock: bool) {
    let _lock = if under_lock {
        None
    } else {
        match lock(agent.paths()) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, version, "cannot drop the cancelled version's staged download now");
                return;
            }
        }
    };
    let mut tx = Tx::new(agent);
    let names = staging_of(version, false);
    tx.log.line(&format!(
        "the server cancelled {version}: dropping its staged download"
    ));
    remove_staging(&mut tx, |name| names.iter().any(|n| n == name));
    tx.log.sync();
}

/// After the check: stage a system image, apply the components, install the image.
fn install_release(
    tx: &mut Tx<'_>,
    opts: &ApplyOptions,
    verified: &check::Verified,
    op: &str,
) -> Result<ApplyReport, AgentError> {
    let agent = tx.agent;
    let m = &verified.manifest;
    let version = m.version.to_string();
    let up_to_date = ApplyReport {
        version: version.clone(),
        components: Vec::new(),
        outcome: Outcome::Success,
        system: None,
        deltas: Vec::new(),
    };
    // A system image (full/mixed): streamed into the inactive slot (unbootable meanwhile) and
    // verified before any component changes, put in place after them (see crate::fullimage).
    let plan = crate::fullimage::plan(agent, verified, opts, &mut tx.log)?;
    if plan.is_none() && verified.to_apply.is_empty() {
        tx.log.line("nothing to apply: the host is up to date");
        return Ok(up_to_date);
    }
    tx.stage(&version, "download");
    tx.event(EventType::DownloadStarted, &version, None);
    let image = match plan {
        Some(p) => {
            let staged = crate::fullimage::stage(agent, &p, &mut tx.log)?;
            Some((p, staged))
        }
        None => None,
    };
    let report = fetch_and_apply_components(tx, verified, op, up_to_date);
    match (report, image) {
        (Ok(report), Some((p, staged))) => {
            crate::fullimage::install(agent, p, staged, &mut tx.log, report)
        }
        (Ok(report), None) => Ok(report),
        (Err(e), Some((_, staged))) => {
            staged.abandon(&format!("the components failed: {e}"));
            Err(e)
        }
        (Err(e), None) => Err(e),
    }
}

/// The components of the release (none: `up_to_date`): downloaded, then the transaction.
fn fetch_and_apply_components(
    tx: &mut Tx<'_>,
    verified: &check::Verified,
    op: &str,
    up_to_date: ApplyReport,
) -> Result<ApplyReport, AgentError> {
    let version = verified.manifest.version.to_string();
    let artifacts = if verified.to_apply.is_empty() {
        Vec::new()
    } else {
        fetch_artifacts(tx, verified)?
    };
    tx.event(EventType::DownloadDone, &version, None);
    tx.stage(&version, "install");
    tx.event(EventType::InstallStarted, &version, None);
    let mut report = if verified.to_apply.is_empty() {
        up_to_date
    } else {
        apply_components(tx, verified, op, &artifacts)?
    };
    report.deltas = std::mem::take(&mut tx.deltas);
    Ok(report)
}

/// Steps 1–2 of the component transaction: every artifact to install, downloaded (or rebuilt
/// from a delta, or taken from the bundle) into `staging/<version>/` and verified.
fn fetch_artifacts(
    tx: &mut Tx<'_>,
    verified: &check::Verified,
) -> Result<Vec<extract::Archive>, AgentError> {
    let m = &verified.manifest;
    let version = m.version.to_string();
    let staging_dir = tx.paths.staging.join(&version);
    let artifacts = match &verified.source {
        check::ArtifactSource::Server => {
            super::delta::fetch(tx, &version, &staging_dir, &verified.to_apply)?
        }
        check::ArtifactSource::Bundle(file) => {
            let expected: Vec<ArtifactRef> =
                verified.to_apply.iter().map(|c| c.artifact_ref()).collect();
            crate::bundle::extract(tx.agent, file, m, &staging_dir, &expected, &mut tx.log)?
                .into_iter()
                .map(extract::Archive::Zst)
                .collect()
        }
    };
    crash_point("downloaded");
    Ok(artifacts)
}

/// The manifest's details and every component, into the update log.
fn log_manifest(log: &mut UpdateLog, report: &check::CheckReport, verified: &check::Verified) {
    let m = &verified.manifest;
    log.line(&format!(
        "manifest: product={} version={} channel={} released={} expires={} type={} signed-by={}",
        m.product,
        m.version,
        m.channel,
        m.release_date,
        m.expires,
        report.update_type,
        verified.key_id
    ));
    if !m.release_notes.is_empty() {
        let notes = crate::untrusted::printable(&m.release_notes);
        log.block("notes", notes.as_bytes());
    }
    for c in &m.components {
        log.line(&format!(
            "  component {} {} artifact={} sha256={} size={} install_path={} kind={:?} service={}",
            c.name,
            c.version,
            c.artifact,
            c.sha256,
            c.size_bytes,
            c.install_path,
            c.kind,
            c.restart_service
                .as_ref()
                .map(|s| s.as_str())
                .unwrap_or("-")
        ));
    }
}

/// The component transaction after the download ([`fetch_artifacts`]): journal `prepared`,
/// extract (3), back up and install (4), migrate (5), then restart, verify and commit (6–8).
fn apply_components(
    tx: &mut Tx<'_>,
    verified: &check::Verified,
    op: &str,
    artifacts: &[extract::Archive],
) -> Result<ApplyReport, AgentError> {
    let paths = tx.paths;
    let m = &verified.manifest;
    let version = m.version.to_string();
    let staging_dir = paths.staging.join(&version);
    let backup_dir = paths.backup.join(&version);
    let entries = plan_entries(paths, &verified.to_apply, &backup_dir, op);
    check_space(
        paths,
        &entries,
        artifacts,
        tx.agent.config().max_unpacked_bytes,
    )?;
    let from_version = entries
        .iter()
        .filter_map(|e| e.previous_version.as_deref())
        .filter_map(|v| Version::parse(v).ok())
        .max()
        .map(|v| v.to_string());
    let mut j = Journal {
        operation_id: op.to_owned(),
        op: OpKind::Apply,
        product: m.product.to_string(),
        version,
        from_version,
        phase: Phase::Prepared,
        started: now(),
        backup_dir,
        staging_dir,
        entries,
        services_restarted: false,
        reason: None,
        reverted: verified.reverted,
        running: None,
        started_by: tx.started_by.clone(),
    };
    tx.store(&j)?;
    tx.log.line(&format!(
        "journal {op}: phase Prepared ({} component(s))",
        j.entries.len()
    ));
    crash_point("prepared");
    prepare(tx, &mut j, artifacts)?;
    install_all(tx, &mut j)?;
    tx.event(EventType::Installed, &j.version, None);
    tx.stage(&j.version.clone(), "migrate");
    migrate_all(tx, &mut j)?;
    finish_forward(tx, &mut j)
}

/// Where the new content of `target` is extracted and staged beside it during operation `op`.
pub(super) fn temp_paths(
    target: &Path,
    fallback: &str,
    root: &Path,
    op: &str,
) -> (PathBuf, PathBuf) {
    let parent = target.parent().unwrap_or(root);
    let base = temp_base(target, fallback);
    (
        parent.join(format!(".qx-x-{base}.{op}")),
        parent.join(format!(".qx-new-{base}.{op}")),
    )
}

/// One journal entry per component to install.
fn plan_entries(
    paths: &HostPaths,
    to_apply: &[qx_core::Component],
    backup_dir: &Path,
    op: &str,
) -> Vec<Entry> {
    let installed = paths.installed_versions();
    to_apply
        .iter()
        .map(|c| {
            let target = under_root(&paths.root, c.install_path.as_path());
            let (extract_dir, temp) = temp_paths(&target, c.name.as_str(), &paths.root, op);
            let exists = fs::symlink_metadata(&target).is_ok();
            let base = temp_base(&target, c.name.as_str());
            Entry {
                name: c.name.to_string(),
                kind: c.kind,
                extract_dir,
                temp,
                backup: exists.then(|| backup_dir.join(c.name.as_str()).join(&base)),
                target,
                previous_version: installed.get(c.name.as_str()).cloned(),
                version: c.version.to_string(),
                restart_service: c.restart_service.as_ref().map(|s| s.to_string()),
                permissions: c.permissions.map(|p| p.mode()),
                allow_setuid: c.allow_setuid,
                allow_world_writable: c.allow_world_writable,
                health_command: c.health_command.clone(),
                migrate_command: c.migrate_command.clone(),
                keep_backup: c.backup_before_update,
                sha256: Some(c.sha256),
            }
        })
        .collect()
}

/// The file name of `target` (`fallback` for a path without one).
fn temp_base(target: &Path, fallback: &str) -> String {
    target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| fallback.to_owned())
}

/// Free space for what the apply writes next, checked before anything is written: the
/// extracted release beside each target (its unpacked size, read from the archive and bounded
/// by `updates.max_unpacked_bytes`) and the backups of the files it replaces, added up per file
/// system (the downloaded archives are already on disk).
fn check_space(
    paths: &HostPaths,
    entries: &[Entry],
    artifacts: &[extract::Archive],
    max_unpacked: u64,
) -> Result<(), AgentError> {
    // (device, a directory on it, bytes needed there)
    let mut needs: Vec<(u64, PathBuf, u64)> = Vec::new();
    let mut need = |dir: PathBuf, bytes: u64| -> Result<(), AgentError> {
        let dir = existing_ancestor(&dir);
        let dev = fs::metadata(&dir).map_err(AgentError::io(&dir))?.dev();
        match needs.iter_mut().find(|n| n.0 == dev) {
            Some(n) => n.2 = n.2.saturating_add(bytes),
            None => needs.push((dev, dir, bytes)),
        }
        Ok(())
    };
    for (e, archive) in entries.iter().zip(artifacts) {
        let parent = e.target.parent().unwrap_or(&paths.root);
        need(
            parent.to_owned(),
            extract::unpacked_size(archive, max_unpacked)?,
        )?;
        if e.backup.is_some() {
            need(paths.backup.clone(), tree_size(&e.target))?;
        }
    }
    for (_, dir, needed) in needs {
        ensure_space(&dir, needed)?;
    }
    Ok(())
}

/// `dir`, or its nearest ancestor that exists (a target's parent may not exist yet).
fn existing_ancestor(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"))
        .to_owned()
}

/// Steps 3 and 4a: extract beside each target, back up each target; a failure removes the
/// temporaries (nothing was replaced yet).
fn prepare(
    tx: &mut Tx<'_>,
    j: &mut Journal,
    artifacts: &[extract::Archive],
) -> Result<(), AgentError> {
    if let Err(e) =
        extract_all(tx, j, artifacts).map_err(|e| e.or_out_of_space("extracting the release"))
    {
        tx.log
            .line(&format!("extraction failed: {e}; removing temporaries"));
        discard_prepared(tx, j, &e.to_string())?;
        return Err(e);
    }
    crash_point("extracted");
    if let Err(e) =
        backup_all(tx, j).map_err(|e| e.or_out_of_space("backing up the files it replaces"))
    {
        tx.log
            .line(&format!("backup failed: {e}; removing temporaries"));
        discard_prepared(tx, j, &e.to_string())?;
        return Err(e);
    }
    crash_point("backed-up");
    Ok(())
}

/// Step 4b: journal `installing`, then replace each target; a failure restores every file.
fn install_all(tx: &mut Tx<'_>, j: &mut Journal) -> Result<(), AgentError> {
    tx.phase(j, Phase::Installing)?;
    crash_point("installing");
    for i in 0..j.entries.len() {
        let e = j.entries[i].clone();
        tx.state(UpdateState::Installing {
            component: e.name.clone(),
        });
        if let Err(err) = install_entry(&e) {
            tx.log.line(&format!("install of {} failed: {err}", e.name));
            rollback_tx(tx, j, &format!("install of {} failed: {err}", e.name))?;
            return Err(err);
        }
        tx.log.line(&format!(
            "installed {} {} at {}",
            e.name,
            e.version,
            e.target.display()
        ));
        crash_point(&format!("installed:{}", e.name));
    }
    crash_point("installed");
    Ok(())
}

/// Step 5: migrations, before any restart (cwd = the installed migrations directory, output
/// into the update log); a failure restores every file and restarts nothing. Then journal
/// `migrated`.
fn migrate_all(tx: &mut Tx<'_>, j: &mut Journal) -> Result<(), AgentError> {
    for e in j.entries.clone() {
        let Some(argv) = e
            .migrate_command
            .as_ref()
            .filter(|_| e.kind == ComponentKind::Migrations)
        else {
            continue;
        };
        tx.state(UpdateState::Migrating {
            component: e.name.clone(),
        });
        tx.log.line(&format!(
            "migrate {}: running {:?} in {}",
            e.name,
            argv,
            e.target.display()
        ));
        let ran = tx.run_recorded(j, |s, started| s.migrate(argv, &e.target, started))?;
        tx.log.block(
            "stdout",
            crate::untrusted::printable_output(&ran.stdout).as_bytes(),
        );
        tx.log.block(
            "stderr",
            crate::untrusted::printable_output(&ran.stderr).as_bytes(),
        );
        tx.log.line(&format!("migrate {}: {}", e.name, ran.status));
        tx.log.sync();
        if !ran.ok {
            let err = AgentError::MigrationFailed {
                component: e.name.clone(),
                status: ran.status.clone(),
                log: tx.log.path().to_owned(),
            };
            let reason = format!("migration of {} failed ({})", e.name, ran.status);
            rollback_tx(tx, j, &reason)?;
            return Err(err);
        }
        crash_point(&format!("migrated:{}", e.name));
    }
    tx.phase(j, Phase::Migrated)?;
    crash_point("migrated");
    Ok(())
}

fn extract_all(
    tx: &mut Tx<'_>,
    j: &Journal,
    artifacts: &[extract::Archive],
) -> Result<(), AgentError> {
    let max = tx.agent.config().max_unpacked_bytes;
    for (e, archive) in j.entries.iter().zip(artifacts) {
        let parent = e.target.parent().unwrap_or(&tx.paths.root);
        fs::create_dir_all(parent).map_err(AgentError::io(parent))?;
        remove_any(&e.extract_dir)?;
        remove_any(&e.temp)?;
        // Files are fsynced while the extraction goes on; `fsync_tree` below still fsyncs
        // every file and directory of the result (cheap for the files already clean).
        let allow = extract::ModeAllowance {
            setuid: e.allow_setuid,
            world_writable: e.allow_world_writable,
        };
        let stats = extract::extract_synced(archive, &e.extract_dir, max, allow)?;
        tx.log.line(&format!(
            "extracted {} into {}: {} file(s), {} dir(s), {} link(s), {} bytes",
            archive.path().display(),
            e.extract_dir.display(),
            stats.files,
            stats.dirs,
            stats.links,
            stats.bytes
        ));
        match e.kind {
            ComponentKind::File => {
                let expected = temp_base(&e.target, &e.name);
                let file = extract::single_file(archive.path(), &e.extract_dir, &expected)?;
                fs::rename(&file, &e.temp).map_err(AgentError::io(&e.temp))?;
                remove_any(&e.extract_dir)?;
            }
            ComponentKind::Directory | ComponentKind::Migrations => {
                fs::rename(&e.extract_dir, &e.temp).map_err(AgentError::io(&e.temp))?;
            }
        }
        if let Some(mode) = e.permissions {
            fs::set_permissions(&e.temp, fs::Permissions::from_mode(mode))
                .map_err(AgentError::io(&e.temp))?;
        }
        fsync_tree(&e.temp)?;
        fsync_dir(parent)?;
    }
    Ok(())
}

fn backup_all(tx: &mut Tx<'_>, j: &Journal) -> Result<(), AgentError> {
    remove_any(&j.backup_dir)?;
    for e in &j.entries {
        let Some(b) = &e.backup else { continue };
        let dir = b.parent().unwrap_or(&j.backup_dir);
        fs::create_dir_all(dir).map_err(AgentError::io(dir))?;
        copy_durable(&e.target, b)?;
        fsync_dir(dir)?;
        tx.log.line(&format!(
            "backed up {} to {}",
            e.target.display(),
            b.display()
        ));
    }
    let meta = BackupMeta {
        version: j.version.clone(),
        from_version: j.from_version.clone(),
        created: now(),
        entries: j.entries.clone(),
    };
    fs::create_dir_all(&j.backup_dir).map_err(AgentError::io(&j.backup_dir))?;
    let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| AgentError::Journal {
        path: j.backup_dir.join(BACKUP_META),
        message: e.to_string(),
    })?;
    write_atomic(&j.backup_dir.join(BACKUP_META), &bytes)?;
    if let Some(parent) = j.backup_dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Puts one component's new content in place.
fn install_entry(e: &Entry) -> Result<(), AgentError> {
    let is_dir = e.kind != ComponentKind::File;
    if fs::symlink_metadata(&e.temp).is_err() {
        // Already renamed into place by an earlier run of this step.
        return Ok(());
    }
    swap_into_place(&e.temp, &e.target, is_dir)?;
    crash_point("exchanged");
    // After an exchange the old tree sits at the temp path (it is in the backup).
    remove_any(&e.temp)?;
    if let Some(parent) = e.target.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Undo a transaction that never replaced anything (phase `prepared`).
fn discard_prepared(tx: &mut Tx<'_>, j: &mut Journal, reason: &str) -> Result<(), AgentError> {
    for e in &j.entries {
        remove_any(&e.extract_dir)?;
        remove_any(&e.temp)?;
    }
    remove_any(&j.backup_dir)?;
    j.reason = Some(reason.to_owned());
    tx.history(j, Outcome::Failed, Some(reason.to_owned()))?;
    tx.phase(j, Phase::RolledBack)
}

/// Restore every file from backup (idempotent: may be re-run after a crash at any point).
pub(super) fn restore_all(tx: &mut Tx<'_>, j: &Journal) -> Result<(), AgentError> {
    for e in &j.entries {
        let is_dir = e.kind != ComponentKind::File;
        let parent = e.target.parent().unwrap_or(&tx.paths.root).to_path_buf();
        remove_any(&e.extract_dir)?;
        remove_any(&e.temp)?;
        match &e.backup {
            Some(b) => {
                copy_durable(b, &e.temp)?;
                fsync_dir(&parent)?;
                swap_into_place(&e.temp, &e.target, is_dir)?;
                remove_any(&e.temp)?;
            }
            None => {
                if fs::symlink_metadata(&e.target).is_ok() {
                    // First install: the component goes away again (rename first, so the
                    // target vanishes atomically).
                    fs::rename(&e.target, &e.temp).map_err(AgentError::io(&e.target))?;
                    fsync_dir(&parent)?;
                    remove_any(&e.temp)?;
                }
            }
        }
        fsync_dir(&parent)?;
        let vfile = tx.paths.versions.join(&e.name);
        match &e.previous_version {
            Some(v) => {
                if fs::read_to_string(&vfile)
                    .map(|s| s.trim() != v)
                    .unwrap_or(true)
                {
                    write_atomic(&vfile, format!("{v}\n").as_bytes())?;
                }
            }
            None => {
                if vfile.exists() {
                    remove_any(&vfile)?;
                    fsync_dir(&tx.paths.versions)?;
                }
            }
        }
        tx.log
            .line(&format!("restored {} at {}", e.name, e.target.display()));
        crash_point(&format!("restored:{}", e.name));
    }
    Ok(())
}

/// Failure after files changed: restore everything, restart again if services were
/// restarted, record the failure.
fn rollback_tx(tx: &mut Tx<'_>, j: &mut Journal, reason: &str) -> Result<(), AgentError> {
    tx.state(UpdateState::RollingBack {
        reason: reason.to_owned(),
    });
    tx.log
        .line(&format!("rolling back {}: {reason}", j.operation_id));
    j.reason = Some(reason.to_owned());
    tx.phase(j, Phase::RollingBack)?;
    crash_point("rolling-back");
    restore_all(tx, j)?;
    if j.services_restarted {
        for s in j.services() {
            tx.state(UpdateState::Restarting { service: s.clone() });
            let ran = tx.run_recorded(j, |m, started| m.restart(&s, started))?;
            tx.log
                .line(&format!("restart {s} (after restore): {}", ran.status));
            tx.log.block(
                "stderr",
                crate::untrusted::printable_output(&ran.stderr).as_bytes(),
            );
        }
    }
    tx.history(j, Outcome::Failed, Some(reason.to_owned()))?;
    tx.phase(j, Phase::RolledBack)?;
    // The restore used the backup up. Kept, it would be the latest apply that `qx-update
    // rollback` undoes (back to the version that runs already) and count against
    // `keep_backups`. Only now: recovery from `rolling_back` restores from it.
    if let Err(e) = remove_any(&j.backup_dir) {
        tx.log.line(&format!(
            "remove the backup {} of the failed apply: {e}",
            j.backup_dir.display()
        ));
    }
    tx.log.sync();
    Ok(())
}

/// Steps 6-8 (also the roll-forward of recovery): restart, verify, versions, commit, prune.
fn finish_forward(tx: &mut Tx<'_>, j: &mut Journal) -> Result<ApplyReport, AgentError> {
    restart_services(tx, j)?;
    crash_point("restarted");
    verify_all(tx, j)?;
    crash_point("verified");
    record_versions(tx, j)?;
    crash_point("versions");
    let outcome = if j.reverted {
        Outcome::Reverted
    } else {
        Outcome::Success
    };
    // History before the commit mark: a crash in between repeats the entry, never loses it.
    tx.history(j, outcome, None)?;
    tx.phase(j, Phase::Committed)?;
    crash_point("committed");
    // The only success: every component's effect was verified above.
    tx.event(EventType::Confirmed, &j.version, None);
    if j.reverted {
        record_reverted(tx, j);
    }
    tx.stage = None;
    tx.log.line(&format!(
        "apply {}: {} installed",
        j.operation_id, j.version
    ));
    prune(tx, j);
    tx.log.sync();
    Ok(ApplyReport {
        version: j.version.clone(),
        components: j.entries.iter().map(|e| e.name.clone()).collect(),
        outcome,
        system: None,
        deltas: Vec::new(),
    })
}

/// A signed revert carried out (docs/spec.md §10): `reverted`, naming the version the host
/// left (the journal's `from_version`: the newest version its entries replaced).
fn record_reverted(tx: &Tx<'_>, j: &Journal) {
    let left = j.from_version.clone();
    let mut e = crate::fleet::event(EventType::Reverted, left.as_deref());
    e.message = Some(format!(
        "back to {} (current): the signed channel state revokes {} with revert",
        j.version,
        left.as_deref().unwrap_or("the installed release")
    ));
    tx.agent.fleet().record(e);
}

/// Step 6: restarts the services of the installed entries; a failed restart rolls back.
fn restart_services(tx: &mut Tx<'_>, j: &mut Journal) -> Result<(), AgentError> {
    tx.stage(&j.version.clone(), "restart");
    let services = j.services();
    if !services.is_empty() {
        j.services_restarted = true;
        tx.store(j)?;
    }
    for s in &services {
        tx.state(UpdateState::Restarting { service: s.clone() });
        let ran = tx.run_recorded(j, |m, started| m.restart(s, started))?;
        tx.log
            .line(&format!("restart {s}: {:?} -> {}", ran.argv, ran.status));
        tx.log.block(
            "stdout",
            crate::untrusted::printable_output(&ran.stdout).as_bytes(),
        );
        tx.log.block(
            "stderr",
            crate::untrusted::printable_output(&ran.stderr).as_bytes(),
        );
        if !ran.ok {
            let reason = format!(
                "{} ({})",
                ran.status,
                String::from_utf8_lossy(&ran.stderr).trim()
            );
            rollback_tx(tx, j, &format!("restart of {s} failed: {reason}"))?;
            return Err(AgentError::RestartFailed {
                service: s.clone(),
                reason,
            });
        }
    }
    Ok(())
}

/// Step 7: every entry's effect is verified; one that did not take effect rolls back.
fn verify_all(tx: &mut Tx<'_>, j: &mut Journal) -> Result<(), AgentError> {
    tx.stage(&j.version.clone(), "verify");
    for e in j.entries.clone() {
        tx.state(UpdateState::Verifying {
            component: e.name.clone(),
        });
        if let Err(reason) = verify_entry(tx, j, &e)? {
            tx.log.line(&format!("verify {}: FAILED: {reason}", e.name));
            rollback_tx(tx, j, &format!("{} did not take effect: {reason}", e.name))?;
            return Err(AgentError::NotEffective {
                component: e.name.clone(),
                reason,
            });
        }
        tx.log.line(&format!("verify {}: ok", e.name));
    }
    Ok(())
}

/// Step 8's first part: the installed artifacts' hashes and `/data/versions/<component>`.
fn record_versions(tx: &mut Tx<'_>, j: &Journal) -> Result<(), AgentError> {
    for e in &j.entries {
        if let Some(sha) = &e.sha256 {
            crate::installed::record_artifact_sha(tx.paths, &e.name, &e.version, sha)?;
        }
        write_atomic(
            &tx.paths.versions.join(&e.name),
            format!("{}\n", e.version).as_bytes(),
        )?;
    }
    Ok(())
}

/// Effect verification of one component: its health command passes, or the restarted
/// service runs the newly installed file.
/// (The outer error: the journal could not be written.)
pub(super) fn verify_entry(
    tx: &mut Tx<'_>,
    j: &mut Journal,
    e: &Entry,
) -> Result<Result<(), String>, AgentError> {
    if fs::symlink_metadata(&e.target).is_err() {
        return Ok(Err(format!(
            "{} is missing after the install",
            e.target.display()
        )));
    }
    if let Some(h) = &e.health_command {
        let ran = tx.run_recorded(j, |m, started| m.health(h, started))?;
        tx.log
            .line(&format!("health {}: {:?} -> {}", e.name, h, ran.status));
        tx.log.block(
            "stdout",
            crate::untrusted::printable_output(&ran.stdout).as_bytes(),
        );
        tx.log.block(
            "stderr",
            crate::untrusted::printable_output(&ran.stderr).as_bytes(),
        );
        return Ok(if ran.ok {
            Ok(())
        } else {
            Err(format!(
                "health command {:?} failed ({}): {}",
                h,
                ran.status,
                String::from_utf8_lossy(&ran.stderr).trim()
            ))
        });
    }
    Ok(match (&e.restart_service, e.kind) {
        // A migrations component took effect when its command succeeded.
        (_, ComponentKind::Migrations) => Ok(()),
        (Some(s), ComponentKind::File) => tx.services.wait_running(s, &e.target).map(|pid| {
            tx.log.line(&format!(
                "verify {}: service {s} pid {pid} runs the new {}",
                e.name,
                e.target.display()
            ));
        }),
        // A directory (e.g. a web UI served by another binary): without a health command the
        // restarted service must at least run.
        (Some(s), ComponentKind::Directory) => tx.services.wait_alive(s).map(|pid| {
            tx.log.line(&format!(
                "verify {}: service {s} runs (pid {pid}); add a health_command for a stronger check",
                e.name
            ));
        }),
        // No service and no health command: the files in place are the whole effect.
        (None, _) => Ok(()),
    })
}

/// Step 8's cleanup: staging of this version, backups beyond `keep_backups`, backups of
/// components that asked for none. Failures here are logged, never fatal.
fn prune(tx: &mut Tx<'_>, j: &Journal) {
    if let Err(e) = remove_any(&j.staging_dir) {
        tx.log.line(&format!("prune staging: {e}"));
    }
    let no_keep: Vec<&Entry> = j.entries.iter().filter(|e| !e.keep_backup).collect();
    if !no_keep.is_empty() {
        for e in &no_keep {
            if let Some(b) = &e.backup {
                let _ = remove_any(b.parent().unwrap_or(b));
            }
        }
        let meta_path = j.backup_dir.join(BACKUP_META);
        if let Some(mut meta) = read_backup_meta(&j.backup_dir) {
            meta.entries.retain(|e| e.keep_backup);
            if meta.entries.is_empty() {
                let _ = remove_any(&j.backup_dir);
            } else if let Ok(bytes) = serde_json::to_vec_pretty(&meta) {
                let _ = write_atomic(&meta_path, &bytes);
            }
        }
    }
    // The last `keep_backups` applies keep theirs (in the order they were made, not by
    // version: after a downgrade the newest backup is of a lower version).
    let keep = tx.agent.config().keep_backups;
    let backups = super::rollback::backups_newest_first(&tx.paths.backup);
    for (_, dir) in backups.into_iter().skip(keep) {
        tx.log.line(&format!("prune backup {}", dir.display()));
        let _ = remove_any(&dir);
    }
    // Incomplete backups (no backup.json) are useless.
    if let Ok(rd) = fs::read_dir(&tx.paths.backup) {
        for d in rd.flatten() {
            if read_backup_meta(&d.path()).is_none() {
                let _ = remove_any(&d.path());
            }
        }
    }
}

/// Bytes of a file or of every file of a tree (symlinks not followed).
fn tree_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else {
            total += m.len();
        }
    }
    total
}

pub(super) fn read_backup_meta(dir: &Path) -> Option<BackupMeta> {
    fs::read(dir.join(BACKUP_META))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

// ---------------------------------------------------------------------------------------------
// recovery

pub fn recover(agent: &Agent) -> Result<Option<RecoveryReport>, AgentError> {
    let _lock = lock(agent.paths())?;
    let r = recover_locked(agent);
    agent.status_handle().refresh();
    r
}

/// Remove `.qx-tmp-*` leftovers of interrupted atomic writes in the agent's own directories.
fn sweep_tmp(dirs: &[&Path]) {
    for d in dirs {
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".qx-tmp-") {
                    let _ = remove_any(&e.path());
                }
            }
        }
    }
}

/// Before anything else in recovery: kills what is left of the process group of the command
/// the journal says was running, and waits (bounded) until none of it lives.
fn kill_orphans(agent: &Agent, j: &mut Journal) -> Result<(), AgentError> {
    let Some(group) = j.running.clone() else {
        return Ok(());
    };
    let mut log = UpdateLog::open(&agent.config().log_path);
    match service::kill_group(&group, service::GROUP_EXIT_TIMEOUT) {
        Ok(0) => {}
        Ok(n) => {
            log.line(&format!(
                "recovery: killed {n} process(es) left of `{}` (process group {})",
                group.command, group.pgid
            ));
            log.sync();
        }
        Err(alive) => {
            let pids = alive
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            log.line(&format!(
                "recovery: process group {} of `{}` does not die: {pids}",
                group.pgid, group.command
            ));
            log.sync();
            return Err(AgentError::OrphanAlive {
                pgid: group.pgid,
                command: group.command,
                pids,
                secs: service::GROUP_EXIT_TIMEOUT.as_secs(),
            });
        }
    }
    j.set_running(&agent.paths().journal, None)
}

/// Recovery's first steps: the journal, if any, with no process of its command left alive;
/// leftover temporaries of atomic writes removed.
fn load_for_recovery(agent: &Agent) -> Result<Option<Journal>, AgentError> {
    let paths = agent.paths();
    let mut journal = Journal::load(&paths.journal)?;
    if let Some(j) = &mut journal {
        kill_orphans(agent, j)?;
    }
    sweep_tmp(&[&paths.versions, &paths.artifacts, &paths.updates]);
    Ok(journal)
}

pub(super) fn recover_locked(agent: &Agent) -> Result<Option<RecoveryReport>, AgentError> {
    let Some(mut j) = load_for_recovery(agent)? else {
        return Ok(None);
    };
    if !j.is_open() {
        for e in &j.entries {
            remove_any(&e.extract_dir)?;
            remove_any(&e.temp)?;
        }
        return Ok(None);
    }
    let status = agent.status_handle();
    status.set_operation(Some(j.operation_id.clone()));
    let mut tx = Tx::new(agent);
    let phase = j.phase;
    tx.log.line(&format!(
        "recovery: operation {} ({:?} of {}) was interrupted in phase {:?}",
        j.operation_id, j.op, j.version, phase
    ));
    let report =
        |action: &str, outcome: Outcome, reason: Option<String>, j: &Journal| RecoveryReport {
            operation_id: j.operation_id.clone(),
            version: j.version.clone(),
            phase,
            action: action.into(),
            outcome,
            reason,
        };
    let result = match (j.op, phase) {
        (OpKind::Apply, Phase::Prepared) => {
            let reason =
                "interrupted before any file was replaced; temporaries removed".to_string();
            discard_prepared(&mut tx, &mut j, &reason)?;
            status.set_state(UpdateState::Failed {
                reason: reason.clone(),
                code: None,
                http_status: None,
            });
            report("rolled_back", Outcome::Failed, Some(reason), &j)
        }
        (OpKind::Apply, Phase::Installing | Phase::RollingBack) => {
            let reason = j.reason.clone().unwrap_or_else(|| {
                "interrupted while replacing files; every file restored from backup".into()
            });
            rollback_tx(&mut tx, &mut j, &reason)?;
            status.set_state(UpdateState::Failed {
                reason: reason.clone(),
                code: None,
                http_status: None,
            });
            report("rolled_back", Outcome::Failed, Some(reason), &j)
        }
        (OpKind::Apply, _) => match finish_forward(&mut tx, &mut j) {
            Ok(_) => {
                status.set_state(UpdateState::Done {
                    version: j.version.clone(),
                });
                report("rolled_forward", Outcome::Success, None, &j)
            }
            Err(e) => {
                status.set_state(e.failed_state());
                report("rolled_back", Outcome::Failed, Some(e.to_string()), &j)
            }
        },
        (OpKind::Rollback, _) => match super::rollback::finish(&mut tx, &mut j) {
            Ok(_) => report("rollback_completed", Outcome::RolledBack, None, &j),
            Err(e) => report(
                "rollback_completed",
                Outcome::Failed,
                Some(e.to_string()),
                &j,
            ),
        },
    };
    tx.log.sync();
    status.set_operation(None);
    record_recovery(agent, j.op, &result);
    Ok(Some(result))
}

/// The fleet event of a finished recovery: an apply rolled back is `failed` (at the step the
/// journal was in), a finished operator's rollback is `rolled_back`.
fn record_recovery(agent: &Agent, op: OpKind, r: &RecoveryReport) {
    let kind = match (op, r.outcome) {
        (_, Outcome::Failed) => EventType::Failed,
        (OpKind::Rollback, Outcome::RolledBack) => EventType::RolledBack,
        _ => return,
    };
    let mut e = crate::fleet::event(kind, Some(&r.version));
    if kind == EventType::Failed {
        e.stage = Some(
            match r.phase {
                Phase::Migrated => "verify",
                _ => "install",
            }
            .to_owned(),
        );
    }
    e.message = Some(format!(
        "interrupted operation {} finished by recovery ({}){}",
        r.operation_id,
        r.action,
        r.reason
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    ));
    agent.fleet().record(e);
}

/// Downloads artifacts of release `version` (of the configured product and channel, which the
/// check has matched with the signed manifest) into `dir` (created): first checks that the file system has room
/// for what is not there yet, then fetches each one (resumed, verified while streaming) with its
/// progress in the agent's status, and logs every step. Returns the paths in the same order.
pub(crate) fn download_artifacts(
    agent: &Agent,
    version: &str,
    dir: &Path,
    artifacts: &[ArtifactRef],
    log: &mut UpdateLog,
) -> Result<Vec<PathBuf>, AgentError> {
    let config = agent.config();
    fs::create_dir_all(dir).map_err(AgentError::io(dir))?;
    let needed: u64 = artifacts
        .iter()
        .filter(|a| !dir.join(a.artifact.as_str()).exists())
        .map(|a| a.size_bytes)
        .sum();
    ensure_space(dir, needed)?;
    let downloader = Downloader::with_tls(download_options(config), &config.tls)?;
    let server = config.server();
    let status = agent.status_handle();
    let mut paths = Vec::with_capacity(artifacts.len());
    for a in artifacts {
        let url = server.artifact(&config.product, version, &a.artifact, &config.channel);
        log.line(&format!(
            "download {}",
            crate::download::redact_credentials(&url)
        ));
        let path = downloader.fetch(&url, dir, a, &mut |p| status.set_state(p.state()))?;
        log.line(&format!(
            "downloaded {} ({} bytes, sha256 verified)",
            path.display(),
            a.size_bytes
        ));
        paths.push(path);
    }
    Ok(paths)
}

/// Refuses to go on when `dir`'s file system has fewer than `needed` free bytes.
pub(crate) fn ensure_space(dir: &Path, needed: u64) -> Result<(), AgentError> {
    let available = free_space(dir).map_err(AgentError::io(dir))?;
    if available < needed {
        return Err(AgentError::NoSpace {
            path: dir.to_owned(),
            needed,
            available,
        });
    }
    Ok(())
}
