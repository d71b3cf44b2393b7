//! The server's integration tests, one binary: real servers on loopback ports the OS picks,
//! real signed releases.
#![allow(clippy::unwrap_used)]

mod access_log;
mod api;
mod bad_input;
mod channel;
mod connections;
mod dashboard;
mod fleet_api;
mod fleet_cli;
mod fleet_metrics;
mod fleet_store;
mod hardening;
mod object_store;
mod robustness;
mod rollout_api;
mod rollout_dashboard;
mod rollouts;
mod routes;
mod support;
mod symlinks;
