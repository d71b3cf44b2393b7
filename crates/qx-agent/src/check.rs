//! Check: fetch the manifest of our product and channel with its signature, verify it (SPEC
//! §2) and work out what an apply would change. Never touches the host except
//! `/data/updates/seen.json` (replay protection), which only moves forward and only after a
//! manifest passed its signature check.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use qx_core::api::SIGNATURE_HEADER;
use qx_core::{Component, Manifest, SignatureError, UnknownFields, Version};
use serde::Serialize;

use crate::download::{DownloadError, DownloadOptions, Downloader};
use crate::{Agent, AgentError, ApplyOptions, Config};

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub product: String,
    pub channel: String,
    pub version: String,
    pub release_date: String,
    pub release_notes: String,
    pub update_type: String,
    /// True when an apply would change something.
    pub available: bool,
    pub changes: Vec<ComponentChange>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentChange {
    pub name: String,
    pub installed: Option<String>,
    pub offered: String,
    /// `"update"` | `"install"` | `"unchanged"` | `"downgrade"` (only with --allow-downgrade).
    pub action: String,
}

/// A manifest that passed every check, with the components an apply would install.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    pub bytes: Vec<u8>,
    pub signature: String,
    pub key_id: String,
    pub url: String,
    /// Components to install (selected and not already at the offered version).
    pub to_apply: Vec<Component>,
}

pub fn download_options(config: &Config) -> DownloadOptions {
    DownloadOptions {
        max_attempts: config.download.max_attempts,
        initial_backoff: config.download.initial_backoff,
        max_backoff: config.download.max_backoff,
        bandwidth_limit: config.bandwidth_limit,
        connect_timeout: config.download.connect_timeout,
        stall_timeout: config.download.stall_timeout,
    }
}

pub fn manifest_url(config: &Config) -> String {
    config.server().manifest(&config.product, &config.channel)
}

/// Fetches and verifies the manifest; see the module documentation.
pub fn check(agent: &Agent, opts: &ApplyOptions) -> Result<(CheckReport, Verified), AgentError> {
    let config = agent.config();
    let url = manifest_url(config);
    let downloader = Downloader::new(download_options(config))?;
    let (bytes, headers) = downloader.get_bytes(&url).map_err(|e| match e {
        DownloadError::NotFound { url } => AgentError::NoRelease {
            product: config.product.to_string(),
            channel: config.channel.to_string(),
            url,
        },
        other => AgentError::Fetch {
            url: url.clone(),
            message: other.to_string(),
        },
    })?;
    let sig_b64 = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if sig_b64.is_empty() {
        return Err(AgentError::SignatureMissing { url });
    }
    let sig_raw = base64::engine::general_purpose::STANDARD
        .decode(sig_b64)
        .map_err(|e| AgentError::SignatureInvalid {
            reason: format!("header X-Qx-Signature is not base64: {e}"),
        })?;
    let signature = String::from_utf8(sig_raw).map_err(|_| AgentError::SignatureInvalid {
        reason: "the signature is not a text .minisig file".into(),
    })?;
    verify_manifest(agent, &url, bytes, signature, opts)
}

/// Every check of SPEC §2 on manifest bytes and their signature, in order: signature, manifest
/// rules, expiry, product, channel, replay (then seen.json moves forward), downgrade,
/// min_version, requires.
pub fn verify_manifest(
    agent: &Agent,
    url: &str,
    bytes: Vec<u8>,
    signature: String,
    opts: &ApplyOptions,
) -> Result<(CheckReport, Verified), AgentError> {
    let config = agent.config();
    let key_id = config
        .trusted_keys
        .verify(&bytes, &signature)
        .map_err(|e| match e {
            SignatureError::Missing => AgentError::SignatureMissing {
                url: url.to_owned(),
            },
            SignatureError::UntrustedKey { key_id, trusted } => {
                AgentError::UntrustedKey { key_id, trusted }
            }
            other => AgentError::SignatureInvalid {
                reason: other.to_string(),
            },
        })?;
    let manifest = Manifest::parse(&bytes, UnknownFields::Ignore)?;
    if manifest.is_expired(jiff::Timestamp::now()) {
        return Err(AgentError::Expired {
            version: manifest.version.to_string(),
            expires: manifest.expires.to_string(),
        });
    }
    if manifest.product != config.product {
        return Err(AgentError::WrongProduct {
            expected: config.product.to_string(),
            got: manifest.product.to_string(),
        });
    }
    if manifest.channel != config.channel {
        return Err(AgentError::WrongChannel {
            expected: config.channel.to_string(),
            got: manifest.channel.to_string(),
        });
    }
    let downgrade_ok = match &opts.allow_downgrade {
        None => false,
        Some(asked) => {
            let same = Version::parse(asked.trim()).is_ok_and(|v| v == manifest.version);
            if !same {
                return Err(AgentError::DowngradeMismatch {
                    asked: asked.clone(),
                    offered: manifest.version.to_string(),
                });
            }
            true
        }
    };

    // Replay protection: never go back below the newest manifest seen on this channel.
    let seen_path = &agent.paths().seen;
    let mut seen = read_seen(seen_path);
    if let Some(prev) = seen.get(config.channel.as_str()) {
        if let Ok(prev_v) = Version::parse(prev) {
            if manifest.version < prev_v && !downgrade_ok {
                return Err(AgentError::Replay {
                    channel: config.channel.to_string(),
                    seen: prev.clone(),
                    offered: manifest.version.to_string(),
                });
            }
            if manifest.version <= prev_v {
                // Nothing to record.
                return plan(
                    agent,
                    manifest,
                    bytes,
                    signature,
                    key_id,
                    url,
                    opts,
                    downgrade_ok,
                );
            }
        }
    }
    seen.insert(config.channel.to_string(), manifest.version.to_string());
    write_seen(seen_path, &seen)?;
    plan(
        agent,
        manifest,
        bytes,
        signature,
        key_id,
        url,
        opts,
        downgrade_ok,
    )
}

#[allow(clippy::too_many_arguments)]
fn plan(
    agent: &Agent,
    manifest: Manifest,
    bytes: Vec<u8>,
    signature: String,
    key_id: String,
    url: &str,
    opts: &ApplyOptions,
    downgrade_ok: bool,
) -> Result<(CheckReport, Verified), AgentError> {
    let installed = agent.paths().installed_versions();
    let parsed = |name: &str| installed.get(name).and_then(|v| Version::parse(v).ok());

    // Which components the operator asked for.
    let selected: Vec<&Component> = match &opts.components {
        None => manifest.components.iter().collect(),
        Some(names) if names.is_empty() => manifest.components.iter().collect(),
        Some(names) => {
            let mut out = Vec::new();
            for n in names {
                let c = manifest
                    .component(n)
                    .ok_or_else(|| AgentError::UnknownComponent {
                        name: n.clone(),
                        version: manifest.version.to_string(),
                        available: manifest
                            .components
                            .iter()
                            .map(|c| c.name.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                if !out.iter().any(|o: &&Component| o.name == c.name) {
                    out.push(c);
                }
            }
            out
        }
    };

    // The host's version: the newest release any of its components is at.
    if let Some(min) = &manifest.min_version {
        let host = installed
            .values()
            .filter_map(|v| Version::parse(v).ok())
            .max();
        if let Some(host) = host {
            if &host < min && !downgrade_ok {
                return Err(AgentError::BelowMinVersion {
                    installed: host.to_string(),
                    min_version: min.to_string(),
                    version: manifest.version.to_string(),
                });
            }
        }
    }

    let mut changes = Vec::new();
    let mut to_apply = Vec::new();
    for c in &selected {
        let inst = installed.get(c.name.as_str()).cloned();
        let action = match parsed(c.name.as_str()) {
            None if inst.is_none() => "install",
            None => "update",
            Some(v) if v < c.version => "update",
            Some(v) if v == c.version => "unchanged",
            Some(v) => {
                if !downgrade_ok {
                    return Err(AgentError::Downgrade {
                        component: c.name.to_string(),
                        installed: v.to_string(),
                        offered: c.version.to_string(),
                    });
                }
                "downgrade"
            }
        };
        if action != "unchanged" {
            to_apply.push((*c).clone());
        }
        changes.push(ComponentChange {
            name: c.name.to_string(),
            installed: inst,
            offered: c.version.to_string(),
            action: action.into(),
        });
    }

    // Prerequisites: met by this apply or by what is installed.
    for c in &to_apply {
        for r in &c.requires {
            let in_apply = to_apply
                .iter()
                .any(|o| o.name == r.name && o.version >= r.min_version);
            let inst = parsed(r.name.as_str());
            let installed_ok = inst.as_ref().is_some_and(|v| v >= &r.min_version);
            if !in_apply && !installed_ok {
                return Err(AgentError::UnmetRequirement {
                    component: c.name.to_string(),
                    requires: r.name.to_string(),
                    min_version: r.min_version.to_string(),
                    installed: installed.get(r.name.as_str()).cloned(),
                });
            }
        }
    }

    let report = CheckReport {
        product: manifest.product.to_string(),
        channel: manifest.channel.to_string(),
        version: manifest.version.to_string(),
        release_date: manifest.release_date.to_string(),
        release_notes: manifest.release_notes.clone(),
        update_type: serde_json::to_value(manifest.update_type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        available: !to_apply.is_empty(),
        changes,
    };
    Ok((
        report,
        Verified {
            manifest,
            bytes,
            signature,
            key_id,
            url: url.to_owned(),
            to_apply,
        },
    ))
}

fn read_seen(path: &Path) -> BTreeMap<String, String> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_seen(path: &Path, seen: &BTreeMap<String, String>) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec_pretty(seen).map_err(|e| AgentError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    Ok(qx_core::fs::write_atomic(path, &bytes)?)
}

impl CheckReport {
    /// Human text: one line per component, installed → offered.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} {} on channel {} (released {})\n",
            self.product, self.version, self.channel, self.release_date
        );
        for c in &self.changes {
            out.push_str(&format!(
                "  {:<24} {:>12} -> {:<12} {}\n",
                c.name,
                c.installed.as_deref().unwrap_or("(none)"),
                c.offered,
                c.action
            ));
        }
        if !self.release_notes.is_empty() {
            out.push_str(&format!("\nRelease notes:\n{}\n", self.release_notes));
        }
        out.push_str(if self.available {
            "\nAn update is available: run `qx-update apply`.\n"
        } else {
            "\nThis host is up to date.\n"
        });
        out
    }
}
