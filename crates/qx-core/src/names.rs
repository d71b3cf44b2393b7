//! Validated names and paths. A value of these types has passed its rule; the constructors
//! are the only way in (deserialisation goes through them too).

use std::borrow::Cow;
use std::fmt;
use std::path::{Component as PathComponent, Path};

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// The rule for product, channel, component and artifact names (docs/spec.md §2).
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,63}$";
/// The rule for service names: what init systems accept, without path separators.
pub const SERVICE_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9@._:-]{0,127}$";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} {value:?} is invalid: {reason}")]
    Invalid {
        kind: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Checks a name against [`NAME_PATTERN`] and the `.`/`..` exclusion.
pub fn check_name(kind: &'static str, value: &str) -> Result<(), NameError> {
    let invalid = |reason| NameError::Invalid {
        kind,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("it is empty"));
    }
    if value.len() > 64 {
        return Err(invalid("it is longer than 64 characters"));
    }
    if value == "." || value == ".." {
        return Err(invalid("it must not be '.' or '..'"));
    }
    let mut bytes = value.bytes();
    let first = bytes.next().unwrap_or(b'.');
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(invalid("it must start with a lowercase letter or a digit"));
    }
    if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
        return Err(invalid(
            "only lowercase letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}

/// Words the update server's own routes use right under `/api/v1/` (the fleet API): a
/// product of that name could not be reached, so none may be called so.
pub const RESERVED_PRODUCT_NAMES: &[&str] = &["hosts", "tokens", "enrollment-tokens", "fleet"];

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        name_type!($(#[$doc])* $ty, $kind, &[]);
    };
    ($(#[$doc:meta])* $ty:ident, $kind:literal, $reserved:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                check_name($kind, &value)?;
                let reserved: &[&str] = $reserved;
                if reserved.contains(&value.as_str()) {
                    return Err(NameError::Invalid {
                        kind: $kind,
                        value,
                        reason: "it is reserved for the update server's own endpoints (hosts, tokens, enrollment-tokens, fleet)",
                    });
                }
                Ok(Self(value))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                Self::new(value)
            }
        }
        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(value: &str) -> Result<Self, NameError> {
                Self::new(value)
            }
        }
        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": NAME_PATTERN,
                    "not": {"enum": [".", ".."]},
                    "description": concat!("A ", $kind, ": lowercase letters, digits, '.', '_', '-'; 1 to 64 characters.")
                })
            }
        }
    };
}

name_type!(
    /// A product, e.g. `quantix-os`.
    ProductName,
    "product name",
    RESERVED_PRODUCT_NAMES
);
name_type!(
    /// A release channel, e.g. `stable`.
    ChannelName,
    "channel name"
);
name_type!(
    /// A component of a release, e.g. `qx-node`.
    ComponentName,
    "component name"
);
name_type!(
    /// A downloadable file of a release, e.g. `qx-node.tar.zst`.
    ArtifactName,
    "artifact name"
);

/// A service known to the host's init system.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
        let value = value.into();
        let invalid = |reason| NameError::Invalid {
            kind: "service name",
            value: value.clone(),
            reason,
        };
        if value.is_empty() || value.len() > 128 {
            return Err(invalid("it must be 1 to 128 characters long"));
        }
        let ok_first = value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        let ok_rest = value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@._:-".contains(&b));
        if !ok_first || !ok_rest {
            return Err(invalid(
                "only letters, digits and '@', '.', '_', ':', '-' are allowed, starting with a letter, digit or '_'",
            ));
        }
        Ok(Self(value))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for ServiceName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, NameError> {
        Self::new(value)
    }
}
impl From<ServiceName> for String {
    fn from(value: ServiceName) -> String {
        value.0
    }
}
impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl JsonSchema for ServiceName {
    fn schema_name() -> Cow<'static, str> {
        "ServiceName".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": SERVICE_PATTERN})
    }
}

/// Where a component is installed on the host: absolute, normalised, without `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstallPath(String);

impl InstallPath {
    pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
        let value = value.into();
        let invalid = |reason| NameError::Invalid {
            kind: "install_path",
            value: value.clone(),
            reason,
        };
        if !value.starts_with('/') {
            return Err(invalid("it must be an absolute path"));
        }
        if value == "/" {
            return Err(invalid("it must not be the root directory"));
        }
        if value.len() > 4096 || value.contains('\0') {
            return Err(invalid("it is too long or contains a NUL byte"));
        }
        let mut normal = String::new();
        for part in Path::new(&value).components() {
            match part {
                PathComponent::RootDir => {}
                PathComponent::Normal(p) => {
                    normal.push('/');
                    normal.push_str(&p.to_string_lossy());
                }
                PathComponent::ParentDir => return Err(invalid("it must not contain '..'")),
                PathComponent::CurDir | PathComponent::Prefix(_) => {
                    return Err(invalid("it must be normalised (no '.' segments)"))
                }
            }
        }
        if normal != value {
            return Err(invalid(
                "it must be normalised (no '//', '/.' or trailing '/')",
            ));
        }
        Ok(Self(value))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }
    /// The path below a root prefix (`--root`): `/data/bin/x` under `/tmp/h` is `/tmp/h/data/bin/x`.
    pub fn under(&self, root: &Path) -> std::path::PathBuf {
        root.join(self.0.trim_start_matches('/'))
    }
}
impl TryFrom<String> for InstallPath {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, NameError> {
        Self::new(value)
    }
}
impl From<InstallPath> for String {
    fn from(value: InstallPath) -> String {
        value.0
    }
}
impl fmt::Display for InstallPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl JsonSchema for InstallPath {
    fn schema_name() -> Cow<'static, str> {
        "InstallPath".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^/",
            "description": "Absolute, normalised path without '..' segments."
        })
    }
}

/// Unix permission bits written as an octal string, e.g. `"0755"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Permissions(u32);

impl Permissions {
    pub fn new(mode: u32) -> Result<Self, NameError> {
        if mode > 0o7777 {
            return Err(NameError::Invalid {
                kind: "permissions",
                value: format!("{mode:o}"),
                reason: "it must be at most 07777",
            });
        }
        Ok(Self(mode))
    }
    pub fn mode(self) -> u32 {
        self.0
    }
}
impl TryFrom<String> for Permissions {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, NameError> {
        let invalid = |reason| NameError::Invalid {
            kind: "permissions",
            value: value.clone(),
            reason,
        };
        if value.is_empty() || value.len() > 5 {
            return Err(invalid("it must be an octal mode such as \"0755\""));
        }
        let mode = u32::from_str_radix(&value, 8)
            .map_err(|_| invalid("it must be an octal mode such as \"0755\""))?;
        Self::new(mode)
    }
}
impl From<Permissions> for String {
    fn from(value: Permissions) -> String {
        format!("{:04o}", value.0)
    }
}
impl JsonSchema for Permissions {
    fn schema_name() -> Cow<'static, str> {
        "Permissions".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "pattern": "^[0-7]{3,5}$"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_route_words_are_not_product_names() {
        for word in RESERVED_PRODUCT_NAMES {
            let e = ProductName::new(*word).expect_err(word).to_string();
            assert!(e.contains("reserved"), "{e}");
            assert!(
                ChannelName::new(*word).is_ok(),
                "{word} stays a valid channel name"
            );
        }
        assert!(serde_json::from_str::<ProductName>("\"hosts\"").is_err());
    }

    #[test]
    fn accepts_good_names() {
        for ok in [
            "quantix-os",
            "qx-node.tar.zst",
            "a",
            "0.0.5",
            &"a".repeat(64),
        ] {
            assert!(ProductName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "Upper",
            "-lead",
            ".hidden",
            "sp ace",
            &"a".repeat(65),
        ] {
            assert!(ArtifactName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn install_path_rules() {
        assert!(InstallPath::new("/data/bin/qx-node").is_ok());
        for bad in [
            "data/bin",
            "/",
            "/data/../etc",
            "/data//bin",
            "/data/./bin",
            "/data/bin/",
            "",
        ] {
            assert!(InstallPath::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn permissions_roundtrip() {
        let p = Permissions::try_from("0755".to_owned()).expect("valid");
        assert_eq!(p.mode(), 0o755);
        assert_eq!(String::from(p), "0755");
        assert!(Permissions::try_from("0999".to_owned()).is_err());
        assert!(Permissions::try_from("17777".to_owned()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn name_rule_matches_pattern(s in "\\PC{0,70}") {
            let ok = check_name("name", &s).is_ok();
            let pattern_ok = !s.is_empty() && s.len() <= 64 && s != "." && s != ".."
                && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
            proptest::prop_assert_eq!(ok, pattern_ok);
        }
    }
}
