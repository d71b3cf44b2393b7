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

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const TOKEN: &str = "demo-publish-token";
const PRODUCT: &str = "quantix-demo";

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

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(addr: SocketAddr, what: &str, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited at start ({st})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not accept connections on {addr} within 30 s")
}

fn step(title: &str) {
    println!("\n\x1b[1m==> {title}\x1b[0m");
}

fn run(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<()> {
    let shown: Vec<&str> = args.to_vec();
    println!(
        "$ {} {}",
        bin.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        shown.join(" ")
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

pub fn run_demo(keep: bool) -> anyhow::Result<()> {
    let ws = workspace();
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
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    let bin = |name: &str| target.join("debug").join(name);
    let (server_bin, publish_bin, agent_bin) =
        (bin("qx-update-server"), bin("qx-publish"), bin("qx-update"));

    let work = target.join("demo");
    if work.exists() {
        // A previous demo's service may still run from there.
        let _ = Command::new(ws.join("examples/quantix-demo/host/service.sh"))
            .arg(work.join("host"))
            .args(["stop", "qx-demo"])
            .status();
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let releases = work.join("releases");
    let host = work.join("host");
    let keys = work.join("keys");
    for d in [&releases, &host, &keys] {
        std::fs::create_dir_all(d)?;
    }
    let spec = ws.join("examples/quantix-demo/release.toml");
    let spec = spec.to_str().context("workspace path is not UTF-8")?;
    let key = keys.join("qx-publish.key");
    let key_s = key.to_str().context("path is not UTF-8")?;
    let mut bg = Background(Vec::new());

    step("a signing key for the publisher");
    run(
        &publish_bin,
        &["keygen", "--out", keys.to_str().context("path")?],
        &[],
    )?;

    step("the update server, with an empty release directory");
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let url = format!("http://{addr}");
    let mut server = Command::new(&server_bin)
        .env("RELEASE_DIR", &releases)
        .env("LISTEN_ADDR", addr.to_string())
        .env("PUBLISH_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .spawn()
        .context("starting qx-update-server")?;
    wait_for_port(addr, "qx-update-server", &mut server)?;
    bg.0.push(("qx-update-server".into(), server));
    println!(
        "qx-update-server listens on {url} (releases in {})",
        releases.display()
    );

    let publish = |version: &str, notes: &str| -> anyhow::Result<()> {
        run(
            &publish_bin,
            &[
                "publish",
                "--spec",
                spec,
                "--key",
                key_s,
                "--server",
                &url,
                "--channel",
                "dev",
                "--release-version",
                version,
                "--notes",
                notes,
            ],
            &[("QX_PUBLISH_TOKEN", TOKEN)],
        )
    };
    step("publish release 1.0.0 of the example product to the dev channel");
    publish(
        "1.0.0",
        "First release: the demo service, its page and its database.",
    )?;

    step("the server's API, answering with the signed release");
    for (what, args) in [
        ("health", vec!["-s".to_string(), format!("{url}/health")]),
        (
            "channels",
            vec!["-s".into(), format!("{url}/api/v1/channels")],
        ),
        (
            "manifest headers (signature, strong ETag)",
            vec![
                "-s".into(),
                "-D".into(),
                "-".into(),
                "-o".into(),
                "/dev/null".into(),
                format!("{url}/api/v1/{PRODUCT}/manifest?channel=dev"),
            ],
        ),
        (
            "releases",
            vec![
                "-s".into(),
                format!("{url}/api/v1/{PRODUCT}/releases?channel=dev"),
            ],
        ),
    ] {
        println!("-- {what}");
        let out = Command::new("curl").args(&args).output();
        match out {
            Ok(o) => println!("{}", String::from_utf8_lossy(&o.stdout).trim_end()),
            Err(e) => println!("(curl is not available: {e})"),
        }
    }

    step("a sandboxed host: node.yaml, the trusted key, a service manager");
    let root = host.to_str().context("path is not UTF-8")?;
    for d in ["etc/limiquantix", "data/bin", "run", "var/log"] {
        std::fs::create_dir_all(host.join(d))?;
    }
    std::fs::copy(
        keys.join("qx-publish.pub"),
        host.join("etc/limiquantix/update-key.pub"),
    )?;
    let service_sh = ws.join("examples/quantix-demo/host/service.sh");
    let api_port = free_port()?;
    let yaml = format!(
        "updates:\n  enabled: true\n  server_url: \"{url}\"\n  product: {PRODUCT}\n  channel: dev\n  check_interval: 1h\n  auto_apply: false\n  trusted_keys: [/etc/limiquantix/update-key.pub]\n  service_manager: command\n  restart_command: [\"{}\", \"{root}\", \"restart\", \"{{service}}\"]\n  pidfile: \"/run/{{service}}.pid\"\n  api: {{listen: \"127.0.0.1:{api_port}\", token_file: /etc/limiquantix/api-token}}\n",
        service_sh.display()
    );
    let config = host.join("etc/limiquantix/node.yaml");
    std::fs::write(&config, &yaml)?;
    print!("{}:\n{yaml}", config.display());

    let agent = |args: &[&str]| -> anyhow::Result<()> {
        let mut all = vec!["--root", root];
        all.extend_from_slice(args);
        run(&agent_bin, &all, &[])
    };
    step("install 1.0.0 on the host");
    agent(&["check"])?;
    agent(&["apply", "--yes"])?;
    agent(&["status"])?;

    step("publish 1.0.1 and update the running host");
    publish(
        "1.0.1",
        "Hot fix: the service is replaced while it runs and restarted once.",
    )?;
    agent(&["check"])?;
    let before = std::fs::read_to_string(host.join("run/qx-demo.pid")).unwrap_or_default();
    agent(&["apply", "--yes"])?;
    let after = std::fs::read_to_string(host.join("run/qx-demo.pid")).unwrap_or_default();
    let running =
        std::fs::read_to_string(host.join("data/lib/qx-demo/running-version")).unwrap_or_default();
    agent(&["status"])?;
    println!(
        "\nqx-demo service: pid {} -> {}, running version {}",
        before.trim(),
        after.trim(),
        running.trim()
    );
    if running.trim() != "1.0.1" {
        bail!("the demo service does not run 1.0.1 after the update");
    }
    println!(
        "update log: {}",
        host.join("var/log/quantix/update.log").display()
    );

    if keep {
        step("the host daemon with its Updates page");
        let mut daemon = Command::new(&agent_bin)
            .args(["--root", root, "daemon"])
            .spawn()
            .context("starting qx-update daemon")?;
        let api: SocketAddr = format!("127.0.0.1:{api_port}").parse()?;
        wait_for_port(api, "qx-update daemon", &mut daemon)?;
        bg.0.push(("qx-update daemon".into(), daemon));
        let token =
            std::fs::read_to_string(host.join("etc/limiquantix/api-token")).unwrap_or_default();
        println!(
            "open https://{api}/ (self-signed certificate) and enter the token {}",
            token.trim()
        );
        println!("publish another release with:\n  QX_PUBLISH_TOKEN={TOKEN} {} publish --spec {spec} --key {key_s} --server {url} --channel dev --release-version 1.0.2", publish_bin.display());
        println!("press Ctrl-C to stop");
        loop {
            std::thread::park();
        }
    }
    let _ = Command::new(&service_sh)
        .args([root, "stop", "qx-demo"])
        .status();
    println!("\ndemo finished: everything is under {}", work.display());
    Ok(())
}
