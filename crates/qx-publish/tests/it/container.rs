//! The server's container image and compose file (`packaging/container/`), for real: podman
//! builds the image from the dist of `cargo xtask dist`, `podman-compose up -d` starts it on
//! a free loopback port with the publish token from a file (a compose secret), the image's
//! health check answers, the dist's static `qx-publish` publishes a release to it and the
//! dist's static `qx-update` installs it on a sandboxed host, both reaching the server by the
//! name `localhost` (host-name lookup in the static programs). `podman-compose down -v` and
//! the image's removal run also when the test fails (a drop guard).
//!
//! Podman runs as this machine allows (../shared/reference/containers): vfs storage in a
//! temporary directory of the test's own, the runc runtime, `default_ulimits = []`; the
//! settings reach podman and podman-compose through `CONTAINERS_CONF` and
//! `CONTAINERS_STORAGE_CONF`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use qx_testkit::cmd::run;
use qx_testkit::host::{HostConfig, TestHost};

use crate::support::{keygen, TOKEN};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Podman's settings and storage for this test alone.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("qx-podman-")
            .tempdir()
            .expect("tempdir");
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\n",
        )
        .expect("containers.conf");
        std::fs::write(
            dir.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n",
                dir.path().display()
            ),
        )
        .expect("storage.conf");
        Self { dir }
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            )
            .stdin(std::process::Stdio::null());
        c
    }
}

/// The image and the compose project, removed on drop.
struct Deployment<'a> {
    podman: &'a Podman,
    project: String,
    image: String,
    port: u16,
    token_file: PathBuf,
}

impl Deployment<'_> {
    fn compose(&self, args: &[&str]) -> Command {
        let mut c = self.podman.cmd("podman-compose");
        c.arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(repo().join("packaging/container/compose.yaml"))
            .args(args)
            .env("QX_IMAGE", &self.image)
            .env("QX_PORT", self.port.to_string())
            .env("QX_TOKEN_FILE", &self.token_file);
        c
    }

    fn container(&self) -> String {
        format!("{}_qx-update-server_1", self.project)
    }

    fn volume(&self) -> String {
        format!("{}_releases", self.project)
    }

    fn base(&self) -> String {
        format!("http://localhost:{}", self.port)
    }
}

impl Drop for Deployment<'_> {
    fn drop(&mut self) {
        // Each step on its own: what failed to start or was never made is skipped.
        let _ = self.compose(&["down", "-v"]).output();
        let podman = |args: &[&str]| self.podman.cmd("podman").args(args).output();
        let _ = podman(&["rm", "-f", &self.container()]);
        let _ = podman(&["volume", "rm", "-f", &self.volume()]);
        let _ = podman(&["rmi", "-f", &self.image]);
        let _ = podman(&["network", "rm", "-f", &format!("{}_default", self.project)]);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A one-file release spec of a product of its own.
fn write_spec(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("hello.txt"), "deployed through the container\n").expect("source");
    let spec = dir.join("release.toml");
    std::fs::write(
        &spec,
        "product = \"deploy-check\"\nversion = \"1.0.0\"\nchannel = \"stable\"\n\n\
         [[component]]\nname = \"hello\"\nsource = \"hello.txt\"\n\
         install_path = \"/data/share/hello.txt\"\npermissions = \"0644\"\n",
    )
    .expect("spec");
    spec
}

#[test]
#[ignore = "slow tier: podman (root), the dist of `cargo xtask dist`"]
fn the_compose_deployment_serves_publishes_and_installs() {
    let dist = qx_testkit::dist::dir();
    let podman = Podman::new();
    let work = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let token_file = work.path().join("publish-token");
    std::fs::write(&token_file, TOKEN).expect("token file");
    // Readable by the image's user only (uid 10001), as compose.yaml says.
    std::os::unix::fs::chown(&token_file, Some(10001), Some(10001)).expect("chown the token file");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o400))
        .expect("chmod the token file");
    let deployment = Deployment {
        podman: &podman,
        project: format!("qxdeploy{port}"),
        image: format!("localhost/qx-update-server:test{port}"),
        port,
        token_file,
    };

    run(podman
        .cmd("podman")
        .args(["build", "--format", "docker", "-t", &deployment.image, "-f"])
        .arg(repo().join("packaging/container/Containerfile"))
        .arg(&dist));
    let config = run(podman.cmd("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{.Config.Healthcheck.Test}} {{.Config.ExposedPorts}}",
        &deployment.image,
    ]));
    assert!(config.starts_with("10001:10001 "), "{config}");
    assert!(config.contains("qx-update-server health"), "{config}");
    assert!(config.contains("9000/tcp"), "{config}");

    run(&mut deployment.compose(&["up", "-d"]));
    let health = format!("http://127.0.0.1:{port}/health");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let up = qx_testkit::wait::poll(Duration::from_secs(60), Duration::from_millis(250), || {
        client
            .get(&health)
            .send()
            .is_ok_and(|r| r.status().is_success())
    });
    if !up {
        let logs = podman
            .cmd("podman")
            .args(["logs", &deployment.container()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default();
        panic!("the server did not answer {health} within 60 s:\n{logs}");
    }
    // The image's own health check, as podman runs it (no shell in the image).
    run(podman
        .cmd("podman")
        .args(["healthcheck", "run", &deployment.container()]));

    // The token is the file's, not the built-in development token.
    let refused = client
        .post(qx_core::api::ServerUrl::new(&deployment.base()).publish("deploy-check"))
        .bearer_auth(qx_server::config::DEFAULT_TOKEN)
        .send()
        .expect("a publish with the default token");
    assert_eq!(refused.status().as_u16(), 401);

    let keys = work.path().join("keys");
    keygen(&keys);
    let spec = write_spec(work.path());
    run(Command::new(dist.join("bin/qx-publish"))
        .arg("publish")
        .arg("--spec")
        .arg(&spec)
        .arg("--key")
        .arg(keys.join("qx-publish.key"))
        .args(["--server", &deployment.base(), "--channel", "stable"])
        .env("QX_PUBLISH_TOKEN", TOKEN));

    let host = TestHost::new().expect("host");
    let trusted = std::fs::read_to_string(keys.join("qx-publish.pub")).expect("public key");
    let config = host
        .write_config(&HostConfig::new(
            &deployment.base(),
            "deploy-check",
            "stable",
            &trusted,
        ))
        .expect("node.yaml");
    run(Command::new(dist.join("bin/qx-update"))
        .arg("--root")
        .arg(host.root())
        .arg("--config")
        .arg(&config)
        .args(["apply", "--yes"]));
    assert_eq!(
        host.read("/data/share/hello.txt")
            .expect("the installed file"),
        b"deployed through the container\n"
    );

    // The releases are in the named volume, and `down -v` removes it.
    let volumes = run(podman
        .cmd("podman")
        .args(["volume", "ls", "--format", "{{.Name}}"]));
    assert!(
        volumes.lines().any(|v| v == deployment.volume()),
        "{volumes}"
    );
    run(&mut deployment.compose(&["down", "-v"]));
    let volumes = run(podman
        .cmd("podman")
        .args(["volume", "ls", "--format", "{{.Name}}"]));
    assert!(
        !volumes.lines().any(|v| v == deployment.volume()),
        "{volumes}"
    );
}
