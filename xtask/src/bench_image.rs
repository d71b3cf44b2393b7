//! `cargo xtask bench image`: a full-image update into the inactive A/B slot, end to end,
//! against the physical limits and RAUC 1.8, on this machine, in one run.
//!
//! Setup (needs root; installs `rauc`, `squashfs-tools`, `dbus-daemon`, `curl`, `grub-common`,
//! `e2fsprogs` and `openssl` once when missing):
//! - the image: a squashfs of real files (`mksquashfs /usr/lib/x86_64-linux-gnu
//!   /usr/lib/chromium /usr/share/locale`, about 450 MB), kept in `target/bench-image/` and
//!   reused;
//! - slots: zero-filled files on loop devices with `--direct-io=on` (I/O reaches the disk,
//!   not the host's page cache); Quantix slots A and B are ext4 (`-E nodiscard`), RAUC's are
//!   raw; every loop device is detached at the end;
//! - a release `qx-update-server` on loopback, a full release published with
//!   `qx-publish publish`, a host root whose `updates.ab` names the loop devices;
//! - RAUC: `bootloader=noop`, a plain bundle of the same image for a raw slot, a fresh
//!   `rauc service --override-boot-slot=A` under `dbus-run-session` per run (started before
//!   the timing).
//!
//! Contenders (each timing ends with `sync`, so every one ends durable), one warm-up round and
//! `QX_BENCH_ROUNDS` (default 5) rounds with the order rotated, sources read into the page
//! cache before each run; the median is reported:
//! - `qx-update apply --yes` (download + install into slot B, grubenv switched);
//! - `curl -o /dev/null` of the artifact from the same server;
//! - `cp` + `sync` of the image into the same kind of ext4 slot;
//! - `rauc install` of the bundle on the local disk into the raw slot.
//!
//! Times come from `Instant` (a monotonic clock).

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::benchmarks::update_section;
use crate::process::{target_dir, workspace_root, UpdateServer};

const START: &str = "<!-- bench-image:start -->";
const END: &str = "<!-- bench-image:end -->";
const PRODUCT: &str = "quantix-os";
const CHANNEL: &str = "dev";
const VERSION: &str = "2.0.0";
const TOKEN: &str = "bench-token";

/// What the image benchmark installs when missing.
pub const PACKAGES: &[&str] = &[
    "rauc",
    "squashfs-tools",
    "dbus-daemon",
    "curl",
    "grub-common",
    "e2fsprogs",
    "openssl",
    "time",
];

/// The contenders, in the order of the first round.
const CONTENDERS: [&str; 4] = ["qx", "rauc", "cp", "curl"];

pub fn run() -> Result<()> {
    if cfg!(debug_assertions) {
        return rerun_as_release();
    }
    ensure!(
        rustix::process::geteuid().is_root(),
        "bench image needs root (loop devices, mounts)"
    );
    let rounds: usize = std::env::var("QX_BENCH_ROUNDS")
        .unwrap_or_else(|_| "5".into())
        .parse()
        .context("QX_BENCH_ROUNDS: an integer")?;
    let bin = build_programs()?;
    let base = target_dir().join("bench-image");
    fs::create_dir_all(&base)?;
    let image = make_image(&base)?;
    let work = tempfile::Builder::new().prefix("run-").tempdir_in(&base)?;
    let mut bench = Bench::set_up(work.path(), &bin, &image)?;
    let result = bench.measure(rounds);
    bench.tear_down();
    let times = result?;
    bench.facts.load = format!("{} → {}", bench.facts.load, loadavg());
    let section = render(&bench.facts, &times, rounds, &phases(&bench.qx_logs));
    println!("{section}");
    update_section(
        &workspace_root().join("BENCHMARKS.md"),
        START,
        END,
        &section,
    )?;
    eprintln!("BENCHMARKS.md updated (section \"Full-image install\")");
    Ok(())
}

/// What is measured must be a release build: runs this benchmark again as one.
fn rerun_as_release() -> Result<()> {
    eprintln!("bench image: re-running as a release build");
    let st = Command::new(env!("CARGO"))
        .args(["run", "--release", "--quiet", "--package", "xtask", "--"])
        .args(["bench", "image"])
        .status()
        .context("running cargo")?;
    ensure!(
        st.success(),
        "the release build of the benchmark failed ({st})"
    );
    Ok(())
}

/// Builds the release server, agent and publish tool; returns their directory.
fn build_programs() -> Result<PathBuf> {
    eprintln!("bench image: building the release server, agent and publish tool");
    let st = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet"])
        .args(["-p", "qx-server", "-p", "qx-agent", "-p", "qx-publish"])
        .status()
        .context("running cargo build")?;
    ensure!(st.success(), "cargo build failed ({st})");
    Ok(target_dir().join("release"))
}

/// The squashfs of real files (built once, reused).
fn make_image(base: &Path) -> Result<PathBuf> {
    let image = base.join("system.squashfs");
    if image.exists() {
        return Ok(image);
    }
    eprintln!("bench image: building the squashfs (once)");
    let tmp = base.join("system.squashfs.tmp");
    sh(Command::new("mksquashfs")
        .args([
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/chromium",
            "/usr/share/locale",
        ])
        .arg(&tmp)
        .args(["-noappend", "-no-progress", "-quiet", "-processors", "2"]))?;
    fs::rename(&tmp, &image)?;
    Ok(image)
}

/// Runs `cmd` to its end; its failure (with its stderr) is an error.
fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A loop device over a zero-filled file, detached on drop.
struct Loop {
    dev: String,
}

impl Loop {
    fn new(file: &Path, mib: u64) -> Result<Loop> {
        sh(Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", file.display()))
            .args([
                "bs=4M",
                &format!("count={}", mib / 4),
                "conv=fsync",
                "status=none",
            ]))?;
        let dev = sh(Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(file))?
        .trim()
        .to_owned();
        Ok(Loop { dev })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// What the section reports besides the times.
struct Facts {
    image_bytes: u64,
    cpus: String,
    kernel: String,
    rauc: String,
    /// The 1-minute load average at the start (and, once measured, at the end).
    load: String,
}

/// The 1-minute load average (other work on the machine shows in the spread).
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split(' ').next().map(str::to_owned))
        .unwrap_or_default()
}

struct Bench {
    dir: PathBuf,
    bin: PathBuf,
    image: PathBuf,
    root: PathBuf,
    server: Option<UpdateServer>,
    artifact: PathBuf,
    qx_a: Loop,
    qx_b: Loop,
    _rauc_a: Loop,
    rauc_b: Loop,
    facts: Facts,
    /// Each measured `qx` run: its time and its update log.
    qx_logs: Vec<(f64, String)>,
}

impl Bench {
    fn set_up(dir: &Path, bin: &Path, image: &Path) -> Result<Bench> {
        let image_bytes = fs::metadata(image)?.len();
        // Room for the image and some spare (not for two images: the old one is removed first).
        let slot_mib = ((image_bytes >> 20) + 512) / 4 * 4;
        eprintln!("bench image: slots on loop devices ({slot_mib} MiB each for B)");
        let qx_a = Loop::new(&dir.join("qxA.img"), 128)?;
        let qx_b = Loop::new(&dir.join("qxB.img"), slot_mib)?;
        let rauc_a = Loop::new(&dir.join("rA.img"), 128)?;
        let rauc_b = Loop::new(&dir.join("rB.img"), slot_mib)?;
        for l in [&qx_a, &qx_b] {
            sh(Command::new("mkfs.ext4").args(["-q", "-F", "-E", "nodiscard", &l.dev]))?;
        }
        let mut bench = Bench {
            dir: dir.to_owned(),
            bin: bin.to_owned(),
            image: image.to_owned(),
            root: dir.join("qxroot"),
            server: None,
            artifact: PathBuf::new(),
            qx_a,
            qx_b,
            _rauc_a: rauc_a,
            rauc_b,
            qx_logs: Vec::new(),
            facts: Facts {
                image_bytes,
                cpus: std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .to_string(),
                kernel: sh(Command::new("uname").arg("-r"))?.trim().to_owned(),
                rauc: sh(Command::new("rauc").arg("--version"))?.trim().to_owned(),
                load: loadavg(),
            },
        };
        bench.fill_slot_a()?;
        bench.start_server_and_publish()?;
        bench.write_host()?;
        bench.write_rauc()?;
        Ok(bench)
    }

    fn mount(&self, dev: &str) -> Result<PathBuf> {
        let m = self.dir.join("m");
        fs::create_dir_all(&m)?;
        sh(Command::new("mount").args(["-o", "noatime", dev]).arg(&m))?;
        Ok(m)
    }

    fn umount(&self) -> Result<()> {
        sh(Command::new("umount").arg(self.dir.join("m"))).map(|_| ())
    }

    /// Slot A, the booted one, holds a kernel and an initramfs (the release ships none).
    fn fill_slot_a(&self) -> Result<()> {
        let m = self.mount(&self.qx_a.dev)?;
        fs::write(m.join("vmlinuz"), b"kernel of slot A")?;
        fs::write(m.join("initramfs"), b"initramfs of slot A")?;
        self.umount()
    }

    fn start_server_and_publish(&mut self) -> Result<()> {
        let releases = self.dir.join("releases");
        fs::create_dir_all(&releases)?;
        let mut cmd = UpdateServer::command(&self.bin.join("qx-update-server"), &releases, TOKEN);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let server = UpdateServer::start(cmd, Duration::from_secs(30))?;
        let keys = self.dir.join("keys");
        sh(Command::new(self.bin.join("qx-publish"))
            .args(["keygen", "--out"])
            .arg(&keys))?;
        let spec = self.dir.join("release.toml");
        fs::write(
            &spec,
            format!(
                "product = \"{PRODUCT}\"\nversion = \"{VERSION}\"\nchannel = \"{CHANNEL}\"\n\n[full_image]\nsquashfs = \"{}\"\n",
                self.image.display()
            ),
        )?;
        eprintln!("bench image: publishing the full release");
        sh(Command::new(self.bin.join("qx-publish"))
            .env("QX_PUBLISH_TOKEN", TOKEN)
            .args(["publish", "--spec"])
            .arg(&spec)
            .arg("--key")
            .arg(keys.join("qx-publish.key"))
            .args(["--server", server.url().base()]))?;
        self.artifact = releases
            .join(PRODUCT)
            .join(CHANNEL)
            .join(VERSION)
            .join("system.squashfs");
        ensure!(
            self.artifact.exists(),
            "{} not published",
            self.artifact.display()
        );
        self.server = Some(server);
        Ok(())
    }

    fn url(&self) -> String {
        let base = self.server.as_ref().map(|s| s.url().base().to_owned());
        format!(
            "{}/api/v1/{PRODUCT}/releases/{VERSION}/system.squashfs?channel={CHANNEL}",
            base.unwrap_or_default().trim_end_matches('/')
        )
    }

    /// The host root: booted slot A, the agent's configuration naming the loop devices.
    fn write_host(&self) -> Result<()> {
        let r = &self.root;
        for d in [
            "proc",
            "boot/grub",
            "etc/limiquantix",
            "var/log/quantix",
            "mnt",
        ] {
            fs::create_dir_all(r.join(d))?;
        }
        fs::write(r.join("proc/cmdline"), "quantix.slot=A\n")?;
        fs::copy(
            self.dir.join("keys/qx-publish.pub"),
            r.join("etc/limiquantix/update-key.pub"),
        )?;
        let server = self.server.as_ref().map(|s| s.url().base().to_owned());
        let yaml = format!(
            "node:\n  name: bench-host\nupdates:\n  enabled: true\n  server_url: \"{}\"\n  product: {PRODUCT}\n  channel: {CHANNEL}\n  trusted_keys: [/etc/limiquantix/update-key.pub]\n  ab:\n    grubenv: /boot/grub/grubenv\n    slot_a: {{device: \"{}\"}}\n    slot_b: {{device: \"{}\"}}\n    tries: 3\n    mount: {{fstype: ext4, options: [noatime], dir: \"{}\"}}\n",
            server.unwrap_or_default(),
            self.qx_a.dev,
            self.qx_b.dev,
            r.join("mnt").display()
        );
        fs::write(r.join("etc/limiquantix/node.yaml"), yaml)?;
        Ok(())
    }

    /// RAUC's key, system configuration (raw slots) and plain bundle of the same image.
    fn write_rauc(&self) -> Result<()> {
        let d = self.dir.join("rauc");
        for sub in ["data", "mnt", "src"] {
            fs::create_dir_all(d.join(sub))?;
        }
        sh(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:4096", "-nodes", "-days", "365",
            ])
            .args(["-subj", "/O=qx bench/CN=qx bench signer", "-keyout"])
            .arg(d.join("key.pem"))
            .arg("-out")
            .arg(d.join("cert.pem")))?;
        fs::write(
            d.join("system.conf"),
            format!(
                "[system]\ncompatible=qx-bench\nbootloader=noop\ndata-directory={}\nmountprefix={}\n\n[keyring]\npath={}\n\n[slot.rootfs.0]\ndevice={}\ntype=raw\nbootname=A\ninstall-same=true\n\n[slot.rootfs.1]\ndevice={}\ntype=raw\nbootname=B\ninstall-same=true\n",
                d.join("data").display(),
                d.join("mnt").display(),
                d.join("cert.pem").display(),
                self._rauc_a.dev,
                self.rauc_b.dev
            ),
        )?;
        fs::hard_link(&self.image, d.join("src/rootfs.squashfs"))?;
        fs::write(
            d.join("src/manifest.raucm"),
            format!("[update]\ncompatible=qx-bench\nversion={VERSION}\n\n[image.rootfs]\nfilename=rootfs.squashfs\n"),
        )?;
        eprintln!("bench image: building the RAUC bundle");
        sh(Command::new("rauc")
            .arg("bundle")
            .arg(format!("--cert={}", d.join("cert.pem").display()))
            .arg(format!("--key={}", d.join("key.pem").display()))
            .arg(d.join("src"))
            .arg(d.join("bundle.raucb")))?;
        fs::remove_file(d.join("src/rootfs.squashfs"))?;
        Ok(())
    }

    /// A warm-up round, then `rounds` rounds with the order rotated; seconds per contender.
    fn measure(&mut self, rounds: usize) -> Result<Vec<(String, Vec<f64>)>> {
        let mut times: Vec<(String, Vec<f64>)> = CONTENDERS
            .iter()
            .map(|c| (c.to_string(), Vec::new()))
            .collect();
        for round in 0..=rounds {
            for k in 0..CONTENDERS.len() {
                let i = (k + round) % CONTENDERS.len();
                let secs = self.one(CONTENDERS[i])?;
                eprintln!("bench image: round {round} {} {secs:.3} s", CONTENDERS[i]);
                if round == 0 {
                    self.check(CONTENDERS[i])?;
                    self.qx_logs.clear();
                } else {
                    times[i].1.push(secs);
                }
            }
        }
        Ok(times)
    }

    /// Reads `paths` into the page cache, then `sync`.
    fn prewarm(&self, paths: &[&Path]) -> Result<()> {
        for p in paths {
            std::io::copy(&mut fs::File::open(p)?, &mut std::io::sink())?;
        }
        sh(&mut Command::new("sync")).map(|_| ())
    }

    fn one(&mut self, contender: &str) -> Result<f64> {
        match contender {
            "qx" => self.qx(),
            "rauc" => self.rauc(),
            "cp" => self.cp(),
            "curl" => {
                self.prewarm(&[&self.artifact])?;
                let t0 = Instant::now();
                sh(Command::new("curl").args(["-sf", "-o", "/dev/null", &self.url()]))?;
                Ok(t0.elapsed().as_secs_f64())
            }
            other => bail!("unknown contender {other}"),
        }
    }

    /// `qx-update apply --yes` + `sync`, from "booted A, good; B inactive".
    fn qx(&mut self) -> Result<f64> {
        let r = &self.root;
        let _ = fs::remove_file(r.join("quantix/ab-update-state.json"));
        let _ = fs::remove_dir_all(r.join("data/updates/staging"));
        let env = r.join("boot/grub/grubenv");
        let _ = fs::remove_file(&env);
        sh(Command::new("grub-editenv").arg(&env).arg("create"))?;
        sh(Command::new("grub-editenv").arg(&env).args([
            "set",
            "ORDER=A B",
            "A_LEFT=3",
            "A_OK=1",
            "B_LEFT=0",
            "B_OK=0",
        ]))?;
        self.prewarm(&[&self.artifact])?;
        let t0 = Instant::now();
        sh(Command::new(self.bin.join("qx-update"))
            .arg("--root")
            .arg(r)
            .args(["apply", "--yes"]))?;
        sh(&mut Command::new("sync"))?;
        let secs = t0.elapsed().as_secs_f64();
        let log_path = r.join("var/log/quantix/update.log");
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let _ = fs::remove_file(&log_path);
        self.qx_logs.push((secs, log));
        Ok(secs)
    }

    /// `cp` of the image into slot B's ext4 + `sync` (old file removed and synced before).
    fn cp(&mut self) -> Result<f64> {
        let m = self.mount(&self.qx_b.dev)?;
        for e in fs::read_dir(&m)?.flatten() {
            if e.file_type()?.is_file() {
                fs::remove_file(e.path())?;
            }
        }
        self.prewarm(&[&self.image])?;
        let t0 = Instant::now();
        sh(Command::new("cp")
            .arg(&self.image)
            .arg(m.join("system.squashfs")))?;
        sh(&mut Command::new("sync"))?;
        let secs = t0.elapsed().as_secs_f64();
        self.umount()?;
        Ok(secs)
    }

    /// A fresh `rauc service` under its own session bus; timed from `rauc install` to the
    /// end of the `sync` after it (the script waits on its stdin for the go).
    fn rauc(&mut self) -> Result<f64> {
        let d = self.dir.join("rauc");
        self.prewarm(&[&d.join("bundle.raucb")])?;
        let script = format!(
            "export DBUS_STARTER_BUS_TYPE=session\nrauc -c {conf} service --override-boot-slot=A >{log} 2>&1 &\nsvc=$!\nfor i in $(seq 400); do rauc status >/dev/null 2>&1 && break; sleep 0.05; done\necho READY\nread go\nrauc install {bundle} >>{log} 2>&1\nrc=$?\nsync\necho DONE $rc\nkill $svc; wait $svc 2>/dev/null\n",
            conf = d.join("system.conf").display(),
            bundle = d.join("bundle.raucb").display(),
            log = d.join("rauc.log").display(),
        );
        let mut child = Command::new("dbus-run-session")
            .args(["--", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dbus-run-session")?;
        let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        ensure!(
            line.trim() == "READY",
            "rauc service did not come up: {line:?}"
        );
        let t0 = Instant::now();
        writeln!(child.stdin.take().context("no stdin")?, "go")?;
        line.clear();
        out.read_line(&mut line)?;
        let secs = t0.elapsed().as_secs_f64();
        child.wait()?;
        ensure!(
            line.trim() == "DONE 0",
            "rauc install failed: {line:?} (see {})",
            d.join("rauc.log").display()
        );
        Ok(secs)
    }

    /// After the warm-up: each contender wrote the right bytes.
    fn check(&self, contender: &str) -> Result<()> {
        let want = sha256_of(&self.image, None)?;
        match contender {
            "qx" => {
                let m = self.mount(&self.qx_b.dev)?;
                let got = sha256_of(&m.join("system.squashfs"), None);
                self.umount()?;
                ensure!(got? == want, "qx: slot B holds other bytes");
                let env = fs::read_to_string(self.root.join("boot/grub/grubenv"))?;
                ensure!(env.contains("ORDER=B A"), "qx: grubenv not switched: {env}");
            }
            "rauc" => {
                let got = sha256_of(Path::new(&self.rauc_b.dev), Some(self.facts.image_bytes))?;
                ensure!(got == want, "rauc: slot B holds other bytes");
            }
            _ => {}
        }
        Ok(())
    }

    fn tear_down(&mut self) {
        let _ = Command::new("umount").arg(self.dir.join("m")).status();
        self.server = None;
    }
}

/// SHA-256 (hex) of a file or its first `len` bytes.
fn sha256_of(path: &Path, len: Option<u64>) -> Result<String> {
    let mut cmd = Command::new("sh");
    let script = match len {
        Some(n) => format!("head -c {n} {} | sha256sum", path.display()),
        None => format!("sha256sum < {}", path.display()),
    };
    let out = sh(cmd.args(["-c", &script]))?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The BENCHMARKS.md section.
fn render(facts: &Facts, times: &[(String, Vec<f64>)], rounds: usize, phases: &str) -> String {
    let med = |name: &str| {
        times
            .iter()
            .find(|(n, _)| n == name)
            .map_or(f64::NAN, |(_, v)| median(v))
    };
    let (qx, rauc, cp, curl) = (med("qx"), med("rauc"), med("cp"), med("curl"));
    let limit = curl + cp;
    let mb = facts.image_bytes as f64 / 1e6;
    let mut s = String::new();
    let _ = writeln!(s, "{START}\n## Full-image install\n");
    let _ = writeln!(
        s,
        "`cargo xtask bench image` (needs root), one run on this machine ({} CPUs, kernel {}, {}, 1-minute load average {} from other work during the run): a {mb:.0} MB squashfs of real files (`mksquashfs /usr/lib/x86_64-linux-gnu /usr/lib/chromium /usr/share/locale`) written into the inactive slot. Slots are zero-filled files on loop devices with `--direct-io=on` (ext4 `-E nodiscard` for Quantix and for `cp`, raw for RAUC); the server is a release `qx-update-server` on loopback with the release published by `qx-publish publish`. One warm-up round (which also checks every slot's bytes), then {rounds} rounds with the order rotated, every source read into the page cache first, every timing ends with `sync`; medians, monotonic clock.\n",
        facts.cpus, facts.kernel, facts.rauc, facts.load
    );
    let _ = writeln!(s, "| contender | what it does | runs (s) | median s | MB/s | ÷ (curl + cp+sync) |\n|---|---|---|---|---|---|");
    let rows = [
        ("qx", "**`qx-update apply --yes`**", "download into slot B's file system (SHA-256 on the stream), fsync, read-back, rename, grubenv switched"),
        ("rauc", "RAUC `rauc install` (plain bundle, `bootloader=noop`)", "bundle already on the local disk: signature check over the bundle, image copied into a raw slot, fsync"),
        ("cp", "`cp` + `sync`", "the image (page-cache hot) into the same kind of ext4 slot"),
        ("curl", "`curl -o /dev/null`", "the artifact from the same server, nothing written"),
    ];
    for (key, name, what) in rows {
        let v = times
            .iter()
            .find(|(n, _)| n == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let runs: Vec<String> = v.iter().map(|t| format!("{t:.2}")).collect();
        let m = median(&v);
        let _ = writeln!(
            s,
            "| {name} | {what} | {} | {m:.2} | {:.0} | {:.2} |",
            runs.join(" "),
            mb / m,
            m / limit
        );
    }
    let t1 = qx <= 2.0 * limit;
    let t2 = qx < rauc;
    let _ = writeln!(
        s,
        "\nTargets: Quantix end to end ≤ 2 × (curl + cp+sync) = {:.2} s: **{}** ({:.2}×); Quantix end to end < RAUC's local install: **{}** (Quantix ÷ RAUC = {:.2}).\n",
        2.0 * limit,
        if t1 { "met" } else { "missed" },
        qx / limit,
        if t2 { "met" } else { "missed" },
        qx / rauc
    );
    s.push_str(phases);
    let _ = writeln!(s, "{END}");
    s
}

/// The update-log lines that end each phase of an apply, and the phase's name.
const MILESTONES: [(&str, &str); 7] = [
    (
        "system image 2.0.0: writing into slot",
        "start, check (channel state, manifest, signature)",
    ),
    ("download http", "slot B mounted, made unbootable"),
    (
        "downloaded system.squashfs",
        "download into slot B's temporary file (SHA-256, writes, checksums on their threads)",
    ),
    ("system.squashfs: fsynced", "fsync of the image"),
    (
        "system.squashfs: read back",
        "read-back of the image without the page cache, compared with the checksums",
    ),
    (
        "ab: install: wrote system.squashfs",
        "kernel and initramfs copied from slot A (mounted read-only) the same way, rename",
    ),
    (
        "system image 2.0.0: written into slot",
        "unmount, grubenv switched, state file, history",
    ),
];

/// Where the time of the median `qx` run went, from its update log's timestamps.
fn phases(runs: &[(f64, String)]) -> String {
    let mut sorted: Vec<&(f64, String)> = runs.iter().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some((total, log)) = sorted.get(sorted.len() / 2) else {
        return String::new();
    };
    let stamp = |line: &str| -> Option<jiff::Timestamp> { line.split(' ').next()?.parse().ok() };
    let Some(first) = log.lines().find_map(stamp) else {
        return String::new();
    };
    let mut s = format!("Where Quantix's time goes (the run of median time, {total:.2} s, from the timestamps of its update log):

| phase | s |
|---|---|
");
    let mut prev = first;
    for (needle, name) in MILESTONES {
        let Some(at) = log.lines().find(|l| l.contains(needle)).and_then(stamp) else {
            continue;
        };
        let secs = at.duration_since(prev).as_secs_f64();
        let _ = writeln!(s, "| {name} | {secs:.2} |");
        prev = at;
    }
    let logged = prev.duration_since(first).as_secs_f64();
    let _ = writeln!(
        s,
        "| process start before the first log line, exit, and the final `sync` | {:.2} |\n",
        total - logged
    );
    s
}
