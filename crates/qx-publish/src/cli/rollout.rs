//! `qx-publish rollout …` (docs/spec.md §10): `start` signs a rollout's plan into the channel
//! state; `status`, `pause`, `resume` and `abort` are operator calls to the server's rollout
//! API (a token with the `rollout` scope; `read` for status); `abort --revert` instead signs a
//! channel state revoking the version with `revert`, so hosts that took it go back.

use std::path::PathBuf;

use qx_core::channel::RolloutPolicy;
use qx_core::fleet::{RolloutStage, RolloutState, RolloutStatus, WaveStatus};
use qx_core::rollout_policy::{self, PolicyFlags};

use super::*;

#[derive(Debug, clap::Subcommand)]
pub(super) enum RolloutCommand {
    /// Start the rollout of a release published with --no-current: sign a channel state whose
    /// plan holds its waves (the first opens now, each next one after the soak times before
    /// it) and its health rules. Hosts never take it before their wave's time, whatever a
    /// server says.
    #[command(after_help = EXIT_CODES)]
    Start(StartArgs),
    /// Show the channel's rollouts (newest first), or one: each wave's hosts by stage, its
    /// gate, a halt's reason and the most frequent failures.
    #[command(after_help = EXIT_CODES)]
    Status(TargetArgs),
    /// Stop making new offers and opening waves (hosts already offered go on).
    #[command(after_help = EXIT_CODES)]
    Pause(TargetArgs),
    /// Run a paused or halted rollout again; the failures seen so far are acknowledged and
    /// only new ones count towards the halt rules.
    #[command(after_help = EXIT_CODES)]
    Resume(TargetArgs),
    /// End the rollout: hosts keep what they run. With --revert, sign a channel state that
    /// revokes the version with `revert` instead: hosts that took it go back to `current`.
    #[command(after_help = EXIT_CODES)]
    Abort(AbortArgs),
}

/// The rollout's health rules (docs/spec.md §10), signed with its plan.
#[derive(Debug, Clone, Default, clap::Args)]
pub(super) struct PolicyArgs {
    /// A wave opens only when the previous wave's confirmed share of its finished hosts
    /// reaches this (default 95%).
    #[arg(long, value_name = "PERCENT")]
    gate: Option<String>,
    /// Halt after this many failures (failed, rolled back, timed out; default 5).
    #[arg(long, value_name = "N")]
    max_failures: Option<u32>,
    /// Halt when failures exceed this share of the finished hosts (default 5%), once
    /// --min-sample hosts finished.
    #[arg(long, value_name = "PERCENT")]
    max_failure_rate: Option<String>,
    /// Finished hosts needed before --max-failure-rate applies (default 10).
    #[arg(long, value_name = "N")]
    min_sample: Option<u32>,
    /// How long each stage may take before the host counts as timed out (default
    /// download=2h,install=1h,confirm=30m; name any of them).
    #[arg(long, value_name = "STAGE=DURATION,…")]
    deadline: Option<String>,
}

impl PolicyArgs {
    /// The policy; flags without a rollout (`waves` false) are a usage error.
    pub(super) fn policy(&self, waves: bool) -> Result<RolloutPolicy> {
        let flags = PolicyFlags {
            gate: self.gate.as_deref(),
            max_failures: self.max_failures,
            max_failure_rate: self.max_failure_rate.as_deref(),
            min_sample: self.min_sample,
            deadline: self.deadline.as_deref(),
        };
        if !waves && !flags.is_empty() {
            return Err(Error::Usage(
                "--gate, --max-failures, --max-failure-rate, --min-sample and --deadline belong to a rollout: add --waves".into(),
            ));
        }
        rollout_policy::policy(&flags).map_err(|e| Error::Usage(e.to_string()))
    }
}

#[derive(Debug, clap::Args)]
pub(super) struct StartArgs {
    #[command(flatten)]
    channel: ChannelArgs,
    /// The waves: cumulative percents with the soak time after each, the last 100%
    /// (e.g. 1%:1h,10%:4h,50%:12h,100%).
    #[arg(long, value_name = "WAVES")]
    waves: String,
    #[command(flatten)]
    policy: PolicyArgs,
    version: Version,
}

/// Which rollout an operator command acts on.
#[derive(Debug, clap::Args)]
pub(super) struct TargetArgs {
    #[command(flatten)]
    at: ChannelTarget,
    /// The rollout's id (default: the channel's rollout in progress; for status, every
    /// rollout of the channel).
    id: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(super) struct AbortArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Sign a channel state revoking the version with `revert`: hosts that took it go back.
    #[arg(long, requires = "key")]
    revert: bool,
    /// The secret key that signs the channel's new state (with --revert).
    #[arg(long, value_name = "KEYFILE")]
    key: Option<PathBuf>,
    #[command(flatten)]
    state: StateArgs,
}

pub(super) fn run(command: RolloutCommand, global: &Global) -> Result<()> {
    match command {
        RolloutCommand::Start(a) => start(a, global),
        RolloutCommand::Status(a) => status(a, global),
        RolloutCommand::Pause(a) => act(a, "pause", global),
        RolloutCommand::Resume(a) => act(a, "resume", global),
        RolloutCommand::Abort(a) if a.revert => abort_revert(a, global),
        RolloutCommand::Abort(a) => act(a.target, "abort", global),
    }
}

fn start(a: StartArgs, global: &Global) -> Result<()> {
    let waves = qx_core::rollout::parse_waves(&a.waves).map_err(|e| Error::Usage(e.to_string()))?;
    let policy = a.policy.policy(true)?;
    let c = &a.channel;
    let client = c.client(global)?;
    let signer = c.state.signer(&c.key, &[])?;
    let update = c.update(&client, &signer)?;
    let committed = channel::start_rollout(&update, &a.version, &waves, policy)?;
    let plan = committed.state.rollout.clone();
    if global.json {
        print_json(&serde_json::json!({
            "product": c.at.product.as_str(),
            "channel": c.at.channel.as_str(),
            "version": a.version.to_string(),
            "outcome": "rollout_started",
            "rollout": plan,
            "channel_state": state_json(&committed),
        }));
        return Ok(());
    }
    println!(
        "started the rollout of {} {} on channel {}",
        c.at.product, a.version, c.at.channel
    );
    for w in plan.iter().flat_map(|p| &p.waves) {
        println!("  {:>6}%  from {}", w.percent, w.not_before);
    }
    print_state(&committed);
    Ok(())
}

impl TargetArgs {
    fn client(&self, global: &Global) -> Result<Client> {
        self.at.client(global)
    }

    /// The rollout named, or the channel's one in progress.
    fn resolve(&self, client: &Client) -> Result<RolloutStatus> {
        if let Some(id) = &self.id {
            return client.rollout(self.at.product.as_str(), id);
        }
        let list = client.rollouts(self.at.product.as_str(), self.at.channel.as_str())?;
        list.rollouts
            .into_iter()
            .find(|r| !finished(r.state))
            .ok_or_else(|| {
                Error::Usage(format!(
                    "channel {} of {} has no rollout in progress; name one by its id (`qx-publish rollout status` lists them)",
                    self.at.channel, self.at.product
                ))
            })
    }
}

fn finished(state: RolloutState) -> bool {
    matches!(state, RolloutState::Aborted | RolloutState::Completed)
}

fn status(a: TargetArgs, global: &Global) -> Result<()> {
    let client = a.client(global)?;
    let rollouts = match &a.id {
        Some(id) => vec![client.rollout(a.at.product.as_str(), id)?],
        None => {
            client
                .rollouts(a.at.product.as_str(), a.at.channel.as_str())?
                .rollouts
        }
    };
    if global.json {
        let v = match (&a.id, rollouts.as_slice()) {
            (Some(_), [one]) => serde_json::to_value(one),
            _ => serde_json::to_value(serde_json::json!({ "rollouts": rollouts })),
        };
        print_json(&v.unwrap_or_default());
        return Ok(());
    }
    if rollouts.is_empty() {
        println!(
            "channel {} of {} has no rollouts",
            a.at.channel, a.at.product
        );
    }
    for r in &rollouts {
        print!("{}", render(r));
    }
    Ok(())
}

/// `pause`, `resume` or `abort` (keep) through the server's API.
fn act(a: TargetArgs, action: &str, global: &Global) -> Result<()> {
    let client = a.client(global)?;
    let id = a.resolve(&client)?.id;
    let after = client.rollout_action(a.at.product.as_str(), &id, action)?;
    if global.json {
        print_json(&serde_json::to_value(&after).unwrap_or_default());
        return Ok(());
    }
    print!("{}", render(&after));
    Ok(())
}

/// `abort --revert`: a signed channel state revoking the rollout's version (read from the
/// signed plan, not from the server's word) with `revert`; the server ends the rollout when it
/// stores the state.
fn abort_revert(a: AbortArgs, global: &Global) -> Result<()> {
    let t = &a.target;
    let client = t.client(global)?;
    let key = a
        .key
        .as_deref()
        .ok_or_else(|| Error::Usage("--revert needs --key KEYFILE".into()))?;
    let signer = a.state.signer(key, &[])?;
    let update = Update {
        client: &client,
        signer: &signer,
        product: t.at.product.clone(),
        channel: t.at.channel.clone(),
        lifetime: a.state.lifetime()?,
        conflict_retries: channel::CONFLICT_RETRIES,
    };
    let (committed, version) = channel::abort_with_revert(&update, t.id.as_deref())?;
    if global.json {
        print_json(&serde_json::json!({
            "product": t.at.product.as_str(),
            "channel": t.at.channel.as_str(),
            "version": version.to_string(),
            "outcome": "aborted_with_revert",
            "channel_state": state_json(&committed),
        }));
        return Ok(());
    }
    println!(
        "aborted the rollout of {} {} with revert: hosts that took it go back to {}",
        t.at.product, version, committed.state.current
    );
    print_state(&committed);
    Ok(())
}

/// A rollout for people: its state and halt, one line per wave, the top failures.
fn render(r: &RolloutStatus) -> String {
    let mut out = format!(
        "rollout {} of {} {} on channel {}: {}\n",
        r.id,
        r.product,
        r.version,
        r.channel,
        state_name(r.state)
    );
    if let Some(h) = &r.halt {
        out.push_str(&format!(
            "  halted at {}: {} ({} failures of {} finished)\n",
            h.at, h.reason, h.failures, h.finished
        ));
    }
    if let Some(why) = &r.ended_reason {
        out.push_str(&format!("  ended: {why}\n"));
    }
    out.push_str(&format!(
        "  {:<4} {:>7} {:<13} {:>8} {:>8} {:>8} {:>9} {:>8}  {}\n",
        "wave",
        "percent",
        "gate",
        "eligible",
        "offered",
        "updating",
        "confirmed",
        "failures",
        "not before"
    ));
    for (i, w) in r.waves.iter().enumerate() {
        out.push_str(&wave_line(i, w));
    }
    for (message, hosts) in &r.top_failures {
        out.push_str(&format!("  {hosts} host(s): {message}\n"));
    }
    out
}

/// One wave's line of [`render`]: its hosts by stage, summed as the columns say.
fn wave_line(i: usize, w: &WaveStatus) -> String {
    let sum = |keep: fn(&RolloutStage) -> bool| -> u64 {
        RolloutStage::ALL
            .iter()
            .filter(|s| keep(s))
            .map(|s| w.stages.get(s).copied().unwrap_or(0))
            .sum()
    };
    format!(
        "  {:<4} {:>6}% {:<13} {:>8} {:>8} {:>8} {:>9} {:>8}  {}\n",
        i,
        w.percent,
        w.gate,
        w.eligible,
        sum(|_| true),
        sum(|s| s.in_progress() && *s != RolloutStage::Offered),
        sum(|s| *s == RolloutStage::Confirmed),
        sum(|s| s.is_failure()),
        w.not_before
    )
}

fn state_name(s: RolloutState) -> &'static str {
    match s {
        RolloutState::Running => "running",
        RolloutState::Paused => "paused",
        RolloutState::Halted => "halted",
        RolloutState::Aborted => "aborted",
        RolloutState::Completed => "completed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qx_core::fleet::Halt;

    #[test]
    fn a_halted_rollout_shows_its_reason_its_waves_and_failures() {
        let wave = |percent, confirmed, failed| WaveStatus {
            percent,
            not_before: "2026-12-05T10:00:00Z".into(),
            opened_at: None,
            gate: "open".into(),
            eligible: 40,
            stages: [
                (RolloutStage::Confirmed, confirmed),
                (RolloutStage::Failed, failed),
                (RolloutStage::Downloading, 2),
            ]
            .into_iter()
            .collect(),
            confirmed_share: None,
            eta: None,
        };
        let halt = Halt {
            rule: "max_failures".into(),
            reason: "5 failures reached the cap of 5".into(),
            failures: 5,
            finished: 12,
            at: "2026-12-05T11:00:00Z".into(),
        };
        let r = RolloutStatus {
            id: "r1".into(),
            product: "demo".into(),
            channel: "stable".into(),
            version: "1.1.0".into(),
            state: RolloutState::Halted,
            policy: RolloutPolicy::default(),
            waves: vec![wave(10.0, 7, 5), wave(100.0, 0, 0)],
            halt: Some(halt.clone()),
            halts: vec![halt],
            acknowledged_failures: 0,
            acknowledged_finished: 0,
            top_failures: vec![("health check failed".into(), 5)],
            started_at: "2026-12-05T10:00:00Z".into(),
            updated_at: "2026-12-05T11:00:00Z".into(),
            ended_reason: None,
        };
        let text = render(&r);
        assert!(text.starts_with("rollout r1 of demo 1.1.0 on channel stable: halted\n"));
        assert!(text.contains("halted at 2026-12-05T11:00:00Z: 5 failures reached the cap of 5 (5 failures of 12 finished)"), "{text}");
        let first = text.lines().nth(3).unwrap_or_default();
        let cells: Vec<&str> = first.split_whitespace().collect();
        assert_eq!(
            cells[..8],
            ["0", "10%", "open", "40", "14", "2", "7", "5"],
            "{text}"
        );
        assert!(text.contains("5 host(s): health check failed"), "{text}");
    }
}
