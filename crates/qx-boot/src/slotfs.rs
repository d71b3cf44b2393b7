//! A slot's file system, made available at a directory for as long as a
//! [`SlotFs`] lives: a configured directory, an existing mount of the slot's
//! device (only for reading the booted slot), or a temporary mount that is
//! undone on drop. A device that is mounted anywhere is never written.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use qx_core::fs::under_root;

use crate::config::{AbConfig, SlotTarget};
use crate::error::{BootError, Result};
use crate::slot::Slot;

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
pub(crate) struct SlotFs {
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
    /// The file system of `slot`; `read_only` for the booted slot, whose
    /// device may already be mounted (that mount is used then).
    pub(crate) fn open(cfg: &AbConfig, root: &Path, slot: Slot, read_only: bool) -> Result<SlotFs> {
        match cfg.slot(slot) {
            SlotTarget::Path(p) => Self::at_path(root, slot, p),
            SlotTarget::Device(spec) => Self::on_device(cfg, slot, spec, read_only),
        }
    }

    /// A configured directory (under the root) that already is the slot's file system.
    fn at_path(root: &Path, slot: Slot, p: &Path) -> Result<SlotFs> {
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

    /// A device: refused if it is mounted and we are to write it; an existing
    /// mount of its whole file system is used for reading; otherwise mounted
    /// at a temporary directory. A temporary mount of ours that a killed install left (of the
    /// target, or of the booted slot it read from) is undone first: every opening happens
    /// under the A/B lock, so no install of ours still uses it.
    fn on_device(cfg: &AbConfig, slot: Slot, spec: &str, read_only: bool) -> Result<SlotFs> {
        let (dev, rdev) = resolve_device(slot, spec)?;
        let desc = if dev.as_os_str() == spec {
            spec.to_owned()
        } else {
            format!("{spec} ({})", dev.display())
        };
        unmount_leftover(cfg, slot, rdev)?;
        if let Some(m) = mounts()?.into_iter().find(|m| m.dev == rdev) {
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
        let tmp = mount_temporarily(cfg, slot, &dev, &desc, read_only)?;
        Ok(SlotFs {
            dir: tmp.path().to_owned(),
            desc,
            mount: Some(TempMount {
                dir: Some(tmp),
                mounted: true,
            }),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn describe(&self) -> String {
        self.desc.clone()
    }

    /// Unmount now, reporting failure (dropping only tries).
    pub(crate) fn close(mut self) -> Result<()> {
        if let Some(m) = &mut self.mount {
            m.unmount()?;
        }
        Ok(())
    }
}

/// Where temporary mounts of `slot` are made: `<mount dir>/qx-slot-<slot>-*`.
fn mount_base(cfg: &AbConfig) -> PathBuf {
    cfg.mount.dir.clone().unwrap_or_else(std::env::temp_dir)
}

/// Undoes a temporary mount of `slot`'s device that an interrupted install of ours left
/// (killed while it held the slot mounted): the caller holds the A/B lock, so no install
/// uses it. Any other mount of the device is left alone (and refused by the caller).
fn unmount_leftover(cfg: &AbConfig, slot: Slot, rdev: (u32, u32)) -> Result<()> {
    let base = mount_base(cfg);
    let prefix = format!("qx-slot-{slot}-");
    for m in mounts()?.into_iter().filter(|m| m.dev == rdev) {
        let at = Path::new(&m.mountpoint);
        let ours = at.parent() == Some(base.as_path())
            && at
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix));
        if ours && m.fs_root == "/" {
            run(Command::new("umount").arg(at))?;
            let _ = std::fs::remove_dir(at);
        }
    }
    Ok(())
}

/// Mount `dev` (read-only if asked) at a new temporary directory under the
/// configured mount directory.
fn mount_temporarily(
    cfg: &AbConfig,
    slot: Slot,
    dev: &Path,
    desc: &str,
    read_only: bool,
) -> Result<tempfile::TempDir> {
    let base = mount_base(cfg);
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
    cmd.arg(dev).arg(tmp.path());
    run(&mut cmd).map_err(|e| BootError::Device {
        slot,
        device: desc.to_owned(),
        detail: format!("cannot mount: {e}"),
    })?;
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\"), "/x\\");
    }
}
