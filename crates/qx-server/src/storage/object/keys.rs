//! The object keys of the store's layout under its prefix (see the parent module).

use object_store::path::{Path, PathPart};
use qx_core::{ChannelName, ProductName, MANIFEST_FILE};

use super::STAGING_PREFIX;
use crate::storage::ReleaseKey;

/// The keys of one bucket and prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    bucket: String,
    root: Path,
}

/// What a stored object belongs to, for the sweep: an upload (`.staging/<id>`) or a release
/// (`<product>/<channel>/<version>`).
pub struct Group {
    pub name: String,
    pub is_manifest: bool,
}

impl Keys {
    pub fn new(bucket: &str, prefix: &str) -> Self {
        Self {
            bucket: bucket.to_owned(),
            root: Path::from(prefix),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn url(&self) -> String {
        match self.root.as_ref() {
            "" => format!("s3://{}", self.bucket),
            p => format!("s3://{}/{p}", self.bucket),
        }
    }

    pub fn root(&self) -> Path {
        self.root.clone()
    }

    fn join<'a>(&self, parts: impl IntoIterator<Item = &'a str>) -> Path {
        parts.into_iter().fold(self.root.clone(), |path, part| {
            path.join(PathPart::from(part))
        })
    }

    pub fn channel(&self, product: &ProductName, channel: &ChannelName) -> Path {
        self.join([product.as_str(), channel.as_str()])
    }

    pub fn channel_file(&self, product: &ProductName, channel: &ChannelName, file: &str) -> Path {
        self.join([product.as_str(), channel.as_str(), file])
    }

    pub fn release(&self, key: &ReleaseKey) -> Path {
        let version = key.version.to_string();
        self.join([key.product.as_str(), key.channel.as_str(), version.as_str()])
    }

    pub fn release_file(&self, key: &ReleaseKey, file: &str) -> Path {
        self.release(key).join(file)
    }

    pub fn staging(&self, id: &str) -> Path {
        self.join([STAGING_PREFIX, id])
    }

    /// The `N` parts of `location` after `prefix`; `None` when it has another number of parts
    /// there (or is not under it).
    pub fn relative<const N: usize>(&self, prefix: &Path, location: &Path) -> Option<[String; N]> {
        let rest: Vec<String> = location
            .prefix_match(prefix)?
            .map(|p| p.as_ref().to_owned())
            .collect();
        rest.try_into().ok()
    }

    /// The upload or release an object belongs to; `None` for other objects (channel states).
    pub fn group_of(&self, location: &Path) -> Option<Group> {
        let parts: Vec<String> = location
            .prefix_match(&self.root)?
            .map(|p| p.as_ref().to_owned())
            .collect();
        match parts.as_slice() {
            [staging, id, _, ..] if staging == STAGING_PREFIX => Some(Group {
                name: format!("{staging}/{id}"),
                is_manifest: false,
            }),
            [product, channel, version, file] => Some(Group {
                name: format!("{product}/{channel}/{version}"),
                is_manifest: file == MANIFEST_FILE,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qx_core::Version;

    fn key() -> ReleaseKey {
        ReleaseKey {
            product: ProductName::new("app").expect("test value"),
            channel: ChannelName::new("stable").expect("test value"),
            version: Version::parse("1.2.0+build.7").expect("test value"),
        }
    }

    #[test]
    fn release_files_sit_under_the_prefix() {
        let keys = Keys::new("b", "fleet/eu");
        assert_eq!(
            keys.release_file(&key(), "manifest.json").as_ref(),
            "fleet/eu/app/stable/1.2.0+build.7/manifest.json"
        );
        assert_eq!(keys.url(), "s3://b/fleet/eu");
        let bare = Keys::new("b", "");
        assert_eq!(bare.release(&key()).as_ref(), "app/stable/1.2.0+build.7");
        assert_eq!(bare.url(), "s3://b");
    }

    #[test]
    fn relative_parts_and_groups() {
        let keys = Keys::new("b", "p");
        let file = keys.release_file(&key(), "a.bin");
        let under = keys.channel(&key().product, &key().channel);
        assert_eq!(
            keys.relative::<2>(&under, &file),
            Some(["1.2.0+build.7".to_owned(), "a.bin".to_owned()])
        );
        assert_eq!(keys.relative::<1>(&under, &file), None);
        let g = keys
            .group_of(&keys.release_file(&key(), MANIFEST_FILE))
            .expect("test value");
        assert_eq!(g.name, "app/stable/1.2.0+build.7");
        assert!(g.is_manifest);
        let s = keys
            .group_of(&keys.staging("upload-1").join("a.bin"))
            .expect("test value");
        assert_eq!(s.name, ".staging/upload-1");
        assert!(keys
            .group_of(&keys.channel_file(&key().product, &key().channel, "channel.state"))
            .is_none());
        assert!(keys.group_of(&Path::from("other/x")).is_none());
    }
}
