//! The signed channel state (docs/spec.md §8) as `qx-publish` keeps it, against a real update
//! server: publish, `--no-current`, promote, yank keep/revert, refresh, key trust, 409,
//! complete releases (`publish --component`) and bundles (docs/spec.md §12).

use std::path::Path;

use base64::Engine;
use predicates::prelude::*;
use qx_core::api::SIGNATURE_HEADER;
use qx_core::bundle::{extract_artifacts, read_metadata};
use qx_core::channel::{ChannelState, RevokeAction};
use qx_core::{Manifest, Sha256, TrustedKeys, UnknownFields, Version};
use qx_publish::channel::{Signer, Update};
use qx_publish::upload::{Client, Token};

use crate::server::{start, Env, PRODUCT};
use crate::support::{keygen, qx_publish, stderr, stdout, TOKEN};

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

impl Env {
    /// The channel's stored state, its signature verified with the work key; None on 404.
    fn state(&self, channel: &str) -> Option<ChannelState> {
        let resp = self.get(&self.server.api().channel_state(PRODUCT, channel));
        if resp.status() == 404 {
            return None;
        }
        assert_eq!(resp.status(), 200, "channel state of {channel}");
        let sig = resp.headers()[SIGNATURE_HEADER]
            .to_str()
            .unwrap()
            .to_owned();
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .unwrap();
        let bytes = resp.bytes().unwrap();
        self.trusted()
            .verify(&bytes, std::str::from_utf8(&sig).unwrap())
            .expect("the state is signed by the publisher's key");
        Some(ChannelState::parse(&bytes, UnknownFields::Reject).unwrap())
    }

    fn trusted(&self) -> TrustedKeys {
        let mut keys = TrustedKeys::new();
        keys.add_file(&self.work.pubkey()).unwrap();
        keys
    }

    /// The exact manifest bytes of a release on a channel.
    fn manifest_bytes(&self, version: &str, channel: &str) -> Vec<u8> {
        let url = self
            .urls()
            .artifact(PRODUCT, version, "manifest.json", channel);
        let resp = self.get(&url);
        assert_eq!(resp.status(), 200, "{url}");
        resp.bytes().unwrap().to_vec()
    }

    fn sha(&self, version: &str, channel: &str) -> Sha256 {
        Sha256::of(&self.manifest_bytes(version, channel))
    }

    /// `qx-publish VERB --server --key --product --channel C` with the token.
    fn verb(&self, verb: &str, channel: &str, extra: &[&str]) -> assert_cmd::Command {
        let mut cmd = qx_publish();
        cmd.env("QX_PUBLISH_TOKEN", TOKEN)
            .arg(verb)
            .arg("--server")
            .arg(self.server.url())
            .arg("--key")
            .arg(self.work.key())
            .args(["--product", PRODUCT, "--channel", channel])
            .args(extra);
        cmd
    }

    fn publish_version(&self, version: &str, extra: &[&str]) {
        self.publish(&[&["--release-version", version][..], extra].concat())
            .assert()
            .success();
    }
}

fn versions(s: &ChannelState) -> Vec<String> {
    s.releases.iter().map(|r| r.version.to_string()).collect()
}

fn json(a: &assert_cmd::assert::Assert) -> serde_json::Value {
    serde_json::from_str(&stdout(a)).unwrap()
}

#[test]
fn publish_twice_signs_states_seq_1_and_2() {
    let e = start();
    assert!(e.state("dev").is_none());
    e.publish(&[])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "channel state of quantix-demo dev: seq 1, current 1.0.0",
        ));
    let s1 = e.state("dev").unwrap();
    assert_eq!((s1.seq, s1.current.clone()), (1, v("1.0.0")));
    assert_eq!(versions(&s1), ["1.0.0"]);
    assert_eq!(s1.releases[0].manifest_sha256, e.sha("1.0.0", "dev"));

    let a = e
        .publish(&["--release-version", "1.0.1", "--json"])
        .assert()
        .success();
    let out = json(&a);
    assert_eq!(out["channel_state"]["seq"], 2);
    assert_eq!(out["channel_state"]["previous_seq"], 1);
    assert_eq!(out["channel_state"]["current"], "1.0.1");
    let s2 = e.state("dev").unwrap();
    assert_eq!((s2.seq, s2.current.clone()), (2, v("1.0.1")));
    assert_eq!(versions(&s2), ["1.0.1", "1.0.0"]);
    assert_eq!(
        s2.release(&v("1.0.1")).unwrap().manifest_sha256,
        e.sha("1.0.1", "dev")
    );
    assert!(s2.revoked.is_empty());
    // The default lifetime: 30 days.
    assert_eq!(
        s2.issued.duration_until(s2.expires).as_secs(),
        30 * 24 * 3600
    );
    // Old agents: the manifest endpoint serves current.
    assert_eq!(e.manifest("dev").version, v("1.0.1"));
}

#[test]
fn publish_no_current_lists_the_release_without_moving_current() {
    let e = start();
    e.publish(&[]).assert().success();
    e.publish_version("1.1.0", &["--no-current"]);
    let s = e.state("dev").unwrap();
    assert_eq!((s.seq, s.current.clone()), (2, v("1.0.0")));
    assert_eq!(versions(&s), ["1.1.0", "1.0.0"]);
}

#[test]
fn publish_again_after_a_lost_answer_signs_nothing_new() {
    let e = start();
    let epoch = (jiff::Timestamp::now().as_second() - 60).to_string();
    e.publish(&[])
        .env("SOURCE_DATE_EPOCH", &epoch)
        .assert()
        .success();
    e.publish(&[])
        .env("SOURCE_DATE_EPOCH", &epoch)
        .assert()
        .success()
        .stdout(predicate::str::contains("seq 1 already says so"));
    assert_eq!(e.state("dev").unwrap().seq, 1);
}

#[test]
fn promote_signs_the_target_channel_state() {
    let e = start();
    e.publish(&[]).assert().success();
    let a = e
        .promote(&e.work.key(), "beta", "1.0.0")
        .arg("--json")
        .assert()
        .success();
    assert_eq!(json(&a)["channel_state"]["channel"], "beta");
    let beta = e.state("beta").unwrap();
    assert_eq!((beta.seq, beta.current.clone()), (1, v("1.0.0")));
    // The target channel's manifest (re-signed for beta), not dev's.
    assert_eq!(beta.releases[0].manifest_sha256, e.sha("1.0.0", "beta"));
    assert_ne!(e.sha("1.0.0", "beta"), e.sha("1.0.0", "dev"));
    assert_eq!(e.state("dev").unwrap().seq, 1, "dev is not touched");
}

#[test]
fn yank_keep_then_revert_revokes_and_moves_current_back() {
    let e = start();
    e.publish(&[]).assert().success();
    e.publish_version("1.0.1", &[]);
    e.publish_version("1.0.2", &[]);
    e.verb("yank", "dev", &["1.0.2"])
        .assert()
        .success()
        .stdout(predicate::str::contains("revoked: keep"));
    let s = e.state("dev").unwrap();
    assert_eq!((s.seq, s.current.clone()), (4, v("1.0.1")));
    assert_eq!(versions(&s), ["1.0.1", "1.0.0"]);
    assert_eq!(s.revocation(&v("1.0.2")), Some(RevokeAction::Keep));

    let a = e
        .verb("yank", "dev", &["--revert", "1.0.1", "--json"])
        .assert()
        .success();
    assert_eq!(json(&a)["channel_state"]["revoked"][1]["action"], "revert");
    let s = e.state("dev").unwrap();
    assert_eq!((s.seq, s.current.clone()), (5, v("1.0.0")));
    assert_eq!(versions(&s), ["1.0.0"]);
    assert_eq!(s.revocation(&v("1.0.1")), Some(RevokeAction::Revert));
    assert_eq!(e.manifest("dev").version, v("1.0.0"));
}

#[test]
fn yank_of_the_only_release_is_refused_before_anything_changes() {
    let e = start();
    e.publish(&[]).assert().success();
    e.verb("yank", "dev", &["1.0.0"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("the channel's only release"));
    assert_eq!(e.state("dev").unwrap().seq, 1);
    // Not yanked on the server either.
    let list: serde_json::Value = e.get(&e.urls().releases(PRODUCT, "dev")).json().unwrap();
    assert_eq!(list["releases"][0]["yanked"], false);
}

#[test]
fn refresh_bumps_seq_with_the_same_content_and_a_new_expiry() {
    let e = start();
    e.publish(&[]).assert().success();
    e.publish_version("1.0.1", &["--no-current"]);
    let before = e.state("dev").unwrap();
    let a = e
        .verb("refresh", "dev", &["--lifetime", "2h", "--json"])
        .assert()
        .success();
    assert_eq!(json(&a)["outcome"], "refreshed");
    let after = e.state("dev").unwrap();
    assert_eq!(after.seq, before.seq + 1);
    assert_eq!(
        (&after.current, &after.releases, &after.revoked),
        (&before.current, &before.releases, &before.revoked)
    );
    assert_eq!(
        after.issued.duration_until(after.expires).as_secs(),
        2 * 3600
    );
}

#[test]
fn refresh_with_a_zero_lifetime_is_a_usage_error() {
    let e = start();
    e.publish(&[]).assert().success();
    e.verb("refresh", "dev", &["--lifetime", "0s"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--lifetime"));
}

#[test]
fn a_state_signed_by_an_untrusted_key_is_refused() {
    let e = start();
    e.publish(&[]).assert().success();
    let other = e.work.path().join("other");
    keygen(&other);
    let other_key = other.join("qx-publish.key");
    let refresh = |extra: &[&str]| {
        let mut cmd = qx_publish();
        cmd.env("QX_PUBLISH_TOKEN", TOKEN)
            .args(["refresh", "--server", e.server.url(), "--key"])
            .arg(&other_key)
            .args(["--product", PRODUCT, "--channel", "dev"])
            .args(extra);
        cmd
    };
    refresh(&[])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not among the trusted keys"))
        .stderr(predicate::str::contains("--trusted-key FILE"));
    assert_eq!(e.state("dev").unwrap().seq, 1);
    // Key rotation: the old public key trusted explicitly.
    let old_pub = e.work.pubkey();
    refresh(&["--trusted-key", old_pub.to_str().unwrap()])
        .assert()
        .success();
    let resp = e.get(&e.server.api().channel_state(PRODUCT, "dev"));
    let sig = base64::engine::general_purpose::STANDARD
        .decode(resp.headers()[SIGNATURE_HEADER].to_str().unwrap())
        .unwrap();
    let bytes = resp.bytes().unwrap();
    let mut keys = TrustedKeys::new();
    keys.add_file(&other.join("qx-publish.pub")).unwrap();
    keys.verify(&bytes, std::str::from_utf8(&sig).unwrap())
        .expect("signed by the new key");
}

fn update<'a>(e: &Env, client: &'a Client, signer: &'a Signer, retries: u32) -> Update<'a> {
    let _ = e;
    Update {
        client,
        signer,
        product: qx_core::ProductName::new(PRODUCT).unwrap(),
        channel: qx_core::ChannelName::new("dev").unwrap(),
        // Not the CLI's default, so our state never equals the other writer's byte for byte.
        lifetime: jiff::SignedDuration::from_hours(1),
        conflict_retries: retries,
    }
}

#[test]
fn a_conflict_is_reported_with_the_stored_seq() {
    let e = start();
    e.publish(&[]).assert().success();
    let client = Client::new(e.server.url(), Some(Token::new(TOKEN).unwrap()), 0).unwrap();
    let signer = Signer::new(qx_core::SigningKey::from_file(&e.work.key()).unwrap(), &[]).unwrap();
    let u = update(&e, &client, &signer, 0);
    let noop = |_: &mut ChannelState| Ok(());
    let planned = u.plan(&noop).unwrap();
    assert_eq!(planned.next.seq, 2);
    // Someone else moves the channel in between.
    e.verb("refresh", "dev", &[]).assert().success();
    let err = u.commit(planned, &noop, true).expect_err("409");
    match &err {
        qx_publish::Error::ChannelConflict { ours, stored, .. } => {
            assert_eq!((*ours, *stored), (2, Some(2)));
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert!(
        err.to_string()
            .contains("the server holds seq 2 (409 Conflict)"),
        "{err}"
    );
    assert_eq!(e.state("dev").unwrap().seq, 2, "nothing was overwritten");
}

#[test]
fn a_conflict_is_retried_once_on_the_new_state() {
    let e = start();
    e.publish(&[]).assert().success();
    let client = Client::new(e.server.url(), Some(Token::new(TOKEN).unwrap()), 0).unwrap();
    let signer = Signer::new(qx_core::SigningKey::from_file(&e.work.key()).unwrap(), &[]).unwrap();
    let u = update(&e, &client, &signer, 1);
    let noop = |_: &mut ChannelState| Ok(());
    let planned = u.plan(&noop).unwrap();
    e.publish_version("1.0.1", &["--no-current"]);
    let c = u.commit(planned, &noop, true).unwrap();
    assert_eq!(c.state.seq, 3);
    // The other writer's change is kept.
    assert_eq!(versions(&e.state("dev").unwrap()), ["1.0.1", "1.0.0"]);
}

#[test]
fn hot_fix_carries_the_other_components_over() {
    let e = start();
    e.publish(&[]).assert().success();
    let base = e.manifest("dev");
    let a = e
        .publish(&[
            "--component",
            "qx-demo",
            "--release-version",
            "1.0.1",
            "--json",
        ])
        .assert()
        .success();
    let out = json(&a);
    assert_eq!(out["carried_from"], "1.0.0");
    let mut carried: Vec<String> = serde_json::from_value(out["carried"].clone()).unwrap();
    carried.sort();
    // Not re-uploaded: only qx-demo's bytes went out.
    let err = stderr(&a);
    assert!(err.contains("uploading qx-demo.tar.zst"), "{err}");
    for c in &carried {
        assert!(
            !err.contains(&format!("uploading {c}")),
            "{c} re-uploaded: {err}"
        );
    }
    // A fresh host sees every component in current's manifest.
    let m = e.manifest("dev");
    assert_eq!(m.version, v("1.0.1"));
    assert_eq!(m.components.len(), base.components.len());
    let mut expected: Vec<String> = Vec::new();
    for old in &base.components {
        let new = m.component(old.name.as_str()).expect("listed");
        if old.name.as_str() == "qx-demo" {
            assert_eq!(new.version, v("1.0.1"));
            continue;
        }
        expected.push(old.artifact.to_string());
        // Same name, artifact, size, SHA-256 and version.
        assert_eq!(new, old);
        let bytes = e
            .get(&e.urls().artifact(PRODUCT, "1.0.1", &new.artifact, "dev"))
            .bytes()
            .unwrap();
        assert_eq!(
            Sha256::of(&bytes),
            old.sha256,
            "{} served by 1.0.1",
            new.name
        );
    }
    expected.sort();
    assert_eq!(carried, expected);
    let s = e.state("dev").unwrap();
    assert_eq!((s.seq, s.current.clone()), (2, v("1.0.1")));
    assert_eq!(
        s.current_release().unwrap().manifest_sha256,
        e.sha("1.0.1", "dev")
    );
}

#[test]
fn hot_fix_on_a_channel_without_a_release_is_refused() {
    let e = start();
    e.publish(&["--component", "qx-demo"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no current release to carry"));
}

pub fn bundle(e: &Env, version: &str, out: &Path) -> assert_cmd::Command {
    let mut cmd = qx_publish();
    cmd.args([
        "bundle",
        version,
        "--server",
        e.server.url(),
        "--product",
        PRODUCT,
    ])
    .args(["--channel", "dev", "--out"])
    .arg(out)
    .arg("--trusted-key")
    .arg(e.work.pubkey());
    cmd
}

#[test]
fn bundle_round_trip() {
    let e = start();
    e.publish(&[]).assert().success();
    e.publish_version("1.0.1", &[]);
    let out = e.work.path().join("release.qxb");
    bundle(&e, "1.0.0", &out)
        .assert()
        .success()
        .stdout(predicate::str::contains("bundled quantix-demo 1.0.0"));
    let meta = read_metadata(&out).unwrap();
    let keys = e.trusted();
    keys.verify(
        &meta.channel,
        std::str::from_utf8(&meta.channel_signature).unwrap(),
    )
    .unwrap();
    keys.verify(
        &meta.manifest,
        std::str::from_utf8(&meta.manifest_signature).unwrap(),
    )
    .unwrap();
    let state = ChannelState::parse(&meta.channel, UnknownFields::Reject).unwrap();
    assert_eq!(state.seq, 2);
    assert_eq!(
        state.release(&v("1.0.0")).unwrap().manifest_sha256,
        Sha256::of(&meta.manifest)
    );
    let m = Manifest::parse(&meta.manifest, UnknownFields::Reject).unwrap();
    assert_eq!(m.version, v("1.0.0"));
    let dir = tempfile::tempdir().unwrap();
    let listed = m.artifacts();
    let paths = extract_artifacts(&out, dir.path(), &listed, &listed).unwrap();
    for (a, p) in listed.iter().zip(&paths) {
        let served = e
            .get(&e.urls().artifact(PRODUCT, "1.0.0", &a.artifact, "dev"))
            .bytes()
            .unwrap();
        assert_eq!(std::fs::read(p).unwrap(), served.to_vec(), "{}", a.artifact);
    }
}

#[test]
fn a_tampered_or_truncated_bundle_is_refused_by_the_readers() {
    let e = start();
    e.publish(&[]).assert().success();
    let out = e.work.path().join("release.qxb");
    bundle(&e, "1.0.0", &out).assert().success();
    let good = std::fs::read(&out).unwrap();
    let listed = Manifest::parse(
        &read_metadata(&out).unwrap().manifest,
        UnknownFields::Reject,
    )
    .unwrap()
    .artifacts();
    let dir = tempfile::tempdir().unwrap();

    // One byte flipped inside the last artifact (before the tar end blocks).
    let mut tampered = good.clone();
    let at = good.len() - 1024 - 600;
    tampered[at] ^= 0xff;
    std::fs::write(&out, &tampered).unwrap();
    read_metadata(&out).expect("the metadata is intact");
    let err = extract_artifacts(&out, dir.path(), &listed, &listed).expect_err("tampered");
    assert!(err.to_string().contains("artifact"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing left"
    );

    // Cut in the middle of the artifacts.
    std::fs::write(&out, &good[..good.len() / 2]).unwrap();
    assert!(extract_artifacts(&out, dir.path(), &listed, &listed).is_err());
    // Cut inside the metadata.
    std::fs::write(&out, &good[..700]).unwrap();
    assert!(read_metadata(&out).is_err());
}

#[test]
fn bundle_of_a_version_not_listed_is_refused() {
    let e = start();
    e.publish(&[]).assert().success();
    e.publish_version("1.0.1", &[]);
    e.verb("yank", "dev", &["1.0.1"]).assert().success();
    let out = e.work.path().join("release.qxb");
    bundle(&e, "1.0.1", &out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "1.0.1 is not listed in the state's releases",
        ));
    assert!(!out.exists());
}

#[test]
fn bundle_without_a_trusted_key_is_a_usage_error() {
    let e = start();
    qx_publish()
        .args([
            "bundle",
            "1.0.0",
            "--server",
            e.server.url(),
            "--product",
            PRODUCT,
        ])
        .args(["--out", "x.qxb"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("needs a trusted key"));
}

/// `qx-publish rollout start --server … --channel dev ARGS` with the token.
fn rollout_start(e: &Env, args: &[&str]) -> assert_cmd::Command {
    let mut cmd = qx_publish();
    cmd.env("QX_PUBLISH_TOKEN", TOKEN)
        .args(["rollout", "start", "--server", e.server.url(), "--key"])
        .arg(e.work.key())
        .args(["--product", PRODUCT, "--channel", "dev"])
        .args(args);
    cmd
}

#[test]
fn rollout_start_signs_the_plan_and_a_yank_of_its_version_ends_it() {
    let e = start();
    e.publish(&[]).assert().success();
    e.publish_version("1.1.0", &["--no-current"]);
    let a = rollout_start(&e, &["--waves", "1%:1h,10%:4h,100%", "1.1.0", "--json"])
        .assert()
        .success();
    assert_eq!(json(&a)["outcome"], "rollout_started");
    let s = e.state("dev").unwrap();
    assert_eq!(
        s.current,
        v("1.0.0"),
        "current stays until the rollout completes"
    );
    let plan = s.rollout.clone().expect("the signed plan");
    assert_eq!(plan.version, v("1.1.0"));
    assert_eq!(plan.manifest_sha256, e.sha("1.1.0", "dev"));
    assert!(plan.salt.len() >= 32 && !plan.id.is_empty(), "{plan:?}");
    let percents: Vec<f64> = plan.waves.iter().map(|w| w.percent).collect();
    assert_eq!(percents, [1.0, 10.0, 100.0]);
    let gap = |i: usize| {
        plan.waves[i]
            .not_before
            .duration_since(plan.waves[i - 1].not_before)
    };
    assert_eq!((gap(1).as_secs(), gap(2).as_secs()), (3600, 4 * 3600));

    rollout_start(&e, &["--waves", "100%", "1.1.0"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is in progress"));
    assert_eq!(e.state("dev").unwrap().seq, s.seq, "nothing signed");

    e.verb("yank", "dev", &["1.1.0"]).assert().success();
    let s = e.state("dev").unwrap();
    assert_eq!(s.rollout, None, "a yank of its version ends the rollout");
}

#[test]
fn rollout_start_refuses_bad_waves_and_a_release_it_cannot_roll_out() {
    let e = start();
    e.publish(&[]).assert().success();
    e.publish_version("1.1.0", &["--no-current"]);
    let seq = e.state("dev").unwrap().seq;
    for (waves, why) in [
        ("10%:1h,50%", "must reach 100%"),
        ("10%,100%", "needs its soak time"),
        ("50%:1h,10%:1h,100%", "must grow"),
        ("abc", "a wave is PERCENT%:SOAK"),
    ] {
        rollout_start(&e, &["--waves", waves, "1.1.0"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(why));
    }
    rollout_start(&e, &["--waves", "100%", "9.9.9"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not listed"));
    rollout_start(&e, &["--waves", "100%", "1.0.0"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not above current"));
    let s = e.state("dev").unwrap();
    assert_eq!((s.seq, s.rollout), (seq, None), "nothing signed");
}

#[test]
fn publish_with_waves_uploads_and_starts_the_rollout_in_one_signed_state() {
    let e = start();
    e.publish(&[]).assert().success();
    let before = e.state("dev").unwrap().seq;
    let a = e
        .publish(&[
            "--release-version",
            "1.1.0",
            "--waves",
            "5%:2h,100%",
            "--json",
        ])
        .assert()
        .success();
    assert_eq!(json(&a)["channel_state"]["rollout"]["version"], "1.1.0");
    let s = e.state("dev").unwrap();
    assert_eq!(s.seq, before + 1, "one signed state");
    assert_eq!(s.current, v("1.0.0"), "listed, not current");
    assert_eq!(versions(&s), ["1.1.0", "1.0.0"]);
    let plan = s.rollout.expect("the plan");
    assert_eq!((plan.version, plan.waves.len()), (v("1.1.0"), 2));
    assert_eq!(plan.manifest_sha256, e.sha("1.1.0", "dev"));

    // A second rollout is refused before anything is built or uploaded.
    e.publish(&["--release-version", "1.2.0", "--waves", "100%"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is in progress"));
    let list: serde_json::Value = e.get(&e.urls().releases(PRODUCT, "dev")).json().unwrap();
    let listed = list["releases"].as_array().unwrap();
    assert!(
        listed.iter().all(|r| r["version"] != "1.2.0"),
        "nothing uploaded: {list}"
    );
    e.publish(&["--release-version", "1.2.0", "--waves", "1%"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("must reach 100%"));
}

#[test]
fn the_rollouts_health_flags_are_signed_into_its_plan() {
    let e = start();
    e.publish(&[]).assert().success();
    e.publish_version("1.1.0", &["--no-current"]);
    rollout_start(
        &e,
        &[
            "--waves",
            "10%:1h,100%",
            "--gate",
            "90%",
            "--max-failures",
            "3",
            "--max-failure-rate",
            "2.5",
            "--min-sample",
            "20",
            "--deadline",
            "download=10m,confirm=1h",
            "1.1.0",
        ],
    )
    .assert()
    .success();
    let policy = e.state("dev").unwrap().rollout.expect("the plan").policy;
    assert_eq!(
        (policy.gate, policy.max_failures, policy.max_failure_rate),
        (90.0, 3, 2.5)
    );
    assert_eq!(policy.min_sample, 20);
    let d = policy.deadlines;
    assert_eq!((d.download_s, d.install_s, d.confirm_s), (600, 3600, 3600));
}

#[test]
fn bad_health_flags_are_refused_before_anything_is_signed_or_uploaded() {
    let e = start();
    e.publish(&[]).assert().success();
    e.publish_version("1.1.0", &["--no-current"]);
    let seq = e.state("dev").unwrap().seq;
    for (flags, why) in [
        (
            ["--gate", "150%"],
            "--gate \"150%\": a percent from 0 to 100",
        ),
        (["--max-failure-rate", "x"], "--max-failure-rate \"x\""),
        (["--deadline", "boot=1h"], "no stage \"boot\""),
        (["--deadline", "confirm=0s"], "at least 1s"),
    ] {
        let mut args = vec!["--waves", "100%"];
        args.extend(flags);
        args.push("1.1.0");
        rollout_start(&e, &args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(why));
    }
    assert_eq!(e.state("dev").unwrap().seq, seq, "nothing signed");
    e.publish(&["--release-version", "1.2.0", "--gate", "90%"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("add --waves"));
    let list: serde_json::Value = e.get(&e.urls().releases(PRODUCT, "dev")).json().unwrap();
    let listed = list["releases"].as_array().unwrap();
    assert!(listed.iter().all(|r| r["version"] != "1.2.0"), "{list}");
}

#[test]
fn rollout_abort_with_revert_signs_the_versions_revocation_from_the_signed_plan() {
    let e = start();
    e.publish(&[]).assert().success();
    e.publish_version("1.1.0", &["--no-current"]);
    rollout_start(&e, &["--waves", "100%", "1.1.0"])
        .assert()
        .success();
    let plan = e.state("dev").unwrap().rollout.expect("the plan");
    let abort = |args: &[&str]| {
        let mut cmd = qx_publish();
        cmd.env("QX_PUBLISH_TOKEN", TOKEN)
            .args(["rollout", "abort", "--server", e.server.url()])
            .args(["--product", PRODUCT, "--channel", "dev"])
            .args(args);
        cmd
    };
    abort(&["--revert"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--key"));
    let key = e.work.key().to_str().unwrap().to_owned();
    abort(&["--revert", "--key", &key, "other-id"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "the channel's rollout is {}",
            plan.id
        )));
    let a = abort(&["--revert", "--key", &key, "--json", &plan.id])
        .assert()
        .success();
    assert_eq!(json(&a)["outcome"], "aborted_with_revert");
    let s = e.state("dev").unwrap();
    assert_eq!(s.rollout, None);
    assert_eq!(s.revocation(&v("1.1.0")), Some(RevokeAction::Revert));
    assert_eq!(s.current, v("1.0.0"));
    abort(&["--revert", "--key", &key])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("carries no rollout"));
}

/// `qx-publish rollout VERB --server … --channel dev ARGS` with `token`.
fn rollout_verb(e: &Env, verb: &str, token: &str, args: &[&str]) -> assert_cmd::Command {
    let mut cmd = qx_publish();
    cmd.env("QX_PUBLISH_TOKEN", token)
        .args(["rollout", verb, "--server", e.server.url()])
        .args(["--product", PRODUCT, "--channel", "dev"])
        .args(args);
    cmd
}

/// An operator token with only the `read` scope, made through the server's API.
fn read_token(e: &Env) -> String {
    let answer: serde_json::Value = reqwest::blocking::Client::new()
        .post(e.urls().tokens())
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"name": "viewer", "scopes": ["read"]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    answer["token"].as_str().unwrap().to_owned()
}

#[test]
fn rollout_status_pause_resume_and_abort_act_through_the_servers_api() {
    let e = start();
    e.publish(&[]).assert().success();
    rollout_verb(&e, "pause", TOKEN, &[])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("has no rollout in progress"));
    e.publish(&["--release-version", "1.1.0", "--waves", "10%:1h,100%"])
        .assert()
        .success();
    let id = e.state("dev").unwrap().rollout.expect("the plan").id;

    let a = rollout_verb(&e, "status", TOKEN, &["--json", &id])
        .assert()
        .success();
    let s = json(&a);
    assert_eq!(
        (s["state"].as_str(), s["version"].as_str()),
        (Some("running"), Some("1.1.0"))
    );
    assert_eq!(s["waves"].as_array().map(Vec::len), Some(2));
    let a = rollout_verb(&e, "status", TOKEN, &[]).assert().success();
    let text = stdout(&a);
    assert!(
        text.contains(&format!(
            "rollout {id} of {PRODUCT} 1.1.0 on channel dev: running"
        )),
        "{text}"
    );

    let a = rollout_verb(&e, "pause", TOKEN, &["--json"])
        .assert()
        .success();
    assert_eq!(json(&a)["state"], "paused");
    rollout_verb(&e, "pause", TOKEN, &[])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "cannot do that now (409 Conflict)",
        ));
    let viewer = read_token(&e);
    rollout_verb(&e, "resume", &viewer, &[])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "need a token with the rollout scope",
        ));
    rollout_verb(&e, "status", &viewer, &[&id])
        .assert()
        .success();
    let a = rollout_verb(&e, "resume", TOKEN, &[]).assert().success();
    assert!(stdout(&a).contains(": running"), "{}", stdout(&a));
    rollout_verb(&e, "abort", TOKEN, &["no-such-rollout"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no rollout no-such-rollout"));
    let a = rollout_verb(&e, "abort", TOKEN, &["--json"])
        .assert()
        .success();
    assert_eq!(json(&a)["state"], "aborted");
    let a = rollout_verb(&e, "status", TOKEN, &["--json"])
        .assert()
        .success();
    let list = json(&a);
    assert_eq!(list["rollouts"][0]["id"], id.as_str(), "{list}");
    assert_eq!(list["rollouts"][0]["state"], "aborted");
}
