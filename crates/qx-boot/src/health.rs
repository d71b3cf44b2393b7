//! Health checks run by `verify`: plain commands (argv, no shell), each with a
//! time limit; a check passes when it exits 0 in time.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::slot::Slot;

/// Bytes of each output stream kept in a result.
const OUTPUT_TAIL: usize = 4096;

/// The outcome of one health check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub argv: Vec<String>,
    pub passed: bool,
    /// Exit code, if the command exited normally.
    pub exit_code: Option<i32>,
    /// Why it failed, in words (not started, timed out, exit code, signal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The end of stdout and stderr, merged as "stdout…stderr".
    pub output: String,
    pub duration_ms: u64,
}

fn tail(buf: &[u8]) -> String {
    let start = buf.len().saturating_sub(OUTPUT_TAIL);
    String::from_utf8_lossy(&buf[start..]).into_owned()
}

fn reader(stream: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut s) = stream {
            // A read error just ends the captured output.
            let _ = s.read_to_end(&mut buf);
        }
        buf
    })
}

/// Kill the check and everything in its process group, and reap it.
fn kill_group(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Run one check. The environment gets `QUANTIX_SLOT` (the booted slot).
pub fn run_check(argv: &[String], timeout: Duration, slot: Slot) -> CheckResult {
    let started = Instant::now();
    let mut result = CheckResult {
        argv: argv.to_vec(),
        passed: false,
        exit_code: None,
        error: None,
        output: String::new(),
        duration_ms: 0,
    };
    let Some((program, args)) = argv.split_first() else {
        result.error = Some("empty command".to_owned());
        return result;
    };
    let spawned = Command::new(program)
        .args(args)
        .env("QUANTIX_SLOT", slot.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // its own process group, so that a timeout kills what it started too
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            result.error = Some(format!("cannot start {program}: {e}"));
            result.duration_ms = started.elapsed().as_millis() as u64;
            return result;
        }
    };
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let deadline = started + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                kill_group(&mut child);
                result.error = Some(format!(
                    "timed out after {} and was killed",
                    humantime::format_duration(timeout)
                ));
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                kill_group(&mut child);
                result.error = Some(format!("cannot wait for {program}: {e}"));
                break None;
            }
        }
    };
    let mut output = tail(&out.join().unwrap_or_default());
    output.push_str(&tail(&err.join().unwrap_or_default()));
    result.output = output;
    result.duration_ms = started.elapsed().as_millis() as u64;
    if let Some(status) = status {
        result.exit_code = status.code();
        result.passed = status.success();
        if !status.success() {
            result.error = Some(match status.code() {
                Some(c) => format!("exited with status {c}"),
                None => format!("killed by a signal ({status})"),
            });
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn passing_check() {
        let r = run_check(
            &argv(&["sh", "-c", "echo ok; echo $QUANTIX_SLOT"]),
            Duration::from_secs(10),
            Slot::B,
        );
        assert!(r.passed, "{r:?}");
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.output, "ok\nB\n");
    }

    #[test]
    fn failing_check() {
        let r = run_check(
            &argv(&["sh", "-c", "echo bad >&2; exit 3"]),
            Duration::from_secs(10),
            Slot::A,
        );
        assert!(!r.passed);
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.output, "bad\n");
        assert_eq!(r.error.as_deref(), Some("exited with status 3"));
    }

    #[test]
    fn missing_program() {
        let r = run_check(
            &argv(&["/nonexistent/qx-check"]),
            Duration::from_secs(10),
            Slot::A,
        );
        assert!(!r.passed);
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("cannot start")),
            "{r:?}"
        );
    }

    #[test]
    fn timeout_kills() {
        // the sleep is a grandchild holding the output pipes open
        let r = run_check(
            &argv(&["sh", "-c", "sleep 30; true"]),
            Duration::from_millis(200),
            Slot::A,
        );
        assert!(!r.passed);
        assert!(
            r.error.as_deref().is_some_and(|e| e.contains("timed out")),
            "{r:?}"
        );
        assert!(r.duration_ms < 10_000);
    }
}
