//! Service restarts and effect verification.
//!
//! A service is restarted through the configured manager (OpenRC `rc-service NAME restart`,
//! systemd `systemctl restart NAME`, or an argv template). Its main pid comes from the
//! configured pid command, systemd's `MainPID`, or a pidfile (`/run/<service>.pid` under the
//! root). Effect verification proves an update took effect: the process's running executable
//! (`/proc/<pid>/exe`) is the newly installed inode, or the component's health command passes.
//!
//! Every command runs in its own process group with a parent-death signal (SIGKILL): a killed
//! agent takes the command along, and the group id (recorded in the journal while a
//! migration, health or restart command runs) lets recovery kill what the command started
//! and wait until none of it lives ([`kill_group`]).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qx_core::fs::under_root;
use serde::{Deserialize, Serialize};

use crate::config::ServiceManagerKind;
use crate::transaction::journal::dev_ino;
use crate::Config;

/// Polling interval while waiting for a condition (bounded by a deadline).
const POLL: Duration = Duration::from_millis(50);

pub struct ServiceManager {
    kind: ServiceManagerKind,
    restart_command: Option<Vec<String>>,
    pid_command: Option<Vec<String>>,
    pidfile: String,
    root: PathBuf,
    pub verify_timeout: Duration,
}

/// Output of a command that was run.
#[derive(Debug)]
pub struct Ran {
    pub argv: Vec<String>,
    pub ok: bool,
    pub status: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ServiceManager {
    pub fn new(config: &Config, root: &Path) -> Self {
        Self {
            kind: config.service_manager,
            restart_command: config.restart_command.clone(),
            pid_command: config.pid_command.clone(),
            pidfile: config.pidfile.clone(),
            root: root.to_owned(),
            verify_timeout: config.verify_timeout,
        }
    }

    fn template(&self, argv: &[String], service: &str) -> Vec<String> {
        let root = self.root.display().to_string();
        argv.iter()
            .map(|a| a.replace("{service}", service).replace("{root}", &root))
            .collect()
    }

    /// The argv that restarts `service`.
    pub fn restart_argv(&self, service: &str) -> Vec<String> {
        match (self.kind, &self.restart_command) {
            (ServiceManagerKind::Command, Some(t)) => self.template(t, service),
            (ServiceManagerKind::Systemd, _) => {
                vec!["systemctl".into(), "restart".into(), service.into()]
            }
            _ => vec!["rc-service".into(), service.into(), "restart".into()],
        }
    }

    /// Restarts `service`; `started` is told its process group before it is waited for.
    pub fn restart(&self, service: &str, started: Started<'_>) -> Ran {
        run_with(
            &self.restart_argv(service),
            &self.root,
            None,
            Some(self.verify_timeout.max(Duration::from_secs(60))),
            started,
        )
    }

    /// Runs a migration command in `dir` (no deadline); `started` as for a restart.
    pub fn migrate(&self, argv: &[String], dir: &Path, started: Started<'_>) -> Ran {
        run_with(argv, &self.root, Some(dir), None, started)
    }

    /// The service's main pid, if the manager knows one.
    pub fn main_pid(&self, service: &str) -> Option<u32> {
        if let Some(t) = &self.pid_command {
            let r = run(
                &self.template(t, service),
                &self.root,
                None,
                Some(Duration::from_secs(10)),
            );
            return r.ok.then(|| parse_pid(&r.stdout)).flatten();
        }
        if self.kind == ServiceManagerKind::Systemd {
            let argv = vec![
                "systemctl".to_string(),
                "show".into(),
                "-p".into(),
                "MainPID".into(),
                "--value".into(),
                service.into(),
            ];
            let r = run(&argv, &self.root, None, Some(Duration::from_secs(10)));
            return r
                .ok
                .then(|| parse_pid(&r.stdout))
                .flatten()
                .filter(|p| *p != 0);
        }
        let path = under_root(
            &self.root,
            Path::new(&self.pidfile.replace("{service}", service)),
        );
        std::fs::read(path).ok().and_then(|b| parse_pid(&b))
    }

    /// Waits (bounded by `verify_timeout`) until the service's running executable is the file
    /// at `installed` (same device and inode) or, for a directory, a file inside it.
    pub fn wait_running(&self, service: &str, installed: &Path) -> Result<u32, String> {
        let deadline = Instant::now() + self.verify_timeout;
        let want = if installed.is_dir() {
            inodes_under(installed)
        } else {
            dev_ino(installed).map(|d| vec![d]).unwrap_or_default()
        };
        if want.is_empty() {
            return Err(format!(
                "{} does not exist after the install",
                installed.display()
            ));
        }
        let mut last = String::from("the service manager reports no pid");
        let max_polls = (self.verify_timeout.as_millis() / POLL.as_millis()).max(1) + 1;
        for _ in 0..max_polls {
            if let Some(pid) = self.main_pid(service) {
                let exe = PathBuf::from(format!("/proc/{pid}/exe"));
                match dev_ino(&exe) {
                    Ok(got) if want.contains(&got) => return Ok(pid),
                    Ok(_) => {
                        let running = std::fs::read_link(&exe)
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|_| "?".into());
                        last = format!(
                            "pid {pid} runs {running}, not the newly installed {}",
                            installed.display()
                        );
                    }
                    Err(e) => last = format!("pid {pid} is not running ({e})"),
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL);
        }
        Err(last)
    }

    /// Waits (bounded by `verify_timeout`) until the service has a running main process.
    pub fn wait_alive(&self, service: &str) -> Result<u32, String> {
        let deadline = Instant::now() + self.verify_timeout;
        let max_polls = (self.verify_timeout.as_millis() / POLL.as_millis()).max(1) + 1;
        for _ in 0..max_polls {
            if let Some(pid) = self.main_pid(service) {
                if pid_alive(pid) {
                    return Ok(pid);
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL);
        }
        Err(format!(
            "service {service} has no running process after the restart"
        ))
    }

    /// Runs a health command (argv, no shell) with a deadline of `verify_timeout`; `started`
    /// as for a restart.
    pub fn health(&self, argv: &[String], started: Started<'_>) -> Ran {
        let argv = self.template(argv, "");
        run_with(&argv, &self.root, None, Some(self.verify_timeout), started)
    }
}

/// True while `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => !s
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

fn parse_pid(bytes: &[u8]) -> Option<u32> {
    String::from_utf8_lossy(bytes).trim().parse().ok()
}

fn inodes_under(dir: &Path) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut budget = 100_000u32;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return out;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => {
                    if let Ok(d) = dev_ino(&e.path()) {
                        out.push(d);
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// A command's process group while it runs: recorded in the journal so that recovery can
/// kill what is left of it after the agent died.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessGroup {
    /// The group id (the pid of the command, its leader).
    pub pgid: u32,
    /// The session the group was made in (the agent's): a group of that id in another
    /// session is a later one that reused the number, not this command's.
    pub sid: u32,
    /// The command, for messages.
    pub command: String,
}

/// Told a command's process group once it was started, before it is waited for; an error
/// stops the command (its group is killed) and fails it with that message.
pub type Started<'a> = &'a mut dyn FnMut(ProcessGroup) -> Result<(), String>;

/// Runs `argv` (no shell) with `QX_ROOT` set, output captured; killed after `timeout`.
/// `cwd` defaults to the root. A program name without '/' is also looked up in `cwd`; an
/// absolute one is looked up under the root first.
pub fn run(argv: &[String], root: &Path, cwd: Option<&Path>, timeout: Option<Duration>) -> Ran {
    run_with(argv, root, cwd, timeout, &mut |_| Ok(()))
}

/// [`run`], telling `started` the command's process group before waiting for it.
pub fn run_with(
    argv: &[String],
    root: &Path,
    cwd: Option<&Path>,
    timeout: Option<Duration>,
    started: Started<'_>,
) -> Ran {
    let fail = |status: String| Ran {
        argv: argv.to_vec(),
        ok: false,
        status,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    let Some(program) = argv.first() else {
        return fail("empty command".into());
    };
    let dir = cwd.unwrap_or(root);
    let mut cmd = command_for(program, root, dir);
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let path = match cwd {
        Some(d) => format!("{}:{path}", d.display()),
        None => path,
    };
    // Output goes to anonymous temporary files, not pipes: a restarted daemon that inherits
    // them must not keep this call waiting.
    let (Ok(mut out_f), Ok(mut err_f)) = (tempfile::tempfile(), tempfile::tempfile()) else {
        return fail("cannot create temporary files for the command output".into());
    };
    let (Ok(out_c), Ok(err_c)) = (out_f.try_clone(), err_f.try_clone()) else {
        return fail("cannot duplicate temporary file handles".into());
    };
    cmd.args(&argv[1..])
        .current_dir(dir)
        .env("QX_ROOT", root)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_c))
        .stderr(Stdio::from(err_c));
    dies_with_agent(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start {program}: {e}")),
    };
    let group = ProcessGroup {
        pgid: child.id(),
        sid: own_session(),
        command: argv.join(" "),
    };
    let pgid = group.pgid;
    if let Err(e) = started(group) {
        stop_group(&mut child, pgid);
        return fail(format!("stopped: {e}"));
    }
    let (ok, status) = match wait(&mut child, timeout) {
        Ok(Some(s)) => (s.success(), s.to_string()),
        Ok(None) => {
            stop_group(&mut child, pgid);
            let secs = timeout.unwrap_or_default().as_secs();
            (false, format!("killed after {secs}s"))
        }
        Err(e) => return fail(format!("wait failed: {e}")),
    };
    Ran {
        argv: argv.to_vec(),
        ok,
        status,
        stdout: read_back(&mut out_f),
        stderr: read_back(&mut err_f),
    }
}

/// The command gets its own process group (its id is the command's pid) and SIGKILL when the
/// agent dies.
///
/// The parent-death signal fires when the *thread* that forked the child ends, not only the
/// process. That is fine here: [`run_with`] forks and then waits for the child on the same
/// thread until the child has exited (or been killed), so that thread cannot end while the
/// child runs unless the whole agent dies (in the daemon it is a blocking-pool thread, which
/// is retired only once idle, i.e. after `run_with` returned).
fn dies_with_agent(cmd: &mut Command) {
    cmd.process_group(0);
    let agent = rustix::process::getpid();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed. It makes two raw system calls (prctl and getppid,
    // through rustix, which neither allocates nor takes locks) and builds an io::Error from a
    // raw errno (no allocation); it touches no memory shared with the parent's other threads.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(|e| std::io::Error::from_raw_os_error(e.raw_os_error()))?;
            // The agent died before the signal was set: the kernel would not send it now.
            if rustix::process::getppid() != Some(agent) {
                return Err(std::io::Error::from_raw_os_error(
                    rustix::io::Errno::SRCH.raw_os_error(),
                ));
            }
            Ok(())
        });
    }
}

/// Kills `child` and every process of its group, and reaps `child`.
fn stop_group(child: &mut std::process::Child, pgid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// How long recovery waits for the processes of a killed group to be gone.
pub const GROUP_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Kills every process of `group` (SIGKILL) and waits, at most `within`, until none lives.
/// Returns how many were alive at first; on timeout the pids still alive.
pub fn kill_group(group: &ProcessGroup, within: Duration) -> Result<usize, Vec<u32>> {
    let deadline = Instant::now() + within;
    let first = group_members(group).len();
    let max_polls = (within.as_millis() / POLL.as_millis()).max(1) + 1;
    for _ in 0..max_polls {
        let alive = group_members(group);
        if alive.is_empty() {
            return Ok(first);
        }
        if let Some(pid) = rustix::process::Pid::from_raw(group.pgid as i32) {
            // ESRCH: the last member went away in between.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        if Instant::now() >= deadline {
            return Err(alive);
        }
        std::thread::sleep(POLL);
    }
    Err(group_members(group))
}

/// The processes of `group` that have not exited (zombies have: they hold nothing), found
/// in `/proc` by group and session.
fn group_members(group: &ProcessGroup) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = ProcStat::read(&e.path().join("stat"))?;
            let member = stat.pgrp == group.pgid && stat.session == group.sid;
            (member && stat.state != "Z" && stat.state != "X").then_some(pid)
        })
        .collect()
}

/// This process's session as `/proc` shows it, the same source [`group_members`] matches
/// against. The system call is not used: it answers 0 when the session leader lives outside
/// our PID namespace (an agent started in a container), which is a valid answer to compare.
fn own_session() -> u32 {
    ProcStat::read(Path::new("/proc/self/stat")).map_or(0, |s| s.session)
}

/// The fields of `/proc/<pid>/stat` the group scan needs.
struct ProcStat {
    state: String,
    pgrp: u32,
    session: u32,
}

impl ProcStat {
    fn read(path: &Path) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(path).ok()?)
    }

    /// "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
    fn parse(stat: &str) -> Option<Self> {
        let (_, rest) = stat.rsplit_once(')')?;
        let mut f = rest.split_whitespace();
        let state = f.next()?.to_owned();
        let pgrp = f.nth(1)?.parse().ok()?;
        let session = f.next()?.parse().ok()?;
        Some(Self {
            state,
            pgrp,
            session,
        })
    }
}

/// The command for `program`: relative to `dir` when it has a '/' but is not absolute; an
/// absolute program is a host path: under `--root` the host's own file is used when it
/// exists there (a sandboxed host's /data/bin/x), else the system's.
fn command_for(program: &str, root: &Path, dir: &Path) -> Command {
    if program.contains('/') && !program.starts_with('/') {
        return Command::new(dir.join(program));
    }
    if program.starts_with('/') {
        let host_path = under_root(root, Path::new(program));
        if root != Path::new("/") && host_path.exists() {
            return Command::new(host_path);
        }
    }
    Command::new(program)
}

/// Waits for `child`, at most `timeout`: `None` when it is still running then.
fn wait(
    child: &mut std::process::Child,
    timeout: Option<Duration>,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let Some(t) = timeout else {
        return child.wait().map(Some);
    };
    let deadline = Instant::now() + t;
    let polls = (t.as_millis() / POLL.as_millis()).max(1) + 1;
    for _ in 0..polls {
        match child.try_wait()? {
            Some(s) => return Ok(Some(s)),
            None if Instant::now() < deadline => std::thread::sleep(POLL),
            None => break,
        }
    }
    Ok(None)
}

/// The first MiB of a captured output file.
fn read_back(f: &mut std::fs::File) -> Vec<u8> {
    use std::io::{Read, Seek};
    let mut v = Vec::new();
    let _ = f.seek(std::io::SeekFrom::Start(0));
    let _ = f.take(1 << 20).read_to_end(&mut v);
    v
}
