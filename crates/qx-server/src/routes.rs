//! The HTTP API of SPEC §3: the router, its shared state, and the read-only endpoints.
//! Publish, promote and yank are in [`crate::publish`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequestParts, Query, RawPathParams, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use qx_core::{
    ArtifactName, ChannelName, ProductName, Sha256, Version, MANIFEST_FILE, SIGNATURE_FILE,
};
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::{self, Metrics};
use crate::range::{self, RangeError};
use crate::storage::{ReleaseKey, ReleaseStore, StoreError};

/// How long a resolved "newest release of a channel" is reused when nothing changed through
/// this process. Changes made by this server invalidate it at once; the lifetime only bounds
/// how late a change made behind its back (another server on shared storage, an operator)
/// is seen.
pub const MANIFEST_CACHE_TTL: Duration = Duration::from_secs(1);

/// The state every handler shares.
pub struct App<S> {
    pub store: S,
    pub config: Config,
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
struct ResolvedManifest {
    bytes: Bytes,
    etag: HeaderValue,
    signature: HeaderValue,
    version: HeaderValue,
}

#[derive(Clone)]
struct CachedManifest {
    at: Instant,
    value: ResolvedManifest,
}

impl<S: ReleaseStore> App<S> {
    pub fn new(store: S, config: Config) -> Self {
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

    async fn resolve_manifest(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> Result<ResolvedManifest, ApiError> {
        let mut generation = 0;
        if let Ok(cache) = self.manifests.read() {
            generation = cache.generation;
            if let Some(c) = cache.entries.get(product).and_then(|m| m.get(channel)) {
                if c.at.elapsed() < MANIFEST_CACHE_TTL {
                    return Ok(c.value.clone());
                }
            }
        }
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
        let header = |s: String| {
            HeaderValue::from_str(&s)
                .map_err(|e| ApiError::internal(format!("cannot build a header: {e}")))
        };
        let value = ResolvedManifest {
            etag: header(etag(&Sha256::of(&release.manifest_bytes)))?,
            signature: header(
                base64::engine::general_purpose::STANDARD.encode(&release.signature),
            )?,
            version: header(newest.version.to_string())?,
            bytes: release.manifest_bytes,
        };
        if let Ok(mut cache) = self.manifests.write() {
            if cache.generation != generation {
                return Ok(value);
            }
            cache.entries.entry(product.clone()).or_default().insert(
                channel.clone(),
                CachedManifest {
                    at: Instant::now(),
                    value: value.clone(),
                },
            );
        }
        Ok(value)
    }
}

pub(crate) fn etag(sha: &Sha256) -> String {
    format!("\"{}\"", sha.to_hex())
}

/// Builds the router over a store.
pub fn router<S: ReleaseStore>(app: Arc<App<S>>) -> Router {
    let max_upload = usize::try_from(app.config.max_upload_bytes).unwrap_or(usize::MAX);
    let metrics = app.metrics.clone();
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text::<S>))
        .route("/api/v1/channels", get(channels::<S>))
        .route("/api/v1/{product}/manifest", get(manifest::<S>))
        .route("/api/v1/{product}/releases", get(releases::<S>))
        .route(
            "/api/v1/{product}/releases/{version}/{artifact}",
            get(artifact::<S>),
        )
        .route(
            "/api/v1/{product}/publish",
            post(crate::publish::publish::<S>).layer(DefaultBodyLimit::max(max_upload)),
        )
        .route(
            "/api/v1/{product}/releases/{version}/promote",
            post(crate::publish::promote::<S>).layer(DefaultBodyLimit::max(4 << 20)),
        )
        .route(
            "/api/v1/{product}/releases/{version}",
            delete(crate::publish::yank::<S>),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see the API table in SPEC §3")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this method is not allowed on this endpoint",
    )
}

/// URL path parameters (percent-decoded), with a JSON 400 when they cannot be decoded.
pub struct Params(RawPathParams);

impl<St: Send + Sync> FromRequestParts<St> for Params {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, ApiError> {
        RawPathParams::from_request_parts(parts, state)
            .await
            .map(Params)
            .map_err(|e| ApiError::bad_request(format!("the URL path is invalid: {e}")))
    }
}

impl Params {
    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v)
    }
    /// The `{product}` segment, checked against the name rule (400 if it breaks it).
    pub fn product(&self) -> Result<ProductName, ApiError> {
        ProductName::new(self.get("product")).map_err(|e| ApiError::bad_request(e.to_string()))
    }
    /// The `{version}` segment (400 if it is not SemVer).
    pub fn version(&self) -> Result<Version, ApiError> {
        Version::parse(self.get("version")).map_err(|e| ApiError::bad_request(e.to_string()))
    }
    fn artifact(&self) -> Result<ArtifactName, ApiError> {
        ArtifactName::new(self.get("artifact")).map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

/// URL query parameters, with a JSON 400 when they cannot be decoded.
pub struct QueryParams(pub HashMap<String, String>);

impl<St: Send + Sync> FromRequestParts<St> for QueryParams {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, ApiError> {
        if parts.uri.query().is_none_or(str::is_empty) {
            return Ok(QueryParams(HashMap::new()));
        }
        Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(m)| QueryParams(m))
            .map_err(|e| ApiError::bad_request(format!("the URL query is invalid: {e}")))
    }
}

impl QueryParams {
    /// `?channel=` (default `stable`), which must be configured.
    pub fn channel<S: ReleaseStore>(&self, app: &App<S>) -> Result<ChannelName, ApiError> {
        app.channel(self.0.get("channel").map_or("stable", String::as_str))
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

async fn metrics_text<S: ReleaseStore>(State(app): State<Arc<App<S>>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

#[derive(Serialize)]
struct Channels {
    channels: Vec<String>,
    products: BTreeMap<String, BTreeMap<String, String>>,
}

async fn channels<S: ReleaseStore>(
    State(app): State<Arc<App<S>>>,
) -> Result<Json<Channels>, ApiError> {
    let mut products = BTreeMap::new();
    for product in app.store.products().await? {
        let mut latest = BTreeMap::new();
        for channel in &app.config.channels {
            let versions = app.store.versions(&product, channel).await?;
            if let Some(v) = versions.iter().find(|v| !v.yanked) {
                latest.insert(channel.to_string(), v.version.to_string());
            }
        }
        products.insert(product.to_string(), latest);
    }
    Ok(Json(Channels {
        channels: app.config.channels.iter().map(|c| c.to_string()).collect(),
        products,
    }))
}

/// True when an `If-None-Match` header matches `etag` (weak comparison, RFC 9110 §13.1.2).
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

async fn manifest<S: ReleaseStore>(
    State(app): State<Arc<App<S>>>,
    params: Params,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let product = params.product()?;
    let channel = query.channel(&app)?;
    let m = app.resolve_manifest(&product, &channel).await?;
    let etag_str = m.etag.to_str().unwrap_or_default();
    let common = [
        (header::ETAG, m.etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::HeaderName::from_static("x-qx-signature"),
            m.signature.clone(),
        ),
        (
            header::HeaderName::from_static("x-qx-version"),
            m.version.clone(),
        ),
    ];
    if none_match(&headers, etag_str) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    app.metrics.bytes_served.inc_by(m.bytes.len() as u64);
    Ok((
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        m.bytes,
    )
        .into_response())
}

#[derive(Serialize)]
struct ReleaseList {
    product: String,
    channel: String,
    releases: Vec<ReleaseEntry>,
}

#[derive(Serialize)]
struct ReleaseEntry {
    version: String,
    release_date: String,
    update_type: qx_core::UpdateType,
    yanked: bool,
    artifacts: Vec<String>,
}

async fn releases<S: ReleaseStore>(
    State(app): State<Arc<App<S>>>,
    params: Params,
    query: QueryParams,
) -> Result<Json<ReleaseList>, ApiError> {
    let product = params.product()?;
    let channel = query.channel(&app)?;
    let versions = app.store.versions(&product, &channel).await?;
    if versions.is_empty() && !app.store.products().await?.contains(&product) {
        return Err(ApiError::not_found(format!(
            "product {product} has no releases on this server"
        )));
    }
    let mut out = Vec::with_capacity(versions.len());
    for v in versions {
        let key = ReleaseKey {
            product: product.clone(),
            channel: channel.clone(),
            version: v.version,
        };
        let r = match app.store.release(&key).await {
            Ok(r) => r,
            // Listed a moment ago, so a damaged directory: skip it but say so in the log.
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        out.push(ReleaseEntry {
            version: key.version.to_string(),
            release_date: r.manifest.release_date.to_string(),
            update_type: r.manifest.update_type,
            yanked: r.yanked,
            artifacts: r
                .manifest
                .artifacts()
                .into_iter()
                .map(|a| a.artifact.to_string())
                .collect(),
        });
    }
    Ok(Json(ReleaseList {
        product: product.to_string(),
        channel: channel.to_string(),
        releases: out,
    }))
}

/// GET/HEAD of one file of a release: an artifact named in its manifest, the manifest itself
/// or its signature. Artifacts of a yanked release stay downloadable, so that hosts in the
/// middle of a download can finish; only the manifest endpoint stops offering the release.
async fn artifact<S: ReleaseStore>(
    State(app): State<Arc<App<S>>>,
    method: Method,
    params: Params,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let product = params.product()?;
    let version = params.version()?;
    let name = params.artifact()?;
    let channel = query.channel(&app)?;
    let key = ReleaseKey {
        product,
        channel,
        version,
    };
    let release = app.store.release(&key).await?;
    // What to send: in-memory bytes (manifest, signature) or a stored file.
    let (sha, len, memory, content_type) = match name.as_str() {
        MANIFEST_FILE => (
            Sha256::of(&release.manifest_bytes),
            release.manifest_bytes.len() as u64,
            Some(release.manifest_bytes.clone()),
            "application/json",
        ),
        SIGNATURE_FILE => (
            Sha256::of(&release.signature),
            release.signature.len() as u64,
            Some(release.signature.clone()),
            "text/plain; charset=utf-8",
        ),
        _ => {
            let a = release.manifest.artifact(name.as_str()).ok_or_else(|| {
                ApiError::not_found(format!(
                    "artifact {name} is not part of release {key}; its manifest lists: {}",
                    release
                        .manifest
                        .artifacts()
                        .iter()
                        .map(|a| a.artifact.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            (a.sha256, a.size_bytes, None, "application/octet-stream")
        }
    };
    let etag_str = etag(&sha);
    let etag_value = HeaderValue::from_str(&etag_str)
        .map_err(|e| ApiError::internal(format!("cannot build a header: {e}")))?;
    let mut res_headers = HeaderMap::new();
    res_headers.insert(header::ETAG, etag_value);
    res_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    res_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));

    if none_match(&headers, &etag_str) {
        return Ok((StatusCode::NOT_MODIFIED, res_headers).into_response());
    }
    // If-Range: the range applies only when the client's validator is our strong ETag.
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let range_applies = match headers.get(header::IF_RANGE) {
        None => true,
        Some(v) => v.to_str().is_ok_and(|v| v.trim() == etag_str),
    };
    let range = match range_header.filter(|_| range_applies) {
        None => None,
        Some(h) => match range::resolve(h, len) {
            Ok(r) => r,
            Err(e) => {
                let mut err = ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, e.to_string())
                    .with_header(
                        header::CONTENT_RANGE,
                        HeaderValue::from_str(&format!("bytes */{len}"))
                            .unwrap_or(HeaderValue::from_static("bytes */0")),
                    );
                if let RangeError::Multiple(_) = e {
                    err = err.with_detail("multipart/byteranges responses are not served");
                }
                return Err(err);
            }
        },
    };
    let (status, start, count) = match range {
        Some(r) => {
            res_headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {}-{}/{len}", r.start, r.end))
                    .map_err(|e| ApiError::internal(format!("cannot build a header: {e}")))?,
            );
            (StatusCode::PARTIAL_CONTENT, r.start, r.len())
        }
        None => (StatusCode::OK, 0, len),
    };
    res_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    res_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));

    if method == Method::HEAD {
        return Ok((status, res_headers).into_response());
    }
    let body = match memory {
        Some(bytes) => {
            app.metrics.bytes_served.inc_by(count);
            let end = usize::try_from(start + count).unwrap_or(bytes.len());
            let start = usize::try_from(start).unwrap_or(0);
            axum::body::Body::from(bytes.slice(start..end))
        }
        None => {
            let stream = app
                .store
                .read_range(&key, name.as_str(), start, count)
                .await?;
            let metrics = app.metrics.clone();
            let counted = stream.inspect(move |chunk| match chunk {
                Ok(b) => {
                    metrics.bytes_served.inc_by(b.len() as u64);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "artifact stream failed");
                    metrics.error("stream");
                }
            });
            axum::body::Body::from_stream(counted)
        }
    };
    Ok((status, res_headers, body).into_response())
}
