//! A gate a test holds a process of the host at: a named pipe under the host's `/run` that the
//! process opens for reading (it blocks there, in the kernel, until the test opens the other
//! end), and the pid files such a process writes. Waiting happens on conditions, never on time.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Shell lines for a host script: `gate_wait NAME` blocks until the test opens gate `NAME`;
/// `record_pid NAME PID` writes `$QX_ROOT/run/NAME.pid` atomically.
pub const SHELL_HELPERS: &str = r#"run="$QX_ROOT/run"
record_pid() { echo "$2" > "$run/$1.pid.tmp" && mv "$run/$1.pid.tmp" "$run/$1.pid"; }
"#;

/// A named pipe at `<root>/run/<name>`; dropping it lets every reader still blocked on it go.
pub struct Gate {
    path: PathBuf,
}

impl Gate {
    pub fn new(root: &Path, name: &str) -> Self {
        let run = root.join("run");
        fs::create_dir_all(&run).unwrap();
        let path = run.join(name);
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &path,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        Self { path }
    }

    /// Lets the process blocked on the gate go on (it reads end-of-file). Non-blocking: does
    /// nothing when no process waits on it.
    pub fn open(&self) {
        use std::os::unix::fs::OpenOptionsExt;
        // ENXIO (no reader) is the "nobody waits" case.
        let _ = fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&self.path);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
    }
}

/// Waits (at most 60 s) until a host script has written `<root>/run/<name>.pid`; its pid.
pub fn wait_pid(root: &Path, name: &str) -> u32 {
    let path = root.join("run").join(format!("{name}.pid"));
    let mut pid = None;
    let found = crate::support::poll(Duration::from_secs(60), Duration::from_millis(10), || {
        pid = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    });
    assert!(found, "{} was never written", path.display());
    pid.unwrap()
}
