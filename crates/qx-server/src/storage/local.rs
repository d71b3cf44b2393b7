//! The local-disk backend: `$RELEASE_DIR/<product>/<channel>/<version>/` holding
//! `manifest.json`, `manifest.json.minisig` and the artifacts; `.yanked` marks a yanked
//! release; uploads are assembled in `$RELEASE_DIR/.staging/<random>/` and made visible by
//! one `rename` of the whole directory.
//!
//! The channel state of each product and channel is `<product>/<channel>/channel.json` and
//! `channel.json.minisig`, replaced under a per-channel lock (see [`channel`]).
//!
//! Invariants: a release directory, once visible, is complete and never changes except for
//! the `.yanked` marker; a rename onto an existing (non-empty) release directory fails, which
//! is what makes exactly one of two concurrent publishes of one version win.

mod channel;

use std::fs;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use qx_core::fs::{create_dir_all_durable, fsync_dir, write_atomic};
use qx_core::{
    ArtifactName, ArtifactRef, ChannelName, Manifest, ProductName, UnknownFields, Version,
    MANIFEST_FILE, SIGNATURE_FILE,
};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::{
    ByteStream, CommitOutcome, PutOutcome, ReleaseKey, ReleaseStore, StoreError, StoreResult,
    StoredChannel, StoredRelease, Upload, VersionEntry,
};

/// The marker file of a yanked release.
pub const YANKED_FILE: &str = ".yanked";
/// The staging directory under the release root.
pub const STAGING_DIR: &str = ".staging";
/// Read size when streaming a file.
const CHUNK: usize = 256 * 1024;

/// Releases in a directory tree on local disk.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    channel_locks: Arc<channel::ChannelLocks>,
}

impl LocalStore {
    /// Uses `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> StoreResult<Self> {
        let root = root.into();
        fs::create_dir_all(root.join(STAGING_DIR)).map_err(StoreError::io(&root))?;
        Ok(Self {
            root,
            channel_locks: Arc::new(channel::ChannelLocks::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn release_dir(&self, key: &ReleaseKey) -> PathBuf {
        self.root
            .join(key.product.as_str())
            .join(key.channel.as_str())
            .join(key.version.to_string())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// A file name inside a release directory: one plain segment, never hidden.
fn check_file_name(name: &str) -> StoreResult<()> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']) {
        return Err(StoreError::NotFound(format!("file {name:?}")));
    }
    Ok(())
}

impl ReleaseStore for LocalStore {
    type Upload = LocalUpload;

    async fn recover(&self) -> StoreResult<usize> {
        let staging = self.root.join(STAGING_DIR);
        blocking(move || {
            fs::create_dir_all(&staging).map_err(StoreError::io(&staging))?;
            let mut removed = 0;
            for entry in fs::read_dir(&staging).map_err(StoreError::io(&staging))? {
                let entry = entry.map_err(StoreError::io(&staging))?;
                let path = entry.path();
                let res = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                res.map_err(StoreError::io(&path))?;
                removed += 1;
            }
            fsync_dir(&staging)?;
            Ok(removed)
        })
        .await
    }

    async fn products(&self) -> StoreResult<Vec<ProductName>> {
        let root = self.root.clone();
        blocking(move || {
            let mut out = Vec::new();
            for entry in fs::read_dir(&root).map_err(StoreError::io(&root))? {
                let entry = entry.map_err(StoreError::io(&root))?;
                if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    continue;
                }
                if let Some(p) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| ProductName::new(n).ok())
                {
                    out.push(p);
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn versions(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> StoreResult<Vec<VersionEntry>> {
        let dir = self.root.join(product.as_str()).join(channel.as_str());
        blocking(move || {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => {
                    return Err(StoreError::Io {
                        path: dir,
                        source: e,
                    })
                }
            };
            let mut out = Vec::new();
            for entry in entries {
                let entry = entry.map_err(StoreError::io(&dir))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Ok(version) = Version::parse(&name) else {
                    continue;
                };
                let path = entry.path();
                if !path.join(MANIFEST_FILE).is_file() {
                    continue;
                }
                out.push(VersionEntry {
                    version,
                    yanked: path.join(YANKED_FILE).exists(),
                });
            }
            out.sort_by(|a, b| b.version.cmp(&a.version));
            Ok(out)
        })
        .await
    }

    async fn release(&self, key: &ReleaseKey) -> StoreResult<StoredRelease> {
        let dir = self.release_dir(key);
        let key = key.clone();
        blocking(move || {
            let manifest_path = dir.join(MANIFEST_FILE);
            let manifest_bytes = match fs::read(&manifest_path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::NotFound(format!("release {key}")))
                }
                Err(e) => {
                    return Err(StoreError::Io {
                        path: manifest_path,
                        source: e,
                    })
                }
            };
            let sig_path = dir.join(SIGNATURE_FILE);
            let signature = fs::read(&sig_path).map_err(|e| StoreError::Corrupt {
                path: dir.clone(),
                reason: format!("{SIGNATURE_FILE} cannot be read: {e}"),
            })?;
            let manifest =
                Manifest::parse(&manifest_bytes, UnknownFields::Ignore).map_err(|e| {
                    StoreError::Corrupt {
                        path: manifest_path.clone(),
                        reason: e.to_string(),
                    }
                })?;
            let yanked = dir.join(YANKED_FILE).exists();
            Ok(StoredRelease {
                key,
                manifest_bytes: Bytes::from(manifest_bytes),
                signature: Bytes::from(signature),
                manifest,
                yanked,
            })
        })
        .await
    }

    async fn read_range(
        &self,
        key: &ReleaseKey,
        file: &str,
        start: u64,
        len: u64,
    ) -> StoreResult<ByteStream> {
        check_file_name(file)?;
        let path = self.release_dir(key).join(file);
        let mut f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(format!(
                    "file {file} of release {key}"
                )))
            }
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        if start > 0 {
            f.seek(SeekFrom::Start(start))
                .await
                .map_err(StoreError::io(&path))?;
        }
        let reader = tokio::io::AsyncReadExt::take(f, len);
        let cap = usize::try_from(len).unwrap_or(CHUNK).clamp(1, CHUNK);
        Ok(Box::pin(ReaderStream::with_capacity(reader, cap)))
    }

    async fn begin(&self) -> StoreResult<LocalUpload> {
        let staging = self.root.join(STAGING_DIR);
        let root = self.root.clone();
        blocking(move || {
            fs::create_dir_all(&staging).map_err(StoreError::io(&staging))?;
            let dir = tempfile::Builder::new()
                .prefix("upload-")
                .tempdir_in(&staging)
                .map_err(StoreError::io(&staging))?;
            Ok(LocalUpload { dir, root })
        })
        .await
    }

    async fn commit(
        &self,
        upload: LocalUpload,
        key: &ReleaseKey,
        manifest: Bytes,
        signature: Bytes,
    ) -> StoreResult<CommitOutcome> {
        let target = self.release_dir(key);
        let version = key.version.clone();
        blocking(move || {
            let LocalUpload { dir, .. } = upload;
            write_atomic(&dir.path().join(MANIFEST_FILE), &manifest)?;
            write_atomic(&dir.path().join(SIGNATURE_FILE), &signature)?;
            let channel_dir = target
                .parent()
                .ok_or_else(|| StoreError::Corrupt {
                    path: target.clone(),
                    reason: "a release directory has no parent".into(),
                })?
                .to_owned();
            create_dir_all_durable(&channel_dir)?;

            // A version equal by precedence but spelled otherwise (other build metadata) is
            // the same release for every client: refuse it.
            let spelled = version.to_string();
            for entry in fs::read_dir(&channel_dir).map_err(StoreError::io(&channel_dir))? {
                let entry = entry.map_err(StoreError::io(&channel_dir))?;
                if let Some(name) = entry.file_name().to_str() {
                    if name != spelled && Version::parse(name).is_ok_and(|v| v == version) {
                        return Ok(CommitOutcome::Conflict);
                    }
                }
            }

            match fs::rename(dir.path(), &target) {
                Ok(()) => {
                    let _ = dir.keep();
                    fsync_dir(&channel_dir)?;
                    Ok(CommitOutcome::Created)
                }
                Err(e)
                    if e.raw_os_error() == Some(39 /* ENOTEMPTY */)
                        || e.raw_os_error() == Some(17 /* EEXIST */)
                        || e.kind() == io::ErrorKind::DirectoryNotEmpty
                        || e.kind() == io::ErrorKind::AlreadyExists =>
                {
                    let existing_path = target.join(MANIFEST_FILE);
                    let existing =
                        fs::read(&existing_path).map_err(StoreError::io(&existing_path))?;
                    Ok(if existing == manifest.as_ref() {
                        CommitOutcome::Identical
                    } else {
                        CommitOutcome::Conflict
                    })
                }
                Err(e) => Err(StoreError::Io {
                    path: target,
                    source: e,
                }),
            }
        })
        .await
    }

    async fn yank(&self, key: &ReleaseKey) -> StoreResult<bool> {
        let dir = self.release_dir(key);
        let key = key.clone();
        blocking(move || {
            if !dir.join(MANIFEST_FILE).is_file() {
                return Err(StoreError::NotFound(format!("release {key}")));
            }
            let marker = dir.join(YANKED_FILE);
            if marker.exists() {
                return Ok(false);
            }
            let now = yank_note();
            write_atomic(&marker, now.as_bytes())?;
            Ok(true)
        })
        .await
    }

    async fn channel_state(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> StoreResult<Option<StoredChannel>> {
        let (root, locks) = (self.root.clone(), self.channel_locks.clone());
        let (product, channel) = (product.clone(), channel.clone());
        blocking(move || {
            let _held = locks.lock(&product, &channel);
            match channel::channel_dir(&root, &product, &channel)? {
                Some(dir) => channel::read(&dir),
                None => Ok(None),
            }
        })
        .await
    }

    async fn put_channel_state(
        &self,
        product: &ProductName,
        channel: &ChannelName,
        seq: u64,
        bytes: Bytes,
        signature: Bytes,
    ) -> StoreResult<PutOutcome> {
        let (root, locks) = (self.root.clone(), self.channel_locks.clone());
        let (product, channel) = (product.clone(), channel.clone());
        blocking(move || {
            let _held = locks.lock(&product, &channel);
            channel::put(&root, &product, &channel, seq, &bytes, &signature)
        })
        .await
    }
}

/// Seconds since the epoch, written into the yank marker for operators.
fn yank_note() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("yanked at unix time {secs}\n")
}

/// An upload being assembled in `$RELEASE_DIR/.staging/upload-XXXX/`; removed on drop unless
/// committed.
pub struct LocalUpload {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl Upload for LocalUpload {
    type Writer = tokio::fs::File;

    async fn create(&mut self, name: &ArtifactName) -> StoreResult<tokio::fs::File> {
        check_file_name(name.as_str())?;
        let path = self.dir.path().join(name.as_str());
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(StoreError::io(path))
    }

    async fn finish(&mut self, mut writer: tokio::fs::File) -> StoreResult<()> {
        let path = self.dir.path().to_owned();
        writer.flush().await.map_err(StoreError::io(&path))?;
        writer.sync_all().await.map_err(StoreError::io(&path))
    }

    async fn link_from(&mut self, source: &ReleaseKey, artifact: &ArtifactRef) -> StoreResult<()> {
        let name = artifact.artifact.as_str();
        check_file_name(name)?;
        let from = self
            .root
            .join(source.product.as_str())
            .join(source.channel.as_str())
            .join(source.version.to_string())
            .join(name);
        let to = self.dir.path().join(name);
        let size = artifact.size_bytes;
        blocking(move || {
            // The source must be the regular file its manifest describes: a symlink is never
            // linked (nor followed), a file of another size is damage.
            let meta = fs::symlink_metadata(&from).map_err(StoreError::io(&from))?;
            if !meta.is_file() || meta.len() != size {
                return Err(StoreError::Corrupt {
                    path: from,
                    reason: format!(
                        "is not a regular file of the {size} bytes its manifest declares"
                    ),
                });
            }
            fs::hard_link(&from, &to).map_err(StoreError::io(&from))
        })
        .await
    }
}
