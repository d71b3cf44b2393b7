//! The endpoints, grouped by area: [`read`] (health, metrics, channels, manifest, releases),
//! [`artifact`] (one file of a release, with ranges and validators) and [`channel`] (the
//! signed channel state). Publish, promote and yank are in [`crate::publish`].

pub mod artifact;
pub mod channel;
pub mod read;

use axum::http::{header, HeaderMap};

/// True when an `If-None-Match` header matches `etag` (weak comparison, RFC 9110 §13.1.2).
pub(crate) fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}
