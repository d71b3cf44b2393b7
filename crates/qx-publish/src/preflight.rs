//! What a publish checks with the server before it builds: that an update server answers
//! under `--server` (its base path included), that the channel is one the server accepts,
//! that the token is accepted and may publish, and whether the version is there already —
//! then, once built and before anything is uploaded, that a version already there holds
//! exactly these bytes (a republish of the same build is allowed; other content is not).

use qx_core::{ChannelName, Version, MANIFEST_FILE};

use crate::error::{Error, Result};
use crate::upload::Client;

/// The scopes that may publish.
const PUBLISH_SCOPES: &[&str] = &["publish", "admin"];

/// A version found on the channel before the build.
pub struct Existing {
    pub manifest: Vec<u8>,
}

/// Checks the server, the channel and (unless `dry_run`, which uploads nothing) the token;
/// returns the stored manifest when the version is on the channel already.
pub fn check(
    client: &Client,
    product: &str,
    channel: &ChannelName,
    version: &Version,
    dry_run: bool,
) -> Result<Option<Existing>> {
    server_answers(client)?;
    channel_accepted(client, channel)?;
    if !dry_run {
        token_may_publish(client)?;
    }
    existing(client, product, channel, version)
}

fn server_answers(client: &Client) -> Result<()> {
    if client.answers_as_update_server()? {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "no update server answers at {}: its /health is not an update server's; check the URL given to --server and its base path",
        client.server()
    )))
}

fn channel_accepted(client: &Client, channel: &ChannelName) -> Result<()> {
    let channels = client.channels()?;
    if channels.iter().any(|c| c == channel.as_str()) {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "channel {channel} is not configured on {} (it accepts: {}; the server's CHANNELS setting); nothing was built",
        client.server(),
        channels.join(", ")
    )))
}

fn token_may_publish(client: &Client) -> Result<()> {
    let (name, scopes) = client.whoami()?;
    if scopes.iter().any(|s| PUBLISH_SCOPES.contains(&s.as_str())) {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "token {name} has scope {}, which cannot publish (needs publish or admin); nothing was built",
        scopes.join(", ")
    )))
}

fn existing(
    client: &Client,
    product: &str,
    channel: &ChannelName,
    version: &Version,
) -> Result<Option<Existing>> {
    let held = client.releases(product, channel.as_str())?;
    if !held.iter().any(|(v, _)| v == version) {
        return Ok(None);
    }
    let manifest = client.fetch(
        product,
        &version.to_string(),
        MANIFEST_FILE,
        channel.as_str(),
    )?;
    Ok(Some(Existing { manifest }))
}

/// After the build, before the upload: a version already on the channel must be this very
/// build (the server would answer 409 to anything else, after the upload).
pub fn same_as_existing(
    existing: Option<&Existing>,
    built_manifest: &[u8],
    version: &Version,
    channel: &ChannelName,
) -> Result<()> {
    match existing {
        Some(e) if e.manifest != built_manifest => Err(Error::WouldBeRefused(format!(
            "version {version} already exists on channel {channel} with other content; releases are immutable: bump the version in the spec (nothing was uploaded)"
        ))),
        _ => Ok(()),
    }
}
