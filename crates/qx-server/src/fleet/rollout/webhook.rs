//! The rollout webhook: on a halt, a completion and an abort, the server whose update
//! recorded it posts `{"event", "rollout": RolloutStatus}` to `ROLLOUT_WEBHOOK_URL`, signed
//! with `X-Qx-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>` (the secret read from
//! `ROLLOUT_WEBHOOK_SECRET_FILE` at each delivery). A few bounded attempts; a failure is
//! logged, never fatal.

use std::path::PathBuf;
use std::time::Duration;

use hmac::{Hmac, Mac};
use qx_core::fleet::RolloutStatus;
use serde_json::json;

use crate::config::FleetConfig;

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-qx-signature-256";
/// Attempts per delivery.
pub const ATTEMPTS: u32 = 3;
/// The wait before the second attempt (doubling after).
pub const BACKOFF: Duration = Duration::from_millis(500);
/// How long one attempt may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how notifications go.
pub struct Webhook {
    url: String,
    secret_file: Option<PathBuf>,
    client: reqwest::Client,
}

/// `sha256=<hex>` of HMAC-SHA256 over `body` with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC takes a key of any length; this arm is never taken.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhook {
    /// The webhook the settings name, if any.
    pub fn from_config(config: &FleetConfig) -> Option<Self> {
        let url = config.rollout_webhook_url.clone()?;
        let client = reqwest::Client::builder().timeout(TIMEOUT).build().ok()?;
        Some(Webhook {
            url,
            secret_file: config.rollout_webhook_secret_file.clone(),
            client,
        })
    }

    fn secret(&self) -> Vec<u8> {
        let Some(path) = &self.secret_file else {
            return Vec::new();
        };
        match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "rollout webhook: the secret file cannot be read; signing with an empty key");
                Vec::new()
            }
        }
    }

    /// Posts the event; retries a failed attempt a few times, then logs and gives up.
    pub async fn send(&self, event: &str, status: &RolloutStatus) {
        let body = match serde_json::to_vec(&json!({ "event": event, "rollout": status })) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "rollout webhook: the body cannot be written");
                return;
            }
        };
        let sig = signature(&self.secret(), &body);
        let mut wait = BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let sent = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &sig)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(res) if res.status().is_success() => return,
                Ok(res) => {
                    tracing::warn!(rollout = %status.id, %event, attempt, status = %res.status(), "rollout webhook: refused")
                }
                Err(e) => {
                    tracing::warn!(rollout = %status.id, %event, attempt, error = %e, "rollout webhook: not delivered")
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_rfc_4231_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
