//! The "Deltas" section of BENCHMARKS.md: one table per pair, then the targets.

use super::methods::{Measured, Method};
use super::PairResult;

fn mb(b: u64) -> String {
    format!("{:.2} MB", b as f64 / 1e6)
}

fn get(r: &PairResult, m: Method) -> Option<&Measured> {
    r.measured.iter().find(|(x, _)| *x == m).map(|(_, v)| v)
}

pub fn markdown(results: &[PairResult]) -> String {
    let mut out = String::from(
        "## Deltas\n\nCommand: `cargo xtask bench deltas` (fetches the pinned wheels with `pip \
         download` into `target/delta-corpus/`, reused when present; installs bsdiff, xdelta3, \
         zstd and casync from Debian; qx-delta is the release build of \
         `crates/qx-delta/examples/delta.rs`, `smallest` over all its algorithms). Bytes are \
         what a host downloads; apply is wall time and peak resident memory of the apply \
         command (`/usr/bin/time`); encode is the publisher's time. Every apply is checked to \
         rebuild the new release byte for byte.\n\n",
    );
    for r in results {
        out.push_str(&pair_table(r));
    }
    out.push_str(&targets(results));
    out
}

fn pair_table(r: &PairResult) -> String {
    let p = r.pair;
    let mut out = format!(
        "### {} {} → {} ({}; {} → {})\n\n| method | bytes | of full | of zstd -22 | apply | apply peak RSS | encode |\n|---|---:|---:|---:|---:|---:|---:|\n",
        p.name, p.old.version, p.new.version, p.note, mb(r.old_len), mb(r.new_len)
    );
    let full = get(r, Method::Full).map_or(1, |m| m.bytes.max(1));
    let z22 = get(r, Method::ZstdPatch22).map_or(1, |m| m.bytes.max(1));
    for (m, v) in &r.measured {
        let label = if v.detail.is_empty() || *m != Method::Ours {
            m.label().to_owned()
        } else {
            format!("{} (kept {})", m.label(), v.detail)
        };
        out.push_str(&format!(
            "| {label} | {} | {:.3} | {:.3} | {:.2} s | {:.0} MiB | {:.1} s |\n",
            mb(v.bytes),
            v.bytes as f64 / full as f64,
            v.bytes as f64 / z22 as f64,
            v.apply_secs,
            v.apply_peak_kib as f64 / 1024.0,
            v.encode_secs
        ));
    }
    out.push('\n');
    out
}

/// Ours over the smallest baseline tool, and ours over zstd -22, for one pair.
fn ratios(r: &PairResult) -> Option<(f64, f64)> {
    let ours = get(r, Method::Ours)?.bytes as f64;
    let best = r
        .measured
        .iter()
        .filter(|(m, _)| !matches!(m, Method::Ours | Method::Full))
        .map(|(_, v)| v.bytes)
        .min()? as f64;
    let z22 = get(r, Method::ZstdPatch22)?.bytes as f64;
    Some((ours / best, ours / z22))
}

fn targets(results: &[PairResult]) -> String {
    let rs: Vec<(f64, f64)> = results.iter().filter_map(ratios).collect();
    let all_le = rs.iter().all(|(b, _)| *b <= 1.0);
    let mut vs22: Vec<f64> = rs.iter().map(|(_, z)| *z).collect();
    vs22.sort_by(f64::total_cmp);
    let median = vs22.get(vs22.len() / 2).copied().unwrap_or(f64::NAN);
    let worst_apply = results
        .iter()
        .filter(|r| r.new_len >= 20_000_000)
        .filter_map(|r| get(r, Method::Ours))
        .map(|m| m.apply_secs)
        .fold(0.0, f64::max);
    let peak_mib = results
        .iter()
        .filter_map(|r| get(r, Method::Ours))
        .map(|m| m.apply_peak_kib as f64 / 1024.0)
        .fold(0.0, f64::max);
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    format!(
        "### Targets (issue 14)\n\n| target | figure | |\n|---|---|---|\n\
         | on every pair, ≤ the smallest tool | ours / smallest tool: {} | {} |\n\
         | ≥ 25 % smaller than zstd --patch-from -22 on the median pair | median ours / zstd -22: {median:.3} | {} |\n\
         | apply ≤ 1 s for a ~25 MB executable | slowest apply over the ≥ 20 MB pairs: {worst_apply:.2} s | {} |\n\
         | decode memory bounded | largest apply peak RSS: {peak_mib:.0} MiB (base + projected base + target + patch + three 8 MiB dictionaries) | stated |\n",
        rs.iter().map(|(b, _)| format!("{b:.3}")).collect::<Vec<_>>().join(", "),
        met(all_le),
        met(median <= 0.75),
        met(worst_apply <= 1.0),
    )
}
