//! Signed channel states (docs/spec.md §8) for tests: build one from releases, sign it with a
//! fixture key, and `PUT` it to a server the way `qx-publish` does.

use anyhow::Context;
use base64::Engine;
use jiff::{SignedDuration, Timestamp};
use qx_core::api::{ServerUrl, SIGNATURE_HEADER};
use qx_core::channel::{
    ChannelState, ReleaseEntry, Revocation, RevokeAction, CHANNEL_SCHEMA_VERSION,
};
use qx_core::{Sha256, Version};

use crate::release::{BuiltRelease, FixtureKey};

/// A channel state with its exact signed bytes and `.minisig` text.
#[derive(Debug, Clone)]
pub struct SignedChannel {
    pub state: ChannelState,
    pub bytes: Vec<u8>,
    pub signature: String,
}

/// A channel state of `seq` whose `current` is the last of `releases` (all installable),
/// issued now and valid for 30 days.
pub fn state_of(seq: u64, releases: &[&BuiltRelease]) -> anyhow::Result<ChannelState> {
    let last = releases.last().context("a channel state needs a release")?;
    let issued = Timestamp::now();
    Ok(ChannelState {
        schema: CHANNEL_SCHEMA_VERSION,
        product: last.manifest.product.clone(),
        channel: last.manifest.channel.clone(),
        seq,
        issued,
        expires: issued.saturating_add(SignedDuration::from_hours(30 * 24))?,
        current: last.manifest.version.clone(),
        releases: releases.iter().map(|r| entry(r)).collect(),
        revoked: Vec::new(),
        rollout: None,
    })
}

/// The `releases` entry of a built release: its version and its manifest bytes' SHA-256.
pub fn entry(release: &BuiltRelease) -> ReleaseEntry {
    ReleaseEntry {
        version: release.manifest.version.clone(),
        manifest_sha256: Sha256::of(&release.manifest_bytes),
    }
}

/// Revokes `version` (removed from `releases`) with `action`.
pub fn revoke(state: &mut ChannelState, version: &Version, action: RevokeAction) {
    state.releases.retain(|r| &r.version != version);
    state.revoked.push(Revocation {
        version: version.clone(),
        action,
    });
}

/// Signs the state's canonical bytes.
pub fn sign(state: &ChannelState, key: &FixtureKey) -> anyhow::Result<SignedChannel> {
    let bytes = state.to_bytes();
    let signature = key.sign(&bytes)?;
    Ok(SignedChannel {
        state: state.clone(),
        bytes,
        signature,
    })
}

impl SignedChannel {
    /// `PUT`s the state to the server (body: the exact bytes; the signature, base64 of the
    /// `.minisig` text, in the signature header); returns (status, body).
    pub fn put(&self, server_url: &str, token: &str) -> anyhow::Result<(u16, String)> {
        let url =
            ServerUrl::new(server_url).channel_state(&self.state.product, &self.state.channel);
        let sig = base64::engine::general_purpose::STANDARD.encode(self.signature.as_bytes());
        let resp = reqwest::blocking::Client::new()
            .put(&url)
            .bearer_auth(token)
            .header(SIGNATURE_HEADER, sig)
            .header("content-type", "application/json")
            .body(self.bytes.clone())
            .send()
            .with_context(|| format!("PUT {url}"))?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().unwrap_or_default()))
    }

    /// `PUT`s and fails unless the server stored it (200 or 201).
    pub fn publish(&self, server_url: &str, token: &str) -> anyhow::Result<u16> {
        let (status, body) = self.put(server_url, token)?;
        anyhow::ensure!(
            status == 200 || status == 201,
            "PUT of channel state seq {} answered {status}: {body}",
            self.state.seq
        );
        Ok(status)
    }
}
