//! Helpers shared by the integration tests: required tools, sandboxed host
//! roots, loop devices.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use qx_boot::grubenv::GrubEnv;
use qx_boot::{AbConfig, AbContext, SlotTarget};

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Make sure `tool` is on PATH: installed from Debian `package` when running
/// as root, otherwise the test fails saying what to install.
pub fn require_tool(tool: &str, package: &str) {
    if have(tool) {
        return;
    }
    assert!(
        is_root(),
        "this test needs `{tool}` (Debian package {package}); install it or run as root"
    );
    for args in [
        vec!["update", "-qq"],
        vec!["install", "-y", "-qq", "--no-install-recommends", package],
    ] {
        let st = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .expect("run apt-get");
        assert!(st.success(), "apt-get {args:?} failed");
    }
    assert!(
        have(tool),
        "`{tool}` still missing after installing {package}"
    );
}

pub use qx_testkit::cmd::run;

/// `grub-editenv FILE ARGS…`
pub fn editenv(file: &Path, args: &[&str]) -> String {
    require_tool("grub-editenv", "grub-common");
    run(Command::new("grub-editenv").arg(file).args(args))
}

/// A host root in a temporary directory: `/proc/cmdline` naming `slot`,
/// `/boot/grub/grubenv` created by `grub-editenv` with `vars`; the update log
/// at its default place under the root.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    /// The update log the operations are given (`updates.log_path`).
    pub log: PathBuf,
}

impl Sandbox {
    pub fn new(slot: &str, vars: &[&str]) -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("proc")).expect("mkdir");
        fs::create_dir_all(dir.path().join("boot/grub")).expect("mkdir");
        fs::write(
            dir.path().join("proc/cmdline"),
            format!("BOOT_IMAGE=/vmlinuz quantix.slot={slot} console=ttyS0\n"),
        )
        .expect("cmdline");
        let env = dir.path().join("boot/grub/grubenv");
        editenv(&env, &["create"]);
        if !vars.is_empty() {
            let mut args = vec!["set"];
            args.extend_from_slice(vars);
            editenv(&env, &args);
        }
        let log = dir.path().join("var/log/quantix/update.log");
        Sandbox { dir, log }
    }

    /// What the agent hands to the A/B operations: `cfg`, this root, this update log.
    pub fn ctx<'a>(&'a self, cfg: &'a AbConfig) -> AbContext<'a> {
        AbContext::new(cfg, self.root(), &self.log)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    pub fn grubenv(&self) -> PathBuf {
        self.path("/boot/grub/grubenv")
    }

    /// grubenv as grub-editenv lists it.
    pub fn env(&self) -> String {
        editenv(&self.grubenv(), &["list"])
    }

    /// One variable, read by our parser.
    pub fn var(&self, key: &str) -> Option<String> {
        GrubEnv::read(&self.grubenv())
            .expect("grubenv")
            .get(key)
            .map(str::to_owned)
    }

    /// Each variable has the value given, as read by our parser.
    pub fn assert_vars(&self, want: &[(&str, &str)]) {
        for (key, value) in want {
            assert_eq!(self.var(key).as_deref(), Some(*value), "grubenv {key}");
        }
    }

    pub fn read(&self, p: &str) -> Option<String> {
        fs::read_to_string(self.path(p)).ok()
    }

    pub fn history(&self) -> Vec<serde_json::Value> {
        self.read("/data/updates/history.jsonl")
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("history line is JSON"))
            .collect()
    }

    /// A config whose slots are directories under the root.
    pub fn config(&self, health: &[&[&str]]) -> AbConfig {
        for d in ["slots/a", "slots/b"] {
            fs::create_dir_all(self.path(d)).expect("mkdir slot");
        }
        AbConfig {
            slot_a: SlotTarget::Path("/slots/a".into()),
            slot_b: SlotTarget::Path("/slots/b".into()),
            health_checks: health
                .iter()
                .map(|argv| argv.iter().map(|s| s.to_string()).collect())
                .collect(),
            ..AbConfig::default()
        }
    }
}

/// A loop device over a whole file, detached on drop.
pub struct LoopFile {
    pub dev: PathBuf,
}

impl LoopFile {
    pub fn new(file: &Path) -> LoopFile {
        let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(file));
        LoopFile {
            dev: PathBuf::from(dev.trim()),
        }
    }
}

impl Drop for LoopFile {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A mount, undone on drop.
pub struct MountGuard {
    pub dir: PathBuf,
}

impl MountGuard {
    pub fn new(dev: &Path, dir: &Path, opts: &str) -> MountGuard {
        fs::create_dir_all(dir).expect("mkdir");
        run(Command::new("mount").args(["-o", opts]).arg(dev).arg(dir));
        MountGuard {
            dir: dir.to_owned(),
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}
