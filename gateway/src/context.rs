//! What the edge learned about a request, filled once before routing.
//!
//! The edge ([`crate::server`]) sanitises a request head
//! ([`crate::server::sanitize`]) and, in the same pass, resolves who the
//! client is. The result is one [`RequestContext`] in the request's
//! extensions; the layers, the proxy and telemetry read it and none of them
//! re-derives any of it:
//!
//! - the client address: the connection's peer, or, when the peer is one of
//!   the trusted proxies (`rate_limit.trusted_proxies`), the right-most
//!   address of all `X-Forwarded-For` lines combined that is not itself a
//!   trusted proxy (everything left of it could have been written by the
//!   client). The rate limiter keys on it, the access log and the SERVER
//!   span record it, and the upstream receives it;
//! - the `X-Forwarded-For` line sent upstream: that client followed by the
//!   trusted proxies it came through and the peer, one line; an untrusted
//!   peer's own `X-Forwarded-For` is discarded, so the line is just the peer;
//! - whether the peer is trusted (then its `Forwarded`, `X-Real-IP` and
//!   `X-Forwarded-Host/Port/Proto` were kept; otherwise removed);
//! - whether the request is a WebSocket handshake the route allows;
//! - the request id.
//!
//! The normalised path is not stored here: the edge rewrites the request's
//! URI to it, so `uri().path()` is the path that was routed and forwarded.
//! The verified identity is added by the auth layer, once a token is
//! verified, as its own extension (`middleware::auth::Identity`): it is
//! not known at the edge, and a context shared by clones of the request is
//! not mutated after routing.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The peer of a connection, with its IP pre-rendered as a header value
/// once per connection (the `X-Forwarded-For` line of every request from
/// an untrusted peer, so that case costs no allocation per request).
#[derive(Debug, Clone)]
pub struct ClientAddr {
    /// Peer address of the connection.
    pub addr: SocketAddr,
    ip: HeaderValue,
}

impl ClientAddr {
    /// Renders `addr`'s IP once.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { addr, ip }
    }

    /// The IP as a header value.
    pub fn ip(&self) -> &HeaderValue {
        &self.ip
    }
}

/// What the edge learned about one request (a request extension).
#[derive(Debug, Clone)]
pub struct RequestContext {
    peer: SocketAddr,
    client: IpAddr,
    forwarded_for: HeaderValue,
    trusted_peer: bool,
    websocket: bool,
    request_id: HeaderValue,
}

impl RequestContext {
    /// The context of a request from `peer`, resolving the client through
    /// `trusted` proxies from `headers` (its `X-Forwarded-For` lines).
    pub fn resolve(
        peer: &ClientAddr,
        trusted: &TrustedProxies,
        headers: &HeaderMap,
        request_id: HeaderValue,
    ) -> Self {
        let ip = peer.addr.ip();
        if !trusted.trusts(ip) {
            return Self::direct(peer, request_id);
        }
        let (client, forwarded_for) = trusted.chain(ip, headers);
        Self {
            peer: peer.addr,
            client,
            forwarded_for,
            trusted_peer: true,
            websocket: false,
            request_id,
        }
    }

    /// The context of a request from an untrusted `peer`: the peer is the
    /// client.
    pub fn direct(peer: &ClientAddr, request_id: HeaderValue) -> Self {
        Self {
            peer: peer.addr,
            client: peer.addr.ip(),
            forwarded_for: peer.ip.clone(),
            trusted_peer: false,
            websocket: false,
            request_id,
        }
    }

    /// The connection's peer.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// THE client address of the request (see the module docs).
    pub fn client_ip(&self) -> IpAddr {
        self.client
    }

    /// The `X-Forwarded-For` value to send upstream (one line).
    pub fn forwarded_for(&self) -> &HeaderValue {
        &self.forwarded_for
    }

    /// Whether the peer is a trusted proxy (its forwarding headers kept).
    pub fn trusted_peer(&self) -> bool {
        self.trusted_peer
    }

    /// Whether this is a WebSocket handshake to forward as an upgrade
    /// (`Upgrade: websocket`, on a route with `websocket = true`).
    pub fn websocket(&self) -> bool {
        self.websocket
    }

    /// Marks the request as an upgrade to forward, or not.
    pub fn set_websocket(&mut self, on: bool) {
        self.websocket = on;
    }

    /// The request id (also in the `X-Request-Id` header sent upstream).
    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }
}

/// Parses `ip` or `ip/prefix`.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .trim()
        .parse()
        .map_err(|_| format!("invalid IP or CIDR {s:?}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("invalid prefix length in {s:?}"))?,
        None => max,
    };
    Ok((ip, len))
}

fn contains((net, len): (IpAddr, u8), ip: IpAddr) -> bool {
    let ip = match (net, ip) {
        (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        _ => ip,
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Peers whose forwarding headers (`X-Forwarded-For`, `Forwarded`,
/// `X-Real-IP`, `X-Forwarded-Host/Port/Proto`) are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// From validated CIDR strings (invalid ones are skipped).
    pub fn new(list: &[String]) -> Self {
        Self(list.iter().filter_map(|s| parse_cidr(s).ok()).collect())
    }

    /// Whether `ip` is a trusted proxy (one branch when none is configured).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        !self.0.is_empty() && self.0.iter().any(|n| contains(*n, ip))
    }

    /// The client behind the trusted `peer` and the `X-Forwarded-For` line
    /// to forward: walking all `X-Forwarded-For` lines combined from the
    /// right, the first address that is not a trusted proxy is the client
    /// (a malformed entry stops the walk at the last good one); the line is
    /// that client, the trusted hops after it, then `peer`.
    fn chain(&self, peer: IpAddr, headers: &HeaderMap) -> (IpAddr, HeaderValue) {
        let mut hops: Vec<IpAddr> = Vec::new();
        'lines: for v in headers.get_all(X_FORWARDED_FOR).iter().rev() {
            let Ok(v) = v.to_str() else { break };
            for hop in v.rsplit(',') {
                let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                    break 'lines;
                };
                hops.push(ip);
                if !self.trusts(ip) {
                    break 'lines;
                }
            }
        }
        let client = hops.last().copied().unwrap_or(peer);
        let mut line = String::with_capacity((hops.len() + 1) * 17);
        // Written in place: no String per hop.
        for ip in hops.iter().rev() {
            let _ = write!(line, "{ip}, ");
        }
        let _ = write!(line, "{peer}");
        // IP addresses and ", " are always a valid header value.
        let line = HeaderValue::from_str(&line).unwrap_or_else(|_| HeaderValue::from_static(""));
        (client, line)
    }

    /// The client IP behind `peer` (see [`TrustedProxies::chain`]); the
    /// peer itself when it is not trusted.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.trusts(peer) {
            self.chain(peer, headers).0
        } else {
            peer
        }
    }
}

/// The TLS facts of the connection a request came on (a request
/// extension, present only on connections that terminated TLS): the access
/// log records them, the HSTS layer adds its header only when present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The protocol negotiated by ALPN (`h2`, `http/1.1`), empty without.
    pub alpn: &'static str,
    /// The client presented a certificate the configured CA verified.
    pub client_certificate: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for l in lines {
            m.append(X_FORWARDED_FOR, l.parse().unwrap());
        }
        m
    }

    fn peer(s: &str) -> ClientAddr {
        ClientAddr::new(s.parse().unwrap())
    }

    fn ctx(t: &TrustedProxies, p: &str, lines: &[&str]) -> RequestContext {
        RequestContext::resolve(&peer(p), t, &xff(lines), HeaderValue::from_static("id"))
    }

    #[test]
    fn an_untrusted_peer_is_the_client_and_its_forwarded_for_is_ignored() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into()]);
        let c = ctx(&t, "192.0.2.7:4000", &["1.2.3.4"]);
        assert_eq!(c.client_ip(), "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(c.forwarded_for(), "192.0.2.7");
        assert!(!c.trusted_peer());
        assert_eq!(c.peer(), "192.0.2.7:4000".parse().unwrap());
        // Nothing configured: nobody is trusted.
        let c = ctx(&TrustedProxies::default(), "10.0.0.1:1", &["1.2.3.4"]);
        assert_eq!(c.forwarded_for(), "10.0.0.1");
    }

    #[test]
    fn a_trusted_peer_resolves_to_the_rightmost_untrusted_hop_of_all_lines() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into(), "::1".into()]);
        // Two lines are one list: "6.6.6.6, 1.2.3.4, 10.0.0.2".
        let c = ctx(&t, "10.1.1.1:80", &["6.6.6.6, 1.2.3.4", "10.0.0.2"]);
        assert_eq!(c.client_ip(), "1.2.3.4".parse::<IpAddr>().unwrap());
        // What the client wrote left of its own address is dropped.
        assert_eq!(c.forwarded_for(), "1.2.3.4, 10.0.0.2, 10.1.1.1");
        assert!(c.trusted_peer());
        let c = ctx(&t, "[::1]:80", &["2001:db8::1"]);
        assert_eq!(c.client_ip(), "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(c.forwarded_for(), "2001:db8::1, ::1");
    }

    #[test]
    fn malformed_or_missing_forwarded_for_stops_at_the_last_good_hop() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into()]);
        let c = ctx(&t, "10.1.1.1:80", &["garbage"]);
        assert_eq!(c.client_ip(), "10.1.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.forwarded_for(), "10.1.1.1");
        let c = ctx(&t, "10.1.1.1:80", &["garbage, 10.0.0.2"]);
        assert_eq!(c.client_ip(), "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(c.forwarded_for(), "10.0.0.2, 10.1.1.1");
        let c = ctx(&t, "10.1.1.1:80", &[]);
        assert_eq!(c.client_ip(), "10.1.1.1".parse::<IpAddr>().unwrap());
        let mut bad = HeaderMap::new();
        bad.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(
            t.client_ip("10.1.1.1".parse().unwrap(), &bad),
            "10.1.1.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn cidr_parsing() {
        assert!(parse_cidr("10.0.0.0/8").is_ok());
        assert!(parse_cidr("::1/128").is_ok());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope").is_err());
        assert!(contains(
            parse_cidr("0.0.0.0/0").unwrap(),
            "8.8.8.8".parse().unwrap()
        ));
        assert!(contains(
            parse_cidr("127.0.0.1").unwrap(),
            "::ffff:127.0.0.1".parse().unwrap()
        ));
    }
}
