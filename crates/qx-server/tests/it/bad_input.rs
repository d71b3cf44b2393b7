//! Every bad input its own test, asserting the exact status and a JSON error; failed publishes
//! must leave nothing visible and nothing in staging.

use crate::support::*;
use qx_core::Sha256;
use qx_testkit::server::TestServer;
use serde_json::{json, Value};

struct Env {
    dir: tempfile::TempDir,
    server: TestServer,
    signer: Signer,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    Env {
        dir,
        server,
        signer: Signer::new(),
    }
}

impl Env {
    fn release(&self, version: &str) -> Release {
        Release::new(&self.signer, "quantix-os", "stable", version)
    }

    /// A release whose manifest JSON was edited by `f` (and re-signed).
    fn edited(&self, f: impl FnOnce(&mut Value)) -> Release {
        let base = self.release("1.0.0");
        let mut v: Value = serde_json::from_slice(&base.manifest).unwrap();
        f(&mut v);
        Release::from_value(&self.signer, &v, base.artifacts)
    }

    /// Nothing published under the product and staging is empty.
    fn assert_nothing_visible(&self) {
        let product = self.dir.path().join("quantix-os");
        let versions: Vec<_> = ["dev", "beta", "stable"]
            .iter()
            .flat_map(|c| std::fs::read_dir(product.join(c)).into_iter().flatten())
            .collect();
        assert!(versions.is_empty(), "a release became visible");
        assert!(
            wait_until(std::time::Duration::from_secs(10), || staging_entries(
                self.server.stored()
            )
            .is_empty()),
            "staging not cleaned: {:?}",
            staging_entries(self.server.stored())
        );
    }

    async fn publish_expect(&self, rel: &Release, status: u16) -> Value {
        let v = expect_error(publish(&self.server, rel).await, status).await;
        self.assert_nothing_visible();
        v
    }

    async fn form_expect(&self, form: reqwest::multipart::Form, status: u16) -> Value {
        let v = expect_error(publish_form(&self.server, "quantix-os", form).await, status).await;
        self.assert_nothing_visible();
        v
    }
}

fn details_text(v: &Value) -> String {
    v.to_string()
}

// ---- authentication ----

#[tokio::test]
async fn publish_without_token_is_401() {
    let e = env();
    let rel = e.release("1.0.0");
    let res = client()
        .post(format!("{}/api/v1/quantix-os/publish", e.server.url()))
        .multipart(rel.form())
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let v = expect_error(res, 401).await;
    assert!(v["error"].as_str().unwrap().contains("Authorization"));
    e.assert_nothing_visible();
}

#[tokio::test]
async fn publish_with_wrong_token_is_401() {
    let e = env();
    let rel = e.release("1.0.0");
    let res = client()
        .post(format!("{}/api/v1/quantix-os/publish", e.server.url()))
        .bearer_auth("test-token-0123456788")
        .multipart(rel.form())
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let v = expect_error(res, 401).await;
    assert_eq!(v["error"], "the publish token is wrong");
    e.assert_nothing_visible();
}

#[tokio::test]
async fn publish_with_basic_auth_is_401() {
    let e = env();
    let rel = e.release("1.0.0");
    let res = client()
        .post(format!("{}/api/v1/quantix-os/publish", e.server.url()))
        .basic_auth("admin", Some(TOKEN))
        .multipart(rel.form())
        .send()
        .await
        .unwrap();
    expect_error(res, 401).await;
}

#[tokio::test]
async fn promote_without_token_is_401() {
    let e = env();
    let rel = e.release("1.0.0");
    let res = client()
        .post(format!(
            "{}/api/v1/quantix-os/releases/1.0.0/promote?from=dev",
            e.server.url()
        ))
        .multipart(rel.form())
        .send()
        .await
        .unwrap();
    expect_error(res, 401).await;
}

#[tokio::test]
async fn yank_with_wrong_token_is_401() {
    let e = env();
    published(&e.server, &e.release("1.0.0")).await;
    let res = client()
        .delete(format!(
            "{}/api/v1/quantix-os/releases/1.0.0",
            e.server.url()
        ))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    expect_error(res, 401).await;
    assert!(!e
        .dir
        .path()
        .join("quantix-os/stable/1.0.0/.yanked")
        .exists());
}

// ---- the manifest ----

#[tokio::test]
async fn publish_malformed_json_is_400() {
    let e = env();
    let mut rel = e.release("1.0.0");
    rel.manifest = b"{\"schema\": 1, \"product\": ".to_vec();
    rel.signature = e.signer.sign(&rel.manifest);
    let v = e.publish_expect(&rel, 400).await;
    assert!(
        v["error"].as_str().unwrap().contains("not valid JSON"),
        "{v}"
    );
}

/// What a failed request's JSON error body must say.
enum Expect {
    /// The value at a JSON pointer of the body, as text (a string without its quotes).
    At(&'static str, &'static str),
    /// The text at a JSON pointer (`""`: the whole body) contains this.
    Has(&'static str, &'static str),
    /// At least this many details.
    MinDetails(usize),
}

fn text_at(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn check(case: &str, v: &Value, expects: &[Expect]) {
    for expect in expects {
        match expect {
            Expect::At(pointer, want) => {
                assert_eq!(text_at(v, pointer), *want, "{case}: {pointer} in {v}")
            }
            Expect::Has(pointer, want) => assert!(
                text_at(v, pointer).contains(want),
                "{case}: {pointer} should contain {want:?}: {v}"
            ),
            Expect::MinDetails(n) => assert!(
                v["details"].as_array().map_or(0, Vec::len) >= *n,
                "{case}: at least {n} details expected: {v}"
            ),
        }
    }
}

/// A publish whose manifest JSON is edited (and re-signed) before it is sent.
struct ManifestCase {
    name: &'static str,
    edit: fn(&mut Value),
    status: u16,
    expect: &'static [Expect],
}

const MANIFEST_CASES: &[ManifestCase] = &[
    ManifestCase {
        name: "unknown field",
        edit: |v| v["relase_notes"] = "typo".into(),
        status: 422,
        expect: &[
            Expect::At("/details/0/path", "relase_notes"),
            Expect::At("/details/0/message", "unknown field"),
        ],
    },
    ManifestCase {
        name: "product name ..",
        edit: |v| v["product"] = "..".into(),
        status: 422,
        expect: &[Expect::At("/details/0/path", "product")],
    },
    ManifestCase {
        name: "artifact name with a slash",
        edit: |v| v["components"][0]["artifact"] = "../../etc/passwd".into(),
        status: 422,
        expect: &[Expect::At("/details/0/path", "components[0].artifact")],
    },
    ManifestCase {
        name: "uppercase channel",
        edit: |v| v["channel"] = "Stable".into(),
        status: 422,
        expect: &[Expect::At("/details/0/path", "channel")],
    },
    ManifestCase {
        name: "empty component name",
        edit: |v| v["components"][0]["name"] = "".into(),
        status: 422,
        expect: &[Expect::At("/details/0/path", "components[0].name")],
    },
    ManifestCase {
        name: "65-character component name",
        edit: |v| v["components"][0]["name"] = "a".repeat(65).into(),
        status: 422,
        expect: &[Expect::Has("", "longer than 64")],
    },
    ManifestCase {
        name: "version not SemVer",
        edit: |v| v["version"] = "1.0".into(),
        status: 422,
        expect: &[
            Expect::At("/details/0/path", "version"),
            Expect::Has("", "SemVer"),
        ],
    },
    ManifestCase {
        name: "relative install path",
        edit: |v| v["components"][0]["install_path"] = "data/bin/qx-node".into(),
        status: 422,
        expect: &[Expect::At("/details/0/path", "components[0].install_path")],
    },
    ManifestCase {
        name: "install path with ..",
        edit: |v| v["components"][0]["install_path"] = "/data/../etc/passwd".into(),
        status: 422,
        expect: &[Expect::At("/details/0/path", "components[0].install_path")],
    },
    ManifestCase {
        name: "artifact listed twice",
        edit: |v| {
            let art = v["components"][0]["artifact"].clone();
            v["components"][1]["artifact"] = art;
        },
        status: 422,
        expect: &[Expect::Has("", "listed more than once")],
    },
    ManifestCase {
        name: "every problem reported at once",
        edit: |v| {
            v["expires"] = "2020-01-01T00:00:00Z".into();
            v["components"][0]["install_path"] = "/data/bin".into();
            v["components"][1]["install_path"] = "/data/bin/x".into();
        },
        status: 422,
        expect: &[Expect::MinDetails(2)],
    },
    ManifestCase {
        name: "product other than the URL's",
        edit: |v| v["product"] = "quantix-vdc".into(),
        status: 422,
        expect: &[Expect::Has("/error", "quantix-vdc")],
    },
    ManifestCase {
        name: "unconfigured channel",
        edit: |v| v["channel"] = "nightly".into(),
        status: 422,
        expect: &[Expect::Has("/error", "not configured")],
    },
];

#[tokio::test]
async fn publish_refuses_bad_manifests() {
    let e = env();
    for case in MANIFEST_CASES {
        let rel = e.edited(case.edit);
        let v = e.form_expect(rel.form(), case.status).await;
        check(case.name, &v, case.expect);
    }
}

#[tokio::test]
async fn publish_garbage_signature_is_422() {
    let e = env();
    let mut rel = e.release("1.0.0");
    rel.signature = "untrusted comment: x\nnot a signature\n".into();
    let v = e.publish_expect(&rel, 422).await;
    assert!(v["error"].as_str().unwrap().contains("minisign"), "{v}");
}

// ---- the multipart body ----

#[tokio::test]
async fn publish_not_multipart_is_400() {
    let e = env();
    let res = client()
        .post(format!("{}/api/v1/quantix-os/publish", e.server.url()))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let v = expect_error(res, 400).await;
    assert!(v["error"].as_str().unwrap().contains("multipart"), "{v}");
}

#[tokio::test]
async fn publish_parts_out_of_order_is_400() {
    let e = env();
    let rel = e.release("1.0.0");
    let form = reqwest::multipart::Form::new()
        .part(
            "signature",
            reqwest::multipart::Part::text(rel.signature.clone()),
        )
        .part(
            "manifest",
            reqwest::multipart::Part::bytes(rel.manifest.clone()),
        );
    let v = e.form_expect(form, 400).await;
    assert!(v["error"].as_str().unwrap().contains("\"manifest\""), "{v}");
}

/// A publish of a valid manifest whose artifact parts are edited before they are sent.
struct PartsCase {
    name: &'static str,
    edit: fn(&mut Vec<(String, Vec<u8>)>),
    status: u16,
    expect: &'static [Expect],
}

const PARTS_CASES: &[PartsCase] = &[
    PartsCase {
        name: "artifact missing from the upload",
        edit: |parts| parts.truncate(1),
        status: 422,
        expect: &[Expect::At("/details/0/artifact", "qx-console.bin")],
    },
    PartsCase {
        name: "extra unlisted part",
        edit: |parts| parts.push(("backdoor.bin".into(), b"evil".to_vec())),
        status: 422,
        expect: &[Expect::Has("/error", "backdoor.bin")],
    },
    PartsCase {
        name: "artifact uploaded twice",
        edit: |parts| parts.push(parts[0].clone()),
        status: 422,
        expect: &[Expect::Has("/error", "twice")],
    },
    PartsCase {
        name: "size mismatch",
        edit: |parts| parts[1].1.truncate(10),
        status: 422,
        expect: &[
            Expect::Has("/error", "size mismatch"),
            Expect::At("/details/0/got/size_bytes", "10"),
        ],
    },
    PartsCase {
        name: "part larger than declared",
        edit: |parts| parts[1].1.extend_from_slice(b"more"),
        status: 422,
        expect: &[Expect::Has("/error", "larger than the")],
    },
];

#[tokio::test]
async fn publish_refuses_bad_artifact_parts() {
    let e = env();
    let rel = e.release("1.0.0");
    for case in PARTS_CASES {
        let mut parts = rel.artifacts.clone();
        (case.edit)(&mut parts);
        let v = e
            .form_expect(form(&rel.manifest, &rel.signature, &parts), case.status)
            .await;
        check(case.name, &v, case.expect);
    }
}

#[tokio::test]
async fn publish_sha256_mismatch_is_422() {
    let e = env();
    let rel = e.release("1.0.0");
    let mut parts = rel.artifacts.clone();
    let last = parts[1].1.len() - 1;
    parts[1].1[last] ^= 0xff; // same size, other bytes
    let v = e
        .form_expect(form(&rel.manifest, &rel.signature, &parts), 422)
        .await;
    assert!(
        v["error"].as_str().unwrap().contains("sha256 mismatch"),
        "{v}"
    );
    let d = &v["details"][0];
    assert_eq!(d["artifact"], "qx-console.bin");
    assert_eq!(
        d["expected"]["sha256"],
        Sha256::of(&rel.artifacts[1].1).to_hex()
    );
    assert_eq!(d["got"]["sha256"], Sha256::of(&parts[1].1).to_hex());
}

#[tokio::test]
async fn publish_larger_than_max_upload_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = qx_server::Config::new(dir.path());
    cfg.publish_token = TOKEN.into();
    cfg.max_upload_bytes = 64 * 1024;
    let server = TestServer::start_with(cfg).unwrap();
    let signer = Signer::new();
    let rel = Release::with_artifacts(
        &signer,
        "quantix-os",
        "stable",
        "1.0.0",
        vec![("big.bin".into(), vec![1u8; 100 * 1024])],
    );
    let v = expect_error(publish(&server, &rel).await, 413).await;
    assert!(
        v["error"].as_str().unwrap().contains("MAX_UPLOAD_BYTES"),
        "{v}"
    );
    assert!(staging_entries(server.stored()).is_empty());
}

#[tokio::test]
async fn publish_chunked_larger_than_max_upload_is_413_while_streaming() {
    // No Content-Length: the limit must hold while the body streams in.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = qx_server::Config::new(dir.path());
    cfg.publish_token = TOKEN.into();
    cfg.max_upload_bytes = 64 * 1024;
    let server = TestServer::start_with(cfg).unwrap();
    let signer = Signer::new();
    let data = vec![1u8; 100 * 1024];
    let rel = Release::with_artifacts(
        &signer,
        "quantix-os",
        "stable",
        "1.0.0",
        vec![("big.bin".into(), data.clone())],
    );
    let stream = futures_util::stream::iter(
        data.chunks(8 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let form = reqwest::multipart::Form::new()
        .part(
            "manifest",
            reqwest::multipart::Part::bytes(rel.manifest.clone()),
        )
        .part(
            "signature",
            reqwest::multipart::Part::text(rel.signature.clone()),
        )
        .part(
            "big.bin",
            reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(stream)),
        );
    let res = client()
        .post(format!("{}/api/v1/quantix-os/publish", server.url()))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("content-length").is_some());
    let v = expect_error(res, 413).await;
    assert!(
        v["error"].as_str().unwrap().contains("MAX_UPLOAD_BYTES"),
        "{v}"
    );
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        staging_entries(server.stored()).is_empty()
    }));
    assert!(!has_files(server.stored(), "quantix-os/stable/1.0.0"));
}

// ---- conflicts ----

#[tokio::test]
async fn publish_same_version_other_content_is_409() {
    let e = env();
    let first = e.release("1.0.0");
    published(&e.server, &first).await;
    let other = e.edited(|v| v["release_notes"] = "something else".into());
    let v = expect_error(publish(&e.server, &other).await, 409).await;
    assert!(
        v["error"].as_str().unwrap().contains("already exists"),
        "{v}"
    );
    let on_disk = e
        .server
        .stored()
        .read("quantix-os/stable/1.0.0/manifest.json")
        .unwrap();
    assert_eq!(
        on_disk, first.manifest,
        "the first release must be untouched"
    );
    assert!(staging_entries(e.server.stored()).is_empty());
}

#[tokio::test]
async fn publish_version_equal_by_precedence_is_409() {
    let e = env();
    published(&e.server, &e.release("1.0.0+build.1")).await;
    let rel = e.release("1.0.0+build.2");
    expect_error(publish(&e.server, &rel).await, 409).await;
    assert!(!e
        .dir
        .path()
        .join("quantix-os/stable/1.0.0+build.2")
        .exists());
}

// ---- URLs: names, traversal, unknown things ----

/// GETs of URLs (sent as raw HTTP, so that `..` and `%2e%2e` reach the server as they are)
/// that must fail: (case, path, status, text the error sentence contains).
const URL_CASES: &[(&str, &str, u16, &str)] = &[
    ("product ..", "/api/v1/../manifest", 400, "product name"),
    ("product %2e%2e", "/api/v1/%2e%2e/manifest", 400, ""),
    (
        "product %2E%2E, releases",
        "/api/v1/%2E%2E/releases",
        400,
        "",
    ),
    (
        "product with %2f",
        "/api/v1/..%2f..%2fetc/manifest",
        400,
        "",
    ),
    (
        "artifact with %2f",
        "/api/v1/quantix-os/releases/1.0.0/..%2f..%2f..%2fetc%2fpasswd",
        400,
        "",
    ),
    (
        "artifact %2e%2e",
        "/api/v1/quantix-os/releases/1.0.0/%2e%2e",
        400,
        "",
    ),
    (
        "hidden artifact",
        "/api/v1/quantix-os/releases/1.0.0/.yanked",
        400,
        "",
    ),
    (
        "version %2e%2e",
        "/api/v1/quantix-os/releases/%2e%2e/manifest.json",
        400,
        "",
    ),
    (
        "channel query with %2f",
        "/api/v1/quantix-os/manifest?channel=..%2f..%2fetc",
        400,
        "",
    ),
    ("uppercase product", "/api/v1/Quantix-OS/manifest", 400, ""),
    ("empty product", "/api/v1//manifest", 400, "empty"),
    (
        "version not SemVer",
        "/api/v1/quantix-os/releases/latest/qx-node.tar.zst",
        400,
        "SemVer",
    ),
    (
        "unknown product, manifest",
        "/api/v1/nothing-here/manifest",
        404,
        "",
    ),
    (
        "unknown product, releases",
        "/api/v1/nothing-here/releases",
        404,
        "",
    ),
    (
        "unconfigured channel",
        "/api/v1/quantix-os/manifest?channel=nightly",
        404,
        "not configured",
    ),
    (
        "channel without releases",
        "/api/v1/quantix-os/manifest?channel=dev",
        404,
        "",
    ),
    (
        "unknown version",
        "/api/v1/quantix-os/releases/9.9.9/qx-node.tar.zst",
        404,
        "",
    ),
    (
        "artifact not in the release",
        "/api/v1/quantix-os/releases/1.0.0/other.tar.zst",
        404,
        "qx-node.tar.zst",
    ),
    ("unknown endpoint", "/api/v2/anything", 404, ""),
    (
        "65-character product",
        "/api/v1/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/manifest",
        400,
        "",
    ),
];

#[tokio::test]
async fn bad_urls_get_json_errors() {
    let e = env();
    published(&e.server, &e.release("1.0.0")).await;
    for &(name, path, status, has) in URL_CASES {
        let (got, head, body) = raw_get(e.server.addr(), path);
        let text = String::from_utf8_lossy(&body);
        assert_eq!(got, status, "{name}: GET {path}: {text}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{name}: GET {path}: not JSON: {head}"
        );
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|err| panic!("{name}: GET {path}: not JSON ({err}): {text}"));
        let error = v["error"].as_str().unwrap_or("");
        assert!(
            !error.is_empty(),
            "{name}: GET {path}: no error sentence: {v}"
        );
        assert!(
            v["details"].is_array(),
            "{name}: GET {path}: no details: {v}"
        );
        assert!(
            error.contains(has),
            "{name}: GET {path}: {has:?} expected in {v}"
        );
    }
}

#[test]
fn url_literal_dotdot_segments_match_no_route_404() {
    let e = env();
    std::fs::write(e.dir.path().join("secret"), "x").unwrap();
    let (status, _, body) = raw_get(
        e.server.addr(),
        "/api/v1/quantix-os/releases/1.0.0/../../../../secret",
    );
    assert_eq!(status, 404);
    assert!(!String::from_utf8_lossy(&body).contains('x') || body.starts_with(b"{"));
}

#[tokio::test]
async fn file_in_release_dir_but_not_in_manifest_is_404() {
    let e = env();
    published(&e.server, &e.release("1.0.0")).await;
    e.server
        .stored()
        .write("quantix-os/stable/1.0.0/stray.bin", b"not listed");
    expect_error(
        get(&e.server, "/api/v1/quantix-os/releases/1.0.0/stray.bin").await,
        404,
    )
    .await;
}

// ---- ranges ----

async fn range_of(e: &Env, range: &str) -> reqwest::Response {
    get_with(
        &format!(
            "{}/api/v1/quantix-os/releases/1.0.0/qx-console.bin",
            e.server.url()
        ),
        &[("Range", range)],
    )
    .await
}

#[tokio::test]
async fn range_multiple_is_416() {
    let e = env();
    let rel = e.release("1.0.0");
    published(&e.server, &rel).await;
    let len = rel.artifact("qx-console.bin").len();
    let res = range_of(&e, "bytes=0-1,5-6").await;
    assert_eq!(
        res.headers()["content-range"].to_str().unwrap(),
        format!("bytes */{len}")
    );
    let v = expect_error(res, 416).await;
    assert!(details_text(&v).contains("multipart/byteranges"), "{v}");
}

#[tokio::test]
async fn range_unsatisfiable_is_416() {
    let e = env();
    let rel = e.release("1.0.0");
    published(&e.server, &rel).await;
    let len = rel.artifact("qx-console.bin").len();
    let res = range_of(&e, &format!("bytes={len}-")).await;
    assert_eq!(
        res.headers()["content-range"].to_str().unwrap(),
        format!("bytes */{len}")
    );
    expect_error(res, 416).await;
}

#[tokio::test]
async fn range_malformed_is_416() {
    let e = env();
    published(&e.server, &e.release("1.0.0")).await;
    for bad in ["bytes=9-3", "bytes=abc", "bytes=", "0-100"] {
        expect_error(range_of(&e, bad).await, 416).await;
    }
}

#[tokio::test]
async fn range_other_unit_is_ignored_200() {
    let e = env();
    let rel = e.release("1.0.0");
    published(&e.server, &rel).await;
    let res = range_of(&e, "items=0-3").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        rel.artifact("qx-console.bin")
    );
}

// ---- promote and yank ----

async fn promote(e: &Env, version: &str, from: &str, rel: &Release) -> reqwest::Response {
    client()
        .post(format!(
            "{}/api/v1/quantix-os/releases/{version}/promote?from={from}",
            e.server.url()
        ))
        .bearer_auth(TOKEN)
        .multipart(form(&rel.manifest, &rel.signature, &[]))
        .send()
        .await
        .unwrap()
}

fn retarget(e: &Env, rel: &Release, channel: &str, f: impl FnOnce(&mut Value)) -> Release {
    let mut v: Value = serde_json::from_slice(&rel.manifest).unwrap();
    v["channel"] = channel.into();
    f(&mut v);
    Release::from_value(&e.signer, &v, vec![])
}

#[tokio::test]
async fn promote_unknown_source_is_404() {
    let e = env();
    let rel = Release::new(&e.signer, "quantix-os", "dev", "1.0.0");
    let beta = retarget(&e, &rel, "beta", |_| {});
    expect_error(promote(&e, "1.0.0", "dev", &beta).await, 404).await;
    assert!(staging_entries(e.server.stored()).is_empty());
}

#[tokio::test]
async fn promote_artifact_mismatch_is_422() {
    let e = env();
    let rel = Release::new(&e.signer, "quantix-os", "dev", "1.0.0");
    published(&e.server, &rel).await;
    let beta = retarget(&e, &rel, "beta", |v| {
        v["components"][0]["sha256"] = json!("0".repeat(64));
    });
    let v = expect_error(promote(&e, "1.0.0", "dev", &beta).await, 422).await;
    assert_eq!(v["details"][0]["artifact"], "qx-node.tar.zst", "{v}");
    assert!(!has_files(e.server.stored(), "quantix-os/beta/1.0.0"));
    assert!(staging_entries(e.server.stored()).is_empty());
}

#[tokio::test]
async fn promote_version_differs_from_url_is_422() {
    let e = env();
    let rel = Release::new(&e.signer, "quantix-os", "dev", "1.0.0");
    published(&e.server, &rel).await;
    let beta = retarget(&e, &rel, "beta", |_| {});
    expect_error(promote(&e, "1.0.1", "dev", &beta).await, 422).await;
}

#[tokio::test]
async fn promote_onto_other_content_is_409() {
    let e = env();
    let rel = Release::new(&e.signer, "quantix-os", "dev", "1.0.0");
    published(&e.server, &rel).await;
    let other = retarget(&e, &rel, "beta", |v| {
        v["release_notes"] = "other notes".into()
    });
    let other = Release {
        artifacts: rel.artifacts.clone(),
        ..other
    };
    published(&e.server, &other).await;
    let beta = retarget(&e, &rel, "beta", |_| {});
    expect_error(promote(&e, "1.0.0", "dev", &beta).await, 409).await;
}

#[tokio::test]
async fn promote_without_from_is_400() {
    let e = env();
    let rel = Release::new(&e.signer, "quantix-os", "dev", "1.0.0");
    let res = client()
        .post(format!(
            "{}/api/v1/quantix-os/releases/1.0.0/promote",
            e.server.url()
        ))
        .bearer_auth(TOKEN)
        .multipart(form(&rel.manifest, &rel.signature, &[]))
        .send()
        .await
        .unwrap();
    expect_error(res, 400).await;
}

#[tokio::test]
async fn promote_with_artifact_parts_is_422() {
    let e = env();
    let rel = Release::new(&e.signer, "quantix-os", "dev", "1.0.0");
    published(&e.server, &rel).await;
    let beta = retarget(&e, &rel, "beta", |_| {});
    let res = client()
        .post(format!(
            "{}/api/v1/quantix-os/releases/1.0.0/promote?from=dev",
            e.server.url()
        ))
        .bearer_auth(TOKEN)
        .multipart(form(&beta.manifest, &beta.signature, &rel.artifacts[..1]))
        .send()
        .await
        .unwrap();
    expect_error(res, 422).await;
}

#[tokio::test]
async fn yank_unknown_release_is_404() {
    let e = env();
    let res = delete_authorized(&format!(
        "{}/api/v1/quantix-os/releases/1.0.0",
        e.server.url()
    ))
    .await;
    expect_error(res, 404).await;
}

#[tokio::test]
async fn publish_manifest_part_over_1_mib_is_413() {
    let e = env();
    let rel = e.release("1.0.0");
    let mut manifest = rel.manifest.clone();
    manifest.extend(std::iter::repeat_n(b' ', 1 << 20));
    let sig = e.signer.sign(&manifest);
    let v = e
        .form_expect(form(&manifest, &sig, &rel.artifacts), 413)
        .await;
    assert!(
        v["error"].as_str().unwrap().contains("manifest part"),
        "{v}"
    );
}
