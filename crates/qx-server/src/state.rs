//! The state every handler shares: the store, the configuration, the metrics, the publish
//! token's digest and the cache of resolved manifests.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue};
use base64::Engine;
use bytes::Bytes;
use qx_core::{ChannelName, ProductName, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::storage::{ReleaseKey, ReleaseStore};

/// How long a resolved "newest release of a channel" is reused when nothing changed through
/// this process. Changes made by this server invalidate it at once; the lifetime only bounds
/// how late a change made behind its back (another server on shared storage, an operator)
/// is seen.
pub const MANIFEST_CACHE_TTL: Duration = Duration::from_secs(1);

/// The state every handler shares.
pub struct App<S> {
    pub store: S,
    pub config: crate::config::Config,
    pub metrics: Arc<Metrics>,
    token_digest: [u8; 32],
    manifests: RwLock<ManifestCache>,
}

/// Resolved manifests per product and channel; `generation` counts invalidations, so that a
/// lookup that raced with a change does not store what it read before the change.
#[derive(Default)]
struct ManifestCache {
    generation: u64,
    entries: HashMap<ProductName, HashMap<ChannelName, CachedManifest>>,
}

/// The newest non-yanked release of a channel, ready to send.
#[derive(Clone)]
pub(crate) struct ResolvedManifest {
    pub bytes: Bytes,
    pub etag: HeaderValue,
    pub signature: HeaderValue,
    pub version: HeaderValue,
}

#[derive(Clone)]
struct CachedManifest {
    at: Instant,
    value: ResolvedManifest,
}

impl<S: ReleaseStore> App<S> {
    pub fn new(store: S, config: crate::config::Config) -> Self {
        Self {
            store,
            token_digest: *Sha256::of(config.publish_token.as_bytes()).as_bytes(),
            config,
            metrics: Arc::new(Metrics::new()),
            manifests: RwLock::new(ManifestCache::default()),
        }
    }

    /// Checks `Authorization: Bearer <token>` in constant time (digests are compared, so the
    /// token's length does not leak either).
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing Authorization header; send Authorization: Bearer <PUBLISH_TOKEN>",
            ));
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be Bearer <PUBLISH_TOKEN>")
            })?;
        let digest = Sha256::of(given.as_bytes());
        if bool::from(digest.as_bytes().ct_eq(&self.token_digest)) {
            Ok(())
        } else {
            Err(ApiError::unauthorized("the publish token is wrong"))
        }
    }

    /// A configured channel, or 404 naming the configured ones.
    pub fn channel(&self, name: &str) -> Result<ChannelName, ApiError> {
        let channel = ChannelName::new(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if self.config.channels.contains(&channel) {
            Ok(channel)
        } else {
            Err(ApiError::not_found(format!(
                "channel {channel} is not configured on this server (configured: {})",
                self.channel_list()
            )))
        }
    }

    pub fn channel_list(&self) -> String {
        self.config
            .channels
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Forgets the resolved manifests of a product after a change.
    pub fn invalidate(&self, product: &ProductName) {
        if let Ok(mut cache) = self.manifests.write() {
            cache.generation += 1;
            cache.entries.remove(product);
        }
    }

    /// The newest non-yanked release of a channel: from the cache while it is fresh,
    /// otherwise read from the store and cached.
    pub(crate) async fn resolve_manifest(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> Result<ResolvedManifest, ApiError> {
        let (generation, cached) = self.cached(product, channel);
        if let Some(value) = cached {
            return Ok(value);
        }
        let value = self.read_newest(product, channel).await?;
        self.remember(generation, product, channel, &value);
        Ok(value)
    }

    /// The cache's generation, and its entry for the channel if still fresh.
    fn cached(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> (u64, Option<ResolvedManifest>) {
        let Ok(cache) = self.manifests.read() else {
            return (0, None);
        };
        let fresh = cache
            .entries
            .get(product)
            .and_then(|m| m.get(channel))
            .filter(|c| c.at.elapsed() < MANIFEST_CACHE_TTL)
            .map(|c| c.value.clone());
        (cache.generation, fresh)
    }

    /// Stores a resolved manifest unless the cache was invalidated since `generation`.
    fn remember(
        &self,
        generation: u64,
        product: &ProductName,
        channel: &ChannelName,
        value: &ResolvedManifest,
    ) {
        let Ok(mut cache) = self.manifests.write() else {
            return;
        };
        if cache.generation != generation {
            return;
        }
        cache.entries.entry(product.clone()).or_default().insert(
            channel.clone(),
            CachedManifest {
                at: Instant::now(),
                value: value.clone(),
            },
        );
    }

    /// Reads the newest non-yanked release of a channel from the store.
    async fn read_newest(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> Result<ResolvedManifest, ApiError> {
        let versions = self.store.versions(product, channel).await?;
        let Some(newest) = versions.iter().find(|v| !v.yanked) else {
            return Err(ApiError::not_found(if versions.is_empty() {
                format!("product {product} has no release on channel {channel}")
            } else {
                format!("every release of {product} on channel {channel} is yanked")
            }));
        };
        let release = self
            .store
            .release(&ReleaseKey {
                product: product.clone(),
                channel: channel.clone(),
                version: newest.version.clone(),
            })
            .await?;
        Ok(ResolvedManifest {
            etag: header_value(etag(&Sha256::of(&release.manifest_bytes)))?,
            signature: header_value(
                base64::engine::general_purpose::STANDARD.encode(&release.signature),
            )?,
            version: header_value(newest.version.to_string())?,
            bytes: release.manifest_bytes,
        })
    }
}

/// The strong ETag of content with this digest.
pub(crate) fn etag(sha: &Sha256) -> String {
    format!("\"{}\"", sha.to_hex())
}

/// A header value built from text the server composed; 500 if it cannot be one.
pub(crate) fn header_value(text: String) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&text)
        .map_err(|e| ApiError::internal(format!("cannot build a header: {e}")))
}
