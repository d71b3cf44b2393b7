//! The offer at a check-in (docs/spec.md §10), in order: a pin (by host id, or a selector
//! all of whose labels the host carries; the newest pin wins) is always offered, even the
//! version the host runs (it tells the agent to stay); else the channel's rollout, when the
//! host's wave is open and its turn inside the wave came (never before the wave's signed
//! `not_before`), recorded once; a host already offered keeps its offer while the rollout
//! runs or is paused. A halted or aborted rollout offers nothing and tells hosts that have
//! not started installing to cancel (also once its plan left the channel state). The
//! channel's plan, its pins and whether any of its hosts may have to cancel come from caches
//! refreshed at most once a second (a change through this server forgets them): without
//! pins, plan or a halted rollout a check-in costs no read more than before rollouts.

use std::sync::Arc;
use std::time::Instant;

use qx_core::channel::ChannelState;
use qx_core::fleet::{CheckIn, Labels, Offer, OfferReason, RolloutStage, RolloutState};
use qx_core::rollout::{draw, wave_of};
use qx_core::{ChannelName, ProductName};

use super::engine::{is_canary, CachedPlan};
use super::rules;
use crate::error::ApiError;
use crate::fleet::store::{FleetResult, HostAuth, Millis, PinRow, RolloutRow};
use crate::state::App;
use crate::storage::ReleaseStore;

/// What the check-in answers besides the time: an offer and a version to cancel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub offer: Option<Offer>,
    pub cancel: Option<String>,
}

/// A selector's `key=value` pairs; `None` when it is not one.
pub fn parse_selector(text: &str) -> Option<Vec<(String, String)>> {
    text.split(',')
        .map(|part| {
            let (k, v) = part.trim().split_once('=')?;
            let (k, v) = (k.trim(), v.trim());
            let valid = !k.is_empty() && !v.is_empty() && !k.ends_with('!');
            valid.then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The newest pin applying to the host (`pins` newest first).
pub fn pin_for<'p>(pins: &'p [PinRow], host: &str, labels: &Labels) -> Option<&'p PinRow> {
    pins.iter().find(|p| match (&p.host, &p.selector) {
        (Some(h), _) => h == host,
        (None, Some(s)) => parse_selector(s).is_some_and(|pairs| {
            pairs
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
        }),
        (None, None) => false,
    })
}

/// Whether the check-in says the host runs `version` (a component or the booted slot).
pub fn runs(report: &CheckIn, version: &str) -> bool {
    report.installed.values().any(|v| v == version)
        || report.slots.iter().any(|s| {
            Some(&s.name) == report.booted_slot.as_ref() && s.version.as_deref() == Some(version)
        })
}

/// The channel a check-in names (`stable` when it names none).
pub fn channel_of(report: &CheckIn) -> &str {
    match report.channel.trim() {
        "" => qx_core::api::DEFAULT_CHANNEL,
        c => c,
    }
}

/// Decides the check-in's offer and cancel for an authenticated host.
pub async fn decide<S: ReleaseStore>(
    app: &App<S>,
    host: &HostAuth,
    report: &CheckIn,
    now: Millis,
) -> Result<Decision, ApiError> {
    let channel = channel_of(report);
    let store = &*app.fleet.store;
    let view = app.rollouts.channel_view(&host.product, channel).await?;
    let cancel = Decision {
        offer: None,
        cancel: match view.cancelable {
            true => {
                store
                    .host_cancel(host.product.clone(), channel.to_owned(), host.id.clone())
                    .await?
            }
            false => None,
        },
    };
    let mut labels: Option<Labels> = None;
    if !view.pins.is_empty() {
        let l = store.host_labels(host.id.clone()).await?;
        if let Some(pin) = pin_for(&view.pins, &host.id, &l) {
            return Ok(Decision {
                offer: Some(Offer {
                    version: pin.version.clone(),
                    reason: OfferReason::Pin,
                    rollout: None,
                    wave: None,
                }),
                cancel: None,
            });
        }
        labels = Some(l);
    }
    let Some(state) = channel_state(app, &host.product, channel).await? else {
        return Ok(cancel);
    };
    let Some(row) = rollout_of(app, &state, now).await? else {
        return Ok(cancel);
    };
    let running = matches!(row.state, RolloutState::Running | RolloutState::Paused);
    if !running || runs(report, &row.version) {
        return Ok(cancel);
    }
    Ok(by_rollout(app, &row, &host.id, labels, now).await?)
}

/// The channel's stored state, from the cache while it is fresh.
async fn channel_state<S: ReleaseStore>(
    app: &App<S>,
    product: &str,
    channel: &str,
) -> Result<Option<Arc<ChannelState>>, ApiError> {
    if let Some(c) = app.rollouts.cached_plan(product, channel) {
        return Ok(c.state);
    }
    let (Ok(p), Ok(c)) = (ProductName::new(product), ChannelName::new(channel)) else {
        return Ok(None);
    };
    let state = app
        .store
        .channel_state(&p, &c)
        .await?
        .map(|s| Arc::new(s.state));
    let cached = CachedPlan {
        at: Instant::now(),
        state: state.clone(),
    };
    app.rollouts.remember_plan(product, channel, cached);
    Ok(state)
}

/// The rollout of the state's plan (started here when this server did not know it yet).
async fn rollout_of<S: ReleaseStore>(
    app: &App<S>,
    state: &ChannelState,
    now: Millis,
) -> FleetResult<Option<RolloutRow>> {
    let Some(plan) = &state.rollout else {
        return Ok(None);
    };
    if let Some(r) = app.fleet.store.rollout(plan.id.clone()).await? {
        return Ok(Some(r));
    }
    app.rollouts.sync(state, now).await?;
    app.fleet.store.rollout(plan.id.clone()).await
}

/// A running or paused rollout's answer to a host that does not run its version.
async fn by_rollout<S: ReleaseStore>(
    app: &App<S>,
    row: &RolloutRow,
    host: &str,
    labels: Option<Labels>,
    now: Millis,
) -> FleetResult<Decision> {
    let store = &*app.fleet.store;
    let stage = store.host_stage(row.id.clone(), host.to_owned()).await?;
    let offer = |wave: u32| Offer {
        version: row.version.clone(),
        reason: OfferReason::Rollout,
        rollout: Some(row.id.clone()),
        wave: Some(wave),
    };
    let decision = |offer: Option<Offer>| Decision {
        offer,
        cancel: None,
    };
    match (row.state, stage) {
        (_, Some(s)) if s.stage.in_progress() || s.stage == RolloutStage::Confirmed => {
            Ok(decision(Some(offer(s.wave))))
        }
        (RolloutState::Running, None) => {
            let wave = turn(app, row, host, labels, now).await?;
            Ok(decision(wave.map(offer)))
        }
        _ => Ok(Decision::default()),
    }
}

/// The host's wave when its turn in a running rollout came (recorded as offered), opening
/// the first wave when its time came and no tick opened it yet; `labels` read when not given.
async fn turn<S: ReleaseStore>(
    app: &App<S>,
    row: &RolloutRow,
    host: &str,
    labels: Option<Labels>,
    now: Millis,
) -> FleetResult<Option<u32>> {
    let labels = match labels {
        Some(l) => l,
        None => app.fleet.store.host_labels(host.to_owned()).await?,
    };
    let d = draw(&row.plan.salt, host);
    let Some(wave) = wave_of(&row.plan.waves, d.bucket, is_canary(&labels)) else {
        return Ok(None);
    };
    let mut opened = row.opened.clone();
    if opened.is_empty() && rules::may_open(&row.plan, &opened, &[], now) {
        app.rollouts.open_next(row, now).await?;
        opened = match app.fleet.store.rollout(row.id.clone()).await? {
            Some(r) => r.opened,
            None => return Ok(None),
        };
    }
    if rules::offer_at(&row.plan, &opened, wave, d).is_none_or(|at| at > now) {
        return Ok(None);
    }
    let wave = u32::try_from(wave).unwrap_or(u32::MAX);
    app.fleet
        .store
        .record_offer(row.id.clone(), host.to_owned(), wave, now)
        .await?;
    Ok(Some(wave))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(id: &str, host: Option<&str>, selector: Option<&str>, version: &str) -> PinRow {
        PinRow {
            id: id.into(),
            product: "p".into(),
            channel: "stable".into(),
            host: host.map(Into::into),
            selector: selector.map(Into::into),
            version: version.into(),
            created_at: 0,
        }
    }

    #[test]
    fn selectors_parse_and_the_newest_matching_pin_wins() {
        assert_eq!(
            parse_selector("site=lab, ring=a"),
            Some(vec![
                ("site".into(), "lab".into()),
                ("ring".into(), "a".into())
            ])
        );
        for bad in ["", "site", "site=", "=lab", "a!=b", "a=1,"] {
            assert_eq!(parse_selector(bad), None, "{bad}");
        }
        let pins = [
            pin("2", None, Some("site=lab,ring=a"), "1.0.2"),
            pin("1", Some("h1"), None, "1.0.1"),
        ];
        let mut labels = Labels::new();
        labels.insert("site".into(), "lab".into());
        assert_eq!(
            pin_for(&pins, "h1", &labels).map(|p| p.id.as_str()),
            Some("1")
        );
        labels.insert("ring".into(), "a".into());
        assert_eq!(
            pin_for(&pins, "h1", &labels).map(|p| p.id.as_str()),
            Some("2")
        );
        assert!(pin_for(&pins, "h2", &Labels::new()).is_none());
    }
}
