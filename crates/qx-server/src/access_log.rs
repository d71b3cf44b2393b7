//! The access log: who asked what, and what they got. Refusals that matter for security
//! (401, 403, 409, 413, 422) are logged at warn with the client's address whatever the
//! setting; `ACCESS_LOG=all` logs every request at info, `off` nothing. Behind a reverse
//! proxy listed in `TRUSTED_PROXIES`, the client is taken from `X-Forwarded-For`: the
//! right-most address that is not a trusted proxy (addresses a client wrote itself, further
//! left, are never believed). Lines go to the `qx_server::access` log target.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;
use qx_core::listener::PeerAddr;

/// `ACCESS_LOG`: which requests are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLog {
    /// Nothing.
    Off,
    /// The refusals of [`SECURITY_STATUSES`] (the default).
    #[default]
    Security,
    /// Every request.
    All,
}

impl FromStr for AccessLog {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(AccessLog::Off),
            "security" => Ok(AccessLog::Security),
            "all" => Ok(AccessLog::All),
            _ => Err("expected off, security or all".into()),
        }
    }
}

/// The answers logged as security-relevant: a wrong or missing token, a token without the
/// scope, a conflicting write, an oversized body, a refused document.
pub const SECURITY_STATUSES: &[u16] = &[401, 403, 409, 413, 422];

/// `TRUSTED_PROXIES`: reverse proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of addresses (`10.0.0.5`, `::1`) and ranges (`10.0.0.0/8`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                IpNet::from_str(p)
                    .or_else(|_| IpAddr::from_str(p).map(IpNet::from))
                    .map_err(|_| format!("{p:?} is not an IP address or a CIDR range"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }
}

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request that came from `peer`: `peer` itself unless it is a trusted
    /// proxy, else the right-most `X-Forwarded-For` address that is not a trusted proxy (the
    /// left-most when all are).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let chain: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| IpAddr::from_str(a.trim()).ok())
            .collect();
        chain
            .iter()
            .rev()
            .find(|ip| !self.trusts(**ip))
            .or(chain.first())
            .copied()
            .unwrap_or(peer)
    }
}

/// What the middleware needs.
#[derive(Debug, Clone, Default)]
pub struct AccessLogConfig {
    pub log: AccessLog,
    pub trusted_proxies: TrustedProxies,
}

/// The middleware: runs the request, then logs it as the setting asks. Nothing is allocated
/// for a request that is not logged (the common case) unless it came through a trusted
/// proxy: the URI is a clone of shared bytes.
pub async fn log(State(config): State<Arc<AccessLogConfig>>, req: Request, next: Next) -> Response {
    if config.log == AccessLog::Off {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
    // Without trusted proxies this is the peer itself, at no cost.
    let client = peer.map(|p| config.trusted_proxies.client(p.ip(), req.headers()));
    let method = req.method().clone();
    let uri = req.uri().clone();
    let res = next.run(req).await;
    let status = res.status();
    if config.log == AccessLog::All || SECURITY_STATUSES.contains(&status.as_u16()) {
        write(&Line {
            method: method.as_str(),
            path: uri.path(),
            status,
            client,
            peer,
        });
    }
    res
}

/// One request as logged.
struct Line<'a> {
    method: &'a str,
    path: &'a str,
    status: StatusCode,
    client: Option<IpAddr>,
    peer: Option<SocketAddr>,
}

fn write(l: &Line<'_>) {
    let client = l
        .client
        .map(|c| c.to_string())
        .unwrap_or_else(|| "-".into());
    let peer = l.peer.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
    let status = l.status.as_u16();
    // A URI path is printable ASCII (the HTTP parser refuses anything else).
    let path = l.path;
    if SECURITY_STATUSES.contains(&status) {
        tracing::warn!(target: "qx_server::access", %client, %peer, method = l.method, %path, status, "request refused");
    } else {
        tracing::info!(target: "qx_server::access", %client, %peer, method = l.method, %path, status, "request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().expect("header value"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let none = TrustedProxies::default();
        let h = headers(&["203.0.113.7"]);
        assert_eq!(none.client(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        let proxies: TrustedProxies = "127.0.0.1, 10.0.0.0/8".parse().expect("list");
        assert_eq!(proxies.client(ip("127.0.0.1"), &h), ip("203.0.113.7"));
        assert_eq!(proxies.client(ip("192.0.2.1"), &h), ip("192.0.2.1"));
        // A client's own forged entry, left of the one our proxies added, is not believed.
        let h = headers(&["198.51.100.9, 203.0.113.7", "10.1.2.3"]);
        assert_eq!(proxies.client(ip("127.0.0.1"), &h), ip("203.0.113.7"));
        // Garbage is skipped; no usable entry leaves the peer.
        assert_eq!(
            proxies.client(ip("127.0.0.1"), &headers(&["nonsense"])),
            ip("127.0.0.1")
        );
        // All trusted: the left-most.
        assert_eq!(
            proxies.client(ip("127.0.0.1"), &headers(&["10.0.0.1, 10.0.0.2"])),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn settings_parse_or_say_what_is_wrong() {
        assert_eq!("all".parse::<AccessLog>(), Ok(AccessLog::All));
        assert!("verbose".parse::<AccessLog>().is_err());
        assert!("::1,fd00::/8".parse::<TrustedProxies>().is_ok());
        let e = "10.0.0.0/33"
            .parse::<TrustedProxies>()
            .expect_err("bad range");
        assert!(e.contains("10.0.0.0/33"), "{e}");
    }
}
