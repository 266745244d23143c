//! Request sanitation: one function, [`sanitize`], run once per request at
//! the edge before routing, in the fixed order [`ORDER`]. Nothing after it
//! (routing, the route's layers, the proxy) sees a header a client must not
//! control, and everything after it reads the one [`RequestContext`] it
//! returns instead of re-deriving the client from headers.
//!
//! The steps, in order (each one's reason for its place is on [`Step`]):
//!
//! 1. [`Step::Host`]: HTTP/1.1 without `Host`, two `Host` fields, or one
//!    longer than 255 bytes or not a valid `host[:port]` authority: 400
//!    (RFC 9112 §3.2). An absolute-form target's authority (HTTP/1.1) or
//!    `:authority` (HTTP/2; hyper puts both in the URI) wins over `Host`,
//!    and `Host` is set from it, so routing, the cache key and
//!    `X-Forwarded-Host` agree.
//! 2. [`Step::Authorization`]: two `Authorization` fields: 400.
//! 3. [`Step::Upgrade`]: a WebSocket handshake (HTTP/1.1 `GET`,
//!    `Connection: upgrade`, `Upgrade` naming `websocket`) is noted; any
//!    other upgrade token (`h2c`, ...) is never forwarded.
//! 4. [`Step::Connection`]: headers named in `Connection` (except `Host`
//!    and `Content-Length`, which are no hop-by-hop fields and which
//!    routing and body limits read) and the hop-by-hop set (`Connection`, `Keep-Alive`,
//!    `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`,
//!    `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `HTTP2-Settings`)
//!    are removed, before the gateway adds its own headers: a client's
//!    `Connection: X-Request-Id, X-User-Id` removes only the client's own
//!    copies. A noted WebSocket handshake keeps `Upgrade: websocket`.
//! 5. [`Step::Identity`]: every header named in any auth provider's
//!    `forward_claims` and in `server.strip_request_headers` is removed,
//!    on every route.
//! 6. [`Step::Forwarding`]: the client is resolved ([`RequestContext`]);
//!    an untrusted peer's `Forwarded`, `X-Real-IP`, `X-Forwarded-For`,
//!    `X-Forwarded-Host/Port/Proto` are removed; a trusted peer's are kept
//!    except `X-Forwarded-For`, which the proxy writes as one line from the
//!    context.
//!
//! Route-dependent: after routing, the edge drops a noted WebSocket
//! handshake's `Upgrade` on a route without `websocket = true`; the request
//! is then forwarded as a plain request (as nginx does without
//! `proxy_set_header Upgrade`), and a `101` from the upstream is refused
//! (502) since the client's connection was never offered to it.
//!
//! Cost: one pass over the request's header fields compares each name with
//! the small sets above; a step does any work (a lookup, a removal) only
//! when that pass saw something for it. A plain `GET` with ordinary headers
//! allocates nothing here.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Version};

use crate::config::Config;
use crate::context::{ClientAddr, RequestContext, TrustedProxies, X_FORWARDED_FOR};
use crate::error::GatewayError;
use crate::proxy::headers::{connection_named, HOP_BY_HOP};

/// `X-Real-IP`.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Port`.
pub const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `HTTP2-Settings` (the h2c upgrade's settings, RFC 7540 §3.2.1).
pub const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Longest `Host` accepted (a DNS name is at most 253 bytes).
pub const MAX_HOST: usize = 255;

/// A header that describes one connection, never forwarded: the proxy's
/// hop-by-hop set plus `Upgrade` and `HTTP2-Settings`.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::UPGRADE || name == HTTP2_SETTINGS || HOP_BY_HOP.contains(name)
}

/// Forwarding headers, believed from trusted proxies only.
const FORWARDING: [HeaderName; 6] = [
    header::FORWARDED,
    X_REAL_IP,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PORT,
    X_FORWARDED_PROTO,
];

/// One step of [`sanitize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `Host` and the target's authority. First: a request without a
    /// valid authority is refused before anything is done for it.
    Host,
    /// Duplicate `Authorization`. Before [`Step::Connection`], so that
    /// `Connection: authorization` cannot hide the duplicate.
    Authorization,
    /// Notes a WebSocket handshake. Before [`Step::Connection`], which
    /// removes `Connection` and `Upgrade`.
    Upgrade,
    /// `Connection`-named and hop-by-hop headers. Before the identity and
    /// forwarding steps, which then see the final header set, and before
    /// the gateway adds any header of its own.
    Connection,
    /// Claim headers and `strip_request_headers`.
    Identity,
    /// Forwarding headers and the client address. Last: it reads
    /// `X-Forwarded-For` as the steps before left it.
    Forwarding,
}

/// The order of the steps.
pub const ORDER: [Step; 6] = [
    Step::Host,
    Step::Authorization,
    Step::Upgrade,
    Step::Connection,
    Step::Identity,
    Step::Forwarding,
];

/// What [`sanitize`] needs from the config, built once per config load.
#[derive(Debug, Clone, Default)]
pub struct EdgePolicy {
    /// Identity headers: every `forward_claims` header of every provider
    /// and `server.strip_request_headers`, deduplicated.
    strip: Box<[HeaderName]>,
    trusted: TrustedProxies,
}

impl EdgePolicy {
    /// From a validated config.
    pub fn new(config: &Config) -> Self {
        let mut strip: Vec<HeaderName> = config
            .auth
            .values()
            .flat_map(|a| a.forward_claims.values())
            .chain(&config.server.strip_request_headers)
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        strip.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        strip.dedup();
        Self {
            strip: strip.into_boxed_slice(),
            trusted: TrustedProxies::new(&config.rate_limit.trusted_proxies),
        }
    }

    /// The identity headers removed from every request.
    pub fn stripped(&self) -> &[HeaderName] {
        &self.strip
    }
}

/// Whether `name` may be listed in `server.strip_request_headers`.
pub fn strippable(name: &str) -> Result<(), String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    if n == header::HOST {
        return Err("Host cannot be stripped: requests are routed by it".into());
    }
    Ok(())
}

/// What one pass over the header fields found.
#[derive(Debug, Default)]
struct Seen {
    hosts: u32,
    host_valid: bool,
    authorizations: u32,
    hop_by_hop: bool,
    forwarding: bool,
    identity: bool,
}

impl Seen {
    fn scan(headers: &HeaderMap, strip: &[HeaderName]) -> Self {
        let mut s = Self::default();
        for (name, value) in headers {
            if name == header::HOST {
                s.hosts = s.hosts.saturating_add(1);
                s.host_valid = valid_authority(value.as_bytes());
            } else if name == header::AUTHORIZATION {
                s.authorizations = s.authorizations.saturating_add(1);
            } else if is_hop_by_hop(name) {
                s.hop_by_hop = true;
            } else if FORWARDING.contains(name) {
                s.forwarding = true;
            } else if !strip.is_empty() && strip.contains(name) {
                s.identity = true;
            }
        }
        s
    }
}

/// Sanitises `req`'s head in [`ORDER`] and returns what the edge learned
/// about it; a request to refuse is a [`GatewayError::BadRequest`] (400).
/// `peer` is the connection's peer, `request_id` the request's id.
pub fn sanitize<B>(
    req: &mut Request<B>,
    peer: &ClientAddr,
    policy: &EdgePolicy,
    request_id: &HeaderValue,
) -> Result<RequestContext, GatewayError> {
    let seen = Seen::scan(req.headers(), &policy.strip);
    let mut websocket = false;
    let mut ctx = None;
    for step in ORDER {
        match step {
            Step::Host => host(req, &seen)?,
            Step::Authorization => {
                if seen.authorizations > 1 {
                    return Err(GatewayError::BadRequest(
                        "more than one Authorization header",
                    ));
                }
            }
            Step::Upgrade => websocket = seen.hop_by_hop && is_websocket(req),
            Step::Connection => {
                if seen.hop_by_hop {
                    strip_connection(req.headers_mut(), websocket);
                }
            }
            Step::Identity => {
                if seen.identity {
                    for name in &*policy.strip {
                        req.headers_mut().remove(name);
                    }
                }
            }
            Step::Forwarding => {
                let c = RequestContext::resolve(
                    peer,
                    &policy.trusted,
                    req.headers(),
                    request_id.clone(),
                );
                if seen.forwarding {
                    let h = req.headers_mut();
                    if c.trusted_peer() {
                        // Resolved into the context; the proxy writes it
                        // back as one line.
                        h.remove(X_FORWARDED_FOR);
                    } else {
                        for name in &FORWARDING {
                            h.remove(name);
                        }
                    }
                }
                ctx = Some(c);
            }
        }
    }
    let mut ctx = ctx.unwrap_or_else(|| RequestContext::direct(peer, request_id.clone()));
    ctx.set_websocket(websocket);
    Ok(ctx)
}

/// [`Step::Host`].
fn host<B>(req: &mut Request<B>, seen: &Seen) -> Result<(), GatewayError> {
    if seen.hosts > 1 {
        return Err(GatewayError::BadRequest("more than one Host header"));
    }
    if let Some(authority) = req.uri().authority() {
        // Absolute-form (HTTP/1.1) or :authority (HTTP/2): it wins.
        let a = authority.as_str();
        if !valid_authority(a.as_bytes()) {
            return Err(GatewayError::BadRequest("invalid authority in the target"));
        }
        if seen.hosts == 0 && req.version() == Version::HTTP_11 {
            return Err(GatewayError::BadRequest("missing Host header"));
        }
        let same = req
            .headers()
            .get(header::HOST)
            .is_some_and(|h| h.as_bytes() == a.as_bytes());
        if !same {
            let v = HeaderValue::from_str(a)
                .map_err(|_| GatewayError::BadRequest("invalid authority in the target"))?;
            req.headers_mut().insert(header::HOST, v);
        }
        return Ok(());
    }
    if seen.hosts == 0 {
        // HTTP/1.0 may omit it; HTTP/1.1 must send it, HTTP/2 one of
        // :authority and Host.
        return match req.version() {
            Version::HTTP_09 | Version::HTTP_10 => Ok(()),
            _ => Err(GatewayError::BadRequest("missing Host header")),
        };
    }
    if !seen.host_valid {
        return Err(GatewayError::BadRequest("invalid Host header"));
    }
    Ok(())
}

/// Whether `b` is `host[:port]` (RFC 3986 §3.2.2-3.2.3, no user info) of
/// at most [`MAX_HOST`] bytes: a reg-name or IPv4 address, or an IPv6
/// literal in brackets; a port of 1 to 5 digits up to 65535.
pub fn valid_authority(b: &[u8]) -> bool {
    if b.is_empty() || b.len() > MAX_HOST {
        return false;
    }
    let rest = if b[0] == b'[' {
        let Some(end) = b.iter().position(|&c| c == b']') else {
            return false;
        };
        let lit = &b[1..end];
        if lit.is_empty()
            || !lit
                .iter()
                .all(|c| c.is_ascii_hexdigit() || *c == b':' || *c == b'.')
        {
            return false;
        }
        &b[end + 1..]
    } else {
        // One pass: the reg-name up to the first `:`.
        let Some(split) = reg_name(b) else {
            return false;
        };
        if split == 0 {
            return false;
        }
        &b[split..]
    };
    match rest {
        [] => true,
        [b':', port @ ..] if !port.is_empty() && port.len() <= 5 => {
            let mut n = 0u32;
            for &d in port {
                if !d.is_ascii_digit() {
                    return false;
                }
                n = n * 10 + u32::from(d - b'0');
            }
            n <= 65535
        }
        _ => false,
    }
}

/// Bytes of an RFC 3986 reg-name (unreserved and sub-delims; `%` is
/// checked apart): a table, so the check is one load per byte (a `Host`
/// is validated on every request).
const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        c += 1;
    }
    t
};

/// RFC 3986 reg-name (unreserved, sub-delims and percent-encoded octets)
/// at the start of `b`, up to the end or the first `:`: its length, or
/// `None` when another byte comes first.
fn reg_name(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if REG_NAME[usize::from(c)] {
            i += 1;
        } else if c == b':' {
            return Some(i);
        } else if c == b'%'
            && b.get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        {
            i += 3;
        } else {
            return None;
        }
    }
    Some(i)
}

/// [`Step::Upgrade`]: an HTTP/1.1 `GET` with `Connection: upgrade` and an
/// `Upgrade` naming `websocket` (RFC 6455 §4.1).
fn is_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.method() == Method::GET
        && has_token(req.headers(), &header::CONNECTION, "upgrade")
        && has_token(req.headers(), &header::UPGRADE, "websocket")
}

/// Whether a comma-separated header names `token` (protocol versions such
/// as `websocket/13` are not tokens RFC 6455 defines; not matched).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// [`Step::Connection`]: removes the headers `Connection` names (but
/// `Host` and `Content-Length`: no hop-by-hop fields, and routing and the
/// body limit read them) and the hop-by-hop set; a WebSocket handshake keeps `Upgrade: websocket` (the
/// proxy sets `Connection: upgrade` when the route allows it).
fn strip_connection(headers: &mut HeaderMap, websocket: bool) {
    let named: Vec<HeaderName> = connection_named(headers)
        .filter(|n| n != header::HOST && n != header::CONTENT_LENGTH)
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    headers.remove(header::UPGRADE);
    headers.remove(HTTP2_SETTINGS);
    if websocket {
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
}

#[cfg(test)]
mod tests;
