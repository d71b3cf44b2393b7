//! The release tool of Quantix OTA (docs/spec.md §6): from a release spec to a signed release
//! on the update server.
//!
//! - [`spec`]: the release spec file (TOML);
//! - [`pack`]: reproducible `tar.zst` archives;
//! - [`build`]: spec → signed, self-verified release directory;
//! - [`lint`]: the checks that stop a bad release before upload;
//! - [`upload`]: the server's publisher API (publish with progress, promote, yank, reads);
//! - [`publish`]: build + lint + upload;
//! - [`promote`]: re-sign a release for another channel;
//! - [`verify`]: check a release directory or URL end to end;
//! - [`keygen`]: minisign key pairs;
//! - [`cli`]: the `qx-publish` command line.

pub mod build;
pub mod cli;
pub mod error;
pub mod keygen;
pub mod lint;
pub mod pack;
pub mod promote;
pub mod publish;
pub mod spec;
pub mod upload;
pub mod verify;

pub use error::{Error, Result};
