//! End-to-end A/B boot scenario under qemu (TCG): builds a GPT disk image with
//! GRUB (i386-pc), a FAT boot partition holding `packaging/grub/grub.cfg` and a
//! grubenv, slots A and B (ext4, each holding `vmlinuz`, `initramfs`,
//! `system.squashfs`) and a data partition, then boots it several times and
//! checks GRUB's choice, the slot userspace reports, grubenv read back with
//! `grub-editenv`, and the state, update log and history that `qx-update ab`
//! wrote inside the guest.
//!
//! The guest's userspace is busybox plus the `qx-update` binary under test
//! (copied in with the shared libraries `ldd` lists) and the boot scripts of
//! `packaging/openrc/local.d`, run by a small init in place of OpenRC.
//! Updates are written into slot B on the host by `qx_boot::install_image`,
//! through loop devices over the partitions of the disk image.
//!
//! Run by `qemu.rs` with the real `qx-update`. Needs root (loop devices, mounts,
//! apt-get for missing packages listed in packages.txt).

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use qx_boot::grubenv::GrubEnv;
use qx_boot::{AbConfig, ImageFile, InstallRequest, Slot, SlotTarget};

use crate::support::host::parse_jsonl;
use crate::support::sys::{self, exclusive_mounts, is_root, run, sh, LoopDev, Mount};

/// Partition layout, in 512-byte sectors.
const P1_START: u64 = 2048; // BIOS boot partition: GRUB core.img
const P1_SIZE: u64 = 2048;
const P2_START: u64 = 4096; // boot, FAT: /grub/{grub.cfg,quantix-ab.cfg,grubenv,i386-pc}
const P2_SIZE: u64 = 65536;
const P3_START: u64 = 69632; // QUANTIX-A, ext4
const SLOT_SIZE: u64 = 262144;
const P4_START: u64 = 331776; // QUANTIX-B, ext4
const P5_START: u64 = 593920; // QUANTIX-DATA, ext4
const P5_SIZE: u64 = 65536;
const DISK_SECTORS: u64 = 661504;

/// Kernel modules the initramfs loads, in dependency order.
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "loop",
    "squashfs",
    "fat",
    "vfat",
    "nls_cp437",
    "nls_ascii",
];

/// The init of a broken system image: reports the slot and version, then fails.
const BROKEN_INIT: &str = r#"#!/bin/sh
export PATH=/usr/bin:/bin
slot=; for a in $(cat /proc/cmdline); do case "$a" in quantix.slot=*) slot=${a#quantix.slot=};; esac; done
echo "QX-SYSTEM: up: slot=$slot version=$(cat /etc/quantix-release)"
echo "QX-SYSTEM: broken image: init fails"
exit 1
"#;

/// The init of a system image, in place of OpenRC: mounts /data and /boot (localmount), runs
/// the local.d scripts in order (local), powers off.
const SYSTEM_INIT: &str = r#"#!/bin/sh
# Stand-in for OpenRC: mount /data and /boot (localmount), run the local.d
# scripts in order (local), power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t tmpfs tmpfs /tmp
slot=; for a in $(cat /proc/cmdline); do case "$a" in quantix.slot=*) slot=${a#quantix.slot=};; esac; done
echo "QX-SYSTEM: up: slot=$slot version=$(cat /etc/quantix-release)"
mount -t ext4 "$(findfs LABEL=QUANTIX-DATA)" /data || echo "QX-SYSTEM: cannot mount /data"
# /quantix and /var/log are links into /data in this image
mkdir -p /data/quantix /data/log
mount -t vfat "$(findfs LABEL=QXBOOT)" /boot || echo "QX-SYSTEM: cannot mount /boot"
for s in /etc/local.d/*.start; do
  [ -x "$s" ] || continue
  echo "QX-SYSTEM: running $s"
  "$s"
  echo "QX-SYSTEM: $s exited $?"
done
qx-update ab status 2>&1 | sed 's/^/QX-SYSTEM: status: /'
sync
umount /boot
umount /data
sync
echo "QX-SYSTEM: powering off"
poweroff -f
"#;

/// How to run the scenario.
pub struct Options {
    /// Name of the work directory under the target's tmp dir.
    pub name: String,
    /// The binary installed as `/usr/bin/qx-update` in the guest.
    pub qx_update: PathBuf,
    /// Content of `/etc/limiquantix/node.yaml` in the guest; `{HEALTH}` is
    /// replaced by the health-check list (YAML flow sequence).
    pub agent_config: String,
    /// Target tmp dir (`env!("CARGO_TARGET_TMPDIR")`).
    pub target_tmp: PathBuf,
    /// Seconds a single boot may take before it counts as hung.
    pub boot_timeout: Duration,
}

/// The health checks configured in the guest.
pub const HEALTH_CHECKS: &str = r#"[["/bin/sh", "-c", "grep -q ' /data ' /proc/mounts"], ["/bin/test", "-s", "/etc/quantix-release"]]"#;

/// The Debian packages of packages.txt, installed when missing.
pub fn ensure_packages() {
    let wanted: Vec<&str> = include_str!("packages.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    sys::ensure_packages(&wanted, "the A/B qemu test");
}

/// The Debian cloud kernel package (.deb), downloaded once into `cache`.
pub fn kernel_deb(cache: &Path) -> PathBuf {
    let resolve = || {
        let out = Command::new("apt-cache")
            .args(["depends", "linux-image-cloud-amd64"])
            .output()
            .expect("run apt-cache");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .map(str::to_owned)
    };
    let pkg = match resolve() {
        Some(p) => p,
        None => {
            run(Command::new("apt-get").args(["update", "-qq"]));
            resolve().expect("apt-cache cannot resolve linux-image-cloud-amd64")
        }
    };
    sys::apt_download(&pkg, cache)
}

/// Serial output without carriage returns and ANSI escape sequences.
pub fn clean_log(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    while let Some(&n) = chars.peek() {
                        chars.next();
                        if n.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// One boot's outcome.
pub struct Boot {
    pub n: usize,
    pub log: String,
    pub log_path: PathBuf,
    pub seconds: f64,
    /// Slot GRUB selected ("quantix-ab: selected slot X").
    pub grub_slot: Option<String>,
    /// Slot and version the system init reported.
    pub user_slot: Option<String>,
    pub version: Option<String>,
}

impl Boot {
    fn marker(log: &str, prefix: &str) -> Option<String> {
        log.lines()
            .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest.trim().to_owned()))
    }

    pub fn contains(&self, s: &str) -> bool {
        self.log.contains(s)
    }

    pub fn tail(&self) -> String {
        let lines: Vec<&str> = self.log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

/// The scenario's work area and disk image.
pub struct Harness {
    pub opts: Options,
    pub work: PathBuf,
    pub disk: PathBuf,
    pub boots: Vec<Boot>,
    pub summary: String,
    started: Instant,
    packaging: PathBuf,
    _mounts: MutexGuard<'static, ()>,
}

impl Harness {
    pub fn new(opts: Options) -> Harness {
        assert!(
            is_root(),
            "the A/B qemu test needs root (loop devices, mounts, apt-get); run it as root"
        );
        let work = opts.target_tmp.join("ab-boot-qemu").join(&opts.name);
        if work.exists() {
            fs::remove_dir_all(&work).expect("clean work dir");
        }
        fs::create_dir_all(work.join("logs")).expect("create work dir");
        let packaging = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging");
        assert!(
            packaging.join("grub/grub.cfg").is_file(),
            "packaging/grub/grub.cfg not found at {}",
            packaging.display()
        );
        Harness {
            disk: work.join("disk.img"),
            work,
            opts,
            boots: Vec::new(),
            summary: String::new(),
            started: Instant::now(),
            packaging,
            _mounts: exclusive_mounts(),
        }
    }

    fn note(&mut self, line: &str) {
        eprintln!(
            "[ab-qemu {:6.1}s] {line}",
            self.started.elapsed().as_secs_f64()
        );
        let _ = writeln!(self.summary, "{line}");
    }

    // ------------------------------------------------------------------ build

    fn unpack_kernel(&self) -> (PathBuf, PathBuf) {
        let deb = kernel_deb(&self.opts.target_tmp.join("ab-boot-qemu-cache"));
        let x = self.work.join("kernel");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x));
        let vmlinuz = fs::read_dir(x.join("boot"))
            .expect("kernel boot dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .expect("vmlinuz in kernel package");
        (vmlinuz, x)
    }

    fn build_initramfs(&self, kernel_dir: &Path) -> PathBuf {
        let r = self.work.join("initramfs-root");
        sys::busybox_tree(&r);
        fs::create_dir_all(r.join("lib/modules")).expect("mkdir");
        for m in MODULES {
            let found = run(Command::new("find")
                .arg(kernel_dir.join("lib/modules"))
                .args(["-name", &format!("{m}.ko")]));
            let path = found
                .lines()
                .next()
                .unwrap_or_else(|| panic!("kernel module {m}.ko not in the kernel package"));
            fs::copy(path, r.join("lib/modules").join(format!("{m}.ko"))).expect("copy module");
        }
        let init = format!(
            r#"#!/bin/sh
# initramfs: load drivers, mount the slot's file system (LABEL=QUANTIX-<slot>)
# read-only, loop-mount its system.squashfs as the root, switch_root.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {{ echo "QX-INITRAMFS: $*"; exit 1; }}
for m in {modules}; do
  insmod /lib/modules/$m.ko || echo "QX-INITRAMFS: insmod $m failed"
done
slot=
for a in $(cat /proc/cmdline); do case "$a" in quantix.slot=*) slot=${{a#quantix.slot=}};; esac; done
[ -n "$slot" ] || fail "no quantix.slot= on the kernel command line"
dev=; i=0
while [ $i -lt 100 ]; do
  dev=$(findfs "LABEL=QUANTIX-$slot" 2>/dev/null) && [ -b "$dev" ] && break
  dev=; sleep 0.1; i=$((i+1))
done
[ -n "$dev" ] || fail "no device with label QUANTIX-$slot"
mkdir -p /slot /newroot
mount -t ext4 -o ro "$dev" /slot || fail "cannot mount $dev"
mount -t squashfs -o ro,loop /slot/system.squashfs /newroot || fail "cannot mount /slot/system.squashfs"
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mkdir -p /newroot/run/slot
mount --move /slot /newroot/run/slot
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"#,
            modules = MODULES.join(" ")
        );
        fs::write(r.join("init"), init).expect("write init");
        run(Command::new("chmod").arg("755").arg(r.join("init")));
        let out = self.work.join("initramfs");
        sh(&format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            r.display(),
            out.display()
        ));
        out
    }

    /// The guest's copy of the binary under test: stripped when possible.
    fn guest_binary(&self) -> PathBuf {
        let out = self.work.join("qx-update.guest");
        let stripped = Command::new("strip")
            .arg("-o")
            .arg(&out)
            .arg(&self.opts.qx_update)
            .status()
            .is_ok_and(|s| s.success());
        if !stripped {
            fs::copy(&self.opts.qx_update, &out).expect("copy qx-update");
        }
        out
    }

    /// A system image (squashfs) of `version`; `broken`: its init fails.
    fn build_system(&self, version: &str, broken: bool, guest_bin: &Path) -> PathBuf {
        let r = self.work.join(format!("system-{version}"));
        sys::busybox_tree(&r);
        for d in [
            "data",
            "boot",
            "mnt",
            "var",
            "etc/local.d",
            "etc/limiquantix",
        ] {
            fs::create_dir_all(r.join(d)).expect("mkdir");
        }
        std::os::unix::fs::symlink("/data/quantix", r.join("quantix")).expect("symlink");
        std::os::unix::fs::symlink("/data/log", r.join("var/log")).expect("symlink");
        fs::copy(guest_bin, r.join("usr/bin/qx-update")).expect("copy qx-update");
        sys::copy_libs(guest_bin, &r);
        for e in fs::read_dir(self.packaging.join("openrc/local.d")).expect("local.d") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "start") {
                let dest = r.join("etc/local.d").join(p.file_name().expect("name"));
                fs::copy(&p, dest).expect("copy boot script");
            }
        }
        fs::write(
            r.join("etc/limiquantix/node.yaml"),
            self.opts.agent_config.replace("{HEALTH}", HEALTH_CHECKS),
        )
        .expect("write node.yaml");
        fs::write(r.join("etc/quantix-release"), format!("{version}\n")).expect("release");
        let init = if broken { BROKEN_INIT } else { SYSTEM_INIT };
        fs::write(r.join("sbin/init"), init).expect("write init");
        run(Command::new("chmod").arg("755").arg(r.join("sbin/init")));
        let out = self.work.join(format!("system-{version}.squashfs"));
        run(Command::new("mksquashfs").arg(&r).arg(&out).args([
            "-noappend",
            "-no-progress",
            "-quiet",
            "-comp",
            "zstd",
            "-all-root",
        ]));
        fs::remove_dir_all(&r).expect("remove system tree");
        out
    }

    fn mkfs_ext4(&self, name: &str, label: &str, content: Option<&Path>, sectors: u64) -> PathBuf {
        let img = self.work.join(name);
        let mut c = Command::new("mke2fs");
        c.args(["-q", "-F", "-t", "ext4", "-L", label]);
        if let Some(d) = content {
            c.arg("-d").arg(d);
        }
        c.arg(&img).arg(format!("{}k", sectors / 2));
        run(&mut c);
        img
    }

    fn put_part(&self, img: &Path, start: u64) {
        run(Command::new("dd")
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", self.disk.display()))
            .args([
                "bs=1M",
                "oflag=seek_bytes",
                "conv=notrunc,sparse",
                "status=none",
            ])
            .arg(format!("seek={}", start * 512)));
    }

    /// Build the factory image: slot A holds `version_a` (good), slot B is an
    /// empty file system, grubenv says ORDER="A B" A_LEFT=3 B_LEFT=0 (written
    /// by qx_boot::grubenv, read by GRUB).
    pub fn build(&mut self, version_a: &str) -> Artifacts {
        let t0 = Instant::now();
        let (vmlinuz, kdir) = self.unpack_kernel();
        let initramfs = self.build_initramfs(&kdir);
        let guest_bin = self.guest_binary();
        let system_a = self.build_system(version_a, false, &guest_bin);
        let parts = [
            (self.boot_partition(), P2_START),
            (self.slot_a(&vmlinuz, &initramfs, &system_a), P3_START),
            (
                self.mkfs_ext4("slot-b.ext4", "QUANTIX-B", None, SLOT_SIZE),
                P4_START,
            ),
            (
                self.mkfs_ext4("data.ext4", "QUANTIX-DATA", None, P5_SIZE),
                P5_START,
            ),
        ];
        self.partition_disk();
        for (img, start) in &parts {
            self.put_part(img, *start);
        }
        self.install_grub();

        let kept_kernel = self.work.join("vmlinuz");
        fs::copy(&vmlinuz, &kept_kernel).expect("keep vmlinuz");
        for d in ["kernel", "initramfs-root", "slot-a", "bootfs"] {
            let _ = fs::remove_dir_all(self.work.join(d));
        }
        for f in ["slot-a.ext4", "slot-b.ext4", "data.ext4", "boot.vfat"] {
            let _ = fs::remove_file(self.work.join(f));
        }
        let secs = t0.elapsed().as_secs_f64();
        self.note(&format!(
            "built disk image {} in {secs:.1}s",
            self.disk.display()
        ));
        Artifacts {
            vmlinuz: kept_kernel,
            initramfs,
            guest_bin,
        }
    }

    /// The file system of slot A (ext4 image): kernel, initramfs and system.
    fn slot_a(&self, vmlinuz: &Path, initramfs: &Path, system: &Path) -> PathBuf {
        let slot_a = self.work.join("slot-a");
        fs::create_dir_all(&slot_a).expect("mkdir");
        fs::copy(vmlinuz, slot_a.join("vmlinuz")).expect("copy kernel");
        fs::copy(initramfs, slot_a.join("initramfs")).expect("copy initramfs");
        fs::copy(system, slot_a.join("system.squashfs")).expect("copy system");
        self.mkfs_ext4("slot-a.ext4", "QUANTIX-A", Some(&slot_a), SLOT_SIZE)
    }

    /// The boot partition (FAT image): GRUB modules, grub.cfg (serial console + our
    /// fragment), grubenv.
    fn boot_partition(&self) -> PathBuf {
        let bootfs = self.work.join("bootfs");
        let grubdir = bootfs.join("grub");
        fs::create_dir_all(grubdir.join("i386-pc")).expect("mkdir");
        for e in fs::read_dir("/usr/lib/grub/i386-pc").expect("grub-pc-bin modules") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "mod" || x == "lst") {
                fs::copy(
                    &p,
                    grubdir.join("i386-pc").join(p.file_name().expect("name")),
                )
                .expect("copy module");
            }
        }
        fs::write(
            grubdir.join("grub.cfg"),
            "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n\
             set timeout=0\nset qx_cmdline=\"console=ttyS0 panic=1 quiet\"\n\
             source $prefix/quantix-ab.cfg\n",
        )
        .expect("write grub.cfg");
        fs::copy(
            self.packaging.join("grub/grub.cfg"),
            grubdir.join("quantix-ab.cfg"),
        )
        .expect("copy fragment");
        run(Command::new("grub-script-check").arg(grubdir.join("quantix-ab.cfg")));
        let mut env = GrubEnv::new();
        for (k, v) in [
            ("ORDER", "A B"),
            ("A_LEFT", "3"),
            ("B_LEFT", "0"),
            ("A_OK", "0"),
            ("B_OK", "0"),
        ] {
            env.set(k, v).expect("set");
        }
        env.create(&grubdir.join("grubenv"))
            .expect("create grubenv");
        let boot_img = self.work.join("boot.vfat");
        run(Command::new("mkfs.vfat")
            .args(["-n", "QXBOOT", "-C"])
            .arg(&boot_img)
            .arg(format!("{}", P2_SIZE / 2)));
        run(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-s")
            .arg("-i")
            .arg(&boot_img)
            .arg(&grubdir)
            .arg("::/"));
        boot_img
    }

    /// An empty disk image with the GPT partition table of the layout.
    fn partition_disk(&self) {
        let f = fs::File::create(&self.disk).expect("create disk");
        f.set_len(DISK_SECTORS * 512).expect("size disk");
        drop(f);
        run(Command::new("sgdisk")
            .arg(format!("-n=1:{P1_START}:+{P1_SIZE}"))
            .args(["-t=1:ef02", "-c=1:bios_grub"])
            .arg(format!("-n=2:{P2_START}:+{P2_SIZE}"))
            .args(["-t=2:8300", "-c=2:boot"])
            .arg(format!("-n=3:{P3_START}:+{SLOT_SIZE}"))
            .args(["-t=3:8300", "-c=3:system_a"])
            .arg(format!("-n=4:{P4_START}:+{SLOT_SIZE}"))
            .args(["-t=4:8300", "-c=4:system_b"])
            .arg(format!("-n=5:{P5_START}:+{P5_SIZE}"))
            .args(["-t=5:8300", "-c=5:data"])
            .arg(&self.disk));
    }

    /// GRUB for BIOS, installed by hand (what grub-bios-setup does, without
    /// a loop device): core.img into the BIOS boot partition, boot.img
    /// (first 440 bytes, keeping the protective MBR's table) into sector 0,
    /// with the LBA of core.img at 0x5c of boot.img and the LBA of the rest
    /// of core.img in core.img's blocklist at 0x1f4.
    fn install_grub(&self) {
        let core = self.work.join("core.img");
        run(Command::new("grub-mkimage")
            .args(["-O", "i386-pc", "-o"])
            .arg(&core)
            .args(["-p", "(hd0,gpt2)/grub"])
            .args([
                "biosdisk",
                "part_gpt",
                "fat",
                "ext2",
                "normal",
                "configfile",
                "linux",
                "linux16",
                "echo",
                "test",
                "loadenv",
                "search",
                "search_label",
                "serial",
                "terminal",
                "halt",
                "reboot",
            ]));
        let mut core_bytes = fs::read(&core).expect("read core.img");
        assert!(
            core_bytes.len() as u64 <= P1_SIZE * 512,
            "core.img too big for the BIOS boot partition"
        );
        core_bytes[0x1f4..0x1fc].copy_from_slice(&(P1_START + 1).to_le_bytes());
        let mut boot_sector = fs::read("/usr/lib/grub/i386-pc/boot.img").expect("boot.img");
        boot_sector[0x5c..0x64].copy_from_slice(&P1_START.to_le_bytes());
        let mut disk = fs::OpenOptions::new()
            .write(true)
            .open(&self.disk)
            .expect("open disk");
        use std::io::{Seek, SeekFrom};
        disk.seek(SeekFrom::Start(0)).expect("seek");
        disk.write_all(&boot_sector[..440]).expect("write MBR code");
        disk.seek(SeekFrom::Start(P1_START * 512)).expect("seek");
        disk.write_all(&core_bytes).expect("write core.img");
        disk.sync_all().expect("sync disk");
        drop(disk);
    }

    // ------------------------------------------------------------- inspection

    fn boot_part(&self) -> String {
        format!("{}@@{}", self.disk.display(), P2_START * 512)
    }

    /// grubenv of the image, copied out with mtools.
    pub fn grubenv_file(&self, dest: &Path) {
        let _ = fs::remove_file(dest);
        run(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-n")
            .arg("-i")
            .arg(self.boot_part())
            .arg("::/grub/grubenv")
            .arg(dest));
    }

    /// grubenv of the image as `grub-editenv list` prints it (the oracle),
    /// checked against our own parser.
    pub fn env(&self) -> Vec<(String, String)> {
        let f = self.work.join("env.cur");
        self.grubenv_file(&f);
        let listed = run(Command::new("grub-editenv").arg(&f).arg("list"));
        let vars: Vec<(String, String)> = listed
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let ours = GrubEnv::read(&f).expect("our parser reads the grubenv GRUB wrote");
        let ours: Vec<(String, String)> = ours
            .vars()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        assert_eq!(vars, ours, "grub-editenv and qx_boot::grubenv disagree");
        vars
    }

    pub fn env_string(&self) -> String {
        self.env()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Assert grubenv values.
    pub fn expect_env(&self, when: &str, want: &[(&str, &str)]) {
        let env = self.env();
        for (k, v) in want {
            let got = env.iter().find(|(n, _)| n == k).map(|(_, x)| x.as_str());
            assert_eq!(
                got,
                Some(*v),
                "{when}: expected {k}={v} in grubenv, got {}",
                self.env_string()
            );
        }
    }

    /// Set grubenv variables with grub-editenv (the operator's tool).
    pub fn env_set(&self, assignments: &[&str]) {
        let f = self.work.join("env.set");
        self.grubenv_file(&f);
        run(Command::new("grub-editenv")
            .arg(&f)
            .arg("set")
            .args(assignments));
        self.put_grubenv(&f);
    }

    fn put_grubenv(&self, f: &Path) {
        run(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-o")
            .arg("-i")
            .arg(self.boot_part())
            .arg(f)
            .arg("::/grub/grubenv"));
    }

    /// Mount the data partition (read-only unless `rw`).
    pub fn data(&self, rw: bool) -> Mount {
        let dev = LoopDev::range(&self.disk, P5_START, P5_SIZE);
        let mode = if rw { "rw" } else { "ro" };
        Mount::owning(
            dev,
            &self.work.join("mnt-data"),
            &["-t", "ext4", "-o", mode],
        )
    }

    /// A file of the data partition (`None` if absent).
    pub fn data_file(&self, path: &str) -> Option<String> {
        let m = self.data(false);
        fs::read_to_string(m.dir.join(path.trim_start_matches('/'))).ok()
    }

    pub fn state(&self) -> serde_json::Value {
        let text = self
            .data_file("quantix/ab-update-state.json")
            .expect("/quantix/ab-update-state.json on the data partition");
        serde_json::from_str(&text).expect("state file is JSON")
    }

    pub fn history(&self) -> Vec<serde_json::Value> {
        parse_jsonl(&self.data_file("updates/history.jsonl").unwrap_or_default())
    }

    pub fn update_log(&self) -> String {
        self.data_file("log/quantix/update.log").unwrap_or_default()
    }

    // ---------------------------------------------------------------- actions

    /// Write `system` (+ kernel/initramfs, or copied from slot A when `None`)
    /// into slot B with `qx_boot::install_image`, as the agent would on a host
    /// booted from slot A: the host's root is a directory whose /quantix,
    /// /var/log and /data are the image's data partition, whose
    /// /boot/grub/grubenv is the image's grubenv, and whose slot devices are
    /// loop devices over the image's partitions.
    pub fn install_into_b(
        &mut self,
        version: &str,
        system: &Path,
        kernel: Option<&Path>,
        initramfs: Option<&Path>,
    ) -> qx_boot::InstallReport {
        let t0 = Instant::now();
        let root = self.work.join("hostroot");
        if root.exists() {
            fs::remove_dir_all(&root).expect("clean host root");
        }
        fs::create_dir_all(root.join("proc")).expect("mkdir");
        fs::create_dir_all(root.join("boot/grub")).expect("mkdir");
        fs::create_dir_all(root.join("var")).expect("mkdir");
        fs::write(root.join("proc/cmdline"), "quantix.slot=A console=ttyS0\n").expect("cmdline");
        let env_copy = root.join("boot/grub/grubenv");
        self.grubenv_file(&env_copy);
        let data = self.data(true);
        std::os::unix::fs::symlink(data.dir.join("quantix"), root.join("quantix")).expect("ln");
        std::os::unix::fs::symlink(data.dir.join("log"), root.join("var/log")).expect("ln");
        std::os::unix::fs::symlink(&data.dir, root.join("data")).expect("ln");
        let loop_a = LoopDev::range(&self.disk, P3_START, SLOT_SIZE);
        let loop_b = LoopDev::range(&self.disk, P4_START, SLOT_SIZE);
        let mnt = self.work.join("mnt");
        fs::create_dir_all(&mnt).expect("mkdir");
        let cfg = AbConfig {
            slot_a: SlotTarget::Device(loop_a.dev.display().to_string()),
            slot_b: SlotTarget::Device(loop_b.dev.display().to_string()),
            mount: qx_boot::MountConfig {
                fstype: Some("ext4".to_owned()),
                options: Vec::new(),
                dir: Some(mnt),
            },
            ..AbConfig::default()
        };
        let file = |p: &Path| ImageFile {
            path: p.to_owned(),
            sha256: qx_boot::install::hash_from_disk(p).expect("hash"),
        };
        let req = InstallRequest {
            version: version.to_owned(),
            target: None,
            system: file(system),
            kernel: kernel.map(file),
            initramfs: initramfs.map(file),
        };
        let log = root.join("var/log/quantix/update.log");
        let report = qx_boot::install_image(&qx_boot::AbContext::new(&cfg, &root, &log), &req)
            .unwrap_or_else(|e| panic!("install_image of {version} into slot B failed: {e}"));
        assert_eq!(report.to, Slot::B);
        drop(loop_a);
        drop(loop_b);
        drop(data);
        self.put_grubenv(&env_copy);
        self.note(&format!(
            "installed {version} into slot B with install_image in {:.1}s: {}",
            t0.elapsed().as_secs_f64(),
            report
                .files
                .iter()
                .map(|f| format!("{} {} bytes", f.name, f.size))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        report
    }

    /// Boot the image once under qemu (TCG); returns when the guest powers
    /// off, panics, or reboots (-no-reboot makes all of these exit qemu).
    pub fn boot(&mut self) -> &Boot {
        let n = self.boots.len() + 1;
        let log_path = self.work.join("logs").join(format!("boot{n}.log"));
        let log = fs::File::create(&log_path).expect("create log");
        let t0 = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "256", "-smp", "1", "-nographic"])
            .args(["-serial", "mon:stdio", "-no-reboot", "-nic", "none"])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", self.disk.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start qemu-system-x86_64");
        let deadline = t0 + self.opts.boot_timeout;
        let timed_out = loop {
            match child.try_wait().expect("wait for qemu") {
                Some(_) => break false,
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break true;
                }
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let seconds = t0.elapsed().as_secs_f64();
        let text = clean_log(&fs::read(&log_path).expect("read log"));
        assert!(
            !timed_out,
            "boot {n} hung: no poweroff/panic within {:?}; log {}:\n{}",
            self.opts.boot_timeout,
            log_path.display(),
            text
        );
        let boot = Boot {
            n,
            grub_slot: Boot::marker(&text, "quantix-ab: selected slot "),
            user_slot: Boot::marker(&text, "QX-SYSTEM: up: slot=")
                .and_then(|r| r.split_whitespace().next().map(str::to_owned)),
            version: Boot::marker(&text, "QX-SYSTEM: up: slot=")
                .and_then(|r| r.split_once("version=").map(|(_, v)| v.trim().to_owned())),
            log: text,
            log_path,
            seconds,
        };
        let line = format!(
            "boot {n}: {seconds:5.1}s grub={} userspace={} version={} | grubenv after: {}",
            boot.grub_slot.as_deref().unwrap_or("?"),
            boot.user_slot.as_deref().unwrap_or("?"),
            boot.version.as_deref().unwrap_or("?"),
            self.env_string()
        );
        self.boots.push(boot);
        self.note(&line);
        self.boots.last().expect("just pushed")
    }

    /// Boot and assert GRUB's choice, the booted slot and version, and a good
    /// (scripts ran, powered off) or failed (kernel panic) boot.
    pub fn boot_expect(&mut self, slot: &str, version: &str, good: bool) -> usize {
        let b = self.boot();
        let ctx = format!("boot {} (log {})", b.n, b.log_path.display());
        assert_eq!(
            b.grub_slot.as_deref(),
            Some(slot),
            "{ctx}: GRUB selected the wrong slot\n{}",
            b.tail()
        );
        assert_eq!(
            b.user_slot.as_deref(),
            Some(slot),
            "{ctx}: userspace reports the wrong slot\n{}",
            b.tail()
        );
        assert_eq!(
            b.version.as_deref(),
            Some(version),
            "{ctx}: wrong system version\n{}",
            b.tail()
        );
        if good {
            assert!(
                b.contains("QX-SYSTEM: powering off"),
                "{ctx}: the system did not finish booting\n{}",
                b.tail()
            );
            assert!(
                !b.contains("Kernel panic"),
                "{ctx}: kernel panic in a good boot\n{}",
                b.tail()
            );
        } else {
            assert!(
                b.contains("QX-SYSTEM: broken image: init fails") && b.contains("Kernel panic"),
                "{ctx}: expected the broken image's init to fail and the kernel to panic\n{}",
                b.tail()
            );
        }
        b.n
    }

    /// The log of boot `n`.
    pub fn log(&self, n: usize) -> &Boot {
        &self.boots[n - 1]
    }

    /// Write the summary next to the logs, print it, and remove the disk image.
    pub fn finish(mut self) {
        let total: f64 = self.boots.iter().map(|b| b.seconds).sum();
        let line = format!(
            "{} boots, {total:.1}s in qemu, {:.1}s in total",
            self.boots.len(),
            self.started.elapsed().as_secs_f64()
        );
        self.note(&line);
        fs::write(self.work.join("logs/summary.txt"), &self.summary).expect("write summary");
        println!("{}", self.summary);
        let _ = fs::remove_file(&self.disk);
    }
}

/// Files of the factory build that updates reuse.
pub struct Artifacts {
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    pub guest_bin: PathBuf,
}

impl Harness {
    /// A system image for an update.
    pub fn system_image(&self, version: &str, broken: bool, a: &Artifacts) -> PathBuf {
        self.build_system(version, broken, &a.guest_bin)
    }
}

/// The whole scenario (see the module documentation):
/// 1. factory image, slot A 1.0.0 → boots A; `ab verify` in the guest marks it good;
/// 2. 2.0.0 (its init fails) installed into B → GRUB tries B exactly 3 times;
/// 3. then A boots; `ab boot-check` records the rollback (state, log, history);
/// 4. 3.0.0 installed into B → boots B, marked good, completes the update;
/// 5. B boots again and stays;
/// 6. both counters at 0 → GRUB's rescue path resets the good slots' counters
///    and boots B.
pub fn run_scenario(opts: Options) {
    ensure_packages();
    let mut h = Harness::new(opts);
    let art = h.build("1.0.0");
    factory_boot_marks_a_good(&mut h);
    broken_update_is_tried_three_times(&mut h, &art);
    fallback_to_a_records_the_rollback(&mut h);
    good_update_completes(&mut h, &art);
    // 5. B stays
    h.boot_expect("B", "3.0.0", true);
    h.expect_env(
        "B stays",
        &[("ORDER", "B A"), ("B_LEFT", "3"), ("B_OK", "1")],
    );
    assert_eq!(h.history().len(), 2, "a plain boot added history");
    rescue_path_boots_the_good_slot(&mut h);
    h.finish();
}

impl Harness {
    /// Asserts that the log of boot `n` contains `needle`; `what` says what it means when not.
    fn expect_in_log(&self, n: usize, needle: &str, what: &str) {
        let b = self.log(n);
        assert!(b.contains(needle), "boot {n}: {what}\n{}", b.tail());
    }
}

/// Step 1: factory state, only A, not marked good yet. It boots, is marked good, and the
/// boot scripts create the data directories.
fn factory_boot_marks_a_good(h: &mut Harness) {
    h.expect_env(
        "factory",
        &[("ORDER", "A B"), ("A_LEFT", "3"), ("B_LEFT", "0")],
    );
    let n = h.boot_expect("A", "1.0.0", true);
    h.expect_in_log(
        n,
        "quantix-ab: saved A_LEFT=2 B_LEFT=0",
        "GRUB did not decrement A_LEFT before booting",
    );
    h.expect_in_log(
        n,
        "slot A marked good",
        "`qx-update ab verify` did not mark slot A good",
    );
    h.expect_env(
        "after boot 1",
        &[
            ("ORDER", "A B"),
            ("A_LEFT", "3"),
            ("A_OK", "1"),
            ("B_LEFT", "0"),
        ],
    );
    assert!(
        h.data_file("quantix/ab-update-state.json").is_none(),
        "no update yet, but a state file exists"
    );
    for d in [
        "bin",
        "share/quantix-host-ui",
        "versions",
        "updates/staging",
        "updates/backup",
    ] {
        let m = h.data(false);
        assert!(
            m.dir.join(d).is_dir(),
            "05-overlay-mounts.start did not create /data/{d}"
        );
    }
}

/// Step 2: a broken update into B: pending, then tried exactly 3 times.
fn broken_update_is_tried_three_times(h: &mut Harness, art: &Artifacts) {
    let broken = h.system_image("2.0.0", true, art);
    h.install_into_b("2.0.0", &broken, Some(&art.vmlinuz), Some(&art.initramfs));
    h.expect_env(
        "after installing 2.0.0",
        &[
            ("ORDER", "B A"),
            ("B_LEFT", "3"),
            ("B_OK", "0"),
            ("A_LEFT", "3"),
            ("A_OK", "1"),
        ],
    );
    let st = h.state();
    assert_eq!(st["pending"], true, "state after install: {st}");
    assert_eq!(st["from"], "A");
    assert_eq!(st["to"], "B");
    assert_eq!(st["version"], "2.0.0");
    for left in ["2", "1", "0"] {
        h.boot_expect("B", "2.0.0", false);
        h.expect_env(
            "after a failed boot of B",
            &[("B_LEFT", left), ("A_LEFT", "3"), ("ORDER", "B A")],
        );
    }
    assert_eq!(h.state()["pending"], true, "nothing ran in the broken slot");
}

/// Step 3: GRUB falls back to A; boot-check records the rollback in the state, the history
/// and the update log.
fn fallback_to_a_records_the_rollback(h: &mut Harness) {
    let n = h.boot_expect("A", "1.0.0", true);
    h.expect_in_log(
        n,
        "ROLLBACK recorded",
        "`qx-update ab boot-check` did not record the rollback",
    );
    h.expect_env(
        "after the fallback boot",
        &[
            ("ORDER", "A B"),
            ("A_LEFT", "3"),
            ("A_OK", "1"),
            ("B_LEFT", "0"),
            ("B_OK", "0"),
        ],
    );
    let st = h.state();
    assert_eq!(st["pending"], false, "state after rollback: {st}");
    assert_eq!(st["outcome"], "rolled_back", "state after rollback: {st}");
    assert_eq!(st["version"], "2.0.0");
    let hist = h.history();
    assert_eq!(hist.len(), 1, "history after rollback: {hist:?}");
    assert_eq!(hist[0]["kind"], "full");
    assert_eq!(hist[0]["version"], "2.0.0");
    assert_eq!(hist[0]["outcome"], "rolled_back");
    assert!(
        hist[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("slot B")),
        "history reason: {}",
        hist[0]
    );
    assert!(
        h.update_log().contains("boot-check: rollback"),
        "update.log has no rollback line:\n{}",
        h.update_log()
    );
}

/// Step 4: a good update into B (kernel and initramfs copied from slot A): a trial boot,
/// marked good, the update completed.
fn good_update_completes(h: &mut Harness, art: &Artifacts) {
    let good = h.system_image("3.0.0", false, art);
    let report = h.install_into_b("3.0.0", &good, None, None);
    assert!(
        report
            .files
            .iter()
            .any(|f| f.name == "vmlinuz" && f.source.to_string_lossy().contains("qx-slot-A")),
        "kernel not copied from slot A: {:?}",
        report.files
    );
    h.expect_env(
        "after installing 3.0.0",
        &[("ORDER", "B A"), ("B_LEFT", "3"), ("B_OK", "0")],
    );
    let n = h.boot_expect("B", "3.0.0", true);
    h.expect_in_log(
        n,
        "trial boot of version 3.0.0 in slot B",
        "boot-check did not report the trial boot",
    );
    let not_completed = "verify did not mark B good and complete the update";
    h.expect_in_log(n, "slot B marked good", not_completed);
    h.expect_in_log(n, "update to version 3.0.0 completed", not_completed);
    h.expect_env(
        "after the first boot of 3.0.0",
        &[
            ("ORDER", "B A"),
            ("B_LEFT", "3"),
            ("B_OK", "1"),
            ("A_LEFT", "3"),
            ("A_OK", "1"),
        ],
    );
    let st = h.state();
    assert_eq!(st["pending"], false, "state after success: {st}");
    assert_eq!(st["outcome"], "success");
    assert_eq!(st["version"], "3.0.0");
    let hist = h.history();
    assert_eq!(hist.len(), 2, "history: {hist:?}");
    assert_eq!(hist[1]["version"], "3.0.0");
    assert_eq!(hist[1]["outcome"], "success");
}

/// Step 6: rescue path. No slot has attempts left; GRUB resets the good slots' counters and
/// boots B.
fn rescue_path_boots_the_good_slot(h: &mut Harness) {
    h.env_set(&["A_LEFT=0", "B_LEFT=0"]);
    let n = h.boot_expect("B", "3.0.0", true);
    h.expect_in_log(
        n,
        "quantix-ab: no slot has boot attempts left",
        "GRUB did not take the rescue path",
    );
    h.expect_in_log(
        n,
        "quantix-ab: saved A_LEFT=3 B_LEFT=2",
        "rescue did not reset the good slots' counters",
    );
    h.expect_env(
        "after the rescue boot",
        &[
            ("ORDER", "B A"),
            ("A_LEFT", "3"),
            ("B_LEFT", "3"),
            ("B_OK", "1"),
        ],
    );
}
