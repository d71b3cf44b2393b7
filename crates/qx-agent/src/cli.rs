//! The `qx-update` command line: `check`, `apply`, `status`, `rollback`, `recover`, `daemon`,
//! and `ab …` (A/B system slots, run by the boot scripts: handled before the agent is built,
//! with only the configuration's `updates.ab` section).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use qx_core::status::UpdateState;

use crate::status::{OperationState, OperationStatus, RecoveryAction};
use crate::transaction::journal::{OpKind, Phase};
use crate::{code, exit_codes_help, Agent, AgentError, ApplyOptions, Config, Surface};

/// Writes to standard output, ignoring a failure: a reader that went away
/// (`qx-update status | head`) is not an error, and an apply whose output nobody reads goes
/// on (writing never panics, and SIGPIPE keeps Rust's default of being ignored).
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = std::io::Write::write_fmt(&mut std::io::stdout().lock(), format_args!($($arg)*));
    }};
}

/// [`out!`] with a line end.
macro_rules! outln {
    () => { out!("\n") };
    ($($arg:tt)*) => {{
        let mut o = std::io::stdout().lock();
        let _ = std::io::Write::write_fmt(&mut o, format_args!($($arg)*))
            .and_then(|()| std::io::Write::write_all(&mut o, b"\n"));
    }};
}

#[derive(Debug, Parser)]
#[command(
    name = "qx-update",
    version,
    about = "Quantix OTA host agent: check, apply and roll back signed releases",
    after_help = exit_codes_help()
)]
pub struct Cli {
    /// Root prefix under which every host path is resolved (a whole host in a directory).
    #[arg(long, global = true, default_value = "/", value_name = "DIR")]
    pub root: PathBuf,
    /// Configuration file (default: <root>/etc/limiquantix/node.yaml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Which release to install instead of the channel's target (docs/spec.md §8, §12).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReleaseChoice {
    /// Install this release of the signed channel state's `releases` (a lower one also needs
    /// `--allow-downgrade VERSION`).
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,
    /// Install from a bundle (`qx-publish bundle`): a file, or an http(s) URL downloaded first.
    #[arg(long, value_name = "FILE|URL")]
    from: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch and verify the manifest; show installed -> offered per component. No host change.
    Check {
        /// Only these components.
        #[arg(long = "component", value_name = "NAME")]
        components: Vec<String>,
        /// Accept this lower version (must name the offered version exactly).
        #[arg(long, value_name = "VERSION")]
        allow_downgrade: Option<String>,
        #[command(flatten)]
        release: ReleaseChoice,
    },
    /// Download, verify and install the offered release as one transaction.
    Apply {
        /// Only these components (repeatable).
        #[arg(long = "component", value_name = "NAME")]
        components: Vec<String>,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Accept this lower version (must name the offered version exactly).
        #[arg(long, value_name = "VERSION")]
        allow_downgrade: Option<String>,
        #[command(flatten)]
        release: ReleaseChoice,
        /// Reboot after a full system image was written into the inactive slot (also done
        /// without this flag when `updates.auto_reboot` is true).
        #[arg(long)]
        reboot: bool,
    },
    /// State, installed versions and update history.
    Status,
    /// Undo the last apply from its backup (again: the one before), restart, verify.
    Rollback {
        /// Do not ask for confirmation (what is restored is printed all the same).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Also roll back a first install: removes every component it installed.
        #[arg(long)]
        force: bool,
    },
    /// Finish an interrupted apply from its journal (also done at the start of apply).
    Recover,
    /// Run the agent: periodic check, auto-apply in the maintenance window, HTTPS API + page.
    Daemon(crate::daemon::DaemonArgs),
    /// The configuration file: `check` validates it offline (keys, values, key files).
    Config {
        #[command(subcommand)]
        cmd: ConfigCommand,
    },
    /// A/B system slots: status, boot-time rollback check, health verification, marking.
    Ab {
        #[command(subcommand)]
        cmd: qx_boot::cli::AbCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Read and validate the configuration as every command does, without contacting any
    /// server: each problem with its line, a misspelt key with the nearest known one. Exit 0
    /// when valid, 3 when not.
    Check,
}

/// Parses the process arguments, runs, and returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                code::USAGE
            } else {
                code::SUCCESS
            };
        }
    };
    // The daemon is a service: what it does (its start, its checks) is logged; a command
    // says only what went wrong.
    let default_level = match cli.command {
        Command::Daemon(_) => "info",
        _ => "warn",
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .try_init();
    run(cli)
}

fn print_error(json: bool, e: &AgentError) -> i32 {
    let code = e.exit_code();
    if json {
        outln!(
            "{}",
            serde_json::json!({"error": e.explained(Surface::Cli), "exit_code": code})
        );
    } else {
        let text = e.explained(Surface::Cli);
        eprintln!("qx-update: {}", crate::untrusted::printable(&text));
    }
    code
}

fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => outln!("{s}"),
        Err(e) => eprintln!("qx-update: cannot serialise output: {e}"),
    }
}

fn load_config(config: Option<&Path>, root: &Path) -> Result<Config, AgentError> {
    Ok(Config::load_under(&config_path(config, root), root)?)
}

/// `--config`, or the default file under the root.
fn config_path(config: Option<&Path>, root: &Path) -> PathBuf {
    config.map(Path::to_owned).unwrap_or_else(|| {
        qx_core::fs::under_root(root, Path::new(crate::config::DEFAULT_CONFIG_PATH))
    })
}

/// `qx-update config check`.
fn config_check(config: Option<&Path>, root: &Path, json: bool) -> i32 {
    let path = config_path(config, root);
    match crate::config_check::check(&path, root) {
        Ok(summary) if json => {
            print_json(&serde_json::json!({"ok": true, "config": summary}));
            code::SUCCESS
        }
        Ok(s) => {
            outln!(
                "{}: valid: server {}, product {}, channel {}, trusted keys {}, updates {}, auto-apply {}",
                s.path,
                s.server_url,
                s.product,
                s.channel,
                s.trusted_keys.join(", "),
                if s.enabled { "on" } else { "off" },
                if s.auto_apply { "on" } else { "off" }
            );
            code::SUCCESS
        }
        Err(p) => {
            let at = p.line.map(|l| format!(":{l}")).unwrap_or_default();
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"ok": false, "error": p.message(&path), "line": p.line, "exit_code": code::CONFIG})
                );
            } else {
                let text = crate::untrusted::printable(&p.message(&path));
                eprintln!("qx-update: {}{at}: {text}", path.display());
            }
            code::CONFIG
        }
    }
}

pub fn load_agent(cli: &Cli) -> Result<Agent, AgentError> {
    Agent::new(
        load_config(cli.config.as_deref(), &cli.root)?,
        cli.root.clone(),
    )
}

/// `qx-update ab …`: only the configuration is needed (boot scripts run it before the rest of
/// the system is up).
fn run_ab(config: Option<&Path>, root: &Path, json: bool, cmd: &qx_boot::cli::AbCommand) -> i32 {
    let config = match load_config(config, root) {
        Ok(c) => c,
        Err(e) => {
            print_error(json, &e);
            return code::FAILURE;
        }
    };
    // The boot commands queue `confirmed` / `rolled_back` when the host reports to a fleet.
    let fleet = crate::fleet::Fleet::new(&config, &crate::HostPaths::new(root));
    let ctx =
        qx_boot::AbContext::new(&config.ab, root, &config.log_path).with_events(fleet.reporting());
    match qx_boot::cli::run(cmd, &ctx, json) {
        Ok(code) => code,
        Err(e) => {
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"error": e.to_string(), "exit_code": 1})
                );
            } else {
                eprintln!("qx-update ab: {e}");
            }
            code::FAILURE
        }
    }
}

pub fn run(mut cli: Cli) -> i32 {
    // Made absolute once, at start: paths below it are handed to commands run in other
    // directories (a migration's cwd), where a relative root would be resolved again.
    cli.root = match std::path::absolute(&cli.root) {
        Ok(root) => root,
        Err(e) => {
            eprintln!(
                "qx-update: --root {}: cannot make it absolute: {e}; pass an absolute path",
                cli.root.display()
            );
            return code::USAGE;
        }
    };
    if let Command::Ab { cmd } = &cli.command {
        return run_ab(cli.config.as_deref(), &cli.root, cli.json, cmd);
    }
    if let Command::Config {
        cmd: ConfigCommand::Check,
    } = &cli.command
    {
        return config_check(cli.config.as_deref(), &cli.root, cli.json);
    }
    let agent = match load_agent(&cli) {
        Ok(a) => a,
        Err(e) => return print_error(cli.json, &e),
    };
    let json = cli.json;
    match cli.command {
        Command::Check {
            components,
            allow_downgrade,
            release,
        } => check(
            &agent,
            json,
            &apply_options(components, allow_downgrade, release),
        ),
        Command::Apply {
            components,
            yes,
            allow_downgrade,
            release,
            reboot,
        } => apply(
            &agent,
            json,
            &apply_options(components, allow_downgrade, release),
            yes,
            reboot,
        ),
        Command::Status => {
            status(&agent, json);
            0
        }
        Command::Rollback { yes, force } => rollback(&agent, json, yes, force),
        Command::Daemon(args) => daemon(agent, &args),
        // Handled above, before the agent is built; kept for completeness.
        Command::Ab { cmd } => run_ab(cli.config.as_deref(), &cli.root, json, &cmd),
        Command::Config {
            cmd: ConfigCommand::Check,
        } => config_check(cli.config.as_deref(), &cli.root, json),
        Command::Recover => recover(&agent, json),
    }
}

fn apply_options(
    components: Vec<String>,
    allow_downgrade: Option<String>,
    release: ReleaseChoice,
) -> ApplyOptions {
    ApplyOptions {
        components: (!components.is_empty()).then_some(components),
        allow_downgrade,
        version: release.version,
        from: release.from,
        started_by: Some(cli_user()),
    }
}

/// Who runs this command: the user behind `sudo` when there is one, else the name of the
/// real user id (`/etc/passwd`), else `uid N`.
fn cli_user() -> qx_core::history::StartedBy {
    let sudo = std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty());
    let uid = rustix::process::getuid().as_raw();
    let user = sudo.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|text| user_name(&text, uid))
            .unwrap_or_else(|| format!("uid {uid}"))
    });
    qx_core::history::StartedBy {
        via: qx_core::history::Origin::Cli,
        user: Some(crate::untrusted::printable(&user)),
    }
}

/// The name of `uid` in the text of a passwd file.
fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let id = f.nth(1)?;
        (id.parse::<u32>().ok() == Some(uid)).then(|| name.to_owned())
    })
}

/// Asks a yes/no question on the terminal; only "y" or "yes" is a yes.
fn confirm(question: &str) -> bool {
    out!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}

/// `qx-update check`.
fn check(agent: &Agent, json: bool, opts: &ApplyOptions) -> i32 {
    match agent.check_with(opts) {
        Ok(r) if json => {
            print_json(&r);
            0
        }
        Ok(r) => {
            out!("{}", r.render());
            0
        }
        Err(e) => print_error(json, &e),
    }
}

/// `qx-update apply`: without `--yes`, show the check and ask first (on a terminal only).
fn apply(agent: &Agent, json: bool, opts: &ApplyOptions, yes: bool, reboot: bool) -> i32 {
    if !yes {
        if json || !std::io::stdin().is_terminal() {
            eprintln!("qx-update: apply needs --yes when not run interactively");
            return code::USAGE;
        }
        let report = match agent.check_with(opts) {
            Ok(r) => r,
            Err(e) => return print_error(json, &e),
        };
        out!("{}", report.render());
        if !report.available {
            return code::SUCCESS;
        }
        if !confirm(&format!("Apply {} now?", report.version)) {
            eprintln!("qx-update: not applied");
            return code::FAILURE;
        }
    }
    let progress = (!json).then(|| crate::progress::Progress::start(agent));
    let result = agent.apply_with_reboot(opts, reboot);
    if let Some(p) = progress {
        p.stop();
    }
    match result {
        Ok(r) if json => print_json(&r),
        Ok(r) if r.components.is_empty() && r.system.is_none() => {
            outln!("Already up to date ({}).", r.version);
        }
        Ok(r) => {
            outln!("Installed {}: {}", r.version, r.components.join(", "));
            for d in &r.deltas {
                outln!("  {}", d.summary());
            }
            if let Some(s) = &r.system {
                outln!("{}", s.summary());
            }
        }
        Err(e) => return print_error(json, &e),
    }
    code::SUCCESS
}

/// `qx-update status`.
fn status(agent: &Agent, json: bool) {
    let s = agent.status();
    if json {
        print_json(&s);
        return;
    }
    // This process is idle, but the host's disk may say otherwise.
    let state = match (&s.operation, s.state.is_busy()) {
        (Some(op), false) if op.state == OperationState::InProgress => "in progress",
        (Some(op), false) if op.state == OperationState::Interrupted => "interrupted",
        _ => s.state.name(),
    };
    outln!(
        "product {} on channel {}; state: {state}",
        s.product,
        s.channel
    );
    if let UpdateState::Failed { reason, .. } = &s.state {
        outln!("  {}", crate::untrusted::printable(reason));
    }
    if let Some(op) = &s.operation {
        print_operation(op);
    }
    outln!("installed:");
    if s.installed.is_empty() {
        outln!("  (nothing recorded)");
    }
    for (c, v) in &s.installed {
        outln!("  {c:<24} {v}");
    }
    if let Some(c) = &s.last_check {
        let what = c.error.as_deref().or(c.version.as_deref()).unwrap_or("");
        outln!(
            "last check: {} {} {}",
            c.time,
            c.result.as_str(),
            crate::untrusted::printable(what)
        );
    }
    outln!("history:");
    for h in s.history.iter().rev().take(10) {
        outln!(
            "  {} {} {} -> {} {}{}{}",
            h.time,
            h.kind,
            h.from_version.as_deref().unwrap_or("-"),
            h.version,
            h.outcome,
            h.started_by
                .as_ref()
                .map(|b| format!(" (started by {})", started_by(b)))
                .unwrap_or_default(),
            h.reason
                .as_deref()
                .map(|r| format!(": {}", crate::untrusted::printable(r)))
                .unwrap_or_default()
        );
    }
}

/// `cli (alice)`, `api`, `automatic`.
fn started_by(b: &qx_core::history::StartedBy) -> String {
    match &b.user {
        Some(user) => format!("{} ({})", b.via, crate::untrusted::printable(user)),
        None => b.via.to_string(),
    }
}

/// The operation in progress or interrupted, for `qx-update status`.
fn print_operation(op: &OperationStatus) {
    let id = op.operation_id.as_deref().unwrap_or("(no id yet)");
    let kind = match op.kind {
        Some(OpKind::Rollback) => "rollback",
        Some(OpKind::Apply) | None => "apply",
    };
    let target = match (&op.from_version, &op.version) {
        (Some(from), Some(to)) => format!(" {from} -> {to}"),
        (None, Some(to)) => format!(" of {to}"),
        _ => String::new(),
    };
    let phase = op.phase.map_or_else(
        || "checking or downloading (no journal yet)".to_string(),
        |p| format!("phase {}", phase_name(p)),
    );
    match op.state {
        OperationState::InProgress => {
            let pid = op
                .pid
                .map_or_else(|| "pid unknown".into(), |p| format!("pid {p}"));
            outln!("operation {id} in progress ({pid}): {kind}{target}, {phase}");
        }
        OperationState::Interrupted => {
            let what = match op.recovery {
                Some(RecoveryAction::RollForward) => "restart, verify and commit the new version",
                Some(RecoveryAction::FinishRollback) => "finish the rollback",
                Some(RecoveryAction::RollBack) | None => "roll back every file from the backup",
            };
            outln!("operation {id} interrupted: {kind}{target}, {phase}");
            outln!(
                "  recovery will {what}: run `qx-update recover` (the daemon and the next apply do it first)"
            );
        }
    }
    for c in &op.components {
        outln!(
            "  {} {} -> {}",
            c.name,
            c.previous_version.as_deref().unwrap_or("(none)"),
            c.version
        );
    }
}

/// A journal phase as `--json` writes it.
fn phase_name(p: Phase) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{p:?}"))
}

/// `qx-update rollback`: shows what is restored (and removed); without `--yes`, asks first
/// (on a terminal only). A first install is refused without `--force`.
fn rollback(agent: &Agent, json: bool, yes: bool, force: bool) -> i32 {
    if !yes && (json || !std::io::stdin().is_terminal()) {
        eprintln!("qx-update: rollback needs --yes when not run interactively");
        return code::USAGE;
    }
    let plan = match agent.rollback_plan() {
        Ok(p) => p,
        Err(e) => return print_error(json, &e),
    };
    if !json {
        out!("{}", plan.render());
    }
    let opts = crate::RollbackOptions {
        force,
        started_by: Some(cli_user()),
    };
    // A refused first install is not asked about: the rollback below names the refusal.
    let refused = plan.first_install && !force;
    if !yes && !refused && !confirm("Roll back now?") {
        eprintln!("qx-update: not rolled back");
        return code::FAILURE;
    }
    match agent.rollback_with(&opts) {
        Ok(r) if json => print_json(&r),
        Ok(r) => outln!("Rolled back to {}: {}", r.version, r.components.join(", ")),
        Err(e) => return print_error(json, &e),
    }
    code::SUCCESS
}

/// `qx-update daemon`: the async runtime, then the daemon until it stops.
fn daemon(agent: Agent, args: &crate::daemon::DaemonArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qx-update: cannot start the async runtime: {e}");
            return code::FAILURE;
        }
    };
    match rt.block_on(crate::daemon::run(agent, args)) {
        Ok(()) => code::SUCCESS,
        Err(e) => {
            eprintln!("qx-update daemon: {e:#}");
            code::FAILURE
        }
    }
}

/// `qx-update recover`.
fn recover(agent: &Agent, json: bool) -> i32 {
    match agent.recover() {
        Ok(r) if json => print_json(&r),
        Ok(None) => outln!("Nothing to recover."),
        Ok(Some(r)) => outln!(
            "Operation {} ({}) was interrupted in phase {:?}: {}{}",
            r.operation_id,
            r.version,
            r.phase,
            r.action,
            r.reason.map(|x| format!(" ({x})")).unwrap_or_default()
        ),
        Err(e) => return print_error(json, &e),
    }
    code::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_name_is_read_from_passwd_by_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n# no\nalice:x:1000:1000::/home/alice:/bin/sh\nbad-line\n";
        assert_eq!(user_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(user_name(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(user_name(passwd, 7), None);
    }
}
