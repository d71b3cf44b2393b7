//! The release spec: a TOML file per product that says what a release is made of
//! (docs/release-spec.md documents every field).
//!
//! Parsing keeps install paths and `requires` names as written, so that the lints
//! ([`crate::lint`]) can report a bad one with a clear message instead of a parse error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use qx_core::{
    ChannelName, ComponentKind, ComponentName, Permissions, ProductName, ServiceName, TargetSlot,
    Version,
};
use serde::Deserialize;

use crate::error::{Error, Result};

/// How long a manifest stays valid when the spec does not say (`expires_in`).
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(90 * 24 * 3600);
/// The channel a release goes to when neither the spec nor `--channel` says: the one the
/// agent follows and the server answers by default.
pub use qx_core::api::DEFAULT_CHANNEL;

/// A parsed release spec with its relative paths resolved against the spec's directory.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The spec file itself.
    pub path: PathBuf,
    /// The directory holding the spec: relative sources resolve from here and build commands
    /// run here.
    pub dir: PathBuf,
    pub product: ProductName,
    pub version: Version,
    pub channel: ChannelName,
    pub expires_in: Duration,
    pub release_notes: String,
    pub min_version: Option<Version>,
    pub components: Vec<ComponentSpec>,
    pub full_image: Option<FullImageSpec>,
}

/// Where a component's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An existing file or directory.
    Path(PathBuf),
    /// A shell command (run with `sh -c` in the spec's directory) that produces `output`.
    Build { command: String, output: PathBuf },
}

impl Source {
    /// The file or directory that gets packed.
    pub fn content(&self) -> &Path {
        match self {
            Source::Path(p) => p,
            Source::Build { output, .. } => output,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ComponentSpec {
    pub name: ComponentName,
    pub kind: ComponentKind,
    /// As written; checked by the `install-path-invalid` lint.
    pub install_path: String,
    pub source: Source,
    pub restart_service: Option<ServiceName>,
    pub backup_before_update: bool,
    pub permissions: Option<Permissions>,
    /// Permit setuid/setgid modes (refused by the `mode-refused` lint otherwise).
    pub allow_setuid: bool,
    /// Permit modes writable by others (refused by the `mode-refused` lint otherwise).
    pub allow_world_writable: bool,
    pub requires: Vec<RequireSpec>,
    pub migrate_command: Option<Vec<String>>,
    pub health_command: Option<Vec<String>>,
}

impl ComponentSpec {
    /// The artifact file name of this component: `<name>.tar.zst`.
    pub fn artifact_name(&self) -> String {
        format!("{}.tar.zst", self.name)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequireSpec {
    /// As written; checked by the `requires-unknown-component` lint.
    pub name: String,
    pub min_version: Version,
}

#[derive(Debug, Clone)]
pub struct FullImageSpec {
    pub squashfs: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initramfs: Option<PathBuf>,
    pub requires_reboot: bool,
    pub target_slot: TargetSlot,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    product: ProductName,
    version: Version,
    channel: Option<ChannelName>,
    expires_in: Option<String>,
    #[serde(default)]
    release_notes: String,
    min_version: Option<Version>,
    #[serde(default)]
    component: Vec<RawComponent>,
    full_image: Option<RawFullImage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    name: ComponentName,
    #[serde(default)]
    kind: ComponentKind,
    install_path: String,
    source: Option<String>,
    build: Option<String>,
    output: Option<String>,
    restart_service: Option<ServiceName>,
    #[serde(default = "yes")]
    backup_before_update: bool,
    permissions: Option<Permissions>,
    #[serde(default)]
    allow_setuid: bool,
    #[serde(default)]
    allow_world_writable: bool,
    #[serde(default)]
    requires: Vec<RequireSpec>,
    migrate_command: Option<Vec<String>>,
    health_command: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFullImage {
    squashfs: String,
    kernel: Option<String>,
    initramfs: Option<String>,
    #[serde(default = "yes")]
    requires_reboot: bool,
    #[serde(default)]
    target_slot: TargetSlot,
}

/// `p` resolved against the spec's directory (an absolute path stays as it is).
fn resolve(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        dir.join(p)
    }
}

/// The `expires_in` duration (default 90 days); zero is refused.
fn expires_in(text: Option<&str>) -> std::result::Result<Duration, String> {
    let Some(s) = text else {
        return Ok(DEFAULT_EXPIRES_IN);
    };
    let d = humantime::parse_duration(s).map_err(|e| {
        format!("expires_in = {s:?} is not a duration such as \"90d\" or \"12h\": {e}")
    })?;
    if d.is_zero() {
        return Err("expires_in must be longer than zero".into());
    }
    Ok(d)
}

impl RawComponent {
    /// The component with its source resolved against the spec's directory.
    fn resolve(self, dir: &Path) -> std::result::Result<ComponentSpec, String> {
        let source = self.source(dir)?;
        Ok(ComponentSpec {
            name: self.name,
            kind: self.kind,
            install_path: self.install_path,
            source,
            restart_service: self.restart_service,
            backup_before_update: self.backup_before_update,
            permissions: self.permissions,
            allow_setuid: self.allow_setuid,
            allow_world_writable: self.allow_world_writable,
            requires: self.requires,
            migrate_command: self.migrate_command,
            health_command: self.health_command,
        })
    }

    /// Where the content comes from: `source`, or `build` + `output`.
    fn source(&self, dir: &Path) -> std::result::Result<Source, String> {
        let name = &self.name;
        match (&self.source, &self.build, &self.output) {
            (Some(s), None, None) => Ok(Source::Path(resolve(dir, s))),
            (None, Some(command), Some(output)) => {
                if command.trim().is_empty() {
                    return Err(format!("component {name}: build must be a shell command"));
                }
                Ok(Source::Build {
                    command: command.clone(),
                    output: resolve(dir, output),
                })
            }
            (None, Some(_), None) => Err(format!(
                "component {name}: a build command needs `output` (the file or directory it produces)"
            )),
            (None, None, Some(_)) => Err(format!(
                "component {name}: `output` needs a `build` command (or use `source` for an existing path)"
            )),
            (None, None, None) => Err(format!(
                "component {name}: needs `source` (a file or directory) or `build` + `output`"
            )),
            (Some(_), _, _) => Err(format!(
                "component {name}: give either `source` or `build` + `output`, not both"
            )),
        }
    }
}

impl Spec {
    /// Reads and parses a spec file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let dir = qx_core::fs::parent_of(path);
        let dir = std::fs::canonicalize(dir).map_err(Error::io(dir))?;
        Self::parse(&text, path, &dir)
    }

    /// Parses spec text; `dir` is where relative paths resolve.
    pub fn parse(text: &str, path: &Path, dir: &Path) -> Result<Self> {
        let bad = |message: String| Error::Spec {
            path: path.to_owned(),
            message,
        };
        let raw: RawSpec =
            toml::from_str(text).map_err(|e| bad(e.to_string().trim_end().to_owned()))?;
        let expires_in = expires_in(raw.expires_in.as_deref()).map_err(bad)?;
        let resolve = |p: &str| resolve(dir, p);
        let components = raw
            .component
            .into_iter()
            .map(|c| c.resolve(dir))
            .collect::<std::result::Result<Vec<_>, String>>()
            .map_err(bad)?;
        let mut seen = std::collections::HashSet::new();
        if let Some(c) = components.iter().find(|c| !seen.insert(c.name.clone())) {
            return Err(bad(format!(
                "component {} is defined more than once",
                c.name
            )));
        }
        if components.is_empty() && raw.full_image.is_none() {
            return Err(bad(
                "the spec has no [[component]] and no [full_image]; a release needs at least one"
                    .into(),
            ));
        }
        let full_image = raw.full_image.map(|f| FullImageSpec {
            squashfs: resolve(&f.squashfs),
            kernel: f.kernel.as_deref().map(resolve),
            initramfs: f.initramfs.as_deref().map(resolve),
            requires_reboot: f.requires_reboot,
            target_slot: f.target_slot,
        });
        let channel = match raw.channel {
            Some(c) => c,
            None => ChannelName::new(DEFAULT_CHANNEL)
                .map_err(|e| bad(format!("default channel: {e}")))?,
        };
        Ok(Spec {
            path: path.to_owned(),
            dir: dir.to_owned(),
            product: raw.product,
            version: raw.version,
            channel,
            expires_in,
            release_notes: raw.release_notes,
            min_version: raw.min_version,
            components,
            full_image,
        })
    }

    pub fn component(&self, name: &str) -> Option<&ComponentSpec> {
        self.components.iter().find(|c| c.name.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Spec> {
        Spec::parse(text, Path::new("/specs/release.toml"), Path::new("/specs"))
    }

    const GOOD: &str = r#"
product = "quantix-demo"
version = "1.2.3"
expires_in = "30d"
release_notes = "notes"

[[component]]
name = "qx-demo"
kind = "file"
install_path = "/data/bin/qx-demo"
build = "sh build.sh"
output = "build/qx-demo"
restart_service = "qx-demo"
permissions = "0755"
requires = [{ name = "migrations", min_version = "1.0.0" }]

[[component]]
name = "migrations"
kind = "migrations"
install_path = "/data/share/qx-demo/migrations"
source = "migrations"
migrate_command = ["./migrate.sh", "up"]

[full_image]
squashfs = "/images/system.squashfs"
kernel = "image/vmlinuz"
"#;

    #[test]
    fn parses_a_complete_spec() {
        let s = parse(GOOD).expect("parses");
        assert_eq!(s.product.as_str(), "quantix-demo");
        assert_eq!(s.version.to_string(), "1.2.3");
        assert_eq!(
            s.channel.as_str(),
            "stable",
            "the default channel, as the agent's and the server's"
        );
        assert_eq!(s.expires_in, Duration::from_secs(30 * 24 * 3600));
        assert_eq!(s.components.len(), 2);
        assert_eq!(
            s.components[0].source,
            Source::Build {
                command: "sh build.sh".into(),
                output: PathBuf::from("/specs/build/qx-demo")
            }
        );
        assert_eq!(
            s.components[1].source,
            Source::Path("/specs/migrations".into())
        );
        assert_eq!(s.components[1].kind, ComponentKind::Migrations);
        let img = s.full_image.expect("full image");
        assert_eq!(img.squashfs, PathBuf::from("/images/system.squashfs"));
        assert_eq!(img.kernel, Some(PathBuf::from("/specs/image/vmlinuz")));
        assert!(img.requires_reboot);
    }

    #[test]
    fn mode_allowances_default_to_false_and_can_be_set() {
        let s = parse("product = \"p\"\nversion = \"1.0.0\"\n[[component]]\nname = \"a\"\ninstall_path = \"/data/a\"\nsource = \"a\"\n[[component]]\nname = \"b\"\ninstall_path = \"/data/b\"\nsource = \"b\"\npermissions = \"6777\"\nallow_setuid = true\nallow_world_writable = true\n")
            .expect("parses");
        assert!(!s.components[0].allow_setuid && !s.components[0].allow_world_writable);
        assert!(s.components[1].allow_setuid && s.components[1].allow_world_writable);
    }

    #[test]
    fn default_expiry_is_90_days() {
        let s = parse("product = \"p\"\nversion = \"1.0.0\"\n[[component]]\nname = \"a\"\ninstall_path = \"/a\"\nsource = \"a\"\n")
            .expect("parses");
        assert_eq!(s.expires_in, DEFAULT_EXPIRES_IN);
    }

    #[test]
    fn unknown_field_is_refused() {
        let e =
            parse("product = \"p\"\nversion = \"1.0.0\"\nchanel = \"dev\"\n").expect_err("typo");
        assert!(e.to_string().contains("chanel"), "{e}");
    }

    #[test]
    fn build_without_output_is_refused() {
        let e = parse("product = \"p\"\nversion = \"1.0.0\"\n[[component]]\nname = \"a\"\ninstall_path = \"/a\"\nbuild = \"make\"\n")
            .expect_err("no output");
        assert!(e.to_string().contains("needs `output`"), "{e}");
    }

    #[test]
    fn source_and_build_together_are_refused() {
        let e = parse("product = \"p\"\nversion = \"1.0.0\"\n[[component]]\nname = \"a\"\ninstall_path = \"/a\"\nsource = \"x\"\nbuild = \"make\"\noutput = \"y\"\n")
            .expect_err("both");
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn bad_version_is_refused() {
        let e = parse("product = \"p\"\nversion = \"1.0\"\n").expect_err("version");
        assert!(e.to_string().contains("SemVer"), "{e}");
    }

    #[test]
    fn bad_expiry_is_refused() {
        let e = parse("product = \"p\"\nversion = \"1.0.0\"\nexpires_in = \"soon\"\n[[component]]\nname = \"a\"\ninstall_path = \"/a\"\nsource = \"a\"\n")
            .expect_err("expiry");
        assert!(e.to_string().contains("expires_in"), "{e}");
    }

    #[test]
    fn empty_release_is_refused() {
        let e = parse("product = \"p\"\nversion = \"1.0.0\"\n").expect_err("empty");
        assert!(e.to_string().contains("no [[component]]"), "{e}");
    }

    #[test]
    fn duplicate_component_name_is_refused() {
        let e = parse("product = \"p\"\nversion = \"1.0.0\"\n[[component]]\nname = \"a\"\ninstall_path = \"/a\"\nsource = \"a\"\n[[component]]\nname = \"a\"\ninstall_path = \"/b\"\nsource = \"b\"\n")
            .expect_err("dup");
        assert!(e.to_string().contains("more than once"), "{e}");
    }
}
