//! The object-store backend: releases in an S3-compatible bucket (`RELEASE_STORE=s3://bucket/prefix`),
//! shared by several servers.
//!
//! Keys under the prefix:
//! - `<product>/<channel>/<version>/manifest.json`, `manifest.json.minisig`, the artifacts,
//!   and `.yanked` for a yanked release;
//! - `<product>/<channel>/channel.state`: the signed channel state and its signature in one
//!   object (one put replaces both);
//! - `.staging/<upload>/<artifact>`: uploads being assembled.
//!
//! A release is visible once its manifest exists and every artifact it names is there with its
//! size; the manifest is written last. A commit, under the channel's write lock
//! ([`super::lock`]), copies the staged and linked artifacts into place server-side, writes the
//! signature and then the manifest (a conditional put, for the stores that honour it). A
//! server killed in the middle leaves an invisible prefix; the sweep removes it, and staged
//! uploads, once older than `STAGING_SWEEP_AGE`.

mod keys;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};
use qx_core::{
    ArtifactName, ArtifactRef, ChannelName, ChannelState, Manifest, ProductName, UnknownFields,
    Version, MANIFEST_FILE, SIGNATURE_FILE,
};
use tokio::io::AsyncWriteExt;

use super::lock::WriteLocks;
use super::{
    check_file_name, check_manifest_matches, decide_channel_put, ByteStream, CommitOutcome,
    PutOutcome, ReleaseKey, ReleaseStore, StoreError, StoreResult, StoredChannel, StoredRelease,
    Upload, VersionEntry,
};
use crate::config::ObjectStoreConfig;
use keys::Keys;

/// The marker object of a yanked release.
pub const YANKED_OBJECT: &str = ".yanked";
/// The object holding a channel's signed state and its signature.
pub const CHANNEL_OBJECT: &str = "channel.state";
/// The prefix of uploads being assembled.
pub const STAGING_PREFIX: &str = ".staging";
/// How long one request to the store may take before it is given up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to the store may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of a failed request, and how long they may go on in all: a store that is down is
/// reported (503) within seconds rather than after minutes.
const RETRIES: usize = 2;
const RETRY_TIMEOUT: Duration = Duration::from_secs(10);
/// The buffer of an artifact being uploaded: past it, a multipart upload in parts this big.
const UPLOAD_BUFFER: usize = 16 << 20;
/// The largest manifest, signature or channel state read back.
const MAX_SMALL_OBJECT: u64 = 4 << 20;

/// Releases in an S3-compatible bucket.
#[derive(Clone)]
pub struct ObjectReleaseStore {
    s3: Arc<AmazonS3>,
    keys: Keys,
    locks: Arc<WriteLocks>,
    sweep_age: Duration,
}

impl std::fmt::Debug for ObjectReleaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReleaseStore")
            .field("url", &self.keys.url())
            .finish_non_exhaustive()
    }
}

impl ObjectReleaseStore {
    /// Connects to the bucket and checks that it answers with these credentials.
    pub async fn open(config: &ObjectStoreConfig, locks: WriteLocks) -> StoreResult<Self> {
        let keys = Keys::new(&config.bucket, &config.prefix);
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_connect_timeout(CONNECT_TIMEOUT),
            )
            .with_retry(RetryConfig {
                max_retries: RETRIES,
                retry_timeout: RETRY_TIMEOUT,
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
        }
        let s3 = builder.build().map_err(|e| {
            StoreError::Unavailable(format!(
                "{}: cannot set up the object store client: {e}",
                keys.url()
            ))
        })?;
        let store = Self {
            s3: Arc::new(s3),
            keys,
            locks: Arc::new(locks),
            sweep_age: config.sweep_age,
        };
        store.probe().await?;
        Ok(store)
    }

    /// `STAGING_SWEEP_AGE`.
    pub fn sweep_age(&self) -> Duration {
        self.sweep_age
    }

    /// The client, for presigned URLs.
    pub fn client(&self) -> &Arc<AmazonS3> {
        &self.s3
    }

    /// The object key of a file of a release.
    pub fn release_object(&self, key: &ReleaseKey, file: &str) -> Path {
        self.keys.release_file(key, file)
    }

    /// One listing of the prefix: the bucket exists and the credentials may read it.
    async fn probe(&self) -> StoreResult<()> {
        self.s3
            .list_with_delimiter(Some(&self.keys.root()))
            .await
            .map(drop)
            .map_err(|e| self.error("listing the bucket", e))
    }

    /// Maps a client error to a store error saying what was being done and where.
    fn error(&self, doing: &str, e: object_store::Error) -> StoreError {
        let url = self.keys.url();
        match e {
            object_store::Error::NotFound { path, .. } => StoreError::Corrupt {
                path: PathBuf::from(format!("s3://{}/{path}", self.keys.bucket())),
                reason: format!("{doing}: the object is missing"),
            },
            e if is_refusal(&e) => StoreError::Unavailable(format!(
                "{url}: {doing}: the object store refused the credentials ({}); check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the key's rights on the bucket",
                refusal_reason(&e)
            )),
            other => StoreError::Unavailable(format!("{url}: {doing}: {other}")),
        }
    }

    /// A small object's bytes (manifest, signature, channel state); `None` when absent.
    async fn get_small(&self, path: &Path) -> StoreResult<Option<Bytes>> {
        let got = match self.s3.get_opts(path, GetOptions::default()).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error("reading an object", e)),
        };
        if got.meta.size > MAX_SMALL_OBJECT {
            return Err(StoreError::Corrupt {
                path: self.keys.display(path),
                reason: format!(
                    "it is {} bytes, more than a manifest or signature can be",
                    got.meta.size
                ),
            });
        }
        got.bytes()
            .await
            .map(Some)
            .map_err(|e| self.error("reading an object", e))
    }

    async fn put(&self, path: &Path, bytes: Bytes, mode: PutMode) -> StoreResult<PutResultKind> {
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self.s3.put_opts(path, PutPayload::from(bytes), opts).await {
            Ok(_) => Ok(PutResultKind::Written),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(PutResultKind::ConditionFailed),
            Err(e) => Err(self.error("writing an object", e)),
        }
    }

    /// Every object under `prefix`, with its size and age.
    async fn list(&self, prefix: &Path) -> StoreResult<Vec<object_store::ObjectMeta>> {
        self.s3
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.error("listing objects", e))
    }

    async fn delete_all(&self, paths: Vec<Path>) -> StoreResult<usize> {
        let n = paths.len();
        let stream = futures_util::stream::iter(paths.into_iter().map(Ok)).boxed();
        self.s3
            .delete_stream(stream)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| self.error("deleting objects", e))?;
        Ok(n)
    }

    /// The objects of each version of a channel: version → file → size.
    async fn channel_files(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> StoreResult<BTreeMap<Version, BTreeMap<String, u64>>> {
        let prefix = self.keys.channel(product, channel);
        let mut out: BTreeMap<Version, BTreeMap<String, u64>> = BTreeMap::new();
        for meta in self.list(&prefix).await? {
            let Some([version, file]) = self.keys.relative::<2>(&prefix, &meta.location) else {
                continue;
            };
            if let Ok(v) = Version::parse(&version) {
                if v.to_string() == version {
                    out.entry(v).or_default().insert(file, meta.size);
                }
            }
        }
        Ok(out)
    }

    /// Removes staged uploads and never-committed release prefixes older than the sweep age.
    /// Returns how many uploads and prefixes were removed.
    pub async fn sweep(&self) -> StoreResult<usize> {
        let cutoff =
            unix_now().saturating_sub(i64::try_from(self.sweep_age.as_secs()).unwrap_or(i64::MAX));
        let mut groups: BTreeMap<String, (Vec<Path>, bool, bool)> = BTreeMap::new();
        for meta in self.list(&self.keys.root()).await? {
            let Some(group) = self.keys.group_of(&meta.location) else {
                continue;
            };
            let entry = groups.entry(group.name).or_default();
            entry.0.push(meta.location.clone());
            entry.1 |= group.is_manifest;
            entry.2 |= meta.last_modified.timestamp() > cutoff;
        }
        let mut doomed = Vec::new();
        let mut removed = 0;
        for (name, (paths, has_manifest, recent)) in groups {
            if has_manifest || recent {
                continue;
            }
            tracing::info!(prefix = %name, objects = paths.len(), "sweeping an unfinished upload or release");
            removed += 1;
            doomed.extend(paths);
        }
        self.delete_all(doomed).await?;
        Ok(removed)
    }

    /// Checks that every artifact `manifest` names is stored with its size.
    fn check_complete(
        &self,
        key: &ReleaseKey,
        manifest: &Manifest,
        files: &BTreeMap<String, u64>,
    ) -> StoreResult<()> {
        for a in manifest.artifacts() {
            match files.get(a.artifact.as_str()) {
                Some(&size) if size == a.size_bytes => {}
                found => {
                    return Err(StoreError::Corrupt {
                        path: self.keys.display(&self.keys.release(key)),
                        reason: match found {
                            None => format!("artifact {} is missing", a.artifact),
                            Some(size) => format!(
                                "artifact {} is {size} bytes, not the {} its manifest declares",
                                a.artifact, a.size_bytes
                            ),
                        },
                    })
                }
            }
        }
        Ok(())
    }

    /// The files of one release (file → size); empty when it has none.
    async fn release_files(&self, key: &ReleaseKey) -> StoreResult<BTreeMap<String, u64>> {
        let prefix = self.keys.release(key);
        Ok(self
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|m| {
                let [file] = self.keys.relative::<1>(&prefix, &m.location)?;
                Some((file, m.size))
            })
            .collect())
    }

    /// Whether another spelling of `key`'s version (other build metadata) has a release.
    async fn equal_version_elsewhere(&self, key: &ReleaseKey) -> StoreResult<bool> {
        let spelled = key.version.to_string();
        Ok(self
            .versions(&key.product, &key.channel)
            .await?
            .iter()
            .any(|e| e.version == key.version && e.version.to_string() != spelled))
    }

    /// Compares the release stored at `key` with `manifest`.
    async fn compare_existing(
        &self,
        key: &ReleaseKey,
        manifest: &[u8],
    ) -> StoreResult<Option<CommitOutcome>> {
        let existing = self
            .get_small(&self.keys.release_file(key, MANIFEST_FILE))
            .await?;
        Ok(existing.map(|e| {
            if e.as_ref() == manifest {
                CommitOutcome::Identical
            } else {
                CommitOutcome::Conflict
            }
        }))
    }

    /// Copies the upload's artifacts into the release, then writes signature and manifest.
    async fn place(
        &self,
        upload: &ObjectUpload,
        key: &ReleaseKey,
        manifest: Bytes,
        signature: Bytes,
    ) -> StoreResult<CommitOutcome> {
        let pairs: Vec<(Path, Path)> = upload
            .sources()
            .map(|(name, from)| (from.clone(), self.keys.release_file(key, name)))
            .collect();
        let copies = pairs.into_iter().map(|(from, to)| async move {
            self.s3
                .copy(&from, &to)
                .await
                .map_err(|e| self.error("copying an artifact into its release", e))
        });
        futures_util::stream::iter(copies)
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        self.put(
            &self.keys.release_file(key, SIGNATURE_FILE),
            signature,
            PutMode::Overwrite,
        )
        .await?;
        match self
            .put(
                &self.keys.release_file(key, MANIFEST_FILE),
                manifest.clone(),
                PutMode::Create,
            )
            .await?
        {
            PutResultKind::Written => Ok(CommitOutcome::Created),
            PutResultKind::ConditionFailed => Ok(self
                .compare_existing(key, &manifest)
                .await?
                .unwrap_or(CommitOutcome::Conflict)),
        }
    }
}

/// Whether the store refused the request's credentials or rights (401 or 403).
fn is_refusal(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => true,
        other => {
            let text = other.to_string();
            text.contains("403 Forbidden") || text.contains("401 Unauthorized")
        }
    }
}

/// The store's own words for a refusal: its `<Message>`, else its status line.
fn refusal_reason(e: &object_store::Error) -> String {
    let text = e.to_string();
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let end = text[start..].find(close)? + start;
        Some(text[start..end].to_owned())
    };
    between("<Message>", "</Message>")
        .or_else(|| {
            ["403 Forbidden", "401 Unauthorized"]
                .iter()
                .find(|s| text.contains(*s))
                .map(|s| (*s).to_owned())
        })
        .unwrap_or_else(|| "access denied".to_owned())
}

/// What a put did.
enum PutResultKind {
    Written,
    /// The store refused it: the object exists (create) or changed (update).
    ConditionFailed,
}

/// Seconds since the epoch.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The stored form of a channel state: the publisher's bytes and signature text, in one
/// object so that one put replaces both.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChannelEnvelope {
    /// The state's exact bytes, base64.
    state: String,
    signature: String,
}

impl ChannelEnvelope {
    fn encode(bytes: &[u8], signature: &[u8]) -> Bytes {
        use base64::Engine;
        let env = ChannelEnvelope {
            state: base64::engine::general_purpose::STANDARD.encode(bytes),
            signature: String::from_utf8_lossy(signature).into_owned(),
        };
        Bytes::from(serde_json::to_vec(&env).unwrap_or_default())
    }

    fn decode(raw: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
        use base64::Engine;
        let env: ChannelEnvelope = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
        let state = base64::engine::general_purpose::STANDARD
            .decode(env.state)
            .map_err(|e| format!("its state is not base64: {e}"))?;
        Ok((state, env.signature.into_bytes()))
    }
}

impl ReleaseStore for ObjectReleaseStore {
    type Upload = ObjectUpload;

    async fn recover(&self) -> StoreResult<usize> {
        self.sweep().await
    }

    async fn products(&self) -> StoreResult<Vec<ProductName>> {
        let listed = self
            .s3
            .list_with_delimiter(Some(&self.keys.root()))
            .await
            .map_err(|e| self.error("listing products", e))?;
        let mut out: Vec<ProductName> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename())
            .filter_map(|n| ProductName::new(n).ok())
            .collect();
        out.sort();
        Ok(out)
    }

    async fn versions(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> StoreResult<Vec<VersionEntry>> {
        let mut out: Vec<VersionEntry> = self
            .channel_files(product, channel)
            .await?
            .into_iter()
            .filter(|(_, files)| files.contains_key(MANIFEST_FILE))
            .map(|(version, files)| VersionEntry {
                version,
                yanked: files.contains_key(YANKED_OBJECT),
            })
            .collect();
        out.sort_by(|a, b| b.version.cmp(&a.version));
        Ok(out)
    }

    async fn release(&self, key: &ReleaseKey) -> StoreResult<StoredRelease> {
        let manifest_path = self.keys.release_file(key, MANIFEST_FILE);
        let signature_path = self.keys.release_file(key, SIGNATURE_FILE);
        let (manifest_bytes, signature, files) = tokio::try_join!(
            self.get_small(&manifest_path),
            self.get_small(&signature_path),
            self.release_files(key),
        )?;
        let Some(manifest_bytes) = manifest_bytes else {
            return Err(StoreError::NotFound(format!("release {key}")));
        };
        let shown = self.keys.display(&manifest_path);
        let signature = signature.ok_or_else(|| StoreError::Corrupt {
            path: shown.clone(),
            reason: format!("{SIGNATURE_FILE} is missing"),
        })?;
        let manifest = Manifest::parse(&manifest_bytes, UnknownFields::Ignore).map_err(|e| {
            StoreError::Corrupt {
                path: shown.clone(),
                reason: e.to_string(),
            }
        })?;
        check_manifest_matches(&manifest, key, &shown)?;
        self.check_complete(key, &manifest, &files)?;
        Ok(StoredRelease {
            key: key.clone(),
            manifest_bytes,
            signature,
            manifest,
            yanked: files.contains_key(YANKED_OBJECT),
        })
    }

    async fn read_range(
        &self,
        key: &ReleaseKey,
        file: &str,
        start: u64,
        len: u64,
    ) -> StoreResult<ByteStream> {
        check_file_name(file)?;
        if len == 0 {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let path = self.keys.release_file(key, file);
        let opts = GetOptions {
            range: Some(GetRange::Bounded(start..start.saturating_add(len))),
            ..GetOptions::default()
        };
        let got = self.s3.get_opts(&path, opts).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                StoreError::NotFound(format!("file {file} of release {key}"))
            }
            e => self.error("reading an artifact", e),
        })?;
        Ok(Box::pin(got.into_stream().map_err(std::io::Error::other)))
    }

    async fn presign(&self, key: &ReleaseKey, file: &str, ttl: Duration) -> StoreResult<String> {
        check_file_name(file)?;
        let path = self.keys.release_file(key, file);
        object_store::signer::Signer::signed_url(&*self.s3, reqwest::Method::GET, &path, ttl)
            .await
            .map(String::from)
            .map_err(|e| self.error("presigning a URL", e))
    }

    async fn begin(&self) -> StoreResult<ObjectUpload> {
        Ok(ObjectUpload::new(self.clone()))
    }

    async fn commit(
        &self,
        mut upload: ObjectUpload,
        key: &ReleaseKey,
        manifest: Bytes,
        signature: Bytes,
    ) -> StoreResult<CommitOutcome> {
        let outcome = {
            let _held = self.locks.lock(&key.product, &key.channel).await?;
            if let Some(outcome) = self.compare_existing(key, &manifest).await? {
                outcome
            } else if self.equal_version_elsewhere(key).await? {
                CommitOutcome::Conflict
            } else {
                self.place(&upload, key, manifest, signature).await?
            }
        };
        upload.discard_staged().await;
        Ok(outcome)
    }

    async fn yank(&self, key: &ReleaseKey) -> StoreResult<bool> {
        let _held = self.locks.lock(&key.product, &key.channel).await?;
        let files = self.release_files(key).await?;
        if !files.contains_key(MANIFEST_FILE) {
            return Err(StoreError::NotFound(format!("release {key}")));
        }
        if files.contains_key(YANKED_OBJECT) {
            return Ok(false);
        }
        let note = Bytes::from(super::yank_note());
        let kind = self
            .put(
                &self.keys.release_file(key, YANKED_OBJECT),
                note,
                PutMode::Create,
            )
            .await?;
        Ok(matches!(kind, PutResultKind::Written))
    }

    async fn channel_state(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> StoreResult<Option<StoredChannel>> {
        let path = self.keys.channel_file(product, channel, CHANNEL_OBJECT);
        let Some(raw) = self.get_small(&path).await? else {
            return Ok(None);
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.keys.display(&path),
            reason,
        };
        let (bytes, signature) = ChannelEnvelope::decode(&raw).map_err(corrupt)?;
        let state = ChannelState::parse(&bytes, UnknownFields::Ignore)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(Some(StoredChannel {
            bytes: Bytes::from(bytes),
            signature: Bytes::from(signature),
            state,
        }))
    }

    async fn put_channel_state(
        &self,
        product: &ProductName,
        channel: &ChannelName,
        seq: u64,
        bytes: Bytes,
        signature: Bytes,
    ) -> StoreResult<PutOutcome> {
        let _held = self.locks.lock(product, channel).await?;
        let stored = self.channel_state(product, channel).await?;
        if let Some(outcome) = decide_channel_put(stored.as_ref(), seq, &bytes) {
            return Ok(outcome);
        }
        let path = self.keys.channel_file(product, channel, CHANNEL_OBJECT);
        self.put(
            &path,
            ChannelEnvelope::encode(&bytes, &signature),
            PutMode::Overwrite,
        )
        .await?;
        Ok(PutOutcome::Stored)
    }
}

/// An upload being assembled under `.staging/<id>/`; its staged objects are deleted when it
/// is committed or dropped (the sweep removes what a dead server left).
pub struct ObjectUpload {
    store: ObjectReleaseStore,
    dir: Path,
    /// Artifact name → the object its bytes are in (staged here, or another release's).
    sources: BTreeMap<String, Path>,
    staged: BTreeSet<Path>,
}

impl ObjectUpload {
    fn new(store: ObjectReleaseStore) -> Self {
        let dir = store.keys.staging(&format!(
            "upload-{}-{:016x}",
            unix_now(),
            rand::random::<u64>()
        ));
        Self {
            store,
            dir,
            sources: BTreeMap::new(),
            staged: BTreeSet::new(),
        }
    }

    fn sources(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.sources.iter().map(|(n, p)| (n.as_str(), p))
    }

    /// Deletes the staged objects (best effort: the sweep removes what is left).
    async fn discard_staged(&mut self) {
        let paths: Vec<Path> = std::mem::take(&mut self.staged).into_iter().collect();
        if let Err(e) = self.store.delete_all(paths).await {
            tracing::warn!(error = %e, "staged upload not removed; the sweep will remove it");
        }
    }
}

impl Drop for ObjectUpload {
    fn drop(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut rest = ObjectUpload {
            store: self.store.clone(),
            dir: self.dir.clone(),
            sources: BTreeMap::new(),
            staged: std::mem::take(&mut self.staged),
        };
        runtime.spawn(async move { rest.discard_staged().await });
    }
}

impl Upload for ObjectUpload {
    type Writer = StagedWriter;

    async fn create(&mut self, name: &ArtifactName) -> StoreResult<StagedWriter> {
        check_file_name(name.as_str())?;
        let path = self.dir.clone().join(name.as_str());
        // Recorded now: a writer dropped half-way may have stored parts of it.
        self.staged.insert(path.clone());
        let inner = BufWriter::with_capacity(self.store.s3.clone(), path.clone(), UPLOAD_BUFFER);
        Ok(StagedWriter {
            inner: Some(inner),
            name: name.as_str().to_owned(),
            path,
        })
    }

    async fn finish(&mut self, mut writer: StagedWriter) -> StoreResult<()> {
        writer.complete().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "{}: storing artifact {}: {e}",
                self.store.keys.url(),
                writer.name
            ))
        })?;
        self.sources
            .insert(writer.name.clone(), writer.path.clone());
        Ok(())
    }

    async fn abandon(mut self) {
        self.discard_staged().await;
    }

    async fn link_from(&mut self, source: &ReleaseKey, artifact: &ArtifactRef) -> StoreResult<()> {
        let name = artifact.artifact.as_str();
        check_file_name(name)?;
        let from = self.store.keys.release_file(source, name);
        let meta = self
            .store
            .s3
            .head(&from)
            .await
            .map_err(|e| self.store.error("reading an artifact to reuse", e))?;
        if meta.size != artifact.size_bytes {
            return Err(StoreError::Corrupt {
                path: self.store.keys.display(&from),
                reason: format!(
                    "is {} bytes, not the {} its manifest declares",
                    meta.size, artifact.size_bytes
                ),
            });
        }
        self.sources.insert(name.to_owned(), from);
        Ok(())
    }
}

/// An artifact being written into staging. Dropped unfinished (a failed or cut publish), its
/// multipart upload is aborted, so the store keeps no hidden parts of it.
pub struct StagedWriter {
    inner: Option<BufWriter>,
    name: String,
    path: Path,
}

impl StagedWriter {
    fn inner(&mut self) -> std::io::Result<&mut BufWriter> {
        self.inner
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the artifact was already stored"))
    }

    /// Completes the upload of the object. Taken out first: a shutdown begun cannot be
    /// aborted, so a failed one is left to the store's clean-up of unfinished uploads.
    async fn complete(&mut self) -> std::io::Result<()> {
        let mut inner = self
            .inner
            .take()
            .ok_or_else(|| std::io::Error::other("the artifact was already stored"))?;
        inner.shutdown().await
    }
}

impl Drop for StagedWriter {
    fn drop(&mut self) {
        let (Some(mut inner), Ok(runtime)) =
            (self.inner.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = inner.abort().await {
                tracing::warn!(error = %e, "an unfinished multipart upload was not aborted");
            }
        });
    }
}

impl tokio::io::AsyncWrite for StagedWriter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut().inner() {
            Ok(w) => std::pin::Pin::new(w).poll_write(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut().inner() {
            Ok(w) => std::pin::Pin::new(w).poll_flush(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut().inner() {
            Ok(w) => std::pin::Pin::new(w).poll_shutdown(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

/// Where an object is shown in messages: `s3://bucket/key`.
impl Keys {
    fn display(&self, path: &Path) -> PathBuf {
        PathBuf::from(format!("s3://{}/{path}", self.bucket()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_envelope_keeps_exact_bytes_and_signature() {
        let raw = ChannelEnvelope::encode(b"{\"seq\": 1}\n", b"untrusted comment: x\nRWQ...\n");
        let (state, sig) = ChannelEnvelope::decode(&raw).expect("test value");
        assert_eq!(state, b"{\"seq\": 1}\n");
        assert_eq!(sig, b"untrusted comment: x\nRWQ...\n");
        assert!(ChannelEnvelope::decode(b"{\"state\": \"!!\", \"signature\": \"\"}").is_err());
        assert!(ChannelEnvelope::decode(b"not json").is_err());
    }
}
