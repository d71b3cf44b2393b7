//! The two system slots and which one is booted.
//!
//! GRUB (packaging/grub/grub.cfg) passes `quantix.slot=A` or `quantix.slot=B`
//! on the kernel command line; that is the only source of truth for the booted
//! slot.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use qx_core::fs::under_root;

use crate::error::{BootError, Result};

/// Kernel command line parameter naming the booted slot.
pub const CMDLINE_PARAM: &str = "quantix.slot";

/// A system slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// Both slots, A first.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `"A"` or `"B"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    /// The slot named by `quantix.slot=` in `<root>/proc/cmdline`. If the
    /// parameter appears more than once, the last one counts (as for most
    /// kernel parameters).
    pub fn booted(root: &Path) -> Result<Slot> {
        let path = under_root(root, Path::new("/proc/cmdline"));
        let cmdline = std::fs::read_to_string(&path)
            .map_err(|e| BootError::io(&path, "read kernel command line", e))?;
        match Self::from_cmdline(&cmdline) {
            Some(v) => v,
            None => Err(BootError::SlotMissing { path }),
        }
    }

    /// The slot in a kernel command line: `None` if there is no
    /// `quantix.slot=`, an error if its value is not A or B.
    pub fn from_cmdline(cmdline: &str) -> Option<Result<Slot>> {
        cmdline
            .split_ascii_whitespace()
            .filter_map(|arg| arg.strip_prefix(CMDLINE_PARAM)?.strip_prefix('='))
            .next_back()
            .map(str::parse)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Slot {
    type Err = BootError;

    fn from_str(s: &str) -> Result<Slot> {
        match s {
            "A" => Ok(Slot::A),
            "B" => Ok(Slot::B),
            _ => Err(BootError::SlotInvalid {
                value: s.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_slot_from_cmdline() {
        let c = "BOOT_IMAGE=/vmlinuz quantix.slot=B console=ttyS0\n";
        assert!(matches!(Slot::from_cmdline(c), Some(Ok(Slot::B))));
        assert!(matches!(
            Slot::from_cmdline("quantix.slot=A"),
            Some(Ok(Slot::A))
        ));
    }

    #[test]
    fn last_occurrence_wins() {
        let c = "quantix.slot=A quiet quantix.slot=B";
        assert!(matches!(Slot::from_cmdline(c), Some(Ok(Slot::B))));
    }

    #[test]
    fn missing_is_none() {
        assert!(Slot::from_cmdline("root=/dev/vda quiet").is_none());
        assert!(Slot::from_cmdline("xquantix.slot=A quantix.slots=A").is_none());
    }

    #[test]
    fn invalid_value_is_an_error() {
        for c in [
            "quantix.slot=C",
            "quantix.slot=",
            "quantix.slot=a",
            "quantix.slot=AB",
        ] {
            assert!(matches!(Slot::from_cmdline(c), Some(Err(_))), "{c}");
        }
    }

    #[test]
    fn other_slot() {
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.other(), Slot::A);
    }

    #[test]
    fn booted_reads_proc_cmdline_under_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Slot::booted(dir.path()).expect_err("no file");
        assert!(matches!(err, BootError::Io { .. }), "{err}");
        std::fs::create_dir(dir.path().join("proc")).expect("mkdir");
        std::fs::write(dir.path().join("proc/cmdline"), "quiet\n").expect("write");
        let err = Slot::booted(dir.path()).expect_err("no param");
        assert!(matches!(err, BootError::SlotMissing { .. }), "{err}");
        std::fs::write(dir.path().join("proc/cmdline"), "quantix.slot=B quiet\n").expect("write");
        assert_eq!(Slot::booted(dir.path()).expect("slot"), Slot::B);
    }
}
