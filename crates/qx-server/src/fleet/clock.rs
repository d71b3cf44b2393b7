//! The server's clock for the fleet view. Handlers read the time here, never from the system
//! directly, so that tests set it: liveness, expiry, `last_checkin` and the rate limit are all
//! judged by this clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use super::store::Millis;

/// Where "now" comes from.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> Millis;
}

/// The system clock (production).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }
}

/// A clock that stands still until it is set or advanced (tests). Clones share the time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(now: Millis) -> Self {
        Self(Arc::new(AtomicI64::new(now)))
    }
    pub fn set(&self, now: Millis) {
        self.0.store(now, Ordering::SeqCst);
    }
    pub fn advance(&self, by: std::time::Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// `now` as RFC 3339 UTC, with the fraction only when it is not zero
/// (`2026-01-02T03:04:05Z`, `2026-01-02T03:04:05.678Z`), as the store writes its times.
pub fn rfc3339(now: Millis) -> String {
    match jiff::Timestamp::from_millisecond(now) {
        Ok(t) => t.to_string(),
        Err(_) => format!("@{now}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_is_shared_and_settable() {
        let c = ManualClock::new(1_000);
        let d = c.clone();
        c.advance(std::time::Duration::from_secs(2));
        assert_eq!(d.now(), 3_000);
        d.set(5);
        assert_eq!(c.now(), 5);
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20Z");
    }
}
