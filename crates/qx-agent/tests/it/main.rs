//! The integration tests of `qx-agent`: one binary, one module per area, the helpers they
//! share in [`support`].
//!
//! Fast tier: `cargo test -p qx-agent` runs every test that needs neither root, qemu nor a
//! browser, and lists the others as ignored. Slow tier: `cargo xtask test` runs them all
//! (`-- --include-ignored`); they need root (loop devices, mounts, namespaces: `openrc`), qemu
//! (`qemu`) or Chromium (`browser`) and fail, never skip, when these are missing.
#![allow(clippy::unwrap_used)]

mod support;

mod ab_config;
mod activity;
mod api;
mod apply;
mod archive;
mod browser;
mod channel;
mod check;
mod config_check;
mod connections;
mod crash;
mod daemon;
mod deadlines;
mod debs;
mod deltas;
mod disk_full;
mod download;
mod field_failures;
mod fleet;
mod fullimage;
mod hardening;
mod hotfix;
mod openrc;
mod orphans;
mod packaging;
mod plain_errors;
mod qemu;
mod redirect;
mod reverse_proxy;
mod rollback;
mod rollout;
mod rollout_e2e;
mod schedule;
mod status_progress;
mod tls;
