//! What a fleet server's offer may change in a check (docs/spec.md §10), judged within the
//! signed channel state and nothing else. Pure: the caller brings the state, the host's version
//! and identity, its own labels and both clocks.
//!
//! - `rollout`: the offered version must be the signed plan's (and listed in `releases`); the
//!   host's wave comes from the plan's salt and the host's own id, a canary only by the host's
//!   own labels; the wave's signed `not_before` must have come by the earlier of the server's
//!   time and the host's clock ([`qx_core::rollout::speed_limit`]). Anything else is refused:
//!   nothing is downloaded. A host already above the offered version ignores the offer.
//! - `pin`: a listed version is the target, even below what the host runs (the operator chose
//!   it); a host on it stays there (it does not follow `current`). A pin to a version the state
//!   does not list leaves the host where it is, with a warning — unless the state revokes the
//!   host's own version with `revert`: the signed revert outranks a server's pin.

use jiff::Timestamp;
use qx_core::channel::{ChannelState, ReleaseEntry, RolloutPlan, Target};
use qx_core::fleet::{Offer, OfferReason};
use qx_core::rollout::{self, SpeedLimit};
use qx_core::Version;

use crate::check::Decision;
use crate::error::TooEarly;
use crate::AgentError;

/// What the judge knows besides the offer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    pub state: &'a ChannelState,
    /// The host's version (the newest of its components), if any.
    pub host: Option<&'a Version>,
    pub host_id: &'a str,
    /// `ring=canary` among the host's own configured labels.
    pub canary: bool,
    /// The check-in answer's `server_time`, as sent.
    pub server_time: &'a str,
    pub host_time: Timestamp,
}

/// What an offer makes of the check.
#[derive(Debug, Clone)]
pub(crate) enum Choice {
    /// Install (or check the host against) this release.
    Take(Decision),
    /// Stay on what the host runs; the warning says why.
    Stay { warning: String },
    /// The offer changes nothing: the host follows the signed state (`current`, a revert);
    /// the note says why, when there is something to say.
    Follow { note: Option<String> },
}

/// Judges `offer` within the signed state; see the module documentation.
pub(crate) fn judge(offer: &Offer, facts: &Facts<'_>) -> Result<Choice, AgentError> {
    match offer.reason {
        OfferReason::Rollout => judge_rollout(offer, facts),
        OfferReason::Pin => Ok(judge_pin(offer, facts)),
    }
}

fn judge_rollout(offer: &Offer, f: &Facts<'_>) -> Result<Choice, AgentError> {
    let (plan, version, entry) = signed_rollout(offer, f)?;
    if f.host.is_some_and(|h| h > &version) {
        return Ok(Choice::Follow {
            note: Some(format!(
                "the server offers rollout version {version}, below the {} this host runs; the offer is ignored",
                f.host.map(Version::to_string).unwrap_or_default()
            )),
        });
    }
    speed_limit(offer, f, plan, &version)?;
    Ok(Choice::Take(Decision {
        via: Some(OfferReason::Rollout),
        ..Decision::new(entry, false)
    }))
}

/// The signed plan, version and release entry a rollout offer must match.
fn signed_rollout<'s>(
    offer: &Offer,
    f: &Facts<'s>,
) -> Result<(&'s RolloutPlan, Version, &'s ReleaseEntry), AgentError> {
    let refuse = |reason: String| refused(offer, reason);
    let plan = f.state.rollout.as_ref().ok_or_else(|| {
        refuse(format!(
            "it is offered as a rollout, but the signed channel state (seq {}) has no rollout",
            f.state.seq
        ))
    })?;
    let version =
        Version::parse(offer.version.trim()).map_err(|e| refuse(format!("not a version: {e}")))?;
    if version != plan.version {
        return Err(refuse(format!(
            "the signed rollout {} is of {}, not of this version",
            plan.id, plan.version
        )));
    }
    let entry = f.state.release(&version).ok_or_else(|| {
        refuse(format!(
            "the signed channel state (seq {}) does not list it in releases",
            f.state.seq
        ))
    })?;
    Ok((plan, version, entry))
}

/// The signed speed limit: the host's wave must have reached its `not_before` at the earlier
/// of the server's time and the host's clock.
fn speed_limit(
    offer: &Offer,
    f: &Facts<'_>,
    plan: &RolloutPlan,
    version: &Version,
) -> Result<(), AgentError> {
    let server_time: Timestamp = f.server_time.trim().parse().map_err(|_| {
        refused(offer, format!(
            "the check-in answer's server_time {:?} is not an RFC 3339 time, so the signed speed limit cannot be judged",
            crate::untrusted::printable(f.server_time)
        ))
    })?;
    match rollout::speed_limit(plan, f.host_id, f.canary, server_time, f.host_time) {
        SpeedLimit::NeverEligible { bucket } => Err(refused(offer, format!(
            "this host's bucket {bucket} of rollout {} is past the plan's last wave, so the signed plan never reaches it",
            plan.id
        ))),
        SpeedLimit::TooEarly {
            wave, not_before, ..
        } => Err(AgentError::RolloutTooEarly(Box::new(TooEarly {
            version: version.to_string(),
            rollout: plan.id.clone(),
            wave,
            not_before: not_before.to_string(),
            server_time: server_time.to_string(),
            host_time: f.host_time.to_string(),
        }))),
        SpeedLimit::Open { .. } => Ok(()),
    }
}

fn refused(offer: &Offer, reason: String) -> AgentError {
    AgentError::OfferRefused {
        version: offer.version.clone(),
        reason,
    }
}

fn judge_pin(offer: &Offer, f: &Facts<'_>) -> Choice {
    let target = f.state.target(f.host);
    let listed = Version::parse(offer.version.trim())
        .ok()
        .and_then(|v| f.state.release(&v));
    let Some(entry) = listed else {
        let host = f
            .host
            .map_or("(nothing installed)".to_owned(), |v| v.to_string());
        let warning = format!(
            "the server pins this host to {}, which the signed channel state (seq {}) does not list; the host stays on {host}",
            crate::untrusted::printable(&offer.version),
            f.state.seq
        );
        return match target {
            Target::Revert(_) => Choice::Follow {
                note: Some(format!(
                    "{warning} — except that its version is revoked (revert), which the signed state decides"
                )),
            },
            _ => Choice::Stay { warning },
        };
    };
    let revert = matches!(target, Target::Revert(e) if e.version == entry.version);
    Choice::Take(Decision {
        downgrade: true,
        via: Some(OfferReason::Pin),
        ..Decision::new(entry, revert)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use qx_core::channel::{
        ReleaseEntry, Revocation, RevokeAction, RolloutPlan, Wave, CHANNEL_SCHEMA_VERSION,
    };
    use qx_core::Sha256;

    const NOT_BEFORE: &str = "2026-06-01T12:00:00Z";

    fn v(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    fn t(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    fn entry(version: &str) -> ReleaseEntry {
        ReleaseEntry {
            version: v(version),
            manifest_sha256: Sha256::of(version.as_bytes()),
        }
    }

    /// `current` 1.0.0, 0.9.0 and 1.1.0 listed, a one-wave rollout of 1.1.0 at NOT_BEFORE.
    fn state() -> ChannelState {
        ChannelState {
            schema: CHANNEL_SCHEMA_VERSION,
            product: "quantix-os".parse().expect("product"),
            channel: "stable".parse().expect("channel"),
            seq: 7,
            issued: t("2026-06-01T00:00:00Z"),
            expires: t("2026-07-01T00:00:00Z"),
            current: v("1.0.0"),
            releases: vec![entry("0.9.0"), entry("1.0.0"), entry("1.1.0")],
            revoked: Vec::new(),
            rollout: Some(RolloutPlan {
                id: "r-1".into(),
                version: v("1.1.0"),
                manifest_sha256: Sha256::of(b"1.1.0"),
                salt: "salt".into(),
                waves: vec![Wave {
                    percent: 100.0,
                    not_before: t(NOT_BEFORE),
                }],
                policy: Default::default(),
            }),
        }
    }

    fn facts<'a>(state: &'a ChannelState, host: &'a Version, server: &'a str) -> Facts<'a> {
        Facts {
            state,
            host: Some(host),
            host_id: "h-1",
            canary: false,
            server_time: server,
            host_time: t(NOT_BEFORE),
        }
    }

    fn offer(version: &str, reason: OfferReason) -> Offer {
        Offer {
            version: version.into(),
            reason,
            rollout: Some("r-1".into()),
            wave: Some(0),
        }
    }

    fn taken(choice: Choice) -> Decision {
        match choice {
            Choice::Take(d) => d,
            other => panic!("not taken: {other:?}"),
        }
    }

    fn refused(r: Result<Choice, AgentError>) -> AgentError {
        r.expect_err("refused")
    }

    /// The published bucket vectors (`crates/qx-core/tests/vectors/rollout_buckets.json`) as
    /// the agent's speed limit places hosts: a plan of 100 waves of 1 %, an hour apart, judged
    /// at the first wave's time: a host is too early unless its bucket is below 100, and its
    /// wave is its bucket's hundred.
    #[test]
    fn the_speed_limit_places_the_published_bucket_vectors() {
        let vectors: serde_json::Value = serde_json::from_str(include_str!(
            "../../qx-core/tests/vectors/rollout_buckets.json"
        ))
        .expect("vectors");
        let start = t(NOT_BEFORE);
        for vector in vectors["vectors"].as_array().expect("a list") {
            let (salt, id) = (vector["salt"].as_str(), vector["host_id"].as_str());
            let (Some(salt), Some(id)) = (salt, id) else {
                panic!("{vector}")
            };
            let bucket = vector["bucket"].as_u64().expect("bucket") as usize;
            let mut s = state();
            let plan = s.rollout.as_mut().expect("plan");
            plan.salt = salt.to_owned();
            plan.waves = (1..=100)
                .map(|p| Wave {
                    percent: f64::from(p),
                    not_before: start
                        .checked_add(jiff::SignedDuration::from_hours(i64::from(p - 1)))
                        .expect("time"),
                })
                .collect();
            let host = v("1.0.0");
            let f = Facts {
                host_id: id,
                ..facts(&s, &host, NOT_BEFORE)
            };
            match judge(&offer("1.1.0", OfferReason::Rollout), &f) {
                Ok(Choice::Take(_)) => assert!(bucket < 100, "{vector}"),
                Err(AgentError::RolloutTooEarly(e)) => {
                    assert_eq!(e.wave, bucket / 100, "{vector}")
                }
                other => panic!("{vector}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_rollout_offer_from_its_waves_not_before_is_taken() {
        let (s, host) = (state(), v("1.0.0"));
        let d = taken(
            judge(
                &offer("1.1.0", OfferReason::Rollout),
                &facts(&s, &host, NOT_BEFORE),
            )
            .expect("taken"),
        );
        assert_eq!(d.entry.version, v("1.1.0"));
        assert_eq!(d.via, Some(OfferReason::Rollout));
        assert!(!d.revert && !d.downgrade);
    }

    #[test]
    fn a_rollout_offer_before_not_before_is_refused_by_the_server_time() {
        let (s, host) = (state(), v("1.0.0"));
        let e = refused(judge(
            &offer("1.1.0", OfferReason::Rollout),
            &facts(&s, &host, "2026-06-01T11:59:59Z"),
        ));
        assert_eq!(e.exit_code(), crate::code::ROLLOUT_TOO_EARLY);
        let text = e.to_string();
        for part in ["1.1.0", "wave 0", NOT_BEFORE, "2026-06-01T11:59:59Z"] {
            assert!(text.contains(part), "{part}: {text}");
        }
    }

    #[test]
    fn a_rollout_offer_before_not_before_is_refused_by_the_host_clock() {
        let (s, host) = (state(), v("1.0.0"));
        let mut f = facts(&s, &host, "2027-01-01T00:00:00Z");
        f.host_time = t("2026-06-01T11:00:00Z");
        let e = refused(judge(&offer("1.1.0", OfferReason::Rollout), &f));
        assert_eq!(e.exit_code(), crate::code::ROLLOUT_TOO_EARLY);
        assert!(e.to_string().contains("2026-06-01T11:00:00Z"), "{e}");
    }

    #[test]
    fn a_rollout_offer_of_another_version_is_refused() {
        let (s, host) = (state(), v("1.0.0"));
        let e = refused(judge(
            &offer("1.0.0", OfferReason::Rollout),
            &facts(&s, &host, NOT_BEFORE),
        ));
        assert_eq!(e.exit_code(), crate::code::OFFER_REFUSED);
        assert!(e.to_string().contains("rollout r-1 is of 1.1.0"), "{e}");
    }

    #[test]
    fn a_rollout_offer_without_a_signed_rollout_is_refused() {
        let (mut s, host) = (state(), v("1.0.0"));
        s.rollout = None;
        let e = refused(judge(
            &offer("1.1.0", OfferReason::Rollout),
            &facts(&s, &host, NOT_BEFORE),
        ));
        assert_eq!(e.exit_code(), crate::code::OFFER_REFUSED);
        assert!(e.to_string().contains("has no rollout"), "{e}");
    }

    #[test]
    fn a_rollout_offer_of_an_unlisted_version_is_refused() {
        let (mut s, host) = (state(), v("1.0.0"));
        s.releases.retain(|r| r.version != v("1.1.0"));
        let e = refused(judge(
            &offer("1.1.0", OfferReason::Rollout),
            &facts(&s, &host, NOT_BEFORE),
        ));
        assert_eq!(e.exit_code(), crate::code::OFFER_REFUSED);
        assert!(e.to_string().contains("does not list it"), "{e}");
    }

    #[test]
    fn a_rollout_offer_with_an_unreadable_server_time_is_refused() {
        let (s, host) = (state(), v("1.0.0"));
        let e = refused(judge(
            &offer("1.1.0", OfferReason::Rollout),
            &facts(&s, &host, "soon"),
        ));
        assert_eq!(e.exit_code(), crate::code::OFFER_REFUSED);
        assert!(e.to_string().contains("server_time"), "{e}");
    }

    #[test]
    fn a_host_past_the_last_wave_is_never_eligible() {
        let (mut s, host) = (state(), v("1.0.0"));
        if let Some(p) = s.rollout.as_mut() {
            p.waves[0].percent = 0.01;
        }
        let host_id = (0..)
            .map(|i| format!("host-{i}"))
            .find(|h| rollout::bucket("salt", h) > 0)
            .expect("a host");
        let mut f = facts(&s, &host, "2027-01-01T00:00:00Z");
        f.host_id = &host_id;
        f.host_time = t("2027-01-01T00:00:00Z");
        let e = refused(judge(&offer("1.1.0", OfferReason::Rollout), &f));
        assert_eq!(e.exit_code(), crate::code::OFFER_REFUSED);
        assert!(e.to_string().contains("past the plan's last wave"), "{e}");
        f.canary = true;
        taken(judge(&offer("1.1.0", OfferReason::Rollout), &f).expect("a canary goes first"));
    }

    #[test]
    fn a_host_above_the_rollout_version_ignores_the_offer() {
        let (mut s, host) = (state(), v("1.2.0"));
        s.releases.push(entry("1.2.0"));
        let c = judge(
            &offer("1.1.0", OfferReason::Rollout),
            &facts(&s, &host, NOT_BEFORE),
        )
        .expect("judged");
        assert!(matches!(c, Choice::Follow { note: Some(_) }), "{c:?}");
    }

    #[test]
    fn a_pin_to_a_listed_version_is_the_target_even_below() {
        let (s, host) = (state(), v("1.0.0"));
        let d =
            taken(judge(&offer("0.9.0", OfferReason::Pin), &facts(&s, &host, "?")).expect("pin"));
        assert_eq!(d.entry.version, v("0.9.0"));
        assert!(d.downgrade && !d.revert);
        assert_eq!(d.via, Some(OfferReason::Pin));
        let on = v("0.9.0");
        let d = taken(judge(&offer("0.9.0", OfferReason::Pin), &facts(&s, &on, "?")).expect("pin"));
        assert_eq!(
            d.entry.version, on,
            "a pinned host stays, whatever current is"
        );
    }

    #[test]
    fn a_pin_to_an_unlisted_version_leaves_the_host_with_a_warning() {
        let (s, host) = (state(), v("1.0.0"));
        match judge(&offer("3.0.0", OfferReason::Pin), &facts(&s, &host, "?")).expect("judged") {
            Choice::Stay { warning } => assert!(warning.contains("does not list"), "{warning}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_signed_revert_outranks_an_unlisted_pin() {
        let (mut s, host) = (state(), v("1.1.0"));
        s.rollout = None;
        s.releases.retain(|r| r.version != v("1.1.0"));
        s.revoked.push(Revocation {
            version: v("1.1.0"),
            action: RevokeAction::Revert,
        });
        let c = judge(&offer("1.1.0", OfferReason::Pin), &facts(&s, &host, "?")).expect("judged");
        assert!(matches!(c, Choice::Follow { note: Some(_) }), "{c:?}");
    }
}
