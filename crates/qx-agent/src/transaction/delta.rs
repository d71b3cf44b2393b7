//! Deltas on the host (docs/spec.md §11): a component's archive rebuilt from content the host
//! already holds and a small patch, instead of the whole artifact.
//!
//! For each component to apply from a server (bundles carry whole artifacts):
//! 1. **choose** ([`choose`]): only when the manifest signs the archive's digest (`tar`); the
//!    deltas of a known algorithm, not refused before on this host
//!    (`/data/updates/deltas-refused.json`) and whose base is small enough to hold in memory.
//!    Candidates for the base: the installed content at the install path, then each backup of
//!    the component. A candidate is sized from its metadata first, then read once and hashed;
//!    the smallest delta whose `from_size_bytes` and `from_sha256` match wins;
//! 2. the patch is **downloaded** like an artifact into `staging/<version>/` (resumed after a
//!    cut, size and SHA-256 checked while it streams);
//! 3. **rebuilt** from the base bytes read in step 1 (a base changed on the disk since cannot
//!    change the result) into `staging/<version>/.rebuilt/<artifact>.part`, capped at the
//!    signed size and hashed as it is written; only when size and SHA-256 equal the manifest's
//!    `tar` is it renamed to `.rebuilt/<artifact>` and handed to the extraction as a plain tar;
//! 4. any **failure** of 2–3 is logged and the artifact downloaded whole instead. A delta whose
//!    patch (size or SHA-256) or result was wrong is recorded as refused and never used again
//!    on this host; a cut download or a full disk is not (the next attempt tries again, and
//!    resumes the download).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use qx_core::fs::{remove_any, write_atomic};
use qx_core::manifest::{Delta, Digest};
use qx_core::{Component, Sha256, Sha256Hasher};
use qx_delta::base::{self, MAX_BASE_BYTES};
use serde::Serialize;

use super::apply::{download_artifacts, Tx};
use super::extract::Archive;
use super::journal::crash_point;
use crate::download::DownloadError;
use crate::{AgentError, HostPaths};

/// How many refused deltas a host remembers (the oldest are forgotten first).
const REFUSED_KEPT: usize = 256;
/// Where rebuilt archives are kept inside `staging/<version>/` (no artifact name starts with
/// a dot, so none can collide with it).
const REBUILT_DIR: &str = ".rebuilt";

/// A delta an apply used (part of [`super::ApplyReport`]).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeltaUse {
    pub component: String,
    pub from_version: String,
    pub algorithm: String,
    /// The patch's size: what was downloaded.
    pub downloaded_bytes: u64,
    /// The whole artifact's size: what was not.
    pub artifact_bytes: u64,
}

impl DeltaUse {
    /// One human line: what was downloaded instead of what.
    pub fn summary(&self) -> String {
        let saved = self.artifact_bytes.saturating_sub(self.downloaded_bytes);
        format!(
            "{}: rebuilt from {} with a {}-byte {} delta instead of the {}-byte artifact ({} bytes, {}% saved)",
            self.component,
            self.from_version,
            self.downloaded_bytes,
            self.algorithm,
            self.artifact_bytes,
            saved,
            saved * 100 / self.artifact_bytes.max(1)
        )
    }
}

/// A delta chosen for a component, with its base read into memory.
struct Chosen {
    delta: Delta,
    tar: Digest,
    base: Vec<u8>,
    base_path: PathBuf,
}

/// Why a delta was not used.
enum Failure {
    /// The network or the server: the next attempt tries the delta again.
    Transient(AgentError),
    /// The patch or its result was wrong: the delta is refused from now on.
    Bad(String),
}

/// Step 1–4 for every component of `components`, in order: the archive to extract for each,
/// rebuilt or downloaded whole.
pub(super) fn fetch(
    tx: &mut Tx<'_>,
    version: &str,
    dir: &Path,
    components: &[Component],
) -> Result<Vec<Archive>, AgentError> {
    let mut archives: Vec<Option<Archive>> = Vec::with_capacity(components.len());
    for c in components {
        archives.push(try_delta(tx, version, dir, c).map(Archive::Tar));
    }
    let whole: Vec<_> = components
        .iter()
        .zip(&archives)
        .filter(|(_, a)| a.is_none())
        .map(|(c, _)| c.artifact_ref())
        .collect();
    // One path per artifact asked for, in order.
    let mut downloaded =
        download_artifacts(tx.agent, version, dir, &whole, &mut tx.log)?.into_iter();
    Ok(components
        .iter()
        .zip(archives)
        .map(|(c, a)| {
            a.unwrap_or_else(|| {
                Archive::Zst(
                    downloaded
                        .next()
                        .unwrap_or_else(|| dir.join(c.artifact.as_str())),
                )
            })
        })
        .collect())
}

/// The rebuilt archive of `c`, or `None` when no delta applies or the chosen one failed.
fn try_delta(tx: &mut Tx<'_>, version: &str, dir: &Path, c: &Component) -> Option<PathBuf> {
    let refused = refused(tx.paths);
    let chosen = choose(tx.paths, c, &refused)?;
    tx.log.line(&format!(
        "delta for {}: {} from {} ({}, {} bytes instead of {})",
        c.name,
        chosen.delta.artifact,
        chosen.base_path.display(),
        chosen.delta.algorithm.as_str(),
        chosen.delta.size_bytes,
        c.size_bytes
    ));
    match rebuild(tx, version, dir, c, &chosen) {
        Ok(path) => {
            tx.deltas.push(DeltaUse {
                component: c.name.to_string(),
                from_version: chosen.delta.from_version.to_string(),
                algorithm: chosen.delta.algorithm.as_str().to_owned(),
                downloaded_bytes: chosen.delta.size_bytes,
                artifact_bytes: c.size_bytes,
            });
            Some(path)
        }
        Err(Failure::Transient(e)) => {
            tx.log.line(&format!(
                "delta for {} not downloaded ({e}); downloading the whole artifact",
                c.name
            ));
            None
        }
        Err(Failure::Bad(why)) => {
            tx.log.line(&format!(
                "delta {} refused: {why}; it will not be used again on this host; downloading the whole artifact",
                chosen.delta.artifact
            ));
            let _ = remove_any(&dir.join(chosen.delta.artifact.as_str()));
            refuse(tx.paths, chosen.delta.sha256, refused);
            None
        }
    }
}

/// Step 1 of the module documentation.
fn choose(paths: &HostPaths, c: &Component, refused: &[Sha256]) -> Option<Chosen> {
    let tar = c.tar?;
    let usable: Vec<&Delta> = c
        .deltas
        .iter()
        .filter(|d| qx_delta::ALGORITHMS.contains(&d.algorithm))
        .filter(|d| d.from_size_bytes <= MAX_BASE_BYTES && !refused.contains(&d.sha256))
        .collect();
    if usable.is_empty() {
        return None;
    }
    for path in candidates(paths, c) {
        let size = base::installed_size(&path, c.kind).ok().flatten();
        if !size.is_some_and(|s| usable.iter().any(|d| d.from_size_bytes == s)) {
            continue;
        }
        let Ok(Some(bytes)) = base::from_installed(&path, c.kind, MAX_BASE_BYTES) else {
            continue;
        };
        let (sha, len) = (Sha256::of(&bytes), bytes.len() as u64);
        let best = usable
            .iter()
            .filter(|d| d.from_sha256 == sha && d.from_size_bytes == len)
            .min_by_key(|d| d.size_bytes);
        if let Some(d) = best {
            return Some(Chosen {
                delta: (*d).clone(),
                tar,
                base: bytes,
                base_path: path,
            });
        }
    }
    None
}

/// Where a base may be: the installed content, then every backup of the component
/// (`backup/<version>/<component>/<name>`).
fn candidates(paths: &HostPaths, c: &Component) -> Vec<PathBuf> {
    let mut out = vec![paths.host(Path::new(c.install_path.as_str()))];
    let Ok(versions) = fs::read_dir(&paths.backup) else {
        return out;
    };
    for v in versions.flatten() {
        if let Ok(saved) = fs::read_dir(v.path().join(c.name.as_str())) {
            out.extend(saved.flatten().map(|e| e.path()));
        }
    }
    out
}

/// Steps 2–3 of the module documentation: the rebuilt archive's path.
fn rebuild(
    tx: &mut Tx<'_>,
    version: &str,
    dir: &Path,
    c: &Component,
    chosen: &Chosen,
) -> Result<PathBuf, Failure> {
    let out_dir = dir.join(REBUILT_DIR);
    let out = out_dir.join(c.artifact.as_str());
    if is_rebuilt(&out, &chosen.tar) {
        tx.log.line(&format!("{} already rebuilt", out.display()));
        return Ok(out);
    }
    let patch = download_artifacts(
        tx.agent,
        version,
        dir,
        &[chosen.delta.artifact_ref()],
        &mut tx.log,
    )
    .map_err(|e| match wrong_bytes(&e) {
        true => Failure::Bad(e.to_string()),
        false => Failure::Transient(e),
    })?;
    let patch = patch
        .first()
        .ok_or_else(|| Failure::Bad("nothing downloaded".into()))?;
    fs::create_dir_all(&out_dir)
        .map_err(|e| Failure::Bad(format!("{}: {e}", out_dir.display())))?;
    let part = out_dir.join(format!("{}.part", c.artifact));
    let result = decode_into(chosen, patch, &part).and_then(|()| {
        fs::rename(&part, &out).map_err(|e| Failure::Bad(format!("{}: {e}", out.display())))
    });
    if result.is_err() {
        let _ = remove_any(&part);
    }
    result?;
    tx.log.line(&format!(
        "rebuilt {} from {} ({} bytes, sha256 verified)",
        out.display(),
        chosen.delta.artifact,
        chosen.tar.size_bytes
    ));
    Ok(out)
}

/// True when a download failed because the server sent other bytes than the manifest signs
/// (every attempt, when it was retried): the patch, not the link, is wrong.
fn wrong_bytes(e: &AgentError) -> bool {
    let AgentError::Download(first) = e else {
        return false;
    };
    let mut d: &DownloadError = first;
    while let DownloadError::GaveUp { last, .. } = d {
        d = last.as_ref();
    }
    matches!(
        d,
        DownloadError::Mismatch { .. } | DownloadError::SizeMismatch { .. }
    )
}

/// Applies the patch at `patch` to the chosen base into `part`, checking the result against
/// the signed digest.
fn decode_into(chosen: &Chosen, patch: &Path, part: &Path) -> Result<(), Failure> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |e: std::io::Error| Failure::Bad(format!("{}: {e}", p.display()))
    };
    let input = File::open(patch).map_err(io(patch))?;
    let mut writer = Hashing {
        inner: BufWriter::new(File::create(part).map_err(io(part))?),
        hasher: Sha256Hasher::new(),
    };
    let d = &chosen.delta;
    qx_delta::decode(
        d.algorithm,
        &chosen.base,
        input,
        &mut writer,
        chosen.tar.size_bytes,
    )
    .map_err(|e| Failure::Bad(e.to_string()))?;
    writer.inner.flush().map_err(io(part))?;
    let (sha, len) = writer.hasher.finish();
    if (sha, len) != (chosen.tar.sha256, chosen.tar.size_bytes) {
        return Err(Failure::Bad(format!(
            "the rebuilt archive has {len} bytes, sha256 {}; the manifest signs {} bytes, sha256 {}",
            sha.short(),
            chosen.tar.size_bytes,
            chosen.tar.sha256.short()
        )));
    }
    Ok(())
}

/// True when `path` holds exactly the signed archive (an earlier attempt rebuilt it).
fn is_rebuilt(path: &Path, tar: &Digest) -> bool {
    File::open(path)
        .and_then(Sha256::of_reader)
        .is_ok_and(|(sha, len)| sha == tar.sha256 && len == tar.size_bytes)
}

/// A writer that hashes what it writes, with a crash point once it is under way.
struct Hashing<W> {
    inner: W,
    hasher: Sha256Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        if self.hasher.len() >= 1 << 16 {
            crash_point("delta-rebuilding");
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The deltas this host refused, newest last.
pub(crate) fn refused(paths: &HostPaths) -> Vec<Sha256> {
    fs::read(&paths.deltas_refused)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Records `sha256` as refused (best effort: a failure to record only costs a second try).
pub(crate) fn refuse(paths: &HostPaths, sha256: Sha256, mut list: Vec<Sha256>) {
    list.retain(|s| *s != sha256);
    list.push(sha256);
    let skip = list.len().saturating_sub(REFUSED_KEPT);
    let kept = &list[skip..];
    if let Ok(bytes) = serde_json::to_vec(kept) {
        if let Err(e) = write_atomic(&paths.deltas_refused, &bytes) {
            tracing::warn!(error = %e, "cannot record a refused delta");
        }
    }
}
