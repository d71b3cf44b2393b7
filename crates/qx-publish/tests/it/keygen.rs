//! `qx-publish keygen`: key files, their modes, and refusing to overwrite.

use std::os::unix::fs::PermissionsExt;

use crate::support::{keygen, qx_publish};
use predicates::prelude::*;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn keygen_writes_a_0600_secret_key_and_prints_the_public_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = keygen(tmp.path())
        .stdout(predicate::str::contains("public key: RW"))
        .stdout(predicate::str::contains("key id: "));
    let key = tmp.path().join("qx-publish.key");
    let public = tmp.path().join("qx-publish.pub");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&public), 0o644);
    let printed = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let pub_text = std::fs::read_to_string(&public).expect("pub");
    let line = pub_text.lines().nth(1).expect("key line");
    assert!(
        printed.contains(line),
        "printed public key {printed} vs file {line}"
    );
    // The secret key never appears on the output.
    let secret = std::fs::read_to_string(&key).expect("key");
    assert!(!printed.contains(secret.lines().nth(1).expect("secret line")));
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn keygen_refuses_to_overwrite_an_existing_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    keygen(tmp.path());
    let key = tmp.path().join("qx-publish.key");
    let before = std::fs::read(&key).expect("key");
    qx_publish()
        .args(["keygen", "--out"])
        .arg(tmp.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already exists; pass --force"));
    assert_eq!(
        std::fs::read(&key).expect("key"),
        before,
        "the key was not touched"
    );
}

#[test]
fn keygen_force_replaces_the_key_pair() {
    let tmp = tempfile::tempdir().expect("tempdir");
    keygen(tmp.path());
    let key = tmp.path().join("qx-publish.key");
    let before = std::fs::read(&key).expect("key");
    qx_publish()
        .args(["keygen", "--force", "--out"])
        .arg(tmp.path())
        .assert()
        .success();
    assert_ne!(std::fs::read(&key).expect("key"), before);
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn keygen_key_signs_manifests_the_minisign_tool_accepts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    keygen(tmp.path());
    let sk = qx_core::SigningKey::from_file(&tmp.path().join("qx-publish.key")).expect("loads");
    let data = tmp.path().join("data");
    std::fs::write(&data, b"hello").expect("write");
    let sig = sk.sign(b"hello", "test").expect("sign");
    std::fs::write(tmp.path().join("data.minisig"), sig).expect("write");
    let status = std::process::Command::new("minisign")
        .arg("-Vq")
        .arg("-p")
        .arg(tmp.path().join("qx-publish.pub"))
        .arg("-m")
        .arg(&data)
        .status()
        .expect("minisign runs");
    assert!(status.success());
}

#[test]
fn usage_error_exits_2() {
    qx_publish().args(["build", "--spec"]).assert().code(2);
    qx_publish().arg("frobnicate").assert().code(2);
}

#[test]
fn help_documents_exit_codes() {
    qx_publish()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("Exit codes: 0 success, 1 failure"));
}

#[test]
fn keygen_json_names_both_files_and_errors_are_json_too() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = qx_publish()
        .args(["--json", "keygen", "--out"])
        .arg(tmp.path())
        .assert()
        .success();
    let v: serde_json::Value =
        serde_json::from_slice(&a.get_output().stdout).expect("JSON on stdout");
    assert_eq!(v["key_id"].as_str().map(str::len), Some(16), "{v}");
    assert!(
        v["public_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("RW")),
        "{v}"
    );
    assert_eq!(
        v["secret_key_file"],
        tmp.path().join("qx-publish.key").display().to_string()
    );
    // Again: refused, and the refusal is JSON on stdout as well.
    let a = qx_publish()
        .args(["--json", "keygen", "--out"])
        .arg(tmp.path())
        .assert()
        .code(1);
    let v: serde_json::Value =
        serde_json::from_slice(&a.get_output().stdout).expect("JSON on stdout");
    assert_eq!(v["exit_code"], 1);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("already exists")),
        "{v}"
    );
}
