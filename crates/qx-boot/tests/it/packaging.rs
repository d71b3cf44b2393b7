//! The shipped boot files: the GRUB fragment parses with GRUB's own checker
//! and uses the variables the agent writes; the boot scripts are valid POSIX
//! sh and call the agent the way `qx-update` expects. (They run for real in
//! the qemu scenario, crates/qx-agent/tests/it/qemu/harness.rs.)

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{require_tool, run};
use qx_boot::config::MAX_TRIES;
use qx_boot::slotenv::{left_key, ok_key, ORDER};
use qx_boot::Slot;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging")
}

fn fragment() -> String {
    std::fs::read_to_string(packaging().join("grub/grub.cfg")).expect("packaging/grub/grub.cfg")
}

#[test]
fn grub_fragment_passes_grub_script_check() {
    require_tool("grub-script-check", "grub-common");
    run(Command::new("grub-script-check").arg(packaging().join("grub/grub.cfg")));
}

#[test]
fn grub_fragment_loads_and_saves_the_agents_variables() {
    let cfg = fragment();
    let mut vars = vec![ORDER.to_owned()];
    for s in Slot::ALL {
        vars.push(left_key(s));
    }
    for s in Slot::ALL {
        vars.push(ok_key(s));
    }
    let load = format!("load_env {}", vars.join(" "));
    assert!(cfg.contains(&load), "fragment lacks `{load}`");
    assert!(
        cfg.contains("save_env A_LEFT B_LEFT"),
        "fragment does not save the counters"
    );
    for s in Slot::ALL {
        assert!(
            cfg.contains(&format!("quantix.slot={s} ")),
            "fragment does not pass quantix.slot={s}"
        );
        assert!(cfg.contains(&format!("--label --set=root QUANTIX-{s}")));
    }
}

#[test]
fn grub_fragment_counts_down_from_max_tries() {
    let cfg = fragment();
    for n in 1..=MAX_TRIES {
        let step = format!(
            "[ \"$qx_left\" = \"{n}\" ]; then set qx_left={}; set qx_slot=\"$qx_s\"",
            n - 1
        );
        assert!(cfg.contains(&step), "decrement step {n} missing");
    }
    assert!(
        !cfg.contains(&format!("\"{}\" ]", MAX_TRIES + 1)),
        "chain longer than MAX_TRIES"
    );
}

#[test]
fn boot_scripts_are_posix_sh_and_call_the_agent() {
    let dir = packaging().join("openrc/local.d");
    for (name, call) in [
        ("03-ab-update-check.start", Some("ab boot-check")),
        ("05-overlay-mounts.start", None),
        ("99-ab-update-verify.start", Some("ab verify")),
    ] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).expect("boot script");
        assert!(
            text.starts_with("#!/bin/sh\n"),
            "{name}: not a /bin/sh script"
        );
        run(Command::new("sh").arg("-n").arg(&path));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("stat").permissions(),
        );
        assert!(mode & 0o111 != 0, "{name} is not executable");
        if let Some(call) = call {
            assert!(text.contains(&format!("\"$QX_UPDATE\" {call}")), "{name}");
            assert!(
                text.contains("[ -x /data/bin/qx-update ]"),
                "{name}: /data/bin/qx-update must win over /usr/bin"
            );
        }
    }
}

/// The `key=` values of a systemd unit, split on spaces.
fn unit_words(unit: &str, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(packaging().join("systemd").join(unit)).expect("unit");
    let prefix = format!("{key}=");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .flat_map(str::split_whitespace)
        .map(str::to_owned)
        .collect()
}

/// The boot scripts as systemd oneshot units: each runs its `local.d` script (the one
/// installed copy), and the order is OpenRC's: the rollback check, then the overlay paths,
/// both before the agent; the verification after the agent, late in the boot.
#[test]
fn boot_units_run_the_scripts_in_the_boot_order() {
    let units = [
        ("qx-ab-update-check.service", "03-ab-update-check.start"),
        ("qx-overlay-mounts.service", "05-overlay-mounts.start"),
        ("qx-ab-update-verify.service", "99-ab-update-verify.start"),
    ];
    for (unit, script) in units {
        assert_eq!(unit_words(unit, "Type"), ["oneshot"], "{unit}");
        assert_eq!(
            unit_words(unit, "ExecStart"),
            [format!("/etc/local.d/{script}")],
            "{unit}"
        );
        assert!(packaging().join("openrc/local.d").join(script).is_file());
        assert_eq!(unit_words(unit, "RemainAfterExit"), ["yes"], "{unit}");
    }
    let check_before = unit_words("qx-ab-update-check.service", "Before");
    for later in ["qx-overlay-mounts.service", "qx-update.service"] {
        assert!(
            check_before.iter().any(|u| u == later),
            "check before {later}"
        );
    }
    assert!(unit_words("qx-overlay-mounts.service", "After")
        .iter()
        .any(|u| u == "qx-ab-update-check.service"));
    assert!(unit_words("qx-overlay-mounts.service", "Before")
        .iter()
        .any(|u| u == "qx-update.service"));
    assert!(unit_words("qx-overlay-mounts.service", "RequiresMountsFor")
        .iter()
        .any(|p| p == "/data"));
    let verify_after = unit_words("qx-ab-update-verify.service", "After");
    for earlier in ["multi-user.target", "qx-update.service"] {
        assert!(
            verify_after.iter().any(|u| u == earlier),
            "verify after {earlier}"
        );
    }
    assert_eq!(
        unit_words("qx-ab-update-verify.service", "WantedBy"),
        ["multi-user.target"]
    );
}
