//! The local HTTPS API of the daemon (docs/spec.md §4 "Local API"; reference: docs/host-api.md).
//! The routes are `qx_core::api::host`'s.
//!
//! | route | |
//! |---|---|
//! | `GET /api/v1/updates/check` | fetch + verify the manifest → `CheckReport` |
//! | `POST /api/v1/updates/apply` | optional `{"components": [..], "allow_downgrade": "..", "version": ".."}`; a JSON object or empty; the body is checked against the release it would install first (400 for a component not in it, an `allow_downgrade` not naming the offered version, a `version` not installable); 202 `{"operation_id"}` at once; 409 while an apply runs |
//! | `GET /api/v1/updates/status` | `StatusSnapshot`: state, operation id, installed versions, history |
//! | `GET /api/v1/updates/events` | server-sent events, one `status` event (a `StatusSnapshot`) per change |
//! | `GET /api/v1/updates/metrics` | the agent's metrics, Prometheus text format ([`crate::metrics`]) |
//!
//! Every `/api/` request needs `Authorization: Bearer <token>` (compared in constant time);
//! there is no token in URLs, also not for the event stream: the page reads it with `fetch`,
//! which can send the header. Errors are JSON `{"error", "details", "code"}`. The page's
//! static files (see [`crate::web`]) need no token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use qx_core::api::host;
use qx_core::listener::{BodyTooSlow, ConnectionLimits, Limiter};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::daemon::tls::ApiToken;
use crate::daemon::{RunError, Runner};
use crate::{AgentError, ApplyOptions};

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<StateInner>,
}

struct StateInner {
    runner: Runner,
    token: ApiToken,
    shutdown: watch::Receiver<bool>,
    /// The connection limits (`updates.api.*`) `serve` applies; the event stream's keep-alive
    /// comes more often than the idle timeout.
    limits: ConnectionLimits,
}

impl ApiState {
    pub fn new(runner: Runner, token: ApiToken) -> ApiState {
        // A receiver that never turns true unless `serve` replaces it.
        let (_tx, rx) = watch::channel(false);
        ApiState {
            inner: Arc::new(StateInner {
                runner,
                token,
                shutdown: rx,
                limits: ConnectionLimits::default(),
            }),
        }
    }

    /// The same state serving under `limits` (`updates.api.*`).
    pub fn with_limits(self, limits: ConnectionLimits) -> ApiState {
        ApiState {
            inner: Arc::new(StateInner {
                runner: self.inner.runner.clone(),
                token: self.inner.token.clone(),
                shutdown: self.inner.shutdown.clone(),
                limits,
            }),
        }
    }

    fn with_shutdown(self, shutdown: watch::Receiver<bool>) -> ApiState {
        ApiState {
            inner: Arc::new(StateInner {
                runner: self.inner.runner.clone(),
                token: self.inner.token.clone(),
                shutdown,
                limits: self.inner.limits,
            }),
        }
    }

    /// The event stream's keep-alive interval: 15 s, or half the idle timeout when that is
    /// shorter, so an idle stream is never closed as an idle connection.
    fn keep_alive_interval(&self) -> Duration {
        Duration::from_secs(15).min(self.inner.limits.idle_timeout / 2)
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub details: Vec<String>,
    /// The `qx-update` exit code of the same failure (see `qx-update --help`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
}

/// An error answer: status + JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>, details: Vec<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: error.into(),
                details,
                code: None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"qx-update\""),
            );
        }
        response
    }
}

/// The HTTP status for an agent error: the caller's mistake → 4xx, the update server or its
/// release → 502, the host → 500/507.
pub fn agent_error_status(e: &AgentError) -> StatusCode {
    match e {
        AgentError::Busy { .. } => StatusCode::CONFLICT,
        AgentError::DowngradeMismatch { .. }
        | AgentError::UnknownComponent { .. }
        | AgentError::NotInstallable { .. }
        | AgentError::Bundle(_) => StatusCode::BAD_REQUEST,
        AgentError::NoRelease { .. } => StatusCode::NOT_FOUND,
        AgentError::Downgrade { .. }
        | AgentError::BelowMinVersion { .. }
        | AgentError::UnmetRequirement { .. } => StatusCode::CONFLICT,
        AgentError::NoSpace { .. } | AgentError::OutOfSpace { .. } => {
            StatusCode::INSUFFICIENT_STORAGE
        }
        AgentError::Fetch { .. }
        | AgentError::NotUpdateServer { .. }
        | AgentError::Download(_)
        | AgentError::SignatureMissing { .. }
        | AgentError::SignatureInvalid { .. }
        | AgentError::UntrustedKey { .. }
        | AgentError::ManifestInvalid(_)
        | AgentError::Expired { .. }
        | AgentError::WrongProduct { .. }
        | AgentError::WrongChannel { .. }
        | AgentError::Replay { .. }
        | AgentError::ChannelInvalid { .. }
        | AgentError::StateReplayed { .. }
        | AgentError::StateExpired { .. }
        | AgentError::ManifestMismatch { .. }
        | AgentError::StateWithdrawn { .. }
        | AgentError::RolloutTooEarly(_)
        | AgentError::OfferRefused { .. }
        | AgentError::UnsafeArchive(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> ApiError {
        let status = match &e {
            RunError::Busy => StatusCode::CONFLICT,
            RunError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            RunError::Agent(a) => agent_error_status(a),
            RunError::Task { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut details = Vec::new();
        let mut source = std::error::Error::source(&e);
        let top = match &e {
            RunError::Agent(a) => a.explained(crate::error::Surface::Api),
            other => other.to_string(),
        };
        while let Some(s) = source {
            let text = s.to_string();
            if !top.contains(&text) && !details.contains(&text) {
                details.push(text);
            }
            source = s.source();
        }
        let code = match &e {
            RunError::Busy => Some(
                AgentError::Busy {
                    lock: std::path::PathBuf::new(),
                }
                .exit_code(),
            ),
            RunError::Agent(a) => Some(a.exit_code()),
            _ => None,
        };
        ApiError {
            status,
            body: ErrorBody {
                error: top,
                details,
                code,
            },
        }
    }
}

impl ApiError {
    /// Like `From<RunError>`, with a summary a person can act on when the update server could
    /// not be reached (the full error stays in `details`).
    fn from_run(e: RunError, config: &crate::Config) -> ApiError {
        let unreachable = match &e {
            RunError::Agent(AgentError::Fetch { .. } | AgentError::NotUpdateServer { .. }) => {
                Some("could not be reached")
            }
            RunError::Agent(AgentError::Download(_)) => Some("could not deliver the release"),
            _ => None,
        };
        let mut api = ApiError::from(e);
        if let Some(what) = unreachable {
            let full = std::mem::replace(
                &mut api.body.error,
                format!(
                    "the update server at {} {what}",
                    crate::download::redact_credentials(&config.server_url)
                ),
            );
            api.body.details.insert(0, full);
            api.body.details.push(format!(
                "check updates.server_url in {} and that this host can reach the server; the agent retries at the next check",
                config.source.display()
            ));
        }
        api
    }
}

/// The body of `POST /api/v1/updates/apply` (all optional; an empty body applies everything).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// Apply only these components (and nothing else of the release).
    #[serde(default)]
    pub components: Option<Vec<String>>,
    /// Accept a downgrade to exactly this version.
    #[serde(default)]
    pub allow_downgrade: Option<String>,
    /// Install this release of the signed channel state's `releases` (docs/spec.md §8).
    #[serde(default)]
    pub version: Option<String>,
}

/// The answer of `POST /api/v1/updates/apply`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyAccepted {
    pub operation_id: Option<String>,
    /// Where to follow it.
    pub status_url: String,
    pub events_url: String,
}

async fn check(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let runner = &state.inner.runner;
    let report = runner
        .check()
        .await
        .map_err(|e| ApiError::from_run(e, runner.agent().config()))?;
    Ok(Json(report).into_response())
}

async fn status(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let snapshot = state.inner.runner.status().await?;
    Ok(Json(snapshot).into_response())
}

async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let snapshot = state.inner.runner.status().await?;
    Ok((
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(&snapshot),
    )
        .into_response())
}

/// The largest request body the API reads (an apply body is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Up to this much of an oversized body is read and dropped before the 413, so that a client
/// still sending it gets the answer rather than a reset connection; beyond it the connection
/// is closed after the answer.
const DRAIN_BYTES: usize = 1024 * 1024;

async fn apply(State(state): State<ApiState>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(body).await?;
    let request = parse_apply(&body)?;
    validate_apply(&request)?;
    let opts = ApplyOptions {
        components: request.components,
        allow_downgrade: request.allow_downgrade,
        version: request.version,
        ..ApplyOptions::default()
    };
    let runner = &state.inner.runner;
    if opts.components.is_some() || opts.allow_downgrade.is_some() || opts.version.is_some() {
        check_against_release(runner, &opts).await?;
    }
    let started = runner
        .start_apply(opts)
        .await
        .map_err(|e| ApiError::from_run(e, runner.agent().config()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ApplyAccepted {
            operation_id: started.operation_id,
            status_url: host::STATUS.into(),
            events_url: host::EVENTS.into(),
        }),
    )
        .into_response())
}

/// The request body, at most [`MAX_BODY_BYTES`]: more is a JSON 413 (on HTTP/1.1 and HTTP/2
/// alike), a body cut off a 400.
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large",
            vec![format!(
                "the API reads at most {MAX_BODY_BYTES} bytes; an apply body is {{\"components\": [...], \"allow_downgrade\": ..., \"version\": ...}}"
            )],
        )
    };
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if let Some(slow) = BodyTooSlow::find(&e) {
                return ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body arrived too slowly",
                    vec![slow.to_string()],
                );
            }
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
                vec![e.to_string()],
            )
        })?;
        seen = seen.saturating_add(chunk.len());
        if seen <= MAX_BODY_BYTES {
            kept.extend_from_slice(&chunk);
        } else if seen > DRAIN_BYTES {
            break;
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(Bytes::from(kept))
}

/// The apply body: empty, or a JSON object (serde would also take an array for the struct,
/// `[]` or `[["name"]]`, which must not start an apply).
fn parse_apply(body: &[u8]) -> Result<ApplyRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ApplyRequest::default());
    }
    let bad = |e: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "the request body is not valid JSON for an apply",
            vec![
                e,
                "expected an empty body or {\"components\": [\"name\", ...], \"allow_downgrade\": \"version\", \"version\": \"version\"}".into(),
            ],
        )
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the apply body must be a JSON object (or empty)",
            vec![
                format!("got {}", json_kind(&value)),
                "send {} to apply everything, or {\"components\": [\"name\"]} for some components"
                    .into(),
            ],
        ));
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// What can be told from the body alone: component names, and versions that are versions.
fn validate_apply(request: &ApplyRequest) -> Result<(), ApiError> {
    if let Some(components) = &request.components {
        if components.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "\"components\" is empty",
                vec!["leave it out to apply every changed component".into()],
            ));
        }
        for name in components {
            if let Err(e) = qx_core::ComponentName::new(name.clone()) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("component {name:?} is not a valid component name"),
                    vec![e.to_string()],
                ));
            }
        }
    }
    for (field, value) in [
        ("allow_downgrade", &request.allow_downgrade),
        ("version", &request.version),
    ] {
        if let Some(v) = value {
            if let Err(e) = qx_core::Version::parse(v.trim()) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("\"{field}\" {v:?} is not a version"),
                    vec![e.to_string()],
                ));
            }
        }
    }
    Ok(())
}

/// The request against the release it would install (a check, no host change), before the
/// apply starts: a component not in it, an `allow_downgrade` that does not name the offered
/// version, a chosen `version` not listed in the signed channel state, revoked, or lower
/// without `allow_downgrade` naming it → 400.
async fn check_against_release(
    runner: &super::Runner,
    opts: &ApplyOptions,
) -> Result<(), ApiError> {
    match runner.check_with(opts.clone()).await {
        Ok(_) => Ok(()),
        Err(RunError::Agent(
            e @ (AgentError::NotInstallable { .. }
            | AgentError::Downgrade { .. }
            | AgentError::DowngradeMismatch { .. }
            | AgentError::UnknownComponent { .. }),
        )) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            e.explained(crate::error::Surface::Api),
            vec![format!("exit code {}", e.exit_code())],
        )),
        Err(e) => Err(ApiError::from_run(e, runner.agent().config())),
    }
}

/// Server-sent events: one `status` event with the current snapshot at once, then one per
/// change, in order, until the client goes away or the daemon stops. A subscriber that falls
/// more than the backlog behind skips to the latest snapshot. A comment line every 15 s keeps
/// proxies from closing an idle stream.
async fn events(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let runner = state.inner.runner.clone();
    let agent = runner.agent().clone();
    // Subscribe before reading the present, so no change falls between the two.
    let rx = agent.subscribe_events();
    let first = agent.status();
    let shutdown = state.inner.shutdown.clone();
    let keep_alive = state.keep_alive_interval();
    let stream = stream::unfold(
        (rx, shutdown, Some(first)),
        move |(mut rx, mut shutdown, first)| {
            let agent = agent.clone();
            let runner = runner.clone();
            async move {
                let snapshot = match first {
                    Some(s) => s,
                    None => {
                        let next = tokio::select! {
                            next = rx.recv() => next,
                            stopped = async { shutdown.wait_for(|stop| *stop).await.is_ok() } => {
                                if stopped {
                                    return None;
                                }
                                // No shutdown sender (router used without `serve`): follow the status only.
                                rx.recv().await
                            }
                        };
                        match next {
                            Ok(s) => s,
                            Err(RecvError::Lagged(_)) => agent.status(),
                            Err(RecvError::Closed) => return None,
                        }
                    }
                };
                let snapshot = runner.with_schedule(snapshot);
                let event = match Event::default().event("status").json_data(&snapshot) {
                    Ok(e) => e,
                    Err(e) => Event::default()
                        .event("error")
                        .data(format!("cannot encode the status: {e}")),
                };
                Some((Ok(event), (rx, shutdown, None)))
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(keep_alive))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such API endpoint",
        vec![format!(
            "the update API has GET {}, POST {}, GET {}, GET {} and GET {}",
            host::CHECK,
            host::APPLY,
            host::STATUS,
            host::EVENTS,
            host::METRICS
        )],
    )
}

/// Rejects a request without the right `Authorization: Bearer <token>` with 401.
async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match presented {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing API token",
            vec!["send the host's API token as \"Authorization: Bearer <token>\"; it is in the file named by updates.api.token_file".into()],
        )),
        Some(token) if state.inner.token.matches(token) => {
            let mut response = next.run(request).await;
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong API token",
            vec!["use the token in the file named by updates.api.token_file on this host".into()],
        )),
    }
}

/// Every path under this prefix is the token-protected API.
const API_PREFIX: &str = "/api";

/// The whole application: the API under `/api/` (token required) and the page at `/`.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route(host::CHECK, get(check))
        .route(host::APPLY, post(apply))
        .route(host::STATUS, get(status))
        .route(host::EVENTS, get(events))
        .route(host::METRICS, get(metrics))
        .route(API_PREFIX, any(not_found))
        .route(&format!("{API_PREFIX}/{{*rest}}"), any(not_found))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    Router::new()
        .merge(api)
        .merge(crate::daemon::web::router())
        .with_state(state)
}

/// Serves the API and page over TLS on `listener` until `shutdown` turns true; then stops
/// accepting, ends the event streams, and gives open requests five seconds to finish.
pub async fn serve(
    state: ApiState,
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let state = state.with_shutdown(shutdown.clone());
    let limits = state.inner.limits;
    let app = router(state);
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    let stop_task = tokio::spawn(async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
        stopper.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
    let result = Limiter::new(limits)
        .tls(listener, config)
        .handle(handle)
        .serve(app.into_make_service())
        .await;
    stop_task.abort();
    result
}
