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
