//! Connection limits shared by every HTTP listener (the update server and the host daemon's
//! API): one home for how a connection is admitted, timed out and its request bodies paced.
//!
//! - **Caps**: at most `max_connections` open connections, at most `max_connections_per_client`
//!   from one client address; a connection over a cap is closed at once, before TLS, so one
//!   client cannot use up the process's file descriptors and `/health` keeps answering.
//! - **TLS handshake timeout**: a handshake not finished within `tls_handshake_timeout` is
//!   dropped.
//! - **Header-read timeout**: an HTTP/1 request head not complete within
//!   `header_read_timeout` closes the connection (half-sent headers, however slowly dripped).
//! - **Idle timeout**: a connection on which no byte moved either way for `idle_timeout`, and
//!   no request is being handled, is closed. Progress counts, so a long download whose bytes
//!   keep moving is never cut, and neither is a request whose handler is still working; a
//!   long-lived stream (server-sent events) must send something more often than this.
//! - **Body pace**: a request body must deliver at least `body_min_rate` bytes per second
//!   over each `body_read_timeout` window while the handler waits for it; a body slower than
//!   that (a drip-fed upload, or one that never comes) fails with [`BodyTooSlow`], which the
//!   handler answers 408.
//! - **Descriptors**: building a [`Limiter`] raises the process's open-file limit to its hard
//!   limit (a service's soft limit is often 1,024) and warns when `max_connections` does not
//!   fit under it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Every connection limit of a listener; [`Default`] gives the production values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// An HTTP/1 request head must be complete within this time (default 30 s).
    pub header_read_timeout: Duration,
    /// A connection with no byte moving and no request in progress is closed after this
    /// time (default 60 s).
    pub idle_timeout: Duration,
    /// A TLS handshake must finish within this time (default 10 s).
    pub tls_handshake_timeout: Duration,
    /// Open connections at most (default 4096); more are closed at once.
    pub max_connections: usize,
    /// Open connections from one client address at most (default 256).
    pub max_connections_per_client: usize,
    /// The window over which a request body's pace is measured (default 60 s).
    pub body_read_timeout: Duration,
    /// The slowest accepted request body, in bytes per second over each window (default
    /// 1 KiB/s).
    pub body_min_rate: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_client: 256,
            body_read_timeout: Duration::from_secs(60),
            body_min_rate: 1024,
        }
    }
}

/// The open connections, in total and per client address, shared by every thread serving a
/// listener.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// Admits connections under [`ConnectionLimits`] and builds the listener's server; clones
/// share the counts.
#[derive(Debug, Clone)]
pub struct Limiter {
    limits: ConnectionLimits,
    counts: Arc<Mutex<Counts>>,
}

/// Descriptors a listener's process keeps for everything but client connections (files being
/// served, the database, logs).
const RESERVED_FDS: u64 = 256;

/// Raises the soft open-file limit to the hard one; returns the soft limit in force.
fn raise_open_file_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

impl Limiter {
    /// The limiter; raises the process's open-file limit (see the module's documentation).
    pub fn new(limits: ConnectionLimits) -> Self {
        let nofile = raise_open_file_limit();
        let wanted = u64::try_from(limits.max_connections)
            .unwrap_or(u64::MAX)
            .saturating_add(RESERVED_FDS);
        if nofile < wanted {
            tracing::warn!(
                open_file_limit = nofile,
                max_connections = limits.max_connections,
                "the open-file limit is below max_connections plus {RESERVED_FDS} for files: \
                 raise it (LimitNOFILE= in the service unit) or lower max_connections, or \
                 connections will be refused with 'too many open files' before the cap"
            );
        }
        Self {
            limits,
            counts: Arc::default(),
        }
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// A plain-HTTP server on `listener` under these limits.
    pub fn plain(&self, listener: std::net::TcpListener) -> axum_server::Server<LimitAcceptor> {
        let mut server = axum_server::from_tcp(listener).acceptor(self.acceptor());
        self.configure(server.http_builder());
        server
    }

    /// An HTTPS server on `listener` under these limits (the caps and the idle timer apply
    /// to the TCP connection, before and after the handshake).
    pub fn tls(
        &self,
        listener: std::net::TcpListener,
        config: RustlsConfig,
    ) -> axum_server::Server<RustlsAcceptor<LimitAcceptor>> {
        let acceptor = RustlsAcceptor::new(config)
            .handshake_timeout(self.limits.tls_handshake_timeout)
            .acceptor(self.acceptor());
        let mut server = axum_server::from_tcp(listener).acceptor(acceptor);
        self.configure(server.http_builder());
        server
    }

    fn acceptor(&self) -> LimitAcceptor {
        LimitAcceptor {
            limiter: self.clone(),
        }
    }

    fn configure(
        &self,
        builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    ) {
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout);
    }

    /// A slot for a connection from `client`, or `None` when a cap is reached.
    fn admit(&self, client: IpAddr) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mine = counts.per_client.get(&client).copied().unwrap_or(0);
        if counts.total >= self.limits.max_connections
            || mine >= self.limits.max_connections_per_client
        {
            return None;
        }
        counts.total += 1;
        counts.per_client.insert(client, mine + 1);
        Some(Slot {
            counts: self.counts.clone(),
            client,
        })
    }
}

/// One admitted connection; dropping it frees its place under the caps.
#[derive(Debug)]
struct Slot {
    counts: Arc<Mutex<Counts>>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_client.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_client.remove(&self.client);
            }
        }
    }
}

/// The acceptor that admits a TCP connection under the caps and wraps it in [`Limited`] and
/// its service in [`Guarded`].
#[derive(Debug, Clone)]
pub struct LimitAcceptor {
    limiter: Limiter,
}

impl<S: Send + 'static> Accept<TcpStream, S> for LimitAcceptor {
    type Stream = Limited<TcpStream>;
    type Service = Guarded<S>;
    type Future = std::future::Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        std::future::ready(self.admit(stream, service))
    }
}

impl LimitAcceptor {
    fn admit<S>(
        &self,
        stream: TcpStream,
        service: S,
    ) -> io::Result<(Limited<TcpStream>, Guarded<S>)> {
        let peer = stream.peer_addr()?;
        let client = peer.ip();
        let Some(slot) = self.limiter.admit(client) else {
            tracing::debug!(client = %client, "connection refused: connection cap reached");
            return Err(io::Error::other("connection cap reached"));
        };
        let limits = &self.limiter.limits;
        let busy = Arc::new(AtomicUsize::new(0));
        let stream = Limited {
            inner: stream,
            idle: limits.idle_timeout,
            deadline: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            busy: busy.clone(),
            _slot: slot,
        };
        let service = Guarded {
            inner: service,
            busy,
            window: limits.body_read_timeout,
            min_rate: limits.body_min_rate,
            peer: PeerAddr(peer),
        };
        Ok((stream, service))
    }
}

/// A connection closed when no byte moved for the idle timeout while no request was in
/// progress.
#[derive(Debug)]
pub struct Limited<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    /// Requests of this connection being handled (their response head not yet sent).
    busy: Arc<AtomicUsize>,
    _slot: Slot,
}

impl<T> Limited<T> {
    /// Bytes moved: the idle timer starts again.
    fn touch(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// Nothing moved on this poll: an error once the connection has been idle too long.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.busy.load(Ordering::Acquire) > 0 {
            self.touch();
            return Ok(());
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for longer than the idle timeout",
            )),
            Poll::Pending => Ok(()),
        }
    }

    /// The outcome of a write-side poll: progress touches, nothing checks the idle timer.
    fn after_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<R>>,
        moved: bool,
    ) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(Ok(v)) => {
                if moved {
                    self.touch();
                }
                Poll::Ready(Ok(v))
            }
            Poll::Pending => match self.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            other => other,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        let moved = matches!(r, Poll::Ready(Ok(n)) if n > 0);
        self.after_write(cx, r, moved)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let moved = matches!(r, Poll::Ready(Ok(n)) if n > 0);
        self.after_write(cx, r, moved)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.after_write(cx, r, false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection's service: marks the connection busy while a request is handled (until its
/// response head is ready) and paces the request body.
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    busy: Arc<AtomicUsize>,
    window: Duration,
    min_rate: u64,
    peer: PeerAddr,
}

/// The address a request's connection comes from (the TCP peer: a reverse proxy's when there
/// is one), set as a request extension on every request of a [`Limiter`]'s listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Counts one request in progress on its connection until dropped.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::AcqRel);
        Self(busy.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for Guarded<S>
where
    S: tower_service::Service<http::Request<PacedBody<B>>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let busy = Busy::new(&self.busy);
        let (window, min_rate) = (self.window, self.min_rate);
        let mut req = req.map(|body| PacedBody::new(body, window, min_rate));
        req.extensions_mut().insert(self.peer);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            drop(busy);
            res
        })
    }
}

/// A request body delivered more slowly than the listener's minimum pace.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the request body arrived too slowly: {received} bytes in {window:?}, below the minimum of {min_rate} bytes/s; the request was cut off, send it again over a faster link")]
pub struct BodyTooSlow {
    pub received: u64,
    pub window: Duration,
    pub min_rate: u64,
}

impl BodyTooSlow {
    /// The [`BodyTooSlow`] in `err`'s source chain, if any (a handler's body error wraps it).
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTooSlow> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(found) = e.downcast_ref::<BodyTooSlow>() {
                return Some(found);
            }
            cur = e.source();
        }
        None
    }
}

/// A request body failing with [`BodyTooSlow`] when a window passes with fewer than
/// `window × min_rate` bytes while the handler waits for it.
#[derive(Debug)]
pub struct PacedBody<B> {
    inner: B,
    window: Duration,
    min_rate: u64,
    received: u64,
    /// The end of the current window; started at the first read.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<B> PacedBody<B> {
    fn new(inner: B, window: Duration, min_rate: u64) -> Self {
        Self {
            inner,
            window,
            min_rate,
            received: 0,
            deadline: None,
        }
    }

    fn needed(&self) -> u64 {
        let ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        self.min_rate.saturating_mul(ms) / 1000
    }

    /// The handler waits for bytes that have not come: an error when the window ended
    /// short, else a new window once it ends.
    fn check_pace(&mut self, cx: &mut Context<'_>) -> Result<(), BodyTooSlow> {
        let window = self.window;
        let needed = self.needed();
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(window)));
        while deadline.as_mut().poll(cx).is_ready() {
            if self.received < needed {
                return Err(BodyTooSlow {
                    received: self.received,
                    window: self.window,
                    min_rate: self.min_rate,
                });
            }
            self.received = 0;
            deadline.as_mut().reset(Instant::now() + window);
        }
        Ok(())
    }
}

impl<B> Body for PacedBody<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = bytes::Buf::remaining(data);
                    this.received = this.received.saturating_add(n as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.check_pace(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
