//! The signed channel state (docs/spec.md §8) on a real server: `GET`/`PUT
//! /api/v1/{product}/channels/{channel}` with its compare-and-swap on `seq`, the manifest
//! endpoint serving the state's `current`, and publishes that carry artifacts over.

use std::sync::{Arc, Barrier};

use base64::Engine;
use qx_core::api::{ServerUrl, SIGNATURE_HEADER};
use qx_core::channel::{CHANNEL_FILE, CHANNEL_SIGNATURE_FILE};
use qx_core::{Sha256, TrustedKeys};
use qx_testkit::channel::{entry, sign, state_of, SignedChannel};
use qx_testkit::release::{BuiltRelease, ComponentSpec, FixtureKey, ReleaseSpec};
use qx_testkit::server::TestServer;
use serde_json::Value;

use crate::support::{start, TOKEN};

const PRODUCT: &str = "quantix-os";
const CHANNEL: &str = "stable";

struct Fixture {
    server: TestServer,
    key: FixtureKey,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            server: start(dir.path()),
            key: FixtureKey::generate().unwrap(),
            _dir: dir,
        }
    }

    /// A signed release of two components whose bytes depend on the version.
    fn release(&self, version: &str) -> BuiltRelease {
        let (node, console) = (format!("node {version}"), format!("console {version}"));
        self.release_on(CHANNEL, version, &node, &console)
    }

    /// A signed release of two components with the given contents.
    fn release_on(&self, channel: &str, version: &str, node: &str, console: &str) -> BuiltRelease {
        ReleaseSpec::new(PRODUCT, channel, version)
            .component(ComponentSpec::file(
                "qx-node",
                "/data/bin/qx-node",
                node.as_bytes().to_vec(),
            ))
            .component(ComponentSpec::file(
                "qx-console",
                "/data/bin/qx-console",
                console.as_bytes().to_vec(),
            ))
            .sign(&self.key)
            .unwrap()
    }

    fn published(&self, version: &str) -> BuiltRelease {
        let r = self.release(version);
        r.publish(self.server.url(), TOKEN).unwrap();
        r
    }

    fn signed(&self, seq: u64, releases: &[&BuiltRelease]) -> SignedChannel {
        sign(&state_of(seq, releases).unwrap(), &self.key).unwrap()
    }

    fn manifest(&self) -> reqwest::blocking::Response {
        let url = ServerUrl::new(self.server.url()).manifest(PRODUCT, CHANNEL);
        reqwest::blocking::get(url).unwrap()
    }

    fn yank(&self, version: &str) -> Value {
        let url = ServerUrl::new(self.server.url()).release(PRODUCT, version, CHANNEL);
        let res = reqwest::blocking::Client::new()
            .delete(url)
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().unwrap()
    }

    fn url(&self) -> String {
        ServerUrl::new(self.server.url()).channel_state(PRODUCT, CHANNEL)
    }

    fn get(&self, headers: &[(&str, &str)]) -> reqwest::blocking::Response {
        let mut req = reqwest::blocking::Client::new().get(self.url());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().unwrap()
    }

    /// The stored state's bytes, or `None` on 404.
    fn stored(&self) -> Option<Vec<u8>> {
        let res = self.get(&[]);
        match res.status().as_u16() {
            404 => None,
            200 => Some(res.bytes().unwrap().to_vec()),
            s => panic!("GET channel state answered {s}"),
        }
    }
}

/// A `PUT` of the channel state with every part chosen by the caller.
struct Put<'a> {
    product: &'a str,
    channel: &'a str,
    body: Vec<u8>,
    signature: Option<String>,
    token: Option<&'a str>,
}

impl<'a> Put<'a> {
    fn of(signed: &SignedChannel) -> Self {
        Self {
            product: PRODUCT,
            channel: CHANNEL,
            body: signed.bytes.clone(),
            signature: Some(b64(&signed.signature)),
            token: Some(TOKEN),
        }
    }

    fn send(self, server: &TestServer) -> (u16, Value) {
        let url = ServerUrl::new(server.url()).channel_state(self.product, self.channel);
        let mut req = reqwest::blocking::Client::new().put(url).body(self.body);
        if let Some(sig) = self.signature {
            req = req.header(SIGNATURE_HEADER, sig);
        }
        if let Some(token) = self.token {
            req = req.bearer_auth(token);
        }
        let res = req.send().unwrap();
        let status = res.status().as_u16();
        let text = res.text().unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

#[test]
fn channel_state_get_is_404_before_any_state() {
    let f = Fixture::new();
    f.published("1.0.0");
    let res = f.get(&[]);
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/json");
    let v: Value = res.json().unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("no channel state"),
        "{v}"
    );
}

#[test]
fn channel_state_put_201_then_get_serves_exact_bytes_signature_and_etag() {
    let f = Fixture::new();
    let r1 = f.published("1.0.0");
    let s1 = f.signed(1, &[&r1]);
    let (status, v) = Put::of(&s1).send(&f.server);
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["seq"], 1);

    let res = f.get(&[]);
    assert_eq!(res.status(), 200);
    let h = res.headers().clone();
    assert_eq!(h["content-type"], "application/json");
    let etag = format!("\"{}\"", Sha256::of(&s1.bytes).to_hex());
    assert_eq!(h["etag"].to_str().unwrap(), etag);
    let sig = base64::engine::general_purpose::STANDARD
        .decode(h[SIGNATURE_HEADER].to_str().unwrap())
        .unwrap();
    assert_eq!(sig, s1.signature.as_bytes());
    let body = res.bytes().unwrap();
    assert_eq!(body.as_ref(), s1.bytes.as_slice());
    let mut keys = TrustedKeys::new();
    keys.add(&f.key.public_key_file).unwrap();
    keys.verify(&body, std::str::from_utf8(&sig).unwrap())
        .expect("the served signature verifies over the served bytes");

    // The local layout: beside the channel's releases (an object store keeps both in one
    // object, whose round trip the store's unit tests check).
    if let Some(root) = f.server.stored().local_dir() {
        let dir = root.join(PRODUCT).join(CHANNEL);
        assert_eq!(std::fs::read(dir.join(CHANNEL_FILE)).unwrap(), s1.bytes);
        assert_eq!(
            std::fs::read(dir.join(CHANNEL_SIGNATURE_FILE)).unwrap(),
            s1.signature.as_bytes()
        );
    } else {
        assert!(f
            .server
            .stored()
            .exists(&format!("{PRODUCT}/{CHANNEL}/channel.state")));
    }

    let res = f.get(&[("If-None-Match", etag.as_str())]);
    assert_eq!(res.status(), 304);
    assert_eq!(res.headers()["etag"].to_str().unwrap(), etag);
    assert!(res.bytes().unwrap().is_empty());

    // The route is counted under its template.
    let metrics = reqwest::blocking::get(ServerUrl::new(f.server.url()).metrics())
        .unwrap()
        .text()
        .unwrap();
    for method in ["PUT", "GET"] {
        let label = format!(
            "method=\"{method}\",route=\"{}\"",
            qx_core::api::server::CHANNEL
        );
        assert!(metrics.contains(&label), "{label} missing from {metrics}");
    }
}

#[test]
fn channel_state_identical_re_put_is_200() {
    let f = Fixture::new();
    let r1 = f.published("1.0.0");
    let s1 = f.signed(1, &[&r1]);
    assert_eq!(Put::of(&s1).send(&f.server).0, 201);
    let (status, v) = Put::of(&s1).send(&f.server);
    assert_eq!(status, 200, "{v}");
    assert_eq!(f.stored().unwrap(), s1.bytes);
}

#[test]
fn channel_state_newer_seq_replaces_the_stored_one() {
    let f = Fixture::new();
    let r1 = f.published("1.0.0");
    let r2 = f.published("1.1.0");
    assert_eq!(Put::of(&f.signed(1, &[&r1])).send(&f.server).0, 201);
    let s5 = f.signed(5, &[&r1, &r2]);
    assert_eq!(Put::of(&s5).send(&f.server).0, 201);
    assert_eq!(f.stored().unwrap(), s5.bytes);
}

#[test]
fn channel_state_lower_seq_is_409_naming_the_stored_seq() {
    let f = Fixture::new();
    let r1 = f.published("1.0.0");
    let s2 = f.signed(2, &[&r1]);
    assert_eq!(Put::of(&s2).send(&f.server).0, 201);
    let (status, v) = Put::of(&f.signed(1, &[&r1])).send(&f.server);
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["details"][0]["stored_seq"], 2, "{v}");
    assert!(v["error"].as_str().unwrap().contains("stored seq 2"), "{v}");
    assert_eq!(f.stored().unwrap(), s2.bytes);
}

#[test]
fn channel_state_equal_seq_with_other_bytes_is_409() {
    let f = Fixture::new();
    let r1 = f.published("1.0.0");
    let r2 = f.published("1.1.0");
    let s1 = f.signed(1, &[&r1]);
    assert_eq!(Put::of(&s1).send(&f.server).0, 201);
    let (status, v) = Put::of(&f.signed(1, &[&r1, &r2])).send(&f.server);
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["details"][0]["stored_seq"], 1, "{v}");
    assert_eq!(f.stored().unwrap(), s1.bytes);
}

#[test]
fn channel_state_concurrent_puts_of_one_seq_store_exactly_one() {
    const PUTS: usize = 8;
    let f = Fixture::new();
    let r1 = f.published("1.0.0");
    // Eight different documents, all seq 1 (they differ in their expiry).
    let states: Vec<SignedChannel> = (0..PUTS)
        .map(|i| {
            let mut s = state_of(1, &[&r1]).unwrap();
            s.expires = s
                .expires
                .checked_add(jiff::SignedDuration::from_secs(i as i64))
                .unwrap();
            sign(&s, &f.key).unwrap()
        })
        .collect();
    let barrier = Arc::new(Barrier::new(PUTS));
    let url = f.server.url().to_owned();
    let threads: Vec<_> = states
        .iter()
        .cloned()
        .map(|s| {
            let (barrier, url) = (barrier.clone(), url.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (s.put(&url, TOKEN).unwrap().0, s.bytes)
            })
        })
        .collect();
    let results: Vec<(u16, Vec<u8>)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let winners: Vec<&Vec<u8>> = results
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(winners.len(), 1, "statuses: {:?}", statuses(&results));
    assert!(
        results.iter().all(|(s, _)| *s == 201 || *s == 409),
        "statuses: {:?}",
        statuses(&results)
    );
    assert_eq!(&f.stored().unwrap(), winners[0]);
}

fn statuses(results: &[(u16, Vec<u8>)]) -> Vec<u16> {
    results.iter().map(|(s, _)| *s).collect()
}

/// One bad `PUT`: its name, the request and the status it must get.
struct BadPut<'a> {
    name: &'static str,
    put: Put<'a>,
    status: u16,
    /// A word the error sentence must contain.
    says: &'static str,
}

#[test]
fn channel_state_bad_puts_are_refused_and_store_nothing() {
    let f = Fixture::new();
    let r1 = f.published("1.0.0");
    let unpublished = f.release("2.0.0");
    let baseline = f.signed(1, &[&r1]);
    assert_eq!(Put::of(&baseline).send(&f.server).0, 201);

    let good = f.signed(2, &[&r1]);
    let signed_bytes = |body: Vec<u8>| {
        let signature = Some(b64(&f.key.sign(&body).unwrap()));
        Put {
            body,
            signature,
            ..Put::of(&good)
        }
    };
    let mut unknown: Value = serde_json::from_slice(&good.bytes).unwrap();
    unknown["surprise"] = Value::from(1);
    let mut wrong_sha = state_of(2, &[&r1]).unwrap();
    wrong_sha.releases[0].manifest_sha256 = Sha256::of(b"another manifest");
    let mut broken_rule = state_of(2, &[&r1]).unwrap();
    broken_rule.current = unpublished.manifest.version.clone();
    let not_held = state_of(2, &[&r1, &unpublished]).unwrap();
    let other_product = {
        let mut s = state_of(2, &[&r1]).unwrap();
        s.product = qx_core::ProductName::new("other-product").unwrap();
        s
    };

    let rows = vec![
        BadPut {
            name: "not JSON",
            put: signed_bytes(b"this is not json".to_vec()),
            status: 400,
            says: "JSON",
        },
        BadPut {
            name: "unknown field",
            put: signed_bytes(serde_json::to_vec_pretty(&unknown).unwrap()),
            status: 422,
            says: "surprise",
        },
        BadPut {
            name: "a rule broken (current not listed)",
            put: signed_bytes(broken_rule.to_bytes()),
            status: 422,
            says: "current",
        },
        BadPut {
            name: "product other than the path's",
            put: signed_bytes(other_product.to_bytes()),
            status: 422,
            says: "product",
        },
        BadPut {
            name: "channel other than the path's",
            put: Put {
                channel: "dev",
                ..Put::of(&good)
            },
            status: 422,
            says: "channel",
        },
        BadPut {
            name: "missing signature header",
            put: Put {
                signature: None,
                ..Put::of(&good)
            },
            status: 400,
            says: SIGNATURE_HEADER,
        },
        BadPut {
            name: "signature header not base64",
            put: Put {
                signature: Some("%%% not base64 %%%".into()),
                ..Put::of(&good)
            },
            status: 400,
            says: "base64",
        },
        BadPut {
            name: "signature header not a minisign signature",
            put: Put {
                signature: Some(b64("just some text")),
                ..Put::of(&good)
            },
            status: 422,
            says: "minisign",
        },
        BadPut {
            name: "no Authorization header",
            put: Put {
                token: None,
                ..Put::of(&good)
            },
            status: 401,
            says: "Authorization",
        },
        BadPut {
            name: "wrong token",
            put: Put {
                token: Some("not-the-token"),
                ..Put::of(&good)
            },
            status: 401,
            says: "token",
        },
        BadPut {
            name: "a listed release not held",
            put: signed_bytes(not_held.to_bytes()),
            status: 422,
            says: "2.0.0",
        },
        BadPut {
            name: "manifest sha256 other than the held manifest's",
            put: signed_bytes(wrong_sha.to_bytes()),
            status: 422,
            says: "1.0.0",
        },
        BadPut {
            name: "unconfigured channel",
            put: Put {
                channel: "nightly",
                ..Put::of(&good)
            },
            status: 404,
            says: "nightly",
        },
    ];
    for row in rows {
        let (status, v) = row.put.send(&f.server);
        assert_eq!(status, row.status, "{}: {v}", row.name);
        let error = v["error"].as_str().unwrap_or_default();
        assert!(error.contains(row.says), "{}: {error}", row.name);
        assert!(v["details"].is_array(), "{}: {v}", row.name);
        assert_eq!(
            f.stored().unwrap(),
            baseline.bytes,
            "{}: the stored state changed",
            row.name
        );
    }
    let stored = f.server.stored();
    assert!(
        !stored.exists(&format!("{PRODUCT}/dev/{CHANNEL_FILE}"))
            && !stored.exists(&format!("{PRODUCT}/dev/channel.state")),
        "a state was stored on dev"
    );
}

#[test]
fn testkit_entry_hashes_the_manifest_as_the_server_holds_it() {
    // The testkit's entry() hashes the manifest bytes exactly as the server does.
    let f = Fixture::new();
    let r1 = f.published("1.0.0");
    let e = entry(&r1);
    let held = reqwest::blocking::get(ServerUrl::new(f.server.url()).artifact(
        PRODUCT,
        "1.0.0",
        "manifest.json",
        CHANNEL,
    ))
    .unwrap()
    .bytes()
    .unwrap();
    assert_eq!(e.manifest_sha256, Sha256::of(&held));
}

/// The manifest endpoint's answer: (version header, body).
fn served(f: &Fixture) -> (String, Vec<u8>) {
    let res = f.manifest();
    assert_eq!(res.status(), 200);
    let version = res.headers()["x-qx-version"].to_str().unwrap().to_owned();
    (version, res.bytes().unwrap().to_vec())
}

#[test]
fn manifest_endpoint_serves_the_states_current_not_the_newest() {
    let f = Fixture::new();
    let r1 = f.published("1.0.0");
    let r2 = f.published("1.1.0");
    assert_eq!(served(&f).0, "1.1.0", "without a state: the newest");
    // current = the last listed: 1.0.0, though 1.1.0 is listed and newer.
    assert_eq!(Put::of(&f.signed(1, &[&r2, &r1])).send(&f.server).0, 201);
    let (version, body) = served(&f);
    assert_eq!(version, "1.0.0");
    assert_eq!(body, r1.manifest_bytes);
    let res = f.manifest();
    let etag = format!("\"{}\"", Sha256::of(&r1.manifest_bytes).to_hex());
    assert_eq!(res.headers()["etag"].to_str().unwrap(), etag);
    let channels: Value = reqwest::blocking::get(ServerUrl::new(f.server.url()).channels())
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        channels["products"][PRODUCT][CHANNEL], "1.0.0",
        "{channels}"
    );
    // A newer state is served at once.
    assert_eq!(Put::of(&f.signed(2, &[&r1, &r2])).send(&f.server).0, 201);
    assert_eq!(served(&f), ("1.1.0".to_owned(), r2.manifest_bytes.clone()));
}

#[test]
fn yank_on_a_channel_with_a_state_marks_the_release_and_the_state_decides() {
    let f = Fixture::new();
    let r1 = f.published("1.0.0");
    let r2 = f.published("1.1.0");
    assert_eq!(Put::of(&f.signed(1, &[&r1, &r2])).send(&f.server).0, 201);
    let v = f.yank("1.1.0");
    assert_eq!(v["yanked"], true);
    assert_eq!(v["listed_by_channel_state"], true, "{v}");
    // Marked yanked in the store and in the release list ...
    assert!(f
        .server
        .stored()
        .exists(&format!("{PRODUCT}/{CHANNEL}/1.1.0/.yanked")));
    let list: Value =
        reqwest::blocking::get(ServerUrl::new(f.server.url()).releases(PRODUCT, CHANNEL))
            .unwrap()
            .json()
            .unwrap();
    assert_eq!(list["releases"][0]["version"], "1.1.0");
    assert_eq!(list["releases"][0]["yanked"], true);
    // ... but still served while the signed state names it current.
    assert_eq!(served(&f).0, "1.1.0");
    // The publisher's next state withdraws it: the fallback is served.
    let mut next = state_of(2, &[&r1]).unwrap();
    qx_testkit::channel::revoke(
        &mut next,
        &r2.manifest.version,
        qx_core::RevokeAction::Revert,
    );
    assert_eq!(
        Put::of(&sign(&next, &f.key).unwrap()).send(&f.server).0,
        201
    );
    assert_eq!(served(&f), ("1.0.0".to_owned(), r1.manifest_bytes.clone()));
    assert_eq!(f.yank("1.1.0")["listed_by_channel_state"], false);
}

const CONSOLE: &str = "qx-console.tar.zst";

/// The release without the part of `artifact` (the manifest still lists it).
fn omitting(mut release: BuiltRelease, artifact: &str) -> BuiltRelease {
    release.artifacts.retain(|(n, _)| n != artifact);
    release
}

fn download(f: &Fixture, channel: &str, version: &str, artifact: &str) -> (u16, Vec<u8>) {
    let url = ServerUrl::new(f.server.url()).artifact(PRODUCT, version, artifact, channel);
    let res = reqwest::blocking::get(url).unwrap();
    (res.status().as_u16(), res.bytes().unwrap().to_vec())
}

fn inode(path: &std::path::Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

/// Publishing a release that omits an artifact an earlier release holds (from `held_on`).
fn carry_over_from(held_on: &str) {
    let f = Fixture::new();
    let r1 = f.release_on(held_on, "1.0.0", "node 1", "console 1");
    r1.publish(f.server.url(), TOKEN).unwrap();
    let r2 = f.release_on(CHANNEL, "1.1.0", "node 2", "console 1");
    assert_eq!(r2.artifact(CONSOLE), r1.artifact(CONSOLE), "same bytes");
    let (status, body) = omitting(r2.clone(), CONSOLE)
        .publish_raw(f.server.url(), TOKEN)
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["carried_over"], serde_json::json!([CONSOLE]), "{v}");
    let (status, bytes) = download(&f, CHANNEL, "1.1.0", CONSOLE);
    assert_eq!(status, 200);
    assert_eq!(
        Some(bytes.as_slice()),
        r1.artifact(CONSOLE),
        "byte-identical"
    );
    if let Some(root) = f.server.stored().local_dir() {
        let root = root.join(PRODUCT);
        assert_eq!(
            inode(&root.join(held_on).join("1.0.0").join(CONSOLE)),
            inode(&root.join(CHANNEL).join("1.1.0").join(CONSOLE)),
            "hard-linked, not copied"
        );
    }
    assert_eq!(
        download(&f, CHANNEL, "1.1.0", "qx-node.tar.zst").1,
        r2.artifact("qx-node.tar.zst").unwrap()
    );
}

#[test]
fn publish_links_an_omitted_artifact_held_by_an_earlier_release_of_the_channel() {
    carry_over_from(CHANNEL);
}

#[test]
fn publish_links_an_omitted_artifact_held_by_a_release_on_another_channel() {
    carry_over_from("dev");
}

#[test]
fn publish_omitting_an_artifact_held_nowhere_is_422_and_nothing_is_visible() {
    let f = Fixture::new();
    let r1 = f.published("1.0.0");
    // Same name as a held artifact, other bytes (so other size and SHA-256).
    let r2 = f.release_on(CHANNEL, "1.1.0", "node 2", "a console never uploaded");
    let (status, body) = omitting(r2, CONSOLE)
        .publish_raw(f.server.url(), TOKEN)
        .unwrap();
    assert_eq!(status, 422, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains(CONSOLE), "{v}");
    assert_eq!(v["details"][0]["artifact"], CONSOLE, "{v}");
    let stored = f.server.stored();
    assert!(!crate::support::has_files(
        stored,
        &format!("{PRODUCT}/{CHANNEL}/1.1.0")
    ));
    assert!(crate::support::staging_entries(stored).is_empty());
    assert_eq!(download(&f, CHANNEL, "1.1.0", "qx-node.tar.zst").0, 404);
    assert_eq!(served(&f), ("1.0.0".to_owned(), r1.manifest_bytes.clone()));
}
