//! Helpers shared by the areas of this test binary: the sandboxed host and the agent over it
//! ([`host`]), the daemon's API served in-process ([`api`]), commands, loop devices and mounts
//! ([`sys`]), and bounded waits.

pub mod api;
pub mod clock;
pub mod gate;
pub mod host;
pub mod hostile;
pub mod sys;

/// A multi-threaded tokio runtime with two workers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub use qx_testkit::wait::poll;
