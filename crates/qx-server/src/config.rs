//! Server configuration, read from the environment (docs/spec.md §3).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qx_core::listener::ConnectionLimits;
use qx_core::ChannelName;

/// The token used when `PUBLISH_TOKEN` is not set; a warning is logged at start.
pub const DEFAULT_TOKEN: &str = "dev-token";
/// `MAX_UPLOAD_BYTES` when unset: 4 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 4 << 30;

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `RELEASE_DIR`: the root of the release tree (`<product>/<channel>/<version>/`).
    pub release_dir: PathBuf,
    /// `LISTEN_ADDR`.
    pub listen_addr: SocketAddr,
    /// `PUBLISH_TOKEN`: the bearer token publish, promote and yank require.
    pub publish_token: String,
    /// True when the token is the built-in default (a warning is logged at start).
    pub token_is_default: bool,
    /// `TLS_CERT` and `TLS_KEY` (PEM files); plain HTTP when absent.
    pub tls: Option<TlsFiles>,
    /// `TLS_CLIENT_CA` (PEM file of CA certificates): when set, every endpoint requires a
    /// client certificate signed by one of them (mutual TLS). Needs `TLS_CERT`/`TLS_KEY`.
    pub tls_client_ca: Option<PathBuf>,
    /// `MAX_UPLOAD_BYTES`: the largest publish request body accepted.
    pub max_upload_bytes: u64,
    /// `CHANNELS`: the channels releases may be published to.
    pub channels: Vec<ChannelName>,
    /// The connection limits (docs/spec.md §3): `HEADER_READ_TIMEOUT`, `IDLE_TIMEOUT`,
    /// `TLS_HANDSHAKE_TIMEOUT`, `MAX_CONNECTIONS`, `MAX_CONNECTIONS_PER_CLIENT`,
    /// `BODY_READ_TIMEOUT`, `BODY_MIN_RATE`.
    pub limits: ConnectionLimits,
    /// The fleet view's settings (docs/spec.md §9).
    pub fleet: FleetConfig,
    /// `RELEASE_STORE`: the local directory `RELEASE_DIR` (the default) or an object store.
    pub release_store: ReleaseStoreConfig,
    /// `ARTIFACT_REDIRECT`: artifacts answered with a redirect instead of their bytes.
    pub artifact_redirect: Option<ArtifactRedirect>,
    /// `ACCESS_LOG` and `TRUSTED_PROXIES`: which requests are logged, and whose
    /// `X-Forwarded-For` names the client.
    pub access_log: crate::access_log::AccessLogConfig,
}

/// `ARTIFACT_REDIRECT_TTL` when unset: how long a presigned URL is valid.
pub const DEFAULT_REDIRECT_TTL: Duration = Duration::from_secs(300);

/// Where an artifact request is redirected (docs/spec.md §13); the host verifies the bytes
/// against the signed manifest as always.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactRedirect {
    /// `presign`: a presigned URL of the object store, valid for `ttl`
    /// (`ARTIFACT_REDIRECT_TTL`).
    Presign { ttl: Duration },
    /// A base URL (a CDN whose origin is the store): `<base>/<product>/<channel>/<version>/<artifact>`.
    Base(String),
}

/// Where releases live (docs/spec.md §13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseStoreConfig {
    /// The directory tree under `RELEASE_DIR`.
    Local,
    /// `RELEASE_STORE=s3://bucket/prefix`: an S3-compatible object store.
    Object(ObjectStoreConfig),
}

/// `STAGING_SWEEP_AGE` when unset: uploads left in an object store's staging prefix (and
/// releases whose manifest was never written) longer than this are removed by the sweep.
pub const DEFAULT_STAGING_SWEEP_AGE: Duration = Duration::from_secs(24 * 3600);

/// An S3-compatible bucket and its settings: `RELEASE_STORE=s3://bucket/prefix`, and
/// `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`.
#[derive(Clone, PartialEq, Eq)]
pub struct ObjectStoreConfig {
    pub bucket: String,
    /// Every key of the store starts with this (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// `AWS_ENDPOINT_URL`: the store's URL (path-style requests); AWS when unset.
    pub endpoint: Option<String>,
    /// `AWS_REGION` (default `us-east-1`).
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `STAGING_SWEEP_AGE`.
    pub sweep_age: Duration,
}

impl std::fmt::Debug for ObjectStoreConfig {
    /// Never prints the secret key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreConfig")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("sweep_age", &self.sweep_age)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreConfig {
    /// `s3://bucket/prefix` for logs.
    pub fn url(&self) -> String {
        match self.prefix.as_str() {
            "" => format!("s3://{}", self.bucket),
            p => format!("s3://{}/{p}", self.bucket),
        }
    }
}

/// `CHECKIN_INTERVAL` when unset: 15 minutes.
pub const DEFAULT_CHECKIN_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// The file of the embedded fleet database, under `RELEASE_DIR` when `FLEET_DB` is unset. A
/// directory whose name starts with `.` is never a product, so the release store skips it.
pub const DEFAULT_FLEET_DB: &str = ".fleet/fleet.db";
/// `FLEET_RATE_LIMIT` when unset: host requests (enroll, check-in, events) per second.
pub const DEFAULT_FLEET_RATE_LIMIT: u32 = 5000;
/// `ROLLOUT_TICK` when unset: how often the rollout engine judges every rollout.
pub const DEFAULT_ROLLOUT_TICK: Duration = Duration::from_secs(5);

/// Where the fleet store lives.
#[derive(Clone, PartialEq, Eq)]
pub enum FleetDatabase {
    /// The embedded default: a SQLite file (`FLEET_DB`, or `RELEASE_DIR/.fleet/fleet.db`).
    Sqlite(PathBuf),
    /// `DATABASE_URL=postgres://…`: a PostgreSQL database, shared by several servers.
    Postgres(String),
}

impl std::fmt::Debug for FleetDatabase {
    /// Never prints the URL's password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(url) => f.debug_tuple("Postgres").field(&redact_url(url)).finish(),
        }
    }
}

/// A database URL with its password replaced by `***`, for logs and messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// The fleet view's settings.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// `DATABASE_URL` (`postgres://…`) or `FLEET_DB` (a SQLite file).
    pub database: FleetDatabase,
    /// `CHECKIN_INTERVAL`: how often a host is told to check in (±10 % jitter per answer).
    pub checkin_interval: Duration,
    /// `CHECKIN_GRACE`: how long past its expected check-in a host stays online before it is
    /// overdue (default: one interval).
    pub checkin_grace: Duration,
    /// `CHECKIN_OFFLINE_AFTER`: how long past its expected check-in a host becomes offline
    /// (default: three intervals; must exceed the grace).
    pub offline_after: Duration,
    /// `FLEET_RATE_LIMIT`: host requests per second across the server before it answers 429
    /// with `Retry-After` (a token bucket holding `FLEET_RATE_BURST`, default one second's
    /// worth); `0` turns the limit off.
    pub rate_limit: u32,
    /// `FLEET_RATE_BURST`.
    pub rate_burst: u32,
    /// `ROLLOUT_TICK`: how often the rollout engine times out stages, halts, opens waves and
    /// completes rollouts (also shortly after an event batch about a rollout).
    pub rollout_tick: Duration,
    /// `ROLLOUT_WEBHOOK_URL`: where halts, completions and aborts are posted (none: nowhere).
    pub rollout_webhook_url: Option<String>,
    /// `ROLLOUT_WEBHOOK_SECRET_FILE`: the file holding the HMAC key of the webhook's
    /// `X-Qx-Signature-256` header (read at each delivery).
    pub rollout_webhook_secret_file: Option<PathBuf>,
}

impl FleetConfig {
    /// The defaults, with the SQLite file under `release_dir`.
    pub fn new(release_dir: &Path) -> Self {
        Self {
            database: FleetDatabase::Sqlite(release_dir.join(DEFAULT_FLEET_DB)),
            checkin_interval: DEFAULT_CHECKIN_INTERVAL,
            checkin_grace: DEFAULT_CHECKIN_INTERVAL,
            offline_after: DEFAULT_CHECKIN_INTERVAL * 3,
            rate_limit: DEFAULT_FLEET_RATE_LIMIT,
            rate_burst: DEFAULT_FLEET_RATE_LIMIT,
            rollout_tick: DEFAULT_ROLLOUT_TICK,
            rollout_webhook_url: None,
            rollout_webhook_secret_file: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {var}={value:?} is invalid: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("TLS_CERT and TLS_KEY must be set together (only {set} is set); set both for HTTPS or neither for plain HTTP")]
    TlsHalf { set: &'static str },
    #[error("DATABASE_URL and FLEET_DB are both set: the fleet store is PostgreSQL (DATABASE_URL) or a SQLite file (FLEET_DB); unset one")]
    TwoDatabases,
    #[error("CHECKIN_OFFLINE_AFTER must be longer than CHECKIN_GRACE (a host is overdue before it is offline); raise CHECKIN_OFFLINE_AFTER or lower CHECKIN_GRACE")]
    OfflineBeforeGrace,
    #[error("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together; set both, or neither to use the store's other credential sources")]
    KeyHalf,
    #[error("TLS_CLIENT_CA is set but TLS_CERT and TLS_KEY are not: client certificates need HTTPS; set TLS_CERT and TLS_KEY too")]
    ClientCaWithoutTls,
}

impl Config {
    /// The defaults of docs/spec.md §3 with the given release directory; handy for tests.
    pub fn new(release_dir: impl Into<PathBuf>) -> Self {
        let release_dir = release_dir.into();
        Self {
            fleet: FleetConfig::new(&release_dir),
            release_dir,
            listen_addr: SocketAddr::from(([0, 0, 0, 0], 9000)),
            publish_token: DEFAULT_TOKEN.to_owned(),
            token_is_default: true,
            tls: None,
            tls_client_ca: None,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            channels: default_channels(),
            limits: ConnectionLimits::default(),
            release_store: ReleaseStoreConfig::Local,
            artifact_redirect: None,
            access_log: Default::default(),
        }
    }

    /// Where releases live, for the log: the directory or `s3://bucket/prefix`.
    pub fn release_store_display(&self) -> String {
        match &self.release_store {
            ReleaseStoreConfig::Local => self.release_dir.display().to_string(),
            ReleaseStoreConfig::Object(o) => o.url(),
        }
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let invalid = |var: &'static str, value: &str, reason: String| ConfigError::Invalid {
            var,
            value: value.to_owned(),
            reason,
        };
        let mut cfg =
            Self::new(lookup("RELEASE_DIR").unwrap_or_else(|| "/data/releases".to_owned()));
        if cfg.release_dir.as_os_str().is_empty() {
            return Err(invalid("RELEASE_DIR", "", "it is empty".into()));
        }
        if let Some(v) = lookup("LISTEN_ADDR") {
            cfg.listen_addr = v.parse().map_err(|e| {
                invalid(
                    "LISTEN_ADDR",
                    &v,
                    format!("{e}; expected IP:PORT such as 0.0.0.0:9000"),
                )
            })?;
        }
        if let Some(v) = token_from_file(&lookup)? {
            cfg.token_is_default = v == DEFAULT_TOKEN;
            cfg.publish_token = v;
        } else if let Some(v) = lookup("PUBLISH_TOKEN") {
            if v.trim().is_empty() {
                return Err(invalid(
                    "PUBLISH_TOKEN",
                    "",
                    "it is empty; set a long random secret".into(),
                ));
            }
            cfg.token_is_default = v == DEFAULT_TOKEN;
            cfg.publish_token = v;
        }
        cfg.tls = match (lookup("TLS_CERT"), lookup("TLS_KEY")) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.into(),
                key: key.into(),
            }),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::TlsHalf { set: "TLS_CERT" }),
            (None, Some(_)) => return Err(ConfigError::TlsHalf { set: "TLS_KEY" }),
        };
        if let Some(ca) = lookup("TLS_CLIENT_CA") {
            if cfg.tls.is_none() {
                return Err(ConfigError::ClientCaWithoutTls);
            }
            if ca.trim().is_empty() {
                return Err(invalid(
                    "TLS_CLIENT_CA",
                    "",
                    "it is empty; set it to a PEM file of CA certificates".into(),
                ));
            }
            cfg.tls_client_ca = Some(ca.into());
        }
        if let Some(v) = lookup("MAX_UPLOAD_BYTES") {
            cfg.max_upload_bytes =
                parse_max_upload(&v).map_err(|reason| invalid("MAX_UPLOAD_BYTES", &v, reason))?;
        }
        if let Some(v) = lookup("CHANNELS") {
            cfg.channels = parse_channels(&v).map_err(|reason| invalid("CHANNELS", &v, reason))?;
        }
        cfg.limits = limits_from(&lookup)?;
        cfg.fleet = fleet_from(&lookup, &cfg.release_dir)?;
        cfg.release_store = release_store_from(&lookup)?;
        cfg.artifact_redirect = redirect_from(&lookup, &cfg.release_store)?;
        if let Some(v) = lookup("ACCESS_LOG") {
            cfg.access_log.log = v.parse().map_err(|r| invalid("ACCESS_LOG", &v, r))?;
        }
        if let Some(v) = lookup("TRUSTED_PROXIES") {
            cfg.access_log.trusted_proxies =
                v.parse().map_err(|r| invalid("TRUSTED_PROXIES", &v, r))?;
        }
        Ok(cfg)
    }
}

/// `PUBLISH_TOKEN_FILE`: the token read from a file (a container secret, a file only root
/// reads), its surrounding white space trimmed; never together with `PUBLISH_TOKEN`.
fn token_from_file(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    let Some(path) = lookup("PUBLISH_TOKEN_FILE") else {
        return Ok(None);
    };
    let invalid = |reason: String| ConfigError::Invalid {
        var: "PUBLISH_TOKEN_FILE",
        value: path.clone(),
        reason,
    };
    if lookup("PUBLISH_TOKEN").is_some() {
        return Err(invalid("PUBLISH_TOKEN is set too; set one of them".into()));
    }
    let text =
        std::fs::read_to_string(&path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(invalid(
            "the file is empty; write a long random secret into it".into(),
        ));
    }
    Ok(Some(token.to_owned()))
}

/// `RELEASE_STORE` and the object store's variables; `Local` when unset.
fn release_store_from(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<ReleaseStoreConfig, ConfigError> {
    let invalid = |var: &'static str, value: &str, reason: String| ConfigError::Invalid {
        var,
        value: value.to_owned(),
        reason,
    };
    let Some(url) = lookup("RELEASE_STORE") else {
        return Ok(ReleaseStoreConfig::Local);
    };
    let (bucket, prefix) = parse_store_url(&url).map_err(|r| invalid("RELEASE_STORE", &url, r))?;
    let endpoint = match lookup("AWS_ENDPOINT_URL") {
        Some(e) if !(e.starts_with("http://") || e.starts_with("https://")) => {
            return Err(invalid(
                "AWS_ENDPOINT_URL",
                &e,
                "expected an http:// or https:// URL such as http://127.0.0.1:3900".into(),
            ))
        }
        other => other.map(|e| e.trim_end_matches('/').to_owned()),
    };
    let sweep_age = match lookup("STAGING_SWEEP_AGE") {
        Some(v) => Duration::from_millis(
            parse_duration_ms(&v).map_err(|r| invalid("STAGING_SWEEP_AGE", &v, r))?,
        ),
        None => DEFAULT_STAGING_SWEEP_AGE,
    };
    let access_key_id = lookup("AWS_ACCESS_KEY_ID");
    let secret_access_key = lookup("AWS_SECRET_ACCESS_KEY");
    if access_key_id.is_some() != secret_access_key.is_some() {
        return Err(ConfigError::KeyHalf);
    }
    Ok(ReleaseStoreConfig::Object(ObjectStoreConfig {
        bucket,
        prefix,
        endpoint,
        region: lookup("AWS_REGION").unwrap_or_else(|| "us-east-1".to_owned()),
        access_key_id,
        secret_access_key,
        sweep_age,
    }))
}

/// `ARTIFACT_REDIRECT` (`presign`, or an http(s) base URL) and `ARTIFACT_REDIRECT_TTL`.
fn redirect_from(
    lookup: &impl Fn(&str) -> Option<String>,
    store: &ReleaseStoreConfig,
) -> Result<Option<ArtifactRedirect>, ConfigError> {
    let invalid = |var: &'static str, value: &str, reason: String| ConfigError::Invalid {
        var,
        value: value.to_owned(),
        reason,
    };
    let Some(v) = lookup("ARTIFACT_REDIRECT") else {
        return Ok(None);
    };
    if v == "presign" {
        if *store == ReleaseStoreConfig::Local {
            return Err(invalid(
                "ARTIFACT_REDIRECT",
                &v,
                "presigned URLs need an object store; set RELEASE_STORE=s3://bucket/prefix, or redirect to a CDN base URL".into(),
            ));
        }
        let ttl = match lookup("ARTIFACT_REDIRECT_TTL") {
            Some(t) => Duration::from_millis(
                parse_duration_ms(&t).map_err(|r| invalid("ARTIFACT_REDIRECT_TTL", &t, r))?,
            ),
            None => DEFAULT_REDIRECT_TTL,
        };
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(7 * 24 * 3600) {
            return Err(invalid(
                "ARTIFACT_REDIRECT_TTL",
                &format!("{ttl:?}"),
                "must be between 1s and 7d (the longest a presigned URL may live)".into(),
            ));
        }
        return Ok(Some(ArtifactRedirect::Presign { ttl }));
    }
    let base = v.trim_end_matches('/');
    let parsed = reqwest::Url::parse(base).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host().is_some()
            && u.query().is_none()
            && u.fragment().is_none()
            && u.username().is_empty()
    });
    if parsed.is_none() {
        return Err(invalid(
            "ARTIFACT_REDIRECT",
            &v,
            "expected presign or a base URL such as https://cdn.example/releases (no query, no credentials)".into(),
        ));
    }
    Ok(Some(ArtifactRedirect::Base(base.to_owned())))
}

/// `s3://bucket/prefix` → bucket and prefix (no leading or trailing `/`).
fn parse_store_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or("expected s3://bucket/prefix (only S3-compatible object stores are supported; for a local directory unset it and set RELEASE_DIR)")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        return Err(format!(
            "{bucket:?} is not a bucket name (3 to 63 lower-case letters, digits, '-' and '.')"
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix
        .split('/')
        .any(|p| p == "." || p == ".." || (p.is_empty() && !prefix.is_empty()))
    {
        return Err(format!(
            "the prefix {prefix:?} has an empty, '.' or '..' part"
        ));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

/// `DATABASE_URL` (PostgreSQL) or `FLEET_DB` (a SQLite file), never both; `default` when
/// neither is set.
fn database_from(
    lookup: &impl Fn(&str) -> Option<String>,
    default: FleetDatabase,
) -> Result<FleetDatabase, ConfigError> {
    let invalid = |var: &'static str, value: &str, reason: String| ConfigError::Invalid {
        var,
        value: value.to_owned(),
        reason,
    };
    Ok(match (lookup("DATABASE_URL"), lookup("FLEET_DB")) {
        (Some(_), Some(_)) => return Err(ConfigError::TwoDatabases),
        (Some(url), None) => {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(invalid(
                    "DATABASE_URL",
                    &redact_url(&url),
                    "only postgres:// URLs are accepted; for SQLite leave it unset (or set FLEET_DB to a file)".into(),
                ));
            }
            FleetDatabase::Postgres(url)
        }
        (None, Some(path)) if path.trim().is_empty() => {
            return Err(invalid(
                "FLEET_DB",
                "",
                "it is empty; set a file path".into(),
            ))
        }
        (None, Some(path)) => FleetDatabase::Sqlite(path.into()),
        (None, None) => default,
    })
}

/// The fleet settings from their variables; an unset one keeps its default (the grace and
/// the offline delay follow `CHECKIN_INTERVAL` unless set).
fn fleet_from(
    lookup: &impl Fn(&str) -> Option<String>,
    release_dir: &Path,
) -> Result<FleetConfig, ConfigError> {
    let invalid = |var: &'static str, value: &str, reason: String| ConfigError::Invalid {
        var,
        value: value.to_owned(),
        reason,
    };
    let mut f = FleetConfig::new(release_dir);
    f.database = database_from(lookup, f.database)?;
    let duration = |var: &'static str| -> Result<Option<Duration>, ConfigError> {
        lookup(var)
            .map(|v| {
                parse_duration_ms(&v)
                    .map(Duration::from_millis)
                    .map_err(|reason| invalid(var, &v, reason))
            })
            .transpose()
    };
    if let Some(d) = duration("CHECKIN_INTERVAL")? {
        if d < Duration::from_secs(10) {
            return Err(invalid(
                "CHECKIN_INTERVAL",
                &format!("{d:?}"),
                "it must be at least 10s".into(),
            ));
        }
        f.checkin_interval = d;
    }
    f.checkin_grace = duration("CHECKIN_GRACE")?.unwrap_or(f.checkin_interval);
    f.offline_after = duration("CHECKIN_OFFLINE_AFTER")?.unwrap_or(f.checkin_interval * 3);
    if f.offline_after <= f.checkin_grace {
        return Err(ConfigError::OfflineBeforeGrace);
    }
    let count = |var: &'static str| -> Result<Option<u32>, ConfigError> {
        lookup(var)
            .map(|v| {
                v.trim().parse::<u32>().map_err(|e| {
                    invalid(
                        var,
                        &v,
                        format!("{e}; expected a whole number such as 5000"),
                    )
                })
            })
            .transpose()
    };
    if let Some(n) = count("FLEET_RATE_LIMIT")? {
        f.rate_limit = n;
        f.rate_burst = n;
    }
    if let Some(n) = count("FLEET_RATE_BURST")? {
        if n == 0 {
            return Err(invalid(
                "FLEET_RATE_BURST",
                "0",
                "it must be at least 1".into(),
            ));
        }
        f.rate_burst = n;
    }
    if let Some(d) = duration("ROLLOUT_TICK")? {
        if d < Duration::from_millis(100) {
            return Err(invalid(
                "ROLLOUT_TICK",
                &format!("{d:?}"),
                "it must be at least 100ms".into(),
            ));
        }
        f.rollout_tick = d;
    }
    f.rollout_webhook_url = lookup("ROLLOUT_WEBHOOK_URL").filter(|u| !u.trim().is_empty());
    if let Some(u) = &f.rollout_webhook_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(invalid(
                "ROLLOUT_WEBHOOK_URL",
                u,
                "it must be an http:// or https:// URL".into(),
            ));
        }
    }
    f.rollout_webhook_secret_file = lookup("ROLLOUT_WEBHOOK_SECRET_FILE").map(PathBuf::from);
    Ok(f)
}

/// The connection limits from their variables; an unset one keeps its default.
fn limits_from(lookup: &impl Fn(&str) -> Option<String>) -> Result<ConnectionLimits, ConfigError> {
    let mut l = ConnectionLimits::default();
    let read = |var: &'static str, parse: fn(&str) -> Result<u64, String>| {
        lookup(var)
            .map(|v| {
                parse(&v).map_err(|reason| ConfigError::Invalid {
                    var,
                    value: v.clone(),
                    reason,
                })
            })
            .transpose()
    };
    let millis = |ms: u64| std::time::Duration::from_millis(ms);
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    if let Some(ms) = read("HEADER_READ_TIMEOUT", parse_duration_ms)? {
        l.header_read_timeout = millis(ms);
    }
    if let Some(ms) = read("IDLE_TIMEOUT", parse_duration_ms)? {
        l.idle_timeout = millis(ms);
    }
    if let Some(ms) = read("TLS_HANDSHAKE_TIMEOUT", parse_duration_ms)? {
        l.tls_handshake_timeout = millis(ms);
    }
    if let Some(ms) = read("BODY_READ_TIMEOUT", parse_duration_ms)? {
        l.body_read_timeout = millis(ms);
    }
    if let Some(n) = read("MAX_CONNECTIONS", parse_count)? {
        l.max_connections = count(n);
    }
    if let Some(n) = read("MAX_CONNECTIONS_PER_CLIENT", parse_count)? {
        l.max_connections_per_client = count(n);
    }
    if let Some(rate) = read("BODY_MIN_RATE", |v| {
        qx_core::size::parse_rate(v).map_err(|e| e.to_string())
    })? {
        l.body_min_rate = rate;
    }
    Ok(l)
}

/// A duration such as `30s`, `2m` or `500ms`, above zero, in milliseconds.
fn parse_duration_ms(v: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(v.trim())
        .map_err(|e| format!("{e}; expected a duration such as 30s, 2m or 500ms"))?;
    match u64::try_from(d.as_millis()) {
        Ok(0) => Err("it must be at least 1ms".into()),
        Ok(ms) => Ok(ms),
        Err(_) => Err("it is too long".into()),
    }
}

/// A count of connections, above zero.
fn parse_count(v: &str) -> Result<u64, String> {
    match v.trim().parse::<u64>() {
        Ok(0) => Err("it must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}; expected a whole number such as 4096")),
    }
}

fn default_channels() -> Vec<ChannelName> {
    ["dev", "beta", "stable"]
        .iter()
        .filter_map(|c| ChannelName::new(*c).ok())
        .collect()
}

/// `MAX_UPLOAD_BYTES`: a size by the rule of [`qx_core::size`] (`4GB` is 4,000,000,000
/// bytes, `4GiB` and `4G` are 4 GiB), above zero.
fn parse_max_upload(v: &str) -> Result<u64, String> {
    match qx_core::size::parse_size(v) {
        Ok(0) => Err("it must be greater than zero".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_channels(v: &str) -> Result<Vec<ChannelName>, String> {
    let mut out: Vec<ChannelName> = Vec::new();
    for part in v.split(',').map(str::trim) {
        let name = ChannelName::new(part).map_err(|e| e.to_string())?;
        if out.contains(&name) {
            return Err(format!("channel {name} is listed twice"));
        }
        out.push(name);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).expect("defaults");
        assert_eq!(c.release_dir, PathBuf::from("/data/releases"));
        assert_eq!(c.listen_addr.to_string(), "0.0.0.0:9000");
        assert!(c.token_is_default);
        assert_eq!(c.max_upload_bytes, 4 << 30);
        let ch: Vec<&str> = c.channels.iter().map(|c| c.as_str()).collect();
        assert_eq!(ch, ["dev", "beta", "stable"]);
        assert!(c.tls.is_none());
    }

    #[test]
    fn values_are_read() {
        let c = cfg(&[
            ("LISTEN_ADDR", "127.0.0.1:8080"),
            ("PUBLISH_TOKEN", "s3cret"),
            ("MAX_UPLOAD_BYTES", "10MiB"),
            ("CHANNELS", "dev, stable"),
            ("TLS_CERT", "/c.pem"),
            ("TLS_KEY", "/k.pem"),
        ])
        .expect("valid");
        assert_eq!(c.max_upload_bytes, 10 << 20);
        assert!(!c.token_is_default);
        assert_eq!(c.channels.len(), 2);
        assert!(c.tls.is_some());
        assert!(c.tls_client_ca.is_none());
    }

    #[test]
    fn client_ca_needs_tls() {
        let err = cfg(&[("TLS_CLIENT_CA", "/ca.pem")]).expect_err("refused");
        assert!(matches!(err, ConfigError::ClientCaWithoutTls), "{err}");
        let c = cfg(&[
            ("TLS_CERT", "/c.pem"),
            ("TLS_KEY", "/k.pem"),
            ("TLS_CLIENT_CA", "/ca.pem"),
        ])
        .expect("valid");
        assert_eq!(c.tls_client_ca, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn bad_values_are_refused() {
        for vars in [
            vec![("LISTEN_ADDR", "nope")],
            vec![("PUBLISH_TOKEN", " ")],
            vec![("MAX_UPLOAD_BYTES", "lots")],
            vec![("MAX_UPLOAD_BYTES", "0")],
            vec![("MAX_UPLOAD_BYTES", "5X")],
            vec![("CHANNELS", "dev,Beta")],
            vec![("CHANNELS", "dev,dev")],
            vec![("CHANNELS", "")],
            vec![("TLS_CERT", "/c.pem")],
            vec![("TLS_KEY", "/k.pem")],
            vec![("TLS_CLIENT_CA", "/ca.pem")],
            vec![
                ("TLS_CERT", "/c.pem"),
                ("TLS_KEY", "/k.pem"),
                ("TLS_CLIENT_CA", ""),
            ],
        ] {
            assert!(cfg(&vars).is_err(), "{vars:?} should be refused");
        }
    }

    #[test]
    fn connection_limits_are_read() {
        assert_eq!(
            cfg(&[]).expect("defaults").limits,
            ConnectionLimits::default()
        );
        let c = cfg(&[
            ("HEADER_READ_TIMEOUT", "5s"),
            ("IDLE_TIMEOUT", "2m"),
            ("TLS_HANDSHAKE_TIMEOUT", "500ms"),
            ("MAX_CONNECTIONS", "100"),
            ("MAX_CONNECTIONS_PER_CLIENT", "10"),
            ("BODY_READ_TIMEOUT", "20s"),
            ("BODY_MIN_RATE", "10KiB/s"),
        ])
        .expect("valid");
        let l = c.limits;
        assert_eq!(l.header_read_timeout, std::time::Duration::from_secs(5));
        assert_eq!(l.idle_timeout, std::time::Duration::from_secs(120));
        assert_eq!(
            l.tls_handshake_timeout,
            std::time::Duration::from_millis(500)
        );
        assert_eq!((l.max_connections, l.max_connections_per_client), (100, 10));
        assert_eq!(l.body_read_timeout, std::time::Duration::from_secs(20));
        assert_eq!(l.body_min_rate, 10 << 10);
        for (var, bad) in [
            ("IDLE_TIMEOUT", "0s"),
            ("IDLE_TIMEOUT", "soon"),
            ("MAX_CONNECTIONS", "0"),
            ("BODY_MIN_RATE", "fast"),
        ] {
            let e = cfg(&[(var, bad)]).expect_err(bad).to_string();
            assert!(e.contains(var), "{e}");
        }
    }

    #[test]
    fn fleet_defaults_and_values() {
        let c = cfg(&[("RELEASE_DIR", "/srv/rel")]).expect("defaults");
        let f = &c.fleet;
        assert_eq!(
            f.database,
            FleetDatabase::Sqlite(PathBuf::from("/srv/rel/.fleet/fleet.db"))
        );
        assert_eq!(f.checkin_interval, Duration::from_secs(900));
        assert_eq!(f.checkin_grace, Duration::from_secs(900));
        assert_eq!(f.offline_after, Duration::from_secs(2700));
        assert_eq!((f.rate_limit, f.rate_burst), (5000, 5000));
        let c = cfg(&[
            ("DATABASE_URL", "postgres://qx:pw@db/fleet"),
            ("CHECKIN_INTERVAL", "1m"),
            ("FLEET_RATE_LIMIT", "10"),
            ("FLEET_RATE_BURST", "20"),
        ])
        .expect("valid");
        let f = &c.fleet;
        assert_eq!(
            f.database,
            FleetDatabase::Postgres("postgres://qx:pw@db/fleet".into())
        );
        assert!(!format!("{f:?}").contains("pw"), "{f:?}");
        assert_eq!(f.checkin_grace, Duration::from_secs(60));
        assert_eq!(f.offline_after, Duration::from_secs(180));
        assert_eq!((f.rate_limit, f.rate_burst), (10, 20));
        let c = cfg(&[("FLEET_DB", "/var/lib/qx/fleet.db")]).expect("valid");
        assert_eq!(
            c.fleet.database,
            FleetDatabase::Sqlite(PathBuf::from("/var/lib/qx/fleet.db"))
        );
    }

    #[test]
    fn fleet_bad_values_are_refused_naming_the_variable() {
        for (vars, name) in [
            (vec![("DATABASE_URL", "mysql://x")], "DATABASE_URL"),
            (
                vec![("DATABASE_URL", "postgres://a"), ("FLEET_DB", "/f")],
                "FLEET_DB",
            ),
            (vec![("FLEET_DB", " ")], "FLEET_DB"),
            (vec![("CHECKIN_INTERVAL", "1s")], "CHECKIN_INTERVAL"),
            (vec![("CHECKIN_INTERVAL", "often")], "CHECKIN_INTERVAL"),
            (
                vec![("CHECKIN_GRACE", "1h"), ("CHECKIN_OFFLINE_AFTER", "30m")],
                "CHECKIN_OFFLINE_AFTER",
            ),
            (vec![("FLEET_RATE_LIMIT", "-1")], "FLEET_RATE_LIMIT"),
            (vec![("FLEET_RATE_BURST", "0")], "FLEET_RATE_BURST"),
            (vec![("ROLLOUT_TICK", "10ms")], "ROLLOUT_TICK"),
            (
                vec![("ROLLOUT_WEBHOOK_URL", "ftp://x")],
                "ROLLOUT_WEBHOOK_URL",
            ),
        ] {
            let e = cfg(&vars).expect_err(name).to_string();
            assert!(e.contains(name), "{vars:?}: {e}");
        }
    }

    #[test]
    fn rollout_settings_default_and_read() {
        let c = cfg(&[]).expect("defaults");
        assert_eq!(c.fleet.rollout_tick, DEFAULT_ROLLOUT_TICK);
        assert_eq!(c.fleet.rollout_webhook_url, None);
        let c = cfg(&[
            ("ROLLOUT_TICK", "30s"),
            ("ROLLOUT_WEBHOOK_URL", "https://ops.example/hook"),
            ("ROLLOUT_WEBHOOK_SECRET_FILE", "/etc/qx/hook.secret"),
        ])
        .expect("valid");
        assert_eq!(c.fleet.rollout_tick, Duration::from_secs(30));
        assert_eq!(
            c.fleet.rollout_webhook_url.as_deref(),
            Some("https://ops.example/hook")
        );
        assert_eq!(
            c.fleet.rollout_webhook_secret_file,
            Some(PathBuf::from("/etc/qx/hook.secret"))
        );
    }

    fn max_upload(value: &str) -> Result<u64, ConfigError> {
        cfg(&[("MAX_UPLOAD_BYTES", value)]).map(|c| c.max_upload_bytes)
    }

    #[test]
    fn max_upload_bytes_4gb_is_si() {
        assert_eq!(max_upload("4GB").expect("4GB"), 4_000_000_000);
    }

    #[test]
    fn max_upload_bytes_4gib_and_4g_are_binary() {
        assert_eq!(max_upload("4GiB").expect("4GiB"), 4 << 30);
        assert_eq!(max_upload("4G").expect("4G"), 4 << 30);
    }

    #[test]
    fn max_upload_bytes_means_what_the_shared_parser_says() {
        for text in ["4096", "500KB", "10MiB", "2M", "1.5KiB", "1TB"] {
            assert_eq!(
                max_upload(text).expect(text),
                qx_core::size::parse_size(text).expect(text),
                "{text}"
            );
        }
    }

    #[test]
    fn max_upload_bytes_bad_value_is_refused_naming_the_variable() {
        for bad in ["lots", "5X", "4 gigabytes", "0", "-1"] {
            let e = max_upload(bad).expect_err(bad).to_string();
            assert!(e.contains("MAX_UPLOAD_BYTES"), "{bad}: {e}");
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn release_store_is_local_by_default_and_an_s3_url_with_its_variables() {
        assert_eq!(
            cfg(&[]).expect("defaults").release_store,
            ReleaseStoreConfig::Local
        );
        let c = cfg(&[
            ("RELEASE_STORE", "s3://qx-releases/fleet/eu/"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:3900/"),
            ("AWS_REGION", "garage"),
            ("AWS_ACCESS_KEY_ID", "GK1"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("STAGING_SWEEP_AGE", "2h"),
        ])
        .expect("an object store");
        let ReleaseStoreConfig::Object(o) = &c.release_store else {
            panic!("not an object store: {:?}", c.release_store);
        };
        assert_eq!(
            (o.bucket.as_str(), o.prefix.as_str()),
            ("qx-releases", "fleet/eu")
        );
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(o.region, "garage");
        assert_eq!(o.sweep_age, Duration::from_secs(7200));
        assert_eq!(c.release_store_display(), "s3://qx-releases/fleet/eu");
        assert!(
            !format!("{o:?}").contains("secret"),
            "the secret is never printed"
        );
        let bare = cfg(&[("RELEASE_STORE", "s3://qx-releases")]).expect("no prefix");
        let ReleaseStoreConfig::Object(o) = bare.release_store else {
            panic!("not an object store");
        };
        assert_eq!((o.prefix.as_str(), o.region.as_str()), ("", "us-east-1"));
        assert_eq!(o.sweep_age, DEFAULT_STAGING_SWEEP_AGE);
    }

    #[test]
    fn bad_release_store_settings_name_the_variable() {
        for (vars, var) in [
            (vec![("RELEASE_STORE", "/data/releases")], "RELEASE_STORE"),
            (vec![("RELEASE_STORE", "gs://bucket")], "RELEASE_STORE"),
            (vec![("RELEASE_STORE", "s3://Upper_Case")], "RELEASE_STORE"),
            (vec![("RELEASE_STORE", "s3://ab")], "RELEASE_STORE"),
            (
                vec![("RELEASE_STORE", "s3://bucket/a/../b")],
                "RELEASE_STORE",
            ),
            (vec![("RELEASE_STORE", "s3://bucket/a//b")], "RELEASE_STORE"),
            (
                vec![
                    ("RELEASE_STORE", "s3://bucket"),
                    ("AWS_ENDPOINT_URL", "127.0.0.1:3900"),
                ],
                "AWS_ENDPOINT_URL",
            ),
            (
                vec![
                    ("RELEASE_STORE", "s3://bucket"),
                    ("STAGING_SWEEP_AGE", "soon"),
                ],
                "STAGING_SWEEP_AGE",
            ),
        ] {
            match cfg(&vars) {
                Err(ConfigError::Invalid { var: v, .. }) => assert_eq!(v, var, "{vars:?}"),
                other => panic!("{vars:?}: {other:?}"),
            }
        }
        assert!(matches!(
            cfg(&[
                ("RELEASE_STORE", "s3://bucket"),
                ("AWS_ACCESS_KEY_ID", "GK1")
            ]),
            Err(ConfigError::KeyHalf)
        ));
    }

    #[test]
    fn artifact_redirect_is_presign_on_an_object_store_or_a_base_url() {
        let c = cfg(&[("ARTIFACT_REDIRECT", "https://cdn.example/qx/")]).expect("a base URL");
        assert_eq!(
            c.artifact_redirect,
            Some(ArtifactRedirect::Base("https://cdn.example/qx".into()))
        );
        let c = cfg(&[
            ("RELEASE_STORE", "s3://qx-releases"),
            ("ARTIFACT_REDIRECT", "presign"),
            ("ARTIFACT_REDIRECT_TTL", "2m"),
        ])
        .expect("presign");
        assert_eq!(
            c.artifact_redirect,
            Some(ArtifactRedirect::Presign {
                ttl: Duration::from_secs(120)
            })
        );
        assert_eq!(cfg(&[]).expect("defaults").artifact_redirect, None);
        for vars in [
            vec![("ARTIFACT_REDIRECT", "presign")],
            vec![("ARTIFACT_REDIRECT", "cdn.example")],
            vec![("ARTIFACT_REDIRECT", "ftp://cdn.example")],
            vec![("ARTIFACT_REDIRECT", "https://u:p@cdn.example")],
            vec![("ARTIFACT_REDIRECT", "https://cdn.example/?x=1")],
            vec![
                ("RELEASE_STORE", "s3://qx-releases"),
                ("ARTIFACT_REDIRECT", "presign"),
                ("ARTIFACT_REDIRECT_TTL", "30d"),
            ],
        ] {
            assert!(
                matches!(cfg(&vars), Err(ConfigError::Invalid { .. })),
                "{vars:?}"
            );
        }
    }

    #[test]
    fn the_token_may_come_from_a_file_but_not_from_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "  from-a-file-0123456789\n").expect("write");
        let path = file.to_str().expect("utf-8");
        let c = cfg(&[("PUBLISH_TOKEN_FILE", path)]).expect("a token file");
        assert_eq!(c.publish_token, "from-a-file-0123456789");
        assert!(!c.token_is_default);
        let both = cfg(&[("PUBLISH_TOKEN_FILE", path), ("PUBLISH_TOKEN", "x")]);
        assert!(matches!(
            both,
            Err(ConfigError::Invalid {
                var: "PUBLISH_TOKEN_FILE",
                ..
            })
        ));
        std::fs::write(&file, "\n").expect("write");
        let empty = cfg(&[("PUBLISH_TOKEN_FILE", path)]);
        assert!(matches!(
            empty,
            Err(ConfigError::Invalid {
                var: "PUBLISH_TOKEN_FILE",
                ..
            })
        ));
        let missing = cfg(&[("PUBLISH_TOKEN_FILE", "/nonexistent/qx-token")]);
        assert!(matches!(
            missing,
            Err(ConfigError::Invalid {
                var: "PUBLISH_TOKEN_FILE",
                ..
            })
        ));
    }

    #[test]
    fn the_default_token_is_refused_beyond_loopback() {
        let exposed = cfg(&[]).expect("defaults");
        let e = crate::server::check_token_exposure(&exposed)
            .expect_err("0.0.0.0 with the default token");
        assert!(e.contains("PUBLISH_TOKEN"), "{e}");
        let local = cfg(&[("LISTEN_ADDR", "127.0.0.1:9000")]).expect("loopback");
        assert!(crate::server::check_token_exposure(&local).is_ok());
        let v6 = cfg(&[("LISTEN_ADDR", "[::1]:9000")]).expect("loopback v6");
        assert!(crate::server::check_token_exposure(&v6).is_ok());
        let secret = cfg(&[("PUBLISH_TOKEN", "s3cret-0123456789")]).expect("a token");
        assert!(crate::server::check_token_exposure(&secret).is_ok());
    }
}
