//! `qx-publish verify`: checks a built or published release end to end — the signature, every
//! artifact's size and SHA-256, and every archive (decompressed whole, every tar entry walked).
//! All problems are collected and reported together.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use qx_core::{
    ComponentKind, Manifest, Sha256, TrustedKeys, UnknownFields, MANIFEST_FILE, SIGNATURE_FILE,
};

use crate::error::{Error, Result};
use crate::pack::{self, EntryKind};
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

/// Verifies a release directory. Without `keys` the signature cannot be checked, which is
/// reported as a problem.
pub fn verify_dir(dir: &Path, keys: Option<&TrustedKeys>) -> Result<Report> {
    let mut problems = Vec::new();
    let mut checked = Vec::new();
    let target = dir.display().to_string();
    let fail = |problems: Vec<String>| Error::Verify {
        target: target.clone(),
        problems,
    };

    let manifest_path = dir.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&manifest_path) {
        Ok(b) => b,
        Err(e) => return Err(fail(vec![format!("{}: {e}", manifest_path.display())])),
    };
    let sig_path = dir.join(SIGNATURE_FILE);
    let mut key_id = String::new();
    match std::fs::read_to_string(&sig_path) {
        Err(e) => problems.push(format!("{}: {e}", sig_path.display())),
        Ok(sig) => match keys {
            None => problems.push(
                "the signature was not checked: no public key given (--pubkey FILE or --key FILE)"
                    .into(),
            ),
            Some(keys) => match keys.verify(&bytes, &sig) {
                Ok(id) => {
                    checked.push(format!("signature: good, by key {id}"));
                    key_id = id;
                }
                Err(e) => problems.push(format!("{SIGNATURE_FILE}: {e}")),
            },
        },
    }
    let manifest = match Manifest::parse(&bytes, UnknownFields::Reject) {
        Ok(m) => m,
        Err(e) => {
            problems.extend(e.problems().iter().map(|p| format!("{MANIFEST_FILE}: {p}")));
            return Err(fail(problems));
        }
    };
    checked.push(format!(
        "manifest: {} {} on channel {} ({} update, {} component(s){})",
        manifest.product,
        manifest.version,
        manifest.channel,
        match manifest.update_type {
            qx_core::UpdateType::Component => "component",
            qx_core::UpdateType::Full => "full",
            qx_core::UpdateType::Mixed => "mixed",
        },
        manifest.components.len(),
        if manifest.full_image.is_some() {
            ", full image"
        } else {
            ""
        }
    ));
    if manifest.is_expired(Timestamp::now()) {
        problems.push(format!(
            "{MANIFEST_FILE}: expired at {}; agents refuse it (publish a new release)",
            manifest.expires
        ));
    }

    for a in manifest.artifacts() {
        let path = dir.join(a.artifact.as_str());
        match std::fs::File::open(&path).and_then(Sha256::of_reader) {
            Err(e) => problems.push(format!("artifact {}: {e}", a.artifact)),
            Ok((sha, size)) => {
                let mut ok = true;
                if size != a.size_bytes {
                    ok = false;
                    problems.push(format!(
                        "artifact {}: size {size} bytes differs from the manifest's {}",
                        a.artifact, a.size_bytes
                    ));
                }
                if sha != a.sha256 {
                    ok = false;
                    problems.push(format!(
                        "artifact {}: sha256 mismatch (manifest {}, file {})",
                        a.artifact,
                        a.sha256.short(),
                        sha.short()
                    ));
                }
                if ok {
                    checked.push(format!("artifact {}: {size} bytes, sha256 ok", a.artifact));
                }
            }
        }
    }

    for c in &manifest.components {
        let path = dir.join(c.artifact.as_str());
        if !path.exists() {
            continue; // already reported above
        }
        let entries = match pack::inspect(&path) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("component {}: {e}", c.name));
                continue;
            }
        };
        let before = problems.len();
        for e in &entries {
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
        }
        if c.kind == ComponentKind::File {
            if let Some(f) =
                crate::lint::file_archive(c.name.as_str(), c.artifact.as_str(), &entries)
            {
                problems.push(f.message);
            } else {
                let expected = c
                    .install_path
                    .as_path()
                    .file_name()
                    .map(|n| n.to_string_lossy());
                if expected.as_deref() != Some(entries[0].path.as_str()) {
                    problems.push(format!(
                        "component {}: the file in {} is named {}, expected {} (the file name of install_path)",
                        c.name,
                        c.artifact,
                        entries[0].path,
                        expected.unwrap_or_default()
                    ));
                }
            }
        }
        if problems.len() == before {
            checked.push(format!(
                "archive {}: {} entries, intact",
                c.artifact,
                entries.len()
            ));
        }
    }

    if problems.is_empty() {
        Ok(Report {
            manifest,
            key_id,
            checked,
        })
    } else {
        Err(fail(problems))
    }
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
            .find(|(k, _)| k == "channel")
            .map(|(_, v)| v.into_owned());
        let path = parsed.path().trim_end_matches('/').to_owned();
        let at = path.find("/api/v1/").ok_or_else(usage)?;
        let rest: Vec<&str> = path[at + "/api/v1/".len()..].split('/').collect();
        let (product, version) = match rest.as_slice() {
            [product, "manifest"] => (product.to_string(), None),
            [product, "releases", version] => (product.to_string(), Some(version.to_string())),
            _ => return Err(usage()),
        };
        let mut base = parsed.clone();
        base.set_query(None);
        base.set_path(&path[..at]);
        Ok(Self {
            server: base.as_str().trim_end_matches('/').to_owned(),
            product,
            version,
            channel,
        })
    }
}

/// Downloads a published release into a temporary directory and verifies it like a built
/// one; also checks that the manifest is for the product and channel asked for.
pub fn verify_url(client: &Client, url: &ReleaseUrl, keys: Option<&TrustedKeys>) -> Result<Report> {
    let tmp = tempfile::tempdir().map_err(Error::io(std::env::temp_dir()))?;
    let dir: PathBuf = tmp.path().to_owned();
    let channel = url.channel.clone().unwrap_or_else(|| "stable".into());
    let version = match &url.version {
        Some(v) => v.clone(),
        None => {
            let (bytes, _sig) = client.latest_manifest(&url.product, &channel)?;
            let m = Manifest::parse(&bytes, UnknownFields::Ignore).map_err(|e| Error::Verify {
                target: format!("{}/api/v1/{}/manifest", url.server, url.product),
                problems: e.problems().iter().map(|p| p.to_string()).collect(),
            })?;
            m.version.to_string()
        }
    };
    for name in [MANIFEST_FILE, SIGNATURE_FILE] {
        client.download(&url.product, &version, name, &channel, &dir.join(name))?;
    }
    // A manifest that does not parse is reported by verify_dir with every problem.
    let bytes =
        std::fs::read(dir.join(MANIFEST_FILE)).map_err(Error::io(dir.join(MANIFEST_FILE)))?;
    if let Ok(m) = Manifest::parse(&bytes, UnknownFields::Ignore) {
        for a in m.artifacts() {
            client.download(
                &url.product,
                &version,
                a.artifact.as_str(),
                &channel,
                &dir.join(a.artifact.as_str()),
            )?;
        }
    }
    let target = format!(
        "{}/api/v1/{}/releases/{version}?channel={channel}",
        url.server, url.product
    );
    let report = verify_dir(&dir, keys).map_err(|e| match e {
        Error::Verify { problems, .. } => Error::Verify {
            target: target.clone(),
            problems,
        },
        other => other,
    })?;
    let mut problems = Vec::new();
    if report.manifest.product.as_str() != url.product {
        problems.push(format!(
            "the manifest is for product {}, not {}",
            report.manifest.product, url.product
        ));
    }
    if report.manifest.channel.as_str() != channel {
        problems.push(format!(
            "the manifest is signed for channel {}, but was served on channel {channel}; agents refuse it",
            report.manifest.channel
        ));
    }
    if report.manifest.version.to_string() != version {
        problems.push(format!(
            "the manifest says version {}, but was served as {version}",
            report.manifest.version
        ));
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(Error::Verify { target, problems })
    }
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
        assert!(ReleaseUrl::parse("http://h/other/path").is_err());
        assert!(ReleaseUrl::parse("ftp://h/api/v1/p/manifest").is_err());
    }
}
