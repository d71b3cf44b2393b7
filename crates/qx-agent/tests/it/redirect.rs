//! Issue 15: artifacts served by redirect (docs/spec.md §13). The server answers an artifact
//! request with a redirect to a CDN (`ARTIFACT_REDIRECT=<base URL>`) or to a presigned URL of
//! its object store (`presign`); the host follows it when its configuration allows the target,
//! resumes a cut download across it, and verifies every byte: bytes the CDN corrupts are
//! refused and fetched from the server itself.

use qx_server::config::{ArtifactRedirect, ReleaseStoreConfig};
use qx_testkit::cdn::{Cdn, Fault};
use qx_testkit::host::Lab;
use qx_testkit::release::{BuiltRelease, ComponentSpec};
use qx_testkit::stored::Stored;

use crate::support::host::run_qx_update;

/// A lab whose server redirects artifacts to a CDN serving its release directory, with
/// `fault`; the host's `download` settings are `download` (two-space-indented YAML keys).
fn lab_with_cdn(fault: Fault, allow_cdn: bool) -> (Lab, Cdn) {
    let mut cdn = None;
    let lab = Lab::with_server("quantix-os", "dev", "", |c| {
        let started = Cdn::start(Stored::Local(c.release_dir.clone()), fault);
        c.artifact_redirect = Some(ArtifactRedirect::Base(started.base()));
        cdn = Some(started);
    })
    .unwrap();
    let cdn = cdn.expect("the CDN started with the server");
    if allow_cdn {
        allow_redirects_to(&lab, &cdn.host());
    }
    (lab, cdn)
}

/// Publishes 1.0.0: a 2 MiB file component.
/// The host's configuration with `download.redirect_hosts: [host]`.
fn allow_redirects_to(lab: &Lab, host: &str) {
    let mut c = lab.host_config();
    c.download = format!("redirect_hosts: [\"{host}\"]");
    lab.host.write_config(&c).unwrap();
}

fn publish_blob(lab: &Lab) -> (BuiltRelease, Vec<u8>) {
    let data = qx_testkit::data::noise(2 << 20, 7);
    let spec = lab.release("1.0.0").component(ComponentSpec::file(
        "qx-blob",
        "/data/lib/qx-blob",
        data.clone(),
    ));
    (lab.publish(&spec).unwrap(), data)
}

fn apply(lab: &Lab) -> String {
    let out = run_qx_update(lab.host.root(), &["apply", "--yes"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "apply failed: {text}");
    text
}

/// Bytes of artifacts and manifests the server sent itself (`qx_served_bytes_total`).
fn served_bytes(lab: &Lab) -> u64 {
    let text = reqwest::blocking::get(format!("{}/metrics", lab.server.url()))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("qx_served_bytes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The CDN's requests for artifacts (not for other files).
fn artifact_requests(cdn: &Cdn) -> Vec<qx_testkit::cdn::Seen> {
    cdn.seen()
        .into_iter()
        .filter(|s| s.path.ends_with(".tar.zst"))
        .collect()
}

#[test]
fn apply_downloads_through_the_cdn_and_resumes_a_cut_across_the_redirect() {
    let (lab, cdn) = lab_with_cdn(Fault::CutOnce(1 << 20), true);
    let (release, data) = publish_blob(&lab);
    let before = served_bytes(&lab);
    apply(&lab);
    assert_eq!(lab.host.read("/data/lib/qx-blob").unwrap(), data);
    let seen = artifact_requests(&cdn);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(
        seen[1].range.as_deref(),
        Some(format!("bytes={}-", 1 << 20).as_str()),
        "resumed where the cut left it, across the redirect"
    );
    let artifact = release.artifact("qx-blob.tar.zst").unwrap().len() as u64;
    let from_server = served_bytes(&lab) - before;
    assert!(
        from_server < artifact,
        "the server sent {from_server} bytes itself, the artifact is {artifact}"
    );
}

#[test]
fn bytes_a_cdn_corrupts_are_refused_and_fetched_from_the_server() {
    let (lab, cdn) = lab_with_cdn(Fault::Corrupt, true);
    let (release, data) = publish_blob(&lab);
    let before = served_bytes(&lab);
    let text = apply(&lab);
    assert_eq!(lab.host.read("/data/lib/qx-blob").unwrap(), data);
    assert_eq!(artifact_requests(&cdn).len(), 1, "asked the CDN once");
    let artifact = release.artifact("qx-blob.tar.zst").unwrap().len() as u64;
    assert!(
        served_bytes(&lab) - before >= artifact,
        "the server itself sent the artifact"
    );
    assert!(!text.contains("X-Amz"), "{text}");
}

#[test]
fn a_redirect_to_a_plain_http_host_not_allowed_is_not_followed_and_the_server_serves() {
    let (lab, cdn) = lab_with_cdn(Fault::None, false);
    let (_release, data) = publish_blob(&lab);
    apply(&lab);
    assert_eq!(lab.host.read("/data/lib/qx-blob").unwrap(), data);
    assert!(artifact_requests(&cdn).is_empty(), "the CDN was not asked");
}

#[test]
#[ignore = "slow tier: needs Garage"]
fn presigned_redirects_serve_the_artifact_straight_from_the_object_store() {
    let bucket = qx_testkit::garage::shared();
    let prefix = qx_testkit::garage::fresh_prefix();
    let lab = Lab::with_server("quantix-os", "dev", "", |c| {
        c.release_store = ReleaseStoreConfig::Object(bucket.config(&prefix, 0));
        c.artifact_redirect = Some(ArtifactRedirect::Presign {
            ttl: std::time::Duration::from_secs(60),
        });
    })
    .unwrap();
    allow_redirects_to(&lab, bucket.endpoints[0].trim_start_matches("http://"));
    let (release, data) = publish_blob(&lab);
    let before = served_bytes(&lab);
    apply(&lab);
    assert_eq!(lab.host.read("/data/lib/qx-blob").unwrap(), data);
    let artifact = release.artifact("qx-blob.tar.zst").unwrap().len() as u64;
    let from_server = served_bytes(&lab) - before;
    assert!(
        from_server < artifact,
        "the server sent {from_server} bytes itself, the artifact is {artifact}"
    );
}
