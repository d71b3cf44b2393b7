//! The `updates.ab` and `updates.reboot_command` keys of the agent configuration.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use qx_agent::{Config, ConfigError};
use qx_boot::{AbConfig, SlotTarget};

const KEY: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";

fn parse(extra: &str) -> Result<Config, ConfigError> {
    let text =
        format!("updates:\n  server_url: \"http://127.0.0.1:9\"\n  trusted_keys: [{KEY}]\n{extra}");
    Config::parse(
        &text,
        Path::new("/etc/limiquantix/node.yaml"),
        Path::new("/"),
    )
}

fn invalid_key(e: ConfigError) -> (String, String) {
    match e {
        ConfigError::Invalid { key, message, .. } => (key, message),
        other => panic!("expected ConfigError::Invalid, got {other:?}"),
    }
}

#[test]
fn absent_ab_section_gives_the_defaults_and_reboot_command_defaults_to_sbin_reboot() {
    let c = parse("").unwrap();
    assert_eq!(c.ab, AbConfig::default());
    assert_eq!(c.reboot_command, vec!["/sbin/reboot"]);
    assert!(!c.auto_reboot);
    let c = parse("  ab:\n").unwrap();
    assert_eq!(c.ab, AbConfig::default());
}

#[test]
fn ab_section_with_devices_paths_and_health_checks() {
    let c = parse(
        "  auto_reboot: true\n  reboot_command: [/usr/local/sbin/reboot-host, --now]\n  ab:\n    grubenv: /boot/efi/grubenv\n    slot_a: {device: \"LABEL=QUANTIX-A\"}\n    slot_b: {path: /mnt/slot-b}\n    tries: 5\n    health_checks:\n      - [rc-service, quantix-node, status]\n    health_check_timeout: 45s\n    mount: {fstype: ext4, options: [noatime]}\n",
    )
    .unwrap();
    assert!(c.auto_reboot);
    assert_eq!(
        c.reboot_command,
        vec!["/usr/local/sbin/reboot-host", "--now"]
    );
    assert_eq!(c.ab.grubenv, PathBuf::from("/boot/efi/grubenv"));
    assert_eq!(c.ab.slot_a, SlotTarget::Device("LABEL=QUANTIX-A".into()));
    assert_eq!(c.ab.slot_b, SlotTarget::Path("/mnt/slot-b".into()));
    assert_eq!(c.ab.tries, 5);
    assert_eq!(
        c.ab.health_checks,
        vec![vec!["rc-service", "quantix-node", "status"]]
    );
    assert_eq!(c.ab.health_check_timeout, Duration::from_secs(45));
    assert_eq!(c.ab.mount.fstype.as_deref(), Some("ext4"));
}

#[test]
fn unknown_key_in_ab_is_refused_naming_it() {
    let (key, message) = invalid_key(parse("  ab:\n    trys: 4\n").unwrap_err());
    assert_eq!(key, "ab");
    assert!(message.contains("trys"), "{message}");
}

#[test]
fn unknown_key_in_an_ab_slot_is_refused_naming_it() {
    let (key, message) = invalid_key(parse("  ab:\n    slot_a: {dev: /dev/vda3}\n").unwrap_err());
    assert_eq!(key, "ab");
    assert!(message.contains("dev"), "{message}");
}

#[test]
fn out_of_range_tries_is_refused() {
    let (key, message) = invalid_key(parse("  ab:\n    tries: 10\n").unwrap_err());
    assert_eq!(key, "ab");
    assert!(message.contains("tries"), "{message}");
}

#[test]
fn empty_reboot_command_is_refused() {
    let (key, _) = invalid_key(parse("  reboot_command: []\n").unwrap_err());
    assert_eq!(key, "reboot_command");
}
