//! Writing a full system image into the inactive slot.
//!
//! Order of steps, chosen so that a crash at any point leaves a bootable
//! machine and never a half-written slot that GRUB could pick:
//! 1. refuse if the booted slot is not a safe fallback (not marked good, or
//!    itself still pending verification), if the target is the booted slot,
//!    or if the target's device is mounted; mount the target's file system
//!    (or use the configured directory);
//! 2. grubenv: target `X_LEFT=0`, `X_OK=0`, booted slot first (the target is
//!    now unbootable);
//! 3. delete the old image files, check free space;
//! 4. for each file: copy to a temporary name while hashing, compare with the
//!    expected SHA-256, fsync, rename into place, fsync the directory, then read
//!    it back from the disk (page cache dropped) and compare again;
//! 5. unmount;
//! 6. grubenv: `ORDER` target first, target `X_LEFT=tries`, `X_OK=0`;
//! 7. state file: pending, from, to, version, time.
//!
//! A kernel or initramfs that the update does not ship is copied from the
//! booted slot (the update then runs with the current kernel).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use qx_core::fs::fsync_dir;
use qx_core::{Sha256, Sha256Hasher, UpdateLog};
use serde::Serialize;

use crate::ab::AbContext;
use crate::error::{BootError, Result};
use crate::grubenv::GrubEnv;
use crate::history;
use crate::slot::Slot;
use crate::slotenv::{self, is_good, left_key, ok_key};
use crate::slotfs::SlotFs;
use crate::state::AbState;

/// Name of the root file-system image in a slot.
pub const SYSTEM_FILE: &str = "system.squashfs";
/// Name of the kernel in a slot.
pub const KERNEL_FILE: &str = "vmlinuz";
/// Name of the initramfs in a slot.
pub const INITRAMFS_FILE: &str = "initramfs";

/// Read size while copying an image file into a slot.
const CHUNK: usize = 1 << 20;

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

/// One file written into the slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstalledFile {
    pub name: String,
    pub size: u64,
    pub sha256: Sha256,
    /// Where it came from: the update file, or the booted slot.
    pub source: PathBuf,
}

/// What [`install_image`] did.
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

/// Write a new system image into the inactive slot and make GRUB try it on
/// the next boots (see the module documentation for the steps). Every step is
/// logged to the update log of `ctx`.
pub fn install_image(ctx: &AbContext, req: &InstallRequest) -> Result<InstallReport> {
    ctx.config.validate()?;
    let booted = Slot::booted(ctx.root)?;
    let target = req.target.unwrap_or(booted.other());
    if target == booted {
        return Err(BootError::TargetIsBooted { slot: target });
    }
    let _lock = crate::ab::lock(ctx.root)?;
    check_fallback(ctx, booted)?;
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
    let mut log = ctx.open_log();
    history::log(
        &mut log,
        &format!(
            "install: version {} into slot {target} (booted: {booted})",
            req.version
        ),
    );
    let result = write_slot(ctx, booted, target, req, &mut log);
    if let Err(e) = &result {
        history::log(
            &mut log,
            &format!("install: FAILED: {e}; slot {target} left unbootable, slot {booted} stays"),
        );
    }
    result
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

/// Steps 1–7 of the module documentation; the lock is held.
fn write_slot(
    ctx: &AbContext,
    booted: Slot,
    target: Slot,
    req: &InstallRequest,
    log: &mut UpdateLog,
) -> Result<InstallReport> {
    // 1. the target's file system; refused if its device is in use (mounting
    // leaves the files in it as they are)
    let mounted = SlotFs::open(ctx.config, ctx.root, target, false)?;
    let dir = mounted.dir().to_owned();
    let target_desc = mounted.describe();

    // 2. make the target unbootable before changing it
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

    // 3. old files out, room for the new ones
    history::log(
        log,
        &format!(
            "install: slot {target} file system {target_desc} at {}",
            dir.display()
        ),
    );
    // the booted slot, only if it has to provide kernel or initramfs
    let booted_fs = if req.kernel.is_none() || req.initramfs.is_none() {
        Some(SlotFs::open(ctx.config, ctx.root, booted, true)?)
    } else {
        None
    };
    let plan = plan_files(req, booted_fs.as_ref());
    clear_slot(&dir, target, &plan)?;

    // 4. write, verify
    let files = write_files(&dir, target, plan, log)?;

    // 5. unmount (flushes the file system)
    if let Some(b) = booted_fs {
        b.close()?;
    }
    mounted.close()?;

    // 6. switch GRUB to the new slot; 7. pending state
    let state = switch_to(ctx, booted, target, &req.version, log)?;
    Ok(InstallReport {
        from: booted,
        to: target,
        version: req.version.clone(),
        target: target_desc,
        files,
        tries: ctx.config.tries,
        state,
    })
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

/// One file to write into the slot: its name there, where it comes from, and
/// its expected digest (`None` for a file copied from the booted slot).
struct PlannedFile {
    name: &'static str,
    source: PathBuf,
    expected: Option<Sha256>,
}

/// The files to write: what the update ships, plus the booted slot's kernel
/// and initramfs where the update ships none.
fn plan_files(req: &InstallRequest, booted_fs: Option<&SlotFs>) -> Vec<PlannedFile> {
    let shipped = |name, f: &ImageFile| PlannedFile {
        name,
        source: f.path.clone(),
        expected: Some(f.sha256),
    };
    let mut plan = vec![shipped(SYSTEM_FILE, &req.system)];
    for (name, given) in [(KERNEL_FILE, &req.kernel), (INITRAMFS_FILE, &req.initramfs)] {
        match (given, booted_fs) {
            (Some(f), _) => plan.push(shipped(name, f)),
            (None, Some(b)) => plan.push(PlannedFile {
                name,
                source: b.dir().join(name),
                expected: None,
            }),
            (None, None) => {}
        }
    }
    plan
}

/// Remove the slot's old image files (and temporary files of an interrupted
/// install), then check that the new ones fit.
fn clear_slot(dir: &Path, target: Slot, plan: &[PlannedFile]) -> Result<()> {
    for name in [SYSTEM_FILE, KERNEL_FILE, INITRAMFS_FILE] {
        remove_if_exists(&dir.join(name))?;
        remove_if_exists(&dir.join(temp_name(name)))?;
    }
    fsync_dir(dir)?;
    let mut needed = 0u64;
    for f in plan {
        needed += std::fs::metadata(&f.source)
            .map_err(|e| BootError::io(&f.source, "stat", e))?
            .len();
    }
    let vfs = rustix::fs::statvfs(dir).map_err(|e| BootError::io(dir, "statvfs", e.into()))?;
    let available = vfs.f_bavail.saturating_mul(vfs.f_frsize);
    if needed > available {
        return Err(BootError::NoSpace {
            slot: target,
            path: dir.to_owned(),
            needed,
            available,
        });
    }
    Ok(())
}

/// Write and verify each planned file, one update-log line each.
fn write_files(
    dir: &Path,
    target: Slot,
    plan: Vec<PlannedFile>,
    log: &mut UpdateLog,
) -> Result<Vec<InstalledFile>> {
    let mut files = Vec::new();
    for f in plan {
        let done = install_file(dir, f.name, &f.source, f.expected)?;
        history::log(
            log,
            &format!(
                "install: wrote {} into slot {target} ({} bytes, sha256 {}, read back and verified)",
                f.name, done.size, done.sha256
            ),
        );
        files.push(done);
    }
    Ok(files)
}

fn temp_name(name: &str) -> String {
    format!(".{name}.qx-new")
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BootError::io(path, "remove", e)),
    }
}

/// A writer that hashes what it writes, and remembers whether writing failed
/// (so that a copy error can be told apart from a read error).
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256Hasher,
    failed: bool,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.inner.write(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Copy `src` to `dir/name` through a temporary file, hashing on the way;
/// then read the result back from the disk and hash it again.
fn install_file(
    dir: &Path,
    name: &str,
    src: &Path,
    expected: Option<Sha256>,
) -> Result<InstalledFile> {
    let tmp = dir.join(temp_name(name));
    let dest = dir.join(name);
    let input = File::open(src).map_err(|e| BootError::io(src, "open", e))?;
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| BootError::io(&tmp, "create", e))?;
    let mut w = HashingWriter {
        inner: out,
        hasher: Sha256Hasher::new(),
        failed: false,
    };
    std::io::copy(&mut BufReader::with_capacity(CHUNK, input), &mut w).map_err(|e| {
        if w.failed {
            BootError::io(&tmp, "write", e)
        } else {
            BootError::io(src, "read", e)
        }
    })?;
    let (written, size) = w.hasher.finish();
    if let Some(exp) = expected.filter(|exp| *exp != written) {
        drop(w.inner);
        remove_if_exists(&tmp)?;
        return Err(BootError::HashMismatch {
            path: src.to_owned(),
            expected: exp.to_string(),
            actual: written.to_string(),
        });
    }
    w.inner
        .sync_all()
        .map_err(|e| BootError::io(&tmp, "fsync", e))?;
    drop(w.inner);
    std::fs::rename(&tmp, &dest).map_err(|e| BootError::io(&dest, "rename into place", e))?;
    fsync_dir(dir)?;
    let back = hash_from_disk(&dest)?;
    if back != written {
        return Err(BootError::HashMismatch {
            path: dest,
            expected: written.to_string(),
            actual: back.to_string(),
        });
    }
    Ok(InstalledFile {
        name: name.to_owned(),
        size,
        sha256: written,
        source: src.to_owned(),
    })
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
