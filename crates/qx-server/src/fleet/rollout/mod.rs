//! Staged rollouts with health gates (docs/spec.md §10): [`rules`] holds the pure rules,
//! [`engine`] the periodic tick (timeouts, halts, wave openings, completion) and the sync
//! with the signed channel state, [`offer`] the decision at a check-in, [`status`] what
//! operators see, [`api`] the operator endpoints, [`webhook`] the signed notifications.

pub mod api;
pub mod engine;
pub mod offer;
pub mod rules;
pub mod status;
pub mod webhook;

pub use engine::Rollouts;
