//! The `updates.ab` and `updates.reboot_command` keys of the agent configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use qx_agent::Config;
use qx_agent::ConfigError;
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

/// A configuration the agent must refuse: the `updates:` lines, the key the error names and a
/// text its message contains.
struct Invalid {
    name: &'static str,
    extra: &'static str,
    key: &'static str,
    message: &'static str,
}

const INVALID: &[Invalid] = &[
    Invalid {
        name: "unknown key in ab",
        extra: "  ab:\n    trys: 4\n",
        key: "ab",
        message: "trys",
    },
    Invalid {
        name: "unknown key in an ab slot",
        extra: "  ab:\n    slot_a: {dev: /dev/vda3}\n",
        key: "ab",
        message: "dev",
    },
    Invalid {
        name: "out-of-range tries",
        extra: "  ab:\n    tries: 10\n",
        key: "ab",
        message: "tries",
    },
    Invalid {
        name: "empty reboot command",
        extra: "  reboot_command: []\n",
        key: "reboot_command",
        message: "",
    },
];

#[test]
fn invalid_ab_and_reboot_settings_are_refused_naming_the_key() {
    for case in INVALID {
        let name = case.name;
        let (key, message) = invalid_key(parse(case.extra).unwrap_err());
        assert_eq!(key, case.key, "{name}: {message}");
        assert!(message.contains(case.message), "{name}: {message}");
    }
}
