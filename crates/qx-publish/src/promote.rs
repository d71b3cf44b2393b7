//! `qx-publish promote`: moves a published release from one channel to another without
//! re-uploading its artifacts.
//!
//! The manifest of `VERSION` on the `from` channel is downloaded and its signature checked;
//! then only `channel` and `expires` change: `expires` becomes now plus the release's original
//! validity period (`expires - release_date`), so a release that waited in `dev` does not
//! reach `stable` about to expire. Everything else (components, hashes, release date, notes)
//! is kept byte for byte in meaning. The new manifest is re-signed and sent to the server's
//! promote endpoint, which reuses the stored artifacts. When the target channel already has
//! this very release (same artifacts, trusted signature), nothing is sent and the promotion
//! is reported as already done.

use jiff::{SignedDuration, Timestamp};
use qx_core::channel::ChannelState;
use qx_core::{
    ChannelName, Manifest, ProductName, SigningKey, TrustedKeys, UnknownFields, MANIFEST_FILE,
    SIGNATURE_FILE,
};

use crate::channel::{self, Committed, Signer, Update};
use crate::state;

use crate::build::trusted_comment;
use crate::error::{Error, Result};
use crate::upload::{Client, Outcome};

#[derive(Debug, Clone)]
pub struct PromoteRequest {
    pub product: String,
    pub version: String,
    pub from: ChannelName,
    pub to: ChannelName,
}

/// The result of a promotion: the new manifest and how the server took it.
#[derive(Debug, Clone)]
pub struct Promoted {
    pub manifest: Manifest,
    /// The exact bytes of the target channel's manifest.
    pub manifest_bytes: Vec<u8>,
    pub outcome: Outcome,
    pub key_id: String,
}

/// Rewrites a verified manifest for the target channel (pure; see the module docs).
pub fn rewrite(original: &Manifest, to: &ChannelName, now: Timestamp) -> Result<Manifest> {
    let lifetime = original.release_date.duration_until(original.expires);
    let expires = now
        .checked_add(lifetime)
        .map_err(|e| Error::Usage(format!("cannot compute the new expiry: {e}")))?;
    let mut m = original.clone();
    m.channel = to.clone();
    m.expires = expires.max(original.expires);
    m.validate()
        .map_err(|p| Error::Manifest(p.iter().map(|p| p.to_string()).collect()))?;
    Ok(m)
}

/// The release as the target channel already has it, when that is this very release
/// (same artifacts, signed by a trusted key): running promote again after a lost answer then
/// succeeds instead of being refused because the new expiry differs.
fn already_promoted(
    client: &Client,
    trusted: &TrustedKeys,
    req: &PromoteRequest,
    original: &Manifest,
) -> Option<(Manifest, Vec<u8>)> {
    let to = req.to.as_str();
    let bytes = client
        .fetch(&req.product, &req.version, MANIFEST_FILE, to)
        .ok()?;
    let sig = client
        .fetch(&req.product, &req.version, SIGNATURE_FILE, to)
        .ok()?;
    trusted
        .verify(&bytes, std::str::from_utf8(&sig).ok()?)
        .ok()?;
    let existing = Manifest::parse(&bytes, UnknownFields::Reject).ok()?;
    let same = existing.channel == req.to
        && existing.product == original.product
        && existing.version == original.version
        && existing.artifacts() == original.artifacts();
    same.then_some((existing, bytes))
}

/// The release's manifest on the `from` channel, its signature checked and its product,
/// version and channel matching the request.
fn fetch_verified(
    client: &Client,
    trusted: &TrustedKeys,
    req: &PromoteRequest,
) -> Result<Manifest> {
    let from = req.from.as_str();
    let bytes = client.fetch(&req.product, &req.version, MANIFEST_FILE, from)?;
    let sig = client.fetch(&req.product, &req.version, SIGNATURE_FILE, from)?;
    let sig = String::from_utf8(sig).map_err(|_| Error::Verify {
        target: format!("{} {} on {from}", req.product, req.version),
        problems: vec![format!("{SIGNATURE_FILE} is not text")],
    })?;
    let target = format!("{} {} on channel {from}", req.product, req.version);
    let fail = |problems: Vec<String>| Error::Verify {
        target: target.clone(),
        problems,
    };
    trusted.verify(&bytes, &sig).map_err(|e| {
        fail(vec![format!(
            "{SIGNATURE_FILE}: {e}; refusing to re-sign a manifest that is not verified"
        )])
    })?;
    let original = Manifest::parse(&bytes, UnknownFields::Reject)
        .map_err(|e| fail(e.problems().iter().map(|p| p.to_string()).collect()))?;
    let mut problems = Vec::new();
    if original.product.as_str() != req.product {
        problems.push(format!("the manifest is for product {}", original.product));
    }
    if original.version.to_string() != req.version {
        problems.push(format!("the manifest says version {}", original.version));
    }
    if original.channel != req.from {
        problems.push(format!(
            "the manifest is signed for channel {}",
            original.channel
        ));
    }
    if problems.is_empty() {
        Ok(original)
    } else {
        Err(fail(problems))
    }
}

/// Downloads, verifies, rewrites, re-signs and promotes.
pub fn promote(
    client: &Client,
    key: &SigningKey,
    trusted: &TrustedKeys,
    req: &PromoteRequest,
) -> Result<Promoted> {
    if req.from == req.to {
        return Err(Error::Usage(format!(
            "--from and --to are both {}; promote moves a release to another channel",
            req.from
        )));
    }
    let original = fetch_verified(client, trusted, req)?;
    if let Some((existing, bytes)) = already_promoted(client, trusted, req, &original) {
        return Ok(Promoted {
            manifest: existing,
            manifest_bytes: bytes,
            outcome: Outcome::AlreadyThere,
            key_id: key.key_id(),
        });
    }
    let manifest = rewrite(&original, &req.to, Timestamp::now())?;
    let new_bytes = manifest.to_bytes();
    let new_sig = key.sign(&new_bytes, &trusted_comment(&manifest))?;
    let outcome = client.promote(
        &req.product,
        &req.version,
        req.from.as_str(),
        req.to.as_str(),
        &new_bytes,
        &new_sig,
    )?;
    Ok(Promoted {
        manifest,
        manifest_bytes: new_bytes,
        outcome,
        key_id: key.key_id(),
    })
}

/// Promotes, then signs the target channel's new state: the release listed and, with
/// `make_current`, made `current`. The target's state is read and checked first, so an
/// untrusted one stops the promotion before anything changes.
pub fn promote_and_sign(
    client: &Client,
    signer: &Signer,
    req: &PromoteRequest,
    make_current: bool,
    lifetime: SignedDuration,
) -> Result<(Promoted, Committed)> {
    let product = ProductName::new(req.product.clone())
        .map_err(|e| Error::Usage(format!("--product {}: {e}", req.product)))?;
    let update = Update {
        client,
        signer,
        product,
        channel: req.to.clone(),
        lifetime,
        conflict_retries: channel::CONFLICT_RETRIES,
    };
    update.base()?;
    let p = promote(client, signer.key(), signer.trusted(), req)?;
    let entry = channel::entry(&p.manifest, &p.manifest_bytes);
    let change = |s: &mut ChannelState| state::add_release(s, &entry, make_current);
    let committed = update.apply(&change, false)?;
    Ok((p, committed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let text = r#"{"schema":1,"product":"p","version":"1.0.0","channel":"dev",
            "release_date":"2026-01-01T00:00:00Z","expires":"2026-01-31T00:00:00Z",
            "update_type":"full","full_image":{"artifact":"system.squashfs",
            "sha256":"0000000000000000000000000000000000000000000000000000000000000000","size_bytes":1}}"#;
        Manifest::parse(text.as_bytes(), UnknownFields::Reject).expect("fixture manifest")
    }

    #[test]
    fn rewrite_changes_channel_and_refreshes_expiry() {
        let m = manifest();
        let beta = ChannelName::new("beta").expect("name");
        let now: Timestamp = "2026-03-01T00:00:00Z".parse().expect("ts");
        let r = rewrite(&m, &beta, now).expect("rewrite");
        assert_eq!(r.channel.as_str(), "beta");
        assert_eq!(r.expires.to_string(), "2026-03-31T00:00:00Z");
        assert_eq!(r.release_date, m.release_date);
        assert_eq!(r.full_image, m.full_image);
    }

    #[test]
    fn rewrite_never_shortens_expiry() {
        let m = manifest();
        let beta = ChannelName::new("beta").expect("name");
        let now: Timestamp = "2025-12-01T00:00:00Z".parse().expect("ts");
        assert_eq!(rewrite(&m, &beta, now).expect("rewrite").expires, m.expires);
    }
}
