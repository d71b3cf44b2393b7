//! Quantix OTA full-image A/B updates: the boot side.
//!
//! - [`grubenv`] — the GRUB environment block, byte-compatible with `grub-editenv`;
//! - [`slotenv`] — the A/B variables in that block (`ORDER`, `X_LEFT`, `X_OK`)
//!   and the verbs that change them (make unbootable, try next, mark good,
//!   fall back);
//! - [`slot`] — slots A/B and the booted slot (`quantix.slot=` on the kernel
//!   command line);
//! - [`state`] — `/quantix/ab-update-state.json`;
//! - [`ab`] — status, boot-check, verify, mark-good, mark-bad;
//! - [`install`] — writing a new image into the inactive slot ([`SlotInstall`];
//!   `slotfs`: the slot's file system, mounted while it is written);
//! - [`sink`] — [`ImageSink`], one image file streamed into the slot in one pass
//!   (hashed once, fsynced, read back without the page cache, renamed);
//! - [`history`] — the update-log lines and history entries of the A/B code;
//! - [`config`] — [`AbConfig`], the `updates.ab` section of the agent's configuration;
//! - [`cli`] — `qx-update ab …`.
//!
//! Every operation takes an [`AbContext`]: the configuration, the root prefix
//! and the update log (`updates.log_path`). Every host path is resolved under
//! the root prefix, so a whole host can live in a temporary directory in
//! tests. The GRUB side is `packaging/grub/grub.cfg`;
//! its variables and the boot-counting model are described in
//! `packaging/grub/README.md`.

pub mod ab;
pub mod cli;
pub mod config;
pub mod error;
pub mod grubenv;
pub mod health;
pub mod history;
pub mod install;
pub mod sink;
pub mod slot;
pub mod slotenv;
mod slotfs;
pub mod state;

pub use ab::AbContext;
pub use config::{AbConfig, MountConfig, SlotTarget};
pub use error::BootError;
pub use install::{install_image, ImageFile, InstallReport, InstallRequest, SlotInstall};
pub use sink::{Expected, ImageSink, SyncedImage, VerifiedImage};
pub use slot::Slot;
pub use state::AbState;
