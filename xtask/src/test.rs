//! `cargo xtask test`: every test of the workspace, the slow tier included.
//!
//! Slow tests (they need root, loop devices, qemu or a browser) are marked
//! `#[ignore = "slow tier: …"]`, so a plain `cargo test` is quick and reports them as ignored;
//! this command installs the Debian packages they need and runs them with the rest
//! (`-- --include-ignored`). `--fast` runs the quick tier only, with the few small packages it uses.
//!
//! The full run then runs each fuzz target of `fuzz/` for a bounded time ([`FUZZ_SECONDS_VAR`],
//! 60 s by default, `0` skips them), seeded with its committed corpus `fuzz/corpus/<target>/`.
//! The fuzz build works on a stable toolchain: the fuzzing flags are unlocked with
//! `RUSTC_BOOTSTRAP=1` for that build only, without a sanitizer runtime (the targets are safe
//! code; a panic or a failed assertion is the finding). A crash fails the run and its
//! reproducer is printed (`fuzz/artifacts/<target>/crash-…`; replay it with
//! `cargo fuzz run --sanitizer none <target> <file>`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::deps;

/// Runs the tests and prints the wall time of the whole run (package installation included),
/// whether the tests passed or not.
pub fn run(fast: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let packages = if fast {
        deps::FAST_TEST_PACKAGES
    } else {
        deps::TEST_PACKAGES
    };
    let mut result = deps::ensure(packages).and_then(|()| deps::cargo(&cargo_args(fast)));
    if !fast {
        let fuzzed = fuzz_seconds().and_then(fuzz_all);
        if let Err(e) = &fuzzed {
            eprintln!("fuzzing failed: {e:#}");
        }
        result = result.and(fuzzed);
    }
    let verdict = if result.is_ok() { "passed" } else { "failed" };
    println!(
        "\ncargo xtask test{}: {verdict}; wall time {}",
        if fast { " --fast" } else { "" },
        wall_time(start.elapsed())
    );
    result
}

/// The cargo arguments: the whole workspace, every target, every failure reported; the slow
/// tier only without `fast`.
fn cargo_args(fast: bool) -> Vec<&'static str> {
    let mut args = vec!["test", "--workspace", "--all-targets", "--no-fail-fast"];
    if !fast {
        args.extend(["--", "--include-ignored"]);
    }
    args
}

/// The fuzz targets (`fuzz/fuzz_targets/<name>.rs`), each run in turn.
pub const FUZZ_TARGETS: &[&str] = &[
    "manifest",
    "channel_state",
    "extract_paths",
    "grubenv",
    "range",
    "agent_config",
];

/// Seconds each fuzz target runs (default 60; `0` skips fuzzing).
pub const FUZZ_SECONDS_VAR: &str = "QX_FUZZ_SECONDS";

fn fuzz_seconds() -> anyhow::Result<u64> {
    parse_fuzz_seconds(std::env::var(FUZZ_SECONDS_VAR).ok().as_deref())
}

fn parse_fuzz_seconds(value: Option<&str>) -> anyhow::Result<u64> {
    match value {
        None | Some("") => Ok(60),
        Some(v) => v.trim().parse().with_context(|| {
            format!("{FUZZ_SECONDS_VAR}={v:?} is not a number of seconds (0 skips fuzzing)")
        }),
    }
}

/// The fuzz project at the repository root.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// `cargo fuzz <args>` in the fuzz project, on any toolchain (see the module comment).
fn cargo_fuzz(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("fuzz")
        .args(args)
        .current_dir(fuzz_dir())
        .env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// Builds every target once, runs each for `seconds`, prints each result; fails when any
/// target crashed (after running the others).
fn fuzz_all(seconds: u64) -> anyhow::Result<()> {
    if seconds == 0 {
        println!("fuzzing skipped ({FUZZ_SECONDS_VAR}=0)");
        return Ok(());
    }
    deps::ensure_cargo_fuzz()?;
    let st = cargo_fuzz(&["build", "--sanitizer", "none"])
        .status()
        .context("running cargo fuzz build")?;
    if !st.success() {
        bail!("cargo fuzz build failed ({st})");
    }
    let results: Vec<(&str, anyhow::Result<()>)> = FUZZ_TARGETS
        .iter()
        .map(|t| (*t, fuzz_one(t, seconds)))
        .collect();
    println!("\nfuzzing, {seconds} s per target:");
    for (t, r) in &results {
        match r {
            Ok(()) => println!("  {t}: ok"),
            Err(e) => println!("  {t}: FAILED: {e:#}"),
        }
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| r.1.is_err())
        .map(|r| r.0)
        .collect();
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

/// One target for `seconds`: new inputs go to a scratch corpus under `fuzz/target` (the
/// committed corpus only seeds it); a crash leaves its reproducer in `fuzz/artifacts/<target>/`.
fn fuzz_one(target: &str, seconds: u64) -> anyhow::Result<()> {
    let scratch = fuzz_dir().join("target/corpus-run").join(target);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let scratch = scratch.display().to_string();
    let seeds = format!("corpus/{target}");
    let max_time = format!("-max_total_time={seconds}");
    println!("\nfuzz {target}: {seconds} s");
    let st = cargo_fuzz(&[
        "run",
        "--sanitizer",
        "none",
        target,
        &scratch,
        &seeds,
        "--",
        &max_time,
    ])
    .status()
    .with_context(|| format!("running cargo fuzz run {target}"))?;
    if st.success() {
        return Ok(());
    }
    let artifacts = fuzz_dir().join("artifacts").join(target);
    let mut found: Vec<String> = std::fs::read_dir(&artifacts)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect();
    found.sort();
    bail!(
        "{target} crashed ({st}); reproducer(s): {}",
        if found.is_empty() {
            "see the output above".to_owned()
        } else {
            found.join(", ")
        }
    )
}

/// `1 h 02 min 03 s`, `4 min 05 s` or `12.3 s`.
fn wall_time(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs / 3600, secs / 60 % 60, secs % 60) {
        (0, 0, _) => format!("{:.1} s", d.as_secs_f64()),
        (0, m, s) => format!("{m} min {s:02} s"),
        (h, m, s) => format!("{h} h {m:02} min {s:02} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_run_includes_the_slow_tier_and_fast_does_not() {
        assert_eq!(
            cargo_args(false),
            [
                "test",
                "--workspace",
                "--all-targets",
                "--no-fail-fast",
                "--",
                "--include-ignored"
            ]
        );
        assert_eq!(
            cargo_args(true),
            ["test", "--workspace", "--all-targets", "--no-fail-fast"]
        );
    }

    #[test]
    fn fuzz_seconds_default_to_60_and_zero_skips() {
        assert_eq!(parse_fuzz_seconds(None).ok(), Some(60));
        assert_eq!(parse_fuzz_seconds(Some("5")).ok(), Some(5));
        assert_eq!(parse_fuzz_seconds(Some("0")).ok(), Some(0));
        assert!(parse_fuzz_seconds(Some("1m")).is_err());
    }

    #[test]
    fn every_fuzz_target_has_a_source_and_a_corpus() {
        for t in FUZZ_TARGETS {
            assert!(
                fuzz_dir().join(format!("fuzz_targets/{t}.rs")).is_file(),
                "{t}"
            );
            let seeds = std::fs::read_dir(fuzz_dir().join("corpus").join(t));
            assert!(seeds.is_ok_and(|s| s.count() > 0), "{t}");
        }
    }

    #[test]
    fn wall_time_reads_at_every_scale() {
        assert_eq!(wall_time(Duration::from_millis(12_345)), "12.3 s");
        assert_eq!(wall_time(Duration::from_secs(245)), "4 min 05 s");
        assert_eq!(wall_time(Duration::from_secs(3723)), "1 h 02 min 03 s");
    }
}
