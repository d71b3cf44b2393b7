//! The refusal matrix of SPEC §2 / §4 step 1: each case its own test, asserting the exact
//! error variant and exit code. Cases a correct server cannot produce (no signature header,
//! another product's manifest) are served by a lying loopback server.
#![allow(clippy::unwrap_used)]

use base64::Engine;
use qx_agent::{Agent, AgentError, ApplyOptions, Config};
use qx_testkit::host::{demo_binary, Lab};
use qx_testkit::release::{BuiltRelease, ComponentSpec, FixtureKey, ReleaseSpec, StaticServer};

fn agent(lab: &Lab) -> Agent {
    let root = lab.host.root().to_path_buf();
    let config = Config::load_under(&lab.host.config_path(), &root).expect("config");
    Agent::new(config, root).expect("agent")
}

fn node(version: &str) -> ComponentSpec {
    ComponentSpec::file(
        "qx-node",
        "/data/bin/qx-node",
        demo_binary(version).unwrap(),
    )
}

/// Points the lab host at a lying server that serves `body` with these headers.
fn lying_server(lab: &Lab, headers: Vec<(String, String)>, body: Vec<u8>) -> StaticServer {
    let s = StaticServer::start(200, headers, body).unwrap();
    let mut c = lab.host_config();
    c.server_url = s.url();
    lab.host.write_config(&c).unwrap();
    s
}

fn sig_header(r: &BuiltRelease) -> (String, String) {
    (
        "X-Qx-Signature".into(),
        base64::engine::general_purpose::STANDARD.encode(&r.signature),
    )
}

fn refused(lab: &Lab) -> AgentError {
    agent(lab).check().expect_err("must be refused")
}

#[test]
fn check_reports_installed_to_offered() {
    let lab = Lab::new().unwrap();
    lab.host.set_version("qx-node", "1.0.0").unwrap();
    lab.publish(
        &lab.release("1.1.0")
            .component(node("1.1.0"))
            .component(ComponentSpec::file(
                "qx-console",
                "/data/bin/qx-console",
                b"c".to_vec(),
            )),
    )
    .unwrap();
    let r = agent(&lab).check().expect("check");
    assert_eq!(r.version, "1.1.0");
    assert!(r.available);
    let by_name = |n: &str| r.changes.iter().find(|c| c.name == n).unwrap().clone();
    assert_eq!(by_name("qx-node").installed.as_deref(), Some("1.0.0"));
    assert_eq!(by_name("qx-node").action, "update");
    assert_eq!(by_name("qx-console").installed, None);
    assert_eq!(by_name("qx-console").action, "install");
    // check never touches the host's files.
    assert!(!lab.host.path("/data/bin/qx-node").exists());
}

#[test]
fn check_refuses_when_no_release_exists() {
    let lab = Lab::new().unwrap();
    let e = refused(&lab);
    assert!(matches!(e, AgentError::NoRelease { .. }), "{e}");
    assert_eq!(e.exit_code(), 12);
}

#[test]
fn check_refuses_missing_signature() {
    let lab = Lab::new().unwrap();
    let r = lab
        .release("1.0.0")
        .component(node("1.0.0"))
        .sign(&lab.key)
        .unwrap();
    let _s = lying_server(&lab, vec![], r.manifest_bytes.clone());
    let e = refused(&lab);
    assert!(matches!(e, AgentError::SignatureMissing { .. }), "{e}");
    assert_eq!(e.exit_code(), 20);
}

#[test]
fn check_refuses_garbage_signature() {
    let lab = Lab::new().unwrap();
    let r = lab
        .release("1.0.0")
        .component(node("1.0.0"))
        .sign(&lab.key)
        .unwrap();
    let _s = lying_server(
        &lab,
        vec![("X-Qx-Signature".into(), "not base64 !!".into())],
        r.manifest_bytes.clone(),
    );
    let e = refused(&lab);
    assert!(matches!(e, AgentError::SignatureInvalid { .. }), "{e}");
    assert_eq!(e.exit_code(), 21);
}

#[test]
fn check_refuses_tampered_manifest() {
    let lab = Lab::new().unwrap();
    let mut r = lab
        .release("1.0.0")
        .component(node("1.0.0"))
        .sign(&lab.key)
        .unwrap();
    // A well-formed signature by the trusted key, over other bytes (the real server stores it).
    r.signature = lab.key.sign(b"some other manifest").unwrap();
    r.publish(lab.server.url(), &lab.token).unwrap();
    let e = refused(&lab);
    assert!(matches!(e, AgentError::SignatureInvalid { .. }), "{e}");
    assert_eq!(e.exit_code(), 21);
}

#[test]
fn check_refuses_untrusted_key() {
    let lab = Lab::new().unwrap();
    let other = FixtureKey::generate().unwrap();
    let r = lab
        .release("1.0.0")
        .component(node("1.0.0"))
        .sign(&other)
        .unwrap();
    r.publish(lab.server.url(), &lab.token).unwrap();
    let e = refused(&lab);
    match &e {
        AgentError::UntrustedKey { key_id, .. } => assert_eq!(key_id, &other.key_id),
        _ => panic!("{e}"),
    }
    assert_eq!(e.exit_code(), 22);
}

#[test]
fn check_refuses_invalid_manifest() {
    let lab = Lab::new().unwrap();
    let body = br#"{"schema": 1, "product": "quantix-os"}"#.to_vec();
    let sig = lab.key.sign(&body).unwrap();
    let _s = lying_server(
        &lab,
        vec![(
            "X-Qx-Signature".into(),
            base64::engine::general_purpose::STANDARD.encode(sig),
        )],
        body,
    );
    let e = refused(&lab);
    assert!(matches!(e, AgentError::ManifestInvalid(_)), "{e}");
    assert_eq!(e.exit_code(), 23);
}

#[test]
fn check_refuses_expired_manifest() {
    let lab = Lab::new().unwrap();
    let mut spec = lab.release("1.0.0").component(node("1.0.0"));
    spec.expires_in = jiff::SignedDuration::from_hours(-1);
    lab.publish(&spec).unwrap();
    let e = refused(&lab);
    assert!(matches!(e, AgentError::Expired { .. }), "{e}");
    assert_eq!(e.exit_code(), 24);
}

#[test]
fn check_refuses_other_product() {
    let lab = Lab::new().unwrap();
    let r = ReleaseSpec::new("quantix-vdc", "dev", "1.0.0")
        .component(node("1.0.0"))
        .sign(&lab.key)
        .unwrap();
    let _s = lying_server(&lab, vec![sig_header(&r)], r.manifest_bytes.clone());
    let e = refused(&lab);
    assert!(matches!(e, AgentError::WrongProduct { .. }), "{e}");
    assert_eq!(e.exit_code(), 25);
}

#[test]
fn check_refuses_other_channel() {
    let lab = Lab::new().unwrap();
    let r = ReleaseSpec::new("quantix-os", "stable", "1.0.0")
        .component(node("1.0.0"))
        .sign(&lab.key)
        .unwrap();
    let _s = lying_server(&lab, vec![sig_header(&r)], r.manifest_bytes.clone());
    let e = refused(&lab);
    assert!(matches!(e, AgentError::WrongChannel { .. }), "{e}");
    assert_eq!(e.exit_code(), 26);
}

#[test]
fn check_refuses_downgrade_unless_named() {
    let lab = Lab::new().unwrap();
    lab.host.set_version("qx-node", "2.0.0").unwrap();
    lab.publish(&lab.release("1.5.0").component(node("1.5.0")))
        .unwrap();
    let e = refused(&lab);
    assert!(matches!(e, AgentError::Downgrade { .. }), "{e}");
    assert_eq!(e.exit_code(), 27);
    // Naming another version is a usage error.
    let e = agent(&lab)
        .check_with(&ApplyOptions {
            components: None,
            allow_downgrade: Some("1.4.0".into()),
        })
        .expect_err("mismatch");
    assert!(matches!(e, AgentError::DowngradeMismatch { .. }), "{e}");
    assert_eq!(e.exit_code(), 2);
    // Naming exactly the offered version allows it.
    let r = agent(&lab)
        .check_with(&ApplyOptions {
            components: None,
            allow_downgrade: Some("1.5.0".into()),
        })
        .expect("allowed by name");
    assert_eq!(r.changes[0].action, "downgrade");
}

#[test]
fn check_refuses_replayed_older_manifest() {
    let lab = Lab::new().unwrap();
    lab.publish(&lab.release("1.0.0").component(node("1.0.0")))
        .unwrap();
    lab.publish(&lab.release("1.1.0").component(node("1.1.0")))
        .unwrap();
    agent(&lab).check().expect("1.1.0 seen");
    // The server falls back to 1.0.0 (1.1.0 yanked): the agent has seen newer.
    let resp = reqwest::blocking::Client::new()
        .delete(format!(
            "{}/api/v1/quantix-os/releases/1.1.0?channel=dev",
            lab.server.url()
        ))
        .bearer_auth(&lab.token)
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "yank: {}", resp.status());
    let e = refused(&lab);
    match &e {
        AgentError::Replay { seen, offered, .. } => {
            assert_eq!(seen, "1.1.0");
            assert_eq!(offered, "1.0.0");
        }
        _ => panic!("{e}"),
    }
    assert_eq!(e.exit_code(), 28);
}

#[test]
fn refused_manifest_does_not_move_replay_protection() {
    let lab = Lab::new().unwrap();
    // A forged 9.0.0 (untrusted key) must not poison seen.json ...
    let other = FixtureKey::generate().unwrap();
    let forged = lab
        .release("9.0.0")
        .component(node("9.0.0"))
        .sign(&other)
        .unwrap();
    let s = lying_server(
        &lab,
        vec![sig_header(&forged)],
        forged.manifest_bytes.clone(),
    );
    assert!(matches!(refused(&lab), AgentError::UntrustedKey { .. }));
    drop(s);
    assert!(!lab.host.path("/data/updates/seen.json").exists());
    // ... so the genuine 1.0.0 is still accepted.
    lab.write_config("").unwrap();
    lab.publish(&lab.release("1.0.0").component(node("1.0.0")))
        .unwrap();
    agent(&lab).check().expect("genuine release accepted");
    let seen: serde_json::Value =
        serde_json::from_slice(&lab.host.read("/data/updates/seen.json").unwrap()).unwrap();
    assert_eq!(seen["dev"], "1.0.0");
}

#[test]
fn check_refuses_host_below_min_version() {
    let lab = Lab::new().unwrap();
    lab.host.set_version("qx-node", "1.0.0").unwrap();
    let mut spec = lab.release("3.0.0").component(node("3.0.0"));
    spec.min_version = Some("2.0.0".into());
    lab.publish(&spec).unwrap();
    let e = refused(&lab);
    assert!(matches!(e, AgentError::BelowMinVersion { .. }), "{e}");
    assert_eq!(e.exit_code(), 29);
}

#[test]
fn check_refuses_unmet_requirement() {
    let lab = Lab::new().unwrap();
    lab.host.set_version("qx-console", "1.0.0").unwrap();
    lab.publish(
        &lab.release("1.1.0")
            .component(node("1.1.0").requires("qx-console", "1.1.0")),
    )
    .unwrap();
    let e = refused(&lab);
    match &e {
        AgentError::UnmetRequirement {
            requires,
            installed,
            ..
        } => {
            assert_eq!(requires, "qx-console");
            assert_eq!(installed.as_deref(), Some("1.0.0"));
        }
        _ => panic!("{e}"),
    }
    assert_eq!(e.exit_code(), 30);
}

#[test]
fn requirement_met_by_the_same_release() {
    let lab = Lab::new().unwrap();
    lab.publish(
        &lab.release("1.1.0")
            .component(node("1.1.0").requires("qx-console", "1.1.0"))
            .component(ComponentSpec::file(
                "qx-console",
                "/data/bin/qx-console",
                b"c".to_vec(),
            )),
    )
    .unwrap();
    agent(&lab).check().expect("met within the release");
    // ... but not when only qx-node is selected.
    let e = agent(&lab)
        .check_with(&ApplyOptions {
            components: Some(vec!["qx-node".into()]),
            allow_downgrade: None,
        })
        .expect_err("unmet without qx-console");
    assert!(matches!(e, AgentError::UnmetRequirement { .. }), "{e}");
}

#[test]
fn cli_refusal_exit_code_is_distinct() {
    let lab = Lab::new().unwrap();
    let mut spec = lab.release("1.0.0").component(node("1.0.0"));
    spec.expires_in = jiff::SignedDuration::from_hours(-1);
    lab.publish(&spec).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qx-update"))
        .arg("--root")
        .arg(lab.host.root())
        .args(["--json", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(24));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 24);
    assert!(v["error"].as_str().unwrap().contains("expired"));
}
