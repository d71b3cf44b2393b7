//! What the automation's commands share about this machine: the workspace and its target
//! directory, free loopback ports, waiting for a child process to listen, a plain HTTP `GET`,
//! a process's peak memory.

use std::io::{Read, Write};
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

/// The answer to [`http_get`].
pub struct HttpAnswer {
    pub status: u16,
    /// The status line and the headers.
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// The value of header `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.1 `GET` of an `http://` URL on a fresh connection (`Connection: close`); a
/// chunked answer is refused (our server sends a `Content-Length`).
pub fn http_get(url: &str) -> anyhow::Result<HttpAnswer> {
    let rest = url.strip_prefix("http://").context("http URL")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .with_context(|| format!("reading the answer to GET {url}"))?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response head")?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status code")?;
    let answer = HttpAnswer {
        status,
        head,
        body: buf.split_off(split + 4),
    };
    if answer
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        bail!("GET {url}: a chunked answer (not read by this client)");
    }
    Ok(answer)
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
    fn http_header_is_found_whatever_its_case() {
        let answer = HttpAnswer {
            status: 200,
            head: "HTTP/1.1 200 OK\r\nETag: \"abc\"\r\nX-Qx-Signature:  c2ln \r\n".into(),
            body: Vec::new(),
        };
        assert_eq!(answer.header("etag"), Some("\"abc\""));
        assert_eq!(answer.header("x-qx-signature"), Some("c2ln"));
        assert_eq!(answer.header("content-length"), None);
    }

    #[test]
    fn this_process_has_a_peak_memory() {
        assert!(vm_hwm_kib("self").expect("VmHWM") > 0);
    }
}
