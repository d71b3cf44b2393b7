//! The fleet store (docs/spec.md §9): one trait, two engines with the same schema and
//! migrations: SQLite (the embedded default, a file beside the releases) and PostgreSQL
//! (`DATABASE_URL=postgres://…`, shared by several servers).
//!
//! Secrets never reach the store: tokens arrive as their SHA-256 ([`TokenHash`]). Every time
//! is the server's clock in Unix milliseconds ([`Millis`]), passed in by the caller so that
//! tests inject their own clock. A host's own reported times are kept as text only.

use futures_util::future::BoxFuture;
use qx_core::channel::RolloutPlan;
use qx_core::fleet::{
    CheckIn, Event, EventsAccepted, Halt, HostDetail, HostList, Labels, LabelsPatch, Liveness,
    RolloutStage, RolloutState, Scope,
};
use qx_core::Sha256;

/// The server's clock: milliseconds since the Unix epoch.
pub type Millis = i64;

/// The SHA-256 of a bearer token (operator, enrollment or host token).
pub type TokenHash = Sha256;

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The database failed or could not be reached.
    #[error("the fleet database failed: {0}")]
    Database(String),
    /// The database's schema is newer than this server knows.
    #[error(
        "the fleet database was migrated by a newer server ({0}); run that version or a newer one"
    )]
    SchemaTooNew(String),
    /// A unique name is taken (an operator token's name).
    #[error("{0} already exists")]
    Conflict(String),
    /// A value the store cannot take (a paging cursor it did not issue, a sequence number
    /// beyond 2^63 - 1): the caller answers 400.
    #[error("{0}")]
    Invalid(String),
}

pub type FleetResult<T> = Result<T, FleetError>;

/// A new operator token.
#[derive(Debug, Clone)]
pub struct NewOperatorToken {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub hash: TokenHash,
    pub now: Millis,
}

/// An operator token as stored (active or revoked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorTokenRow {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

/// A new enrollment token.
#[derive(Debug, Clone)]
pub struct NewEnrollmentToken {
    pub id: String,
    pub name: Option<String>,
    pub hash: TokenHash,
    pub product: String,
    pub labels: Labels,
    pub expires_at: Millis,
    pub uses: u32,
    pub now: Millis,
}

/// Why an enrollment token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollRefused {
    Unknown,
    Expired,
    UsedUp,
    Revoked,
}

/// A host being enrolled: the store takes one use of the token and creates the host in one
/// transaction (two servers racing for the last use: exactly one wins).
#[derive(Debug, Clone)]
pub struct NewHost {
    pub id: String,
    pub token_hash: TokenHash,
    pub hostname: Option<String>,
    /// The host's own labels; the token's labels are added over them.
    pub labels: Labels,
    /// The hash of the host's enrollment key: a host already enrolled with this key and
    /// token (its answer was lost) is answered again with its new token hash instead.
    pub enrollment_key: Option<TokenHash>,
    pub now: Millis,
}

/// The host as enrollment created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledHost {
    pub id: String,
    pub product: String,
    pub labels: Labels,
}

/// What a host token authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAuth {
    pub id: String,
    pub product: String,
    /// Set once decommissioned: the token no longer acts (401).
    pub decommissioned: bool,
}

/// How liveness is judged: online until `grace` past the expected check-in, then overdue,
/// offline once `offline_after` past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessRule {
    pub grace: Millis,
    pub offline_after: Millis,
}

impl LivenessRule {
    /// The liveness of a host whose next check-in was due at `due` (none yet: online).
    pub fn judge(&self, due: Option<Millis>, now: Millis) -> Liveness {
        match due {
            Some(d) if now > d + self.offline_after => Liveness::Offline,
            Some(d) if now > d + self.grace => Liveness::Overdue,
            _ => Liveness::Online,
        }
    }
}

/// One label condition of a selector: `key=value` or `key!=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMatch {
    pub key: String,
    pub value: String,
    pub equal: bool,
}

/// The operator's host list query (`GET /api/v1/hosts`).
#[derive(Debug, Clone, Default)]
pub struct HostQuery {
    pub product: Option<String>,
    pub channel: Option<String>,
    /// Hosts running this version of any component.
    pub version: Option<String>,
    /// The update state (`HostSummary::state`).
    pub state: Option<String>,
    pub labels: Vec<LabelMatch>,
    pub liveness: Option<Liveness>,
    /// Include decommissioned hosts (default: no).
    pub decommissioned: bool,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
    /// At most this many hosts (the caller caps it).
    pub limit: u32,
}

/// Counts for the dashboard and the metrics, by the host list's dimensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// `(product, channel, component, version) → hosts`.
    pub by_version: Vec<((String, String, String, String), u64)>,
    /// `(product, channel) → hosts` (`""`: no check-in yet).
    pub by_channel: Vec<((String, String), u64)>,
    /// `(product, state) → hosts`.
    pub by_state: Vec<((String, String), u64)>,
    /// `liveness → hosts` (decommissioned hosts excluded).
    pub by_liveness: Vec<(Liveness, u64)>,
    /// `(event type, message) → count` of `failed` and `rolled_back` events since `since`.
    pub recent_failures: Vec<((String, String), u64)>,
}

/// A rollout as stored (docs/spec.md §10): its signed plan and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRow {
    pub id: String,
    pub product: String,
    pub channel: String,
    pub version: String,
    pub plan: RolloutPlan,
    pub state: RolloutState,
    pub started_at: Millis,
    pub updated_at: Millis,
    /// When each wave opened, in wave order (its length: how many are open).
    pub opened: Vec<Millis>,
    pub halt: Option<Halt>,
    pub halts: Vec<Halt>,
    pub acknowledged_failures: u64,
    pub acknowledged_finished: u64,
    pub ended_reason: Option<String>,
}

/// A conditional change of a rollout: applied only while its state is one of `from` (and,
/// with `opened`, while its opened waves are still the first of the pair), so that servers
/// sharing the store record each change once.
#[derive(Debug, Clone, Default)]
pub struct RolloutChange {
    pub from: Vec<RolloutState>,
    pub state: Option<RolloutState>,
    /// `(expected, new)` opened waves.
    pub opened: Option<(Vec<Millis>, Vec<Millis>)>,
    /// `Some(None)` clears the halt.
    pub halt: Option<Option<Halt>>,
    pub halts: Option<Vec<Halt>>,
    /// `(failures, finished)` acknowledged.
    pub acknowledged: Option<(u64, u64)>,
    pub ended_reason: Option<String>,
    pub now: Millis,
}

/// Where one host stands in one rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStage {
    pub wave: u32,
    pub stage: RolloutStage,
    pub since: Millis,
    pub deadline: Option<Millis>,
    pub message: Option<String>,
}

/// Hosts of a rollout in one wave and stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageCount {
    pub wave: u32,
    pub stage: RolloutStage,
    pub hosts: u64,
}

/// An enrolled, not decommissioned host of a channel, as the rollout engine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelHost {
    pub id: String,
    pub labels: Labels,
    pub last_checkin: Option<Millis>,
    /// When its next check-in is due (none before its first).
    pub next_due: Option<Millis>,
    /// Every version it reported (components and slots).
    pub versions: Vec<String>,
}

/// A stored pin: a host (or the hosts a selector matches) kept on a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRow {
    pub id: String,
    pub product: String,
    pub channel: String,
    pub host: Option<String>,
    /// `key=value[,key=value…]`.
    pub selector: Option<String>,
    pub version: String,
    pub created_at: Millis,
}

/// What every check-in of a channel needs from the store besides its rollout, read once for
/// the channel (and cached briefly by the server): its pins, and whether any host of it is
/// offered or downloading in a halted or aborted rollout (only then is a host's cancel read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelView {
    pub pins: Vec<PinRow>,
    pub cancelable: bool,
}

/// The fleet store. Object-safe: the server holds an `Arc<dyn FleetStore>` chosen at start.
pub trait FleetStore: Send + Sync + 'static {
    /// Brings the schema up to date (idempotent; safe when several servers start at once).
    fn migrate(&self) -> BoxFuture<'_, FleetResult<()>>;

    /// Stores a new operator token; `Conflict` when an active one has that name.
    fn create_operator_token(&self, t: NewOperatorToken) -> BoxFuture<'_, FleetResult<()>>;
    /// The active or revoked token with this hash.
    fn operator_token(
        &self,
        hash: TokenHash,
    ) -> BoxFuture<'_, FleetResult<Option<OperatorTokenRow>>>;
    fn list_operator_tokens(&self) -> BoxFuture<'_, FleetResult<Vec<OperatorTokenRow>>>;
    /// Revokes the active token named `name`; false when there is none.
    fn revoke_operator_token(&self, name: String, now: Millis) -> BoxFuture<'_, FleetResult<bool>>;

    fn create_enrollment_token(&self, t: NewEnrollmentToken) -> BoxFuture<'_, FleetResult<()>>;
    /// Revokes the enrollment token `id` (hosts already enrolled with it stay); false when
    /// there is none or it was revoked already.
    fn revoke_enrollment_token(&self, id: String, now: Millis) -> BoxFuture<'_, FleetResult<bool>>;
    /// Takes one use of the enrollment token `token` and creates `host`, atomically; or, when
    /// a live host was enrolled with `host.enrollment_key` and this token, gives that host
    /// `host.token_hash` instead (its id is answered, no use is taken).
    fn enroll(
        &self,
        token: TokenHash,
        host: NewHost,
    ) -> BoxFuture<'_, FleetResult<Result<EnrolledHost, EnrollRefused>>>;

    /// The host a host token belongs to.
    fn host_by_token(&self, hash: TokenHash) -> BoxFuture<'_, FleetResult<Option<HostAuth>>>;
    /// Records a check-in received at `now`; the host is next expected at `next_due`.
    fn check_in(
        &self,
        host: String,
        report: CheckIn,
        now: Millis,
        next_due: Millis,
    ) -> BoxFuture<'_, FleetResult<()>>;
    /// Stores the events not stored yet (by `(host, seq)`), updates the host's state from the
    /// newest one, and says how many were new and which is the highest stored sequence number.
    fn append_events(
        &self,
        host: String,
        events: Vec<Event>,
        now: Millis,
    ) -> BoxFuture<'_, FleetResult<EventsAccepted>>;

    fn list_hosts(
        &self,
        query: HostQuery,
        rule: LivenessRule,
        now: Millis,
    ) -> BoxFuture<'_, FleetResult<HostList>>;
    /// A host with its newest `events` events.
    fn host(
        &self,
        id: String,
        events: u32,
        rule: LivenessRule,
        now: Millis,
    ) -> BoxFuture<'_, FleetResult<Option<HostDetail>>>;
    /// Sets and removes operator labels; false when the host does not exist.
    fn patch_labels(&self, id: String, patch: LabelsPatch) -> BoxFuture<'_, FleetResult<bool>>;
    /// Revokes the host's token; false when the host does not exist or was already.
    fn decommission(&self, id: String, now: Millis) -> BoxFuture<'_, FleetResult<bool>>;

    /// The counts of [`FleetCounts`]; failures since `since`.
    fn counts(
        &self,
        rule: LivenessRule,
        now: Millis,
        since: Millis,
    ) -> BoxFuture<'_, FleetResult<FleetCounts>>;

    /// Stores a new rollout (`row.state` running); false when its id is known or another
    /// unfinished rollout holds its product and channel.
    fn create_rollout(&self, row: RolloutRow) -> BoxFuture<'_, FleetResult<bool>>;
    fn rollout(&self, id: String) -> BoxFuture<'_, FleetResult<Option<RolloutRow>>>;
    /// The rollouts of a product (of one channel when given), newest first.
    fn rollouts(
        &self,
        product: String,
        channel: Option<String>,
    ) -> BoxFuture<'_, FleetResult<Vec<RolloutRow>>>;
    /// Every running, paused or halted rollout.
    fn unfinished_rollouts(&self) -> BoxFuture<'_, FleetResult<Vec<RolloutRow>>>;
    /// Applies `change` when the rollout's state is one of `change.from`; whether it did.
    fn change_rollout(&self, id: String, change: RolloutChange)
        -> BoxFuture<'_, FleetResult<bool>>;
    fn host_stage(
        &self,
        rollout: String,
        host: String,
    ) -> BoxFuture<'_, FleetResult<Option<HostStage>>>;
    /// Records that the host was offered the rollout's version (stage `offered`), once.
    fn record_offer(
        &self,
        rollout: String,
        host: String,
        wave: u32,
        now: Millis,
    ) -> BoxFuture<'_, FleetResult<bool>>;
    /// Turns every in-progress stage whose deadline is before `now` into `timed_out`; how many.
    fn sweep_timeouts(&self, now: Millis) -> BoxFuture<'_, FleetResult<u64>>;
    fn stage_counts(&self, rollout: String) -> BoxFuture<'_, FleetResult<Vec<StageCount>>>;
    /// The ids of the hosts the rollout offered its version to.
    fn rollout_hosts(&self, rollout: String) -> BoxFuture<'_, FleetResult<Vec<String>>>;
    /// The most frequent failure messages of a rollout, most frequent first.
    fn top_failures(
        &self,
        rollout: String,
        limit: u32,
    ) -> BoxFuture<'_, FleetResult<Vec<(String, u64)>>>;
    /// Every label of a host (its own and the operators').
    fn host_labels(&self, host: String) -> BoxFuture<'_, FleetResult<Labels>>;
    /// The enrolled, not decommissioned hosts of a product whose last check-in named `channel`.
    fn channel_hosts(
        &self,
        product: String,
        channel: String,
    ) -> BoxFuture<'_, FleetResult<Vec<ChannelHost>>>;

    /// The pins of a product's channel (newest first) and the version the host must cancel,
    /// in one read.
    /// The channel's [`ChannelView`], in one read.
    fn channel_view(
        &self,
        product: String,
        channel: String,
    ) -> BoxFuture<'_, FleetResult<ChannelView>>;
    /// The version the host must cancel: it is offered or downloading in a halted or aborted
    /// rollout of the channel (the newest such).
    fn host_cancel(
        &self,
        product: String,
        channel: String,
        host: String,
    ) -> BoxFuture<'_, FleetResult<Option<String>>>;

    fn create_pin(&self, pin: PinRow) -> BoxFuture<'_, FleetResult<()>>;
    /// The pins of a product (of one channel when given), newest first.
    fn pins(
        &self,
        product: String,
        channel: Option<String>,
    ) -> BoxFuture<'_, FleetResult<Vec<PinRow>>>;
    /// Deletes the pin; false when the product has none with that id.
    fn delete_pin(&self, product: String, id: String) -> BoxFuture<'_, FleetResult<bool>>;

    /// Takes the lock named `key` across every server on this database and holds it until the
    /// guard is dropped (or the server dies): what serialises the writes of releases and
    /// channel states in a shared object store. `None` when the store is one server's own
    /// (SQLite): the server's in-process lock is then enough.
    fn shared_lock(&self, key: i64) -> BoxFuture<'_, FleetResult<Option<SharedLock>>>;
}

/// A held [`FleetStore::shared_lock`]; dropping it releases the lock.
pub struct SharedLock(pub Box<dyn Send>);
