//! The shared core of Quantix OTA: the release manifest and every rule it must obey,
//! names, versions, hashes and minisign signatures, and the status events an agent reports.
//!
//! Every program of the workspace (server, agent, publish tool) goes through this crate, so a
//! rule is written once and enforced the same way everywhere.

pub mod api;
pub mod bundle;
pub mod channel;
mod document;
pub mod fleet;
pub mod fleet_queue;
pub mod fs;
pub mod hash;
pub mod history;
#[cfg(feature = "listener")]
pub mod listener;
pub mod manifest;
pub mod names;
pub mod rollout;
pub mod rollout_policy;
pub mod signature;
#[cfg(feature = "sign")]
pub mod signing;
pub mod size;
pub mod status;
pub mod update_log;
pub mod version;

pub use channel::{ChannelError, ChannelState, ReleaseEntry, Revocation, RevokeAction};
pub use hash::{Sha256, Sha256Hasher};
pub use history::{HistoryEntry, Outcome, UpdateKind};
pub use manifest::{
    ArtifactRef, Component, ComponentKind, FullImage, Manifest, ManifestError, Problem,
    Requirement, TargetSlot, UnknownFields, UpdateType, MANIFEST_FILE, SCHEMA_VERSION,
    SIGNATURE_FILE,
};
pub use names::{
    ArtifactName, ChannelName, ComponentName, InstallPath, NameError, Permissions, ProductName,
    ServiceName,
};
pub use signature::{SignatureError, TrustedKeys};
#[cfg(feature = "sign")]
pub use signing::{KeyPair, SigningKey};
pub use size::{parse_rate, parse_size, SizeError};
pub use update_log::UpdateLog;
pub use version::Version;
