//! System tools for the slow tier: commands that must succeed, loop devices and mounts undone
//! on drop, and the lock that runs the tests using them one at a time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

pub use qx_testkit::cmd::run;

/// `sh -ec script`, which must succeed. Returns stdout.
pub fn sh(script: &str) -> String {
    run(Command::new("sh").arg("-ec").arg(script))
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

static MOUNTS: Mutex<()> = Mutex::new(());

/// Held by the tests that build file systems on loop devices, so that they run one at a time:
/// a process forked by a parallel test holds copies of this process's descriptors for an
/// instant, which can make an unmount fail with "target is busy".
pub fn exclusive_mounts() -> MutexGuard<'static, ()> {
    MOUNTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// A loop device, detached on drop.
pub struct LoopDev {
    pub dev: PathBuf,
}

impl LoopDev {
    /// Over the whole of `file`.
    pub fn new(file: &Path) -> LoopDev {
        LoopDev::attach(Command::new("losetup").args(["--find", "--show"]).arg(file))
    }

    /// Over `sectors` 512-byte sectors of `file` from `start_sector`.
    pub fn range(file: &Path, start_sector: u64, sectors: u64) -> LoopDev {
        LoopDev::attach(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(format!("--offset={}", start_sector * 512))
                .arg(format!("--sizelimit={}", sectors * 512))
                .arg(file),
        )
    }

    fn attach(losetup: &mut Command) -> LoopDev {
        LoopDev {
            dev: PathBuf::from(run(losetup).trim()),
        }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A mounted file system, unmounted on drop (before the loop device it may own goes).
pub struct Mount {
    pub dir: PathBuf,
    _dev: Option<LoopDev>,
}

impl Mount {
    /// Mounts `source` on `dir` (created) with `mount <args> <source> <dir>`.
    pub fn new(source: &Path, dir: &Path, args: &[&str]) -> Mount {
        fs::create_dir_all(dir).expect("mkdir mount point");
        run(Command::new("mount").args(args).arg(source).arg(dir));
        Mount {
            dir: dir.to_owned(),
            _dev: None,
        }
    }

    /// Mounts the file system of `dev` on `dir`; the device is detached after the unmount.
    pub fn owning(dev: LoopDev, dir: &Path, args: &[&str]) -> Mount {
        let mut m = Mount::new(&dev.dev, dir, args);
        m._dev = Some(dev);
        m
    }

    /// A tmpfs of `size` (e.g. `1m`) on `dir`.
    pub fn tmpfs(dir: &Path, size: &str) -> Mount {
        Mount::new(
            Path::new("tmpfs"),
            dir,
            &["-t", "tmpfs", "-o", &format!("size={size}")],
        )
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // A process forked by a parallel test may hold a copy of a descriptor for an instant
        // ("target is busy"): retry a bounded number of times, then detach lazily.
        let unmounted =
            crate::support::poll(Duration::from_secs(1), Duration::from_millis(50), || {
                Command::new("umount")
                    .arg(&self.dir)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            });
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
