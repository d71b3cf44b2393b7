//! What operators see of a rollout: its status (per wave: eligible hosts, stages, gate,
//! confirmed share, ETA; halts; top failure messages) and a host's preview.

use std::collections::BTreeMap;

use qx_core::fleet::{RolloutPreview, RolloutStage, RolloutState, RolloutStatus, WaveStatus};
use qx_core::rollout::{draw, wave_of};

use super::engine::is_canary;
use super::offer::pin_for;
use super::rules::{self, Tally};
use crate::fleet::clock::rfc3339;
use crate::fleet::store::{ChannelHost, FleetResult, FleetStore, Millis, RolloutRow};

/// How many failure messages a status lists.
pub const TOP_FAILURES: u32 = 5;

/// The status of rollout `id`, if known.
pub async fn status_of(
    store: &dyn FleetStore,
    id: &str,
    now: Millis,
) -> FleetResult<Option<RolloutStatus>> {
    match store.rollout(id.to_owned()).await? {
        Some(r) => status(store, &r, now).await.map(Some),
        None => Ok(None),
    }
}

/// The status of a stored rollout.
pub async fn status(
    store: &dyn FleetStore,
    r: &RolloutRow,
    now: Millis,
) -> FleetResult<RolloutStatus> {
    let counts = store.stage_counts(r.id.clone()).await?;
    let hosts = store
        .channel_hosts(r.product.clone(), r.channel.clone())
        .await?;
    let (tallies, _) = rules::tally(&counts, r.plan.waves.len());
    let eligible = eligible(r, &hosts);
    let mut waves = Vec::with_capacity(r.plan.waves.len());
    let mut previous_end: Millis = 0;
    for (i, w) in r.plan.waves.iter().enumerate() {
        let mut stages: BTreeMap<RolloutStage, u64> =
            RolloutStage::ALL.iter().map(|s| (*s, 0)).collect();
        for c in counts.iter().filter(|c| c.wave as usize == i) {
            *stages.entry(c.stage).or_default() += c.hosts;
        }
        let tally = tallies.get(i).copied().unwrap_or_default();
        let start = r
            .opened
            .get(i)
            .copied()
            .unwrap_or_else(|| rules::millis(w.not_before).max(previous_end));
        previous_end = start.saturating_add(rules::soak(&r.plan.waves, i));
        waves.push(WaveStatus {
            percent: w.percent,
            not_before: w.not_before.to_string(),
            opened_at: r.opened.get(i).map(|t| rfc3339(*t)),
            gate: gate(r, i, &tallies, now).to_owned(),
            eligible: eligible.get(i).copied().unwrap_or(0),
            stages,
            confirmed_share: tally.confirmed_share(),
            eta: Some(rfc3339(previous_end)),
        });
    }
    Ok(RolloutStatus {
        id: r.id.clone(),
        product: r.product.clone(),
        channel: r.channel.clone(),
        version: r.version.clone(),
        state: r.state,
        policy: r.plan.policy.clone(),
        waves,
        halt: r.halt.clone(),
        halts: r.halts.clone(),
        acknowledged_failures: r.acknowledged_failures,
        acknowledged_finished: r.acknowledged_finished,
        top_failures: store.top_failures(r.id.clone(), TOP_FAILURES).await?,
        started_at: rfc3339(r.started_at),
        updated_at: rfc3339(r.updated_at),
        ended_reason: r.ended_reason.clone(),
    })
}

/// The channel's hosts per wave (computed from their ids and labels).
fn eligible(r: &RolloutRow, hosts: &[ChannelHost]) -> Vec<u64> {
    let mut per = vec![0u64; r.plan.waves.len()];
    for h in hosts {
        let bucket = draw(&r.plan.salt, &h.id).bucket;
        if let Some(w) = wave_of(&r.plan.waves, bucket, is_canary(&h.labels)) {
            if let Some(n) = per.get_mut(w) {
                *n += 1;
            }
        }
    }
    per
}

/// `open`, `closed` (not running and not open), `waiting_gate` (the next wave, its time
/// come, held by the previous wave's share), `waiting_time`.
fn gate(r: &RolloutRow, wave: usize, tallies: &[Tally], now: Millis) -> &'static str {
    if wave < r.opened.len() {
        return "open";
    }
    if r.state != RolloutState::Running {
        return "closed";
    }
    let Some(w) = r.plan.waves.get(wave) else {
        return "closed";
    };
    let time_come = now >= rules::millis(w.not_before)
        && (wave == 0
            || r.opened
                .get(wave - 1)
                .is_some_and(|o| now >= o.saturating_add(rules::soak(&r.plan.waves, wave - 1))));
    let prev = wave.checked_sub(1).and_then(|p| tallies.get(p)).copied();
    let held = prev.is_some_and(|t| !rules::gate_passes(&r.plan.policy, &t));
    if wave == r.opened.len() && time_come && held {
        "waiting_gate"
    } else {
        "waiting_time"
    }
}

/// What a host gets from a rollout and when.
pub async fn preview(
    store: &dyn FleetStore,
    r: &RolloutRow,
    host: &str,
) -> FleetResult<RolloutPreview> {
    let labels = store.host_labels(host.to_owned()).await?;
    let pins = store
        .pins(r.product.clone(), Some(r.channel.clone()))
        .await?;
    let pinned = pin_for(&pins, host, &labels).map(|p| p.version.clone());
    let d = draw(&r.plan.salt, host);
    let canary = is_canary(&labels);
    let wave = wave_of(&r.plan.waves, d.bucket, canary);
    let stage = store
        .host_stage(r.id.clone(), host.to_owned())
        .await?
        .map(|s| s.stage);
    let not_before = wave.and_then(|w| r.plan.waves.get(w)).map(|w| w.not_before);
    let earliest = wave.and_then(|w| rules::offer_at(&r.plan, &r.opened, w, d));
    let summary = match (&pinned, wave, earliest) {
        (Some(v), _, _) => format!("pinned to {v}: offered {v}, never {}", r.version),
        (None, None, _) => format!("outside every wave: not offered {}", r.version),
        (None, Some(w), Some(t)) => format!(
            "wave {w}: offered {} from {} (rollout {:?})",
            r.version,
            rfc3339(t),
            r.state
        ),
        (None, Some(w), None) => format!(
            "wave {w}: offered {} once the wave opens, not before {} (rollout {:?})",
            r.version,
            not_before.map(|t| t.to_string()).unwrap_or_default(),
            r.state
        ),
    };
    Ok(RolloutPreview {
        host: host.to_owned(),
        rollout: r.id.clone(),
        version: r.version.clone(),
        bucket: d.bucket,
        canary,
        wave: wave.and_then(|w| u32::try_from(w).ok()),
        pinned,
        not_before: not_before.map(|t| t.to_string()),
        earliest: earliest.map(rfc3339),
        stage,
        summary,
    })
}
