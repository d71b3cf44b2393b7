//! What the automation's commands share about this machine: the workspace and its target
//! directory, free loopback ports, waiting for a child process to listen, a process's peak
//! memory.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use qx_core::api::ServerUrl;

/// The workspace's root directory (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A loopback port free at the time of the call.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `addr` accepts connections; fails early when `child` (named `what`) exits.
pub fn wait_for_port(
    addr: SocketAddr,
    what: &str,
    child: &mut Child,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited at start ({st})");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!(
        "{what} did not accept connections on {addr} within {} s",
        within.as_secs()
    )
}

/// Peak resident set size (VmHWM) in KiB of a process: a pid, or `self`.
pub fn vm_hwm_kib(process: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{process}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM in {path}"))
}

/// A `qx-update-server` child process on a free loopback port; stopped with SIGTERM (its
/// orderly stop) on drop.
pub struct UpdateServer {
    child: Child,
    url: ServerUrl,
}

impl UpdateServer {
    /// The command of `bin` serving `releases` and accepting `token` for publishes; the caller
    /// adds its own environment and output, then [`UpdateServer::start`]s it.
    pub fn command(bin: &Path, releases: &Path, token: &str) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env("RELEASE_DIR", releases).env("PUBLISH_TOKEN", token);
        cmd
    }

    /// Starts `cmd` listening on a free loopback port and waits until it accepts connections.
    pub fn start(mut cmd: Command, within: Duration) -> anyhow::Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let child = cmd
            .env("LISTEN_ADDR", addr.to_string())
            .spawn()
            .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
        let mut server = Self {
            child,
            url: ServerUrl::new(&format!("http://{addr}")),
        };
        wait_for_port(addr, "qx-update-server", &mut server.child, within)?;
        Ok(server)
    }

    pub fn url(&self) -> &ServerUrl {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for UpdateServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_peak_memory() {
        assert!(vm_hwm_kib("self").expect("VmHWM") > 0);
    }
}
