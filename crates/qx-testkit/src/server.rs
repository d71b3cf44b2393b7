//! A real update server on a free loopback port, running in-process on its own thread and
//! runtime, so that blocking and async tests alike can use it. It stops when dropped. Its
//! fleet store is the configuration's (SQLite under the release directory by default, or a
//! PostgreSQL `DATABASE_URL`).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context};
use qx_core::api::ServerUrl;
use qx_server::config::ReleaseStoreConfig;
use qx_server::fleet::clock::{Clock, SystemClock};
use qx_server::fleet::rollout::Rollouts;
use qx_server::Config;

/// A running `qx-update-server` on `127.0.0.1:<port>`.
pub struct TestServer {
    /// Where its releases are: the release directory or an object store.
    stored: crate::stored::Stored,
    url: String,
    addr: SocketAddr,
    release_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    rollouts: Arc<Rollouts>,
}

impl TestServer {
    /// Starts a server over `release_dir` accepting `token` for publishes.
    pub fn start(release_dir: &Path, token: &str) -> anyhow::Result<Self> {
        let mut config = Config::new(release_dir);
        config.publish_token = token.to_owned();
        config.token_is_default = token == qx_server::config::DEFAULT_TOKEN;
        Self::start_with(config)
    }

    /// Starts a server with a full configuration; its `listen_addr` is replaced by a free
    /// loopback port.
    pub fn start_with(config: Config) -> anyhow::Result<Self> {
        Self::start_with_clock(config, Arc::new(SystemClock))
    }

    /// [`Self::start_with`] with the fleet view's clock given: a
    /// [`qx_server::fleet::clock::ManualClock`] lets a test set "now" for liveness, expiry,
    /// `last_checkin` and the rate limit.
    ///
    /// With `QX_TEST_STORE=garage`, a server configured for the local store keeps its releases
    /// in this process's Garage store instead, under a prefix of its own
    /// ([`crate::garage::shared`]): how the whole server suite runs on both backends.
    pub fn start_with_clock(mut config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        if crate::garage::selected() && config.release_store == ReleaseStoreConfig::Local {
            let prefix = crate::garage::prefix_for(&config.release_dir);
            config.release_store =
                ReleaseStoreConfig::Object(crate::garage::shared().config(&prefix, 0));
        }
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let release_dir = config.release_dir.clone();
        let stored = crate::stored::Stored::of(&config);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(bool, Arc<Rollouts>), String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("qx-update-server-{}", addr.port()))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start a runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let prepared = match qx_server::server::prepare_with_clock(config, clock).await
                    {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok((prepared.is_tls(), prepared.rollouts())));
                    let stop = async move {
                        let _ = stop_rx.await;
                    };
                    if let Err(e) = prepared.run(listener, stop).await {
                        eprintln!("test server on {addr} stopped with an error: {e}");
                    }
                });
            })
            .context("spawning the server thread")?;
        let (tls, rollouts) = ready_rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|e| anyhow!("the test server did not start: {e}"))?
            .map_err(|e| anyhow!("the test server did not start: {e}"))?;
        let scheme = if tls { "https" } else { "http" };
        Ok(Self {
            stored,
            url: format!("{scheme}://127.0.0.1:{}", addr.port()),
            addr,
            release_dir,
            stop: Some(stop_tx),
            thread: Some(thread),
            rollouts,
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's URLs (routes of `qx_core::api`).
    pub fn api(&self) -> ServerUrl {
        ServerUrl::new(&self.url)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn release_dir(&self) -> &Path {
        &self.release_dir
    }

    /// The server's stored releases, whichever backend holds them: tests read, damage and
    /// list them through this.
    pub fn stored(&self) -> &crate::stored::Stored {
        &self.stored
    }

    /// The server's rollout engine: a test ticks it with its injected clock's time.
    pub fn rollouts(&self) -> Arc<Rollouts> {
        self.rollouts.clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
