//! The fleet protocol's JSON (docs/spec.md §9), spelled once for the update server, the agent
//! and the load generator: enrollment, check-ins, event batches and the operator's host views.
//!
//! Every request body type refuses unknown fields (a misspelt field is a 400, not silently
//! dropped); answers are read leniently (an older agent ignores fields a newer server adds).
//! Times are RFC 3339 UTC strings; the server stores and judges by its own clock and keeps a
//! host's times only as reported values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Labels of a host or an enrollment token: `key → value`.
pub type Labels = BTreeMap<String, String>;

/// The most labels one host may carry, and the longest key and value (in bytes).
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY: usize = 63;
pub const MAX_LABEL_VALUE: usize = 255;
/// The longest free-text field of a report or event (a message), in bytes; longer text is
/// cut at a character boundary and marked, never refused.
pub const MAX_MESSAGE: usize = 4096;
/// The most events in one batch.
pub const MAX_EVENTS_PER_BATCH: usize = 500;

/// The operator scopes, weakest first; `admin` includes every other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// See hosts, events, rollouts.
    Read,
    /// Upload, promote and yank releases.
    Publish,
    /// Start, pause, resume and abort rollouts.
    Rollout,
    /// Everything, including tokens, enrollment tokens and decommissioning.
    Admin,
}

/// `POST /api/v1/enrollment-tokens` (scope `admin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentTokenRequest {
    /// The product hosts enrolled with this token run.
    pub product: String,
    /// Labels every host enrolled with this token starts with.
    #[serde(default)]
    pub labels: Labels,
    /// How long the token stays valid, as a duration (`"24h"`, `"7d"`); default 24 h.
    #[serde(default)]
    pub expires_in: Option<String>,
    /// How many hosts may enroll with it; default 1.
    #[serde(default)]
    pub uses: Option<u32>,
    /// An operator's name for it (shown in listings).
    #[serde(default)]
    pub name: Option<String>,
}

/// The answer to an enrollment-token request: the token itself is shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentTokenCreated {
    pub id: String,
    pub token: String,
    pub product: String,
    pub labels: Labels,
    pub expires_at: String,
    pub uses: u32,
}

/// `POST /api/v1/hosts/enroll` with `Authorization: Bearer <enrollment token>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The host's name, for people (not an identity).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Labels the host adds to the token's (the token's win on a clash).
    #[serde(default)]
    pub labels: Labels,
    /// A secret the host made and kept durably before sending this request
    /// ([`new_secret`]): when the answer is lost (the host crashed or the connection broke
    /// before the identity was kept), the same request again is answered with the same host,
    /// a new host token, and no second use of the enrollment token.
    #[serde(default)]
    pub enrollment_key: Option<String>,
}

/// A new secret: 256 random bits, base64url without padding (43 characters). Host tokens,
/// operator and enrollment tokens, and a host's enrollment key.
pub fn new_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The host's identity, as the server answers an enrollment and the agent keeps it in
/// `/data/updates/identity.json` (mode 0600).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub host_id: String,
    /// 256 bits, base64url without padding; the server keeps only its hash.
    pub host_token: String,
    pub product: String,
    /// The server that issued it (the agent enrolls again when its `server_url` changes).
    #[serde(default)]
    pub server_url: Option<String>,
}

/// Why a check-in is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckInReason {
    Check,
    Boot,
}

/// One A/B slot as a host reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotReport {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    /// `good`, `bad`, `trying`, `empty` (qx-boot's slot states).
    pub state: String,
}

/// The outcome of the host's last update, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastResult {
    pub version: String,
    /// `success`, `failed`, `rolled_back`.
    pub outcome: String,
    #[serde(default)]
    pub message: Option<String>,
    pub time: String,
}

/// `POST /api/v1/hosts/{id}/checkin` with the host token: sent on every check and after boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    pub reason: CheckInReason,
    pub agent_version: String,
    pub channel: String,
    /// Component → installed version.
    #[serde(default)]
    pub installed: BTreeMap<String, String>,
    #[serde(default)]
    pub booted_slot: Option<String>,
    #[serde(default)]
    pub slots: Vec<SlotReport>,
    /// A version installed and waiting for a reboot or confirmation.
    #[serde(default)]
    pub pending: Option<String>,
    #[serde(default)]
    pub last_result: Option<LastResult>,
    /// `ok` or a short reason.
    #[serde(default)]
    pub health: Option<String>,
    /// The host's own labels (replace the ones it reported before; operator labels stay).
    #[serde(default)]
    pub labels: Labels,
    pub uptime_s: u64,
    /// The host's clock, for reference only.
    #[serde(default)]
    pub time: Option<String>,
}

/// The answer to a check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInAnswer {
    pub server_time: String,
    /// Seconds until the next check-in the server expects (its interval with jitter).
    pub next_checkin_s: u64,
    /// A version the server offers this host instead of the channel's `current` (§10): a
    /// rollout's version once the host's turn came, or the version it is pinned to. Absent:
    /// the host follows the signed channel state (its `current`, or a revert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<Offer>,
    /// A version whose download the host drops if it has not installed it yet (its rollout
    /// halted or was aborted); the host records `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<String>,
}

/// What the server offers one host at a check-in. The agent takes it only within the signed
/// channel state: the version must be listed there, and a rollout's version only from the
/// host's own wave's signed `not_before` on (judged by the earlier of the server's time and
/// the host's clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub version: String,
    pub reason: OfferReason,
    /// The rollout's id (`reason` = `rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// The host's wave in that rollout, from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<u32>,
}

/// Why a version is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfferReason {
    /// The host's wave of a rollout is open and its turn inside the wave came.
    Rollout,
    /// An operator pinned the host (or a label selector it matches) to this version: it runs
    /// that one and is offered no other.
    Pin,
}

/// What happened on a host (§9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Offered,
    DownloadStarted,
    DownloadDone,
    InstallStarted,
    Installed,
    Reboot,
    /// The only success: the update took effect (a full image: the new slot booted and
    /// passed its health checks).
    Confirmed,
    Failed,
    RolledBack,
    Deferred,
    Cancelled,
    /// The host went back from a revoked version (`version`: the one it left) to the
    /// channel's `current`, as a signed revert asked.
    Reverted,
    /// The agent's queue was full and dropped `count` older events.
    Dropped,
}

/// One event; `seq` is the host's own sequence number, increasing by one per event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The host's clock when it happened (kept as reported; the server records its own).
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// For `failed`: the step (`download`, `install`, `migrate`, `restart`, `verify`, `boot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For `dropped`: how many events were lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// `POST /api/v1/hosts/{id}/events` with the host token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    pub events: Vec<Event>,
}

/// The answer to an event batch: events already stored (a replay) are counted once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsAccepted {
    pub accepted: u64,
    pub duplicates: u64,
    /// The highest sequence number the server holds for this host: the agent may forget
    /// every queued event up to it.
    pub last_seq: u64,
}

/// Whether a host checks in when the server expects it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    Online,
    Overdue,
    Offline,
    Decommissioned,
}

/// A host in the operator's list (`GET /api/v1/hosts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSummary {
    pub id: String,
    pub product: String,
    #[serde(default)]
    pub hostname: Option<String>,
    pub channel: Option<String>,
    /// Component → version, from the last check-in.
    pub versions: BTreeMap<String, String>,
    /// The last update's state as the events tell it: `idle`, `updating`, `installed`
    /// (awaiting confirmation), `confirmed`, `failed`, `rolled_back`.
    pub state: String,
    pub liveness: Liveness,
    pub labels: Labels,
    pub enrolled_at: String,
    pub last_checkin: Option<String>,
    pub next_checkin_due: Option<String>,
    #[serde(default)]
    pub agent_version: Option<String>,
    #[serde(default)]
    pub last_message: Option<String>,
}

/// `GET /api/v1/hosts`: one page; `next` is the cursor of the following page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostList {
    pub hosts: Vec<HostSummary>,
    pub next: Option<String>,
}

/// An event as the server stored it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    #[serde(flatten)]
    pub event: Event,
    /// The server's clock when it arrived.
    pub received: String,
}

/// `GET /api/v1/hosts/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDetail {
    #[serde(flatten)]
    pub host: HostSummary,
    pub slots: Vec<SlotReport>,
    pub booted_slot: Option<String>,
    pub pending: Option<String>,
    /// The newest events first, at most 200.
    pub events: Vec<StoredEvent>,
}

/// `PATCH /api/v1/hosts/{id}`: labels to set (a `null` value removes the label).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsPatch {
    pub labels: BTreeMap<String, Option<String>>,
}

/// `POST /api/v1/tokens` (scope `admin`; also `qx-update-server token create`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorTokenRequest {
    pub name: String,
    pub scopes: Vec<Scope>,
}

/// An operator token as listed (never the secret, which is shown once at creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorToken {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: String,
    #[serde(default)]
    pub revoked_at: Option<String>,
    /// Only in the answer to its creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `GET /api/v1/fleet/summary` (scope `read`): the dashboard's overview, counted by the store
/// (never by listing hosts). Decommissioned hosts are not counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetSummary {
    /// The server's clock when it counted.
    pub server_time: String,
    /// Failures are counted from this time on (the server's clock).
    pub failures_since: String,
    /// Hosts per product, channel, component and version.
    pub by_version: Vec<VersionCount>,
    /// Hosts per product and channel (`""`: no check-in yet).
    pub by_channel: Vec<ChannelCount>,
    /// Hosts per product and update state.
    pub by_state: Vec<StateCount>,
    /// Hosts per liveness.
    pub by_liveness: Vec<LivenessCount>,
    /// `failed` and `rolled_back` events since `failures_since`, grouped by message, most
    /// frequent first.
    pub recent_failures: Vec<FailureCount>,
}

/// One row of [`FleetSummary::by_version`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionCount {
    pub product: String,
    pub channel: String,
    pub component: String,
    pub version: String,
    pub hosts: u64,
}

/// One row of [`FleetSummary::by_channel`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelCount {
    pub product: String,
    pub channel: String,
    pub hosts: u64,
}

/// One row of [`FleetSummary::by_state`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCount {
    pub product: String,
    pub state: String,
    pub hosts: u64,
}

/// One row of [`FleetSummary::by_liveness`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivenessCount {
    pub liveness: Liveness,
    pub hosts: u64,
}

/// One row of [`FleetSummary::recent_failures`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCount {
    /// `failed` or `rolled_back`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    pub count: u64,
}

/// What changed in the fleet, as the server-sent events stream (`GET /api/v1/fleet/events`,
/// event name `change`) tells the dashboard: enough to decide what to refresh, nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetChange {
    /// `checkin`, `events` or `decommission`.
    pub kind: String,
    pub host: String,
}

/// Where a rollout stands (§10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Waves open as their times and gates allow.
    Running,
    /// An operator paused it: no new offers, no wave opens; hosts already offered go on.
    Paused,
    /// A halt rule tripped: no new offers; hosts that have not installed are told to cancel.
    Halted,
    /// Ended by an operator (`abort`, or a signed revert or yank of its version).
    Aborted,
    /// Every wave is open and every host of the channel took the version or finished; or the
    /// version became the channel's `current`.
    Completed,
}

/// Where one host stands in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStage {
    Offered,
    Downloading,
    Installing,
    /// Installed (or rebooted into it), waiting for `confirmed`.
    Confirming,
    Confirmed,
    Failed,
    RolledBack,
    /// A stage deadline passed without the next event.
    TimedOut,
    Cancelled,
    Reverted,
}

impl RolloutStage {
    /// Every stage, in the order above.
    pub const ALL: [RolloutStage; 10] = [
        RolloutStage::Offered,
        RolloutStage::Downloading,
        RolloutStage::Installing,
        RolloutStage::Confirming,
        RolloutStage::Confirmed,
        RolloutStage::Failed,
        RolloutStage::RolledBack,
        RolloutStage::TimedOut,
        RolloutStage::Cancelled,
        RolloutStage::Reverted,
    ];

    /// A failure for the halt rules: failed, rolled back, timed out.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            RolloutStage::Failed | RolloutStage::RolledBack | RolloutStage::TimedOut
        )
    }

    /// Offered and not finished yet.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            RolloutStage::Offered
                | RolloutStage::Downloading
                | RolloutStage::Installing
                | RolloutStage::Confirming
        )
    }
}

/// Why a rollout halted, with the numbers that tripped the rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Halt {
    /// `max_failures` or `max_failure_rate`.
    pub rule: String,
    /// A sentence for people.
    pub reason: String,
    /// Failures and finished hosts counted since the last resume.
    pub failures: u64,
    pub finished: u64,
    pub at: String,
}

/// One wave of a rollout as the operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaveStatus {
    pub percent: f64,
    /// The signed earliest time.
    pub not_before: String,
    /// When the server opened it (its time passed and the previous wave's gate held).
    #[serde(default)]
    pub opened_at: Option<String>,
    /// `open`, `waiting_time` (before `not_before`), `waiting_gate` (the previous wave's
    /// confirmed share is below the gate), `closed` (paused, halted or ended before it opened).
    pub gate: String,
    /// Hosts of the channel in this wave (enrolled, not decommissioned).
    pub eligible: u64,
    /// Hosts per stage (every stage named, zeros included).
    pub stages: BTreeMap<RolloutStage, u64>,
    /// Confirmed over finished hosts of the wave, in percent (none finished: absent).
    #[serde(default)]
    pub confirmed_share: Option<f64>,
    /// When the last host of the wave is offered, if it opens (an estimate).
    #[serde(default)]
    pub eta: Option<String>,
}

/// `GET /api/v1/{product}/rollouts/{id}` and the answer of pause, resume and abort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub id: String,
    pub product: String,
    pub channel: String,
    pub version: String,
    pub state: RolloutState,
    pub policy: crate::channel::RolloutPolicy,
    pub waves: Vec<WaveStatus>,
    /// Set while halted (and kept after a resume, in `halts`).
    #[serde(default)]
    pub halt: Option<Halt>,
    /// Every halt so far, oldest first.
    #[serde(default)]
    pub halts: Vec<Halt>,
    /// Failures and finished hosts acknowledged by the last resume (not counted again).
    pub acknowledged_failures: u64,
    pub acknowledged_finished: u64,
    /// The most frequent failure messages: `(message, hosts)`.
    pub top_failures: Vec<(String, u64)>,
    pub started_at: String,
    pub updated_at: String,
    /// Why it ended (aborted or completed), for people.
    #[serde(default)]
    pub ended_reason: Option<String>,
}

/// `GET /api/v1/{product}/rollouts?channel=`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutList {
    pub rollouts: Vec<RolloutStatus>,
}

/// `GET /api/v1/{product}/rollouts/{id}/preview?host=ID`: what that host gets and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutPreview {
    pub host: String,
    pub rollout: String,
    pub version: String,
    pub bucket: u32,
    pub canary: bool,
    /// The host's wave, from 0 (none: its bucket is past the last wave).
    #[serde(default)]
    pub wave: Option<u32>,
    /// The version it is pinned to, which wins over the rollout.
    #[serde(default)]
    pub pinned: Option<String>,
    /// The signed earliest time of its wave.
    #[serde(default)]
    pub not_before: Option<String>,
    /// When the server offers it the version (its wave open, its place inside the wave), if
    /// known now.
    #[serde(default)]
    pub earliest: Option<String>,
    /// Its stage, once offered.
    #[serde(default)]
    pub stage: Option<RolloutStage>,
    /// A sentence: what it gets and why.
    pub summary: String,
}

/// `POST /api/v1/{product}/pins` (scope `rollout`): exactly one of `host` and `selector`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// The channel the pin applies to (default: `stable`).
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    /// Labels the host must carry, `key=value[,key=value…]`.
    #[serde(default)]
    pub selector: Option<String>,
    pub version: String,
}

/// A stored pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub id: String,
    pub product: String,
    pub channel: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub selector: Option<String>,
    pub version: String,
    pub created_at: String,
}

/// `GET /api/v1/{product}/pins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinList {
    pub pins: Vec<Pin>,
}
