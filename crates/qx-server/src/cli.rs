//! The command line: `qx-update-server` (serve), `token create|list|revoke` and
//! `enrollment-token create|revoke`. The token commands open the fleet store directly from
//! the server's settings (`DATABASE_URL`, `FLEET_DB`, `RELEASE_DIR`), so they work while the
//! server runs or before its first start.

use std::process::ExitCode;
use std::sync::Arc;

use crate::fleet::admin;
use crate::fleet::clock::{Clock, SystemClock};
use crate::fleet::store::FleetStore;
use crate::Config;
use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use qx_core::fleet::{EnrollmentTokenRequest, Labels, OperatorTokenRequest};

const AFTER_HELP: &str = "\
Settings come from the environment (RELEASE_DIR, LISTEN_ADDR, PUBLISH_TOKEN, DATABASE_URL, \
FLEET_DB, CHECKIN_INTERVAL, …; see the README).

Exit codes: 0 success; 1 failure; 2 usage error or bad configuration.";

#[derive(Parser)]
#[command(name = "qx-update-server", version, about = "The Quantix update server", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (what runs without a subcommand).
    Serve,
    /// Ask the server running with these settings whether it is healthy: `GET /health` on
    /// the loopback address of LISTEN_ADDR (https when TLS_CERT is set; the certificate is
    /// not checked, it is this host's own server). Exit 0 on 200, else 1. The container
    /// image's health check.
    Health,
    /// Operator tokens: scoped bearer tokens for the fleet and release API.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Enrollment tokens: what a host presents once to enroll.
    #[command(subcommand)]
    EnrollmentToken(EnrollmentCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it once (stdout); only its hash is stored.
    Create {
        /// read, publish, rollout or admin (admin includes every other); repeatable.
        #[arg(long, required = true)]
        scope: Vec<String>,
        /// A unique name (lowercase letters, digits, '.', '_', '-').
        #[arg(long)]
        name: String,
    },
    /// List the tokens (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke the active token with this name.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum EnrollmentCommand {
    /// Create an enrollment token and print it once (stdout).
    Create {
        /// The product the hosts run.
        #[arg(long)]
        product: String,
        /// A label the enrolled hosts start with (`key=value`); repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// How long it stays valid (`24h`, `7d`).
        #[arg(long, default_value = "24h")]
        expires_in: String,
        /// How many hosts may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
    },
    /// Revoke an enrollment token by its id (hosts enrolled with it stay).
    Revoke { id: String },
}

/// The command-line definition, for the man page and shell completions (`cargo xtask dist`).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses the arguments and runs the command; see [`AFTER_HELP`] for the exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        None | Some(Command::Serve) => return crate::server::main(),
        Some(c) => c,
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qx-update-server: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Health = command {
        return match health(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("qx-update-server: health: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    match run(command, &config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qx-update-server: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command, config: &Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = crate::server::open_fleet(&config.fleet).await?;
        match command {
            Command::Token(t) => token(t, store).await,
            Command::EnrollmentToken(e) => enrollment(e, store).await,
            Command::Serve | Command::Health => Ok(()),
        }
    })
}

/// `health`: one `GET /health` to the server these settings describe, on loopback.
fn health(config: &Config) -> anyhow::Result<()> {
    let url = health_url(config.listen_addr, config.tls.is_some());
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .danger_accept_invalid_certs(true)
        .build()
        .context("cannot make an HTTP client")?;
    let status = client
        .get(&url)
        .send()
        .with_context(|| format!("GET {url}"))?
        .status();
    if !status.is_success() {
        anyhow::bail!("GET {url}: {status}");
    }
    println!("{url}: {status}");
    Ok(())
}

/// The health URL of a server listening on `listen`: its loopback address when it listens
/// on every address.
fn health_url(listen: std::net::SocketAddr, tls: bool) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    let base = format!(
        "{scheme}://{}",
        std::net::SocketAddr::new(ip, listen.port())
    );
    qx_core::api::ServerUrl::new(&base).health()
}

async fn token(command: TokenCommand, store: Arc<dyn FleetStore>) -> anyhow::Result<()> {
    let now = SystemClock.now();
    match command {
        TokenCommand::Create { scope, name } => {
            let scopes = scope
                .iter()
                .map(|s| admin::parse_scope(s))
                .collect::<Result<Vec<_>, _>>()?;
            let made =
                admin::create_operator_token(&*store, OperatorTokenRequest { name, scopes }, now)
                    .await?;
            let scopes: Vec<_> = made
                .scopes
                .iter()
                .map(|s| crate::fleet::auth::scope_name(*s))
                .collect();
            eprintln!(
                "operator token {} created with scope {}; it is shown this once, keep it secret:",
                made.name,
                scopes.join(", ")
            );
            println!("{}", made.token.unwrap_or_default());
        }
        TokenCommand::List { json } => {
            let rows = store.list_operator_tokens().await?;
            let tokens: Vec<_> = rows.into_iter().map(admin::operator_token_view).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                println!("{:<24} {:<28} {:<26} REVOKED", "NAME", "SCOPES", "CREATED");
                for t in tokens {
                    let scopes: Vec<_> = t
                        .scopes
                        .iter()
                        .map(|s| crate::fleet::auth::scope_name(*s))
                        .collect();
                    println!(
                        "{:<24} {:<28} {:<26} {}",
                        t.name,
                        scopes.join(","),
                        t.created_at,
                        t.revoked_at.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        TokenCommand::Revoke { name } => {
            if !store.revoke_operator_token(name.clone(), now).await? {
                anyhow::bail!("there is no active operator token named {name}; `qx-update-server token list` lists them");
            }
            eprintln!("operator token {name} revoked");
        }
    }
    Ok(())
}

/// `key=value` pairs into labels.
fn parse_labels(pairs: &[String]) -> anyhow::Result<Labels> {
    let mut labels = Labels::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--label {pair:?}: write key=value"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    Ok(labels)
}

async fn enrollment(command: EnrollmentCommand, store: Arc<dyn FleetStore>) -> anyhow::Result<()> {
    let now = SystemClock.now();
    match command {
        EnrollmentCommand::Create {
            product,
            labels,
            expires_in,
            uses,
            name,
        } => {
            let req = EnrollmentTokenRequest {
                product,
                labels: parse_labels(&labels)?,
                expires_in: Some(expires_in),
                uses: Some(uses),
                name,
            };
            let made = admin::create_enrollment_token(&*store, req, now).await?;
            eprintln!(
                "enrollment token {} for product {} created: {} use(s), valid until {}; it is shown this once:",
                made.id, made.product, made.uses, made.expires_at
            );
            println!("{}", made.token);
        }
        EnrollmentCommand::Revoke { id } => {
            if !store.revoke_enrollment_token(id.clone(), now).await? {
                anyhow::bail!("there is no active enrollment token with id {id}");
            }
            eprintln!("enrollment token {id} revoked");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_probe_asks_loopback_when_the_server_listens_everywhere() {
        let at = |s: &str| s.parse().expect("an address");
        assert_eq!(
            health_url(at("0.0.0.0:9000"), false),
            "http://127.0.0.1:9000/health"
        );
        assert_eq!(health_url(at("[::]:443"), true), "https://[::1]:443/health");
        assert_eq!(
            health_url(at("10.0.0.5:8080"), false),
            "http://10.0.0.5:8080/health"
        );
    }
}
