//! Full-image (A/B) apply: a release whose `update_type` is `full` or `mixed` carries a system
//! image (`full_image`: `system.squashfs`, optionally a kernel and an initramfs) that is written
//! into the inactive slot through [`qx_boot::SlotInstall`] (docs/spec.md §5).
//!
//! Order of an apply that carries an image:
//! 1. check (as for components); the image is planned: the slot to write, and whether it is
//!    needed at all (see [`system_change`]);
//! 2. [`stage`]: the inactive slot is mounted and made unbootable, then every image file is
//!    downloaded straight into a temporary file in it ([`qx_boot::ImageSink`]: SHA-256 and size
//!    verified on the stream, resumed from what an interrupted apply left in the slot, the same
//!    progress as components: `UpdateState::Downloading`), fsynced and read back from the disk
//!    — BEFORE any component changes, so a bad image refuses the whole apply with no component
//!    touched and the booted slot and GRUB's order as they were (a refused file is removed; a
//!    cut download is kept for the next apply);
//! 3. `mixed`: the component transaction runs as for a `component` release (journaled,
//!    crash-safe); its failure ends the apply, the image's temporary files are removed and the
//!    slot stays unbootable;
//! 4. [`install`]: the kernel and initramfs the release does not ship are copied from the booted
//!    slot, the verified files are renamed into place; grubenv gets `ORDER="<new> <old>"` and
//!    `<NEW>_LEFT=<tries>`; `/quantix/ab-update-state.json` is written pending; a history entry
//!    of kind `full` and update-log lines are appended;
//! 5. the reboot happens only with `updates.auto_reboot` or `qx-update apply --reboot`
//!    (`updates.reboot_command`, default `/sbin/reboot`). The new slot is committed by
//!    `qx-update ab verify` after that boot, or rolled back by GRUB.
//!
//! `--component NAME` selects components only: the image is not installed then (it is not a
//! component; run `qx-update apply` without `--component` to install it).

use std::path::Path;

use crate::{imagechunks, imagedelta};
use qx_boot::install::{InstalledFile, INITRAMFS_FILE, KERNEL_FILE, SYSTEM_FILE};
use qx_boot::{AbContext, AbState, Expected, ImageSink, Slot, SlotInstall, VerifiedImage};
use qx_core::fleet::EventType;
use qx_core::fs::remove_any;
use qx_core::manifest::{Delta, ImageChunks};
use qx_core::status::{HistoryEntry, Outcome, UpdateState};
use qx_core::{ArtifactRef, FullImage, Manifest, Sha256, TargetSlot, UpdateLog, Version};
use serde::Serialize;

use crate::check::download_options;
use crate::check::{ComponentChange, Verified};
use crate::download::{DownloadSink, Downloader};
use crate::transaction::journal::pause_point;
use crate::{Agent, AgentError, ApplyOptions, ApplyReport, CheckReport};

/// The name under which the system image appears in check reports, history and status.
pub const SYSTEM: &str = "system";

/// What an apply did with the system image (part of [`ApplyReport`]).
#[derive(Debug, Clone, Serialize)]
pub struct SystemInstall {
    pub version: String,
    /// The booted slot (the fallback).
    pub from: Slot,
    /// The slot written, first in GRUB's order now.
    pub to: Slot,
    /// The device or directory written.
    pub target: String,
    pub files: Vec<InstalledFile>,
    /// Boot attempts GRUB gives the new slot.
    pub tries: u8,
    /// The manifest's `requires_reboot`.
    pub requires_reboot: bool,
    /// True when the reboot command was run.
    pub rebooted: bool,
    /// Rebuilt from what the booted slot holds instead of downloaded whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuilt: Option<ImageRebuild>,
}

impl SystemInstall {
    /// One human line for the CLI.
    pub fn summary(&self) -> String {
        let next = if self.rebooted {
            "rebooting now".to_owned()
        } else {
            "reboot to start it (`qx-update apply --reboot` or `updates.auto_reboot` reboots by itself)"
                .to_owned()
        };
        let rebuilt = self.rebuilt.map_or(String::new(), |c| match c.method {
            RebuildMethod::Chunks => format!(
                " It was rebuilt from slot {}'s chunks: {} of its {} bytes downloaded, {} reused.",
                self.from, c.downloaded_bytes, c.image_bytes, c.reused_bytes
            ),
            RebuildMethod::Delta => format!(
                " It was rebuilt from slot {}'s image and a delta: {} of its {} bytes downloaded ({}% saved).",
                self.from,
                c.downloaded_bytes,
                c.image_bytes,
                100 - c.downloaded_bytes * 100 / c.image_bytes.max(1)
            ),
        });
        format!(
            "System image {} written into slot {} ({}); GRUB boots it next ({} attempts, slot {} stays the fallback); {next}.{rebuilt}",
            self.version, self.to, self.target, self.tries, self.from
        )
    }
}

/// The image to install in this apply.
#[derive(Debug, Clone)]
pub struct Plan {
    pub version: String,
    pub image: FullImage,
    pub target: Option<Slot>,
    /// The system version the booted slot runs, when known.
    pub from_version: Option<String>,
    /// The release carries out a signed revert (set by the apply from its check).
    pub reverted: bool,
    /// Who started the apply (for the history).
    pub started_by: Option<qx_core::history::StartedBy>,
}

/// The image in the inactive slot, verified in its temporary files, not yet in place.
pub struct Staged {
    slot: SlotInstall,
    files: Vec<VerifiedImage>,
    /// The system image was rebuilt from what the booted slot holds: what that took.
    rebuilt: Option<ImageRebuild>,
}

/// How the system image was rebuilt from what the booted slot holds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RebuildMethod {
    /// From the booted image and a delta ([`crate::imagedelta`]).
    Delta,
    /// From the booted image's chunks and ranges of the pack ([`crate::imagechunks`]).
    Chunks,
}

/// What rebuilding the system image from what the booted slot holds took (part of
/// [`SystemInstall`]).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ImageRebuild {
    pub method: RebuildMethod,
    /// Bytes downloaded: the patch, or the ranges of the pack.
    pub downloaded_bytes: u64,
    /// Bytes of the image read from the booted slot as they are (chunks only; a delta mixes
    /// the base into every segment).
    pub reused_bytes: u64,
    /// The image's size: what a whole download would have cost.
    pub image_bytes: u64,
}

impl Staged {
    /// The apply failed before the image was put in place: its temporary files are removed,
    /// the slot stays unbootable (logged with `reason`).
    pub fn abandon(self, reason: &str) {
        drop(self.files);
        self.slot.abandon(reason);
    }
}

fn target_slot(t: TargetSlot) -> Option<Slot> {
    match t {
        TargetSlot::Auto => None,
        TargetSlot::A => Some(Slot::A),
        TargetSlot::B => Some(Slot::B),
    }
}

fn boot_err(version: &str) -> impl FnOnce(qx_boot::BootError) -> AgentError + '_ {
    move |source| AgentError::SystemImage {
        version: version.to_owned(),
        source,
    }
}

/// The system image as a check shows it, and whether an apply would write it.
///
/// The installed system version is the one of the last full-image update when the booted slot
/// is the one it was written to (`/quantix/ab-update-state.json`: `to` = booted slot, and
/// committed with outcome success or still in its trial boot); otherwise it is unknown and the
/// image is offered. An image already written and
/// waiting for its reboot or its verification is not written again; a version that was rolled
/// back is not retried (a newer release is needed).
pub fn system_change(
    agent: &Agent,
    manifest: &Manifest,
    opts: &ApplyOptions,
    downgrade_ok: bool,
) -> Result<Option<(ComponentChange, bool)>, AgentError> {
    let Some(image) = &manifest.full_image else {
        return Ok(None);
    };
    if opts.components.as_ref().is_some_and(|c| !c.is_empty()) {
        return Ok(None);
    }
    let offered = manifest.version.to_string();
    let root = agent.root();
    let booted = match qx_boot::Slot::booted(root) {
        Ok(b) => b,
        Err(e) => {
            // The apply reports this error from install_image; a check only shows it.
            return Ok(Some((
                ComponentChange {
                    name: SYSTEM.into(),
                    installed: None,
                    offered,
                    action: format!("install into the inactive slot (booted slot unknown: {e})"),
                },
                true,
            )));
        }
    };
    let target = target_slot(image.target_slot).unwrap_or(booted.other());
    let state = AbState::load(root).map_err(boot_err(&offered))?;
    let installed = state
        .as_ref()
        .filter(|s| s.to == booted && (s.pending || s.outcome == Some(Outcome::Success)))
        .map(|s| s.version.clone());
    let change = |installed: Option<String>, action: String| ComponentChange {
        name: SYSTEM.into(),
        installed,
        offered: offered.clone(),
        action,
    };
    if let Some(action) = state
        .as_ref()
        .and_then(|s| already_written(s, booted, &offered))
    {
        return Ok(Some((change(installed, action), false)));
    }
    let install = format!("install into slot {target}");
    let Some(inst) = installed else {
        return Ok(Some((change(None, install), true)));
    };
    let (Ok(iv), Ok(ov)) = (Version::parse(&inst), Version::parse(&offered)) else {
        return Ok(Some((change(Some(inst), install), true)));
    };
    if ov == iv {
        return Ok(Some((change(Some(inst), "unchanged".into()), false)));
    }
    if ov < iv {
        if !downgrade_ok && opts.allow_downgrade.as_deref() != Some(offered.as_str()) {
            return Err(AgentError::Downgrade {
                component: SYSTEM.into(),
                installed: inst,
                offered,
            });
        }
        return Ok(Some((
            change(Some(inst), format!("downgrade into slot {target}")),
            true,
        )));
    }
    Ok(Some((change(Some(inst), install), true)))
}

/// The action to show when the offered image was written before and must not be written
/// again: waiting for its reboot or its verification, or rolled back (not retried).
fn already_written(s: &AbState, booted: Slot, offered: &str) -> Option<String> {
    if s.version != offered {
        return None;
    }
    if s.pending && s.to != booted {
        return Some(format!(
            "written into slot {}; waiting for the reboot",
            s.to
        ));
    }
    if s.pending {
        return Some(format!(
            "running in slot {}; waiting for `qx-update ab verify`",
            s.to
        ));
    }
    if s.outcome == Some(Outcome::RolledBack) {
        return Some(format!(
            "rolled back from slot {} earlier; not retried (publish a newer release)",
            s.to
        ));
    }
    None
}

/// Adds the system image to a check report (the hook of [`Agent::check_with`]).
pub fn extend_check(
    agent: &Agent,
    report: &mut CheckReport,
    verified: &Verified,
    opts: &ApplyOptions,
) -> Result<(), AgentError> {
    let manifest = &verified.manifest;
    if let Some((change, install)) = system_change(agent, manifest, opts, verified.downgrade_ok)? {
        report.changes.push(change);
        report.available |= install;
    }
    Ok(())
}

/// The image this apply installs, if any.
pub fn plan(
    agent: &Agent,
    verified: &Verified,
    opts: &ApplyOptions,
    log: &mut UpdateLog,
) -> Result<Option<Plan>, AgentError> {
    let manifest = &verified.manifest;
    let Some(image) = &manifest.full_image else {
        return Ok(None);
    };
    if opts.components.as_ref().is_some_and(|c| !c.is_empty()) {
        log.line("system image: not installed (--component selects components only)");
        return Ok(None);
    }
    let Some((change, install)) = system_change(agent, manifest, opts, verified.downgrade_ok)?
    else {
        return Ok(None);
    };
    log.line(&format!(
        "  system image {} artifact={} sha256={} size={} kernel={} initramfs={} target_slot={:?}: {}",
        manifest.version,
        image.artifact,
        image.sha256,
        image.size_bytes,
        image.kernel.as_ref().map(|k| k.artifact.as_str()).unwrap_or("(booted slot's)"),
        image
            .initramfs
            .as_ref()
            .map(|k| k.artifact.as_str())
            .unwrap_or("(booted slot's)"),
        image.target_slot,
        change.action
    ));
    if !install {
        return Ok(None);
    }
    Ok(Some(Plan {
        version: manifest.version.to_string(),
        image: image.clone(),
        target: target_slot(image.target_slot),
        from_version: change.installed,
        reverted: verified.reverted,
        started_by: opts.started_by.clone(),
    }))
}

/// The slot files of the image, with what each must be.
fn image_files(img: &FullImage) -> Vec<(&'static str, ArtifactRef)> {
    std::iter::once((SYSTEM_FILE, img.artifact_ref()))
        .chain(img.kernel.iter().map(|k| (KERNEL_FILE, k.clone())))
        .chain(img.initramfs.iter().map(|i| (INITRAMFS_FILE, i.clone())))
        .collect()
}

/// An [`ImageSink`] as the downloader's sink.
struct SlotSink(ImageSink);

fn io_of(e: qx_boot::BootError) -> std::io::Error {
    match e {
        qx_boot::BootError::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    }
}

impl DownloadSink for SlotSink {
    fn path(&self) -> &Path {
        self.0.temp_path()
    }
    fn held(&self) -> u64 {
        self.0.held()
    }
    fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0.write(data).map_err(io_of)
    }
    fn restart(&mut self) -> std::io::Result<()> {
        self.0.restart().map_err(io_of)
    }
    fn digest(&mut self) -> std::io::Result<(Sha256, u64)> {
        self.0.digest().map_err(io_of)
    }
}

/// Steps 2 of the module documentation: the inactive slot made unbootable, then every file
/// of the image downloaded straight into it, verified and read back (not yet in place).
pub fn stage(agent: &Agent, plan: &Plan, log: &mut UpdateLog) -> Result<Staged, AgentError> {
    let config = agent.config();
    let ctx = AbContext::new(&config.ab, agent.root(), &config.log_path)
        .with_events(agent.fleet().reporting());
    log.line(&format!(
        "system image {}: writing into slot {}",
        plan.version,
        plan.target
            .map(|s| s.to_string())
            .unwrap_or_else(|| "(inactive)".into())
    ));
    log.sync();
    let mut slot = SlotInstall::begin(&ctx, &plan.version, plan.target)
        .map_err(|e| failed(agent, plan, log, e))?;
    let mut files = Vec::new();
    let mut rebuilt = None;
    for (name, a) in image_files(&plan.image) {
        match stream_file(agent, plan, &mut slot, name, &a, log) {
            Ok((f, used)) => {
                files.push(f);
                rebuilt = rebuilt.or(used);
            }
            Err(e) => {
                slot.abandon(&e.to_string());
                return Err(e);
            }
        }
    }
    Ok(Staged {
        slot,
        files,
        rebuilt,
    })
}

/// A system image error: logged and recorded in the history as a failed full update.
fn failed(agent: &Agent, plan: &Plan, log: &mut UpdateLog, e: qx_boot::BootError) -> AgentError {
    let err = AgentError::SystemImage {
        version: plan.version.clone(),
        source: e,
    };
    log.line(&format!("system image {}: FAILED: {err}", plan.version));
    log.sync();
    if let Err(e) =
        agent
            .status_handle()
            .record(history_entry(plan, Outcome::Failed, err.to_string()))
    {
        log.line(&format!("history: {e}"));
    }
    err
}

/// One file of the image: rebuilt from the booted slot's image and a delta, or from its chunks
/// (the system image, when the release has them), or downloaded into its sink in the slot (resumed from what an interrupted
/// apply left there), fsynced, read back.
fn stream_file(
    agent: &Agent,
    plan: &Plan,
    slot: &mut SlotInstall,
    name: &str,
    a: &ArtifactRef,
    log: &mut UpdateLog,
) -> Result<(VerifiedImage, Option<ImageRebuild>), AgentError> {
    let config = agent.config();
    let url = artifact_url(agent, plan, a);
    let shown = crate::download::redact_credentials(&url);
    let expected = Expected {
        sha256: a.sha256,
        size: a.size_bytes,
    };
    let sink = slot
        .sink(name, Some(expected))
        .map_err(|e| failed(agent, plan, log, e))?
        .with_source(&shown);
    if sink.held() > 0 {
        log.line(&format!(
            "{name}: {} bytes already in slot {} from an interrupted apply; resuming",
            sink.held(),
            slot.target()
        ));
    }
    let downloader = Downloader::with_tls(download_options(config), &config.tls)?;
    let mut sink = SlotSink(sink);
    let mut rebuilt = None;
    if name == SYSTEM_FILE && !plan.image.deltas.is_empty() {
        rebuilt = rebuild_from_delta(agent, plan, slot, &mut sink, &downloader, log)?;
    }
    if let (None, Some(c), true) = (rebuilt, &plan.image.chunks, name == SYSTEM_FILE) {
        rebuilt = rebuild_from_chunks(agent, plan, slot, c, &mut sink, &downloader, log)?;
    }
    if rebuilt.is_none() {
        log.line(&format!("download {shown} into slot {}", slot.target()));
        let status = agent.status_handle();
        downloader.fetch_into(&url, a, &mut sink, &mut |p| status.set_state(p.state()))?;
        log.line(&format!(
            "downloaded {name} into slot {} ({} bytes, sha256 verified)",
            slot.target(),
            a.size_bytes
        ));
    }
    let synced = sink.0.sync().map_err(|e| failed(agent, plan, log, e))?;
    log.line(&format!("{name}: fsynced in slot {}", slot.target()));
    pause_point("image-synced", synced.temp_path());
    let verified = synced.verify().map_err(|e| failed(agent, plan, log, e))?;
    log.line(&format!(
        "{name}: read back from the disk of slot {} and verified (peak memory of the agent so far: {} KiB)",
        slot.target(),
        peak_memory_kib().map_or_else(|| "unknown".to_owned(), |k| k.to_string())
    ));
    Ok((verified, rebuilt))
}

/// This process's peak resident memory (`VmHWM`), in KiB: small hosts need it bounded
/// whatever the image's size.
fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The server's URL of release artifact `a` of the plan's version.
fn artifact_url(agent: &Agent, plan: &Plan, a: &ArtifactRef) -> String {
    let config = agent.config();
    let server = config.server();
    server.artifact(&config.product, &plan.version, &a.artifact, &config.channel)
}

/// The system image rebuilt into `sink` from the booted slot's image and a delta
/// ([`crate::imagedelta`]); `None` when none applies, or (logged, the sink started again) when
/// the chosen one failed: the chunks or the whole image come next.
fn rebuild_from_delta(
    agent: &Agent,
    plan: &Plan,
    slot: &SlotInstall,
    sink: &mut SlotSink,
    downloader: &Downloader,
    log: &mut UpdateLog,
) -> Result<Option<ImageRebuild>, AgentError> {
    let paths = agent.paths();
    let refused = crate::transaction::delta::refused(paths);
    let staging = paths.staging.join(&plan.version);
    let attempt = slot
        .with_booted(|dir| delta_into(agent, plan, dir, &refused, &staging, sink, downloader, log))
        .unwrap_or_else(|e| Err((None, imagedelta::Failure::Transient(e.to_string()))));
    let (delta, why) = match attempt {
        Ok(None) => return Ok(None),
        Ok(Some(delta)) => {
            let _ = remove_any(&staging.join(delta.artifact.as_str()));
            let image_bytes = plan.image.size_bytes;
            log.line(&format!(
                "{SYSTEM_FILE}: rebuilt into slot {} from slot {}'s image and {} ({} bytes downloaded instead of {image_bytes})",
                slot.target(),
                slot.booted(),
                delta.artifact,
                delta.size_bytes,
            ));
            return Ok(Some(ImageRebuild {
                method: RebuildMethod::Delta,
                downloaded_bytes: delta.size_bytes,
                reused_bytes: 0,
                image_bytes,
            }));
        }
        Err((delta, why)) => (delta, why),
    };
    match why {
        imagedelta::Failure::Transient(why) => {
            log.line(&format!("{SYSTEM_FILE}: not rebuilt from a delta ({why})"))
        }
        imagedelta::Failure::Bad(why) => {
            log.line(&format!(
                "{SYSTEM_FILE}: delta {} refused: {why}; it will not be used again on this host",
                delta.as_ref().map_or("(none)", |d| d.artifact.as_str())
            ));
            if let Some(d) = delta {
                let _ = remove_any(&staging.join(d.artifact.as_str()));
                crate::transaction::delta::refuse(paths, d.sha256, refused);
            }
        }
    }
    sink.0.restart().map_err(boot_err(&plan.version))?;
    Ok(None)
}

/// Steps 1–3 of [`crate::imagedelta`] with the booted slot mounted at `dir`: the delta used,
/// or the one that failed (if one was chosen) and why.
#[allow(clippy::too_many_arguments)]
fn delta_into<'p>(
    agent: &Agent,
    plan: &'p Plan,
    dir: &Path,
    refused: &[Sha256],
    staging: &Path,
    sink: &mut SlotSink,
    downloader: &Downloader,
    log: &mut UpdateLog,
) -> Result<Option<&'p Delta>, (Option<&'p Delta>, imagedelta::Failure)> {
    let image = &plan.image;
    let base = dir.join(SYSTEM_FILE);
    let Some(delta) = imagedelta::choose(&image.deltas, &base, refused) else {
        return Ok(None);
    };
    log.line(&format!(
        "{SYSTEM_FILE}: rebuilding from the booted image (in {}) and {} ({}, {} bytes instead of {})",
        dir.display(),
        delta.artifact,
        delta.algorithm.as_str(),
        delta.size_bytes,
        image.size_bytes
    ));
    let failed = |why| (Some(delta), why);
    let status = agent.status_handle();
    let url = artifact_url(agent, plan, &delta.artifact_ref());
    let patch = imagedelta::download(downloader, &url, staging, delta, &mut |p| {
        status.set_state(p.state())
    })
    .map_err(failed)?;
    let skip = sink.0.held();
    let mut write = |b: &[u8]| sink.0.write(b).map_err(|e| e.to_string());
    imagedelta::rebuild(delta, &base, &patch, skip, image.size_bytes, &mut write)
        .map_err(failed)?;
    let (sha256, size) = sink
        .0
        .digest()
        .map_err(|e| failed(imagedelta::Failure::Transient(e.to_string())))?;
    if sha256 != image.sha256 || size != image.size_bytes {
        return Err(failed(imagedelta::Failure::Bad(
            "the rebuilt image is not the signed one".into(),
        )));
    }
    Ok(Some(delta))
}

/// The system image rebuilt into `sink` from the booted slot's chunks and the release's pack
/// ([`crate::imagechunks`]); `None` (logged, the sink started again) when that failed, and the
/// image is then downloaded whole.
fn rebuild_from_chunks(
    agent: &Agent,
    plan: &Plan,
    slot: &SlotInstall,
    chunks: &ImageChunks,
    sink: &mut SlotSink,
    downloader: &Downloader,
    log: &mut UpdateLog,
) -> Result<Option<ImageRebuild>, AgentError> {
    log.line(&format!(
        "{SYSTEM_FILE}: rebuilding from slot {}'s chunks and {}",
        slot.booted(),
        chunks.pack.artifact
    ));
    let attempt = rebuild_into(agent, plan, slot, chunks, sink, downloader);
    match attempt {
        Ok((image_bytes, done)) => {
            let used = ImageRebuild {
                method: RebuildMethod::Chunks,
                downloaded_bytes: done.fetched,
                reused_bytes: done.reused,
                image_bytes,
            };
            log.line(&format!(
                "{SYSTEM_FILE}: rebuilt into slot {}: {} bytes downloaded, {} reused from slot {}",
                slot.target(),
                used.downloaded_bytes,
                used.reused_bytes,
                slot.booted()
            ));
            Ok(Some(used))
        }
        Err(why) => {
            log.line(&format!(
                "{SYSTEM_FILE}: not rebuilt from chunks ({why}); downloading it whole"
            ));
            sink.0.restart().map_err(boot_err(&plan.version))?;
            Ok(None)
        }
    }
}

/// The steps of [`crate::imagechunks`] against this release's index and pack, with the
/// booted slot mounted read-only: the image's size and what the rebuild took.
fn rebuild_into(
    agent: &Agent,
    plan: &Plan,
    slot: &SlotInstall,
    chunks: &ImageChunks,
    sink: &mut SlotSink,
    downloader: &Downloader,
) -> Result<(u64, imagechunks::Rebuilt), String> {
    let url = |a: &ArtifactRef| artifact_url(agent, plan, a);
    let index = imagechunks::fetch_index(downloader, &url(&chunks.index), &chunks.index)?;
    let skip = sink.0.held();
    let pack_url = url(&chunks.pack);
    let booted = |dir: &Path| {
        let mut write = |b: &[u8]| sink.0.write(b).map_err(|e| e.to_string());
        let base = dir.join(SYSTEM_FILE);
        imagechunks::rebuild(
            downloader,
            &pack_url,
            &chunks.pack,
            &index,
            &base,
            skip,
            &mut write,
        )
    };
    let done = slot.with_booted(booted).map_err(|e| e.to_string())??;
    Ok((index.image_size, done))
}

/// The history entry of an image install that ended with `outcome`.
fn history_entry(plan: &Plan, outcome: Outcome, reason: String) -> HistoryEntry {
    HistoryEntry {
        time: jiff::Timestamp::now(),
        kind: qx_core::UpdateKind::Full,
        version: plan.version.clone(),
        from_version: plan.from_version.clone(),
        components: vec![SYSTEM.into()],
        outcome,
        reason: Some(reason),
        started_by: plan.started_by.clone(),
    }
}

/// Puts the staged image in place, switches GRUB to its slot and records it; `report` is the
/// apply's report so far (the components of a `mixed` release, or none).
pub fn install(
    agent: &Agent,
    plan: Plan,
    staged: Staged,
    log: &mut UpdateLog,
    mut report: ApplyReport,
) -> Result<ApplyReport, AgentError> {
    let status = agent.status_handle();
    status.set_state(UpdateState::Installing {
        component: SYSTEM.into(),
    });
    let config = agent.config();
    let ctx = AbContext::new(&config.ab, agent.root(), &config.log_path)
        .with_events(agent.fleet().reporting());
    let r = staged
        .slot
        .commit(staged.files)
        .map_err(|e| failed(agent, &plan, log, e))?;
    let reason = format!(
        "written into slot {} ({}); pending: GRUB boots it next ({} attempts), `qx-update ab verify` commits it, slot {} is the fallback",
        r.to, r.target, r.tries, r.from
    );
    status.record(history_entry(&plan, Outcome::Success, reason.clone()))?;
    log.line(&format!("system image {}: {reason}", plan.version));
    mark_revert(&ctx, &plan, log);
    // Installed, not confirmed: `ab verify` confirms it after the new slot booted.
    let mut installed = crate::fleet::event(EventType::Installed, Some(&plan.version));
    installed.component = Some(SYSTEM.into());
    installed.message = Some(reason.clone());
    agent.fleet().record(installed);
    log.sync();
    report.version = plan.version.clone();
    report.components.push(SYSTEM.into());
    report.system = Some(SystemInstall {
        version: r.version,
        from: r.from,
        to: r.to,
        target: r.target,
        files: r.files,
        tries: r.tries,
        requires_reboot: plan.image.requires_reboot,
        rebooted: false,
        rebuilt: staged.rebuilt,
    });
    Ok(report)
}

/// A signed revert written into the inactive slot: the A/B state names the version the host
/// leaves, so that the new slot's confirmation (`ab verify`) also reports `reverted`.
fn mark_revert(ctx: &AbContext, plan: &Plan, log: &mut UpdateLog) {
    let (true, Some(left)) = (plan.reverted, &plan.from_version) else {
        return;
    };
    if let Err(e) = qx_boot::ab::mark_revert(ctx, &plan.version, left) {
        log.line(&format!(
            "system image {}: cannot record the revert from {left}: {e}",
            plan.version
        ));
    }
}

/// Runs the reboot command when a system image was written and a reboot is asked for
/// (`--reboot`) or configured (`updates.auto_reboot`).
pub fn maybe_reboot(
    agent: &Agent,
    report: &mut ApplyReport,
    asked: bool,
) -> Result<(), AgentError> {
    let config = agent.config();
    let Some(system) = &mut report.system else {
        return Ok(());
    };
    let mut log = UpdateLog::open(&config.log_path);
    if !(asked || config.auto_reboot) {
        log.line(&format!(
            "system image {}: no reboot (neither --reboot nor updates.auto_reboot); slot {} boots at the next reboot",
            system.version, system.to
        ));
        return Ok(());
    }
    let argv = &config.reboot_command;
    log.line(&format!(
        "system image {}: rebooting into slot {}: {argv:?} ({})",
        system.version,
        system.to,
        if asked {
            "--reboot"
        } else {
            "updates.auto_reboot"
        }
    ));
    log.sync();
    let reboot_err = |reason: String| AgentError::Reboot {
        command: argv.join(" "),
        reason,
    };
    if argv.first().is_none_or(|p| p.trim().is_empty()) {
        return Err(reboot_err("updates.reboot_command is empty".into()));
    }
    let mut reboot = crate::fleet::event(EventType::Reboot, Some(&system.version));
    reboot.component = Some(SYSTEM.into());
    agent.fleet().record(reboot);
    // Delivered before the host goes down (what is not delivered goes after the boot).
    agent.fleet().send_events(agent);
    let ran = crate::transaction::service::run(
        argv,
        agent.root(),
        None,
        Some(std::time::Duration::from_secs(120)),
    );
    log.block(
        "stdout",
        crate::untrusted::printable_output(&ran.stdout).as_bytes(),
    );
    log.block(
        "stderr",
        crate::untrusted::printable_output(&ran.stderr).as_bytes(),
    );
    if !ran.ok {
        let reason = format!(
            "{}: {}",
            ran.status,
            String::from_utf8_lossy(&ran.stderr).trim()
        );
        log.line(&format!("reboot FAILED: {reason}"));
        log.sync();
        return Err(reboot_err(reason));
    }
    system.rebooted = true;
    Ok(())
}
