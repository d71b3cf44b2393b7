//! Quantix OTA full-image A/B updates: the boot side.
//!
//! - [`grubenv`] — the GRUB environment block, byte-compatible with `grub-editenv`;
//! - [`slot`] — slots A/B and the booted slot (`quantix.slot=` on the kernel
//!   command line);
//! - [`state`] — `/quantix/ab-update-state.json`;
//! - [`ab`] — status, boot-check, verify, mark-good, mark-bad;
//! - [`install`] — writing a new image into the inactive slot;
//! - [`config`] — [`AbConfig`], the `updates.ab` section of the agent's configuration;
//! - [`cli`] — `qx-update ab …`.
//!
//! Every host path is resolved under a root prefix, so a whole host can live in
//! a temporary directory in tests. The GRUB side is `packaging/grub/grub.cfg`;
//! its variables and the boot-counting model are described in
//! `packaging/grub/README.md`.

pub mod ab;
pub mod cli;
pub mod config;
pub mod error;
pub mod fsutil;
pub mod grubenv;
pub mod health;
pub mod history;
pub mod install;
pub mod slot;
pub mod state;

pub use config::{AbConfig, MountConfig, SlotTarget};
pub use error::BootError;
pub use install::{install_image, ImageFile, InstallReport, InstallRequest, Sha256Digest};
pub use slot::Slot;
pub use state::{AbState, Outcome};
