//! `qx-update ab …`: the command-line face of [`crate::ab`]. The agent binary
//! parses its arguments with [`AbCommand`] and hands over to [`run`].
//!
//! Exit codes: 0 success; 1 failure (an error, or `verify` with a failed
//! health check: the slot was left unmarked).

use std::io::Write;

use crate::ab::{self, AbContext, AbStatus, BootCheck, MarkBadReport, VerifyReport};
use crate::config::SlotTarget;
use crate::error::{BootError, Result};
use crate::state::AbState;

/// A/B system slots: GRUB boot counting, health checks, rollback.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum AbCommand {
    /// Show the booted slot, GRUB's slot order and counters, and the last
    /// full-image update
    Status,
    /// Mark the booted slot good without running the health checks
    MarkGood,
    /// Mark the booted slot bad, so that the next boot uses the other slot
    MarkBad,
    /// Early boot: detect and record a rollback of a pending update
    BootCheck,
    /// Late boot: run the health checks; if all pass, mark the booted slot
    /// good and complete a pending update (exit 1 if a check fails)
    Verify,
}

/// Run `cmd`, printing a human summary (or JSON with `json`) on stdout.
/// Returns the process exit code: 0, or 1 when `verify` found a failing
/// health check. Errors are returned for the caller to print.
pub fn run(cmd: &AbCommand, ctx: &AbContext, json: bool) -> Result<i32> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_to(cmd, ctx, json, &mut out)
}

/// [`run`] writing to `out`.
pub fn run_to(cmd: &AbCommand, ctx: &AbContext, json: bool, out: &mut dyn Write) -> Result<i32> {
    let (text, code) = match cmd {
        AbCommand::Status => {
            let s = ab::status(ctx)?;
            (render(json, &s, format_status)?, 0)
        }
        AbCommand::BootCheck => {
            let r = ab::boot_check(ctx)?;
            (render(json, &r, format_boot_check)?, 0)
        }
        AbCommand::Verify => {
            let r = ab::verify(ctx)?;
            let code = if r.marked_good { 0 } else { 1 };
            (render(json, &r, format_verify)?, code)
        }
        AbCommand::MarkGood => {
            let r = ab::mark_good(ctx)?;
            (render(json, &r, format_verify)?, 0)
        }
        AbCommand::MarkBad => {
            let r = ab::mark_bad(ctx)?;
            (render(json, &r, format_mark_bad)?, 0)
        }
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| BootError::io("<stdout>", "write", e))?;
    Ok(code)
}

fn render<T: serde::Serialize>(json: bool, value: &T, human: fn(&T) -> String) -> Result<String> {
    if json {
        let mut s = serde_json::to_string_pretty(value).map_err(|e| BootError::Io {
            path: "<stdout>".into(),
            op: "serialise JSON",
            source: std::io::Error::other(e),
        })?;
        s.push('\n');
        Ok(s)
    } else {
        Ok(human(value))
    }
}

fn target(t: &SlotTarget) -> String {
    match t {
        SlotTarget::Device(d) => format!("device {d}"),
        SlotTarget::Path(p) => format!("path {}", p.display()),
    }
}

fn format_state(s: &AbState) -> String {
    if s.pending {
        format!(
            "update:      version {} pending in slot {} (installed {} from slot {})\n",
            s.version, s.to, s.time, s.from
        )
    } else {
        format!(
            "last update: version {} into slot {}: {} at {}{}\n",
            s.version,
            s.to,
            s.outcome.map(|o| o.as_str()).unwrap_or("finished"),
            s.finished.map(|t| t.to_string()).unwrap_or_default(),
            s.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )
    }
}

fn format_status(s: &AbStatus) -> String {
    let mut o = String::new();
    match (s.booted, &s.booted_error) {
        (Some(b), _) => o.push_str(&format!("booted slot: {b}\n")),
        (None, Some(e)) => o.push_str(&format!("booted slot: unknown ({e})\n")),
        (None, None) => o.push_str("booted slot: unknown\n"),
    }
    let order: Vec<&str> = s.order.iter().map(|s| s.as_str()).collect();
    match s.next_boot {
        Some(n) => o.push_str(&format!(
            "next boot:   slot {n} (ORDER \"{}\")\n",
            order.join(" ")
        )),
        None => o.push_str(&format!(
            "next boot:   no slot has boot attempts left (ORDER \"{}\"); GRUB will take its \
             rescue path\n",
            order.join(" ")
        )),
    }
    for slot in &s.slots {
        o.push_str(&format!(
            "slot {}:      {}, {} boot attempt(s) left, {}{}\n",
            slot.slot,
            if slot.good { "good" } else { "not marked good" },
            slot.tries_left,
            target(&slot.target),
            if slot.booted { " [booted]" } else { "" }
        ));
    }
    match &s.state {
        Some(st) => o.push_str(&format_state(st)),
        None => o.push_str("update:      no full-image update recorded\n"),
    }
    o.push_str(&format!("grubenv:     {}\n", s.grubenv.display()));
    o
}

fn format_boot_check(r: &BootCheck) -> String {
    match r {
        BootCheck::TrialBoot { .. } => {
            format!("{}; `qx-update ab verify` marks it good\n", r.summary())
        }
        BootCheck::RolledBack { reason, .. } => format!("ROLLBACK recorded: {reason}\n"),
        _ => format!("{}\n", r.summary()),
    }
}

fn format_verify(r: &VerifyReport) -> String {
    let mut o = String::new();
    if let BootCheck::RolledBack { reason, .. } = &r.boot_check {
        o.push_str(&format!("ROLLBACK recorded: {reason}\n"));
    }
    for c in &r.checks {
        o.push_str(&format!(
            "{} {} ({} ms){}\n",
            if c.passed { "PASS" } else { "FAIL" },
            c.argv.join(" "),
            c.duration_ms,
            c.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
        if !c.passed && !c.output.trim().is_empty() {
            for line in c.output.trim_end().lines() {
                o.push_str(&format!("     | {line}\n"));
            }
        }
    }
    if r.marked_good {
        o.push_str(&format!(
            "slot {} marked good ({} boot attempts)\n",
            r.slot, r.tries_left
        ));
    } else {
        let failed = r.checks.iter().filter(|c| !c.passed).count();
        o.push_str(&format!(
            "slot {} NOT marked good: {failed} health check(s) failed; {} boot attempt(s) left\n",
            r.slot, r.tries_left
        ));
    }
    if let Some(c) = &r.completed {
        o.push_str(&format!("update to version {} completed\n", c.version));
    }
    o
}

fn format_mark_bad(r: &MarkBadReport) -> String {
    let mut o = format!(
        "slot {} marked bad; the next boot uses slot {} (reboot to switch)\n",
        r.slot, r.next_boot
    );
    if let Some(h) = &r.rolled_back {
        o.push_str(&format!(
            "pending update to version {} abandoned\n",
            h.version
        ));
    }
    o
}
