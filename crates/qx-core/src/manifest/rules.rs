//! The rules between a manifest's fields, in groups: the release as a whole, the update type,
//! each component, the full image. [`Manifest::validate`] runs them in this order and reports
//! every broken rule at once.

use std::collections::{BTreeSet, HashSet};

use super::{
    agent_path_refusal, overlaps, Component, ComponentKind, Delta, Manifest, Problem, UpdateType,
    MANIFEST_FILE, SCHEMA_VERSION, SIGNATURE_FILE,
};
use crate::names::{ArtifactName, ComponentName, InstallPath};

/// One validation run: the manifest, what was seen so far, and the problems found.
pub(super) struct Check<'a> {
    manifest: &'a Manifest,
    problems: Vec<Problem>,
    /// Every artifact name listed so far (components, then the full image's files).
    artifacts: HashSet<&'a ArtifactName>,
    component_names: HashSet<&'a ComponentName>,
    /// Install paths so far, with the index of their component.
    install_paths: Vec<(&'a InstallPath, usize)>,
}

impl<'a> Check<'a> {
    pub(super) fn new(manifest: &'a Manifest) -> Self {
        Self {
            manifest,
            problems: Vec::new(),
            artifacts: HashSet::new(),
            component_names: HashSet::new(),
            install_paths: Vec::new(),
        }
    }

    pub(super) fn finish(self) -> Result<(), Vec<Problem>> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(self.problems)
        }
    }

    fn bad(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Schema version, expiry after the release date, `min_version` not above the version.
    pub(super) fn release(&mut self) {
        let m = self.manifest;
        if m.schema != SCHEMA_VERSION {
            self.bad(
                "schema",
                format!(
                    "unsupported schema {} (this program knows {SCHEMA_VERSION})",
                    m.schema
                ),
            );
        }
        if m.expires <= m.release_date {
            self.bad("expires", "must be later than release_date");
        }
        if let Some(min) = &m.min_version {
            if min > &m.version {
                self.bad(
                    "min_version",
                    format!("{min} is above the release version {}", m.version),
                );
            }
        }
    }

    /// Components and full image as the update type demands.
    pub(super) fn update_type(&mut self) {
        let m = self.manifest;
        let (has_components, has_image) = (!m.components.is_empty(), m.full_image.is_some());
        match m.update_type {
            UpdateType::Component => {
                if !has_components {
                    self.bad(
                        "components",
                        "a component update needs at least one component",
                    );
                }
                if has_image {
                    self.bad("full_image", "a component update must not carry a full image (use update_type \"mixed\")");
                }
            }
            UpdateType::Full => {
                if !has_image {
                    self.bad("full_image", "a full update needs full_image");
                }
                if has_components {
                    self.bad(
                        "components",
                        "a full update must not list components (use update_type \"mixed\")",
                    );
                }
            }
            UpdateType::Mixed => {
                if !has_image || !has_components {
                    self.bad(
                        "update_type",
                        "a mixed update needs both components and full_image",
                    );
                }
            }
        }
    }

    /// Every component, in order.
    pub(super) fn components(&mut self) {
        for (i, c) in self.manifest.components.iter().enumerate() {
            self.component_identity(i, c);
            self.component_safety(i, c);
            self.component_commands(i, c);
            self.component_requires(i, c);
            self.component_deltas(i, c);
        }
    }

    /// A name listed once, an artifact listed once, the release's version, an install path
    /// that overlaps no other.
    fn component_identity(&mut self, i: usize, c: &'a Component) {
        let at = |field: &str| format!("components[{i}].{field}");
        if !self.component_names.insert(&c.name) {
            self.bad(
                at("name"),
                format!("component {} is listed more than once", c.name),
            );
        }
        self.artifact(at("artifact"), &c.artifact);
        // A component built for the release carries its version; one carried over unchanged
        // from an earlier release keeps its own, lower one (docs/spec.md §6, §8).
        let version = &self.manifest.version;
        if &c.version > version {
            self.bad(
                at("version"),
                format!(
                    "component version {} is above the release version {version} (a component carries the release version, or keeps its own when carried over unchanged)",
                    c.version
                ),
            );
        }
        let overlapping: Vec<String> = self
            .install_paths
            .iter()
            .filter(|(other, _)| overlaps(other.as_str(), c.install_path.as_str()))
            .map(|(other, j)| {
                format!(
                    "{} overlaps components[{j}].install_path {other}",
                    c.install_path
                )
            })
            .collect();
        for message in overlapping {
            self.bad(at("install_path"), message);
        }
        self.install_paths.push((&c.install_path, i));
    }

    /// An install path clear of the agent's own paths (system directories are the host's
    /// call: its agent refuses them unless its configuration allows them); no setuid/setgid
    /// or world-writable permissions unless the component allows them.
    fn component_safety(&mut self, i: usize, c: &Component) {
        if let Some(why) = agent_path_refusal(&c.install_path) {
            self.bad(format!("components[{i}].install_path"), why);
        }
        if let Some(why) = c
            .permissions
            .and_then(|p| c.mode_allowance().refusal(p.mode()))
        {
            self.bad(format!("components[{i}].permissions"), why);
        }
    }

    /// A migrate command exactly on migrations components; every command names a program.
    fn component_commands(&mut self, i: usize, c: &Component) {
        let at = |field: &str| format!("components[{i}].{field}");
        let names_no_program = |cmd: &Vec<String>| cmd.is_empty() || cmd[0].is_empty();
        match (c.kind, &c.migrate_command) {
            (ComponentKind::Migrations, None) => self.bad(
                at("migrate_command"),
                "a migrations component needs a migrate_command",
            ),
            (ComponentKind::Migrations, Some(cmd)) if names_no_program(cmd) => {
                self.bad(at("migrate_command"), "must name a program")
            }
            (ComponentKind::File | ComponentKind::Directory, Some(_)) => self.bad(
                at("migrate_command"),
                "only a migrations component may have a migrate_command",
            ),
            _ => {}
        }
        if c.health_command.as_ref().is_some_and(names_no_program) {
            self.bad(at("health_command"), "must name a program");
        }
    }

    /// Requirements name other components, each once.
    fn component_requires(&mut self, i: usize, c: &Component) {
        let mut required = BTreeSet::new();
        for (k, r) in c.requires.iter().enumerate() {
            let at = format!("components[{i}].requires[{k}]");
            if r.name == c.name {
                self.bad(at.clone(), "a component cannot require itself");
            }
            if !required.insert(&r.name) {
                self.bad(at, format!("{} is required twice", r.name));
            }
        }
    }

    /// Deltas rebuild a signed archive digest, each from a distinct base, each its own
    /// artifact.
    fn component_deltas(&mut self, i: usize, c: &'a Component) {
        if c.deltas.is_empty() {
            return;
        }
        if c.tar.is_none() {
            self.bad(
                format!("components[{i}].tar"),
                "a component with deltas needs `tar` (the digest the deltas rebuild)",
            );
        }
        self.deltas(&format!("components[{i}].deltas"), &c.deltas);
    }

    /// Each delta from a distinct base (per algorithm), each its own artifact.
    fn deltas(&mut self, at: &str, deltas: &'a [Delta]) {
        let mut bases = HashSet::new();
        for (k, d) in deltas.iter().enumerate() {
            let at = format!("{at}[{k}]");
            if !bases.insert((d.from_sha256, d.algorithm)) {
                self.bad(
                    format!("{at}.from_sha256"),
                    format!("two {} deltas from the same base", d.algorithm.as_str()),
                );
            }
            self.artifact(format!("{at}.artifact"), &d.artifact);
        }
    }

    /// The image's artifact, kernel and initramfs, each a distinct artifact name.
    pub(super) fn full_image(&mut self) {
        let Some(img) = &self.manifest.full_image else {
            return;
        };
        self.artifact("full_image.artifact", &img.artifact);
        if let Some(k) = &img.kernel {
            self.artifact("full_image.kernel.artifact", &k.artifact);
        }
        if let Some(r) = &img.initramfs {
            self.artifact("full_image.initramfs.artifact", &r.artifact);
        }
        if let Some(c) = &img.chunks {
            self.artifact("full_image.chunks.index.artifact", &c.index.artifact);
            self.artifact("full_image.chunks.pack.artifact", &c.pack.artifact);
        }
        self.deltas("full_image.deltas", &img.deltas);
    }

    /// An artifact name is not a release file's name and is listed once in the release.
    fn artifact(&mut self, path: impl Into<String>, name: &'a ArtifactName) {
        if [MANIFEST_FILE, SIGNATURE_FILE].contains(&name.as_str()) {
            self.bad(path, format!("artifact name {name} is reserved"));
        } else if !self.artifacts.insert(name) {
            self.bad(path, format!("artifact {name} is listed more than once"));
        }
    }
}
