//! `cargo xtask test`: every test of the workspace, the slow tier included.
//!
//! Slow tests (they need root, loop devices, qemu or a browser) are marked
//! `#[ignore = "slow tier: …"]`, so a plain `cargo test` is quick and reports them as ignored;
//! this command installs the Debian packages they need and runs them with the rest
//! (`-- --include-ignored`). `--fast` runs the quick tier only, with the few small packages it uses.
//!
//! The full run also runs the server's whole suite a second time with every test server on a
//! Garage object store ([`STORE_VAR`]`=garage`, the `garage` program installed with
//! `cargo install` when missing), leaving out [`LOCAL_ONLY_SERVER_TESTS`].
//!
//! Before the tests, the full run builds the dist (`cargo xtask dist`: static programs, man
//! pages, completions, Debian packages) and names it in `QX_DIST_DIR` for the tests of the
//! packages (`dpkg --root`, lintian) and of the container image (podman).
//!
//! The full run then runs each fuzz target of `fuzz/` for a bounded time ([`FUZZ_SECONDS_VAR`],
//! 60 s by default, `0` skips them), seeded with its committed corpus `fuzz/corpus/<target>/`.
//! The fuzz build works on a stable toolchain: the fuzzing flags are unlocked with
//! `RUSTC_BOOTSTRAP=1` for that build only, without a sanitizer runtime (the targets are safe
//! code; a panic or a failed assertion is the finding). A crash fails the run and its
//! reproducer is printed (`fuzz/artifacts/<target>/crash-…`; replay it with
//! `cargo fuzz run --sanitizer none <target> <file>`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    let mut failures = Vec::new();
    let mut result = deps::ensure(packages).and_then(|()| run_tests(fast, &mut failures));
    if !fast {
        let fuzzed = fuzz_seconds().and_then(fuzz_all);
        if let Err(e) = &fuzzed {
            eprintln!("fuzzing failed: {e:#}");
        }
        result = result.and(fuzzed);
    }
    print_failures(&failures);
    let verdict = if result.is_ok() { "passed" } else { "failed" };
    println!(
        "\ncargo xtask test{}: {verdict}; wall time {}",
        if fast { " --fast" } else { "" },
        wall_time(start.elapsed())
    );
    result
}

/// The workspace's tests; then, in the full run, the server's suite again on the object store
/// (the `garage` program installed first when missing).
fn run_tests(fast: bool, failures: &mut Vec<String>) -> anyhow::Result<()> {
    if fast {
        return cargo_test(&cargo_args(true), &[], failures);
    }
    let garage = deps::ensure_garage()?;
    let env = vec![("QX_GARAGE", garage.into_os_string())];
    let (dist, dist_env) = build_dist();
    let with_dist: Vec<_> = env.iter().cloned().chain(dist_env).collect();
    let first = cargo_test(&cargo_args(false), &with_dist, failures);
    let mut on_garage = env;
    on_garage.push((STORE_VAR, "garage".into()));
    let second = cargo_test(&garage_pass_args(), &on_garage, failures);
    dist.and(first).and(second)
}

/// `cargo xtask dist` for the tests of the packages and the container image, timed; its
/// directory as [`qx_testkit::dist::DIST_VAR`]. When it fails the other tests still run
/// (those needing it fail, saying the variable is unset) and the run fails.
fn build_dist() -> (
    anyhow::Result<()>,
    Option<(&'static str, std::ffi::OsString)>,
) {
    let start = Instant::now();
    match crate::dist::run() {
        Ok(layout) => {
            println!("dist built in {}", wall_time(start.elapsed()));
            let var = (qx_testkit::dist::DIST_VAR, layout.dist.into_os_string());
            (Ok(()), Some(var))
        }
        Err(e) => {
            eprintln!("cargo xtask dist failed: {e:#}");
            (Err(e.context("cargo xtask dist")), None)
        }
    }
}

/// Runs `cargo <args>`, passing its output through while keeping each test binary's
/// `failures:` section in `failures`, so that the end of the run can repeat them (fuzzing
/// prints a lot in between).
fn cargo_test(
    args: &[&str],
    env: &[(&str, std::ffi::OsString)],
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut child = Command::new(env!("CARGO"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo")?;
    let stdout = child.stdout.take().context("cargo's piped stdout")?;
    let mut section = FailureSection::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's output")?;
        println!("{line}");
        section.feed(&line, failures);
    }
    let st = child.wait().context("waiting for cargo")?;
    if !st.success() {
        bail!("cargo {} failed ({st})", args.join(" "));
    }
    Ok(())
}

/// The `failures:` part of one test binary's output: from the line `failures:` (it comes
/// twice: before the panics, then before the list of names) to its `test result:` line.
#[derive(Default)]
struct FailureSection {
    inside: bool,
}

impl FailureSection {
    /// Most lines kept over the whole run (panics and backtraces can be long).
    const MAX_LINES: usize = 3000;

    fn feed(&mut self, line: &str, failures: &mut Vec<String>) {
        if line == "failures:" && !self.inside {
            self.inside = true;
            failures.push("---".to_owned());
        }
        if !self.inside {
            return;
        }
        if line.starts_with("test result:") {
            self.inside = false;
            failures.push(line.to_owned());
        } else if failures.len() < Self::MAX_LINES {
            failures.push(line.to_owned());
        }
    }
}

fn print_failures(failures: &[String]) {
    if failures.is_empty() {
        return;
    }
    println!("\nthe failed tests, again (their output is above):");
    for line in failures {
        println!("{line}");
    }
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

/// Set to `garage`, every test server keeps its releases in a Garage object store
/// (`qx_testkit::garage`).
pub const STORE_VAR: &str = "QX_TEST_STORE";

/// The server tests that are about the local-disk layout itself, left out of the pass on the
/// object store: symlinks in the release directory, a full file system, and the two that
/// watch a partial upload appear in the staging directory (an object store shows an upload
/// only once it is complete; the object-store tests cover cut uploads there).
pub const LOCAL_ONLY_SERVER_TESTS: &[&str] = &[
    "symlinks::",
    "hardening::publish_onto_full_disk_is_507_json",
    "connections::publish_drip_fed_upload_is_cut_with_408_and_its_staging_removed",
    "robustness::client_disconnecting_mid_publish_leaves_nothing",
];

/// The second pass: the server's whole suite (slow tier included) on the object store.
fn garage_pass_args() -> Vec<&'static str> {
    let mut args = vec![
        "test",
        "-p",
        "qx-server",
        "--test",
        "it",
        "--",
        "--include-ignored",
    ];
    for t in LOCAL_ONLY_SERVER_TESTS {
        args.extend(["--skip", t]);
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
    "delta_decode",
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
/// The fuzzer's own output goes to `fuzz/target/logs/<target>.log`; on a crash its end is
/// printed.
fn fuzz_one(target: &str, seconds: u64) -> anyhow::Result<()> {
    let scratch = fuzz_dir().join("target/corpus-run").join(target);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let scratch = scratch.display().to_string();
    let seeds = format!("corpus/{target}");
    let max_time = format!("-max_total_time={seconds}");
    let log_path = fuzz_log(target)?;
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    println!(
        "fuzz {target}: {seconds} s (output in {})",
        log_path.display()
    );
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
    .stdout(log.try_clone().context("duplicating the log's handle")?)
    .stderr(log)
    .status()
    .with_context(|| format!("running cargo fuzz run {target}"))?;
    if st.success() {
        return Ok(());
    }
    print_tail(&log_path, 60);
    bail!(
        "{target} crashed ({st}); reproducer(s): {}",
        reproducers(target)
    )
}

/// `fuzz/target/logs/<target>.log`, its directory created.
fn fuzz_log(target: &str) -> anyhow::Result<PathBuf> {
    let dir = fuzz_dir().join("target/logs");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join(format!("{target}.log")))
}

/// Prints the last `n` lines of `path` (nothing when it cannot be read).
fn print_tail(path: &Path, n: usize) {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    println!("--- the end of {}:", path.display());
    for line in &lines[lines.len().saturating_sub(n)..] {
        println!("{line}");
    }
}

/// The reproducers a crashed target left in `fuzz/artifacts/<target>/`.
fn reproducers(target: &str) -> String {
    let artifacts = fuzz_dir().join("artifacts").join(target);
    let mut found: Vec<String> = std::fs::read_dir(&artifacts)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().display().to_string())
        .collect();
    found.sort();
    if found.is_empty() {
        "none written (see the output above)".to_owned()
    } else {
        found.join(", ")
    }
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
    fn the_garage_pass_runs_the_server_suite_without_the_local_only_tests() {
        let args = garage_pass_args();
        assert_eq!(&args[..5], ["test", "-p", "qx-server", "--test", "it"]);
        assert!(args.contains(&"--include-ignored"));
        for t in LOCAL_ONLY_SERVER_TESTS {
            let i = args.iter().position(|a| a == t).expect("skipped");
            assert_eq!(args[i - 1], "--skip");
        }
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

    #[test]
    fn the_failures_section_of_each_binary_is_kept_and_nothing_else() {
        let output = "running 2 tests\ntest a ... ok\ntest b ... FAILED\n\nfailures:\n\n\
            ---- b stdout ----\npanicked at b\n\nfailures:\n    b\n\n\
            test result: FAILED. 1 passed; 1 failed\n\nrunning 1 test\ntest c ... ok\n\
            test result: ok. 1 passed\n";
        let mut kept = Vec::new();
        let mut section = FailureSection::default();
        for line in output.lines() {
            section.feed(line, &mut kept);
        }
        assert_eq!(kept.first().map(String::as_str), Some("---"));
        assert!(kept.iter().any(|l| l == "panicked at b"));
        assert!(kept.iter().any(|l| l == "    b"));
        assert_eq!(
            kept.last().map(String::as_str),
            Some("test result: FAILED. 1 passed; 1 failed")
        );
        assert!(!kept
            .iter()
            .any(|l| l.contains("test c") || l.contains("test a")));
    }
}
