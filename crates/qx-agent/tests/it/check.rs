//! The refusal matrix of docs/spec.md §2 and §4 step 1, asserting the exact error variant and
//! exit code of each case. Cases a correct server cannot produce (no signature header, another
//! product's manifest) are served by a lying loopback server.

use base64::Engine;
use qx_agent::AgentError;
use qx_agent::ApplyOptions;
use qx_testkit::host::Lab;
use qx_testkit::release::{BuiltRelease, ComponentSpec, FixtureKey, ReleaseSpec};

use crate::support::hostile::{Canned, HostileServer};

type StaticServer = HostileServer;

use crate::support::host::{agent, node, run_qx_update};

/// Points the lab host at a lying server that serves `body` with these headers.
/// It has no channel state (404), so the agent takes the manifest-only path (docs/spec.md §8).
fn lying_server(lab: &Lab, headers: Vec<(String, String)>, body: Vec<u8>) -> StaticServer {
    let path = format!("/api/v1/{}/manifest", lab.product);
    let s = HostileServer::start(vec![Canned::ok(&path, headers, body)]);
    let mut c = lab.host_config();
    c.server_url = s.url();
    lab.host.write_config(&c).unwrap();
    s
}

fn sig_header(r: &BuiltRelease) -> (String, String) {
    signature_header(&r.signature)
}

fn signature_header(signature: &str) -> (String, String) {
    (
        "X-Qx-Signature".into(),
        base64::engine::general_purpose::STANDARD.encode(signature),
    )
}

fn refused(lab: &Lab) -> AgentError {
    agent(lab).check().expect_err("must be refused")
}

/// A check the agent must refuse: the lab as `setup` leaves it (with the lying server it may
/// start), the error variant `is` accepts, and its exit code.
struct Refusal {
    name: &'static str,
    setup: fn(&Lab) -> Option<StaticServer>,
    is: fn(&AgentError) -> bool,
    exit_code: i32,
}

const REFUSALS: &[Refusal] = &[
    Refusal {
        name: "no release exists",
        setup: |_| None,
        is: |e| matches!(e, AgentError::NoRelease { .. }),
        exit_code: 12,
    },
    Refusal {
        name: "missing signature",
        setup: |lab| {
            let r = signed(lab, &lab.key);
            Some(lying_server(lab, vec![], r.manifest_bytes))
        },
        is: |e| matches!(e, AgentError::SignatureMissing { .. }),
        exit_code: 20,
    },
    Refusal {
        name: "garbage signature",
        setup: |lab| {
            let r = signed(lab, &lab.key);
            let header = ("X-Qx-Signature".into(), "not base64 !!".into());
            Some(lying_server(lab, vec![header], r.manifest_bytes))
        },
        is: |e| matches!(e, AgentError::SignatureInvalid { .. }),
        exit_code: 21,
    },
    Refusal {
        name: "tampered manifest",
        setup: |lab| {
            let mut r = signed(lab, &lab.key);
            // A well-formed signature by the trusted key, over other bytes (the real server
            // stores it).
            r.signature = lab.key.sign(b"some other manifest").unwrap();
            r.publish(lab.server.url(), &lab.token).unwrap();
            None
        },
        is: |e| matches!(e, AgentError::SignatureInvalid { .. }),
        exit_code: 21,
    },
    Refusal {
        name: "invalid manifest",
        setup: |lab| {
            let body = br#"{"schema": 1, "product": "quantix-os"}"#.to_vec();
            let sig = lab.key.sign(&body).unwrap();
            Some(lying_server(lab, vec![signature_header(&sig)], body))
        },
        is: |e| matches!(e, AgentError::ManifestInvalid(_)),
        exit_code: 23,
    },
    Refusal {
        name: "expired manifest",
        setup: |lab| {
            publish_expired(lab);
            None
        },
        is: |e| matches!(e, AgentError::Expired { .. }),
        exit_code: 24,
    },
    Refusal {
        name: "other product",
        setup: |lab| Some(signed_offer_of(lab, "quantix-vdc", "dev")),
        is: |e| matches!(e, AgentError::WrongProduct { .. }),
        exit_code: 25,
    },
    Refusal {
        name: "other channel",
        setup: |lab| Some(signed_offer_of(lab, "quantix-os", "stable")),
        is: |e| matches!(e, AgentError::WrongChannel { .. }),
        exit_code: 26,
    },
    Refusal {
        name: "host below min_version",
        setup: |lab| {
            lab.host.set_version("qx-node", "1.0.0").unwrap();
            let mut spec = lab.release("3.0.0").component(node("3.0.0"));
            spec.min_version = Some("2.0.0".into());
            lab.publish(&spec).unwrap();
            None
        },
        is: |e| matches!(e, AgentError::BelowMinVersion { .. }),
        exit_code: 29,
    },
];

/// A lying server offering release 1.0.0 of `product` on `channel`, signed by the lab's key.
fn signed_offer_of(lab: &Lab, product: &str, channel: &str) -> StaticServer {
    let r = ReleaseSpec::new(product, channel, "1.0.0")
        .component(node("1.0.0"))
        .sign(&lab.key)
        .unwrap();
    lying_server(lab, vec![sig_header(&r)], r.manifest_bytes.clone())
}

/// Release 1.0.0 of the lab with `qx-node`, signed by `key`, not published.
fn signed(lab: &Lab, key: &FixtureKey) -> BuiltRelease {
    lab.release("1.0.0")
        .component(node("1.0.0"))
        .sign(key)
        .unwrap()
}

/// Publishes release 1.0.0 with an expiry an hour ago.
fn publish_expired(lab: &Lab) {
    let mut spec = lab.release("1.0.0").component(node("1.0.0"));
    spec.expires_in = jiff::SignedDuration::from_hours(-1);
    lab.publish(&spec).unwrap();
}

#[test]
fn check_refuses_each_bad_offer_with_its_error_and_exit_code() {
    for case in REFUSALS {
        let name = case.name;
        let lab = Lab::new().unwrap();
        let _server = (case.setup)(&lab);
        let e = refused(&lab);
        assert!((case.is)(&e), "{name}: {e}");
        assert_eq!(e.exit_code(), case.exit_code, "{name}: {e}");
    }
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
fn check_refuses_untrusted_key() {
    let lab = Lab::new().unwrap();
    let other = FixtureKey::generate().unwrap();
    let r = signed(&lab, &other);
    r.publish(lab.server.url(), &lab.token).unwrap();
    let e = refused(&lab);
    match &e {
        AgentError::UntrustedKey { key_id, .. } => assert_eq!(key_id, &other.key_id),
        _ => panic!("{e}"),
    }
    assert_eq!(e.exit_code(), 22);
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
            ..Default::default()
        })
        .expect_err("mismatch");
    assert!(matches!(e, AgentError::DowngradeMismatch { .. }), "{e}");
    assert_eq!(e.exit_code(), 2);
    // Naming exactly the offered version allows it.
    let r = agent(&lab)
        .check_with(&ApplyOptions {
            components: None,
            allow_downgrade: Some("1.5.0".into()),
            ..Default::default()
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
            ..Default::default()
        })
        .expect_err("unmet without qx-console");
    assert!(matches!(e, AgentError::UnmetRequirement { .. }), "{e}");
}

#[test]
fn cli_refusal_exit_code_is_distinct() {
    let lab = Lab::new().unwrap();
    publish_expired(&lab);
    let out = run_qx_update(lab.host.root(), &["--json", "check"]);
    assert_eq!(out.status.code(), Some(24));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 24);
    assert!(v["error"].as_str().unwrap().contains("expired"));
}
