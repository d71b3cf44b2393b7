//! Waiting on a condition, bounded in time: the one way tests wait (never a fixed sleep).

use std::time::{Duration, Instant};

/// Calls `ready` every `every` until it returns true or `within` has passed; returns whether
/// it did.
pub fn poll(within: Duration, every: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// [`poll`] for async tests: awaits `ready()` every `every` until it gives true or `within`
/// has passed; returns whether it did.
pub async fn poll_async<F, Fut>(within: Duration, every: Duration, mut ready: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if ready().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}
