//! The bounds of what hosts and operators send, checked before anything is stored: JSON
//! bodies (size, syntax, unknown fields), labels, names and lengths. Free text (messages,
//! health) is never refused for its length: it is cut to [`MAX_MESSAGE`] and marked.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use bytes::Bytes;
use qx_core::fleet::{
    CheckIn, Event, Labels, MAX_EVENTS_PER_BATCH, MAX_LABELS, MAX_LABEL_KEY, MAX_LABEL_VALUE,
    MAX_MESSAGE,
};
use qx_core::{ChannelName, ComponentName};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The largest request body of the fleet API but event batches.
pub const MAX_FLEET_BODY: usize = 1 << 20;
/// The largest event batch body: [`MAX_EVENTS_PER_BATCH`] events with full messages fit.
pub const MAX_EVENTS_BODY: usize = 4 << 20;
/// The longest version, time or other short field a host reports.
pub const MAX_SHORT: usize = 128;

/// Parses a JSON body strictly: 413 past the route's limit, 400 for malformed JSON or an
/// unknown field (serde's message names it and the line and column).
pub fn json<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "the {what} body is too large; nothing was stored. The limits are {MAX_FLEET_BODY} bytes ({MAX_EVENTS_BODY} for an event batch): send less"
            ))
        } else {
            ApiError::bad_request(format!("the {what} body could not be read: {e}"))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the {what} is not valid: {e}; nothing was stored. See docs/fleet-api.md for its fields"
        ))
    })
}

fn bad(message: String) -> ApiError {
    ApiError::bad_request(message)
}

/// A short field: at most `max` bytes, no control characters.
pub fn short(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(bad(format!(
            "{field} is {} bytes long; at most {max} are accepted",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(bad(format!("{field} contains control characters")));
    }
    Ok(())
}

/// A secret a host made (its enrollment key): 32 to 128 base64url characters, so that a
/// guessable one is refused.
pub fn secret(field: &str, value: &str) -> Result<(), ApiError> {
    let alphabet = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if !(32..=128).contains(&value.len()) || !value.chars().all(alphabet) {
        return Err(bad(format!(
            "{field} must be 32 to 128 base64url characters (256 random bits make 43)"
        )));
    }
    Ok(())
}

/// Labels: at most [`MAX_LABELS`]; keys of 1 to [`MAX_LABEL_KEY`] letters, digits, `.`,
/// `_`, `/`, `-` starting with a letter or digit (so that `k=v` and `k!=v` selectors parse);
/// values up to [`MAX_LABEL_VALUE`] bytes without control characters.
pub fn labels(what: &str, labels: &Labels) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(bad(format!(
            "{what} has {} labels; at most {MAX_LABELS} are accepted",
            labels.len()
        )));
    }
    for (k, v) in labels {
        label_key(k)?;
        short(&format!("label {k:?}"), v, MAX_LABEL_VALUE)?;
    }
    Ok(())
}

/// One label key (see [`labels`]).
pub fn label_key(k: &str) -> Result<(), ApiError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._/-".contains(c);
    let first_ok = k.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if k.len() > MAX_LABEL_KEY || !first_ok || !k.chars().all(ok_char) {
        return Err(bad(format!(
            "label key {k:?} is invalid: 1 to {MAX_LABEL_KEY} letters, digits, '.', '_', '/' or '-', starting with a letter or digit"
        )));
    }
    Ok(())
}

/// Cuts free text to [`MAX_MESSAGE`] bytes at a character boundary, marking the cut.
pub fn bound_message(text: &mut String) {
    if text.len() <= MAX_MESSAGE {
        return;
    }
    let marker = format!(" [cut from {} bytes]", text.len());
    let mut keep = MAX_MESSAGE - marker.len();
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    text.truncate(keep);
    text.push_str(&marker);
}

fn opt_short(field: &str, value: &Option<String>, max: usize) -> Result<(), ApiError> {
    value.as_deref().map_or(Ok(()), |v| short(field, v, max))
}

/// Checks a check-in and cuts its free text.
pub fn check_in(report: &mut CheckIn) -> Result<(), ApiError> {
    ChannelName::new(&report.channel).map_err(|e| bad(e.to_string()))?;
    short("agent_version", &report.agent_version, MAX_SHORT)?;
    if report.installed.len() > MAX_LABELS * 4 {
        return Err(bad(format!(
            "installed lists {} components; at most {} are accepted",
            report.installed.len(),
            MAX_LABELS * 4
        )));
    }
    for (component, version) in &report.installed {
        ComponentName::new(component).map_err(|e| bad(format!("installed: {e}")))?;
        short(&format!("installed.{component}"), version, MAX_SHORT)?;
    }
    opt_short("booted_slot", &report.booted_slot, MAX_SHORT)?;
    if report.slots.len() > 8 {
        return Err(bad("slots lists more than 8 slots".into()));
    }
    for s in &report.slots {
        short("slots[].name", &s.name, MAX_SHORT)?;
        opt_short("slots[].version", &s.version, MAX_SHORT)?;
        short("slots[].state", &s.state, MAX_SHORT)?;
    }
    opt_short("pending", &report.pending, MAX_SHORT)?;
    if let Some(r) = &mut report.last_result {
        short("last_result.version", &r.version, MAX_SHORT)?;
        short("last_result.outcome", &r.outcome, MAX_SHORT)?;
        short("last_result.time", &r.time, MAX_SHORT)?;
        if let Some(m) = &mut r.message {
            bound_message(m);
        }
    }
    if let Some(h) = &mut report.health {
        bound_message(h);
    }
    labels("the check-in", &report.labels)?;
    opt_short("time", &report.time, MAX_SHORT)
}

/// Checks an event batch and cuts its messages: at most [`MAX_EVENTS_PER_BATCH`] events,
/// sequence numbers from 1.
pub fn events(events: &mut [Event]) -> Result<(), ApiError> {
    if events.len() > MAX_EVENTS_PER_BATCH {
        return Err(bad(format!(
            "the batch holds {} events; at most {MAX_EVENTS_PER_BATCH} are accepted per batch: send the rest in another",
            events.len()
        )));
    }
    for e in events {
        if e.seq == 0 || i64::try_from(e.seq).is_err() {
            return Err(bad(format!(
                "event seq {} is out of range: sequence numbers start at 1 and stay below 2^63",
                e.seq
            )));
        }
        let at = format!("event {}", e.seq);
        short(&format!("{at}: time"), &e.time, MAX_SHORT)?;
        opt_short(&format!("{at}: version"), &e.version, MAX_SHORT)?;
        if let Some(c) = &e.component {
            ComponentName::new(c).map_err(|err| bad(format!("{at}: {err}")))?;
        }
        opt_short(&format!("{at}: stage"), &e.stage, MAX_SHORT)?;
        if let Some(m) = &mut e.message {
            bound_message(m);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary_and_marked() {
        let mut m = "é".repeat(MAX_MESSAGE);
        bound_message(&mut m);
        assert!(m.len() <= MAX_MESSAGE, "{}", m.len());
        assert!(m.ends_with(&format!(" [cut from {} bytes]", MAX_MESSAGE * 2)));
        let mut short_one = "fine".to_owned();
        bound_message(&mut short_one);
        assert_eq!(short_one, "fine");
    }

    #[test]
    fn label_keys_that_would_break_a_selector_are_refused() {
        for bad_key in ["", "a=b", "a!b", "-a", "a b", &"k".repeat(64)] {
            assert!(label_key(bad_key).is_err(), "{bad_key:?}");
        }
        for ok in ["site", "rack.row/3", "a_b-c", "0"] {
            assert!(label_key(ok).is_ok(), "{ok}");
        }
    }
}
