//! Issue 11 (hardening), the agent's part: a relative `--root`, credentials in `server_url`,
//! terminal escapes in server-provided text, host API body validation and size limits,
//! loose permissions on the files that decide what runs as root, symbolic-link chains that
//! leave the tree, install paths the agent's configuration allows.

use qx_testkit::host::Lab;
use qx_testkit::release::ComponentSpec;
use serde_json::json;

use crate::support::api::{daemon_lab, error_body, post_h2, ApiServer, TOKEN};
use crate::support::host::{
    agent, dead_url, host_at_v1, node, node_release, qx_update, run_qx_update, update_log,
};
use crate::support::runtime;

/// A migration that records it ran, in the host root it is given.
const MARK: &str = "#!/bin/sh\nset -e\necho migrated > \"$QX_ROOT/run/migrated\"\n";

#[test]
fn relative_root_runs_migrations() {
    let lab = Lab::new().unwrap();
    lab.publish(&lab.release("1.0.0").component(ComponentSpec::migrations(
        "db-migrations",
        "/data/lib/quantix-migrations",
        vec![("mark".into(), MARK.as_bytes().to_vec(), 0o755)],
        vec!["mark".into()],
    )))
    .unwrap();
    let root = lab.host.root();
    std::fs::create_dir_all(root.join("run")).unwrap();
    let out = qx_update(root.file_name().unwrap().as_ref())
        .current_dir(root.parent().unwrap())
        .args(["apply", "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(root.join("run/migrated")).unwrap(),
        "migrated\n"
    );
}

/// The lab's configuration with `qxuser:s3cret@` in `server_url` (pointing at `url`).
fn with_credentials(lab: &Lab, url: &str) {
    let mut c = lab.host_config();
    c.server_url = url.replacen("://", "://qxuser:s3cret@", 1);
    lab.host.write_config(&c).unwrap();
}

#[test]
fn server_url_credentials_are_redacted_in_errors_and_log_lines() {
    let lab = Lab::new().unwrap();
    with_credentials(&lab, &dead_url());
    let out = qx_update(lab.host.root())
        .env("QX_LOG", "info")
        .arg("check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("***@127.0.0.1"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[test]
fn server_url_credentials_are_redacted_in_the_update_log() {
    let lab = Lab::new().unwrap();
    with_credentials(&lab, lab.server.url());
    host_at_v1(&lab);
    node_release(&lab, "1.1.0");
    let out = run_qx_update(lab.host.root(), &["apply", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    let log = update_log(lab.host.root());
    assert!(log.contains("***@127.0.0.1"), "{log}");
    assert!(!log.contains("s3cret"), "{log}");
}

#[test]
fn release_notes_terminal_escapes_are_escaped_in_check_output_and_update_log() {
    let lab = Lab::new().unwrap();
    host_at_v1(&lab);
    let mut spec = lab
        .release("1.1.0")
        .component(node("1.1.0").service("quantix-node"));
    spec.release_notes = "fixes\x1b[2J\x1b]0;pwned\x07 done\u{9b}31m".into();
    lab.publish(&spec).unwrap();

    let out = run_qx_update(lab.host.root(), &["check"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("fixes\\u{1b}[2J\\u{1b}]0;pwned\\u{7} done\\u{9b}31m"),
        "{stdout}"
    );
    assert!(!stdout.contains(['\x1b', '\x07', '\u{9b}']), "{stdout:?}");

    let out = run_qx_update(lab.host.root(), &["apply", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    let log = update_log(lab.host.root());
    assert!(log.contains("notes | fixes\\u{1b}[2J"), "{log}");
    assert!(!log.contains(['\x1b', '\x07', '\u{9b}']), "{log:?}");
}

/// Apply bodies that must be refused before an apply starts: 400 with a JSON error whose
/// text contains `expect`, and the host unchanged.
#[test]
fn api_apply_refuses_bad_bodies_before_starting() {
    let cases: [(&str, serde_json::Value, &str); 6] = [
        ("empty array", json!([]), "must be a JSON object"),
        (
            "nested array",
            json!([["qx-demo"]]),
            "must be a JSON object",
        ),
        ("string", json!("qx-node"), "must be a JSON object"),
        (
            "unknown component",
            json!({"components": ["qx-demo"]}),
            "component qx-demo is not in release 1.1.0",
        ),
        (
            "mismatched allow_downgrade",
            json!({"allow_downgrade": "0.9.0"}),
            "0.9.0",
        ),
        (
            "allow_downgrade not a version",
            json!({"allow_downgrade": "latest"}),
            "\"allow_downgrade\" \"latest\" is not a version",
        ),
    ];
    let lab = daemon_lab(None, None, "");
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        for (name, body, expect) in &cases {
            let resp = api
                .post("/api/v1/updates/apply")
                .json(body)
                .send()
                .await
                .unwrap();
            let (status, body) = error_body(resp).await;
            assert_eq!(status, 400, "{name}: {body}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.contains(expect), "{name}: {body}");
            assert!(body["details"].is_array(), "{name}: {body}");
            let state = api.runner.agent().status().state;
            assert_eq!(state.name(), "idle", "{name}: no apply started");
        }
        assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
        api.shutdown().await;
    });
}

/// An apply body over the limit gets a JSON 413, over HTTP/1.1 and over HTTP/2.
#[test]
fn api_oversized_body_is_json_413_on_http1_and_http2() {
    let lab = daemon_lab(None, None, "");
    // Valid JSON, four times the limit.
    let body = format!("{{\"components\": [\"{}\"]}}", "a".repeat(256 << 10));
    runtime().block_on(async {
        let api = ApiServer::start(agent(&lab), TOKEN);
        let http1 = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .no_proxy()
            .http1_only()
            .build()
            .unwrap();
        let resp = http1
            .post(api.url("/api/v1/updates/apply"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_11);
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let h2 = post_h2(&api.base, "/api/v1/updates/apply", body.into_bytes()).await;
        for (name, (status, text)) in [
            (
                "HTTP/2",
                (h2.0, String::from_utf8_lossy(&h2.1).into_owned()),
            ),
            ("HTTP/1.1", (status, text)),
        ] {
            assert_eq!(status, 413, "{name}: {text}");
            let json: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {text}"));
            let error = json["error"].as_str().unwrap_or_default();
            assert!(error.contains("too large"), "{name}: {json}");
            assert!(json["details"].is_array(), "{name}: {json}");
        }
        assert_eq!(lab.host.version("qx-node").as_deref(), Some("1.0.0"));
        api.shutdown().await;
    });
}

/// `qx-update status` on the lab's host after `change` made one of its files unsafe: refused
/// (exit 1), the message naming the file and the fix.
fn refused_after(change: impl FnOnce(&Lab), file: &str, fix: &str) {
    let lab = Lab::new().unwrap();
    change(&lab);
    let out = run_qx_update(lab.host.root(), &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let path = lab.host.path(file).display().to_string();
    assert!(stderr.contains(&path), "{stderr}");
    assert!(stderr.contains(&format!("{fix} {path}")), "{stderr}");
}

fn chmod(lab: &Lab, file: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let p = lab.host.path(file);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn world_writable_config_is_refused() {
    let file = "/etc/limiquantix/node.yaml";
    refused_after(|lab| chmod(lab, file, 0o666), file, "chmod go-w");
}

#[test]
fn group_writable_trusted_key_file_is_refused() {
    let file = "/etc/limiquantix/update-key.pub";
    refused_after(|lab| chmod(lab, file, 0o664), file, "chmod go-w");
}

#[test]
fn config_not_owned_by_root_is_refused() {
    let file = "/etc/limiquantix/node.yaml";
    let chown = |lab: &Lab| {
        std::os::unix::fs::chown(lab.host.path(file), Some(4242), Some(4242)).unwrap();
    };
    refused_after(chown, file, "chown root");
}

#[test]
fn world_writable_api_token_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api-token");
    std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o622)).unwrap();
    let Err(err) = qx_agent::daemon::tls::load_or_create_token(&path) else {
        panic!("a world-writable token file was accepted");
    };
    let text = err.to_string();
    assert!(text.contains("API token file"), "{text}");
    assert!(
        text.contains(&format!("chmod go-w {}", path.display())),
        "{text}"
    );
}

/// A directory component `ui` at `/data/share/ui` whose archive holds `entries`.
fn ui_release(lab: &Lab, version: &str, entries: &[qx_testkit::release::TarEntry]) {
    let mut c = ComponentSpec::tree("ui", "/data/share/ui", Vec::new());
    c.content = qx_testkit::release::Content::Raw(qx_testkit::release::tar_zst(entries).unwrap());
    lab.publish(&lab.release(version).component(c)).unwrap();
}

fn link(path: &str, target: &str) -> qx_testkit::release::TarEntry {
    qx_testkit::release::TarEntry::Symlink {
        path: path.into(),
        target: target.into(),
    }
}

#[test]
fn symlink_chain_escaping_the_tree_is_refused() {
    use qx_agent::transaction::extract::ExtractError;
    let lab = Lab::new().unwrap();
    // `x/up -> ..`, `p1 -> x/up/..`, `p2 -> p1/..`, … `p9 -> p8/..`: each target is inside
    // the tree read as text; `p9` is the host's `/` read as the kernel reads it.
    let mut entries = vec![
        qx_testkit::release::TarEntry::Dir { path: "x".into() },
        link("x/up", ".."),
        link("p1", "x/up/.."),
    ];
    entries.extend((2..=9).map(|i| link(&format!("p{i}"), &format!("p{}/..", i - 1))));
    ui_release(&lab, "1.0.0", &entries);
    let err = agent(&lab)
        .apply(&qx_agent::ApplyOptions::default())
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        matches!(
            &err,
            qx_agent::AgentError::UnsafeArchive(ExtractError::LinkEscapes { entry, .. }) if entry == "p1"
        ),
        "{text}"
    );
    assert!(
        text.contains("\"p1\"") && text.contains("x/up/.."),
        "{text}"
    );
    assert!(!lab.host.path("/data/share/ui").exists());
    assert_eq!(lab.host.version("ui"), None);
}

#[test]
fn symlink_chains_inside_the_tree_still_install() {
    let lab = Lab::new().unwrap();
    let entries = [
        qx_testkit::release::TarEntry::File {
            path: "lib/v2/tool".into(),
            bytes: b"v2\n".to_vec(),
            mode: 0o644,
        },
        link("lib/cur", "v2"),
        link("bin/tool", "../lib/cur/tool"),
        link("a/b/up", "../.."),
        link("a/b/tool", "up/bin/tool"),
    ];
    ui_release(&lab, "1.0.0", &entries);
    agent(&lab)
        .apply(&qx_agent::ApplyOptions::default())
        .unwrap();
    let installed = lab.host.path("/data/share/ui");
    for p in ["bin/tool", "a/b/tool", "lib/cur/tool"] {
        assert_eq!(std::fs::read(installed.join(p)).unwrap(), b"v2\n", "{p}");
    }
    assert_eq!(lab.host.version("ui").as_deref(), Some("1.0.0"));
}

/// A directory component `vendor` installed at `path`, one file `tool` in it.
fn vendor_release(lab: &Lab, version: &str, path: &str) -> qx_testkit::release::ReleaseSpec {
    let files = vec![("tool".to_owned(), b"vendor\n".to_vec(), 0o755)];
    lab.release(version)
        .component(ComponentSpec::tree("vendor", path, files))
}

#[test]
fn allow_install_paths_lets_a_release_replace_an_allowed_system_directory() {
    let lab = Lab::with("quantix-os", "dev", "  allow_install_paths: [/opt]\n").unwrap();
    lab.publish(&vendor_release(&lab, "1.0.0", "/opt")).unwrap();
    agent(&lab)
        .apply(&qx_agent::ApplyOptions::default())
        .unwrap();
    assert_eq!(lab.host.read("/opt/tool").unwrap(), b"vendor\n");
    assert_eq!(lab.host.version("vendor").as_deref(), Some("1.0.0"));

    // The same release on a host that does not allow /opt: refused, saying how to allow it.
    let plain = Lab::new().unwrap();
    plain
        .publish(&vendor_release(&plain, "1.0.0", "/opt"))
        .unwrap();
    let err = agent(&plain)
        .apply(&qx_agent::ApplyOptions::default())
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        matches!(err, qx_agent::AgentError::InstallPathRefused { .. }),
        "{text}"
    );
    assert!(
        text.contains("/opt is a system directory") && text.contains("updates.allow_install_paths"),
        "{text}"
    );
    assert!(!plain.host.path("/opt/tool").exists());
    assert_eq!(plain.host.version("vendor"), None);
}

#[test]
fn allow_install_paths_never_unlocks_the_agents_own_paths() {
    let extra = "  allow_install_paths: [/etc, /data, /var/log]\n";
    let lab = Lab::with("quantix-os", "dev", extra).unwrap();
    let agent = agent(&lab);
    let allowed = &agent.config().allow_install_paths;
    assert_eq!(allowed.len(), 3);
    for own in [
        "/etc",
        "/etc/limiquantix",
        "/data",
        "/data/updates/x",
        "/var/log/quantix",
    ] {
        let path = qx_core::InstallPath::new(own).unwrap();
        let why = qx_core::manifest::install_path_refusal(&path, allowed)
            .unwrap_or_else(|| panic!("{own} was allowed"));
        assert!(why.contains("agent's own"), "{own}: {why}");
        // No release can even carry it: the manifest rules refuse it everywhere.
        let built = vendor_release(&lab, "1.0.0", own).sign(&lab.key);
        let refused = match built {
            Err(e) => e.to_string(),
            Ok(r) => r
                .publish(lab.server.url(), &lab.token)
                .unwrap_err()
                .to_string(),
        };
        assert!(refused.contains("agent's own"), "{own}: {refused}");
    }
    // Below an allowed prefix but clear of the agent's paths: still fine.
    lab.publish(&vendor_release(&lab, "1.0.0", "/var/log/vendor"))
        .unwrap();
    agent.apply(&qx_agent::ApplyOptions::default()).unwrap();
    assert_eq!(lab.host.read("/var/log/vendor/tool").unwrap(), b"vendor\n");
}

#[test]
fn allow_install_paths_refuses_a_relative_entry() {
    let lab = Lab::with("quantix-os", "dev", "  allow_install_paths: [opt]\n").unwrap();
    let out = run_qx_update(lab.host.root(), &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("updates.allow_install_paths"), "{stderr}");
}

/// `qx-update status | head`: a reader that goes away before the output is written is no
/// panic (Rust ignores SIGPIPE, so every write there fails with EPIPE); the command ends as
/// it would have.
#[test]
fn output_into_a_closed_pipe_is_not_a_panic() {
    let lab = Lab::new().unwrap();
    crate::support::host::node_release(&lab, "1.0.0");
    for args in [&["status"][..], &["--json", "status"], &["check"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = crate::support::host::qx_update(lab.host.root())
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}
