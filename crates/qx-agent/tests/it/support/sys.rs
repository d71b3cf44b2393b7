//! System tools for the slow tier: commands that must succeed, Debian packages installed or
//! downloaded, throwaway roots (busybox, a program with its shared libraries), loop devices
//! and mounts undone on drop, and the lock that runs the tests using them one at a time.

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

/// Installs the packages of `wanted` that are missing (as root), or fails with the list;
/// `who` names the test in the message.
pub fn ensure_packages(wanted: &[&str], who: &str) {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return;
    }
    assert!(
        is_root(),
        "{who} needs these Debian packages: {}; run it as root (it installs them) or install \
         them with apt-get",
        missing.join(" ")
    );
    eprintln!("installing Debian packages: {}", missing.join(" "));
    apt_update();
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"));
}

fn apt_update() {
    run(Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive"));
}

/// The `.deb` of package `pkg`, downloaded with `apt-get download` into `cache` unless one is
/// there already (a second run downloads nothing). The package lists are updated once when
/// the first try fails (a new machine has none, or old ones).
pub fn apt_download(pkg: &str, cache: &Path) -> PathBuf {
    fs::create_dir_all(cache).expect("create the package cache");
    let find = || {
        fs::read_dir(cache).ok().and_then(|rd| {
            rd.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
            })
        })
    };
    if let Some(p) = find() {
        return p;
    }
    let download = || {
        Command::new("apt-get")
            .args(["download", "-qq", "-o", "APT::Sandbox::User=root", pkg])
            .current_dir(cache)
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !download() {
        apt_update();
        run(Command::new("apt-get")
            .args(["download", "-qq", "-o", "APT::Sandbox::User=root", pkg])
            .current_dir(cache));
    }
    find().unwrap_or_else(|| panic!("apt-get download {pkg} left no .deb in {}", cache.display()))
}

/// A busybox userland in `root`: `/bin/busybox` and a link in `/bin` for each applet, except
/// where `bin`, `sbin`, `usr/bin` or `usr/sbin` already holds a program of that name.
pub fn busybox_tree(root: &Path) {
    const DIRS: [&str; 4] = ["bin", "sbin", "usr/bin", "usr/sbin"];
    for d in DIRS.iter().chain(&["dev", "proc", "sys", "tmp", "run"]) {
        fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    let list = run(Command::new("/bin/busybox").arg("--list"));
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        if DIRS.iter().all(|d| !root.join(d).join(applet).exists()) {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
                .expect("symlink applet");
        }
    }
}

/// Copies the shared libraries that `ldd` lists for `elf` (a program on this machine or in
/// `root`) into `root`, at the paths the dynamic loader expects, unless `root` has them
/// already. Libraries `root` itself ships (in its `lib/x86_64-linux-gnu`) are found there.
pub fn copy_libs(elf: &Path, root: &Path) {
    let ldd = Command::new("ldd")
        .arg(elf)
        .env("LD_LIBRARY_PATH", root.join("lib/x86_64-linux-gnu"))
        .output()
        .expect("run ldd");
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        let lib = Path::new(word);
        if !lib.is_absolute() || lib.starts_with(root) {
            continue;
        }
        let dest = root.join(word.trim_start_matches('/'));
        if !dest.exists() {
            fs::create_dir_all(dest.parent().expect("lib dir")).expect("mkdir lib");
            fs::copy(lib, &dest).unwrap_or_else(|e| panic!("copy {word}: {e}"));
        }
    }
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
