//! Service restarts and effect verification.
//!
//! A service is restarted through the configured manager (OpenRC `rc-service NAME restart`,
//! systemd `systemctl restart NAME`, or an argv template). Its main pid comes from the
//! configured pid command, systemd's `MainPID`, or a pidfile (`/run/<service>.pid` under the
//! root). Effect verification proves an update took effect: the process's running executable
//! (`/proc/<pid>/exe`) is the newly installed inode, or the component's health command passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qx_core::fs::under_root;

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

    pub fn restart(&self, service: &str) -> Ran {
        run(
            &self.restart_argv(service),
            &self.root,
            None,
            Some(self.verify_timeout.max(Duration::from_secs(60))),
        )
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

    /// Runs a health command (argv, no shell) with a deadline of `verify_timeout`.
    pub fn health(&self, argv: &[String]) -> Ran {
        let argv = self.template(argv, "");
        run(&argv, &self.root, None, Some(self.verify_timeout))
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

/// Runs `argv` (no shell) with `QX_ROOT` set, output captured; killed after `timeout`.
/// `cwd` defaults to the root. A program name without '/' is also looked up in `cwd`; an
/// absolute one is looked up under the root first.
pub fn run(argv: &[String], root: &Path, cwd: Option<&Path>, timeout: Option<Duration>) -> Ran {
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
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start {program}: {e}")),
    };
    let (ok, status) = match wait(&mut child, timeout) {
        Ok(Some(s)) => (s.success(), s.to_string()),
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
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
