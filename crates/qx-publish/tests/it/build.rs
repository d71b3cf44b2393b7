//! `qx-publish build` and `verify` on real files: archives unpacked by GNU tar, signatures
//! checked by the minisign tool, reproducibility, and every lint that stops a bad release.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::support::{keygen, qx_publish, stderr, verify, Work, HEADER};
use predicates::prelude::*;
use qx_core::{Manifest, UnknownFields};

fn manifest(dir: &Path) -> Manifest {
    Manifest::parse(
        &std::fs::read(dir.join("manifest.json")).expect("manifest"),
        UnknownFields::Reject,
    )
    .expect("valid manifest")
}

fn gnu_tar_extract(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).expect("mkdir");
    let out = Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .output()
        .expect("tar runs");
    assert!(
        out.status.success(),
        "tar failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "tar warned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn build_archives_are_standard_tar_zst_that_gnu_tar_unpacks() {
    let w = Work::new();
    let out = w.path().join("dist");
    w.build(&w.spec(), &out, &[]).success();
    let m = manifest(&out);
    assert_eq!(m.components.len(), 3);

    // file component: exactly the program, named after install_path, mode 0755, version stamped.
    let x = w.path().join("x-demo");
    gnu_tar_extract(&out.join("qx-demo.tar.zst"), &x);
    let names: Vec<_> = std::fs::read_dir(&x)
        .expect("ls")
        .map(|e| e.expect("e").file_name())
        .collect();
    assert_eq!(names, ["qx-demo"]);
    let prog = x.join("qx-demo");
    assert_eq!(
        std::fs::metadata(&prog).expect("stat").permissions().mode() & 0o777,
        0o755
    );
    let v = Command::new(&prog).arg("--version").output().expect("runs");
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "qx-demo 1.0.0");

    // directory component: the tree, relative entries.
    let ui = w.path().join("x-ui");
    gnu_tar_extract(&out.join("quantix-host-ui.tar.zst"), &ui);
    assert_eq!(
        std::fs::read(ui.join("index.html")).expect("index"),
        std::fs::read(w.path().join("demo/ui/index.html")).expect("src")
    );
    assert!(ui.join("assets/app.js").is_file());

    // migrations component: SQL files and the tool, which runs.
    let mig = w.path().join("x-mig");
    gnu_tar_extract(&out.join("qx-demo-migrations.tar.zst"), &mig);
    assert!(mig.join("001_create_events.sql").is_file());
    let state = w.path().join("state");
    let run = Command::new("./migrate.sh")
        .arg("up")
        .current_dir(&mig)
        .env("QX_DEMO_STATE", &state)
        .output()
        .expect("migrate runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(state.join("migrations.applied")).expect("applied"),
        "001_create_events.sql\n002_add_event_level.sql\n"
    );

    // Listing: owner 0/0, fixed mtime, sorted, no absolute or parent paths.
    let list = Command::new("tar")
        .args(["--zstd", "--numeric-owner", "-tvf"])
        .arg(out.join("quantix-host-ui.tar.zst"))
        .output()
        .expect("tar runs");
    let text = String::from_utf8_lossy(&list.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    for l in &lines {
        assert!(l.contains(" 0/0 "), "owner in {l}");
        assert!(l.contains("1970-01-01"), "mtime in {l}");
    }
    let paths: Vec<&str> = lines
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["assets/", "assets/app.js", "assets/style.css", "index.html"]
    );
}

#[test]
fn build_signature_is_accepted_by_the_minisign_tool() {
    let w = Work::new();
    let out = w.path().join("dist");
    w.build(&w.spec(), &out, &[]).success();
    let res = Command::new("minisign")
        .arg("-V")
        .arg("-p")
        .arg(w.pubkey())
        .arg("-m")
        .arg(out.join("manifest.json"))
        .output()
        .expect("minisign runs");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let text = String::from_utf8_lossy(&res.stdout);
    assert!(
        text.contains("Trusted comment: quantix-demo 1.0.0 dev"),
        "{text}"
    );
}

#[test]
fn build_is_reproducible() {
    let w = Work::new();
    let (a, b) = (w.path().join("a"), w.path().join("b"));
    w.build(&w.spec(), &a, &[]).success();
    w.build(&w.spec(), &b, &[]).success();
    let (ma, mb) = (manifest(&a), manifest(&b));
    for (ca, cb) in ma.components.iter().zip(&mb.components) {
        assert_eq!(ca.sha256, cb.sha256, "{}", ca.name);
        assert_eq!(
            std::fs::read(a.join(ca.artifact.as_str())).expect("a"),
            std::fs::read(b.join(cb.artifact.as_str())).expect("b"),
            "{} differs between builds",
            ca.artifact
        );
    }
}

#[test]
fn build_with_source_date_epoch_gives_identical_manifest() {
    let w = Work::new();
    let epoch = (jiff::Timestamp::now().as_second() - 86_400).to_string();
    let (a, b) = (w.path().join("a"), w.path().join("b"));
    for out in [&a, &b] {
        qx_publish()
            .env("SOURCE_DATE_EPOCH", &epoch)
            .arg("build")
            .arg("--spec")
            .arg(w.spec())
            .arg("--key")
            .arg(w.key())
            .arg("--out")
            .arg(out)
            .assert()
            .success();
    }
    for f in [
        "manifest.json",
        "qx-demo.tar.zst",
        "quantix-host-ui.tar.zst",
        "qx-demo-migrations.tar.zst",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).expect("a"),
            std::fs::read(b.join(f)).expect("b"),
            "{f}"
        );
    }
    // Signatures are randomised (minisign adds noise), but both verify over the same bytes.
    for out in [&a, &b] {
        verify(out, w.pubkey()).success();
    }
    assert_eq!(manifest(&a).release_date.as_second().to_string(), epoch);
}

#[test]
fn build_stamps_one_version_into_every_component() {
    let w = Work::new();
    let out = w.path().join("dist");
    w.build(
        &w.spec(),
        &out,
        &["--release-version", "2.3.4", "--channel", "beta"],
    )
    .success();
    let m = manifest(&out);
    assert_eq!(m.version.to_string(), "2.3.4");
    assert_eq!(m.channel.as_str(), "beta");
    assert!(m
        .components
        .iter()
        .all(|c| c.version.to_string() == "2.3.4"));
    // The build command saw QX_VERSION.
    let x = w.path().join("x");
    gnu_tar_extract(&out.join("qx-demo.tar.zst"), &x);
    let v = Command::new(x.join("qx-demo"))
        .arg("--version")
        .output()
        .expect("runs");
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "qx-demo 2.3.4");
    // Default expiry: 90 days.
    assert_eq!(
        m.release_date.duration_until(m.expires).as_secs(),
        90 * 86_400
    );
}

#[test]
fn build_component_releases_only_that_component() {
    let w = Work::new();
    let out = w.path().join("dist");
    w.build(&w.spec(), &out, &["--component", "quantix-host-ui"])
        .success();
    let m = manifest(&out);
    let names: Vec<&str> = m.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["quantix-host-ui"]);
    assert!(!out.join("qx-demo.tar.zst").exists());
}

#[test]
fn build_unknown_component_is_a_usage_error() {
    let w = Work::new();
    w.build(&w.spec(), &w.path().join("dist"), &["--component", "nope"])
        .code(2)
        .stderr(predicate::str::contains(
            "--component nope: no such component",
        ));
}

#[test]
fn build_full_image_copies_files_as_is() {
    let w = Work::new();
    let img = w.path().join("demo/image");
    std::fs::create_dir_all(&img).expect("mkdir");
    std::fs::write(img.join("system.squashfs"), vec![7u8; 10_000]).expect("write");
    std::fs::write(img.join("vmlinuz"), b"kernel").expect("write");
    std::fs::write(img.join("initramfs"), b"initramfs").expect("write");
    let spec = w.write_spec(
        "full.toml",
        &format!("{HEADER}[full_image]\nsquashfs = \"image/system.squashfs\"\nkernel = \"image/vmlinuz\"\ninitramfs = \"image/initramfs\"\n"),
    );
    let out = w.path().join("dist");
    w.build(&spec, &out, &[]).success();
    let m = manifest(&out);
    assert_eq!(m.update_type, qx_core::UpdateType::Full);
    let fi = m.full_image.expect("full image");
    assert_eq!(fi.size_bytes, 10_000);
    assert_eq!(fi.kernel.expect("kernel").artifact.as_str(), "vmlinuz");
    assert_eq!(
        std::fs::read(out.join("system.squashfs")).expect("copy"),
        vec![7u8; 10_000]
    );
    // Its chunks: an index and a pack that rebuild the image exactly.
    let chunks = fi.chunks.expect("chunks");
    let index_bytes = std::fs::read(out.join(chunks.index.artifact.as_str())).expect("index");
    assert_eq!(qx_core::Sha256::of(&index_bytes), chunks.index.sha256);
    let index = qx_delta::chunks::Index::parse(&index_bytes).expect("index parses");
    assert_eq!(index.image_size, 10_000);
    let pack = std::fs::read(out.join(chunks.pack.artifact.as_str())).expect("pack");
    assert_eq!(pack.len() as u64, chunks.pack.size_bytes);
    let mut rebuilt = Vec::new();
    let mut at = 0usize;
    for e in &index.chunks {
        let packed = &pack[at..at + e.pack_len as usize];
        rebuilt.extend(qx_delta::chunks::unpack(e, packed).expect("chunk"));
        at += e.pack_len as usize;
    }
    assert_eq!(rebuilt, vec![7u8; 10_000]);
    verify(&out, w.pubkey()).success();
}

#[test]
fn build_refuses_a_non_empty_output_directory() {
    let w = Work::new();
    let out = w.path().join("dist");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::write(out.join("keep.txt"), "mine").expect("write");
    w.build(&w.spec(), &out, &[])
        .code(1)
        .stderr(predicate::str::contains("is not empty"));
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).expect("kept"),
        "mine"
    );
}

#[test]
fn build_failing_build_command_is_reported() {
    let w = Work::new();
    let spec = w.write_spec(
        "bad-build.toml",
        &format!("{HEADER}[[component]]\nname = \"a\"\ninstall_path = \"/data/bin/a\"\nbuild = \"exit 3\"\noutput = \"build/a\"\n"),
    );
    let out = w.path().join("dist");
    w.build(&spec, &out, &[])
        .code(1)
        .stderr(predicate::str::contains(
            "component a: build command `exit 3` failed",
        ));
    assert!(!out.exists(), "a failed build leaves no half-built release");
}

// ---- lints: one named row each, through the binary ----

/// A spec with one thing wrong, the lint it trips and what its message says.
struct LintCase {
    name: &'static str,
    spec_body: &'static str,
    lint: &'static str,
    message: &'static str,
}

const LINT_CASES: &[LintCase] = &[
    LintCase {
        name: "install_path_not_absolute",
        spec_body: "[[component]]\nname = \"qx-demo\"\ninstall_path = \"data/bin/qx-demo\"\nsource = \"src/qx-demo.sh\"\n",
        lint: "install-path-invalid",
        message: "it must be an absolute path",
    },
    LintCase {
        name: "install_path_with_parent_dir",
        spec_body: "[[component]]\nname = \"qx-demo\"\ninstall_path = \"/data/../etc/qx-demo\"\nsource = \"src/qx-demo.sh\"\n",
        lint: "install-path-invalid",
        message: "must not contain '..'",
    },
    LintCase {
        name: "two_components_with_the_same_install_path",
        spec_body: "[[component]]\nname = \"a\"\ninstall_path = \"/data/bin/x\"\nsource = \"src/qx-demo.sh\"\n\
         [[component]]\nname = \"b\"\ninstall_path = \"/data/bin/x\"\nsource = \"src/build.sh\"\n",
        lint: "install-path-duplicate",
        message: "components a and b both install to /data/bin/x",
    },
    LintCase {
        name: "file_component_with_a_directory",
        spec_body: "[[component]]\nname = \"ui\"\nkind = \"file\"\ninstall_path = \"/data/share/ui\"\nsource = \"ui\"\n",
        lint: "file-archive-not-single-file",
        message: "must hold exactly one regular file",
    },
    LintCase {
        name: "migrations_without_migrate_command",
        spec_body: "[[component]]\nname = \"m\"\nkind = \"migrations\"\ninstall_path = \"/data/m\"\nsource = \"migrations\"\n",
        lint: "migrations-without-command",
        message: "has no migrate_command",
    },
    LintCase {
        name: "requires_unknown_component",
        spec_body: "[[component]]\nname = \"a\"\ninstall_path = \"/data/bin/a\"\nsource = \"src/qx-demo.sh\"\nrequires = [{ name = \"qx-missing\", min_version = \"1.0.0\" }]\n",
        lint: "requires-unknown-component",
        message: "requires \"qx-missing\", which is not a component of this spec",
    },
];

#[test]
fn lints_refuse_a_bad_spec_before_anything_is_signed() {
    let w = Work::new();
    for case in LINT_CASES {
        let name = case.name;
        let spec = w.write_spec(
            &format!("lint-{name}.toml"),
            &format!("{HEADER}{}", case.spec_body),
        );
        let out = w.path().join(format!("dist-{name}"));
        let a = w.build(&spec, &out, &[]).code(1);
        let err = stderr(&a);
        assert!(
            err.contains(&format!("error[{}]", case.lint)),
            "{name}: {err}"
        );
        assert!(err.contains(case.message), "{name}: {err}");
        assert!(
            !out.join("manifest.json").exists(),
            "{name}: nothing was signed"
        );
    }
}

#[test]
fn lint_secret_key_readable_by_others() {
    let w = Work::new();
    std::fs::set_permissions(w.key(), std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = w.path().join("dist");
    w.build(&w.spec(), &out, &[])
        .code(1)
        .stderr(predicate::str::contains("error[secret-key-exposed]"))
        .stderr(predicate::str::contains("chmod 600"));
    assert!(!out.exists());
}

// ---- verify ----

#[test]
fn verify_accepts_a_fresh_build() {
    let w = Work::new();
    let out = w.path().join("dist");
    w.build(&w.spec(), &out, &[]).success();
    verify(&out, w.pubkey())
        .success()
        .stdout(predicate::str::contains(
            "archive quantix-host-ui.tar.zst: 4 entries, intact",
        ));
}

#[test]
fn verify_without_a_key_fails() {
    let w = Work::new();
    let out = w.path().join("dist");
    w.build(&w.spec(), &out, &[]).success();
    qx_publish()
        .arg("verify")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no public key given"));
}

#[test]
fn verify_lists_every_problem_of_a_tampered_release() {
    let w = Work::new();
    let out = w.path().join("dist");
    w.build(&w.spec(), &out, &[]).success();
    // Tamper an artifact (same size, other bytes) and truncate another one.
    let ui = out.join("quantix-host-ui.tar.zst");
    let mut bytes = std::fs::read(&ui).expect("read");
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&ui, &bytes).expect("write");
    let mig = out.join("qx-demo-migrations.tar.zst");
    let m = std::fs::read(&mig).expect("read");
    std::fs::write(&mig, &m[..m.len() / 2]).expect("write");
    let a = verify(&out, w.pubkey()).code(1);
    let err = stderr(&a);
    assert!(
        err.contains("artifact quantix-host-ui.tar.zst: sha256 mismatch"),
        "{err}"
    );
    assert!(
        err.contains("artifact qx-demo-migrations.tar.zst: size"),
        "{err}"
    );
    assert!(
        err.contains("component qx-demo-migrations: archive"),
        "{err}"
    );
}

#[test]
fn verify_refuses_a_manifest_changed_after_signing() {
    let w = Work::new();
    let out = w.path().join("dist");
    w.build(&w.spec(), &out, &[]).success();
    let p = out.join("manifest.json");
    let text = std::fs::read_to_string(&p)
        .expect("read")
        .replace("\"dev\"", "\"stable\"");
    std::fs::write(&p, text).expect("write");
    verify(&out, w.pubkey())
        .code(1)
        .stderr(predicate::str::contains(
            "does not match the manifest bytes",
        ));
}

#[test]
fn verify_refuses_a_signature_by_another_key() {
    let w = Work::new();
    let out = w.path().join("dist");
    w.build(&w.spec(), &out, &[]).success();
    let other = w.path().join("other");
    keygen(&other);
    verify(&out, other.join("qx-publish.pub"))
        .code(1)
        .stderr(predicate::str::contains("not among the trusted keys"));
}

#[test]
fn verify_refuses_a_file_component_holding_two_files() {
    // A release made by hand (not by build): a kind=file component whose archive has two files.
    let w = Work::new();
    let dir = w.path().join("handmade");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let src = w.path().join("two");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("a"), "a").expect("write");
    std::fs::write(src.join("b"), "b").expect("write");
    let opts = qx_publish::pack::PackOptions {
        mtime: 0,
        level: 3,
        threads: 1,
    };
    let packed =
        qx_publish::pack::pack_dir(&src, &dir.join("qx-demo.tar.zst"), &opts).expect("pack");
    let now = jiff::Timestamp::now().as_second();
    let manifest = format!(
        r#"{{"schema":1,"product":"quantix-demo","version":"1.0.0","channel":"dev",
        "release_date":"{}","expires":"{}","update_type":"component",
        "components":[{{"name":"qx-demo","version":"1.0.0","artifact":"qx-demo.tar.zst",
        "sha256":"{}","size_bytes":{},"install_path":"/data/bin/qx-demo","kind":"file"}}]}}"#,
        jiff::Timestamp::from_second(now).expect("ts"),
        jiff::Timestamp::from_second(now + 3600).expect("ts"),
        packed.sha256.to_hex(),
        packed.size
    );
    std::fs::write(dir.join("manifest.json"), &manifest).expect("write");
    let sk = qx_core::SigningKey::from_file(&w.key()).expect("key");
    std::fs::write(
        dir.join("manifest.json.minisig"),
        sk.sign(manifest.as_bytes(), "t").expect("sign"),
    )
    .expect("write");
    verify(&dir, w.pubkey())
        .code(1)
        .stderr(predicate::str::contains(
            "component qx-demo is kind \"file\" but qx-demo.tar.zst holds 2 entries",
        ));
}

#[test]
fn build_long_names_and_links_unpack_with_gnu_tar() {
    let w = Work::new();
    let tree = w.path().join("demo/tree");
    let deep = tree.join(
        "a-rather-long-directory-name-to-pass-the-classic-limit/and-another-level-of-depth-here",
    );
    std::fs::create_dir_all(&deep).expect("mkdir");
    let long_file =
        "a-file-with-a-name-long-enough-that-the-whole-path-is-over-one-hundred-bytes.txt";
    std::fs::write(deep.join(long_file), "deep").expect("write");
    std::fs::write(tree.join("target.txt"), "t").expect("write");
    std::os::unix::fs::symlink("target.txt", tree.join("link.txt")).expect("link");
    std::fs::create_dir_all(tree.join("empty")).expect("mkdir");
    let spec = w.write_spec(
        "tree.toml",
        &format!("{HEADER}[[component]]\nname = \"tree\"\nkind = \"directory\"\ninstall_path = \"/data/share/tree\"\nsource = \"tree\"\n"),
    );
    let out = w.path().join("dist");
    w.build(&spec, &out, &[]).success();
    let x = w.path().join("x");
    gnu_tar_extract(&out.join("tree.tar.zst"), &x);
    let rel = deep.strip_prefix(&tree).expect("rel").join(long_file);
    assert!(rel.to_str().expect("utf8").len() > 100);
    assert_eq!(
        std::fs::read_to_string(x.join(&rel)).expect("deep file"),
        "deep"
    );
    assert_eq!(
        std::fs::read_link(x.join("link.txt")).expect("link"),
        Path::new("target.txt")
    );
    assert!(x.join("empty").is_dir());
}

#[test]
fn build_refuses_a_link_pointing_outside_the_directory() {
    let w = Work::new();
    let tree = w.path().join("demo/tree");
    std::fs::create_dir_all(&tree).expect("mkdir");
    std::os::unix::fs::symlink("/etc/passwd", tree.join("passwd")).expect("link");
    let spec = w.write_spec(
        "tree.toml",
        &format!("{HEADER}[[component]]\nname = \"tree\"\nkind = \"directory\"\ninstall_path = \"/data/share/tree\"\nsource = \"tree\"\n"),
    );
    w.build(&spec, &w.path().join("dist"), &[])
        .code(1)
        .stderr(predicate::str::contains("points outside the directory"));
}

#[test]
fn build_and_verify_json_output() {
    let w = Work::new();
    let out = w.path().join("dist");
    let a = w.build(&w.spec(), &out, &["--json"]).success();
    let v: serde_json::Value = serde_json::from_str(&crate::support::stdout(&a)).expect("json");
    assert_eq!(v["version"], "1.0.0");
    assert_eq!(v["artifacts"].as_array().expect("artifacts").len(), 3);
    let m = manifest(&out);
    assert_eq!(v["artifacts"][0]["sha256"], m.components[0].sha256.to_hex());

    let a = qx_publish()
        .args(["--json", "verify"])
        .arg(&out)
        .arg("--pubkey")
        .arg(w.pubkey())
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_str(&crate::support::stdout(&a)).expect("json");
    assert_eq!(v["ok"], true);

    std::fs::write(out.join("qx-demo.tar.zst"), b"garbage").expect("write");
    let a = qx_publish()
        .args(["verify", "--json"])
        .arg(&out)
        .arg("--pubkey")
        .arg(w.pubkey())
        .assert()
        .code(1);
    let v: serde_json::Value = serde_json::from_str(&crate::support::stdout(&a)).expect("json");
    assert_eq!(v["ok"], false);
    assert!(
        v["problems"].as_array().expect("problems").len() >= 2,
        "{v}"
    );
}
