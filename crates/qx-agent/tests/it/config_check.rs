//! `qx-update config check` (issue 16): the configuration validated offline, each problem with
//! its line, a misspelt key with the nearest known one; exit 0 or 3.

use std::process::Output;

use qx_agent::code;
use qx_testkit::host::Lab;

use crate::support::host::qx_update;

/// `qx-update config check` on the lab's host with `node.yaml` replaced by `text`.
fn check(lab: &Lab, text: &str, json: bool) -> Output {
    let path = lab.host.root().join("etc/limiquantix/node.yaml");
    std::fs::write(&path, text).expect("write node.yaml");
    let mut cmd = qx_update(lab.host.root());
    if json {
        cmd.arg("--json");
    }
    cmd.args(["config", "check"])
        .output()
        .expect("run qx-update")
}

const GOOD: &str = "node:\n  name: n\nupdates:\n  server_url: http://127.0.0.1:9\n  product: quantix-os\n  channel: dev\n  trusted_keys: [/etc/limiquantix/update-key.pub]\n  download: {max_attempts: 3}\n";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_valid_configuration_is_summarised_without_any_server() {
    let lab = Lab::new().expect("lab");
    // The server URL is a dead port: nothing is contacted.
    let out = check(&lab, GOOD, false);
    assert_eq!(out.status.code(), Some(code::SUCCESS), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("valid: server http://127.0.0.1:9, product quantix-os, channel dev"),
        "{text}"
    );
    let out = check(&lab, GOOD, true);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["ok"], true);
    assert_eq!(
        v["config"]["trusted_keys"].as_array().map(Vec::len),
        Some(1)
    );
}

#[test]
fn a_misspelt_key_is_shown_on_its_line_with_the_key_meant() {
    let lab = Lab::new().expect("lab");
    let out = check(
        &lab,
        &GOOD.replace("  channel: dev", "  chanel: dev"),
        false,
    );
    assert_eq!(out.status.code(), Some(code::CONFIG));
    let e = stderr(&out);
    assert!(
        e.contains("node.yaml:6: updates: unknown key `chanel`; did you mean `channel`?"),
        "{e}"
    );
    let out = check(&lab, &GOOD.replace("max_attempts", "max_atempts"), false);
    let e = stderr(&out);
    assert!(e.contains("node.yaml:8: updates.download: unknown key `max_atempts`; did you mean `max_attempts`?"), "{e}");
    // Nothing near: the keys that exist are listed instead.
    let out = check(&lab, &GOOD.replace("  channel: dev", "  zebra: dev"), false);
    let e = stderr(&out);
    assert!(
        e.contains("unknown key `zebra`; the keys here are `enabled`, `server_url`, `channel`"),
        "{e}"
    );
}

#[test]
fn a_bad_value_is_shown_on_its_line_and_as_json() {
    let lab = Lab::new().expect("lab");
    let text = GOOD.replace("max_attempts: 3", "max_attempts: 0");
    let out = check(&lab, &text, false);
    assert_eq!(out.status.code(), Some(code::CONFIG));
    let e = stderr(&out);
    assert!(
        e.contains("node.yaml:8: updates.download.max_attempts: must be at least 1"),
        "{e}"
    );
    let out = check(&lab, &text, true);
    assert_eq!(out.status.code(), Some(code::CONFIG));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["ok"], false);
    assert_eq!(v["line"], 8);
    assert_eq!(v["exit_code"], code::CONFIG);
    // A trusted key file that is missing: its line, and the file it looked for.
    let out = check(&lab, &GOOD.replace("update-key.pub", "missing.pub"), false);
    let e = stderr(&out);
    assert!(e.contains("node.yaml:7: updates.trusted_keys[0]:"), "{e}");
    assert!(e.contains("missing.pub"), "{e}");
}
