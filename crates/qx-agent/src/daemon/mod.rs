//! `qx-update daemon`: finishes an interrupted apply, then checks every `check_interval` (with
//! jitter), applies automatically when `auto_apply` is set (inside `maintenance_window` when
//! one is set), and serves the local HTTPS API and the Updates page.
//!
//! - The decision of what to do next is [`schedule::next_action`], a pure function; this
//!   module only executes it, with the time read from a [`Clock`] (tests inject a virtual one).
//! - One apply at a time: the API and the scheduler share a [`Runner`], which refuses a second
//!   apply in this process at once (409); the agent's file lock refuses one from another
//!   process (a CLI apply).
//! - `enabled: false`: the scheduler stays idle, the API still answers.
//! - The configuration is read at start. A change needs a restart (`rc-service qx-update
//!   restart` / `systemctl restart qx-update`); SIGHUP only logs that.
//! - SIGTERM/SIGINT: the API stops accepting connections, no new check or apply starts, and a
//!   running apply is waited for: it runs on a blocking thread and is never interrupted
//!   between a rename and its fsync. If the service manager kills the process anyway
//!   (SIGKILL after its stop timeout), the journal lets the next start roll back or forward.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use qx_core::history::{Origin, StartedBy};
use tokio::sync::watch;

pub mod api;
pub mod schedule;
pub mod tls;
pub(crate) mod web;
pub mod window;

use crate::{Agent, AgentError, ApplyOptions, ApplyReport, CheckReport, StatusSnapshot};
pub use schedule::{Clock, Policy, Scheduler, Step, SystemClock};
pub use window::MaintenanceWindow;

/// Arguments of `qx-update daemon`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DaemonArgs {
    /// Listen address of the HTTPS API and page, overriding `updates.api.listen`
    /// (default 0.0.0.0:8443).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// Where the generated self-signed certificate is kept, below the root.
pub const API_STATE_DIR: &str = "data/updates/api";

/// Longest single wait of the real clock: the schedule is re-evaluated at least this often,
/// so a wall-clock jump (NTP step, suspend) delays nothing by more than this.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// Runner: one apply at a time, shared by the API and the scheduler.

/// Why the runner did not run an operation.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("an update is already running on this host; wait for it to finish (GET /api/v1/updates/status shows its progress)")]
    Busy,
    #[error("the update agent is shutting down; try again after it has restarted")]
    ShuttingDown,
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("the {what} task stopped unexpectedly: {message}; see the agent's log")]
    Task { what: &'static str, message: String },
}

impl RunError {
    fn task(what: &'static str, e: tokio::task::JoinError) -> RunError {
        RunError::Task {
            what,
            message: e.to_string(),
        }
    }
}

/// An apply that was started in the background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The operation id the status reports (`None` only if the agent reported none).
    pub operation_id: Option<String>,
}

/// Runs the agent's blocking operations on blocking threads, one apply at a time.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<RunnerInner>,
}

struct RunnerInner {
    agent: Agent,
    slot: Arc<tokio::sync::Mutex<()>>,
    accepting: AtomicBool,
    /// The scheduler's next check (for the status).
    next_check: std::sync::Mutex<Option<jiff::Timestamp>>,
}

impl Runner {
    pub fn new(agent: Agent) -> Runner {
        Runner {
            inner: Arc::new(RunnerInner {
                agent,
                slot: Arc::new(tokio::sync::Mutex::new(())),
                accepting: AtomicBool::new(true),
                next_check: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The scheduler's next check; the event stream's subscribers get the status again.
    pub fn set_next_check(&self, at: Option<jiff::Timestamp>) {
        *self
            .inner
            .next_check
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = at;
        self.inner.agent.status_handle().touch();
    }

    /// The daemon's schedule at `now` (the configuration's policy, the scheduler's next
    /// check).
    pub fn schedule_status(&self, now: &jiff::Zoned) -> schedule::ScheduleStatus {
        let next = *self
            .inner
            .next_check
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        schedule::ScheduleStatus::at(now, &Policy::from_config(self.agent().config()), next)
    }

    /// The status with the daemon's schedule at this moment.
    pub fn with_schedule(&self, mut snapshot: StatusSnapshot) -> StatusSnapshot {
        snapshot.schedule = Some(self.schedule_status(&jiff::Zoned::now()));
        snapshot
    }

    pub fn agent(&self) -> &Agent {
        &self.inner.agent
    }

    /// Fetches and verifies the manifest (no host change).
    pub async fn check(&self) -> Result<CheckReport, RunError> {
        let agent = self.inner.agent.clone();
        tokio::task::spawn_blocking(move || agent.check())
            .await
            .map_err(|e| RunError::task("check", e))?
            .map_err(RunError::from)
    }

    /// Like [`Runner::check`], with the options an apply would use (no host change but the
    /// replay watermarks).
    pub async fn check_with(&self, opts: crate::ApplyOptions) -> Result<CheckReport, RunError> {
        let agent = self.inner.agent.clone();
        tokio::task::spawn_blocking(move || agent.check_with(&opts))
            .await
            .map_err(|e| RunError::task("check", e))?
            .map_err(RunError::from)
    }

    /// Queues a fleet event (a blocking, fsynced append).
    pub async fn record_event(&self, event: crate::fleet::Event) {
        let agent = self.inner.agent.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || agent.fleet().record(event)).await {
            tracing::warn!(error = %e, "the fleet event task failed; the event is lost");
        }
    }

    /// Checks in when the host has booted since the last delivered check-in (the boot id
    /// changed): the daemon's start after a boot.
    pub async fn boot_check_in(&self) {
        let agent = self.inner.agent.clone();
        let ran = tokio::task::spawn_blocking(move || {
            if agent.fleet().booted() {
                agent.fleet().report(&agent);
            }
        })
        .await;
        if let Err(e) = ran {
            tracing::warn!(error = %e, "the boot check-in task failed");
        }
    }

    /// The current status (reads installed versions and history from disk).
    pub async fn status(&self) -> Result<StatusSnapshot, RunError> {
        let agent = self.inner.agent.clone();
        let snapshot = tokio::task::spawn_blocking(move || agent.status())
            .await
            .map_err(|e| RunError::task("status", e))?;
        Ok(self.with_schedule(snapshot))
    }

    fn take_slot(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, RunError> {
        if !self.inner.accepting.load(Ordering::SeqCst) {
            return Err(RunError::ShuttingDown);
        }
        self.inner
            .slot
            .clone()
            .try_lock_owned()
            .map_err(|_| RunError::Busy)
    }

    fn spawn_apply(
        &self,
        guard: tokio::sync::OwnedMutexGuard<()>,
        mut opts: ApplyOptions,
        via: Origin,
    ) -> tokio::task::JoinHandle<Result<ApplyReport, AgentError>> {
        let agent = self.inner.agent.clone();
        let origin = via.as_str();
        opts.started_by = Some(StartedBy::via(via));
        tokio::task::spawn_blocking(move || {
            // Held until the transaction has ended: a shutdown waits for it (`wait_idle`).
            let _guard = guard;
            tracing::info!(origin, components = ?opts.components, "apply started");
            let result = agent.apply(&opts);
            match &result {
                Ok(report) => tracing::info!(
                    origin,
                    version = %report.version,
                    components = ?report.components,
                    outcome = ?report.outcome,
                    "apply finished"
                ),
                Err(e) => tracing::warn!(origin, error = %e, "apply failed"),
            }
            result
        })
    }

    /// Runs an apply to its end (used by the scheduler).
    pub async fn apply(&self, opts: ApplyOptions) -> Result<ApplyReport, RunError> {
        let guard = self.take_slot()?;
        self.spawn_apply(guard, opts, Origin::Automatic)
            .await
            .map_err(|e| RunError::task("apply", e))?
            .map_err(RunError::from)
    }

    /// Starts an apply in the background and returns once the agent has given it an operation
    /// id (or it has already ended). A refusal that comes before any change (busy, bad
    /// manifest, unknown component) is returned as an error instead.
    pub async fn start_apply(&self, opts: ApplyOptions) -> Result<Started, RunError> {
        let guard = self.take_slot()?;
        let mut rx = self.inner.agent.subscribe();
        let before = rx.borrow_and_update().operation_id.clone();
        let mut handle = self.spawn_apply(guard, opts, Origin::Api);
        let mut watching = true;
        loop {
            tokio::select! {
                changed = rx.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                        continue;
                    }
                    let id = rx.borrow_and_update().operation_id.clone();
                    if id.is_some() && id != before {
                        return Ok(Started { operation_id: id });
                    }
                }
                ended = &mut handle => {
                    let report = ended.map_err(|e| RunError::task("apply", e))??;
                    let id = self.inner.agent.subscribe().borrow().operation_id.clone();
                    tracing::debug!(version = %report.version, "apply ended before its id was seen");
                    return Ok(Started { operation_id: id });
                }
            }
        }
    }

    /// No new check or apply starts after this.
    pub fn stop_accepting(&self) {
        self.inner.accepting.store(false, Ordering::SeqCst);
    }

    /// True while an apply started by this runner runs.
    pub fn is_applying(&self) -> bool {
        self.inner.slot.try_lock().is_err()
    }

    /// Returns when no apply started by this runner is running.
    pub async fn wait_idle(&self) {
        let _idle = self.inner.slot.lock().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon.

/// `qx-update daemon`: see the module documentation.
pub async fn run(agent: Agent, args: &DaemonArgs) -> anyhow::Result<()> {
    let config = agent.config().clone();
    let root = agent.root().to_path_buf();

    let recovering = agent.clone();
    match tokio::task::spawn_blocking(move || recovering.recover())
        .await
        .context("recovery task failed")?
    {
        Ok(Some(report)) => {
            tracing::warn!(?report, "finished an interrupted update from its journal")
        }
        Ok(None) => {}
        Err(AgentError::Busy { lock }) => tracing::warn!(
            lock = %lock.display(),
            "another process holds the apply lock; recovery is left to it"
        ),
        Err(e) => {
            tracing::error!(error = %e, "recovery of an interrupted update failed; see the update log")
        }
    }

    let token =
        tls::load_or_create_token(&config.api.token_file).context("cannot set up the API token")?;
    let tls = tls::server_config(
        config.api.tls_cert.as_deref(),
        config.api.tls_key.as_deref(),
        &root.join(API_STATE_DIR),
    )
    .context("cannot set up TLS for the API")?;
    let listen = args.listen.unwrap_or(config.api.listen);
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen} (updates.api.listen or --listen)"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let listening = listener.local_addr().unwrap_or(listen);

    let (stop_tx, stop_rx) = watch::channel(false);
    // Installed before "daemon started" is logged: from then on SIGTERM is handled.
    let signals = tokio::spawn(watch_signals(install_signals(), stop_tx));

    let runner = Runner::new(agent);
    runner.boot_check_in().await;
    let scheduler = Scheduler::new(runner.clone(), SystemClock, Policy::from_config(&config));
    let scheduler = tokio::spawn(scheduler.run(stop_rx.clone()));

    tracing::info!(listen = %listening, token_file = %config.api.token_file.display(),
        enabled = config.enabled, auto_apply = config.auto_apply,
        window = ?config.maintenance_window.as_ref().map(|w| w.to_string()), "daemon started");
    let state = api::ApiState::new(runner.clone(), token).with_limits(config.api.limits);
    let served = api::serve(state, listener, tls, stop_rx.clone()).await;

    runner.stop_accepting();
    if let Err(e) = scheduler.await {
        tracing::error!(error = %e, "scheduler task failed");
    }
    if runner.is_applying() {
        tracing::warn!("waiting for the running apply to finish before exiting");
    }
    runner.wait_idle().await;
    signals.abort();
    served.with_context(|| format!("API server on {listen} failed"))?;
    tracing::info!("daemon stopped");
    Ok(())
}

type SignalStreams = Option<(
    tokio::signal::unix::Signal,
    tokio::signal::unix::Signal,
    tokio::signal::unix::Signal,
)>;

/// Registers SIGTERM, SIGINT and SIGHUP handlers (they take effect at once).
fn install_signals() -> SignalStreams {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(term), Ok(int), Ok(hup)) => Some((term, int, hup)),
        _ => {
            tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL (the journal keeps the host consistent)");
            None
        }
    }
}

/// SIGTERM/SIGINT → stop; SIGHUP → log that a restart is needed.
async fn watch_signals(signals: SignalStreams, stop: watch::Sender<bool>) {
    let Some((mut term, mut int, mut hup)) = signals else {
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => tracing::warn!(
                "SIGHUP: the configuration is read at start only; restart the service to apply changes"
            ),
        }
    }
    tracing::info!("stopping: no new work is started; a running apply is finished first");
    let _ = stop.send(true);
}
