//! Running the system's programs from tests.

use std::process::{Command, Stdio};

/// Runs a command (stdin closed); panics with its output if it cannot start or fails.
/// Returns its stdout.
pub fn run(c: &mut Command) -> String {
    let desc = format!("{c:?}").replace('"', "");
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{desc}`: {e}"));
    assert!(
        out.status.success(),
        "`{desc}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
