//! The signed channel state end to end (docs/spec.md §8, §12): a real server with the state
//! `PUT` by the test, real `qx-update` processes on sandboxed hosts, real signatures. Yank with
//! keep and with revert, replay and freeze refused with their exit codes, chosen versions, and
//! bundles (a good one installed offline, a tampered one refused with the host unchanged).

use base64::Engine;
use qx_agent::code;
use qx_core::bundle::{write_bundle, BundleMetadata};
use qx_core::channel::{ChannelState, RevokeAction};
use qx_core::Version;
use qx_testkit::channel::{revoke, sign, state_of, SignedChannel};
use qx_testkit::host::{demo_binary, Lab, TestHost};
use qx_testkit::release::BuiltRelease;
use serde_json::Value;

use crate::support::api::{ApiServer, TOKEN};
use crate::support::host::{agent, dead_url, history, host_at_v1, node_release, run_qx_update};
use crate::support::hostile::{Canned, HostileServer};
use crate::support::runtime;

/// Two releases (1.0.0, 1.1.0) of `qx-node`, and a state of seq 1 offering both, current 1.1.0.
fn lab_with_two() -> (Lab, BuiltRelease, BuiltRelease, ChannelState) {
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    let v1 = node_release(&lab, "1.0.0");
    let v2 = node_release(&lab, "1.1.0");
    let state = state_of(1, &[&v1, &v2]).unwrap();
    publish(&lab, &state);
    (lab, v1, v2, state)
}

fn publish(lab: &Lab, state: &ChannelState) -> SignedChannel {
    let signed = sign(state, &lab.key).unwrap();
    signed.publish(lab.server.url(), &lab.token).unwrap();
    signed
}

/// The yank: 1.1.0 revoked with `action`, current back to 1.0.0, seq 2.
fn yank(lab: &Lab, state: &ChannelState, action: RevokeAction) -> ChannelState {
    let mut next = state.successor(jiff::Timestamp::now(), qx_core::channel::DEFAULT_LIFETIME);
    revoke(&mut next, &Version::parse("1.1.0").unwrap(), action);
    next.current = Version::parse("1.0.0").unwrap();
    publish(lab, &next);
    next
}

fn qx(host: &TestHost, args: &[&str]) -> (i32, String) {
    let out = run_qx_update(host.root(), args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn check_json(host: &TestHost) -> Value {
    let (code, text) = qx(host, &["--json", "check"]);
    assert_eq!(code, 0, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// A second host of the lab, at 1.0.0, never updated.
fn second_host(lab: &Lab) -> TestHost {
    let host = TestHost::new().unwrap();
    host.write_config(&lab.host_config()).unwrap();
    host.write_file("/data/bin/qx-node", &demo_binary("1.0.0").unwrap(), 0o755)
        .unwrap();
    host.set_version("qx-node", "1.0.0").unwrap();
    host.add_service("quantix-node", "/data/bin/qx-node", "infinity")
        .unwrap();
    crate::support::host::service(&host, "restart", "quantix-node");
    host
}

#[test]
fn yank_with_keep_leaves_every_host_up_to_date_without_errors() {
    let (lab, _v1, _v2, state) = lab_with_two();
    let never_took = second_host(&lab);
    assert_eq!(
        check_json(&never_took)["available"],
        true,
        "saw seq 1 offering 1.1.0"
    );
    let (code, text) = qx(&lab.host, &["apply", "--yes"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));

    yank(&lab, &state, RevokeAction::Keep);
    for _ in 0..2 {
        let r = check_json(&never_took);
        assert_eq!(r["available"], false, "{r}");
        let r = check_json(&lab.host);
        assert_eq!(r["available"], false, "{r}");
        let (code, text) = qx(&lab.host, &["apply", "--yes"]);
        assert_eq!(code, 0, "{text}");
    }
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
    assert_eq!(never_took.version("qx-node").as_deref(), Some("1.0.0"));
}

#[test]
fn yank_with_revert_goes_back_to_current_verified_and_recorded_reverted() {
    let (lab, _v1, _v2, state) = lab_with_two();
    let (code, text) = qx(&lab.host, &["apply", "--yes"]);
    assert_eq!(code, 0, "{text}");
    yank(&lab, &state, RevokeAction::Revert);
    let r = check_json(&lab.host);
    assert_eq!(r["available"], true, "{r}");
    assert_eq!(r["revert"], true, "{r}");
    let (code, text) = qx(&lab.host, &["apply", "--yes"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
    assert_eq!(
        lab.host.read("/data/bin/qx-node").unwrap(),
        demo_binary("1.0.0").unwrap()
    );
    let last = history(lab.host.root()).pop().unwrap();
    assert_eq!(last["outcome"], "reverted", "{last}");
    assert_eq!(check_json(&lab.host)["available"], false);
}

/// Points the host at a hostile server that serves `state` (and nothing else).
fn hostile_serving(lab: &Lab, signed: &SignedChannel) -> HostileServer {
    let path = format!("/api/v1/{}/channels/{}", lab.product, lab.channel);
    let sig = base64::engine::general_purpose::STANDARD.encode(&signed.signature);
    let s = HostileServer::start(vec![Canned::ok(
        &path,
        vec![("X-Qx-Signature".into(), sig)],
        signed.bytes.clone(),
    )]);
    let mut c = lab.host_config();
    c.server_url = s.url();
    lab.host.write_config(&c).unwrap();
    s
}

#[test]
fn replayed_channel_state_is_refused_with_its_exit_code() {
    let (lab, _v1, _v2, state) = lab_with_two();
    let old = sign(&state, &lab.key).unwrap();
    yank(&lab, &state, RevokeAction::Keep);
    check_json(&lab.host);
    let hostile = hostile_serving(&lab, &old);
    let (code, text) = qx(&lab.host, &["check"]);
    assert_eq!(code, code::STATE_REPLAYED, "{text}");
    assert!(text.contains("seq 1"), "{text}");
    // Refused before any manifest was asked for.
    let state_path = format!("/api/v1/{}/channels/{}", lab.product, lab.channel);
    assert_eq!(hostile.hits(&state_path), 1);
}

#[test]
fn same_seq_with_other_bytes_is_refused_as_a_replay() {
    let (lab, v1, _v2, state) = lab_with_two();
    check_json(&lab.host);
    let mut forged = state_of(1, &[&v1]).unwrap();
    forged.issued = state.issued;
    let forged = sign(&forged, &lab.key).unwrap();
    let _hostile = hostile_serving(&lab, &forged);
    let (code, text) = qx(&lab.host, &["check"]);
    assert_eq!(code, code::STATE_REPLAYED, "{text}");
}

#[test]
fn expired_channel_state_is_refused_as_frozen() {
    let (lab, _v1, _v2, state) = lab_with_two();
    let mut frozen = state.successor(jiff::Timestamp::now(), qx_core::channel::DEFAULT_LIFETIME);
    frozen.issued = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
    frozen.expires = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let frozen = sign(&frozen, &lab.key).unwrap();
    let _hostile = hostile_serving(&lab, &frozen);
    let (code, text) = qx(&lab.host, &["check"]);
    assert_eq!(code, code::STATE_EXPIRED, "{text}");
}

#[test]
fn a_state_withdrawn_by_the_server_is_refused() {
    let (lab, _v1, _v2, _state) = lab_with_two();
    check_json(&lab.host);
    let s = HostileServer::start(vec![]);
    let mut c = lab.host_config();
    c.server_url = s.url();
    lab.host.write_config(&c).unwrap();
    let (code, text) = qx(&lab.host, &["check"]);
    assert_eq!(code, code::STATE_WITHDRAWN, "{text}");
}

#[test]
fn version_to_an_older_listed_release_needs_allow_downgrade() {
    let (lab, _v1, _v2, _state) = lab_with_two();
    let (code, text) = qx(&lab.host, &["apply", "--yes"]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = qx(&lab.host, &["apply", "--yes", "--version", "1.0.0"]);
    assert_eq!(code, code::DOWNGRADE, "{text}");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
    let (code, text) = qx(
        &lab.host,
        &[
            "apply",
            "--yes",
            "--version",
            "1.0.0",
            "--allow-downgrade",
            "1.1.0",
        ],
    );
    assert_eq!(code, code::USAGE, "{text}");
    let (code, text) = qx(
        &lab.host,
        &[
            "apply",
            "--yes",
            "--version",
            "1.0.0",
            "--allow-downgrade",
            "1.0.0",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
    // A chosen release below current is kept only until the next plain apply.
    let (code, text) = qx(&lab.host, &["apply", "--yes", "--version", "1.1.0"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
}

#[test]
fn version_unlisted_or_revoked_is_refused() {
    let (lab, _v1, _v2, state) = lab_with_two();
    let (code, text) = qx(&lab.host, &["apply", "--yes", "--version", "9.9.9"]);
    assert_eq!(code, code::NOT_INSTALLABLE, "{text}");
    yank(&lab, &state, RevokeAction::Keep);
    let (code, text) = qx(&lab.host, &["apply", "--yes", "--version", "1.1.0"]);
    assert_eq!(code, code::NOT_INSTALLABLE, "{text}");
    assert!(text.contains("revoked"), "{text}");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
}

/// A bundle of `release` with the signed `state`, written into the host's scratch directory.
fn bundle_of(lab: &Lab, state: &ChannelState, release: &BuiltRelease) -> std::path::PathBuf {
    let signed = sign(state, &lab.key).unwrap();
    let dir = lab.host.scratch();
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (name, bytes) in &release.artifacts {
        let p = dir.join(format!("art-{name}"));
        std::fs::write(&p, bytes).unwrap();
        files.push((name.clone(), p));
    }
    let meta = BundleMetadata {
        channel: signed.bytes,
        channel_signature: signed.signature.into_bytes(),
        manifest: release.manifest_bytes.clone(),
        manifest_signature: release.signature.clone().into_bytes(),
    };
    let out = dir.join("release.qxb");
    write_bundle(&out, &meta, &files).unwrap();
    out
}

/// Points the host at a server nobody runs: a bundle must need no network.
fn offline(lab: &Lab) {
    let mut c = lab.host_config();
    c.server_url = dead_url();
    lab.host.write_config(&c).unwrap();
}

#[test]
fn bundle_from_file_installs_offline() {
    let (lab, _v1, v2, state) = lab_with_two();
    let bundle = bundle_of(&lab, &state, &v2);
    offline(&lab);
    let (code, text) = qx(
        &lab.host,
        &["apply", "--yes", "--from", bundle.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
    assert_eq!(
        lab.host.read("/data/bin/qx-node").unwrap(),
        demo_binary("1.1.0").unwrap()
    );
}

fn assert_unchanged(lab: &Lab) {
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
    assert_eq!(
        lab.host.read("/data/bin/qx-node").unwrap(),
        demo_binary("1.0.0").unwrap()
    );
    assert!(crate::support::host::journal(lab.host.root()).is_none());
}

#[test]
fn truncated_bundle_is_refused_with_the_host_unchanged() {
    let (lab, _v1, v2, state) = lab_with_two();
    let bundle = bundle_of(&lab, &state, &v2);
    let bytes = std::fs::read(&bundle).unwrap();
    std::fs::write(&bundle, &bytes[..bytes.len() / 2]).unwrap();
    offline(&lab);
    let (code, text) = qx(
        &lab.host,
        &["apply", "--yes", "--from", bundle.to_str().unwrap()],
    );
    assert_eq!(code, code::BUNDLE_INVALID, "{text}");
    assert_unchanged(&lab);
}

#[test]
fn tampered_bundle_artifact_is_refused_with_the_host_unchanged() {
    let (lab, _v1, v2, state) = lab_with_two();
    let bundle = bundle_of(&lab, &state, &v2);
    let mut bytes = std::fs::read(&bundle).unwrap();
    // The artifact is the last entry: flip a byte inside it (before the tar's end blocks).
    let at = bytes.len() - 1024 - 600;
    bytes[at] ^= 0xff;
    std::fs::write(&bundle, &bytes).unwrap();
    offline(&lab);
    let (code, text) = qx(
        &lab.host,
        &["apply", "--yes", "--from", bundle.to_str().unwrap()],
    );
    assert_eq!(code, code::BUNDLE_INVALID, "{text}");
    assert_unchanged(&lab);
}

#[test]
fn bundle_with_a_replayed_state_is_refused() {
    let (lab, _v1, v2, state) = lab_with_two();
    let bundle = bundle_of(&lab, &state, &v2);
    yank(&lab, &state, RevokeAction::Keep);
    check_json(&lab.host);
    let (code, text) = qx(
        &lab.host,
        &["apply", "--yes", "--from", bundle.to_str().unwrap()],
    );
    assert_eq!(code, code::STATE_REPLAYED, "{text}");
    assert_unchanged(&lab);
}

/// Serves `bytes` at `/bundles/release.qxb` (with a strong ETag, honouring `Range`), cut at
/// `cut_at` on every answer when given; returns the server and the bundle's URL.
fn serve_bundle(bytes: Vec<u8>, cut_at: Option<usize>) -> (HostileServer, String) {
    let etag = format!("\"{}\"", qx_core::Sha256::of(&bytes));
    let mut canned = Canned::ok("/bundles/release.qxb", vec![("ETag".into(), etag)], bytes);
    canned.cut_at = cut_at;
    let s = HostileServer::start(vec![canned]);
    let url = format!("{}/bundles/release.qxb", s.url());
    (s, url)
}

/// Nothing of a bundle download is left but, at most, its partial data.
fn downloaded_bundles(lab: &Lab) -> Vec<String> {
    std::fs::read_dir(lab.host.path("/data/updates/staging/bundles"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn bundle_from_url_installs_resuming_across_a_cut() {
    let (lab, _v1, v2, state) = lab_with_two();
    let bytes = std::fs::read(bundle_of(&lab, &state, &v2)).unwrap();
    let len = bytes.len() as u64;
    let (server, _) = serve_bundle(bytes, None);
    // Every connection is cut after two thirds of the bundle: the second attempt resumes.
    let proxy = qx_testkit::proxy::FaultProxy::start(
        server.url().trim_start_matches("http://").parse().unwrap(),
    )
    .unwrap();
    proxy.set_faults(qx_testkit::proxy::Faults {
        cut_every: Some(len * 2 / 3),
        ..Default::default()
    });
    let url = format!("{}/bundles/release.qxb", proxy.url());
    offline(&lab);
    let (code, text) = qx(&lab.host, &["apply", "--yes", "--from", &url]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
    assert_eq!(
        lab.host.read("/data/bin/qx-node").unwrap(),
        demo_binary("1.1.0").unwrap()
    );
    assert!(proxy.stats().cuts >= 1, "{:?}", proxy.stats());
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.to_ascii_lowercase().contains("range: bytes=")),
        "resumed with a Range request"
    );
    assert_eq!(downloaded_bundles(&lab), Vec::<String>::new());
}

#[test]
fn bundle_from_url_cut_short_every_time_is_refused_with_the_host_unchanged() {
    let (lab, _v1, v2, state) = lab_with_two();
    let bytes = std::fs::read(bundle_of(&lab, &state, &v2)).unwrap();
    let half = bytes.len() / 2;
    let (_server, url) = serve_bundle(bytes, Some(half));
    offline(&lab);
    let (code, text) = qx(&lab.host, &["apply", "--yes", "--from", &url]);
    assert_eq!(code, code::DOWNLOAD, "{text}");
    assert_unchanged(&lab);
}

#[test]
fn bundle_from_url_serving_a_truncated_file_is_refused_with_the_host_unchanged() {
    let (lab, _v1, v2, state) = lab_with_two();
    let mut bytes = std::fs::read(bundle_of(&lab, &state, &v2)).unwrap();
    bytes.truncate(bytes.len() / 2);
    let (_server, url) = serve_bundle(bytes, None);
    offline(&lab);
    let (code, text) = qx(&lab.host, &["apply", "--yes", "--from", &url]);
    assert_eq!(code, code::BUNDLE_INVALID, "{text}");
    assert_unchanged(&lab);
}

#[test]
fn bundle_from_url_above_max_unpacked_bytes_is_refused_before_downloading() {
    let (lab, _v1, v2, state) = lab_with_two();
    let bytes = std::fs::read(bundle_of(&lab, &state, &v2)).unwrap();
    let (server, url) = serve_bundle(bytes, None);
    let mut c = lab.host_config();
    c.server_url = dead_url();
    c.extra = "  max_unpacked_bytes: 4096\n".into();
    lab.host.write_config(&c).unwrap();
    let (code, text) = qx(&lab.host, &["apply", "--yes", "--from", &url]);
    assert_eq!(code, code::DOWNLOAD, "{text}");
    assert!(text.contains("updates.max_unpacked_bytes"), "{text}");
    assert_eq!(server.hits("/bundles/release.qxb"), 1, "not retried");
    assert_eq!(downloaded_bundles(&lab), Vec::<String>::new());
    assert_unchanged(&lab);
}

#[test]
fn a_refused_downgrade_names_the_request_field_never_a_command_line_flag() {
    let (lab, _v1, _v2, _state) = lab_with_two();
    let (code, text) = qx(&lab.host, &["apply", "--yes"]);
    assert_eq!(code, 0, "{text}");
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let resp = api
            .post(qx_core::api::host::APPLY)
            .json(&serde_json::json!({"version": "1.0.0"}))
            .send()
            .await
            .expect("POST apply");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.expect("JSON body");
        assert!(status == 400 || status == 409, "{status} {body}");
        let error = body["error"].as_str().expect("an error text");
        assert!(
            error.contains("\"allow_downgrade\": \"1.0.0\" in the request takes it"),
            "{body}"
        );
        assert!(!body.to_string().contains("--"), "{body}");
        api.shutdown().await;
    });
    // The command line says it with its flag.
    let (code, text) = qx(&lab.host, &["apply", "--yes", "--version", "1.0.0"]);
    assert_eq!(code, code::DOWNGRADE, "{text}");
    assert!(text.contains("--allow-downgrade 1.0.0 takes it"), "{text}");
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
}
