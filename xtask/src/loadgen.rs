//! `cargo xtask bench fleet`: the fleet's load generator. Starts a release-build
//! `qx-update-server` on loopback (a SQLite file, or a throwaway PostgreSQL cluster of
//! `qx_testkit::postgres`), enrolls N simulated hosts once (concurrently), then plays
//! check-ins and event batches from all of them for a fixed time, as fast as possible or at a
//! configured rate, over a bounded number of keep-alive connections. Reports sustained
//! check-ins per second, p50/p99 latency, the server's RSS before and after the load, and the
//! time of the dashboard's queries (the first host page, and its overview
//! `GET /api/v1/fleet/summary`). The figures go into the "Fleet ingest" section of BENCHMARKS.md.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use qx_core::api::ServerUrl;
use qx_core::fleet::{
    CheckIn, CheckInReason, EnrollmentTokenCreated, Event, EventBatch, EventType, Identity,
};

use crate::benchmarks::update_section;
use crate::process::{target_dir, workspace_root, UpdateServer};

const TOKEN: &str = "bench-fleet-token-0123456789abcdef";
const START: &str = "<!-- bench-fleet:start -->";
const END: &str = "<!-- bench-fleet:end -->";
/// Events per batch; one batch is sent after every [`CHECKINS_PER_BATCH`] check-ins.
const EVENTS_PER_BATCH: u64 = 2;
const CHECKINS_PER_BATCH: u64 = 4;

/// The store the server runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Fleet sizes; a fresh server and store for each.
    pub hosts: Vec<usize>,
    pub engines: Vec<Engine>,
    pub secs: u64,
    /// Connections (each a thread) playing the hosts.
    pub concurrency: usize,
    /// Check-ins per second across all connections; 0: as fast as possible.
    pub rate: u32,
}

/// One run's figures.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub engine: Engine,
    pub hosts: usize,
    pub enroll: Duration,
    pub checkins: Latencies,
    pub events: Latencies,
    pub refused: u64,
    pub failed: u64,
    pub elapsed: Duration,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    /// SQLite: the size of the WAL file after the load (the background checkpoint bounds it).
    pub wal_bytes: Option<u64>,
    pub host_page: Duration,
    pub counts: Duration,
}

/// Request latencies in microseconds.
#[derive(Debug, Clone, Default)]
pub struct Latencies(pub Vec<u32>);

impl Latencies {
    /// The `q`-quantile (0..=1) by nearest rank; zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort_unstable();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Duration::from_micros(u64::from(v[rank - 1]))
    }
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let bin = build_server()?;
    let mut reports = Vec::new();
    for &engine in &opts.engines {
        for &hosts in &opts.hosts {
            eprintln!("fleet load: {engine:?}, {hosts} hosts");
            let report = run_one(&bin, engine, hosts, opts)?;
            eprintln!("{}", row(&report));
            reports.push(report);
        }
    }
    let text = markdown(opts, &reports, &machine());
    println!("{text}");
    let block = format!("{START}\n{}\n{END}", text.trim_end());
    update_section(&workspace_root().join("BENCHMARKS.md"), START, END, &block)?;
    eprintln!("BENCHMARKS.md updated (section \"Fleet ingest\")");
    Ok(())
}

fn build_server() -> anyhow::Result<PathBuf> {
    crate::deps::cargo(&[
        "build",
        "--release",
        "-p",
        "qx-server",
        "--bin",
        "qx-update-server",
    ])?;
    let bin = target_dir().join("release/qx-update-server");
    if !bin.is_file() {
        bail!("the release build did not produce {}", bin.display());
    }
    Ok(bin)
}

/// The server's overload limit during the benchmark (host requests per second): far above
/// what it can serve.
const BENCH_RATE_LIMIT: u32 = 1_000_000;

fn run_one(bin: &Path, engine: Engine, hosts: usize, opts: &Options) -> anyhow::Result<RunReport> {
    let work = tempfile::Builder::new()
        .prefix("qx-bench-fleet-")
        .tempdir()?;
    let releases = work.path().join("releases");
    std::fs::create_dir_all(&releases)?;
    let log = std::fs::File::create(work.path().join("server.log"))?;
    let mut cmd = UpdateServer::command(bin, &releases, TOKEN);
    cmd.stdout(Stdio::null()).stderr(log);
    // The store's capacity is measured, not the overload limit's (a 429 costs the server
    // almost nothing and would count as neither a check-in nor load).
    cmd.env("FLEET_RATE_LIMIT", BENCH_RATE_LIMIT.to_string());
    if engine == Engine::Postgres {
        cmd.env("DATABASE_URL", qx_testkit::postgres::database().url);
    }
    let server = UpdateServer::start(cmd, Duration::from_secs(60))?;
    let addr = server_addr(server.url())?;
    let api = server.url().clone();

    let started = Instant::now();
    let identities = enroll_all(addr, &api, hosts, opts.concurrency)?;
    let enroll = started.elapsed();
    let rss_start_kib = vm_rss_kib(server.pid())?;
    let load = play(addr, &api, &identities, opts)?;
    let rss_end_kib = vm_rss_kib(server.pid())?;
    let wal = releases.join(".fleet/fleet.db-wal");
    let wal_bytes =
        (engine == Engine::Sqlite).then(|| std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    if load.failed > 0 {
        print_log_tail(&work.path().join("server.log"), load.failed);
    }
    let mut conn = Conn::new(addr);
    let host_page = timed(|| conn.expect(&get(&api.hosts("limit=100"), TOKEN), 200))?;
    let counts = timed(|| conn.expect(&get(&api.fleet_summary(), TOKEN), 200))?;
    Ok(RunReport {
        engine,
        hosts,
        enroll,
        rss_start_kib,
        rss_end_kib,
        wal_bytes,
        host_page,
        counts,
        ..load
    })
}

/// The end of the server's log, after requests that failed (neither 200 nor 429).
fn print_log_tail(log: &Path, failed: u64) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("{failed} requests failed; the end of the server's log:");
    for line in &lines[lines.len().saturating_sub(20)..] {
        eprintln!("  {line}");
    }
}

fn timed(mut f: impl FnMut() -> anyhow::Result<Vec<u8>>) -> anyhow::Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

fn server_addr(url: &ServerUrl) -> anyhow::Result<SocketAddr> {
    let s = url.base();
    s.trim_start_matches("http://")
        .parse()
        .with_context(|| format!("the server's address in {s}"))
}

/// Current resident set size (VmRSS) in KiB of process `pid`.
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// Creates one enrollment token for `hosts` uses, then enrolls them over `concurrency`
/// connections; a 429 is retried after the time the server names.
fn enroll_all(
    addr: SocketAddr,
    api: &ServerUrl,
    hosts: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Identity>> {
    let uses = u32::try_from(hosts).context("too many hosts")?;
    let body = serde_json::json!({"product": "bench-os", "uses": uses, "expires_in": "1d"});
    let req = post(&api.enrollment_tokens(), TOKEN, &serde_json::to_vec(&body)?);
    let created: EnrollmentTokenCreated =
        serde_json::from_slice(&Conn::new(addr).expect(&req, 201)?)?;
    let next = AtomicUsize::new(0);
    let enroll = post(&api.enroll(), &created.token, b"{}");
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<Vec<Identity>> {
                    let mut conn = Conn::new(addr);
                    let mut mine = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < hosts {
                        let body = conn.until_admitted(&enroll, 201)?;
                        mine.push(serde_json::from_slice(&body)?);
                    }
                    Ok(mine)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(hosts);
        for w in workers {
            let part = w
                .join()
                .map_err(|_| anyhow::anyhow!("an enroll thread panicked"))?;
            all.extend(part?);
        }
        Ok(all)
    })
}

/// What one load thread saw.
#[derive(Default)]
struct Tally {
    checkins: Vec<u32>,
    events: Vec<u32>,
    refused: u64,
    failed: u64,
}

/// Plays check-ins and event batches from every host for `opts.secs`: thread `i` plays hosts
/// `i, i + c, i + 2c, …` round-robin.
fn play(
    addr: SocketAddr,
    api: &ServerUrl,
    hosts: &[Identity],
    opts: &Options,
) -> anyhow::Result<RunReport> {
    let threads = opts.concurrency.max(1).min(hosts.len().max(1));
    let interval = pace(opts.rate, threads);
    let started = Instant::now();
    let until = started + Duration::from_secs(opts.secs);
    let tallies = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let mine: Vec<&Identity> = hosts.iter().skip(i).step_by(threads).collect();
                s.spawn(move || play_thread(addr, api, &mine, until, interval))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| anyhow::anyhow!("a load thread panicked"))
            })
            .collect::<anyhow::Result<Vec<Tally>>>()
    })?;
    let elapsed = started.elapsed();
    let mut all = Tally::default();
    for t in tallies {
        all.checkins.extend(t.checkins);
        all.events.extend(t.events);
        all.refused += t.refused;
        all.failed += t.failed;
    }
    Ok(RunReport {
        engine: Engine::Sqlite,
        hosts: hosts.len(),
        enroll: Duration::ZERO,
        checkins: Latencies(all.checkins),
        events: Latencies(all.events),
        refused: all.refused,
        failed: all.failed,
        elapsed,
        rss_start_kib: 0,
        rss_end_kib: 0,
        wal_bytes: None,
        host_page: Duration::ZERO,
        counts: Duration::ZERO,
    })
}

/// The time between two check-ins of one thread for `rate` check-ins per second across
/// `threads` threads; `None`: as fast as possible.
pub fn pace(rate: u32, threads: usize) -> Option<Duration> {
    (rate > 0).then(|| Duration::from_secs_f64(threads as f64 / f64::from(rate)))
}

fn play_thread(
    addr: SocketAddr,
    api: &ServerUrl,
    hosts: &[&Identity],
    until: Instant,
    interval: Option<Duration>,
) -> Tally {
    let mut conn = Conn::new(addr);
    let mut tally = Tally::default();
    let mut seqs = vec![0u64; hosts.len()];
    let mut next_at = Instant::now();
    let mut round = 0u64;
    loop {
        for (h, host) in hosts.iter().enumerate() {
            let now = Instant::now();
            if now >= until {
                return tally;
            }
            if let Some(step) = interval {
                if next_at > now {
                    std::thread::sleep(next_at - now);
                }
                next_at += step;
            }
            let body = checkin_body(h);
            let req = post(&api.checkin(&host.host_id), &host.host_token, &body);
            let outcome = send(&mut conn, &req);
            tally.record(outcome, false);
            if round % CHECKINS_PER_BATCH == (h as u64) % CHECKINS_PER_BATCH {
                let body = events_body(&mut seqs[h]);
                let req = post(&api.host_events(&host.host_id), &host.host_token, &body);
                let outcome = send(&mut conn, &req);
                tally.record(outcome, true);
            }
        }
        if hosts.is_empty() {
            return tally;
        }
        round += 1;
    }
}

/// How a request went.
enum Outcome {
    /// 200 after this many microseconds.
    Answered(u32),
    /// 429: the overload limit.
    Refused,
    Failed,
}

impl Tally {
    fn record(&mut self, outcome: Outcome, events: bool) {
        match outcome {
            Outcome::Answered(us) if events => self.events.push(us),
            Outcome::Answered(us) => self.checkins.push(us),
            Outcome::Refused => self.refused += 1,
            Outcome::Failed => self.failed += 1,
        }
    }
}

fn send(conn: &mut Conn, req: &[u8]) -> Outcome {
    let t = Instant::now();
    match conn.call(req) {
        Ok((200, _)) => {
            Outcome::Answered(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX))
        }
        Ok((429, _)) => Outcome::Refused,
        _ => Outcome::Failed,
    }
}

fn checkin_body(salt: usize) -> Vec<u8> {
    let version = if salt.is_multiple_of(10) {
        "1.1.0"
    } else {
        "1.0.0"
    };
    let report = CheckIn {
        reason: CheckInReason::Check,
        agent_version: "0.1.0".into(),
        channel: "stable".into(),
        installed: [("bench-os".to_owned(), version.to_owned())].into(),
        booted_slot: None,
        slots: Vec::new(),
        pending: None,
        last_result: None,
        health: Some("ok".into()),
        labels: Default::default(),
        uptime_s: 3600,
        time: None,
    };
    serde_json::to_vec(&report).unwrap_or_default()
}

fn events_body(seq: &mut u64) -> Vec<u8> {
    let events = (0..EVENTS_PER_BATCH)
        .map(|i| {
            *seq += 1;
            Event {
                seq: *seq,
                kind: if i == 0 {
                    EventType::DownloadStarted
                } else {
                    EventType::DownloadDone
                },
                time: "2026-01-01T00:00:00Z".into(),
                version: Some("1.1.0".into()),
                component: None,
                stage: None,
                exit_code: None,
                message: None,
                count: None,
            }
        })
        .collect();
    serde_json::to_vec(&EventBatch { events }).unwrap_or_default()
}

/// The path and query of a URL (`http://host:port/a?b` → `/a?b`).
fn path_of(url: &str) -> &str {
    let rest = url.trim_start_matches("http://");
    rest.find('/').map_or("/", |i| &rest[i..])
}

fn post(url: &str, token: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        path_of(url),
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

fn get(url: &str, token: &str) -> Vec<u8> {
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    format!("GET {} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n", path_of(url)).into_bytes()
}

/// One keep-alive HTTP/1.1 connection, reopened after an error.
struct Conn {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, stream: None }
    }

    /// Sends `req`; the status and body of the answer.
    fn call(&mut self, req: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let res = self.try_call(req);
        if res.is_err() {
            self.stream = None;
        }
        res
    }

    fn try_call(&mut self, req: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.stream = Some(BufReader::new(s));
        }
        let Some(stream) = self.stream.as_mut() else {
            bail!("no connection");
        };
        stream.get_mut().write_all(req)?;
        read_answer(stream)
    }

    /// Sends `req`, fails unless the answer is `want`; the body.
    fn expect(&mut self, req: &[u8], want: u16) -> anyhow::Result<Vec<u8>> {
        let (status, body) = self.call(req)?;
        if status != want {
            bail!(
                "{}: {status} (expected {want}): {}",
                String::from_utf8_lossy(req.split(|b| *b == b'\r').next().unwrap_or(b"")),
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body)
    }

    /// [`Conn::expect`], retrying after a 429 once the `retry_after_s` it names has passed.
    fn until_admitted(&mut self, req: &[u8], want: u16) -> anyhow::Result<Vec<u8>> {
        loop {
            let (status, body) = self.call(req)?;
            if status != 429 {
                if status != want {
                    bail!("{status}: {}", String::from_utf8_lossy(&body));
                }
                return Ok(body);
            }
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let secs = v["details"][0]["retry_after_s"].as_u64().unwrap_or(1);
            std::thread::sleep(Duration::from_secs(secs.min(5)));
        }
    }
}

/// Reads one answer: status line, headers, a `Content-Length` body.
fn read_answer(r: &mut impl BufRead) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("the server closed the connection");
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("the answer's head ended early");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().context("Content-Length")?;
            }
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    Ok((status, body))
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cpus} CPU(s) seen by the process; load average (1, 5, 15 min) at the end: {}",
        load.join(", ")
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// One table row of a run.
pub fn row(r: &RunReport) -> String {
    let secs = r.elapsed.as_secs_f64().max(f64::EPSILON);
    let rate = r.checkins.0.len() as f64 / secs;
    let events = r.events.0.len() as f64 * EVENTS_PER_BATCH as f64 / secs;
    format!(
        "| {:?} | {} | {:.1} s | {:.0} /s | {} | {} | {:.0} /s | {} | {} | {} → {} | {} | {} | {} |",
        r.engine,
        r.hosts,
        r.enroll.as_secs_f64(),
        rate,
        ms(r.checkins.quantile(0.5)),
        ms(r.checkins.quantile(0.99)),
        events,
        ms(r.events.quantile(0.99)),
        r.refused + r.failed,
        mib(r.rss_start_kib),
        mib(r.rss_end_kib),
        ms(r.host_page),
        ms(r.counts),
        r.wal_bytes
            .map_or_else(|| "–".to_owned(), |b| mib(b / 1024)),
    )
}

/// The section of BENCHMARKS.md.
pub fn markdown(opts: &Options, reports: &[RunReport], machine: &str) -> String {
    let hosts: Vec<String> = opts.hosts.iter().map(ToString::to_string).collect();
    let engines: Vec<String> = opts
        .engines
        .iter()
        .map(|e| format!("{e:?}").to_lowercase())
        .collect();
    let mut out = format!(
        "## Fleet ingest\n\nCommand: `cargo xtask bench fleet --hosts {} --engines {} --secs {} \
         --concurrency {} --rate {}` (release `qx-update-server` on loopback, a fresh server and \
         store per row; hosts enrolled once over the same connections, then each connection \
         plays its share of the hosts round-robin: a check-in each, and an event batch of {} \
         events after every {} check-ins; keep-alive HTTP/1.1, rate {}; the server's \
         `FLEET_RATE_LIMIT` raised to {} so that the store, not the overload limit, is \
         measured).\n\n",
        hosts.join(","),
        engines.join(","),
        opts.secs,
        opts.concurrency,
        opts.rate,
        EVENTS_PER_BATCH,
        CHECKINS_PER_BATCH,
        if opts.rate == 0 {
            "as fast as the server answers".to_owned()
        } else {
            format!("{} check-ins/s", opts.rate)
        },
        BENCH_RATE_LIMIT
    );
    out.push_str(
        "| engine | hosts | enroll | check-ins | p50 | p99 | events | events p99 | 429 + errors | server RSS start → end | host page (100) | fleet counts | WAL after |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in reports {
        out.push_str(&row(r));
        out.push('\n');
    }
    out.push_str(&targets(reports));
    out.push_str(&format!(
        "\n\"fleet counts\" is the dashboard's overview, `GET /api/v1/fleet/summary` (the store's \
         counts by version, channel, state and liveness, and the day's failures), right after \
         the load. \"host page\" is \
         `GET /api/v1/hosts?limit=100`. Server RSS is VmRSS after enrollment and after the load. \
         PostgreSQL is the throwaway cluster of `qx_testkit::postgres` (a Unix socket, \
         `fsync=off`, `synchronous_commit=off`); SQLite runs as shipped (WAL, \
         `synchronous=NORMAL`, the WAL checkpointed in the background; \"WAL after\" is its file's \
         size after the load). The load generator runs on the same 2 cores as the server.\n\n\
         Machine: {machine}.\n"
    ));
    out
}

/// The targets (issue 12) as the baseline: ≥ 2,000 check-ins/s with p99 < 100 ms on SQLite,
/// the overview < 300 ms, RSS flat in the number of hosts.
pub fn targets(reports: &[RunReport]) -> String {
    let mut out = String::from(
        "\nAgainst the targets (check-ins/s ÷ 2,000, p99 ÷ 100 ms, fleet counts ÷ 300 ms; \
         the first must be ≥ 1, the others < 1):\n\n",
    );
    for r in reports {
        let rate = r.checkins.0.len() as f64 / r.elapsed.as_secs_f64().max(f64::EPSILON);
        let p99 = r.checkins.quantile(0.99).as_secs_f64() / 0.1;
        let counts = r.counts.as_secs_f64() / 0.3;
        let met = rate >= 2000.0 && p99 < 1.0 && counts < 1.0;
        out.push_str(&format!(
            "- {:?}, {} hosts: {:.2} / {:.2} / {:.2}: {}\n",
            r.engine,
            r.hosts,
            rate / 2000.0,
            p99,
            counts,
            if met { "met" } else { "not met" }
        ));
    }
    for engine in [Engine::Sqlite, Engine::Postgres] {
        let runs: Vec<&RunReport> = reports.iter().filter(|r| r.engine == engine).collect();
        if let (Some(small), Some(large)) = (
            runs.iter().min_by_key(|r| r.hosts),
            runs.iter().max_by_key(|r| r.hosts),
        ) {
            if large.hosts > small.hosts {
                out.push_str(&format!(
                    "- {engine:?} server RSS after the load, {} → {} hosts: {} → {} ({:.2}×)\n",
                    small.hosts,
                    large.hosts,
                    mib(small.rss_end_kib),
                    mib(large.rss_end_kib),
                    large.rss_end_kib as f64 / small.rss_end_kib.max(1) as f64
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let l = Latencies((1..=100).rev().collect());
        assert_eq!(l.quantile(0.5), Duration::from_micros(50));
        assert_eq!(l.quantile(0.99), Duration::from_micros(99));
        assert_eq!(l.quantile(1.0), Duration::from_micros(100));
        assert_eq!(Latencies::default().quantile(0.5), Duration::ZERO);
    }

    fn report(engine: Engine, hosts: usize, checkins: usize, rss: u64) -> RunReport {
        RunReport {
            engine,
            hosts,
            enroll: Duration::from_secs(1),
            checkins: Latencies(vec![20_000; checkins]),
            events: Latencies::default(),
            refused: 0,
            failed: 0,
            elapsed: Duration::from_secs(1),
            rss_start_kib: rss,
            rss_end_kib: rss,
            wal_bytes: None,
            host_page: Duration::from_millis(10),
            counts: Duration::from_millis(150),
        }
    }

    #[test]
    fn targets_are_ratios_and_rss_is_compared_across_sizes() {
        let text = targets(&[
            report(Engine::Sqlite, 5000, 3000, 10240),
            report(Engine::Sqlite, 50000, 1000, 12288),
        ]);
        assert!(
            text.contains("- Sqlite, 5000 hosts: 1.50 / 0.20 / 0.50: met"),
            "{text}"
        );
        assert!(
            text.contains("- Sqlite, 50000 hosts: 0.50 / 0.20 / 0.50: not met"),
            "{text}"
        );
        assert!(
            text.contains("RSS after the load, 5000 → 50000 hosts: 10.0 MiB → 12.0 MiB (1.20×)"),
            "{text}"
        );
        assert!(!text.contains("Postgres"), "{text}");
    }

    #[test]
    fn pace_spreads_the_rate_over_the_threads() {
        assert_eq!(pace(0, 8), None);
        assert_eq!(pace(1000, 10), Some(Duration::from_millis(10)));
    }

    #[test]
    fn answers_are_read_by_content_length_on_a_kept_connection() {
        let two = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 429 Too Many Requests\r\nContent-Length: 3\r\nretry-after: 1\r\n\r\nabc";
        let mut r = BufReader::new(&two[..]);
        assert_eq!(read_answer(&mut r).expect("first"), (200, b"{}".to_vec()));
        assert_eq!(read_answer(&mut r).expect("second"), (429, b"abc".to_vec()));
        assert!(read_answer(&mut r).is_err());
    }

    #[test]
    fn requests_carry_the_path_the_token_and_the_body() {
        let req = post("http://127.0.0.1:9/api/v1/hosts/h1/checkin", "t0k", b"{}");
        let text = String::from_utf8(req).expect("text");
        assert!(
            text.starts_with("POST /api/v1/hosts/h1/checkin HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(text.contains("Authorization: Bearer t0k\r\n"), "{text}");
        assert!(text.ends_with("Content-Length: 2\r\n\r\n{}"), "{text}");
        assert_eq!(
            path_of("http://a:1/api/v1/hosts?limit=100"),
            "/api/v1/hosts?limit=100"
        );
    }

    #[test]
    fn event_batches_number_their_events_in_order() {
        let mut seq = 4;
        let batch: EventBatch = serde_json::from_slice(&events_body(&mut seq)).expect("JSON");
        let seqs: Vec<u64> = batch.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [5, 6]);
        assert_eq!(seq, 6);
        let report: CheckIn = serde_json::from_slice(&checkin_body(3)).expect("JSON");
        assert_eq!(report.installed["bench-os"], "1.0.0");
    }
}
