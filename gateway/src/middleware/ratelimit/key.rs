//! What a request is counted by, and the client IP behind trusted proxies.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, Request};

use crate::config::RateLimitKey;
use crate::middleware::auth::Subject;
use crate::proxy::ClientAddr;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

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

/// Peers whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// From validated CIDR strings (invalid ones are skipped).
    pub fn new(list: &[String]) -> Self {
        Self(list.iter().filter_map(|s| parse_cidr(s).ok()).collect())
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| contains(*n, ip))
    }

    /// The client IP: the peer, unless the peer is a trusted proxy, then
    /// the right-most `X-Forwarded-For` entry that is not a trusted proxy
    /// (entries left of it could have been written by the client).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        for v in headers.get_all(X_FORWARDED_FOR).iter().rev() {
            let Ok(v) = v.to_str() else { return client };
            for hop in v.rsplit(',') {
                let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                    return client;
                };
                client = ip;
                if !self.trusts(ip) {
                    return ip;
                }
            }
        }
        client
    }
}

/// The resolved client IP, for logs and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// How one policy derives its key from a request.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// The client IP.
    ClientIp,
    /// The authenticated subject, else the client IP.
    Subject,
    /// The route as a whole.
    Route,
    /// A header's value, else the client IP.
    Header(HeaderName),
}

impl KeySource {
    /// From validated config.
    pub fn new(k: &RateLimitKey) -> Self {
        match k {
            RateLimitKey::ClientIp => Self::ClientIp,
            RateLimitKey::Subject => Self::Subject,
            RateLimitKey::Route => Self::Route,
            RateLimitKey::Header(h) => {
                HeaderName::from_bytes(h.as_bytes()).map_or(Self::ClientIp, Self::Header)
            }
        }
    }

    /// The key of `req` (prefixed by kind so kinds never collide).
    pub fn key<B>(&self, req: &Request<B>, trusted: &TrustedProxies) -> String {
        let ip = || {
            let peer = req
                .extensions()
                .get::<ClientAddr>()
                .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.addr.ip());
            format!("ip:{}", trusted.client_ip(peer, req.headers()))
        };
        match self {
            Self::ClientIp => ip(),
            Self::Route => "route".to_owned(),
            Self::Subject => req
                .extensions()
                .get::<Subject>()
                .map_or_else(ip, |s| format!("sub:{}", s.0)),
            Self::Header(h) => req
                .headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map_or_else(ip, |v| format!("hdr:{v}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(xff: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(X_FORWARDED_FOR, xff.parse().unwrap());
        m
    }

    #[test]
    fn untrusted_peers_cannot_pick_their_key() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into()]);
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(t.client_ip(peer, &h("1.2.3.4")), peer);
    }

    #[test]
    fn trusted_chain_resolves_to_the_first_untrusted_hop_from_the_right() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into(), "::1".into()]);
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        // The client wrote "6.6.6.6"; the first proxy saw 1.2.3.4.
        assert_eq!(
            t.client_ip(peer, &h("6.6.6.6, 1.2.3.4, 10.0.0.2")),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(t.client_ip(peer, &h("garbage")), peer);
        assert_eq!(t.client_ip(peer, &HeaderMap::new()), peer);
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
