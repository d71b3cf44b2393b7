//! `cargo xtask bench store`: the update server keeping its releases in an S3-compatible
//! object store (a single Garage node on loopback, `qx_testkit::garage`), measured in one run
//! against the same server on a local release directory, against downloads straight from
//! Garage through a presigned URL (where `ARTIFACT_REDIRECT=presign` sends hosts), and
//! against nginx on the local directory's files (as `cargo xtask bench server` runs it).
//!
//! Measured with wrk: artifact download throughput (64 connections on the 50 MB artifact) and
//! manifest requests per second (64 connections) from each; the publish time of the same
//! signed 50 MB and 1 GiB releases on both backends; one server process on the object store
//! against two (same bucket and prefix, two wrk processes of 32 connections at once, summed).
//! Every wrk run also records who used the machine's CPU meanwhile: the machine's busy time
//! (`/proc/stat`), wrk, the servers and Garage (utime + stime in `/proc/<pid>/stat`). The
//! figures and ratios are printed and written into the "Object-store backend" section of
//! BENCHMARKS.md (between its `bench-store` markers).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use qx_core::api::ServerUrl;
use qx_testkit::garage::{Cluster, BUCKET};
use rustix::process::{waitid, Pid, WaitId, WaitIdOptions};

use crate::bench_server::{
    self as bs, check_download, mib, small_artifact, wrk_command, wrk_figures, Nginx, Run, CHANNEL,
    ROUNDS, RUN_SECS,
};
use crate::benchmarks::update_section;
use crate::process::{http_get, workspace_root, HttpAnswer, UpdateServer};

/// The prefix of the releases in the bucket.
const PREFIX: &str = "bench";
/// The lifetime of the presigned URL wrk drives: longer than the whole run.
const PRESIGN_TTL: &str = "1h";
/// Connections per measurement (split between the wrk processes when there are several).
const CONNECTIONS: u32 = 64;

const START: &str = "<!-- bench-store:start -->";
const END: &str = "<!-- bench-store:end -->";

pub fn run() -> anyhow::Result<()> {
    crate::deps::ensure(bs::PACKAGES)?;
    let garage = crate::deps::ensure_garage()?;
    // qx_testkit::garage runs the program QX_GARAGE names (else the one on PATH). Set while
    // this process has no other thread, so nothing reads the environment as it changes.
    std::env::set_var("QX_GARAGE", &garage);
    let bin = bs::build_server()?;
    let began = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("qx-bench-store-")
        .tempdir()?;
    let work = work.path();

    eprintln!("starting a single-node Garage (bucket {BUCKET}, prefix {PREFIX})");
    let cluster = Cluster::start(1);
    let garage_pid = garage_pid(&cluster)?;
    let store_env = cluster.bucket.env(PREFIX, 0);

    let local_dir = server_dir(work, "local")?;
    let local = bs::start_server(&bin, &local_dir, &work.join("local.log"), &[])?;
    let object = bs::start_server(
        &bin,
        &server_dir(work, "object-1")?,
        &work.join("object-1.log"),
        &store_env,
    )?;
    let publish = publish_both(work, &local, &object)?;
    let nginx = Nginx::start(work, &local_dir)?;
    let presigned = presigned_url(&bin, work, &store_env)?;

    let manifest = |url: &ServerUrl| Some(url.manifest(bs::RELEASES[0].0, CHANNEL));
    let mut targets = [
        Target {
            label: "(a) qx-update-server, local directory",
            short: "(a) server, local directory",
            download: small_artifact(local.url()),
            manifest: manifest(local.url()),
            servers: vec![local.pid()],
        },
        Target {
            label: "(b) qx-update-server, object store (bytes through the server)",
            short: "(b) server, object store",
            download: small_artifact(object.url()),
            manifest: manifest(object.url()),
            servers: vec![object.pid()],
        },
        Target {
            label: "(c) Garage directly: presigned URL (the `Location` of the server's `302`)",
            short: "(c) Garage, presigned URL",
            download: presigned,
            manifest: None,
            servers: Vec::new(),
        },
        Target {
            label: "(d) nginx, the local directory's files",
            short: "(d) nginx",
            download: small_artifact(&nginx.url),
            manifest: manifest(&nginx.url),
            servers: Vec::new(),
        },
    ];
    for t in &targets {
        check_download(&t.download)?;
    }
    // nginx's workers exist once it has answered.
    targets[3].servers = with_children(nginx.pid())?;
    let served = measure_sources(&targets, garage_pid)?;
    drop(nginx);
    drop(local);
    let scaling = measure_scaling(&bin, work, &store_env, &object, garage_pid)?;
    drop(object);

    let report = Report {
        machine: format!(
            "{}, object store Garage {}",
            bs::machine()?,
            crate::deps::GARAGE_VERSION
        ),
        sources: targets
            .iter()
            .map(|t| (t.label, t.short))
            .zip(served)
            .collect(),
        publish,
        scaling,
        took: began.elapsed(),
    };
    let text = report.markdown();
    println!("{text}");
    let block = format!("{START}\n{}\n{END}", text.trim_end());
    update_section(&workspace_root().join("BENCHMARKS.md"), START, END, &block)?;
    eprintln!(
        "BENCHMARKS.md updated (section \"Object-store backend\"); measurements took {:.1} min",
        report.took.as_secs_f64() / 60.0
    );
    Ok(())
}

/// A fresh release directory `work/name` (on the object store it holds only the SQLite fleet
/// database).
fn server_dir(work: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The pid of the Garage node's server (from the pid file the testkit writes).
fn garage_pid(cluster: &Cluster) -> anyhow::Result<u32> {
    let node = cluster.nodes.first().context("the cluster has no node")?;
    let path = node.dir.join("pid");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: not a pid: {text:?}", path.display()))
}

/// The publish times of one release on both backends.
struct Publish {
    name: &'static str,
    size: u64,
    local: Duration,
    object: Duration,
}

/// Publishes each release of [`bs::RELEASES`] — the same signed bytes — on the local
/// directory, then on the object store, timing each request end to end (curl until the 201).
fn publish_both(
    work: &Path,
    local: &UpdateServer,
    object: &UpdateServer,
) -> anyhow::Result<Vec<Publish>> {
    eprintln!("publishing a 50 MB and a 1 GiB release on both backends");
    let key = bs::signing_key(work)?;
    let mut times = Vec::new();
    for (product, name, size) in bs::RELEASES {
        let artifact = work.join(name);
        bs::write_pattern(&artifact, size)?;
        let release = bs::sign_release(work, &key, product, &artifact)?;
        let timed = |server: &UpdateServer| -> anyhow::Result<Duration> {
            let t = Instant::now();
            bs::upload(server.url(), &release)?;
            Ok(t.elapsed())
        };
        let (local, object) = (timed(local)?, timed(object)?);
        eprintln!(
            "  {name}: local {:.2} s, object store {:.2} s",
            local.as_secs_f64(),
            object.as_secs_f64()
        );
        times.push(Publish {
            name,
            size,
            local,
            object,
        });
        std::fs::remove_file(&artifact).ok();
    }
    Ok(times)
}

/// The presigned URL of the 50 MB artifact: the `Location` a server on the object store with
/// `ARTIFACT_REDIRECT=presign` (valid for [`PRESIGN_TTL`]) answers; that server is stopped
/// once it has answered (the URL needs only Garage).
fn presigned_url(
    bin: &Path,
    work: &Path,
    store_env: &[(&'static str, String)],
) -> anyhow::Result<String> {
    let mut env = store_env.to_vec();
    env.push(("ARTIFACT_REDIRECT", "presign".into()));
    env.push(("ARTIFACT_REDIRECT_TTL", PRESIGN_TTL.into()));
    let server = bs::start_server(
        bin,
        &server_dir(work, "presign")?,
        &work.join("presign.log"),
        &env,
    )?;
    let url = small_artifact(server.url());
    let answer = http_get(&url)?;
    redirect_target(&answer).with_context(|| format!("GET {url}"))
}

/// The target of a `302 Found`: its `Location`, an absolute `http://` URL (wrk, as run here,
/// speaks plain HTTP to the store's loopback endpoint).
fn redirect_target(answer: &HttpAnswer) -> anyhow::Result<String> {
    if answer.status != 302 {
        bail!(
            "expected a 302 redirect, got status {}:\n{}",
            answer.status,
            answer.head
        );
    }
    let location = answer
        .header("location")
        .filter(|l| !l.is_empty())
        .with_context(|| format!("a 302 without a Location:\n{}", answer.head))?;
    if !location.starts_with("http://") {
        bail!("the redirect's Location {location:?} is not an absolute http:// URL");
    }
    Ok(location.to_owned())
}

/// One way of serving the artifact (and, but for the redirect, the manifest).
struct Target {
    label: &'static str,
    /// The label in the CPU table.
    short: &'static str,
    download: String,
    manifest: Option<String>,
    /// The processes serving it (not Garage, counted on its own).
    servers: Vec<u32>,
}

/// The kept (best) runs of one target.
#[derive(Default)]
struct Source {
    download: Measured,
    manifest: Option<Measured>,
}

/// Downloads, then manifests, from each target, interleaved, best of [`ROUNDS`].
fn measure_sources(targets: &[Target], garage: u32) -> anyhow::Result<Vec<Source>> {
    let mut sources: Vec<Source> = targets.iter().map(|_| Source::default()).collect();
    eprintln!(
        "measuring downloads ({CONNECTIONS} connections, {RUN_SECS}s per run, {ROUNDS} rounds)"
    );
    for _ in 0..ROUNDS {
        for (t, s) in targets.iter().zip(&mut sources) {
            s.download
                .keep_best(drive(&[&t.download], CONNECTIONS, &t.servers, garage)?);
        }
    }
    eprintln!("measuring manifest requests");
    for _ in 0..ROUNDS {
        for (t, s) in targets.iter().zip(&mut sources) {
            if let Some(url) = &t.manifest {
                let m = drive(&[url], CONNECTIONS, &t.servers, garage)?;
                s.manifest
                    .get_or_insert_with(Measured::default)
                    .keep_best(m);
            }
        }
    }
    Ok(sources)
}

/// One server process on the object store against two.
struct Scaling {
    one: Source,
    two: Source,
}

/// Starts a second server on the same bucket and prefix (its own release directory, so its
/// own SQLite fleet database), then drives `first` alone with one wrk of 64 connections and
/// both at once with two wrk of 32 connections each, interleaved, best of [`ROUNDS`].
fn measure_scaling(
    bin: &Path,
    work: &Path,
    store_env: &[(&'static str, String)],
    first: &UpdateServer,
    garage: u32,
) -> anyhow::Result<Scaling> {
    let second = bs::start_server(
        bin,
        &server_dir(work, "object-2")?,
        &work.join("object-2.log"),
        store_env,
    )?;
    let (da, db) = (small_artifact(first.url()), small_artifact(second.url()));
    check_download(&db)?;
    let product = bs::RELEASES[0].0;
    let (ma, mb) = (
        first.url().manifest(product, CHANNEL),
        second.url().manifest(product, CHANNEL),
    );
    let pids = [first.pid(), second.pid()];
    let mut scaling = Scaling {
        one: Source::default(),
        two: Source::default(),
    };
    eprintln!("measuring 1 vs 2 server processes on the object store: downloads");
    for _ in 0..ROUNDS {
        let one = drive(&[&da], CONNECTIONS, &pids[..1], garage)?;
        scaling.one.download.keep_best(one);
        let two = drive(&[&da, &db], CONNECTIONS / 2, &pids, garage)?;
        scaling.two.download.keep_best(two);
    }
    eprintln!("measuring 1 vs 2 server processes on the object store: manifests");
    for _ in 0..ROUNDS {
        let one = drive(&[&ma], CONNECTIONS, &pids[..1], garage)?;
        scaling
            .one
            .manifest
            .get_or_insert_with(Measured::default)
            .keep_best(one);
        let two = drive(&[&ma, &mb], CONNECTIONS / 2, &pids, garage)?;
        scaling
            .two
            .manifest
            .get_or_insert_with(Measured::default)
            .keep_best(two);
    }
    Ok(scaling)
}

/// Shares of the machine's CPU time over one run (1.0: every core busy the whole run).
#[derive(Default, Clone, Copy)]
struct Cpu {
    busy: f64,
    wrk: f64,
    servers: f64,
    garage: f64,
}

impl Cpu {
    /// Busy time not spent in wrk, the servers or Garage: other processes, interrupts.
    fn other(&self) -> f64 {
        (self.busy - self.wrk - self.servers - self.garage).max(0.0)
    }

    /// wrk, the servers (named `servers`) and Garage, largest share first.
    fn named(&self, servers: &'static str) -> [(&'static str, f64); 3] {
        let mut parts = [
            ("wrk", self.wrk),
            (servers, self.servers),
            ("Garage", self.garage),
        ];
        parts.sort_by(|a, b| b.1.total_cmp(&a.1));
        parts
    }

    /// The process (or processes) with the largest share.
    fn largest(&self, servers: &'static str) -> &'static str {
        self.named(servers)[0].0
    }

    /// "Garage 64 %, the two servers 15 %, wrk 7 %, other 9 %".
    fn parts(&self, servers: &'static str) -> String {
        let mut parts: Vec<String> = self
            .named(servers)
            .iter()
            .map(|(name, share)| format!("{name} {:.0} %", pct(*share)))
            .collect();
        parts.push(format!("other {:.0} %", pct(self.other())));
        parts.join(", ")
    }
}

/// A wrk measurement (summed over its wrk processes) and the CPU used meanwhile.
#[derive(Default, Clone, Copy)]
struct Measured {
    run: Run,
    cpu: Cpu,
}

impl Measured {
    fn keep_best(&mut self, other: Measured) {
        if other.run.bytes_per_sec > self.run.bytes_per_sec {
            *self = other;
        }
    }
}

/// Clock ticks spent so far: by the machine (busy and in all), the `servers`, Garage.
struct Ticks {
    busy: u64,
    total: u64,
    servers: u64,
    garage: u64,
}

fn ticks(servers: &[u32], garage: u32) -> anyhow::Result<Ticks> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let (busy, total) = machine_ticks(&stat).context("no cpu line in /proc/stat")?;
    Ok(Ticks {
        busy,
        total,
        servers: servers
            .iter()
            .map(|p| pid_ticks(*p))
            .sum::<anyhow::Result<u64>>()?,
        garage: pid_ticks(garage)?,
    })
}

/// Busy and total clock ticks of all CPUs from `/proc/stat`'s `cpu` line: user, nice,
/// system, idle, iowait, irq, softirq, steal (guest time is inside user already); busy is all
/// but idle and iowait.
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()?;
    let (idle, iowait) = (*v.get(3)?, *v.get(4)?);
    let total: u64 = v.iter().sum();
    Some((total - idle - iowait, total))
}

/// utime + stime (clock ticks) of process `pid`, its threads included.
fn pid_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    process_ticks(&stat).with_context(|| format!("no utime and stime in {path}: {stat:?}"))
}

/// utime + stime from a `/proc/<pid>/stat` line: fields 14 and 15, counted past the command
/// name in parentheses (which may hold spaces and parentheses itself).
fn process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (the state).
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `pid` and its children (nginx: the master and its workers).
fn with_children(pid: u32) -> anyhow::Result<Vec<u32>> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut pids = vec![pid];
    for p in text.split_whitespace() {
        pids.push(
            p.parse()
                .with_context(|| format!("{path}: not a pid: {p:?}"))?,
        );
    }
    Ok(pids)
}

/// Runs one wrk per URL at the same time, each with `connections` connections, and sums
/// their figures; with the CPU the machine, wrk, the `servers` and Garage used meanwhile.
fn drive(
    urls: &[&str],
    connections: u32,
    servers: &[u32],
    garage: u32,
) -> anyhow::Result<Measured> {
    let before = ticks(servers, garage)?;
    let mut children = Vec::new();
    for url in urls {
        let child = wrk_command(url, connections, None)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting wrk")?;
        children.push((*url, child));
    }
    // Every child is reaped before an error of one is reported.
    let finished: Vec<_> = children
        .into_iter()
        .map(|(url, mut child)| (url, finish(&mut child)))
        .collect();
    let after = ticks(servers, garage)?;
    let mut sum = Run::default();
    let mut wrk_ticks = 0;
    for (url, result) in finished {
        let (status, stdout, stderr, ticks) = result?;
        let run = wrk_figures(url, None, status, &stdout, &stderr)?;
        sum.requests_per_sec += run.requests_per_sec;
        sum.bytes_per_sec += run.bytes_per_sec;
        sum.bytes += run.bytes;
        wrk_ticks += ticks;
    }
    let total = after.total.saturating_sub(before.total).max(1) as f64;
    let share = |a: u64, b: u64| a.saturating_sub(b) as f64 / total;
    let cpu = Cpu {
        busy: share(after.busy, before.busy),
        wrk: wrk_ticks as f64 / total,
        servers: share(after.servers, before.servers),
        garage: share(after.garage, before.garage),
    };
    eprintln!(
        "    CPU: busy {:.0}% (wrk {:.0}%, servers {:.0}%, Garage {:.0}%, other {:.0}%)",
        pct(cpu.busy),
        pct(cpu.wrk),
        pct(cpu.servers),
        pct(cpu.garage),
        pct(cpu.other())
    );
    Ok(Measured { run: sum, cpu })
}

/// Reads a child's output to its end and waits for it to exit; reads its CPU time while it is
/// a zombie (exited, not yet reaped: `/proc` still has its times), then reaps it.
fn finish(child: &mut Child) -> anyhow::Result<(ExitStatus, String, String, u64)> {
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_end(&mut stdout)
            .context("reading wrk's output")?;
    }
    let mut stderr = Vec::new();
    if let Some(mut err) = child.stderr.take() {
        err.read_to_end(&mut stderr)
            .context("reading wrk's error output")?;
    }
    waitid(
        WaitId::Pid(Pid::from_child(child)),
        WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
    )
    .context("waiting for wrk to exit")?;
    let ticks = pid_ticks(child.id());
    let status = child.wait().context("reaping wrk")?;
    Ok((
        status,
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
        ticks?,
    ))
}

fn pct(share: f64) -> f64 {
    share * 100.0
}

fn ratio(a: f64, b: f64) -> f64 {
    a / b.max(f64::MIN_POSITIVE)
}

struct Report {
    machine: String,
    /// ((label, short label), figures), in the order (a) local, (b) object store, (c)
    /// presigned, (d) nginx.
    sources: Vec<((&'static str, &'static str), Source)>,
    publish: Vec<Publish>,
    scaling: Scaling,
    took: Duration,
}

impl Report {
    fn markdown(&self) -> String {
        let mut s = String::from("## Object-store backend (issue 15)\n\n");
        s.push_str(&format!(
            "Command: `cargo xtask bench store` (builds `qx-update-server` in release mode; starts a single-node Garage on loopback (`qx_testkit::garage`: bucket `{BUCKET}`, default settings, so data is not fsynced), the server on a local release directory and the server on the object store (`RELEASE_STORE=s3://{BUCKET}/{PREFIX}`), publishes the same signed releases to both, starts nginx on the local directory's files as `bench server` does, and a third server with `ARTIFACT_REDIRECT=presign` (`ARTIFACT_REDIRECT_TTL={PRESIGN_TTL}`) only to take the presigned URL of the 50 MB artifact from its `302`; drives each with `wrk -t2`, best of {ROUNDS} interleaved {RUN_SECS}-second runs each). The measurements took {:.1} min.\n\n",
            self.took.as_secs_f64() / 60.0
        ));
        s.push_str(&format!(
            "Machine: {}. The machine is shared (other builds and tests may run; \"other\" in the CPU table below), so absolute figures are noisy; the ratios come from runs interleaved in the same minutes.\n\n",
            self.machine
        ));
        s.push_str("Baseline: nginx (`sendfile on`) on the local directory's files (the same reference as `bench server`), and for the object store the same server on the local directory.\n\n");
        s.push_str(&self.sources_table());
        s.push_str(&self.publish_table());
        s.push_str(&self.scaling_table());
        s.push_str(&self.cpu_table());
        s.push_str(&self.scaling_text());
        s
    }

    fn source(&self, i: usize) -> Option<&Source> {
        self.sources.get(i).map(|(_, s)| s)
    }

    fn sources_table(&self) -> String {
        let (Some(local), Some(nginx)) = (self.source(0), self.source(3)) else {
            return String::new();
        };
        let mut s = format!(
            "| serving the 50 MB artifact | download, {CONNECTIONS} connections | ÷ nginx | ÷ local | manifest, {CONNECTIONS} connections | ÷ nginx | ÷ local |\n|---|---|---|---|---|---|---|\n"
        );
        for ((label, _), src) in &self.sources {
            let dl = src.download.run;
            s.push_str(&format!(
                "| {label} | {:.0} MiB/s ({:.1} GiB read) | {:.2} | {:.2} |",
                mib(dl.bytes_per_sec),
                bs::gib(dl.bytes),
                ratio(dl.bytes_per_sec, nginx.download.run.bytes_per_sec),
                ratio(dl.bytes_per_sec, local.download.run.bytes_per_sec),
            ));
            match (&src.manifest, &local.manifest, &nginx.manifest) {
                (Some(m), Some(l), Some(n)) => s.push_str(&format!(
                    " {:.0} req/s | {:.2} | {:.2} |\n",
                    m.run.requests_per_sec,
                    ratio(m.run.requests_per_sec, n.run.requests_per_sec),
                    ratio(m.run.requests_per_sec, l.run.requests_per_sec),
                )),
                _ => s.push_str(" – (manifests are never redirected) | | |\n"),
            }
        }
        if let Some(object) = self.source(1) {
            s.push_str(&format!(
                "\nObject store vs local directory, through the server: downloads {:.2}×",
                ratio(
                    object.download.run.bytes_per_sec,
                    local.download.run.bytes_per_sec
                )
            ));
            if let (Some(o), Some(l)) = (&object.manifest, &local.manifest) {
                s.push_str(&format!(
                    ", manifests {:.2}×",
                    ratio(o.run.requests_per_sec, l.run.requests_per_sec)
                ));
            }
            s.push('.');
            if let Some(direct) = self.source(2) {
                let (b, c) = (object.download.cpu, direct.download.cpu);
                s.push_str(&format!(
                    " In the kept download runs Garage used {:.0} % of the machine's CPU time when the server passed its bytes on (the server {:.0} %) and {:.0} % serving the presigned URL itself",
                    pct(b.garage),
                    pct(b.servers),
                    pct(c.garage)
                ));
                if b.garage > b.servers {
                    s.push_str(
                        ": downloads from the object store cost the store more CPU than the server",
                    );
                }
                s.push('.');
            }
            s.push('\n');
        }
        s.push('\n');
        s
    }

    fn publish_table(&self) -> String {
        let mut s = String::from("Publish through the API, the same signed release on each backend, timed end to end (curl's multipart upload until the `201`; on the local directory the server hashes while streaming, fsyncs and renames into place; on the object store it streams into staged objects and commits by server-side copy, the manifest last):\n\n| release | local directory | object store | object ÷ local |\n|---|---|---|---|\n");
        for p in &self.publish {
            s.push_str(&format!(
                "| {} ({}) | {:.2} s | {:.2} s | {:.2} |\n",
                p.name,
                size_label(p.size),
                p.local.as_secs_f64(),
                p.object.as_secs_f64(),
                ratio(p.object.as_secs_f64(), p.local.as_secs_f64())
            ));
        }
        s.push('\n');
        s
    }

    fn scaling_table(&self) -> String {
        let Scaling { one, two } = &self.scaling;
        let mut s = format!(
            "Scaling with server processes on this machine, object-store backend: 1 server process driven by one wrk of {CONNECTIONS} connections, against 2 processes (different ports, the same bucket and prefix) driven by two wrk of {} connections each at the same time, figures summed. Each process has its own `RELEASE_DIR`, so its own SQLite fleet database: only downloads and manifests are measured, and they never touch it (servers sharing a fleet share PostgreSQL through `DATABASE_URL`).\n\n| object-store backend | download, 50 MB | manifest |\n|---|---|---|\n",
            CONNECTIONS / 2
        );
        let row = |label: &str, src: &Source| {
            format!(
                "| {label} | {:.0} MiB/s ({:.1} GiB read) | {} |\n",
                mib(src.download.run.bytes_per_sec),
                bs::gib(src.download.run.bytes),
                src.manifest
                    .map(|m| format!("{:.0} req/s", m.run.requests_per_sec))
                    .unwrap_or_else(|| "–".into())
            )
        };
        s.push_str(&row("1 server process", one));
        s.push_str(&row("2 server processes", two));
        s.push_str(&format!(
            "| 2 ÷ 1 | {:.2} | {} |\n\n",
            ratio(
                two.download.run.bytes_per_sec,
                one.download.run.bytes_per_sec
            ),
            match (&two.manifest, &one.manifest) {
                (Some(t), Some(o)) => format!(
                    "{:.2}",
                    ratio(t.run.requests_per_sec, o.run.requests_per_sec)
                ),
                _ => "–".into(),
            }
        ));
        s
    }

    fn cpu_table(&self) -> String {
        let mut s = String::from("Who used the CPU during each kept run: shares of the machine's CPU time over the run (100 % = every core busy the whole run), from `/proc/stat` and utime + stime in `/proc/<pid>/stat` of wrk, the serving processes (qx-update-server; nginx's master and workers) and the Garage node; \"other\" is the rest of the busy time (other processes on the machine, interrupts).\n\n| run | busy | wrk | server(s) | Garage | other |\n|---|---|---|---|---|---|\n");
        let row = |label: String, m: &Measured| {
            let c = m.cpu;
            format!(
                "| {label} | {:.0} % | {:.0} % | {:.0} % | {:.0} % | {:.0} % |\n",
                pct(c.busy),
                pct(c.wrk),
                pct(c.servers),
                pct(c.garage),
                pct(c.other())
            )
        };
        for ((_, short), src) in &self.sources {
            s.push_str(&row(format!("download, {short}"), &src.download));
        }
        for ((_, short), src) in &self.sources {
            if let Some(m) = &src.manifest {
                s.push_str(&row(format!("manifest, {short}"), m));
            }
        }
        let Scaling { one, two } = &self.scaling;
        s.push_str(&row(
            "download, 1 object-store process".into(),
            &one.download,
        ));
        s.push_str(&row(
            "download, 2 object-store processes".into(),
            &two.download,
        ));
        for (label, src) in [("1", one), ("2", two)] {
            if let Some(m) = &src.manifest {
                s.push_str(&row(
                    format!(
                        "manifest, {label} object-store process{}",
                        if label == "1" { "" } else { "es" }
                    ),
                    m,
                ));
            }
        }
        s.push('\n');
        s
    }

    /// What limits the scaling figures, from the CPU shares of the 2-process runs.
    fn scaling_text(&self) -> String {
        let Scaling { one, two } = &self.scaling;
        let mut s = format!(
            "Two server processes served {:.2}× the download throughput of one",
            ratio(
                two.download.run.bytes_per_sec,
                one.download.run.bytes_per_sec
            )
        );
        if let (Some(t), Some(o)) = (&two.manifest, &one.manifest) {
            s.push_str(&format!(
                " and {:.2}× its manifest requests",
                ratio(t.run.requests_per_sec, o.run.requests_per_sec)
            ));
        }
        s.push_str(". ");
        let runs: Vec<(&str, Cpu)> = [
            ("downloads", Some(two.download)),
            ("manifests", two.manifest),
        ]
        .into_iter()
        .filter_map(|(what, m)| Some((what, m?.cpu)))
        .collect();
        let least_busy = runs.iter().map(|(_, c)| c.busy).fold(1.0, f64::min);
        let shares = runs
            .iter()
            .map(|(what, c)| format!("{what}: {}", c.parts("the two servers")))
            .collect::<Vec<_>>()
            .join("; ");
        if least_busy >= 0.9 {
            let largest = runs
                .iter()
                .map(|(what, c)| format!("to {} on {what}", c.largest("the servers")))
                .collect::<Vec<_>>()
                .join(" and ");
            s.push_str(&format!(
                "The CPU is the limit: the machine's cores were at least {:.0} % busy in both kept 2-process runs, shared by wrk, the servers and Garage ({shares}). One server process already runs a runtime on each core, so a second finds no idle core and only moves CPU time between the processes: most of it goes {largest}. These figures say nothing of how the servers scale where each of them (and the store, and the clients) has cores of its own.\n",
                pct(least_busy)
            ));
        } else {
            s.push_str(&format!(
                "The CPU was not saturated in every kept 2-process run (the least busy at {:.0} %; {shares}), so something besides CPU time, not measured here, limits these figures too.\n",
                pct(least_busy)
            ));
        }
        s
    }
}

/// `50 MB` or `1 GiB`, as the sizes are named elsewhere in this file.
fn size_label(size: u64) -> String {
    if size >= 1 << 30 {
        format!("{:.0} GiB", bs::gib(size as f64))
    } else {
        format!("{} MB", size / 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, head: &str) -> HttpAnswer {
        HttpAnswer {
            status,
            head: head.into(),
            body: Vec::new(),
        }
    }

    #[test]
    fn redirect_target_is_the_location_of_a_302() {
        let url = "http://127.0.0.1:3900/qx-releases/bench/bench/stable/1.0.0/payload-50m.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature=ab12";
        let found = answer(
            302,
            &format!("HTTP/1.1 302 Found\r\nlocation: {url}\r\ncache-control: no-store\r\n"),
        );
        assert_eq!(redirect_target(&found).expect("a target"), url);
    }

    #[test]
    fn redirect_target_refuses_what_is_not_an_absolute_http_redirect() {
        let ok = answer(200, "HTTP/1.1 200 OK\r\nLocation: http://x/y\r\n");
        assert!(redirect_target(&ok).is_err());
        let bare = answer(302, "HTTP/1.1 302 Found\r\ncontent-length: 0\r\n");
        assert!(redirect_target(&bare).is_err());
        let empty = answer(302, "HTTP/1.1 302 Found\r\nLocation: \r\n");
        assert!(redirect_target(&empty).is_err());
        let relative = answer(302, "HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\n");
        assert!(redirect_target(&relative).is_err());
        let tls = answer(
            302,
            "HTTP/1.1 302 Found\r\nLocation: https://cdn.example/a\r\n",
        );
        assert!(redirect_target(&tls).is_err());
    }

    #[test]
    fn machine_ticks_count_busy_and_total_time() {
        let stat = "cpu  100 5 20 1000 50 1 2 3 40 0\ncpu0 50 2 10 500 25 0 1 1 20 0\n";
        // busy: user + nice + system + irq + softirq + steal (guest is inside user).
        assert_eq!(machine_ticks(stat), Some((131, 1181)));
        assert_eq!(machine_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(machine_ticks("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn process_ticks_are_utime_plus_stime_past_an_odd_command_name() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 1185 0 0 0 731 269 0 0 20 0 4 0 \
                    1234 56789 123 18446744073709551615";
        assert_eq!(process_ticks(stat), Some(1000));
        assert_eq!(process_ticks("4242 (short) S 1 2 3"), None);
        assert_eq!(process_ticks("no parenthesis at all"), None);
    }

    #[test]
    fn a_finished_childs_cpu_time_is_read_before_it_is_reaped() {
        let mut child = std::process::Command::new("/bin/sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; echo done",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sh");
        let (status, stdout, _, ticks) = finish(&mut child).expect("finish");
        assert!(status.success());
        assert_eq!(stdout.trim(), "done");
        assert!(ticks > 0, "a busy loop of 300000 rounds took no CPU time");
    }

    #[test]
    fn cpu_parts_are_named_largest_first_with_the_rest_last() {
        let cpu = Cpu {
            busy: 0.95,
            wrk: 0.07,
            servers: 0.15,
            garage: 0.64,
        };
        assert_eq!(
            cpu.parts("the servers"),
            "Garage 64 %, the servers 15 %, wrk 7 %, other 9 %"
        );
        assert_eq!(cpu.largest("the servers"), "Garage");
    }

    #[test]
    fn sizes_are_labelled_as_the_releases_are() {
        assert_eq!(size_label(50_000_000), "50 MB");
        assert_eq!(size_label(1 << 30), "1 GiB");
    }
}
