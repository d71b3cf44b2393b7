//! Agent configuration: the `updates:` section of `/etc/limiquantix/node.yaml` (the base keys
//! plus docs/spec.md §4's). Other top-level sections of the file belong to other programs and are
//! ignored; inside `updates:` an unknown key is an error that names it (and the nearest known
//! one). Every key is documented in docs/agent-config.md (a unit test of `config_check` keeps
//! the two the same).
//!
//! ```yaml
//! updates:
//!   enabled: true
//!   server_url: "http://192.168.0.95:9000"
//!   channel: dev
//!   check_interval: 1h
//!   auto_apply: false
//!   auto_reboot: false
//!   product: quantix-os
//!   trusted_keys:
//!     - RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3   # a base64 key line
//!     - /etc/limiquantix/update-key.pub                             # or a .pub file
//!   maintenance_window: "Sun 02:00-04:00"
//!   bandwidth_limit: 10MiB/s
//!   download: {max_attempts: 6, initial_backoff: 500ms, max_backoff: 30s,
//!              connect_timeout: 10s, stall_timeout: 30s,
//!              document_deadline: 60s, min_rate: 1KiB/s, min_rate_window: 60s,
//!              redirect_hosts: [mirror.lan:8080]}   # plain-HTTP hosts redirects may go to
//!   api: {listen: "0.0.0.0:8443", tls_cert: /etc/limiquantix/tls.crt,
//!         tls_key: /etc/limiquantix/tls.key, token_file: /etc/limiquantix/api-token}
//!   service_manager: openrc          # openrc | systemd | command
//!   restart_command: ["/usr/local/bin/restart", "{service}"]   # for `command`
//!   pid_command: ["/usr/local/bin/pidof-service", "{service}"] # optional
//!   pidfile: "/run/{service}.pid"    # where a service's pid is read (openrc, command)
//!   verify_timeout: 10s
//!   max_unpacked_bytes: 4GiB
//!   keep_backups: 3
//!   log_path: /var/log/quantix/update.log
//!   reboot_command: ["/sbin/reboot"]  # run after a full-image apply (auto_reboot / --reboot)
//!   tls: {ca_cert: /etc/limiquantix/update-ca.pem,        # extra CAs (docs/agent-tls.md)
//!         client_cert: /etc/limiquantix/update-client.crt, client_key: /etc/limiquantix/update-client.key}
//!   ab: {...}                         # A/B system updates: qx_boot::AbConfig
//!   allow_install_paths: [/opt/vendor]  # system directories releases may replace (see below)
//!   fleet: {enroll_token_file: /etc/limiquantix/fleet-enroll-token,   # docs/spec.md §9
//!           labels: {site: berlin}, enabled: true}
//!   metrics: {textfile: /var/lib/node_exporter/textfile/qx_update.prom}  # docs/host-api.md
//! ```
//!
//! `metrics.textfile` is a file the agent rewrites (atomically) after every check and apply,
//! in the Prometheus text format, for a node exporter's textfile collector: an absolute path
//! whose name ends in `.prom`; unset (the default), no file is written.
//!
//! `allow_install_paths` lists prefixes under which a release may install even where the
//! install path is a denied system directory (`/opt`, `/usr/local`, …:
//! `qx_core::manifest::DENIED_INSTALL_PATHS`); empty by default. It never allows the agent's
//! own configuration, trust, state or log paths.
//!
//! Every host path (key files, TLS files, token file, pidfile, log) is resolved under the
//! root prefix given to [`Config::resolve`] (`--root`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qx_core::fs::under_root;
use qx_core::{parse_rate, parse_size, ChannelName, ProductName, TrustedKeys};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration {path}: {message}")]
    Syntax {
        path: PathBuf,
        message: String,
        /// The 1-based line the parser stopped at.
        line: Option<usize>,
    },
    #[error("configuration {path}: there is no `updates:` section")]
    NoUpdatesSection { path: PathBuf },
    #[error("configuration {path}: updates.{key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A file that decides what runs as root or what is trusted, writable by someone else.
    #[error("{what} {path}: {problem}; refused")]
    Insecure {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
}

/// Refuses `path` (`what` names it in the message) when another user could change it:
/// writable by group or others, or owned by a user other than root (or the user the agent
/// runs as). The configuration names commands run as root; the trusted keys decide which
/// releases are installed; the API token starts them. Symbolic links are followed (the file
/// read is the one checked).
pub fn refuse_if_writable_by_others(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    let us = rustix::process::geteuid().as_raw();
    let shown = crate::untrusted::printable(&path.display().to_string());
    let problem = if mode & 0o022 != 0 {
        format!("has mode {mode:04o} and is writable by group or others; run `chmod go-w {shown}`")
    } else if meta.uid() != 0 && meta.uid() != us {
        format!(
            "is owned by uid {} instead of root; run `chown root {shown}` (and check what it contains)",
            meta.uid()
        )
    } else {
        return Ok(());
    };
    Err(ConfigError::Insecure {
        what,
        path: path.to_owned(),
        problem,
    })
}

/// The `updates:` section, typed and validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub source: PathBuf,
    /// The root prefix every host path of this configuration was resolved under (`--root`).
    pub root: PathBuf,
    pub enabled: bool,
    /// Base URL of the update server, without a trailing slash.
    pub server_url: String,
    pub channel: ChannelName,
    pub check_interval: Duration,
    pub auto_apply: bool,
    pub auto_reboot: bool,
    pub product: ProductName,
    /// The configured entries as written (key lines or file paths).
    pub trusted_key_entries: Vec<String>,
    /// Loaded by [`Config::resolve`] (file entries are read under the root).
    pub trusted_keys: TrustedKeys,
    pub maintenance_window: Option<crate::daemon::MaintenanceWindow>,
    /// Bytes per second.
    pub bandwidth_limit: Option<u64>,
    pub download: DownloadSettings,
    pub api: ApiConfig,
    pub service_manager: ServiceManagerKind,
    /// argv template for `command`; `{service}` is replaced by the service name.
    pub restart_command: Option<Vec<String>>,
    /// argv template printing a service's main pid; `{service}` is replaced.
    pub pid_command: Option<Vec<String>>,
    /// Host path template of a service's pidfile; `{service}` is replaced.
    pub pidfile: String,
    /// How long effect verification waits for a restarted service to run the new file.
    pub verify_timeout: Duration,
    pub max_unpacked_bytes: u64,
    pub keep_backups: usize,
    /// Host path of the update log.
    pub log_path: PathBuf,
    /// argv run to reboot after a full-image apply (with `auto_reboot` or `apply --reboot`).
    pub reboot_command: Vec<String>,
    /// The A/B part (`updates.ab`); the defaults when absent.
    pub ab: qx_boot::AbConfig,
    /// `updates.tls`: extra CAs and the client certificate for the update server.
    pub tls: crate::client_tls::ClientTls,

    /// `updates.allow_install_paths`: prefixes under which a release may replace a denied
    /// system directory (never the agent's own paths); empty by default.
    pub allow_install_paths: Vec<qx_core::InstallPath>,
    /// `updates.fleet`: enrollment and reports to the update server's fleet API.
    pub fleet: FleetConfig,
    /// `updates.metrics.textfile`, resolved under the root: the agent's metrics file.
    pub metrics_textfile: Option<PathBuf>,
}

/// `updates.fleet` (docs/spec.md §9). Reporting is on when `enabled` (the default) and the
/// host has an identity for the configured server or `enroll_token_file` is set (then the
/// agent enrolls by itself on its first check).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetConfig {
    /// `false` stops enrollment, check-ins and event reports (updates go on).
    pub enabled: bool,
    /// The file holding the enrollment token, resolved under the root; refused when another
    /// user could change it.
    pub enroll_token_file: Option<PathBuf>,
    /// The host's own labels, sent with the enrollment and every check-in.
    pub labels: qx_core::fleet::Labels,
}

/// Retry and timeout policy of downloads (maps onto `download::DownloadOptions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadSettings {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub connect_timeout: Duration,
    pub stall_timeout: Duration,

    // Deadlines against a server that drips bytes just inside the stall timeout.
    /// The whole fetch of a small document (manifest, channel state, signature), retries
    /// included.
    pub document_deadline: Duration,
    /// Bytes per second an artifact download must average over each `min_rate_window`
    /// (0: no minimum).
    pub min_rate: u64,
    pub min_rate_window: Duration,
    /// Hosts (`host` or `host:port`) the server's redirects may lead to over plain HTTP (a
    /// redirect to `https://` or to the server's own host and port is followed anyway).
    pub redirect_hosts: Vec<String>,
}

impl Default for DownloadSettings {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),

            document_deadline: Duration::from_secs(60),
            min_rate: 1024,
            min_rate_window: Duration::from_secs(60),
            redirect_hosts: Vec::new(),
        }
    }
}

/// The local HTTPS API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Host paths; `None` = a self-signed certificate generated on first start.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub token_file: PathBuf,
    /// `api.header_read_timeout`, `idle_timeout`, `tls_handshake_timeout`,
    /// `max_connections`, `max_connections_per_client`, `body_read_timeout`, `body_min_rate`.
    pub limits: qx_core::listener::ConnectionLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceManagerKind {
    Openrc,
    Systemd,
    Command,
}

// ---------------------------------------------------------------------------------------------
// Raw YAML shape.

#[derive(Deserialize)]
struct RawFile {
    updates: Option<RawUpdates>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpdates {
    #[serde(default = "yes")]
    enabled: bool,
    server_url: Option<String>,
    channel: Option<String>,
    check_interval: Option<String>,
    #[serde(default)]
    auto_apply: bool,
    #[serde(default)]
    auto_reboot: bool,
    product: Option<String>,
    #[serde(default)]
    trusted_keys: Vec<String>,
    maintenance_window: Option<String>,
    bandwidth_limit: Option<String>,
    download: Option<RawDownload>,
    api: Option<RawApi>,
    service_manager: Option<ServiceManagerKind>,
    restart_command: Option<Vec<String>>,
    pid_command: Option<Vec<String>>,
    pidfile: Option<String>,
    verify_timeout: Option<String>,
    max_unpacked_bytes: Option<RawSize>,
    keep_backups: Option<usize>,
    log_path: Option<PathBuf>,
    reboot_command: Option<Vec<String>>,
    ab: Option<serde_yaml_ng::Value>,
    tls: Option<RawTls>,

    #[serde(default)]
    allow_install_paths: Vec<String>,
    fleet: Option<RawFleet>,
    metrics: Option<RawMetrics>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    textfile: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    #[serde(default = "yes")]
    enabled: bool,
    enroll_token_file: Option<PathBuf>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_cert: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDownload {
    max_attempts: Option<u32>,
    initial_backoff: Option<String>,
    max_backoff: Option<String>,
    connect_timeout: Option<String>,
    stall_timeout: Option<String>,

    document_deadline: Option<String>,
    min_rate: Option<String>,
    min_rate_window: Option<String>,
    redirect_hosts: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    token_file: Option<PathBuf>,
    // The connection limits (docs/host-api.md); an absent key keeps its default.
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    tls_handshake_timeout: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    body_read_timeout: Option<String>,
    body_min_rate: Option<String>,
}

fn yes() -> bool {
    true
}

pub const DEFAULT_CONFIG_PATH: &str = "/etc/limiquantix/node.yaml";

impl Config {
    /// The URLs of the configured update server.
    pub fn server(&self) -> qx_core::api::ServerUrl {
        qx_core::api::ServerUrl::new(&self.server_url)
    }

    /// Reads and validates `path` (a path on this machine, already resolved). Trusted key
    /// files are resolved under `/`; use [`Config::load_under`] for a root prefix.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_under(path, Path::new("/"))
    }

    /// A parser error in words; an unknown key gets the nearest known one as a suggestion
    /// instead of the whole list.
    fn syntax_message(e: &serde_yaml_ng::Error) -> String {
        let text = e.to_string();
        let Some((head, rest)) = text.split_once("unknown field `") else {
            return text;
        };
        let Some((unknown, rest)) = rest.split_once('`') else {
            return text;
        };
        let known: Vec<&str> = rest
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .split('`')
            .skip(1)
            .step_by(2)
            .collect();
        let place = rest
            .rfind(" at line ")
            .map(|i| &rest[i..])
            .unwrap_or_default();
        match crate::config_check::did_you_mean(unknown, &known) {
            Some(k) => format!("{head}unknown key `{unknown}`{place}; did you mean `{k}`?"),
            None => {
                let keys: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
                format!(
                    "{head}unknown key `{unknown}`{place}; the keys here are {}",
                    keys.join(", ")
                )
            }
        }
    }

    /// Reads `path` and resolves every host path it names under `root`.
    pub fn load_under(path: &Path, root: &Path) -> Result<Config, ConfigError> {
        refuse_if_writable_by_others("configuration", path)?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, root)
    }

    /// Parses YAML text; `source` only names the file in messages.
    pub fn parse(text: &str, source: &Path, root: &Path) -> Result<Config, ConfigError> {
        let raw: RawFile = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Syntax {
            path: source.to_owned(),
            message: Self::syntax_message(&e),
            line: e.location().map(|l| l.line()),
        })?;
        let mut raw = raw.updates.ok_or_else(|| ConfigError::NoUpdatesSection {
            path: source.to_owned(),
        })?;
        let at = Keys { source };
        let server_url = at.server_url(raw.server_url.take())?;
        let (product, channel) = at.product_and_channel(&mut raw)?;
        let check_interval = at.check_interval(&raw)?;
        let trusted_keys = at.trusted_keys(&raw.trusted_keys, root)?;
        let maintenance_window = raw
            .maintenance_window
            .as_deref()
            .map(crate::daemon::MaintenanceWindow::parse)
            .transpose()
            .map_err(|m| at.invalid("maintenance_window", m))?;
        let bandwidth_limit = raw
            .bandwidth_limit
            .as_deref()
            .map(bytes_per_second)
            .transpose()
            .map_err(|e| at.invalid("bandwidth_limit", e.to_string()))?;
        let download = at.download(raw.download.take())?;
        let api = at.api(raw.api.take(), root)?;
        let tls = at.tls(raw.tls.take(), root)?;
        let ab = at.commands_and_ab(&mut raw)?;
        let (service_manager, pidfile) = at.service_manager(&mut raw)?;
        let verify_timeout = at.duration(
            "verify_timeout",
            &raw.verify_timeout,
            Duration::from_secs(10),
        )?;
        let max_unpacked_bytes = at.max_unpacked_bytes(raw.max_unpacked_bytes.take())?;
        let allow_install_paths =
            at.allow_install_paths(std::mem::take(&mut raw.allow_install_paths))?;
        let fleet = at.fleet(raw.fleet.take(), root)?;
        let metrics_textfile = at.metrics_textfile(raw.metrics.take(), root)?;
        let log_path = under_root(
            root,
            &raw.log_path
                .unwrap_or_else(|| PathBuf::from(qx_core::update_log::DEFAULT_UPDATE_LOG)),
        );
        Ok(Config {
            source: source.to_owned(),
            root: root.to_owned(),
            enabled: raw.enabled,
            server_url,
            channel,
            check_interval,
            auto_apply: raw.auto_apply,
            auto_reboot: raw.auto_reboot,
            product,
            trusted_key_entries: raw.trusted_keys,
            trusted_keys,
            maintenance_window,
            bandwidth_limit,
            download,
            api,
            service_manager,
            restart_command: raw.restart_command,
            pid_command: raw.pid_command,
            pidfile,
            verify_timeout,
            max_unpacked_bytes,
            keep_backups: raw.keep_backups.unwrap_or(3),
            log_path,
            reboot_command: raw
                .reboot_command
                .unwrap_or_else(|| vec!["/sbin/reboot".to_owned()]),
            ab,
            tls,
            allow_install_paths,
            fleet,
            metrics_textfile,
        })
    }
}

/// Reads the keys of one configuration file, naming the file and the key in every error.
struct Keys<'a> {
    source: &'a Path,
}

impl Keys<'_> {
    /// `fleet`: the token file under `root` (checked now when it exists: it must not be
    /// changeable by another user) and the labels, within the fleet protocol's bounds.
    fn fleet(&self, raw: Option<RawFleet>, root: &Path) -> Result<FleetConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(FleetConfig {
                enabled: true,
                ..FleetConfig::default()
            });
        };
        let enroll_token_file = raw.enroll_token_file.map(|p| under_root(root, &p));
        if let Some(file) = enroll_token_file.as_deref().filter(|f| f.exists()) {
            refuse_if_writable_by_others("fleet enrollment token file", file)?;
        }
        use qx_core::fleet::{MAX_LABELS, MAX_LABEL_KEY, MAX_LABEL_VALUE};
        if raw.labels.len() > MAX_LABELS {
            return Err(self.invalid(
                "fleet.labels",
                format!("{} labels; at most {MAX_LABELS}", raw.labels.len()),
            ));
        }
        for (k, v) in &raw.labels {
            let key_ok = !k.is_empty()
                && k.len() <= MAX_LABEL_KEY
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
            if !key_ok {
                return Err(self.invalid(
                    "fleet.labels",
                    format!("label key {k:?}: 1 to {MAX_LABEL_KEY} letters, digits, '-', '_', '.' or '/'"),
                ));
            }
            if v.len() > MAX_LABEL_VALUE || v.chars().any(char::is_control) {
                return Err(self.invalid(
                    "fleet.labels",
                    format!("label {k}: the value must be at most {MAX_LABEL_VALUE} bytes without control characters"),
                ));
            }
        }
        Ok(FleetConfig {
            enabled: raw.enabled,
            enroll_token_file,
            labels: raw.labels,
        })
    }

    /// `allow_install_paths`: each an absolute, normalised install path.
    fn allow_install_paths(
        &self,
        raw: Vec<String>,
    ) -> Result<Vec<qx_core::InstallPath>, ConfigError> {
        raw.into_iter()
            .map(|p| {
                qx_core::InstallPath::new(p.clone()).map_err(|e| {
                    self.invalid(
                        "allow_install_paths",
                        format!("{p:?}: {e}; write an absolute path such as /opt/vendor"),
                    )
                })
            })
            .collect()
    }

    /// `product` (default `quantix-os`) and `channel` (default `stable`).
    fn product_and_channel(
        &self,
        raw: &mut RawUpdates,
    ) -> Result<(ProductName, ChannelName), ConfigError> {
        let channel = raw
            .channel
            .take()
            .unwrap_or_else(|| qx_core::api::DEFAULT_CHANNEL.into());
        let channel =
            ChannelName::new(channel).map_err(|e| self.invalid("channel", e.to_string()))?;
        let product = ProductName::new(raw.product.take().unwrap_or_else(|| "quantix-os".into()))
            .map_err(|e| self.invalid("product", e.to_string()))?;
        Ok((product, channel))
    }

    /// `check_interval` (default 1h), never zero.
    fn check_interval(&self, raw: &RawUpdates) -> Result<Duration, ConfigError> {
        let every = self.duration(
            "check_interval",
            &raw.check_interval,
            Duration::from_secs(3600),
        )?;
        if every.is_zero() {
            return Err(self.invalid("check_interval", "must be longer than 0s".into()));
        }
        Ok(every)
    }

    /// `service_manager` (default `openrc`; `command` needs `restart_command`) and
    /// `pidfile` (an absolute host path with `{service}`, default `/run/{service}.pid`).
    fn service_manager(
        &self,
        raw: &mut RawUpdates,
    ) -> Result<(ServiceManagerKind, String), ConfigError> {
        let kind = raw.service_manager.unwrap_or(ServiceManagerKind::Openrc);
        if kind == ServiceManagerKind::Command && raw.restart_command.is_none() {
            return Err(self.invalid(
                "restart_command",
                "service_manager `command` needs restart_command, e.g. [\"/usr/local/bin/restart\", \"{service}\"]".into(),
            ));
        }
        let pidfile = raw
            .pidfile
            .take()
            .unwrap_or_else(|| "/run/{service}.pid".into());
        if !pidfile.starts_with('/') {
            return Err(self.invalid(
                "pidfile",
                format!("{pidfile:?} must be an absolute host path"),
            ));
        }
        Ok((kind, pidfile))
    }

    /// `max_unpacked_bytes`: a number or a size string (default 4 GiB).
    fn max_unpacked_bytes(&self, raw: Option<RawSize>) -> Result<u64, ConfigError> {
        match raw {
            None => Ok(4 << 30),
            Some(RawSize::Number(n)) => Ok(n),
            Some(RawSize::Text(t)) => {
                parse_size(&t).map_err(|e| self.invalid("max_unpacked_bytes", e.to_string()))
            }
        }
    }
}

impl Keys<'_> {
    fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.to_owned(),
            key: key.to_owned(),
            message,
        }
    }

    /// A duration such as `30s` or `1h`; `default` when absent.
    fn duration(
        &self,
        key: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(s) => humantime::parse_duration(s.trim()).map_err(|e| {
                self.invalid(
                    key,
                    format!("{s:?} is not a duration such as \"30s\", \"1h\": {e}"),
                )
            }),
        }
    }

    /// `server_url`: required, http(s) with a host; kept without a trailing slash.
    fn server_url(&self, value: Option<String>) -> Result<String, ConfigError> {
        let server_url = value.ok_or_else(|| {
            self.invalid(
                "server_url",
                "is required (e.g. \"https://updates.example:9000\")".into(),
            )
        })?;
        let url = reqwest::Url::parse(&server_url).map_err(|e| {
            self.invalid(
                "server_url",
                format!(
                    "{:?} is not a URL: {e}",
                    crate::download::redact_credentials(&server_url)
                ),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(self.invalid(
                "server_url",
                format!(
                    "{:?} must be an http:// or https:// URL with a host",
                    crate::download::redact_credentials(&server_url)
                ),
            ));
        }
        Ok(server_url.trim_end_matches('/').to_owned())
    }

    /// `trusted_keys`: at least one; a key line, or a `.pub` file read under `root`.
    fn trusted_keys(&self, entries: &[String], root: &Path) -> Result<TrustedKeys, ConfigError> {
        if entries.is_empty() {
            return Err(self.invalid(
                "trusted_keys",
                "no trusted public keys are configured; add the publisher's minisign public key (its base64 line or the path of its .pub file)".into(),
            ));
        }
        let mut trusted_keys = TrustedKeys::new();
        for (i, entry) in entries.iter().enumerate() {
            let e = entry.trim();
            let added = if e.starts_with('/') || e.starts_with('.') {
                let file = under_root(root, Path::new(e));
                if file.exists() {
                    refuse_if_writable_by_others("trusted key file", &file)?;
                }
                trusted_keys.add_file(&file)
            } else {
                trusted_keys.add(e)
            };
            added.map_err(|err| self.invalid(&format!("trusted_keys[{i}]"), err.to_string()))?;
        }
        Ok(trusted_keys)
    }

    /// `download`: the defaults for every key left out.
    fn download(&self, raw: Option<RawDownload>) -> Result<DownloadSettings, ConfigError> {
        let d = DownloadSettings::default();
        let Some(r) = raw else {
            return Ok(d);
        };
        let s = DownloadSettings {
            max_attempts: r.max_attempts.unwrap_or(d.max_attempts),
            initial_backoff: self.duration(
                "download.initial_backoff",
                &r.initial_backoff,
                d.initial_backoff,
            )?,
            max_backoff: self.duration("download.max_backoff", &r.max_backoff, d.max_backoff)?,
            connect_timeout: self.duration(
                "download.connect_timeout",
                &r.connect_timeout,
                d.connect_timeout,
            )?,
            stall_timeout: self.duration(
                "download.stall_timeout",
                &r.stall_timeout,
                d.stall_timeout,
            )?,

            document_deadline: self.duration(
                "download.document_deadline",
                &r.document_deadline,
                d.document_deadline,
            )?,
            min_rate: match r.min_rate.as_deref() {
                None => d.min_rate,
                Some(text) => bytes_per_second(text)
                    .map_err(|e| self.invalid("download.min_rate", e.to_string()))?,
            },
            min_rate_window: self.duration(
                "download.min_rate_window",
                &r.min_rate_window,
                d.min_rate_window,
            )?,
            redirect_hosts: self.redirect_hosts(r.redirect_hosts.unwrap_or_default())?,
        };
        if s.max_attempts == 0 {
            return Err(self.invalid("download.max_attempts", "must be at least 1".into()));
        }
        for (key, value) in [
            ("download.document_deadline", s.document_deadline),
            ("download.min_rate_window", s.min_rate_window),
        ] {
            if value.is_zero() {
                return Err(self.invalid(key, "must be longer than 0s".into()));
            }
        }
        Ok(s)
    }

    /// `download.redirect_hosts`: each a host name or address, with an optional port.
    fn redirect_hosts(&self, hosts: Vec<String>) -> Result<Vec<String>, ConfigError> {
        for h in &hosts {
            let parsed = reqwest::Url::parse(&format!("http://{h}/")).ok();
            let plain = parsed.is_some_and(|u| {
                u.username().is_empty()
                    && u.path() == "/"
                    && u.host_str().is_some()
                    && !h.contains(['/', '@', '?', '#'])
            });
            if !plain {
                return Err(self.invalid(
                    "download.redirect_hosts",
                    format!(
                        "{h:?} is not a host or host:port (such as cdn.example or 10.0.0.5:8080)"
                    ),
                ));
            }
        }
        Ok(hosts)
    }

    /// `metrics.textfile`: an absolute path ending in `.prom` (the textfile collector reads
    /// only those), resolved under `root`.
    fn metrics_textfile(
        &self,
        raw: Option<RawMetrics>,
        root: &Path,
    ) -> Result<Option<PathBuf>, ConfigError> {
        let Some(path) = raw.and_then(|m| m.textfile) else {
            return Ok(None);
        };
        let shown = path.display();
        if !path.is_absolute() {
            return Err(self.invalid(
                "metrics.textfile",
                format!("{shown:?} is not an absolute path; name the file in the node exporter's textfile directory, e.g. /var/lib/node_exporter/textfile/qx_update.prom"),
            ));
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        match name {
            Some(n) if n.len() > ".prom".len() && n.ends_with(".prom") => {
                Ok(Some(under_root(root, &path)))
            }
            _ => Err(self.invalid(
                "metrics.textfile",
                format!("{shown:?} does not end in .prom; the textfile collector reads only *.prom files"),
            )),
        }
    }

    /// `api`: the listen address, TLS files (both or neither) and token file under `root`.
    fn api(&self, raw: Option<RawApi>, root: &Path) -> Result<ApiConfig, ConfigError> {
        let raw_api = raw.unwrap_or_default();
        let limits = self.api_limits(&raw_api)?;
        let listen_text = raw_api.listen.unwrap_or_else(|| "0.0.0.0:8443".into());
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            self.invalid(
                "api.listen",
                format!("{listen_text:?} is not an address such as \"0.0.0.0:8443\": {e}"),
            )
        })?;
        if raw_api.tls_cert.is_some() != raw_api.tls_key.is_some() {
            return Err(self.invalid(
                "api",
                "tls_cert and tls_key must be given together (or neither, for a self-signed certificate)".into(),
            ));
        }
        Ok(ApiConfig {
            listen,
            tls_cert: raw_api.tls_cert.map(|p| under_root(root, &p)),
            tls_key: raw_api.tls_key.map(|p| under_root(root, &p)),
            token_file: under_root(
                root,
                &raw_api
                    .token_file
                    .unwrap_or_else(|| PathBuf::from("/etc/limiquantix/update-api-token")),
            ),
            limits,
        })
    }

    /// `api.*` connection limits: durations, counts and a rate, each above zero.
    fn api_limits(&self, r: &RawApi) -> Result<qx_core::listener::ConnectionLimits, ConfigError> {
        let d = qx_core::listener::ConnectionLimits::default();
        let positive = |key: &str, v: Duration| {
            if v.is_zero() {
                Err(self.invalid(key, "must be above zero".into()))
            } else {
                Ok(v)
            }
        };
        let count = |key: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(self.invalid(key, "must be at least 1".into())),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let body_min_rate = match &r.body_min_rate {
            None => d.body_min_rate,
            Some(s) => {
                parse_rate(s).map_err(|e| self.invalid("api.body_min_rate", e.to_string()))?
            }
        };
        Ok(qx_core::listener::ConnectionLimits {
            header_read_timeout: positive(
                "api.header_read_timeout",
                self.duration(
                    "api.header_read_timeout",
                    &r.header_read_timeout,
                    d.header_read_timeout,
                )?,
            )?,
            idle_timeout: positive(
                "api.idle_timeout",
                self.duration("api.idle_timeout", &r.idle_timeout, d.idle_timeout)?,
            )?,
            tls_handshake_timeout: positive(
                "api.tls_handshake_timeout",
                self.duration(
                    "api.tls_handshake_timeout",
                    &r.tls_handshake_timeout,
                    d.tls_handshake_timeout,
                )?,
            )?,
            max_connections: count("api.max_connections", r.max_connections, d.max_connections)?,
            max_connections_per_client: count(
                "api.max_connections_per_client",
                r.max_connections_per_client,
                d.max_connections_per_client,
            )?,
            body_read_timeout: positive(
                "api.body_read_timeout",
                self.duration(
                    "api.body_read_timeout",
                    &r.body_read_timeout,
                    d.body_read_timeout,
                )?,
            )?,
            body_min_rate,
        })
    }

    /// `tls`: the files it names are read under `root` and checked now.
    fn tls(
        &self,
        raw: Option<RawTls>,
        root: &Path,
    ) -> Result<crate::client_tls::ClientTls, ConfigError> {
        let Some(t) = raw else {
            return Ok(Default::default());
        };
        let at = |p: Option<PathBuf>| p.map(|p| under_root(root, &p));
        crate::client_tls::ClientTls::load(at(t.ca_cert), at(t.client_cert), at(t.client_key))
            .map_err(|(key, message)| self.invalid(key, message))
    }

    /// The argv keys (each must name a program) and the A/B section (`updates.ab`).
    fn commands_and_ab(&self, raw: &mut RawUpdates) -> Result<qx_boot::AbConfig, ConfigError> {
        let check_argv = |key: &str, v: &Option<Vec<String>>| match v {
            Some(argv) if argv.is_empty() || argv[0].trim().is_empty() => {
                Err(self.invalid(key, "must name a program (a non-empty argv list)".into()))
            }
            _ => Ok(()),
        };
        check_argv("restart_command", &raw.restart_command)?;
        check_argv("pid_command", &raw.pid_command)?;
        check_argv("reboot_command", &raw.reboot_command)?;
        // Through JSON: the documented shape of a slot (`{device: …}` / `{path: …}`) is a
        // one-key map, which a YAML deserializer reads only as a `!tag`. Unknown keys are
        // refused (AbConfig denies them).
        let ab: qx_boot::AbConfig = match raw.ab.take() {
            None | Some(serde_yaml_ng::Value::Null) => qx_boot::AbConfig::default(),
            Some(v) => serde_json::to_value(&v)
                .and_then(serde_json::from_value)
                .map_err(|e| self.invalid("ab", e.to_string()))?,
        };
        ab.validate()
            .map_err(|e| self.invalid("ab", e.to_string()))?;
        Ok(ab)
    }
}

/// A rate such as `10MiB/s`; a bare size (`1000000`) is bytes per second too.
fn bytes_per_second(text: &str) -> Result<u64, qx_core::SizeError> {
    let t = text.trim();
    if t.ends_with("/s") {
        parse_rate(t)
    } else {
        parse_rate(&format!("{t}/s"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";

    fn parse(body: &str) -> Result<Config, ConfigError> {
        let text = format!("node: {{name: x}}\nupdates:\n  server_url: http://127.0.0.1:9000\n  trusted_keys: [{KEY}]\n{body}");
        Config::parse(&text, Path::new("node.yaml"), Path::new("/r"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("").expect("config");
        assert_eq!(c.channel.as_str(), "stable");
        assert_eq!(c.check_interval, Duration::from_secs(3600));
        assert_eq!(c.api.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.log_path, PathBuf::from("/r/var/log/quantix/update.log"));
        assert_eq!(c.service_manager, ServiceManagerKind::Openrc);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("  chanel: dev\n").expect_err("must fail").to_string();
        assert!(err.contains("chanel"), "{err}");
    }

    #[test]
    fn bad_duration_is_refused() {
        let err = parse("  check_interval: soon\n")
            .expect_err("must fail")
            .to_string();
        assert!(
            err.contains("check_interval") && err.contains("soon"),
            "{err}"
        );
    }

    #[test]
    fn bad_url_is_refused() {
        let text = format!("updates:\n  server_url: 'ftp//x'\n  trusted_keys: [{KEY}]\n");
        let err = Config::parse(&text, Path::new("n"), Path::new("/"))
            .expect_err("fail")
            .to_string();
        assert!(err.contains("server_url"), "{err}");
    }

    #[test]
    fn missing_trusted_keys_are_refused() {
        let text = "updates:\n  server_url: http://x:1\n";
        let err = Config::parse(text, Path::new("n"), Path::new("/"))
            .expect_err("fail")
            .to_string();
        assert!(err.contains("trusted_keys"), "{err}");
    }

    #[test]
    fn bad_window_is_refused() {
        let err = parse("  maintenance_window: 'Sun 25:00-26:00'\n")
            .expect_err("fail")
            .to_string();
        assert!(err.contains("maintenance_window"), "{err}");
    }

    #[test]
    fn command_manager_needs_restart_command() {
        let err = parse("  service_manager: command\n")
            .expect_err("fail")
            .to_string();
        assert!(err.contains("restart_command"), "{err}");
    }

    #[test]
    fn fleet_block_is_optional_and_read_under_the_root() {
        let c = parse("").expect("config");
        assert!(c.fleet.enabled);
        assert_eq!(c.fleet.enroll_token_file, None);
        let c = parse(
            "  fleet:\n    enroll_token_file: /etc/limiquantix/fleet-token\n    labels: {site: berlin, rack: \"4\"}\n",
        )
        .expect("config");
        assert_eq!(
            c.fleet.enroll_token_file,
            Some(PathBuf::from("/r/etc/limiquantix/fleet-token"))
        );
        assert_eq!(c.fleet.labels.get("rack").map(String::as_str), Some("4"));
        let c = parse("  fleet: {enabled: false}\n").expect("config");
        assert!(!c.fleet.enabled);
    }

    #[test]
    fn fleet_bad_keys_and_labels_are_named() {
        let err = parse("  fleet: {enroll_token: x}\n")
            .expect_err("fail")
            .to_string();
        assert!(err.contains("enroll_token"), "{err}");
        let err = parse("  fleet: {labels: {\"a b\": x}}\n")
            .expect_err("fail")
            .to_string();
        assert!(err.contains("fleet.labels") && err.contains("a b"), "{err}");
    }

    #[test]
    fn rate_and_size_parse() {
        assert_eq!(parse_rate("10MiB/s"), Ok(10 << 20));
        assert_eq!(parse_rate("500KB/s"), Ok(500_000));
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
    }

    #[test]
    fn metrics_textfile_is_an_absolute_prom_file_under_the_root() {
        assert_eq!(parse("").expect("config").metrics_textfile, None);
        let c = parse("  metrics: {textfile: /var/lib/node_exporter/textfile/qx_update.prom}\n")
            .expect("config");
        assert_eq!(
            c.metrics_textfile,
            Some(PathBuf::from(
                "/r/var/lib/node_exporter/textfile/qx_update.prom"
            ))
        );
        for (body, says) in [
            (
                "  metrics: {textfile: qx_update.prom}\n",
                "not an absolute path",
            ),
            (
                "  metrics: {textfile: /var/lib/qx.txt}\n",
                "does not end in .prom",
            ),
            (
                "  metrics: {textfile: /var/lib/.prom}\n",
                "does not end in .prom",
            ),
            (
                "  metrics: {text_file: /a.prom}\n",
                "unknown key `text_file` at line 5 column 13; did you mean `textfile`?",
            ),
        ] {
            let e = parse(body).expect_err(body).to_string();
            assert!(e.contains(says), "{body}: {e}");
        }
    }

    #[test]
    fn max_unpacked_bytes_4g_is_4_gib_and_4gb_is_4_billion() {
        let c = parse("  max_unpacked_bytes: 4G\n").expect("config");
        assert_eq!(c.max_unpacked_bytes, 4 << 30);
        let c = parse("  max_unpacked_bytes: 4GB\n").expect("config");
        assert_eq!(c.max_unpacked_bytes, 4_000_000_000);
        let c = parse("  bandwidth_limit: 1M/s\n").expect("config");
        assert_eq!(c.bandwidth_limit, Some(1 << 20));
    }
}
