//! `cargo xtask bench apply`: the agent's apply path (download + verify + extract + install) of
//! one directory component against the shell pipeline
//! `curl -s URL | tee >(sha256sum > sum) | zstd -d | tar -x -C dir`, on the same files from the
//! same update server, in the same run; plus the agent's peak memory (VmHWM) for a small and a
//! ten times larger artifact.
//!
//! Everything measured is built with `--release`: when this runs from a debug build it first
//! runs itself again as a release build. The update server is the release `qx-update-server`
//! binary on a loopback port. Ours runs as a child process (so its VmHWM is its own): the
//! download goes through `qx_agent::download::Downloader` (streamed to `staging/`, hashed while
//! streaming, fsynced), then `qx_agent::transaction::extract::extract_tar_zst` (the apply path's safe
//! extractor) into staging, then the extracted tree is renamed into place and its parent
//! directory fsynced.
//!
//! Environment: `QX_BENCH_SIZES_MB` (artifact sizes, default `50,500`), `QX_BENCH_RUNS` (runs
//! per size and contender, default 3; the median is reported), `QX_BENCH_KEEP` (set: keep the
//! work directory, with the last host root and its update log, for a look afterwards).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use qx_core::api::ServerUrl;
use qx_core::{ArtifactRef, KeyPair, Manifest, Sha256, SigningKey, UnknownFields};

use crate::benchmarks::update_section;
use crate::process::{vm_hwm_kib, workspace_root, UpdateServer};

const WORKER_ENV: &str = "QX_BENCH_APPLY_WORKER";
const PRODUCT: &str = "quantix-os";
const CHANNEL: &str = "dev";
const VERSION: &str = "1.0.0";
const SECTION_START: &str = "<!-- bench-apply:start -->";
const SECTION_END: &str = "<!-- bench-apply:end -->";

pub fn run() -> Result<()> {
    if std::env::var_os(WORKER_ENV).is_some() {
        return worker();
    }
    if cfg!(debug_assertions) {
        return rerun_as_release();
    }
    let (sizes, runs) = settings()?;
    let bin_dir = build_programs()?;
    let work = tempfile::Builder::new()
        .prefix("qx-bench-apply-")
        .tempdir()?;
    let releases = work.path().join("releases");
    let version_dir = releases.join(PRODUCT).join(CHANNEL).join(VERSION);
    fs::create_dir_all(&version_dir)?;
    let mut artifacts = Vec::new();
    for &mb in &sizes {
        eprintln!("bench apply: packing a {mb} MB component");
        artifacts.push(pack_component(&version_dir, mb)?);
    }
    write_manifest(work.path(), &version_dir, &artifacts)?;

    let server = start_server(&bin_dir.join("qx-update-server"), &releases, work.path())?;
    let contenders = Contenders {
        work: work.path(),
        server: &server,
        agent_bin: &bin_dir.join("qx-update"),
    };
    let rows = artifacts
        .iter()
        .map(|a| contenders.measure(a, runs))
        .collect::<Result<Vec<_>>>()?;
    drop(server);
    if std::env::var_os("QX_BENCH_KEEP").is_some() {
        eprintln!("bench apply: keeping {}", work.keep().display());
    }

    let section = render(&rows, runs);
    println!("{section}");
    let path = workspace_root().join("BENCHMARKS.md");
    update_section(&path, SECTION_START, SECTION_END, &section)?;
    eprintln!(
        "bench apply: wrote the \"Agent apply\" section of {}",
        path.display()
    );
    Ok(())
}

/// What is measured here must be a release build: runs this benchmark again as one.
fn rerun_as_release() -> Result<()> {
    eprintln!("bench apply: re-running as a release build");
    let st = Command::new(env!("CARGO"))
        .args([
            "run",
            "--release",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "bench",
            "apply",
        ])
        .status()
        .context("running cargo")?;
    ensure!(
        st.success(),
        "the release build of the benchmark failed ({st})"
    );
    Ok(())
}

/// `QX_BENCH_SIZES_MB` and `QX_BENCH_RUNS`, or their defaults.
fn settings() -> Result<(Vec<u64>, usize)> {
    let sizes: Vec<u64> = std::env::var("QX_BENCH_SIZES_MB")
        .unwrap_or_else(|_| "50,500".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .context("QX_BENCH_SIZES_MB: a list of integers")
        })
        .collect::<Result<_>>()?;
    let runs: usize = std::env::var("QX_BENCH_RUNS")
        .unwrap_or_else(|_| "3".into())
        .parse()
        .context("QX_BENCH_RUNS: an integer")?;
    ensure!(runs >= 1 && !sizes.is_empty(), "nothing to measure");
    Ok((sizes, runs))
}

/// Builds the release update server and agent; returns the directory holding them (this
/// release binary's own).
fn build_programs() -> Result<PathBuf> {
    eprintln!("bench apply: building the release update server and agent");
    let st = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--package",
            "qx-server",
            "--bin",
            "qx-update-server",
            "--package",
            "qx-agent",
            "--bin",
            "qx-update",
        ])
        .status()
        .context("running cargo")?;
    ensure!(
        st.success(),
        "building qx-update-server and qx-update failed ({st})"
    );
    Ok(std::env::current_exe()?
        .parent()
        .context("the benchmark binary has no directory")?
        .to_owned())
}

/// The contenders of one run, with what they share.
struct Contenders<'a> {
    work: &'a Path,
    server: &'a UpdateServer,
    agent_bin: &'a Path,
}

impl Contenders<'_> {
    /// `runs` runs of every contender on one artifact, interleaved; medians and peaks.
    fn measure(&self, a: &Packed, runs: usize) -> Result<Row> {
        let url = self
            .server
            .url()
            .artifact(PRODUCT, VERSION, &a.expected.artifact, CHANNEL);
        let (mut pipe, mut pipe_synced) = (Vec::new(), Vec::new());
        let (mut agent, mut two_pass) = (Vec::new(), Vec::new());
        for i in 0..runs {
            eprintln!("bench apply: {} MB, run {}/{runs}", a.mb, i + 1);
            // Each contender starts with no dirty page left by the one before: an fsync would
            // otherwise pay for the previous contender's writes (ext4 ordered mode).
            settle()?;
            let (p, synced) = run_pipeline(self.work, &url, &a.expected)?;
            pipe.push(p);
            pipe_synced.push(synced);
            settle()?;
            let m = run_agent(self.agent_bin, self.work, self.server.url(), a)?;
            eprintln!(
                "bench apply: pipeline {:.3} s (then sync {:.3} s), qx-update apply {:.3} s",
                p.as_secs_f64(),
                synced.as_secs_f64(),
                m.time.as_secs_f64()
            );
            agent.push(m);
            settle()?;
            two_pass.push(run_ours(self.work, &url, &a.expected)?);
        }
        Ok(Row {
            mb: a.mb,
            artifact_bytes: a.expected.size_bytes,
            unpacked_bytes: a.unpacked,
            pipeline: median(&mut pipe),
            pipeline_synced: median(&mut pipe_synced),
            agent: summarize(agent),
            two_pass: summarize(two_pass),
        })
    }
}

struct Packed {
    mb: u64,
    expected: ArtifactRef,
    unpacked: u64,
}

struct Row {
    mb: u64,
    artifact_bytes: u64,
    unpacked_bytes: u64,
    pipeline: Duration,
    /// The pipeline followed by `sync -f` of its output (durable, as the agent is).
    pipeline_synced: Duration,
    agent: Measured,
    two_pass: Measured,
}

/// One run of one of our contenders: its time and its process's peak resident memory.
struct Measured {
    time: Duration,
    peak_kib: u64,
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median time, highest peak memory.
fn summarize(runs: Vec<Measured>) -> Measured {
    let peak_kib = runs.iter().map(|m| m.peak_kib).max().unwrap_or(0);
    let mut times: Vec<Duration> = runs.iter().map(|m| m.time).collect();
    Measured {
        time: median(&mut times),
        peak_kib,
    }
}

/// Bytes with about 6 bits of entropy each (compress to ~3/4, like binaries do).
fn fill(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = b'0' + ((*seed >> (i * 8)) as u8 & 0x3f);
        }
    }
}

/// A directory component of files of 4 MiB (and a few small ones) whose tar.zst is about
/// `mb` MB, written into the release directory; returns its manifest entry.
fn pack_component(version_dir: &Path, mb: u64) -> Result<Packed> {
    let name = format!("ui-{mb}mb.tar.zst");
    let path = version_dir.join(&name);
    let target = mb * 1_000_000;
    let file = File::create(&path)?;
    let mut enc = zstd::Encoder::new(file, 3)?;
    enc.multithread(2)?;
    let mut tar = tar::Builder::new(enc);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ mb;
    let mut buf = vec![0u8; 4 << 20];
    let mut unpacked = 0u64;
    // Compressed size is ~0.76 of the input; stop once the estimate reaches the target.
    let mut i = 0;
    while (unpacked as f64) * 0.76 < target as f64 {
        fill(&mut buf, &mut seed);
        let mut h = tar::Header::new_gnu();
        h.set_size(buf.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, format!("assets/part-{i:04}.bin"), &buf[..])?;
        unpacked += buf.len() as u64;
        i += 1;
    }
    for j in 0..32 {
        let text = format!("<html><body>page {j}</body></html>\n").repeat(64);
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        tar.append_data(&mut h, format!("pages/page-{j:02}.html"), text.as_bytes())?;
        unpacked += text.len() as u64;
    }
    let enc = tar.into_inner()?;
    enc.finish()?.sync_all()?;
    let (sha256, size_bytes) = Sha256::of_reader(File::open(&path)?)?;
    Ok(Packed {
        mb,
        expected: ArtifactRef {
            artifact: name.parse()?,
            sha256,
            size_bytes,
        },
        unpacked,
    })
}

/// A signed manifest listing every packed artifact as a directory component.
fn write_manifest(work: &Path, version_dir: &Path, artifacts: &[Packed]) -> Result<()> {
    let components: Vec<String> = artifacts
        .iter()
        .map(|a| {
            format!(
                r#"{{"name": "ui-{mb}mb", "version": "{VERSION}", "artifact": "{art}", "sha256": "{sha}", "size_bytes": {size}, "install_path": "/data/share/ui-{mb}mb", "kind": "directory"}}"#,
                mb = a.mb,
                art = a.expected.artifact,
                sha = a.expected.sha256,
                size = a.expected.size_bytes
            )
        })
        .collect();
    let json = format!(
        r#"{{"schema": 1, "product": "{PRODUCT}", "version": "{VERSION}", "channel": "{CHANNEL}", "release_date": "2026-01-01T00:00:00Z", "expires": "2036-01-01T00:00:00Z", "update_type": "component", "components": [{}], "release_notes": "benchmark"}}"#,
        components.join(", ")
    );
    let manifest = Manifest::parse(json.as_bytes(), UnknownFields::Reject)?;
    let bytes = manifest.to_bytes();
    let kp = KeyPair::generate()?;
    let key = work.join("bench.key");
    let secret = qx_core::fs::WriteOptions {
        mode: 0o600,
        no_clobber: false,
    };
    qx_core::fs::write_atomic_with(&key, kp.secret_key_file.as_bytes(), secret)?;
    let sig = SigningKey::from_file(&key)?.sign(&bytes, "benchmark")?;
    fs::write(work.join("bench.pub"), &kp.public_key_file)?;
    // The release files go into place as a publish puts them: atomically, durably.
    qx_core::fs::write_atomic(&version_dir.join(qx_core::MANIFEST_FILE), &bytes)?;
    qx_core::fs::write_atomic(&version_dir.join(qx_core::SIGNATURE_FILE), sig.as_bytes())?;
    Ok(())
}

/// The release update server over `releases`, its output into `server.log` in `work`.
fn start_server(bin: &Path, releases: &Path, work: &Path) -> Result<UpdateServer> {
    let log = File::create(work.join("server.log"))?;
    let mut cmd = UpdateServer::command(bin, releases, "bench-token-not-secret");
    cmd.env("CHANNELS", "dev,beta,stable")
        .stdout(log.try_clone()?)
        .stderr(log);
    UpdateServer::start(cmd, Duration::from_secs(10))
        .with_context(|| format!("see {}/server.log", work.display()))
}

/// Writes back every dirty page (the `sync` command), outside any timing.
fn settle() -> Result<()> {
    let st = Command::new("sync").status().context("running sync")?;
    ensure!(st.success(), "sync failed ({st})");
    Ok(())
}

fn fresh_dir(path: &Path) -> Result<()> {
    if path.exists() {
        fs::remove_dir_all(path)?;
    }
    fs::create_dir_all(path)?;
    Ok(())
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// The shell pipeline, timed until tar has finished and the checksum is written; then also
/// until `sync -f` has written its output to disk.
fn run_pipeline(work: &Path, url: &str, expected: &ArtifactRef) -> Result<(Duration, Duration)> {
    let dir = work.join("pipeline-out");
    fresh_dir(&dir)?;
    let sum = work.join("pipeline.sum");
    let _ = fs::remove_file(&sum);
    let script = format!(
        "set -o pipefail; curl -s '{url}' | tee >(sha256sum > {sum}) | zstd -d -q | tar -x -C {dir}",
        sum = shell_quote(&sum),
        dir = shell_quote(&dir),
    );
    let start = Instant::now();
    let st = Command::new("bash").args(["-c", &script]).status()?;
    ensure!(st.success(), "the shell pipeline failed ({st})");
    // bash does not wait for a process substitution: wait for sha256sum's line.
    let mut line = String::new();
    for _ in 0..60_000 {
        line = fs::read_to_string(&sum).unwrap_or_default();
        if line.ends_with('\n') {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed();
    let st = Command::new("sync").arg("-f").arg(&dir).status()?;
    ensure!(st.success(), "sync -f failed ({st})");
    let synced = start.elapsed();
    ensure!(
        line.starts_with(&expected.sha256.to_hex()),
        "the pipeline's sha256 ({}) differs from the artifact's",
        line.trim()
    );
    Ok((elapsed, synced))
}

/// Our download + verify + extract + install in a child process; the time is measured inside
/// it (the child is this binary, whose start-up checks Debian packages: not the agent's cost).
fn run_ours(work: &Path, url: &str, expected: &ArtifactRef) -> Result<Measured> {
    let staging = work.join("ours-staging");
    let target_parent = work.join("ours-root");
    fresh_dir(&staging)?;
    fresh_dir(&target_parent)?;
    let out = Command::new(std::env::current_exe()?)
        .args(["bench", "apply"])
        .env(WORKER_ENV, "1")
        .env("QX_BENCH_URL", url)
        .env("QX_BENCH_STAGING", &staging)
        .env("QX_BENCH_TARGET", target_parent.join("ui"))
        .env("QX_BENCH_ARTIFACT", expected.artifact.as_str())
        .env("QX_BENCH_SHA256", expected.sha256.to_hex())
        .env("QX_BENCH_SIZE", expected.size_bytes.to_string())
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(
        out.status.success(),
        "our apply worker failed ({})",
        out.status
    );
    let mut time = None;
    let mut peak_kib = None;
    for line in BufReader::new(&out.stdout[..]).lines() {
        let line = line?;
        if let Some(v) = line.strip_prefix("elapsed_us ") {
            time = Some(Duration::from_micros(v.trim().parse()?));
        }
        if let Some(v) = line.strip_prefix("vmhwm_kib ") {
            peak_kib = Some(v.trim().parse()?);
        }
    }
    match (time, peak_kib) {
        (Some(time), Some(peak_kib)) => Ok(Measured { time, peak_kib }),
        _ => bail!("the worker did not report its figures"),
    }
}

/// The child side: one apply of one directory component, then its figures on stdout.
fn worker() -> Result<()> {
    let var = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    let url = var("QX_BENCH_URL")?;
    let staging = PathBuf::from(var("QX_BENCH_STAGING")?);
    let target = PathBuf::from(var("QX_BENCH_TARGET")?);
    let expected = ArtifactRef {
        artifact: var("QX_BENCH_ARTIFACT")?.parse()?,
        sha256: var("QX_BENCH_SHA256")?.parse()?,
        size_bytes: var("QX_BENCH_SIZE")?.parse()?,
    };
    let extracted = staging.join("extracted");
    let start = Instant::now();
    let dl = qx_agent::download::Downloader::new(qx_agent::download::DownloadOptions::default())?;
    let archive = dl.fetch(&url, &staging, &expected, &mut |_| {})?;
    let fetched = start.elapsed();
    qx_agent::transaction::extract::extract_tar_zst(&archive, &extracted, 16 << 30)?;
    eprintln!(
        "bench apply worker: download + verify {:.3} s, extract {:.3} s",
        fetched.as_secs_f64(),
        (start.elapsed() - fetched).as_secs_f64()
    );
    // Only now, with the hash verified, does the tree go into place.
    fs::rename(&extracted, &target)?;
    qx_core::fs::fsync_parent(&target)?;
    let elapsed = start.elapsed();
    let hwm = vm_hwm_kib("self")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "elapsed_us {}", elapsed.as_micros())?;
    writeln!(out, "vmhwm_kib {hwm}")?;
    Ok(())
}

/// `qx-update apply` (release binary) on a fresh host root: the whole transaction (manifest
/// and signature, download, verify, extract, backup, install, version file, history, log),
/// under `/usr/bin/time` for its peak resident memory.
fn run_agent(bin: &Path, work: &Path, server: &ServerUrl, a: &Packed) -> Result<Measured> {
    let root = work.join("agent-root");
    fresh_dir(&root)?;
    let etc = root.join("etc/limiquantix");
    fs::create_dir_all(&etc)?;
    fs::copy(work.join("bench.pub"), etc.join("update-key.pub"))?;
    fs::write(
        etc.join("node.yaml"),
        format!(
            "updates:\n  enabled: true\n  server_url: \"{server}\"\n  product: {PRODUCT}\n  channel: {CHANNEL}\n  trusted_keys: [/etc/limiquantix/update-key.pub]\n  service_manager: command\n  restart_command: [\"/bin/true\", \"{{service}}\"]\n",
            server = server.base()
        ),
    )?;
    let rss = work.join("agent.rss");
    let component = format!("ui-{}mb", a.mb);
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&rss)
        .arg(bin)
        .arg("--root")
        .arg(&root)
        .args(["apply", "--yes", "--component", &component])
        .output()
        .context("running /usr/bin/time (Debian package `time`)")?;
    let wall = start.elapsed();
    ensure!(
        out.status.success(),
        "qx-update apply failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = root.join(format!("data/share/{component}/assets/part-0000.bin"));
    ensure!(
        installed.is_file(),
        "qx-update apply did not install {}",
        installed.display()
    );
    let peak_kib = fs::read_to_string(&rss)?
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .context("no peak memory figure from /usr/bin/time")?;
    Ok(Measured {
        time: wall,
        peak_kib,
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The "Agent apply" section with its markers: how it was measured, the table, the ratios
/// against the targets, the machine.
fn render(rows: &[Row], runs: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{SECTION_START}");
    let _ = writeln!(s, "## Agent apply\n");
    render_method(&mut s, runs);
    render_table(&mut s, rows);
    render_verdicts(&mut s, rows);
    render_machine(&mut s);
    let _ = write!(s, "{SECTION_END}");
    s
}

/// How the figures were taken, contender by contender.
fn render_method(s: &mut String, runs: usize) {
    let _ = writeln!(
        s,
        "Command: `cargo xtask bench apply` (release build; {runs} run(s) per figure, median time, \
         highest peak memory; every contender reads the same artifact from the same release \
         `qx-update-server` on loopback, in the same run, interleaved, each after a `sync` so \
         that none pays for another's dirty pages). The component is a \
         directory of 4 MiB files with ~6 bits of entropy per byte (zstd level 3 packs it to \
         ~3/4).\n"
    );
    let _ = writeln!(
        s,
        "- **pipeline** (the baseline): `curl -s URL | tee >(sha256sum > sum) | zstd -d | tar -x -C dir`, \
         timed until tar exits and the checksum is written; nothing is compared with the \
         checksum, nothing is fsynced (its writes are left dirty in the page cache); five \
         processes share the CPUs. *pipeline, then `sync -f`* adds the time to write its \
         output to disk (the durability the agent pays for with its fsyncs).\n\
         - **qx-update apply**: the real transaction, `qx-update --root R apply --yes`, on a fresh \
         host root; process wall time: manifest + signature fetch and checks, lock, journal, \
         download to staging (hashed and size-checked while streaming, its writeback started \
         every 8 MiB by a helper thread, fsynced), safe extraction (each file fsynced by a \
         helper thread while the next ones are extracted), every file and directory of the \
         new tree fsynced, backup, install by rename with fsyncs, version file, history, \
         update log. Peak RSS from `/usr/bin/time`.\n\
         - **core, two passes**: download + verify + extract + install only, as the apply path \
         does it: `Downloader::fetch` to a staging file, then the apply path's extractor from \
         that file, then a rename into place (the artifact is fsynced, the extracted files are \
         not); timed inside a child process; VmHWM of that process.\n"
    );
}

fn render_table(s: &mut String, rows: &[Row]) {
    let _ = writeln!(
        s,
        "| artifact (unpacked) | contender | time | × pipeline | peak memory |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|");
    for r in rows {
        let size = format!(
            "{} MB: {:.1} MiB ({:.1} MiB)",
            r.mb,
            r.artifact_bytes as f64 / 1048576.0,
            r.unpacked_bytes as f64 / 1048576.0
        );
        let _ = writeln!(
            s,
            "| {size} | pipeline | {:.3} s | 1.00 | |",
            secs(r.pipeline)
        );
        let _ = writeln!(
            s,
            "| {size} | pipeline, then `sync -f` | {:.3} s | {:.2} | |",
            secs(r.pipeline_synced),
            secs(r.pipeline_synced) / secs(r.pipeline)
        );
        for (name, m) in [
            ("qx-update apply", &r.agent),
            ("core, two passes", &r.two_pass),
        ] {
            let _ = writeln!(
                s,
                "| {size} | {name} | {:.3} s | {:.2} | {:.1} MiB |",
                secs(m.time),
                secs(m.time) / secs(r.pipeline),
                mib(m.peak_kib),
            );
        }
    }
}

/// Ratios against the durable baseline and the target; peak memory against the size.
fn render_verdicts(s: &mut String, rows: &[Row]) {
    let durable: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{:.2} ({} MB)",
                secs(r.agent.time) / secs(r.pipeline_synced),
                r.mb
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "\nqx-update apply against the durable baseline (pipeline, then `sync -f`): {}.",
        durable.join(", ")
    );
    let target: Vec<String> = rows
        .iter()
        .map(|r| {
            let ratio = secs(r.agent.time) / secs(r.pipeline);
            let verdict = if ratio <= 1.0 { "met" } else { "NOT met" };
            format!("{verdict} at {} MB ({ratio:.2}×)", r.mb)
        })
        .collect();
    let _ = writeln!(
        s,
        "\nTarget (qx-update apply ≤ 1.0× the pipeline, in this run): {}.",
        target.join(", ")
    );
    if let (Some(small), Some(large)) = (rows.first(), rows.last()) {
        if large.mb > small.mb {
            let _ = writeln!(
                s,
                "\nPeak memory, {} MB → {} MB artifact ({:.0}× the data): qx-update apply {:.1} → {:.1} MiB, \
                 core two passes {:.1} → {:.1} MiB: independent of the artifact's size.",
                small.mb,
                large.mb,
                large.artifact_bytes as f64 / small.artifact_bytes as f64,
                mib(small.agent.peak_kib),
                mib(large.agent.peak_kib),
                mib(small.two_pass.peak_kib),
                mib(large.two_pass.peak_kib),
            );
        }
    }
}

/// The machine may be shared: its CPUs and load say how far the figures can be trusted.
fn render_machine(s: &mut String) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let load = fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "unknown".into());
    let _ = writeln!(
        s,
        "\nMachine: {cpus} CPU(s) seen by the process; load average (1, 5, 15 min) at the end \
         of the run: {load}."
    );
}
