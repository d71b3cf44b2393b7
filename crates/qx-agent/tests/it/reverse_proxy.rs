//! The update server behind a reverse proxy under a base path (issue 16), with the proxy
//! example of crates/qx-server/README.md itself: a real nginx serving `/ota/` in front of a
//! real `qx-update-server`; a host checks and applies through it, and the dashboard's page and
//! assets load under the base path.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use qx_testkit::host::Lab;

use crate::support::host::{node_release, run_qx_update};
use crate::support::poll;

/// The nginx block of the server's README.
fn documented_server_block() -> String {
    let readme = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../qx-server/README.md"),
    )
    .expect("read the server's README");
    let start = readme.find("```nginx\n").expect("an nginx example") + "```nginx\n".len();
    let end = start + readme[start..].find("```").expect("its end");
    readme[start..end].to_owned()
}

/// The documented block on a loopback port, without TLS (the certificate is not what is
/// tested), proxying to `upstream` (`127.0.0.1:PORT`).
fn config(block: &str, port: u16, upstream: &str, dir: &Path) -> String {
    let server: String = block
        .lines()
        .filter(|l| !l.contains("ssl_certificate"))
        .map(|l| {
            if l.trim_start().starts_with("listen ") {
                format!("    listen 127.0.0.1:{port};")
            } else {
                l.replace("127.0.0.1:9000", upstream)
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let d = dir.display();
    format!(
        "daemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n{server}\n}}\n"
    )
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
#[ignore = "slow tier: needs nginx; `cargo xtask test` installs it and runs this"]
fn a_host_updates_through_the_documented_proxy_under_a_base_path() {
    let lab = Lab::new().expect("lab");
    crate::support::host::host_at_v1(&lab);
    node_release(&lab, "1.1.0");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let upstream = lab.server.url().trim_start_matches("http://").to_owned();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        config(&documented_server_block(), port, &upstream, dir.path()),
    )
    .expect("write nginx.conf");
    let nginx = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx (Debian package nginx) must be installed: cargo xtask test installs it");
    let _nginx = Nginx(nginx);
    let base = format!("http://127.0.0.1:{port}/ota");
    let health = format!("{base}/health");
    assert!(
        poll(Duration::from_secs(20), Duration::from_millis(50), || {
            reqwest::blocking::get(&health).is_ok_and(|r| r.status() == 200)
        }),
        "nginx did not answer on {base}: {}",
        std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
    );
    let mut c = lab.host_config();
    c.server_url = base.clone();
    lab.host.write_config(&c).expect("node.yaml");
    let out = run_qx_update(lab.host.root(), &["apply", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.1.0"));
    // The dashboard under the base path: the page, and the assets it names, relative to it.
    let page = reqwest::blocking::get(format!("{base}/ui"))
        .and_then(|r| r.text())
        .expect("the dashboard page");
    for asset in ["ui/style.css", "ui/common.js", "ui/app.js"] {
        assert!(
            page.contains(&format!("\"{asset}\"")),
            "{asset} not relative: {page}"
        );
        let r = reqwest::blocking::get(format!("{base}/{asset}")).expect("asset");
        assert_eq!(r.status(), 200, "{asset}");
    }
}
