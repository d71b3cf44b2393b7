//! `cargo xtask bench image-deltas`: bytes on the wire for a new root-file-system image given
//! the old one on the host — our content-defined chunks (`qx_delta::chunks`, run through the
//! release build of `crates/qx-delta/examples/chunks.rs`) against casync's chunk stores,
//! `zstd --patch-from` and the full `zstd -19` download — with apply time and peak memory.
//!
//! The two images are squashfs file systems built from pinned Debian packages ([`PINS`]: image
//! A holds each package at its `a` version, image B at its `b` version), fetched with
//! `apt-get download`, unpacked with `dpkg-deb -x` and packed with `mksquashfs`
//! deterministically; everything is cached in `target/image-deltas/`. The figures go into the
//! "Image deltas" section of BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use qx_core::Sha256;

use crate::benchmarks::update_section;
use crate::process::{target_dir, workspace_root};

const START: &str = "<!-- bench-image-deltas:start -->";
const END: &str = "<!-- bench-image-deltas:end -->";
/// The Debian packages of the image build and the baseline tools (`time`: `/usr/bin/time`).
pub const PACKAGES: &[&str] = &["squashfs-tools", "casync", "zstd", "time"];
/// The host side's memory target (issue 14).
const MEMORY_TARGET_KIB: u64 = 64 << 10;
/// `mksquashfs` options, the same for both images: deterministic times and owners, no
/// fragment blocks (a changed small file then changes only its own blocks).
const MKSQUASHFS: &[&str] = &[
    "-noappend",
    "-comp",
    "gzip",
    "-no-fragments",
    "-all-root",
    "-no-xattrs",
    "-mkfs-time",
    "0",
    "-all-time",
    "0",
    "-quiet",
    "-no-progress",
];

/// One Debian package at its version in image A and in image B (equal: unchanged).
pub struct Pin {
    pub name: &'static str,
    pub a: &'static str,
    pub b: &'static str,
}

const fn pin(name: &'static str, a: &'static str, b: &'static str) -> Pin {
    Pin { name, a, b }
}

/// Debian 12 (bookworm): for each package offered at two versions by the point release and
/// its -updates/-security suites, the two newest; the others at their one version.
#[rustfmt::skip]
pub const PINS: &[Pin] = &[
    pin("libc6", "2.36-9+deb12u7", "2.36-9+deb12u14"),
    pin("libc-bin", "2.36-9+deb12u7", "2.36-9+deb12u14"),
    pin("libc-l10n", "2.36-9+deb12u7", "2.36-9+deb12u14"),
    pin("locales", "2.36-9+deb12u7", "2.36-9+deb12u14"),
    pin("systemd", "252.38-1~deb12u1", "252.39-1~deb12u2"),
    pin("libsystemd0", "252.38-1~deb12u1", "252.39-1~deb12u2"),
    pin("libudev1", "252.38-1~deb12u1", "252.39-1~deb12u2"),
    pin("udev", "252.38-1~deb12u1", "252.39-1~deb12u2"),
    pin("systemd-timesyncd", "252.38-1~deb12u1", "252.39-1~deb12u2"),
    pin("libnss-systemd", "252.38-1~deb12u1", "252.39-1~deb12u2"),
    pin("openssl", "3.0.20-1~deb12u2", "3.0.22-1~deb12u2"),
    pin("libssl3", "3.0.20-1~deb12u2", "3.0.22-1~deb12u2"),
    pin("curl", "7.88.1-10+deb12u5", "7.88.1-10+deb12u15"),
    pin("libcurl4", "7.88.1-10+deb12u5", "7.88.1-10+deb12u15"),
    pin("libcurl3-gnutls", "7.88.1-10+deb12u5", "7.88.1-10+deb12u15"),
    pin("python3.11", "3.11.2-6+deb12u8", "3.11.2-6+deb12u9"),
    pin("python3.11-minimal", "3.11.2-6+deb12u8", "3.11.2-6+deb12u9"),
    pin("libpython3.11-stdlib", "3.11.2-6+deb12u8", "3.11.2-6+deb12u9"),
    pin("libpython3.11-minimal", "3.11.2-6+deb12u8", "3.11.2-6+deb12u9"),
    pin("openssh-server", "1:9.2p1-2+deb12u9", "1:9.2p1-2+deb12u10"),
    pin("openssh-client", "1:9.2p1-2+deb12u9", "1:9.2p1-2+deb12u10"),
    pin("openssh-sftp-server", "1:9.2p1-2+deb12u9", "1:9.2p1-2+deb12u10"),
    pin("git", "1:2.39.5-0+deb12u2", "1:2.39.5-0+deb12u3"),
    pin("git-man", "1:2.39.5-0+deb12u2", "1:2.39.5-0+deb12u3"),
    pin("perl", "5.36.0-7+deb12u3", "5.36.0-7+deb12u4"),
    pin("perl-base", "5.36.0-7+deb12u3", "5.36.0-7+deb12u4"),
    pin("perl-modules-5.36", "5.36.0-7+deb12u3", "5.36.0-7+deb12u4"),
    pin("libperl5.36", "5.36.0-7+deb12u3", "5.36.0-7+deb12u4"),
    pin("libxml2", "2.9.14+dfsg-1.3~deb12u4", "2.9.14+dfsg-1.3~deb12u6"),
    pin("tzdata", "2026b-0+deb12u1", "2026f-0+deb12u1"),
    pin("ca-certificates", "20230311+deb12u1", "20250419~deb12u2"),
    pin("libglib2.0-0", "2.74.6-2+deb12u2", "2.74.6-2+deb12u9"),
    pin("util-linux", "2.38.1-5+deb12u1", "2.38.1-5+deb12u3"),
    pin("libblkid1", "2.38.1-5+deb12u1", "2.38.1-5+deb12u3"),
    pin("libmount1", "2.38.1-5+deb12u1", "2.38.1-5+deb12u3"),
    pin("libexpat1", "2.5.0-1+deb12u2", "2.5.0-1+deb12u5"),
    pin("zlib1g", "1:1.2.13.dfsg-1", "1:1.2.13.dfsg-1+deb12u1"),
    pin("libzstd1", "1.5.4+dfsg2-5", "1.5.4+dfsg2-5+deb12u1"),
    pin("liblzma5", "5.4.1-1+deb12u1", "5.4.1-1+deb12u2"),
    pin("xz-utils", "5.4.1-1+deb12u1", "5.4.1-1+deb12u2"),
    pin("apt", "2.6.1", "2.6.2"),
    pin("libapt-pkg6.0", "2.6.1", "2.6.2"),
    pin("sudo", "1.9.13p3-1+deb12u2", "1.9.13p3-1+deb12u4"),
    pin("rsync", "3.2.7-1+deb12u6", "3.5.0+ds1-0+deb12u1"),
    pin("postgresql-15", "15.18-0+deb12u1", "15.20-0+deb12u1"),
    pin("libpq5", "15.18-0+deb12u1", "15.20-0+deb12u1"),
    pin("coreutils", "9.1-1", "9.1-1"),
    pin("bash", "5.2.15-2+b13", "5.2.15-2+b13"),
    pin("vim", "2:9.0.1378-2+deb12u2", "2:9.0.1378-2+deb12u2"),
    pin("vim-runtime", "2:9.0.1378-2+deb12u2", "2:9.0.1378-2+deb12u2"),
    pin("vim-common", "2:9.0.1378-2+deb12u2", "2:9.0.1378-2+deb12u2"),
    pin("libgnutls30", "3.7.9-2+deb12u7", "3.7.9-2+deb12u7"),
    pin("libsqlite3-0", "3.40.1-2+deb12u2", "3.40.1-2+deb12u2"),
    pin("libgcc-s1", "12.2.0-14+deb12u1", "12.2.0-14+deb12u1"),
    pin("libstdc++6", "12.2.0-14+deb12u1", "12.2.0-14+deb12u1"),
    pin("binutils", "2.40-2", "2.40-2"),
    pin("libbinutils", "2.40-2", "2.40-2"),
    pin("libgprofng0", "2.40-2", "2.40-2"),
    pin("e2fsprogs", "1.47.0-2+b2", "1.47.0-2+b2"),
    pin("dpkg", "1.21.23", "1.21.23"),
    pin("busybox", "1:1.35.0-4+deb12u1+b1", "1:1.35.0-4+deb12u1+b1"),
    pin("libkrb5-3", "1.20.1-2+deb12u5", "1.20.1-2+deb12u5"),
    pin("libgssapi-krb5-2", "1.20.1-2+deb12u5", "1.20.1-2+deb12u5"),
    pin("libldap-2.5-0", "2.5.13+dfsg-5", "2.5.13+dfsg-5"),
    pin("libnghttp2-14", "1.52.0-1+deb12u3", "1.52.0-1+deb12u3"),
    pin("libcap2", "1:2.66-4+deb12u3+b1", "1:2.66-4+deb12u3+b1"),
    pin("iproute2", "6.1.0-3", "6.1.0-3"),
    pin("nftables", "1.0.6-2+deb12u2", "1.0.6-2+deb12u2"),
];

/// Chunk sizes and pack levels measured beside the publish tool's (64 KiB, level 9):
/// (average KiB, level).
const VARIANTS: &[(u32, i32)] = &[(64, 9), (32, 9), (8, 9), (4, 9), (8, 19)];

/// One way of shipping image B to a host holding image A.
#[derive(Clone, Debug)]
pub struct Row {
    pub label: String,
    /// Bytes a host downloads.
    pub bytes: u64,
    pub apply_secs: f64,
    pub apply_peak_kib: u64,
    pub encode_secs: f64,
    pub note: String,
}

/// The pair of images.
struct Images {
    a: PathBuf,
    b: PathBuf,
}

pub fn run() -> anyhow::Result<()> {
    crate::deps::cargo(&[
        "build",
        "--release",
        "-p",
        "qx-delta",
        "--example",
        "chunks",
        "--example",
        "delta",
    ])?;
    let ours = target_dir().join("release/examples/chunks");
    let delta = target_dir().join("release/examples/delta");
    let cache = target_dir().join("image-deltas");
    std::fs::create_dir_all(&cache)?;
    let images = Images {
        a: image(&cache, "a", |p| p.a)?,
        b: image(&cache, "b", |p| p.b)?,
    };
    let work = tempfile::tempdir_in(&cache)?;
    let job = Job {
        images: &images,
        work: work.path(),
        ours: &ours,
        delta: &delta,
    };
    let mut rows = Vec::new();
    for m in [full, zstd_patch_19, zstd_patch_22, casync] {
        rows.push(logged(m(&job)?));
    }
    rows.push(logged(ours_row(&job, None)?));
    rows.push(logged(window_row(&job)?));
    let mut variants = Vec::new();
    for &v in VARIANTS {
        variants.push(logged(ours_row(&job, Some(v))?));
    }
    let sizes = (len(&images.a)?, len(&images.b)?);
    let text = markdown(&rows, &variants, sizes);
    println!("{text}");
    let block = format!("{START}\n{}\n{END}", text.trim_end());
    update_section(&workspace_root().join("BENCHMARKS.md"), START, END, &block)?;
    eprintln!("BENCHMARKS.md updated (section \"Image deltas\")");
    Ok(())
}

fn logged(r: Row) -> Row {
    eprintln!(
        "{}: {} bytes, apply {:.2} s, {} KiB, encode {:.1} s {}",
        r.label, r.bytes, r.apply_secs, r.apply_peak_kib, r.encode_secs, r.note
    );
    r
}

fn len(p: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("{}", p.display()))?
        .len())
}

// ---------------------------------------------------------------------------------------------
// The images

/// Image `side` (`a` or `b`): the cached squashfs when its pin list is the same, else built.
fn image(cache: &Path, side: &str, version: fn(&Pin) -> &'static str) -> anyhow::Result<PathBuf> {
    let path = cache.join(format!("{side}.squashfs"));
    let stamp = cache.join(format!("{side}.pins"));
    let pins: String = PINS
        .iter()
        .map(|p| format!("{}={}\n", p.name, version(p)))
        .collect();
    if path.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&pins) {
        return Ok(path);
    }
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    let tree = tempfile::tempdir_in(cache)?;
    for p in PINS {
        let deb = download(&debs, p.name, version(p))?;
        output(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(tree.path()),
        )?;
    }
    let tmp = cache.join(format!("{side}.squashfs.tmp"));
    eprintln!("packing image {side}");
    let mut c = Command::new("mksquashfs");
    c.arg(tree.path()).arg(&tmp).args(MKSQUASHFS);
    output(&mut c)?;
    std::fs::rename(&tmp, &path)?;
    std::fs::write(&stamp, pins)?;
    Ok(path)
}

/// The cached `.deb` of `name` at `version`, fetched with `apt-get download` when missing.
fn download(debs: &Path, name: &str, version: &str) -> anyhow::Result<PathBuf> {
    // apt-get names the file `name_version_arch.deb`, the epoch's colon escaped.
    let prefix = format!("{name}_{}_", version.replace(':', "%3a"));
    let find = || -> anyhow::Result<Option<PathBuf>> {
        for e in std::fs::read_dir(debs)? {
            let e = e?;
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with(&prefix) && n.ends_with(".deb") {
                return Ok(Some(e.path()));
            }
        }
        Ok(None)
    };
    if let Some(p) = find()? {
        return Ok(p);
    }
    eprintln!("apt-get download {name}={version}");
    let mut c = Command::new("apt-get");
    c.arg("download").arg(format!("{name}={version}"));
    output(c.current_dir(debs)).with_context(|| {
        format!("{name} {version} is no longer offered by the archive: update PINS")
    })?;
    find()?.with_context(|| format!("apt-get download left no {prefix}*.deb"))
}

// ---------------------------------------------------------------------------------------------
// The methods

struct Job<'a> {
    images: &'a Images,
    work: &'a Path,
    /// The release build of the chunks example.
    ours: &'a Path,
    /// The release build of the delta example.
    delta: &'a Path,
}

impl Job<'_> {
    fn out(&self) -> PathBuf {
        self.work.join("out")
    }

    /// Fails unless the last apply rebuilt image B; removes its output.
    fn check_out(&self, label: &str) -> anyhow::Result<()> {
        let digest = |p: &Path| -> anyhow::Result<(Sha256, u64)> {
            let f = std::fs::File::open(p).with_context(|| format!("{}", p.display()))?;
            Ok(Sha256::of_reader(std::io::BufReader::new(f))?)
        };
        let same = digest(&self.out())? == digest(&self.images.b)?;
        std::fs::remove_file(self.out())?;
        if !same {
            bail!("{label}: the apply did not rebuild image B");
        }
        Ok(())
    }
}

/// Runs `c` and returns its wall time.
fn timed_run(mut c: Command) -> anyhow::Result<f64> {
    let started = Instant::now();
    output(&mut c)?;
    Ok(started.elapsed().as_secs_f64())
}

fn zstd(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut c = Command::new("zstd");
    c.args(["-q", "-f", "--long=31"]);
    c.args(args.iter().map(|a| a.as_ref()));
    c
}

fn full(job: &Job) -> anyhow::Result<Row> {
    let (b, out, z) = (&job.images.b, job.out(), job.work.join("full.zst"));
    let encode = zstd(&[&"-19", b, &"-o", &z]);
    let apply = zstd(&[&"-d", &z, &"-o", &out]);
    let label = "full download (zstd -19 --long=31)";
    encoded_row(job, label, (encode, apply), &z, String::new())
}

/// The row of a method that `encode`s into `file` and `apply`s it into the job's output:
/// timed, checked to rebuild image B, sized by `file` (removed after).
fn encoded_row(
    job: &Job,
    label: &str,
    (encode, apply): (Command, Command),
    file: &Path,
    note: String,
) -> anyhow::Result<Row> {
    let encode_secs = timed_run(encode)?;
    let (apply_secs, apply_peak_kib) = under_time(apply)?;
    job.check_out(label)?;
    let bytes = len(file)?;
    std::fs::remove_file(file)?;
    Ok(Row {
        label: label.into(),
        bytes,
        apply_secs,
        apply_peak_kib,
        encode_secs,
        note,
    })
}

fn zstd_patch_19(job: &Job) -> anyhow::Result<Row> {
    zstd_patch(job, "zstd --patch-from -19 --long=31", &["-19"])
}

fn zstd_patch_22(job: &Job) -> anyhow::Result<Row> {
    zstd_patch(
        job,
        "zstd --patch-from -22 --ultra --long=31",
        &["-22", "--ultra"],
    )
}

fn zstd_patch(job: &Job, label: &str, level: &[&str]) -> anyhow::Result<Row> {
    let (a, b, out) = (&job.images.a, &job.images.b, job.out());
    let patch = job.work.join("patch.zst");
    let from = format!("--patch-from={}", a.display());
    let mut encode = zstd(&[&from, b, &"-o", &patch]);
    encode.args(level);
    let apply = zstd(&[&"-d", &from, &patch, &"-o", &out]);
    encoded_row(job, label, (encode, apply), &patch, String::new())
}

/// casync with its default chunk sizes and compression: A's and B's stores; the bytes are B's
/// chunk files that A's store does not hold, plus B's index.
fn casync(job: &Job) -> anyhow::Result<Row> {
    let label = "casync (B's chunks not in A's store + index)";
    let store = |n: &str| job.work.join(format!("{n}.castr"));
    let index = |n: &str| job.work.join(format!("{n}.caibx"));
    let started = Instant::now();
    for (n, image) in [("a", &job.images.a), ("b", &job.images.b)] {
        let mut c = Command::new("casync");
        c.arg("make").arg("--store").arg(store(n)).arg(index(n));
        output(c.arg(image))?;
    }
    let encode_secs = started.elapsed().as_secs_f64();
    let held = chunk_files(&store("a"))?;
    let fresh = chunk_files(&store("b"))?;
    let new: Vec<u64> = fresh
        .iter()
        .filter(|(rel, _)| held.binary_search_by(|(r, _)| r.cmp(rel)).is_err())
        .map(|(_, n)| *n)
        .collect();
    let bytes = new.iter().sum::<u64>() + len(&index("b"))?;
    let mut c = Command::new("casync");
    c.arg("extract").arg("--store").arg(store("b"));
    c.arg("--seed")
        .arg(&job.images.a)
        .arg(index("b"))
        .arg(job.out());
    let (apply_secs, apply_peak_kib) = under_time(c)?;
    job.check_out(label)?;
    for n in ["a", "b"] {
        std::fs::remove_dir_all(store(n))?;
        std::fs::remove_file(index(n))?;
    }
    Ok(Row {
        label: label.into(),
        bytes,
        apply_secs,
        apply_peak_kib,
        encode_secs,
        note: format!("{} of {} chunks new", new.len(), fresh.len()),
    })
}

/// The chunk files of a casync store, sorted: (path relative to it, size).
fn chunk_files(store: &Path) -> anyhow::Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(store)? {
        let dir = dir?.path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir)? {
            let f = f?;
            let rel = f.path().strip_prefix(store)?.to_path_buf();
            out.push((rel, f.metadata()?.len()));
        }
    }
    out.sort();
    Ok(out)
}

/// Ours: B packed (with the publish tool's sizes and level, or `variant`: average KiB and
/// level), then rebuilt from A and the pack by the host side; the bytes are the pack ranges
/// the plan fetches plus the index.
/// The image delta the publish tool makes (`zstd-window`), applied as the agent does: the
/// base read from its file a window at a time.
fn window_row(job: &Job) -> anyhow::Result<Row> {
    let (a, b, out) = (&job.images.a, &job.images.b, job.out());
    let patch = job.work.join("b.delta");
    let mut encode = Command::new(job.delta);
    encode
        .args(["encode", "zstd-window"])
        .arg(a)
        .arg(b)
        .arg(&patch);
    let mut apply = Command::new(job.delta);
    apply
        .args(["decode-file", "zstd-window"])
        .arg(a)
        .arg(&patch)
        .arg(&out);
    let label = "qx-delta zstd-window (the image delta)";
    let note = "4 MiB segments, 16 MiB windows of A".to_owned();
    encoded_row(job, label, (encode, apply), &patch, note)
}

fn ours_row(job: &Job, variant: Option<(u32, i32)>) -> anyhow::Result<Row> {
    let (pack, index) = (job.work.join("b.pack"), job.work.join("b.chunks"));
    let (avg, level) = variant.unwrap_or((16, 9));
    let label = format!("qx-delta chunks, {avg} KiB average, pack level {level}");
    let mut c = Command::new(job.ours);
    c.arg("pack").arg(&job.images.b).arg(&pack).arg(&index);
    if let Some((avg, level)) = variant {
        c.arg(avg.to_string()).arg(level.to_string());
    }
    let started = Instant::now();
    let chunks = output(&mut c)?.trim().to_owned();
    let encode_secs = started.elapsed().as_secs_f64();
    let mut c = Command::new(job.ours);
    c.arg("apply").arg(&job.images.a).arg(&index).arg(&pack);
    let report = tempfile::NamedTempFile::new_in(job.work)?;
    let (apply_secs, apply_peak_kib, stdout) = under_time_output(c.arg(job.out()), &report)?;
    job.check_out(&label)?;
    let fetched: u64 = stdout.trim().parse().context("the bytes fetched")?;
    let (pack_len, index_len) = (len(&pack)?, len(&index)?);
    std::fs::remove_file(&pack)?;
    std::fs::remove_file(&index)?;
    Ok(Row {
        label,
        bytes: fetched + index_len,
        apply_secs,
        apply_peak_kib,
        encode_secs,
        note: format!(
            "{chunks} chunks; fetched {} of the pack's {}, index {}",
            mb(fetched),
            mb(pack_len),
            kb(index_len)
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// Processes

/// Runs `c`, failing with its standard error when it fails; returns its standard output.
fn output(c: &mut Command) -> anyhow::Result<String> {
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    if !o.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Runs `c` under `/usr/bin/time`: (wall seconds, peak resident KiB).
fn under_time(c: Command) -> anyhow::Result<(f64, u64)> {
    let report = tempfile::NamedTempFile::new()?;
    let (secs, kib, _) = under_time_output(&c, &report)?;
    Ok((secs, kib))
}

/// Runs `c` under `/usr/bin/time` (its report in `report`): wall seconds, peak resident KiB
/// and `c`'s standard output.
fn under_time_output(
    c: &Command,
    report: &tempfile::NamedTempFile,
) -> anyhow::Result<(f64, u64, String)> {
    let mut t = Command::new("/usr/bin/time");
    t.arg("-f").arg("%e %M").arg("-o").arg(report.path());
    t.arg(c.get_program()).args(c.get_args());
    let stdout = output(&mut t)?;
    let text = std::fs::read_to_string(report.path())?;
    let mut it = text.split_whitespace();
    let secs = it.next().and_then(|s| s.parse().ok());
    let kib = it.next().and_then(|s| s.parse().ok());
    match (secs, kib) {
        (Some(s), Some(k)) => Ok((s, k, stdout)),
        _ => bail!("cannot read /usr/bin/time's report {text:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The report

fn mb(n: u64) -> String {
    format!("{:.2} MB", n as f64 / 1e6)
}

fn kb(n: u64) -> String {
    format!("{:.0} kB", n as f64 / 1e3)
}

fn markdown(rows: &[Row], variants: &[Row], (a, b): (u64, u64)) -> String {
    let changed = PINS.iter().filter(|p| p.a != p.b).count();
    let mut out = format!(
        "## Image deltas\n\nCommand: `cargo xtask bench image-deltas`. Two root-file-system \
         images from Debian 12 packages, fetched with `apt-get download` at pinned versions \
         (cached in `target/image-deltas/`), each set unpacked with `dpkg-deb -x` and packed \
         with `mksquashfs {}`: image A ({}) holds {} packages, image B ({}) the same with {} \
         of them at the next version the archive offers (the pins are `PINS` in \
         `xtask/src/bench_image_deltas.rs`; changed: {}). Bytes are what a host holding A \
         downloads to rebuild B; apply is wall time and peak resident memory of the apply \
         command (`/usr/bin/time`), checked to rebuild B byte for byte; encode is the \
         publisher's time. Ours are the two ways a host rebuilds an image: the image delta \
         (release build of `crates/qx-delta/examples/delta.rs`: `encode zstd-window A B`, then \
         `decode-file`, which reads A from its file as the agent reads its booted slot), what \
         a host running A gets; and the chunks (`crates/qx-delta/examples/chunks.rs`: the \
         publish tool's pack of B, then the host side: scan of A + plan + read and unpack the \
         fetched ranges, written to a file; its bytes the fetched pack ranges plus the \
         index), what a host running any other image gets.\n\n",
        MKSQUASHFS.join(" "),
        mb(a),
        PINS.len(),
        mb(b),
        changed,
        changed_list(),
    );
    out.push_str(&table(rows, rows));
    out.push_str(&targets(rows));
    out.push_str(
        "\nOther chunk sizes and pack levels (the publish tool uses 16 KiB and level 9; \
         minimum and maximum a quarter and four times the average):\n\n",
    );
    out.push_str(&table(variants, rows));
    out.push_str(&variant_finding(rows, variants));
    out
}

fn changed_list() -> String {
    PINS.iter()
        .filter(|p| p.a != p.b)
        .map(|p| format!("{} {} → {}", p.name, p.a, p.b))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A table of `rows`, ratios against the full download found in `all`.
fn table(rows: &[Row], all: &[Row]) -> String {
    let full = all.first().map_or(1, |r| r.bytes.max(1));
    let mut out = String::from(
        "| method | bytes | of full | apply | apply peak RSS | encode | note |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.3} | {:.2} s | {:.1} MiB | {:.1} s | {} |\n",
            r.label,
            mb(r.bytes),
            r.bytes as f64 / full as f64,
            r.apply_secs,
            r.apply_peak_kib as f64 / 1024.0,
            r.encode_secs,
            r.note
        ));
    }
    out
}

/// The smallest baseline delta (everything but the full download and ours).
fn best_baseline(rows: &[Row]) -> Option<&Row> {
    rows.iter()
        .filter(|r| !r.label.starts_with("full") && !r.label.starts_with("qx-delta"))
        .min_by_key(|r| r.bytes)
}

fn targets(rows: &[Row]) -> String {
    let (Some(ours), Some(best)) = (rows.last(), best_baseline(rows)) else {
        return String::new();
    };
    let bytes_met = ours.bytes <= best.bytes;
    let by = ours.bytes as f64 / best.bytes.max(1) as f64;
    let mem_met = ours.apply_peak_kib < MEMORY_TARGET_KIB;
    format!(
        "\nTargets (issue 14), with the image delta: our bytes ≤ the best of casync and zstd \
         patch-from: **{}** ({} vs {} for {}: {:.4}×); the host side under 64 MiB: **{}** \
         ({:.1} MiB peak; the best baseline's apply peaks at {:.1} MiB).\n",
        if bytes_met { "met" } else { "missed" },
        mb(ours.bytes),
        mb(best.bytes),
        best.label,
        by,
        if mem_met { "met" } else { "missed" },
        ours.apply_peak_kib as f64 / 1024.0,
        best.apply_peak_kib as f64 / 1024.0
    )
}

fn variant_finding(rows: &[Row], variants: &[Row]) -> String {
    let Some(best) = best_baseline(rows) else {
        return String::new();
    };
    let meeting: Vec<&str> = variants
        .iter()
        .filter(|v| v.bytes <= best.bytes && v.apply_peak_kib < MEMORY_TARGET_KIB)
        .map(|v| v.label.as_str())
        .collect();
    if meeting.is_empty() {
        let Some(v) = variants.iter().min_by_key(|v| v.bytes) else {
            return String::new();
        };
        format!(
            "\nNone of these meets both targets; the smallest, {}, is {:.2}× the best \
             baseline.\n",
            v.label,
            v.bytes as f64 / best.bytes.max(1) as f64
        )
    } else {
        format!("\nMeeting both targets: {}.\n", meeting.join("; "))
    }
}
