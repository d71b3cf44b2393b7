//! The integration tests of qx-publish: the built binary on real files and against a real
//! update server on a loopback port. One module per area; shared helpers in [`support`].
#![allow(clippy::unwrap_used)]

mod build;
mod channel;
mod container;
mod deltas;
mod keygen;
mod server;
mod support;
