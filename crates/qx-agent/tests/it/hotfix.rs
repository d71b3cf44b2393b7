//! Complete releases (docs/spec.md §8): a hot fix changes one component and carries the others
//! over from `current` with their version and the same artifact bytes (published without
//! them: the server links them). A fresh host installs every component of `current`; a host
//! on the previous release updates only the changed component and downloads nothing else
//! (counted at a proxy in front of the real server). And old agents: a server with a channel
//! state still serves `current` on the manifest endpoint, so the manifest-only path of an
//! agent that knows no channel states installs `current`, not the newest upload.

use qx_agent::code;
use qx_core::channel::ChannelState;
use qx_testkit::channel::{sign, state_of};
use qx_testkit::host::{demo_binary, Lab, TestHost};
use qx_testkit::proxy::FaultProxy;
use qx_testkit::release::{BuiltRelease, ComponentSpec};

use crate::support::host::{history, node_release, run_qx_update};
use crate::support::hostile::{Canned, HostileServer};

const MIGRATIONS: &str = "qx-demo-migrations";
const MIGRATIONS_ARTIFACT: &str = "qx-demo-migrations.tar.zst";

fn migrations() -> ComponentSpec {
    ComponentSpec::migrations(
        MIGRATIONS,
        "/data/lib/qx-demo-migrations",
        vec![(
            "migrate.sh".into(),
            b"#!/bin/sh\necho schema 1\n".to_vec(),
            0o755,
        )],
        vec!["./migrate.sh".into()],
    )
}

/// The service binary of `version`, requiring the migrations of 1.0.0.
fn demo(version: &str) -> ComponentSpec {
    ComponentSpec::file(
        "qx-demo",
        "/data/bin/qx-demo",
        demo_binary(version).unwrap(),
    )
    .service("quantix-demo")
    .requires(MIGRATIONS, "1.0.0")
}

/// 1.0.0: the binary and its migrations, published whole.
fn release_1_0_0(lab: &Lab) -> BuiltRelease {
    lab.publish(
        &lab.release("1.0.0")
            .component(demo("1.0.0"))
            .component(migrations()),
    )
    .unwrap()
}

/// The hot fix 1.0.1: a new binary; the migrations carried over from `previous` (same entry:
/// version 1.0.0, same SHA-256 and size), published without their artifact.
fn hot_fix_1_0_1(lab: &Lab, previous: &BuiltRelease) -> BuiltRelease {
    let mut r = lab
        .release("1.0.1")
        .component(demo("1.0.1"))
        .component(migrations())
        .build()
        .unwrap();
    let carried = previous.manifest.component(MIGRATIONS).unwrap().clone();
    for c in &mut r.manifest.components {
        if c.name.as_str() == MIGRATIONS {
            *c = carried.clone();
        }
    }
    r.manifest.validate().unwrap();
    r.manifest_bytes = r.manifest.to_bytes();
    r.signature = lab.key.sign(&r.manifest_bytes).unwrap();
    let mut upload = r.clone();
    upload.artifacts.retain(|(n, _)| n != MIGRATIONS_ARTIFACT);
    let (status, body) = upload.publish_raw(lab.server.url(), &lab.token).unwrap();
    assert_eq!(status, 201, "{body}");
    assert!(body.contains(MIGRATIONS_ARTIFACT), "carried over: {body}");
    r
}

fn publish_state(lab: &Lab, state: &ChannelState) {
    sign(state, &lab.key)
        .unwrap()
        .publish(lab.server.url(), &lab.token)
        .unwrap();
}

/// A host of the lab with nothing installed yet; its service is declared.
fn fresh_host(lab: &Lab, server_url: &str) -> TestHost {
    let host = TestHost::new().unwrap();
    let mut c = lab.host_config();
    c.server_url = server_url.to_owned();
    host.write_config(&c).unwrap();
    host.add_service("quantix-demo", "/data/bin/qx-demo", "infinity")
        .unwrap();
    host
}

fn apply(host: &TestHost, args: &[&str]) -> (i32, String) {
    let out = run_qx_update(host.root(), args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The artifact downloads (`GET …/releases/<v>/<name>.tar.zst`) that went through `proxy`.
fn artifact_gets(proxy: &FaultProxy) -> Vec<String> {
    proxy
        .requests()
        .iter()
        .filter_map(|head| {
            let line = head.lines().next()?;
            let target = line.strip_prefix("GET ")?.split(' ').next()?;
            let path = target.split('?').next()?;
            path.ends_with(".tar.zst").then(|| path.to_owned())
        })
        .collect()
}

#[test]
fn hot_fix_then_a_fresh_host_installs_every_component_of_current() {
    let lab = Lab::new().unwrap();
    let r1 = release_1_0_0(&lab);
    let r2 = hot_fix_1_0_1(&lab, &r1);
    publish_state(&lab, &state_of(1, &[&r1, &r2]).unwrap());
    let host = fresh_host(&lab, lab.server.url());
    let (code, text) = apply(&host, &["apply", "--yes"]);
    assert_eq!(code, code::SUCCESS, "{text}");
    assert_eq!(host.version("qx-demo").as_deref(), Some("1.0.1"));
    assert_eq!(host.version(MIGRATIONS).as_deref(), Some("1.0.0"));
    assert_eq!(
        host.read("/data/bin/qx-demo").unwrap(),
        demo_binary("1.0.1").unwrap()
    );
    assert!(host
        .path("/data/lib/qx-demo-migrations/migrate.sh")
        .exists());
    let last = history(host.root()).pop().unwrap();
    assert_eq!(last["outcome"], "success", "{last}");
    // Up to date afterwards: nothing left to apply.
    let (code, text) = apply(&host, &["--json", "check"]);
    assert_eq!(code, 0, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["available"], false, "{report}");
}

#[test]
fn hot_fix_on_a_host_at_the_previous_release_downloads_only_the_changed_component() {
    let lab = Lab::new().unwrap();
    let r1 = release_1_0_0(&lab);
    let state = state_of(1, &[&r1]).unwrap();
    publish_state(&lab, &state);
    let proxy = FaultProxy::start(lab.server.addr()).unwrap();
    let host = fresh_host(&lab, &proxy.url());
    let (code, text) = apply(&host, &["apply", "--yes"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(artifact_gets(&proxy).len(), 2, "1.0.0 installed whole");
    assert_eq!(host.version(MIGRATIONS).as_deref(), Some("1.0.0"));

    let r2 = hot_fix_1_0_1(&lab, &r1);
    let mut next = state.successor(jiff::Timestamp::now(), qx_core::channel::DEFAULT_LIFETIME);
    next.releases.push(qx_testkit::channel::entry(&r2));
    next.current = r2.manifest.version.clone();
    publish_state(&lab, &next);
    proxy.reset_stats();
    let migrations_inode =
        crate::support::host::inode(&host.path("/data/lib/qx-demo-migrations/migrate.sh"));
    let (code, text) = apply(&host, &["--json", "apply", "--yes"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        artifact_gets(&proxy),
        vec![format!(
            "/api/v1/{}/releases/1.0.1/qx-demo.tar.zst",
            lab.product
        )],
        "exactly one artifact downloaded: the changed one"
    );
    assert_eq!(host.version("qx-demo").as_deref(), Some("1.0.1"));
    assert_eq!(host.version(MIGRATIONS).as_deref(), Some("1.0.0"));
    assert_eq!(
        crate::support::host::inode(&host.path("/data/lib/qx-demo-migrations/migrate.sh")),
        migrations_inode,
        "the carried-over component was not reinstalled"
    );
}

/// The manifest-only path (an agent that knows no channel states): the state route answers 404.
#[test]
fn an_agent_without_channel_states_installs_current_not_the_newest_upload() {
    let lab = Lab::new().unwrap();
    let v1 = node_release(&lab, "1.0.0");
    let v2 = node_release(&lab, "1.0.1");
    // 1.0.1 is uploaded and listed, but current stays 1.0.0 (published with --no-current).
    publish_state(&lab, &state_of(1, &[&v2, &v1]).unwrap());
    let state_path = format!("/api/v1/{}/channels/{}", lab.product, lab.channel);
    let old_server =
        HostileServer::in_front_of(lab.server.addr(), vec![Canned::error(&state_path, 404)]);
    let host = TestHost::new().unwrap();
    let mut c = lab.host_config();
    c.server_url = old_server.url();
    host.write_config(&c).unwrap();
    host.add_service("quantix-node", "/data/bin/qx-node", "infinity")
        .unwrap();
    let (code, text) = apply(&host, &["--json", "check"]);
    assert_eq!(code, 0, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["version"], "1.0.0", "{report}");
    assert!(report.get("channel_seq").is_none(), "{report}");
    let (code, text) = apply(&host, &["apply", "--yes"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(host.version("qx-node").as_deref(), Some("1.0.0"));
    assert_eq!(
        host.read("/data/bin/qx-node").unwrap(),
        demo_binary("1.0.0").unwrap()
    );
    let manifest_path = format!("/api/v1/{}/manifest", lab.product);
    assert!(old_server.hits(&state_path) >= 2, "asked for the state");
    assert!(
        old_server.hits(&manifest_path) >= 2,
        "took the manifest path"
    );
    // A host already on 1.0.0 through that path stays there: nothing newer is offered.
    let (code, text) = apply(&host, &["--json", "check"]);
    assert_eq!(code, 0, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["available"], false, "{report}");
}
