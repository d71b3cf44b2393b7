//! The access log (issue 16): refusals that matter for security are logged with the client's
//! address, behind a trusted reverse proxy the one its `X-Forwarded-For` names; `ACCESS_LOG=all`
//! logs every request. The real `qx-update-server` binary, its log read once it has exited.

use std::net::SocketAddr;

use crate::robustness::{spawn_server_with, Spawned};

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// The server's log once SIGTERM has stopped it.
fn stop(mut server: Spawned) -> String {
    let pid = rustix::process::Pid::from_raw(i32::try_from(server.proc.0.id()).expect("pid"))
        .expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    server.proc.0.wait().expect("wait");
    server.log_after_exit()
}

/// The access-log lines of `log`.
fn access_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("qx_server::access"))
        .collect()
}

#[test]
fn refusals_are_logged_with_the_client_a_trusted_proxy_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [
        ("TRUSTED_PROXIES", "127.0.0.1".to_owned()),
        ("MAX_UPLOAD_BYTES", "1KiB".to_owned()),
    ];
    let server = spawn_server_with(dir.path(), Some("s3cret-token"), &env);
    let http = reqwest::blocking::Client::new();
    let publish = url(server.addr, "/api/v1/quantix-os/publish?channel=dev");
    // 401: a wrong token, through a proxy on loopback; the client forged an entry of its own.
    let r = http
        .post(&publish)
        .bearer_auth("wrong")
        .header("x-forwarded-for", "198.51.100.9, 203.0.113.7")
        .send()
        .expect("publish");
    assert_eq!(r.status(), 401);
    // 413: a body over MAX_UPLOAD_BYTES.
    let r = http
        .post(&publish)
        .bearer_auth("s3cret-token")
        .header("x-forwarded-for", "203.0.113.8")
        .body(vec![0u8; 4096])
        .send()
        .expect("publish");
    assert_eq!(r.status(), 413);
    // Answered requests are not logged by default.
    let r = http
        .get(url(server.addr, "/health"))
        .send()
        .expect("health");
    assert_eq!(r.status(), 200);
    let log = stop(server);
    let lines = access_lines(&log);
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].contains("client=203.0.113.7"), "{}", lines[0]);
    assert!(lines[0].contains("status=401"), "{}", lines[0]);
    assert!(lines[0].contains("peer=127.0.0.1:"), "{}", lines[0]);
    assert!(lines[0].contains("WARN"), "{}", lines[0]);
    assert!(!lines[0].contains("198.51.100.9"), "{}", lines[0]);
    assert!(
        !lines[0].contains("wrong"),
        "no token in the log: {}",
        lines[0]
    );
    assert!(lines[1].contains("client=203.0.113.8"), "{}", lines[1]);
    assert!(lines[1].contains("status=413"), "{}", lines[1]);
}

#[test]
fn forwarded_for_from_an_untrusted_peer_is_ignored_and_all_logs_every_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("ACCESS_LOG", "all".to_owned())];
    let server = spawn_server_with(dir.path(), Some("s3cret-token"), &env);
    let http = reqwest::blocking::Client::new();
    let r = http
        .delete(url(
            server.addr,
            "/api/v1/quantix-os/releases/1.0.0?channel=dev",
        ))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .expect("yank");
    assert_eq!(r.status(), 401);
    let r = http
        .get(url(server.addr, "/api/v1/channels"))
        .send()
        .expect("channels");
    assert_eq!(r.status(), 200);
    let log = stop(server);
    let lines = access_lines(&log);
    let refused = lines
        .iter()
        .find(|l| l.contains("status=401"))
        .unwrap_or_else(|| panic!("no 401 line: {log}"));
    assert!(refused.contains("client=127.0.0.1"), "{refused}");
    assert!(!refused.contains("203.0.113.7"), "{refused}");
    assert!(
        lines.iter().any(|l| l.contains("INFO")
            && l.contains("path=/api/v1/channels")
            && l.contains("status=200")),
        "{log}"
    );
}

#[test]
fn a_bad_access_log_setting_exits_2() {
    let (code, err) = crate::robustness::run_with_env(&[("TRUSTED_PROXIES", "10.0.0.0/33")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("TRUSTED_PROXIES"), "{err}");
    let (code, err) = crate::robustness::run_with_env(&[("ACCESS_LOG", "verbose")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("off, security or all"), "{err}");
}
