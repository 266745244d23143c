//! What a request is counted by. The client IP is the edge's
//! ([`RequestContext::client_ip`]): the limiter never parses forwarding
//! headers itself, so it counts the client the access log names and the
//! upstream receives.

use std::net::IpAddr;

use http::{HeaderName, Request};

use crate::config::RateLimitKey;
use crate::context::RequestContext;
use crate::middleware::auth::Identity;

pub use crate::context::{parse_cidr, TrustedProxies};

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
    pub fn key<B>(&self, req: &Request<B>) -> String {
        let ip = || {
            let client = req
                .extensions()
                .get::<RequestContext>()
                .map_or(IpAddr::from([0, 0, 0, 0]), RequestContext::client_ip);
            format!("ip:{client}")
        };
        match self {
            Self::ClientIp => ip(),
            Self::Route => "route".to_owned(),
            Self::Subject => req
                .extensions()
                .get::<Identity>()
                .map_or_else(ip, |id| format!("sub:{}", id.subject)),
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
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::context::ClientAddr;
    use http::HeaderValue;

    #[test]
    fn client_ip_keys_read_the_edge_context_not_the_headers() {
        let trusted = TrustedProxies::new(&["10.0.0.0/8".into()]);
        let mut req = Request::new(());
        req.headers_mut().insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4"),
        );
        let ctx = RequestContext::resolve(
            &ClientAddr::new("10.1.1.1:9".parse().unwrap()),
            &trusted,
            req.headers(),
            HeaderValue::from_static("id"),
        );
        // The edge removed the header after resolving it: the key does not
        // depend on it any more.
        req.headers_mut().clear();
        req.extensions_mut().insert(ctx);
        assert_eq!(KeySource::ClientIp.key(&req), "ip:1.2.3.4");
        assert_eq!(KeySource::Subject.key(&req), "ip:1.2.3.4");
        assert_eq!(KeySource::Route.key(&req), "route");
        let h = KeySource::Header(HeaderName::from_static("x-api-key"));
        assert_eq!(h.key(&req), "ip:1.2.3.4");
        req.headers_mut()
            .insert("x-api-key", HeaderValue::from_static("k1"));
        assert_eq!(h.key(&req), "hdr:k1");
        assert_eq!(KeySource::ClientIp.key(&Request::new(())), "ip:0.0.0.0");
        req.extensions_mut().insert(Identity {
            subject: "alice".into(),
            roles: Vec::new(),
        });
        assert_eq!(KeySource::Subject.key(&req), "sub:alice");
    }
}
