//! `cargo xtask test`: every test of the workspace, the slow tier included.
//!
//! Slow tests (they need root, loop devices, qemu or a browser) are marked
//! `#[ignore = "slow tier: …"]`, so a plain `cargo test` is quick and reports them as ignored;
//! this command installs the Debian packages they need and runs them with the rest
//! (`-- --include-ignored`). `--fast` runs the quick tier only, with the few small packages it uses.

use std::time::{Duration, Instant};

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
    let result = deps::ensure(packages).and_then(|()| deps::cargo(&cargo_args(fast)));
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
    fn wall_time_reads_at_every_scale() {
        assert_eq!(wall_time(Duration::from_millis(12_345)), "12.3 s");
        assert_eq!(wall_time(Duration::from_secs(245)), "4 min 05 s");
        assert_eq!(wall_time(Duration::from_secs(3723)), "1 h 02 min 03 s");
    }
}
