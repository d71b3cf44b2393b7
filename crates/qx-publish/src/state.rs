//! What each channel-changing verb does to the channel state (docs/spec.md §8), as pure
//! functions on the successor state; [`crate::channel`] reads, signs and stores it.
//!
//! - publish / promote: the release joins `releases` and, unless told otherwise, becomes
//!   `current`;
//! - yank: the release leaves `releases` and enters `revoked` with `keep` or `revert`; when it
//!   was `current`, the highest remaining release becomes `current`; the only release of a
//!   channel cannot be yanked (hosts would be offered nothing);
//! - refresh: nothing changes but `seq`, `issued` and `expires`;
//! - rollout start: the signed plan of §10 (the release is listed, above `current`; one
//!   rollout at a time).

use qx_core::channel::{ChannelState, ReleaseEntry, Revocation, RevokeAction, RolloutPlan};
use qx_core::Version;

use crate::error::{Error, Result};

pub(crate) fn refuse(state: &ChannelState, message: String) -> Error {
    Error::ChannelState {
        product: state.product.to_string(),
        channel: state.channel.to_string(),
        message,
    }
}

/// Lists `entry` (newest first) and, with `make_current`, makes it `current`. A channel whose
/// `current` is not listed (a first state with no release before) gets it as `current` too.
pub fn add_release(
    state: &mut ChannelState,
    entry: &ReleaseEntry,
    make_current: bool,
) -> Result<()> {
    if state.revocation(&entry.version).is_some() {
        return Err(refuse(
            state,
            format!(
                "{} is revoked on this channel; publish a new version instead",
                entry.version
            ),
        ));
    }
    match state.release(&entry.version) {
        Some(listed) if listed.manifest_sha256 != entry.manifest_sha256 => {
            return Err(refuse(
                state,
                format!(
                    "{} is already listed with another manifest (sha256 {}, this one {})",
                    entry.version,
                    listed.manifest_sha256.short(),
                    entry.manifest_sha256.short()
                ),
            ))
        }
        Some(_) => {}
        None => {
            state.releases.push(entry.clone());
            state.releases.sort_by(|a, b| b.version.cmp(&a.version));
        }
    }
    if make_current || state.current_release().is_none() {
        state.current = entry.version.clone();
    }
    Ok(())
}

/// Revokes `version` with `action`. Yanking it again with the same action changes nothing;
/// a version the state does not list is refused, as is the channel's only release.
pub fn yank(state: &mut ChannelState, version: &Version, action: RevokeAction) -> Result<()> {
    if state.release(version).is_none() {
        return match state.revocation(version) {
            Some(a) if a == action => Ok(()),
            Some(_) => {
                for r in state.revoked.iter_mut().filter(|r| &r.version == version) {
                    r.action = action;
                }
                Ok(())
            }
            None => Err(refuse(
                state,
                format!("{version} is not listed in the channel state's releases"),
            )),
        };
    }
    if state.releases.len() == 1 {
        return Err(refuse(
            state,
            format!(
                "{version} is the channel's only release; publish another release before yanking it (hosts would be offered nothing)"
            ),
        ));
    }
    state.releases.retain(|r| &r.version != version);
    state.revoked.push(Revocation {
        version: version.clone(),
        action,
    });
    if &state.current == version {
        if let Some(highest) = state.releases.iter().map(|r| &r.version).max() {
            state.current = highest.clone();
        }
    }
    if state
        .rollout
        .as_ref()
        .is_some_and(|r| &r.version == version)
    {
        state.rollout = None;
    }
    Ok(())
}

/// Starts the rollout of `version` as `new` plans it (its `id`, `salt`, waves, policy): the
/// release must be listed and above `current` (published with `--no-current`); a rollout of
/// another version, or another rollout of this one, must end first. The same plan again is
/// no change (a retried command).
pub fn start_rollout(
    state: &mut ChannelState,
    version: &Version,
    new: &crate::channel::NewRollout,
) -> Result<()> {
    let Some(entry) = state.release(version).cloned() else {
        return Err(refuse(
            state,
            format!("{version} is not listed in the channel; publish it with --no-current first"),
        ));
    };
    if version <= &state.current {
        return Err(refuse(
            state,
            format!(
                "{version} is not above current {}; a rollout brings a newer release",
                state.current
            ),
        ));
    }
    if let Some(running) = &state.rollout {
        if running.id == new.id && &running.version == version {
            return Ok(());
        }
        return Err(refuse(
            state,
            format!(
                "the rollout {} of {} is in progress; it must end before another starts",
                running.id, running.version
            ),
        ));
    }
    state.rollout = Some(RolloutPlan {
        id: new.id.clone(),
        version: version.clone(),
        manifest_sha256: entry.manifest_sha256,
        salt: new.salt.clone(),
        waves: new.waves.clone(),
        policy: new.policy.clone(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use qx_core::channel::CHANNEL_SCHEMA_VERSION;
    use qx_core::{ChannelName, ProductName, Sha256};

    fn v(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    fn e(s: &str) -> ReleaseEntry {
        ReleaseEntry {
            version: v(s),
            manifest_sha256: Sha256::of(s.as_bytes()),
        }
    }

    fn state(versions: &[&str], current: &str) -> ChannelState {
        ChannelState {
            schema: CHANNEL_SCHEMA_VERSION,
            product: ProductName::new("p").expect("name"),
            channel: ChannelName::new("dev").expect("name"),
            seq: 1,
            issued: Timestamp::UNIX_EPOCH,
            expires: Timestamp::MAX,
            current: v(current),
            releases: versions.iter().map(|s| e(s)).collect(),
            revoked: Vec::new(),
            rollout: None,
        }
    }

    #[test]
    fn publish_lists_and_makes_current() {
        let mut s = state(&["1.0.0"], "1.0.0");
        add_release(&mut s, &e("1.1.0"), true).expect("add");
        assert_eq!(s.current, v("1.1.0"));
        assert_eq!(s.releases, [e("1.1.0"), e("1.0.0")]);
    }

    #[test]
    fn publish_without_current_keeps_current() {
        let mut s = state(&["1.0.0"], "1.0.0");
        add_release(&mut s, &e("1.1.0"), false).expect("add");
        assert_eq!(s.current, v("1.0.0"));
        assert!(s.release(&v("1.1.0")).is_some());
    }

    #[test]
    fn publish_of_a_listed_version_with_other_bytes_is_refused() {
        let mut s = state(&["1.0.0"], "1.0.0");
        let mut other = e("1.0.0");
        other.manifest_sha256 = Sha256::of(b"other");
        assert!(add_release(&mut s, &other, true).is_err());
    }

    #[test]
    fn publish_of_a_revoked_version_is_refused() {
        let mut s = state(&["1.0.0", "1.1.0"], "1.1.0");
        yank(&mut s, &v("1.1.0"), RevokeAction::Keep).expect("yank");
        assert!(add_release(&mut s, &e("1.1.0"), true).is_err());
    }

    #[test]
    fn yank_of_current_falls_back_to_the_highest_remaining() {
        let mut s = state(&["1.2.0", "1.1.0", "1.0.0"], "1.2.0");
        yank(&mut s, &v("1.2.0"), RevokeAction::Revert).expect("yank");
        assert_eq!(s.current, v("1.1.0"));
        assert_eq!(s.revocation(&v("1.2.0")), Some(RevokeAction::Revert));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn yank_of_the_only_release_is_refused() {
        let mut s = state(&["1.0.0"], "1.0.0");
        let err = yank(&mut s, &v("1.0.0"), RevokeAction::Keep).expect_err("refused");
        assert!(err.to_string().contains("only release"), "{err}");
    }

    #[test]
    fn yank_of_an_unlisted_version_is_refused() {
        let mut s = state(&["1.0.0", "1.1.0"], "1.1.0");
        assert!(yank(&mut s, &v("2.0.0"), RevokeAction::Keep).is_err());
    }

    #[test]
    fn yank_again_changes_only_the_action() {
        let mut s = state(&["1.0.0", "1.1.0"], "1.1.0");
        yank(&mut s, &v("1.1.0"), RevokeAction::Keep).expect("yank");
        yank(&mut s, &v("1.1.0"), RevokeAction::Revert).expect("again");
        assert_eq!(s.revoked.len(), 1);
        assert_eq!(s.revocation(&v("1.1.0")), Some(RevokeAction::Revert));
    }
}
