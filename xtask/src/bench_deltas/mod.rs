//! `cargo xtask bench deltas`: bytes on the wire and apply time of qx-delta against the
//! general-purpose delta tools (bsdiff, xdelta3, zstd's patch-from, casync) and the full zstd
//! download, on a pinned corpus of real adjacent releases of executables
//! ([`corpus::PAIRS`]). The figures go into the "Deltas" section of BENCHMARKS.md.

mod corpus;
mod methods;
mod report;

use std::path::PathBuf;

use anyhow::Context;

use crate::benchmarks::update_section;
use crate::process::{target_dir, workspace_root};
use methods::{Job, Measured, Method, METHODS};

const START: &str = "<!-- bench-deltas:start -->";
const END: &str = "<!-- bench-deltas:end -->";
/// The Debian packages of the baseline tools (`time` for `/usr/bin/time`).
pub const PACKAGES: &[&str] = &["bsdiff", "xdelta3", "zstd", "casync", "time", "python3-pip"];

/// One pair's figures, in [`METHODS`] order.
pub struct PairResult {
    pub pair: &'static corpus::Pair,
    pub old_len: u64,
    pub new_len: u64,
    pub measured: Vec<(Method, Measured)>,
}

pub fn run() -> anyhow::Result<()> {
    crate::deps::cargo(&["build", "--release", "-p", "qx-delta", "--example", "delta"])?;
    let ours = target_dir().join("release/examples/delta");
    let cache = target_dir().join("delta-corpus");
    let mut results = Vec::new();
    for pair in corpus::PAIRS {
        results.push(run_pair(&cache, pair, &ours)?);
    }
    let text = report::markdown(&results);
    println!("{text}");
    let block = format!("{START}\n{}\n{END}", text.trim_end());
    update_section(&workspace_root().join("BENCHMARKS.md"), START, END, &block)?;
    eprintln!("BENCHMARKS.md updated (section \"Deltas\")");
    Ok(())
}

fn run_pair(
    cache: &std::path::Path,
    pair: &'static corpus::Pair,
    ours: &std::path::Path,
) -> anyhow::Result<PairResult> {
    let old = corpus::executable(cache, pair, &pair.old)?;
    let new = corpus::executable(cache, pair, &pair.new)?;
    let work = tempfile::tempdir()?;
    let job = Job {
        old: &old,
        new: &new,
        work: work.path(),
        ours,
    };
    let mut measured = Vec::new();
    for &m in METHODS {
        eprintln!(
            "{} {} → {}: {}",
            pair.name,
            pair.old.version,
            pair.new.version,
            m.label()
        );
        let r =
            methods::measure(m, &job).with_context(|| format!("{}: {}", pair.name, m.label()))?;
        eprintln!(
            "  {} bytes, apply {:.2} s, {} KiB",
            r.bytes, r.apply_secs, r.apply_peak_kib
        );
        measured.push((m, r));
    }
    Ok(PairResult {
        pair,
        old_len: len(&old)?,
        new_len: len(&new)?,
        measured,
    })
}

fn len(p: &PathBuf) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(p)?.len())
}
