//! `install_image` into real ext4 file systems on loop devices: one image file
//! per slot (this machine's kernel makes no partition devices for loop disks).
//! Needs root: the tests that make loop devices are in the slow tier
//! (ignored by a plain `cargo test`; they fail, never skip, without root).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{is_root, require_tool, run, LoopFile, MountGuard, Sandbox};
use qx_boot::{
    install_image, AbConfig, BootError, ImageFile, InstallRequest, MountConfig, Slot, SlotTarget,
};
use qx_core::Sha256;

/// Two slot file systems (ext4 on loop devices over image files), slot A
/// holding a kernel and initramfs.
struct Slots {
    a: LoopFile,
    b: LoopFile,
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

fn slots(label_a: &str, label_b: &str) -> Slots {
    assert!(
        is_root(),
        "install_loop tests need root (losetup, mkfs.ext4, mount); run them as root"
    );
    require_tool("losetup", "mount");
    require_tool("mkfs.ext4", "e2fsprogs");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_owned();
    let mk = |name: &str, label: &str| {
        let img = dir.join(name);
        let f = fs::File::create(&img).expect("create image");
        f.set_len(64 << 20).expect("size image");
        drop(f);
        let dev = LoopFile::new(&img);
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label])
            .arg(&dev.dev));
        dev
    };
    let a = mk("slot-a.img", label_a);
    let b = mk("slot-b.img", label_b);
    {
        let m = MountGuard::new(&a.dev, &dir.join("mnt-a"), "rw");
        fs::write(m.dir.join("vmlinuz"), b"kernel of slot A").expect("write");
        fs::write(m.dir.join("initramfs"), b"initramfs of slot A").expect("write");
        fs::write(m.dir.join("system.squashfs"), b"system 1.0.0").expect("write");
    }
    Slots {
        a,
        b,
        _dir: tmp,
        dir,
    }
}

fn config(slot_a: SlotTarget, slot_b: SlotTarget, mnt: &Path) -> AbConfig {
    AbConfig {
        slot_a,
        slot_b,
        mount: MountConfig {
            fstype: Some("ext4".into()),
            options: vec!["noatime".into()],
            dir: Some(mnt.to_owned()),
        },
        ..AbConfig::default()
    }
}

fn image(dir: &Path, name: &str, content: &[u8]) -> ImageFile {
    let p = dir.join(name);
    fs::write(&p, content).expect("write");
    ImageFile {
        path: p,
        sha256: Sha256::of(content),
    }
}

/// No temporary slot mount is left below this test's own mount directory (tests run in
/// parallel, so another test's mounts may be there at the same time elsewhere).
fn no_slot_mounts_left(mnt: &Path) {
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let prefix = format!("{}/qx-slot-", mnt.display());
    assert!(
        !mounts.contains(&prefix),
        "a temporary slot mount was left behind below {}:\n{mounts}",
        mnt.display()
    );
}

fn dev(l: &LoopFile) -> SlotTarget {
    SlotTarget::Device(l.dev.display().to_string())
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn install_image_into_ext4_loop_device_and_read_back() {
    let s = slots("QXT-LA", "QXT-LB");
    let sb = Sandbox::new(
        "A",
        &["ORDER=A B", "A_LEFT=3", "A_OK=1", "B_LEFT=0", "B_OK=0"],
    );
    let mnt = s.dir.join("mnt");
    fs::create_dir_all(&mnt).expect("mkdir");
    let cfg = config(dev(&s.a), dev(&s.b), &mnt);
    // a multi-chunk system image (the copy loop reads 1 MiB at a time)
    let system: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
    let req = InstallRequest {
        version: "2.0.0".into(),
        target: None,
        system: image(&s.dir, "system.squashfs", &system),
        kernel: Some(image(&s.dir, "vmlinuz", b"new kernel")),
        initramfs: None, // copied from slot A, which gets mounted read-only
    };
    let r = install_image(&sb.ctx(&cfg), &req).expect("install");
    assert_eq!(r.to, Slot::B);
    assert_eq!(r.target, s.b.dev.display().to_string());
    no_slot_mounts_left(&mnt);

    // read back through a mount of our own
    let m = MountGuard::new(&s.b.dev, &s.dir.join("check-b"), "ro");
    assert_eq!(
        fs::read(m.dir.join("system.squashfs")).expect("read"),
        system
    );
    assert_eq!(
        fs::read(m.dir.join("vmlinuz")).expect("read"),
        b"new kernel"
    );
    assert_eq!(
        fs::read(m.dir.join("initramfs")).expect("read"),
        b"initramfs of slot A"
    );
    drop(m);
    assert_eq!(sb.env(), "ORDER=B A\nA_LEFT=3\nA_OK=1\nB_LEFT=3\nB_OK=0\n");
    let st = qx_boot::AbState::load(sb.root())
        .expect("load")
        .expect("state");
    assert!(st.pending && st.to == Slot::B && st.version == "2.0.0");

    // a second install into B (e.g. after a rollback) replaces the files
    let sb2 = Sandbox::new(
        "A",
        &["ORDER=A B", "A_LEFT=3", "A_OK=1", "B_LEFT=0", "B_OK=0"],
    );
    let req2 = InstallRequest {
        version: "3.0.0".into(),
        target: Some(Slot::B),
        system: image(&s.dir, "system3.squashfs", b"system 3"),
        kernel: None,
        initramfs: None,
    };
    install_image(&sb2.ctx(&cfg), &req2).expect("second install");
    let m = MountGuard::new(&s.b.dev, &s.dir.join("check-b"), "ro");
    assert_eq!(
        fs::read(m.dir.join("system.squashfs")).expect("read"),
        b"system 3"
    );
    assert_eq!(
        fs::read(m.dir.join("vmlinuz")).expect("read"),
        b"kernel of slot A"
    );
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn install_by_label_finds_the_device() {
    let pid = std::process::id();
    let (la, lb) = (format!("QXA{pid}"), format!("QXB{pid}"));
    let s = slots(&la, &lb);
    let sb = Sandbox::new("A", &["ORDER=A B", "A_LEFT=3", "A_OK=1", "B_LEFT=0"]);
    let mnt = s.dir.join("mnt");
    fs::create_dir_all(&mnt).expect("mkdir");
    let cfg = config(
        SlotTarget::Device(format!("LABEL={la}")),
        SlotTarget::Device(format!("LABEL={lb}")),
        &mnt,
    );
    let req = InstallRequest {
        version: "2.0.0".into(),
        target: None,
        system: image(&s.dir, "system.squashfs", b"system 2"),
        kernel: None,
        initramfs: None,
    };
    let r = install_image(&sb.ctx(&cfg), &req).expect("install by label");
    assert!(
        r.target.contains(&format!("LABEL={lb}")) && r.target.contains(&*s.b.dev.to_string_lossy()),
        "{}",
        r.target
    );
    let m = MountGuard::new(&s.b.dev, &s.dir.join("check-b"), "ro");
    assert_eq!(
        fs::read(m.dir.join("system.squashfs")).expect("read"),
        b"system 2"
    );
    no_slot_mounts_left(&mnt);
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn install_refuses_a_mounted_target_device_and_leaves_grubenv() {
    let s = slots("QXT-MA", "QXT-MB");
    let sb = Sandbox::new(
        "A",
        &["ORDER=A B", "A_LEFT=3", "A_OK=1", "B_LEFT=3", "B_OK=1"],
    );
    let mnt = s.dir.join("mnt");
    fs::create_dir_all(&mnt).expect("mkdir");
    let cfg = config(dev(&s.a), dev(&s.b), &mnt);
    let busy = MountGuard::new(&s.b.dev, &s.dir.join("in-use"), "rw");
    fs::write(busy.dir.join("system.squashfs"), b"in use").expect("write");
    let before = fs::read(sb.grubenv()).expect("read");
    let req = InstallRequest {
        version: "2.0.0".into(),
        target: None,
        system: image(&s.dir, "system.squashfs", b"new"),
        kernel: None,
        initramfs: None,
    };
    let err = install_image(&sb.ctx(&cfg), &req).expect_err("mounted target");
    assert!(
        matches!(err, BootError::DeviceInUse { slot: Slot::B, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("in-use"), "{err}");
    assert_eq!(fs::read(sb.grubenv()).expect("read"), before);
    assert_eq!(
        fs::read(busy.dir.join("system.squashfs")).expect("read"),
        b"in use"
    );
}

#[test]
fn install_reports_a_device_that_is_not_a_block_device() {
    let sb = Sandbox::new("A", &["ORDER=A B", "A_LEFT=3", "A_OK=1", "B_LEFT=0"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        SlotTarget::Device("/dev/null".into()),
        SlotTarget::Device(dir.path().join("nodev").display().to_string()),
        dir.path(),
    );
    let req = InstallRequest {
        version: "2.0.0".into(),
        target: None,
        system: image(dir.path(), "system.squashfs", b"x"),
        kernel: Some(image(dir.path(), "vmlinuz", b"k")),
        initramfs: Some(image(dir.path(), "initramfs", b"i")),
    };
    let err = install_image(&sb.ctx(&cfg), &req).expect_err("no device");
    assert!(
        matches!(err, BootError::Device { slot: Slot::B, .. }),
        "{err}"
    );
}
