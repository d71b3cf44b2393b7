//! Starting and stopping the server: storage recovery, TLS, the listener, graceful shutdown.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ReleaseStoreConfig;
use crate::config::{Config, ConfigError, FleetConfig, FleetDatabase, TlsFiles};
use crate::fleet::clock::{Clock, SystemClock};
use crate::fleet::store::FleetStore;
use crate::protocol_errors::JsonErrorsAcceptor;
use crate::routes::router;
use crate::state::{App, Fleet};
use crate::storage::local::LocalStore;
use crate::storage::lock::WriteLocks;
use crate::storage::object::ObjectReleaseStore;
use crate::storage::{AnyStore, ReleaseStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("release storage: {0}")]
    Store(#[from] StoreError),
    #[error("TLS file {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("the server stopped with an error: {0}")]
    Serve(std::io::Error),
    #[error("fleet store {target}: {reason}")]
    Fleet { target: String, reason: String },
}

/// Loads the certificate chain and key into a rustls configuration (HTTP/2 and HTTP/1.1);
/// with `client_ca` (`TLS_CLIENT_CA`), every connection must present a client certificate
/// signed by one of its CAs.
pub fn load_tls(
    files: &TlsFiles,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, ServerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServerError::Tls {
            path: files.cert.clone(),
            reason: format!("cannot read a PEM certificate chain: {e}"),
        })?;
    if certs.is_empty() {
        return Err(ServerError::Tls {
            path: files.cert.clone(),
            reason: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| ServerError::Tls {
        path: files.key.clone(),
        reason: format!("cannot read a PEM private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls {
            path: files.key.clone(),
            reason: format!("the certificate and key do not form a usable pair: {e}"),
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The verifier of `TLS_CLIENT_CA`: a client certificate signed by one of its CAs is required.
fn client_verifier(
    ca: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, ServerError> {
    let fail = |reason: String| ServerError::Tls {
        path: ca.to_owned(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            fail(format!(
                "TLS_CLIENT_CA: cannot read PEM CA certificates: {e}"
            ))
        })?;
    if certs.is_empty() {
        return Err(fail("TLS_CLIENT_CA: no certificate in the file".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| fail(format!("TLS_CLIENT_CA: not a usable CA certificate: {e}")))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| fail(format!("TLS_CLIENT_CA: {e}")))
}

/// A server ready to run: TLS loaded, storage opened and recovered.
pub struct Prepared {
    tls: Option<rustls::ServerConfig>,
    app: Arc<App<AnyStore>>,
}

/// Opens the fleet store the configuration names (creating the SQLite file's directory)
/// and brings its schema up to date.
pub async fn open_fleet(config: &FleetConfig) -> Result<Arc<dyn FleetStore>, ServerError> {
    let target = match &config.database {
        FleetDatabase::Postgres(url) => url.clone(),
        FleetDatabase::Sqlite(path) => {
            let fail = |reason: String| ServerError::Fleet {
                target: path.display().to_string(),
                reason,
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    fail(format!(
                        "cannot create its directory: {e}; set FLEET_DB to a writable place"
                    ))
                })?;
            }
            path.to_str()
                .ok_or_else(|| fail("the path is not UTF-8; set FLEET_DB to a UTF-8 path".into()))?
                .to_owned()
        }
    };
    crate::fleet::connect(&target)
        .await
        .map_err(|e| ServerError::Fleet {
            target: crate::config::redact_url(&target),
            reason: e.to_string(),
        })
}

/// Opens the release store `RELEASE_STORE` names; an object store's writes are locked through
/// the fleet database (shared by every server when it is PostgreSQL).
async fn open_store(config: &Config, fleet: &Arc<dyn FleetStore>) -> Result<AnyStore, ServerError> {
    Ok(match &config.release_store {
        ReleaseStoreConfig::Local => AnyStore::Local(LocalStore::new(&config.release_dir)?),
        ReleaseStoreConfig::Object(object) => {
            let locks = WriteLocks::shared(fleet.clone());
            AnyStore::Object(ObjectReleaseStore::open(object, locks).await?)
        }
    })
}

/// Opens the release store (removing leftover uploads from staging: crash recovery) and
/// loads TLS, so that every configuration error shows before the first request.
pub async fn prepare(config: Config) -> Result<Prepared, ServerError> {
    prepare_with_clock(config, Arc::new(SystemClock)).await
}

/// [`prepare`] with the fleet view's clock given (tests set the time).
pub async fn prepare_with_clock(
    config: Config,
    clock: Arc<dyn Clock>,
) -> Result<Prepared, ServerError> {
    let tls = match &config.tls {
        Some(files) => Some(load_tls(files, config.tls_client_ca.as_deref())?),
        None => None,
    };
    let fleet_store = open_fleet(&config.fleet).await?;
    let store = open_store(&config, &fleet_store).await?;
    let removed = store.recover().await?;
    if removed > 0 {
        tracing::warn!(
            count = removed,
            "removed unfinished uploads left in staging by an earlier run"
        );
    }
    if config.token_is_default {
        tracing::warn!(
            "PUBLISH_TOKEN is not set: the default token {:?} is in use; anyone who knows it can publish and administer the fleet. Set PUBLISH_TOKEN to a long random secret",
            crate::config::DEFAULT_TOKEN
        );
    }
    let fleet = Fleet::new(fleet_store, clock, &config.fleet);
    Ok(Prepared {
        tls,
        app: Arc::new(App::new(store, config, fleet)),
    })
}

impl Prepared {
    /// True when the server speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The rollout engine (tests tick it with their clock's time).
    pub fn rollouts(&self) -> Arc<crate::fleet::rollout::Rollouts> {
        self.app.rollouts.clone()
    }

    /// Serves the API on `listener` until `shutdown` completes (then lets requests in flight
    /// finish for up to 10 s).
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Prepared { tls, app: state } = self;
        let config = &state.config;
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        listener
            .set_nonblocking(true)
            .map_err(|source| ServerError::Listen {
                addr: addr.clone(),
                source,
            })?;
        tracing::info!(
            addr = %addr,
            releases = %config.release_store_display(),
            tls = tls.is_some(),
            channels = %config.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(","),
            fleet = ?config.fleet.database,
            "qx-update-server listening"
        );
        let limiter = qx_core::listener::Limiter::new(config.limits);
        let app = router(state.clone());
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        let ticker = state.rollouts.clone();
        tokio::spawn(ticker.run(state.fleet.stopping()));
        if let AnyStore::Object(store) = &state.store {
            let every = (store.sweep_age() / 2).clamp(Duration::from_secs(1), SWEEP_EVERY);
            tokio::spawn(sweep_every(store.clone(), every, state.fleet.stopping()));
        }
        tokio::spawn(async move {
            shutdown.await;
            state.fleet.stop_streams();
            stopper.graceful_shutdown(Some(Duration::from_secs(10)));
        });
        // One single-threaded runtime per core, each accepting on the same listening socket
        // and serving its connections itself: no cross-thread wake-ups per request (a single
        // multi-threaded runtime served 0.6-0.7x the manifest requests per second of the
        // reference web server; see BENCHMARKS.md).
        let worker = Worker {
            handle,
            app,
            limiter,
            rustls: tls
                .map(|cfg| axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(cfg))),
        };
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut done = Vec::with_capacity(workers);
        for i in 0..workers {
            let listener = listener.try_clone().map_err(ServerError::Serve)?;
            done.push(worker.clone().spawn(i, listener)?);
        }
        drop(listener);
        let mut result = Ok(());
        for rx in done {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(std::io::Error::other("a server thread stopped abruptly")),
            }
        }
        result.map_err(ServerError::Serve)
    }
}

/// How often at most a server on an object store sweeps it (besides at start): every half
/// `STAGING_SWEEP_AGE`, at least every second, at most every hour.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Sweeps the object store every `every` until `stopping` completes; a failed sweep is logged
/// and tried again next time.
async fn sweep_every(
    store: ObjectReleaseStore,
    every: Duration,
    stopping: impl Future<Output = ()> + Send,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await; // the first tick is now: the start already swept
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            _ = &mut stopping => return,
            _ = ticks.tick() => match store.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "swept unfinished uploads and releases"),
                Err(e) => tracing::warn!(error = %e, "the sweep of the object store failed; trying again later"),
            },
        }
    }
}

/// What each serving thread needs: the shutdown handle, the router, the connection limits
/// (shared counts: the caps hold across threads) and the TLS settings.
#[derive(Clone)]
struct Worker {
    handle: axum_server::Handle,
    app: axum::Router,
    limiter: qx_core::listener::Limiter,
    rustls: Option<axum_server::tls_rustls::RustlsConfig>,
}

impl Worker {
    /// Starts thread `qx-http-<i>` with its own single-threaded runtime serving `listener`;
    /// the receiver gets how the thread's serving ended.
    fn spawn(
        self,
        i: usize,
        listener: TcpListener,
    ) -> Result<tokio::sync::oneshot::Receiver<std::io::Result<()>>, ServerError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("qx-http-{i}"))
            .spawn(move || {
                let res = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| rt.block_on(self.serve(listener)));
                let _ = tx.send(res);
            })
            .map_err(ServerError::Serve)?;
        Ok(rx)
    }

    /// Serves `listener` (HTTPS when TLS is configured) under the connection limits until the
    /// handle shuts it down.
    async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let service = self.app.into_make_service();
        match self.rustls {
            Some(cfg) => {
                self.limiter
                    .tls(listener, cfg)
                    .map(JsonErrorsAcceptor)
                    .handle(self.handle)
                    .serve(service)
                    .await
            }
            None => {
                self.limiter
                    .plain(listener)
                    .map(JsonErrorsAcceptor)
                    .handle(self.handle)
                    .serve(service)
                    .await
            }
        }
    }
}

/// [`prepare`] then [`Prepared::run`].
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    prepare(config).await?.run(listener, shutdown).await
}

/// Completes on SIGTERM or Ctrl-C (SIGINT). The handlers are installed when this is called,
/// not when the future is first polled: the future is only polled by a task spawned once the
/// server runs, and a SIGTERM arriving before that (e.g. a stop right after the start, while
/// `/health` already answers) must stop the server cleanly rather than kill it. Must be
/// called within the runtime.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        match signals {
            (Some(mut term), Some(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            (Some(mut term), None) => {
                term.recv().await;
            }
            (None, Some(mut int)) => {
                int.recv().await;
            }
            (None, None) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down");
    }
}

/// Refuses to serve with the built-in default token anywhere but on a loopback address:
/// anyone who reads the documentation could publish and administer the fleet.
pub fn check_token_exposure(config: &Config) -> Result<(), String> {
    if config.token_is_default && !config.listen_addr.ip().is_loopback() {
        return Err(format!(
            "PUBLISH_TOKEN is not set (or is the documented default) and the server would listen on {}, beyond this machine; set PUBLISH_TOKEN or PUBLISH_TOKEN_FILE to a long random secret, or LISTEN_ADDR to a loopback address to try it out",
            config.listen_addr
        ));
    }
    Ok(())
}

/// The whole program `qx-update-server`: configuration from the environment, then serve until
/// SIGTERM or Ctrl-C. Exit codes: 0 stopped cleanly, 1 failed while running, 2 bad
/// configuration (environment, TLS files).
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qx-update-server: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(files) = &config.tls {
        if let Err(e) = load_tls(files, config.tls_client_ca.as_deref()) {
            eprintln!("qx-update-server: {e}");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = check_token_exposure(&config) {
        eprintln!("qx-update-server: {e}");
        return ExitCode::from(2);
    }
    let listener = match TcpListener::bind(config.listen_addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "qx-update-server: cannot listen on {}: {e}",
                config.listen_addr
            );
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("qx-update-server: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let shutdown = {
        let _in_runtime = runtime.enter();
        shutdown_signal()
    };
    match runtime.block_on(serve(config, listener, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qx-update-server: {e}");
            ExitCode::from(1)
        }
    }
}
