//! Test-only helpers shared by the crates' integration tests: a real update server on a free
//! loopback port, a sandboxed host root, a fault-injecting TCP proxy, fixture releases, a headless browser.

pub mod browser;
pub mod cdn;
pub mod channel;
pub mod cmd;
pub mod data;
pub mod dist;
pub mod drip;
pub mod garage;
pub mod host;
pub mod interpose;
pub mod page;
pub mod postgres;
pub mod proxy;
pub mod release;
pub mod scripted;
pub mod server;
pub mod sockets;
pub mod stored;
pub mod wait;
