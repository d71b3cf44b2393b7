//! The fleet API as the host calls it: enroll, check in, send events. One blocking HTTP client
//! with the agent's TLS settings (`updates.tls`); each answer is classified into what the
//! agent does next (a 401 stops reporting, a 429 postpones it, anything else is retried at the
//! next check).

use std::time::Duration;

use qx_core::api::ServerUrl;
use qx_core::fleet::{CheckIn, CheckInAnswer, EnrollRequest, EventBatch, EventsAccepted, Identity};
use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::FleetError;
use crate::Config;

/// How long a 429 without a readable `Retry-After` postpones the next attempt.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The largest answer read from the fleet API.
const MAX_ANSWER: u64 = 64 * 1024;

pub struct FleetClient {
    http: Client,
    server: ServerUrl,
}

impl FleetClient {
    /// A client for the configured server: its TLS trust and client certificate, the
    /// download settings' connect timeout, and the stall timeout as the whole request's limit.
    pub fn new(config: &Config) -> Result<Self, FleetError> {
        let builder = Client::builder()
            .http1_only()
            .connect_timeout(config.download.connect_timeout)
            .timeout(config.download.stall_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("qx-update/", env!("CARGO_PKG_VERSION")));
        let http = config
            .tls
            .apply(builder)
            .and_then(|b| b.build().map_err(|e| e.to_string()))
            .map_err(|message| FleetError::Network {
                url: config.server_url.clone(),
                message: format!("cannot set up the HTTP client: {message}"),
            })?;
        Ok(Self {
            http,
            server: config.server(),
        })
    }

    pub fn enroll(&self, token: &str, req: &EnrollRequest) -> Result<Identity, FleetError> {
        self.post(&self.server.enroll(), token, req)
    }

    pub fn check_in(&self, id: &Identity, report: &CheckIn) -> Result<CheckInAnswer, FleetError> {
        self.post(&self.server.checkin(&id.host_id), &id.host_token, report)
    }

    pub fn events(&self, id: &Identity, batch: &EventBatch) -> Result<EventsAccepted, FleetError> {
        self.post(&self.server.host_events(&id.host_id), &id.host_token, batch)
    }

    fn post<B: Serialize, A: DeserializeOwned>(
        &self,
        url: &str,
        token: &str,
        body: &B,
    ) -> Result<A, FleetError> {
        let shown = crate::download::redact_credentials(url);
        let answer = self
            .http
            .post(url)
            .bearer_auth(token)
            .json(body)
            .send()
            .map_err(|e| FleetError::Network {
                url: shown.clone(),
                message: chain(&e),
            })?;
        let status = answer.status();
        let retry_after = retry_after(&answer);
        let text = read_capped(answer).map_err(|message| FleetError::Network {
            url: shown.clone(),
            message,
        })?;
        match status {
            s if s.is_success() => serde_json::from_str(&text).map_err(|e| FleetError::Answer {
                url: shown,
                message: e.to_string(),
            }),
            StatusCode::UNAUTHORIZED => Err(FleetError::Unauthorized {
                url: shown,
                message: error_text(&text),
            }),
            StatusCode::TOO_MANY_REQUESTS => Err(FleetError::RetryAfter {
                url: shown,
                after: retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            }),
            s => Err(FleetError::Status {
                url: shown,
                status: s.as_u16(),
                message: error_text(&text),
            }),
        }
    }
}

/// The `Retry-After` of an answer: seconds, or an HTTP date (then the time until it, by this
/// host's clock).
fn retry_after(answer: &Response) -> Option<Duration> {
    let value = answer
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    parse_retry_after(value, jiff::Timestamp::now())
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT`, seen at `now`.
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let ms = at.as_millisecond().saturating_sub(now.as_millisecond());
    Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

fn read_capped(answer: Response) -> Result<String, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    answer
        .take(MAX_ANSWER)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading the answer: {e}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The server's `{"error", "details"}`, or the start of whatever it sent, fit to print.
fn error_text(body: &str) -> String {
    let text = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => match (v["error"].as_str(), v["details"].as_str()) {
            (Some(e), Some(d)) if !d.is_empty() => format!("{e}: {d}"),
            (Some(e), _) => e.to_owned(),
            _ => body.to_owned(),
        },
        Err(_) => body.chars().take(200).collect(),
    };
    crate::untrusted::printable(&text)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    crate::download::redact_credentials(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now: jiff::Timestamp = "2026-10-21T07:27:00Z".parse().expect("time");
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2026 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn error_bodies_are_shown_briefly() {
        assert_eq!(
            error_text(r#"{"error":"host token refused","details":"decommissioned"}"#),
            "host token refused: decommissioned"
        );
        assert_eq!(error_text("plain\u{1b}[31m"), "plain\\u{1b}[31m");
    }
}
