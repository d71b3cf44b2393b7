//! The integration tests of qx-boot, one module per area; helpers in `support`.
//!
//! Tests that need root (loop devices, mount) are in the slow tier: ignored by
//! a plain `cargo test`, run by `cargo xtask test` (`-- --include-ignored`).

mod ab_ops;
mod grubenv_compat;
mod install_loop;
mod packaging;
mod support;
