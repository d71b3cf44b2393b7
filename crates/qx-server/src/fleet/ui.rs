//! The dashboard (docs/spec.md §9, docs/fleet-api.md): the page at `/ui` (plain HTML, CSS
//! and JavaScript embedded in the binary; no token needed to load it, the page asks for an
//! operator token and keeps it in the browser tab's session storage), the overview counts it
//! shows (`GET /api/v1/fleet/summary`) and the stream of fleet changes it follows
//! (`GET /api/v1/fleet/events`, server-sent events). Both API endpoints need scope `read`.
//! The helpers the page shares with the host's Updates page (`qx_core::api::COMMON_JS`) are
//! served at `/ui/common.js`, before its own `app.js`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use qx_core::api::COMMON_JS;
use qx_core::fleet::{
    ChannelCount, FailureCount, FleetChange, FleetSummary, LivenessCount, Scope, StateCount,
    VersionCount,
};
use tokio::sync::broadcast::error::RecvError;

use super::clock::rfc3339;
use super::store::{FleetCounts, Millis};
use crate::error::ApiError;
use crate::state::App;
use crate::storage::ReleaseStore;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE_CSS: &str = include_str!("../../web/style.css");

/// Scripts and styles come only from this origin; no inline code, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// "Recent" failures in the overview: those received in the last 24 hours.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// A comment line this often keeps proxies from closing an idle change stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

const READ: &[Scope] = &[Scope::Read];
const OPERATOR: &str = "operator token";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui`: the page.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/common.js`: the script both pages share (`qx_core::api::COMMON_JS`).
pub async fn common_script() -> Response {
    asset("text/javascript; charset=utf-8", COMMON_JS)
}

/// `GET /ui/app.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/style.css`.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// `GET /api/v1/fleet/summary` (read): the overview, counted by the store.
pub async fn summary<S: ReleaseStore>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.operator(&headers, READ, OPERATOR).await?;
    let now = app.fleet.clock.now();
    let window = i64::try_from(FAILURE_WINDOW.as_millis()).unwrap_or(i64::MAX);
    let since = now.saturating_sub(window);
    let counts = app
        .fleet
        .store
        .counts(app.liveness_rule(), now, since)
        .await?;
    Ok(Json(fleet_summary(counts, now, since)).into_response())
}

/// The store's counts in the wire form.
pub fn fleet_summary(c: FleetCounts, now: Millis, since: Millis) -> FleetSummary {
    FleetSummary {
        server_time: rfc3339(now),
        failures_since: rfc3339(since),
        by_version: c
            .by_version
            .into_iter()
            .map(
                |((product, channel, component, version), hosts)| VersionCount {
                    product,
                    channel,
                    component,
                    version,
                    hosts,
                },
            )
            .collect(),
        by_channel: c
            .by_channel
            .into_iter()
            .map(|((product, channel), hosts)| ChannelCount {
                product,
                channel,
                hosts,
            })
            .collect(),
        by_state: c
            .by_state
            .into_iter()
            .map(|((product, state), hosts)| StateCount {
                product,
                state,
                hosts,
            })
            .collect(),
        by_liveness: c
            .by_liveness
            .into_iter()
            .map(|(liveness, hosts)| LivenessCount { liveness, hosts })
            .collect(),
        recent_failures: c
            .recent_failures
            .into_iter()
            .map(|((kind, message), count)| FailureCount {
                kind,
                message,
                count,
            })
            .collect(),
    }
}

/// `GET /api/v1/fleet/events` (read): server-sent events. A `ready` event at once, then one
/// `change` event ([`FleetChange`]) per check-in, event batch and decommission, in order. A
/// stream that falls more than [`crate::state::CHANGE_BACKLOG`] behind gets one change of
/// kind `resync` (refresh everything) and goes on from the present. The stream ends when the
/// server begins to stop.
pub async fn events<S: ReleaseStore>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    app.operator(&headers, READ, OPERATOR).await?;
    let rx = app.fleet.subscribe();
    let stream = stream::unfold((rx, true), |(mut rx, first)| async move {
        if first {
            return Some((Ok(Event::default().event("ready").data("{}")), (rx, false)));
        }
        let change = match rx.recv().await {
            Ok(c) => c,
            Err(RecvError::Lagged(_)) => FleetChange {
                kind: "resync".to_owned(),
                host: String::new(),
            },
            Err(RecvError::Closed) => return None,
        };
        let event = Event::default()
            .event("change")
            .json_data(&change)
            .unwrap_or_else(|e| Event::default().event("resync").data(e.to_string()));
        Some((Ok(event), (rx, false)))
    });
    let stream = stream.take_until(app.fleet.stopping());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

#[cfg(test)]
mod tests {
    use super::*;

    use qx_core::api::server as api;

    #[test]
    fn page_keeps_the_rules_both_pages_keep() {
        qx_testkit::page::assert_page_rules(&qx_testkit::page::Page {
            html: INDEX_HTML,
            common_js: COMMON_JS,
            // Relative to the page at /ui, so it also works under a proxy's base path.
            common_src: api::UI_COMMON_SCRIPT.trim_start_matches('/'),
            app_js: APP_JS,
            app_src: api::UI_SCRIPT.trim_start_matches('/'),
            style_href: api::UI_STYLE.trim_start_matches('/'),
        });
    }
}
