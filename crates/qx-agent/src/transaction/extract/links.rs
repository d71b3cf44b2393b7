//! Where a symbolic link of an archive really points: its target resolved against the
//! extraction tree as the kernel would, following the links the archive created before it
//! (the whole chain, `..` after a link included), never leaving the tree.
//!
//! A lexical check of each target alone is not enough: `x/up -> ..` stays inside, and so does
//! `p1 -> x/up/..` read as text, but the kernel reads `x/up/..` as "the parent of the root",
//! so a chain of such links reaches the host's `/`. Pure code over the links' names and
//! targets, without the file system (the fuzzers drive it directly).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Links followed while resolving one target before it is refused as a loop (the kernel's own
/// limit is 40).
pub const MAX_LINK_HOPS: u32 = 40;

/// Why a link target is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    /// Empty, absolute, or resolving (through other links) to outside the tree.
    Escapes,
    /// More than [`MAX_LINK_HOPS`] links on the way: a loop, or a chain too long to trust.
    TooManyHops,
}

/// The symbolic links of one extraction: path below the root → target as written.
#[derive(Debug, Default, Clone)]
pub struct LinkTree {
    links: HashMap<PathBuf, PathBuf>,
}

impl LinkTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the link at `link` (relative to the root, normal components only) pointing to
    /// `target` against the links known so far, and records it. Returns where it resolves,
    /// relative to the root (empty: the root itself).
    pub fn add(&mut self, link: &Path, target: &str) -> Result<PathBuf, LinkRefusal> {
        let resolved = self.resolve(link, target)?;
        self.links.insert(link.to_owned(), PathBuf::from(target));
        Ok(resolved)
    }

    /// Where `target`, written in a link at `link`, resolves, following every known link on
    /// the way. A component that is not a known link is taken as a directory.
    pub fn resolve(&self, link: &Path, target: &str) -> Result<PathBuf, LinkRefusal> {
        if target.is_empty() {
            return Err(LinkRefusal::Escapes);
        }
        let mut base: Vec<OsString> = link.iter().map(|c| c.to_owned()).collect();
        base.pop();
        let mut hops = MAX_LINK_HOPS;
        let at = self.walk(base, Path::new(target), &mut hops)?;
        Ok(at.iter().collect())
    }

    /// Every recorded link checked again against all of them: a link created later can
    /// change what an earlier target passing through its name means. Returns the first link
    /// refused.
    pub fn recheck(&self) -> Result<(), (PathBuf, LinkRefusal)> {
        let mut names: Vec<&PathBuf> = self.links.keys().collect();
        names.sort();
        for link in names {
            let target = self.links[link].to_string_lossy();
            self.resolve(link, &target)
                .map_err(|why| (link.clone(), why))?;
        }
        Ok(())
    }

    /// Walks `target` from the directory `at`, expanding known links in place.
    fn walk(
        &self,
        mut at: Vec<OsString>,
        target: &Path,
        hops: &mut u32,
    ) -> Result<Vec<OsString>, LinkRefusal> {
        for c in target.components() {
            match c {
                Component::RootDir | Component::Prefix(_) => return Err(LinkRefusal::Escapes),
                Component::CurDir => {}
                Component::ParentDir => {
                    at.pop().ok_or(LinkRefusal::Escapes)?;
                }
                Component::Normal(name) => {
                    at.push(name.to_owned());
                    let here: PathBuf = at.iter().collect();
                    if let Some(next) = self.links.get(&here) {
                        *hops = hops.checked_sub(1).ok_or(LinkRefusal::TooManyHops)?;
                        at.pop();
                        at = self.walk(at, next, hops)?;
                    }
                }
            }
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(t: &mut LinkTree, link: &str, target: &str) -> Result<PathBuf, LinkRefusal> {
        t.add(Path::new(link), target)
    }

    #[test]
    fn a_chain_of_parent_links_is_refused_where_it_leaves_the_tree() {
        let mut t = LinkTree::new();
        assert_eq!(add(&mut t, "x/up", ".."), Ok(PathBuf::new()));
        assert_eq!(add(&mut t, "p1", "x/up/.."), Err(LinkRefusal::Escapes));
    }

    #[test]
    fn links_inside_the_tree_resolve_through_other_links() {
        let mut t = LinkTree::new();
        assert_eq!(add(&mut t, "lib/cur", "v2"), Ok(PathBuf::from("lib/v2")));
        assert_eq!(
            add(&mut t, "bin/x", "../lib/cur/x"),
            Ok(PathBuf::from("lib/v2/x"))
        );
        assert_eq!(
            add(&mut t, "a/b/c", "../../bin/x"),
            Ok(PathBuf::from("lib/v2/x"))
        );
        assert_eq!(add(&mut t, "top", "."), Ok(PathBuf::new()));
    }

    #[test]
    fn absolute_and_empty_targets_are_refused() {
        let mut t = LinkTree::new();
        assert_eq!(add(&mut t, "a", "/etc"), Err(LinkRefusal::Escapes));
        assert_eq!(add(&mut t, "a", ""), Err(LinkRefusal::Escapes));
        assert_eq!(add(&mut t, "a", "b/../.."), Err(LinkRefusal::Escapes));
    }

    #[test]
    fn a_later_link_that_changes_an_earlier_target_is_caught_by_the_recheck() {
        let mut t = LinkTree::new();
        add(&mut t, "x/up", "..").unwrap_or_default();
        // `b` is not a link yet: `b/..` is the root.
        assert_eq!(add(&mut t, "a", "b/.."), Ok(PathBuf::new()));
        assert_eq!(add(&mut t, "b", "x/up"), Ok(PathBuf::new()));
        assert_eq!(t.recheck(), Err((PathBuf::from("a"), LinkRefusal::Escapes)));
    }

    #[test]
    fn a_loop_is_refused() {
        let mut t = LinkTree::new();
        assert!(add(&mut t, "a", "b").is_ok());
        // `a` is followed once, to `b`, not a link yet when `b` is added.
        assert!(add(&mut t, "b", "a").is_ok());
        assert_eq!(
            t.recheck(),
            Err((PathBuf::from("a"), LinkRefusal::TooManyHops))
        );
    }
}
