//! What a check-in says about the host, from what the agent knows: its version, the installed
//! component versions, the A/B slots (when the booted slot is known), a full image waiting for
//! its reboot or verification, the last update's result (the history), the state of the
//! agent's current operation, the configured labels and the uptime.

use std::path::Path;

use qx_core::fleet::{CheckIn, CheckInReason, LastResult, SlotReport};
use qx_core::fs::under_root;
use qx_core::status::UpdateState;

use crate::Agent;

/// Where the kernel says how long the host has been up, under the root.
const UPTIME: &str = "/proc/uptime";

/// The check-in of `agent`'s host now.
pub fn build(agent: &Agent, reason: CheckInReason) -> CheckIn {
    let config = agent.config();
    let status = agent.status();
    let (booted_slot, slots, pending) = ab_view(agent);
    let last_result = status.history.last().map(|h| LastResult {
        version: h.version.clone(),
        outcome: h.outcome.as_str().to_owned(),
        message: h.reason.as_deref().map(qx_core::fleet_queue::cut_message),
        time: h.time.to_string(),
    });
    // Mid-check (the check-in comes before the decision), the state is the check's own: the
    // health is the last settled state's.
    let health = match &agent.settled_state() {
        UpdateState::Failed { reason, .. } => {
            qx_core::fleet_queue::cut_message(&format!("last operation failed: {reason}"))
        }
        _ => "ok".to_owned(),
    };
    CheckIn {
        reason,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        channel: config.channel.to_string(),
        installed: status.installed,
        booted_slot,
        slots,
        pending,
        last_result,
        health: Some(health),
        labels: config.fleet.labels.clone(),
        uptime_s: uptime(agent.root()),
        time: Some(jiff::Timestamp::now().to_string()),
    }
}

/// The booted slot, both slots and the pending image, when the booted slot is known (the
/// kernel command line names it) and the GRUB environment can be read; nothing otherwise.
fn ab_view(agent: &Agent) -> (Option<String>, Vec<SlotReport>, Option<String>) {
    let config = agent.config();
    let ctx = qx_boot::AbContext::new(&config.ab, agent.root(), &config.log_path);
    let Ok(st) = qx_boot::ab::status(&ctx) else {
        return (None, Vec::new(), None);
    };
    let Some(booted) = st.booted else {
        return (None, Vec::new(), None);
    };
    let state = st.state.as_ref();
    let pending = state.filter(|s| s.pending).map(|s| s.version.clone());
    let slots = st
        .slots
        .iter()
        .map(|s| {
            let written = state.filter(|a| {
                a.to == s.slot && (a.pending || a.outcome == Some(qx_core::Outcome::Success))
            });
            let trying = state.is_some_and(|a| a.pending && a.to == s.slot);
            SlotReport {
                name: s.slot.to_string(),
                version: written.map(|a| a.version.clone()),
                state: if s.good {
                    "good"
                } else if trying && s.tries_left > 0 {
                    "trying"
                } else {
                    "bad"
                }
                .to_owned(),
            }
        })
        .collect();
    (Some(booted.to_string()), slots, pending)
}

/// Whole seconds since boot (`/proc/uptime` under the root); 0 when it cannot be read.
fn uptime(root: &Path) -> u64 {
    std::fs::read_to_string(under_root(root, Path::new(UPTIME)))
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .next()
                .and_then(|s| s.parse::<f64>().ok())
        })
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| s as u64)
        .unwrap_or(0)
}
