//! Request parameters: the URL path segments and query values, decoded and checked against
//! the name rules before any handler touches a file. A segment or value that cannot be
//! decoded or breaks a rule is a JSON 400.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query, RawPathParams};
use axum::http::request::Parts;
use qx_core::api::{CHANNEL_PARAM, DEFAULT_CHANNEL, FROM_PARAM};
use qx_core::{ArtifactName, ChannelName, ProductName, Version};

use crate::error::ApiError;
use crate::state::App;
use crate::storage::{ReleaseKey, ReleaseStore};

/// URL path parameters (percent-decoded), with a JSON 400 when they cannot be decoded.
pub struct Params(RawPathParams);

impl<St: Send + Sync> FromRequestParts<St> for Params {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, ApiError> {
        RawPathParams::from_request_parts(parts, state)
            .await
            .map(Params)
            .map_err(|e| ApiError::bad_request(format!("the URL path is invalid: {e}")))
    }
}

impl Params {
    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v)
    }
    /// The `{product}` segment, checked against the name rule (400 if it breaks it).
    pub fn product(&self) -> Result<ProductName, ApiError> {
        ProductName::new(self.get("product")).map_err(|e| ApiError::bad_request(e.to_string()))
    }
    /// The `{version}` segment (400 if it is not SemVer).
    pub fn version(&self) -> Result<Version, ApiError> {
        Version::parse(self.get("version")).map_err(|e| ApiError::bad_request(e.to_string()))
    }
    /// The `{channel}` segment, which must be a configured channel (400 if it breaks the name
    /// rule, 404 if it is not configured).
    pub fn channel<S: ReleaseStore>(&self, app: &App<S>) -> Result<ChannelName, ApiError> {
        app.channel(self.get("channel"))
    }
    /// The `{artifact}` segment, checked against the name rule (400 if it breaks it).
    pub fn artifact(&self) -> Result<ArtifactName, ApiError> {
        ArtifactName::new(self.get("artifact")).map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

/// URL query parameters, with a JSON 400 when they cannot be decoded.
pub struct QueryParams(pub HashMap<String, String>);

impl<St: Send + Sync> FromRequestParts<St> for QueryParams {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, ApiError> {
        if parts.uri.query().is_none_or(str::is_empty) {
            return Ok(QueryParams(HashMap::new()));
        }
        Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(m)| QueryParams(m))
            .map_err(|e| ApiError::bad_request(format!("the URL query is invalid: {e}")))
    }
}

impl QueryParams {
    /// `?channel=` (default `stable`), which must be configured.
    pub fn channel<S: ReleaseStore>(&self, app: &App<S>) -> Result<ChannelName, ApiError> {
        app.channel(self.get(CHANNEL_PARAM).unwrap_or(DEFAULT_CHANNEL))
    }
    /// `?from=` (required), the configured source channel of a promotion.
    pub fn from_channel<S: ReleaseStore>(&self, app: &App<S>) -> Result<ChannelName, ApiError> {
        let from = self.get(FROM_PARAM).ok_or_else(|| {
            ApiError::bad_request(format!(
                "the query parameter {FROM_PARAM}=CHANNEL is missing"
            ))
        })?;
        app.channel(from)
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// The release a URL names: `{product}`, `{version}` and `?channel=`.
pub fn release_key<S: ReleaseStore>(
    app: &App<S>,
    params: &Params,
    query: &QueryParams,
) -> Result<ReleaseKey, ApiError> {
    Ok(ReleaseKey {
        product: params.product()?,
        channel: query.channel(app)?,
        version: params.version()?,
    })
}
