//! Writing a full system image into the inactive slot: [`SlotInstall`] (the steps, in this
//! order) and [`install_image`] (all of them, from files on the disk).
//!
//! Order of steps, chosen so that a crash at any point leaves a bootable
//! machine and never a half-written slot that GRUB could pick:
//! 1. [`SlotInstall::begin`]: refuse if the booted slot is not a safe fallback (not marked
//!    good, or itself still pending verification), if the target is the booted slot, or if
//!    the target's device is mounted (but for a temporary mount of ours left by an
//!    interrupted install, which is undone); mount the target's file system (or use the
//!    configured directory);
//! 2. grubenv: target `X_LEFT=0`, `X_OK=0`, booted slot first (the target is
//!    now unbootable) — before the first byte is written into it;
//! 3. [`SlotInstall::sink`], for each file the update ships: an [`ImageSink`] writes it into
//!    a temporary file in the slot while its SHA-256 is computed once on the stream, then
//!    checks it, fsyncs it and reads it back from the disk (see [`crate::sink`]). The old
//!    image files stay until they are replaced, unless the slot needs their room;
//! 4. [`SlotInstall::commit`]: the kernel and initramfs the update does not ship are copied
//!    from the booted slot the same way (the update then runs with the current kernel); each
//!    verified file is renamed into place and the directory fsynced; unmount;
//! 5. grubenv: `ORDER` target first, target `X_LEFT=tries`, `X_OK=0`;
//! 6. state file: pending, from, to, version, time.
//!
//! A failure at any step leaves the target unbootable and the booted slot first in GRUB's
//! order; a temporary file whose content failed its check is removed, one cut short is kept
//! for the next attempt to continue.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use qx_core::fs::fsync_dir;
use qx_core::{Sha256, UpdateLog};
use serde::Serialize;

use crate::ab::{AbContext, AbLock};
use crate::config::AbConfig;
use crate::error::{BootError, Result};
use crate::grubenv::GrubEnv;
use crate::history;
use crate::sink::{Expected, ImageSink, VerifiedImage};
use crate::slot::Slot;
use crate::slotenv::{self, is_good, left_key, ok_key};
use crate::slotfs::SlotFs;
use crate::state::AbState;

pub use crate::sink::InstalledFile;

/// Name of the root file-system image in a slot.
pub const SYSTEM_FILE: &str = "system.squashfs";
/// Name of the kernel in a slot.
pub const KERNEL_FILE: &str = "vmlinuz";
/// Name of the initramfs in a slot.
pub const INITRAMFS_FILE: &str = "initramfs";

/// The files of a slot, in the order they are installed.
const SLOT_FILES: [&str; 3] = [SYSTEM_FILE, KERNEL_FILE, INITRAMFS_FILE];

/// A downloaded and verified file of the update, with its expected digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFile {
    pub path: PathBuf,
    pub sha256: Sha256,
}

/// What to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallRequest {
    /// Version of the image (recorded in the state file and history).
    pub version: String,
    /// The slot to write; `None` (the manifest's `"auto"`): the inactive one.
    pub target: Option<Slot>,
    pub system: ImageFile,
    /// `None`: copy the booted slot's kernel.
    pub kernel: Option<ImageFile>,
    /// `None`: copy the booted slot's initramfs.
    pub initramfs: Option<ImageFile>,
}

impl InstallRequest {
    /// The files the update ships, with their names in the slot.
    fn shipped(&self) -> impl Iterator<Item = (&'static str, &ImageFile)> {
        [
            Some((SYSTEM_FILE, &self.system)),
            self.kernel.as_ref().map(|k| (KERNEL_FILE, k)),
            self.initramfs.as_ref().map(|i| (INITRAMFS_FILE, i)),
        ]
        .into_iter()
        .flatten()
    }
}

/// What an install did.
#[derive(Clone, Debug, Serialize)]
pub struct InstallReport {
    pub from: Slot,
    pub to: Slot,
    pub version: String,
    /// The device or directory written.
    pub target: String,
    pub files: Vec<InstalledFile>,
    /// Boot attempts GRUB will give the new slot.
    pub tries: u8,
    pub state: AbState,
}

/// Write a new system image from files on the disk into the inactive slot and make GRUB
/// try it on the next boots: every step of [`SlotInstall`]. Every step is logged to the
/// update log of `ctx`.
pub fn install_image(ctx: &AbContext, req: &InstallRequest) -> Result<InstallReport> {
    for (name, f) in req.shipped() {
        let md = std::fs::metadata(&f.path).map_err(|e| BootError::io(&f.path, "stat", e))?;
        if !md.is_file() {
            return Err(BootError::io(
                &f.path,
                "read",
                std::io::Error::other(format!("{name}: not a regular file")),
            ));
        }
    }
    let mut slot = SlotInstall::begin(ctx, &req.version, req.target)?;
    let mut files = Vec::new();
    for (name, f) in req.shipped() {
        match write_file(&mut slot, name, f) {
            Ok(v) => files.push(v),
            Err(e) => {
                slot.abandon(&e.to_string());
                return Err(e);
            }
        }
    }
    slot.commit(files)
}

/// One file of `req` through a sink into the slot.
fn write_file(slot: &mut SlotInstall, name: &str, f: &ImageFile) -> Result<VerifiedImage> {
    let size = std::fs::metadata(&f.path)
        .map_err(|e| BootError::io(&f.path, "stat", e))?
        .len();
    let expected = Expected {
        sha256: f.sha256,
        size,
    };
    let mut sink = slot.sink(name, Some(expected))?.with_source(&f.path);
    let mut input = File::open(&f.path).map_err(|e| BootError::io(&f.path, "open", e))?;
    // a temporary file kept from an interrupted install goes on where it ended
    input
        .seek(SeekFrom::Start(sink.held()))
        .map_err(|e| BootError::io(&f.path, "seek", e))?;
    sink.copy_from(&mut input, &f.path)?;
    sink.sync()?.verify()
}

/// An install in progress: the target slot mounted and unbootable, the A/B lock held
/// (steps in the module documentation). Dropped without [`SlotInstall::commit`], the slot
/// stays unbootable and is unmounted.
pub struct SlotInstall {
    config: AbConfig,
    root: PathBuf,
    log_path: PathBuf,
    events: bool,
    version: String,
    booted: Slot,
    target: Slot,
    fs: Option<SlotFs>,
    target_desc: String,
    log: UpdateLog,
    _lock: AbLock,
}

impl SlotInstall {
    /// Steps 1 and 2: checks, lock, the target mounted and made unbootable.
    pub fn begin(ctx: &AbContext, version: &str, target: Option<Slot>) -> Result<SlotInstall> {
        ctx.config.validate()?;
        let booted = Slot::booted(ctx.root)?;
        let target = target.unwrap_or(booted.other());
        if target == booted {
            return Err(BootError::TargetIsBooted { slot: target });
        }
        let lock = crate::ab::lock(ctx.root)?;
        check_fallback(ctx, booted)?;
        let mut log = ctx.open_log();
        history::log(
            &mut log,
            &format!("install: version {version} into slot {target} (booted: {booted})"),
        );
        let fs = match open_target(ctx, target, &mut log) {
            Ok(fs) => fs,
            Err(e) => {
                history::log(
                    &mut log,
                    &format!(
                        "install: FAILED: {e}; slot {target} left unbootable, slot {booted} stays"
                    ),
                );
                return Err(e);
            }
        };
        Ok(SlotInstall {
            config: ctx.config.clone(),
            root: ctx.root.to_owned(),
            log_path: ctx.log_path.to_owned(),
            events: ctx.events,
            version: version.to_owned(),
            booted,
            target,
            target_desc: fs.describe(),
            fs: Some(fs),
            log,
            _lock: lock,
        })
    }

    /// The slot written.
    pub fn target(&self) -> Slot {
        self.target
    }

    /// The booted slot (the fallback).
    pub fn booted(&self) -> Slot {
        self.booted
    }

    /// Runs `f` with the booted slot's file system mounted read-only (its directory), then
    /// unmounts it: the base a new image is rebuilt from.
    pub fn with_booted<T>(&self, f: impl FnOnce(&Path) -> T) -> Result<T> {
        let booted = SlotFs::open(&self.config, &self.root, self.booted, true)?;
        let out = f(booted.dir());
        booted.close()?;
        Ok(out)
    }

    /// The directory of the target's file system.
    pub fn dir(&self) -> &Path {
        self.fs.as_ref().map(|f| f.dir()).unwrap_or(Path::new(""))
    }

    /// Step 3: a sink for slot file `name` (`system.squashfs`, `vmlinuz` or `initramfs`),
    /// continuing a temporary file of the same content left by an interrupted install. The
    /// slot's old image files are removed first when the rest of the file would not fit
    /// beside them.
    pub fn sink(&mut self, name: &str, expected: Option<Expected>) -> Result<ImageSink> {
        if !SLOT_FILES.contains(&name) {
            return Err(BootError::Config {
                field: "image file".into(),
                reason: format!("{name:?} is not one of {SLOT_FILES:?}"),
            });
        }
        let sink = ImageSink::open(self.dir(), name, expected)?;
        if let Some(e) = expected {
            self.make_room(e.size.saturating_sub(sink.held()))?;
        }
        Ok(sink)
    }

    /// Frees the old image files when `needed` bytes do not fit beside them.
    fn make_room(&mut self, needed: u64) -> Result<()> {
        let dir = self.dir().to_owned();
        if needed <= free_space(&dir)? {
            return Ok(());
        }
        for name in SLOT_FILES {
            remove_if_exists(&dir.join(name))?;
        }
        fsync_dir(&dir)?;
        let available = free_space(&dir)?;
        if needed > available {
            return Err(BootError::NoSpace {
                slot: self.target,
                path: dir,
                needed,
                available,
            });
        }
        history::log(
            &mut self.log,
            &format!(
                "install: old image files of slot {} removed to make room",
                self.target
            ),
        );
        Ok(())
    }

    /// Steps 4–6: the booted slot's kernel and initramfs where `files` has none, every file
    /// renamed into place, unmount, GRUB switched to the target, the pending state written.
    pub fn commit(mut self, files: Vec<VerifiedImage>) -> Result<InstallReport> {
        match self.finish(files) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.abandon(&e.to_string());
                Err(e)
            }
        }
    }

    fn finish(&mut self, mut files: Vec<VerifiedImage>) -> Result<InstallReport> {
        self.copy_from_booted(&mut files)?;
        files.sort_by_key(|f| SLOT_FILES.iter().position(|n| *n == f.file().name));
        let mut installed = Vec::new();
        for f in files {
            let done = f.install()?;
            history::log(
                &mut self.log,
                &format!(
                    "install: wrote {} into slot {} ({} bytes, sha256 {}, read back and verified)",
                    done.name, self.target, done.size, done.sha256
                ),
            );
            installed.push(done);
        }
        if let Some(fs) = self.fs.take() {
            fs.close()?;
        }
        let (booted, target, version) = (self.booted, self.target, self.version.clone());
        let ctx = AbContext::new(&self.config, &self.root, &self.log_path).with_events(self.events);
        let state = switch_to(&ctx, booted, target, &version, &mut self.log)?;
        Ok(InstallReport {
            from: booted,
            to: target,
            version,
            target: self.target_desc.clone(),
            files: installed,
            tries: self.config.tries,
            state,
        })
    }

    /// The kernel and initramfs `files` lacks, copied from the booted slot through sinks.
    fn copy_from_booted(&mut self, files: &mut Vec<VerifiedImage>) -> Result<()> {
        let missing: Vec<&str> = [KERNEL_FILE, INITRAMFS_FILE]
            .into_iter()
            .filter(|n| !files.iter().any(|f| f.file().name == *n))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let booted = SlotFs::open(&self.config, &self.root, self.booted, true)?;
        for name in missing {
            let src = booted.dir().join(name);
            let mut input = File::open(&src).map_err(|e| BootError::io(&src, "open", e))?;
            let size = input
                .metadata()
                .map_err(|e| BootError::io(&src, "stat", e))?
                .len();
            self.make_room(size)?;
            let mut sink = self.sink(name, None)?.with_source(&src);
            sink.copy_from(&mut input, &src)?;
            files.push(sink.sync()?.verify()?);
        }
        booted.close()
    }

    /// Ends the install without switching: logged, the slot stays unbootable, unmounted.
    pub fn abandon(mut self, reason: &str) {
        history::log(
            &mut self.log,
            &format!(
                "install: FAILED: {reason}; slot {} left unbootable, slot {} stays",
                self.target, self.booted
            ),
        );
        if let Some(fs) = self.fs.take() {
            if let Err(e) = fs.close() {
                history::log(&mut self.log, &format!("install: unmount: {e}"));
            }
        }
    }
}

/// Steps 1 (the mount) and 2 of [`SlotInstall::begin`].
fn open_target(ctx: &AbContext, target: Slot, log: &mut UpdateLog) -> Result<SlotFs> {
    // refused if its device is in use (mounting leaves the files in it as they are)
    let fs = SlotFs::open(ctx.config, ctx.root, target, false)?;
    GrubEnv::update(&ctx.grubenv_path(), |env| {
        slotenv::make_unbootable(env, target)
    })?;
    history::log(
        log,
        &format!(
            "install: slot {target} marked unbootable ({}=0, {}=0)",
            left_key(target),
            ok_key(target)
        ),
    );
    history::log(
        log,
        &format!(
            "install: slot {target} file system {} at {}",
            fs.describe(),
            fs.dir().display()
        ),
    );
    Ok(fs)
}

fn free_space(dir: &Path) -> Result<u64> {
    let vfs = rustix::fs::statvfs(dir).map_err(|e| BootError::io(dir, "statvfs", e.into()))?;
    Ok(vfs.f_bavail.saturating_mul(vfs.f_frsize))
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BootError::io(path, "remove", e)),
    }
}

/// Refuse when the booted slot would not be a safe fallback: still pending
/// verification itself, or not marked good.
fn check_fallback(ctx: &AbContext, booted: Slot) -> Result<()> {
    if let Some(s) = AbState::load(ctx.root)?.filter(|s| s.pending && s.to == booted) {
        return Err(BootError::BootedSlotPending {
            slot: booted,
            version: s.version,
        });
    }
    let envpath = ctx.grubenv_path();
    if !is_good(&GrubEnv::read(&envpath)?, booted) {
        return Err(BootError::BootedSlotNotGood {
            slot: booted,
            path: envpath,
        });
    }
    Ok(())
}

/// Steps 6 and 7: GRUB tries `target` next; the state file says the update is pending.
fn switch_to(
    ctx: &AbContext,
    booted: Slot,
    target: Slot,
    version: &str,
    log: &mut UpdateLog,
) -> Result<AbState> {
    let tries = ctx.config.tries;
    GrubEnv::update(&ctx.grubenv_path(), |env| {
        slotenv::try_next(env, target, tries)
    })?;
    history::log(
        log,
        &format!(
            "install: grubenv: ORDER=\"{target} {booted}\" {}={tries} {}=0",
            left_key(target),
            ok_key(target)
        ),
    );
    let state = AbState::pending(booted, target, version, Timestamp::now());
    state.store(ctx.root)?;
    history::log(
        log,
        &format!(
            "install: version {version} pending in slot {target}; reboot to try it ({tries} attempts)"
        ),
    );
    Ok(state)
}

/// SHA-256 of a file as stored on the disk: its clean pages are dropped from
/// the page cache first, so the read goes to the device.
pub fn hash_from_disk(path: &Path) -> Result<Sha256> {
    let f = File::open(path).map_err(|e| BootError::io(path, "open for read-back", e))?;
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)
        .map_err(|e| BootError::io(path, "drop page cache", e.into()))?;
    let (digest, _) = Sha256::of_reader(f).map_err(|e| BootError::io(path, "read back", e))?;
    Ok(digest)
}
