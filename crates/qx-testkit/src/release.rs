//! Fixture releases: real tar.zst artifacts, a manifest built from qx-core's types, signed with
//! a real minisign key, published to a server over HTTP multipart exactly as `qx-publish`
//! does (`POST` to [`ServerUrl::publish`], parts `manifest`, `signature`, then one part per
//! artifact named by the artifact name, `Authorization: Bearer <token>`).
//!
//! Also [`tar_zst`] for hand-made (hostile) archives and [`StaticServer`], a one-route HTTP
//! server on loopback that serves a manifest with whatever signature header a test wants
//! (a compromised or broken server).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context};
use qx_core::api::ServerUrl;
use qx_core::fs::WriteOptions;
use qx_core::manifest::{Delta, Digest};
use qx_core::{
    ArtifactName, ChannelName, Component, ComponentKind, ComponentName, InstallPath, KeyPair,
    Manifest, Permissions, ProductName, Requirement, ServiceName, Sha256, SigningKey, UpdateType,
    Version,
};

/// A signing key in a temporary directory, with its public key text.
pub struct FixtureKey {
    pub key: SigningKey,
    pub public_key_file: String,
    pub key_id: String,
    _dir: tempfile::TempDir,
}

impl FixtureKey {
    pub fn generate() -> anyhow::Result<Self> {
        let kp = KeyPair::generate()?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("release.key");
        let secret = WriteOptions {
            mode: 0o600,
            no_clobber: true,
        };
        qx_core::fs::write_atomic_with(&path, kp.secret_key_file.as_bytes(), secret)?;
        let key = SigningKey::from_file(&path)?;
        Ok(Self {
            key,
            public_key_file: kp.public_key_file,
            key_id: kp.key_id,
            _dir: dir,
        })
    }

    /// The `.minisig` text over `data`.
    pub fn sign(&self, data: &[u8]) -> anyhow::Result<String> {
        Ok(self.key.sign(data, "qx-testkit fixture")?)
    }
}

/// One entry of a hand-made tar archive.
#[derive(Debug, Clone)]
pub enum TarEntry {
    File {
        path: String,
        bytes: Vec<u8>,
        mode: u32,
    },
    Dir {
        path: String,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
    Fifo {
        path: String,
    },
    CharDevice {
        path: String,
    },
    /// A regular file header claiming `size` bytes of zeros (streamed, never in memory).
    Zeros {
        path: String,
        size: u64,
    },
}

/// A tar.zst archive from `entries`, written raw: paths are put in the header as given (no
/// sanitising), so hostile archives can be built.
pub fn tar_zst(entries: &[TarEntry]) -> anyhow::Result<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3)?;
    {
        let mut b = tar::Builder::new(&mut enc);
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            let (path, kind) = match e {
                TarEntry::File { path, bytes, mode } => {
                    h.set_size(bytes.len() as u64);
                    h.set_mode(*mode);
                    (path, tar::EntryType::Regular)
                }
                TarEntry::Dir { path } => {
                    h.set_size(0);
                    h.set_mode(0o755);
                    (path, tar::EntryType::Directory)
                }
                TarEntry::Symlink { path, target } | TarEntry::Hardlink { path, target } => {
                    h.set_size(0);
                    h.set_mode(0o777);
                    set_raw(&mut h.as_old_mut().linkname, target)?;
                    let kind = if matches!(e, TarEntry::Symlink { .. }) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    };
                    (path, kind)
                }
                TarEntry::Fifo { path } => {
                    h.set_size(0);
                    h.set_mode(0o644);
                    (path, tar::EntryType::Fifo)
                }
                TarEntry::CharDevice { path } => {
                    h.set_size(0);
                    h.set_mode(0o644);
                    (path, tar::EntryType::Char)
                }
                TarEntry::Zeros { path, size } => {
                    h.set_size(*size);
                    h.set_mode(0o644);
                    (path, tar::EntryType::Regular)
                }
            };
            h.set_entry_type(kind);
            set_raw(&mut h.as_old_mut().name, path)?;
            h.set_cksum();
            match e {
                TarEntry::File { bytes, .. } => b.append(&h, bytes.as_slice())?,
                TarEntry::Zeros { size, .. } => b.append(&h, std::io::repeat(0).take(*size))?,
                _ => b.append(&h, std::io::empty())?,
            }
        }
        b.finish()?;
    }
    Ok(enc.finish()?)
}

fn set_raw(field: &mut [u8; 100], value: &str) -> anyhow::Result<()> {
    if value.len() >= field.len() {
        bail!("tar fixture path {value:?} is longer than 99 bytes");
    }
    field.fill(0);
    field[..value.len()].copy_from_slice(value.as_bytes());
    Ok(())
}

/// What goes into one component's artifact.
#[derive(Debug, Clone)]
pub enum Content {
    /// A `kind: file` component: one file (named after the install path) with this mode.
    File { bytes: Vec<u8>, mode: u32 },
    /// A directory tree: (relative path, bytes, mode) per file.
    Tree(Vec<(String, Vec<u8>, u32)>),
    /// A prebuilt tar.zst (hostile or otherwise).
    Raw(Vec<u8>),
}

/// One component of a fixture release.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    pub name: String,
    pub install_path: String,
    pub kind: ComponentKind,
    pub content: Content,
    pub restart_service: Option<String>,
    pub permissions: Option<u32>,
    pub requires: Vec<(String, String)>,
    pub migrate_command: Option<Vec<String>>,
    pub health_command: Option<Vec<String>>,
    pub backup_before_update: bool,
}

impl ComponentSpec {
    /// A binary installed at `install_path`, restarted through `service`.
    pub fn file(name: &str, install_path: &str, bytes: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            install_path: install_path.into(),
            kind: ComponentKind::File,
            content: Content::File { bytes, mode: 0o755 },
            restart_service: None,
            permissions: Some(0o755),
            requires: Vec::new(),
            migrate_command: None,
            health_command: None,
            backup_before_update: true,
        }
    }

    pub fn tree(name: &str, install_path: &str, files: Vec<(String, Vec<u8>, u32)>) -> Self {
        Self {
            kind: ComponentKind::Directory,
            content: Content::Tree(files),
            permissions: None,
            ..Self::file(name, install_path, Vec::new())
        }
    }

    pub fn migrations(
        name: &str,
        install_path: &str,
        files: Vec<(String, Vec<u8>, u32)>,
        command: Vec<String>,
    ) -> Self {
        Self {
            kind: ComponentKind::Migrations,
            migrate_command: Some(command),
            ..Self::tree(name, install_path, files)
        }
    }

    pub fn service(mut self, service: &str) -> Self {
        self.restart_service = Some(service.into());
        self
    }

    pub fn requires(mut self, name: &str, min_version: &str) -> Self {
        self.requires.push((name.into(), min_version.into()));
        self
    }

    pub fn health(mut self, argv: Vec<String>) -> Self {
        self.health_command = Some(argv);
        self
    }

    /// This component's manifest entry for its artifact `bytes` (`<name>.tar.zst`).
    fn manifest_entry(&self, version: &Version, bytes: &[u8]) -> anyhow::Result<Component> {
        Ok(Component {
            name: ComponentName::new(self.name.clone())?,
            version: version.clone(),
            artifact: ArtifactName::new(format!("{}.tar.zst", self.name))?,
            sha256: Sha256::of(bytes),
            size_bytes: bytes.len() as u64,
            install_path: InstallPath::new(self.install_path.clone())?,
            kind: self.kind,
            restart_service: self
                .restart_service
                .clone()
                .map(ServiceName::new)
                .transpose()?,
            backup_before_update: self.backup_before_update,
            permissions: self.permissions.map(Permissions::new).transpose()?,
            allow_setuid: false,
            allow_world_writable: false,
            tar: None,
            deltas: Vec::new(),
            requires: self
                .requires
                .iter()
                .map(|(n, v)| {
                    Ok(Requirement {
                        name: ComponentName::new(n.clone())?,
                        min_version: Version::parse(v)?,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            migrate_command: self.migrate_command.clone(),
            health_command: self.health_command.clone(),
        })
    }

    fn archive(&self) -> anyhow::Result<Vec<u8>> {
        match &self.content {
            Content::Raw(b) => Ok(b.clone()),
            Content::File { bytes, mode } => {
                let base = self
                    .install_path
                    .rsplit('/')
                    .next()
                    .unwrap_or(&self.name)
                    .to_owned();
                tar_zst(&[TarEntry::File {
                    path: base,
                    bytes: bytes.clone(),
                    mode: *mode,
                }])
            }
            Content::Tree(files) => {
                let mut entries = Vec::new();
                let mut dirs = std::collections::BTreeSet::new();
                for (p, _, _) in files {
                    let mut acc = String::new();
                    let parts: Vec<&str> = p.split('/').collect();
                    for d in &parts[..parts.len().saturating_sub(1)] {
                        if !acc.is_empty() {
                            acc.push('/');
                        }
                        acc.push_str(d);
                        dirs.insert(acc.clone());
                    }
                }
                for d in dirs {
                    entries.push(TarEntry::Dir { path: d });
                }
                for (p, b, m) in files {
                    entries.push(TarEntry::File {
                        path: p.clone(),
                        bytes: b.clone(),
                        mode: *m,
                    });
                }
                tar_zst(&entries)
            }
        }
    }
}

/// A fixture release before signing.
#[derive(Debug, Clone)]
pub struct ReleaseSpec {
    pub product: String,
    pub channel: String,
    pub version: String,
    pub components: Vec<ComponentSpec>,
    pub min_version: Option<String>,
    pub release_notes: String,
    /// `expires` relative to now (negative = already expired).
    pub expires_in: jiff::SignedDuration,
    /// Earlier releases each component gets a delta from ([`ReleaseSpec::deltas_from`]).
    pub delta_from: Vec<ReleaseSpec>,
}

impl ReleaseSpec {
    pub fn new(product: &str, channel: &str, version: &str) -> Self {
        Self {
            product: product.into(),
            channel: channel.into(),
            version: version.into(),
            components: Vec::new(),
            min_version: None,
            release_notes: format!("fixture release {version}"),
            expires_in: jiff::SignedDuration::from_hours(24 * 30),
            delta_from: Vec::new(),
        }
    }

    /// Each component gets a delta (the smallest of every algorithm, whatever its size) from
    /// the same component of `earlier`, as the publish tool makes them (docs/spec.md §11).
    pub fn deltas_from(mut self, earlier: &ReleaseSpec) -> Self {
        self.delta_from.push(earlier.clone());
        self
    }

    /// The deltas of [`ReleaseSpec::deltas_from`], added to `components` (whose archives are
    /// `artifacts`, in the same order) and to `artifacts`.
    fn add_deltas(
        &self,
        components: &mut [Component],
        artifacts: &mut Vec<(String, Vec<u8>)>,
    ) -> anyhow::Result<()> {
        for earlier in &self.delta_from {
            for old in &earlier.components {
                let Some(i) = components.iter().position(|c| c.name.as_str() == old.name) else {
                    continue;
                };
                let tar = zstd::decode_all(&artifacts[i].1[..])?;
                let old_tar = zstd::decode_all(&old.archive()?[..])?;
                let base = qx_delta::base::from_archive(&old_tar[..], old.kind, u64::MAX)?
                    .context("no base")?;
                let (algorithm, patch) = qx_delta::smallest(qx_delta::ALGORITHMS, &base, &tar)?
                    .context("no algorithm")?;
                let c = &mut components[i];
                let artifact = format!("{}.from-{}.delta", c.name, earlier.version);
                c.tar = Some(Digest {
                    sha256: Sha256::of(&tar),
                    size_bytes: tar.len() as u64,
                });
                c.deltas.push(Delta {
                    from_sha256: Sha256::of(&base),
                    from_size_bytes: base.len() as u64,
                    from_version: Version::parse(&earlier.version)?,
                    artifact: ArtifactName::new(artifact.clone())?,
                    sha256: Sha256::of(&patch),
                    size_bytes: patch.len() as u64,
                    algorithm,
                });
                artifacts.push((artifact, patch));
            }
        }
        Ok(())
    }

    pub fn component(mut self, c: ComponentSpec) -> Self {
        self.components.push(c);
        self
    }

    /// Builds the artifacts and the manifest (unsigned).
    pub fn build(&self) -> anyhow::Result<BuiltRelease> {
        let version = Version::parse(&self.version)?;
        let mut components = Vec::new();
        let mut artifacts = Vec::new();
        for c in &self.components {
            let bytes = c.archive()?;
            let component = c.manifest_entry(&version, &bytes)?;
            artifacts.push((component.artifact.to_string(), bytes));
            components.push(component);
        }
        self.add_deltas(&mut components, &mut artifacts)?;
        let now = jiff::Timestamp::now();
        let (release_date, expires) = if self.expires_in.is_negative() {
            let expires = now.checked_add(self.expires_in)?;
            (
                expires.checked_sub(jiff::SignedDuration::from_hours(1))?,
                expires,
            )
        } else {
            (
                now.checked_sub(jiff::SignedDuration::from_mins(1))?,
                now.checked_add(self.expires_in)?,
            )
        };
        let manifest = Manifest {
            schema: qx_core::SCHEMA_VERSION,
            product: ProductName::new(self.product.clone())?,
            version,
            channel: ChannelName::new(self.channel.clone())?,
            release_date,
            expires,
            update_type: UpdateType::Component,
            components,
            full_image: None,
            min_version: self
                .min_version
                .as_deref()
                .map(Version::parse)
                .transpose()?,
            release_notes: self.release_notes.clone(),
        };
        manifest
            .validate()
            .map_err(|p| anyhow::anyhow!("fixture manifest is invalid: {p:?}"))?;
        Ok(BuiltRelease {
            manifest_bytes: manifest.to_bytes(),
            manifest,
            artifacts,
            signature: String::new(),
        })
    }

    /// Builds and signs.
    pub fn sign(&self, key: &FixtureKey) -> anyhow::Result<BuiltRelease> {
        let mut r = self.build()?;
        r.signature = key.sign(&r.manifest_bytes)?;
        Ok(r)
    }
}

/// A built release: manifest bytes, signature text, artifacts.
#[derive(Debug, Clone)]
pub struct BuiltRelease {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub signature: String,
    pub artifacts: Vec<(String, Vec<u8>)>,
}

impl BuiltRelease {
    /// Publishes to `server_url` (`POST` to [`ServerUrl::publish`]); returns the HTTP status.
    /// Errors when the server answers anything but 200/201.
    pub fn publish(&self, server_url: &str, token: &str) -> anyhow::Result<u16> {
        let status = self.publish_raw(server_url, token)?;
        if status.0 != 200 && status.0 != 201 {
            bail!(
                "publish of {} answered {}: {}",
                self.manifest.version,
                status.0,
                status.1
            );
        }
        Ok(status.0)
    }

    /// Publishes and returns (status, body) whatever the answer.
    pub fn publish_raw(&self, server_url: &str, token: &str) -> anyhow::Result<(u16, String)> {
        let mut form = reqwest::blocking::multipart::Form::new()
            .part(
                "manifest",
                reqwest::blocking::multipart::Part::bytes(self.manifest_bytes.clone())
                    .file_name("manifest.json"),
            )
            .part(
                "signature",
                reqwest::blocking::multipart::Part::bytes(self.signature.clone().into_bytes())
                    .file_name("manifest.json.minisig"),
            );
        for (name, bytes) in &self.artifacts {
            form = form.part(
                name.clone(),
                reqwest::blocking::multipart::Part::bytes(bytes.clone()).file_name(name.clone()),
            );
        }
        let url = ServerUrl::new(server_url).publish(&self.manifest.product);
        let resp = reqwest::blocking::Client::new()
            .post(&url)
            .bearer_auth(token)
            .multipart(form)
            .send()
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().unwrap_or_default()))
    }

    pub fn artifact(&self, name: &str) -> Option<&[u8]> {
        self.artifacts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }
}

/// A one-route HTTP/1.1 server on loopback: every request gets `status` with `body` and the
/// given headers. For a server that lies (no signature header, a tampered manifest, …).
pub struct StaticServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StaticServer {
    pub fn start(
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(false)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut s) = conn else { continue };
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                // Read the request head.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let mut resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in &headers {
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                resp.push_str("\r\n");
                let _ = s.write_all(resp.as_bytes());
                let _ = s.write_all(&body);
            }
        });
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where a release lives in a server's release directory (docs/spec.md §3).
pub fn release_path(
    release_dir: &std::path::Path,
    product: &str,
    channel: &str,
    version: &str,
) -> PathBuf {
    release_dir.join(product).join(channel).join(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_release_is_signed_and_valid() {
        let key = FixtureKey::generate().expect("key");
        let r = ReleaseSpec::new("quantix-os", "dev", "1.0.0")
            .component(
                ComponentSpec::file("qx-node", "/data/bin/qx-node", b"bin".to_vec())
                    .service("quantix-node"),
            )
            .sign(&key)
            .expect("release");
        let mut keys = qx_core::TrustedKeys::new();
        keys.add(&key.public_key_file).expect("pub");
        keys.verify(&r.manifest_bytes, &r.signature)
            .expect("verifies");
        let m = Manifest::parse(&r.manifest_bytes, qx_core::UnknownFields::Reject).expect("parse");
        assert_eq!(
            m.components[0].sha256,
            Sha256::of(r.artifact("qx-node.tar.zst").expect("artifact"))
        );
    }

    #[test]
    fn hostile_tar_keeps_raw_paths() {
        let bytes = tar_zst(&[TarEntry::File {
            path: "../evil".into(),
            bytes: b"x".to_vec(),
            mode: 0o644,
        }])
        .expect("tar");
        let dec = zstd::decode_all(bytes.as_slice()).expect("zstd");
        let mut a = tar::Archive::new(dec.as_slice());
        let e = a
            .entries()
            .expect("entries")
            .next()
            .expect("one")
            .expect("entry");
        assert_eq!(e.path_bytes().as_ref(), b"../evil");
    }
}
