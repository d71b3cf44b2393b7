//! Debian packages the tests and benchmarks need, installed when missing.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

/// Everything `cargo xtask test` needs beyond the Rust toolchain.
/// Each is used for real by a test: signatures are checked by the stock signing tool, grubenv
/// files by the boot loader's own editor, archives unpacked by GNU tar, the fleet store run on
/// a throwaway PostgreSQL cluster, the web page driven by a headless browser, A/B images
/// booted under a system emulator, the Debian packages installed by dpkg and checked by
/// lintian, the server's container image built and run by podman.
pub const TEST_PACKAGES: &[&str] = &[
    "minisign",
    "grub-common",
    "grub-pc-bin",
    "sqlite3",
    "postgresql",
    "zstd",
    "tar",
    "curl",
    "chromium",
    "chromium-driver",
    "qemu-system-x86",
    "busybox-static",
    "gdisk",
    "dosfstools",
    "mtools",
    "e2fsprogs",
    "cpio",
    "nginx",
    "ca-certificates",
    "lintian",
    "systemd",
    "logrotate",
    "podman",
    "runc",
    "podman-compose",
];

/// The part of [`TEST_PACKAGES`] the quick tier (`cargo xtask test --fast`) uses: the stock
/// signing tool, the boot loader's environment editor and script checker, GNU tar, zstd and
/// the SQLite shell. No browser, no emulator.
pub const FAST_TEST_PACKAGES: &[&str] =
    &["minisign", "grub-common", "sqlite3", "zstd", "tar", "curl"];

/// What the benchmarks need in addition.
pub const BENCH_PACKAGES: &[&str] = &["nginx", "wrk", "curl", "zstd", "time"];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the missing packages with apt-get (needs root, as on CI and the dev machines).
pub fn ensure(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let st = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !st.success() {
            bail!("apt-get {} failed ({st})", args.join(" "));
        }
        Ok(())
    };
    run(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    run(&args)
}

/// Runs the cargo that runs this program, with `args`; fails when it fails.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cargo_with_env(args, &[])
}

/// [`cargo`] with more environment variables.
pub fn cargo_with_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let st = Command::new(env!("CARGO"))
        .args(args)
        .envs(env.iter().copied())
        .status()
        .context("running cargo")?;
    if !st.success() {
        bail!("cargo {} failed ({st})", args.join(" "));
    }
    Ok(())
}

/// Installs the fuzzing front end (`cargo install cargo-fuzz --locked`) when `cargo fuzz` is
/// missing.
pub fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    ensure_cargo_subcommand("fuzz", "cargo-fuzz", None)
}

/// The cargo-deb release the packages are made with (asset rules change between releases).
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Installs the Debian packager (`cargo install cargo-deb --locked --version`
/// [`CARGO_DEB_VERSION`]) when `cargo deb` is missing or another version.
pub fn ensure_cargo_deb() -> anyhow::Result<()> {
    ensure_cargo_subcommand("deb", "cargo-deb", Some(CARGO_DEB_VERSION))
}

/// `cargo install <krate> --locked [--version V]` when `cargo <subcommand> --version` does not
/// run, or does not name `version`.
fn ensure_cargo_subcommand(
    subcommand: &str,
    krate: &str,
    version: Option<&str>,
) -> anyhow::Result<()> {
    let present = Command::new(env!("CARGO"))
        .args([subcommand, "--version"])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && version.is_none_or(|v| String::from_utf8_lossy(&o.stdout).contains(v))
        });
    if present {
        return Ok(());
    }
    eprintln!("installing {krate}");
    let mut args = vec!["install", krate, "--locked"];
    if let Some(v) = version {
        args.extend(["--version", v]);
    }
    cargo(&args)
}

/// The Garage release the object-store tests run against, and the features built: the
/// SQLite metadata engine only (no metrics exporter, no LMDB, no K2V API), which halves the
/// build.
pub const GARAGE_VERSION: &str = "2.5.0";
pub const GARAGE_FEATURES: &str = "bundled-libs,sqlite";

/// The `garage` program: from `PATH` or cargo's `bin` directory when it is there (and is
/// [`GARAGE_VERSION`]), else installed there with `cargo install` (about 10 minutes on two
/// cores, once).
pub fn ensure_garage() -> anyhow::Result<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?
        .join("bin");
    let candidates = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([cargo_bin.clone()])
        .map(|d| d.join("garage"))
        .collect::<Vec<_>>();
    if let Some(found) = candidates.iter().find(|p| garage_version_ok(p)) {
        return Ok(found.clone());
    }
    eprintln!("installing garage {GARAGE_VERSION} (cargo install; about 10 minutes, once)");
    cargo(&[
        "install",
        "garage",
        "--locked",
        "--version",
        GARAGE_VERSION,
        "--no-default-features",
        "--features",
        GARAGE_FEATURES,
    ])?;
    let installed = cargo_bin.join("garage");
    if !garage_version_ok(&installed) {
        bail!(
            "garage was installed but {} does not run",
            installed.display()
        );
    }
    Ok(installed)
}

fn garage_version_ok(path: &std::path::Path) -> bool {
    Command::new(path).arg("--version").output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(GARAGE_VERSION)
    })
}
