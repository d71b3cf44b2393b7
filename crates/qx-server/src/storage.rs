//! Where releases live. Route code sees only the [`ReleaseStore`] trait; the local-disk layout
//! of docs/spec.md §3 (`$RELEASE_DIR/<product>/<channel>/<version>/manifest.json`, artifacts beside
//! it) is the default backend ([`local::LocalStore`]). An object-store backend implements the
//! same trait: uploads go to a staging prefix, commit is a conditional put of the manifest,
//! promote is a server-side copy, yank is a marker object.
//!
//! The signed channel state of each product and channel (docs/spec.md §8) lives beside its
//! releases; [`ReleaseStore::put_channel_state`] is a compare-and-swap on its `seq`. The local
//! engine holds a per-channel lock while it reads, decides and writes; an object-store engine
//! reads the stored state with its ETag, decides, and writes with a conditional put (`If-Match`,
//! or `If-None-Match: *` when there is none), starting over when the condition fails.

mod any;
pub mod local;
pub mod lock;
pub mod object;

pub use any::{AnyStore, AnyUpload};

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use qx_core::{
    ArtifactName, ArtifactRef, ChannelName, ChannelState, Manifest, ProductName, Version,
};
use tokio::io::AsyncWrite;

/// A chunked stream of file bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// One release: product, channel and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseKey {
    pub product: ProductName,
    pub channel: ChannelName,
    pub version: Version,
}

impl std::fmt::Display for ReleaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} on channel {}",
            self.product, self.version, self.channel
        )
    }
}

/// A version on a channel, as listed.
#[derive(Debug, Clone)]
pub struct VersionEntry {
    pub version: Version,
    pub yanked: bool,
}

/// A stored release, with its exact manifest and signature bytes.
#[derive(Debug, Clone)]
pub struct StoredRelease {
    pub key: ReleaseKey,
    pub manifest_bytes: Bytes,
    pub signature: Bytes,
    pub manifest: Manifest,
    pub yanked: bool,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The release is new and now visible.
    Created,
    /// The same version was already there with byte-identical manifest (so identical
    /// artifacts); nothing changed.
    Identical,
    /// The same version (or one equal by SemVer precedence) is there with other content.
    Conflict,
}

/// A stored channel state: the publisher's exact bytes and `.minisig` text, and what they
/// say (parsed leniently: a stored state was checked strictly when it was put).
#[derive(Debug, Clone)]
pub struct StoredChannel {
    pub bytes: Bytes,
    pub signature: Bytes,
    pub state: ChannelState,
}

/// What a compare-and-swap of a channel state did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The state is new (none was stored, or its `seq` is higher) and now served.
    Stored,
    /// The stored state has the very same bytes; nothing changed (its signature is kept).
    Identical,
    /// The stored state has a `seq` at least as high, with other bytes; nothing changed.
    Stale { stored_seq: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} was not found")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("stored release {path} is damaged: {reason}; remove or repair it")]
    Corrupt { path: PathBuf, reason: String },
    /// Something in the release directory the server will not use as it is (a symlinked
    /// staging directory): the message says why and what to do.
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("storage task failed: {0}")]
    Task(String),
    /// The object store did not answer, answered with an error, or refused the credentials:
    /// worth retrying later (503 with `Retry-After`).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Fs(#[from] qx_core::fs::FsError),
}

impl StoreError {
    /// True for a full file system or an exhausted quota (`ENOSPC`, `EDQUOT`).
    pub fn is_out_of_space(&self) -> bool {
        let io = match self {
            StoreError::Io { source, .. } => source,
            StoreError::Fs(e) => &e.source,
            _ => return false,
        };
        matches!(
            io.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        ) || matches!(io.raw_os_error(), Some(28 /* ENOSPC */ | 122 /* EDQUOT */))
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A file name a release may hold: not empty, no `/`, `\\` or NUL, not hidden (markers and
/// staging are hidden).
pub(crate) fn check_file_name(name: &str) -> StoreResult<()> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']) {
        return Err(StoreError::NotFound(format!("file {name:?}")));
    }
    Ok(())
}

/// A stored manifest must describe the release its place names; one for another product,
/// channel or version (a copied or misplaced release) is damage.
pub(crate) fn check_manifest_matches(
    manifest: &Manifest,
    key: &ReleaseKey,
    place: &std::path::Path,
) -> StoreResult<()> {
    if manifest.product == key.product
        && manifest.channel == key.channel
        && manifest.version == key.version
    {
        return Ok(());
    }
    Err(StoreError::Corrupt {
        path: place.to_owned(),
        reason: format!(
            "its manifest is for {} {} on channel {}, not the {key} its path names",
            manifest.product, manifest.version, manifest.channel
        ),
    })
}

/// The compare half of a channel state's compare-and-swap: what to answer without writing
/// (`None`: write it, it is new).
pub(crate) fn decide_channel_put(
    stored: Option<&StoredChannel>,
    seq: u64,
    bytes: &[u8],
) -> Option<PutOutcome> {
    let stored = stored?;
    if stored.bytes.as_ref() == bytes {
        return Some(PutOutcome::Identical);
    }
    (seq <= stored.state.seq).then_some(PutOutcome::Stale {
        stored_seq: stored.state.seq,
    })
}

/// The text of a yank marker: when, in seconds since the epoch, for operators.
pub(crate) fn yank_note() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("yanked at unix time {secs}\n")
}

/// A release being assembled out of sight; dropped without commit, it leaves nothing behind.
pub trait Upload: Send + 'static {
    type Writer: AsyncWrite + Unpin + Send + 'static;
    /// Starts writing one artifact.
    fn create(
        &mut self,
        name: &ArtifactName,
    ) -> impl Future<Output = StoreResult<Self::Writer>> + Send;
    /// Makes an artifact durable once it is fully written.
    fn finish(&mut self, writer: Self::Writer) -> impl Future<Output = StoreResult<()>> + Send;
    /// Reuses an artifact of an existing release without copying its bytes (promote, and
    /// artifacts a publish carries over). The source's file must have the artifact's size.
    fn link_from(
        &mut self,
        source: &ReleaseKey,
        artifact: &ArtifactRef,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Removes what was staged before returning (dropping an upload removes it too, but an
    /// engine may finish that in the background).
    fn abandon(self) -> impl Future<Output = ()> + Send;
}

/// The storage of releases.
pub trait ReleaseStore: Send + Sync + 'static {
    type Upload: Upload;

    /// Crash recovery at start: discards every upload left unfinished. Returns how many.
    fn recover(&self) -> impl Future<Output = StoreResult<usize>> + Send;
    /// Every product with at least one channel directory.
    fn products(&self) -> impl Future<Output = StoreResult<Vec<ProductName>>> + Send;
    /// Every version on a channel, newest first by SemVer precedence (empty if none).
    fn versions(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> impl Future<Output = StoreResult<Vec<VersionEntry>>> + Send;
    /// One release with its manifest and signature; `NotFound` if absent.
    fn release(&self, key: &ReleaseKey) -> impl Future<Output = StoreResult<StoredRelease>> + Send;
    /// `len` bytes of a file of a release starting at `start`, streamed.
    fn read_range(
        &self,
        key: &ReleaseKey,
        file: &str,
        start: u64,
        len: u64,
    ) -> impl Future<Output = StoreResult<ByteStream>> + Send;
    /// A URL where `file` of a release can be fetched without this server for `ttl`
    /// (`ARTIFACT_REDIRECT=presign`); the configuration allows it only on an object store.
    fn presign(
        &self,
        key: &ReleaseKey,
        file: &str,
        ttl: std::time::Duration,
    ) -> impl Future<Output = StoreResult<String>> + Send;
    /// Starts a new upload in staging.
    fn begin(&self) -> impl Future<Output = StoreResult<Self::Upload>> + Send;
    /// Writes the manifest and signature into the upload and makes it visible as `key`, all at
    /// once. A release already there is compared, never overwritten.
    fn commit(
        &self,
        upload: Self::Upload,
        key: &ReleaseKey,
        manifest: Bytes,
        signature: Bytes,
    ) -> impl Future<Output = StoreResult<CommitOutcome>> + Send;
    /// Marks a release yanked (files are kept). Returns false if it already was.
    fn yank(&self, key: &ReleaseKey) -> impl Future<Output = StoreResult<bool>> + Send;
    /// The stored channel state of a product's channel, if any.
    fn channel_state(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> impl Future<Output = StoreResult<Option<StoredChannel>>> + Send;
    /// Stores a channel state whose `seq` is `seq` if no state is stored or the stored one's
    /// `seq` is lower (compare-and-swap: of concurrent puts of one `seq`, exactly one is
    /// stored); byte-identical to the stored one → [`PutOutcome::Identical`]; otherwise
    /// [`PutOutcome::Stale`]. The caller has parsed and checked the bytes.
    fn put_channel_state(
        &self,
        product: &ProductName,
        channel: &ChannelName,
        seq: u64,
        bytes: Bytes,
        signature: Bytes,
    ) -> impl Future<Output = StoreResult<PutOutcome>> + Send;
}
