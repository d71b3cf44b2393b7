//! Many idle client sockets against a listener, and a bounded wait until the peer closed them:
//! what the connection-limit tests of the server and the host API share.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// File descriptors left for everything else a test process holds (its servers' files,
/// listeners, the other tests' sockets) when a socket test sizes itself.
const RESERVED_FDS: u64 = 512;

static SOCKET_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The right of one socket-heavy test to a share of the open-file limit: such tests run one at
/// a time while they hold it, and each opens what [`SocketBudget::sockets`] allows.
pub struct SocketBudget {
    _turn: std::sync::MutexGuard<'static, ()>,
    limit: u64,
}

/// Raises this process's open-file limit (the soft limit up to the hard one) and waits for
/// this test's turn among the socket-heavy tests.
pub fn socket_budget() -> SocketBudget {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let turn = SOCKET_TESTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    setrlimit(Resource::Nofile, lim).expect("raise RLIMIT_NOFILE");
    SocketBudget {
        _turn: turn,
        limit: getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX),
    }
}

impl SocketBudget {
    /// How many of `wanted` client sockets this test may open: each costs two descriptors
    /// (the client's end, and the in-process server's). Thousands where the limit allows
    /// (this machine's is tens of thousands); fewer, said on stderr, under a low hard limit.
    pub fn sockets(&self, wanted: usize) -> usize {
        let room = self.limit.saturating_sub(RESERVED_FDS) / 2;
        let n = usize::try_from(room).unwrap_or(usize::MAX).min(wanted);
        if n < wanted {
            eprintln!(
                "the open-file limit is {}: {n} sockets instead of {wanted}",
                self.limit
            );
        }
        assert!(
            n >= 100,
            "the open-file limit {} is too low for this test",
            self.limit
        );
        n
    }
}

/// The loopback address `127.0.0.<last>`: idle sockets come from another address than the
/// test's own health requests, so a per-address cap on them never hits the health check.
pub fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `n` blocking TCP connections to `to` from the address `from`, each having sent `prefix`.
pub fn open(from: IpAddr, to: SocketAddr, n: usize, prefix: &[u8]) -> Vec<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (0..n)
        .map(|_| {
            let s = rt.block_on(async {
                let sock = tokio::net::TcpSocket::new_v4().expect("socket");
                sock.bind(SocketAddr::new(from, 0)).expect("bind");
                sock.connect(to).await.expect("connect")
            });
            let mut s = s.into_std().expect("std socket");
            s.set_nonblocking(false).expect("blocking");
            s.write_all(prefix).expect("write the prefix");
            s
        })
        .collect()
}

/// Completes a TLS handshake for `localhost` on `s` under `config`, then sends `prefix`
/// inside TLS; the session is dropped without a close_notify, leaving `s` idle.
pub fn tls_handshake(s: &mut TcpStream, config: Arc<rustls::ClientConfig>, prefix: &[u8]) {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let mut conn = rustls::ClientConnection::new(config, name).expect("TLS client");
    while conn.is_handshaking() {
        conn.complete_io(s).expect("TLS handshake");
    }
    if !prefix.is_empty() {
        conn.writer().write_all(prefix).expect("write inside TLS");
        while conn.wants_write() {
            conn.write_tls(s).expect("write TLS records");
        }
    }
}

/// True when the peer has closed `s` (end of stream or reset); drains what it sent first.
pub fn closed(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// How many of `socks` the peer has closed.
pub fn count_closed(socks: &mut [TcpStream]) -> usize {
    socks.iter_mut().map(closed).filter(|c| *c).count()
}

/// Waits, at most `within`, until the peer has closed every socket of `socks`, asserting on
/// every round that `alive` (the listener's health check, named `what`) still answers.
pub fn wait_all_closed(
    socks: &mut [TcpStream],
    within: Duration,
    what: &str,
    mut alive: impl FnMut() -> bool,
) {
    let mut last = 0;
    let done = crate::wait::poll(within, Duration::from_millis(200), || {
        assert!(
            alive(),
            "{what} stopped answering while idle sockets were open"
        );
        last = count_closed(socks);
        last == socks.len()
    });
    assert!(
        done,
        "only {last} of {} idle sockets were closed",
        socks.len()
    );
}

/// Waits, at most `within`, until the peer has closed at least `n` of `socks`; returns how
/// many it had closed at the end.
pub fn wait_closed(socks: &mut [TcpStream], n: usize, within: Duration) -> usize {
    let mut last = 0;
    crate::wait::poll(within, Duration::from_millis(50), || {
        last = count_closed(socks);
        last >= n
    });
    last
}
