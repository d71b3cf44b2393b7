//! The host agent of Quantix OTA (`qx-update`): check, download and apply releases as a
//! crash-safe transaction, the daemon with its local HTTPS API and web page, and the A/B
//! system-update commands. Also a library, so a larger daemon can embed it.

pub mod api;
pub mod apply;
pub mod check;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod download;
pub mod extract;
pub mod journal;
pub mod service;
pub mod state;
pub mod tls;
pub mod updatelog;
pub mod web;
pub mod window;
