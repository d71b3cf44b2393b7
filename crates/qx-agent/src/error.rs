//! The agent's errors and their process exit codes. The codes and their meanings are one
//! table ([`EXIT_CODE_TABLE`]): [`AgentError::exit_code`] names its entries and
//! `qx-update --help` prints it ([`exit_codes_help`]).

use std::path::{Path, PathBuf};

use crate::transaction::extract;
use crate::{download, ConfigError};

/// Declares the exit codes once: a constant per code in [`code`] and the table for `--help`.
macro_rules! exit_codes {
    ($($name:ident = $code:literal : $meaning:literal,)*) => {
        /// The exit codes of `qx-update`, by name.
        pub mod code {
            $(pub const $name: i32 = $code;)*
        }
        /// Every exit code of `qx-update` with its meaning, in order.
        pub const EXIT_CODE_TABLE: &[(i32, &str)] = &[$(($code, $meaning),)*];
    };
}

exit_codes! {
    SUCCESS = 0: "success (also: already up to date)",
    FAILURE = 1: "failure (I/O, journal)",
    USAGE = 2: "usage error (bad arguments, unknown --component, --allow-downgrade naming another version)",
    CONFIG = 3: "configuration error",
    BUSY = 10: "busy: another apply is in progress",
    FETCH = 11: "cannot reach the update server",
    NO_RELEASE = 12: "no release on this channel",
    TLS = 13: "TLS: the update server's certificate is not trusted, or it needs this host's client certificate (the message names the setting: updates.tls.*)",
    SIGNATURE_MISSING = 20: "signature missing (manifest or channel state)",
    SIGNATURE_INVALID = 21: "signature invalid",
    UNTRUSTED_KEY = 22: "signed by an untrusted key",
    MANIFEST_INVALID = 23: "manifest or channel state invalid",
    EXPIRED = 24: "manifest expired",
    WRONG_PRODUCT = 25: "manifest or channel state for another product",
    WRONG_CHANNEL = 26: "manifest or channel state for another channel",
    DOWNGRADE = 27: "downgrade refused",
    REPLAY = 28: "manifest replayed (older than already seen; servers without a channel state)",
    BELOW_MIN_VERSION = 29: "host below min_version",
    UNMET_REQUIREMENT = 30: "unmet requirement",
    NO_SPACE = 31: "not enough free space, or the disk filled up during the apply (nothing installed)",
    DOWNLOAD = 32: "download failed",
    UNSAFE_ARCHIVE = 33: "unsafe archive",
    STATE_REPLAYED = 34: "channel state replayed (seq lower than already seen, or the same seq with other bytes)",
    STATE_EXPIRED = 35: "channel state expired (frozen channel)",
    MANIFEST_MISMATCH = 36: "manifest does not match the channel state's manifest_sha256",
    NOT_INSTALLABLE = 37: "version not installable (not listed in the channel state, or revoked)",
    STATE_WITHDRAWN = 38: "channel state missing on a channel that had one",
    BUNDLE_INVALID = 39: "bundle malformed, truncated or tampered (nothing changed)",
    MIGRATION_FAILED = 40: "migration failed (files restored)",
    RESTART_FAILED = 41: "service restart failed (files restored)",
    NOT_EFFECTIVE = 42: "update did not take effect (restored)",
    NO_BACKUP = 43: "nothing older to roll back to (no backup left)",
    ROLLBACK_FAILED = 44: "rollback incomplete",
    SYSTEM_IMAGE = 45: "writing the system image failed (booted slot unchanged)",
    REBOOT = 46: "reboot command failed (image installed, pending)",
    ROLLBACK_FIRST_INSTALL = 47: "rollback refused: it would remove a first install (needs --force)",
    ROLLOUT_TOO_EARLY = 48: "rollout offer refused: this host's wave opens later by the signed plan (judged at the earlier of the server's time and the host's clock; nothing downloaded)",
    OFFER_REFUSED = 49: "offer refused: not within the signed channel state (not the rollout's version, not listed, or this host is in no wave; nothing downloaded)",
}

/// The exit-code table as `qx-update --help` prints it.
pub fn exit_codes_help() -> String {
    let mut out = String::from("Exit codes:");
    for (code, meaning) in EXIT_CODE_TABLE {
        out.push_str(&format!("\n  {code:>2}  {meaning}"));
    }
    out
}

/// A rollout's version offered before this host's wave opens by the signed plan.
#[derive(Debug, thiserror::Error)]
#[error("offer of {version} (rollout {rollout}) refused: this host is in wave {wave}, which the signed plan opens at {not_before}; the server's time is {server_time} and this host's clock {host_time}, and the earlier of the two decides; nothing was downloaded (a server offering a version before its signed time is misbehaving)")]
pub struct TooEarly {
    pub version: String,
    pub rollout: String,
    pub wave: usize,
    pub not_before: String,
    pub server_time: String,
    pub host_time: String,
}

/// Where an error is shown to a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `qx-update` on a terminal or in a script.
    Cli,
    /// The host API's answers and the Updates page built on them.
    Api,
}

/// Everything that can go wrong, one variant per refusal of docs/spec.md §2/§4, each with its own
/// exit code (see [`AgentError::exit_code`] and `qx-update --help`).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("update in progress: another apply holds {lock}; wait for it to finish (see `qx-update status`)")]
    Busy { lock: PathBuf },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot fetch {}: {message}", crate::download::redact_credentials(url))]
    Fetch { url: String, message: String },
    #[error(transparent)]
    Tls(crate::client_tls::TlsFailure),
    #[error(
        "the server has no release of {product} on channel {channel} ({})",
        crate::download::redact_credentials(url)
    )]
    NoRelease {
        product: String,
        channel: String,
        url: String,
    },
    /// A 404 for the update API where `<server_url>/health` is not an update server's either:
    /// the base path of `updates.server_url` is wrong (not "no release").
    #[error(
        "no update server answers under {}: {} {detail}; check the base path of updates.server_url",
        crate::download::redact_credentials(base),
        crate::download::redact_credentials(health)
    )]
    NotUpdateServer {
        base: String,
        health: String,
        detail: String,
    },
    #[error(
        "{} has no signature (header X-Qx-Signature missing or empty); refusing it",
        crate::download::redact_credentials(url)
    )]
    SignatureMissing { url: String },
    #[error("signature is invalid: {reason}; refusing it (tampered document or signature)")]
    SignatureInvalid { reason: String },
    #[error("signed by key {key_id}, which is not trusted (trusted: {trusted}); add the publisher's key to updates.trusted_keys if it is genuine")]
    UntrustedKey { key_id: String, trusted: String },
    #[error("manifest is invalid: {0}")]
    ManifestInvalid(#[from] qx_core::ManifestError),
    #[error("component {component}: install_path refused on this host: {reason}")]
    InstallPathRefused { component: String, reason: String },
    #[error(
        "channel state from {} is invalid: {source}",
        crate::download::redact_credentials(url)
    )]
    ChannelInvalid {
        url: String,
        source: qx_core::channel::ChannelError,
    },
    #[error("channel state of {channel} has seq {offered}, {}; refusing it (replayed or forged channel state)", match .same_seq { true => "the same seq as the state already seen but other bytes".to_owned(), false => format!("lower than {seen}, already seen") })]
    StateReplayed {
        channel: String,
        seen: u64,
        offered: u64,
        same_seq: bool,
    },
    #[error("channel state of {channel} (seq {seq}) expired at {expires}; refusing it (frozen channel): the publisher must run `qx-publish refresh`")]
    StateExpired {
        channel: String,
        seq: u64,
        expires: String,
    },
    #[error("manifest of {version} from {} has SHA-256 {got}, but the signed channel state names {expected}; refusing it without parsing it", crate::download::redact_credentials(url))]
    ManifestMismatch {
        version: String,
        url: String,
        expected: String,
        got: String,
    },
    #[error("version {version} is not installable on channel {channel}: {reason}")]
    NotInstallable {
        version: String,
        channel: String,
        reason: String,
    },
    #[error("the server has no channel state for {channel} ({}), but this host already verified one (seq {seen}); refusing the unsigned fallback (a server must not strip the channel state)", crate::download::redact_credentials(url))]
    StateWithdrawn {
        channel: String,
        url: String,
        seen: u64,
    },
    #[error(transparent)]
    RolloutTooEarly(Box<TooEarly>),
    #[error("offer of {version} refused: {reason}; nothing was downloaded")]
    OfferRefused { version: String, reason: String },
    #[error("bundle refused: {0}")]
    Bundle(#[from] qx_core::bundle::BundleError),
    #[error("manifest {version} expired at {expires}; the publisher must re-sign or publish a newer release")]
    Expired { version: String, expires: String },
    #[error("manifest is for product {got}, this host runs {expected}; refusing it")]
    WrongProduct { expected: String, got: String },
    #[error("manifest is for channel {got}, this host follows {expected}; refusing it")]
    WrongChannel { expected: String, got: String },
    #[error("component {component}: offered {offered} is lower than installed {installed}; a downgrade is taken only when it is allowed by naming the version ({offered})")]
    Downgrade {
        component: String,
        installed: String,
        offered: String,
    },
    #[error("manifest version {offered} is lower than {seen}, already seen on channel {channel} (replayed or rolled-back manifest); refusing it (it is taken on purpose only when a downgrade to {offered} is allowed by name)")]
    Replay {
        channel: String,
        seen: String,
        offered: String,
    },
    #[error("this host is at {installed}, below release {version}'s min_version {min_version}; install an intermediate release first")]
    BelowMinVersion {
        installed: String,
        min_version: String,
        version: String,
    },
    #[error("component {component} requires {requires} >= {min_version}, but {}", match .installed { Some(v) => format!("{v} is installed and not updated by this apply"), None => "it is not installed and not part of this apply".into() })]
    UnmetRequirement {
        component: String,
        requires: String,
        min_version: String,
        installed: Option<String>,
    },
    #[error("the downgrade allowed, to {asked}, does not name the offered version {offered}")]
    DowngradeMismatch { asked: String, offered: String },
    #[error("component {name} is not in release {version} (it has: {available})")]
    UnknownComponent {
        name: String,
        version: String,
        available: String,
    },
    #[error("not enough free space in {path}: {needed} bytes needed, {available} available")]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("out of space: {}: {source}; the file system filled up while {during}; nothing was installed and the partial files were removed: free space there and apply again", path.display())]
    OutOfSpace {
        path: PathBuf,
        /// What was being written: `"extracting the release"`, …
        during: &'static str,
        source: std::io::Error,
    },
    #[error("download failed: {0}")]
    Download(#[from] download::DownloadError),
    #[error("unsafe archive refused: {0}")]
    UnsafeArchive(#[from] extract::ExtractError),
    #[error("migration of component {component} failed ({status}); every file was restored and no service was restarted; its output is in {log}")]
    MigrationFailed {
        component: String,
        status: String,
        log: PathBuf,
    },
    #[error("restart of service {service} failed: {reason}; every file was restored from backup")]
    RestartFailed { service: String, reason: String },
    #[error("update did not take effect: {component}: {reason}; every file was restored from backup and the services restarted")]
    NotEffective { component: String, reason: String },
    #[error("nothing older to roll back to: the host runs {installed} and no backup of an earlier release is left in {dir} (updates.keep_backups keeps the backups of the last {keep} updates)")]
    NoBackup {
        dir: PathBuf,
        installed: String,
        keep: usize,
    },
    #[error("rollback refused: {version} was the first install on this host; rolling it back would remove {components} and leave nothing installed")]
    RollbackFirstInstall { version: String, components: String },
    #[error("rollback incomplete: {reason}")]
    RollbackFailed { reason: String },
    #[error("journal {path}: {message}")]
    Journal { path: PathBuf, message: String },
    #[error("process group {pgid} of the interrupted command `{command}` still has live processes ({pids}) {secs} s after SIGKILL (stuck in the kernel, e.g. on a hung mount); recovery waits for them before anything else: resolve what they wait on, or reboot, then run `qx-update recover`")]
    OrphanAlive {
        pgid: u32,
        command: String,
        pids: String,
        secs: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Fs(#[from] qx_core::fs::FsError),
    #[error("system image {version}: {source}")]
    SystemImage {
        version: String,
        source: qx_boot::BootError,
    },
    #[error("the system image is installed and pending, but the reboot command `{command}` failed: {reason}; reboot the host to start the new slot")]
    Reboot { command: String, reason: String },
}

impl AgentError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
        move |source| AgentError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// This error, or [`AgentError::OutOfSpace`] when it is a write refused because the file
    /// system is full (ENOSPC) or the quota is reached: a full disk while `during` (e.g.
    /// extracting) is the host's problem, never a hostile archive.
    pub(crate) fn or_out_of_space(self, during: &'static str) -> AgentError {
        match self {
            AgentError::UnsafeArchive(extract::ExtractError::Io { path, source })
            | AgentError::Io { path, source }
                if extract::is_out_of_space(&source) =>
            {
                AgentError::OutOfSpace {
                    path,
                    during,
                    source,
                }
            }
            AgentError::Fs(e) if extract::is_out_of_space(&e.source) => AgentError::OutOfSpace {
                path: e.path,
                during,
                source: e.source,
            },
            other => other,
        }
    }

    /// What the person who met this error can do about it, in the words of the interface it
    /// is shown on (a command-line flag, or a field of the host API's request): the error's
    /// own text names no flag, so the host API and its page never show one.
    pub fn remedy(&self, surface: Surface) -> Option<String> {
        match (self, surface) {
            (
                AgentError::Downgrade { offered, .. } | AgentError::Replay { offered, .. },
                Surface::Cli,
            ) => Some(format!("--allow-downgrade {offered} takes it")),
            (
                AgentError::Downgrade { offered, .. } | AgentError::Replay { offered, .. },
                Surface::Api,
            ) => Some(format!(
                "\"allow_downgrade\": \"{offered}\" in the request takes it"
            )),
            (AgentError::RollbackFirstInstall { .. }, Surface::Cli) => {
                Some("qx-update rollback --force removes them".to_owned())
            }
            _ => None,
        }
    }

    /// The error with its [`remedy`](Self::remedy) for `surface`, if it has one.
    pub fn explained(&self, surface: Surface) -> String {
        match self.remedy(surface) {
            Some(r) => format!("{self}; {r}"),
            None => self.to_string(),
        }
    }

    /// The process exit code for this error (one of [`EXIT_CODE_TABLE`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Io { .. }
            | AgentError::Fs(_)
            | AgentError::Journal { .. }
            | AgentError::OrphanAlive { .. } => code::FAILURE,
            AgentError::DowngradeMismatch { .. } | AgentError::UnknownComponent { .. } => {
                code::USAGE
            }
            AgentError::Config(_) => code::CONFIG,
            AgentError::Busy { .. } => code::BUSY,
            AgentError::Fetch { .. } | AgentError::NotUpdateServer { .. } => code::FETCH,
            AgentError::Tls(_) | AgentError::Download(download::DownloadError::Tls(_)) => code::TLS,
            AgentError::NoRelease { .. } => code::NO_RELEASE,
            AgentError::SignatureMissing { .. } => code::SIGNATURE_MISSING,
            AgentError::SignatureInvalid { .. } => code::SIGNATURE_INVALID,
            AgentError::UntrustedKey { .. } => code::UNTRUSTED_KEY,
            AgentError::ManifestInvalid(_)
            | AgentError::ChannelInvalid { .. }
            | AgentError::InstallPathRefused { .. } => code::MANIFEST_INVALID,
            AgentError::StateReplayed { .. } => code::STATE_REPLAYED,
            AgentError::StateExpired { .. } => code::STATE_EXPIRED,
            AgentError::ManifestMismatch { .. } => code::MANIFEST_MISMATCH,
            AgentError::NotInstallable { .. } => code::NOT_INSTALLABLE,
            AgentError::RolloutTooEarly(_) => code::ROLLOUT_TOO_EARLY,
            AgentError::OfferRefused { .. } => code::OFFER_REFUSED,
            AgentError::StateWithdrawn { .. } => code::STATE_WITHDRAWN,
            AgentError::Bundle(_) => code::BUNDLE_INVALID,
            AgentError::Expired { .. } => code::EXPIRED,
            AgentError::WrongProduct { .. } => code::WRONG_PRODUCT,
            AgentError::WrongChannel { .. } => code::WRONG_CHANNEL,
            AgentError::Downgrade { .. } => code::DOWNGRADE,
            AgentError::Replay { .. } => code::REPLAY,
            AgentError::BelowMinVersion { .. } => code::BELOW_MIN_VERSION,
            AgentError::UnmetRequirement { .. } => code::UNMET_REQUIREMENT,
            AgentError::NoSpace { .. } | AgentError::OutOfSpace { .. } => code::NO_SPACE,
            AgentError::Download(_) => code::DOWNLOAD,
            AgentError::UnsafeArchive(_) => code::UNSAFE_ARCHIVE,
            AgentError::MigrationFailed { .. } => code::MIGRATION_FAILED,
            AgentError::RestartFailed { .. } => code::RESTART_FAILED,
            AgentError::NotEffective { .. } => code::NOT_EFFECTIVE,
            AgentError::NoBackup { .. } => code::NO_BACKUP,
            AgentError::RollbackFirstInstall { .. } => code::ROLLBACK_FIRST_INSTALL,
            AgentError::RollbackFailed { .. } => code::ROLLBACK_FAILED,
            AgentError::SystemImage { .. } => code::SYSTEM_IMAGE,
            AgentError::Reboot { .. } => code::REBOOT,
        }
    }

    /// The `failed` state this error leaves in the status: its message, exit code and the
    /// host API's HTTP status for it.
    pub fn failed_state(&self) -> qx_core::status::UpdateState {
        qx_core::status::UpdateState::Failed {
            reason: self.to_string(),
            code: Some(self.exit_code()),
            http_status: Some(crate::daemon::api::agent_error_status(self).as_u16()),
        }
    }

    /// True for refusals of a manifest or an offer (nothing on the host was touched).
    pub fn is_refusal(&self) -> bool {
        let c = self.exit_code();
        (code::SIGNATURE_MISSING..=code::NO_SPACE).contains(&c)
            || (code::STATE_REPLAYED..=code::BUNDLE_INVALID).contains(&c)
            || (code::ROLLOUT_TOO_EARLY..=code::OFFER_REFUSED).contains(&c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_in_the_help_once() {
        let help = exit_codes_help();
        for (code, meaning) in EXIT_CODE_TABLE {
            let line = format!("  {code:>2}  {meaning}");
            assert_eq!(help.matches(&line).count(), 1, "{line}");
        }
        let busy = AgentError::Busy {
            lock: PathBuf::from("/x"),
        };
        assert_eq!(busy.exit_code(), code::BUSY);
        assert!(EXIT_CODE_TABLE.contains(&(busy.exit_code(), "busy: another apply is in progress")));
    }
}
