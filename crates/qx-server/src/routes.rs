//! The router: every route template of [`qx_core::api::server`] registered with its handlers,
//! the JSON fallbacks for unknown endpoints and methods, and the metrics layer.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::Router;
use qx_core::api::server as api;

use crate::error::ApiError;
use crate::handlers::{artifact, channel, read};
use crate::metrics;
use crate::publish;
use crate::state::App;
use crate::storage::ReleaseStore;

/// The largest promote body (a manifest and its signature).
const MAX_PROMOTE_BYTES: usize = 4 << 20;

/// The message of the 404 answered for a path that matches no route; tests tell the
/// fallback from a handler's 404 by it.
pub const NO_SUCH_ENDPOINT: &str = "no such endpoint";

/// Builds the router over a store.
pub fn router<S: ReleaseStore>(app: Arc<App<S>>) -> Router {
    let max_upload = usize::try_from(app.config.max_upload_bytes).unwrap_or(usize::MAX);
    let metrics = app.metrics.clone();
    Router::new()
        .route(api::HEALTH, get(read::health))
        .route(api::METRICS, get(read::metrics_text::<S>))
        .route(api::CHANNELS, get(read::channels::<S>))
        .route(api::MANIFEST, get(read::manifest::<S>))
        .route(api::RELEASES, get(read::releases::<S>))
        .route(api::ARTIFACT, get(artifact::artifact::<S>))
        .route(
            api::PUBLISH,
            post(publish::publish::<S>).layer(DefaultBodyLimit::max(max_upload)),
        )
        .route(
            api::PROMOTE,
            post(publish::promote::<S>).layer(DefaultBodyLimit::max(MAX_PROMOTE_BYTES)),
        )
        .route(api::RELEASE, delete(publish::yank::<S>))
        .route(
            api::CHANNEL,
            get(channel::get_state::<S>)
                .merge(put(channel::put_state::<S>))
                .layer(DefaultBodyLimit::max(channel::MAX_CHANNEL_BYTES)),
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
    ApiError::not_found(NO_SUCH_ENDPOINT).with_detail(format!(
        "see GET {} for the channels; the endpoints are {}",
        api::CHANNELS,
        api::ROUTES.join(", ")
    ))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this method is not allowed on this endpoint",
    )
}
