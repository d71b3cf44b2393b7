//! The shipped service files start `qx-update daemon` with the overlay priority of
//! docs/spec.md §4: `/data/bin/qx-update` when it is executable, else `/usr/bin/qx-update`.
//! The tests run the scripts' own start logic with both directories moved into a temporary
//! directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `<tmp>/data/bin/qx-update` and `<tmp>/usr/bin/qx-update`, each printing its origin and
/// arguments.
fn fake_binaries(dir: &Path) {
    for (sub, name) in [("data/bin", "data"), ("usr/bin", "usr")] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("qx-update");
        std::fs::write(&p, format!("#!/bin/sh\necho {name} \"$@\"\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn relocate(text: &str, dir: &Path) -> String {
    text.replace("/data/bin/", &format!("{}/data/bin/", dir.display()))
        .replace(
            "/usr/bin/qx-update",
            &format!("{}/usr/bin/qx-update", dir.display()),
        )
}

fn disable_data_binary(dir: &Path) {
    std::fs::set_permissions(
        dir.join("data/bin/qx-update"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
}

/// The shell command of `ExecStart=/bin/sh -c '…'`.
fn systemd_exec_script() -> String {
    let unit = std::fs::read_to_string(repo().join("packaging/systemd/qx-update.service")).unwrap();
    let line = unit
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("an ExecStart line");
    let start = line.find("-c '").expect("ExecStart=/bin/sh -c '…'") + 4;
    let end = line.rfind('\'').unwrap();
    line[start..end].to_string()
}

fn run_systemd(dir: &Path) -> String {
    let script = relocate(&systemd_exec_script(), dir);
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .env("QX_UPDATE_CONFIG", "/etc/limiquantix/node.yaml")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Sources the OpenRC script (its top level picks `command`) and prints the command line.
fn run_openrc(dir: &Path) -> String {
    let script =
        std::fs::read_to_string(repo().join("packaging/openrc/init.d/quantix-update")).unwrap();
    let copy = dir.join("quantix-update");
    std::fs::write(&copy, relocate(&script, dir)).unwrap();
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            ". {}; echo \"$command $command_args\"",
            copy.display()
        ))
        .env("RC_SVCNAME", "quantix-update")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A service file's start logic, with or without an executable `/data/bin/qx-update`, and the
/// command line it must run (given the temporary directory).
struct Start {
    name: &'static str,
    run: fn(&Path) -> String,
    data_binary: bool,
    expect: fn(&Path) -> String,
}

const STARTS: &[Start] = &[
    Start {
        name: "systemd unit prefers the OTA binary in /data",
        run: run_systemd,
        data_binary: true,
        expect: |_| "data --config /etc/limiquantix/node.yaml daemon".into(),
    },
    Start {
        name: "systemd unit falls back to the image's binary",
        run: run_systemd,
        data_binary: false,
        expect: |_| "usr --config /etc/limiquantix/node.yaml daemon".into(),
    },
    Start {
        name: "OpenRC script prefers the OTA binary in /data",
        run: run_openrc,
        data_binary: true,
        expect: |dir| {
            format!(
                "{}/data/bin/qx-update --config /etc/limiquantix/node.yaml daemon",
                dir.display()
            )
        },
    },
    Start {
        name: "OpenRC script falls back to the image's binary",
        run: run_openrc,
        data_binary: false,
        expect: |dir| {
            format!(
                "{}/usr/bin/qx-update --config /etc/limiquantix/node.yaml daemon",
                dir.display()
            )
        },
    },
];

#[test]
fn service_files_start_the_overlay_binary_first() {
    for case in STARTS {
        let dir = tempfile::tempdir().unwrap();
        fake_binaries(dir.path());
        if !case.data_binary {
            disable_data_binary(dir.path());
        }
        assert_eq!(
            (case.run)(dir.path()),
            (case.expect)(dir.path()),
            "{}",
            case.name
        );
    }
}
