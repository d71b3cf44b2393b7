//! The rollout engine: one [`Rollouts::tick`] judges every unfinished rollout (timeouts,
//! halts, wave openings, completion), run every `ROLLOUT_TICK` and shortly after an event
//! batch about a rollout; [`Rollouts::sync`] follows the signed channel state (a new plan
//! starts a rollout, a plan gone ends it). Every state change is a conditional update of the
//! store: of several servers sharing it, the one whose update changed the row counts the
//! metric and sends the webhook.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use qx_core::channel::{ChannelState, RevokeAction};
use qx_core::fleet::{Halt, RolloutState};
use qx_core::rollout::{draw, wave_of, CANARY_LABEL};

use super::rules::{self, Tally};
use super::webhook::Webhook;
use crate::config::FleetConfig;
use crate::fleet::clock::Clock;
use crate::fleet::store::{
    ChannelView, FleetResult, FleetStore, Millis, RolloutChange, RolloutRow,
};
use crate::metrics::Metrics;

/// The states of a rollout that is not over.
pub const UNFINISHED: [RolloutState; 3] = [
    RolloutState::Running,
    RolloutState::Paused,
    RolloutState::Halted,
];

/// How long after an event batch about a rollout the engine ticks (batches arriving
/// meanwhile share the tick).
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// How long a channel state's plan is reused before the stored state is read again (a
/// `PUT` through this server forgets it at once).
pub const PLAN_CACHE_TTL: Duration = Duration::from_secs(1);

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    pub timed_out: u64,
    /// Rollouts this server halted.
    pub halted: Vec<String>,
    /// `(rollout, wave)` opened by this server.
    pub opened: Vec<(String, usize)>,
    pub completed: Vec<String>,
}

/// A channel's stored state as last read (none: the channel has no state).
#[derive(Clone)]
pub(crate) struct CachedPlan {
    pub at: Instant,
    pub state: Option<Arc<ChannelState>>,
}

/// The rollout engine of one server.
pub struct Rollouts {
    pub(crate) store: Arc<dyn FleetStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) webhook: Option<Webhook>,
    /// `CHECKIN_GRACE`: how long past its due check-in a host still counts as online.
    grace: Millis,
    every: Duration,
    nudge: tokio::sync::Notify,
    /// Whether the last tick found an unfinished rollout (or one started since): nudges
    /// after event batches are only worth a tick then; the periodic tick runs regardless.
    active: std::sync::atomic::AtomicBool,
    plans: RwLock<HashMap<(String, String), CachedPlan>>,
    /// Each channel's pins and whether any host may have to cancel, read at most once per
    /// [`PLAN_CACHE_TTL`] (a change made through this server forgets it at once).
    views: RwLock<HashMap<(String, String), CachedView>>,
}

/// A channel's view as last read.
type CachedView = (Instant, Arc<ChannelView>);

impl Rollouts {
    pub fn new(
        store: Arc<dyn FleetStore>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        config: &FleetConfig,
    ) -> Self {
        Rollouts {
            store,
            clock,
            metrics,
            webhook: Webhook::from_config(config),
            grace: Millis::try_from(config.checkin_grace.as_millis()).unwrap_or(Millis::MAX),
            every: config.rollout_tick,
            nudge: tokio::sync::Notify::new(),
            active: std::sync::atomic::AtomicBool::new(true),
            plans: RwLock::new(HashMap::new()),
            views: RwLock::new(HashMap::new()),
        }
    }

    /// Asks for a tick soon (an event batch touched a rollout), when a rollout is unfinished.
    pub fn nudge(&self) {
        if self.active.load(std::sync::atomic::Ordering::Relaxed) {
            self.nudge.notify_one();
        }
    }

    /// Ticks every `ROLLOUT_TICK` and after nudges, until `stop` completes; a zero period
    /// turns the background tick off (tests tick with their own clock).
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        if self.every.is_zero() {
            return;
        }
        let mut every = tokio::time::interval(self.every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = every.tick() => {}
                _ = self.nudge.notified() => tokio::time::sleep(DEBOUNCE).await,
            }
            if let Err(e) = self.tick(self.clock.now()).await {
                tracing::warn!(error = %e, "rollouts: the tick failed; it runs again");
            }
        }
    }

    /// The cached state of a channel, while fresh.
    pub(crate) fn cached_plan(&self, product: &str, channel: &str) -> Option<CachedPlan> {
        let plans = self.plans.read().ok()?;
        plans
            .get(&(product.to_owned(), channel.to_owned()))
            .filter(|c| c.at.elapsed() < PLAN_CACHE_TTL)
            .cloned()
    }

    pub(crate) fn remember_plan(&self, product: &str, channel: &str, plan: CachedPlan) {
        if let Ok(mut plans) = self.plans.write() {
            plans.insert((product.to_owned(), channel.to_owned()), plan);
        }
    }

    /// The channel's view ([`ChannelView`]), from the cache while it is fresh.
    pub(crate) async fn channel_view(
        &self,
        product: &str,
        channel: &str,
    ) -> FleetResult<Arc<ChannelView>> {
        let key = (product.to_owned(), channel.to_owned());
        let cached = self.views.read().ok().and_then(|v| {
            v.get(&key)
                .filter(|(at, _)| at.elapsed() < PLAN_CACHE_TTL)
                .map(|(_, view)| view.clone())
        });
        if let Some(view) = cached {
            return Ok(view);
        }
        let view = Arc::new(
            self.store
                .channel_view(product.to_owned(), channel.to_owned())
                .await?,
        );
        if let Ok(mut views) = self.views.write() {
            views.insert(key, (Instant::now(), view.clone()));
        }
        Ok(view)
    }

    /// Forgets what is cached of a product's channels (its channel state, pins or a rollout
    /// changed here).
    pub fn forget_plans(&self, product: &str) {
        if let Ok(mut plans) = self.plans.write() {
            plans.retain(|(p, _), _| p != product);
        }
        if let Ok(mut views) = self.views.write() {
            views.retain(|(p, _), _| p != product);
        }
    }

    /// Judges every unfinished rollout at `now`: stages past their deadline time out; a
    /// running rollout halts when its rules trip, else opens its next wave when due, else
    /// completes when nothing is left to do. Tests call this with their clock's time.
    pub async fn tick(&self, now: Millis) -> FleetResult<TickReport> {
        let mut report = TickReport {
            timed_out: self.store.sweep_timeouts(now).await?,
            ..TickReport::default()
        };
        let unfinished = self.store.unfinished_rollouts().await?;
        self.active
            .store(!unfinished.is_empty(), std::sync::atomic::Ordering::Relaxed);
        for r in unfinished {
            self.judge(&r, now, &mut report).await?;
        }
        Ok(report)
    }

    async fn judge(&self, r: &RolloutRow, now: Millis, report: &mut TickReport) -> FleetResult<()> {
        let counts = self.store.stage_counts(r.id.clone()).await?;
        self.metrics
            .rollout_stages(&r.id, r.plan.waves.len(), &counts);
        if r.state != RolloutState::Running {
            return Ok(());
        }
        let (tallies, total) = rules::tally(&counts, r.plan.waves.len());
        let acknowledged = (r.acknowledged_failures, r.acknowledged_finished);
        if let Some(h) = rules::judge_halt(&r.plan.policy, &total, acknowledged, now) {
            if self.halt(r, h, now).await? {
                report.halted.push(r.id.clone());
            }
        } else if rules::may_open(&r.plan, &r.opened, &tallies, now) {
            if self.open_next(r, now).await? {
                report.opened.push((r.id.clone(), r.opened.len()));
            }
        } else if self.is_complete(r, &total, now).await? {
            let reason =
                "every wave is open and every host of the channel took the version or finished";
            if self.end(r, RolloutState::Completed, reason, now).await? {
                report.completed.push(r.id.clone());
                self.notify(&r.id, "completed", now).await;
            }
        }
        Ok(())
    }

    /// Records a halt; true when this server's update won (it then counts and notifies).
    async fn halt(&self, r: &RolloutRow, halt: Halt, now: Millis) -> FleetResult<bool> {
        let mut halts = r.halts.clone();
        halts.push(halt.clone());
        let change = RolloutChange {
            from: vec![RolloutState::Running],
            state: Some(RolloutState::Halted),
            halt: Some(Some(halt.clone())),
            halts: Some(halts),
            now,
            ..RolloutChange::default()
        };
        let won = self.store.change_rollout(r.id.clone(), change).await?;
        if won {
            self.forget_plans(&r.product);
            tracing::warn!(rollout = %r.id, version = %r.version, rule = %halt.rule, reason = %halt.reason, "rollout halted");
            self.metrics.rollout_halt(&halt.rule);
            self.notify(&r.id, "halted", now).await;
        }
        Ok(won)
    }

    /// Opens the rollout's next wave at `now`; true when this server's update won.
    pub(crate) async fn open_next(&self, r: &RolloutRow, now: Millis) -> FleetResult<bool> {
        let mut opened = r.opened.clone();
        opened.push(now);
        let change = RolloutChange {
            from: vec![RolloutState::Running],
            opened: Some((r.opened.clone(), opened)),
            now,
            ..RolloutChange::default()
        };
        let won = self.store.change_rollout(r.id.clone(), change).await?;
        if won {
            tracing::info!(rollout = %r.id, wave = r.opened.len(), "rollout wave opened");
        }
        Ok(won)
    }

    /// Ends an unfinished rollout (aborted or completed); true when this server's update won
    /// (the caller then sends the webhook).
    pub(crate) async fn end(
        &self,
        r: &RolloutRow,
        state: RolloutState,
        reason: &str,
        now: Millis,
    ) -> FleetResult<bool> {
        let change = RolloutChange {
            from: UNFINISHED.to_vec(),
            state: Some(state),
            ended_reason: Some(reason.to_owned()),
            now,
            ..RolloutChange::default()
        };
        let won = self.store.change_rollout(r.id.clone(), change).await?;
        if won {
            self.forget_plans(&r.product);
            tracing::info!(rollout = %r.id, state = ?state, %reason, "rollout ended");
        }
        Ok(won)
    }

    /// The webhook event of an ended rollout.
    fn ended_event(state: RolloutState) -> &'static str {
        match state {
            RolloutState::Completed => "completed",
            _ => "aborted",
        }
    }

    /// Completed: the last wave is open, no host is in progress, and every host of the
    /// channel that falls in a wave was offered the version, already runs it, or is pinned —
    /// except the hosts silent since the last wave opened that are past their due check-in
    /// and its grace (overdue or offline). A host still online that has not checked in since
    /// the wave opened holds the completion: its next check-in is its turn.
    async fn is_complete(&self, r: &RolloutRow, total: &Tally, now: Millis) -> FleetResult<bool> {
        if r.opened.len() < r.plan.waves.len() || total.in_progress > 0 {
            return Ok(false);
        }
        let since = r.opened.last().copied().unwrap_or(0);
        let offered: BTreeSet<String> = self
            .store
            .rollout_hosts(r.id.clone())
            .await?
            .into_iter()
            .collect();
        let pins = self
            .store
            .pins(r.product.clone(), Some(r.channel.clone()))
            .await?;
        let hosts = self
            .store
            .channel_hosts(r.product.clone(), r.channel.clone())
            .await?;
        Ok(hosts.iter().all(|h| {
            let silent = h.last_checkin.is_none_or(|t| t < since)
                && h.next_due
                    .is_none_or(|d| now > d.saturating_add(self.grace));
            silent
                || offered.contains(&h.id)
                || h.versions.contains(&r.version)
                || super::offer::pin_for(&pins, &h.id, &h.labels).is_some()
                || wave_of(
                    &r.plan.waves,
                    draw(&r.plan.salt, &h.id).bucket,
                    is_canary(&h.labels),
                )
                .is_none()
        }))
    }

    /// Follows a stored channel state: rollouts of the channel whose plan it no longer
    /// carries end (aborted when their version was revoked or the plan dropped, completed
    /// when their version became `current`; the webhook is sent in the background); a plan
    /// not known yet starts its rollout.
    pub async fn sync(self: &Arc<Self>, state: &ChannelState, now: Millis) -> FleetResult<()> {
        let (product, channel) = (state.product.to_string(), state.channel.to_string());
        let rows = self
            .store
            .rollouts(product.clone(), Some(channel.clone()))
            .await?;
        let plan = state.rollout.as_ref();
        for r in rows.iter().filter(|r| UNFINISHED.contains(&r.state)) {
            let carried = plan.is_some_and(|p| p.id == r.id);
            if let Some((end, reason)) = ending(state, &r.version, carried) {
                if self.end(r, end, &reason, now).await? {
                    let (me, id) = (self.clone(), r.id.clone());
                    let event = Self::ended_event(end);
                    tokio::spawn(async move { me.notify(&id, event, now).await });
                }
            }
        }
        let Some(plan) = plan else {
            return Ok(());
        };
        if rows.iter().any(|r| r.id == plan.id) || state.current == plan.version {
            return Ok(());
        }
        let row = RolloutRow {
            id: plan.id.clone(),
            product,
            channel,
            version: plan.version.to_string(),
            plan: plan.clone(),
            state: RolloutState::Running,
            started_at: now,
            updated_at: now,
            opened: Vec::new(),
            halt: None,
            halts: Vec::new(),
            acknowledged_failures: 0,
            acknowledged_finished: 0,
            ended_reason: None,
        };
        self.active
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if self.store.create_rollout(row).await? {
            tracing::info!(rollout = %plan.id, version = %plan.version, "rollout started from the channel state");
        }
        Ok(())
    }

    /// Sends the webhook about a rollout (its status now); failures are logged.
    pub(crate) async fn notify(&self, id: &str, event: &str, now: Millis) {
        let Some(hook) = &self.webhook else {
            return;
        };
        match super::status::status_of(&*self.store, id, now).await {
            Ok(Some(status)) => hook.send(event, &status).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(rollout = %id, error = %e, "rollout webhook: the status could not be read")
            }
        }
    }
}

/// Whether the host carries the canary label.
pub fn is_canary(labels: &qx_core::fleet::Labels) -> bool {
    labels.get(CANARY_LABEL.0).map(String::as_str) == Some(CANARY_LABEL.1)
}

/// How a stored channel state ends a rollout of `version` (`carried`: the state still holds
/// its plan), if it does.
pub fn ending(
    state: &ChannelState,
    version: &str,
    carried: bool,
) -> Option<(RolloutState, String)> {
    let v = qx_core::Version::parse(version).ok();
    let revoked = v.as_ref().and_then(|v| state.revocation(v));
    let current = v.as_ref() == Some(&state.current);
    match (revoked, current, carried) {
        (Some(RevokeAction::Keep), _, _) => Some((
            RolloutState::Aborted,
            format!(
                "yanked: {version} was revoked (keep) by the channel state seq {}",
                state.seq
            ),
        )),
        (Some(RevokeAction::Revert), _, _) => Some((
            RolloutState::Aborted,
            format!(
                "revert: {version} was revoked (revert) by the channel state seq {}; hosts go back",
                state.seq
            ),
        )),
        (None, true, _) => Some((
            RolloutState::Completed,
            format!("{version} became the channel's current (seq {})", state.seq),
        )),
        (None, false, false) => Some((
            RolloutState::Aborted,
            format!(
                "the channel state seq {} no longer carries its plan",
                state.seq
            ),
        )),
        (None, false, true) => None,
    }
}
