//! The read-only endpoints other than artifact downloads: health, metrics, channels, the
//! newest manifest of a channel and the release list.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use qx_core::api::SIGNATURE_HEADER;
use serde::Serialize;

use super::none_match;
use crate::error::ApiError;
use crate::params::{Params, QueryParams};
use crate::state::App;
use crate::storage::{ReleaseKey, ReleaseStore, StoreError};

/// The header carrying the version of the manifest sent.
pub const VERSION_HEADER: &str = "x-qx-version";

#[derive(Serialize)]
pub struct Health {
    status: &'static str,
    version: &'static str,
}

/// `GET /health`.
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /metrics`: the Prometheus text exposition (the fleet's host gauges refreshed first).
pub async fn metrics_text<S: ReleaseStore>(State(app): State<Arc<App<S>>>) -> Response {
    let now = app.fleet.clock.now();
    app.metrics
        .refresh_fleet(&*app.fleet.store, app.liveness_rule(), now)
        .await;
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
pub struct Channels {
    channels: Vec<String>,
    products: BTreeMap<String, BTreeMap<String, String>>,
}

/// `GET /api/v1/channels`: the configured channels and what each offers for each product —
/// the `current` of its channel state, or without a state its newest non-yanked release.
pub async fn channels<S: ReleaseStore>(
    State(app): State<Arc<App<S>>>,
) -> Result<Json<Channels>, ApiError> {
    let mut products = BTreeMap::new();
    for product in app.store.products().await? {
        let mut latest = BTreeMap::new();
        for channel in &app.config.channels {
            if let Some(v) = app.offered_version(&product, channel).await? {
                latest.insert(channel.to_string(), v.to_string());
            }
        }
        products.insert(product.to_string(), latest);
    }
    Ok(Json(Channels {
        channels: app.config.channels.iter().map(|c| c.to_string()).collect(),
        products,
    }))
}

/// `GET /api/v1/{product}/manifest?channel=C`: the exact signed bytes of the release the
/// channel offers: its channel state's `current`, or without a state the newest non-yanked
/// release (docs/spec.md §8: agents that predate the channel state keep working).
pub async fn manifest<S: ReleaseStore>(
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
            header::HeaderName::from_static(SIGNATURE_HEADER),
            m.signature.clone(),
        ),
        (
            header::HeaderName::from_static(VERSION_HEADER),
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
pub struct ReleaseList {
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

/// `GET /api/v1/{product}/releases?channel=C`: every release of a channel, newest first.
pub async fn releases<S: ReleaseStore>(
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
            // Listed a moment ago, so a damaged directory (or a manifest cut short): skip it
            // but say so in the log; one damaged release must not hide the others.
            Err(e @ (StoreError::NotFound(_) | StoreError::Corrupt { .. })) => {
                tracing::warn!(release = %key, error = %e, "damaged release skipped in the release list");
                continue;
            }
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
