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
//!
//! No symlink inside the release directory is followed ([`nofollow`]): a linked product,
//! channel or version directory, manifest, signature or artifact is skipped and logged (or
//! refused), a symlinked `.staging` stops the server at start (nothing is deleted through it),
//! and a stored manifest whose product, channel or version differs from its path is damage.

mod channel;
mod nofollow;

use std::fs;
use std::io::{self, Read, SeekFrom};
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
    check_file_name, check_manifest_matches, yank_note, ByteStream, CommitOutcome, PutOutcome,
    ReleaseKey, ReleaseStore, StoreError, StoreResult, StoredChannel, StoredRelease, Upload,
    VersionEntry,
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
        fs::create_dir_all(&root).map_err(StoreError::io(&root))?;
        staging_dir(&root)?;
        Ok(Self {
            root,
            channel_locks: Arc::new(channel::ChannelLocks::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn release_dir(&self, key: &ReleaseKey) -> PathBuf {
        self.root.join(release_rel(key))
    }
}

/// A release's directory relative to the release root.
fn release_rel(key: &ReleaseKey) -> PathBuf {
    Path::new(key.product.as_str())
        .join(key.channel.as_str())
        .join(key.version.to_string())
}

/// `$RELEASE_DIR/.staging`, created if missing. A symlink there is refused: recovery empties
/// this directory, and it must never delete through a link.
fn staging_dir(root: &Path) -> StoreResult<PathBuf> {
    let staging = root.join(STAGING_DIR);
    match nofollow::is_real_dir(&staging) {
        Ok(true) => {}
        Ok(false) => fs::create_dir_all(&staging).map_err(StoreError::io(&staging))?,
        Err(StoreError::Corrupt { path, .. }) => {
            return Err(StoreError::Refused {
                path,
                reason: format!(
                    "the staging directory is a symlink or not a directory; the server never follows a symlink inside its release directory (nor deletes through one). Remove it (the server creates a real {STAGING_DIR} directory) or point RELEASE_DIR itself at the other disk"
                ),
            })
        }
        Err(e) => return Err(e),
    }
    Ok(staging)
}

/// A channel directory to write into, created if missing; a linked (or non-directory)
/// product or channel directory is refused, before anything is created under it and after.
fn writable_channel_dir(
    root: &Path,
    product: &ProductName,
    channel: &ChannelName,
) -> StoreResult<PathBuf> {
    let dir = root.join(product.as_str()).join(channel.as_str());
    channel::channel_dir(root, product, channel)?;
    create_dir_all_durable(&dir)?;
    channel::channel_dir(root, product, channel)?.ok_or_else(|| StoreError::Io {
        path: dir.clone(),
        source: io::Error::new(io::ErrorKind::NotFound, "vanished after being created"),
    })
}

/// Reads a whole file opened by [`nofollow::open_file`].
fn read_all(mut file: fs::File, path: &Path) -> StoreResult<Vec<u8>> {
    let mut out = Vec::new();
    file.read_to_end(&mut out).map_err(StoreError::io(path))?;
    Ok(out)
}

/// True when `path` exists, without following a symlink.
fn exists_no_follow(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// The manifest and signature of a release, opened without following links.
fn read_release(root: &Path, key: ReleaseKey) -> StoreResult<StoredRelease> {
    let rel = release_rel(&key);
    let dir = root.join(&rel);
    let manifest_path = dir.join(MANIFEST_FILE);
    let Some(file) = nofollow::open_file(root, &rel.join(MANIFEST_FILE))? else {
        return Err(StoreError::NotFound(format!("release {key}")));
    };
    let manifest_bytes = read_all(file, &manifest_path)?;
    let sig_path = dir.join(SIGNATURE_FILE);
    let signature = match nofollow::open_file(root, &rel.join(SIGNATURE_FILE))? {
        Some(f) => read_all(f, &sig_path)?,
        None => {
            return Err(StoreError::Corrupt {
                path: dir,
                reason: format!("{SIGNATURE_FILE} is missing"),
            })
        }
    };
    let manifest = Manifest::parse(&manifest_bytes, UnknownFields::Ignore).map_err(|e| {
        StoreError::Corrupt {
            path: manifest_path.clone(),
            reason: e.to_string(),
        }
    })?;
    check_manifest_matches(&manifest, &key, &manifest_path)?;
    let yanked = exists_no_follow(&dir.join(YANKED_FILE));
    Ok(StoredRelease {
        key,
        manifest_bytes: Bytes::from(manifest_bytes),
        signature: Bytes::from(signature),
        manifest,
        yanked,
    })
}

/// The versions in a channel directory (empty when absent; a linked product or channel
/// directory, or a linked version directory in it, is skipped and logged).
fn list_versions(
    root: &Path,
    product: &ProductName,
    channel: &ChannelName,
) -> StoreResult<Vec<VersionEntry>> {
    let product_dir = root.join(product.as_str());
    let dir = product_dir.join(channel.as_str());
    for d in [&product_dir, &dir] {
        match nofollow::is_real_dir(d) {
            Ok(true) => {}
            Ok(false) => return Ok(Vec::new()),
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::warn!(error = %e, "linked directory skipped");
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        }
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
        let entry = entry.map_err(StoreError::io(&dir))?;
        let Some(version) = entry
            .file_name()
            .to_str()
            .and_then(|n| Version::parse(n).ok())
        else {
            continue;
        };
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            tracing::warn!(path = %path.display(), "{}", nofollow::LINK_REFUSED);
            continue;
        }
        if !fs::symlink_metadata(path.join(MANIFEST_FILE)).is_ok_and(|m| m.is_file()) {
            continue;
        }
        out.push(VersionEntry {
            version,
            yanked: exists_no_follow(&path.join(YANKED_FILE)),
        });
    }
    out.sort_by(|a, b| b.version.cmp(&a.version));
    Ok(out)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// A file name inside a release directory: one plain segment, never hidden.
impl ReleaseStore for LocalStore {
    type Upload = LocalUpload;

    async fn recover(&self) -> StoreResult<usize> {
        let root = self.root.clone();
        blocking(move || {
            let staging = staging_dir(&root)?;
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
                let file_type = entry.file_type().map_err(StoreError::io(entry.path()))?;
                if file_type.is_symlink() {
                    tracing::warn!(path = %entry.path().display(), "{}", nofollow::LINK_REFUSED);
                }
                if !file_type.is_dir() {
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
        let root = self.root.clone();
        let (product, channel) = (product.clone(), channel.clone());
        blocking(move || list_versions(&root, &product, &channel)).await
    }

    async fn release(&self, key: &ReleaseKey) -> StoreResult<StoredRelease> {
        let root = self.root.clone();
        let key = key.clone();
        blocking(move || read_release(&root, key)).await
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
        let (root, rel) = (self.root.clone(), release_rel(key).join(file));
        let Some(f) = blocking(move || nofollow::open_file(&root, &rel)).await? else {
            return Err(StoreError::NotFound(format!(
                "file {file} of release {key}"
            )));
        };
        let mut f = tokio::fs::File::from_std(f);
        if start > 0 {
            f.seek(SeekFrom::Start(start))
                .await
                .map_err(StoreError::io(&path))?;
        }
        let reader = tokio::io::AsyncReadExt::take(f, len);
        let cap = usize::try_from(len).unwrap_or(CHUNK).clamp(1, CHUNK);
        Ok(Box::pin(ReaderStream::with_capacity(reader, cap)))
    }

    async fn presign(
        &self,
        key: &ReleaseKey,
        file: &str,
        _ttl: std::time::Duration,
    ) -> StoreResult<String> {
        Err(StoreError::NotFound(format!(
            "a presigned URL of file {file} of release {key} (files on local disk have none)"
        )))
    }

    async fn begin(&self) -> StoreResult<LocalUpload> {
        let root = self.root.clone();
        blocking(move || {
            let staging = staging_dir(&root)?;
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
        let (root, key) = (self.root.clone(), key.clone());
        let version = key.version.clone();
        blocking(move || {
            let LocalUpload { dir, .. } = upload;
            write_atomic(&dir.path().join(MANIFEST_FILE), &manifest)?;
            write_atomic(&dir.path().join(SIGNATURE_FILE), &signature)?;
            let channel_dir = writable_channel_dir(&root, &key.product, &key.channel)?;

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
                    let rel = release_rel(&key).join(MANIFEST_FILE);
                    let existing = match nofollow::open_file(&root, &rel)? {
                        Some(f) => read_all(f, &existing_path)?,
                        None => Vec::new(),
                    };
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
        let (root, key) = (self.root.clone(), key.clone());
        blocking(move || {
            // Opened without following links: a linked directory on the way is refused.
            if nofollow::open_file(&root, &release_rel(&key).join(MANIFEST_FILE))?.is_none() {
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
            // A linked product or channel directory holds no state this server serves.
            match channel::channel_dir(&root, &product, &channel) {
                Ok(Some(dir)) => channel::read(&dir),
                Ok(None) => Ok(None),
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::warn!(error = %e, "linked directory skipped");
                    Ok(None)
                }
                Err(e) => Err(e),
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

    async fn abandon(self) {
        let LocalUpload { dir, .. } = self;
        let _ = blocking(move || dir.close().map_err(StoreError::io("staging"))).await;
    }

    async fn link_from(&mut self, source: &ReleaseKey, artifact: &ArtifactRef) -> StoreResult<()> {
        let name = artifact.artifact.as_str();
        check_file_name(name)?;
        let rel = release_rel(source).join(name);
        let (root, from) = (self.root.clone(), self.root.join(&rel));
        let to = self.dir.path().join(name);
        let size = artifact.size_bytes;
        blocking(move || {
            // The source must be the regular file its manifest describes: a symlink is never
            // linked (nor followed, nor any linked directory on the way), a file of another
            // size is damage.
            let Some(file) = nofollow::open_file(&root, &rel)? else {
                return Err(StoreError::io(&from)(io::ErrorKind::NotFound.into()));
            };
            let meta = file.metadata().map_err(StoreError::io(&from))?;
            if meta.len() != size {
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
