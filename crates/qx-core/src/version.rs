//! SemVer 2.0 versions ordered by precedence (build metadata does not count).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version(semver::Version);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version {value:?} is not SemVer 2.0 ({reason})")]
pub struct VersionError {
    pub value: String,
    pub reason: String,
}

impl Version {
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        semver::Version::parse(s)
            .map(Self)
            .map_err(|e| VersionError {
                value: s.to_owned(),
                reason: e.to_string(),
            })
    }
    pub fn semver(&self) -> &semver::Version {
        &self.0
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Version {}
impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Version {
    /// SemVer precedence: build metadata is ignored.
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp_precedence(&other.0)
    }
}
impl std::str::FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
impl TryFrom<String> for Version {
    type Error = VersionError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}
impl From<Version> for String {
    fn from(value: Version) -> String {
        value.0.to_string()
    }
}
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
impl JsonSchema for Version {
    fn schema_name() -> Cow<'static, str> {
        "Version".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "description": "A SemVer 2.0 version, e.g. 1.2.3 or 1.2.3-rc.1"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("valid version")
    }

    #[test]
    fn precedence_examples_from_semver_spec() {
        let order = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.10.0",
        ];
        for pair in order.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn build_metadata_is_ignored() {
        assert_eq!(v("1.0.0+a"), v("1.0.0+b"));
    }

    #[test]
    fn rejects_non_semver() {
        for bad in ["1", "1.0", "v1.0.0", "01.0.0", "1.0.0-", ""] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn numeric_order_is_lexicographic_on_triples(a in (0u64..50, 0u64..50, 0u64..50), b in (0u64..50, 0u64..50, 0u64..50)) {
            let va = v(&format!("{}.{}.{}", a.0, a.1, a.2));
            let vb = v(&format!("{}.{}.{}", b.0, b.1, b.2));
            prop_assert_eq!(va.cmp(&vb), a.cmp(&b));
        }

        #[test]
        fn prerelease_sorts_before_release(a in (0u64..50, 0u64..50, 0u64..50), pre in "[a-z]{1,5}") {
            let rel = v(&format!("{}.{}.{}", a.0, a.1, a.2));
            let p = v(&format!("{}.{}.{}-{}", a.0, a.1, a.2, pre));
            prop_assert!(p < rel);
        }
    }
}
