//! Deltas (docs/spec.md §11): a component rebuilt from what the host holds and a small patch;
//! every way a delta can be wrong ends in the whole download and a correct install.

use std::fs;
use std::path::PathBuf;

use qx_agent::ApplyOptions;
use qx_core::manifest::DeltaAlgorithm;
use qx_core::Sha256;
use qx_testkit::host::{demo_binary, Lab};
use qx_testkit::release::{release_path, BuiltRelease, ComponentSpec, ReleaseSpec};

use crate::support::host::{agent, qx_update, run_qx_update, update_log};

/// `qx-node` of `version`: the demo binary with a version marker, plus `extra` bytes that make
/// one release differ from the next in more than the marker.
fn node(version: &str, extra: &[u8]) -> ComponentSpec {
    let mut bytes = demo_binary(version).unwrap();
    bytes.extend_from_slice(extra);
    ComponentSpec::file("qx-node", "/data/bin/qx-node", bytes)
}

fn v1(lab: &Lab) -> ReleaseSpec {
    lab.release("1.0.0").component(node("1.0.0", b""))
}

fn v2(lab: &Lab) -> ReleaseSpec {
    lab.release("1.1.0")
        .component(node("1.1.0", b"new in 1.1.0"))
        .deltas_from(&v1(lab))
}

/// A lab whose host installed 1.0.0 through the agent, with 1.1.0 published carrying a delta
/// from 1.0.0.
fn lab_at_v1_with_v2() -> (Lab, BuiltRelease) {
    let lab = Lab::new().unwrap();
    lab.publish(&v1(&lab)).unwrap();
    agent(&lab).apply(&ApplyOptions::default()).unwrap();
    let v2 = lab.publish(&v2(&lab)).unwrap();
    (lab, v2)
}

/// The delta artifact of `r`'s `qx-node` as the server stores it.
fn stored_delta(lab: &Lab, r: &BuiltRelease) -> PathBuf {
    let c = r.manifest.component("qx-node").unwrap();
    release_path(
        lab.server.release_dir(),
        &lab.product,
        &lab.channel,
        "1.1.0",
    )
    .join(c.deltas[0].artifact.as_str())
}

fn installed(lab: &Lab) -> Vec<u8> {
    fs::read(lab.host.root().join("data/bin/qx-node")).unwrap()
}

fn expected_v2() -> Vec<u8> {
    let mut b = demo_binary("1.1.0").unwrap();
    b.extend_from_slice(b"new in 1.1.0");
    b
}

/// True when the update log shows the whole `qx-node` artifact of `version` downloaded.
fn whole_downloaded(lab: &Lab, version: &str) -> bool {
    let artifact = format!("/{version}/qx-node.tar.zst");
    update_log(lab.host.root())
        .lines()
        .any(|l| l.contains("download http") && l.contains(&artifact))
}

fn refused(lab: &Lab) -> Vec<String> {
    fs::read(lab.host.root().join("data/updates/deltas-refused.json"))
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap_or_default()
}

#[test]
fn a_host_holding_the_base_downloads_the_patch_rebuilds_and_installs_the_exact_bytes() {
    let (lab, r) = lab_at_v1_with_v2();
    let c = r.manifest.component("qx-node").unwrap();
    assert_eq!(c.deltas.len(), 1);
    assert!(c.deltas[0].size_bytes * 10 < c.size_bytes, "a small patch");

    let report = agent(&lab).apply(&ApplyOptions::default()).unwrap();
    assert_eq!(installed(&lab), expected_v2());
    assert_eq!(report.deltas.len(), 1, "{report:?}");
    let used = &report.deltas[0];
    assert_eq!(used.component, "qx-node");
    assert_eq!(used.from_version, "1.0.0");
    assert_eq!(used.downloaded_bytes, c.deltas[0].size_bytes);
    assert_eq!(used.artifact_bytes, c.size_bytes);
    let log = update_log(lab.host.root());
    assert!(log.contains("sha256 verified"), "{log}");
    assert!(
        !whole_downloaded(&lab, "1.1.0"),
        "the whole artifact was downloaded:\n{log}"
    );
    assert!(refused(&lab).is_empty());
}

#[test]
fn the_cli_says_what_the_delta_saved() {
    let (lab, _) = lab_at_v1_with_v2();
    let out = run_qx_update(lab.host.root(), &["apply", "--yes"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("qx-node: rebuilt from 1.0.0 with a"),
        "{stdout}"
    );
    assert!(stdout.contains("% saved"), "{stdout}");
    assert_eq!(installed(&lab), expected_v2());
}

/// A patch the server serves wrong: other bytes are refused for good; a short file looks like a
/// cut connection (the server announced the signed length), so it is only skipped this time.
#[test]
fn a_corrupt_patch_on_the_server_falls_back_to_the_whole_artifact() {
    type Spoil = fn(&mut Vec<u8>);
    let cases: [(&str, Spoil, bool); 2] = [
        (
            "flipped byte",
            |b| {
                let at = b.len() / 2;
                b[at] ^= 0x40;
            },
            true,
        ),
        ("truncated", |b| b.truncate(b.len() / 2), false),
    ];
    for (what, spoil, refused_for_good) in cases {
        let (lab, r) = lab_at_v1_with_v2();
        let path = stored_delta(&lab, &r);
        let mut bytes = fs::read(&path).unwrap();
        spoil(&mut bytes);
        fs::write(&path, &bytes).unwrap();

        let report = agent(&lab).apply(&ApplyOptions::default()).unwrap();
        assert_eq!(installed(&lab), expected_v2(), "{what}");
        assert!(report.deltas.is_empty(), "{what}");
        let log = update_log(lab.host.root());
        assert!(whole_downloaded(&lab, "1.1.0"), "{what}: {log}");
        let delta_sha = r.manifest.component("qx-node").unwrap().deltas[0].sha256;
        let want = if refused_for_good {
            vec![delta_sha.to_hex()]
        } else {
            vec![]
        };
        assert_eq!(refused(&lab), want, "{what}: {log}");
    }
}

/// A delta whose patch is what the manifest signs but was made from other bytes than its
/// `from_sha256` says: the rebuilt archive does not match the signed `tar`.
#[test]
fn a_patch_from_another_base_rebuilds_wrong_bytes_which_are_refused_then_never_downloaded_again() {
    let lab = Lab::new().unwrap();
    lab.publish(&v1(&lab)).unwrap();
    agent(&lab).apply(&ApplyOptions::default()).unwrap();
    let other = lab
        .release("0.9.0")
        .component(node("0.9.0", b"something else entirely"));
    let mut built = v2(&lab).deltas_from(&other).build().unwrap();
    // Swap the patches: the one listed from 1.0.0's content now holds the patch from 0.9.0's.
    let c = built
        .manifest
        .components
        .iter_mut()
        .find(|c| c.name.as_str() == "qx-node")
        .unwrap();
    let (good, wrong) = (c.deltas[0].clone(), c.deltas[1].clone());
    c.deltas = vec![qx_core::manifest::Delta {
        artifact: good.artifact.clone(),
        sha256: wrong.sha256,
        size_bytes: wrong.size_bytes,
        ..good.clone()
    }];
    let wrong_bytes = built.artifact(wrong.artifact.as_str()).unwrap().to_vec();
    built.artifacts.retain(|(n, _)| !n.ends_with(".delta"));
    built
        .artifacts
        .push((good.artifact.to_string(), wrong_bytes));
    built.manifest_bytes = built.manifest.to_bytes();
    built.signature = lab.key.sign(&built.manifest_bytes).unwrap();
    built.publish(lab.server.url(), &lab.token).unwrap();

    agent(&lab).apply(&ApplyOptions::default()).unwrap();
    assert_eq!(installed(&lab), expected_v2());
    let log = update_log(lab.host.root());
    assert!(
        log.contains(&format!("delta {} refused", good.artifact)),
        "{log}"
    );
    assert_eq!(refused(&lab), vec![wrong.sha256.to_hex()]);

    // Back at 1.0.0's content, the same delta is not chosen again.
    fs::write(
        lab.host.root().join("data/bin/qx-node"),
        demo_binary("1.0.0").unwrap(),
    )
    .unwrap();
    lab.host.set_version("qx-node", "1.0.0").unwrap();
    let report = agent(&lab).apply(&ApplyOptions::default()).unwrap();
    assert!(report.deltas.is_empty());
    assert_eq!(installed(&lab), expected_v2());
}

#[test]
fn a_base_changed_on_the_host_after_the_check_gets_the_whole_artifact_and_no_refusal() {
    let (lab, _) = lab_at_v1_with_v2();
    run_qx_update(lab.host.root(), &["check"]);
    // Edited in place after the check (a local patch, a bit flip on the disk).
    let mut bytes = installed(&lab);
    bytes[100] ^= 1;
    fs::write(lab.host.root().join("data/bin/qx-node"), &bytes).unwrap();

    let report = agent(&lab).apply(&ApplyOptions::default()).unwrap();
    assert!(report.deltas.is_empty());
    assert_eq!(installed(&lab), expected_v2());
    assert!(whole_downloaded(&lab, "1.1.0"));
    assert!(refused(&lab).is_empty(), "not the delta's fault");
}

#[test]
fn a_backup_of_the_exact_old_content_is_a_base_too() {
    let lab = Lab::new().unwrap();
    lab.publish(&v1(&lab)).unwrap();
    agent(&lab).apply(&ApplyOptions::default()).unwrap();
    // 1.1.0 without deltas: 1.0.0's content goes into the backups.
    lab.publish(&lab.release("1.1.0").component(node("1.1.0", b"x")))
        .unwrap();
    agent(&lab).apply(&ApplyOptions::default()).unwrap();
    // 1.2.0 has a delta from 1.0.0 only: the installed 1.1.0 does not match, the backup does.
    lab.publish(
        &lab.release("1.2.0")
            .component(node("1.2.0", b"y"))
            .deltas_from(&v1(&lab)),
    )
    .unwrap();
    let report = agent(&lab).apply(&ApplyOptions::default()).unwrap();
    assert_eq!(report.deltas.len(), 1, "{report:?}");
    assert!(update_log(lab.host.root()).contains("data/updates/backup/1.1.0/qx-node"));
    let mut want = demo_binary("1.2.0").unwrap();
    want.extend_from_slice(b"y");
    assert_eq!(installed(&lab), want);
}

#[test]
fn a_directory_component_is_rebuilt_from_its_installed_tree() {
    let tree = |v: &str| {
        ComponentSpec::tree(
            "host-ui",
            "/data/share/quantix-host-ui",
            vec![
                (
                    "index.html".into(),
                    format!("<h1>{v}</h1>").into_bytes(),
                    0o644,
                ),
                ("js/app.js".into(), demo_binary("js").unwrap(), 0o644),
                ("js/extra.js".into(), v.as_bytes().repeat(100), 0o644),
            ],
        )
    };
    let lab = Lab::new().unwrap();
    let old = lab.release("1.0.0").component(tree("1.0.0"));
    lab.publish(&old).unwrap();
    agent(&lab).apply(&ApplyOptions::default()).unwrap();
    lab.publish(
        &lab.release("1.1.0")
            .component(tree("1.1.0"))
            .deltas_from(&old),
    )
    .unwrap();

    let report = agent(&lab).apply(&ApplyOptions::default()).unwrap();
    assert_eq!(report.deltas.len(), 1, "{report:?}");
    let ui = lab.host.root().join("data/share/quantix-host-ui");
    assert_eq!(fs::read(ui.join("index.html")).unwrap(), b"<h1>1.1.0</h1>");
    assert_eq!(
        fs::read(ui.join("js/extra.js")).unwrap(),
        b"1.1.0".repeat(100)
    );
}

#[test]
fn a_delta_of_an_algorithm_this_agent_does_not_know_is_skipped() {
    let lab = Lab::new().unwrap();
    lab.publish(&v1(&lab)).unwrap();
    agent(&lab).apply(&ApplyOptions::default()).unwrap();
    let mut built = v2(&lab).build().unwrap();
    let c = built
        .manifest
        .components
        .iter_mut()
        .find(|c| c.name.as_str() == "qx-node")
        .unwrap();
    c.deltas[0].algorithm = DeltaAlgorithm::Unknown;
    built.manifest_bytes = built.manifest.to_bytes();
    built.signature = lab.key.sign(&built.manifest_bytes).unwrap();
    built.publish(lab.server.url(), &lab.token).unwrap();

    let report = agent(&lab).apply(&ApplyOptions::default()).unwrap();
    assert!(report.deltas.is_empty());
    assert_eq!(installed(&lab), expected_v2());
    assert!(refused(&lab).is_empty());
}

/// kill -9 while the archive is being rebuilt: the next apply rebuilds it again from the patch
/// already downloaded, and installs the exact bytes.
#[test]
fn kill_9_during_the_rebuild_then_the_next_apply_finishes_from_the_downloaded_patch() {
    let (lab, r) = lab_at_v1_with_v2();
    // A patch whose rebuilt archive passes the crash point (64 KiB written).
    let big = lab
        .release("1.2.0")
        .component(node("1.2.0", &vec![7u8; 200_000]))
        .deltas_from(&v1(&lab));
    let big = lab.publish(&big).unwrap();
    drop(r);
    let out = qx_update(lab.host.root())
        .env("QX_TEST_CRASH_AT", "delta-rebuilding")
        .args(["apply", "--yes"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "crashed");
    let staging = lab.host.root().join("data/updates/staging/1.2.0");
    let delta = &big.manifest.component("qx-node").unwrap().deltas[0];
    let patch = staging.join(delta.artifact.as_str());
    assert_eq!(
        Sha256::of(&fs::read(&patch).unwrap()),
        delta.sha256,
        "patch kept"
    );
    assert!(
        staging.join(".rebuilt/qx-node.tar.zst.part").exists(),
        "cut mid-rebuild"
    );

    let out = run_qx_update(lab.host.root(), &["--json", "apply", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["deltas"][0]["component"], "qx-node", "{report}");
    let mut want = demo_binary("1.2.0").unwrap();
    want.extend_from_slice(&vec![7u8; 200_000]);
    assert_eq!(installed(&lab), want);
    assert!(!whole_downloaded(&lab, "1.2.0"));
    assert!(refused(&lab).is_empty());
}

/// A patch download cut earlier resumes where it stopped: the first half is kept on the host,
/// and the server's copy now has a spoilt first half, so only a resumed download (the second
/// half, asked with `Range`) can end with the signed bytes.
#[test]
fn a_cut_patch_download_resumes_with_a_range_request() {
    let (lab, r) = lab_at_v1_with_v2();
    let delta = r.manifest.component("qx-node").unwrap().deltas[0].clone();
    let path = stored_delta(&lab, &r);
    let good = fs::read(&path).unwrap();
    let half = good.len() / 2;
    let staging = lab.host.root().join("data/updates/staging/1.1.0");
    fs::create_dir_all(&staging).unwrap();
    let part = staging.join(format!("{}.part", delta.artifact));
    fs::write(&part, &good[..half]).unwrap();
    fs::write(
        staging.join(format!("{}.part.sha256", delta.artifact)),
        delta.sha256.to_hex(),
    )
    .unwrap();
    let mut spoilt = good.clone();
    spoilt[..half].fill(0);
    fs::write(&path, &spoilt).unwrap();

    let report = agent(&lab).apply(&ApplyOptions::default()).unwrap();
    assert_eq!(
        report.deltas.len(),
        1,
        "resumed, not downloaded again: {report:?}"
    );
    assert_eq!(installed(&lab), expected_v2());
    assert!(!whole_downloaded(&lab, "1.1.0"));
}
