//! The agent's side of the fleet (docs/spec.md §9): enrollment and identity, a check-in on
//! every check and after each boot, and the host's events, queued durably and delivered at
//! least once.
//!
//! - Reporting is on when `updates.fleet.enabled` (the default) and the host has an identity
//!   for the configured server, or `updates.fleet.enroll_token_file` is set: then the first
//!   check enrolls the host ([`identity`]). A host is never enrolled twice for one server; an
//!   identity for another `server_url` is replaced by a new enrollment. An enrollment whose
//!   answer was lost is sent again with the same enrollment key, and the server answers it
//!   with the same host ([`identity::enrollment_key`]).
//! - A 401 to the host token means the host was decommissioned: the identity file records it,
//!   reporting stops (no events are queued any more, no enrollment is tried again) and the
//!   agent goes on updating; removing `/data/updates/identity.json` enrolls it again.
//! - A failed check-in never fails the check or the apply: it is logged and the next check
//!   tries again. Its answer's `next_checkin_s`, or a 429's `Retry-After`, is left for the
//!   daemon's schedule ([`ScheduleHint`]), which sets its next check (and so its next
//!   check-in) by it.
//! - Events go through [`qx_core::fleet_queue::EventQueue`], shared with the A/B boot
//!   commands; they are sent after each check-in and each apply, and forgotten up to the
//!   server's `last_seq`.
//! - The check-in's reason is `boot` until one check-in has been delivered since the host
//!   booted: the kernel's boot id (`/proc/sys/kernel/random/boot_id`) is compared with the
//!   one recorded after the last delivered boot check-in.

mod client;
pub mod identity;
mod report;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

pub use qx_core::fleet::Event;
use qx_core::fleet::MAX_EVENTS_PER_BATCH;
use qx_core::fleet::{
    CheckInAnswer, CheckInReason, EnrollRequest, EventBatch, EventType, Identity,
};
use qx_core::fleet_queue::{EventQueue, QueueError};
use qx_core::fs::{under_root, write_atomic, FsError};

use client::FleetClient;
pub use client::{parse_retry_after, DEFAULT_RETRY_AFTER};
use identity::StoredIdentity;

use crate::config::{ConfigError, FleetConfig};
use crate::{Agent, Config};

/// The shortest and longest `next_checkin_s` the agent follows; a value outside is ignored
/// (logged) and the local `check_interval` applies.
pub const NEXT_CHECKIN_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(10), Duration::from_secs(7 * 24 * 3600));
/// A 429's `Retry-After` is honoured within these bounds (shorter: the least; longer: the
/// most).
pub const RETRY_AFTER_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));

/// Where the kernel's boot id is read, under the root.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// Where the host's name is read, under the root.
const HOSTNAME: &str = "/proc/sys/kernel/hostname";

/// What went wrong talking to the fleet API (never fatal to a check or an apply).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("fleet: cannot reach {url}: {message}; the next check tries again")]
    Network { url: String, message: String },
    #[error("fleet: {url} refused the token (401): {message}")]
    Unauthorized { url: String, message: String },
    #[error("fleet: {url} is overloaded (429); the next attempt comes after {}s", after.as_secs())]
    RetryAfter { url: String, after: Duration },
    #[error("fleet: {url} answered {status}: {message}; the next check tries again")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("fleet: the answer of {url} is not what the fleet protocol says: {message}")]
    Answer { url: String, message: String },
    #[error("fleet: enrollment token file {}: {message}", path.display())]
    Token { path: PathBuf, message: String },
    #[error("fleet: identity file {}: {message}; remove it to enroll the host again", path.display())]
    Identity { path: PathBuf, message: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("fleet: {0}")]
    Fs(#[from] FsError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What the server asked of the schedule at the last check-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleHint {
    /// Check in again after this long (the answer's `next_checkin_s`, within bounds).
    NextCheckIn(Duration),
    /// The server is overloaded: not before this long (a 429's `Retry-After`, within bounds).
    RetryAfter(Duration),
}

/// A delivered check-in: the host it was for and the server's answer (its offer and cancel
/// are judged by the check within the signed channel state, see `crate::check`).
#[derive(Debug, Clone)]
pub struct CheckedIn {
    pub host_id: String,
    pub answer: CheckInAnswer,
}

/// The fleet reporter of one agent.
pub struct Fleet {
    config: FleetConfig,
    server_url: String,
    root: PathBuf,
    identity_path: PathBuf,
    state_dir: PathBuf,
    queue: EventQueue,
    hint: Mutex<Option<ScheduleHint>>,
}

impl Fleet {
    pub(crate) fn new(config: &Config, paths: &crate::HostPaths) -> Fleet {
        Fleet {
            config: config.fleet.clone(),
            server_url: config.server_url.clone(),
            root: paths.root.clone(),
            identity_path: paths.identity.clone(),
            state_dir: paths.fleet.clone(),
            queue: EventQueue::under_root(&paths.root),
            hint: Mutex::new(None),
        }
    }

    /// The host's event queue.
    pub fn queue(&self) -> &EventQueue {
        &self.queue
    }

    /// `/data/updates/identity.json` under the root.
    pub fn identity_path(&self) -> &Path {
        &self.identity_path
    }

    /// The identity file, when there is one and it can be read.
    pub fn identity(&self) -> Option<StoredIdentity> {
        identity::load(&self.identity_path).ok().flatten()
    }

    /// Whether this host reports to the fleet: see the module documentation.
    pub fn reporting(&self) -> bool {
        if !self.config.enabled {
            return false;
        }
        match identity::load(&self.identity_path) {
            Ok(Some(s)) if s.is_for(&self.server_url) => s.decommissioned_at.is_none(),
            _ => self.config.enroll_token_file.is_some(),
        }
    }

    /// True when the host booted since the last delivered check-in (its boot id differs from
    /// the recorded one), and reporting is on.
    pub fn booted(&self) -> bool {
        let now = read_trimmed(&under_root(&self.root, Path::new(BOOT_ID)));
        self.reporting() && now.is_some() && now != read_trimmed(&self.state_dir.join("boot_id"))
    }

    /// What the last check-in asked of the schedule (taken: asked once).
    pub fn take_hint(&self) -> Option<ScheduleHint> {
        self.hint.lock().ok().and_then(|mut h| h.take())
    }

    fn set_hint(&self, hint: ScheduleHint) {
        if let Ok(mut h) = self.hint.lock() {
            *h = Some(hint);
        }
    }

    /// Queues `event` when reporting is on; a queue that cannot be written is logged (the
    /// update goes on).
    pub fn record(&self, event: Event) {
        if !self.reporting() {
            return;
        }
        match self.queue.record(event) {
            Ok(seq) => tracing::debug!(seq, "fleet event queued"),
            Err(e) => tracing::warn!(error = %e, "cannot queue a fleet event; it is lost"),
        }
    }

    /// A check found `version` to install: `offered`, once per version.
    pub(crate) fn offered(&self, version: &str) {
        self.once(EventType::Offered, "offered", version, None);
    }

    /// The server asked to cancel `version` (its rollout halted or was aborted): `cancelled`,
    /// once per version.
    pub(crate) fn cancelled(&self, version: &str) {
        let message = "the server cancelled this version; its staged download was dropped";
        self.once(EventType::Cancelled, "cancelled", version, Some(message));
    }

    /// Queues `kind` for `version` unless the state file `name` already names that version.
    fn once(&self, kind: EventType, name: &str, version: &str, message: Option<&str>) {
        if !self.reporting() {
            return;
        }
        let path = self.state_dir.join(name);
        let before = std::fs::read_to_string(&path).unwrap_or_default();
        if before.trim() == version {
            return;
        }
        let mut e = event(kind, Some(version));
        e.message = message.map(str::to_owned);
        self.record(e);
        if let Err(e) = write_atomic(&path, format!("{version}\n").as_bytes()) {
            tracing::warn!(error = %e, file = name, "cannot record the version reported");
        }
    }

    /// Check in and send the queued events; every failure is logged, none is returned.
    pub fn report(&self, agent: &Agent) {
        let _ = self.check_in(agent);
    }

    /// [`Fleet::report`], returning the server's answer: `None` when the host does not report
    /// or the check-in failed (logged). A failure to send the events after a check-in is
    /// logged and keeps the answer.
    pub fn check_in(&self, agent: &Agent) -> Option<CheckedIn> {
        if !self.reporting() {
            return None;
        }
        match self.try_report(agent) {
            Ok(answer) => answer,
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// Sends the queued events only (before a reboot).
    pub fn send_events(&self, agent: &Agent) {
        if !self.reporting() {
            return;
        }
        let sent = FleetClient::new(agent.config()).and_then(|client| {
            match self.identity_for(&client)? {
                Some(id) => self.flush(&client, &id),
                None => Ok(()),
            }
        });
        if let Err(e) = sent {
            self.failed(&e);
        }
    }

    fn try_report(&self, agent: &Agent) -> Result<Option<CheckedIn>, FleetError> {
        let client = FleetClient::new(agent.config())?;
        let Some(id) = self.identity_for(&client)? else {
            return Ok(None);
        };
        let boot_id = read_trimmed(&under_root(&self.root, Path::new(BOOT_ID)));
        let reason = if self.booted() {
            CheckInReason::Boot
        } else {
            CheckInReason::Check
        };
        let answer = client.check_in(&id, &report::build(agent, reason))?;
        if let (CheckInReason::Boot, Some(b)) = (reason, &boot_id) {
            write_atomic(&self.state_dir.join("boot_id"), format!("{b}\n").as_bytes())?;
        }
        let next = Duration::from_secs(answer.next_checkin_s);
        if (NEXT_CHECKIN_BOUNDS.0..=NEXT_CHECKIN_BOUNDS.1).contains(&next) {
            self.set_hint(ScheduleHint::NextCheckIn(next));
        } else {
            tracing::warn!(
                next_checkin_s = answer.next_checkin_s,
                "fleet: the server's next check-in interval is outside 10s..7d; ignored, updates.check_interval applies"
            );
        }
        tracing::info!(host = %id.host_id, ?reason, next_checkin_s = answer.next_checkin_s, "fleet: checked in");
        if let Err(e) = self.flush(&client, &id) {
            self.failed(&e);
        }
        Ok(Some(CheckedIn {
            host_id: id.host_id,
            answer,
        }))
    }

    /// The identity to report with: the stored one for this server, or a new enrollment with
    /// the token file; `None` when the host was decommissioned or there is no token.
    fn identity_for(&self, client: &FleetClient) -> Result<Option<Identity>, FleetError> {
        let stored = identity::load(&self.identity_path)?;
        if let Some(s) = stored.filter(|s| s.is_for(&self.server_url)) {
            return Ok(s.decommissioned_at.is_none().then_some(s.identity));
        }
        let Some(file) = &self.config.enroll_token_file else {
            return Ok(None);
        };
        let token = read_token(file)?;
        let req = EnrollRequest {
            hostname: read_trimmed(&under_root(&self.root, Path::new(HOSTNAME))),
            labels: self.config.labels.clone(),
            enrollment_key: Some(identity::enrollment_key(
                &self.identity_path,
                &self.server_url,
            )?),
        };
        let mut id = client.enroll(&token, &req)?;
        crate::transaction::journal::crash_point("fleet-enrolled");
        id.server_url = Some(self.server_url.clone());
        let stored = StoredIdentity {
            identity: id.clone(),
            decommissioned_at: None,
        };
        identity::store_enrolled(&self.identity_path, &stored)?;
        tracing::info!(host = %id.host_id, server = %self.server_url, "fleet: enrolled");
        Ok(Some(id))
    }

    /// Sends the queue in batches, forgetting what the server acknowledged.
    fn flush(&self, client: &FleetClient, id: &Identity) -> Result<(), FleetError> {
        loop {
            let batch = self.queue.pending(MAX_EVENTS_PER_BATCH)?;
            if batch.is_empty() {
                return Ok(());
            }
            let accepted = client.events(id, &EventBatch { events: batch })?;
            crate::transaction::journal::crash_point("fleet-events-sent");
            let removed = self.queue.acknowledge(accepted.last_seq)?;
            tracing::info!(
                accepted = accepted.accepted,
                duplicates = accepted.duplicates,
                last_seq = accepted.last_seq,
                "fleet: events delivered"
            );
            if removed == 0 {
                // The server holds none of them: try again at the next report.
                tracing::warn!(
                    last_seq = accepted.last_seq,
                    "fleet: the server acknowledged none of the queued events; they stay queued"
                );
                return Ok(());
            }
        }
    }

    /// Logs a failed report, and acts on a 401 (stop reporting) or a 429 (quiet).
    fn failed(&self, e: &FleetError) {
        match e {
            FleetError::Unauthorized { .. } => self.decommissioned(e),
            FleetError::RetryAfter { after, .. } => {
                let after = (*after).clamp(RETRY_AFTER_BOUNDS.0, RETRY_AFTER_BOUNDS.1);
                self.set_hint(ScheduleHint::RetryAfter(after));
                tracing::warn!(error = %e, "fleet: check-in postponed");
            }
            _ => tracing::warn!(error = %e, "fleet: report failed; updates are not affected"),
        }
    }

    /// The host token was refused: record it and stop reporting (updates go on).
    fn decommissioned(&self, e: &FleetError) {
        match identity::load(&self.identity_path) {
            Ok(Some(mut s)) if s.is_for(&self.server_url) => {
                s.decommissioned_at = Some(jiff::Timestamp::now().to_string());
                if let Err(err) = identity::store(&self.identity_path, &s) {
                    tracing::warn!(error = %err, "cannot record the decommissioning");
                }
                tracing::error!(
                    error = %e,
                    host = %s.identity.host_id,
                    identity = %self.identity_path.display(),
                    "fleet: this host was decommissioned on the server (its token is refused); fleet reporting stopped, updates go on; remove the identity file to enroll it again"
                );
            }
            // An enrollment token refused: nothing to record; the next check tries again.
            _ => {
                tracing::error!(error = %e, "fleet: the enrollment token was refused; put a valid token into updates.fleet.enroll_token_file")
            }
        }
    }
}

/// A new event of `kind` about `version`, at this host's time.
pub fn event(kind: EventType, version: Option<&str>) -> Event {
    Event {
        seq: 0,
        kind,
        time: jiff::Timestamp::now().to_string(),
        version: version.map(str::to_owned),
        component: None,
        stage: None,
        exit_code: None,
        message: None,
        count: None,
    }
}

/// The event of a failed apply, with the stage, the exit code and the message of the error:
/// `rolled_back` when the update was installed and then undone because it did not work (its
/// service did not restart, or its effect was not verified: docs/spec.md §9, "health check"),
/// `failed` otherwise.
pub fn failed(version: &str, stage: &str, e: &crate::AgentError) -> Event {
    let kind = match e {
        crate::AgentError::NotEffective { .. } | crate::AgentError::RestartFailed { .. } => {
            EventType::RolledBack
        }
        _ => EventType::Failed,
    };
    Event {
        stage: Some(stage.to_owned()),
        exit_code: Some(e.exit_code()),
        message: Some(e.to_string()),
        ..event(kind, Some(version))
    }
}

/// The enrollment token: the file must not be changeable by another user, and not empty.
fn read_token(path: &Path) -> Result<String, FleetError> {
    crate::config::refuse_if_writable_by_others("fleet enrollment token file", path)?;
    let text = std::fs::read_to_string(path).map_err(|e| FleetError::Token {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(FleetError::Token {
            path: path.to_owned(),
            message: "is empty; put the enrollment token the operator created into it".into(),
        });
    }
    Ok(token.to_owned())
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_owned())
}
