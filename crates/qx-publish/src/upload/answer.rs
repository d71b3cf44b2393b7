//! The server's answers in words: transport errors with their causes, and refusals
//! (`{"error", "details"}` bodies) turned into messages that say what to do.

use reqwest::blocking::Response;
use reqwest::StatusCode;

use crate::error::{Error, Result};

/// What a request was for, to word its errors.
#[derive(Debug, Clone)]
pub(super) enum Action {
    Publish {
        version: String,
        channel: String,
    },
    Promote {
        version: String,
        from: String,
        to: String,
    },
    Yank {
        version: String,
        channel: String,
    },
    /// A `PUT` of a channel state.
    ChannelState {
        channel: String,
    },
    /// A rollout's status or an operator action on it.
    Rollout {
        id: String,
    },
    Read,
}

pub(super) fn transport(url: &str, e: reqwest::Error) -> Error {
    Error::Transport {
        url: url.to_owned(),
        message: describe_transport(&e),
    }
}

/// A transport error in words, with its causes.
pub(super) fn describe_transport(e: &reqwest::Error) -> String {
    let mut msg = if e.is_connect() {
        "cannot connect to the server".to_owned()
    } else if e.is_timeout() {
        "the request timed out".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    let mut depth = 0;
    while let Some(s) = source {
        depth += 1;
        if depth > 6 {
            break;
        }
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    if msg.contains("certificate") {
        msg.push_str(
            " (for a server with a self-signed or private certificate, pass --ca-cert FILE)",
        );
    }
    msg
}

/// Returns the body of a successful answer; turns any other into an error that says what
/// the server refused and what to do.
pub(super) fn check(resp: Response, url: &str, action: &Action) -> Result<Vec<u8>> {
    let status = resp.status();
    let body = resp.bytes().map_err(|e| transport(url, e))?.to_vec();
    check_parts(status, body, url, action)
}

pub(super) fn check_parts(
    status: StatusCode,
    body: Vec<u8>,
    url: &str,
    action: &Action,
) -> Result<Vec<u8>> {
    if status.is_success() {
        return Ok(body);
    }
    let (error, details) = parse_error_body(&body);
    let what = match (status.as_u16(), action) {
        (401, _) => "the server refused the publish token (401 Unauthorized); check QX_PUBLISH_TOKEN or --token-file against the server's PUBLISH_TOKEN".to_owned(),
        (409, Action::Publish { version, channel }) => format!(
            "version {version} already exists on channel {channel} with different content (409 Conflict); releases are immutable: bump the version in the spec"
        ),
        (409, Action::Promote { version, to, .. }) => format!(
            "channel {to} already has version {version} with different content (409 Conflict)"
        ),
        (413, _) => "the release is larger than the server accepts (413 Payload Too Large); raise the server's MAX_UPLOAD_BYTES or make the release smaller".to_owned(),
        (422, Action::Publish { version, .. }) => format!(
            "the server rejected release {version} (422 Unprocessable Entity)"
        ),
        (400 | 422, Action::ChannelState { channel }) => format!(
            "the server refused the channel state of {channel} ({status})"
        ),
        (422, _) => "the server rejected the manifest (422 Unprocessable Entity)".to_owned(),
        (400, _) => "the server could not read the request (400 Bad Request)".to_owned(),
        (404, Action::Promote { version, from, .. }) => format!(
            "version {version} is not on channel {from} (404 Not Found)"
        ),
        (404, Action::Yank { version, channel }) => format!(
            "version {version} is not on channel {channel} (404 Not Found)"
        ),
        (404, Action::Rollout { id }) => format!("no rollout {id} on this server (404 Not Found); `qx-publish rollout status` lists the channel's rollouts"),
        (409, Action::Rollout { id }) => format!("rollout {id} cannot do that now (409 Conflict)"),
        (403, Action::Rollout { .. }) => "the token may not do this (403 Forbidden): pause, resume and abort need a token with the rollout scope".to_owned(),
        (403, _) => "the token may not do this (403 Forbidden)".to_owned(),
        (404, _) => "not found (404)".to_owned(),
        (s, _) => format!("the server answered {s}"),
    };
    let mut message = what;
    if let Some(e) = error {
        message.push_str(&format!("\n  server says: {e}"));
    }
    for d in details {
        message.push_str(&format!("\n    - {d}"));
    }
    Err(Error::Server {
        url: url.to_owned(),
        status: status.as_u16(),
        message,
    })
}

/// `{"error": "...", "details": [...]}`; details may be strings or `{path, message}` objects.
fn parse_error_body(body: &[u8]) -> (Option<String>, Vec<String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        let text = String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(500)
            .collect::<String>();
        return ((!text.is_empty()).then_some(text), Vec::new());
    };
    let error = v["error"].as_str().map(str::to_owned);
    let details = v["details"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| match d {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Object(o) => {
                        let msg = o.get("message").and_then(|m| m.as_str());
                        let path = o.get("path").and_then(|m| m.as_str()).unwrap_or("");
                        match msg {
                            Some(m) if !path.is_empty() => format!("{path}: {m}"),
                            Some(m) => m.to_owned(),
                            None => o
                                .iter()
                                .map(|(k, v)| match v {
                                    serde_json::Value::String(s) => format!("{k}: {s}"),
                                    other => format!("{k}: {other}"),
                                })
                                .collect::<Vec<_>>()
                                .join(", "),
                        }
                    }
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    (error, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_with_string_and_object_details() {
        let (e, d) = parse_error_body(
            br#"{"error":"bad","details":["one",{"path":"components[0].sha256","message":"mismatch"}]}"#,
        );
        assert_eq!(e.as_deref(), Some("bad"));
        assert_eq!(d, ["one", "components[0].sha256: mismatch"]);
    }

    #[test]
    fn error_body_that_is_not_json() {
        let (e, d) = parse_error_body(b"gateway exploded\n");
        assert_eq!(e.as_deref(), Some("gateway exploded"));
        assert!(d.is_empty());
    }
}
