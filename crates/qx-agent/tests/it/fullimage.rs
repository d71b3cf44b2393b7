//! Full-image (A/B) applies end to end: a real update server on loopback with signed `full`
//! and `mixed` releases, slots A and B as ext4 file systems on REAL loop devices (one image
//! file each: this machine's kernel makes no partition devices for loop disks), a grubenv
//! created and read with `grub-editenv`, `<root>/proc/cmdline` saying `quantix.slot=A`.
//!
//! Needs root (losetup, mkfs.ext4, mount): slow tier, fails (does not skip) without it.
//!
//!     cargo test -p qx-agent --test it fullimage -- --include-ignored

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::MutexGuard;
use std::time::Duration;

use qx_agent::Agent;
use qx_agent::AgentError;
use qx_agent::ApplyOptions;
use qx_core::manifest::{Delta, DeltaAlgorithm, ImageChunks};
use qx_core::status::{Outcome, UpdateState};
use qx_core::{ArtifactName, ArtifactRef, FullImage, Sha256, TargetSlot, UpdateType};
use qx_testkit::drip::{Drip, DripServer};
use qx_testkit::host::{HostConfig, Lab};
use qx_testkit::proxy::FaultProxy;
use qx_testkit::release::{release_path, BuiltRelease, ComponentSpec};
use serde_json::Value;

use crate::support::host::{agent_under, history, qx_update, run_qx_update, update_log};
use crate::support::poll;
use crate::support::sys::{exclusive_mounts, is_root, run, LoopDev, Mount};

// ---------------------------------------------------------------------------------------------
// Slots.

fn editenv(file: &Path, args: &[&str]) -> String {
    run(Command::new("grub-editenv").arg(file).args(args))
}

/// Slots A and B (ext4 on loop devices), slot A holding release 1.0.0's files.
struct Slots {
    // Dropped before the directory holding their image files.
    a: LoopDev,
    b: LoopDev,
    dir: tempfile::TempDir,
}

impl Slots {
    /// Slots of `size` bytes each.
    fn sized(size: u64) -> Slots {
        assert!(
            is_root(),
            "fullimage tests need root (losetup, mkfs.ext4, mount); run them as root"
        );
        let dir = tempfile::Builder::new()
            .prefix("qx-fullimage-")
            .tempdir()
            .unwrap();
        let mk = |name: &str, label: &str| {
            let img = dir.path().join(name);
            let f = fs::File::create(&img).unwrap();
            f.set_len(size).unwrap();
            drop(f);
            let dev = LoopDev::new(&img);
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", label])
                .arg(&dev.dev));
            dev
        };
        let a = mk("slot-a.img", "QXFI-A");
        let b = mk("slot-b.img", "QXFI-B");
        {
            let m = Mount::new(&a.dev, &dir.path().join("mnt-a"), &["-o", "rw"]);
            fs::write(m.dir.join("vmlinuz"), b"kernel of slot A").unwrap();
            fs::write(m.dir.join("initramfs"), b"initramfs of slot A").unwrap();
            fs::write(m.dir.join("system.squashfs"), b"system 1.0.0").unwrap();
        }
        {
            let m = Mount::new(&b.dev, &dir.path().join("mnt-b"), &["-o", "rw"]);
            fs::write(m.dir.join("system.squashfs"), b"old system in slot B").unwrap();
        }
        Slots { a, b, dir }
    }

    /// Every file of slot B: name -> bytes.
    fn read_b(&self) -> Vec<(String, Vec<u8>)> {
        let m = Mount::new(&self.b.dev, &self.dir.path().join("check-b"), &["-o", "ro"]);
        let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(&m.dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }
}

fn no_slot_mounts_left() {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains("qx-slot-"),
        "a temporary slot mount was left behind:\n{mounts}"
    );
}

// ---------------------------------------------------------------------------------------------
// The host.

struct Fixture {
    // Field order = drop order: the host and server first, the loop devices, then the lock.
    lab: Lab,
    slots: Slots,
    _serial: MutexGuard<'static, ()>,
}

impl Fixture {
    fn new(extra: &str) -> Fixture {
        Self::with_slots(extra, 64 << 20)
    }

    /// A fixture whose slots are `size` bytes each.
    fn with_slots(extra: &str, size: u64) -> Fixture {
        let serial = exclusive_mounts();
        let slots = Slots::sized(size);
        let lab = Lab::new().unwrap();
        let f = Fixture {
            lab,
            slots,
            _serial: serial,
        };
        f.write_config(f.lab.server.url(), extra);
        let root = f.root();
        fs::create_dir_all(root.join("proc")).unwrap();
        fs::write(
            root.join("proc/cmdline"),
            "BOOT_IMAGE=/vmlinuz root=/dev/ram0 quantix.slot=A console=ttyS0\n",
        )
        .unwrap();
        fs::create_dir_all(root.join("boot/grub")).unwrap();
        let env = f.grubenv();
        editenv(&env, &["create"]);
        editenv(
            &env,
            &[
                "set",
                "ORDER=A B",
                "A_LEFT=3",
                "A_OK=1",
                "B_LEFT=0",
                "B_OK=0",
            ],
        );
        let script = f.reboot_script();
        fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"reboot $*\" >> {}\n",
                f.reboot_log().display()
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        f
    }

    fn root(&self) -> PathBuf {
        self.lab.host.root().to_owned()
    }

    fn grubenv(&self) -> PathBuf {
        self.root().join("boot/grub/grubenv")
    }

    fn env(&self) -> String {
        editenv(&self.grubenv(), &["list"])
    }

    fn reboot_script(&self) -> PathBuf {
        self.slots.dir.path().join("reboot.sh")
    }

    fn reboot_log(&self) -> PathBuf {
        self.slots.dir.path().join("reboot.log")
    }

    fn write_config(&self, server_url: &str, extra: &str) {
        let mnt = self.slots.dir.path().join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let mut c = HostConfig::new(
            server_url,
            &self.lab.product,
            &self.lab.channel,
            &self.lab.key.public_key_file,
        );
        c.extra = format!(
            "  reboot_command: [\"{}\", \"now\"]\n  ab:\n    grubenv: /boot/grub/grubenv\n    slot_a: {{device: \"{}\"}}\n    slot_b: {{device: \"{}\"}}\n    tries: 3\n    mount: {{fstype: ext4, options: [noatime], dir: \"{}\"}}\n{extra}",
            self.reboot_script().display(),
            self.slots.a.dev.display(),
            self.slots.b.dev.display(),
            mnt.display()
        );
        self.lab.host.write_config(&c).unwrap();
    }

    fn agent(&self) -> Agent {
        agent_under(&self.lab.host.config_path(), &self.root())
    }

    fn state(&self) -> Option<Value> {
        fs::read(self.root().join("quantix/ab-update-state.json"))
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("state is JSON"))
    }

    fn history(&self) -> Vec<Value> {
        history(&self.root())
    }

    fn update_log(&self) -> String {
        update_log(&self.root())
    }

    fn qx_update(&self, args: &[&str]) -> std::process::Output {
        run_qx_update(&self.root(), args)
    }
}

/// A system image of `len` bytes (several 1 MiB copy chunks), distinct per version.
fn system_image(version: &str, len: usize) -> Vec<u8> {
    let seed = version
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b.into()));
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

struct ImageFiles {
    system: Vec<u8>,
    kernel: Option<Vec<u8>>,
    initramfs: Option<Vec<u8>>,
}

fn aref(name: &str, bytes: &[u8]) -> ArtifactRef {
    ArtifactRef {
        artifact: ArtifactName::new(name).unwrap(),
        sha256: Sha256::of(bytes),
        size_bytes: bytes.len() as u64,
    }
}

/// Builds, signs and publishes a `full` release (no components) or a `mixed` one (with them).
fn publish_image(
    lab: &Lab,
    version: &str,
    img: &ImageFiles,
    components: Vec<ComponentSpec>,
) -> BuiltRelease {
    publish_image_with(lab, version, img, components, false)
}

/// [`publish_image`], with the image's content-defined chunks (index and pack) when `chunked`.
fn publish_image_with(
    lab: &Lab,
    version: &str,
    img: &ImageFiles,
    components: Vec<ComponentSpec>,
    chunked: bool,
) -> BuiltRelease {
    publish_image_full(lab, version, img, components, chunked, None)
}

/// [`publish_image_with`], and an image delta from `(version, image)` as the publish tool makes
/// it when `delta_from` names one.
fn publish_image_full(
    lab: &Lab,
    version: &str,
    img: &ImageFiles,
    components: Vec<ComponentSpec>,
    chunked: bool,
    delta_from: Option<(&str, &[u8])>,
) -> BuiltRelease {
    let mixed = !components.is_empty();
    let mut spec = lab.release(version);
    if mixed {
        for c in components {
            spec = spec.component(c);
        }
    } else {
        // ReleaseSpec builds component releases; start from one and turn it into a full one.
        spec = spec.component(ComponentSpec::file(
            "placeholder",
            "/data/bin/placeholder",
            b"x".to_vec(),
        ));
    }
    let mut r = spec.build().unwrap();
    if !mixed {
        r.manifest.components.clear();
        r.artifacts.clear();
    }
    r.manifest.update_type = if mixed {
        UpdateType::Mixed
    } else {
        UpdateType::Full
    };
    r.manifest.full_image = Some(FullImage {
        artifact: ArtifactName::new("system.squashfs").unwrap(),
        sha256: Sha256::of(&img.system),
        size_bytes: img.system.len() as u64,
        kernel: img.kernel.as_deref().map(|k| aref("vmlinuz", k)),
        initramfs: img.initramfs.as_deref().map(|i| aref("initramfs", i)),
        requires_reboot: true,
        target_slot: TargetSlot::Auto,
        chunks: chunked.then(|| chunks_of(&mut r, &img.system)),
        deltas: delta_from
            .map(|(from, base)| vec![image_delta_of(&mut r, from, base, &img.system)])
            .unwrap_or_default(),
    });
    r.manifest.validate().expect("fixture manifest is valid");
    r.artifacts
        .push(("system.squashfs".into(), img.system.clone()));
    if let Some(k) = &img.kernel {
        r.artifacts.push(("vmlinuz".into(), k.clone()));
    }
    if let Some(i) = &img.initramfs {
        r.artifacts.push(("initramfs".into(), i.clone()));
    }
    r.manifest_bytes = r.manifest.to_bytes();
    r.signature = lab.key.sign(&r.manifest_bytes).unwrap();
    r.publish(lab.server.url(), &lab.token).unwrap();
    r
}

/// Cuts `system` into chunks as the publish tool does; the index and the pack become artifacts
/// of `r`.
fn chunks_of(r: &mut BuiltRelease, system: &[u8]) -> ImageChunks {
    let mut pack = Vec::new();
    let index = qx_delta::chunks::pack(system, &mut pack, 3)
        .unwrap()
        .to_bytes();
    let refs = ImageChunks {
        index: aref("system.squashfs.chunks", &index),
        pack: aref("system.squashfs.pack", &pack),
    };
    r.artifacts.push(("system.squashfs.chunks".into(), index));
    r.artifacts.push(("system.squashfs.pack".into(), pack));
    refs
}

/// The image delta from `base` (the image of release `from`) to `system`, as the publish tool
/// makes it; the patch becomes an artifact of `r`.
fn image_delta_of(r: &mut BuiltRelease, from: &str, base: &[u8], system: &[u8]) -> Delta {
    let patch = qx_delta::encode(qx_delta::IMAGE_ALGORITHM, base, system).unwrap();
    let name = "system.squashfs.from-base.delta";
    let d = Delta {
        from_sha256: Sha256::of(base),
        from_size_bytes: base.len() as u64,
        from_version: from.parse().unwrap(),
        artifact: ArtifactName::new(name).unwrap(),
        sha256: Sha256::of(&patch),
        size_bytes: patch.len() as u64,
        algorithm: DeltaAlgorithm::ZstdWindow,
    };
    r.artifacts.push((name.into(), patch));
    d
}

fn full_image(version: &str) -> ImageFiles {
    ImageFiles {
        system: system_image(version, 3_500_000),
        kernel: Some(format!("kernel {version}").into_bytes()),
        initramfs: Some(format!("initramfs {version}").into_bytes()),
    }
}

const ENV_BEFORE: &str = "ORDER=A B\nA_LEFT=3\nA_OK=1\nB_LEFT=0\nB_OK=0\n";
const ENV_AFTER: &str = "ORDER=B A\nA_LEFT=3\nA_OK=1\nB_LEFT=3\nB_OK=0\n";

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn full_image_apply_writes_slot_b_switches_grubenv_and_does_not_reboot() {
    let f = Fixture::new("");
    let img = full_image("2.0.0");
    publish_image(&f.lab, "2.0.0", &img, Vec::new());
    let agent = f.agent();

    // check: the image is a change, nothing is touched
    let report = agent.check().expect("check");
    assert_eq!(report.update_type, "full");
    assert!(report.available);
    assert_eq!(report.changes.len(), 1);
    let c = &report.changes[0];
    assert_eq!(
        (
            c.name.as_str(),
            c.installed.as_deref(),
            c.offered.as_str(),
            c.action.as_str()
        ),
        ("system", None, "2.0.0", "install into slot B")
    );
    assert_eq!(f.env(), ENV_BEFORE);

    let r = agent.apply(&ApplyOptions::default()).expect("apply");
    assert_eq!(r.version, "2.0.0");
    assert_eq!(r.components, vec!["system"]);
    assert_eq!(r.outcome, Outcome::Success);
    let sys = r.system.as_ref().expect("system report");
    assert_eq!(sys.to.as_str(), "B");
    assert_eq!(sys.from.as_str(), "A");
    assert!(!sys.rebooted);
    no_slot_mounts_left();

    assert_slot_b_holds(&f, &img);
    // GRUB tries B next, 3 times; A stays good
    assert_eq!(f.env(), ENV_AFTER);
    assert_pending_and_recorded(&f, "2.0.0");
    // no reboot without --reboot / auto_reboot
    assert!(!f.reboot_log().exists(), "rebooted without being asked");
    // staging cleaned up
    assert!(!f.root().join("data/updates/staging/system-2.0.0").exists());
    assert_eq!(
        agent.status().state,
        UpdateState::Done {
            version: "2.0.0".into()
        }
    );

    // a second check/apply does not write the slot again: it waits for the reboot
    let report = agent.check().expect("check again");
    assert!(!report.available);
    assert_eq!(
        report.changes[0].action,
        "written into slot B; waiting for the reboot"
    );
    let r = agent.apply(&ApplyOptions::default()).expect("apply again");
    assert!(r.system.is_none() && r.components.is_empty());
    assert_eq!(f.env(), ENV_AFTER);
}

/// Slot B holds exactly the image's files, with the manifest's hashes.
fn assert_slot_b_holds(f: &Fixture, img: &ImageFiles) {
    let b = f.slots.read_b();
    let names: Vec<&str> = b.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"initramfs")
            && names.contains(&"system.squashfs")
            && names.contains(&"vmlinuz"),
        "{names:?}"
    );
    for (name, bytes) in &b {
        let want: &[u8] = match name.as_str() {
            "system.squashfs" => &img.system,
            "vmlinuz" => img.kernel.as_deref().unwrap(),
            "initramfs" => img.initramfs.as_deref().unwrap(),
            other => panic!("unexpected file {other} in slot B"),
        };
        assert_eq!(Sha256::of(bytes), Sha256::of(want), "{name}");
    }
}

/// After writing `version` into slot B: the pending state, one history entry of kind full,
/// and the update log lines of the agent and of the slot writer.
fn assert_pending_and_recorded(f: &Fixture, version: &str) {
    let st = f.state().expect("state file");
    assert_eq!(st["pending"], true);
    assert_eq!(st["from"], "A");
    assert_eq!(st["to"], "B");
    assert_eq!(st["version"], version);
    let h = f.history();
    let full: Vec<_> = h.iter().filter(|e| e["kind"] == "full").collect();
    assert_eq!(full.len(), 1, "{h:?}");
    assert_eq!(full[0]["version"], version);
    assert_eq!(full[0]["outcome"], "success");
    assert!(full[0]["reason"].as_str().unwrap().contains("pending"));
    let log = f.update_log();
    assert!(log.contains("downloaded "), "{log}");
    assert!(
        log.contains(&format!("system image {version}: written into slot B")),
        "{log}"
    );
    assert!(
        log.contains("ab: install: wrote system.squashfs into slot B"),
        "{log}"
    );
    assert!(log.contains("no reboot"), "{log}");
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn cli_apply_with_reboot_flag_runs_the_reboot_command() {
    let f = Fixture::new("");
    let img = full_image("2.1.0");
    publish_image(&f.lab, "2.1.0", &img, Vec::new());

    let out = f.qx_update(&["check", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let check: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(check["changes"][0]["name"], "system");
    assert_eq!(check["changes"][0]["action"], "install into slot B");

    let out = f.qx_update(&["apply", "--yes", "--reboot", "--json"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["system"]["to"], "B");
    assert_eq!(r["system"]["rebooted"], true);
    assert_eq!(
        fs::read_to_string(f.reboot_log()).expect("the reboot command ran"),
        "reboot now\n"
    );
    assert_eq!(f.env(), ENV_AFTER);
    assert!(f.update_log().contains("rebooting into slot B"));

    // `qx-update ab status` (wired before the agent is built) sees the pending update
    let out = f.qx_update(&["ab", "status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["booted"], "A");
    assert_eq!(s["next_boot"], "B");
    assert_eq!(s["state"]["pending"], true);
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn auto_reboot_in_config_reboots_after_the_image_is_written() {
    let f = Fixture::new("  auto_reboot: true\n");
    publish_image(&f.lab, "2.2.0", &full_image("2.2.0"), Vec::new());
    let r = f.agent().apply(&ApplyOptions::default()).expect("apply");
    assert!(r.system.as_ref().unwrap().rebooted);
    assert_eq!(fs::read_to_string(f.reboot_log()).unwrap(), "reboot now\n");
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn corrupted_image_on_the_server_is_refused_and_slot_b_untouched() {
    let f = Fixture::new("");
    let img = full_image("3.0.0");
    let r = publish_image(&f.lab, "3.0.0", &img, Vec::new());
    // the server's copy of the image is replaced after publishing (same size, other bytes)
    let on_disk = release_path(
        f.lab.server.release_dir(),
        &f.lab.product,
        &f.lab.channel,
        &r.manifest.version.to_string(),
    )
    .join("system.squashfs");
    assert!(on_disk.exists(), "{} missing", on_disk.display());
    let mut bad = img.system.clone();
    bad[1_000_000] ^= 0xff;
    fs::write(&on_disk, &bad).unwrap();
    let b_before = f.slots.read_b();

    let err = f
        .agent()
        .apply(&ApplyOptions::default())
        .expect_err("corrupt image must be refused");
    assert!(matches!(err, AgentError::Download(_)), "{err}");
    assert_eq!(err.exit_code(), 32);
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    assert!(err.to_string().contains("system.squashfs"), "{err}");

    assert_eq!(f.env(), ENV_BEFORE, "grubenv changed");
    assert_eq!(f.slots.read_b(), b_before, "slot B changed");
    assert!(f.state().is_none(), "state file written");
    assert!(f.history().iter().all(|e| e["kind"] != "full"));
    assert!(!f.reboot_log().exists());
    no_slot_mounts_left();
    // nothing corrupt is kept for a later resume
    let staged = f
        .root()
        .join("data/updates/staging/system-3.0.0/system.squashfs");
    assert!(!staged.exists());
}

/// The temporary files of slot B's image while it is written (in the agent's mount of it).
fn slot_b_temps(f: &Fixture) -> Vec<PathBuf> {
    let mnt = f.slots.dir.path().join("mnt");
    let mut out = Vec::new();
    for m in fs::read_dir(&mnt).into_iter().flatten().flatten() {
        if !m.file_name().to_string_lossy().starts_with("qx-slot-B-") {
            continue;
        }
        for e in fs::read_dir(m.path()).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn image_download_killed_mid_way_resumes_from_the_slot_on_the_next_apply() {
    let f = Fixture::new("");
    // more than two write blocks (4 MiB each), so that some reach the slot before the kill
    let img = ImageFiles {
        system: system_image("4.0.0", 13_000_000),
        kernel: None,
        initramfs: None,
    };
    publish_image(&f.lab, "4.0.0", &img, Vec::new());
    // Every request goes through a recording proxy; the first apply is throttled so that it
    // can be killed (kill -9) in the middle of the image download.
    let proxy = FaultProxy::start(f.lab.server.addr()).unwrap();
    f.write_config(&proxy.url(), "  bandwidth_limit: 3MiB/s\n");
    let mut child = qx_update(&f.root())
        .args(["apply", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qx-update apply");
    let mut partial = 0;
    poll(Duration::from_secs(60), Duration::from_millis(25), || {
        partial = slot_b_temps(&f)
            .first()
            .and_then(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .unwrap_or(0);
        if partial >= 4 << 20 {
            return true;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "apply ended before the image was partly written"
        );
        false
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let temps = slot_b_temps(&f);
    assert_eq!(temps.len(), 1, "{temps:?}");
    let kept = fs::metadata(&temps[0]).expect("temporary file kept").len();
    assert!(kept > 0 && kept < img.system.len() as u64, "{kept}");
    // the slot is unbootable, the booted slot first: as before
    assert_eq!(f.env(), ENV_BEFORE);
    assert!(f.state().is_none());
    // nothing of the image went to the data partition
    assert!(!f.root().join("data/updates/staging/system-4.0.0").exists());

    // the next apply undoes the killed apply's mount and goes on from the temporary file
    f.write_config(&proxy.url(), "");
    proxy.reset_stats();
    let before = proxy.requests().len();
    let r = f.agent().apply(&ApplyOptions::default()).expect("apply");
    assert_eq!(r.components, vec!["system"]);
    let requests = proxy.requests();
    let image_req: Vec<&String> = requests[before..]
        .iter()
        .filter(|r| r.contains("/system.squashfs"))
        .collect();
    assert_eq!(image_req.len(), 1, "{requests:?}");
    assert!(
        image_req[0]
            .to_ascii_lowercase()
            .contains(&format!("range: bytes={kept}-")),
        "the image request after the kill does not resume from {kept}: {}",
        image_req[0]
    );
    let down = proxy.stats().bytes_down;
    assert!(
        down < img.system.len() as u64 - kept + 100_000,
        "{down} bytes fetched again for {} missing",
        img.system.len() as u64 - kept
    );
    assert!(
        f.update_log()
            .contains(&format!("system.squashfs: {kept} bytes already in slot B")),
        "{}",
        f.update_log()
    );
    // kernel and initramfs not shipped: copied from slot A
    let b = f.slots.read_b();
    let get = |n: &str| b.iter().find(|(m, _)| m == n).map(|(_, v)| v.clone());
    assert_eq!(
        Sha256::of(&get("system.squashfs").unwrap()),
        Sha256::of(&img.system)
    );
    assert_eq!(get("vmlinuz").unwrap(), b"kernel of slot A");
    assert_eq!(get("initramfs").unwrap(), b"initramfs of slot A");
    assert_eq!(b.len(), 3, "temporary files left in slot B");
    assert_eq!(f.env(), ENV_AFTER);
    no_slot_mounts_left();
}

/// Replaces the server's copy of release `version`'s image with `bytes`.
fn replace_on_server(f: &Fixture, r: &BuiltRelease, bytes: &[u8]) {
    let on_disk = release_path(
        f.lab.server.release_dir(),
        &f.lab.product,
        &f.lab.channel,
        &r.manifest.version.to_string(),
    )
    .join("system.squashfs");
    assert!(on_disk.exists(), "{} missing", on_disk.display());
    fs::write(&on_disk, bytes).unwrap();
}

/// A refused image: exit code 32 naming the image, grubenv, slot B (no temporary file) and
/// the A/B state as before, no full-image history entry, no mount left.
fn assert_image_refused(f: &Fixture, b_before: &[(String, Vec<u8>)], what: &str) {
    let err = f
        .agent()
        .apply(&ApplyOptions::default())
        .expect_err("a bad image must be refused");
    assert!(matches!(err, AgentError::Download(_)), "{err}");
    assert_eq!(err.exit_code(), 32);
    assert!(err.to_string().contains(what), "{err}");
    assert!(err.to_string().contains("system.squashfs"), "{err}");
    assert_eq!(f.env(), ENV_BEFORE, "grubenv changed");
    assert_eq!(f.slots.read_b(), b_before, "slot B changed");
    assert!(f.state().is_none(), "state file written");
    assert!(f.history().iter().all(|e| e["kind"] != "full"));
    no_slot_mounts_left();
}

/// Serves release `version`'s image with `len` bytes (everything else from the lab's server)
/// and points the host at it.
fn serve_image_of_length(f: &Fixture, version: &str, len: u64) -> DripServer {
    let drip = DripServer::start(
        Some(f.lab.server.addr()),
        Drip {
            path_prefix: format!(
                "/api/v1/{}/releases/{version}/system.squashfs",
                f.lab.product
            ),
            interval: Duration::from_millis(1),
            body_len: len,
        },
    )
    .unwrap();
    f.write_config(&drip.url(), "");
    drip
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn an_image_longer_than_signed_is_refused_and_slot_b_untouched() {
    let f = Fixture::new("");
    let img = full_image("3.1.0");
    publish_image(&f.lab, "3.1.0", &img, Vec::new());
    let _server = serve_image_of_length(&f, "3.1.0", img.system.len() as u64 + 1);
    let b_before = f.slots.read_b();
    assert_image_refused(&f, &b_before, "bytes where the signed manifest");
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn an_image_shorter_than_signed_is_refused_and_slot_b_untouched() {
    let f = Fixture::new("");
    let img = full_image("3.2.0");
    publish_image(&f.lab, "3.2.0", &img, Vec::new());
    let _server = serve_image_of_length(&f, "3.2.0", img.system.len() as u64 - 4096);
    let b_before = f.slots.read_b();
    assert_image_refused(&f, &b_before, "bytes where the signed manifest");
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn a_mixed_release_with_a_bad_image_changes_no_component() {
    let f = Fixture::new("");
    let img = full_image("3.3.0");
    let r = publish_image(
        &f.lab,
        "3.3.0",
        &img,
        vec![ComponentSpec::file(
            "qx-tool",
            "/data/bin/qx-tool",
            b"tool 3.3".to_vec(),
        )],
    );
    let mut bad = img.system.clone();
    bad[5] ^= 0x55;
    replace_on_server(&f, &r, &bad);
    let b_before = f.slots.read_b();
    assert_image_refused(&f, &b_before, "sha256 mismatch");
    assert!(!f.root().join("data/bin/qx-tool").exists());
    assert_eq!(f.lab.host.version("qx-tool"), None);
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn the_read_back_catches_an_image_changed_on_the_disk_after_its_fsync() {
    let f = Fixture::new("");
    let img = full_image("3.4.0");
    publish_image(&f.lab, "3.4.0", &img, Vec::new());
    let b_before = f.slots.read_b();
    // The apply stops after the image's fsync (test-only pause point) and says which file it
    // wrote; one byte of it is changed on the disk before the read-back.
    let fifo = f.slots.dir.path().join("pause");
    run(Command::new("mkfifo").arg(&fifo));
    let child = qx_update(&f.root())
        .args(["apply", "--yes"])
        .env("QX_TEST_PAUSE_AT", "image-synced")
        .env("QX_TEST_PAUSE_FIFO", &fifo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qx-update apply");
    let reached = PathBuf::from(format!("{}.reached", fifo.display()));
    poll(Duration::from_secs(60), Duration::from_millis(20), || {
        reached.exists()
    });
    let temp = PathBuf::from(fs::read_to_string(&reached).unwrap());
    assert!(
        temp.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".system.squashfs."),
        "{}",
        temp.display()
    );
    {
        use std::os::unix::fs::FileExt;
        let file = fs::OpenOptions::new().write(true).open(&temp).unwrap();
        file.write_at(&[img.system[2_000_000] ^ 0xff], 2_000_000)
            .unwrap();
        file.sync_all().unwrap();
    }
    fs::write(&fifo, b"go").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(45), "{stderr}");
    assert!(
        stderr.contains("read back from the disk differs"),
        "{stderr}"
    );
    assert!(!temp.exists(), "the refused temporary file is left");
    assert_eq!(f.env(), ENV_BEFORE);
    assert_eq!(f.slots.read_b(), b_before, "slot B changed");
    assert!(f.state().is_none());
    let h = f.history();
    let last = h.last().expect("history entry");
    assert_eq!(
        (&last["kind"], &last["outcome"]),
        (&"full".into(), &"failed".into())
    );
    no_slot_mounts_left();
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn mixed_release_installs_components_then_the_image() {
    let f = Fixture::new("");
    let img = full_image("5.0.0");
    publish_image(
        &f.lab,
        "5.0.0",
        &img,
        vec![ComponentSpec::file(
            "qx-tool",
            "/data/bin/qx-tool",
            b"#!/bin/sh\necho tool 5\n".to_vec(),
        )],
    );
    let agent = f.agent();
    let report = agent.check().expect("check");
    assert_eq!(report.update_type, "mixed");
    let names: Vec<(&str, &str)> = report
        .changes
        .iter()
        .map(|c| (c.name.as_str(), c.action.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![("qx-tool", "install"), ("system", "install into slot B")]
    );

    let r = agent.apply(&ApplyOptions::default()).expect("apply");
    assert_eq!(r.components, vec!["qx-tool", "system"]);
    assert_eq!(
        fs::read(f.root().join("data/bin/qx-tool")).unwrap(),
        b"#!/bin/sh\necho tool 5\n"
    );
    assert_eq!(f.lab.host.version("qx-tool").as_deref(), Some("5.0.0"));
    assert_eq!(f.env(), ENV_AFTER);
    let kinds: Vec<String> = f
        .history()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, vec!["component", "full"]);
    // the component transaction pruned its staging; the image's was removed after the install
    assert!(!f.root().join("data/updates/staging/5.0.0").exists());
    assert!(!f.root().join("data/updates/staging/system-5.0.0").exists());
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn component_selection_leaves_the_image_alone() {
    let f = Fixture::new("");
    publish_image(
        &f.lab,
        "5.1.0",
        &full_image("5.1.0"),
        vec![ComponentSpec::file(
            "qx-tool",
            "/data/bin/qx-tool",
            b"tool 5.1".to_vec(),
        )],
    );
    let r = f
        .agent()
        .apply(&ApplyOptions {
            components: Some(vec!["qx-tool".into()]),
            allow_downgrade: None,
            ..Default::default()
        })
        .expect("apply");
    assert_eq!(r.components, vec!["qx-tool"]);
    assert!(r.system.is_none());
    assert_eq!(f.env(), ENV_BEFORE);
    assert!(f.state().is_none());
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn image_is_refused_while_the_booted_slot_is_not_marked_good() {
    let f = Fixture::new("");
    editenv(&f.grubenv(), &["set", "A_OK=0"]);
    publish_image(&f.lab, "6.0.0", &full_image("6.0.0"), Vec::new());
    let b_before = f.slots.read_b();
    let err = f
        .agent()
        .apply(&ApplyOptions::default())
        .expect_err("refused");
    assert!(matches!(err, AgentError::SystemImage { .. }), "{err}");
    assert_eq!(err.exit_code(), 45);
    assert_eq!(f.slots.read_b(), b_before);
    assert_eq!(f.env(), "ORDER=A B\nA_LEFT=3\nA_OK=0\nB_LEFT=0\nB_OK=0\n");
    let h = f.history();
    let last = h.last().expect("history entry");
    assert_eq!(last["kind"], "full");
    assert_eq!(last["outcome"], "failed");
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn mixed_release_with_a_failing_component_does_not_write_the_image() {
    let f = Fixture::new("");
    publish_image(
        &f.lab,
        "7.0.0",
        &full_image("7.0.0"),
        vec![
            ComponentSpec::file("qx-tool", "/data/bin/qx-tool", b"tool 7".to_vec())
                .health(vec!["/bin/false".into()]),
        ],
    );
    let b_before = f.slots.read_b();
    let err = f
        .agent()
        .apply(&ApplyOptions::default())
        .expect_err("the component does not take effect");
    assert!(matches!(err, AgentError::NotEffective { .. }), "{err}");
    assert_eq!(f.env(), ENV_BEFORE);
    assert_eq!(f.slots.read_b(), b_before);
    assert!(f.state().is_none());
    assert!(f.history().iter().all(|e| e["kind"] != "full"));
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn after_the_reboot_ab_verify_commits_and_check_shows_the_system_unchanged() {
    let f = Fixture::new("");
    publish_image(&f.lab, "8.0.0", &full_image("8.0.0"), Vec::new());
    f.agent().apply(&ApplyOptions::default()).expect("apply");
    // the reboot, as GRUB does it: B's counter decremented, B booted
    editenv(&f.grubenv(), &["set", "B_LEFT=2"]);
    fs::write(f.root().join("proc/cmdline"), "quantix.slot=B\n").unwrap();

    let out = f.qx_update(&["ab", "boot-check"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("trial boot of version 8.0.0 in slot B"),
        "{out:?}"
    );
    let out = f.qx_update(&["ab", "verify"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("update to version 8.0.0 completed"),
        "{out:?}"
    );
    assert_eq!(f.env(), "ORDER=B A\nA_LEFT=3\nA_OK=1\nB_LEFT=3\nB_OK=1\n");
    let st = f.state().unwrap();
    assert_eq!(st["pending"], false);
    assert_eq!(st["outcome"], "success");

    // the booted slot now runs 8.0.0: nothing to do
    let report = f.agent().check().expect("check");
    assert!(!report.available);
    let c = &report.changes[0];
    assert_eq!(
        (c.name.as_str(), c.installed.as_deref(), c.action.as_str()),
        ("system", Some("8.0.0"), "unchanged")
    );
    // a newer image goes to slot A, the inactive one now
    publish_image(&f.lab, "8.1.0", &full_image("8.1.0"), Vec::new());
    let report = f.agent().check().expect("check");
    assert!(report.available);
    assert_eq!(report.changes[0].action, "install into slot A");
    assert_eq!(report.changes[0].installed.as_deref(), Some("8.0.0"));
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn ab_commands_refuse_an_unknown_key_in_the_ab_section() {
    let f = Fixture::new("    trys: 4\n");
    let out = f.qx_update(&["ab", "status"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("updates.ab") && err.contains("trys"), "{err}");
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn a_rolled_back_image_is_not_written_again() {
    let f = Fixture::new("");
    publish_image(&f.lab, "9.0.0", &full_image("9.0.0"), Vec::new());
    f.agent().apply(&ApplyOptions::default()).expect("apply");
    // slot B used up its 3 attempts; GRUB booted slot A again
    editenv(&f.grubenv(), &["set", "B_LEFT=0"]);
    let out = f.qx_update(&["ab", "boot-check"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ROLLBACK recorded"),
        "{out:?}"
    );
    let st = f.state().unwrap();
    assert_eq!(st["outcome"], "rolled_back");

    let report = f.agent().check().expect("check");
    assert!(!report.available);
    assert_eq!(
        report.changes[0].action,
        "rolled back from slot B earlier; not retried (publish a newer release)"
    );
    let env = f.env();
    let r = f.agent().apply(&ApplyOptions::default()).expect("apply");
    assert!(r.system.is_none());
    assert_eq!(
        f.env(),
        env,
        "grubenv changed by an apply with nothing to do"
    );
    let h = f.history();
    let kinds: Vec<(&str, &str)> = h
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, vec![("full", "success"), ("full", "rolled_back")]);
}

// ---------------------------------------------------------------------------------------------
// Images rebuilt from the booted slot's chunks (docs/deltas.md, "Images").

/// Writes `system` as slot A's (the booted slot's) image.
fn boot_slot_a_with(f: &Fixture, system: &[u8]) {
    let m = Mount::new(
        &f.slots.a.dev,
        &f.slots.dir.path().join("mnt-a-base"),
        &["-o", "rw"],
    );
    fs::write(m.dir.join("system.squashfs"), system).unwrap();
}

/// `old` with 100 kB of noise (found nowhere, compressing to nothing less) inserted at a third
/// and a byte changed near the end: a new release of it.
fn next_release_of(old: &[u8]) -> ImageFiles {
    let mut system = old.to_vec();
    let at = system.len() / 3;
    system.splice(at..at, qx_testkit::data::noise(100_000, 7));
    let end = system.len() - 1000;
    system[end] ^= 0xff;
    ImageFiles {
        system,
        kernel: Some(b"kernel of the next release".to_vec()),
        initramfs: Some(b"initramfs of the next release".to_vec()),
    }
}

/// The agent's peak memory as the update log last recorded it, in KiB.
fn logged_peak_kib(f: &Fixture) -> u64 {
    let log = f.update_log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("peak memory of the agent so far"))
        .expect("the peak memory is logged");
    let tail = line.rsplit("so far: ").next().unwrap();
    tail.trim_end_matches(" KiB)").parse().unwrap()
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn an_image_is_rebuilt_from_the_booted_slots_chunks_fetching_only_what_changed() {
    let f = Fixture::new("");
    let old = system_image("1.0.0", 3_500_000);
    boot_slot_a_with(&f, &old);
    let img = next_release_of(&old);
    publish_image_with(&f.lab, "2.0.0", &img, Vec::new(), true);

    let out = f.qx_update(&["apply", "--yes"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("It was rebuilt from slot A's chunks"),
        "{stdout}"
    );
    assert_slot_b_holds(&f, &img);
    assert_eq!(f.env(), ENV_AFTER);
    let log = f.update_log();
    assert!(
        log.contains("system.squashfs: rebuilt into slot B"),
        "{log}"
    );
    assert!(
        !log.contains("system.squashfs?channel"),
        "the image was downloaded whole:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("rebuilt into slot B"))
        .unwrap();
    let fetched: u64 = line
        .split(": ")
        .nth(2)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        fetched >= 100_000,
        "the inserted bytes come from the pack: {line}"
    );
    assert!(fetched < img.system.len() as u64 / 4, "{line}");
    no_slot_mounts_left();
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn a_spoilt_pack_or_a_booted_slot_without_the_base_still_installs_the_exact_image() {
    // The pack's copy on the server is spoilt: the chunk check catches it, the image is
    // downloaded whole.
    let f = Fixture::new("");
    let old = system_image("1.0.0", 3_500_000);
    boot_slot_a_with(&f, &old);
    let img = next_release_of(&old);
    let r = publish_image_with(&f.lab, "2.0.0", &img, Vec::new(), true);
    let pack = release_path(
        f.lab.server.release_dir(),
        &f.lab.product,
        &f.lab.channel,
        &r.manifest.version.to_string(),
    )
    .join("system.squashfs.pack");
    let mut bytes = fs::read(&pack).unwrap();
    bytes.iter_mut().for_each(|b| *b = !*b);
    fs::write(&pack, &bytes).unwrap();
    f.agent().apply(&ApplyOptions::default()).expect("apply");
    assert_slot_b_holds(&f, &img);
    let log = f.update_log();
    assert!(log.contains("not rebuilt from chunks"), "{log}");
    assert!(log.contains("system.squashfs?channel"), "{log}");
    drop(f);

    // Slot A holds something else entirely: the chunks would cost as much as the image, which
    // is downloaded whole in one stream.
    // (Noise: a pack of structured bytes would compress below the image and be worth it.)
    let f = Fixture::new("");
    let img = ImageFiles {
        system: qx_testkit::data::noise(3_500_000, 3),
        ..full_image("3.0.0")
    };
    publish_image_with(&f.lab, "3.0.0", &img, Vec::new(), true);
    let r = f.agent().apply(&ApplyOptions::default()).expect("apply");
    assert!(r.system.unwrap().rebuilt.is_none());
    assert!(f.update_log().contains("holds too little of the new image"));
    assert_slot_b_holds(&f, &img);
}

/// An image larger than the memory bound is rebuilt with the agent's peak resident memory under
/// 64 MiB: nothing holds the image, the base or the pack whole.
#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn rebuilding_an_image_larger_than_64_mib_keeps_the_agent_under_64_mib() {
    rebuild_96_mib_under_64_mib(false, "system.squashfs: rebuilt into slot B");
}

/// A 96 MiB image rebuilt from slot A's (from its chunks, or a delta when `delta`): the update
/// log says `logged`, the agent's logged peak stays under 64 MiB, slot B holds the image.
fn rebuild_96_mib_under_64_mib(delta: bool, logged: &str) {
    let f = Fixture::with_slots("", 256 << 20);
    let old = system_image("1.0.0", 96 << 20);
    boot_slot_a_with(&f, &old);
    let img = next_release_of(&old);
    let from = delta.then_some(("1.0.0", &old[..]));
    publish_image_full(&f.lab, "2.0.0", &img, Vec::new(), !delta, from);
    let out = f.qx_update(&["apply", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(f.update_log().contains(logged), "{}", f.update_log());
    let peak = logged_peak_kib(&f);
    assert!(peak < 64 << 10, "peak {peak} KiB");
    assert_slot_b_holds(&f, &img);
}

/// kill -9 half-way through a rebuild from chunks: the next apply keeps what the slot file
/// holds, rebuilds the rest, and installs the exact image.
#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn kill_9_during_a_rebuild_from_chunks_then_the_next_apply_finishes_it() {
    kill_9_mid_rebuild_then_finish(false, "system.squashfs: rebuilt into slot B");
}

/// kill -9 at the rebuild's crash point (from chunks, or a delta when `delta`), then an apply
/// that resumes from the slot file, says `logged`, and installs the exact image.
fn kill_9_mid_rebuild_then_finish(delta: bool, logged: &str) {
    let f = Fixture::new("");
    let old = system_image("1.0.0", 24 << 20);
    boot_slot_a_with(&f, &old);
    let img = next_release_of(&old);
    let from = delta.then_some(("1.0.0", &old[..]));
    publish_image_full(&f.lab, "2.0.0", &img, Vec::new(), !delta, from);
    let crash_at = if delta {
        "image-delta-rebuilding"
    } else {
        "image-rebuilding"
    };
    let out = qx_update(&f.root())
        .env("QX_TEST_CRASH_AT", crash_at)
        .args(["apply", "--yes"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "crashed half-way");
    assert_eq!(f.env(), ENV_BEFORE, "not switched");

    let out = f.qx_update(&["apply", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = f.update_log();
    assert!(log.contains("from an interrupted apply; resuming"), "{log}");
    assert!(log.contains(logged), "{log}");
    assert_slot_b_holds(&f, &img);
    assert_eq!(f.env(), ENV_AFTER);
    no_slot_mounts_left();
}

// ---------------------------------------------------------------------------------------------
// Images rebuilt from the booted slot's image and a delta (docs/deltas.md, "Images").

fn refused_deltas(f: &Fixture) -> String {
    fs::read_to_string(f.root().join("data/updates/deltas-refused.json")).unwrap_or_default()
}

/// A host booted on a 3.5 MB image 1.0.0 in slot A, whose next release 2.0.0 is published
/// with an image delta from it (and its chunks when `chunked`): the fixture, the new image and
/// the release.
fn booted_with_a_delta_release(chunked: bool) -> (Fixture, ImageFiles, BuiltRelease) {
    let f = Fixture::new("");
    let old = system_image("1.0.0", 3_500_000);
    boot_slot_a_with(&f, &old);
    let img = next_release_of(&old);
    let from = Some(("1.0.0", &old[..]));
    let r = publish_image_full(&f.lab, "2.0.0", &img, Vec::new(), chunked, from);
    (f, img, r)
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn an_image_is_rebuilt_from_the_booted_image_and_a_delta_downloading_only_the_patch() {
    let (f, img, r) = booted_with_a_delta_release(true);
    let patch_bytes = r.manifest.full_image.as_ref().unwrap().deltas[0].size_bytes;
    assert!(patch_bytes < 200_000, "{patch_bytes}");

    let out = f.qx_update(&["apply", "--yes"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("It was rebuilt from slot A's image and a delta"),
        "{stdout}"
    );
    assert_slot_b_holds(&f, &img);
    assert_eq!(f.env(), ENV_AFTER);
    let log = f.update_log();
    assert!(
        log.contains(&format!(
            "rebuilt into slot B from slot A's image and system.squashfs.from-base.delta ({patch_bytes} bytes downloaded"
        )),
        "{log}"
    );
    for whole in ["system.squashfs?channel", "system.squashfs.pack"] {
        assert!(!log.contains(whole), "{whole} was downloaded:\n{log}");
    }
    let staged = f
        .root()
        .join("data/updates/staging/2.0.0/system.squashfs.from-base.delta");
    assert!(!staged.exists(), "the patch is removed once used");
    no_slot_mounts_left();
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn a_corrupt_image_delta_is_refused_for_good_and_the_chunks_rebuild_the_exact_image() {
    let (f, img, r) = booted_with_a_delta_release(true);
    let delta = r.manifest.full_image.as_ref().unwrap().deltas[0].clone();
    let on_server = release_path(
        f.lab.server.release_dir(),
        &f.lab.product,
        &f.lab.channel,
        "2.0.0",
    )
    .join(delta.artifact.as_str());
    let mut bytes = fs::read(&on_server).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&on_server, &bytes).unwrap();

    let report = f.agent().apply(&ApplyOptions::default()).expect("apply");
    let rebuilt = report
        .system
        .unwrap()
        .rebuilt
        .expect("rebuilt from the chunks");
    assert_eq!(rebuilt.method, qx_agent::RebuildMethod::Chunks);
    assert_slot_b_holds(&f, &img);
    let log = f.update_log();
    assert!(
        log.contains("delta system.squashfs.from-base.delta refused"),
        "{log}"
    );
    assert!(refused_deltas(&f).contains(&delta.sha256.to_hex()));
    no_slot_mounts_left();
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn a_booted_image_other_than_the_deltas_base_gets_the_whole_image_and_refuses_nothing() {
    let f = Fixture::new("");
    let old = system_image("1.0.0", 3_500_000);
    let other = system_image("0.9.0", 3_500_000);
    boot_slot_a_with(&f, &other);
    let img = next_release_of(&old);
    publish_image_full(
        &f.lab,
        "2.0.0",
        &img,
        Vec::new(),
        false,
        Some(("1.0.0", &old)),
    );
    let report = f.agent().apply(&ApplyOptions::default()).expect("apply");
    assert!(report.system.unwrap().rebuilt.is_none());
    assert_slot_b_holds(&f, &img);
    assert!(f.update_log().contains("system.squashfs?channel"));
    assert_eq!(refused_deltas(&f), "");
}

/// An image larger than the memory bound is rebuilt from a delta with the agent's peak resident
/// memory under 64 MiB: a base window, a segment and a frame at a time.
#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn rebuilding_an_image_larger_than_64_mib_from_a_delta_keeps_the_agent_under_64_mib() {
    rebuild_96_mib_under_64_mib(
        true,
        "from slot A's image and system.squashfs.from-base.delta",
    );
}

/// kill -9 half-way through a rebuild from a delta: the next apply keeps what the slot file
/// holds, downloads nothing of the patch again, and installs the exact image.
#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn kill_9_during_a_rebuild_from_a_delta_then_the_next_apply_finishes_it() {
    kill_9_mid_rebuild_then_finish(true, "rebuilt into slot B from slot A's image");
}
