//! Lints that stop a bad release before it is uploaded. Each has a name (shown in brackets in
//! its message) and a test.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use qx_core::manifest::{agent_path_refusal, install_path_refusal, ModeAllowance};
use qx_core::{ComponentKind, InstallPath, Version};

use crate::error::{Error, Result};
use crate::pack::{EntryInfo, EntryKind};
use crate::spec::Spec;

pub const INSTALL_PATH_INVALID: &str = "install-path-invalid";
pub const INSTALL_PATH_DUPLICATE: &str = "install-path-duplicate";
pub const INSTALL_PATH_DENIED: &str = "install-path-denied";
pub const MODE_REFUSED: &str = "mode-refused";
pub const FILE_ARCHIVE_NOT_SINGLE_FILE: &str = "file-archive-not-single-file";
pub const MIGRATIONS_WITHOUT_COMMAND: &str = "migrations-without-command";
pub const MIGRATE_COMMAND_NOT_MIGRATIONS: &str = "migrate-command-not-migrations";
pub const REQUIRES_UNKNOWN_COMPONENT: &str = "requires-unknown-component";
pub const VERSION_NOT_NEWER: &str = "version-not-newer";
pub const SECRET_KEY_EXPOSED: &str = "secret-key-exposed";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The release is refused.
    Error,
    /// Printed; the release goes on (refused with `--strict`).
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub lint: &'static str,
    pub severity: Severity,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}[{}]: {}", self.lint, self.message)
    }
}

fn error(lint: &'static str, message: String) -> Finding {
    Finding {
        lint,
        severity: Severity::Error,
        message,
    }
}

/// Lints on the spec alone (before anything is built). `requires` is checked against every
/// component of the spec, also when only some are being released.
pub fn spec(spec: &Spec) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut paths: HashMap<String, &str> = HashMap::new();
    for c in &spec.components {
        match InstallPath::new(c.install_path.clone()) {
            Err(e) => out.push(error(
                INSTALL_PATH_INVALID,
                format!(
                    "component {}: install_path {:?} is refused: {e}; write an absolute path such as \"/data/bin/{}\"",
                    c.name, c.install_path, c.name
                ),
            )),
            Ok(p) => {
                out.extend(install_path_denied(c.name.as_str(), &p));
                if let Some(other) = paths.get(p.as_str()) {
                    out.push(error(
                        INSTALL_PATH_DUPLICATE,
                        format!(
                            "components {other} and {} both install to {p}; each component needs its own install_path",
                            c.name
                        ),
                    ));
                } else {
                    paths.insert(p.as_str().to_owned(), c.name.as_str());
                }
            }
        }
        out.extend(mode(c));
        match (c.kind, &c.migrate_command) {
            (ComponentKind::Migrations, None) => out.push(error(
                MIGRATIONS_WITHOUT_COMMAND,
                format!(
                    "component {} is kind \"migrations\" but has no migrate_command; add e.g. migrate_command = [\"./migrate\", \"up\"]",
                    c.name
                ),
            )),
            (ComponentKind::Migrations, Some(cmd)) if cmd.first().is_none_or(|p| p.is_empty()) => {
                out.push(error(
                    MIGRATIONS_WITHOUT_COMMAND,
                    format!("component {}: migrate_command is empty; it must name a program", c.name),
                ))
            }
            (ComponentKind::File | ComponentKind::Directory, Some(_)) => out.push(error(
                MIGRATE_COMMAND_NOT_MIGRATIONS,
                format!(
                    "component {} has a migrate_command but is not kind \"migrations\"; it would never run",
                    c.name
                ),
            )),
            _ => {}
        }
        for r in &c.requires {
            if spec.component(&r.name).is_none() {
                let known: Vec<&str> = spec.components.iter().map(|c| c.name.as_str()).collect();
                out.push(error(
                    REQUIRES_UNKNOWN_COMPONENT,
                    format!(
                        "component {} requires {:?}, which is not a component of this spec (known: {})",
                        c.name,
                        r.name,
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    out
}

/// The agent's own paths are refused everywhere (an error); a system directory only by hosts
/// whose `updates.allow_install_paths` does not allow it (a warning).
fn install_path_denied(component: &str, p: &InstallPath) -> Option<Finding> {
    let message =
        |why: String| format!("component {component}: install_path {p} is refused: {why}");
    if let Some(why) = agent_path_refusal(p) {
        return Some(error(INSTALL_PATH_DENIED, message(why)));
    }
    install_path_refusal(p, &[]).map(|why| Finding {
        lint: INSTALL_PATH_DENIED,
        severity: Severity::Warning,
        message: message(format!(
            "{why}; hosts refuse it unless their updates.allow_install_paths allows it"
        )),
    })
}

/// `permissions` without setuid/setgid or write-by-others bits, unless the component sets
/// `allow_setuid` / `allow_world_writable` (agents refuse them otherwise).
fn mode(c: &crate::spec::ComponentSpec) -> Option<Finding> {
    let allow = ModeAllowance {
        setuid: c.allow_setuid,
        world_writable: c.allow_world_writable,
    };
    let why = allow.refusal(c.permissions?.mode())?;
    Some(error(
        MODE_REFUSED,
        format!(
            "component {}: permissions {why} = true in its [[component]] section (agents refuse it otherwise)",
            c.name
        ),
    ))
}

/// A `file` component's archive must hold exactly one regular file and nothing else.
pub fn file_archive(component: &str, artifact: &str, entries: &[EntryInfo]) -> Option<Finding> {
    let files = entries.iter().filter(|e| e.kind == EntryKind::File).count();
    if files == 1 && entries.len() == 1 {
        return None;
    }
    let listing: Vec<String> = entries
        .iter()
        .take(5)
        .map(|e| {
            let kind = match e.kind {
                EntryKind::File => "file",
                EntryKind::Directory => "directory",
                EntryKind::Symlink => "link",
                EntryKind::Other => "special file",
            };
            format!("{} ({kind})", e.path)
        })
        .collect();
    Some(error(
        FILE_ARCHIVE_NOT_SINGLE_FILE,
        format!(
            "component {component} is kind \"file\" but {artifact} holds {} entries ({}{}); a file component must hold exactly one regular file (use kind \"directory\" for a tree)",
            entries.len(),
            listing.join(", "),
            if entries.len() > 5 { ", …" } else { "" }
        ),
    ))
}

/// The release version must be greater than every version the channel already has
/// (yanked ones included: agents remember the highest version they have seen).
pub fn version_newer(
    version: &Version,
    channel: &str,
    latest: Option<&Version>,
    strict: bool,
) -> Option<Finding> {
    let latest = latest?;
    if version > latest {
        return None;
    }
    Some(Finding {
        lint: VERSION_NOT_NEWER,
        severity: if strict {
            Severity::Error
        } else {
            Severity::Warning
        },
        message: format!(
            "version {version} is not greater than {latest}, which channel {channel} already has; agents will not take it as an update (bump `version` in the spec)"
        ),
    })
}

/// The secret key file must not be accessible by group or others.
pub fn secret_key(path: &Path) -> Result<Option<Finding>> {
    let meta = std::fs::metadata(path).map_err(Error::io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    Ok(Some(error(
        SECRET_KEY_EXPOSED,
        format!(
            "secret key {} has mode {mode:04o} and is readable by group or others; run `chmod 600 {}` (and consider the key leaked if others could read it)",
            path.display(),
            path.display()
        ),
    )))
}

/// Splits findings: errors refuse the release, warnings are returned for printing.
pub fn enforce(findings: Vec<Finding>) -> Result<Vec<Finding>> {
    let (errors, warnings): (Vec<_>, Vec<_>) = findings
        .into_iter()
        .partition(|f| f.severity == Severity::Error);
    if errors.is_empty() {
        Ok(warnings)
    } else {
        Err(Error::Lint(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Spec {
        let full = format!("product = \"p\"\nversion = \"1.0.0\"\n{text}");
        Spec::parse(&full, Path::new("/s/release.toml"), Path::new("/s")).expect("spec parses")
    }

    fn lints(text: &str) -> Vec<&'static str> {
        super::spec(&spec(text))
            .into_iter()
            .map(|f| f.lint)
            .collect()
    }

    #[test]
    fn good_spec_has_no_findings() {
        assert!(lints(
            "[[component]]\nname = \"a\"\ninstall_path = \"/data/bin/a\"\nsource = \"a\"\nrequires = [{name = \"m\", min_version = \"1.0.0\"}]\n\
             [[component]]\nname = \"m\"\nkind = \"migrations\"\ninstall_path = \"/data/m\"\nsource = \"m\"\nmigrate_command = [\"./m\"]\n"
        )
        .is_empty());
    }

    #[test]
    fn relative_install_path() {
        assert_eq!(
            lints("[[component]]\nname = \"a\"\ninstall_path = \"data/bin/a\"\nsource = \"a\"\n"),
            [INSTALL_PATH_INVALID]
        );
    }

    #[test]
    fn install_path_with_parent_dir() {
        assert_eq!(
            lints(
                "[[component]]\nname = \"a\"\ninstall_path = \"/data/../etc/a\"\nsource = \"a\"\n"
            ),
            [INSTALL_PATH_INVALID]
        );
    }

    #[test]
    fn same_install_path_twice() {
        assert_eq!(
            lints("[[component]]\nname = \"a\"\ninstall_path = \"/x\"\nsource = \"a\"\n[[component]]\nname = \"b\"\ninstall_path = \"/x\"\nsource = \"b\"\n"),
            [INSTALL_PATH_DUPLICATE]
        );
    }

    #[test]
    fn install_path_on_the_deny_list() {
        for path in [
            "/etc",
            "/usr",
            "/lib64",
            "/var/lib",
            "/etc/limiquantix",
            "/data/updates",
            "/data",
        ] {
            assert_eq!(
                lints(&format!(
                    "[[component]]\nname = \"a\"\ninstall_path = \"{path}\"\nsource = \"a\"\n"
                )),
                [INSTALL_PATH_DENIED],
                "{path}"
            );
        }
        let severity = |path: &str| {
            super::spec(&spec(&format!(
                "[[component]]\nname = \"a\"\ninstall_path = \"{path}\"\nsource = \"a\"\n"
            )))[0]
                .severity
        };
        assert_eq!(severity("/usr"), Severity::Warning);
        assert_eq!(severity("/etc/limiquantix"), Severity::Error);
    }

    #[test]
    fn setuid_permissions_without_allow_setuid() {
        let base = "[[component]]\nname = \"a\"\ninstall_path = \"/data/bin/a\"\nsource = \"a\"\npermissions = \"6755\"\n";
        assert_eq!(lints(base), [MODE_REFUSED]);
        let f = super::spec(&spec(base)).remove(0);
        assert!(f.message.contains("allow_setuid = true"), "{f}");
        assert!(lints(&format!("{base}allow_setuid = true\n")).is_empty());
    }

    #[test]
    fn world_writable_permissions_without_allow_world_writable() {
        let base = "[[component]]\nname = \"a\"\nkind = \"directory\"\ninstall_path = \"/data/share/a\"\nsource = \"a\"\npermissions = \"2777\"\nallow_setuid = true\n";
        assert_eq!(lints(base), [MODE_REFUSED]);
        let f = super::spec(&spec(base)).remove(0);
        assert!(f.message.contains("allow_world_writable = true"), "{f}");
        assert!(lints(&format!("{base}allow_world_writable = true\n")).is_empty());
    }

    #[test]
    fn migrations_without_command() {
        assert_eq!(
            lints("[[component]]\nname = \"m\"\nkind = \"migrations\"\ninstall_path = \"/m\"\nsource = \"m\"\n"),
            [MIGRATIONS_WITHOUT_COMMAND]
        );
    }

    #[test]
    fn migrate_command_on_a_file_component() {
        assert_eq!(
            lints("[[component]]\nname = \"m\"\ninstall_path = \"/m\"\nsource = \"m\"\nmigrate_command = [\"x\"]\n"),
            [MIGRATE_COMMAND_NOT_MIGRATIONS]
        );
    }

    #[test]
    fn requires_unknown_component() {
        assert_eq!(
            lints("[[component]]\nname = \"a\"\ninstall_path = \"/a\"\nsource = \"a\"\nrequires = [{name = \"nope\", min_version = \"1.0.0\"}]\n"),
            [REQUIRES_UNKNOWN_COMPONENT]
        );
    }

    fn entry(path: &str, kind: EntryKind) -> EntryInfo {
        EntryInfo {
            path: path.into(),
            kind,
            size: 0,
            mode: 0o644,
            link_target: None,
        }
    }

    #[test]
    fn file_archive_with_two_files() {
        let f = file_archive(
            "a",
            "a.tar.zst",
            &[entry("x", EntryKind::File), entry("y", EntryKind::File)],
        );
        assert_eq!(f.map(|f| f.lint), Some(FILE_ARCHIVE_NOT_SINGLE_FILE));
    }

    #[test]
    fn file_archive_with_a_directory() {
        let f = file_archive("a", "a.tar.zst", &[entry("x/", EntryKind::Directory)]);
        assert_eq!(f.map(|f| f.lint), Some(FILE_ARCHIVE_NOT_SINGLE_FILE));
    }

    #[test]
    fn file_archive_with_one_file_is_fine() {
        assert!(file_archive("a", "a.tar.zst", &[entry("x", EntryKind::File)]).is_none());
    }

    #[test]
    fn version_not_newer_warns_or_refuses() {
        let v = Version::parse("1.0.0").expect("v");
        let same = Version::parse("1.0.0").expect("v");
        let older = Version::parse("0.9.0").expect("v");
        assert!(version_newer(&v, "dev", Some(&older), true).is_none());
        assert!(version_newer(&v, "dev", None, true).is_none());
        let w = version_newer(&v, "dev", Some(&same), false).expect("finding");
        assert_eq!((w.lint, w.severity), (VERSION_NOT_NEWER, Severity::Warning));
        let e = version_newer(&v, "dev", Some(&same), true).expect("finding");
        assert_eq!(e.severity, Severity::Error);
    }

    #[test]
    fn secret_key_readable_by_others() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let k = tmp.path().join("k.key");
        std::fs::write(&k, "x").expect("write");
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(
            secret_key(&k).expect("stat").map(|f| f.lint),
            Some(SECRET_KEY_EXPOSED)
        );
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(secret_key(&k).expect("stat").is_none());
    }
}
