//! The pinned corpus: real adjacent releases of executables published in PyPI wheels
//! (manylinux x86-64), fetched once with `pip download` into a cache directory and unpacked
//! with Python's `zipfile`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// One executable in one wheel.
pub struct Release {
    pub version: &'static str,
    /// The wheel's file name, as published (the download is checked against it).
    pub wheel: &'static str,
}

/// Two releases of one executable.
pub struct Pair {
    pub name: &'static str,
    pub package: &'static str,
    /// The executable's path inside the wheel.
    pub member: &'static str,
    pub old: Release,
    pub new: Release,
    pub note: &'static str,
}

macro_rules! release {
    ($v:literal, $prefix:literal) => {
        Release {
            version: $v,
            wheel: concat!(
                $prefix,
                "-",
                $v,
                "-",
                "py3-none-",
                "manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
            ),
        }
    };
}

/// The pairs, smallest first.
pub const PAIRS: &[Pair] = &[
    Pair {
        name: "pydantic-core .so",
        package: "pydantic-core",
        member: "pydantic_core/_pydantic_core.cpython-312-x86_64-linux-gnu.so",
        old: Release {
            version: "2.23.3",
            wheel:
                "pydantic_core-2.23.3-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        },
        new: Release {
            version: "2.23.4",
            wheel:
                "pydantic_core-2.23.4-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        },
        note: "adjacent",
    },
    Pair {
        name: "typos",
        package: "typos",
        member: "typos-{v}.data/scripts/typos",
        old: release!("1.26.0", "typos"),
        new: release!("1.26.1", "typos"),
        note: "adjacent",
    },
    Pair {
        name: "ruff",
        package: "ruff",
        member: "ruff-{v}.data/scripts/ruff",
        old: release!("0.6.8", "ruff"),
        new: release!("0.6.9", "ruff"),
        note: "adjacent",
    },
    Pair {
        name: "uv",
        package: "uv",
        member: "uv-{v}.data/scripts/uv",
        old: release!("0.4.29", "uv"),
        new: release!("0.4.30", "uv"),
        note: "adjacent",
    },
    Pair {
        name: "ruff (3 months)",
        package: "ruff",
        member: "ruff-{v}.data/scripts/ruff",
        old: release!("0.5.7", "ruff"),
        new: release!("0.7.4", "ruff"),
        note: "Aug → Nov 2024",
    },
];

/// The executable of `release` of `pair`, fetched and unpacked into `cache` when missing.
pub fn executable(cache: &Path, pair: &Pair, release: &Release) -> anyhow::Result<PathBuf> {
    let out = cache
        .join("bin")
        .join(format!("{}-{}", pair.package, release.version));
    if out.exists() {
        return Ok(out);
    }
    let wheel = wheel(cache, pair, release)?;
    let member = pair.member.replace("{v}", release.version);
    std::fs::create_dir_all(cache.join("bin"))?;
    let script = "import sys, zipfile\n\
                  open(sys.argv[3], 'wb').write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))";
    let st = Command::new("python3")
        .args(["-c", script])
        .arg(&wheel)
        .arg(&member)
        .arg(&out)
        .status()
        .context("running python3")?;
    if !st.success() {
        let _ = std::fs::remove_file(&out);
        bail!("cannot unpack {member} from {}", wheel.display());
    }
    Ok(out)
}

/// The wheel of `release`, downloaded into `cache/wheels` when missing.
fn wheel(cache: &Path, pair: &Pair, release: &Release) -> anyhow::Result<PathBuf> {
    let dir = cache.join("wheels");
    let path = dir.join(release.wheel);
    if path.exists() {
        return Ok(path);
    }
    eprintln!("fetching {}=={}", pair.package, release.version);
    let st = Command::new("pip")
        .args(["download", "--quiet", "--no-deps", "--only-binary=:all:"])
        .args([
            "--platform",
            "manylinux2014_x86_64",
            "--python-version",
            "3.12",
        ])
        .arg("--dest")
        .arg(&dir)
        .arg(format!("{}=={}", pair.package, release.version))
        .status()
        .context("running pip download")?;
    if !st.success() || !path.exists() {
        bail!("pip did not fetch {} (the pinned wheel)", release.wheel);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANYLINUX: &str = "manylinux_2_17_x86_64.manylinux2014_x86_64.whl";

    #[test]
    fn every_pinned_wheel_is_a_manylinux_x86_64_wheel_of_its_version() {
        for p in PAIRS {
            for r in [&p.old, &p.new] {
                assert!(r.wheel.ends_with(MANYLINUX), "{}", r.wheel);
                assert!(r.wheel.contains(&format!("-{}-", r.version)), "{}", r.wheel);
            }
        }
    }
}
