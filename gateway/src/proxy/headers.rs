//! Header rules of a proxy (RFC 9110 §7.6): hop-by-hop removal, forwarding
//! headers, `Via`.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether a request asks for a protocol upgrade (`Connection: upgrade` and
/// an `Upgrade` header), e.g. a WebSocket handshake.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers and every header named in `Connection`. With
/// `upgrade`, keeps `Upgrade` and sets `Connection: upgrade` so the
/// handshake reaches the other side.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in named {
            if !(upgrade && n == header::UPGRADE) {
                headers.remove(n);
            }
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The client's address, with its IP pre-rendered as a header value once
/// per connection.
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
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (from `host`, the request's original authority).
pub fn set_forwarded(headers: &mut HeaderMap, client: &ClientAddr, host: Option<HeaderValue>) {
    let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            HeaderValue::from_str(&format!("{prev}, {}", client.addr.ip())).ok()
        }
        _ => Some(client.ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

/// This gateway's `Via` entries, rendered once per config.
#[derive(Debug, Clone)]
pub struct Via {
    name: String,
    v10: HeaderValue,
    v11: HeaderValue,
    v2: HeaderValue,
}

impl Via {
    /// `Via` entries naming this gateway `name` (a header-safe token).
    pub fn new(name: &str) -> Self {
        let v = |proto: &str| {
            HeaderValue::from_str(&format!("{proto} {name}"))
                .unwrap_or_else(|_| HeaderValue::from_static("1.1 gateway"))
        };
        Self {
            name: name.to_owned(),
            v10: v("1.0"),
            v11: v("1.1"),
            v2: v("2"),
        }
    }

    /// Appends this gateway to `Via` for a message received in `version`.
    pub fn append(&self, headers: &mut HeaderMap, version: Version) {
        let own = match version {
            Version::HTTP_10 | Version::HTTP_09 => &self.v10,
            Version::HTTP_2 | Version::HTTP_3 => &self.v2,
            _ => &self.v11,
        };
        let value = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
            Some(prev) => {
                HeaderValue::from_str(&format!("{prev}, {}", own.to_str().unwrap_or(&self.name)))
                    .ok()
            }
            None => Some(own.clone()),
        };
        if let Some(v) = value {
            headers.insert(header::VIA, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "websocket"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn upgrade_handshakes_keep_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarded_headers_append_and_overwrite() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let client = ClientAddr::new("127.0.0.1:5000".parse().unwrap());
        set_forwarded(&mut h, &client, Some(HeaderValue::from_static("api.local")));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.local");
        let mut h = HeaderMap::new();
        set_forwarded(
            &mut h,
            &ClientAddr::new("[::1]:5000".parse().unwrap()),
            None,
        );
        assert_eq!(h["x-forwarded-for"], "::1");
    }

    #[test]
    fn via_is_appended() {
        let via = Via::new("gw");
        let mut h = map(&[("via", "1.0 fred")]);
        via.append(&mut h, Version::HTTP_11);
        assert_eq!(h["via"], "1.0 fred, 1.1 gw");
        let mut h = HeaderMap::new();
        via.append(&mut h, Version::HTTP_2);
        assert_eq!(h["via"], "2 gw");
    }
}
