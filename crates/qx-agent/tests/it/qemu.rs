//! The real proof of A/B updates: a GPT disk image with GRUB (i386-pc), the
//! shipped `packaging/grub/grub.cfg` and boot scripts, booted under
//! `qemu-system-x86_64 -accel tcg` 8 times, with this crate's `qx-update`
//! binary running `ab boot-check` / `ab verify` inside the guest and
//! `qx_boot::install_image` writing updates into slot B.
//!
//! Scenario and checks: qemu/harness.rs. Slow tier: needs root (loop devices,
//! mounts) and qemu, and installs the Debian packages listed in
//! qemu/packages.txt when they are missing; logs of every boot are kept in
//! target/tmp/ab-boot-qemu/qx-agent/logs/.
//!
//!     cargo test -p qx-agent --test it qemu -- --include-ignored --nocapture

mod harness;

use std::path::PathBuf;
use std::time::Duration;

/// The guest's /etc/limiquantix/node.yaml: what `qx-update` requires plus the
/// A/B section. The server is never contacted (only `ab` commands run).
const NODE_YAML: &str = r#"updates:
  enabled: true
  server_url: "http://127.0.0.1:9"
  channel: dev
  product: quantix-os
  trusted_keys:
    - RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3
  ab:
    grubenv: /boot/grub/grubenv
    tries: 3
    health_checks: {HEALTH}
    health_check_timeout: 30s
"#;

#[test]
#[ignore = "slow tier: needs root, loop devices and qemu; `cargo xtask test` runs it"]
fn ab_update_boots_rolls_back_and_commits_under_qemu() {
    harness::run_scenario(harness::Options {
        name: "qx-agent".to_owned(),
        qx_update: PathBuf::from(env!("CARGO_BIN_EXE_qx-update")),
        agent_config: NODE_YAML.to_owned(),
        target_tmp: PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        boot_timeout: Duration::from_secs(180),
    });
}
