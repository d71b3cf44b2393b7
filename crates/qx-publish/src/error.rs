//! The one error type of the publish library: each variant names the file, URL, component or
//! version it concerns and says what to do.

use std::path::PathBuf;

use crate::lint::Finding;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Fs(#[from] qx_core::fs::FsError),
    #[error(transparent)]
    Bundle(#[from] qx_core::bundle::BundleError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("release spec {path}: {message}")]
    Spec { path: PathBuf, message: String },
    #[error("{0}")]
    Usage(String),
    #[error(
        "component {component}: build command `{command}` {status}; fix the build and run again"
    )]
    BuildCommand {
        component: String,
        command: String,
        status: String,
    },
    #[error("component {component}: {message}")]
    Source { component: String, message: String },
    #[error("archive {path}: {message}")]
    Archive { path: PathBuf, message: String },
    #[error("the release was refused by {} lint(s):\n{}", .0.len(), .0.iter().map(|f| format!("  - {f}")).collect::<Vec<_>>().join("\n"))]
    Lint(Vec<Finding>),
    #[error("the manifest breaks {} rule(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Manifest(Vec<String>),
    #[error(transparent)]
    Signature(#[from] qx_core::SignatureError),
    #[error("output directory {path} is not empty; build into a new or empty directory")]
    OutDirNotEmpty { path: PathBuf },
    #[error("{path} already exists; pass --force to overwrite it")]
    KeyExists { path: PathBuf },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    /// What the server would refuse, found before the work (and the upload) it would waste.
    #[error("{0}")]
    WouldBeRefused(String),
    #[error("{url}: {message}")]
    Server {
        url: String,
        status: u16,
        message: String,
    },
    #[error("channel state of {product} channel {channel}: {message}")]
    ChannelState {
        product: String,
        channel: String,
        message: String,
    },
    #[error("channel state of {product} channel {channel}: the server holds seq {} (409 Conflict), so our seq {ours} was not stored: someone else changed the channel while this command ran; nothing was overwritten — check the channel and run the command again", stored.map_or_else(|| "unknown".to_owned(), |s| s.to_string()))]
    ChannelConflict {
        product: String,
        channel: String,
        ours: u64,
        stored: Option<u64>,
    },
    #[error("verification of {target} found {} problem(s):\n{}", .problems.len(), .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Verify {
        target: String,
        problems: Vec<String>,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// True for mistakes in how the program was called (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Usage(_))
    }
}

pub type Result<T> = std::result::Result<T, Error>;
