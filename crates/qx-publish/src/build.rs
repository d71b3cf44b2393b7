//! `qx-publish build`: from a spec to a signed release directory ready to upload.
//!
//! Steps: lint the spec and the key; run build commands; pack each component (tar.zst) or copy
//! the full image files; lint the archives; write `manifest.json` (one version stamped into
//! every component), validated by the shared manifest rules; sign it; verify the whole
//! directory end to end as an agent would.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use jiff::{SignedDuration, Timestamp};
use qx_core::fs::{write_atomic_with, WriteOptions};
use qx_core::{
    ArtifactName, ArtifactRef, ChannelName, Component, ComponentKind, ComponentName, FullImage,
    InstallPath, Manifest, Requirement, SigningKey, TrustedKeys, UpdateType, Version,
    MANIFEST_FILE, SCHEMA_VERSION, SIGNATURE_FILE,
};

use crate::error::{Error, Result};
use crate::lint::{self, Finding};
use crate::pack::{self, PackOptions, Packed};
use crate::spec::{ComponentSpec, FullImageSpec, Source, Spec};

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub spec: PathBuf,
    pub key: PathBuf,
    pub out: PathBuf,
    /// Only these components (a partial release); empty = every component and the full image.
    pub components: Vec<String>,
    /// Overrides the spec's channel.
    pub channel: Option<ChannelName>,
    /// Overrides the spec's version.
    pub version: Option<Version>,
    /// Overrides the spec's release notes.
    pub notes: Option<String>,
    pub level: i32,
    /// Components carried over unchanged from the channel's `current` release (docs/spec.md
    /// §8): listed in the manifest as they are (their own version, artifact, size and
    /// SHA-256); their artifacts are not in `out` (the server holds them).
    pub carried: Vec<Component>,
    /// Earlier content of the components, to make deltas from ([`crate::deltas`]).
    pub delta_bases: Vec<crate::deltas::Base>,
    /// Earlier full images, to make the image's deltas from.
    pub image_bases: Vec<crate::deltas::ImageBase>,
}

/// A built, signed and self-verified release directory.
#[derive(Debug, Clone)]
pub struct BuiltRelease {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub signature: String,
    /// Lint warnings that did not stop the build.
    pub warnings: Vec<Finding>,
    /// The artifacts of carried-over components: listed in the manifest, not in `dir`.
    pub carried: Vec<String>,
}

/// The trusted comment put in every signature: `product version channel`.
pub fn trusted_comment(m: &Manifest) -> String {
    format!("{} {} {}", m.product, m.version, m.channel)
}

/// Loads a secret key after the `secret-key-exposed` lint.
pub fn load_key(path: &Path) -> Result<SigningKey> {
    refuse_public_key(path)?;
    if let Some(f) = lint::secret_key(path)? {
        return Err(Error::Lint(vec![f]));
    }
    Ok(SigningKey::from_file(path)?)
}

/// A public key given where the secret key belongs is named as such (not as a secret key
/// with loose permissions or a bad format).
fn refuse_public_key(path: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(()); // the loader reports what is wrong with the file
    };
    if qx_core::signature::TrustedKeys::new().add(&text).is_ok() {
        return Err(Error::Usage(format!(
            "{} is a public key: --key takes the secret key file that signs (made by `qx-publish keygen` as NAME.key; NAME.pub is its public half, for hosts and --pubkey/--trusted-key)",
            path.display()
        )));
    }
    Ok(())
}

/// The release date: `SOURCE_DATE_EPOCH` when set (reproducible manifests), else now.
pub fn release_date() -> Result<Timestamp> {
    let Some(secs) = pack::source_date_epoch()? else {
        // Whole seconds keep the manifest short and readable.
        return Timestamp::from_second(Timestamp::now().as_second())
            .map_err(|e| Error::Usage(format!("system clock: {e}")));
    };
    i64::try_from(secs)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .ok_or_else(|| Error::Usage(format!("SOURCE_DATE_EPOCH={secs}: out of range")))
}

/// Adds a duration to a timestamp, with a clear error on overflow.
pub fn add_duration(t: Timestamp, d: std::time::Duration) -> Result<Timestamp> {
    let sd = SignedDuration::try_from(d)
        .map_err(|e| Error::Usage(format!("expiry period {d:?} is too long: {e}")))?;
    t.checked_add(sd)
        .map_err(|e| Error::Usage(format!("expiry period {d:?} is too long: {e}")))
}

/// Which components of the spec a build covers.
pub fn select<'a>(spec: &'a Spec, names: &[String]) -> Result<Vec<&'a ComponentSpec>> {
    if names.is_empty() {
        return Ok(spec.components.iter().collect());
    }
    let mut out = Vec::new();
    for n in names {
        let c = spec.component(n).ok_or_else(|| {
            let known: Vec<&str> = spec.components.iter().map(|c| c.name.as_str()).collect();
            Error::Usage(format!(
                "--component {n}: no such component in {} (known: {})",
                spec.path.display(),
                known.join(", ")
            ))
        })?;
        if !out.iter().any(|o: &&ComponentSpec| o.name == c.name) {
            out.push(c);
        }
    }
    Ok(out)
}

/// Makes sure `out` is an empty directory; true when it was created here.
fn prepare_out_dir(out: &Path) -> Result<bool> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::OutDirNotEmpty {
                    path: out.to_owned(),
                });
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            qx_core::fs::create_dir_all_durable(out)?;
            Ok(true)
        }
        Err(e) => Err(Error::io(out)(e)),
    }
}

/// After a failed build: removes what the build wrote (the directory was empty before), so
/// no half-built release is left to be uploaded by mistake.
fn clean_out_dir(out: &Path, created: bool) {
    if created {
        let _ = std::fs::remove_dir_all(out);
        return;
    }
    if let Ok(entries) = std::fs::read_dir(out) {
        for e in entries.flatten() {
            let _ = qx_core::fs::remove_any(&e.path());
        }
    }
}

/// Runs a component's build command with `sh -c` in the spec's directory; its output goes to
/// our stderr so that stdout stays for results.
fn run_build(
    spec: &Spec,
    c: &ComponentSpec,
    command: &str,
    version: &Version,
    channel: &ChannelName,
) -> Result<()> {
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(Error::io("stderr"))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(&spec.dir)
        .env("QX_VERSION", version.to_string())
        .env("QX_PRODUCT", spec.product.as_str())
        .env("QX_CHANNEL", channel.as_str())
        .env("QX_COMPONENT", c.name.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .status()
        .map_err(|e| Error::BuildCommand {
            component: c.name.to_string(),
            command: command.to_owned(),
            status: format!("could not start: {e}"),
        })?;
    if !status.success() {
        return Err(Error::BuildCommand {
            component: c.name.to_string(),
            command: command.to_owned(),
            status: format!("failed ({status})"),
        });
    }
    Ok(())
}

/// Packs one component into `out`; returns the archive.
fn pack_component(
    c: &ComponentSpec,
    install: &InstallPath,
    out: &Path,
    opts: &PackOptions,
) -> Result<Packed> {
    let content = c.source.content();
    let bad = |message: String| Error::Source {
        component: c.name.to_string(),
        message,
    };
    let meta = std::fs::metadata(content).map_err(|e| {
        bad(match &c.source {
            Source::Path(p) => format!("source {} cannot be read: {e}", p.display()),
            Source::Build { output, .. } => format!(
                "build output {} cannot be read after the build command ran: {e}",
                output.display()
            ),
        })
    })?;
    let artifact = out.join(c.artifact_name());
    match c.kind {
        ComponentKind::File => {
            if !meta.is_file() {
                return Err(Error::Lint(vec![Finding {
                    lint: lint::FILE_ARCHIVE_NOT_SINGLE_FILE,
                    severity: lint::Severity::Error,
                    message: format!(
                        "component {} is kind \"file\" but its content {} is not a regular file; a file component's archive must hold exactly one regular file (use kind \"directory\" for a tree)",
                        c.name,
                        content.display()
                    ),
                }]));
            }
            let entry = install
                .as_path()
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| bad(format!("install_path {install} has no file name")))?;
            pack::pack_file(
                content,
                entry,
                c.permissions.map(|p| p.mode()),
                &artifact,
                opts,
            )
        }
        ComponentKind::Directory | ComponentKind::Migrations => {
            if !meta.is_dir() {
                return Err(bad(format!(
                    "kind \"{}\" needs a directory, but {} is not one",
                    if c.kind == ComponentKind::Directory {
                        "directory"
                    } else {
                        "migrations"
                    },
                    content.display()
                )));
            }
            pack::pack_dir(content, &artifact, opts)
        }
    }
}

fn artifact_name(name: &str) -> Result<ArtifactName> {
    ArtifactName::new(name).map_err(|e| Error::Source {
        component: name.to_owned(),
        message: format!("{e}; artifact names are the component name + \".tar.zst\" or the full image file names"),
    })
}

fn full_image_artifact(src: &Path, out: &Path, what: &str) -> Result<ArtifactRef> {
    let name = src.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        Error::Usage(format!(
            "full_image.{what} {} has no file name",
            src.display()
        ))
    })?;
    let artifact = artifact_name(name)?;
    let packed = pack::copy_file(src, &out.join(name))?;
    Ok(ArtifactRef {
        artifact,
        sha256: packed.sha256,
        size_bytes: packed.size,
    })
}

/// What a build makes, settled before anything is written: the key, the spec, the selected
/// components, the version, channel and dates stamped into the manifest.
struct Plan {
    key: SigningKey,
    spec: Spec,
    selected: Vec<ComponentSpec>,
    /// Warnings of the spec lint.
    warnings: Vec<Finding>,
    version: Version,
    channel: ChannelName,
    pack_opts: PackOptions,
    release_date: Timestamp,
    expires: Timestamp,
}

/// Builds a release directory from a spec. `note` receives one line per step.
pub fn build(opts: &BuildOptions, note: &mut dyn FnMut(&str)) -> Result<BuiltRelease> {
    let plan = Plan::new(opts)?;
    let created = prepare_out_dir(&opts.out)?;
    let result = plan.run(opts, note);
    if result.is_err() {
        clean_out_dir(&opts.out, created);
    }
    result
}

impl Plan {
    /// The cheap checks, before anything is built: the key, the spec and its lints, the
    /// selection, the dates.
    fn new(opts: &BuildOptions) -> Result<Self> {
        let key = load_key(&opts.key)?;
        let spec = Spec::load(&opts.spec)?;
        let selected = select(&spec, &opts.components)?
            .into_iter()
            .cloned()
            .collect();
        let warnings = lint::enforce(lint::spec(&spec))?;
        let version = opts.version.clone().unwrap_or_else(|| spec.version.clone());
        let channel = opts.channel.clone().unwrap_or_else(|| spec.channel.clone());
        let pack_opts = PackOptions::from_env(opts.level)?;
        let release_date = release_date()?;
        let expires = add_duration(release_date, spec.expires_in)?;
        if expires <= Timestamp::now() {
            return Err(Error::Usage(format!(
                "the manifest would already be expired ({expires}); SOURCE_DATE_EPOCH is too old for expires_in"
            )));
        }
        Ok(Self {
            key,
            spec,
            selected,
            warnings,
            version,
            channel,
            pack_opts,
            release_date,
            expires,
        })
    }

    /// Builds and packs every selected component and the full image, writes the signed
    /// manifest and verifies the release directory.
    fn run(self, opts: &BuildOptions, note: &mut dyn FnMut(&str)) -> Result<BuiltRelease> {
        let mut components = Vec::new();
        let mut findings = Vec::new();
        for c in &self.selected {
            let mut built = self.component(c, &opts.out, &mut findings, note)?;
            crate::deltas::add(&mut built, &opts.out, &opts.delta_bases, note)?;
            components.push(built);
        }
        let mut carried = Vec::new();
        for c in &opts.carried {
            if components.iter().any(|b: &Component| b.name == c.name) {
                continue;
            }
            note(&format!(
                "{}: carried over unchanged (version {}, {}, sha256 {})",
                c.name,
                c.version,
                c.artifact,
                c.sha256.short()
            ));
            carried.push(c.artifact.to_string());
            carried.extend(c.deltas.iter().map(|d| d.artifact.to_string()));
            components.push(c.clone());
        }
        let warnings = [self.warnings.clone(), lint::enforce(findings)?].concat();
        for w in &warnings {
            note(&w.to_string());
        }
        let full_image = match (&self.spec.full_image, opts.components.is_empty()) {
            (Some(img), true) => Some(full_image(img, opts, note)?),
            _ => None,
        };
        let update_type = update_type(&components, &full_image)?;
        let manifest = Manifest {
            schema: SCHEMA_VERSION,
            product: self.spec.product.clone(),
            version: self.version,
            channel: self.channel,
            release_date: self.release_date,
            expires: self.expires,
            update_type,
            components,
            full_image,
            min_version: self.spec.min_version.clone(),
            release_notes: opts
                .notes
                .clone()
                .unwrap_or_else(|| self.spec.release_notes.clone()),
        };
        manifest.validate().map_err(|problems| {
            Error::Manifest(problems.iter().map(|p| p.to_string()).collect())
        })?;
        let (manifest_bytes, signature) =
            sign_and_verify(&self.key, &manifest, &opts.out, &carried, note)?;
        Ok(BuiltRelease {
            dir: opts.out.clone(),
            manifest,
            manifest_bytes,
            signature,
            warnings,
            carried,
        })
    }

    /// Runs a component's build command, packs it into `out` and describes it for the
    /// manifest; the archive lints go to `findings`.
    fn component(
        &self,
        c: &ComponentSpec,
        out: &Path,
        findings: &mut Vec<Finding>,
        note: &mut dyn FnMut(&str),
    ) -> Result<Component> {
        // The spec lint has already refused an invalid install path.
        let install = InstallPath::new(c.install_path.clone()).map_err(|e| Error::Source {
            component: c.name.to_string(),
            message: e.to_string(),
        })?;
        if let Source::Build { command, .. } = &c.source {
            note(&format!("{}: running build command `{command}`", c.name));
            run_build(&self.spec, c, command, &self.version, &self.channel)?;
        }
        let artifact = artifact_name(&c.artifact_name())?;
        let packed = pack_component(c, &install, out, &self.pack_opts)?;
        let entries = pack::inspect(&packed.path)?;
        if c.kind == ComponentKind::File {
            findings.extend(lint::file_archive(
                c.name.as_str(),
                artifact.as_str(),
                &entries,
            ));
        }
        note(&format!(
            "{}: packed {} ({} bytes, {} entries, sha256 {})",
            c.name,
            artifact,
            packed.size,
            entries.len(),
            packed.sha256.short()
        ));
        Ok(Component {
            name: c.name.clone(),
            version: self.version.clone(),
            artifact,
            sha256: packed.sha256,
            size_bytes: packed.size,
            install_path: install,
            kind: c.kind,
            restart_service: c.restart_service.clone(),
            backup_before_update: c.backup_before_update,
            permissions: c.permissions,
            allow_setuid: c.allow_setuid,
            allow_world_writable: c.allow_world_writable,
            requires: requirements(c)?,
            migrate_command: c.migrate_command.clone(),
            health_command: c.health_command.clone(),
            tar: None,
            deltas: Vec::new(),
        })
    }
}

/// A component's `requires`, with their names checked.
fn requirements(c: &ComponentSpec) -> Result<Vec<Requirement>> {
    c.requires
        .iter()
        .map(|r| {
            let name = ComponentName::new(r.name.clone()).map_err(|e| Error::Source {
                component: c.name.to_string(),
                message: format!("requires: {e}"),
            })?;
            Ok(Requirement {
                name,
                min_version: r.min_version.clone(),
            })
        })
        .collect()
}

/// Copies the full image files into `out` as they are.
fn full_image(
    img: &FullImageSpec,
    opts: &BuildOptions,
    note: &mut dyn FnMut(&str),
) -> Result<FullImage> {
    let out = opts.out.as_path();
    let main = full_image_artifact(&img.squashfs, out, "squashfs")?;
    let kernel = img
        .kernel
        .as_deref()
        .map(|k| full_image_artifact(k, out, "kernel"))
        .transpose()?;
    let initramfs = img
        .initramfs
        .as_deref()
        .map(|k| full_image_artifact(k, out, "initramfs"))
        .transpose()?;
    note(&format!(
        "full image: copied {} ({} bytes)",
        main.artifact, main.size_bytes
    ));
    let chunks = crate::deltas::chunk_image(&out.join(main.artifact.as_str()), out, note)?;
    let deltas = crate::deltas::add_image(&main, out, &opts.image_bases, note)?;
    Ok(FullImage {
        artifact: main.artifact,
        sha256: main.sha256,
        size_bytes: main.size_bytes,
        kernel,
        initramfs,
        requires_reboot: img.requires_reboot,
        target_slot: img.target_slot,
        chunks: Some(chunks),
        deltas,
    })
}

/// The update type of a release with these parts; a release with none is refused.
fn update_type(components: &[Component], full_image: &Option<FullImage>) -> Result<UpdateType> {
    match (components.is_empty(), full_image.is_some()) {
        (false, false) => Ok(UpdateType::Component),
        (true, true) => Ok(UpdateType::Full),
        (false, true) => Ok(UpdateType::Mixed),
        (true, false) => Err(Error::Usage(
            "nothing to release: no component selected and no full image".into(),
        )),
    }
}

/// Signs the manifest, writes `manifest.json` and its signature into `out`, and verifies
/// the whole directory as an agent would. Returns the manifest bytes and the signature.
fn sign_and_verify(
    key: &SigningKey,
    manifest: &Manifest,
    out: &Path,
    carried: &[String],
    note: &mut dyn FnMut(&str),
) -> Result<(Vec<u8>, String)> {
    let manifest_bytes = manifest.to_bytes();
    let signature = key.sign(&manifest_bytes, &trusted_comment(manifest))?;
    write_new(&out.join(MANIFEST_FILE), &manifest_bytes)?;
    write_new(&out.join(SIGNATURE_FILE), signature.as_bytes())?;
    let mut keys = TrustedKeys::new();
    keys.add(&key.public_key_file()?)?;
    crate::verify::verify_dir_carrying(out, Some(&keys), carried)?;
    note(&format!(
        "signed manifest.json with key {} and verified the release in {}",
        key.key_id(),
        out.display()
    ));
    Ok((manifest_bytes, signature))
}

/// Writes a new file of the release durably; an existing one is an error.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let opts = WriteOptions {
        mode: 0o644,
        no_clobber: true,
    };
    Ok(write_atomic_with(path, bytes, opts)?)
}
