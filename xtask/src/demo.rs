//! `cargo xtask demo`: the whole update loop on this machine, on embedded defaults.
//!
//! 1. builds the three programs;
//! 2. makes a signing key, starts `qx-update-server` on a free loopback port with an empty
//!    release directory;
//! 3. publishes release 1.0.0 of the example product (`examples/quantix-demo`) with
//!    `qx-publish`;
//! 4. creates a sandboxed host under `target/demo/host` (`--root`), and installs 1.0.0 there
//!    with `qx-update apply`: migrations run, the demo service starts;
//! 5. publishes 1.0.1, shows `qx-update check`, applies it (the running service is replaced
//!    and restarted, the update verified by its health check), and prints `qx-update status`.
//!
//! With `--keep`, the server and the host's daemon keep running afterwards, so the host page
//! can be opened in a browser; Ctrl-C stops everything.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use qx_core::api::ServerUrl;
use qx_core::fs::under_root;

use crate::process::{free_port, target_dir, wait_for_port, workspace_root, UpdateServer};

const TOKEN: &str = "demo-publish-token";
const PRODUCT: &str = "quantix-demo";
const CHANNEL: &str = "dev";
/// How long the server and the daemon may take to listen.
const LISTEN_WITHIN: Duration = Duration::from_secs(30);
/// The example product's service script (`service.sh ROOT start|stop|restart SERVICE`).
const SERVICE_SH: &str = "examples/quantix-demo/host/service.sh";

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
    )?;
    demo.show_api();
    demo.prepare_host()?;
    step("install 1.0.0 on the host");
    demo.agent(&["check"])?;
    demo.agent(&["apply", "--yes"])?;
    demo.agent(&["status"])?;
    demo.update_running_host()?;
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
            // A previous demo's service may still run from there.
            let _ = Command::new(workspace.join(SERVICE_SH))
                .arg(&host)
                .args(["stop", "qx-demo"])
                .status();
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

    fn publish(&self, version: &str, notes: &str) -> anyhow::Result<()> {
        let args = [
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
        run(&self.publish_bin, &args, &[("QX_PUBLISH_TOKEN", TOKEN)])
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

    /// The host's directories, its configuration and the trusted key.
    fn prepare_host(&mut self) -> anyhow::Result<()> {
        step("a sandboxed host: node.yaml, the trusted key, a service manager");
        for d in ["/etc/limiquantix", "/data/bin", "/run", "/var/log"] {
            std::fs::create_dir_all(self.host_path(d))?;
        }
        std::fs::copy(
            self.work.join("keys/qx-publish.pub"),
            self.host_path("/etc/limiquantix/update-key.pub"),
        )?;
        self.api_port = free_port()?;
        let yaml = format!(
            "updates:\n  enabled: true\n  server_url: \"{url}\"\n  product: {PRODUCT}\n  channel: {CHANNEL}\n  check_interval: 1h\n  auto_apply: false\n  trusted_keys: [/etc/limiquantix/update-key.pub]\n  service_manager: command\n  restart_command: [\"{service_sh}\", \"{root}\", \"restart\", \"{{service}}\"]\n  pidfile: \"/run/{{service}}.pid\"\n  api: {{listen: \"127.0.0.1:{api_port}\", token_file: /etc/limiquantix/api-token}}\n",
            url = self.url.base(),
            service_sh = self.workspace.join(SERVICE_SH).display(),
            root = utf8(&self.host)?,
            api_port = self.api_port,
        );
        let config = self.host_path("/etc/limiquantix/node.yaml");
        qx_core::fs::write_atomic(&config, yaml.as_bytes())?;
        print!("{}:\n{yaml}", config.display());
        Ok(())
    }

    /// Runs `qx-update --root HOST ARGS…`.
    fn agent(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["--root", utf8(&self.host)?];
        all.extend_from_slice(args);
        run(&self.agent_bin, &all, &[])
    }

    /// Publishes 1.0.1 and applies it while the service runs; checks that it runs 1.0.1.
    fn update_running_host(&self) -> anyhow::Result<()> {
        step("publish 1.0.1 and update the running host");
        self.publish(
            "1.0.1",
            "Hot fix: the service is replaced while it runs and restarted once.",
        )?;
        self.agent(&["check"])?;
        let pidfile = self.host_path("/run/qx-demo.pid");
        let before = read_trimmed(&pidfile);
        self.agent(&["apply", "--yes"])?;
        let after = read_trimmed(&pidfile);
        let running = read_trimmed(&self.host_path("/data/lib/qx-demo/running-version"));
        self.agent(&["status"])?;
        println!("\nqx-demo service: pid {before} -> {after}, running version {running}");
        if running != "1.0.1" {
            bail!("the demo service does not run 1.0.1 after the update");
        }
        println!(
            "update log: {}",
            self.host_path(qx_core::update_log::DEFAULT_UPDATE_LOG)
                .display()
        );
        Ok(())
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
            "publish another release with:\n  QX_PUBLISH_TOKEN={TOKEN} {} publish --spec {} --key {} --server {} --channel {CHANNEL} --release-version 1.0.2",
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

    fn stop_service(&self) {
        let _ = Command::new(self.workspace.join(SERVICE_SH))
            .arg(&self.host)
            .args(["stop", "qx-demo"])
            .status();
    }
}
