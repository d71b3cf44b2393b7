//! The JSON error body every failing endpoint answers with: `{"error": "...", "details": [...]}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::storage::StoreError;

/// An HTTP error with a sentence saying what is wrong and optional details.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub details: Vec<serde_json::Value>,
    /// Extra headers (e.g. `Content-Range` on 416, `WWW-Authenticate` on 401).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    details: &'a [serde_json::Value],
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            details: Vec::new(),
            headers: Vec::new(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }
    pub fn with_details<T: Serialize>(mut self, details: impl IntoIterator<Item = T>) -> Self {
        self.details = details
            .into_iter()
            .map(|d| serde_json::to_value(d).unwrap_or(serde_json::Value::Null))
            .collect();
        self
    }
    pub fn with_detail<T: Serialize>(mut self, detail: T) -> Self {
        self.details
            .push(serde_json::to_value(detail).unwrap_or(serde_json::Value::Null));
        self
    }
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl From<StoreError> for ApiError {
    /// The public body never names a file-system path: the full error (with its path) goes
    /// to the log, the client gets what failed and what to do. A full disk (or quota) is 507.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} was not found")),
            other if other.is_out_of_space() => {
                tracing::error!(error = %other, "storage full");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "the server's release storage is full; nothing was stored. Free space on the server (or raise its quota), then retry",
                )
            }
            StoreError::Unavailable(_) => {
                tracing::error!(error = %e, "release storage unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server's release storage did not answer; nothing was changed. Retry later; the server's log has the details",
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("10"))
            }
            StoreError::Corrupt { .. } => {
                tracing::error!(error = %e, "damaged stored release");
                ApiError::internal(
                    "a stored release is damaged; the server's log names it. Ask the operator to remove or repair it",
                )
            }
            other => {
                tracing::error!(error = %other, "storage error");
                ApiError::internal(
                    "the server's release storage failed; the server's log has the details. Retry later or ask the operator",
                )
            }
        }
    }
}

impl From<crate::fleet::store::FleetError> for ApiError {
    /// The database's own message goes to the log; the client learns that the fleet store
    /// failed (503: retry later) or, for a name already taken, 409.
    fn from(e: crate::fleet::store::FleetError) -> Self {
        use crate::fleet::store::FleetError;
        match e {
            FleetError::Conflict(what) => ApiError::conflict(format!(
                "{what} already exists; revoke it first or choose another name"
            )),
            FleetError::Invalid(what) => {
                ApiError::bad_request(format!("{what}; nothing was stored"))
            }
            other => {
                tracing::error!(error = %other, "fleet store error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server's fleet database failed; nothing was changed. Retry later; the server's log has the details",
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("30"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            error: &self.message,
            details: &self.details,
        })
        .unwrap_or_default();
        let mut res = (self.status, body).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in self.headers {
            headers.insert(k, v);
        }
        res
    }
}
