//! The real `qx-update daemon` process: first start creates the token file and a self-signed
//! certificate (0600) and the next start reuses them; the API answers over HTTPS; SIGTERM
//! stops it cleanly, and a SIGTERM during an apply lets that apply finish first.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;

use qx_testkit::host::Lab;

use crate::support::api::*;
use crate::support::host::{history, host_at_v1, journal, qx_update};
use crate::support::runtime;

/// A running daemon; killed (SIGKILL) if the test ends without stopping it.
pub(crate) struct Daemon {
    child: Option<Child>,
    /// Its API's base URL, `https://127.0.0.1:<port>`.
    pub(crate) base: String,
    log: mpsc::Receiver<String>,
    /// The line that said it started.
    started: String,
}

impl Daemon {
    fn start(lab: &Lab) -> Daemon {
        Self::start_on(lab.host.root())
    }

    /// The daemon of the host at `root`, once it listens.
    pub(crate) fn start_on(root: &Path) -> Daemon {
        Self::start_logging(root, Some("info"))
    }

    /// [`Daemon::start_on`] with `QX_LOG` set to `level` (`None`: unset, the default).
    fn start_logging(root: &Path, level: Option<&str>) -> Daemon {
        let mut cmd = qx_update(root);
        match level {
            Some(l) => cmd.env("QX_LOG", l),
            None => cmd.env_remove("QX_LOG"),
        };
        let mut child = cmd
            .arg("daemon")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start qx-update daemon");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("daemon: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The daemon logs its bound address once it listens.
        let mut found = None;
        while let Ok(line) = rx.recv_timeout(DEADLINE) {
            if let Some(rest) = line.split("listen=").nth(1) {
                if line.contains("daemon started") {
                    let addr = rest.split_whitespace().next().unwrap();
                    found = Some((format!("https://{addr}"), line.clone()));
                    break;
                }
            }
        }
        let (base, started) = found.expect("the daemon logs \"daemon started listen=…\"");
        Daemon {
            child: Some(child),
            base,
            log: rx,
            started,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub(crate) fn sigterm(&self) {
        self.signal(rustix::process::Signal::TERM);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Waits (bounded) for the exit; returns the exit code.
    pub(crate) fn wait_exit(&mut self) -> i32 {
        let mut child = self.child.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(());
            (child, status)
        });
        rx.recv_timeout(DEADLINE)
            .expect("the daemon exits within the deadline");
        let (_, status) = waiter.join().unwrap();
        status.unwrap().code().expect("exit code, not a signal")
    }

    fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits until the log has a line containing `text`.
    fn wait_log(&self, text: &str) {
        while let Ok(line) = self.log.recv_timeout(DEADLINE) {
            if line.contains(text) {
                return;
            }
        }
        panic!("the daemon never logged {text:?}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Without `QX_LOG`, the daemon still says where it listens and where its API token is.
#[test]
fn the_daemon_logs_its_address_and_token_file_at_start_by_default() {
    let lab = Lab::new().unwrap();
    let daemon = Daemon::start_logging(lab.host.root(), None);
    assert!(daemon.started.contains("token_file="), "{}", daemon.started);
    assert!(
        daemon.started.contains("api-token"),
        "the default token file is named: {}",
        daemon.started
    );
}

#[test]
fn first_start_creates_token_and_certificate_and_next_start_reuses_them() {
    let lab = Lab::new().unwrap();
    write_config(&lab, None, lab.server.url(), "");
    host_at_v1(&lab);
    let token_path = lab.host.path("/etc/limiquantix/update-api-token");
    let cert_path = lab.host.path("/data/updates/api/self-signed.pem");
    assert!(!token_path.exists());

    let mut daemon = Daemon::start(&lab);
    assert_eq!(mode(&token_path), 0o600);
    assert_eq!(mode(&cert_path), 0o600);
    let token = std::fs::read_to_string(&token_path)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(token.len(), 64);
    let cert = std::fs::read(&cert_path).unwrap();

    runtime().block_on(async {
        let client = client();
        let url = format!("{}/api/v1/updates/status", daemon.base);
        let resp = client.get(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["installed"]["qx-node"], "1.0.0");
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 401);
    });
    // SIGHUP does not stop it: the configuration needs a restart, which it says.
    daemon.signal(rustix::process::Signal::HUP);
    daemon.wait_log("SIGHUP: the configuration is read at start only");
    runtime().block_on(async {
        let url = format!("{}/api/v1/updates/status", daemon.base);
        let resp = client().get(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    });
    daemon.sigterm();
    assert_eq!(daemon.wait_exit(), 0);

    let mut again = Daemon::start(&lab);
    assert_eq!(
        std::fs::read(&cert_path).unwrap(),
        cert,
        "the certificate is kept"
    );
    assert_eq!(
        std::fs::read_to_string(&token_path).unwrap().trim(),
        token,
        "the token is kept"
    );
    again.sigterm();
    assert_eq!(again.wait_exit(), 0);
}

#[test]
fn sigterm_during_an_apply_lets_it_finish() {
    let scratch = tempfile::tempdir().unwrap();
    let gate = Gate::new(scratch.path(), "restart");
    let lab = daemon_lab(Some(&gate), None, "");
    lab.host
        .write_file(
            "/etc/limiquantix/update-api-token",
            b"process-token\n",
            0o600,
        )
        .unwrap();

    let mut daemon = Daemon::start(&lab);
    runtime().block_on(async {
        let client = client();
        let resp = client
            .post(format!("{}/api/v1/updates/apply", daemon.base))
            .bearer_auth("process-token")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        // Wait until the apply is held at the restart (files already replaced).
        let resp = client
            .get(format!("{}/api/v1/updates/events", daemon.base))
            .bearer_auth("process-token")
            .send()
            .await
            .unwrap();
        Events::new(resp).until(&["restarting"]).await;
    });
    daemon.sigterm();
    daemon.wait_log("waiting for the running apply to finish");
    assert!(daemon.running(), "the daemon waits for the apply");
    gate.open();
    assert_eq!(daemon.wait_exit(), 0);
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
    assert!(
        journal(lab.host.root()).is_none_or(|j| j["phase"] == "committed"),
        "the transaction ended"
    );
    let history = history(lab.host.root());
    assert!(
        history.iter().any(|e| e["outcome"] == "success"),
        "{history:?}"
    );
}

#[test]
fn daemon_start_finishes_an_interrupted_apply() {
    let lab = daemon_lab(None, None, "");
    let v1 = lab.host.read("/data/bin/qx-node").unwrap();
    // A CLI apply dies (abort, as in a power cut) after the files were replaced, before any
    // restart: the journal is left open.
    let out = qx_update(lab.host.root())
        .args(["apply", "--yes"])
        .env("QX_TEST_CRASH_AT", "installed")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(6),
        "the apply aborted at the crash point"
    );
    assert_ne!(
        lab.host.read("/data/bin/qx-node").unwrap(),
        v1,
        "new file in place"
    );
    let open = std::fs::read_to_string(lab.host.path("/data/updates/journal.json")).unwrap();
    assert!(!open.contains("\"committed\""), "{open}");

    // The daemon rolls it back before it serves anything.
    let mut daemon = Daemon::start(&lab);
    assert_eq!(
        lab.host.read("/data/bin/qx-node").unwrap(),
        v1,
        "old file restored"
    );
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
    let closed = journal(lab.host.root()).expect("journal");
    assert_eq!(closed["phase"], "rolled_back");
    daemon.sigterm();
    assert_eq!(daemon.wait_exit(), 0);
}
