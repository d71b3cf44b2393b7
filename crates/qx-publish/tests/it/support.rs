//! Shared helpers of the qx-publish integration tests: a work directory with a key pair and a
//! copy of the example product, and the built binary.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const TOKEN: &str = "test-publish-token";

/// The example product of the repository.
pub fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quantix-demo")
}

/// `qx-publish keygen --out DIR`, which must succeed.
pub fn keygen(dir: &Path) -> assert_cmd::assert::Assert {
    qx_publish()
        .args(["keygen", "--out"])
        .arg(dir)
        .assert()
        .success()
}

/// `qx-publish verify TARGET --pubkey PUBKEY`.
pub fn verify(
    target: impl AsRef<std::ffi::OsStr>,
    pubkey: impl AsRef<std::ffi::OsStr>,
) -> assert_cmd::assert::Assert {
    qx_publish()
        .arg("verify")
        .arg(target)
        .arg("--pubkey")
        .arg(pubkey)
        .assert()
}

pub fn qx_publish() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(env!("CARGO_BIN_EXE_qx-publish"));
    cmd.env_remove("QX_PUBLISH_TOKEN")
        .env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// A temporary work directory: `keys/qx-publish.{key,pub}` and `demo/` (a copy of the
/// example product, so build commands write there and not into the source tree).
pub struct Work {
    pub tmp: tempfile::TempDir,
}

impl Work {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let status = Command::new("cp")
            .arg("-a")
            .arg(example_dir())
            .arg(tmp.path().join("demo"))
            .status()
            .expect("cp runs");
        assert!(status.success(), "copying the example product");
        let _ = std::fs::remove_dir_all(tmp.path().join("demo/build"));
        keygen(&tmp.path().join("keys"));
        Self { tmp }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
    pub fn spec(&self) -> PathBuf {
        self.path().join("demo/release.toml")
    }
    pub fn key(&self) -> PathBuf {
        self.path().join("keys/qx-publish.key")
    }
    pub fn pubkey(&self) -> PathBuf {
        self.path().join("keys/qx-publish.pub")
    }

    /// Writes a spec file next to the demo (so its relative sources resolve) and returns it.
    pub fn write_spec(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join("demo").join(name);
        std::fs::write(&p, text).expect("write spec");
        p
    }

    /// `qx-publish build --spec SPEC --key KEY --out OUT` plus `extra`.
    pub fn build(&self, spec: &Path, out: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
        qx_publish()
            .arg("build")
            .arg("--spec")
            .arg(spec)
            .arg("--key")
            .arg(self.key())
            .arg("--out")
            .arg(out)
            .args(extra)
            .assert()
    }
}

/// A spec header for hand-written specs in the demo directory.
pub const HEADER: &str = "product = \"quantix-demo\"\nversion = \"1.0.0\"\n";

pub fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

pub fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}
