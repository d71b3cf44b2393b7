//! The fleet API's handlers (docs/spec.md §9, docs/fleet-api.md): enrollment, check-ins and
//! events (host tokens), the host list and detail, labels and decommissioning, operator and
//! enrollment tokens (operator tokens). Every time comes from the app's clock; every body is
//! checked ([`super::validate`]) before anything is stored.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use qx_core::fleet::{
    CheckIn, CheckInAnswer, EnrollRequest, EnrollmentTokenRequest, EventBatch, HostDetail,
    Identity, LabelsPatch, OperatorTokenRequest, Scope, MAX_LABEL_VALUE,
};
use qx_core::Sha256;
use serde_json::json;

use super::auth::{self, new_id, new_secret, token_hash};
use super::clock::rfc3339;
use super::rollout::{offer, rules};
use super::store::{EnrollRefused, Millis, NewHost};
use super::{admin, query, validate};
use crate::error::ApiError;
use crate::params::Params;
use crate::state::App;
use crate::storage::ReleaseStore;

/// The most events a host's detail shows, newest first.
pub const DETAIL_EVENTS: u32 = 200;
/// The jitter of the check-in interval: ±10 %.
pub const JITTER_PERCENT: u64 = 10;

type AppState<S> = State<Arc<App<S>>>;
type Body = Result<Bytes, BytesRejection>;

const OPERATOR: &str = "operator token";
const ADMIN: &[Scope] = &[Scope::Admin];
const READ: &[Scope] = &[Scope::Read];
/// Labels steer rollouts: rollout operators may change them, as admins may.
const LABELS: &[Scope] = &[Scope::Rollout];

/// The seconds until a host's next check-in: the interval ±[`JITTER_PERCENT`], chosen from
/// the host id and the time (the same inputs give the same answer, so tests assert bounds).
pub fn next_checkin_s(interval_s: u64, host: &str, now: Millis) -> u64 {
    let digest = Sha256::of(format!("{host}/{now}").as_bytes());
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&digest.as_bytes()[..8]);
    let spread = interval_s * 2 * JITTER_PERCENT / 100;
    let low = interval_s - interval_s * JITTER_PERCENT / 100;
    let pick = if spread == 0 {
        0
    } else {
        u64::from_le_bytes(eight) % (spread + 1)
    };
    (low + pick).max(1)
}

/// Takes a token from the overload limit for a host request; 429 with `Retry-After` when
/// the bucket is empty.
fn admit<S: ReleaseStore>(app: &App<S>, headers: &HeaderMap) -> Result<Millis, ApiError> {
    let now = app.fleet.clock.now();
    let key = headers
        .get(header::AUTHORIZATION)
        .map_or(0, |v| Sha256::of(v.as_bytes()).as_bytes()[0]);
    app.fleet.limit.take(now, key).map_err(|secs| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("the server is busy; nothing was stored. Retry after {secs} s"),
        )
        .with_detail(json!({ "retry_after_s": secs }))
        .with_header(header::RETRY_AFTER, HeaderValue::from(secs))
    })?;
    Ok(now)
}

fn created<T: serde::Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

/// `POST /api/v1/enrollment-tokens` (admin): 201 with the token, shown once.
pub async fn create_enrollment_token<S: ReleaseStore>(
    State(app): AppState<S>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    app.operator(&headers, ADMIN, OPERATOR).await?;
    let req: EnrollmentTokenRequest = validate::json(body, "enrollment token request")?;
    let now = app.fleet.clock.now();
    let made = admin::create_enrollment_token(&*app.fleet.store, req, now).await?;
    Ok(created(made))
}

/// `DELETE /api/v1/enrollment-tokens/{id}` (admin): revokes it (hosts enrolled with it
/// stay); 404 when there is no active token with that id.
pub async fn revoke_enrollment_token<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = app.operator(&headers, ADMIN, OPERATOR).await?;
    let id = params.host_id()?;
    let now = app.fleet.clock.now();
    if !app
        .fleet
        .store
        .revoke_enrollment_token(id.clone(), now)
        .await?
    {
        return Err(ApiError::not_found(format!(
            "there is no active enrollment token with id {id}"
        )));
    }
    tracing::info!(%id, by = ?who, "enrollment token revoked");
    Ok(Json(json!({ "id": id, "revoked_at": rfc3339(now) })).into_response())
}

/// `POST /api/v1/hosts/enroll` with an enrollment token: 201 with the host's identity.
/// Unknown or revoked token → 401; expired or used up → 403 saying which.
pub async fn enroll<S: ReleaseStore>(
    State(app): AppState<S>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let now = admit(&app, &headers)?;
    let token = auth::bearer(&headers, "enrollment token")?.to_owned();
    let req: EnrollRequest = validate::json(body, "enrollment request")?;
    if let Some(h) = &req.hostname {
        validate::short("hostname", h, 253)?;
    }
    validate::labels("the enrollment request", &req.labels)?;
    if let Some(k) = &req.enrollment_key {
        validate::secret("enrollment_key", k)?;
    }
    let host_token = new_secret();
    let host = NewHost {
        id: new_id(),
        token_hash: token_hash(&host_token),
        hostname: req.hostname,
        labels: req.labels,
        enrollment_key: req.enrollment_key.as_deref().map(token_hash),
        now,
    };
    let enrolled = match app.fleet.store.enroll(token_hash(&token), host).await? {
        Ok(h) => h,
        Err(refused) => return Err(enroll_refused(refused)),
    };
    tracing::info!(host = %enrolled.id, product = %enrolled.product, "host enrolled");
    Ok(created(Identity {
        host_id: enrolled.id,
        host_token,
        product: enrolled.product,
        server_url: None,
    }))
}

fn enroll_refused(refused: EnrollRefused) -> ApiError {
    let forbidden = |m: &str| ApiError::new(StatusCode::FORBIDDEN, m);
    match refused {
        EnrollRefused::Unknown => ApiError::unauthorized(
            "the enrollment token is unknown; ask an operator for one (POST /api/v1/enrollment-tokens or qx-update-server enrollment-token create)",
        ),
        EnrollRefused::Revoked => ApiError::unauthorized(
            "the enrollment token was revoked; ask an operator for a new one",
        ),
        EnrollRefused::Expired => forbidden(
            "the enrollment token has expired; nothing was stored. Ask an operator for a new one",
        ),
        EnrollRefused::UsedUp => forbidden(
            "the enrollment token is used up: it enrolled as many hosts as it allows; nothing was stored. Ask an operator for a new one",
        ),
    }
}

/// `POST /api/v1/hosts/{id}/checkin` (host token): 200 with the server's time, the next
/// interval, and what the host is offered or told to cancel (docs/spec.md §10: a pin, or its
/// turn in a rollout). The host's own clock is kept as reported, never used.
pub async fn check_in<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let now = admit(&app, &headers)?;
    let id = params.host_id()?;
    let host = auth::host(&*app.fleet.store, &headers, &id).await?;
    let mut report: CheckIn = validate::json(body, "check-in")?;
    validate::check_in(&mut report)?;
    let interval = app.config.fleet.checkin_interval.as_secs();
    let next = next_checkin_s(interval, &id, now);
    let due = now.saturating_add(i64::try_from(next * 1000).unwrap_or(i64::MAX));
    let reason = report.reason;
    let decision = offer::decide(&app, &host, &report, now).await?;
    app.fleet
        .store
        .check_in(id.clone(), report, now, due)
        .await?;
    app.metrics.check_in(reason, started.elapsed());
    app.fleet.notify("checkin", &id);
    Ok(Json(CheckInAnswer {
        server_time: rfc3339(now),
        next_checkin_s: next,
        offer: decision.offer,
        cancel: decision.cancel,
    })
    .into_response())
}

/// `POST /api/v1/hosts/{id}/events` (host token): 200 with how many were new; a replay is
/// counted once.
pub async fn events<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let now = admit(&app, &headers)?;
    let id = params.host_id()?;
    auth::host(&*app.fleet.store, &headers, &id).await?;
    let mut batch: EventBatch = validate::json(body, "event batch")?;
    validate::events(&mut batch.events)?;
    let kinds: Vec<_> = batch.events.iter().map(|e| e.kind).collect();
    let about_rollout = batch
        .events
        .iter()
        .any(|e| e.version.is_some() && rules::stage_of_event(e.kind).is_some());
    let accepted = app
        .fleet
        .store
        .append_events(id.clone(), batch.events, now)
        .await?;
    app.metrics
        .events(&kinds, accepted.duplicates, started.elapsed());
    if about_rollout && accepted.accepted > 0 {
        app.rollouts.nudge();
    }
    app.fleet.notify("events", &id);
    Ok(Json(accepted).into_response())
}

/// `GET /api/v1/hosts` (read): one page of hosts.
pub async fn list_hosts<S: ReleaseStore>(
    State(app): AppState<S>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    app.operator(&headers, READ, OPERATOR).await?;
    let q = query::host_query(raw.as_deref().unwrap_or(""))?;
    let now = app.fleet.clock.now();
    let list = app
        .fleet
        .store
        .list_hosts(q, app.liveness_rule(), now)
        .await?;
    Ok(Json(list).into_response())
}

async fn detail<S: ReleaseStore>(app: &App<S>, id: &str) -> Result<HostDetail, ApiError> {
    let now = app.fleet.clock.now();
    app.fleet
        .store
        .host(id.to_owned(), DETAIL_EVENTS, app.liveness_rule(), now)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "host {id} is not enrolled here; GET /api/v1/hosts lists the hosts"
            ))
        })
}

/// `GET /api/v1/hosts/{id}` (read): the host with its newest events first.
pub async fn host<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.operator(&headers, READ, OPERATOR).await?;
    let id = params.host_id()?;
    Ok(Json(detail(&app, &id).await?).into_response())
}

/// `PATCH /api/v1/hosts/{id}` (rollout or admin): sets labels (`null` removes one); 200
/// with the host. More than `MAX_LABELS` labels afterwards → 400, nothing changed.
pub async fn patch_labels<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    app.operator(&headers, LABELS, OPERATOR).await?;
    let id = params.host_id()?;
    let patch: LabelsPatch = validate::json(body, "labels patch")?;
    for (k, v) in &patch.labels {
        validate::label_key(k)?;
        if let Some(v) = v {
            validate::short(&format!("label {k:?}"), v, MAX_LABEL_VALUE)?;
        }
    }
    let mut labels = detail(&app, &id).await?.host.labels;
    for (k, v) in &patch.labels {
        match v {
            Some(v) => labels.insert(k.clone(), v.clone()),
            None => labels.remove(k),
        };
    }
    validate::labels("the host after this patch", &labels)?;
    if !app.fleet.store.patch_labels(id.clone(), patch).await? {
        return Err(ApiError::not_found(format!(
            "host {id} is not enrolled here"
        )));
    }
    Ok(Json(detail(&app, &id).await?).into_response())
}

/// `DELETE /api/v1/hosts/{id}` (admin): decommissions the host (its token stops acting:
/// 401); 200 with the host. Decommissioning twice is 200.
pub async fn decommission<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = app.operator(&headers, ADMIN, OPERATOR).await?;
    let id = params.host_id()?;
    detail(&app, &id).await?;
    let now = app.fleet.clock.now();
    if app.fleet.store.decommission(id.clone(), now).await? {
        tracing::info!(host = %id, by = ?who, "host decommissioned");
        app.fleet.notify("decommission", &id);
    }
    Ok(Json(detail(&app, &id).await?).into_response())
}

/// `POST /api/v1/tokens` (admin): 201 with the token, shown once; 409 if the name is taken.
pub async fn create_token<S: ReleaseStore>(
    State(app): AppState<S>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    app.operator(&headers, ADMIN, OPERATOR).await?;
    let req: OperatorTokenRequest = validate::json(body, "operator token request")?;
    let now = app.fleet.clock.now();
    let made = admin::create_operator_token(&*app.fleet.store, req, now).await?;
    Ok(created(made))
}

/// `GET /api/v1/whoami` (any operator token): the token's name and scopes, so a tool can
/// tell a wrong or too weak token before it starts long work.
pub async fn whoami<S: ReleaseStore>(
    State(app): AppState<S>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (name, scopes) = match app.operator(&headers, READ, OPERATOR).await? {
        auth::Operator::Bootstrap => ("PUBLISH_TOKEN".to_owned(), vec![Scope::Admin]),
        auth::Operator::Token { name, scopes } => (name, scopes),
    };
    let scopes: Vec<&str> = scopes.iter().map(|s| auth::scope_name(*s)).collect();
    Ok(Json(json!({ "name": name, "scopes": scopes })).into_response())
}

/// `GET /api/v1/tokens` (admin): every operator token, revoked ones included, no secrets.
pub async fn list_tokens<S: ReleaseStore>(
    State(app): AppState<S>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.operator(&headers, ADMIN, OPERATOR).await?;
    let rows = app.fleet.store.list_operator_tokens().await?;
    let tokens: Vec<_> = rows.into_iter().map(admin::operator_token_view).collect();
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

/// `DELETE /api/v1/tokens/{name}` (admin): revokes the active token of that name; 404 when
/// there is none.
pub async fn revoke_token<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = app.operator(&headers, ADMIN, OPERATOR).await?;
    let name = params.token_name()?;
    let now = app.fleet.clock.now();
    if !app
        .fleet
        .store
        .revoke_operator_token(name.clone(), now)
        .await?
    {
        return Err(ApiError::not_found(format!(
            "there is no active operator token named {name}; GET /api/v1/tokens lists them"
        )));
    }
    tracing::info!(%name, by = ?who, "operator token revoked");
    Ok(Json(json!({ "name": name, "revoked_at": rfc3339(now) })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_checkin_stays_within_ten_percent() {
        let (mut low, mut high) = (u64::MAX, 0);
        for i in 0..2000 {
            let s = next_checkin_s(900, &format!("host-{i}"), i64::from(i) * 7);
            low = low.min(s);
            high = high.max(s);
        }
        assert!(low >= 810 && high <= 990, "{low}..{high}");
        assert!(high - low > 100, "spread {low}..{high}");
        assert_eq!(next_checkin_s(900, "a", 5), next_checkin_s(900, "a", 5));
        assert_eq!(next_checkin_s(1, "a", 5), 1);
    }
}
