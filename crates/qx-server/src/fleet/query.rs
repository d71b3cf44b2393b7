//! The host list's query string (`GET /api/v1/hosts`): `product`, `channel`, `version`,
//! `state`, `label` (repeatable: `k=v` or `k!=v`, all must hold), `liveness` or
//! `overdue=true`, `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) and `cursor`.
//! An unknown parameter, one given twice (but `label`) or a bad value is a 400.

use qx_core::fleet::Liveness;
use qx_core::{ChannelName, ProductName};

use super::store::{HostQuery, LabelMatch};
use super::validate;
use crate::error::ApiError;
use crate::params::decode_component;

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;
/// The update states a host can be in (`HostSummary::state`).
pub const STATES: &[&str] = &[
    "idle",
    "updating",
    "installed",
    "confirmed",
    "failed",
    "rolled_back",
    "reverted",
];
const PARAMS: &str = "product, channel, version, state, label, liveness, overdue, limit, cursor";

fn bad(m: String) -> ApiError {
    ApiError::bad_request(m)
}

/// Parses the raw query string into a [`HostQuery`].
pub fn host_query(raw: &str) -> Result<HostQuery, ApiError> {
    let mut q = HostQuery {
        limit: DEFAULT_LIMIT,
        ..HostQuery::default()
    };
    let mut seen: Vec<String> = Vec::new();
    let mut overdue = false;
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode_component(name)?;
        let value = decode_component(value)?;
        if name != "label" {
            if seen.contains(&name) {
                return Err(bad(format!(
                    "the query parameter {name:?} is given more than once; give it once (only label repeats)"
                )));
            }
            seen.push(name.clone());
        }
        match name.as_str() {
            "product" => {
                q.product = Some(
                    ProductName::new(value)
                        .map_err(|e| bad(e.to_string()))?
                        .to_string(),
                )
            }
            "channel" => {
                q.channel = Some(
                    ChannelName::new(value)
                        .map_err(|e| bad(e.to_string()))?
                        .to_string(),
                )
            }
            "version" => {
                validate::short("version", &value, validate::MAX_SHORT)?;
                q.version = Some(value);
            }
            "state" => q.state = Some(state(value)?),
            "label" => q.labels.push(label(&value)?),
            "liveness" => q.liveness = Some(liveness(&value)?),
            "overdue" => overdue = flag("overdue", &value)?,
            "limit" => q.limit = limit(&value)?,
            "cursor" => {
                validate::short("cursor", &value, 512)?;
                q.cursor = Some(value);
            }
            other => {
                return Err(bad(format!(
                    "unknown query parameter {other:?}; the host list takes {PARAMS}"
                )))
            }
        }
    }
    if overdue {
        if q.liveness.is_some() {
            return Err(bad(
                "give liveness or overdue=true, not both (overdue=true means liveness=overdue)"
                    .into(),
            ));
        }
        q.liveness = Some(Liveness::Overdue);
    }
    q.decommissioned = q.liveness == Some(Liveness::Decommissioned);
    Ok(q)
}

fn state(value: String) -> Result<String, ApiError> {
    if STATES.contains(&value.as_str()) {
        Ok(value)
    } else {
        Err(bad(format!(
            "state {value:?} is unknown; the states are {}",
            STATES.join(", ")
        )))
    }
}

/// `k=v` or `k!=v`.
fn label(value: &str) -> Result<LabelMatch, ApiError> {
    let (key, v, equal) = match value.split_once("!=") {
        Some((k, v)) => (k, v, false),
        None => match value.split_once('=') {
            Some((k, v)) => (k, v, true),
            None => {
                return Err(bad(format!(
                    "label selector {value:?} is invalid; write key=value or key!=value"
                )))
            }
        },
    };
    validate::label_key(key)?;
    validate::short(
        &format!("label {key:?}"),
        v,
        qx_core::fleet::MAX_LABEL_VALUE,
    )?;
    Ok(LabelMatch {
        key: key.to_owned(),
        value: v.to_owned(),
        equal,
    })
}

fn liveness(value: &str) -> Result<Liveness, ApiError> {
    match value {
        "online" => Ok(Liveness::Online),
        "overdue" => Ok(Liveness::Overdue),
        "offline" => Ok(Liveness::Offline),
        "decommissioned" => Ok(Liveness::Decommissioned),
        other => Err(bad(format!(
            "liveness {other:?} is unknown; it is online, overdue, offline or decommissioned"
        ))),
    }
}

fn flag(name: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(bad(format!("{name}={other:?}: write true or false"))),
    }
}

fn limit(value: &str) -> Result<u32, ApiError> {
    match value.parse::<u32>() {
        Ok(n @ 1..=MAX_LIMIT) => Ok(n),
        _ => Err(bad(format!(
            "limit {value:?} is out of range: from 1 to {MAX_LIMIT}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_is_read() {
        let q = host_query(
            "product=quantix-os&channel=beta&version=1.2.0&state=failed&label=site%3Dlab&label=rack!=3&overdue=true&limit=5&cursor=abc",
        )
        .expect("valid");
        assert_eq!(q.product.as_deref(), Some("quantix-os"));
        assert_eq!(q.channel.as_deref(), Some("beta"));
        assert_eq!(q.version.as_deref(), Some("1.2.0"));
        assert_eq!(q.state.as_deref(), Some("failed"));
        assert_eq!(q.labels.len(), 2);
        assert!(q.labels[0].equal && !q.labels[1].equal);
        assert_eq!(
            (q.labels[1].key.as_str(), q.labels[1].value.as_str()),
            ("rack", "3")
        );
        assert_eq!(q.liveness, Some(Liveness::Overdue));
        assert_eq!((q.limit, q.cursor.as_deref()), (5, Some("abc")));
        assert_eq!(host_query("").expect("empty").limit, DEFAULT_LIMIT);
        assert!(
            host_query("liveness=decommissioned")
                .expect("valid")
                .decommissioned
        );
    }

    #[test]
    fn bad_parameters_are_400() {
        for raw in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "state=happy",
            "liveness=asleep",
            "label=novalue",
            "label=a%20b=c",
            "product=Bad",
            "product=a&product=b",
            "overdue=yes",
            "overdue=true&liveness=online",
            "color=red",
        ] {
            let e = host_query(raw).expect_err(raw);
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{raw}");
        }
    }
}
