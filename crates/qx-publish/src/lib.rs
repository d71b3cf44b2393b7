//! The release tool of Quantix OTA (docs/spec.md §6): from a release spec to a signed release
//! on the update server.
//!
//! - [`spec`]: the release spec file (TOML);
//! - [`pack`]: reproducible `tar.zst` archives;
//! - [`build`]: spec → signed, self-verified release directory;
//! - [`lint`]: the checks that stop a bad release before upload;
//! - [`upload`]: the server's publisher API (publish with progress, promote, yank, reads);
//! - [`deltas`]: patches from the channel's earlier releases (docs/spec.md §11);
//! - [`publish`]: build + lint + upload;
//! - [`promote`]: re-sign a release for another channel;
//! - [`channel`]: read, verify, build, sign and store the channel state (docs/spec.md §8);
//! - [`state`]: the channel-changing verbs' changes (publish, promote, yank, refresh);
//! - [`bundle`]: one file for an offline host (docs/spec.md §12);
//! - [`verify`]: check a release directory or URL end to end;
//! - [`keygen`]: minisign key pairs;
//! - [`cli`]: the `qx-publish` command line.

pub mod build;
pub mod bundle;
pub mod channel;
pub mod cli;
pub mod deltas;
pub mod error;
pub mod keygen;
pub mod lint;
pub mod pack;
pub mod preflight;
pub mod promote;
pub mod publish;
pub mod spec;
pub mod state;
pub mod upload;
pub mod verify;

pub use error::{Error, Result};
