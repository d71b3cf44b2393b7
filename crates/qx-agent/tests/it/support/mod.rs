//! Helpers shared by the areas of this test binary: the sandboxed host and the agent over it
//! ([`host`]), the daemon's API served in-process ([`api`]), commands, loop devices and mounts
//! ([`sys`]), and bounded waits.

pub mod api;
pub mod host;
pub mod hostile;
pub mod sys;

use std::time::{Duration, Instant};

/// A multi-threaded tokio runtime with two workers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

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
