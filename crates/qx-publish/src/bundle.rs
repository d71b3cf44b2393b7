//! `qx-publish bundle VERSION --out FILE`: one file for an offline host (docs/spec.md §12),
//! holding the channel's signed state, the release's signed manifest and every artifact.
//!
//! Everything is verified on the way in, as an agent would: the state's signature (trusted
//! keys), its product and channel, its expiry; VERSION listed in its `releases`; the manifest's
//! signature and its SHA-256 against the state; each artifact's size and SHA-256 while it
//! downloads. The bundle is written through a temporary file and renamed, so it is whole or
//! absent ([`qx_core::bundle::write_bundle`]).

use std::path::PathBuf;

use jiff::Timestamp;
use qx_core::bundle::{write_bundle, BundleMetadata};
use qx_core::channel::ChannelState;
use qx_core::{Manifest, Sha256, TrustedKeys, Version};

use crate::channel;
use crate::error::{Error, Result};
use crate::upload::Client;

/// What to bundle.
#[derive(Debug, Clone)]
pub struct BundleRequest {
    pub product: String,
    pub channel: String,
    pub version: Version,
    pub out: PathBuf,
}

/// A written bundle.
#[derive(Debug, Clone)]
pub struct Bundled {
    pub state: ChannelState,
    pub manifest: Manifest,
    pub out: PathBuf,
    /// Size of the bundle file.
    pub size_bytes: u64,
}

fn refuse(req: &BundleRequest, message: String) -> Error {
    Error::ChannelState {
        product: req.product.clone(),
        channel: req.channel.clone(),
        message,
    }
}

/// Downloads, verifies and writes the bundle.
pub fn bundle(
    client: &Client,
    trusted: &TrustedKeys,
    req: &BundleRequest,
    note: &mut dyn FnMut(&str),
) -> Result<Bundled> {
    let (product, ch) = (req.product.as_str(), req.channel.as_str());
    let signed = channel::fetch(client, trusted, product, ch)?.ok_or_else(|| {
        refuse(
            req,
            "the channel has no signed state yet (publish a release or run `qx-publish refresh` first)".into(),
        )
    })?;
    let state = &signed.state;
    if state.is_expired(Timestamp::now()) {
        return Err(refuse(
            req,
            format!(
                "the state (seq {}) expired at {}; hosts would refuse it: run `qx-publish refresh` first",
                state.seq, state.expires
            ),
        ));
    }
    let entry = state.release(&req.version).ok_or_else(|| {
        let listed: Vec<String> = state
            .releases
            .iter()
            .map(|r| r.version.to_string())
            .collect();
        refuse(
            req,
            format!(
                "{} is not listed in the state's releases (seq {} lists {})",
                req.version,
                state.seq,
                listed.join(", ")
            ),
        )
    })?;
    let (manifest, bytes, sig) =
        channel::fetch_manifest(client, trusted, product, ch, &req.version)?;
    let sha = Sha256::of(&bytes);
    if sha != entry.manifest_sha256 {
        return Err(refuse(
            req,
            format!(
                "the manifest of {} does not match the signed state (sha256 {}, the state says {})",
                req.version,
                sha.short(),
                entry.manifest_sha256.short()
            ),
        ));
    }
    if manifest.is_expired(Timestamp::now()) {
        return Err(refuse(
            req,
            format!(
                "the manifest of {} expired at {}; hosts would refuse it",
                req.version, manifest.expires
            ),
        ));
    }
    let files = download(client, req, &manifest, note)?;
    let meta = BundleMetadata {
        channel: signed.bytes.clone(),
        channel_signature: signed.signature.clone().into_bytes(),
        manifest: bytes,
        manifest_signature: sig.into_bytes(),
    };
    write_bundle(&req.out, &meta, &files.1)?;
    drop(files.0);
    let size_bytes = std::fs::metadata(&req.out)
        .map_err(Error::io(&req.out))?
        .len();
    Ok(Bundled {
        state: signed.state,
        manifest,
        out: req.out.clone(),
        size_bytes,
    })
}

/// Downloads every artifact of the release into a temporary directory beside the bundle,
/// each checked against the verified manifest as it arrives; returns the directory (removed
/// when dropped) and the (name, path) pairs in the manifest's order.
fn download(
    client: &Client,
    req: &BundleRequest,
    manifest: &Manifest,
    note: &mut dyn FnMut(&str),
) -> Result<(tempfile::TempDir, Vec<(String, PathBuf)>)> {
    let (product, ch) = (req.product.as_str(), req.channel.as_str());
    let tmp = tempfile::Builder::new()
        .prefix(".qx-bundle-")
        .tempdir_in(qx_core::fs::parent_of(&req.out))
        .map_err(Error::io(qx_core::fs::parent_of(&req.out)))?;
    let version = req.version.to_string();
    let mut files = Vec::new();
    // Deltas only save downloads: an offline host installs from the whole artifacts.
    for a in manifest.whole_artifacts() {
        let dest = tmp.path().join(a.artifact.as_str());
        note(&format!(
            "downloading {} ({} bytes)",
            a.artifact, a.size_bytes
        ));
        client.download_verified(product, &version, ch, &a, &dest)?;
        files.push((a.artifact.to_string(), dest));
    }
    Ok((tmp, files))
}
