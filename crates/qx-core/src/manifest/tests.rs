use super::*;

pub(crate) const SAMPLE: &str = r#"{
  "schema": 1,
  "product": "quantix-os",
  "version": "0.0.5",
  "channel": "dev",
  "release_date": "2026-01-16T12:00:00Z",
  "expires": "2026-04-16T12:00:00Z",
  "update_type": "component",
  "components": [
    {
      "name": "qx-node", "version": "0.0.5",
      "artifact": "qx-node.tar.zst",
      "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      "size_bytes": 5242880,
      "install_path": "/data/bin/qx-node",
      "kind": "file",
      "restart_service": "quantix-node",
      "backup_before_update": true,
      "permissions": "0755",
      "requires": [{"name": "qx-console", "min_version": "0.0.4"}]
    },
    {
      "name": "migrations", "version": "0.0.5",
      "artifact": "migrations.tar.zst",
      "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      "size_bytes": 10,
      "install_path": "/data/share/migrations",
      "kind": "migrations",
      "migrate_command": ["quantix-migrate", "up"]
    }
  ],
  "min_version": "0.0.1",
  "release_notes": "Bug fixes"
}"#;

fn edit(f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_str(SAMPLE).expect("sample");
    f(&mut v);
    serde_json::to_vec(&v).expect("json")
}

fn problems(bytes: &[u8]) -> Vec<Problem> {
    match Manifest::parse(bytes, UnknownFields::Reject) {
        Err(e) => e.problems(),
        Ok(_) => vec![],
    }
}

#[test]
fn sample_parses_and_roundtrips() {
    let m = Manifest::parse(SAMPLE.as_bytes(), UnknownFields::Reject).expect("valid");
    assert_eq!(m.components.len(), 2);
    assert_eq!(m.components[1].kind, ComponentKind::Migrations);
    let again = Manifest::parse(&m.to_bytes(), UnknownFields::Reject).expect("roundtrip");
    assert_eq!(m, again);
    assert_eq!(m.artifacts().len(), 2);
}

#[test]
fn unknown_fields_rejected_by_server_ignored_by_agent() {
    let bytes = edit(|v| v["colour"] = "red".into());
    match Manifest::parse(&bytes, UnknownFields::Reject) {
        Err(ManifestError::UnknownFields(f)) => assert_eq!(f, vec!["colour".to_string()]),
        other => panic!("expected unknown field error, got {other:?}"),
    }
    assert!(Manifest::parse(&bytes, UnknownFields::Ignore).is_ok());
    let nested = edit(|v| v["components"][0]["sha512"] = "x".into());
    assert!(matches!(
        Manifest::parse(&nested, UnknownFields::Reject),
        Err(ManifestError::UnknownFields(_))
    ));
}

#[test]
fn malformed_json_is_a_syntax_error() {
    assert!(matches!(
        Manifest::parse(b"{\"schema\": 1,", UnknownFields::Reject),
        Err(ManifestError::Syntax(_))
    ));
    assert!(matches!(
        Manifest::parse(b"{} trailing", UnknownFields::Reject),
        Err(ManifestError::Syntax(_)) | Err(ManifestError::Structure { .. })
    ));
}

#[test]
fn bad_name_reports_its_path() {
    let bytes = edit(|v| v["components"][0]["artifact"] = "../etc/passwd".into());
    let p = problems(&bytes);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, "components[0].artifact");
    assert!(p[0].message.contains("artifact name"), "{}", p[0].message);
}

#[test]
fn non_semver_version_refused() {
    let p = problems(&edit(|v| v["version"] = "1.0".into()));
    assert_eq!(p[0].path, "version");
}

#[test]
fn relative_and_parent_install_paths_refused() {
    for bad in ["data/bin/x", "/data/../etc/shadow"] {
        let p = problems(&edit(|v| v["components"][0]["install_path"] = bad.into()));
        assert_eq!(p[0].path, "components[0].install_path", "{bad}");
    }
}

#[test]
fn all_cross_field_problems_at_once() {
    let bytes = edit(|v| {
        v["schema"] = 2.into();
        v["expires"] = "2026-01-01T00:00:00Z".into();
        v["components"][1]["artifact"] = "qx-node.tar.zst".into();
        v["components"][1]["install_path"] = "/data/bin/qx-node".into();
        // Above the release version (a lower one is a carried-over component, docs/spec.md §8).
        v["components"][1]["version"] = "99.0.0".into();
        v["components"][1]
            .as_object_mut()
            .expect("object")
            .remove("migrate_command");
    });
    let p = problems(&bytes);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "schema",
        "expires",
        "components[1].artifact",
        "components[1].version",
        "components[1].install_path",
        "components[1].migrate_command",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
}

#[test]
fn carried_over_component_keeps_its_lower_version() {
    let bytes = edit(|v| v["components"][1]["version"] = "0.0.4".into());
    assert!(problems(&bytes).is_empty());
}

#[test]
fn update_type_must_match_content() {
    let p = problems(&edit(|v| v["update_type"] = "full".into()));
    assert!(p.iter().any(|p| p.path == "full_image"));
    let p = problems(&edit(|v| v["components"] = serde_json::json!([])));
    assert!(p.iter().any(|p| p.path == "components"));
}

#[test]
fn migrate_command_only_for_migrations() {
    let p = problems(&edit(|v| {
        v["components"][0]["migrate_command"] = serde_json::json!(["x"])
    }));
    assert_eq!(p[0].path, "components[0].migrate_command");
}

#[test]
fn reserved_artifact_names_refused() {
    let p = problems(&edit(|v| {
        v["components"][0]["artifact"] = "manifest.json".into()
    }));
    assert_eq!(p[0].path, "components[0].artifact");
}

#[test]
fn min_version_above_version_refused() {
    let p = problems(&edit(|v| v["min_version"] = "1.0.0".into()));
    assert_eq!(p[0].path, "min_version");
}

#[test]
fn nested_install_paths_overlap() {
    let p = problems(&edit(|v| {
        v["components"][1]["install_path"] = "/data/bin/qx-node/sub".into()
    }));
    assert_eq!(p[0].path, "components[1].install_path");
}

#[test]
fn full_image_artifacts_listed_once() {
    let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let p = problems(&edit(|v| {
        v["update_type"] = "mixed".into();
        v["full_image"] = serde_json::json!({
            "artifact": "system.squashfs", "sha256": sha, "size_bytes": 1,
            "kernel": {"artifact": "system.squashfs", "sha256": sha, "size_bytes": 1},
            "requires_reboot": true, "target_slot": "auto"
        });
    }));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].path, "full_image.kernel.artifact");
}

/// The problems at `components[0].<field>` of the sample with `f` applied.
fn problems_at(field: &str, f: impl FnOnce(&mut serde_json::Value)) -> Vec<Problem> {
    let at = format!("components[0].{field}");
    problems(&edit(f))
        .into_iter()
        .filter(|p| p.path == at)
        .collect()
}

#[test]
fn manifest_refuses_setuid_and_setgid_permissions_without_allow_setuid() {
    for mode in ["4755", "2755", "6755"] {
        let found = problems_at("permissions", |v| {
            v["components"][0]["permissions"] = mode.into()
        });
        assert_eq!(found.len(), 1, "{mode}: {found:?}");
        assert!(found[0].message.contains("allow_setuid"), "{found:?}");
    }
}

#[test]
fn manifest_refuses_world_writable_permissions_without_allow_world_writable() {
    for mode in ["0777", "2777", "0666", "0002"] {
        let found = problems_at("permissions", |v| {
            v["components"][0]["permissions"] = mode.into();
            v["components"][0]["allow_setuid"] = true.into();
        });
        assert_eq!(found.len(), 1, "{mode}: {found:?}");
        assert!(
            found[0].message.contains("allow_world_writable"),
            "{found:?}"
        );
    }
}

#[test]
fn manifest_accepts_special_modes_the_component_allows() {
    let bytes = edit(|v| {
        v["components"][0]["permissions"] = "6777".into();
        v["components"][0]["allow_setuid"] = true.into();
        v["components"][0]["allow_world_writable"] = true.into();
    });
    let m = Manifest::parse(&bytes, UnknownFields::Reject).expect("allowed");
    assert!(m.components[0].allow_setuid && m.components[0].allow_world_writable);
    let again = Manifest::parse(&m.to_bytes(), UnknownFields::Reject).expect("roundtrip");
    assert_eq!(m, again);
    // Both default to false and are not written when false (older manifests are unchanged).
    let plain = Manifest::parse(SAMPLE.as_bytes(), UnknownFields::Reject).expect("sample");
    let text = String::from_utf8(plain.to_bytes()).expect("utf-8");
    assert!(!text.contains("allow_"), "{text}");
}

fn install_path(p: &str) -> InstallPath {
    InstallPath::new(p.to_owned()).expect("valid install path")
}

/// System directories that are not parents of the agent's own paths (`/etc`, `/var`, `/data`
/// are: refused everywhere).
const SYSTEM_DIRECTORIES: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/lib32",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/var/lib",
    "/opt",
    "/usr/local",
];

#[test]
fn install_path_rule_refuses_system_directories() {
    for path in SYSTEM_DIRECTORIES {
        let why = install_path_refusal(&install_path(path), &[]).expect(path);
        assert!(why.contains("system directory"), "{why}");
        assert!(why.contains("updates.allow_install_paths"), "{why}");
    }
}

#[test]
fn install_path_rule_lets_an_allowed_prefix_through() {
    let allowed = [install_path("/opt"), install_path("/usr/local")];
    for path in ["/opt", "/usr/local", "/usr/local/bin", "/usr/local/sbin"] {
        assert_eq!(
            install_path_refusal(&install_path(path), &allowed),
            None,
            "{path}"
        );
    }
    for path in ["/etc", "/usr", "/var/lib", "/lib64"] {
        assert!(
            install_path_refusal(&install_path(path), &allowed).is_some(),
            "{path}"
        );
    }
    // A prefix is a whole path segment: /usr/local does not allow /usr/localx.
    let only = [install_path("/usr/lo")];
    assert!(install_path_refusal(&install_path("/usr/local"), &only).is_some());
}

#[test]
fn install_path_rule_never_allows_the_agents_own_paths() {
    let allowed = [
        install_path("/etc"),
        install_path("/data"),
        install_path("/var"),
    ];
    for path in [
        "/etc/limiquantix",
        "/etc/limiquantix/node.yaml",
        "/data/updates",
        "/data",
        "/var/log/quantix",
        "/var/log",
    ] {
        let why = install_path_refusal(&install_path(path), &allowed).expect(path);
        assert!(why.contains("agent's own"), "{path}: {why}");
    }
}

#[test]
fn manifest_leaves_system_directories_to_the_hosts_rule() {
    for path in SYSTEM_DIRECTORIES {
        let found = problems_at("install_path", |v| {
            v["components"][0]["install_path"] = (*path).into()
        });
        assert!(found.is_empty(), "{path}: {found:?}");
    }
}

#[test]
fn manifest_refuses_the_agents_own_paths_their_insides_and_parents() {
    for path in [
        "/etc/limiquantix",
        "/etc/limiquantix/node.yaml",
        "/data/updates",
        "/data/updates/staging",
        "/var/log/quantix",
    ] {
        let found = problems_at("install_path", |v| {
            v["components"][0]["install_path"] = path.into()
        });
        assert_eq!(found.len(), 1, "{path}: {found:?}");
        assert!(found[0].message.contains("agent's own"), "{found:?}");
    }
}

#[test]
fn manifest_accepts_install_paths_below_system_directories() {
    for path in [
        "/data/bin/qx-node",
        "/usr/local/bin/qx-node",
        "/etc/qx-node.conf",
        "/data/lib/x",
    ] {
        let found = problems_at("install_path", |v| {
            v["components"][0]["install_path"] = path.into()
        });
        assert!(found.is_empty(), "{path}: {found:?}");
    }
}
