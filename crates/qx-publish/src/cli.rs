//! The `qx-publish` command line: argument parsing and one library call per command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qx_core::{ChannelName, TrustedKeys, Version};

use crate::build::{self, BuildOptions};
use crate::error::{Error, Result};
use crate::promote::{self, PromoteRequest};
use crate::publish::{self, PublishOptions};
use crate::upload::{Client, Outcome, Token};
use crate::verify::{self, ReleaseUrl};
use crate::{keygen, pack};

const EXIT_CODES: &str = "Exit codes: 0 success, 1 failure (a refused lint, a failed build, upload or verification), 2 usage error (bad arguments, missing token).";

/// Builds, signs, uploads and promotes Quantix OTA releases.
#[derive(Debug, Parser)]
#[command(name = "qx-publish", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Print the result as JSON on stdout (build, publish, verify).
    #[arg(long, global = true)]
    json: bool,
    /// Trust this CA certificate (PEM) for an https:// server with a self-signed or private
    /// certificate.
    #[arg(long, global = true, value_name = "FILE", env = "QX_PUBLISH_CA_CERT")]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// The release spec (TOML).
    #[arg(long, value_name = "FILE")]
    spec: PathBuf,
    /// The minisign secret key that signs the manifest (mode 0600).
    #[arg(long, value_name = "KEYFILE")]
    key: PathBuf,
    /// Release only this component (repeatable); the manifest lists only these.
    #[arg(long = "component", value_name = "NAME")]
    components: Vec<String>,
    /// Channel of the release (default: the spec's `channel`, else dev).
    #[arg(long, value_name = "C")]
    channel: Option<ChannelName>,
    /// Override the spec's version (stamped into every component).
    #[arg(long, value_name = "VERSION")]
    release_version: Option<Version>,
    /// Override the spec's release notes.
    #[arg(long, value_name = "TEXT")]
    notes: Option<String>,
    /// zstd compression level (1-22).
    #[arg(long, default_value_t = pack::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    level: i32,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a minisign key pair: NAME.key (mode 0600) and NAME.pub.
    Keygen(KeygenArgs),
    /// Build a signed release directory from a spec (nothing is uploaded).
    #[command(after_help = EXIT_CODES)]
    Build(BuildCommand),
    /// Build, lint, verify and upload a release.
    #[command(
        after_help = "The token comes from QX_PUBLISH_TOKEN or --token-file and is never printed.\n\nExit codes: 0 success, 1 failure, 2 usage error."
    )]
    Publish(PublishArgs),
    /// Move a published release to another channel (re-signed; artifacts are not re-uploaded).
    #[command(after_help = EXIT_CODES)]
    Promote(PromoteArgs),
    /// Check a built release directory or a published release URL end to end.
    #[command(
        after_help = "TARGET is a directory or a URL such as http://HOST:9000/api/v1/PRODUCT/releases/VERSION?channel=dev (or .../api/v1/PRODUCT/manifest?channel=dev for the newest).\n\nExit codes: 0 everything checks out, 1 a problem was found (all are listed), 2 usage error."
    )]
    Verify(VerifyArgs),
    /// Withdraw a release from a channel (the channel falls back to the previous release).
    #[command(after_help = EXIT_CODES)]
    Yank(YankArgs),
}

// The arguments of each command.

#[derive(Debug, clap::Args)]
struct KeygenArgs {
    /// Directory for the key files.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Base name of the key files.
    #[arg(long, default_value = "qx-publish")]
    name: String,
    /// Overwrite existing key files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
struct BuildCommand {
    #[command(flatten)]
    args: BuildArgs,
    /// Output directory (created; must be empty).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct PublishArgs {
    #[command(flatten)]
    args: BuildArgs,
    /// Update server, e.g. http://127.0.0.1:9000 (optional with --dry-run).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Keep the built release here (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Build, lint and verify, but upload nothing.
    #[arg(long)]
    dry_run: bool,
    /// Refuse a version that is not greater than the channel's (default: warn).
    #[arg(long)]
    strict: bool,
    /// Read the publish token from this file instead of QX_PUBLISH_TOKEN.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Retries after a connection error.
    #[arg(long, default_value_t = 3)]
    retries: u32,
}

#[derive(Debug, clap::Args)]
struct PromoteArgs {
    #[arg(long, value_name = "URL")]
    server: String,
    /// The secret key that re-signs the manifest.
    #[arg(long, value_name = "KEYFILE")]
    key: PathBuf,
    /// Public key that must have signed the release (default: the key's own).
    #[arg(long, value_name = "FILE")]
    pubkey: Option<PathBuf>,
    #[arg(long, value_name = "P")]
    product: String,
    #[arg(long, value_name = "C")]
    from: ChannelName,
    #[arg(long, value_name = "C")]
    to: ChannelName,
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    retries: u32,
    version: Version,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    target: String,
    /// The public key the manifest must be signed with.
    #[arg(long, value_name = "FILE")]
    pubkey: Option<PathBuf>,
    /// Or: derive the public key from this secret key.
    #[arg(long, value_name = "KEYFILE", conflicts_with = "pubkey")]
    key: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    retries: u32,
}

#[derive(Debug, clap::Args)]
struct YankArgs {
    #[arg(long, value_name = "URL")]
    server: String,
    #[arg(long, value_name = "P")]
    product: String,
    #[arg(long, value_name = "C")]
    channel: ChannelName,
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    retries: u32,
    version: Version,
}

/// The options every command shares.
struct Global {
    json: bool,
    ca_cert: Option<PathBuf>,
}

impl Global {
    /// A client for `server` with the shared `--ca-cert`.
    fn client(&self, server: &str, token: Option<Token>, retries: u32) -> Result<Client> {
        let c = Client::new(server, token, retries)?;
        match &self.ca_cert {
            Some(path) => c.with_ca_cert(path),
            None => Ok(c),
        }
    }
}

impl BuildArgs {
    fn options(self, out: PathBuf) -> BuildOptions {
        BuildOptions {
            spec: self.spec,
            key: self.key,
            out,
            components: self.components,
            channel: self.channel,
            version: self.release_version,
            notes: self.notes,
            level: self.level,
        }
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A release as JSON: what was built (and where), with its artifacts and lint warnings.
fn release_json(
    m: &qx_core::Manifest,
    dir: Option<&std::path::Path>,
    outcome: Option<&str>,
    warnings: &[crate::lint::Finding],
) -> serde_json::Value {
    serde_json::json!({
        "product": m.product.as_str(),
        "version": m.version.to_string(),
        "channel": m.channel.as_str(),
        "update_type": m.update_type,
        "expires": m.expires.to_string(),
        "dir": dir.map(|d| d.display().to_string()),
        "outcome": outcome,
        "artifacts": m.artifacts().iter().map(|a| serde_json::json!({
            "artifact": a.artifact.as_str(),
            "sha256": a.sha256.to_hex(),
            "size_bytes": a.size_bytes,
        })).collect::<Vec<_>>(),
        "warnings": warnings.iter().map(|w| serde_json::json!({
            "lint": w.lint,
            "message": w.message,
        })).collect::<Vec<_>>(),
    })
}

fn note(line: &str) {
    eprintln!("{line}");
}

fn trusted_from(pubkey: Option<&PathBuf>, key: Option<&PathBuf>) -> Result<Option<TrustedKeys>> {
    let mut keys = TrustedKeys::new();
    if let Some(p) = pubkey {
        keys.add_file(p)?;
    } else if let Some(k) = key {
        keys.add(&build::load_key(k)?.public_key_file()?)?;
    } else {
        return Ok(None);
    }
    Ok(Some(keys))
}

fn run_command(cli: Cli) -> Result<()> {
    let global = Global {
        json: cli.json,
        ca_cert: cli.ca_cert,
    };
    match cli.command {
        Command::Keygen(a) => keygen_command(a),
        Command::Build(a) => build_command(a, &global),
        Command::Publish(a) => publish_command(a, &global),
        Command::Promote(a) => promote_command(a, &global),
        Command::Verify(a) => verify_command(a, &global),
        Command::Yank(a) => yank_command(a, &global),
    }
}

fn keygen_command(a: KeygenArgs) -> Result<()> {
    let k = keygen::keygen(&a.out, &a.name, a.force)?;
    println!("public key: {}", k.public_key_line);
    println!("key id: {}", k.key_id);
    println!(
        "secret key file: {} (mode 0600; keep it secret)",
        k.secret_key.display()
    );
    println!("public key file: {}", k.public_key.display());
    Ok(())
}

fn build_command(a: BuildCommand, global: &Global) -> Result<()> {
    let opts = a.args.options(a.out);
    let r = build::build(&opts, &mut |l| note(l))?;
    if global.json {
        print_json(&release_json(&r.manifest, Some(&r.dir), None, &r.warnings));
    } else {
        println!(
            "built {} {} for channel {} in {} ({} artifact(s))",
            r.manifest.product,
            r.manifest.version,
            r.manifest.channel,
            r.dir.display(),
            r.manifest.artifacts().len()
        );
    }
    Ok(())
}

fn publish_command(a: PublishArgs, global: &Global) -> Result<()> {
    let client = match &a.server {
        Some(s) => {
            let token = Token::from_file_or_env(a.token_file.as_deref());
            // A dry run only reads from the server: the token is optional.
            let token = if a.dry_run { token.ok() } else { Some(token?) };
            Some(global.client(s, token, a.retries)?)
        }
        None => None,
    };
    let opts = PublishOptions {
        build: a.args.options(a.out.unwrap_or_else(publish::no_out_dir)),
        strict: a.strict,
        dry_run: a.dry_run,
    };
    let p = publish::publish(&opts, client.as_ref(), &mut |l| note(l))?;
    let m = &p.release.manifest;
    if global.json {
        let outcome = match p.outcome {
            None => "dry-run",
            Some(Outcome::Created) => "created",
            Some(Outcome::AlreadyThere) => "unchanged",
        };
        let dir = (!opts.build.out.as_os_str().is_empty()).then_some(p.release.dir.as_path());
        print_json(&release_json(m, dir, Some(outcome), &p.warnings));
        return Ok(());
    }
    match p.outcome {
        None => println!(
            "dry run: {} {} for channel {} built and verified ({} artifact(s)); nothing was uploaded",
            m.product,
            m.version,
            m.channel,
            m.artifacts().len()
        ),
        Some(Outcome::Created) => println!(
            "published {} {} to channel {} on {}",
            m.product,
            m.version,
            m.channel,
            a.server.unwrap_or_default()
        ),
        Some(Outcome::AlreadyThere) => println!(
            "{} {} was already published to channel {} with identical content; nothing changed",
            m.product, m.version, m.channel
        ),
    }
    Ok(())
}

fn promote_command(a: PromoteArgs, global: &Global) -> Result<()> {
    let token = Token::from_file_or_env(a.token_file.as_deref())?;
    let client = global.client(&a.server, Some(token), a.retries)?;
    let signing = build::load_key(&a.key)?;
    let trusted = match trusted_from(a.pubkey.as_ref(), None)? {
        Some(t) => t,
        None => {
            let mut t = TrustedKeys::new();
            t.add(&signing.public_key_file()?)?;
            t
        }
    };
    let req = PromoteRequest {
        product: a.product,
        version: a.version.to_string(),
        from: a.from,
        to: a.to,
    };
    let p = promote::promote(&client, &signing, &trusted, &req)?;
    let verb = match p.outcome {
        Outcome::Created => "promoted",
        Outcome::AlreadyThere => "already promoted (identical):",
    };
    println!(
        "{verb} {} {} from {} to {} (re-signed by key {}, expires {})",
        req.product, req.version, req.from, req.to, p.key_id, p.manifest.expires
    );
    Ok(())
}

fn verify_command(a: VerifyArgs, global: &Global) -> Result<()> {
    let keys = trusted_from(a.pubkey.as_ref(), a.key.as_ref())?;
    let target = a.target;
    let result = if target.starts_with("http://") || target.starts_with("https://") {
        let url = ReleaseUrl::parse(&target)?;
        let client = global.client(&url.server, None, a.retries)?;
        verify::verify_url(&client, &url, keys.as_ref())
    } else {
        verify::verify_dir(std::path::Path::new(&target), keys.as_ref())
    };
    if global.json {
        print_verify_json(&target, &result);
    }
    let report = result?;
    if !global.json {
        for line in &report.checked {
            println!("ok  {line}");
        }
        println!(
            "verified {} {} (channel {}): no problems",
            report.manifest.product, report.manifest.version, report.manifest.channel
        );
    }
    Ok(())
}

/// The result of `verify --json`: the report, or the problems found (nothing for another
/// error, which is printed on stderr).
fn print_verify_json(target: &str, result: &Result<verify::Report>) {
    match result {
        Ok(r) => print_json(&serde_json::json!({
            "ok": true,
            "target": target,
            "product": r.manifest.product.as_str(),
            "version": r.manifest.version.to_string(),
            "channel": r.manifest.channel.as_str(),
            "key_id": r.key_id,
            "checked": r.checked,
        })),
        Err(Error::Verify { problems, .. }) => print_json(&serde_json::json!({
            "ok": false,
            "target": target,
            "problems": problems,
        })),
        Err(_) => {}
    }
}

fn yank_command(a: YankArgs, global: &Global) -> Result<()> {
    let token = Token::from_file_or_env(a.token_file.as_deref())?;
    let client = global.client(&a.server, Some(token), a.retries)?;
    client.yank(&a.product, &a.version.to_string(), a.channel.as_str())?;
    println!(
        "yanked {} {} from channel {}",
        a.product, a.version, a.channel
    );
    Ok(())
}

/// Parses the arguments, runs the command, prints any error; returns the exit code.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = e.exit_code();
            let _ = e.print();
            return ExitCode::from(code.clamp(0, 255) as u8);
        }
    };
    match run_command(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if e.is_usage() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn missing_token_is_a_usage_error() {
        let e = Error::Usage("x".into());
        assert!(e.is_usage());
    }
}
