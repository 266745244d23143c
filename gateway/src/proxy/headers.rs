//! Header rules of a proxy (RFC 9110 §7.6): hop-by-hop removal, forwarding
//! headers, `Via`.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

use crate::upstream::h1::{line, EncodeHeaders};

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
///
/// Hot path: most messages carry none of these, so one pass over the names
/// decides; a header is looked up (hashed) only when it is present.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let (mut connection, mut other) = (false, false);
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if name == header::UPGRADE || HOP_BY_HOP.contains(name) {
            other = true;
        }
    }
    if connection {
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
    if connection || other {
        for h in &HOP_BY_HOP {
            headers.remove(h);
        }
        if !upgrade {
            headers.remove(header::UPGRADE);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
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
    /// The IP as a header value.
    pub fn ip(&self) -> &HeaderValue {
        &self.ip
    }

    /// Renders `addr`'s IP once.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { addr, ip }
    }
}

/// What the proxy adds to a forwarded request: the client appended to
/// `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` set (from
/// `host`, the request's original authority; removed without one), this
/// gateway appended to `Via`.
///
/// These are written straight into the upstream request head by
/// [`EncodeHeaders::encode`] instead of being inserted into the header map:
/// nothing between the proxy and the wire reads them, and custom header
/// names cost a hash per map operation on every request.
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// The client's IP, rendered once per connection. Without it (no
    /// client address known) the `X-Forwarded-*` headers pass unchanged.
    pub client_ip: Option<HeaderValue>,
    /// `X-Forwarded-Host`.
    pub host: Option<HeaderValue>,
    /// This gateway's `Via` entry for the client's protocol version.
    pub via: HeaderValue,
}

impl EncodeHeaders for Forwarding {
    /// Writes `headers` as HTTP/1.1 header lines into `out`, replacing the
    /// forwarding headers: `X-Forwarded-For` becomes the first one received
    /// (if any) plus the client, `Via` the first one received (if any) plus
    /// this gateway, the `X-Forwarded-Proto`/`-Host` received are dropped.
    fn encode(&self, headers: &HeaderMap, out: &mut bytes::BytesMut) {
        let mut xff: Option<&HeaderValue> = None;
        let mut via: Option<&HeaderValue> = None;
        let forward = self.client_ip.is_some();
        for (name, value) in headers {
            if name == header::VIA {
                via.get_or_insert(value);
            } else if !forward {
                line(out, name.as_str().as_bytes(), &[value.as_bytes()]);
            } else if name == X_FORWARDED_FOR {
                xff.get_or_insert(value);
            } else if name != X_FORWARDED_PROTO && name != X_FORWARDED_HOST {
                line(out, name.as_str().as_bytes(), &[value.as_bytes()]);
            }
        }
        if let Some(ip) = &self.client_ip {
            let prev = xff
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty());
            match prev {
                Some(prev) => line(
                    out,
                    b"x-forwarded-for",
                    &[prev.as_bytes(), b", ", ip.as_bytes()],
                ),
                None => line(out, b"x-forwarded-for", &[ip.as_bytes()]),
            }
            line(out, b"x-forwarded-proto", &[b"http"]);
            if let Some(h) = &self.host {
                line(out, b"x-forwarded-host", &[h.as_bytes()]);
            }
        }
        match via {
            Some(prev) => line(out, b"via", &[prev.as_bytes(), b", ", self.via.as_bytes()]),
            None => line(out, b"via", &[self.via.as_bytes()]),
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

    /// This gateway's entry for a message received in `version`.
    pub fn entry(&self, version: Version) -> &HeaderValue {
        match version {
            Version::HTTP_10 | Version::HTTP_09 => &self.v10,
            Version::HTTP_2 | Version::HTTP_3 => &self.v2,
            _ => &self.v11,
        }
    }

    /// Appends this gateway to `Via` for a message received in `version`.
    pub fn append(&self, headers: &mut HeaderMap, version: Version) {
        let own = self.entry(version);
        match headers.entry(header::VIA) {
            header::Entry::Occupied(mut e) => {
                let value = e.get().to_str().ok().and_then(|prev| {
                    HeaderValue::from_str(&format!(
                        "{prev}, {}",
                        own.to_str().unwrap_or(&self.name)
                    ))
                    .ok()
                });
                if let Some(v) = value {
                    e.insert(v);
                }
            }
            header::Entry::Vacant(e) => {
                e.insert(own.clone());
            }
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

    fn encoded(h: &HeaderMap, f: &Forwarding) -> String {
        let mut out = bytes::BytesMut::new();
        f.encode(h, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn forwarding_headers_are_appended_or_replaced_on_the_wire() {
        let f = Forwarding {
            client_ip: Some(
                ClientAddr::new("127.0.0.1:5000".parse().unwrap())
                    .ip()
                    .clone(),
            ),
            host: Some(HeaderValue::from_static("api.local")),
            via: Via::new("gw").entry(Version::HTTP_11).clone(),
        };
        let h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("via", "1.0 fred"),
            ("accept", "*/*"),
        ]);
        assert_eq!(
            encoded(&h, &f),
            "accept: */*\r\nx-forwarded-for: 10.0.0.1, 127.0.0.1\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: api.local\r\nvia: 1.0 fred, 1.1 gw\r\n"
        );
        let f = Forwarding {
            client_ip: Some(ClientAddr::new("[::1]:5000".parse().unwrap()).ip().clone()),
            host: None,
            via: Via::new("gw").entry(Version::HTTP_2).clone(),
        };
        let h = map(&[("x-forwarded-for", " "), ("x-forwarded-host", "evil")]);
        assert_eq!(
            encoded(&h, &f),
            "x-forwarded-for: ::1\r\nx-forwarded-proto: http\r\nvia: 2 gw\r\n"
        );
        // No client address: X-Forwarded-* pass unchanged, Via still added.
        let f = Forwarding {
            client_ip: None,
            ..f
        };
        assert_eq!(
            encoded(&h, &f),
            "x-forwarded-for:  \r\nx-forwarded-host: evil\r\nvia: 2 gw\r\n"
        );
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
