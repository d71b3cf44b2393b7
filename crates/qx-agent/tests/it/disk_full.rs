//! A small, full disk (issue 11, items 2 and 3): the host's `/data` is a 30 MiB ext4 file
//! system on a REAL loop device, so the downloads, the agent's staging and the installed
//! components all compete for it.
//!
//! - A release too big for the disk is refused by the free-space check (which counts the
//!   unpacked size, not only the download), nothing of it remains, and a small release then
//!   installs.
//! - A disk that fills up during the extraction anyway (here: no inode left) is reported as
//!   out of space (exit 31, HTTP 507), never as an unsafe archive, and its staging is removed.
//!
//! Needs root (losetup, mkfs.ext4, mount): slow tier, fails (does not skip) without it.
//!
//!     cargo test -p qx-agent --test it disk_full -- --include-ignored

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::MutexGuard;

use axum::response::IntoResponse;
use qx_agent::daemon::api::ApiError;
use qx_agent::daemon::RunError;
use qx_agent::{code, ApplyOptions};
use qx_testkit::host::Lab;
use qx_testkit::release::ComponentSpec;
use serde_json::Value;

use crate::support::api::{state_of, ApiServer, Events, TOKEN};
use crate::support::host::{agent, history, run_qx_update, stray_temps};
use crate::support::runtime;
use crate::support::sys::{exclusive_mounts, is_root, run, LoopDev, Mount};

/// The size of the host's `/data` file system.
const DISK_BYTES: u64 = 30 << 20;

/// A lab whose host has its `/data` on a 30 MiB ext4 file system of its own.
struct SmallDisk {
    // Field order = drop order: unmounted (and the loop device detached) before the host's
    // directory and the image file go; the lock last.
    data: Mount,
    lab: Lab,
    _image: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl SmallDisk {
    /// `mkfs_args`: more arguments for mkfs.ext4 (e.g. `-N 256` for few inodes).
    fn new(mkfs_args: &[&str]) -> SmallDisk {
        assert!(
            is_root(),
            "disk_full tests need root (losetup, mkfs.ext4, mount); run them as root"
        );
        let serial = exclusive_mounts();
        let image = tempfile::Builder::new()
            .prefix("qx-small-disk-")
            .tempdir()
            .unwrap();
        let img = image.path().join("data.img");
        fs::File::create(&img).unwrap().set_len(DISK_BYTES).unwrap();
        let dev = LoopDev::new(&img);
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "QXDATA"])
            .args(mkfs_args)
            .arg(&dev.dev));
        let lab = Lab::new().unwrap();
        let data = Mount::owning(dev, &lab.host.path("/data"), &["-o", "rw"]);
        for d in ["bin", "share", "versions", "updates"] {
            fs::create_dir_all(data.dir.join(d)).unwrap();
        }
        SmallDisk {
            data,
            lab,
            _image: image,
            _serial: serial,
        }
    }

    fn root(&self) -> &Path {
        self.lab.host.root()
    }

    fn free(&self) -> u64 {
        qx_agent::download::free_space(&self.data.dir).unwrap()
    }

    fn free_inodes(&self) -> u64 {
        rustix::fs::statvfs(&self.data.dir).unwrap().f_favail
    }

    fn staging(&self) -> PathBuf {
        self.data.dir.join("updates/staging")
    }

    /// What is left in the agent's staging directory.
    fn staged(&self) -> Vec<String> {
        fs::read_dir(self.staging())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path().display().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Publishes `version` with one directory component `name` installed at `/data/share/name`.
    fn publish_tree(&self, version: &str, name: &str, files: Vec<(String, Vec<u8>, u32)>) {
        let install = format!("/data/share/{name}");
        self.lab
            .publish(
                &self
                    .lab
                    .release(version)
                    .component(ComponentSpec::tree(name, &install, files)),
            )
            .unwrap();
    }
}

/// `len` bytes that do not compress, different for each `seed`.
fn noise(len: u64, seed: u64) -> Vec<u8> {
    qx_testkit::data::noise(len as usize, seed)
}

/// `total` bytes of noise in files of at most 2 MiB.
fn noise_files(total: u64, seed: u64) -> Vec<(String, Vec<u8>, u32)> {
    let chunk = 2 << 20;
    (0..total.div_ceil(chunk))
        .map(|i| {
            let len = chunk.min(total - i * chunk);
            (format!("blob{i}"), noise(len, seed + i), 0o644)
        })
        .collect()
}

/// `n` empty files: next to no bytes, one inode each.
fn empty_files(n: u64) -> Vec<(String, Vec<u8>, u32)> {
    (0..n)
        .map(|i| (format!("f{i:05}"), Vec::new(), 0o644))
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Nothing of the failed apply is left: no staging, no temporaries, no component.
fn nothing_left(disk: &SmallDisk, component: &str) {
    assert!(
        disk.staged().is_empty(),
        "staging left behind: {:?}",
        disk.staged()
    );
    let temps = stray_temps(&disk.data.dir);
    assert!(temps.is_empty(), "temporaries left behind: {temps:?}");
    assert!(!disk.data.dir.join("share").join(component).exists());
    assert!(!disk.data.dir.join("versions").join(component).exists());
}

// ---------------------------------------------------------------------------------------------
// Item 2: a release too big for the disk, then a small one.

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn release_too_big_for_the_disk_leaves_nothing_and_a_small_release_then_installs() {
    let disk = SmallDisk::new(&[]);
    let free = disk.free();
    // The download fits, the download and its extraction together do not.
    let big = free * 6 / 10;
    disk.publish_tree("2.0.0", "big", noise_files(big, 1));

    let out = run_qx_update(disk.root(), &["apply", "--yes"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code::NO_SPACE), "{err}");
    assert!(err.contains("not enough free space"), "{err}");
    assert!(!err.contains("unsafe archive"), "{err}");
    nothing_left(&disk, "big");
    let after = disk.free();
    assert!(
        after + (1 << 20) >= free,
        "the failed apply still holds {} bytes of the disk",
        free.saturating_sub(after)
    );

    // A small release (it would not fit beside what the big one used to leave) installs.
    let small = free * 3 / 10;
    let files = noise_files(small, 7);
    disk.publish_tree("2.0.1", "small", files.clone());
    let out = run_qx_update(disk.root(), &["apply", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (name, bytes, _) in &files {
        assert_eq!(
            &fs::read(disk.data.dir.join("share/small").join(name)).unwrap(),
            bytes
        );
    }
    assert!(disk.staged().is_empty(), "{:?}", disk.staged());
    let outcomes: Vec<Value> = history(disk.root())
        .iter()
        .map(|h| h["outcome"].clone())
        .collect();
    assert_eq!(
        outcomes.last(),
        Some(&Value::from("success")),
        "{outcomes:?}"
    );
}

/// Staging of another version (left by an older agent or a crash) is removed when an apply
/// starts, before its download needs the space.
#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn staging_of_another_version_is_removed_when_an_apply_starts() {
    let disk = SmallDisk::new(&[]);
    let free = disk.free();
    let stale = disk.staging().join("1.9.0");
    fs::create_dir_all(&stale).unwrap();
    fs::write(stale.join("old.tar.zst"), noise(free * 6 / 10, 3)).unwrap();
    disk.publish_tree("2.0.0", "app", noise_files(free * 3 / 10, 4));

    let out = run_qx_update(disk.root(), &["apply", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stale.exists(), "stale staging kept");
    assert!(disk.data.dir.join("share/app/blob0").exists());
}

// ---------------------------------------------------------------------------------------------
// Item 3: the disk fills up during the extraction.

/// A release of more empty files than the disk has inodes left: the byte count fits, the
/// extraction fails with ENOSPC.
fn inode_exhausting_release(disk: &SmallDisk, version: &str) {
    let n = disk.free_inodes() + 64;
    disk.publish_tree(version, "many", empty_files(n));
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn disk_full_during_extraction_is_out_of_space_not_an_unsafe_archive() {
    let disk = SmallDisk::new(&["-N", "256"]);
    inode_exhausting_release(&disk, "3.0.0");

    let out = run_qx_update(disk.root(), &["apply", "--yes"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code::NO_SPACE), "{err}");
    assert!(err.contains("out of space"), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!err.contains("unsafe archive"), "{err}");
    nothing_left(&disk, "many");
}

#[test]
#[ignore = "slow tier: needs root and loop devices; `cargo xtask test` runs it"]
fn disk_full_during_extraction_is_507_in_the_host_api() {
    let disk = SmallDisk::new(&["-N", "256"]);
    inode_exhausting_release(&disk, "3.0.0");

    // Through the daemon's API: the apply starts (202) and fails as out of space.
    runtime().block_on(async {
        let api = ApiServer::start(agent(&disk.lab), TOKEN);
        let mut events = Events::new(api.get("/api/v1/updates/events").send().await.unwrap());
        let resp = api.post("/api/v1/updates/apply").send().await.unwrap();
        assert_eq!(resp.status(), 202);
        let end = events.until(&["done", "failed"]).await;
        assert_eq!(state_of(&end), "failed", "{end}");
        let reason = end["state"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("out of space"), "{end}");
        assert!(!reason.contains("unsafe archive"), "{end}");
        // The apply answered 202 at once: its failure carries the API's status for it.
        assert_eq!(end["state"]["http_status"], 507, "{end}");
        assert_eq!(end["state"]["code"], code::NO_SPACE, "{end}");
        api.shutdown().await;
    });
    nothing_left(&disk, "many");

    // The error the apply returns is the API's 507 with a JSON body naming it.
    let err = agent(&disk.lab)
        .apply(&ApplyOptions::default())
        .expect_err("the disk is still too small");
    assert_eq!(err.exit_code(), code::NO_SPACE, "{err}");
    let response = ApiError::from(RunError::Agent(err)).into_response();
    assert_eq!(response.status(), 507);
    let body = runtime().block_on(async {
        axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap()
    });
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("out of space"),
        "{body}"
    );
    assert_eq!(body["code"], code::NO_SPACE, "{body}");
    nothing_left(&disk, "many");
}
