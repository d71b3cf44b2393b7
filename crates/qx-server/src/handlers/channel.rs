//! `GET`/`PUT /api/v1/{product}/channels/{channel}`: the signed channel state (docs/spec.md
//! §8). The server stores and serves the publisher's exact bytes and signature; it never
//! signs and holds no key to verify with, but it parses the bytes strictly, checks them
//! against the URL and against the releases it holds, and stores them only through the
//! compare-and-swap on `seq` of [`ReleaseStore::put_channel_state`].

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use qx_core::api::SIGNATURE_HEADER;
use qx_core::{ChannelError, ChannelName, ChannelState, ProductName, Sha256, UnknownFields};
use serde_json::json;

use super::none_match;
use crate::error::ApiError;
use crate::params::Params;
use crate::publish::check_signature;
use crate::state::{etag, header_value, App};
use crate::storage::{PutOutcome, ReleaseKey, ReleaseStore, StoreError};
use qx_core::fleet::Scope;

/// The largest channel state accepted (a `PUT` body).
pub const MAX_CHANNEL_BYTES: usize = 1 << 20;

/// `GET`: the stored bytes, their signature in `X-Qx-Signature`, a strong ETag; 304 on a
/// matching `If-None-Match`; 404 while the channel has no state.
pub async fn get_state<S: ReleaseStore>(
    State(app): State<Arc<App<S>>>,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let product = params.product()?;
    let channel = params.channel(&app)?;
    let Some(stored) = app.store.channel_state(&product, &channel).await? else {
        return Err(ApiError::not_found(format!(
            "product {product} has no channel state on channel {channel} yet; publishing a release with qx-publish signs the first one"
        )));
    };
    let etag_str = etag(&Sha256::of(&stored.bytes));
    let signature = base64::engine::general_purpose::STANDARD.encode(&stored.signature);
    let common = [
        (header::ETAG, header_value(etag_str.clone())?),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::HeaderName::from_static(SIGNATURE_HEADER),
            header_value(signature)?,
        ),
    ];
    if none_match(&headers, &etag_str) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    app.metrics.bytes_served.inc_by(stored.bytes.len() as u64);
    let json = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    Ok((common, json, stored.bytes).into_response())
}

/// `PUT` (publish token): body = the exact signed bytes, signature (base64 of the `.minisig`
/// text) in `X-Qx-Signature`. 201 stored, 200 byte-identical, 409 not newer (naming the
/// stored `seq`), 400/422 bad input, 422 a listed release not held as listed.
pub async fn put_state<S: ReleaseStore>(
    State(app): State<Arc<App<S>>>,
    params: Params,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    app.authorize(&headers, &[Scope::Publish, Scope::Rollout])
        .await?;
    let product = params.product()?;
    let channel = params.channel(&app)?;
    let bytes = body.map_err(body_rejection)?;
    let signature = signature_header(&headers)?;
    let state = parse_state(&bytes)?;
    check_names(&state, &product, &channel)?;
    check_releases(&app, &state).await?;
    let outcome = app
        .store
        .put_channel_state(&product, &channel, state.seq, bytes, signature)
        .await?;
    let body = Json(json!({
        "product": product.as_str(),
        "channel": channel.as_str(),
        "seq": state.seq,
        "current": state.current.to_string(),
    }));
    match outcome {
        PutOutcome::Stored => {
            app.invalidate(&product);
            tracing::info!(%product, %channel, seq = state.seq, current = %state.current, "channel state stored");
            let now = app.fleet.clock.now();
            if let Err(e) = app.rollouts.sync(&state, now).await {
                tracing::warn!(%product, %channel, error = %e, "the channel state's rollout was not followed yet; the next check-in retries");
            }
            Ok((StatusCode::CREATED, body).into_response())
        }
        PutOutcome::Identical => Ok((StatusCode::OK, body).into_response()),
        PutOutcome::Stale { stored_seq } => Err(ApiError::conflict(format!(
            "channel state seq {} of {product} on channel {channel} is not newer than the stored seq {stored_seq}; sign a new state with seq {} or higher",
            state.seq,
            stored_seq.saturating_add(1)
        ))
        .with_detail(json!({"stored_seq": stored_seq, "sent_seq": state.seq}))),
    }
}

fn body_rejection(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!(
            "a channel state is at most {MAX_CHANNEL_BYTES} bytes"
        ))
    } else {
        ApiError::bad_request(format!("the body cannot be read: {}", e.body_text()))
    }
}

/// The signature header, decoded from base64; it must be a minisign signature (not verified).
fn signature_header(headers: &HeaderMap) -> Result<Bytes, ApiError> {
    let value = headers.get(SIGNATURE_HEADER).ok_or_else(|| {
        ApiError::bad_request(format!(
            "the {SIGNATURE_HEADER} header is missing; send the base64 of the channel state's .minisig file in it"
        ))
    })?;
    let decoded = value
        .to_str()
        .ok()
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!("the {SIGNATURE_HEADER} header is not base64"))
        })?;
    check_signature(&decoded, &format!("the {SIGNATURE_HEADER} header"))?;
    Ok(Bytes::from(decoded))
}

/// Strict parse: malformed JSON → 400; unknown fields, structure and rules → 422.
fn parse_state(bytes: &[u8]) -> Result<ChannelState, ApiError> {
    ChannelState::parse(bytes, UnknownFields::Reject).map_err(|e| {
        let status = match e {
            ChannelError::Syntax(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.to_string()).with_details(e.problems())
    })
}

/// The state's product and channel must be the URL's.
fn check_names(
    state: &ChannelState,
    product: &ProductName,
    channel: &ChannelName,
) -> Result<(), ApiError> {
    for (field, got, expected) in [
        ("product", state.product.as_str(), product.as_str()),
        ("channel", state.channel.as_str(), channel.as_str()),
    ] {
        if got != expected {
            return Err(ApiError::unprocessable(format!(
                "the channel state is for {field} {got}, but it was sent to the URL of {field} {expected}"
            ))
            .with_detail(json!({"path": field, "expected": expected, "got": got})));
        }
    }
    Ok(())
}

/// Every release the state lists must be held on its channel, with a manifest whose bytes
/// have the listed SHA-256.
async fn check_releases<S: ReleaseStore>(
    app: &App<S>,
    state: &ChannelState,
) -> Result<(), ApiError> {
    let mut problems = Vec::new();
    for entry in &state.releases {
        let key = ReleaseKey {
            product: state.product.clone(),
            channel: state.channel.clone(),
            version: entry.version.clone(),
        };
        match app.store.release(&key).await {
            Ok(r) => {
                let held = Sha256::of(&r.manifest_bytes);
                if held != entry.manifest_sha256 {
                    problems.push(json!({
                        "version": entry.version.to_string(),
                        "problem": "manifest_sha256 differs from the held manifest's",
                        "expected": held.to_hex(),
                        "got": entry.manifest_sha256.to_hex(),
                    }));
                }
            }
            Err(StoreError::NotFound(_)) => problems.push(json!({
                "version": entry.version.to_string(),
                "problem": "not held on this channel; publish it first",
            })),
            Err(e) => return Err(e.into()),
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let versions: Vec<&str> = problems
        .iter()
        .filter_map(|p| p["version"].as_str())
        .collect();
    Err(ApiError::unprocessable(format!(
        "the channel state lists release(s) this server does not hold on channel {} as listed: {}",
        state.channel,
        versions.join(", ")
    ))
    .with_details(problems))
}
