//! `qx-publish publish` makes deltas from the channel's newest releases (docs/spec.md §11):
//! signed in the manifest, uploaded and served like artifacts, each rebuilding exactly the
//! archive the manifest signs from the earlier content.

use std::path::PathBuf;

use qx_core::{Component, Manifest, Sha256};
use qx_testkit::data::noise;

use crate::server::{start, Env, PRODUCT};
use crate::support::{stderr, HEADER};

/// A program of 200 KB whose release `n` differs from the last in a few bytes, and a data
/// file that is new noise in every release (no delta pays for it).
struct Product {
    spec: PathBuf,
    dir: PathBuf,
}

impl Product {
    fn new(e: &Env) -> Self {
        let spec = e.work.write_spec(
            "deltas.toml",
            &format!(
                "{HEADER}channel = \"dev\"\n\
                 [[component]]\nname = \"app\"\nkind = \"file\"\nsource = \"deltas/app\"\ninstall_path = \"/data/bin/app\"\n\
                 [[component]]\nname = \"data\"\nkind = \"file\"\nsource = \"deltas/data\"\ninstall_path = \"/data/lib/data\"\n"
            ),
        );
        let dir = e.work.path().join("demo/deltas");
        std::fs::create_dir_all(&dir).unwrap();
        Self { spec, dir }
    }

    /// The content of release number `n`.
    fn app(n: u64) -> Vec<u8> {
        let mut app = noise(200_000, 1);
        for k in 0..n {
            app[(k as usize * 7919) % 200_000] ^= 0xff;
        }
        app
    }

    /// Writes release `n`'s sources and publishes them as `version` with `extra` flags.
    fn publish(&self, e: &Env, n: u64, version: &str, extra: &[&str]) -> String {
        std::fs::write(self.dir.join("app"), Self::app(n)).unwrap();
        std::fs::write(self.dir.join("data"), noise(50_000, 100 + n)).unwrap();
        let a = e
            .publish_spec(
                &self.spec,
                &[&["--release-version", version][..], extra].concat(),
            )
            .assert()
            .success();
        stderr(&a)
    }
}

fn component<'a>(m: &'a Manifest, name: &str) -> &'a Component {
    m.component(name).unwrap()
}

fn fetch(e: &Env, version: &str, name: &str) -> Vec<u8> {
    let resp = e.get(&e.urls().artifact(PRODUCT, version, name, "dev"));
    assert_eq!(resp.status(), 200, "{version}/{name}");
    resp.bytes().unwrap().to_vec()
}

/// The tar of `version`'s component `name` rebuilt from `base` with each of its deltas whose
/// base it is, checked against the signed digest.
fn rebuilt_from(e: &Env, version: &str, c: &Component, base: &[u8]) -> usize {
    let tar = c.tar.expect("a component with deltas signs its tar");
    let mut used = 0;
    for d in c
        .deltas
        .iter()
        .filter(|d| d.from_sha256 == Sha256::of(base))
    {
        let patch = fetch(e, version, d.artifact.as_str());
        assert_eq!(Sha256::of(&patch), d.sha256);
        let mut out = Vec::new();
        qx_delta::decode(d.algorithm, base, &patch[..], &mut out, tar.size_bytes).unwrap();
        assert_eq!(Sha256::of(&out), tar.sha256, "{}", d.artifact);
        let whole = zstd::decode_all(&fetch(e, version, c.artifact.as_str())[..]).unwrap();
        assert_eq!(out, whole, "the delta rebuilds the artifact's archive");
        used += 1;
    }
    used
}

#[test]
fn publish_makes_deltas_from_the_channels_newest_releases_that_rebuild_the_signed_archive() {
    let e = start();
    let p = Product::new(&e);
    p.publish(&e, 0, "1.0.0", &[]);
    assert!(
        component(&e.manifest("dev"), "app").deltas.is_empty(),
        "nothing to patch from"
    );
    let err = p.publish(&e, 1, "1.1.0", &[]);
    assert!(err.contains("app: delta from 1.0.0 with"), "{err}");
    p.publish(&e, 2, "1.2.0", &[]);

    let m = e.manifest("dev");
    let app = component(&m, "app");
    let mut from: Vec<String> = app
        .deltas
        .iter()
        .map(|d| d.from_version.to_string())
        .collect();
    from.sort();
    assert_eq!(from, ["1.0.0", "1.1.0"]);
    for d in &app.deltas {
        assert!(d.size_bytes * 10 < app.size_bytes, "{} bytes", d.size_bytes);
    }
    assert_eq!(rebuilt_from(&e, "1.2.0", app, &Product::app(0)), 1);
    assert_eq!(rebuilt_from(&e, "1.2.0", app, &Product::app(1)), 1);
    // New noise every release: a patch would cost as much as the artifact, so none is kept.
    let data = component(&m, "data");
    assert!(data.deltas.is_empty() && data.tar.is_none(), "{data:?}");
}

#[test]
fn deltas_flag_bounds_how_many_releases_back_and_zero_makes_none() {
    let e = start();
    let p = Product::new(&e);
    p.publish(&e, 0, "1.0.0", &[]);
    p.publish(&e, 1, "1.1.0", &[]);
    p.publish(&e, 2, "1.2.0", &["--deltas", "1"]);
    let app = component(&e.manifest("dev"), "app").clone();
    let from: Vec<String> = app
        .deltas
        .iter()
        .map(|d| d.from_version.to_string())
        .collect();
    assert_eq!(from, ["1.1.0"], "only the newest");
    p.publish(&e, 3, "1.3.0", &["--deltas", "0"]);
    let app = component(&e.manifest("dev"), "app").clone();
    assert!(app.deltas.is_empty() && app.tar.is_none());
}

#[test]
fn a_hot_fix_carries_the_other_components_deltas_without_uploading_them_again() {
    let e = start();
    let p = Product::new(&e);
    p.publish(&e, 0, "1.0.0", &[]);
    p.publish(&e, 1, "1.1.0", &[]);
    let before = component(&e.manifest("dev"), "app").clone();
    assert_eq!(before.deltas.len(), 1);
    let err = p.publish(&e, 1, "1.1.1", &["--component", "data"]);
    assert!(
        !err.contains(&format!("uploading {}", before.deltas[0].artifact)),
        "{err}"
    );
    let after = component(&e.manifest("dev"), "app").clone();
    assert_eq!(after, before, "carried as it was, deltas included");
    let served = fetch(&e, "1.1.1", before.deltas[0].artifact.as_str());
    assert_eq!(Sha256::of(&served), before.deltas[0].sha256);
}

#[test]
fn a_build_without_a_server_makes_no_deltas() {
    let e = start();
    let p = Product::new(&e);
    std::fs::write(p.dir.join("app"), Product::app(0)).unwrap();
    std::fs::write(p.dir.join("data"), noise(10, 1)).unwrap();
    let out = e.work.path().join("out");
    e.work.build(&p.spec, &out, &[]).success();
    let m = Manifest::parse(
        &std::fs::read(out.join("manifest.json")).unwrap(),
        qx_core::UnknownFields::Reject,
    )
    .unwrap();
    assert!(m.components.iter().all(|c| c.deltas.is_empty()));
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".delta")), "{names:?}");
}

#[test]
fn a_bundle_carries_the_whole_artifacts_and_leaves_the_deltas_out() {
    let e = start();
    let p = Product::new(&e);
    p.publish(&e, 0, "1.0.0", &[]);
    p.publish(&e, 1, "1.1.0", &[]);
    let out = e.work.path().join("release.qxb");
    crate::channel::bundle(&e, "1.1.0", &out).assert().success();
    let meta = qx_core::bundle::read_metadata(&out).unwrap();
    let m = Manifest::parse(&meta.manifest, qx_core::UnknownFields::Reject).unwrap();
    let app = component(&m, "app");
    assert_eq!(app.deltas.len(), 1);
    let whole = m.whole_artifacts();
    assert!(whole
        .iter()
        .all(|a| !a.artifact.as_str().ends_with(".delta")));
    assert_eq!(whole.len(), m.artifacts().len() - 1);
    let dir = tempfile::tempdir().unwrap();
    qx_core::bundle::extract_artifacts(&out, dir.path(), &whole, &m.artifacts()).unwrap();
    let delta = [app.deltas[0].artifact_ref()];
    let err = qx_core::bundle::extract_artifacts(&out, dir.path(), &delta, &m.artifacts());
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("missing from the bundle"));
}

#[test]
fn publish_makes_an_image_delta_from_the_last_releases_image_that_rebuilds_the_new_one() {
    let e = start();
    let spec = e.work.write_spec(
        "image.toml",
        &format!("{HEADER}channel = \"dev\"\n[full_image]\nsquashfs = \"image/system.squashfs\"\n"),
    );
    let dir = e.work.path().join("demo/image");
    std::fs::create_dir_all(&dir).unwrap();
    let old = noise(3_000_000, 5);
    let mut new = old.clone();
    new.splice(1_000_000..1_000_000, noise(20_000, 6));
    new[2_500_000] ^= 0xff;
    for (version, image) in [("1.0.0", &old), ("1.1.0", &new)] {
        std::fs::write(dir.join("system.squashfs"), image).unwrap();
        let a = e
            .publish_spec(&spec, &["--release-version", version])
            .assert()
            .success();
        if version == "1.1.0" {
            let err = stderr(&a);
            assert!(
                err.contains("full image: delta from 1.0.0 with zstd-window"),
                "{err}"
            );
        }
    }
    let m = e.manifest("dev");
    let img = m.full_image.as_ref().unwrap();
    assert_eq!(img.deltas.len(), 1);
    let d = &img.deltas[0];
    assert_eq!(d.from_sha256, Sha256::of(&old));
    assert_eq!(d.from_version.to_string(), "1.0.0");
    assert!(d.size_bytes < 100_000, "{} bytes", d.size_bytes);
    let patch = fetch(&e, "1.1.0", d.artifact.as_str());
    assert_eq!(Sha256::of(&patch), d.sha256);
    let mut out = Vec::new();
    qx_delta::decode(d.algorithm, &old, &patch[..], &mut out, img.size_bytes).unwrap();
    assert_eq!(Sha256::of(&out), img.sha256);
    assert!(
        !m.whole_artifacts().iter().any(|a| a.artifact == d.artifact),
        "a bundle leaves the image's delta out"
    );
}
