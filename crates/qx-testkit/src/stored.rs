//! A test server's stored releases, whichever backend holds them: files under the release
//! directory, or objects under the server's prefix in an object store. Paths are relative to
//! the store's root (`quantix-os/stable/1.0.0/manifest.json`, `.staging`), the same on both.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use qx_server::config::{ObjectStoreConfig, ReleaseStoreConfig};
use qx_server::Config;

/// The stored releases of one server.
#[derive(Clone)]
pub enum Stored {
    Local(PathBuf),
    Object {
        client: Arc<dyn ObjectStore>,
        prefix: String,
    },
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stored::Local(dir) => write!(f, "Stored::Local({})", dir.display()),
            Stored::Object { prefix, .. } => write!(f, "Stored::Object({prefix})"),
        }
    }
}

/// Runs `fut` to completion on a runtime of its own (callable from async tests too).
fn run<T: Send>(fut: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(fut)
        })
        .join()
        .expect("the store thread")
    })
}

/// A client of the bucket `config` names.
pub fn client(config: &ObjectStoreConfig) -> Arc<dyn ObjectStore> {
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&config.bucket)
        .with_region(&config.region);
    if let Some(e) = &config.endpoint {
        b = b.with_endpoint(e).with_allow_http(true);
    }
    if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
    }
    Arc::new(b.build().expect("an object store client"))
}

impl Stored {
    /// The releases of a server started with `config`.
    pub fn of(config: &Config) -> Self {
        match &config.release_store {
            ReleaseStoreConfig::Local => Stored::Local(config.release_dir.clone()),
            ReleaseStoreConfig::Object(o) => Stored::Object {
                client: client(o),
                prefix: o.prefix.clone(),
            },
        }
    }

    /// The release directory, when the releases are on local disk.
    pub fn local_dir(&self) -> Option<&Path> {
        match self {
            Stored::Local(dir) => Some(dir),
            Stored::Object { .. } => None,
        }
    }

    fn key(prefix: &str, rel: &str) -> Key {
        Key::from(format!("{prefix}/{rel}").as_str())
    }

    /// The bytes of a stored file; `None` when absent.
    pub fn read(&self, rel: &str) -> Option<Vec<u8>> {
        match self {
            Stored::Local(dir) => std::fs::read(dir.join(rel)).ok(),
            Stored::Object { client, prefix } => run(async {
                let got = client.get(&Self::key(prefix, rel)).await.ok()?;
                got.bytes().await.ok().map(|b| b.to_vec())
            }),
        }
    }

    /// Whether a stored file exists.
    pub fn exists(&self, rel: &str) -> bool {
        match self {
            Stored::Local(dir) => std::fs::symlink_metadata(dir.join(rel)).is_ok(),
            Stored::Object { client, prefix } => {
                run(async { client.head(&Self::key(prefix, rel)).await.is_ok() })
            }
        }
    }

    /// Writes (or replaces) a stored file, as another tool would.
    pub fn write(&self, rel: &str, bytes: &[u8]) {
        match self {
            Stored::Local(dir) => {
                let path = dir.join(rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).expect("create the file's directory");
                }
                std::fs::write(&path, bytes).expect("write a stored file");
            }
            Stored::Object { client, prefix } => run(async {
                client
                    .put(&Self::key(prefix, rel), PutPayload::from(bytes.to_vec()))
                    .await
                    .expect("put an object");
            }),
        }
    }

    /// Every stored file under `rel` (recursively), relative to `rel`, sorted.
    pub fn list(&self, rel: &str) -> Vec<String> {
        let mut out = match self {
            Stored::Local(dir) => {
                let root = dir.join(rel);
                let mut out = Vec::new();
                walk(&root, &root, &mut out);
                out
            }
            Stored::Object { client, prefix } => run(async {
                let under = Self::key(prefix, rel);
                let metas: Vec<_> = client
                    .list(Some(&under))
                    .try_collect()
                    .await
                    .unwrap_or_default();
                metas
                    .iter()
                    .filter_map(|m| {
                        let parts: Vec<String> = m
                            .location
                            .prefix_match(&under)?
                            .map(|p| p.as_ref().to_owned())
                            .collect();
                        Some(parts.join("/"))
                    })
                    .collect()
            }),
        };
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}
