//! Who is calling: operator tokens (scoped), the bootstrap `PUBLISH_TOKEN`, host tokens and
//! enrollment tokens. Every token is 256 random bits in base64url; the store holds only its
//! SHA-256, and a token is found by the hash of what the caller sent (no secret is compared
//! byte by byte, so its content does not leak through timing).

use axum::http::{header, HeaderMap, StatusCode};
use qx_core::fleet::Scope;
use qx_core::Sha256;
use subtle::ConstantTimeEq;

use super::store::{FleetStore, HostAuth, TokenHash};
use crate::error::ApiError;

pub use qx_core::fleet::new_secret;

/// A new identifier (hosts, enrollment tokens): 128 random bits in lowercase hex.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash under which a token is stored and looked up.
pub fn token_hash(token: &str) -> TokenHash {
    Sha256::of(token.as_bytes())
}

/// True when a token with `scopes` may do what `needed` allows: `admin` includes every
/// scope, `publish` and `rollout` include `read`.
pub fn allows(scopes: &[Scope], needed: Scope) -> bool {
    scopes.iter().any(|s| match (s, needed) {
        (Scope::Admin, _) => true,
        (Scope::Publish | Scope::Rollout, Scope::Read) => true,
        (s, n) => *s == n,
    })
}

/// The bearer token of a request, or 401 saying what to send (`kind` names the token).
pub fn bearer<'a>(headers: &'a HeaderMap, kind: &str) -> Result<&'a str, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized(format!(
            "missing Authorization header; send Authorization: Bearer <{kind}>"
        ))
    })?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized(format!("the Authorization header must be Bearer <{kind}>"))
        })
}

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// `PUBLISH_TOKEN`: the bootstrap token, with every scope.
    Bootstrap,
    /// A named operator token.
    Token { name: String, scopes: Vec<Scope> },
}

/// What an operator request needs: any one of `scopes`, and the token's name for messages
/// (`PUBLISH_TOKEN` on the publish routes, which predate operator tokens).
pub struct Need<'a> {
    pub scopes: &'a [Scope],
    pub kind: &'a str,
}

/// Checks an operator's bearer token: the bootstrap token (compared by digest in constant
/// time) or an active operator token holding one of the scopes. 401 when the token is
/// missing, unknown or revoked; 403 when it lacks the scope.
pub async fn operator(
    store: &dyn FleetStore,
    bootstrap_digest: &[u8; 32],
    headers: &HeaderMap,
    need: Need<'_>,
) -> Result<Operator, ApiError> {
    let given = bearer(headers, need.kind)?;
    let hash = token_hash(given);
    if bool::from(hash.as_bytes().ct_eq(bootstrap_digest)) {
        return Ok(Operator::Bootstrap);
    }
    let Some(row) = store.operator_token(hash).await? else {
        return Err(ApiError::unauthorized(if need.kind == "PUBLISH_TOKEN" {
            "the publish token is wrong".to_owned()
        } else {
            format!("the {} is not a known operator token; create one with `qx-update-server token create`", need.kind)
        }));
    };
    if row.revoked_at.is_some() {
        return Err(ApiError::unauthorized(format!(
            "operator token {} was revoked; ask an admin for a new one",
            row.name
        )));
    }
    if !need.scopes.iter().any(|n| allows(&row.scopes, *n)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "operator token {} has scope {}; this needs {} (or admin)",
                row.name,
                scope_list(&row.scopes),
                scope_list(need.scopes)
            ),
        ));
    }
    Ok(Operator::Token {
        name: row.name,
        scopes: row.scopes,
    })
}

/// `read, publish`.
pub fn scope_list(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| scope_name(*s))
        .collect::<Vec<_>>()
        .join(" or ")
}

pub fn scope_name(s: Scope) -> &'static str {
    match s {
        Scope::Read => "read",
        Scope::Publish => "publish",
        Scope::Rollout => "rollout",
        Scope::Admin => "admin",
    }
}

/// Checks a host's bearer token against the host the URL names: 401 when the token is
/// unknown or its host decommissioned, 403 when it belongs to another host (an unknown host
/// in the URL included: a host learns nothing about other hosts).
pub async fn host(
    store: &dyn FleetStore,
    headers: &HeaderMap,
    path_id: &str,
) -> Result<HostAuth, ApiError> {
    let given = bearer(headers, "host token")?;
    let Some(auth) = store.host_by_token(token_hash(given)).await? else {
        return Err(ApiError::unauthorized(
            "the host token is unknown; enroll again with an enrollment token",
        ));
    };
    if auth.decommissioned {
        return Err(ApiError::unauthorized(format!(
            "host {} was decommissioned and its token no longer acts; enroll again with a new enrollment token",
            auth.id
        )));
    }
    if auth.id != path_id {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this host token belongs to host {}, not to the host in the URL; a host token acts only on its own host",
                auth.id
            ),
        ));
    }
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_include_weaker_ones() {
        use Scope::*;
        assert!(allows(&[Admin], Publish) && allows(&[Admin], Rollout));
        assert!(allows(&[Publish], Read) && allows(&[Rollout], Read));
        assert!(!allows(&[Publish], Rollout) && !allows(&[Rollout], Publish));
        assert!(!allows(&[Read], Publish) && !allows(&[Publish], Admin));
        assert!(allows(&[Read, Rollout], Rollout));
        assert!(!allows(&[], Read));
    }

    #[test]
    fn secrets_are_256_bits_of_base64url() {
        use base64::Engine;
        let a = new_secret();
        assert_eq!(a.len(), 43);
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&a)
            .expect("base64url");
        assert_eq!(raw.len(), 32);
        assert_ne!(a, new_secret());
        assert_eq!(new_id().len(), 32);
    }
}
