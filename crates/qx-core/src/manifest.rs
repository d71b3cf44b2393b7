//! The release manifest (docs/spec.md §2): its types, how it is parsed, and every rule it must obey.
//!
//! Parsing is the only way from bytes to a [`Manifest`]: it checks the structure (JSON syntax,
//! types, names, versions, hashes; the first such error stops it, with its JSON path) and then
//! every rule between fields, all of them reported together as [`Problem`]s.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::document::{parse_json, schema_text, to_signed_bytes, ParseFailure};
pub use crate::document::{Problem, UnknownFields};
use crate::hash::Sha256;
use crate::names::{
    ArtifactName, ChannelName, ComponentName, InstallPath, Permissions, ProductName, ServiceName,
};
use crate::version::Version;

/// The manifest format version this code writes and understands.
pub const SCHEMA_VERSION: u32 = 1;
/// The file name of the manifest in a release directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The file name of the detached minisign signature beside it.
pub const SIGNATURE_FILE: &str = "manifest.json.minisig";

/// A signed description of one release of one product on one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "Quantix OTA release manifest")]
pub struct Manifest {
    /// Format version; always 1 for now.
    pub schema: u32,
    pub product: ProductName,
    pub version: Version,
    pub channel: ChannelName,
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub release_date: Timestamp,
    /// Agents refuse the manifest after this instant.
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub expires: Timestamp,
    pub update_type: UpdateType,
    #[serde(default)]
    pub components: Vec<Component>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_image: Option<FullImage>,
    /// Hosts below this version must take an intermediate release first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<Version>,
    #[serde(default)]
    pub release_notes: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpdateType {
    Component,
    Full,
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    /// One regular file (a binary, a config file).
    #[default]
    File,
    /// A directory tree swapped as a whole (a web UI).
    Directory,
    /// Database migrations, run with `migrate_command` before any service restarts.
    Migrations,
}

/// One installable part of a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Component {
    pub name: ComponentName,
    pub version: Version,
    pub artifact: ArtifactName,
    pub sha256: Sha256,
    pub size_bytes: u64,
    pub install_path: InstallPath,
    #[serde(default)]
    pub kind: ComponentKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_service: Option<ServiceName>,
    #[serde(default = "yes")]
    pub backup_before_update: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Permissions>,
    /// Permit setuid/setgid bits (`permissions`, archive entries); refused otherwise.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_setuid: bool,
    /// Permit modes writable by others (`permissions`, archive entries); refused otherwise.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_world_writable: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<Requirement>,
    /// Only for `kind: migrations`: argv run from the extracted component's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate_command: Option<Vec<String>>,
    /// Optional argv run after the restart; success proves the update took effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_command: Option<Vec<String>>,
    /// The artifact's archive uncompressed: what a delta rebuilds (required with `deltas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tar: Option<Digest>,
    /// Patches that rebuild [`Component::tar`] from content a host may hold (docs/spec.md §11).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<Delta>,
}

/// The SHA-256 and size of some bytes that are not an artifact of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Digest {
    pub sha256: Sha256,
    pub size_bytes: u64,
}

/// A patch from one earlier content of a component to this release's archive (docs/spec.md
/// §11). Its base is the component's *installed content*: a file component's file; for a
/// directory or migrations component, its regular files concatenated in the byte order of
/// their paths relative to `install_path`. Applying the patch to exactly those bytes yields
/// the archive uncompressed, checked against [`Component::tar`] before anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Delta {
    /// SHA-256 of the base.
    pub from_sha256: Sha256,
    /// Size of the base: a host checks it before hashing anything.
    pub from_size_bytes: u64,
    /// The version whose content is the base (informational: the hash decides).
    pub from_version: Version,
    pub artifact: ArtifactName,
    pub sha256: Sha256,
    pub size_bytes: u64,
    pub algorithm: DeltaAlgorithm,
}

/// How a delta is encoded. A host skips a delta whose algorithm it does not know (a newer
/// publisher's) and downloads the whole artifact instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeltaAlgorithm {
    /// A zstd frame compressed with the base as its reference prefix (long window).
    ZstdPatch,
    /// An executable-aware block-copy patch with LZMA2-coded streams.
    ExecPatch,
    /// For system images: zstd frames of a few MiB each, each compressed with a window of the
    /// base around the same place as its reference prefix, so a host applies it with bounded
    /// memory reading the base from its booted slot.
    ZstdWindow,
    /// An algorithm this program does not know.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

impl DeltaAlgorithm {
    /// Its name in a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ZstdPatch => "zstd-patch",
            Self::ExecPatch => "exec-patch",
            Self::ZstdWindow => "zstd-window",
            Self::Unknown => "unknown",
        }
    }
}

impl Delta {
    pub fn artifact_ref(&self) -> ArtifactRef {
        ArtifactRef {
            artifact: self.artifact.clone(),
            sha256: self.sha256,
            size_bytes: self.size_bytes,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A prerequisite: another component installed at least at this version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Requirement {
    pub name: ComponentName,
    pub min_version: Version,
}

/// A downloadable file with its hash and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ArtifactRef {
    pub artifact: ArtifactName,
    pub sha256: Sha256,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FullImage {
    pub artifact: ArtifactName,
    pub sha256: Sha256,
    pub size_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<ArtifactRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<ArtifactRef>,
    #[serde(default = "yes")]
    pub requires_reboot: bool,
    #[serde(default)]
    pub target_slot: TargetSlot,
    /// The image cut into content-defined chunks: a host rebuilds it from the chunks its
    /// booted slot holds and fetches only the others (docs/deltas.md, "Images").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<ImageChunks>,
    /// Patches that rebuild the image itself from an earlier release's image, as a host's
    /// booted slot holds it (`zstd-window`; docs/deltas.md, "Images").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<Delta>,
}

/// The chunk index (lengths, packed lengths and SHA-256 of every chunk, in image order) and
/// the pack (every chunk compressed alone, in the same order) of a system image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImageChunks {
    pub index: ArtifactRef,
    pub pack: ArtifactRef,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum TargetSlot {
    #[default]
    #[serde(rename = "auto")]
    Auto,
    A,
    B,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Syntax(String),
    #[error("manifest field {path}: {message}")]
    Structure { path: String, message: String },
    #[error("manifest has unknown fields: {}", .0.join(", "))]
    UnknownFields(Vec<String>),
    #[error("manifest breaks {} rule(s): {}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
}

impl ManifestError {
    /// Every problem as a list, for JSON error bodies.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ManifestError::Syntax(m) => vec![Problem {
                path: String::new(),
                message: m.clone(),
            }],
            ManifestError::Structure { path, message } => vec![Problem {
                path: path.clone(),
                message: message.clone(),
            }],
            ManifestError::UnknownFields(fields) => fields
                .iter()
                .map(|f| Problem {
                    path: f.clone(),
                    message: "unknown field".into(),
                })
                .collect(),
            ManifestError::Invalid(p) => p.clone(),
        }
    }
}

impl From<ParseFailure> for ManifestError {
    fn from(failure: ParseFailure) -> Self {
        match failure {
            ParseFailure::Syntax(m) => ManifestError::Syntax(m),
            ParseFailure::Structure { path, message } => ManifestError::Structure { path, message },
            ParseFailure::UnknownFields(f) => ManifestError::UnknownFields(f),
        }
    }
}

impl Manifest {
    /// Parses and validates manifest bytes.
    pub fn parse(bytes: &[u8], unknown: UnknownFields) -> Result<Self, ManifestError> {
        let manifest: Manifest = parse_json(bytes, unknown).map_err(ManifestError::from)?;
        manifest.validate().map_err(ManifestError::Invalid)?;
        Ok(manifest)
    }

    /// Serialises the manifest as the bytes that get signed (pretty JSON, trailing newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        to_signed_bytes(self)
    }

    /// Every rule between fields; all broken ones at once, group by group: the release, the
    /// update type, each component, the full image.
    pub fn validate(&self) -> Result<(), Vec<Problem>> {
        let mut check = rules::Check::new(self);
        check.release();
        check.update_type();
        check.components();
        check.full_image();
        check.finish()
    }

    /// Every artifact of the release with its hash and size: exactly what may be downloaded.
    pub fn artifacts(&self) -> Vec<ArtifactRef> {
        let mut out: Vec<ArtifactRef> = Vec::new();
        for c in &self.components {
            out.push(c.artifact_ref());
            out.extend(c.deltas.iter().map(Delta::artifact_ref));
        }
        if let Some(img) = &self.full_image {
            out.push(img.artifact_ref());
            out.extend(img.kernel.iter().cloned());
            out.extend(img.initramfs.iter().cloned());
            if let Some(c) = &img.chunks {
                out.extend([c.index.clone(), c.pack.clone()]);
            }
            out.extend(img.deltas.iter().map(Delta::artifact_ref));
        }
        out
    }

    /// The artifacts a host installs from: [`Manifest::artifacts`] without the deltas and the
    /// image's chunks and deltas (which only save downloads; a bundle leaves them out).
    pub fn whole_artifacts(&self) -> Vec<ArtifactRef> {
        let mut savers: Vec<&ArtifactName> = self
            .components
            .iter()
            .flat_map(|c| c.deltas.iter().map(|d| &d.artifact))
            .collect();
        if let Some(img) = &self.full_image {
            if let Some(c) = &img.chunks {
                savers.extend([&c.index.artifact, &c.pack.artifact]);
            }
            savers.extend(img.deltas.iter().map(|d| &d.artifact));
        }
        self.artifacts()
            .into_iter()
            .filter(|a| !savers.contains(&&a.artifact))
            .collect()
    }

    pub fn artifact(&self, name: &str) -> Option<ArtifactRef> {
        self.artifacts()
            .into_iter()
            .find(|a| a.artifact.as_str() == name)
    }

    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name.as_str() == name)
    }

    /// True when `now` is past `expires`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires
    }
}

impl Component {
    /// The special modes this component may install.
    pub fn mode_allowance(&self) -> ModeAllowance {
        ModeAllowance {
            setuid: self.allow_setuid,
            world_writable: self.allow_world_writable,
        }
    }

    /// The component's artifact with its hash and size.
    pub fn artifact_ref(&self) -> ArtifactRef {
        ArtifactRef {
            artifact: self.artifact.clone(),
            sha256: self.sha256,
            size_bytes: self.size_bytes,
        }
    }
}

impl FullImage {
    /// The system image's artifact with its hash and size (kernel and initramfs aside).
    pub fn artifact_ref(&self) -> ArtifactRef {
        ArtifactRef {
            artifact: self.artifact.clone(),
            sha256: self.sha256,
            size_bytes: self.size_bytes,
        }
    }
}

/// Which dangerous modes a component may install (docs/release-spec.md: `allow_setuid`,
/// `allow_world_writable`); both refused by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModeAllowance {
    pub setuid: bool,
    pub world_writable: bool,
}

impl ModeAllowance {
    /// Why `mode` may not be installed, or `None` when it may: setuid/setgid bits without
    /// `setuid`, a mode writable by others without `world_writable`.
    pub fn refusal(self, mode: u32) -> Option<String> {
        if mode & 0o6000 != 0 && !self.setuid {
            return Some(format!(
                "mode {mode:04o} sets the setuid/setgid bit; refused unless the component sets allow_setuid"
            ));
        }
        if mode & 0o002 != 0 && !self.world_writable {
            return Some(format!(
                "mode {mode:04o} is writable by others; refused unless the component sets allow_world_writable"
            ));
        }
        None
    }
}

/// System directories refused as install paths (docs/release-spec.md, "Install paths that are
/// refused") unless the agent's configuration allows them (`updates.allow_install_paths`):
/// replacing one of them wholesale leaves a host that cannot boot or run the agent.
pub const DENIED_INSTALL_PATHS: &[&str] = &[
    "/bin",
    "/boot",
    "/data",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/local",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/sbin",
    "/usr/share",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/run",
    "/var/tmp",
];

/// The agent's own configuration, trusted keys and state: no install path may be one of them,
/// inside one, or a parent of one, whatever any setting allows.
pub const AGENT_OWN_PATHS: &[&str] = &["/etc/limiquantix", "/data/updates", "/var/log/quantix"];

/// Why `path` may not be an install path on a host that allows the prefixes `allowed`, or
/// `None` when it may: it overlaps the agent's own paths (never allowed), or it is a denied
/// system directory (any top-level `/lib*` included) that no allowed prefix equals or
/// contains.
pub fn install_path_refusal(path: &InstallPath, allowed: &[InstallPath]) -> Option<String> {
    if let Some(why) = agent_path_refusal(path) {
        return Some(why);
    }
    let p = path.as_str();
    let top_lib = p.starts_with("/lib") && !p[1..].contains('/');
    let is_allowed = allowed
        .iter()
        .any(|a| p == a.as_str() || p.starts_with(&format!("{}/", a.as_str())));
    ((top_lib || DENIED_INSTALL_PATHS.contains(&p)) && !is_allowed).then(|| {
        format!(
            "{p} is a system directory; installing there would replace it wholesale and can leave the host unable to boot (install below it instead, e.g. /data/bin/<name>, or allow it on the host with updates.allow_install_paths)"
        )
    })
}

/// Why `path` overlaps the agent's own configuration, trust or state (refused by the manifest
/// rules everywhere, never allowed), or `None`.
pub fn agent_path_refusal(path: &InstallPath) -> Option<String> {
    let p = path.as_str();
    AGENT_OWN_PATHS.iter().find(|own| overlaps(own, p)).map(|own| {
        format!(
            "{p} overlaps {own}, the update agent's own configuration, trust or state; a release must not replace the agent's own files"
        )
    })
}

/// Two install paths overlap when they are equal or one is inside the other.
fn overlaps(a: &str, b: &str) -> bool {
    a == b || b.starts_with(&format!("{a}/")) || a.starts_with(&format!("{b}/"))
}

/// The JSON Schema of the manifest, generated from the types.
pub fn json_schema() -> String {
    schema_text(&schemars::schema_for!(Manifest))
}

mod rules;
#[cfg(test)]
mod tests;
