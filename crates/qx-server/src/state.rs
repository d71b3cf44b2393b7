//! The state every handler shares: the store, the configuration, the metrics, the publish
//! token's digest and the cache of resolved manifests.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use bytes::Bytes;
use qx_core::fleet::{FleetChange, Scope};
use qx_core::{ChannelName, ProductName, Sha256, Version};
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::fleet::auth::{self, Need, Operator};
use crate::fleet::clock::Clock;
use crate::fleet::limit::RateLimit;
use crate::fleet::store::{FleetStore, LivenessRule};
use crate::metrics::Metrics;
use crate::storage::{ReleaseKey, ReleaseStore, StoreError, StoredChannel};

/// How long a resolved "newest release of a channel" is reused when nothing changed through
/// this process. Changes made by this server invalidate it at once; the lifetime only bounds
/// how late a change made behind its back (another server on shared storage, an operator)
/// is seen.
pub const MANIFEST_CACHE_TTL: Duration = Duration::from_secs(1);

/// How many fleet changes a slow dashboard stream may fall behind before it is told to
/// refresh everything (the changes only say what to refresh).
pub const CHANGE_BACKLOG: usize = 256;

/// The state every handler shares.
pub struct App<S> {
    pub store: S,
    pub config: crate::config::Config,
    pub metrics: Arc<Metrics>,
    /// The fleet view: its store, clock and overload limit.
    pub fleet: Fleet,
    /// The rollout engine (docs/spec.md §10).
    pub rollouts: Arc<crate::fleet::rollout::Rollouts>,
    token_digest: [u8; 32],
    manifests: RwLock<ManifestCache>,
}

/// The fleet view's share of the state (docs/spec.md §9).
pub struct Fleet {
    pub store: Arc<dyn FleetStore>,
    /// Every fleet time is read here (tests set it).
    pub clock: Arc<dyn Clock>,
    /// The overload limit of host requests.
    pub limit: RateLimit,
    /// Every check-in, event batch and decommission, for the dashboard's live stream.
    changes: broadcast::Sender<FleetChange>,
    /// Cancelled when the server begins to stop: the live streams end then, so the graceful
    /// shutdown does not wait for them.
    stopping: tokio_util::sync::CancellationToken,
}

impl Fleet {
    pub fn new(
        store: Arc<dyn FleetStore>,
        clock: Arc<dyn Clock>,
        config: &crate::config::FleetConfig,
    ) -> Self {
        Self {
            store,
            clock,
            limit: RateLimit::new(config.rate_limit, config.rate_burst),
            changes: broadcast::channel(CHANGE_BACKLOG).0,
            stopping: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Ends every live stream (the server is stopping).
    pub fn stop_streams(&self) {
        self.stopping.cancel();
    }

    /// Completes when the server begins to stop.
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.stopping.clone().cancelled_owned()
    }

    /// Tells the dashboards that `host` changed (`kind`: `checkin`, `events`,
    /// `decommission`); nobody listening is fine.
    pub fn notify(&self, kind: &str, host: &str) {
        let _ = self.changes.send(FleetChange {
            kind: kind.to_owned(),
            host: host.to_owned(),
        });
    }

    /// The changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FleetChange> {
        self.changes.subscribe()
    }
}

/// Resolved manifests per product and channel; `generation` counts invalidations, so that a
/// lookup that raced with a change does not store what it read before the change.
#[derive(Default)]
struct ManifestCache {
    generation: u64,
    entries: HashMap<ProductName, HashMap<ChannelName, CachedManifest>>,
}

/// The manifest a channel offers, ready to send.
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
    pub fn new(store: S, config: crate::config::Config, fleet: Fleet) -> Self {
        let metrics = Arc::new(Metrics::new());
        let rollouts = Arc::new(crate::fleet::rollout::Rollouts::new(
            fleet.store.clone(),
            fleet.clock.clone(),
            metrics.clone(),
            &config.fleet,
        ));
        Self {
            store,
            fleet,
            rollouts,
            token_digest: *Sha256::of(config.publish_token.as_bytes()).as_bytes(),
            config,
            metrics,
            manifests: RwLock::new(ManifestCache::default()),
        }
    }

    /// Checks an operator's bearer token for the release routes (publish, promote, yank,
    /// channel state): `PUBLISH_TOKEN` (the bootstrap admin token), or an operator token
    /// with one of `scopes`.
    pub async fn authorize(&self, headers: &HeaderMap, scopes: &[Scope]) -> Result<(), ApiError> {
        self.operator(headers, scopes, "PUBLISH_TOKEN")
            .await
            .map(|_| ())
    }

    /// Checks an operator's bearer token (see [`crate::fleet::auth::operator`]); `kind`
    /// names the token in the 401 messages.
    pub async fn operator(
        &self,
        headers: &HeaderMap,
        scopes: &[Scope],
        kind: &str,
    ) -> Result<Operator, ApiError> {
        let need = Need { scopes, kind };
        auth::operator(&*self.fleet.store, &self.token_digest, headers, need).await
    }

    /// How liveness is judged, from the settings.
    pub fn liveness_rule(&self) -> LivenessRule {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        LivenessRule {
            grace: ms(self.config.fleet.checkin_grace),
            offline_after: ms(self.config.fleet.offline_after),
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

    /// Forgets the resolved manifests and cached channel plans of a product after a change.
    pub fn invalidate(&self, product: &ProductName) {
        self.rollouts.forget_plans(product.as_str());
        if let Ok(mut cache) = self.manifests.write() {
            cache.generation += 1;
            cache.entries.remove(product);
        }
    }

    /// The manifest a channel offers (see [`Self::read_offered`]): from the cache while it is
    /// fresh, otherwise read from the store and cached.
    pub(crate) async fn resolve_manifest(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> Result<ResolvedManifest, ApiError> {
        let (generation, cached) = self.cached(product, channel);
        if let Some(value) = cached {
            return Ok(value);
        }
        let value = self.read_offered(product, channel).await?;
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

    /// What the channel offers (docs/spec.md §8): the `current` release of its channel state
    /// when it has one, otherwise (no state yet) its newest non-yanked release.
    pub(crate) async fn offered_version(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> Result<Option<Version>, ApiError> {
        let stored = self.store.channel_state(product, channel).await?;
        self.offered_version_of(product, channel, stored.as_ref())
            .await
    }

    /// Reads the manifest a channel offers from the store: its state's `current` (checked
    /// against the state's `manifest_sha256`), or without a state the newest non-yanked
    /// release.
    async fn read_offered(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> Result<ResolvedManifest, ApiError> {
        let stored = self.store.channel_state(product, channel).await?;
        let release = match &stored {
            Some(s) => self.current_of_state(product, channel, s).await?,
            None => {
                match self.newest_intact(product, channel).await? {
                    Some(r) => r,
                    None => {
                        let versions = self.store.versions(product, channel).await?;
                        return Err(ApiError::not_found(if versions.is_empty() {
                            format!("product {product} has no release on channel {channel}")
                        } else {
                            format!("every release of {product} on channel {channel} is yanked or damaged")
                        }));
                    }
                }
            }
        };
        let key = &release.key;
        let sha = Sha256::of(&release.manifest_bytes);
        if let Some(entry) = stored.as_ref().and_then(|s| s.state.current_release()) {
            if entry.manifest_sha256 != sha {
                return Err(ApiError::internal(format!(
                    "the manifest held for {key} has sha256 {}, not the {} its channel state lists",
                    sha.short(),
                    entry.manifest_sha256.short()
                )));
            }
        }
        Ok(ResolvedManifest {
            etag: header_value(etag(&sha))?,
            signature: header_value(
                base64::engine::general_purpose::STANDARD.encode(&release.signature),
            )?,
            version: header_value(key.version.to_string())?,
            bytes: release.manifest_bytes,
        })
    }

    /// The release a channel state names as `current`; 500 if this server does not hold it.
    async fn current_of_state(
        &self,
        product: &ProductName,
        channel: &ChannelName,
        state: &StoredChannel,
    ) -> Result<crate::storage::StoredRelease, ApiError> {
        let key = ReleaseKey {
            product: product.clone(),
            channel: channel.clone(),
            version: state.state.current.clone(),
        };
        match self.store.release(&key).await {
            Err(StoreError::NotFound(_)) => Err(ApiError::internal(format!(
                "the channel state names {key} as current, but this server does not hold it; put a channel state naming a held release"
            ))),
            other => Ok(other?),
        }
    }

    /// [`Self::offered_version`] with the channel state already read.
    async fn offered_version_of(
        &self,
        product: &ProductName,
        channel: &ChannelName,
        stored: Option<&StoredChannel>,
    ) -> Result<Option<Version>, ApiError> {
        match stored {
            Some(s) => Ok(Some(s.state.current.clone())),
            None => Ok(self
                .newest_intact(product, channel)
                .await?
                .map(|r| r.key.version)),
        }
    }

    /// The newest non-yanked release of a channel whose manifest can be read and parsed; a
    /// damaged one (a `manifest.json` cut short, a missing signature) is skipped and logged,
    /// so that it does not hide the intact releases below it.
    async fn newest_intact(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> Result<Option<crate::storage::StoredRelease>, ApiError> {
        for v in self.store.versions(product, channel).await? {
            if v.yanked {
                continue;
            }
            let key = ReleaseKey {
                product: product.clone(),
                channel: channel.clone(),
                version: v.version,
            };
            match self.store.release(&key).await {
                Ok(r) => return Ok(Some(r)),
                Err(e @ (StoreError::NotFound(_) | StoreError::Corrupt { .. })) => {
                    tracing::warn!(release = %key, error = %e, "damaged release skipped; remove or repair it");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
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
