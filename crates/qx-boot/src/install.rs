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

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ab::{self, is_good, left_key, ok_key, set_first};
use crate::config::{AbConfig, SlotTarget};
use crate::error::{BootError, Result};
use crate::fsutil::{fsync_dir, under_root};
use crate::grubenv::GrubEnv;
use crate::history;
use crate::slot::Slot;
use crate::state::AbState;

/// Name of the root file-system image in a slot.
pub const SYSTEM_FILE: &str = "system.squashfs";
/// Name of the kernel in a slot.
pub const KERNEL_FILE: &str = "vmlinuz";
/// Name of the initramfs in a slot.
pub const INITRAMFS_FILE: &str = "initramfs";

const CHUNK: usize = 1 << 20;

/// A SHA-256 digest, parsed from 64 hexadecimal digits, printed in lowercase.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(data).into())
    }
}

impl FromStr for Sha256Digest {
    type Err = BootError;

    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut out).is_err() {
            return Err(BootError::InvalidSha256 {
                value: s.to_owned(),
            });
        }
        Ok(Sha256Digest(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A downloaded and verified file of the update, with its expected digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFile {
    pub path: PathBuf,
    pub sha256: Sha256Digest,
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

/// One file written into the slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstalledFile {
    pub name: String,
    pub size: u64,
    pub sha256: Sha256Digest,
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
/// the next boots (see the module documentation for the steps).
pub fn install_image(cfg: &AbConfig, root: &Path, req: &InstallRequest) -> Result<InstallReport> {
    cfg.validate()?;
    let booted = Slot::booted(root)?;
    let target = req.target.unwrap_or(booted.other());
    if target == booted {
        return Err(BootError::TargetIsBooted { slot: target });
    }
    let _lock = ab::lock(root)?;
    if let Some(s) = AbState::load(root)?.filter(|s| s.pending && s.to == booted) {
        return Err(BootError::BootedSlotPending {
            slot: booted,
            version: s.version,
        });
    }
    let envpath = ab::grubenv_path(cfg, root);
    let env = GrubEnv::read(&envpath)?;
    if !is_good(&env, booted) {
        return Err(BootError::BootedSlotNotGood {
            slot: booted,
            path: envpath,
        });
    }
    let sources = [
        Some((SYSTEM_FILE, &req.system)),
        req.kernel.as_ref().map(|k| (KERNEL_FILE, k)),
        req.initramfs.as_ref().map(|i| (INITRAMFS_FILE, i)),
    ];
    for (name, f) in sources.iter().flatten() {
        let md = std::fs::metadata(&f.path).map_err(|e| BootError::io(&f.path, "stat", e))?;
        if !md.is_file() {
            return Err(BootError::io(
                &f.path,
                "read",
                std::io::Error::other(format!("{name}: not a regular file")),
            ));
        }
    }
    history::log(
        root,
        &format!(
            "install: version {} into slot {target} (booted: {booted})",
            req.version
        ),
    )?;
    match write_slot(cfg, root, booted, target, req, &envpath) {
        Ok(report) => Ok(report),
        Err(e) => {
            // Best effort: the error itself is what the caller needs to see.
            let _ = history::log(
                root,
                &format!(
                    "install: FAILED: {e}; slot {target} left unbootable, slot {booted} stays"
                ),
            );
            Err(e)
        }
    }
}

fn write_slot(
    cfg: &AbConfig,
    root: &Path,
    booted: Slot,
    target: Slot,
    req: &InstallRequest,
    envpath: &Path,
) -> Result<InstallReport> {
    // 1. the target's file system; refused if its device is in use (mounting
    // leaves the files in it as they are)
    let mounted = SlotFs::open(cfg, root, target, false)?;
    let dir = mounted.dir().to_owned();
    let target_desc = mounted.describe();

    // 2. make the target unbootable before changing it
    GrubEnv::update(envpath, |env| {
        env.set(&left_key(target), "0")?;
        env.set(&ok_key(target), "0")?;
        set_first(env, booted)
    })?;
    history::log(
        root,
        &format!(
            "install: slot {target} marked unbootable ({}=0, {}=0)",
            left_key(target),
            ok_key(target)
        ),
    )?;

    // 3. old files out, room for the new ones
    history::log(
        root,
        &format!(
            "install: slot {target} file system {target_desc} at {}",
            dir.display()
        ),
    )?;

    // the booted slot, only if it has to provide kernel or initramfs
    let booted_fs = if req.kernel.is_none() || req.initramfs.is_none() {
        Some(SlotFs::open(cfg, root, booted, true)?)
    } else {
        None
    };

    let mut plan: Vec<(&str, PathBuf, Option<Sha256Digest>)> = vec![(
        SYSTEM_FILE,
        req.system.path.clone(),
        Some(req.system.sha256),
    )];
    for (name, given) in [(KERNEL_FILE, &req.kernel), (INITRAMFS_FILE, &req.initramfs)] {
        match (given, &booted_fs) {
            (Some(f), _) => plan.push((name, f.path.clone(), Some(f.sha256))),
            (None, Some(b)) => plan.push((name, b.dir().join(name), None)),
            (None, None) => {}
        }
    }

    for name in [SYSTEM_FILE, KERNEL_FILE, INITRAMFS_FILE] {
        remove_if_exists(&dir.join(name))?;
        remove_if_exists(&dir.join(temp_name(name)))?;
    }
    fsync_dir(&dir)?;
    let mut needed = 0u64;
    for (_, src, _) in &plan {
        needed += std::fs::metadata(src)
            .map_err(|e| BootError::io(src, "stat", e))?
            .len();
    }
    let vfs = rustix::fs::statvfs(&dir).map_err(|e| BootError::io(&dir, "statvfs", e.into()))?;
    let available = vfs.f_bavail.saturating_mul(vfs.f_frsize);
    if needed > available {
        return Err(BootError::NoSpace {
            slot: target,
            path: dir,
            needed,
            available,
        });
    }

    // 4. write, verify
    let mut files = Vec::new();
    for (name, src, expected) in plan {
        let f = install_file(&dir, name, &src, expected)?;
        history::log(
            root,
            &format!(
                "install: wrote {name} into slot {target} ({} bytes, sha256 {}, read back and verified)",
                f.size, f.sha256
            ),
        )?;
        files.push(f);
    }

    // 5. unmount (flushes the file system)
    if let Some(b) = booted_fs {
        b.close()?;
    }
    mounted.close()?;

    // 6. switch GRUB to the new slot
    GrubEnv::update(envpath, |env| {
        env.set(&left_key(target), &cfg.tries.to_string())?;
        env.set(&ok_key(target), "0")?;
        set_first(env, target)
    })?;
    history::log(
        root,
        &format!(
            "install: grubenv: ORDER=\"{target} {booted}\" {}={} {}=0",
            left_key(target),
            cfg.tries,
            ok_key(target)
        ),
    )?;

    // 7. pending state
    let state = AbState::pending(booted, target, &req.version, Timestamp::now());
    state.store(root)?;
    history::log(
        root,
        &format!(
            "install: version {} pending in slot {target}; reboot to try it ({} attempts)",
            req.version, cfg.tries
        ),
    )?;
    Ok(InstallReport {
        from: booted,
        to: target,
        version: req.version.clone(),
        target: target_desc,
        files,
        tries: cfg.tries,
        state,
    })
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

/// Copy `src` to `dir/name` through a temporary file, hashing on the way;
/// then read the result back from the disk and hash it again.
fn install_file(
    dir: &Path,
    name: &str,
    src: &Path,
    expected: Option<Sha256Digest>,
) -> Result<InstalledFile> {
    let tmp = dir.join(temp_name(name));
    let dest = dir.join(name);
    let mut input = File::open(src).map_err(|e| BootError::io(src, "open", e))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| BootError::io(&tmp, "create", e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BootError::io(src, "read", e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| BootError::io(&tmp, "write", e))?;
        size += n as u64;
    }
    let written = Sha256Digest(hasher.finalize().into());
    if let Some(exp) = expected {
        if exp != written {
            drop(out);
            remove_if_exists(&tmp)?;
            return Err(BootError::HashMismatch {
                path: src.to_owned(),
                expected: exp.to_string(),
                actual: written.to_string(),
            });
        }
    }
    out.sync_all()
        .map_err(|e| BootError::io(&tmp, "fsync", e))?;
    drop(out);
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
pub fn hash_from_disk(path: &Path) -> Result<Sha256Digest> {
    let mut f = File::open(path).map_err(|e| BootError::io(path, "open for read-back", e))?;
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)
        .map_err(|e| BootError::io(path, "drop page cache", e.into()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BootError::io(path, "read back", e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}

/// A mount from /proc/self/mountinfo.
struct MountEntry {
    dev: (u32, u32),
    fs_root: String,
    mountpoint: String,
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo (octal)
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts() -> Result<Vec<MountEntry>> {
    let path = Path::new("/proc/self/mountinfo");
    let text =
        std::fs::read_to_string(path).map_err(|e| BootError::io(path, "read mount table", e))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 {
            continue;
        }
        let Some((maj, min)) = f[2].split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (maj.parse(), min.parse()) else {
            continue;
        };
        out.push(MountEntry {
            dev: (maj, min),
            fs_root: unescape_mountinfo(f[3]),
            mountpoint: unescape_mountinfo(f[4]),
        });
    }
    Ok(out)
}

/// Resolve `LABEL=`/`UUID=` (through /dev/disk/by-*, then `findfs`) or take a
/// device path as is; it must be a block device.
fn resolve_device(slot: Slot, spec: &str) -> Result<(PathBuf, (u32, u32))> {
    let dev_err = |detail: String| BootError::Device {
        slot,
        device: spec.to_owned(),
        detail,
    };
    let path = if let Some((kind, value)) = spec
        .split_once('=')
        .filter(|(k, _)| matches!(*k, "LABEL" | "UUID" | "PARTLABEL" | "PARTUUID"))
    {
        let by = Path::new("/dev/disk")
            .join(format!("by-{}", kind.to_ascii_lowercase()))
            .join(value);
        if by.exists() {
            by.canonicalize()
                .map_err(|e| dev_err(format!("cannot resolve {}: {e}", by.display())))?
        } else {
            let out = Command::new("findfs")
                .arg(spec)
                .output()
                .map_err(|e| dev_err(format!("cannot run findfs: {e}")))?;
            let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !out.status.success() || dev.is_empty() {
                return Err(dev_err(format!(
                    "no device found (findfs: {})",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            PathBuf::from(dev)
        }
    } else {
        PathBuf::from(spec)
    };
    let md = std::fs::metadata(&path).map_err(|e| dev_err(format!("{}: {e}", path.display())))?;
    if !md.file_type().is_block_device() {
        return Err(dev_err(format!("{} is not a block device", path.display())));
    }
    let st = rustix::fs::stat(&path).map_err(|e| dev_err(format!("stat: {e}")))?;
    let rdev = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    Ok((path, rdev))
}

fn run(cmd: &mut Command) -> Result<()> {
    let desc = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| BootError::Command {
        command: desc.clone(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BootError::Command {
            command: desc,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// A slot's file system, available at a directory for as long as this value
/// lives: a configured directory, an existing mount of the device (only for
/// reading the booted slot), or a temporary mount that is undone on drop.
struct SlotFs {
    dir: PathBuf,
    desc: String,
    mount: Option<TempMount>,
}

/// How often, and how far apart, an unmount that finds the file system busy is retried.
const UMOUNT_ATTEMPTS: u32 = 50;
const UMOUNT_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

struct TempMount {
    dir: Option<tempfile::TempDir>,
    mounted: bool,
}

impl TempMount {
    fn unmount(&mut self) -> Result<()> {
        if self.mounted {
            if let Some(d) = &self.dir {
                // A child process forked elsewhere in this process holds the mount busy
                // until it execs (its inherited descriptors close then): retry a bounded
                // number of times before giving up.
                let mut last = Ok(());
                for _ in 0..UMOUNT_ATTEMPTS {
                    last = run(Command::new("umount").arg(d.path()));
                    if last.is_ok() {
                        break;
                    }
                    std::thread::sleep(UMOUNT_RETRY);
                }
                last?;
            }
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if self.mounted {
            if let Some(d) = &self.dir {
                if run(Command::new("umount").arg(d.path())).is_err() {
                    // Still busy: detach it, so it goes away when released;
                    // keep the directory in that case.
                    let _ = run(Command::new("umount").arg("-l").arg(d.path()));
                    if let Some(d) = self.dir.take() {
                        let _ = d.keep();
                    }
                }
            }
        }
    }
}

impl SlotFs {
    fn open(cfg: &AbConfig, root: &Path, slot: Slot, read_only: bool) -> Result<SlotFs> {
        match cfg.slot(slot) {
            SlotTarget::Path(p) => {
                let dir = under_root(root, p);
                if !dir.is_dir() {
                    return Err(BootError::Device {
                        slot,
                        device: p.display().to_string(),
                        detail: "not a directory".to_owned(),
                    });
                }
                Ok(SlotFs {
                    desc: dir.display().to_string(),
                    dir,
                    mount: None,
                })
            }
            SlotTarget::Device(spec) => {
                let (dev, rdev) = resolve_device(slot, spec)?;
                let desc = if dev.as_os_str() == spec.as_str() {
                    spec.clone()
                } else {
                    format!("{spec} ({})", dev.display())
                };
                let existing = mounts()?.into_iter().find(|m| m.dev == rdev);
                if let Some(m) = existing {
                    if !read_only {
                        return Err(BootError::DeviceInUse {
                            slot,
                            device: desc,
                            mountpoint: m.mountpoint,
                        });
                    }
                    if m.fs_root == "/" {
                        return Ok(SlotFs {
                            dir: PathBuf::from(&m.mountpoint),
                            desc,
                            mount: None,
                        });
                    }
                }
                let base = cfg.mount.dir.clone().unwrap_or_else(std::env::temp_dir);
                let tmp = tempfile::Builder::new()
                    .prefix(&format!("qx-slot-{slot}-"))
                    .tempdir_in(&base)
                    .map_err(|e| BootError::io(&base, "create mount point", e))?;
                let mut cmd = Command::new("mount");
                if let Some(t) = &cfg.mount.fstype {
                    cmd.arg("-t").arg(t);
                }
                let mut opts = cfg.mount.options.clone();
                if read_only {
                    opts.push("ro".to_owned());
                }
                if !opts.is_empty() {
                    cmd.arg("-o").arg(opts.join(","));
                }
                cmd.arg(&dev).arg(tmp.path());
                run(&mut cmd).map_err(|e| BootError::Device {
                    slot,
                    device: desc.clone(),
                    detail: format!("cannot mount: {e}"),
                })?;
                Ok(SlotFs {
                    dir: tmp.path().to_owned(),
                    desc,
                    mount: Some(TempMount {
                        dir: Some(tmp),
                        mounted: true,
                    }),
                })
            }
        }
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    fn describe(&self) -> String {
        self.desc.clone()
    }

    /// Unmount now, reporting failure (dropping only tries).
    fn close(mut self) -> Result<()> {
        if let Some(m) = &mut self.mount {
            m.unmount()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_parse_and_print() {
        let d = Sha256Digest::of(b"abc");
        let s = d.to_string();
        assert_eq!(
            s,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(s.parse::<Sha256Digest>().expect("parse"), d);
        assert_eq!(s.to_uppercase().parse::<Sha256Digest>().expect("parse"), d);
        for bad in ["", "abc", &s[1..], &format!("{s}0"), &s.replace('b', "g")] {
            assert!(bad.parse::<Sha256Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\"), "/x\\");
    }
}
