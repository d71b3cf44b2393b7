//! The host agent of Quantix OTA (`qx-update`): check, download and apply releases as a
//! crash-safe transaction, the daemon with its local HTTPS API and web page, and the A/B
//! system-update commands. Also a library, so a larger daemon can embed it.
//!
//! The facade is [`Agent`]: `check` (no host change), `apply` (SPEC §4 steps 1–8 as one
//! journaled transaction), `status`/`subscribe`, `recover` (finish an interrupted apply),
//! `rollback` (restore the previous version from its backup).

pub mod api;
pub mod apply;
pub mod check;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod download;
pub mod extract;
pub mod fullimage;
pub mod journal;
pub mod service;
pub mod state;
pub mod tls;
pub mod web;
pub mod window;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use apply::{ApplyOptions, ApplyReport, RecoveryReport};
pub use check::{CheckReport, ComponentChange};
pub use config::{Config, ConfigError};
pub use state::StatusSnapshot;

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
    pub ab_state: PathBuf,
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
            ab_state: at("quantix/ab-update-state.json"),
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

/// Everything that can go wrong, one variant per refusal of SPEC §2/§4, each with its own
/// exit code (see [`AgentError::exit_code`] and `qx-update --help`).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("update in progress: another apply holds {lock}; wait for it to finish (see `qx-update status`)")]
    Busy { lock: PathBuf },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot fetch {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("the server has no release of {product} on channel {channel} ({url})")]
    NoRelease {
        product: String,
        channel: String,
        url: String,
    },
    #[error("manifest from {url} has no signature (header X-Qx-Signature missing or empty); refusing it")]
    SignatureMissing { url: String },
    #[error(
        "manifest signature is invalid: {reason}; refusing it (tampered manifest or signature)"
    )]
    SignatureInvalid { reason: String },
    #[error("manifest is signed by key {key_id}, which is not trusted (trusted: {trusted}); add the publisher's key to updates.trusted_keys if it is genuine")]
    UntrustedKey { key_id: String, trusted: String },
    #[error("manifest is invalid: {0}")]
    ManifestInvalid(#[from] qx_core::ManifestError),
    #[error("manifest {version} expired at {expires}; the publisher must re-sign or publish a newer release")]
    Expired { version: String, expires: String },
    #[error("manifest is for product {got}, this host runs {expected}; refusing it")]
    WrongProduct { expected: String, got: String },
    #[error("manifest is for channel {got}, this host follows {expected}; refusing it")]
    WrongChannel { expected: String, got: String },
    #[error("component {component}: offered {offered} is lower than installed {installed}; a downgrade needs --allow-downgrade {offered}")]
    Downgrade {
        component: String,
        installed: String,
        offered: String,
    },
    #[error("manifest version {offered} is lower than {seen}, already seen on channel {channel} (replayed or rolled-back manifest); refusing it (--allow-downgrade {offered} to take it on purpose)")]
    Replay {
        channel: String,
        seen: String,
        offered: String,
    },
    #[error("this host is at {installed}, below release {version}'s min_version {min_version}; install an intermediate release first")]
    BelowMinVersion {
        installed: String,
        min_version: String,
        version: String,
    },
    #[error("component {component} requires {requires} >= {min_version}, but {}", match .installed { Some(v) => format!("{v} is installed and not updated by this apply"), None => "it is not installed and not part of this apply".into() })]
    UnmetRequirement {
        component: String,
        requires: String,
        min_version: String,
        installed: Option<String>,
    },
    #[error("--allow-downgrade {asked} does not name the offered version {offered}")]
    DowngradeMismatch { asked: String, offered: String },
    #[error("component {name} is not in release {version} (it has: {available})")]
    UnknownComponent {
        name: String,
        version: String,
        available: String,
    },
    #[error("not enough free space in {path}: {needed} bytes needed, {available} available")]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("download failed: {0}")]
    Download(#[from] download::DownloadError),
    #[error("unsafe archive refused: {0}")]
    UnsafeArchive(#[from] extract::ExtractError),
    #[error("migration of component {component} failed ({status}); every file was restored and no service was restarted; its output is in {log}")]
    MigrationFailed {
        component: String,
        status: String,
        log: PathBuf,
    },
    #[error("restart of service {service} failed: {reason}; every file was restored from backup")]
    RestartFailed { service: String, reason: String },
    #[error("update did not take effect: {component}: {reason}; every file was restored from backup and the services restarted")]
    NotEffective { component: String, reason: String },
    #[error("no backup to roll back to in {dir}")]
    NoBackup { dir: PathBuf },
    #[error("rollback incomplete: {reason}")]
    RollbackFailed { reason: String },
    #[error("journal {path}: {message}")]
    Journal { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Fs(#[from] qx_core::fs::FsError),
    #[error("system image {version}: {source}")]
    SystemImage {
        version: String,
        source: qx_boot::BootError,
    },
    #[error("the system image is installed and pending, but the reboot command `{command}` failed: {reason}; reboot the host to start the new slot")]
    Reboot { command: String, reason: String },
}

impl AgentError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
        move |source| AgentError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// The process exit code for this error (documented in `qx-update --help`).
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Io { .. } | AgentError::Fs(_) | AgentError::Journal { .. } => 1,
            AgentError::DowngradeMismatch { .. } | AgentError::UnknownComponent { .. } => 2,
            AgentError::Config(_) => 3,
            AgentError::Busy { .. } => 10,
            AgentError::Fetch { .. } => 11,
            AgentError::NoRelease { .. } => 12,
            AgentError::SignatureMissing { .. } => 20,
            AgentError::SignatureInvalid { .. } => 21,
            AgentError::UntrustedKey { .. } => 22,
            AgentError::ManifestInvalid(_) => 23,
            AgentError::Expired { .. } => 24,
            AgentError::WrongProduct { .. } => 25,
            AgentError::WrongChannel { .. } => 26,
            AgentError::Downgrade { .. } => 27,
            AgentError::Replay { .. } => 28,
            AgentError::BelowMinVersion { .. } => 29,
            AgentError::UnmetRequirement { .. } => 30,
            AgentError::NoSpace { .. } => 31,
            AgentError::Download(_) => 32,
            AgentError::UnsafeArchive(_) => 33,
            AgentError::MigrationFailed { .. } => 40,
            AgentError::RestartFailed { .. } => 41,
            AgentError::NotEffective { .. } => 42,
            AgentError::NoBackup { .. } => 43,
            AgentError::RollbackFailed { .. } => 44,
            AgentError::SystemImage { .. } => 45,
            AgentError::Reboot { .. } => 46,
        }
    }

    /// True for refusals of a manifest (nothing on the host was touched).
    pub fn is_refusal(&self) -> bool {
        (20..=31).contains(&self.exit_code())
    }
}

/// The exit-code table printed by `qx-update --help`.
pub const EXIT_CODES: &str = "\
Exit codes:
   0  success (also: already up to date)
   1  failure (I/O, journal)
   2  usage error (bad arguments, unknown --component, --allow-downgrade naming another version)
   3  configuration error
  10  busy: another apply is in progress
  11  cannot reach the update server        12  no release on this channel
  20  manifest signature missing            21  signature invalid
  22  signed by an untrusted key            23  manifest invalid
  24  manifest expired                      25  manifest for another product
  26  manifest for another channel          27  downgrade refused
  28  replayed (older than already seen)    29  host below min_version
  30  unmet requirement                     31  not enough free space
  32  download failed                       33  unsafe archive
  40  migration failed (files restored)     41  service restart failed (files restored)
  42  update did not take effect (restored) 43  no backup to roll back to
  44  rollback incomplete                   45  writing the system image failed (booted slot unchanged)
  46  reboot command failed (image installed, pending)";

struct Inner {
    config: Config,
    paths: HostPaths,
    status: state::StatusHandle,
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
        let status = state::StatusHandle::new(&config, &paths);
        Ok(Agent {
            inner: Arc::new(Inner {
                config,
                paths,
                status,
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

    pub(crate) fn status_handle(&self) -> &state::StatusHandle {
        &self.inner.status
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
        let result = check::check(self, opts).and_then(|(mut report, verified)| {
            fullimage::extend_check(self, &mut report, &verified.manifest, opts)?;
            Ok(report)
        });
        if !busy {
            status.set_state(match &result {
                Ok(_) => before,
                Err(e) if e.is_refusal() || matches!(e, AgentError::Fetch { .. }) => {
                    qx_core::status::UpdateState::Failed {
                        reason: e.to_string(),
                    }
                }
                Err(_) => before,
            });
        }
        result
    }

    /// The whole transaction (SPEC §4 steps 1-8); takes the apply file lock (a second apply in
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
        let mut report = apply::apply(self, opts)?;
        fullimage::maybe_reboot(self, &mut report, reboot)?;
        Ok(report)
    }

    /// Current state, installed versions, history (from `<root>/data/updates/history.jsonl`).
    pub fn status(&self) -> StatusSnapshot {
        self.inner.status.refresh();
        self.inner.status.snapshot()
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
        apply::recover(self)
    }

    /// Restore the previous version from the latest backup, restart, verify.
    pub fn rollback(&self) -> Result<ApplyReport, AgentError> {
        apply::rollback(self)
    }
}
