//! The ways of shipping a new release to a host holding the old one, each as an encode command
//! (run on the publisher's side, timed) and an apply command (run under `/usr/bin/time`, for
//! its wall time and peak resident memory), checked to rebuild the new release exactly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

/// A method of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The whole new release, `zstd -19 --long=31`.
    Full,
    Bsdiff,
    Xdelta3,
    ZstdPatch19,
    ZstdPatch22,
    /// casync chunk stores: the new release's chunks absent from the old release's store.
    Casync,
    /// qx-delta's `smallest` over its algorithms.
    Ours,
}

pub const METHODS: &[Method] = &[
    Method::Full,
    Method::Bsdiff,
    Method::Xdelta3,
    Method::ZstdPatch19,
    Method::ZstdPatch22,
    Method::Casync,
    Method::Ours,
];

impl Method {
    pub fn label(self) -> &'static str {
        match self {
            Method::Full => "full download (zstd -19 --long=31)",
            Method::Bsdiff => "bsdiff",
            Method::Xdelta3 => "xdelta3 -9",
            Method::ZstdPatch19 => "zstd --patch-from -19 --long=31",
            Method::ZstdPatch22 => "zstd --patch-from -22 --ultra --long=31",
            Method::Casync => "casync (new chunks)",
            Method::Ours => "qx-delta smallest",
        }
    }
}

/// One method's figures on one pair.
#[derive(Clone, Debug)]
pub struct Measured {
    pub bytes: u64,
    pub encode_secs: f64,
    pub apply_secs: f64,
    pub apply_peak_kib: u64,
    /// For qx-delta: the algorithm `smallest` kept.
    pub detail: String,
}

/// Paths of one run of one method on one pair.
pub struct Job<'a> {
    pub old: &'a Path,
    pub new: &'a Path,
    pub work: &'a Path,
    /// The example binary that encodes and applies qx-delta patches.
    pub ours: &'a Path,
}

pub fn measure(method: Method, job: &Job) -> anyhow::Result<Measured> {
    let patch = job.work.join("patch");
    let out = job.work.join("out");
    let _ = std::fs::remove_file(&out);
    let started = Instant::now();
    let (bytes, detail) = encode(method, job, &patch)?;
    let encode_secs = started.elapsed().as_secs_f64();
    let (apply_secs, apply_peak_kib) = timed(apply(method, job, &patch, &out))?;
    if std::fs::read(&out)? != std::fs::read(job.new)? {
        bail!(
            "{}: the applied patch does not rebuild the new release",
            method.label()
        );
    }
    Ok(Measured {
        bytes,
        encode_secs,
        apply_secs,
        apply_peak_kib,
        detail,
    })
}

fn cmd(program: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut c = Command::new(program);
    c.args(args.iter().map(|a| a.as_ref()));
    c
}

/// Encodes; returns the bytes to ship and a detail.
fn encode(method: Method, job: &Job, patch: &Path) -> anyhow::Result<(u64, String)> {
    let (old, new) = (job.old, job.new);
    let c = match method {
        Method::Full => cmd(
            "zstd",
            &[&"-q", &"-f", &"-19", &"--long=31", &new, &"-o", &patch],
        ),
        Method::Bsdiff => cmd("bsdiff", &[&old, &new, &patch]),
        Method::Xdelta3 => cmd("xdelta3", &[&"-9", &"-e", &"-f", &"-s", &old, &new, &patch]),
        Method::ZstdPatch19 => zstd_patch(old, new, patch, &["-19"]),
        Method::ZstdPatch22 => zstd_patch(old, new, patch, &["-22", "--ultra"]),
        Method::Casync => return casync_encode(job),
        Method::Ours => cmd_path(job.ours, &[&"encode", &"smallest", &old, &new, &patch]),
    };
    let stdout = run(c)?.trim().to_owned();
    if method == Method::Ours {
        std::fs::write(job.work.join("algorithm"), &stdout)?;
    }
    Ok((std::fs::metadata(patch)?.len(), stdout))
}

fn zstd_patch(old: &Path, new: &Path, patch: &Path, level: &[&str]) -> Command {
    let mut c = Command::new("zstd");
    c.args(["-q", "-f", "--long=31"]).args(level);
    c.arg(format!("--patch-from={}", old.display()));
    c.arg(new).arg("-o").arg(patch);
    c
}

fn cmd_path(program: &Path, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut c = Command::new(program);
    c.args(args.iter().map(|a| a.as_ref()));
    c
}

/// The apply command (its output at `out`).
fn apply(method: Method, job: &Job, patch: &Path, out: &Path) -> Command {
    let old = job.old;
    match method {
        Method::Full => cmd(
            "zstd",
            &[&"-q", &"-f", &"-d", &"--long=31", &patch, &"-o", &out],
        ),
        Method::Bsdiff => cmd("bspatch", &[&old, &out, &patch]),
        Method::Xdelta3 => cmd("xdelta3", &[&"-d", &"-f", &"-s", &old, &patch, &out]),
        Method::ZstdPatch19 | Method::ZstdPatch22 => {
            let mut c = Command::new("zstd");
            c.args(["-q", "-f", "-d", "--long=31"]);
            c.arg(format!("--patch-from={}", old.display()));
            c.arg(patch).arg("-o").arg(out);
            c
        }
        Method::Casync => {
            let (store, index) = (job.work.join("new.castr"), job.work.join("new.caibx"));
            cmd(
                "casync",
                &[
                    &"extract", &"--store", &store, &"--seed", &old, &index, &out,
                ],
            )
        }
        Method::Ours => {
            let algo = std::fs::read_to_string(job.work.join("algorithm")).unwrap_or_default();
            cmd_path(job.ours, &[&"decode", &algo.trim(), &old, &patch, &out])
        }
    }
}

/// casync: chunk both releases into stores; the bytes are the new store's chunk files that the
/// old store does not hold, plus the new index.
fn casync_encode(job: &Job) -> anyhow::Result<(u64, String)> {
    let store = |n: &str| job.work.join(format!("{n}.castr"));
    for (name, file) in [("old", job.old), ("new", job.new)] {
        let _ = std::fs::remove_dir_all(store(name));
        let index = job.work.join(format!("{name}.caibx"));
        run(cmd(
            "casync",
            &[&"make", &"--store", &store(name), &index, &file],
        ))?;
    }
    let old_chunks = chunks(&store("old"))?;
    let mut bytes = std::fs::metadata(job.work.join("new.caibx"))?.len();
    for (rel, len) in chunks(&store("new"))? {
        if !old_chunks.iter().any(|(r, _)| *r == rel) {
            bytes += len;
        }
    }
    Ok((bytes, String::new()))
}

/// The chunk files of a store: (path relative to it, size).
fn chunks(store: &Path) -> anyhow::Result<Vec<(PathBuf, u64)>> {
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

/// Runs `c`, failing with its standard error when it fails; returns its standard output.
fn run(mut c: Command) -> anyhow::Result<String> {
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    if !o.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Runs `c` under `/usr/bin/time`: (wall seconds, peak resident KiB).
fn timed(c: Command) -> anyhow::Result<(f64, u64)> {
    let report = tempfile::NamedTempFile::new()?;
    let mut t = Command::new("/usr/bin/time");
    t.arg("-f").arg("%e %M").arg("-o").arg(report.path());
    t.arg(c.get_program()).args(c.get_args());
    run(t)?;
    let text = std::fs::read_to_string(report.path())?;
    let mut it = text.split_whitespace();
    let secs = it.next().and_then(|s| s.parse().ok());
    let kib = it.next().and_then(|s| s.parse().ok());
    match (secs, kib) {
        (Some(s), Some(k)) => Ok((s, k)),
        _ => bail!("cannot read /usr/bin/time's report {text:?}"),
    }
}
