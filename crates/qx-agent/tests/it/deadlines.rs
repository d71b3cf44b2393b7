//! Issue 11 item 12: a server that drips one byte at a time, each just inside the stall
//! timeout, no longer keeps the agent busy indefinitely: a small document has an overall
//! deadline (`updates.download.document_deadline`) and an artifact a minimum rate over a
//! window (`updates.download.min_rate`, `min_rate_window`). Short test values; the drip is
//! bounded (it ends with its body or when the client goes away).

use std::time::Duration;

use qx_testkit::drip::{Drip, DripServer};
use qx_testkit::host::Lab;

use crate::support::host::{host_at_v1, node_release, run_qx_update};

/// The lab's configuration, pointed at `server_url`, with more `download` settings (after
/// the testkit's, whose stall timeout is 5 s).
fn point_at(lab: &Lab, server_url: &str, download: &str) {
    let mut c = lab.host_config();
    c.server_url = server_url.to_owned();
    let path = lab.host.write_config(&c).unwrap();
    let yaml = std::fs::read_to_string(&path).unwrap();
    let yaml = yaml.replace(
        "stall_timeout: 5s}",
        &format!("stall_timeout: 5s, {download}}}"),
    );
    assert!(yaml.contains(download), "{yaml}");
    std::fs::write(&path, yaml).unwrap();
}

#[test]
fn dripped_manifest_check_stops_at_its_deadline() {
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    node_release(&lab, "1.1.0");
    // Every request dripped: 1 byte per 100 ms, far inside the 5 s stall timeout.
    let drip = DripServer::start(
        None,
        Drip {
            path_prefix: "/".into(),
            interval: Duration::from_millis(100),
            body_len: 100_000,
        },
    )
    .unwrap();
    point_at(&lab, &drip.url(), "document_deadline: 1s");

    let out = run_qx_update(lab.host.root(), &["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{stderr}");
    assert!(
        stderr.contains("not received within its deadline of 1s")
            && stderr.contains("updates.download.document_deadline"),
        "{stderr}"
    );
    assert!(drip.dripped() > 0, "the body was dripped");
}

#[test]
fn dripped_artifact_apply_stops_below_the_minimum_rate() {
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    let release = node_release(&lab, "1.1.0");
    let (name, bytes) = &release.artifacts[0];
    // Only the artifact is dripped; the channel state and manifest come from the real server.
    let drip = DripServer::start(
        Some(lab.server.addr()),
        Drip {
            path_prefix: format!("/api/v1/quantix-os/releases/1.1.0/{name}"),
            interval: Duration::from_millis(50),
            body_len: bytes.len() as u64,
        },
    )
    .unwrap();
    point_at(&lab, &drip.url(), "min_rate: 10KiB/s, min_rate_window: 1s");

    let out = run_qx_update(lab.host.root(), &["apply", "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(32), "{stderr}");
    assert!(
        stderr.contains("too slow")
            && stderr.contains("below the minimum of 10240 bytes/s")
            && stderr.contains("updates.download.min_rate"),
        "{stderr}"
    );
    assert!(drip.dripped() > 0, "the artifact was dripped");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
}
