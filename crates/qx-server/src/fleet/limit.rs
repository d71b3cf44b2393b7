//! The overload limit of host requests (enroll, check-in, events): a token bucket on the
//! server's [`super::clock::Clock`], shared by every serving thread. Past it the server
//! answers 429 with `Retry-After`, so that a fleet coming back from an outage all at once
//! is spread out instead of queued.

use std::sync::Mutex;

use super::store::Millis;

/// The most seconds added to `Retry-After` to spread refused hosts over time.
pub const RETRY_SPREAD_S: u64 = 10;

/// A token bucket: `rate` requests per second, holding at most `burst`.
#[derive(Debug)]
pub struct RateLimit {
    rate: u32,
    burst: u32,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Option<Millis>,
}

impl RateLimit {
    /// `rate == 0`: no limit.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate,
            burst: burst.max(1),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(burst.max(1)),
                at: None,
            }),
        }
    }

    /// Takes one request's token at `now`, or says after how many seconds to retry: the
    /// time until a token is back (at least 1 s) plus 0 to [`RETRY_SPREAD_S`] seconds chosen
    /// by `spread_key` (a byte of the caller's token hash), so refused hosts do not all
    /// return in the same second.
    pub fn take(&self, now: Millis, spread_key: u8) -> Result<(), u64> {
        if self.rate == 0 {
            return Ok(());
        }
        let Ok(mut b) = self.bucket.lock() else {
            return Ok(());
        };
        let rate_per_ms = f64::from(self.rate) / 1000.0;
        if let Some(at) = b.at {
            // A clock that stepped back refills nothing.
            let elapsed = (now - at).max(0) as f64;
            b.tokens = (b.tokens + elapsed * rate_per_ms).min(f64::from(self.burst));
        }
        b.at = Some(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait_s = ((1.0 - b.tokens) / rate_per_ms / 1000.0).ceil().max(1.0) as u64;
        Err(wait_s + u64::from(spread_key) % (RETRY_SPREAD_S + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refuses_past_the_burst_and_refills_with_the_clock() {
        let l = RateLimit::new(2, 3);
        for _ in 0..3 {
            assert_eq!(l.take(0, 0), Ok(()));
        }
        assert_eq!(l.take(0, 0), Err(1));
        assert_eq!(l.take(0, 7), Err(8));
        // Half a second at 2/s gives one token back.
        assert_eq!(l.take(500, 0), Ok(()));
        assert!(l.take(500, 0).is_err());
        // A clock stepping back refills nothing.
        assert!(l.take(100, 0).is_err());
    }

    #[test]
    fn retry_after_stays_within_its_bounds() {
        let l = RateLimit::new(1, 1);
        assert_eq!(l.take(0, 0), Ok(()));
        for key in 0..=255u8 {
            let s = l.take(0, key).expect_err("empty");
            assert!((1..=1 + RETRY_SPREAD_S).contains(&s), "{key}: {s}");
        }
    }

    #[test]
    fn zero_rate_is_no_limit() {
        let l = RateLimit::new(0, 0);
        for _ in 0..10_000 {
            assert_eq!(l.take(0, 0), Ok(()));
        }
    }
}
