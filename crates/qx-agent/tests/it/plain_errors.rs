//! Errors say each thing once, in plain words (issue 16): the update server down, a wrong
//! base path in `server_url`; what cannot succeed on retry is not retried. (A TLS port asked
//! in plain HTTP and the other way round: `tls.rs`.) The real `qx-update` binary against a
//! real `qx-update-server` on loopback.

use std::process::Output;

use qx_agent::code;
use qx_testkit::host::Lab;

use crate::support::host::{dead_url, node_release, qx_update};

/// `qx-update check` with the lab's configuration but `server_url` set to `url`.
fn check_at(lab: &Lab, url: &str) -> Output {
    let mut c = lab.host_config();
    c.server_url = url.to_owned();
    lab.host.write_config(&c).expect("write node.yaml");
    qx_update(lab.host.root())
        .env("QX_LOG", "warn")
        .arg("check")
        .output()
        .expect("run qx-update")
}

/// The error line: the last line of stderr.
fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().unwrap_or_default().to_owned();
    assert!(
        line.starts_with("qx-update: "),
        "not an error line: {stderr}"
    );
    line
}

#[test]
fn server_down_names_its_url_once_with_the_cause_and_the_attempts() {
    let lab = Lab::new().expect("lab");
    let url = dead_url();
    let out = check_at(&lab, &url);
    assert_eq!(out.status.code(), Some(code::FETCH));
    let line = error_line(&out);
    assert_eq!(line.matches(&url).count(), 1, "{line}");
    assert!(
        line.contains("cannot connect: Connection refused"),
        "{line}"
    );
    assert!(line.contains("gave up after 3 attempts"), "{line}");
    // Each retry's log line names the URL in its field and the cause alone in its message.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let retries: Vec<&str> = stderr.lines().filter(|l| l.contains("retrying")).collect();
    assert_eq!(retries.len(), 2, "{stderr}");
    for l in retries {
        assert_eq!(l.matches(&url).count(), 1, "{l}");
    }
}

#[test]
fn a_wrong_base_path_is_reported_as_such_not_as_no_release() {
    let lab = Lab::new().expect("lab");
    node_release(&lab, "1.0.0");
    let out = check_at(&lab, &format!("{}/ota", lab.server.url()));
    assert_eq!(out.status.code(), Some(code::FETCH));
    let line = error_line(&out);
    assert!(
        line.contains("check the base path of updates.server_url"),
        "{line}"
    );
    assert!(line.contains("/ota/health is not found"), "{line}");
    assert!(!line.contains("no release"), "{line}");
}

#[test]
fn the_right_base_path_without_a_release_is_still_no_release() {
    let lab = Lab::new().expect("lab");
    let out = check_at(&lab, lab.server.url());
    assert_eq!(out.status.code(), Some(code::NO_RELEASE));
    let line = error_line(&out);
    assert!(
        line.contains("has no release of quantix-os on channel dev"),
        "{line}"
    );
}
