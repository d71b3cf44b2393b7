//! The store the server runs on, chosen at start by `RELEASE_STORE`: each call goes to the
//! engine's own implementation.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use qx_core::{ArtifactName, ArtifactRef, ChannelName, ProductName};
use tokio::io::AsyncWrite;

use super::local::{LocalStore, LocalUpload};
use super::object::{ObjectReleaseStore, ObjectUpload, StagedWriter};
use super::{
    ByteStream, CommitOutcome, PutOutcome, ReleaseKey, ReleaseStore, StoreError, StoreResult,
    StoredChannel, StoredRelease, Upload, VersionEntry,
};

/// The local-disk store or the object store.
#[derive(Debug, Clone)]
pub enum AnyStore {
    Local(LocalStore),
    Object(ObjectReleaseStore),
}

/// An upload of either engine.
pub enum AnyUpload {
    Local(LocalUpload),
    Object(ObjectUpload),
}

/// An artifact being written by either engine.
pub enum AnyWriter {
    Local(tokio::fs::File),
    Object(StagedWriter),
}

/// The same call on whichever engine `$on` holds.
macro_rules! each {
    ($on:expr, $s:ident => $call:expr) => {
        match $on {
            AnyStore::Local($s) => $call,
            AnyStore::Object($s) => $call,
        }
    };
}

impl ReleaseStore for AnyStore {
    type Upload = AnyUpload;

    async fn recover(&self) -> StoreResult<usize> {
        each!(self, s => s.recover().await)
    }

    async fn products(&self) -> StoreResult<Vec<ProductName>> {
        each!(self, s => s.products().await)
    }

    async fn versions(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> StoreResult<Vec<VersionEntry>> {
        each!(self, s => s.versions(product, channel).await)
    }

    async fn release(&self, key: &ReleaseKey) -> StoreResult<StoredRelease> {
        each!(self, s => s.release(key).await)
    }

    async fn read_range(
        &self,
        key: &ReleaseKey,
        file: &str,
        start: u64,
        len: u64,
    ) -> StoreResult<ByteStream> {
        each!(self, s => s.read_range(key, file, start, len).await)
    }

    async fn presign(
        &self,
        key: &ReleaseKey,
        file: &str,
        ttl: std::time::Duration,
    ) -> StoreResult<String> {
        each!(self, s => s.presign(key, file, ttl).await)
    }

    async fn begin(&self) -> StoreResult<AnyUpload> {
        Ok(match self {
            AnyStore::Local(s) => AnyUpload::Local(s.begin().await?),
            AnyStore::Object(s) => AnyUpload::Object(s.begin().await?),
        })
    }

    async fn commit(
        &self,
        upload: AnyUpload,
        key: &ReleaseKey,
        manifest: Bytes,
        signature: Bytes,
    ) -> StoreResult<CommitOutcome> {
        match (self, upload) {
            (AnyStore::Local(s), AnyUpload::Local(u)) => {
                s.commit(u, key, manifest, signature).await
            }
            (AnyStore::Object(s), AnyUpload::Object(u)) => {
                s.commit(u, key, manifest, signature).await
            }
            _ => Err(mismatch()),
        }
    }

    async fn yank(&self, key: &ReleaseKey) -> StoreResult<bool> {
        each!(self, s => s.yank(key).await)
    }

    async fn channel_state(
        &self,
        product: &ProductName,
        channel: &ChannelName,
    ) -> StoreResult<Option<StoredChannel>> {
        each!(self, s => s.channel_state(product, channel).await)
    }

    async fn put_channel_state(
        &self,
        product: &ProductName,
        channel: &ChannelName,
        seq: u64,
        bytes: Bytes,
        signature: Bytes,
    ) -> StoreResult<PutOutcome> {
        each!(self, s => s.put_channel_state(product, channel, seq, bytes, signature).await)
    }
}

/// An upload or writer handed to the other engine: a bug, reported rather than a panic.
fn mismatch() -> StoreError {
    StoreError::Task("an upload was handed to a store of another kind".into())
}

impl Upload for AnyUpload {
    type Writer = AnyWriter;

    async fn create(&mut self, name: &ArtifactName) -> StoreResult<AnyWriter> {
        Ok(match self {
            AnyUpload::Local(u) => AnyWriter::Local(u.create(name).await?),
            AnyUpload::Object(u) => AnyWriter::Object(u.create(name).await?),
        })
    }

    async fn finish(&mut self, writer: AnyWriter) -> StoreResult<()> {
        match (self, writer) {
            (AnyUpload::Local(u), AnyWriter::Local(w)) => u.finish(w).await,
            (AnyUpload::Object(u), AnyWriter::Object(w)) => u.finish(w).await,
            _ => Err(mismatch()),
        }
    }

    async fn abandon(self) {
        match self {
            AnyUpload::Local(u) => u.abandon().await,
            AnyUpload::Object(u) => u.abandon().await,
        }
    }

    async fn link_from(&mut self, source: &ReleaseKey, artifact: &ArtifactRef) -> StoreResult<()> {
        match self {
            AnyUpload::Local(u) => u.link_from(source, artifact).await,
            AnyUpload::Object(u) => u.link_from(source, artifact).await,
        }
    }
}

impl AsyncWrite for AnyWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            AnyWriter::Local(w) => Pin::new(w).poll_write(cx, buf),
            AnyWriter::Object(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AnyWriter::Local(w) => Pin::new(w).poll_flush(cx),
            AnyWriter::Object(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AnyWriter::Local(w) => Pin::new(w).poll_shutdown(cx),
            AnyWriter::Object(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
