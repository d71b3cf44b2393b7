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
