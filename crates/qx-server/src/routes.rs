//! The router: every route template of [`qx_core::api::server`] registered with its handlers,
//! the JSON fallbacks for unknown endpoints and methods, and the metrics layer.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{delete, get, patch, post, put};
use axum::Router;
use qx_core::api::server as api;

use crate::access_log;
use crate::error::ApiError;
use crate::fleet::api as fleet;
use crate::fleet::rollout::api as rollout;
use crate::fleet::{ui, validate};
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
    let access = Arc::new(app.config.access_log.clone());
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
        .merge(fleet_routes::<S>())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
        .layer(axum::middleware::from_fn_with_state(
            access,
            access_log::log,
        ))
        .with_state(app)
}

/// The fleet API and the dashboard (docs/spec.md §9): bodies up to [`validate::MAX_FLEET_BODY`], event
/// batches up to [`validate::MAX_EVENTS_BODY`].
fn fleet_routes<S: ReleaseStore>() -> Router<Arc<App<S>>> {
    let body = DefaultBodyLimit::max(validate::MAX_FLEET_BODY);
    Router::new()
        .route(
            api::ENROLLMENT_TOKENS,
            post(fleet::create_enrollment_token::<S>).layer(body),
        )
        .route(
            api::ENROLLMENT_TOKEN,
            delete(fleet::revoke_enrollment_token::<S>),
        )
        .route(api::ENROLL, post(fleet::enroll::<S>).layer(body))
        .route(api::HOSTS, get(fleet::list_hosts::<S>))
        .route(
            api::HOST,
            get(fleet::host::<S>)
                .merge(patch(fleet::patch_labels::<S>))
                .merge(delete(fleet::decommission::<S>))
                .layer(body),
        )
        .route(api::CHECKIN, post(fleet::check_in::<S>).layer(body))
        .route(
            api::HOST_EVENTS,
            post(fleet::events::<S>).layer(DefaultBodyLimit::max(validate::MAX_EVENTS_BODY)),
        )
        .route(api::WHOAMI, get(fleet::whoami::<S>))
        .route(
            api::TOKENS,
            get(fleet::list_tokens::<S>)
                .merge(post(fleet::create_token::<S>))
                .layer(body),
        )
        .route(api::TOKEN, delete(fleet::revoke_token::<S>))
        .route(api::FLEET_SUMMARY, get(ui::summary::<S>))
        .route(api::FLEET_EVENTS, get(ui::events::<S>))
        .route(api::UI, get(ui::index))
        .route(api::UI_COMMON_SCRIPT, get(ui::common_script))
        .route(api::UI_SCRIPT, get(ui::script))
        .route(api::UI_STYLE, get(ui::style))
        .merge(rollout_routes::<S>())
}

/// Staged rollouts and pins (docs/spec.md §10).
fn rollout_routes<S: ReleaseStore>() -> Router<Arc<App<S>>> {
    let body = DefaultBodyLimit::max(validate::MAX_FLEET_BODY);
    Router::new()
        .route(api::ROLLOUTS, get(rollout::list::<S>))
        .route(api::ROLLOUT, get(rollout::get::<S>))
        .route(api::ROLLOUT_PAUSE, post(rollout::pause::<S>))
        .route(api::ROLLOUT_RESUME, post(rollout::resume::<S>))
        .route(api::ROLLOUT_ABORT, post(rollout::abort::<S>))
        .route(api::ROLLOUT_PREVIEW, get(rollout::preview::<S>))
        .route(
            api::PINS,
            get(rollout::list_pins::<S>)
                .merge(post(rollout::create_pin::<S>))
                .layer(body),
        )
        .route(api::PIN, delete(rollout::delete_pin::<S>))
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
