//! The channel state (docs/spec.md §8): what one channel of one product offers, signed by the
//! publisher like a manifest, with a sequence number that only ever grows.
//!
//! Replay protection compares `seq`, never release versions, so a yank with a fallback, a
//! revert and a chosen older version work for every host. Parsing is the only way from bytes to
//! a [`ChannelState`]; it checks the structure and then every rule between fields.

use jiff::{SignedDuration, Timestamp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::document::UnknownFields;
use crate::document::{parse_json, schema_text, to_signed_bytes, ParseFailure, Problem};
use crate::hash::Sha256;
use crate::names::{ChannelName, ProductName};
use crate::version::Version;

/// The channel-state format version this code writes and understands.
pub const CHANNEL_SCHEMA_VERSION: u32 = 1;
/// The file name of a channel state (in a bundle, and in the server's store).
pub const CHANNEL_FILE: &str = "channel.json";
/// The file name of its detached minisign signature.
pub const CHANNEL_SIGNATURE_FILE: &str = "channel.json.minisig";
/// How long a channel state is valid when the publisher does not say: 30 days.
pub const DEFAULT_LIFETIME: SignedDuration = SignedDuration::from_hours(30 * 24);

/// What a channel offers, signed by the publisher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "Quantix OTA channel state")]
pub struct ChannelState {
    /// Format version; always 1 for now.
    pub schema: u32,
    pub product: ProductName,
    pub channel: ChannelName,
    /// Strictly increasing per product and channel; agents refuse a lower one (replay).
    pub seq: u64,
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub issued: Timestamp,
    /// Agents refuse the state after this instant (a frozen channel).
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub expires: Timestamp,
    /// What every host of the channel should run.
    pub current: Version,
    /// Every release a host may install, `current` included, with its manifest's SHA-256.
    pub releases: Vec<ReleaseEntry>,
    /// Releases withdrawn from the channel, and what hosts running them do.
    #[serde(default)]
    pub revoked: Vec<Revocation>,
    /// A staged rollout in progress (docs/spec.md §10), or none.
    #[serde(default)]
    pub rollout: Option<RolloutPlan>,
}

/// One installable release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReleaseEntry {
    pub version: Version,
    /// SHA-256 of the exact signed manifest bytes of this release.
    pub manifest_sha256: Sha256,
}

/// A withdrawn release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Revocation {
    pub version: Version,
    pub action: RevokeAction,
}

/// What a host running a revoked release does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevokeAction {
    /// Stay on it until a newer `current` comes.
    Keep,
    /// Go back to `current` now, even though it is lower.
    Revert,
}

/// The signed plan of a staged rollout: a speed limit no server can raise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RolloutPlan {
    pub id: String,
    /// The version being rolled out (listed in `releases`, above `current`).
    pub version: Version,
    pub manifest_sha256: Sha256,
    /// Mixed into every host's bucket, so each rollout draws its waves anew.
    pub salt: String,
    /// Cumulative waves, in order.
    pub waves: Vec<Wave>,
    /// How the server gates and halts it (signed with the plan, so every server sharing the
    /// fleet store judges by the same rules; agents do not use it). Defaults when absent.
    #[serde(default)]
    pub policy: RolloutPolicy,
}

/// The health rules of a rollout (docs/spec.md §10), judged by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct RolloutPolicy {
    /// A wave opens only when the previous wave's confirmed share of its finished hosts is at
    /// least this percent.
    pub gate: f64,
    /// Halt when this many failures are seen (since the last resume).
    pub max_failures: u32,
    /// Halt when, after `min_sample` finished hosts, failures exceed this percent of them.
    pub max_failure_rate: f64,
    pub min_sample: u32,
    /// How long each stage may take before the host counts as `timed_out`.
    pub deadlines: StageDeadlines,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            gate: 95.0,
            max_failures: 5,
            max_failure_rate: 5.0,
            min_sample: 10,
            deadlines: StageDeadlines::default(),
        }
    }
}

/// Seconds each stage of a host's update may take: from `download_started` to
/// `download_done`, from there to `installed`, and from `installed` (or `reboot`) to
/// `confirmed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct StageDeadlines {
    pub download_s: u64,
    pub install_s: u64,
    pub confirm_s: u64,
}

impl Default for StageDeadlines {
    fn default() -> Self {
        StageDeadlines {
            download_s: 2 * 3600,
            install_s: 3600,
            confirm_s: 30 * 60,
        }
    }
}

/// One wave of a rollout: hosts whose bucket is below `percent` × 100, not before a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Wave {
    /// Cumulative share of hosts, above 0 and at most 100 (two decimals count).
    pub percent: f64,
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub not_before: Timestamp,
}

/// Why channel-state bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("channel state is not valid JSON: {0}")]
    Syntax(String),
    #[error("channel state field {path}: {message}")]
    Structure { path: String, message: String },
    #[error("channel state has unknown fields: {}", .0.join(", "))]
    UnknownFields(Vec<String>),
    #[error("channel state breaks {} rule(s): {}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
}

impl From<ParseFailure> for ChannelError {
    fn from(failure: ParseFailure) -> Self {
        match failure {
            ParseFailure::Syntax(m) => ChannelError::Syntax(m),
            ParseFailure::Structure { path, message } => ChannelError::Structure { path, message },
            ParseFailure::UnknownFields(f) => ChannelError::UnknownFields(f),
        }
    }
}

impl ChannelError {
    /// Every problem as a list, for JSON error bodies.
    pub fn problems(&self) -> Vec<Problem> {
        let one = |path: &str, message: &str| Problem {
            path: path.to_owned(),
            message: message.to_owned(),
        };
        match self {
            ChannelError::Syntax(m) => vec![one("", m)],
            ChannelError::Structure { path, message } => vec![one(path, message)],
            ChannelError::UnknownFields(f) => f.iter().map(|p| one(p, "unknown field")).collect(),
            ChannelError::Invalid(p) => p.clone(),
        }
    }
}

/// What a host should do, given the channel state and the version it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Nothing to install: the host runs `current`, a kept revoked version with no newer
    /// `current`, or a version above `current` chosen on purpose.
    UpToDate,
    /// Install `current`: the host runs nothing yet, or something older.
    Update(&'a ReleaseEntry),
    /// The installed version is revoked with `revert`: go back to `current`.
    Revert(&'a ReleaseEntry),
}

impl ChannelState {
    /// Parses and validates channel-state bytes.
    pub fn parse(bytes: &[u8], unknown: UnknownFields) -> Result<Self, ChannelError> {
        let state: ChannelState = parse_json(bytes, unknown).map_err(ChannelError::from)?;
        state.validate().map_err(ChannelError::Invalid)?;
        Ok(state)
    }

    /// The bytes that get signed (pretty JSON, trailing newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        to_signed_bytes(self)
    }

    /// Every rule between fields; all broken ones at once.
    pub fn validate(&self) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        let mut fail = |path: &str, message: String| {
            problems.push(Problem {
                path: path.to_owned(),
                message,
            })
        };
        if self.schema != CHANNEL_SCHEMA_VERSION {
            fail("schema", format!("must be {CHANNEL_SCHEMA_VERSION}"));
        }
        if self.seq == 0 {
            fail("seq", "must be at least 1".into());
        }
        if self.expires <= self.issued {
            fail("expires", "must be after issued".into());
        }
        self.release_rules(&mut fail);
        if let Some(plan) = &self.rollout {
            self.rollout_rules(plan, &mut fail);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn release_rules(&self, fail: &mut impl FnMut(&str, String)) {
        for (i, r) in self.releases.iter().enumerate() {
            if self.releases[..i].iter().any(|o| o.version == r.version) {
                fail(
                    &format!("releases[{i}].version"),
                    format!("{} is listed twice", r.version),
                );
            }
        }
        if self.release(&self.current).is_none() {
            fail(
                "current",
                format!("{} is not listed in releases", self.current),
            );
        }
        for (i, r) in self.revoked.iter().enumerate() {
            let path = format!("revoked[{i}].version");
            if self.revoked[..i].iter().any(|o| o.version == r.version) {
                fail(&path, format!("{} is revoked twice", r.version));
            }
            if self.release(&r.version).is_some() {
                fail(
                    &path,
                    format!("{} is both installable and revoked", r.version),
                );
            }
        }
    }

    fn rollout_rules(&self, plan: &RolloutPlan, fail: &mut impl FnMut(&str, String)) {
        match self.release(&plan.version) {
            Some(r) if r.manifest_sha256 == plan.manifest_sha256 => {}
            Some(_) => fail(
                "rollout.manifest_sha256",
                "differs from the release's in releases".into(),
            ),
            None => fail(
                "rollout.version",
                format!("{} is not listed in releases", plan.version),
            ),
        }
        if plan.version <= self.current {
            fail(
                "rollout.version",
                format!("must be above current {}", self.current),
            );
        }
        if plan.id.is_empty() || plan.salt.is_empty() {
            fail("rollout", "id and salt must not be empty".into());
        }
        if plan.waves.is_empty() {
            fail("rollout.waves", "a rollout needs at least one wave".into());
        }
        let mut last: Option<&Wave> = None;
        for (i, w) in plan.waves.iter().enumerate() {
            if !(w.percent > 0.0 && w.percent <= 100.0) {
                fail(
                    &format!("rollout.waves[{i}].percent"),
                    "must be above 0 and at most 100".into(),
                );
            }
            if let Some(prev) = last {
                if w.percent <= prev.percent || w.not_before < prev.not_before {
                    fail(
                        &format!("rollout.waves[{i}]"),
                        "waves must grow in percent and not start before the previous one".into(),
                    );
                }
            }
            last = Some(w);
        }
        policy_rules(&plan.policy, fail);
    }

    /// The installable release of that version, if listed.
    pub fn release(&self, version: &Version) -> Option<&ReleaseEntry> {
        self.releases.iter().find(|r| &r.version == version)
    }

    /// The release every host should run.
    pub fn current_release(&self) -> Option<&ReleaseEntry> {
        self.release(&self.current)
    }

    /// How that version was revoked, if it was.
    pub fn revocation(&self, version: &Version) -> Option<RevokeAction> {
        self.revoked
            .iter()
            .find(|r| &r.version == version)
            .map(|r| r.action)
    }

    /// True when `now` is at or past `expires`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires
    }

    /// What a host running `installed` (none: a fresh host) should do.
    pub fn target(&self, installed: Option<&Version>) -> Target<'_> {
        let Some(current) = self.current_release() else {
            return Target::UpToDate;
        };
        let Some(installed) = installed else {
            return Target::Update(current);
        };
        if installed == &self.current {
            return Target::UpToDate;
        }
        match self.revocation(installed) {
            Some(RevokeAction::Revert) => Target::Revert(current),
            _ if &self.current > installed => Target::Update(current),
            _ => Target::UpToDate,
        }
    }

    /// The next state of the channel: `seq + 1`, issued `now`, valid for `lifetime`; the
    /// caller then changes what the change is about (current, releases, revoked, rollout).
    pub fn successor(&self, now: Timestamp, lifetime: SignedDuration) -> ChannelState {
        let mut next = self.clone();
        next.seq = self.seq.saturating_add(1);
        next.issued = now;
        next.expires = now.saturating_add(lifetime).unwrap_or(Timestamp::MAX);
        next
    }
}

/// The rules of a rollout's policy: shares are percents, deadlines are not zero.
fn policy_rules(policy: &RolloutPolicy, fail: &mut impl FnMut(&str, String)) {
    for (name, value) in [
        ("gate", policy.gate),
        ("max_failure_rate", policy.max_failure_rate),
    ] {
        if !(0.0..=100.0).contains(&value) {
            fail(
                &format!("rollout.policy.{name}"),
                "must be a percent from 0 to 100".into(),
            );
        }
    }
    let d = policy.deadlines;
    for (name, value) in [
        ("download_s", d.download_s),
        ("install_s", d.install_s),
        ("confirm_s", d.confirm_s),
    ] {
        if value == 0 {
            fail(
                &format!("rollout.policy.deadlines.{name}"),
                "must be at least one second".into(),
            );
        }
    }
}

/// The agent's replay rule: a state whose `seq` is lower than the highest seen is refused;
/// an equal `seq` is accepted only for the very same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// Newer than anything seen: accept and remember it.
    Newer,
    /// The state already seen, byte for byte.
    Same,
    /// Lower than the highest seen: a replay.
    Replayed { seen: u64 },
    /// The same `seq` as one seen, with other bytes: a forgery or a publisher's mistake.
    Conflicting { seen: u64 },
}

/// Compares a state's `seq` and bytes hash with the highest seen on the channel.
pub fn check_seq(seen: Option<(u64, Sha256)>, seq: u64, bytes_sha256: Sha256) -> SeqCheck {
    match seen {
        None => SeqCheck::Newer,
        Some((s, _)) if seq > s => SeqCheck::Newer,
        Some((s, h)) if seq == s && h == bytes_sha256 => SeqCheck::Same,
        Some((s, _)) if seq == s => SeqCheck::Conflicting { seen: s },
        Some((s, _)) => SeqCheck::Replayed { seen: s },
    }
}

/// The JSON Schema of the channel state, generated from the types.
pub fn json_schema() -> String {
    schema_text(&schemars::schema_for!(ChannelState))
}

#[cfg(test)]
mod tests;
