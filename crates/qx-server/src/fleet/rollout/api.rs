//! The rollout and pin endpoints (docs/spec.md §10, docs/fleet-api.md): status and list
//! (scope `read`), pause, resume and abort (scope `rollout`), a host's preview (`read`), pins
//! (list: `read`; create and delete: `rollout`).
//!
//! Transitions: pause only a running rollout; resume a paused or halted one (the failures
//! and finished hosts counted so far are acknowledged: only new ones count against the
//! rules); abort any unfinished one. Anything else is 409 with the rollout's state.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use qx_core::api::server::HOST_PARAM;
use qx_core::api::{CHANNEL_PARAM, DEFAULT_CHANNEL};
use qx_core::fleet::{Pin, PinList, PinRequest, RolloutList, RolloutState, Scope};
use qx_core::{ChannelName, Version};
use serde_json::json;

use super::engine::UNFINISHED;
use super::offer::parse_selector;
use super::{rules, status};
use crate::error::ApiError;
use crate::fleet::auth::new_id;
use crate::fleet::clock::rfc3339;
use crate::fleet::store::{PinRow, RolloutChange, RolloutRow};
use crate::fleet::validate;
use crate::params::{Params, QueryParams};
use crate::state::App;
use crate::storage::ReleaseStore;

type AppState<S> = State<Arc<App<S>>>;
const OPERATOR: &str = "operator token";
const READ: &[Scope] = &[Scope::Read];
const ROLLOUT: &[Scope] = &[Scope::Rollout];

/// The rollout `id` of the URL's product, or 404.
async fn find<S: ReleaseStore>(app: &App<S>, params: &Params) -> Result<RolloutRow, ApiError> {
    let product = params.product()?;
    let id = params.rollout_id()?;
    match app.fleet.store.rollout(id.clone()).await? {
        Some(r) if r.product == product.as_str() => Ok(r),
        _ => Err(ApiError::not_found(format!(
            "product {product} has no rollout {id}; GET /api/v1/{product}/rollouts lists them"
        ))),
    }
}

/// `GET /api/v1/{product}/rollouts[?channel=]`: newest first.
pub async fn list<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
    QueryParams(query): QueryParams,
) -> Result<Response, ApiError> {
    app.operator(&headers, READ, OPERATOR).await?;
    let product = params.product()?;
    let channel = match query.get(CHANNEL_PARAM) {
        Some(c) => Some(
            ChannelName::new(c)
                .map_err(|e| ApiError::bad_request(e.to_string()))?
                .to_string(),
        ),
        None => None,
    };
    let now = app.fleet.clock.now();
    let store = &*app.fleet.store;
    let mut rollouts = Vec::new();
    for r in store.rollouts(product.to_string(), channel).await? {
        rollouts.push(status::status(store, &r, now).await?);
    }
    Ok(Json(RolloutList { rollouts }).into_response())
}

/// `GET /api/v1/{product}/rollouts/{id}`.
pub async fn get<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.operator(&headers, READ, OPERATOR).await?;
    let r = find(&app, &params).await?;
    let now = app.fleet.clock.now();
    Ok(Json(status::status(&*app.fleet.store, &r, now).await?).into_response())
}

/// What an operator asks of a rollout.
#[derive(Debug, Clone, Copy)]
enum Action {
    Pause,
    Resume,
    Abort,
}

impl Action {
    fn from(self) -> Vec<RolloutState> {
        match self {
            Action::Pause => vec![RolloutState::Running],
            Action::Resume => vec![RolloutState::Paused, RolloutState::Halted],
            Action::Abort => UNFINISHED.to_vec(),
        }
    }

    fn refused(self, r: &RolloutRow) -> ApiError {
        let state = format!("{:?}", r.state).to_lowercase();
        let why = match self {
            Action::Pause => "only a running rollout can be paused (a halted one offers nothing already: resume or abort it)",
            Action::Resume => "only a paused or halted rollout can be resumed",
            Action::Abort => "it has ended already",
        };
        ApiError::conflict(format!("rollout {} is {state}: {why}", r.id))
            .with_detail(json!({"state": state}))
    }
}

async fn act<S: ReleaseStore>(
    app: Arc<App<S>>,
    params: Params,
    headers: HeaderMap,
    action: Action,
) -> Result<Response, ApiError> {
    let who = app.operator(&headers, ROLLOUT, OPERATOR).await?;
    let r = find(&app, &params).await?;
    let now = app.fleet.clock.now();
    let store = &*app.fleet.store;
    let mut change = RolloutChange {
        from: action.from(),
        now,
        ..RolloutChange::default()
    };
    match action {
        Action::Pause => change.state = Some(RolloutState::Paused),
        Action::Resume => {
            let counts = store.stage_counts(r.id.clone()).await?;
            let (_, total) = rules::tally(&counts, r.plan.waves.len());
            change.state = Some(RolloutState::Running);
            change.halt = Some(None);
            change.acknowledged = Some((total.failures, total.finished()));
        }
        Action::Abort => {
            change.state = Some(RolloutState::Aborted);
            change.ended_reason =
                Some("aborted by an operator; hosts keep the version they run".to_owned());
        }
    }
    if !store.change_rollout(r.id.clone(), change).await? {
        let now_row = store.rollout(r.id.clone()).await?.unwrap_or(r);
        return Err(action.refused(&now_row));
    }
    app.rollouts.forget_plans(&r.product);
    tracing::info!(rollout = %r.id, action = ?action, by = ?who, "rollout changed by an operator");
    if let Action::Abort = action {
        let rollouts = app.rollouts.clone();
        let id = r.id.clone();
        tokio::spawn(async move { rollouts.notify(&id, "aborted", now).await });
    }
    let status = status::status_of(store, &r.id, now).await?;
    Ok(Json(status).into_response())
}

/// `POST …/rollouts/{id}/pause`.
pub async fn pause<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    act(app, params, headers, Action::Pause).await
}

/// `POST …/rollouts/{id}/resume`.
pub async fn resume<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    act(app, params, headers, Action::Resume).await
}

/// `POST …/rollouts/{id}/abort`.
pub async fn abort<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    act(app, params, headers, Action::Abort).await
}

/// `GET …/rollouts/{id}/preview?host=ID`.
pub async fn preview<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
    QueryParams(query): QueryParams,
) -> Result<Response, ApiError> {
    app.operator(&headers, READ, OPERATOR).await?;
    let Some(host) = query.get(HOST_PARAM).filter(|h| !h.is_empty()) else {
        return Err(ApiError::bad_request(
            "the host query parameter is missing: write ?host=<host id>",
        ));
    };
    let r = find(&app, &params).await?;
    let now = app.fleet.clock.now();
    let known = app
        .fleet
        .store
        .host(host.clone(), 0, app.liveness_rule(), now)
        .await?;
    if known.is_none_or(|d| d.host.product != r.product) {
        return Err(ApiError::not_found(format!(
            "host {host} is not enrolled here for product {}",
            r.product
        )));
    }
    Ok(Json(status::preview(&*app.fleet.store, &r, host).await?).into_response())
}

fn pin_view(p: PinRow) -> Pin {
    Pin {
        id: p.id,
        product: p.product,
        channel: p.channel,
        host: p.host,
        selector: p.selector,
        version: p.version,
        created_at: rfc3339(p.created_at),
    }
}

/// `GET /api/v1/{product}/pins[?channel=]`: newest first.
pub async fn list_pins<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
    QueryParams(query): QueryParams,
) -> Result<Response, ApiError> {
    app.operator(&headers, READ, OPERATOR).await?;
    let product = params.product()?;
    let channel = query.get(CHANNEL_PARAM).cloned();
    let rows = app.fleet.store.pins(product.to_string(), channel).await?;
    let pins = rows.into_iter().map(pin_view).collect();
    Ok(Json(PinList { pins }).into_response())
}

/// `POST /api/v1/{product}/pins`: 201 with the pin.
pub async fn create_pin<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    app.operator(&headers, ROLLOUT, OPERATOR).await?;
    let product = params.product()?;
    let req: PinRequest = validate::json(body, "pin request")?;
    let channel = app.channel(req.channel.as_deref().unwrap_or(DEFAULT_CHANNEL))?;
    let version = Version::parse(&req.version)
        .map_err(|e| ApiError::bad_request(format!("the pin's version is not a version: {e}")))?;
    match (&req.host, &req.selector) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(ApiError::bad_request(
                "a pin names exactly one of host and selector",
            ))
        }
        (None, Some(s)) if parse_selector(s).is_none() => {
            return Err(ApiError::bad_request(format!(
                "the selector {s:?} is invalid: write key=value[,key=value…]"
            )))
        }
        _ => {}
    }
    if let Some(h) = &req.host {
        let now = app.fleet.clock.now();
        let known = app
            .fleet
            .store
            .host(h.clone(), 0, app.liveness_rule(), now)
            .await?;
        if known.is_none_or(|d| d.host.product != product.as_str()) {
            return Err(ApiError::not_found(format!(
                "host {h} is not enrolled here for product {product}"
            )));
        }
    }
    let row = PinRow {
        id: new_id(),
        product: product.to_string(),
        channel: channel.to_string(),
        host: req.host,
        selector: req.selector,
        version: version.to_string(),
        created_at: app.fleet.clock.now(),
    };
    app.fleet.store.create_pin(row.clone()).await?;
    app.rollouts.forget_plans(product.as_str());
    tracing::info!(pin = %row.id, version = %row.version, "pin created");
    Ok((StatusCode::CREATED, Json(pin_view(row))).into_response())
}

/// `DELETE /api/v1/{product}/pins/{id}`.
pub async fn delete_pin<S: ReleaseStore>(
    State(app): AppState<S>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.operator(&headers, ROLLOUT, OPERATOR).await?;
    let product = params.product()?;
    let id = params.host_id()?;
    if !app
        .fleet
        .store
        .delete_pin(product.to_string(), id.clone())
        .await?
    {
        return Err(ApiError::not_found(format!(
            "product {product} has no pin {id}; GET /api/v1/{product}/pins lists them"
        )));
    }
    app.rollouts.forget_plans(product.as_str());
    Ok(Json(json!({ "id": id, "deleted": true })).into_response())
}
