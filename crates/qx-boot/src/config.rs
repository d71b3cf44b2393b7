//! `AbConfig`: the A/B part of the host agent's configuration (`updates.ab`
//! in `/etc/limiquantix/node.yaml`).
//!
//! ```yaml
//! updates:
//!   ab:
//!     grubenv: /boot/grub/grubenv
//!     slot_a: {device: "LABEL=QUANTIX-A"}
//!     slot_b: {device: "LABEL=QUANTIX-B"}     # or {path: /mnt/slot-b}: an already mounted fs
//!     tries: 3
//!     health_checks:
//!       - ["rc-service", "quantix-node", "status"]
//!     health_check_timeout: 2m
//!     mount: {fstype: ext4, options: [noatime]}
//! ```
//!
//! Every field is optional. File paths (`grubenv`, slot `path`) are resolved
//! under the agent's `--root`; devices are not (they are the machine's).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{BootError, Result};
use crate::slot::Slot;

/// Largest try count: `packaging/grub/grub.cfg` decrements counters through a
/// lookup chain from 9 down to 1 (GRUB script has no arithmetic).
pub const MAX_TRIES: u8 = 9;

/// Where the file system of a slot is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SlotTarget {
    /// A block device to mount: a path (`/dev/vda3`) or `LABEL=…`/`UUID=…`.
    Device(String),
    /// A directory that already is the slot's mounted file system.
    Path(PathBuf),
}

/// How slot devices are mounted while an image is written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MountConfig {
    /// File-system type passed to `mount -t`; `None` lets `mount` detect it.
    pub fstype: Option<String>,
    /// Mount options (`mount -o`), joined with commas.
    pub options: Vec<String>,
    /// Directory in which temporary mount points are made (default: the
    /// system's temporary directory).
    pub dir: Option<PathBuf>,
}

/// The A/B configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AbConfig {
    /// The GRUB environment block (under `--root`).
    pub grubenv: PathBuf,
    /// Slot A's file system.
    pub slot_a: SlotTarget,
    /// Slot B's file system.
    pub slot_b: SlotTarget,
    /// Boot attempts of a new slot before GRUB falls back (1..=9).
    pub tries: u8,
    /// Commands (argv, no shell) that must all exit 0 for `verify` to mark the
    /// booted slot good.
    pub health_checks: Vec<Vec<String>>,
    /// Time limit of each health check ("30s", "2m").
    #[serde(serialize_with = "ser_duration", deserialize_with = "de_duration")]
    pub health_check_timeout: Duration,
    /// Mounting of slot devices.
    pub mount: MountConfig,
}

impl Default for AbConfig {
    fn default() -> Self {
        AbConfig {
            grubenv: PathBuf::from("/boot/grub/grubenv"),
            slot_a: SlotTarget::Device("LABEL=QUANTIX-A".to_owned()),
            slot_b: SlotTarget::Device("LABEL=QUANTIX-B".to_owned()),
            tries: 3,
            health_checks: Vec::new(),
            health_check_timeout: Duration::from_secs(120),
            mount: MountConfig::default(),
        }
    }
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!("invalid duration {s:?}: {e} (examples: 30s, 2m)"))
    })
}

impl AbConfig {
    /// The configured target of a slot.
    pub fn slot(&self, slot: Slot) -> &SlotTarget {
        match slot {
            Slot::A => &self.slot_a,
            Slot::B => &self.slot_b,
        }
    }

    /// Check what serde cannot: ranges, empty commands, relative paths.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| BootError::Config {
            field: field.to_owned(),
            reason,
        };
        if !(1..=MAX_TRIES).contains(&self.tries) {
            return Err(bad(
                "tries",
                format!(
                    "{} is out of range 1..={MAX_TRIES} (the GRUB fragment counts down from {MAX_TRIES})",
                    self.tries
                ),
            ));
        }
        if !self.grubenv.is_absolute() {
            return Err(bad("grubenv", "must be an absolute path".to_owned()));
        }
        for (name, target) in [("slot_a", &self.slot_a), ("slot_b", &self.slot_b)] {
            match target {
                SlotTarget::Device(d) if d.trim().is_empty() => {
                    return Err(bad(name, "device is empty".to_owned()))
                }
                SlotTarget::Path(p) if !p.is_absolute() => {
                    return Err(bad(name, "path must be absolute".to_owned()))
                }
                _ => {}
            }
        }
        if self.slot_a == self.slot_b {
            return Err(bad(
                "slot_b",
                "slot A and slot B name the same device or path".to_owned(),
            ));
        }
        for (i, argv) in self.health_checks.iter().enumerate() {
            if argv.first().is_none_or(|a| a.is_empty()) {
                return Err(bad(
                    &format!("health_checks[{i}]"),
                    "empty command".to_owned(),
                ));
            }
        }
        if self.health_check_timeout.is_zero() {
            return Err(bad(
                "health_check_timeout",
                "must be more than 0".to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c: AbConfig = serde_json::from_str("{}").expect("parse");
        assert_eq!(c, AbConfig::default());
        assert_eq!(c.grubenv, PathBuf::from("/boot/grub/grubenv"));
        assert_eq!(c.slot_a, SlotTarget::Device("LABEL=QUANTIX-A".into()));
        assert_eq!(c.slot_b, SlotTarget::Device("LABEL=QUANTIX-B".into()));
        assert_eq!(c.tries, 3);
        c.validate().expect("valid");
    }

    #[test]
    fn device_or_path() {
        let c: AbConfig = serde_json::from_str(
            r#"{"slot_a":{"device":"/dev/vda3"},"slot_b":{"path":"/mnt/b"},
                "health_checks":[["true"]],"health_check_timeout":"30s",
                "mount":{"fstype":"ext4","options":["noatime"]}}"#,
        )
        .expect("parse");
        assert_eq!(c.slot_a, SlotTarget::Device("/dev/vda3".into()));
        assert_eq!(c.slot_b, SlotTarget::Path("/mnt/b".into()));
        assert_eq!(c.health_check_timeout, Duration::from_secs(30));
        c.validate().expect("valid");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = serde_json::from_str::<AbConfig>(r#"{"tries":3,"trys":4}"#).expect_err("typo");
        assert!(e.to_string().contains("trys"), "{e}");
        let e =
            serde_json::from_str::<AbConfig>(r#"{"slot_a":{"dev":"/dev/x"}}"#).expect_err("typo");
        assert!(e.to_string().contains("dev"), "{e}");
        let e = serde_json::from_str::<AbConfig>(r#"{"mount":{"fs":"ext4"}}"#).expect_err("typo");
        assert!(e.to_string().contains("fs"), "{e}");
    }

    #[test]
    fn validate_rejects_bad_values() {
        for json in [
            r#"{"tries":0}"#,
            r#"{"tries":10}"#,
            r#"{"grubenv":"boot/grubenv"}"#,
            r#"{"slot_a":{"device":""}}"#,
            r#"{"slot_b":{"path":"rel"}}"#,
            r#"{"slot_a":{"device":"/dev/x"},"slot_b":{"device":"/dev/x"}}"#,
            r#"{"health_checks":[[]]}"#,
            r#"{"health_check_timeout":"0s"}"#,
        ] {
            let c: AbConfig = serde_json::from_str(json).expect("parses");
            assert!(c.validate().is_err(), "{json} accepted");
        }
    }

    #[test]
    fn bad_duration_is_a_clear_error() {
        let e = serde_json::from_str::<AbConfig>(r#"{"health_check_timeout":"soon"}"#)
            .expect_err("bad");
        assert!(e.to_string().contains("invalid duration"), "{e}");
    }
}
