//! The host agent of Quantix OTA (`qx-update`): check, download and apply releases as a
//! crash-safe transaction, the daemon with its local HTTPS API and web page, and the A/B
//! system-update commands. Also a library, so a larger daemon can embed it.
//!
//! The facade is [`Agent`]: `check` (no host change), `apply` (docs/spec.md §4 steps 1–8 as one
//! journaled transaction), `status`/`subscribe`, `recover` (finish an interrupted apply),
//! `rollback` (restore the previous version from its backup).

mod activity;
mod bundle;
mod channel;
mod check;
pub mod cli;
pub mod client_tls;
mod config;
pub mod config_check;
pub mod daemon;
pub mod download;
mod error;
pub mod fleet;
mod fullimage;
mod imagechunks;
mod imagedelta;
mod installed;
pub mod metrics;
mod offer;
mod progress;
mod status;
pub mod transaction;
pub mod untrusted;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use activity::{Activity, CheckResult, LastApply, LastCheck};
pub use check::{CheckReport, ComponentChange};
pub use config::{
    ApiConfig, Config, ConfigError, DownloadSettings, FleetConfig, ServiceManagerKind,
    DEFAULT_CONFIG_PATH,
};
pub use error::{code, exit_codes_help, AgentError, Surface, EXIT_CODE_TABLE};
pub use fullimage::{ImageRebuild, RebuildMethod, SystemInstall};
pub use status::StatusSnapshot;
pub use transaction::{
    ApplyOptions, ApplyReport, RecoveryReport, RollbackOptions, RollbackPlan, RollbackStep,
};

/// Every host path the agent uses, resolved under the root prefix (`--root`).
#[derive(Debug, Clone)]
pub struct HostPaths {
    pub root: PathBuf,
    pub versions: PathBuf,
    pub updates: PathBuf,
    pub staging: PathBuf,
    pub backup: PathBuf,
    pub journal: PathBuf,
    pub lock: PathBuf,
    pub history: PathBuf,
    pub seen: PathBuf,
    /// The channel-state replay watermark (docs/spec.md §8).
    pub channel_seen: PathBuf,
    /// The installed artifacts' SHA-256, one file per component.
    pub artifacts: PathBuf,
    pub ab_state: PathBuf,
    /// The fleet identity (docs/spec.md §9), mode 0600.
    pub identity: PathBuf,
    /// The fleet state: the event queue, the last boot id and offered version reported.
    pub fleet: PathBuf,
    /// The deltas this host refused (docs/spec.md §11): never used again.
    pub deltas_refused: PathBuf,
    /// What the agent did last (`activity::Activity`): the status and the metrics show it.
    pub activity: PathBuf,
}

impl HostPaths {
    pub fn new(root: &Path) -> Self {
        let at = |p: &str| root.join(p);
        Self {
            root: root.to_owned(),
            versions: at("data/versions"),
            updates: at("data/updates"),
            staging: at("data/updates/staging"),
            backup: at("data/updates/backup"),
            journal: at("data/updates/journal.json"),
            lock: at("data/updates/lock"),
            history: at("data/updates/history.jsonl"),
            seen: at("data/updates/seen.json"),
            channel_seen: at("data/updates/channel-seen.json"),
            artifacts: at("data/versions/.artifacts"),
            ab_state: at("quantix/ab-update-state.json"),
            identity: at("data/updates/identity.json"),
            fleet: at("data/updates/fleet"),
            deltas_refused: at("data/updates/deltas-refused.json"),
            activity: at("data/updates/activity.json"),
        }
    }

    /// A host path (absolute, as on the real machine) below the root.
    pub fn host(&self, path: &Path) -> PathBuf {
        qx_core::fs::under_root(&self.root, path)
    }

    /// The installed versions (`/data/versions/<component>`, one line each).
    pub fn installed_versions(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir(&self.versions) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    let v = text.trim();
                    if !v.is_empty() {
                        out.insert(name, v.to_owned());
                    }
                }
            }
        }
        out
    }
}

struct Inner {
    config: Config,
    paths: HostPaths,
    status: status::StatusHandle,
    fleet: fleet::Fleet,
}

/// The agent: cheap to clone (an `Arc` inside), shared by the CLI, the daemon and the API.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl Agent {
    /// `config` must have been loaded under the same `root` (see [`Config::load_under`]), so
    /// that its host paths (keys, log, API files) and the agent's agree.
    pub fn new(config: Config, root: PathBuf) -> Result<Agent, AgentError> {
        if config.root != root {
            return Err(AgentError::Config(ConfigError::Invalid {
                path: config.source.clone(),
                key: "(root)".into(),
                message: format!(
                    "loaded under root {} but the agent runs under {}; load it with Config::load_under(path, root)",
                    config.root.display(),
                    root.display()
                ),
            }));
        }
        let paths = HostPaths::new(&root);
        let status = status::StatusHandle::new(&config, &paths);
        let fleet = fleet::Fleet::new(&config, &paths);
        Ok(Agent {
            inner: Arc::new(Inner {
                config,
                paths,
                status,
                fleet,
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn root(&self) -> &Path {
        &self.inner.paths.root
    }

    pub fn paths(&self) -> &HostPaths {
        &self.inner.paths
    }

    pub(crate) fn status_handle(&self) -> &status::StatusHandle {
        &self.inner.status
    }

    /// The fleet reporter (docs/spec.md §9): identity, check-ins, the event queue.
    pub fn fleet(&self) -> &fleet::Fleet {
        &self.inner.fleet
    }

    /// Fetch + verify the manifest for our product/channel; no host change. Blocking.
    pub fn check(&self) -> Result<CheckReport, AgentError> {
        self.check_with(&ApplyOptions::default())
    }

    /// Like [`Agent::check`], with the options an apply would use (`--allow-downgrade`,
    /// `--component`).
    pub fn check_with(&self, opts: &ApplyOptions) -> Result<CheckReport, AgentError> {
        let status = &self.inner.status;
        let before = status.snapshot().state;
        let busy = before.is_busy();
        if !busy {
            status.set_state(qx_core::status::UpdateState::Checking);
        }
        let mut turn = check::Turn::default();
        let result = check::check(self, opts, &mut turn).and_then(|(mut report, verified)| {
            if let Some(v) = &verified {
                fullimage::extend_check(self, &mut report, v, opts)?;
            }
            Ok(report)
        });
        if !busy {
            status.set_state(match &result {
                Ok(_) => before,
                Err(e)
                    if e.is_refusal()
                        || matches!(
                            e,
                            AgentError::Fetch { .. }
                                | AgentError::NotUpdateServer { .. }
                                | AgentError::Tls(_)
                        ) =>
                {
                    e.failed_state()
                }
                Err(_) => before,
            });
        }
        // Every check checks in once (whatever its result): after the signed state, before the
        // decision, or here when the check failed before it; a failed check-in is only logged.
        if let Ok(report) = &result {
            if report.available {
                self.inner.fleet.offered(&report.version);
            }
        }
        if turn.checked_in {
            self.inner.fleet.send_events(self);
        } else {
            self.inner.fleet.report(self);
        }
        status.record_check(activity::LastCheck::of(&result));
        result
    }

    /// The whole transaction (docs/spec.md §4 steps 1-8); takes the apply file lock (a second apply in
    /// any process gets [`AgentError::Busy`]); updates the status as it goes. Blocking.
    pub fn apply(&self, opts: &ApplyOptions) -> Result<ApplyReport, AgentError> {
        self.apply_with_reboot(opts, false)
    }

    /// [`Agent::apply`]; when a system image was written into the inactive slot, reboots if
    /// `reboot` (`qx-update apply --reboot`) or `updates.auto_reboot` (see [`fullimage`]).
    pub fn apply_with_reboot(
        &self,
        opts: &ApplyOptions,
        reboot: bool,
    ) -> Result<ApplyReport, AgentError> {
        let result = transaction::apply::apply(self, opts);
        // The apply's events (and the versions it changed) go out now, not at the next check.
        self.inner.fleet.report(self);
        let mut report = result?;
        fullimage::maybe_reboot(self, &mut report, reboot)?;
        Ok(report)
    }

    /// Current state, installed versions, history (from `<root>/data/updates/history.jsonl`).
    pub fn status(&self) -> StatusSnapshot {
        self.inner.status.refresh();
        self.inner.status.snapshot()
    }

    /// The last state that was not an operation in progress (the health a check-in reports).
    pub(crate) fn settled_state(&self) -> qx_core::status::UpdateState {
        self.inner.status.settled_state()
    }

    /// Live status for the web page (server-sent events).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<StatusSnapshot> {
        self.inner.status.subscribe()
    }

    /// Every status change from now on, in order (the event stream of the host API).
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<StatusSnapshot> {
        self.inner.status.subscribe_events()
    }

    /// Finish an interrupted apply from its journal (roll back or forward). Called at start by
    /// the CLI and the daemon. Takes the apply lock (Busy while another apply runs).
    pub fn recover(&self) -> Result<Option<RecoveryReport>, AgentError> {
        transaction::apply::recover(self)
    }

    /// Undo the latest apply from its backup, restart, verify (health command, else the
    /// inode); a first install is refused ([`AgentError::RollbackFirstInstall`]).
    pub fn rollback(&self) -> Result<ApplyReport, AgentError> {
        self.rollback_with(&RollbackOptions::default())
    }

    /// [`Agent::rollback`] with options (`force`: remove a first install too).
    pub fn rollback_with(&self, opts: &RollbackOptions) -> Result<ApplyReport, AgentError> {
        transaction::rollback::rollback(self, opts)
    }

    /// What [`Agent::rollback`] would restore and remove; no host change.
    pub fn rollback_plan(&self) -> Result<RollbackPlan, AgentError> {
        transaction::rollback::plan(self)
    }
}
