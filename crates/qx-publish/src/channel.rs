//! The channel state as the publisher keeps it (docs/spec.md §8): every verb that changes a
//! channel (publish, promote, yank, refresh) reads the channel's signed state, checks that a
//! trusted key signed it, builds the successor (`seq + 1`), signs it and `PUT`s it. The server
//! never signs; it stores a state only when its `seq` is higher (compare-and-swap).
//!
//! - Trust: the publisher's own public key (derived from the signing key) plus any
//!   `--trusted-key FILE` (a rotated key). A state, or a manifest it vouches for, signed by
//!   another key is refused: the publisher never builds on what it cannot verify.
//! - A channel without a state yet starts at `seq` 1, listing every non-yanked release the
//!   server holds on that channel (each manifest's signature checked, its SHA-256 computed from
//!   the exact `manifest.json` bytes), `current` the highest; the verb's change then applies.
//! - A 409 (someone else moved the channel between our read and our `PUT`) is retried once:
//!   the state is read again and the same change applied to it, so nothing the other writer
//!   did is lost. A second 409 is reported with the stored `seq`, and nothing is overwritten.
//! - A change that leaves the channel's content as it was (a publish run again after a lost
//!   answer) sends nothing, except for `refresh`, whose whole point is a new expiry.

use std::path::PathBuf;

use jiff::{SignedDuration, Timestamp};
use qx_core::channel::{
    ChannelState, ReleaseEntry, RevokeAction, RolloutPolicy, CHANNEL_SCHEMA_VERSION,
};
use qx_core::{
    ChannelName, Manifest, ProductName, Sha256, SigningKey, TrustedKeys, UnknownFields, Version,
    MANIFEST_FILE, SIGNATURE_FILE,
};

use crate::error::{Error, Result};
use crate::upload::{Client, StatePut};

/// How many times a 409 is answered by reading the state again and re-applying the change.
pub const CONFLICT_RETRIES: u32 = 1;

/// The publisher's signing key and the keys whose states and manifests it builds on.
pub struct Signer {
    key: SigningKey,
    trusted: TrustedKeys,
}

impl Signer {
    /// Trusts the key's own public key and every file of `extra` (`--trusted-key`).
    pub fn new(key: SigningKey, extra: &[PathBuf]) -> Result<Self> {
        let mut trusted = TrustedKeys::new();
        trusted.add(&key.public_key_file()?)?;
        for path in extra {
            trusted.add_file(path)?;
        }
        Ok(Self { key, trusted })
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    pub fn trusted(&self) -> &TrustedKeys {
        &self.trusted
    }

    pub fn key_id(&self) -> String {
        self.key.key_id()
    }
}

/// A channel state with its exact signed bytes and `.minisig` text.
#[derive(Debug, Clone)]
pub struct SignedState {
    pub state: ChannelState,
    pub bytes: Vec<u8>,
    pub signature: String,
}

/// The trusted comment of a state's signature: `product channel seq N`.
pub fn trusted_comment(state: &ChannelState) -> String {
    format!("{} {} seq {}", state.product, state.channel, state.seq)
}

/// Signs a state's canonical bytes.
pub fn sign(state: &ChannelState, key: &SigningKey) -> Result<SignedState> {
    let bytes = state.to_bytes();
    let signature = key.sign(&bytes, &trusted_comment(state))?;
    Ok(SignedState {
        state: state.clone(),
        bytes,
        signature,
    })
}

pub(crate) fn state_error(product: &str, channel: &str, message: String) -> Error {
    Error::ChannelState {
        product: product.to_owned(),
        channel: channel.to_owned(),
        message,
    }
}

/// The channel's current state, its signature checked against `trusted` and its product and
/// channel those asked for; None when the channel has no state yet.
pub fn fetch(
    client: &Client,
    trusted: &TrustedKeys,
    product: &str,
    channel: &str,
) -> Result<Option<SignedState>> {
    let Some((bytes, signature)) = client.channel_state(product, channel)? else {
        return Ok(None);
    };
    let fail = |m: String| state_error(product, channel, m);
    trusted.verify(&bytes, &signature).map_err(|e| {
        fail(format!(
            "{e}; refusing to build on a state no trusted key signed (after a key rotation, pass the old public key with --trusted-key FILE)"
        ))
    })?;
    let state = ChannelState::parse(&bytes, UnknownFields::Reject)
        .map_err(|e| fail(format!("the stored state is invalid: {e}")))?;
    if state.product.as_str() != product || state.channel.as_str() != channel {
        return Err(fail(format!(
            "the server sent the state of {} channel {}",
            state.product, state.channel
        )));
    }
    Ok(Some(SignedState {
        state,
        bytes,
        signature,
    }))
}

/// A release's manifest on a channel: its exact bytes, signature checked by `trusted`, and
/// product, version and channel those asked for.
pub fn fetch_manifest(
    client: &Client,
    trusted: &TrustedKeys,
    product: &str,
    channel: &str,
    version: &Version,
) -> Result<(Manifest, Vec<u8>, String)> {
    let v = version.to_string();
    let bytes = client.fetch(product, &v, MANIFEST_FILE, channel)?;
    let sig = client.fetch(product, &v, SIGNATURE_FILE, channel)?;
    let fail = |m: String| {
        state_error(
            product,
            channel,
            format!("release {version}: {MANIFEST_FILE}: {m}"),
        )
    };
    let sig = String::from_utf8(sig).map_err(|_| fail(format!("{SIGNATURE_FILE} is not text")))?;
    trusted.verify(&bytes, &sig).map_err(|e| {
        fail(format!(
            "{e}; a state only lists manifests a trusted key signed (pass --trusted-key FILE for a rotated key)"
        ))
    })?;
    let m = Manifest::parse(&bytes, UnknownFields::Reject).map_err(|e| fail(e.to_string()))?;
    if m.product.as_str() != product || &m.version != version || m.channel.as_str() != channel {
        return Err(fail(format!(
            "it describes {} {} on channel {}",
            m.product, m.version, m.channel
        )));
    }
    Ok((m, bytes, sig))
}

/// The `releases` entry of a manifest: its version and the SHA-256 of its exact bytes.
pub fn entry(manifest: &Manifest, bytes: &[u8]) -> ReleaseEntry {
    ReleaseEntry {
        version: manifest.version.clone(),
        manifest_sha256: Sha256::of(bytes),
    }
}

/// A verb's change to the successor state; called again after a 409.
pub type Change<'a> = dyn Fn(&mut ChannelState) -> Result<()> + 'a;

/// One change of one channel.
pub struct Update<'a> {
    pub client: &'a Client,
    pub signer: &'a Signer,
    pub product: ProductName,
    pub channel: ChannelName,
    pub lifetime: SignedDuration,
    /// How many 409s are answered by reading the state again ([`CONFLICT_RETRIES`]).
    pub conflict_retries: u32,
}

/// The state a verb is about to sign, and the one it replaces.
#[derive(Debug, Clone)]
pub struct Planned {
    pub previous: Option<SignedState>,
    pub next: ChannelState,
}

/// How the server took the new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateOutcome {
    /// Stored (201), or already stored byte for byte (200).
    Stored,
    /// The change left the channel as it was: nothing was sent.
    Unchanged,
}

/// The channel state after a verb.
#[derive(Debug, Clone)]
pub struct Committed {
    pub state: ChannelState,
    pub previous_seq: Option<u64>,
    pub outcome: StateOutcome,
    pub key_id: String,
}

/// True when two states offer the same thing (everything but `seq`, `issued`, `expires`).
fn same_content(a: &ChannelState, b: &ChannelState) -> bool {
    a.current == b.current
        && a.releases == b.releases
        && a.revoked == b.revoked
        && a.rollout == b.rollout
}

/// Now, to the whole second (states stay short and readable).
fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now())
}

impl Update<'_> {
    fn fail(&self, message: String) -> Error {
        state_error(self.product.as_str(), self.channel.as_str(), message)
    }

    /// Reads the channel's state (or builds the first one), applies `change` and checks the
    /// result against every rule; nothing is sent.
    pub fn plan(&self, change: &Change<'_>) -> Result<Planned> {
        let (previous, mut next) = self.base()?;
        change(&mut next)?;
        if next.releases.is_empty() {
            return Err(self.fail(
                "the new state would list no release; a channel state needs at least one".into(),
            ));
        }
        next.validate().map_err(|problems| {
            let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            self.fail(format!("the new state breaks a rule: {}", list.join("; ")))
        })?;
        Ok(Planned { previous, next })
    }

    /// The channel's verified state (None when it has none yet) and its successor before any
    /// change: `seq + 1` with a new expiry, or the first state.
    pub fn base(&self) -> Result<(Option<SignedState>, ChannelState)> {
        let (product, channel) = (self.product.as_str(), self.channel.as_str());
        let previous = fetch(self.client, self.signer.trusted(), product, channel)?;
        let now = now();
        let next = match &previous {
            Some(p) => p.state.successor(now, self.lifetime),
            None => self.first_state(now)?,
        };
        Ok((previous, next))
    }

    /// The first state of a channel (seq 1): every non-yanked release the server holds on it,
    /// `current` the highest.
    fn first_state(&self, now: Timestamp) -> Result<ChannelState> {
        let (product, channel) = (self.product.as_str(), self.channel.as_str());
        let mut releases = Vec::new();
        for (version, yanked) in self.client.releases(product, channel)? {
            if yanked {
                continue;
            }
            let (m, bytes, _) = fetch_manifest(
                self.client,
                self.signer.trusted(),
                product,
                channel,
                &version,
            )?;
            releases.push(entry(&m, &bytes));
        }
        releases.sort_by(|a, b| b.version.cmp(&a.version));
        // With no release yet, the verb's change names `current` (a placeholder until then;
        // `plan` refuses a state that lists no release).
        let current = match releases.first() {
            Some(r) => r.version.clone(),
            None => Version::parse("0.0.0").map_err(|e| self.fail(e.to_string()))?,
        };
        Ok(ChannelState {
            schema: CHANNEL_SCHEMA_VERSION,
            product: self.product.clone(),
            channel: self.channel.clone(),
            seq: 1,
            issued: now,
            expires: now.saturating_add(self.lifetime).unwrap_or(Timestamp::MAX),
            current,
            releases,
            revoked: Vec::new(),
            rollout: None,
        })
    }

    /// Signs and `PUT`s the planned state. `always` sends it even when the content did not
    /// change (refresh). On a 409 the state is read again and `change` applied once more
    /// (`conflict_retries` times).
    pub fn commit(&self, planned: Planned, change: &Change<'_>, always: bool) -> Result<Committed> {
        let mut planned = planned;
        let mut retries = self.conflict_retries;
        loop {
            let previous_seq = planned.previous.as_ref().map(|p| p.state.seq);
            let unchanged = planned
                .previous
                .as_ref()
                .is_some_and(|p| same_content(&p.state, &planned.next));
            if unchanged && !always {
                let state = planned.previous.map(|p| p.state).unwrap_or(planned.next);
                return Ok(Committed {
                    state,
                    previous_seq,
                    outcome: StateOutcome::Unchanged,
                    key_id: self.signer.key_id(),
                });
            }
            let signed = sign(&planned.next, self.signer.key())?;
            let answer = self.client.put_channel_state(
                self.product.as_str(),
                self.channel.as_str(),
                &signed.bytes,
                &signed.signature,
            )?;
            match answer {
                StatePut::Stored(_) => {
                    return Ok(Committed {
                        state: signed.state,
                        previous_seq,
                        outcome: StateOutcome::Stored,
                        key_id: self.signer.key_id(),
                    })
                }
                StatePut::Conflict { .. } if retries > 0 => {
                    retries -= 1;
                    planned = self.plan(change)?;
                }
                StatePut::Conflict { body } => {
                    return Err(Error::ChannelConflict {
                        product: self.product.to_string(),
                        channel: self.channel.to_string(),
                        ours: signed.state.seq,
                        stored: self.stored_seq(&body),
                    })
                }
            }
        }
    }

    /// Plans and commits in one go.
    pub fn apply(&self, change: &Change<'_>, always: bool) -> Result<Committed> {
        let planned = self.plan(change)?;
        self.commit(planned, change, always)
    }

    /// The stored `seq` after a 409: from the answer's body when it names it, else read from
    /// the server.
    fn stored_seq(&self, body: &[u8]) -> Option<u64> {
        if let Some(seq) = seq_in_body(body) {
            return Some(seq);
        }
        let (bytes, _) = self
            .client
            .channel_state(self.product.as_str(), self.channel.as_str())
            .ok()??;
        ChannelState::parse(&bytes, UnknownFields::Ignore)
            .ok()
            .map(|s| s.seq)
    }
}

/// `qx-publish yank VERSION [--revert]`: the new state is planned (and the only release
/// refused) before the server's `DELETE`, then signed and stored after it.
pub fn yank(update: &Update<'_>, version: &Version, action: RevokeAction) -> Result<Committed> {
    let change = |s: &mut ChannelState| crate::state::yank(s, version, action);
    let planned = update.plan(&change)?;
    update.client.yank(
        update.product.as_str(),
        &version.to_string(),
        update.channel.as_str(),
    )?;
    update.commit(planned, &change, false)
}

/// A new rollout's id: 16 random letters and digits. Never a leading `-`, which a command
/// line would take for an option (`qx-publish rollout status <id>`).
fn new_rollout_id() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(16)
        .map(char::from)
        .collect()
}

/// A new rollout's id, salt, waves and policy, the first wave opening now; made once, so
/// that a retry after a 409 signs the same plan.
#[derive(Debug, Clone)]
pub struct NewRollout {
    pub id: String,
    pub salt: String,
    pub waves: Vec<qx_core::channel::Wave>,
    pub policy: RolloutPolicy,
}

impl NewRollout {
    pub fn new(specs: &[qx_core::rollout::WaveSpec], policy: RolloutPolicy) -> Result<Self> {
        let waves = qx_core::rollout::schedule(specs, now()).map_err(|e| {
            Error::Usage(format!("--waves: the schedule does not fit in time: {e}"))
        })?;
        Ok(NewRollout {
            id: new_rollout_id(),
            salt: qx_core::fleet::new_secret(),
            waves,
            policy,
        })
    }

    /// Puts the plan for `version` into the successor state (see [`crate::state::start_rollout`]).
    pub fn apply_to(&self, state: &mut ChannelState, version: &Version) -> Result<()> {
        crate::state::start_rollout(state, version, self)
    }
}

/// `qx-publish rollout start`: signs the plan of a rollout of `version` in `waves`.
pub fn start_rollout(
    update: &Update<'_>,
    version: &Version,
    waves: &[qx_core::rollout::WaveSpec],
    policy: RolloutPolicy,
) -> Result<Committed> {
    let rollout = NewRollout::new(waves, policy)?;
    update.apply(&|s: &mut ChannelState| rollout.apply_to(s, version), false)
}

/// `qx-publish rollout abort --revert`: revokes the version of the channel's rollout (the
/// one with `id`, when given) with `revert`, which ends the rollout; the version revoked.
pub fn abort_with_revert(update: &Update<'_>, id: Option<&str>) -> Result<(Committed, Version)> {
    let revoked = std::cell::RefCell::new(None);
    let change = |s: &mut ChannelState| {
        let plan = s.rollout.clone();
        let plan = match (plan, id) {
            (Some(p), Some(id)) if p.id != id => Err(format!(
                "the channel's rollout is {} (of {}), not {id}",
                p.id, p.version
            )),
            (Some(p), _) => Ok(p),
            (None, _) => Err("the channel state carries no rollout".to_owned()),
        }
        .map_err(|m| crate::state::refuse(s, m))?;
        crate::state::yank(s, &plan.version, RevokeAction::Revert)?;
        revoked.replace(Some(plan.version));
        Ok(())
    };
    let committed = update.apply(&change, false)?;
    let version = revoked
        .into_inner()
        .ok_or_else(|| Error::Usage("the rollout's version was not revoked".into()))?;
    Ok((committed, version))
}

/// `qx-publish refresh`: the same content with `seq + 1` and a new expiry (a channel without a
/// state gets its first one, listing the releases the server holds).
pub fn refresh(update: &Update<'_>) -> Result<Committed> {
    update.apply(&|_| Ok(()), true)
}

/// A stored `seq` named in a 409 body: a `stored_seq` or `seq` field, at the top or in
/// `details`.
fn seq_in_body(body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let pick = |v: &serde_json::Value| {
        ["stored_seq", "seq"]
            .iter()
            .find_map(|k| v.get(k).and_then(serde_json::Value::as_u64))
    };
    pick(&v).or_else(|| pick(&v["details"])).or_else(|| {
        v["details"]
            .as_array()
            .and_then(|a| a.iter().find_map(pick))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_ids_are_letters_and_digits_never_an_option() {
        for _ in 0..2000 {
            let id = new_rollout_id();
            assert_eq!(id.len(), 16);
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        }
    }

    #[test]
    fn stored_seq_is_read_from_a_conflict_body() {
        assert_eq!(seq_in_body(br#"{"error":"x","stored_seq":7}"#), Some(7));
        assert_eq!(
            seq_in_body(br#"{"error":"x","details":{"seq":3}}"#),
            Some(3)
        );
        assert_eq!(
            seq_in_body(br#"{"error":"x","details":[{"seq":4}]}"#),
            Some(4)
        );
        assert_eq!(seq_in_body(b"not json"), None);
    }
}
