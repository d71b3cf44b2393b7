//! Operator and enrollment tokens: created, listed and revoked the same way through the API
//! (`POST /api/v1/tokens`, `/api/v1/enrollment-tokens`) and the command line
//! (`qx-update-server token …`, `enrollment-token create`). The secret is shown once, in the
//! answer to its creation; the store keeps its SHA-256.

use std::time::Duration;

use qx_core::fleet::{
    EnrollmentTokenCreated, EnrollmentTokenRequest, OperatorToken, OperatorTokenRequest, Scope,
};
use qx_core::ProductName;

use super::auth::{new_id, new_secret, token_hash};
use super::clock::rfc3339;
use super::store::{
    FleetError, FleetStore, Millis, NewEnrollmentToken, NewOperatorToken, OperatorTokenRow,
};
use super::validate;
use crate::error::ApiError;

/// How long an enrollment token lives when the request says nothing: 24 hours.
pub const DEFAULT_ENROLLMENT_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// The longest an enrollment token may live: 366 days.
pub const MAX_ENROLLMENT_EXPIRY: Duration = Duration::from_secs(366 * 24 * 3600);
/// The most hosts one enrollment token may enroll.
pub const MAX_ENROLLMENT_USES: u32 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request breaks a rule (400).
    #[error("{0}")]
    Invalid(String),
    /// The name is taken (409).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(FleetError),
}

impl From<FleetError> for AdminError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::Conflict(what) => Self::Conflict(format!(
                "{what} already exists; revoke it first or choose another name"
            )),
            other => Self::Store(other),
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(m) => ApiError::bad_request(m),
            AdminError::Conflict(m) => ApiError::conflict(m),
            AdminError::Store(e) => e.into(),
        }
    }
}

fn invalid(e: impl ToString) -> AdminError {
    AdminError::Invalid(e.to_string())
}

/// Creates an operator token; the answer carries the secret, once.
pub async fn create_operator_token(
    store: &dyn FleetStore,
    req: OperatorTokenRequest,
    now: Millis,
) -> Result<OperatorToken, AdminError> {
    qx_core::names::check_name("operator token name", &req.name).map_err(invalid)?;
    let mut scopes = req.scopes;
    scopes.sort_unstable();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(invalid(
            "an operator token needs at least one scope: read, publish, rollout or admin",
        ));
    }
    let secret = new_secret();
    store
        .create_operator_token(NewOperatorToken {
            name: req.name.clone(),
            scopes: scopes.clone(),
            hash: token_hash(&secret),
            now,
        })
        .await?;
    tracing::info!(name = %req.name, scopes = ?scopes, "operator token created");
    Ok(OperatorToken {
        name: req.name,
        scopes,
        created_at: rfc3339(now),
        revoked_at: None,
        token: Some(secret),
    })
}

/// An operator token as listed (no secret).
pub fn operator_token_view(row: OperatorTokenRow) -> OperatorToken {
    OperatorToken {
        name: row.name,
        scopes: row.scopes,
        created_at: rfc3339(row.created_at),
        revoked_at: row.revoked_at.map(rfc3339),
        token: None,
    }
}

/// `"24h"`, `"7d"`: a duration from one minute to [`MAX_ENROLLMENT_EXPIRY`].
pub fn parse_expires_in(text: &str) -> Result<Duration, AdminError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(format!(
            "expires_in {text:?} is not a duration ({e}); write it like 24h or 7d"
        ))
    })?;
    if d < Duration::from_secs(60) || d > MAX_ENROLLMENT_EXPIRY {
        return Err(invalid(format!(
            "expires_in {text:?} is out of range: from 1m to 366d"
        )));
    }
    Ok(d)
}

/// Creates an enrollment token for a product; the answer carries the secret, once.
pub async fn create_enrollment_token(
    store: &dyn FleetStore,
    req: EnrollmentTokenRequest,
    now: Millis,
) -> Result<EnrollmentTokenCreated, AdminError> {
    let product = ProductName::new(req.product).map_err(invalid)?;
    validate::labels("the enrollment token", &req.labels).map_err(|e| invalid(e.message))?;
    if let Some(name) = &req.name {
        validate::short("name", name, 64).map_err(|e| invalid(e.message))?;
    }
    let expires_in = match &req.expires_in {
        Some(text) => parse_expires_in(text)?,
        None => DEFAULT_ENROLLMENT_EXPIRY,
    };
    let uses = req.uses.unwrap_or(1);
    if uses == 0 || uses > MAX_ENROLLMENT_USES {
        return Err(invalid(format!(
            "uses {uses} is out of range: from 1 to {MAX_ENROLLMENT_USES}"
        )));
    }
    let expires_at = now.saturating_add(i64::try_from(expires_in.as_millis()).unwrap_or(i64::MAX));
    let secret = new_secret();
    let id = new_id();
    store
        .create_enrollment_token(NewEnrollmentToken {
            id: id.clone(),
            name: req.name,
            hash: token_hash(&secret),
            product: product.to_string(),
            labels: req.labels.clone(),
            expires_at,
            uses,
            now,
        })
        .await?;
    tracing::info!(%id, %product, uses, expires_at = %rfc3339(expires_at), "enrollment token created");
    Ok(EnrollmentTokenCreated {
        id,
        token: secret,
        product: product.to_string(),
        labels: req.labels,
        expires_at: rfc3339(expires_at),
        uses,
    })
}

/// The scope named on a command line or in a message.
pub fn parse_scope(text: &str) -> Result<Scope, AdminError> {
    match text {
        "read" => Ok(Scope::Read),
        "publish" => Ok(Scope::Publish),
        "rollout" => Ok(Scope::Rollout),
        "admin" => Ok(Scope::Admin),
        other => Err(invalid(format!(
            "unknown scope {other:?}; the scopes are read, publish, rollout and admin"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_is_bounded() {
        assert_eq!(
            parse_expires_in("24h").expect("24h"),
            Duration::from_secs(86_400)
        );
        assert_eq!(
            parse_expires_in("7d").expect("7d"),
            Duration::from_secs(7 * 86_400)
        );
        for bad in ["soon", "30s", "400d", ""] {
            assert!(parse_expires_in(bad).is_err(), "{bad}");
        }
    }
}
