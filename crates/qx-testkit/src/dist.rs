//! The output of `cargo xtask dist` (static programs, man pages, completions, Debian
//! packages), for the slow-tier tests of the packages and the container image.
//! `cargo xtask test` runs `dist` first and names its directory in [`DIST_VAR`]; a test run
//! without it fails with a message saying so (it never skips).

use std::path::PathBuf;

/// The environment variable naming the dist directory.
pub const DIST_VAR: &str = "QX_DIST_DIR";

/// The dist directory; panics with the way to get one when [`DIST_VAR`] is unset or names no
/// directory.
pub fn dir() -> PathBuf {
    let how = "run `cargo xtask dist` first and set QX_DIST_DIR to the directory it prints \
               (`cargo xtask test` does both)";
    let Some(dir) = std::env::var_os(DIST_VAR) else {
        panic!("{DIST_VAR} is not set: this test needs the built packages; {how}");
    };
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("bin").is_dir() && dir.join("deb").is_dir(),
        "{DIST_VAR}={} holds no dist (bin/ and deb/); {how}",
        dir.display()
    );
    dir
}

/// A program of the dist (`bin/<name>`).
pub fn program(name: &str) -> PathBuf {
    dir().join("bin").join(name)
}
