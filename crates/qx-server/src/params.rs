//! Request parameters: the URL path segments and query values, decoded and checked against
//! the name rules before any handler touches a file. A segment or value that cannot be
//! decoded or breaks a rule is a JSON 400.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, RawPathParams};
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
    /// The `{id}` segment of a host or an enrollment token: 1 to 64 lowercase letters, digits or `-` (400 otherwise).
    pub fn host_id(&self) -> Result<String, ApiError> {
        let id = self.get("id");
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if id.is_empty() || id.len() > 64 || !id.chars().all(ok) {
            return Err(ApiError::bad_request(format!(
                "id {id:?} is invalid: 1 to 64 lowercase letters, digits or '-'"
            )));
        }
        Ok(id.to_owned())
    }
    /// The `{id}` segment of a rollout (the plan's id): 1 to 64 letters, digits, `_` or `-`
    /// (400 otherwise).
    pub fn rollout_id(&self) -> Result<String, ApiError> {
        let id = self.get("id");
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if id.is_empty() || id.len() > 64 || !id.chars().all(ok) {
            return Err(ApiError::bad_request(format!(
                "rollout id {id:?} is invalid: 1 to 64 letters, digits, '_' or '-'"
            )));
        }
        Ok(id.to_owned())
    }
    /// The `{name}` segment of an operator token, checked against the name rule.
    pub fn token_name(&self) -> Result<String, ApiError> {
        let name = self.get("name");
        qx_core::names::check_name("operator token name", name)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(name.to_owned())
    }
    /// The `{artifact}` segment, checked against the name rule (400 if it breaks it).
    pub fn artifact(&self) -> Result<ArtifactName, ApiError> {
        ArtifactName::new(self.get("artifact")).map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

/// URL query parameters, with a JSON 400 when they cannot be decoded: a malformed percent
/// escape (`%zz`), bytes that are not UTF-8 once decoded, or a parameter given twice
/// (`channel=a&channel=b`: which one was meant cannot be known). Empty pairs (`a=1&&b=2`) are
/// ignored; `+` is a space, as in HTML forms.
pub struct QueryParams(pub HashMap<String, String>);

impl<St: Send + Sync> FromRequestParts<St> for QueryParams {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &St) -> Result<Self, ApiError> {
        parse_query(parts.uri.query().unwrap_or("")).map(QueryParams)
    }
}

/// Parses a raw query string strictly (see [`QueryParams`]).
pub fn parse_query(raw: &str) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode_component(name)?;
        let value = decode_component(value)?;
        if out.contains_key(&name) {
            return Err(ApiError::bad_request(format!(
                "the query parameter {name:?} is given more than once; give it once"
            )));
        }
        out.insert(name, value);
    }
    Ok(out)
}

/// Percent-decodes one query component; a `%` not followed by two hex digits, or a result
/// that is not UTF-8, is a 400.
pub(crate) fn decode_component(text: &str) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "the URL query has a malformed percent escape: % must be followed by two hex digits",
                        )
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad_request("the URL query is not UTF-8 once percent-decoded"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decodes_escapes_and_plus() {
        let q = parse_query("channel=st%61ble&note=a+b&&x").expect("valid");
        assert_eq!(q.get("channel").map(String::as_str), Some("stable"));
        assert_eq!(q.get("note").map(String::as_str), Some("a b"));
        assert_eq!(q.get("x").map(String::as_str), Some(""));
    }

    #[test]
    fn query_refuses_repeats_bad_escapes_and_non_utf8() {
        for raw in ["channel=a&channel=b", "%zz", "a=%4", "a=%ff", "%"] {
            let e = parse_query(raw).expect_err(raw);
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{raw}");
        }
    }
}
