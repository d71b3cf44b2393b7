//! `qx-publish verify`: checks a built or published release end to end — the signature, every
//! artifact's size and SHA-256, and every archive (decompressed whole, every tar entry walked).
//! All problems are collected and reported together.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use qx_core::api::{self, ServerUrl, DEFAULT_CHANNEL};
use qx_core::{
    Component, ComponentKind, Manifest, Sha256, TrustedKeys, UnknownFields, UpdateType,
    MANIFEST_FILE, SIGNATURE_FILE,
};

use crate::error::{Error, Result};
use crate::pack::{self, EntryInfo, EntryKind};
use crate::upload::Client;

/// What a successful verification checked.
#[derive(Debug, Clone)]
pub struct Report {
    pub manifest: Manifest,
    /// The key that made the signature.
    pub key_id: String,
    /// One line per check, for printing.
    pub checked: Vec<String>,
}

/// What the checks of one release found so far.
#[derive(Debug, Default)]
struct Checks {
    problems: Vec<String>,
    checked: Vec<String>,
    /// Artifacts carried over: not in the directory.
    carried: Vec<String>,
}

/// Verifies a release directory. Without `keys` the signature cannot be checked, which is
/// reported as a problem.
pub fn verify_dir(dir: &Path, keys: Option<&TrustedKeys>) -> Result<Report> {
    verify_dir_carrying(dir, keys, &[])
}

/// Verifies a release directory whose `carried` artifacts (carried over from an earlier
/// release, docs/spec.md §8) are held by the server, not by the directory: they are checked
/// by the server when it links them, and skipped here.
pub fn verify_dir_carrying(
    dir: &Path,
    keys: Option<&TrustedKeys>,
    carried: &[String],
) -> Result<Report> {
    let target = dir.display().to_string();
    let fail = |problems: Vec<String>| Error::Verify {
        target: target.clone(),
        problems,
    };
    let manifest_path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&manifest_path)
        .map_err(|e| fail(vec![format!("{}: {e}", manifest_path.display())]))?;
    let mut checks = Checks {
        carried: carried.to_vec(),
        ..Checks::default()
    };
    let key_id = checks.signature(dir, &bytes, keys);
    let manifest = match Manifest::parse(&bytes, UnknownFields::Reject) {
        Ok(m) => m,
        Err(e) => {
            let parse = e.problems();
            let parse = parse.iter().map(|p| format!("{MANIFEST_FILE}: {p}"));
            checks.problems.extend(parse);
            return Err(fail(checks.problems));
        }
    };
    checks.manifest(&manifest);
    checks.artifacts(dir, &manifest);
    for c in &manifest.components {
        checks.archive(dir, c);
    }
    if checks.problems.is_empty() {
        Ok(Report {
            manifest,
            key_id,
            checked: checks.checked,
        })
    } else {
        Err(fail(checks.problems))
    }
}

impl Checks {
    /// The signature of `manifest.json`: the id of the key that made it, or empty.
    fn signature(&mut self, dir: &Path, bytes: &[u8], keys: Option<&TrustedKeys>) -> String {
        let sig_path = dir.join(SIGNATURE_FILE);
        let sig = match std::fs::read_to_string(&sig_path) {
            Ok(sig) => sig,
            Err(e) => {
                self.problems.push(format!("{}: {e}", sig_path.display()));
                return String::new();
            }
        };
        let Some(keys) = keys else {
            self.problems.push(
                "the signature was not checked: no public key given (--pubkey FILE or --key FILE)"
                    .into(),
            );
            return String::new();
        };
        match keys.verify(bytes, &sig) {
            Ok(id) => {
                self.checked.push(format!("signature: good, by key {id}"));
                id
            }
            Err(e) => {
                self.problems.push(format!("{SIGNATURE_FILE}: {e}"));
                String::new()
            }
        }
    }

    /// What the manifest describes, and whether it has expired.
    fn manifest(&mut self, manifest: &Manifest) {
        let update_type = match manifest.update_type {
            UpdateType::Component => "component",
            UpdateType::Full => "full",
            UpdateType::Mixed => "mixed",
        };
        let full_image = if manifest.full_image.is_some() {
            ", full image"
        } else {
            ""
        };
        self.checked.push(format!(
            "manifest: {} {} on channel {} ({update_type} update, {} component(s){full_image})",
            manifest.product,
            manifest.version,
            manifest.channel,
            manifest.components.len(),
        ));
        if manifest.is_expired(Timestamp::now()) {
            self.problems.push(format!(
                "{MANIFEST_FILE}: expired at {}; agents refuse it (publish a new release)",
                manifest.expires
            ));
        }
    }

    /// Every artifact's size and SHA-256 against the manifest.
    fn artifacts(&mut self, dir: &Path, manifest: &Manifest) {
        for a in manifest.artifacts() {
            if self.carried.iter().any(|c| c == a.artifact.as_str()) {
                self.checked.push(format!(
                    "artifact {}: carried over ({} bytes, sha256 {}), held by the server",
                    a.artifact,
                    a.size_bytes,
                    a.sha256.short()
                ));
                continue;
            }
            let path = dir.join(a.artifact.as_str());
            let (sha, size) = match std::fs::File::open(&path).and_then(Sha256::of_reader) {
                Ok(found) => found,
                Err(e) => {
                    self.problems.push(format!("artifact {}: {e}", a.artifact));
                    continue;
                }
            };
            let before = self.problems.len();
            if size != a.size_bytes {
                self.problems.push(format!(
                    "artifact {}: size {size} bytes differs from the manifest's {}",
                    a.artifact, a.size_bytes
                ));
            }
            if sha != a.sha256 {
                self.problems.push(format!(
                    "artifact {}: sha256 mismatch (manifest {}, file {})",
                    a.artifact,
                    a.sha256.short(),
                    sha.short()
                ));
            }
            if self.problems.len() == before {
                self.checked
                    .push(format!("artifact {}: {size} bytes, sha256 ok", a.artifact));
            }
        }
    }

    /// One component's archive: decompressed whole, every entry walked and checked as an
    /// agent would before extracting it.
    fn archive(&mut self, dir: &Path, c: &Component) {
        let path = dir.join(c.artifact.as_str());
        if !path.exists() {
            return; // already reported by `artifacts`
        }
        let entries = match pack::inspect(&path) {
            Ok(e) => e,
            Err(e) => {
                self.problems.push(format!("component {}: {e}", c.name));
                return;
            }
        };
        let before = self.problems.len();
        for e in &entries {
            self.problems.extend(entry_problem(c, e));
        }
        if c.kind == ComponentKind::File {
            self.problems.extend(file_component_problem(c, &entries));
        }
        if self.problems.len() == before {
            self.checked.push(format!(
                "archive {}: {} entries, intact",
                c.artifact,
                entries.len()
            ));
        }
    }
}

/// What an agent would refuse in one archive entry: an unsafe path, a special file, a link
/// out of the component.
fn entry_problem(c: &Component, e: &EntryInfo) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(p) = pack::entry_path_problem(&e.path) {
        problems.push(format!("component {}: {p}", c.name));
    }
    match e.kind {
        EntryKind::Other => problems.push(format!(
            "component {}: entry {} is a special file (device, FIFO or hard link); agents refuse it",
            c.name, e.path
        )),
        EntryKind::Symlink => {
            let target = e.link_target.as_deref().unwrap_or("");
            if !pack::link_stays_inside(Path::new(&e.path), Path::new(target)) {
                problems.push(format!(
                    "component {}: link {} -> {target} points outside the component",
                    c.name, e.path
                ));
            }
        }
        EntryKind::File | EntryKind::Directory => {}
    }
    problems
}

/// A file component's archive holds exactly one regular file, named after `install_path`.
fn file_component_problem(c: &Component, entries: &[EntryInfo]) -> Option<String> {
    if let Some(f) = crate::lint::file_archive(c.name.as_str(), c.artifact.as_str(), entries) {
        return Some(f.message);
    }
    let expected = c
        .install_path
        .as_path()
        .file_name()
        .map(|n| n.to_string_lossy());
    (expected.as_deref() != Some(entries[0].path.as_str())).then(|| {
        format!(
            "component {}: the file in {} is named {}, expected {} (the file name of install_path)",
            c.name,
            c.artifact,
            entries[0].path,
            expected.unwrap_or_default()
        )
    })
}

/// A published release named by URL: `{server}/api/v1/{product}/releases/{version}` or
/// `{server}/api/v1/{product}/manifest`, with an optional `?channel=C`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseUrl {
    pub server: String,
    pub product: String,
    /// None: the channel's newest release.
    pub version: Option<String>,
    pub channel: Option<String>,
}

impl ReleaseUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let usage = || {
            Error::Usage(format!(
                "{url}: expected a release URL such as http://HOST:9000/api/v1/PRODUCT/releases/VERSION?channel=dev or http://HOST:9000/api/v1/PRODUCT/manifest?channel=dev"
            ))
        };
        let parsed = reqwest::Url::parse(url).map_err(|_| usage())?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(usage());
        }
        let channel = parsed
            .query_pairs()
            .find(|(k, _)| k == api::CHANNEL_PARAM)
            .map(|(_, v)| v.into_owned());
        let path = parsed.path().trim_end_matches('/');
        let (prefix, values) = [api::server::RELEASE, api::server::MANIFEST]
            .into_iter()
            .find_map(|route| match_route(route, path))
            .ok_or_else(usage)?;
        let value = |name: &str| {
            values
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let mut base = parsed.clone();
        base.set_query(None);
        base.set_path(prefix);
        Ok(Self {
            server: base.as_str().trim_end_matches('/').to_owned(),
            product: value("product").ok_or_else(usage)?,
            version: value("version"),
            channel,
        })
    }
}

/// Matches the end of a URL path against a route template (`/api/v1/{product}/manifest`):
/// the path before the route (the server's own prefix) and each placeholder's value,
/// percent-decoded.
fn match_route<'p>(template: &str, path: &'p str) -> Option<(&'p str, Vec<(String, String)>)> {
    let route: Vec<&str> = template.split('/').skip(1).collect();
    let segments: Vec<&str> = path.split('/').collect();
    // A path starts with '/': its first segment is empty and never part of the route.
    let start = segments
        .len()
        .checked_sub(route.len())
        .filter(|s| *s >= 1)?;
    let mut values = Vec::new();
    for (t, s) in route.iter().zip(&segments[start..]) {
        match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            Some(name) if !s.is_empty() => {
                let value = percent_encoding::percent_decode_str(s).decode_utf8().ok()?;
                values.push((name.to_owned(), value.into_owned()));
            }
            None if t == s => {}
            _ => return None,
        }
    }
    let prefix_len = segments[..start].iter().map(|s| s.len() + 1).sum::<usize>() - 1;
    Some((&path[..prefix_len], values))
}

/// Downloads a published release into a temporary directory and verifies it like a built
/// one; also checks that the manifest is for the product and channel asked for.
pub fn verify_url(client: &Client, url: &ReleaseUrl, keys: Option<&TrustedKeys>) -> Result<Report> {
    let tmp = tempfile::tempdir().map_err(Error::io(std::env::temp_dir()))?;
    let dir: PathBuf = tmp.path().to_owned();
    let channel = url
        .channel
        .clone()
        .unwrap_or_else(|| DEFAULT_CHANNEL.into());
    let version = match &url.version {
        Some(v) => v.clone(),
        None => newest_version(client, url, &channel)?,
    };
    download_release(client, url, &version, &channel, &dir)?;
    let target = ServerUrl::new(&url.server).release(&url.product, &version, &channel);
    let report = verify_dir(&dir, keys).map_err(|e| match e {
        Error::Verify { problems, .. } => Error::Verify {
            target: target.clone(),
            problems,
        },
        other => other,
    })?;
    let problems = served_as_asked(&report.manifest, url, &version, &channel);
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(Error::Verify { target, problems })
    }
}

/// The version of the channel's newest release.
fn newest_version(client: &Client, url: &ReleaseUrl, channel: &str) -> Result<String> {
    let (bytes, _sig) = client.latest_manifest(&url.product, channel)?;
    let m = Manifest::parse(&bytes, UnknownFields::Ignore).map_err(|e| Error::Verify {
        target: format!(
            "{}{}",
            url.server,
            api::fill(api::server::MANIFEST, &[("product", &url.product)])
        ),
        problems: e.problems().iter().map(|p| p.to_string()).collect(),
    })?;
    Ok(m.version.to_string())
}

/// Downloads the manifest, its signature and every artifact it lists into `dir`.
fn download_release(
    client: &Client,
    url: &ReleaseUrl,
    version: &str,
    channel: &str,
    dir: &Path,
) -> Result<()> {
    for name in [MANIFEST_FILE, SIGNATURE_FILE] {
        client.download(&url.product, version, name, channel, &dir.join(name))?;
    }
    // A manifest that does not parse is reported by verify_dir with every problem.
    let manifest_path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&manifest_path).map_err(Error::io(&manifest_path))?;
    if let Ok(m) = Manifest::parse(&bytes, UnknownFields::Ignore) {
        for a in m.artifacts() {
            let name = a.artifact.as_str();
            client.download(&url.product, version, name, channel, &dir.join(name))?;
        }
    }
    Ok(())
}

/// Whether the manifest is the release the URL asked for: product, channel and version.
fn served_as_asked(m: &Manifest, url: &ReleaseUrl, version: &str, channel: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if m.product.as_str() != url.product {
        problems.push(format!(
            "the manifest is for product {}, not {}",
            m.product, url.product
        ));
    }
    if m.channel.as_str() != channel {
        problems.push(format!(
            "the manifest is signed for channel {}, but was served on channel {channel}; agents refuse it",
            m.channel
        ));
    }
    if m.version.to_string() != version {
        problems.push(format!(
            "the manifest says version {}, but was served as {version}",
            m.version
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_url_forms() {
        let u = ReleaseUrl::parse(
            "http://127.0.0.1:9000/api/v1/quantix-demo/releases/1.0.0?channel=beta",
        )
        .expect("parses");
        assert_eq!(
            u,
            ReleaseUrl {
                server: "http://127.0.0.1:9000".into(),
                product: "quantix-demo".into(),
                version: Some("1.0.0".into()),
                channel: Some("beta".into()),
            }
        );
        let u = ReleaseUrl::parse("https://h/updates/api/v1/p/manifest").expect("parses");
        assert_eq!(u.server, "https://h/updates");
        assert_eq!(u.version, None);
        let u = ReleaseUrl::parse("http://h/api/v1/p/releases/1.0.0%2Bb1/").expect("parses");
        assert_eq!(u.server, "http://h");
        assert_eq!(u.version.as_deref(), Some("1.0.0+b1"));
        assert!(ReleaseUrl::parse("http://h/other/path").is_err());
        assert!(ReleaseUrl::parse("http://h/api/v1//manifest").is_err());
        assert!(ReleaseUrl::parse("http://h/api/v1/p/releases").is_err());
        assert!(ReleaseUrl::parse("ftp://h/api/v1/p/manifest").is_err());
    }
}
