use super::*;
use crate::names::ArtifactName;

struct Fixture {
    dir: tempfile::TempDir,
    meta: BundleMetadata,
    refs: Vec<ArtifactRef>,
    files: Vec<(String, PathBuf)>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut refs = Vec::new();
    let mut files = Vec::new();
    for (name, body) in [
        ("a.tar.zst", b"alpha".as_slice()),
        ("b.tar.zst", b"bravo bravo"),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, body).expect("write");
        refs.push(ArtifactRef {
            artifact: ArtifactName::new(name).expect("name"),
            sha256: Sha256::of(body),
            size_bytes: body.len() as u64,
        });
        files.push((name.to_owned(), p));
    }
    let meta = BundleMetadata {
        channel: b"{\"channel\":1}\n".to_vec(),
        channel_signature: b"sig-c".to_vec(),
        manifest: b"{\"manifest\":1}\n".to_vec(),
        manifest_signature: b"sig-m".to_vec(),
    };
    Fixture {
        dir,
        meta,
        refs,
        files,
    }
}

impl Fixture {
    fn write(&self) -> PathBuf {
        let out = self.dir.path().join("release.qxb");
        write_bundle(&out, &self.meta, &self.files).expect("write bundle");
        out
    }
    fn out_dir(&self) -> PathBuf {
        let d = self.dir.path().join("staging");
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}

#[test]
fn a_bundle_round_trips_metadata_and_verified_artifacts() {
    let f = fixture();
    let bundle = f.write();
    assert_eq!(read_metadata(&bundle).expect("metadata"), f.meta);
    let out = f.out_dir();
    let paths = extract_artifacts(&bundle, &out, &f.refs, &f.refs).expect("extract");
    assert_eq!(std::fs::read(&paths[1]).expect("read"), b"bravo bravo");
    // Only what is wanted is written; other listed artifacts are skipped.
    let out2 = f.dir.path().join("only-b");
    std::fs::create_dir(&out2).expect("mkdir");
    let only_b = extract_artifacts(&bundle, &out2, &f.refs[1..], &f.refs).expect("extract");
    assert_eq!(only_b, vec![out2.join("b.tar.zst")]);
    assert!(!out2.join("a.tar.zst").exists());
}

#[test]
fn a_truncated_bundle_is_refused() {
    let f = fixture();
    let bundle = f.write();
    let bytes = std::fs::read(&bundle).expect("read");
    for cut in [100, 1000, bytes.len() - 1100] {
        std::fs::write(&bundle, &bytes[..cut]).expect("truncate");
        let out = f.out_dir();
        let meta = read_metadata(&bundle);
        let arts = extract_artifacts(&bundle, &out, &f.refs, &f.refs);
        assert!(meta.is_err() || arts.is_err(), "cut at {cut} was accepted");
        assert!(
            std::fs::read_dir(&out).expect("ls").next().is_none(),
            "cut at {cut} left files"
        );
    }
}

#[test]
fn a_tampered_artifact_is_refused_and_nothing_is_left() {
    let f = fixture();
    let mut refs = f.refs.clone();
    refs[1].sha256 = Sha256::of(b"something else");
    let bundle = f.write();
    let out = f.out_dir();
    let e = extract_artifacts(&bundle, &out, &refs, &refs).expect_err("tampered");
    assert!(e.to_string().contains("sha256 mismatch"), "{e}");
    assert!(std::fs::read_dir(&out).expect("ls").next().is_none());
}

#[test]
fn an_unlisted_or_missing_artifact_is_refused() {
    let f = fixture();
    let bundle = f.write();
    let out = f.out_dir();
    let e = extract_artifacts(&bundle, &out, &f.refs[..1], &f.refs[..1]).expect_err("unlisted");
    assert!(e.to_string().contains("not listed"), "{e}");
    let mut more = f.refs.clone();
    more.push(ArtifactRef {
        artifact: ArtifactName::new("c.tar.zst").expect("name"),
        sha256: Sha256::of(b"c"),
        size_bytes: 1,
    });
    let e = extract_artifacts(&bundle, &out, &more, &more).expect_err("missing");
    assert!(e.to_string().contains("missing from the bundle"), "{e}");
}

#[test]
fn a_file_that_is_not_a_bundle_is_refused() {
    let f = fixture();
    let p = f.dir.path().join("junk");
    std::fs::write(&p, vec![7u8; 4096]).expect("write");
    assert!(matches!(
        read_metadata(&p),
        Err(BundleError::Malformed { .. })
    ));
}
