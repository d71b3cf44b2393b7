//! `cargo xtask demo`: the whole update loop on this machine, on embedded defaults.
//!
//! 1. builds the three programs;
//! 2. makes a signing key, starts `qx-update-server` on a free loopback port with an empty
//!    release directory;
//! 3. publishes release 1.0.0 of the example product (`examples/quantix-demo`) with
//!    `qx-publish`, which also signs the channel's state (docs/spec.md §8);
//! 4. creates a sandboxed host under `target/demo/host` (`--root`), and installs 1.0.0 there
//!    with `qx-update apply`: migrations run, the demo service starts;
//! 5. publishes 1.0.1 as a hot fix of the service alone (`--component qx-demo`: the other
//!    components are carried over, not uploaded; a delta from 1.0.0 is made and signed),
//!    shows `qx-update check`, applies it (the service is rebuilt from the installed 1.0.0 and
//!    the delta, the bytes saved printed; the running service is replaced and restarted, the
//!    update verified by its health check), and prints `qx-update status`;
//! 6. publishes a bad 1.0.2 and applies it, then yanks it with `--revert`: the host's check
//!    says to go back, `apply` reverts it to 1.0.1 and the history says `reverted`;
//! 7. bundles 1.0.1 (`qx-publish bundle`) and shows it to an offline host
//!    (`qx-update check --from FILE`).
//!
//! After every change of the channel, the signed channel state as the server serves it is
//! fetched, its signature verified and its `seq`, `current`, releases and revocations printed.
//!
//! With `--keep`, the server and the host's daemon keep running afterwards, so the host page
//! can be opened in a browser; Ctrl-C stops everything.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine as _;
use qx_core::api::{ServerUrl, SIGNATURE_HEADER};
use qx_core::fs::under_root;
use qx_core::history::{self, HISTORY_FILE};
use qx_core::{ChannelState, Outcome, RevokeAction, TrustedKeys, UnknownFields};

use crate::process::{
    free_port, http_get, target_dir, wait_for_port, workspace_root, UpdateServer,
};

mod rollout;

const TOKEN: &str = "demo-publish-token";
const PRODUCT: &str = "quantix-demo";
const CHANNEL: &str = "dev";
/// How long the server and the daemon may take to listen.
const LISTEN_WITHIN: Duration = Duration::from_secs(30);
/// Where the offline host's configuration points: a loopback port nothing listens on.
const UNREACHABLE_SERVER: &str = "http://127.0.0.1:1";
/// The example product's service script (`service.sh ROOT start|stop|restart SERVICE`).
const SERVICE_SH: &str = "examples/quantix-demo/host/service.sh";
/// The fleet labels of the demo's hosts (node.yaml's `updates.fleet.labels`).
const DEMO_LABELS: &str = "{site: demo}";

/// Processes that must not outlive the demo.
struct Background(Vec<(String, Child)>);

impl Drop for Background {
    fn drop(&mut self) {
        for (name, child) in &mut self.0 {
            if child.kill().is_ok() {
                let _ = child.wait();
                eprintln!("stopped {name}");
            }
        }
    }
}

fn step(title: &str) {
    println!("\n\x1b[1m==> {title}\x1b[0m");
}

fn run(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<()> {
    println!(
        "$ {} {}",
        bin.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        args.join(" ")
    );
    let st = Command::new(bin)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    if !st.success() {
        bail!("{} {} failed ({st})", bin.display(), args.join(" "));
    }
    Ok(())
}

fn utf8(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

/// Reads a small text file, trimmed; empty when it is missing.
fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The demo's places and programs.
struct Demo {
    workspace: PathBuf,
    work: PathBuf,
    server_bin: PathBuf,
    publish_bin: PathBuf,
    agent_bin: PathBuf,
    /// The host's root (`--root`).
    host: PathBuf,
    spec: String,
    key: String,
    url: ServerUrl,
    /// The port of the host daemon's API (written into node.yaml).
    api_port: u16,
    server: Option<UpdateServer>,
    /// The host daemon, with `--keep`.
    background: Background,
}

pub fn run_demo(keep: bool) -> anyhow::Result<()> {
    let mut demo = Demo::build()?;
    demo.make_key()?;
    demo.start_server()?;
    step("publish release 1.0.0 of the example product to the dev channel");
    demo.publish(
        "1.0.0",
        "First release: the demo service, its page and its database.",
        &[],
    )?;
    demo.show_channel()?;
    demo.show_api();
    demo.prepare_host()?;
    step("install 1.0.0 on the host");
    demo.agent(&["check"])?;
    demo.agent(&["apply", "--yes"])?;
    demo.agent(&["status"])?;
    demo.update_running_host()?;
    demo.bad_release()?;
    demo.yank_with_revert()?;
    demo.offline_bundle()?;
    demo.staged_rollout()?;
    demo.show_fleet();
    if keep {
        return demo.keep_running();
    }
    demo.stop_service();
    println!(
        "\ndemo finished: everything is under {}",
        demo.work.display()
    );
    Ok(())
}

impl Demo {
    /// Builds the three programs and makes a fresh work directory under the target directory.
    fn build() -> anyhow::Result<Self> {
        step("building qx-update-server, qx-publish and qx-update");
        crate::deps::cargo(&[
            "build",
            "--bin",
            "qx-update-server",
            "--bin",
            "qx-publish",
            "--bin",
            "qx-update",
        ])?;
        let workspace = workspace_root();
        let debug = target_dir().join("debug");
        let work = target_dir().join("demo");
        let host = work.join("host");
        if work.exists() {
            // A previous demo's services may still run from there.
            for root in std::iter::once(host.clone()).chain(rollout::extra_hosts(&work)) {
                let _ = Command::new(workspace.join(SERVICE_SH))
                    .arg(&root)
                    .args(["stop", "qx-demo"])
                    .status();
            }
            std::fs::remove_dir_all(&work)
                .with_context(|| format!("removing {}", work.display()))?;
        }
        for d in ["releases", "host", "keys"] {
            std::fs::create_dir_all(work.join(d))?;
        }
        let spec = utf8(&workspace.join("examples/quantix-demo/release.toml"))?.to_owned();
        let key = utf8(&work.join("keys/qx-publish.key"))?.to_owned();
        Ok(Self {
            server_bin: debug.join("qx-update-server"),
            publish_bin: debug.join("qx-publish"),
            agent_bin: debug.join("qx-update"),
            workspace,
            work,
            host,
            spec,
            key,
            url: ServerUrl::new("http://127.0.0.1"),
            api_port: 0,
            server: None,
            background: Background(Vec::new()),
        })
    }

    fn make_key(&self) -> anyhow::Result<()> {
        step("a signing key for the publisher");
        let keys = self.work.join("keys");
        run(&self.publish_bin, &["keygen", "--out", utf8(&keys)?], &[])
    }

    fn start_server(&mut self) -> anyhow::Result<()> {
        step("the update server, with an empty release directory");
        let releases = self.work.join("releases");
        let mut cmd = UpdateServer::command(&self.server_bin, &releases, TOKEN);
        cmd.stdout(Stdio::null());
        let server = UpdateServer::start(cmd, LISTEN_WITHIN)?;
        self.url = server.url().clone();
        self.server = Some(server);
        println!(
            "qx-update-server listens on {} (releases in {})",
            self.url.base(),
            releases.display()
        );
        Ok(())
    }

    /// `qx-publish publish` of `version` (only `components` when some are named: the others
    /// are carried over from the channel's current release); it signs the channel's new state.
    fn publish(&self, version: &str, notes: &str, components: &[&str]) -> anyhow::Result<()> {
        let extra: Vec<&str> = components
            .iter()
            .flat_map(|c| ["--component", *c])
            .collect();
        self.publish_args(version, notes, &extra)
    }

    /// `qx-publish publish` of `version` with `extra` arguments.
    fn publish_args(&self, version: &str, notes: &str, extra: &[&str]) -> anyhow::Result<()> {
        let mut args = vec![
            "publish",
            "--spec",
            &self.spec,
            "--key",
            &self.key,
            "--server",
            self.url.base(),
            "--channel",
            CHANNEL,
            "--release-version",
            version,
            "--notes",
            notes,
        ];
        args.extend_from_slice(extra);
        run(&self.publish_bin, &args, &[("QX_PUBLISH_TOKEN", TOKEN)])
    }

    /// Fetches the channel's signed state as the server serves it, verifies its signature
    /// with the publisher's public key and parses it as an agent does (docs/spec.md §8), and
    /// prints it in one line.
    fn show_channel(&self) -> anyhow::Result<()> {
        let url = self.url.channel_state(PRODUCT, CHANNEL);
        let answer = http_get(&url)?;
        if answer.status != 200 {
            bail!("GET {url}: status {}", answer.status);
        }
        let signature = answer
            .header(SIGNATURE_HEADER)
            .with_context(|| format!("GET {url}: no {SIGNATURE_HEADER} header"))?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .with_context(|| format!("GET {url}: {SIGNATURE_HEADER} is not base64"))?;
        let signature = String::from_utf8(signature)
            .with_context(|| format!("GET {url}: the signature is not text"))?;
        let mut keys = TrustedKeys::new();
        keys.add_file(&self.work.join("keys/qx-publish.pub"))?;
        let key_id = keys
            .verify(&answer.body, &signature)
            .with_context(|| format!("the channel state from {url}"))?;
        let state = ChannelState::parse(&answer.body, UnknownFields::Reject)
            .with_context(|| format!("the channel state from {url}"))?;
        println!("\x1b[1m{}\x1b[0m", channel_line(&state, &key_id));
        Ok(())
    }

    /// Shows the server's answers with curl (when it is installed).
    fn show_api(&self) {
        step("the server's API, answering with the signed release");
        let u = &self.url;
        let headers_only = ["-D", "-", "-o", "/dev/null"];
        for (what, extra, url) in [
            ("health", &[][..], u.health()),
            ("channels", &[][..], u.channels()),
            (
                "manifest headers (signature, strong ETag)",
                &headers_only[..],
                u.manifest(PRODUCT, CHANNEL),
            ),
            (
                "channel state headers (signature, strong ETag)",
                &headers_only[..],
                u.channel_state(PRODUCT, CHANNEL),
            ),
            ("releases", &[][..], u.releases(PRODUCT, CHANNEL)),
        ] {
            println!("-- {what}");
            let out = Command::new("curl")
                .arg("-s")
                .args(extra)
                .arg(&url)
                .output();
            match out {
                Ok(o) => println!("{}", String::from_utf8_lossy(&o.stdout).trim_end()),
                Err(e) => println!("(curl is not available: {e})"),
            }
        }
    }

    /// A host path (`/etc/x`) under the host's root.
    fn host_path(&self, path: &str) -> PathBuf {
        under_root(&self.host, Path::new(path))
    }

    /// `qx-update-server enrollment-token create` for the demo's product (the store is the
    /// running server's); writes the token where node.yaml's `fleet.enroll_token_file` says,
    /// so the host's first check enrolls it (docs/spec.md §9).
    fn enroll_token(&self, root: &Path) -> anyhow::Result<()> {
        let releases = self.work.join("releases");
        let out = UpdateServer::command(&self.server_bin, &releases, TOKEN)
            .args([
                "enrollment-token",
                "create",
                "--product",
                PRODUCT,
                "--uses",
                "1",
            ])
            .stderr(Stdio::inherit())
            .output()
            .context("running qx-update-server enrollment-token create")?;
        if !out.status.success() {
            anyhow::bail!(
                "qx-update-server enrollment-token create failed ({})",
                out.status
            );
        }
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let file = under_root(root, Path::new("/etc/limiquantix/fleet-enroll-token"));
        let secret = qx_core::fs::WriteOptions {
            mode: 0o600,
            ..Default::default()
        };
        qx_core::fs::write_atomic_with(&file, format!("{token}\n").as_bytes(), secret)?;
        println!(
            "enrollment token for {PRODUCT} written to {} (the first check enrolls the host)",
            file.display()
        );
        Ok(())
    }

    /// The fleet as the server sees it: `GET /api/v1/hosts` with the bootstrap admin token.
    fn show_fleet(&self) {
        step("the fleet as the server sees it (GET /api/v1/hosts)");
        let url = self.url.hosts("");
        let out = Command::new("curl")
            .args(["-sS", "-H", &format!("Authorization: Bearer {TOKEN}"), &url])
            .output();
        match out {
            Ok(o) => println!("{}", String::from_utf8_lossy(&o.stdout).trim_end()),
            Err(e) => println!("(curl is not available: {e})"),
        }
        println!(
            "the fleet dashboard: {} (sign in with the operator token {TOKEN})",
            self.url.ui()
        );
    }

    /// The sandboxed host's directories, its configuration and the trusted key.
    fn prepare_host(&mut self) -> anyhow::Result<()> {
        step("a sandboxed host: node.yaml, the trusted key, a service manager");
        self.api_port = free_port()?;
        let yaml = self.write_host(
            &self.host,
            self.url.base(),
            self.api_port,
            Some(DEMO_LABELS),
        )?;
        self.enroll_token(&self.host)?;
        let config = self.host_path("/etc/limiquantix/node.yaml");
        print!("{}:\n{yaml}", config.display());
        step("check the host's configuration offline (qx-update config check)");
        self.agent(&["config", "check"])
    }

    /// Makes a host under `root` whose agent asks `server_url` and listens on `api_port`
    /// (and, with fleet `labels`, a YAML flow mapping, enrolls with the token file
    /// [`Self::enroll_token`] writes); returns its node.yaml.
    fn write_host(
        &self,
        root: &Path,
        server_url: &str,
        api_port: u16,
        labels: Option<&str>,
    ) -> anyhow::Result<String> {
        let at = |path: &str| under_root(root, Path::new(path));
        for d in ["/etc/limiquantix", "/data/bin", "/run", "/var/log"] {
            std::fs::create_dir_all(at(d))?;
        }
        std::fs::copy(
            self.work.join("keys/qx-publish.pub"),
            at("/etc/limiquantix/update-key.pub"),
        )?;
        let mut yaml = format!(
            "updates:\n  enabled: true\n  server_url: \"{url}\"\n  product: {PRODUCT}\n  channel: {CHANNEL}\n  check_interval: 1h\n  auto_apply: false\n  trusted_keys: [/etc/limiquantix/update-key.pub]\n  service_manager: command\n  restart_command: [\"{service_sh}\", \"{root}\", \"restart\", \"{{service}}\"]\n  pidfile: \"/run/{{service}}.pid\"\n  api: {{listen: \"127.0.0.1:{api_port}\", token_file: /etc/limiquantix/api-token}}\n",
            url = server_url,
            service_sh = self.workspace.join(SERVICE_SH).display(),
            root = utf8(root)?,
        );
        if let Some(labels) = labels {
            yaml.push_str(&format!("  fleet: {{enroll_token_file: /etc/limiquantix/fleet-enroll-token, labels: {labels}}}\n"));
        }
        qx_core::fs::write_atomic(&at("/etc/limiquantix/node.yaml"), yaml.as_bytes())?;
        Ok(yaml)
    }

    /// Runs `qx-update --root HOST ARGS…` on the sandboxed host.
    fn agent(&self, args: &[&str]) -> anyhow::Result<()> {
        self.agent_on(&self.host, args)
    }

    /// Runs `qx-update --root ROOT ARGS…`.
    fn agent_on(&self, root: &Path, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["--root", utf8(root)?];
        all.extend_from_slice(args);
        run(&self.agent_bin, &all, &[])
    }

    /// The version the demo service runs on the host; an error unless it is `expected`.
    fn expect_running(&self, expected: &str) -> anyhow::Result<()> {
        let running = read_trimmed(&self.host_path("/data/lib/qx-demo/running-version"));
        if running != expected {
            bail!("the demo service runs {running:?}, not {expected}");
        }
        let health = Command::new(self.host_path("/data/bin/qx-demo"))
            .arg("--check")
            .env("QX_ROOT", &self.host)
            .output()
            .context("running the demo service's health check")?;
        println!(
            "qx-demo service runs {running}: {}",
            String::from_utf8_lossy(&health.stdout).trim()
        );
        Ok(())
    }

    /// Publishes 1.0.1, a hot fix of the service alone, and applies it while the service
    /// runs; checks that it runs 1.0.1.
    fn update_running_host(&self) -> anyhow::Result<()> {
        step("publish 1.0.1, a hot fix of the service alone with a delta from 1.0.0, and update the running host");
        self.publish(
            "1.0.1",
            "Hot fix: the service is replaced while it runs and restarted once.",
            &["qx-demo"],
        )?;
        self.show_channel()?;
        self.agent(&["check"])?;
        let pidfile = self.host_path("/run/qx-demo.pid");
        let before = read_trimmed(&pidfile);
        self.agent(&["apply", "--yes"])?;
        let after = read_trimmed(&pidfile);
        let log = std::fs::read_to_string(self.host_path(qx_core::update_log::DEFAULT_UPDATE_LOG))
            .unwrap_or_default();
        if !log.contains("delta for qx-demo") || !log.contains("rebuilt ") {
            bail!("the hot fix was downloaded whole: no delta was used");
        }
        self.agent(&["status"])?;
        println!("\nqx-demo service: pid {before} -> {after}");
        self.expect_running("1.0.1")?;
        println!(
            "update log: {}",
            self.host_path(qx_core::update_log::DEFAULT_UPDATE_LOG)
                .display()
        );
        Ok(())
    }

    /// Publishes a bad 1.0.2 (it installs and runs; the demo then yanks it) and applies it.
    fn bad_release(&self) -> anyhow::Result<()> {
        step("publish 1.0.2, a bad release, and install it on the host");
        self.publish(
            "1.0.2",
            "A bad release: it installs, and the demo then yanks it.",
            &["qx-demo"],
        )?;
        self.show_channel()?;
        self.agent(&["apply", "--yes"])?;
        self.expect_running("1.0.2")
    }

    /// Yanks 1.0.2 with `--revert`: the host on it goes back to the channel's current
    /// (docs/spec.md §8) as a normal transaction, recorded as `reverted`.
    fn yank_with_revert(&self) -> anyhow::Result<()> {
        step("yank 1.0.2 with --revert: hosts on it must go back to current");
        let args = [
            "yank",
            "1.0.2",
            "--revert",
            "--server",
            self.url.base(),
            "--product",
            PRODUCT,
            "--channel",
            CHANNEL,
            "--key",
            &self.key,
        ];
        run(&self.publish_bin, &args, &[("QX_PUBLISH_TOKEN", TOKEN)])?;
        self.show_channel()?;
        step("the host on 1.0.2 checks, goes back to 1.0.1 and records it");
        self.agent(&["check"])?;
        self.agent(&["apply", "--yes"])?;
        self.agent(&["status"])?;
        self.expect_running("1.0.1")?;
        let path = self.host_path(HISTORY_FILE);
        let last = history::read(&path, 1);
        if last.first().map(|e| e.outcome) != Some(Outcome::Reverted) {
            bail!("the last history entry is not a revert: {last:?}");
        }
        let text = std::fs::read_to_string(&path)?;
        println!("history ({}):", path.display());
        println!("  {}", text.lines().last().unwrap_or_default());
        step("checked again, the host on current is up to date");
        self.agent(&["check"])
    }

    /// Bundles 1.0.1 (`qx-publish bundle`) and checks it on a fresh host whose server is
    /// unreachable (docs/spec.md §12).
    fn offline_bundle(&self) -> anyhow::Result<()> {
        step("bundle 1.0.1 for an offline host and check the bundle there");
        let bundle = self.work.join("quantix-demo-1.0.1.bundle");
        let args = [
            "bundle",
            "1.0.1",
            "--server",
            self.url.base(),
            "--product",
            PRODUCT,
            "--channel",
            CHANNEL,
            "--key",
            &self.key,
            "--out",
            utf8(&bundle)?,
        ];
        run(&self.publish_bin, &args, &[])?;
        let offline = self.work.join("offline-host");
        self.write_host(&offline, UNREACHABLE_SERVER, free_port()?, None)?;
        println!(
            "an offline host under {} (its server_url, {UNREACHABLE_SERVER}, answers nothing)",
            offline.display()
        );
        self.agent_on(&offline, &["check", "--from", utf8(&bundle)?])
    }

    /// Starts the host daemon and waits for Ctrl-C.
    fn keep_running(&mut self) -> anyhow::Result<()> {
        step("the host daemon with its Updates page");
        let mut daemon = Command::new(&self.agent_bin)
            .args(["--root", utf8(&self.host)?, "daemon"])
            .spawn()
            .context("starting qx-update daemon")?;
        let api = SocketAddr::from(([127, 0, 0, 1], self.api_port));
        let ready = wait_for_port(api, "qx-update daemon", &mut daemon, LISTEN_WITHIN);
        self.background.0.push(("qx-update daemon".into(), daemon));
        ready?;
        let token = read_trimmed(&self.host_path("/etc/limiquantix/api-token"));
        println!("open https://{api}/ (self-signed certificate) and enter the token {token}");
        println!(
            "the fleet dashboard, with this host: {} (operator token {TOKEN})",
            self.url.ui()
        );
        println!(
            "publish another release with:\n  QX_PUBLISH_TOKEN={TOKEN} {} publish --spec {} --key {} --server {} --channel {CHANNEL} --release-version 1.0.3",
            self.publish_bin.display(),
            self.spec,
            self.key,
            self.url.base()
        );
        println!("press Ctrl-C to stop");
        loop {
            std::thread::park();
        }
    }

    /// Stops the demo service on every host the demo made.
    fn stop_service(&self) {
        for root in std::iter::once(&self.host).chain(rollout::extra_hosts(&self.work).iter()) {
            let _ = Command::new(self.workspace.join(SERVICE_SH))
                .arg(root)
                .args(["stop", "qx-demo"])
                .status();
        }
    }
}

/// A channel state in one line: what an operator reads after each change of the channel.
fn channel_line(s: &ChannelState, key_id: &str) -> String {
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let releases = list(s.releases.iter().map(|r| r.version.to_string()).collect());
    let revoked = list(
        s.revoked
            .iter()
            .map(|r| {
                let action = match r.action {
                    RevokeAction::Keep => "keep",
                    RevokeAction::Revert => "revert",
                };
                format!("{} ({action})", r.version)
            })
            .collect(),
    );
    format!(
        "channel state of {} {} on the server (signature by key {key_id} verified): seq {}, current {}; releases: {releases}; revoked: {revoked}; expires {}",
        s.product, s.channel, s.seq, s.current, s.expires
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use qx_core::channel::{ReleaseEntry, Revocation};
    use qx_core::{ChannelName, ProductName, Sha256};

    #[test]
    fn channel_line_names_seq_current_releases_and_revocations() {
        let version = |v: &str| v.parse().expect("version");
        let state = ChannelState {
            schema: 1,
            product: ProductName::new(PRODUCT).expect("product"),
            channel: ChannelName::new(CHANNEL).expect("channel"),
            seq: 4,
            issued: "2026-01-01T00:00:00Z".parse().expect("issued"),
            expires: "2026-01-31T00:00:00Z".parse().expect("expires"),
            current: version("1.0.1"),
            releases: vec![ReleaseEntry {
                version: version("1.0.1"),
                manifest_sha256: Sha256::of(b"manifest"),
            }],
            revoked: vec![Revocation {
                version: version("1.0.2"),
                action: RevokeAction::Revert,
            }],
            rollout: None,
        };
        let line = channel_line(&state, "ABCD");
        for part in [
            "quantix-demo dev",
            "key ABCD verified",
            "seq 4, current 1.0.1",
            "releases: 1.0.1;",
            "revoked: 1.0.2 (revert);",
        ] {
            assert!(line.contains(part), "{part:?} not in {line:?}");
        }
    }
}
