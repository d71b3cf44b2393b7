//! `GET`/`HEAD /api/v1/{product}/releases/{version}/{artifact}`: one file of a release — an
//! artifact named in its manifest, the manifest itself or its signature — with its ETag,
//! `If-None-Match`, `If-Range` and a single `Range`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use qx_core::api::NO_REDIRECT_HEADER;
use qx_core::{ArtifactName, Sha256, MANIFEST_FILE, SIGNATURE_FILE};

use super::none_match;
use crate::config::ArtifactRedirect;
use crate::error::ApiError;
use crate::params::{Params, QueryParams};
use crate::range::{self, ByteRange, RangeError};
use crate::state::{etag, header_value, App};
use crate::storage::{ReleaseKey, ReleaseStore, StoredRelease};

/// What a request for one file of a release sends.
struct FileToSend {
    sha: Sha256,
    len: u64,
    /// The bytes when they are in memory (manifest, signature); `None` for a stored file.
    memory: Option<Bytes>,
    content_type: &'static str,
}

/// GET/HEAD of one file of a release. Artifacts of a yanked release stay downloadable, so
/// that hosts in the middle of a download can finish; only the manifest endpoint stops
/// offering the release.
pub async fn artifact<S: ReleaseStore>(
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
    let file = file_to_send(&release, &key, &name)?;
    if file.memory.is_none() && !headers.contains_key(NO_REDIRECT_HEADER) {
        if let Some(to) = &app.config.artifact_redirect {
            return redirect(&app, to, &key, &name).await;
        }
    }
    let etag_str = etag(&file.sha);
    let mut res_headers = HeaderMap::new();
    res_headers.insert(header::ETAG, header_value(etag_str.clone())?);
    res_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    res_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if none_match(&headers, &etag_str) {
        return Ok((StatusCode::NOT_MODIFIED, res_headers).into_response());
    }
    let (status, start, count) = match requested_range(&headers, &etag_str, file.len)? {
        Some(r) => {
            let content_range = format!("bytes {}-{}/{}", r.start, r.end, file.len);
            res_headers.insert(header::CONTENT_RANGE, header_value(content_range)?);
            (StatusCode::PARTIAL_CONTENT, r.start, r.len())
        }
        None => (StatusCode::OK, 0, file.len),
    };
    res_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    res_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(file.content_type),
    );
    if method == Method::HEAD {
        return Ok((status, res_headers).into_response());
    }
    let body = match file.memory {
        Some(bytes) => memory_body(&app, &bytes, start, count),
        None => stored_body(&app, &key, &name, start, count).await?,
    };
    Ok((status, res_headers, body).into_response())
}

/// `302 Found` to where the artifact is served: a presigned object-store URL or the CDN's
/// copy. Never cached (a presigned URL expires).
async fn redirect<S: ReleaseStore>(
    app: &App<S>,
    to: &ArtifactRedirect,
    key: &ReleaseKey,
    name: &ArtifactName,
) -> Result<Response, ApiError> {
    let location = match to {
        ArtifactRedirect::Base(base) => format!(
            "{base}/{}/{}/{}/{name}",
            key.product, key.channel, key.version
        ),
        ArtifactRedirect::Presign { ttl } => app.store.presign(key, name.as_str(), *ttl).await?,
    };
    let headers = [
        (header::LOCATION, header_value(location)?),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    Ok((StatusCode::FOUND, headers).into_response())
}

/// The manifest, the signature, or an artifact the manifest lists (404 naming the listed
/// ones otherwise).
fn file_to_send(
    release: &StoredRelease,
    key: &ReleaseKey,
    name: &ArtifactName,
) -> Result<FileToSend, ApiError> {
    let in_memory = |bytes: &Bytes, content_type| FileToSend {
        sha: Sha256::of(bytes),
        len: bytes.len() as u64,
        memory: Some(bytes.clone()),
        content_type,
    };
    match name.as_str() {
        MANIFEST_FILE => Ok(in_memory(&release.manifest_bytes, "application/json")),
        SIGNATURE_FILE => Ok(in_memory(&release.signature, "text/plain; charset=utf-8")),
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
            Ok(FileToSend {
                sha: a.sha256,
                len: a.size_bytes,
                memory: None,
                content_type: "application/octet-stream",
            })
        }
    }
}

/// The range to send, if the request asks for one that applies: `If-Range` lets the range
/// apply only when the client's validator is our strong ETag. A range that cannot be served
/// is a 416 with `Content-Range: bytes */LEN`.
fn requested_range(
    headers: &HeaderMap,
    etag: &str,
    len: u64,
) -> Result<Option<ByteRange>, ApiError> {
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let range_applies = match headers.get(header::IF_RANGE) {
        None => true,
        Some(v) => v.to_str().is_ok_and(|v| v.trim() == etag),
    };
    let Some(h) = range_header.filter(|_| range_applies) else {
        return Ok(None);
    };
    range::resolve(h, len).map_err(|e| {
        let err = ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, e.to_string()).with_header(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes */{len}"))
                .unwrap_or(HeaderValue::from_static("bytes */0")),
        );
        match e {
            RangeError::Multiple(_) => {
                err.with_detail("multipart/byteranges responses are not served")
            }
            _ => err,
        }
    })
}

/// `count` bytes from `start` of a file held in memory.
fn memory_body<S: ReleaseStore>(app: &App<S>, bytes: &Bytes, start: u64, count: u64) -> Body {
    app.metrics.bytes_served.inc_by(count);
    let end = usize::try_from(start + count).unwrap_or(bytes.len());
    let start = usize::try_from(start).unwrap_or(0);
    Body::from(bytes.slice(start..end))
}

/// `count` bytes from `start` of a stored file, streamed and counted as they go out.
async fn stored_body<S: ReleaseStore>(
    app: &App<S>,
    key: &ReleaseKey,
    name: &ArtifactName,
    start: u64,
    count: u64,
) -> Result<Body, ApiError> {
    let stream = app
        .store
        .read_range(key, name.as_str(), start, count)
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
    Ok(Body::from_stream(counted))
}
