//! Header rules of a proxy (RFC 9110 §7.6): hop-by-hop removal from
//! upstream responses, forwarding headers, `Via`. Requests are sanitised
//! once at the edge (`server::sanitize`), not here.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

use crate::upstream::h1::{line, EncodeHeaders};

pub use crate::context::{ClientAddr, X_FORWARDED_FOR};
pub use crate::server::sanitize::{X_FORWARDED_HOST, X_FORWARDED_PROTO};
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, never forwarded (`Upgrade` is
/// handled by each caller: a handshake keeps it). The edge
/// (`server::sanitize`) strips this set too.
pub(crate) const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// The header names listed in every `Connection` line (unparsable lines
/// and tokens skipped).
pub(crate) fn connection_named(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
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
        let named: Vec<HeaderName> = connection_named(headers).collect();
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

/// What the proxy adds to a forwarded request: `X-Forwarded-For` as the
/// one line the edge resolved (`context::RequestContext::forwarded_for`),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (from `host`, the request's
/// authority) unless a trusted proxy sent them (the edge removed an
/// untrusted peer's), this gateway appended to `Via`.
///
/// These are written straight into the upstream request head by
/// [`EncodeHeaders::encode`] instead of being inserted into the header map:
/// nothing between the proxy and the wire reads them, and custom header
/// names cost a hash per map operation on every request.
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// The `X-Forwarded-For` line. Without it (no request context) the
    /// `X-Forwarded-*` headers pass unchanged.
    pub forwarded_for: Option<HeaderValue>,
    /// `X-Forwarded-Host`.
    pub host: Option<HeaderValue>,
    /// This gateway's `Via` entry for the client's protocol version.
    pub via: HeaderValue,
}

impl EncodeHeaders for Forwarding {
    /// Writes `headers` as HTTP/1.1 header lines into `out`, replacing the
    /// forwarding headers: any `X-Forwarded-For` received by the line of
    /// the context, `Via` the first one received (if any) plus this
    /// gateway; `X-Forwarded-Proto`/`-Host` are added unless present (they
    /// are present only when a trusted proxy sent them).
    fn encode(&self, headers: &HeaderMap, out: &mut bytes::BytesMut) {
        let mut via: Option<&HeaderValue> = None;
        let (mut proto, mut host) = (false, false);
        let forward = self.forwarded_for.is_some();
        for (name, value) in headers {
            if name == header::VIA {
                via.get_or_insert(value);
                continue;
            }
            if forward {
                if name == X_FORWARDED_FOR {
                    continue;
                }
                proto |= name == X_FORWARDED_PROTO;
                host |= name == X_FORWARDED_HOST;
            }
            line(out, name.as_str().as_bytes(), &[value.as_bytes()]);
        }
        if let Some(xff) = &self.forwarded_for {
            line(out, b"x-forwarded-for", &[xff.as_bytes()]);
            if !proto {
                line(out, b"x-forwarded-proto", &[b"http"]);
            }
            if let Some(h) = self.host.as_ref().filter(|_| !host) {
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

    /// The gateway's name (`server.via_name`).
    pub fn name(&self) -> &str {
        &self.name
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
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    fn encoded(h: &HeaderMap, f: &Forwarding) -> String {
        let mut out = bytes::BytesMut::new();
        f.encode(h, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn forwarding_headers_are_written_from_the_context_on_the_wire() {
        let f = Forwarding {
            forwarded_for: Some(HeaderValue::from_static("203.0.113.9, 10.0.0.1")),
            host: Some(HeaderValue::from_static("api.local")),
            via: Via::new("gw").entry(Version::HTTP_11).clone(),
        };
        // What reaches the proxy from an untrusted peer: the edge removed
        // its forwarding headers; any X-Forwarded-For left is replaced.
        let h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("via", "1.0 fred"),
            ("accept", "*/*"),
        ]);
        assert_eq!(
            encoded(&h, &f),
            "accept: */*\r\nx-forwarded-for: 203.0.113.9, 10.0.0.1\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: api.local\r\nvia: 1.0 fred, 1.1 gw\r\n"
        );
        // A trusted proxy's X-Forwarded-Proto/-Host are kept, not doubled.
        let h = map(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.example"),
        ]);
        assert_eq!(
            encoded(&h, &f),
            "x-forwarded-proto: https\r\nx-forwarded-host: public.example\r\n\
             x-forwarded-for: 203.0.113.9, 10.0.0.1\r\nvia: 1.1 gw\r\n"
        );
        let f = Forwarding {
            forwarded_for: Some(ClientAddr::new("[::1]:5000".parse().unwrap()).ip().clone()),
            host: None,
            via: Via::new("gw").entry(Version::HTTP_2).clone(),
        };
        assert_eq!(
            encoded(&HeaderMap::new(), &f),
            "x-forwarded-for: ::1\r\nx-forwarded-proto: http\r\nvia: 2 gw\r\n"
        );
        // No context: X-Forwarded-* pass unchanged, Via still added.
        let f = Forwarding {
            forwarded_for: None,
            ..f
        };
        let h = map(&[("x-forwarded-for", " "), ("x-forwarded-host", "evil")]);
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
