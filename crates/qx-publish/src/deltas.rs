//! Deltas for a release being published (docs/spec.md §11).
//!
//! 1. [`fetch_bases`]: for the channel's newest releases (at most `from_last`, the release being
//!    published left out), the signed manifest is fetched and checked (signature, SHA-256
//!    against the channel state); every artifact of a component the new release builds is
//!    downloaded (size and SHA-256 checked) and turned into that component's *base*, its
//!    installed content ([`qx_delta::base`]).
//! 2. [`add`], during the build: each newly built component's archive is decompressed (its
//!    digest becomes the manifest's `tar`), and a patch is encoded from every distinct base of
//!    the same component and kind with each algorithm; the smallest is kept when it is at most
//!    [`MAX_RATIO_PERCENT`] % of the artifact, written into the release directory and listed
//!    in the component's `deltas`, signed with the manifest.
//! 3. Images: [`fetch_image_bases`] downloads the full image of each of the same releases
//!    (checked like the components' artifacts) and [`add_image`] encodes a `zstd-window` patch
//!    from each distinct one to the new image, kept on the same terms, listed in the image's
//!    `deltas`.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use qx_core::channel::ChannelState;
use qx_core::manifest::{ComponentKind, Delta, Digest, ImageChunks};
use qx_core::{
    ArtifactName, ArtifactRef, Component, ComponentName, Manifest, Sha256, TrustedKeys, Version,
};
use qx_delta::base::MAX_BASE_BYTES;

use crate::channel;
use crate::error::{Error, Result};
use crate::upload::Client;

/// How many of the channel's newest releases deltas are made from, unless told otherwise.
pub const DEFAULT_FROM_LAST: usize = 3;
/// A delta is kept only when it is at most this share of the full artifact.
pub const MAX_RATIO_PERCENT: u64 = 75;

/// The content one component had in an earlier release: what a host running that release
/// holds, and a delta starts from.
#[derive(Debug, Clone)]
pub struct Base {
    pub component: ComponentName,
    pub kind: ComponentKind,
    pub version: Version,
    pub sha256: Sha256,
    pub bytes: Vec<u8>,
}

/// The signed manifests of the channel's newest releases (at most `from_last`, `version` left
/// out), each checked against the signed state.
fn newest_manifests(
    client: &Client,
    trusted: &TrustedKeys,
    state: &ChannelState,
    version: &Version,
    from_last: usize,
) -> Result<Vec<Manifest>> {
    let mut releases: Vec<_> = state
        .releases
        .iter()
        .filter(|r| &r.version != version)
        .collect();
    releases.sort_by(|a, b| b.version.cmp(&a.version));
    let (product, ch) = (state.product.as_str(), state.channel.as_str());
    let mut manifests = Vec::new();
    for r in releases.into_iter().take(from_last) {
        let (m, bytes, _) = channel::fetch_manifest(client, trusted, product, ch, &r.version)?;
        if Sha256::of(&bytes) != r.manifest_sha256 {
            return Err(channel::state_error(
                product,
                ch,
                format!(
                    "the manifest of release {} does not match the signed state; no delta is made from it",
                    r.version
                ),
            ));
        }
        manifests.push(m);
    }
    Ok(manifests)
}

/// Step 1 of the module documentation.
pub fn fetch_bases(
    client: &Client,
    trusted: &TrustedKeys,
    state: &ChannelState,
    version: &Version,
    wanted: &[ComponentName],
    from_last: usize,
    note: &mut dyn FnMut(&str),
) -> Result<Vec<Base>> {
    let (product, ch) = (state.product.as_str(), state.channel.as_str());
    let dir = tempfile::tempdir().map_err(Error::io(std::env::temp_dir()))?;
    let mut bases: Vec<Base> = Vec::new();
    let mut seen_artifacts = Vec::new();
    for m in newest_manifests(client, trusted, state, version, from_last)? {
        for c in m.components.iter().filter(|c| wanted.contains(&c.name)) {
            if seen_artifacts.contains(&c.sha256) {
                continue;
            }
            seen_artifacts.push(c.sha256);
            let path = dir.path().join(c.artifact.as_str());
            client.download_verified(
                product,
                &m.version.to_string(),
                ch,
                &c.artifact_ref(),
                &path,
            )?;
            if let Some(base) = base_of(&path, c, &m.version)? {
                keep(&mut bases, base, note);
            }
        }
    }
    Ok(bases)
}

/// An earlier release's full image, downloaded and checked: what a host that booted it holds.
#[derive(Debug, Clone)]
pub struct ImageBase {
    pub version: Version,
    pub sha256: Sha256,
    pub path: std::path::PathBuf,
    /// The directory holding `path`, removed with the last clone.
    _dir: std::sync::Arc<tempfile::TempDir>,
}

/// Step 3 of the module documentation, first half: the distinct full images of the channel's
/// newest releases.
pub fn fetch_image_bases(
    client: &Client,
    trusted: &TrustedKeys,
    state: &ChannelState,
    version: &Version,
    from_last: usize,
    note: &mut dyn FnMut(&str),
) -> Result<Vec<ImageBase>> {
    let (product, ch) = (state.product.as_str(), state.channel.as_str());
    let dir = std::sync::Arc::new(tempfile::tempdir().map_err(Error::io(std::env::temp_dir()))?);
    let mut bases: Vec<ImageBase> = Vec::new();
    for m in newest_manifests(client, trusted, state, version, from_last)? {
        let Some(img) = &m.full_image else { continue };
        if bases.iter().any(|b| b.sha256 == img.sha256) {
            continue;
        }
        let path = dir.path().join(format!("{}-{}", m.version, img.artifact));
        let at = m.version.to_string();
        client.download_verified(product, &at, ch, &img.artifact_ref(), &path)?;
        note(&format!(
            "full image: base for deltas from {} ({} bytes, sha256 {})",
            m.version,
            img.size_bytes,
            img.sha256.short()
        ));
        bases.push(ImageBase {
            version: m.version.clone(),
            sha256: img.sha256,
            path,
            _dir: dir.clone(),
        });
    }
    Ok(bases)
}

/// Step 3 of the module documentation, second half: the deltas from `bases` to the image
/// `image` built into `out`, those that pay written there.
pub fn add_image(
    image: &ArtifactRef,
    out: &Path,
    bases: &[ImageBase],
    note: &mut dyn FnMut(&str),
) -> Result<Vec<Delta>> {
    if bases.is_empty() {
        return Ok(Vec::new());
    }
    let path = out.join(image.artifact.as_str());
    let target = std::fs::read(&path).map_err(Error::io(&path))?;
    let mut deltas = Vec::new();
    for b in bases {
        let base = std::fs::read(&b.path).map_err(Error::io(&b.path))?;
        let algorithm = qx_delta::IMAGE_ALGORITHM;
        let patch = qx_delta::encode(algorithm, &base, &target).map_err(|e| Error::Archive {
            path: path.clone(),
            message: format!("cannot make a delta from {}: {e}", b.version),
        })?;
        if (patch.len() as u64) * 100 > image.size_bytes * MAX_RATIO_PERCENT {
            continue;
        }
        let artifact = delta_name(image.artifact.as_str(), &b.sha256)?;
        qx_core::fs::write_atomic(&out.join(artifact.as_str()), &patch)?;
        note(&format!(
            "full image: delta from {} with {}: {} bytes ({}% of the {}-byte image)",
            b.version,
            algorithm.as_str(),
            patch.len(),
            patch.len() as u64 * 100 / image.size_bytes.max(1),
            image.size_bytes
        ));
        deltas.push(Delta {
            from_sha256: b.sha256,
            from_size_bytes: base.len() as u64,
            from_version: b.version.clone(),
            artifact,
            sha256: Sha256::of(&patch),
            size_bytes: patch.len() as u64,
            algorithm,
        });
    }
    Ok(deltas)
}

/// Adds `base` to `bases` unless the same content of the same component is there.
fn keep(bases: &mut Vec<Base>, base: Base, note: &mut dyn FnMut(&str)) {
    if bases
        .iter()
        .any(|b| b.component == base.component && b.sha256 == base.sha256)
    {
        return;
    }
    note(&format!(
        "{}: base for deltas from {} ({} bytes, sha256 {})",
        base.component,
        base.version,
        base.bytes.len(),
        base.sha256.short()
    ));
    bases.push(base);
}

/// The base of component `c` of release `version`, from its downloaded artifact (None when it
/// is larger than [`MAX_BASE_BYTES`]).
fn base_of(artifact: &Path, c: &Component, version: &Version) -> Result<Option<Base>> {
    let bad = |message: String| Error::Archive {
        path: artifact.to_owned(),
        message,
    };
    let file = File::open(artifact).map_err(Error::io(artifact))?;
    let tar = zstd::Decoder::new(file).map_err(|e| bad(format!("not a zstd stream: {e}")))?;
    let bytes = qx_delta::base::from_archive(tar, c.kind, MAX_BASE_BYTES)
        .map_err(|e| bad(format!("cannot read the archive: {e}")))?;
    Ok(bytes.map(|bytes| Base {
        component: c.name.clone(),
        kind: c.kind,
        version: version.clone(),
        sha256: Sha256::of(&bytes),
        bytes,
    }))
}

/// Step 2 of the module documentation, for component `c` whose artifact was built into `out`.
pub fn add(
    c: &mut Component,
    out: &Path,
    bases: &[Base],
    note: &mut dyn FnMut(&str),
) -> Result<()> {
    let mine: Vec<&Base> = bases
        .iter()
        .filter(|b| b.component == c.name && b.kind == c.kind)
        .collect();
    if mine.is_empty() {
        return Ok(());
    }
    let tar = unpack(&out.join(c.artifact.as_str()))?;
    let digest = Digest {
        sha256: Sha256::of(&tar),
        size_bytes: tar.len() as u64,
    };
    for base in mine {
        if let Some(d) = encode_one(c, &tar, base, out)? {
            note(&format!(
                "{}: delta from {} with {}: {} bytes ({}% of the {}-byte artifact)",
                c.name,
                base.version,
                d.algorithm.as_str(),
                d.size_bytes,
                d.size_bytes * 100 / c.size_bytes.max(1),
                c.size_bytes
            ));
            c.deltas.push(d);
        }
    }
    if !c.deltas.is_empty() {
        c.tar = Some(digest);
    }
    Ok(())
}

/// The smallest patch from `base` to `tar`, written into `out`, when it pays.
fn encode_one(c: &Component, tar: &[u8], base: &Base, out: &Path) -> Result<Option<Delta>> {
    let encoded =
        qx_delta::smallest(qx_delta::ALGORITHMS, &base.bytes, tar).map_err(|e| Error::Source {
            component: c.name.to_string(),
            message: format!("cannot make a delta from {}: {e}", base.version),
        })?;
    let Some((algorithm, patch)) = encoded else {
        return Ok(None);
    };
    if (patch.len() as u64) * 100 > c.size_bytes * MAX_RATIO_PERCENT {
        return Ok(None);
    }
    let artifact = delta_name(c.name.as_str(), &base.sha256)?;
    let path = out.join(artifact.as_str());
    qx_core::fs::write_atomic(&path, &patch)?;
    Ok(Some(Delta {
        from_sha256: base.sha256,
        from_size_bytes: base.bytes.len() as u64,
        from_version: base.version.clone(),
        artifact,
        sha256: Sha256::of(&patch),
        size_bytes: patch.len() as u64,
        algorithm,
    }))
}

/// A delta's artifact name: the component's or image's name (shortened to fit) and the
/// base's hash.
fn delta_name(of: &str, base: &Sha256) -> Result<ArtifactName> {
    let name: String = of.chars().take(40).collect();
    let hex = base.to_hex();
    ArtifactName::new(format!("{name}.from-{}.delta", &hex[..16]))
        .map_err(|e| Error::Usage(format!("delta artifact name: {e}")))
}

/// Compression level of the image's chunks.
const CHUNK_LEVEL: i32 = 9;

/// Cuts the system image at `image` into content-defined chunks: writes `<name>.chunks` (the
/// index) and `<name>.pack` (the chunks compressed) beside it (docs/deltas.md, "Images").
pub fn chunk_image(image: &Path, out: &Path, note: &mut dyn FnMut(&str)) -> Result<ImageChunks> {
    let name = image
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Usage(format!("{} has no file name", image.display())))?;
    let names = |ext: &str| {
        ArtifactName::new(format!("{name}.{ext}"))
            .map_err(|e| Error::Usage(format!("image chunk artifact name: {e}")))
    };
    let (index_name, pack_name) = (names("chunks")?, names("pack")?);
    let pack_path = out.join(pack_name.as_str());
    let input = File::open(image).map_err(Error::io(image))?;
    let pack_file = File::create(&pack_path).map_err(Error::io(&pack_path))?;
    let mut writer = std::io::BufWriter::new(pack_file);
    let index = qx_delta::chunks::pack(std::io::BufReader::new(input), &mut writer, CHUNK_LEVEL)
        .map_err(|e| Error::Archive {
            path: image.to_owned(),
            message: format!("cannot cut the image into chunks: {e}"),
        })?;
    let file = writer
        .into_inner()
        .map_err(|e| Error::io(&pack_path)(e.into_error()))?;
    file.sync_all().map_err(Error::io(&pack_path))?;
    let index_bytes = index.to_bytes();
    qx_core::fs::write_atomic(&out.join(index_name.as_str()), &index_bytes)?;
    let (pack_sha, pack_size) =
        Sha256::of_reader(File::open(&pack_path).map_err(Error::io(&pack_path))?)
            .map_err(Error::io(&pack_path))?;
    note(&format!(
        "full image: {} chunks, packed into {pack_name} ({pack_size} bytes)",
        index.chunks.len()
    ));
    Ok(ImageChunks {
        index: ArtifactRef {
            artifact: index_name,
            sha256: Sha256::of(&index_bytes),
            size_bytes: index_bytes.len() as u64,
        },
        pack: ArtifactRef {
            artifact: pack_name,
            sha256: pack_sha,
            size_bytes: pack_size,
        },
    })
}

/// A built artifact decompressed.
fn unpack(artifact: &Path) -> Result<Vec<u8>> {
    let file = File::open(artifact).map_err(Error::io(artifact))?;
    let mut tar = Vec::new();
    zstd::Decoder::new(file)
        .and_then(|mut d| d.read_to_end(&mut tar))
        .map_err(|e| Error::Archive {
            path: artifact.to_owned(),
            message: format!("cannot decompress: {e}"),
        })?;
    Ok(tar)
}
