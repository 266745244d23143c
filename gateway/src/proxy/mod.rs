//! The innermost service: forwards a request to an endpoint of its upstream
//! pool and streams the response back.
//!
//! Bodies are never buffered whole: the client's body streams to the
//! upstream and the upstream's body streams to the client, so memory stays
//! flat whatever their size. Protocol upgrades (WebSocket) are tunnelled
//! byte for byte once the upstream answers `101`.

pub mod headers;
pub mod tunnel;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderValue, CONNECTION, HOST};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use tower_service::Service;

use crate::body::Body;
use crate::context::RequestContext;
use crate::error::{Blame, BoxError, GatewayError};
use crate::telemetry::metrics::ATTEMPT_OUTCOMES;
use crate::telemetry::trace::AttemptSpan;
use crate::telemetry::{SpanParent, UpstreamInfo, TRACEPARENT};
use crate::upstream::h1::{self, Exchange, UpstreamError};
use crate::upstream::{InflightGuard, Upstream};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

pub use headers::{ClientAddr, Forwarding, Via};

/// Endpoints already tried for one client request (set by the retry
/// layer, shared by its attempts), so a retry goes to another endpoint.
#[derive(Debug, Clone, Default)]
pub struct Tried(Arc<std::sync::Mutex<Vec<http::uri::Authority>>>);

impl Tried {
    fn snapshot(&self) -> Vec<http::uri::Authority> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn push(&self, a: http::uri::Authority) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(a);
    }
}

/// How the matched prefix is rewritten before forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// Forward the path as the edge normalised it (see [`crate::path`]:
    /// the request URI already holds the path the route matched).
    Keep,
    /// Replace the matched `prefix` with `with` (empty = strip it).
    Replace {
        /// The route's prefix (normalized, no trailing slash).
        prefix: String,
        /// Replacement (empty to strip).
        with: String,
    },
}

impl Rewrite {
    /// Applies the rewrite to a path and query.
    pub fn apply(&self, pq: Option<&PathAndQuery>) -> Result<PathAndQuery, GatewayError> {
        let Self::Replace { prefix, with } = self else {
            return Ok(pq
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")));
        };
        let path = pq.map_or("/", PathAndQuery::path);
        let rest = if prefix == "/" {
            path
        } else {
            path.strip_prefix(prefix.as_str()).unwrap_or(path)
        };
        let mut out = String::with_capacity(with.len() + rest.len() + 16);
        if rest.is_empty() {
            // The prefix itself: forward the replacement exactly as written.
            out.push_str(if with.is_empty() { "/" } else { with });
        } else {
            out.push_str(with.trim_end_matches('/'));
            if !rest.starts_with('/') {
                out.push('/');
            }
            out.push_str(rest);
        }
        if let Some(q) = pq.and_then(PathAndQuery::query) {
            out.push('?');
            out.push_str(q);
        }
        PathAndQuery::try_from(out).map_err(|_| GatewayError::BadRequest("invalid rewritten path"))
    }
}

/// Forwards requests to one upstream pool.
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    upstream: Arc<Upstream>,
    rewrite: Rewrite,
    via: Via,
    latency: Option<Histogram>,
    /// One counter per [`ATTEMPT_OUTCOMES`] (metrics on).
    attempts: Option<Arc<[Counter]>>,
}

impl Proxy {
    /// A proxy to `upstream`, rewriting paths with `rewrite` and naming
    /// itself `via` in the `Via` header; with metrics on, `telemetry` is
    /// the pool's upstream latency histogram and attempt counters
    /// ([`crate::telemetry::Metrics::attempt_counters`]).
    pub fn new(
        upstream: Arc<Upstream>,
        rewrite: Rewrite,
        via: Via,
        telemetry: Option<(Histogram, Arc<[Counter]>)>,
    ) -> Self {
        let (latency, attempts) = telemetry.unzip();
        Self {
            inner: Arc::new(Inner {
                upstream,
                rewrite,
                via,
                latency,
                attempts,
            }),
        }
    }
}

/// The future of [`Proxy`].
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The synchronous part (pick, header rules) runs here, so the boxed
        // future holds only what lives across the upstream exchange.
        match self.inner.begin(req) {
            Ok(a) => Box::pin(self.inner.clone().exchange(a)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

/// One attempt, ready to be sent.
struct Attempt {
    guard: InflightGuard,
    req: Request<Body>,
    forwarding: Forwarding,
    /// Sampled requests only; boxed, the future stays small otherwise.
    span: Option<Box<AttemptSpan>>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

impl Inner {
    /// Picks an endpoint and turns the client's request into the upstream's.
    fn begin(&self, mut req: Request<Body>) -> Result<Attempt, BoxError> {
        let up = &self.upstream;
        // Endpoints already tried = how many times this request was resent.
        let (guard, resend_count) = match req.extensions().get::<Tried>() {
            Some(tried) => {
                let avoid = tried.snapshot();
                let g = up.pick(&avoid)?;
                tried.push(g.endpoint().authority.clone());
                (g, avoid.len())
            }
            None => (up.pick(&[])?, 0),
        };
        let endpoint = guard.endpoint().clone();
        // What the edge decided (server::sanitize): the one X-Forwarded-For
        // line, and whether this is a WebSocket handshake the route allows.
        let ctx = req.extensions().get::<RequestContext>();
        let forwarded_for = ctx.map(|c| c.forwarded_for().clone());
        let upgrade =
            ctx.is_some_and(RequestContext::websocket) && req.version() != Version::HTTP_2;
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        let host = parts.headers.remove(HOST).or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // Hop-by-hop and Connection-named headers were removed at the edge,
        // before the gateway added its own; only the handshake's is set.
        if upgrade {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        }
        // X-Forwarded-* and Via go straight into the encoded head.
        let forwarding = Forwarding {
            forwarded_for,
            host,
            via: self.via.entry(parts.version).clone(),
        };
        parts.uri = Uri::from(self.rewrite.apply(parts.uri.path_and_query())?);
        parts.version = Version::HTTP_11;
        // Sampled requests only: a CLIENT span for this attempt, whose id
        // the upstream sees as its parent. Otherwise a client's
        // `traceparent` passes through unchanged.
        let attempt = parts.extensions.get::<SpanParent>().map(|p| {
            let (span, traceparent) =
                p.attempt(&parts.method, &up.name, &endpoint.authority, resend_count);
            parts.headers.insert(TRACEPARENT, traceparent);
            span
        });
        Ok(Attempt {
            guard,
            req: Request::from_parts(parts, body),
            forwarding,
            span: attempt.map(Box::new),
            client_upgrade,
        })
    }

    /// Sends the attempt and turns the upstream's response into the
    /// client's.
    async fn exchange(self: Arc<Self>, a: Attempt) -> Result<Response<Body>, BoxError> {
        let up = &self.upstream;
        let Attempt {
            guard,
            req,
            forwarding,
            span: attempt,
            client_upgrade,
        } = a;
        let endpoint = guard.endpoint().clone();
        let sent = Instant::now();
        // `request_timeout` runs from the end of the upload to the response
        // head (armed inside the client, on the pooled timers).
        let mut exchange = h1::send_timed(
            guard,
            up.pool,
            &up.timers,
            Some(up.request_timeout),
            req,
            &forwarding,
        )
        .await;
        let head = sent.elapsed();
        // The breaker counts what the endpoint did: its errors, timeouts and
        // 502/503/504 are failures. A good head with a body still streaming
        // is judged when that body ends (a truncated or stalled body fails).
        // An error that is not the upstream's (the client's body was
        // malformed, too large, too slow or abandoned) is not counted.
        let verdict = match &mut exchange {
            Ok(Exchange::Response(r)) => {
                let ok = !matches!(r.status().as_u16(), 502..=504);
                match r.body_mut() {
                    Body::H1(body) if ok => {
                        body.report_outcome();
                        None
                    }
                    _ => Some(ok),
                }
            }
            Ok(Exchange::Upgrade(..)) => Some(true),
            Err(e) => (crate::error::blame(e.as_ref()) == Blame::Upstream).then_some(false),
        };
        if let Some(ok) = verdict {
            endpoint.record(ok);
        }
        if let Some(counters) = &self.attempts {
            let outcome = match &exchange {
                Ok(Exchange::Response(r)) => status_outcome(r.status().as_u16()),
                Ok(Exchange::Upgrade(..)) => status_outcome(101),
                Err(e) => outcome_index(error_type(e.as_ref())),
            };
            if let Some(c) = counters.get(outcome) {
                c.inc();
            }
        }
        if let Some(span) = attempt {
            match &exchange {
                Ok(Exchange::Response(r)) => span.status(r.status().as_u16()),
                Ok(Exchange::Upgrade(..)) => span.status(101),
                Err(e) => span.failed(error_type(e.as_ref()), e.to_string()),
            }
        }
        let exchange = exchange.map_err(|e| match e.downcast_ref::<UpstreamError>() {
            Some(UpstreamError::HeadTimeout) => GatewayError::UpstreamTimeout {
                upstream: up.name.clone(),
            }
            .into(),
            _ => e,
        })?;
        if let Some(h) = &self.latency {
            h.observe(head.as_secs_f64());
        }
        let info = UpstreamInfo {
            upstream: up.name.clone(),
            endpoint: endpoint.authority.clone(),
            head,
        };

        match exchange {
            Exchange::Response(resp) => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers, false);
                self.via.append(&mut parts.headers, parts.version);
                parts.extensions.insert(info);
                Ok(Response::from_parts(parts, body))
            }
            Exchange::Upgrade(resp, conn) => {
                let (mut parts, _) = resp.into_parts();
                let Some(on_client) = client_upgrade else {
                    // A 101 nobody asked for: refuse to switch.
                    return Err(
                        UpstreamError::Protocol("unexpected 101 Switching Protocols").into(),
                    );
                };
                parts.extensions.insert(tunnel::spawn(on_client, conn));
                self.via.append(&mut parts.headers, Version::HTTP_11);
                Ok(Response::from_parts(parts, Body::Empty))
            }
        }
    }
}

/// The [`ATTEMPT_OUTCOMES`] index of a response with `status`: its class
/// (`1xx`..`5xx`); the upstream's 600-999, which no class names, are
/// `_OTHER`.
fn status_outcome(status: u16) -> usize {
    match status / 100 {
        class @ 1..=5 => usize::from(class) - 1,
        _ => outcome_index("_OTHER"),
    }
}

/// The [`ATTEMPT_OUTCOMES`] index of `kind` (`_OTHER` if not listed).
fn outcome_index(kind: &str) -> usize {
    ATTEMPT_OUTCOMES
        .iter()
        .position(|o| *o == kind)
        .unwrap_or(ATTEMPT_OUTCOMES.len() - 1)
}

/// `error.type` of an attempt that got no response (one of
/// [`ATTEMPT_OUTCOMES`]).
fn error_type(e: &(dyn std::error::Error + 'static)) -> &'static str {
    match e.downcast_ref::<UpstreamError>() {
        Some(UpstreamError::Connect(_)) => "connect_failed",
        Some(UpstreamError::ConnectTimeout) => "connect_timeout",
        Some(UpstreamError::Closed) => "connection_closed",
        Some(UpstreamError::Io(_) | UpstreamError::NotSent(_)) => "io_error",
        Some(UpstreamError::Protocol(_)) => "protocol_error",
        Some(UpstreamError::HeadTimeout) => "timeout",
        Some(UpstreamError::WriteTimeout) => "write_timeout",
        Some(UpstreamError::BodyTimeout) => "body_timeout",
        None if crate::error::blame(e) == Blame::Client => "client_error",
        None => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pq(s: &str) -> PathAndQuery {
        PathAndQuery::try_from(s).unwrap()
    }

    /// Responses count under their status class; a status no class names
    /// (the upstream's 600-999) is `_OTHER`, not `5xx`.
    #[test]
    fn response_statuses_count_under_their_class() {
        let name = |s| ATTEMPT_OUTCOMES[status_outcome(s)];
        assert_eq!(
            [100, 101, 200, 304, 404, 503, 599].map(name),
            ["1xx", "1xx", "2xx", "3xx", "4xx", "5xx", "5xx"]
        );
        assert_eq!([600, 999].map(name), ["_OTHER", "_OTHER"]);
    }

    /// Every `error.type` of a failed attempt has its own attempt counter
    /// (else it would be counted as `_OTHER`).
    #[test]
    fn every_attempt_error_type_is_a_counted_outcome() {
        let io = || std::io::Error::other("x");
        let errors: Vec<BoxError> = vec![
            Box::new(UpstreamError::Connect(io())),
            Box::new(UpstreamError::ConnectTimeout),
            Box::new(UpstreamError::NotSent(io())),
            Box::new(UpstreamError::Closed),
            Box::new(UpstreamError::Io(io())),
            Box::new(UpstreamError::Protocol("p")),
            Box::new(UpstreamError::WriteTimeout),
            Box::new(UpstreamError::HeadTimeout),
            Box::new(UpstreamError::BodyTimeout),
            "something else".into(),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for e in &errors {
            let kind = error_type(e.as_ref());
            assert!(ATTEMPT_OUTCOMES.contains(&kind), "{kind} has no counter");
            seen.insert(kind);
        }
        assert_eq!(seen.len(), 9, "{seen:?}");
    }

    #[test]
    fn rewrites_keep_strip_and_replace() {
        assert_eq!(
            Rewrite::Keep.apply(Some(&pq("/a/b?x=1"))).unwrap(),
            "/a/b?x=1"
        );
        assert_eq!(Rewrite::Keep.apply(None).unwrap(), "/");
        let strip = Rewrite::Replace {
            prefix: "/api".into(),
            with: String::new(),
        };
        assert_eq!(
            strip.apply(Some(&pq("/api/users?x=1"))).unwrap(),
            "/users?x=1"
        );
        assert_eq!(strip.apply(Some(&pq("/api"))).unwrap(), "/");
        let replace = Rewrite::Replace {
            prefix: "/old".into(),
            with: "/v2/".into(),
        };
        assert_eq!(replace.apply(Some(&pq("/old/x"))).unwrap(), "/v2/x");
        assert_eq!(replace.apply(Some(&pq("/old?q"))).unwrap(), "/v2/?q");
        let exact = Rewrite::Replace {
            prefix: "/v2/echo".into(),
            with: "/headers".into(),
        };
        assert_eq!(
            exact.apply(Some(&pq("/v2/echo?q=2"))).unwrap(),
            "/headers?q=2"
        );
        assert_eq!(exact.apply(Some(&pq("/v2/echo/x"))).unwrap(), "/headers/x");
    }
}
