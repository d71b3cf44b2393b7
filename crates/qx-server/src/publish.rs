//! The writing endpoints: publish (multipart upload streamed into staging, hashed while
//! streaming, checked against the manifest, then one atomic commit), promote (re-signed
//! manifest, artifacts reused without copying) and yank.
//!
//! Yank and the channel state (docs/spec.md §8): `DELETE` marks the release yanked on disk
//! (listed as such, skipped by the manifest endpoint of a channel without a state); on a
//! channel with a state, the state alone decides what the manifest endpoint serves, and the
//! answer says whether the state still lists the yanked release.
//!
//! A publish is a multipart/form-data body whose parts come in this order: `manifest` (the
//! manifest bytes), `signature` (the `.minisig` text), then one part per artifact whose part
//! name is the artifact name (a `filename` attribute is ignored); an artifact part may be
//! omitted when an earlier release of the product holds that artifact with the same name, size
//! and SHA-256 (it is hard-linked, docs/spec.md §8). The server checks that the
//! signature is a well-formed minisign signature but does not verify it: it holds no keys,
//! publishers sign and agents verify.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{Bytes, BytesMut};
use qx_core::{
    ArtifactName, ArtifactRef, Manifest, ManifestError, ProductName, Sha256Hasher, UnknownFields,
};
use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;
use crate::params::{release_key, Params, QueryParams};
use crate::state::App;
use crate::storage::{CommitOutcome, ReleaseKey, ReleaseStore, StoreError, Upload};
use qx_core::fleet::Scope;

/// The largest manifest part accepted.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// The largest signature part accepted.
pub const MAX_SIGNATURE_BYTES: usize = 16 << 10;

#[derive(Serialize)]
struct Published {
    product: String,
    channel: String,
    version: String,
    artifacts: Vec<String>,
    /// Artifacts not uploaded but linked from an earlier release (publish only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    carried_over: Vec<String>,
    /// True when the release was already there and is yanked: a byte-identical re-publish
    /// changes nothing, so it stays yanked (and is not offered).
    yanked: bool,
}

fn multipart_error(e: MultipartError) -> ApiError {
    if let Some(slow) = qx_core::listener::BodyTooSlow::find(&e) {
        tracing::warn!(error = %slow, "publish cut off: the upload was too slow; its staging is removed");
        return ApiError::new(StatusCode::REQUEST_TIMEOUT, slow.to_string()).with_detail(
            "the server requires at least BODY_MIN_RATE bytes per second over each BODY_READ_TIMEOUT window",
        );
    }
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!(
            "the upload is larger than this server accepts (MAX_UPLOAD_BYTES): {}",
            e.body_text()
        ))
    } else {
        ApiError::bad_request(format!(
            "the multipart body is malformed or was cut off: {}",
            e.body_text()
        ))
    }
}

fn multipart_rejection(e: MultipartRejection) -> ApiError {
    ApiError::bad_request(format!(
        "the body must be multipart/form-data with parts manifest, signature and one per artifact: {}",
        e.body_text()
    ))
}

/// Reads a whole small part, refusing it once it passes `max` bytes.
async fn read_small(field: &mut Field<'_>, what: &str, max: usize) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if buf.len() + chunk.len() > max {
            return Err(ApiError::too_large(format!(
                "the {what} part is larger than {max} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads the `manifest` and `signature` parts that open every publish and promote body.
async fn manifest_and_signature(
    multipart: &mut Multipart,
) -> Result<(Bytes, Manifest, Bytes), ApiError> {
    fn expect<'a>(field: Option<Field<'a>>, name: &str) -> Result<Field<'a>, ApiError> {
        match field {
            Some(f) if f.name() == Some(name) => Ok(f),
            Some(f) => Err(ApiError::bad_request(format!(
                "expected the part named {name:?} here, got {:?}; the parts must be manifest, signature, then the artifacts",
                f.name().unwrap_or("")
            ))),
            None => Err(ApiError::bad_request(format!(
                "the part named {name:?} is missing; the parts must be manifest, signature, then the artifacts"
            ))),
        }
    }
    let mut field = expect(
        multipart.next_field().await.map_err(multipart_error)?,
        "manifest",
    )?;
    let manifest_bytes = read_small(&mut field, "manifest", MAX_MANIFEST_BYTES).await?;
    drop(field);
    let manifest = parse_manifest(&manifest_bytes)?;
    let mut field = expect(
        multipart.next_field().await.map_err(multipart_error)?,
        "signature",
    )?;
    let signature = read_small(&mut field, "signature", MAX_SIGNATURE_BYTES).await?;
    drop(field);
    check_signature(&signature, "the signature part")?;
    Ok((manifest_bytes, manifest, signature))
}

fn parse_manifest(bytes: &[u8]) -> Result<Manifest, ApiError> {
    Manifest::parse(bytes, UnknownFields::Reject).map_err(|e| {
        let status = match e {
            ManifestError::Syntax(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.to_string()).with_details(e.problems())
    })
}

/// The signature (`what` names where it came from) must be a minisign signature file; it is
/// not verified here.
pub(crate) fn check_signature(sig: &[u8], what: &str) -> Result<(), ApiError> {
    let text = std::str::from_utf8(sig)
        .map_err(|_| ApiError::unprocessable(format!("{what} is not UTF-8 text")))?;
    minisign_verify::Signature::decode(text).map_err(|e| {
        ApiError::unprocessable(format!(
            "{what} is not a minisign signature ({e}); send the .minisig file of the signed document"
        ))
    })?;
    Ok(())
}

/// The manifest's product and channel must fit the URL and the server.
fn check_target<S: ReleaseStore>(
    app: &App<S>,
    manifest: &Manifest,
    product: &ProductName,
) -> Result<(), ApiError> {
    if &manifest.product != product {
        return Err(ApiError::unprocessable(format!(
            "the manifest is for product {}, but it was sent to /api/v1/{product}/",
            manifest.product
        ))
        .with_detail(json!({"path": "product", "expected": product.as_str(), "got": manifest.product.as_str()})));
    }
    if !app.config.channels.contains(&manifest.channel) {
        return Err(ApiError::unprocessable(format!(
            "channel {} is not configured on this server (configured: {})",
            manifest.channel,
            app.channel_list()
        ))
        .with_detail(json!({"path": "channel", "got": manifest.channel.as_str()})));
    }
    Ok(())
}

/// The answer to a publish or promote. A byte-identical re-publish of a yanked release is
/// 200 with `"yanked": true` (it stays yanked: nothing changed), so the publisher is told.
async fn outcome_response<S: ReleaseStore>(
    app: &App<S>,
    outcome: CommitOutcome,
    key: &ReleaseKey,
    artifacts: Vec<String>,
    carried_over: Vec<String>,
) -> Result<Response, ApiError> {
    let yanked = outcome == CommitOutcome::Identical && app.store.release(key).await?.yanked;
    if yanked {
        tracing::warn!(release = %key, "re-published byte for byte, but it is yanked and stays yanked");
    }
    let body = Json(Published {
        product: key.product.to_string(),
        channel: key.channel.to_string(),
        version: key.version.to_string(),
        artifacts,
        carried_over,
        yanked,
    });
    match outcome {
        CommitOutcome::Created => Ok((StatusCode::CREATED, body).into_response()),
        CommitOutcome::Identical => Ok((StatusCode::OK, body).into_response()),
        CommitOutcome::Conflict => Err(ApiError::conflict(format!(
            "release {key} already exists with other content; publish a new version instead"
        ))),
    }
}

/// `POST /api/v1/{product}/publish`.
pub async fn publish<S: ReleaseStore>(
    State(app): State<Arc<App<S>>>,
    params: Params,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let res = publish_inner(&app, params, headers, multipart).await;
    record_outcome(&app, &res, "created");
    res
}

/// Counts a publish or promote by its outcome; `created` names a new release.
fn record_outcome<S: ReleaseStore>(
    app: &App<S>,
    res: &Result<Response, ApiError>,
    created: &'static str,
) {
    app.metrics.publish(match res {
        Ok(r) if r.status() == StatusCode::CREATED => created,
        Ok(_) => "identical",
        Err(e) if e.status == StatusCode::CONFLICT => "conflict",
        Err(e) if e.status.is_server_error() => "failed",
        Err(_) => "rejected",
    });
}

/// Authorize, check the declared size, read the manifest and signature, stream the
/// artifacts into an upload, link the omitted ones from earlier releases, commit.
async fn publish_inner<S: ReleaseStore>(
    app: &App<S>,
    params: Params,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    app.authorize(&headers, &[Scope::Publish]).await?;
    let product = params.product()?;
    check_declared_size(app, &headers)?;
    let mut multipart = multipart.map_err(multipart_rejection)?;
    let (manifest_bytes, manifest, signature) = manifest_and_signature(&mut multipart).await?;
    check_target(app, &manifest, &product)?;
    let key = ReleaseKey {
        product,
        channel: manifest.channel.clone(),
        version: manifest.version.clone(),
    };
    let expected: BTreeMap<ArtifactName, ArtifactRef> = manifest
        .artifacts()
        .into_iter()
        .map(|a| (a.artifact.clone(), a))
        .collect();
    let mut upload = app.store.begin().await?;
    let received = async {
        let seen = receive_parts(&mut upload, &mut multipart, &expected).await?;
        link_omitted(app, &mut upload, &key.product, &expected, &seen).await
    }
    .await;
    let linked = match received {
        Ok(linked) => linked,
        Err(e) => {
            upload.abandon().await;
            return Err(e);
        }
    };
    let outcome = commit(app, upload, &key, manifest_bytes, signature).await?;
    if outcome == CommitOutcome::Created {
        tracing::info!(release = %key, carried_over = linked.len(), "published");
    }
    let artifacts = expected.keys().map(|k| k.to_string()).collect();
    outcome_response(app, outcome, &key, artifacts, linked).await
}

/// A `Content-Length` over `MAX_UPLOAD_BYTES` is refused before the body is read.
fn check_declared_size<S: ReleaseStore>(app: &App<S>, headers: &HeaderMap) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > app.config.max_upload_bytes => Err(ApiError::too_large(format!(
            "the upload has {n} bytes; this server accepts at most {} (MAX_UPLOAD_BYTES)",
            app.config.max_upload_bytes
        ))),
        _ => Ok(()),
    }
}

/// Streams every artifact part into the upload; each must be listed in the manifest and
/// come once. Returns the artifacts received.
async fn receive_parts<U: Upload>(
    upload: &mut U,
    multipart: &mut Multipart,
    expected: &BTreeMap<ArtifactName, ArtifactRef>,
) -> Result<HashSet<ArtifactName>, ApiError> {
    let mut seen = HashSet::new();
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        let part = field.name().unwrap_or("").to_owned();
        if part == "manifest" || part == "signature" {
            return Err(ApiError::unprocessable(format!(
                "the {part} part appears twice"
            )));
        }
        let Some(want) = ArtifactName::new(part.as_str())
            .ok()
            .and_then(|n| expected.get(&n))
        else {
            return Err(ApiError::unprocessable(format!(
                "part {part:?} is not an artifact listed in the manifest; upload exactly the listed artifacts"
            ))
            .with_detail(json!({"part": part, "listed": expected.keys().map(|k| k.as_str()).collect::<Vec<_>>()})));
        };
        if !seen.insert(want.artifact.clone()) {
            return Err(ApiError::unprocessable(format!(
                "artifact {part} is uploaded twice"
            )));
        }
        receive(upload, &mut field, want).await?;
    }
    Ok(seen)
}

/// Links into the upload every listed artifact that was not uploaded, from an earlier release
/// of the product (any configured channel) holding one with the same name, size and SHA-256
/// (docs/spec.md §8: a release carries unchanged components over without re-uploading them).
/// An omitted artifact held nowhere → 422 naming it. Returns the linked artifacts.
async fn link_omitted<S: ReleaseStore>(
    app: &App<S>,
    upload: &mut S::Upload,
    product: &ProductName,
    expected: &BTreeMap<ArtifactName, ArtifactRef>,
    seen: &HashSet<ArtifactName>,
) -> Result<Vec<String>, ApiError> {
    let omitted: Vec<&ArtifactRef> = expected
        .values()
        .filter(|a| !seen.contains(&a.artifact))
        .collect();
    if omitted.is_empty() {
        return Ok(Vec::new());
    }
    let holders = held_artifacts(app, product).await?;
    let mut linked = Vec::new();
    let mut unheld = Vec::new();
    for a in omitted {
        let candidates = holders.iter().filter(|(r, _)| r == a).map(|(_, k)| k);
        if link_first(upload, candidates, a).await? {
            linked.push(a.artifact.to_string());
        } else {
            unheld.push(a);
        }
    }
    if unheld.is_empty() {
        return Ok(linked);
    }
    Err(ApiError::unprocessable(format!(
        "the upload lacks artifact(s) listed in the manifest that no earlier release of {product} holds with the same name, size and sha256: {}; upload them",
        unheld.iter().map(|a| a.artifact.as_str()).collect::<Vec<_>>().join(", ")
    ))
    .with_details(unheld.iter().map(|a| {
        json!({
            "artifact": a.artifact.as_str(),
            "problem": "missing from the upload and held by no earlier release",
            "sha256": a.sha256.to_hex(),
            "size_bytes": a.size_bytes,
        })
    })))
}

/// Every artifact of every release of the product on the configured channels, newest release
/// first within a channel. A damaged release is skipped (and logged).
async fn held_artifacts<S: ReleaseStore>(
    app: &App<S>,
    product: &ProductName,
) -> Result<Vec<(ArtifactRef, ReleaseKey)>, ApiError> {
    let mut out = Vec::new();
    for channel in &app.config.channels {
        for v in app.store.versions(product, channel).await? {
            let key = ReleaseKey {
                product: product.clone(),
                channel: channel.clone(),
                version: v.version,
            };
            match app.store.release(&key).await {
                Ok(r) => out.extend(r.manifest.artifacts().into_iter().map(|a| (a, key.clone()))),
                Err(e @ (StoreError::NotFound(_) | StoreError::Corrupt { .. })) => {
                    tracing::warn!(release = %key, error = %e, "skipped while looking for a carried-over artifact");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(out)
}

/// Links `artifact` from the first candidate release whose file is intact; false if none is.
async fn link_first<'k, U: Upload>(
    upload: &mut U,
    candidates: impl Iterator<Item = &'k ReleaseKey>,
    artifact: &ArtifactRef,
) -> Result<bool, ApiError> {
    for source in candidates {
        match upload.link_from(source, artifact).await {
            Ok(()) => return Ok(true),
            Err(e @ (StoreError::Corrupt { .. } | StoreError::Io { .. })) => {
                tracing::warn!(release = %source, artifact = %artifact.artifact, error = %e, "cannot link a carried-over artifact from this release");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

/// Commits an upload as `key` and forgets the cached manifests of its product when a
/// release was created.
async fn commit<S: ReleaseStore>(
    app: &App<S>,
    upload: S::Upload,
    key: &ReleaseKey,
    manifest_bytes: Bytes,
    signature: Bytes,
) -> Result<CommitOutcome, ApiError> {
    let outcome = app
        .store
        .commit(upload, key, manifest_bytes, signature)
        .await?;
    if outcome == CommitOutcome::Created {
        app.invalidate(&key.product);
    }
    Ok(outcome)
}

/// Streams one artifact part into the upload, hashing and counting as it goes; refuses it the
/// moment it passes its declared size, and at the end if its hash or size differ.
async fn receive<U: Upload>(
    upload: &mut U,
    field: &mut Field<'_>,
    want: &ArtifactRef,
) -> Result<(), ApiError> {
    let mut writer = upload.create(&want.artifact).await?;
    let mut hasher = Sha256Hasher::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if hasher.len() + chunk.len() as u64 > want.size_bytes {
            return Err(ApiError::unprocessable(format!(
                "artifact {} is larger than the {} bytes the manifest declares; the upload was stopped",
                want.artifact, want.size_bytes
            ))
            .with_detail(json!({"artifact": want.artifact.as_str(), "expected_size": want.size_bytes, "got_size_at_least": hasher.len() + chunk.len() as u64})));
        }
        hasher.update(&chunk);
        writer.write_all(&chunk).await.map_err(|e| {
            ApiError::from(StoreError::Io {
                path: want.artifact.as_str().into(),
                source: e,
            })
        })?;
    }
    upload.finish(writer).await?;
    let (sha, size) = hasher.finish();
    if size != want.size_bytes || sha != want.sha256 {
        let what = if size != want.size_bytes {
            "size"
        } else {
            "sha256"
        };
        return Err(ApiError::unprocessable(format!(
            "artifact {}: {what} mismatch (expected {} bytes sha256 {}, got {size} bytes sha256 {}); the upload was discarded",
            want.artifact, want.size_bytes, want.sha256.short(), sha.short()
        ))
        .with_detail(json!({
            "artifact": want.artifact.as_str(),
            "expected": {"sha256": want.sha256.to_hex(), "size_bytes": want.size_bytes},
            "got": {"sha256": sha.to_hex(), "size_bytes": size},
        })));
    }
    Ok(())
}

/// `POST /api/v1/{product}/releases/{version}/promote?from=CHANNEL`.
pub async fn promote<S: ReleaseStore>(
    State(app): State<Arc<App<S>>>,
    params: Params,
    query: QueryParams,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let res = promote_inner(&app, params, query, headers, multipart).await;
    record_outcome(&app, &res, "promoted");
    res
}

/// Authorize, read the re-signed manifest and its signature (and nothing else), check it
/// against the URL and the source release, link the source's artifacts, commit.
async fn promote_inner<S: ReleaseStore>(
    app: &App<S>,
    params: Params,
    query: QueryParams,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    app.authorize(&headers, &[Scope::Publish]).await?;
    let product = params.product()?;
    let version = params.version()?;
    let from = query.from_channel(app)?;
    let mut multipart = multipart.map_err(multipart_rejection)?;
    let (manifest_bytes, manifest, signature) = manifest_and_signature(&mut multipart).await?;
    if let Some(extra) = multipart.next_field().await.map_err(multipart_error)? {
        return Err(ApiError::unprocessable(format!(
            "a promote carries only the manifest and signature parts, got also {:?}; artifacts are reused from the source release",
            extra.name().unwrap_or("")
        )));
    }
    check_target(app, &manifest, &product)?;
    if manifest.version != version {
        return Err(ApiError::unprocessable(format!(
            "the manifest is for version {}, but the URL names {version}",
            manifest.version
        )));
    }
    let source_key = ReleaseKey {
        product: product.clone(),
        channel: from,
        version: version.clone(),
    };
    let new = promotable_artifacts(app, &source_key, &manifest).await?;
    let key = ReleaseKey {
        product,
        channel: manifest.channel.clone(),
        version,
    };
    let mut upload = app.store.begin().await?;
    for a in &new {
        if let Err(e) = upload.link_from(&source_key, a).await {
            upload.abandon().await;
            return Err(e.into());
        }
    }
    let outcome = commit(app, upload, &key, manifest_bytes, signature).await?;
    if outcome == CommitOutcome::Created {
        tracing::info!(release = %key, from = %source_key.channel, "promoted");
    }
    outcome_response(
        app,
        outcome,
        &key,
        new.iter().map(|a| a.artifact.to_string()).collect(),
        Vec::new(),
    )
    .await
}

/// The artifacts of the new manifest (sorted by name), which must be exactly those of the
/// source release; a yanked source cannot be promoted.
async fn promotable_artifacts<S: ReleaseStore>(
    app: &App<S>,
    source_key: &ReleaseKey,
    manifest: &Manifest,
) -> Result<Vec<ArtifactRef>, ApiError> {
    let source = app.store.release(source_key).await?;
    if source.yanked {
        return Err(ApiError::conflict(format!(
            "release {source_key} is yanked; it cannot be promoted"
        )));
    }
    let mut old = source.manifest.artifacts();
    let mut new = manifest.artifacts();
    old.sort_by(|a, b| a.artifact.cmp(&b.artifact));
    new.sort_by(|a, b| a.artifact.cmp(&b.artifact));
    if old != new {
        return Err(ApiError::unprocessable(format!(
            "the new manifest must list exactly the artifacts of {source_key} (same names, sha256 and sizes)"
        ))
        .with_details(artifact_differences(&old, &new)));
    }
    Ok(new)
}

/// One detail per artifact that differs between the source release (`old`) and the new
/// manifest (`new`).
fn artifact_differences(old: &[ArtifactRef], new: &[ArtifactRef]) -> Vec<serde_json::Value> {
    let mut details = Vec::new();
    for a in new {
        match old.iter().find(|o| o.artifact == a.artifact) {
            None => details.push(
                json!({"artifact": a.artifact.as_str(), "problem": "not in the source release"}),
            ),
            Some(o) if o != a => details.push(json!({
                "artifact": a.artifact.as_str(),
                "problem": "differs from the source release",
                "expected": {"sha256": o.sha256.to_hex(), "size_bytes": o.size_bytes},
                "got": {"sha256": a.sha256.to_hex(), "size_bytes": a.size_bytes},
            })),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|a| a.artifact == o.artifact) {
            details.push(
                json!({"artifact": o.artifact.as_str(), "problem": "missing from the new manifest"}),
            );
        }
    }
    details
}

/// `DELETE /api/v1/{product}/releases/{version}?channel=C`: yank.
pub async fn yank<S: ReleaseStore>(
    State(app): State<Arc<App<S>>>,
    params: Params,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.authorize(&headers, &[Scope::Publish]).await?;
    let key = release_key(&app, &params, &query)?;
    let newly = app.store.yank(&key).await?;
    app.invalidate(&key.product);
    if newly {
        tracing::info!(release = %key, "yanked");
    }
    // With a channel state, the state decides what hosts are offered (docs/spec.md §8): a
    // release it still lists stays offered until the publisher signs a state without it.
    let listed = app
        .store
        .channel_state(&key.product, &key.channel)
        .await?
        .is_some_and(|s| s.state.release(&key.version).is_some());
    if listed {
        tracing::warn!(release = %key, "yanked, but the channel state still lists it; it stays offered until a new channel state withdraws it");
    }
    Ok(Json(json!({
        "product": key.product.as_str(),
        "channel": key.channel.as_str(),
        "version": key.version.to_string(),
        "yanked": true,
        "listed_by_channel_state": listed,
    }))
    .into_response())
}
