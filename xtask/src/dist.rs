//! `cargo xtask dist`: the three programs built statically in release mode, their man pages
//! and shell completions rendered from their own clap definitions, and one Debian package per
//! program, all under [`Layout::dist`]:
//!
//! ```text
//! target/x86_64-unknown-linux-gnu/release/dist/
//!   bin/         qx-update-server qx-update qx-publish   (static, `--version` checked)
//!   man/<program>/  qx-update.1.gz, qx-update-apply.1.gz, …  (a page per command and subcommand)
//!   completions/ bash/qx-update.bash  zsh/_qx-update  fish/qx-update.fish  (each program)
//!   container/   ca-certificates.crt, empty/              (the image's other files)
//!   deb/         qx-update_<version>-1_amd64.deb, …     (cargo-deb, `[package.metadata.deb]`)
//! ```
//!
//! The directory sits under cargo's release directory for the target triple because that is
//! where cargo-deb looks for `target/release/…` assets; the packages take the binaries, man
//! pages and completions from there.
//!
//! The binaries are linked with `-C target-feature=+crt-static` (glibc, static-pie): they run
//! on any x86-64 Linux, and in a `FROM scratch` container. Host names still resolve from
//! `/etc/hosts` and DNS (glibc 2.36 carries its `files` and `dns` lookups inside the static
//! library); NSS modules loaded at run time (`mdns`, `resolve`, LDAP…) are not available to
//! them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::CommandFactory;

use crate::{deps, process};

/// The target the programs are built for (`--target`, so that `RUSTFLAGS` reaches only the
/// programs, not build scripts and proc macros).
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// One program: its binary, the cargo package that builds it and its command-line definition.
pub struct Program {
    pub bin: &'static str,
    pub package: &'static str,
    pub command: fn() -> clap::Command,
}

/// The three programs, each packaged on its own.
pub const PROGRAMS: &[Program] = &[
    Program {
        bin: "qx-update-server",
        package: "qx-server",
        command: qx_server::cli::command,
    },
    Program {
        bin: "qx-update",
        package: "qx-agent",
        command: qx_agent::cli::Cli::command,
    },
    Program {
        bin: "qx-publish",
        package: "qx-publish",
        command: qx_publish::cli::Cli::command,
    },
];

/// The shells completions are written for, with each one's file name for a program.
const SHELLS: &[(clap_complete::Shell, &str)] = &[
    (clap_complete::Shell::Bash, "bash"),
    (clap_complete::Shell::Zsh, "zsh"),
    (clap_complete::Shell::Fish, "fish"),
];

/// Where `dist` reads and writes.
pub struct Layout {
    /// Cargo's release directory for [`TARGET`].
    pub release: PathBuf,
    /// The dist directory (`<release>/dist`).
    pub dist: PathBuf,
}

impl Layout {
    pub fn new() -> Self {
        let release = process::target_dir().join(TARGET).join("release");
        let dist = release.join("dist");
        Self { release, dist }
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.dist.join("bin").join(name)
    }

    /// A program's man pages (its own directory: `qx-update*.1` would also match the server's).
    pub fn man(&self, bin: &str) -> PathBuf {
        self.dist.join("man").join(bin)
    }

    pub fn completions(&self, shell: &str) -> PathBuf {
        self.dist.join("completions").join(shell)
    }

    /// The container image's other files (`packaging/container/Containerfile`).
    pub fn container(&self) -> PathBuf {
        self.dist.join("container")
    }

    pub fn debs(&self) -> PathBuf {
        self.dist.join("deb")
    }
}

/// The whole of `cargo xtask dist`; prints the dist directory at the end.
pub fn run() -> anyhow::Result<Layout> {
    let layout = Layout::new();
    build_static()?;
    if layout.dist.exists() {
        std::fs::remove_dir_all(&layout.dist)
            .with_context(|| format!("removing the old {}", layout.dist.display()))?;
    }
    for program in PROGRAMS {
        copy_binary(&layout, program.bin)?;
        write_man_pages(&layout, program)?;
        write_completions(&layout, program)?;
    }
    write_container_context(&layout)?;
    build_debs(&layout)?;
    println!("dist: {}", layout.dist.display());
    Ok(layout)
}

/// `cargo build --release --target` [`TARGET`] of the three programs, linked statically.
fn build_static() -> anyhow::Result<()> {
    let mut args = vec!["build", "--release", "--locked", "--target", TARGET];
    for p in PROGRAMS {
        args.extend(["-p", p.package]);
    }
    deps::cargo_with_env(&args, &[("RUSTFLAGS", "-C target-feature=+crt-static")])
}

/// Copies a built program into `dist/bin` after checking that it is statically linked and
/// answers `--version`.
fn copy_binary(layout: &Layout, bin: &str) -> anyhow::Result<()> {
    let built = layout.release.join(bin);
    let bytes = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    if has_interpreter(&bytes)? {
        bail!(
            "{} is dynamically linked (it names a program interpreter)",
            built.display()
        );
    }
    let dest = layout.bin(bin);
    create_parent(&dest)?;
    std::fs::copy(&built, &dest).with_context(|| format!("copying {}", built.display()))?;
    let out = Command::new(&dest)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", dest.display()))?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !version.starts_with(bin) {
        bail!(
            "{} --version failed ({}): {version}{}",
            dest.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    print!("{version}");
    Ok(())
}

/// Whether a 64-bit little-endian ELF file has a `PT_INTERP` program header (a dynamically
/// linked executable does; a static or static-pie one does not).
pub fn has_interpreter(elf: &[u8]) -> anyhow::Result<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        bail!("not a 64-bit little-endian ELF file");
    }
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("truncated ELF header");
    };
    let phoff = usize::try_from(phoff).context("program header offset")?;
    for i in 0..usize::from(phnum) {
        let at = phoff + i * usize::from(phentsize);
        let Some(kind) = u32_at(at) else {
            bail!("truncated program header table");
        };
        if kind == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What `packaging/container/Containerfile` takes from the dist besides the server: this
/// machine's CA bundle (package ca-certificates) and an empty directory that becomes the
/// release volume.
fn write_container_context(layout: &Layout) -> anyhow::Result<()> {
    const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
    let dir = layout.container();
    std::fs::create_dir_all(dir.join("empty"))
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::copy(CA_BUNDLE, dir.join("ca-certificates.crt"))
        .with_context(|| format!("copying {CA_BUNDLE} (Debian package ca-certificates)"))?;
    Ok(())
}

/// One man page per command and subcommand (`qx-update.1.gz`, `qx-update-apply.1.gz`, …).
fn write_man_pages(layout: &Layout, program: &Program) -> anyhow::Result<()> {
    let dir = layout.man(program.bin);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to((program.command)(), &dir)
        .with_context(|| format!("writing the man pages of {}", program.bin))?;
    // Compressed as Debian policy wants them (cargo-deb leaves files it takes from the
    // target directory as they are); `-n`: no name or time stamp, the same bytes each build.
    let mut gzip = Command::new("gzip");
    gzip.args(["-9", "-n", "-f"]);
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        gzip.arg(entry.context("listing the man pages")?.path());
    }
    let st = gzip.status().context("running gzip")?;
    if !st.success() {
        bail!("gzip of the man pages of {} failed ({st})", program.bin);
    }
    Ok(())
}

/// The bash, zsh and fish completions of a program, under the names each shell looks for.
fn write_completions(layout: &Layout, program: &Program) -> anyhow::Result<()> {
    for (shell, dir_name) in SHELLS {
        let dir = layout.completions(dir_name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut command = (program.command)();
        clap_complete::generate_to(*shell, &mut command, program.bin, &dir)
            .with_context(|| format!("writing the {dir_name} completions of {}", program.bin))?;
    }
    Ok(())
}

/// One `.deb` per program with cargo-deb (installed when missing), from the binaries and files
/// built above (`--no-build`).
fn build_debs(layout: &Layout) -> anyhow::Result<()> {
    deps::ensure_cargo_deb()?;
    let out = layout.debs();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.display().to_string();
    for p in PROGRAMS {
        deps::cargo(&[
            "deb",
            "-p",
            p.package,
            "--no-build",
            "--target",
            TARGET,
            "--output",
            &out,
        ])?;
    }
    Ok(())
}

fn create_parent(path: &Path) -> anyhow::Result<()> {
    let parent = path.parent().context("a path with a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interpreter_header_tells_dynamic_from_static() {
        let this = std::fs::read(std::env::current_exe().expect("the test binary"))
            .expect("reading the test binary");
        // The test binary is built without crt-static: it names ld-linux.
        assert!(has_interpreter(&this).expect("an ELF file"));
        let mut stripped = this.clone();
        // Turn every PT_INTERP header into PT_NULL: what a static link leaves.
        let phoff = usize::try_from(u64::from_le_bytes(
            this[0x20..0x28].try_into().expect("8 bytes"),
        ))
        .expect("offset");
        let phentsize = usize::from(u16::from_le_bytes([this[0x36], this[0x37]]));
        let phnum = usize::from(u16::from_le_bytes([this[0x38], this[0x39]]));
        for i in 0..phnum {
            let at = phoff + i * phentsize;
            if stripped[at..at + 4] == 3u32.to_le_bytes() {
                stripped[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
            }
        }
        assert!(!has_interpreter(&stripped).expect("an ELF file"));
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
        assert!(has_interpreter(&this[..0x30]).is_err());
    }

    #[test]
    fn every_program_renders_its_command_line() {
        for p in PROGRAMS {
            let cmd = (p.command)();
            assert_eq!(cmd.get_name(), p.bin);
            assert!(cmd.get_version().is_some(), "{} has --version", p.bin);
            assert!(cmd.get_subcommands().count() > 0, "{}", p.bin);
        }
    }
}
