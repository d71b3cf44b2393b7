//! The `qx-publish` command line: argument parsing and one library call per command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qx_core::{ChannelName, ProductName, RevokeAction, TrustedKeys, Version};

use crate::build::{self, BuildOptions};
use crate::bundle::{self, BundleRequest};
use crate::channel::{self, Committed, Signer, StateOutcome, Update};
use crate::error::{Error, Result};
use crate::promote::{self, PromoteRequest};
use crate::publish::{self, PublishOptions};
use crate::upload::{Client, Outcome, Token};
use crate::verify::{self, ReleaseUrl};
use crate::{keygen, pack};

mod rollout;

const EXIT_CODES: &str = "Exit codes: 0 success, 1 failure (a refused lint, a failed build, upload or verification), 2 usage error (bad arguments, missing token).";

/// Builds, signs, uploads and promotes Quantix OTA releases.
#[derive(Debug, Parser)]
#[command(name = "qx-publish", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Print the result as JSON on stdout (every verb; an error too: `{"error": …}`).
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
    /// Channel of the release (default: the spec's `channel`, else stable).
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
    /// Withdraw a release from a channel and sign the channel's new state (revoked with
    /// `keep`, or `revert` with --revert; current falls back to the highest remaining release).
    #[command(after_help = EXIT_CODES)]
    Yank(YankArgs),
    /// Re-sign the channel state with seq + 1 and a new expiry, content unchanged (run it
    /// before the state expires).
    #[command(after_help = EXIT_CODES)]
    Refresh(RefreshArgs),
    /// Write one file holding a release for an offline host: the signed channel state, the
    /// signed manifest and every artifact, all verified while downloading.
    #[command(after_help = EXIT_CODES)]
    Bundle(BundleArgs),
    /// Staged rollouts (docs/spec.md §10): sign a rollout's plan into the channel state.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
}

/// The options of every verb that signs a new channel state.
#[derive(Debug, clap::Args)]
struct StateArgs {
    /// How long the new channel state is valid (e.g. 30d, 12h, 2weeks).
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = humantime::parse_duration)]
    lifetime: std::time::Duration,
    /// Also trust this public key for the channel's current state and the manifests it lists
    /// (repeatable; the signing key's own is always trusted): for a key rotation.
    #[arg(long = "trusted-key", value_name = "FILE")]
    trusted_keys: Vec<PathBuf>,
}

impl StateArgs {
    fn lifetime(&self) -> Result<jiff::SignedDuration> {
        let d = jiff::SignedDuration::try_from(self.lifetime)
            .map_err(|e| Error::Usage(format!("--lifetime: {e}")))?;
        if d.is_zero() {
            return Err(Error::Usage("--lifetime must be longer than 0".into()));
        }
        Ok(d)
    }

    fn signer(&self, key: &std::path::Path, extra: &[PathBuf]) -> Result<Signer> {
        let keys = [self.trusted_keys.as_slice(), extra].concat();
        Signer::new(build::load_key(key)?, &keys)
    }
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
    /// List the release in the channel state without making it current (installable on
    /// purpose with `qx-update apply --version`).
    #[arg(long)]
    no_current: bool,
    /// Start a staged rollout of the release in these waves, in the same signed state (e.g.
    /// 1%:1h,10%:4h,50%:12h,100%; the release is listed, not made current).
    #[arg(long, value_name = "WAVES")]
    waves: Option<String>,
    /// Make deltas from the channel's N newest releases (0: none); a delta is kept when it is
    /// at most 75% of the full artifact.
    #[arg(long, value_name = "N", default_value_t = qx_publish_deltas_default())]
    deltas: usize,
    #[command(flatten)]
    policy: rollout::PolicyArgs,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Debug, clap::Args)]
struct PromoteArgs {
    /// The update server, e.g. https://updates.example:9000 (with its base path, if any).
    #[arg(long, value_name = "URL")]
    server: String,
    /// The secret key that re-signs the manifest.
    #[arg(long, value_name = "KEYFILE")]
    key: PathBuf,
    /// Public key that must have signed the release (default: the key's own).
    #[arg(long, value_name = "FILE")]
    pubkey: Option<PathBuf>,
    /// The product the release belongs to.
    #[arg(long, value_name = "P")]
    product: String,
    /// The channel the release is published on now.
    #[arg(long, value_name = "C")]
    from: ChannelName,
    /// The channel it is promoted to (its channel state is signed anew).
    #[arg(long, value_name = "C")]
    to: ChannelName,
    /// Read the publish token from this file instead of QX_PUBLISH_TOKEN.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Retries after a connection error or a server error (5xx).
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// List the release in the target channel's state without making it current.
    #[arg(long)]
    no_current: bool,
    #[command(flatten)]
    state: StateArgs,
    /// The version to promote.
    version: Version,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// A built release directory, or a published release's URL (see below).
    target: String,
    /// The public key the manifest must be signed with.
    #[arg(long, value_name = "FILE")]
    pubkey: Option<PathBuf>,
    /// Or: derive the public key from this secret key.
    #[arg(long, value_name = "KEYFILE", conflicts_with = "pubkey")]
    key: Option<PathBuf>,
    /// Retries after a connection error or a server error (5xx).
    #[arg(long, default_value_t = 3)]
    retries: u32,
}

/// The server, product and channel a verb is about, and the token it sends.
#[derive(Debug, clap::Args)]
struct ChannelTarget {
    /// The update server, e.g. https://updates.example:9000 (with its base path, if any).
    #[arg(long, value_name = "URL")]
    server: String,
    /// The product.
    #[arg(long, value_name = "P")]
    product: ProductName,
    /// The channel.
    #[arg(long, value_name = "C")]
    channel: ChannelName,
    /// Read the token from this file instead of QX_PUBLISH_TOKEN.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Retries after a connection error or a server error (5xx).
    #[arg(long, default_value_t = 3)]
    retries: u32,
}

impl ChannelTarget {
    fn client(&self, global: &Global) -> Result<Client> {
        let token = Token::from_file_or_env(self.token_file.as_deref())?;
        global.client(&self.server, Some(token), self.retries)
    }
}

/// The channel, key and state options of a verb that signs the channel's new state.
#[derive(Debug, clap::Args)]
struct ChannelArgs {
    #[command(flatten)]
    at: ChannelTarget,
    /// The secret key that signs the channel's new state.
    #[arg(long, value_name = "KEYFILE")]
    key: PathBuf,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Debug, clap::Args)]
struct YankArgs {
    #[command(flatten)]
    channel: ChannelArgs,
    /// Hosts running the version go back to current (default: they keep it until a newer
    /// current comes).
    #[arg(long)]
    revert: bool,
    /// The version to withdraw.
    version: Version,
}

#[derive(Debug, clap::Args)]
struct RefreshArgs {
    #[command(flatten)]
    channel: ChannelArgs,
}

#[derive(Debug, clap::Args)]
struct BundleArgs {
    /// The update server, e.g. https://updates.example:9000 (with its base path, if any).
    #[arg(long, value_name = "URL")]
    server: String,
    /// The product.
    #[arg(long, value_name = "P")]
    product: ProductName,
    /// The channel whose signed state goes into the bundle.
    #[arg(long, value_name = "C", default_value = qx_core::api::DEFAULT_CHANNEL)]
    channel: ChannelName,
    /// The bundle file to write (replaced atomically).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Trust the public key of this secret key.
    #[arg(long, value_name = "KEYFILE")]
    key: Option<PathBuf>,
    /// Trust this public key (repeatable).
    #[arg(long = "trusted-key", value_name = "FILE")]
    trusted_keys: Vec<PathBuf>,
    /// Retries after a connection error or a server error (5xx).
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// The version to bundle.
    version: Version,
}

impl ChannelArgs {
    fn client(&self, global: &Global) -> Result<Client> {
        self.at.client(global)
    }
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
            carried: Vec::new(),
            delta_bases: Vec::new(),
            image_bases: Vec::new(),
        }
    }
}

const fn qx_publish_deltas_default() -> usize {
    crate::deltas::DEFAULT_FROM_LAST
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
        Command::Keygen(a) => keygen_command(a, &global),
        Command::Build(a) => build_command(a, &global),
        Command::Publish(a) => publish_command(a, &global),
        Command::Promote(a) => promote_command(a, &global),
        Command::Verify(a) => verify_command(a, &global),
        Command::Yank(a) => yank_command(a, &global),
        Command::Refresh(a) => refresh_command(a, &global),
        Command::Bundle(a) => bundle_command(a, &global),
        Command::Rollout(c) => rollout::run(c, &global),
    }
}

fn keygen_command(a: KeygenArgs, global: &Global) -> Result<()> {
    let k = keygen::keygen(&a.out, &a.name, a.force)?;
    if global.json {
        print_json(&serde_json::json!({
            "public_key": k.public_key_line,
            "key_id": k.key_id.to_string(),
            "secret_key_file": k.secret_key.display().to_string(),
            "public_key_file": k.public_key.display().to_string(),
        }));
        return Ok(());
    }
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
        make_current: !a.no_current,
        lifetime: a.state.lifetime()?,
        trusted_keys: a.state.trusted_keys,
        waves: a
            .waves
            .as_deref()
            .map(qx_core::rollout::parse_waves)
            .transpose()
            .map_err(|e| Error::Usage(e.to_string()))?,
        policy: a.policy.policy(a.waves.is_some())?,
        deltas: a.deltas,
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
        let mut v = release_json(m, dir, Some(outcome), &p.warnings);
        v["carried"] = serde_json::json!(p.release.carried);
        v["carried_from"] = serde_json::json!(p.carried_from.as_ref().map(|v| v.to_string()));
        v["channel_state"] = p.state.as_ref().map_or(serde_json::Value::Null, state_json);
        print_json(&v);
        return Ok(());
    }
    if let Some(from) = &p.carried_from {
        println!(
            "carried {} artifact(s) over from {from} (not uploaded)",
            p.release.carried.len()
        );
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
            "{} {} was already published to channel {} with identical content",
            m.product, m.version, m.channel
        ),
    }
    if let Some(c) = &p.state {
        print_state(c);
    }
    Ok(())
}

/// A channel state after a verb, as JSON.
fn state_json(c: &Committed) -> serde_json::Value {
    let s = &c.state;
    serde_json::json!({
        "product": s.product.as_str(),
        "channel": s.channel.as_str(),
        "seq": s.seq,
        "previous_seq": c.previous_seq,
        "outcome": match c.outcome {
            StateOutcome::Stored => "stored",
            StateOutcome::Unchanged => "unchanged",
        },
        "current": s.current.to_string(),
        "issued": s.issued.to_string(),
        "expires": s.expires.to_string(),
        "releases": s.releases.iter().map(|r| serde_json::json!({
            "version": r.version.to_string(),
            "manifest_sha256": r.manifest_sha256.to_hex(),
        })).collect::<Vec<_>>(),
        "revoked": s.revoked.iter().map(|r| serde_json::json!({
            "version": r.version.to_string(),
            "action": match r.action {
                RevokeAction::Keep => "keep",
                RevokeAction::Revert => "revert",
            },
        })).collect::<Vec<_>>(),
        "rollout": s.rollout,
        "key_id": c.key_id,
    })
}

/// A channel state after a verb, in one line.
fn print_state(c: &Committed) {
    let s = &c.state;
    match c.outcome {
        StateOutcome::Stored => println!(
            "channel state of {} {}: seq {}, current {}, {} release(s), {} revoked, expires {} (signed by key {})",
            s.product,
            s.channel,
            s.seq,
            s.current,
            s.releases.len(),
            s.revoked.len(),
            s.expires,
            c.key_id
        ),
        StateOutcome::Unchanged => println!(
            "channel state of {} {}: seq {} already says so (current {}); nothing to sign",
            s.product, s.channel, s.seq, s.current
        ),
    }
}

fn promote_command(a: PromoteArgs, global: &Global) -> Result<()> {
    let token = Token::from_file_or_env(a.token_file.as_deref())?;
    let client = global.client(&a.server, Some(token), a.retries)?;
    // The release must be signed by --pubkey when given, else by the key's own.
    let extra: Vec<PathBuf> = a.pubkey.iter().cloned().collect();
    let signer = a.state.signer(&a.key, &extra)?;
    let req = PromoteRequest {
        product: a.product,
        version: a.version.to_string(),
        from: a.from,
        to: a.to,
    };
    let lifetime = a.state.lifetime()?;
    let (p, committed) =
        promote::promote_and_sign(&client, &signer, &req, !a.no_current, lifetime)?;
    let outcome = match p.outcome {
        Outcome::Created => "promoted",
        Outcome::AlreadyThere => "unchanged",
    };
    if global.json {
        print_json(&serde_json::json!({
            "product": req.product,
            "version": req.version,
            "from": req.from.as_str(),
            "to": req.to.as_str(),
            "outcome": outcome,
            "expires": p.manifest.expires.to_string(),
            "key_id": p.key_id,
            "channel_state": state_json(&committed),
        }));
        return Ok(());
    }
    let verb = match p.outcome {
        Outcome::Created => "promoted",
        Outcome::AlreadyThere => "already promoted (identical):",
    };
    println!(
        "{verb} {} {} from {} to {} (re-signed by key {}, expires {})",
        req.product, req.version, req.from, req.to, p.key_id, p.manifest.expires
    );
    print_state(&committed);
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

impl ChannelArgs {
    fn update<'a>(&self, client: &'a Client, signer: &'a Signer) -> Result<Update<'a>> {
        Ok(Update {
            client,
            signer,
            product: self.at.product.clone(),
            channel: self.at.channel.clone(),
            lifetime: self.state.lifetime()?,
            conflict_retries: channel::CONFLICT_RETRIES,
        })
    }
}

fn yank_command(a: YankArgs, global: &Global) -> Result<()> {
    let c = &a.channel;
    let client = c.client(global)?;
    let signer = c.state.signer(&c.key, &[])?;
    let action = if a.revert {
        RevokeAction::Revert
    } else {
        RevokeAction::Keep
    };
    let committed = channel::yank(&c.update(&client, &signer)?, &a.version, action)?;
    let action = if a.revert { "revert" } else { "keep" };
    if global.json {
        print_json(&serde_json::json!({
            "product": c.at.product.as_str(),
            "channel": c.at.channel.as_str(),
            "version": a.version.to_string(),
            "action": action,
            "outcome": "yanked",
            "channel_state": state_json(&committed),
        }));
        return Ok(());
    }
    println!(
        "yanked {} {} from channel {} (revoked: {action})",
        c.at.product, a.version, c.at.channel
    );
    print_state(&committed);
    Ok(())
}

fn refresh_command(a: RefreshArgs, global: &Global) -> Result<()> {
    let c = &a.channel;
    let client = c.client(global)?;
    let signer = c.state.signer(&c.key, &[])?;
    let committed = channel::refresh(&c.update(&client, &signer)?)?;
    if global.json {
        print_json(&serde_json::json!({
            "product": c.at.product.as_str(),
            "channel": c.at.channel.as_str(),
            "outcome": "refreshed",
            "channel_state": state_json(&committed),
        }));
        return Ok(());
    }
    println!(
        "refreshed the channel state of {} {}",
        c.at.product, c.at.channel
    );
    print_state(&committed);
    Ok(())
}

fn bundle_command(a: BundleArgs, global: &Global) -> Result<()> {
    let mut trusted = TrustedKeys::new();
    if let Some(k) = &a.key {
        trusted.add(&build::load_key(k)?.public_key_file()?)?;
    }
    for f in &a.trusted_keys {
        trusted.add_file(f)?;
    }
    if trusted.is_empty() {
        return Err(Error::Usage(
            "bundle needs a trusted key: --key KEYFILE or --trusted-key FILE".into(),
        ));
    }
    let client = global.client(&a.server, None, a.retries)?;
    let req = BundleRequest {
        product: a.product.to_string(),
        channel: a.channel.to_string(),
        version: a.version,
        out: a.out,
    };
    let b = bundle::bundle(&client, &trusted, &req, &mut |l| note(l))?;
    if global.json {
        print_json(&serde_json::json!({
            "product": req.product,
            "channel": req.channel,
            "version": req.version.to_string(),
            "out": b.out.display().to_string(),
            "size_bytes": b.size_bytes,
            "seq": b.state.seq,
            "current": b.state.current.to_string(),
            "expires": b.state.expires.to_string(),
            "artifacts": b.manifest.artifacts().iter().map(|x| serde_json::json!({
                "artifact": x.artifact.as_str(),
                "sha256": x.sha256.to_hex(),
                "size_bytes": x.size_bytes,
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    println!(
        "bundled {} {} from channel {} (state seq {}, {} artifact(s)) into {} ({} bytes)",
        req.product,
        req.version,
        req.channel,
        b.state.seq,
        b.manifest.artifacts().len(),
        b.out.display(),
        b.size_bytes
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
    let json = cli.json;
    match run_command(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code: u8 = if e.is_usage() { 2 } else { 1 };
            eprintln!("error: {e}");
            // `verify --json` has printed its report of the problems already.
            if json && !matches!(e, Error::Verify { .. }) {
                print_json(&serde_json::json!({"error": e.to_string(), "exit_code": code}));
            }
            ExitCode::from(code)
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

    /// Every argument of every verb, below every subcommand, says what it is for.
    #[test]
    fn every_argument_of_every_verb_is_described() {
        let mut missing = Vec::new();
        let mut stack = vec![(String::from("qx-publish"), Cli::command())];
        while let Some((path, cmd)) = stack.pop() {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                stack.push((format!("{path} {}", sub.get_name()), sub.clone()));
            }
        }
        assert!(missing.is_empty(), "undescribed: {missing:?}");
    }
}
