//! The signed channel state on the host (docs/spec.md §8): fetched with its signature,
//! verified against the trusted keys, checked for this host's product and channel, for replay
//! (`seq` against the highest seen) and for freezing (`expires`). The replay watermark
//! (`/data/updates/channel-seen.json`: per product and channel, the highest `seq` and the
//! SHA-256 of its bytes) moves only after a state passed every check, and never back.

use std::collections::BTreeMap;
use std::path::Path;

use qx_core::channel::{check_seq, ChannelState, SeqCheck};
use qx_core::{Sha256, UnknownFields};
use serde::{Deserialize, Serialize};

use crate::download::{DownloadError, Downloader};
use crate::{Agent, AgentError, Config};

/// A channel state that passed every check of docs/spec.md §8.
#[derive(Debug, Clone)]
pub struct VerifiedState {
    pub state: ChannelState,
}

/// One watermark: the highest `seq` verified on a channel and the SHA-256 of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub seq: u64,
    pub sha256: Sha256,
}

/// The raw state from the server: `None` when the server has none for the channel (404).
pub struct Fetched {
    pub url: String,
    pub bytes: Vec<u8>,
    pub signature: String,
}

/// `GET` the channel state and its signature header.
pub fn fetch(config: &Config, downloader: &Downloader) -> Result<Option<Fetched>, AgentError> {
    let url = config
        .server()
        .channel_state(&config.product, &config.channel);
    match downloader.get_bytes(&url) {
        Ok((bytes, headers)) => {
            let signature = crate::check::signature_header(&headers, &url)?;
            Ok(Some(Fetched {
                url,
                bytes,
                signature,
            }))
        }
        Err(DownloadError::NotFound { .. }) => Ok(None),
        // Trust is a setting to change, not an unreachable server (exit code TLS).
        Err(DownloadError::Tls(t)) => Err(AgentError::Tls(t)),
        Err(other) => Err(AgentError::Fetch {
            url,
            message: other.to_string(),
        }),
    }
}

/// The channel has no state on the server: fine for a channel never seen with one (the
/// Part-I path), refused once a state was verified on it (a server must not strip it).
pub fn refuse_if_seen(agent: &Agent, url: &str) -> Result<(), AgentError> {
    let config = agent.config();
    match watermark(&agent.paths().channel_seen, &key(config)) {
        Some(w) => Err(AgentError::StateWithdrawn {
            channel: config.channel.to_string(),
            url: url.to_owned(),
            seen: w.seq,
        }),
        None => Ok(()),
    }
}

/// Every check in order: signature, parse, product and channel, `seq`, expiry; then the
/// watermark moves forward.
pub fn verify(
    agent: &Agent,
    url: &str,
    bytes: &[u8],
    signature: &str,
) -> Result<VerifiedState, AgentError> {
    let config = agent.config();
    crate::check::verify_signature(config, url, bytes, signature)?;
    let state = ChannelState::parse(bytes, UnknownFields::Ignore).map_err(|source| {
        AgentError::ChannelInvalid {
            url: url.to_owned(),
            source,
        }
    })?;
    if state.product != config.product {
        return Err(AgentError::WrongProduct {
            expected: config.product.to_string(),
            got: state.product.to_string(),
        });
    }
    if state.channel != config.channel {
        return Err(AgentError::WrongChannel {
            expected: config.channel.to_string(),
            got: state.channel.to_string(),
        });
    }
    let path = &agent.paths().channel_seen;
    let sha = Sha256::of(bytes);
    let seen = watermark(path, &key(config));
    let newer = match check_seq(seen.map(|w| (w.seq, w.sha256)), state.seq, sha) {
        SeqCheck::Newer => true,
        SeqCheck::Same => false,
        SeqCheck::Replayed { seen } | SeqCheck::Conflicting { seen } => {
            return Err(AgentError::StateReplayed {
                channel: config.channel.to_string(),
                seen,
                offered: state.seq,
                same_seq: seen == state.seq,
            })
        }
    };
    if state.is_expired(jiff::Timestamp::now()) {
        return Err(AgentError::StateExpired {
            channel: config.channel.to_string(),
            seq: state.seq,
            expires: state.expires.to_string(),
        });
    }
    if newer {
        record(
            path,
            &key(config),
            Watermark {
                seq: state.seq,
                sha256: sha,
            },
        )?;
    }
    Ok(VerifiedState { state })
}

/// The watermark's key: `product/channel`.
fn key(config: &Config) -> String {
    format!("{}/{}", config.product, config.channel)
}

fn read_all(path: &Path) -> BTreeMap<String, Watermark> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The watermark of one channel, if a state was ever verified on it.
pub fn watermark(path: &Path, key: &str) -> Option<Watermark> {
    read_all(path).get(key).copied()
}

/// Moves the watermark forward (durably: temp + fsync + rename + fsync of the directory).
fn record(path: &Path, key: &str, mark: Watermark) -> Result<(), AgentError> {
    let mut all = read_all(path);
    if all.get(key).is_some_and(|w| w.seq > mark.seq) {
        return Ok(());
    }
    all.insert(key.to_owned(), mark);
    let bytes = serde_json::to_vec_pretty(&all).map_err(|e| AgentError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(AgentError::io(dir))?;
    }
    Ok(qx_core::fs::write_atomic(path, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_only_moves_forward() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("channel-seen.json");
        let a = Watermark {
            seq: 5,
            sha256: Sha256::of(b"five"),
        };
        record(&path, "p/stable", a).expect("record");
        record(
            &path,
            "p/stable",
            Watermark {
                seq: 3,
                sha256: Sha256::of(b"three"),
            },
        )
        .expect("record");
        assert_eq!(watermark(&path, "p/stable"), Some(a));
        assert_eq!(watermark(&path, "p/beta"), None);
    }
}
