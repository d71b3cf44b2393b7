//! A sandboxed host root in a temporary directory: the layout of docs/spec.md §4 (`/data/bin`,
//! `/data/versions`, `/etc/limiquantix/node.yaml`, `/run`, …), a configuration written from
//! parameters, and a tiny real service manager.
//!
//! The service manager is a shell script at `<root>/usr/local/bin/qx-test-service`, used by
//! the agent through `service_manager: command`:
//! `qx-test-service ROOT restart|start|stop|pid SERVICE`. A service is declared by
//! [`TestHost::add_service`] (its "init script": the host path of the executable it starts,
//! and its arguments). `restart` kills the pid in `<root>/run/SERVICE.pid`, starts the
//! executable as a real background process, waits until the process has exec'd it, and
//! writes the pidfile. The agent reads the same pidfile for effect verification.
//!
//! Demo executables are real ELF programs: a copy of the system's `sleep` with a marker
//! appended ([`demo_binary`]), so each "version" has its own bytes and hash and runs
//! `sleep infinity` until killed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The service manager script (see the module documentation).
pub const SERVICE_MANAGER: &str = r#"#!/bin/sh
# qx-test-service ROOT restart|start|stop|pid SERVICE: a tiny service manager for tests.
set -u
root="$1"; action="$2"; svc="$3"
conf="$root/etc/qx-test-services/$svc"
pidfile="$root/run/$svc.pid"
[ -f "$conf" ] || { echo "unknown service $svc" >&2; exit 3; }
exe=$(sed -n 1p "$conf")
args=$(sed -n 2p "$conf")
hook=$(sed -n 3p "$conf")
alive() {
    [ -r "/proc/$1/status" ] || return 1
    ! grep -q '^State:.*Z' "/proc/$1/status"
}
stop() {
    if [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        i=0
        while alive "$pid" && [ $i -lt 200 ]; do sleep 0.02; i=$((i+1)); done
        rm -f "$pidfile"
    fi
}
start() {
    [ -x "$root$exe" ] || { echo "$svc: $root$exe is not executable" >&2; exit 4; }
    if [ -n "$hook" ]; then ROOT="$root" sh -c "$hook" || { echo "$svc: start hook failed" >&2; exit 6; }; fi
    # Its own session, as a real service manager does: killing the caller does not kill it.
    # shellcheck disable=SC2086
    setsid "$root$exe" $args </dev/null >/dev/null 2>&1 &
    pid=$!
    want=$(readlink -f "$root$exe")
    i=0
    while [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" != "$want" ] && [ $i -lt 250 ]; do
        alive "$pid" || { echo "$svc: exited at start" >&2; exit 5; }
        sleep 0.02; i=$((i+1))
    done
    echo "$pid" > "$pidfile.tmp" && mv "$pidfile.tmp" "$pidfile"
}
case "$action" in
    restart) stop; start ;;
    start) start ;;
    stop) stop ;;
    pid) cat "$pidfile" ;;
    *) echo "usage: qx-test-service ROOT restart|start|stop|pid SERVICE" >&2; exit 2 ;;
esac
"#;

/// Parameters of the `updates:` section written by [`TestHost::write_config`].
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub server_url: String,
    pub product: String,
    pub channel: String,
    /// Text of the trusted `.pub` file (written to `/etc/limiquantix/update-key.pub`).
    pub trusted_key: String,
    /// Extra lines inside `updates:` (each indented by two spaces by the caller).
    pub extra: String,
    /// Extra keys of `download:` (flow style: `redirect_hosts: [h]`).
    pub download: String,
}

impl HostConfig {
    pub fn new(server_url: &str, product: &str, channel: &str, trusted_key: &str) -> Self {
        Self {
            server_url: server_url.to_owned(),
            product: product.to_owned(),
            channel: channel.to_owned(),
            trusted_key: trusted_key.to_owned(),
            extra: String::new(),
            download: String::new(),
        }
    }
}

/// A whole host below a temporary directory.
pub struct TestHost {
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl TestHost {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("qx-host-").tempdir()?;
        let root = dir.path().join("root");
        for d in [
            "etc/limiquantix",
            "etc/qx-test-services",
            "data/bin",
            "data/share",
            "data/versions",
            "data/updates",
            "run",
            "usr/local/bin",
            "var/log/quantix",
        ] {
            fs::create_dir_all(root.join(d))?;
        }
        let script = root.join("usr/local/bin/qx-test-service");
        fs::write(&script, SERVICE_MANAGER)?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
        Ok(Self { dir, root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A scratch directory beside the root (not part of the host).
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// A host path (`/data/bin/x`) below the root.
    pub fn path(&self, host_path: &str) -> PathBuf {
        qx_core::fs::under_root(&self.root, Path::new(host_path))
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("/etc/limiquantix/node.yaml")
    }

    /// The argv template the agent's `restart_command` uses for this host.
    pub fn restart_command(&self) -> Vec<String> {
        vec![
            self.path("/usr/local/bin/qx-test-service")
                .display()
                .to_string(),
            self.root.display().to_string(),
            "restart".into(),
            "{service}".into(),
        ]
    }

    /// Writes `/etc/limiquantix/node.yaml` (with a node section the agent must ignore) and the
    /// trusted key file; the service manager is this host's script.
    pub fn write_config(&self, c: &HostConfig) -> anyhow::Result<PathBuf> {
        let key = self.path("/etc/limiquantix/update-key.pub");
        fs::write(&key, &c.trusted_key)?;
        let restart = serde_json::to_string(&self.restart_command())?;
        let yaml = format!(
            "node:\n  name: test-host\nupdates:\n  enabled: true\n  server_url: \"{}\"\n  product: {}\n  channel: {}\n  check_interval: 1h\n  trusted_keys: [/etc/limiquantix/update-key.pub]\n  service_manager: command\n  restart_command: {restart}\n  verify_timeout: 3s\n  download: {{max_attempts: 3, initial_backoff: 10ms, max_backoff: 100ms, connect_timeout: 2s, stall_timeout: 5s{}}}\n{}",
            c.server_url,
            c.product,
            c.channel,
            if c.download.is_empty() { String::new() } else { format!(", {}", c.download) },
            c.extra
        );
        let path = self.config_path();
        fs::write(&path, yaml)?;
        Ok(path)
    }

    /// Writes a file at a host path (parents created) with a mode.
    pub fn write_file(&self, host_path: &str, bytes: &[u8], mode: u32) -> anyhow::Result<PathBuf> {
        let p = self.path(host_path);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d)?;
        }
        fs::write(&p, bytes)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        Ok(p)
    }

    pub fn read(&self, host_path: &str) -> anyhow::Result<Vec<u8>> {
        let p = self.path(host_path);
        fs::read(&p).with_context(|| format!("reading {}", p.display()))
    }

    /// Records an installed version (`/data/versions/<component>`).
    pub fn set_version(&self, component: &str, version: &str) -> anyhow::Result<()> {
        fs::write(
            self.path(&format!("/data/versions/{component}")),
            format!("{version}\n"),
        )?;
        Ok(())
    }

    pub fn version(&self, component: &str) -> Option<String> {
        fs::read_to_string(self.path(&format!("/data/versions/{component}")))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// Declares a service: it runs the executable at `exec_host_path` with `args`.
    pub fn add_service(
        &self,
        service: &str,
        exec_host_path: &str,
        args: &str,
    ) -> anyhow::Result<()> {
        self.add_service_with_hook(service, exec_host_path, args, "")
    }

    /// Declares a service with a start hook: a shell command run (with `$ROOT` set) just
    /// before each start, e.g. to record what the service would see when it starts. An empty
    /// hook is none.
    pub fn add_service_with_hook(
        &self,
        service: &str,
        exec_host_path: &str,
        args: &str,
        hook: &str,
    ) -> anyhow::Result<()> {
        fs::write(
            self.path(&format!("/etc/qx-test-services/{service}")),
            format!("{exec_host_path}\n{args}\n{hook}\n"),
        )?;
        Ok(())
    }

    /// Runs the service manager (`restart`, `start`, `stop`).
    pub fn service(&self, action: &str, service: &str) -> anyhow::Result<()> {
        let out = Command::new(self.path("/usr/local/bin/qx-test-service"))
            .arg(&self.root)
            .arg(action)
            .arg(service)
            .output()?;
        if !out.status.success() {
            bail!(
                "qx-test-service {action} {service}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The pid in the service's pidfile.
    pub fn service_pid(&self, service: &str) -> Option<u32> {
        fs::read_to_string(self.path(&format!("/run/{service}.pid")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Every process that runs an executable of this host (its path is under the host's
    /// directory), whether or not a pidfile names it.
    fn own_processes(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir("/proc") else {
            return out;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            // A deleted executable reads as "<path> (deleted)": still under the directory.
            if fs::read_link(e.path().join("exe")).is_ok_and(|exe| exe.starts_with(self.dir.path()))
            {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Not only the pids of the pidfiles: a service manager killed between starting a
        // service (in its own session) and writing its pidfile leaves a process no pidfile
        // names, e.g. when a test SIGKILLs the agent's process group mid-restart.
        for pid in self.own_processes() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

/// True while `pid` runs (exists and is not a zombie).
pub fn is_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => !s
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

/// The (device, inode) of the executable `pid` runs.
pub fn exe_inode(pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// A real executable with its own bytes: the system's `sleep` plus a version marker.
pub fn demo_binary(version: &str) -> anyhow::Result<Vec<u8>> {
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .iter()
        .find(|p| Path::new(p).exists())
        .context("no sleep binary on this machine")?;
    let mut bytes = fs::read(sleep)?;
    bytes.extend_from_slice(format!("\n#qx-demo version {version}\n").as_bytes());
    Ok(bytes)
}

/// Everything an end-to-end agent test needs: a real update server on loopback with its own
/// release directory, a signing key, and a sandboxed host whose configuration trusts the key
/// and points at the server.
pub struct Lab {
    pub server: crate::server::TestServer,
    pub key: crate::release::FixtureKey,
    pub host: TestHost,
    pub token: String,
    pub product: String,
    pub channel: String,
    _releases: tempfile::TempDir,
}

impl Lab {
    /// A lab for `quantix-os` on channel `dev`, configuration written.
    pub fn new() -> anyhow::Result<Self> {
        Self::with("quantix-os", "dev", "")
    }

    /// `extra`: more lines for the `updates:` section (two-space indented).
    pub fn with(product: &str, channel: &str, extra: &str) -> anyhow::Result<Self> {
        Self::with_server(product, channel, extra, |_| {})
    }

    /// [`Lab::with`], the server's configuration changed by `configure` first.
    pub fn with_server(
        product: &str,
        channel: &str,
        extra: &str,
        configure: impl FnOnce(&mut qx_server::Config),
    ) -> anyhow::Result<Self> {
        let releases = tempfile::Builder::new().prefix("qx-releases-").tempdir()?;
        let token = "lab-token".to_string();
        let mut config = qx_server::Config::new(releases.path());
        config.publish_token = token.clone();
        config.token_is_default = false;
        configure(&mut config);
        let server = crate::server::TestServer::start_with(config)?;
        let key = crate::release::FixtureKey::generate()?;
        let host = TestHost::new()?;
        let lab = Self {
            server,
            key,
            host,
            token,
            product: product.into(),
            channel: channel.into(),
            _releases: releases,
        };
        lab.write_config(extra)?;
        Ok(lab)
    }

    pub fn host_config(&self) -> HostConfig {
        HostConfig::new(
            self.server.url(),
            &self.product,
            &self.channel,
            &self.key.public_key_file,
        )
    }

    pub fn write_config(&self, extra: &str) -> anyhow::Result<PathBuf> {
        let mut c = self.host_config();
        c.extra = extra.to_owned();
        self.host.write_config(&c)
    }

    /// A release spec for this lab's product and channel.
    pub fn release(&self, version: &str) -> crate::release::ReleaseSpec {
        crate::release::ReleaseSpec::new(&self.product, &self.channel, version)
    }

    /// Builds, signs with the lab key and publishes.
    pub fn publish(
        &self,
        spec: &crate::release::ReleaseSpec,
    ) -> anyhow::Result<crate::release::BuiltRelease> {
        let r = spec.sign(&self.key)?;
        r.publish(self.server.url(), &self.token)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_manager_restarts_a_real_process() {
        let host = TestHost::new().expect("host");
        host.write_file("/data/bin/demo", &demo_binary("1").expect("bin"), 0o755)
            .expect("write");
        host.add_service("demo", "/data/bin/demo", "infinity")
            .expect("svc");
        host.service("restart", "demo").expect("start");
        let first = host.service_pid("demo").expect("pid");
        assert!(is_running(first));
        assert_eq!(exe_inode(first), {
            use std::os::unix::fs::MetadataExt;
            let m = fs::metadata(host.path("/data/bin/demo")).expect("stat");
            Some((m.dev(), m.ino()))
        });
        host.service("restart", "demo").expect("restart");
        let second = host.service_pid("demo").expect("pid");
        assert_ne!(first, second);
        assert!(!is_running(first));
        assert!(is_running(second));
    }
}
