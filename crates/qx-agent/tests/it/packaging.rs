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
    let script = std::fs::read_to_string(repo().join("packaging/openrc/init.d/qx-update")).unwrap();
    let copy = dir.join("qx-update");
    std::fs::write(&copy, relocate(&script, dir)).unwrap();
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            ". {}; echo \"$command $command_args\"",
            copy.display()
        ))
        .env("RC_SVCNAME", "qx-update")
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

fn unit(name: &str) -> String {
    let path = repo().join("packaging/systemd").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The values of `key=` in a unit (every occurrence, in order).
fn unit_values(text: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn each_service_has_one_name_for_systemd_and_openrc() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(repo().join("packaging/openrc/init.d")).expect("init.d") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a name")
            .to_owned();
        assert!(
            repo()
                .join(format!("packaging/systemd/{name}.service"))
                .is_file(),
            "OpenRC script {name} has no systemd unit of the same name"
        );
        let script = std::fs::read_to_string(&path).expect("script");
        assert!(script.starts_with("#!/sbin/openrc-run\n"), "{name}");
        let st = Command::new("sh")
            .arg("-n")
            .arg(&path)
            .status()
            .expect("sh -n");
        assert!(st.success(), "{name} is not valid sh");
        names.push(name);
    }
    names.sort();
    assert_eq!(names, ["qx-update", "qx-update-server"]);
}

/// A bad command line or configuration does not mend by restarting: the units stop
/// restarting on exactly the agent's usage and configuration codes, and on the server's
/// configuration code (2, `qx-update-server --help`).
#[test]
fn services_do_not_restart_on_configuration_errors() {
    let agent = unit("qx-update.service");
    assert_eq!(unit_values(&agent, "Restart"), ["on-failure"]);
    assert_eq!(
        unit_values(&agent, "RestartPreventExitStatus"),
        [format!(
            "{} {}",
            qx_agent::code::USAGE,
            qx_agent::code::CONFIG
        )]
    );
    let server = unit("qx-update-server.service");
    assert_eq!(unit_values(&server, "Restart"), ["on-failure"]);
    assert_eq!(unit_values(&server, "RestartPreventExitStatus"), ["2"]);
    // The token comes from a root-only file handed over as a credential, never inline.
    assert!(unit_values(&server, "Environment")
        .contains(&"PUBLISH_TOKEN_FILE=%d/publish-token".to_owned()));
    assert!(unit_values(&server, "LoadCredential")
        .contains(&"publish-token:/etc/qx-update-server/publish-token".to_owned()));
    assert!(!server.contains("PUBLISH_TOKEN="), "no token in the unit");
    assert_eq!(
        unit_values(&server, "EnvironmentFile"),
        ["-/etc/default/qx-update-server"]
    );
    assert_eq!(unit_values(&server, "StateDirectory"), ["qx-update-server"]);
}

/// The server's OpenRC script, run for its start logic (`start_pre`) with `checkpath` and
/// `install` recorded: the settings file is read, the token is copied where only the
/// service's user reads it, and the server is told that copy.
#[test]
fn openrc_server_script_reads_its_settings_and_hands_over_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let defaults = d.join("default");
    std::fs::write(
        &defaults,
        format!(
            "LISTEN_ADDR=127.0.0.1:9100\nPUBLISH_TOKEN_FILE={}/token\n",
            d.display()
        ),
    )
    .expect("defaults");
    let script = std::fs::read_to_string(repo().join("packaging/openrc/init.d/qx-update-server"))
        .expect("script")
        .replace(
            "/etc/default/qx-update-server",
            &defaults.display().to_string(),
        );
    let copy = d.join("qx-update-server");
    std::fs::write(&copy, script).expect("copy");
    let stdout = crate::support::sys::run(
        Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "checkpath() {{ echo checkpath \"$@\"; }}; install() {{ echo install \"$@\"; }}; \
             . {}; start_pre && echo \"run $command as $command_user with $RELEASE_DIR \
             $LISTEN_ADDR $PUBLISH_TOKEN_FILE\"",
                copy.display()
            ))
            .env("RC_SVCNAME", "qx-update-server"),
    );
    assert!(
        stdout.contains(&format!(
            "install -m 0400 -o qx-update-server -g qx-update-server {}/token /run/qx-update-server/publish-token",
            d.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "run /usr/bin/qx-update-server as qx-update-server:qx-update-server with \
             /var/lib/qx-update-server 127.0.0.1:9100 /run/qx-update-server/publish-token"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("checkpath --directory --owner qx-update-server:qx-update-server --mode 0750 /var/lib/qx-update-server"),
        "{stdout}"
    );
}
