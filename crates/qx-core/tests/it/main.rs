//! qx-core's integration tests: one binary, one module per area.

mod minisign_cli;
mod rollout;
mod schema_drift;
