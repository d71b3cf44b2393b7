//! A throwaway root whose init system is Debian's real OpenRC, and commands run inside it.
//!
//! The root is Debian's `openrc` package with the packages of its libraries that a Debian
//! machine does not already have (`librc1`, `libeinfo1`) and `insserv` (openrc depends on it
//! for the dependencies of LSB scripts), downloaded once with `apt-get download` into a cache
//! under the target directory and unpacked with `dpkg-deb -x`; the other shared libraries
//! their programs use are this machine's (`ldd`), as are Debian's `start-stop-daemon` (from
//! dpkg: OpenRC on Debian uses it) and shell (dash), and a busybox for the other tools.
//!
//! [`Guest::boot`] starts `/sbin/openrc-init` as pid 1 of a new pid and mount namespace,
//! chrooted into the root (`unshare --pid --fork --mount` + `chroot`): it runs the sysinit
//! runlevel (which mounts a tmpfs on /run and keeps OpenRC's state there), boot and default,
//! which starts the services added to it. The network namespace is the machine's, so a server
//! on loopback answers inside. [`Guest::run`] runs a command in there (`nsenter` into the
//! namespaces and root of pid 1); dropping the guest kills pid 1, and with it every process
//! of the namespace.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::support::host::walk;
use crate::support::poll;
use crate::support::sys::{apt_download, busybox_tree, copy_libs, is_root, run};

/// Debian packages unpacked into the root.
const DEBS: &[&str] = &["openrc", "librc1", "libeinfo1", "insserv"];

/// Debian packages this machine needs: the busybox copied into the root. (unshare, nsenter,
/// chroot, ldd, dpkg-deb, start-stop-daemon and dash come with every Debian machine.)
pub const HOST_PACKAGES: &[&str] = &["busybox-static"];

/// PATH of the commands run in the guest.
const GUEST_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the root in `root` (emptied first): OpenRC, busybox, `qx_update` as
/// `/usr/bin/qx-update`, and the directories of a Quantix host.
pub fn build_root(root: &Path, cache: &Path, qx_update: &Path) {
    assert!(
        is_root(),
        "the OpenRC test needs root (namespaces, chroot, mounts); run it as root"
    );
    if root.exists() {
        fs::remove_dir_all(root).expect("empty the guest root");
    }
    fs::create_dir_all(root).expect("create the guest root");
    for pkg in DEBS {
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(apt_download(pkg, cache))
            .arg(root));
    }
    for d in ["bin", "sbin"] {
        fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    fs::copy(
        "/sbin/start-stop-daemon",
        root.join("sbin/start-stop-daemon"),
    )
    .expect("copy dpkg's start-stop-daemon");
    // Debian's shell: busybox's would run its own applets (its start-stop-daemon among them)
    // in place of the programs of those names.
    fs::copy("/bin/dash", root.join("bin/dash")).expect("copy dash");
    std::os::unix::fs::symlink("dash", root.join("bin/sh")).expect("link /bin/sh");
    busybox_tree(root);
    fs::create_dir_all(root.join("usr/bin")).expect("mkdir usr/bin");
    fs::copy(qx_update, root.join("usr/bin/qx-update")).expect("copy qx-update");
    for elf in walk(root)
        .into_iter()
        .filter(|p| !p.is_symlink() && is_elf(p))
    {
        copy_libs(&elf, root);
    }
    for d in [
        "etc/limiquantix",
        "data/bin",
        "data/lib",
        "data/share",
        "data/versions",
        "data/updates",
        "var/log/quantix",
    ] {
        fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    // checkpath (sysinit) looks up root:uucp for /run/lock.
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuucp:x:10:10:uucp:/var/spool/uucp:/bin/false\n",
    )
    .expect("write /etc/passwd");
    fs::write(root.join("etc/group"), "root:x:0:\nuucp:x:10:\n").expect("write /etc/group");
}

/// True when `p` is a regular file that starts like an ELF program.
fn is_elf(p: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// Writes `text` at host path `at` under `root` with `mode`.
pub fn put(root: &Path, at: &str, text: &[u8], mode: u32) {
    let p = root.join(at.trim_start_matches('/'));
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Installs the init script `script` as `/etc/init.d/<name>` and adds it to the default
/// runlevel (as `rc-update add <name> default` does: a link in /etc/runlevels/default).
pub fn add_service(root: &Path, name: &str, script: &str) {
    put(
        root,
        &format!("/etc/init.d/{name}"),
        script.as_bytes(),
        0o755,
    );
    std::os::unix::fs::symlink(
        format!("/etc/init.d/{name}"),
        root.join("etc/runlevels/default").join(name),
    )
    .expect("add the service to the default runlevel");
}

/// OpenRC running as pid 1 of its own namespaces in a root.
pub struct Guest {
    root: PathBuf,
    console: PathBuf,
    unshare: Child,
    pid1: u32,
}

impl Guest {
    /// Boots `root` with `openrc-init`; returns once each of `services` has started. The
    /// console output goes to `console`.
    pub fn boot(root: &Path, console: &Path, services: &[&str]) -> Guest {
        let log = fs::File::create(console).expect("create the console log");
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount", "--propagation", "private"])
            .args(["--kill-child", "sh", "-ec"])
            .arg(
                "mount -t proc proc \"$1/proc\"; mount --rbind /dev \"$1/dev\"; \
                 exec chroot \"$1\" /sbin/openrc-init",
            )
            .arg("sh")
            .arg(root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the console log"))
            .stderr(log)
            .spawn()
            .expect("start unshare");
        let mut guest = Guest {
            root: root.to_owned(),
            console: console.to_owned(),
            pid1: 0,
            unshare,
        };
        let children = format!("/proc/{0}/task/{0}/children", guest.unshare.id());
        let found = poll(Duration::from_secs(10), Duration::from_millis(20), || {
            let pid = fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok());
            guest.pid1 = pid.unwrap_or(0);
            pid.is_some_and(|p: u32| {
                fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "openrc-init")
            })
        });
        assert!(found, "openrc-init did not start{}", guest.console_text());
        for service in services {
            let started = poll(Duration::from_secs(60), Duration::from_millis(100), || {
                let status = guest.run(&["rc-service", service, "status"]);
                status.status.success()
            });
            assert!(
                started,
                "OpenRC did not start {service} in the default runlevel{}",
                guest.console_text()
            );
        }
        guest
    }

    /// `argv` in the guest: its namespaces and root, cwd `/`, PATH set, nothing else in the
    /// environment, stdin closed.
    fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("--target")
            .arg(self.pid1.to_string())
            .args(["--mount", "--pid", "--root", "--wd", "--"])
            .args(argv)
            .env_clear()
            .env("PATH", GUEST_PATH)
            .stdin(Stdio::null());
        c
    }

    /// Runs `argv` in the guest to its end.
    pub fn run(&self, argv: &[&str]) -> Output {
        self.command(argv).output().expect("run nsenter")
    }

    /// [`Guest::run`], which must succeed; returns stdout.
    pub fn ok(&self, argv: &[&str]) -> String {
        run(&mut self.command(argv))
    }

    /// The file at `path` as the guest sees it (through pid 1's root: /run is the guest's
    /// tmpfs), empty when absent.
    pub fn read(&self, path: &str) -> String {
        let p = format!("/proc/{}/root{path}", self.pid1);
        fs::read_to_string(p).unwrap_or_default()
    }

    /// The guest's root directory on this machine.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What OpenRC printed on its console, for failure messages.
    pub fn console_text(&self) -> String {
        format!(
            "\n--- OpenRC console ({}):\n{}",
            self.console.display(),
            fs::read_to_string(&self.console).unwrap_or_default()
        )
    }
}

impl Drop for Guest {
    /// Kills unshare, whose child, pid 1 of the namespace, gets SIGKILL with it
    /// (`--kill-child`); every other process of the namespace goes with pid 1.
    fn drop(&mut self) {
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}
