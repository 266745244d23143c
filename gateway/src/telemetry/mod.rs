//! Telemetry: request metrics, the live SLO engine, access logs and W3C
//! trace context, recorded once per request at the outermost layer.
//!
//! The request clock starts when the edge receives a request head and stops
//! when the last response byte has been handed to the connection (when the
//! response body is dropped), so one clock gives total latency, the
//! gateway's own overhead (head-to-head minus the upstream's head time) and
//! the SLO observation. Recording happens in [`TimedBody`]'s `Drop`: no
//! allocation, no lock held across an await.

mod atomic_hist;
pub mod metrics;
pub mod native;
pub mod otlp;
pub mod process;
pub mod protobuf;
pub mod slo;
pub mod span;
pub mod trace;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

use crate::body::Body;
use crate::config::{AccessLogConfig, Config};
use crate::error::BoxError;
use crate::middleware::auth::AuthError;
use crate::middleware::cache::CacheDecision;
use crate::middleware::ratelimit::RateLimitDecision;

pub use metrics::{Metrics, RouteMetrics};
pub use slo::{Slo, SloEngine};
pub use trace::{SpanParent, Tracing};

/// `traceparent` (W3C Trace Context).
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Telemetry state that lives as long as the process (across reloads).
#[derive(Debug)]
pub struct Telemetry {
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// The tracer, when `[telemetry.tracing]` is enabled (read at start).
    pub tracing: Option<Arc<Tracing>>,
}

impl Telemetry {
    /// Families with the config's latency buckets, every SLO latency
    /// threshold added as an exact bound; the tracer and its export thread
    /// when tracing is enabled.
    pub fn new(config: &Config) -> Result<Self, trace::ExporterError> {
        let metrics = Arc::new(
            Metrics::new(&buckets(config))
                .with_native_histograms(config.telemetry.native_histograms),
        );
        let tracing = Tracing::start(&config.telemetry.tracing, &metrics.trace)?;
        Ok(Self { metrics, tracing })
    }
}

/// The latency buckets of `config`: its own plus every SLO threshold.
pub fn buckets(config: &Config) -> Vec<f64> {
    let mut b: Vec<f64> = config.telemetry.buckets.clone();
    for slo in &config.slos {
        for o in &slo.latency {
            b.push(o.threshold.as_secs_f64());
        }
    }
    b.retain(|x| x.is_finite() && *x > 0.0);
    b.sort_by(f64::total_cmp);
    b.dedup();
    b
}

/// Per-route telemetry handles, built with the route.
#[derive(Debug)]
pub struct RouteTelemetry {
    /// Route name.
    pub name: Arc<str>,
    /// Metric handles.
    pub metrics: RouteMetrics,
    /// SLOs covering the route.
    pub slos: Vec<Arc<Slo>>,
    /// Whether to record at all.
    pub enabled: bool,
    /// Access log settings.
    pub access_log: AccessLogConfig,
    /// Which layers mark this route's responses: only their markers are
    /// looked up (a route without them costs no extension lookup).
    pub layers: Layers,
}

/// The decision-marking layers a route has.
#[derive(Debug, Default, Clone, Copy)]
pub struct Layers {
    /// JWT auth that verifies tokens, mode not `off` (its refusal is the
    /// [`AuthError`] marker; a request it let through "passed" in the span
    /// event).
    pub auth: bool,
    /// Rate limits ([`RateLimitDecision`] marker).
    pub ratelimit: bool,
    /// Response cache ([`CacheDecision`] marker).
    pub cache: bool,
    /// Adaptive concurrency (its refusal is the
    /// [`crate::middleware::concurrency::ConcurrencyRejected`] marker).
    pub concurrency: bool,
}

/// What the proxy learned about the upstream exchange (a response
/// extension).
#[derive(Debug, Clone)]
pub struct UpstreamInfo {
    /// Pool name.
    pub upstream: Arc<str>,
    /// Endpoint authority.
    pub endpoint: http::uri::Authority,
    /// Send to response head.
    pub head: Duration,
}

/// Returns the trace id of a valid, sampled `traceparent`.
pub fn sampled_trace_id(headers: &HeaderMap) -> Option<&str> {
    let (trace, _, flags) = trace::traceparent_fields(headers)?;
    (flags & 1 == 1).then_some(trace)
}

/// A request being measured; finished when its response body is dropped.
#[derive(Debug)]
pub struct Record {
    route: Arc<RouteTelemetry>,
    metrics: Arc<Metrics>,
    _inflight: metrics::InflightGuard,
    start: Instant,
    head: Duration,
    upstream: Option<UpstreamInfo>,
    method: Method,
    uri: Uri,
    status: u16,
    bytes_in: Option<u64>,
    bytes_out: u64,
    trace_id: Option<Box<str>>,
    request_id: HeaderValue,
    /// The client address the edge resolved (`context::RequestContext`).
    client: std::net::IpAddr,
    decisions: Decisions,
    span: Option<trace::ServerSpan>,
    /// How the response body ended.
    outcome: Outcome,
    /// HTTP version, and the connection's TLS facts (HTTPS only): the
    /// access log's `protocol`, `tls_version`, `alpn`.
    version: http::Version,
    tls: Option<crate::context::TlsInfo>,
}

/// How a response body ended. A body that fails after its head was sent
/// is an error everywhere (metrics, SLOs, access log, span): the client got
/// a broken response whatever the head said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Still being sent (the state until its end or drop).
    Streaming,
    /// Sent whole.
    Complete,
    /// The upstream broke the body off (closed, reset, bad framing).
    UpstreamBodyError,
    /// The upstream's body stalled past its deadline.
    UpstreamBodyTimeout,
    /// Another body failure (a layer's transformation).
    BodyError,
    /// The client went away before the end: its doing, not an error.
    ClientAborted,
}

impl Outcome {
    /// The outcome of a body that failed with `e`.
    pub fn of_error(e: &(dyn std::error::Error + 'static)) -> Self {
        use crate::upstream::h1::UpstreamError;
        let mut cur = Some(e);
        while let Some(e) = cur {
            match e.downcast_ref::<UpstreamError>() {
                Some(UpstreamError::BodyTimeout) => return Self::UpstreamBodyTimeout,
                Some(_) => return Self::UpstreamBodyError,
                None => cur = e.source(),
            }
        }
        Self::BodyError
    }

    /// Its name (the access log's `outcome`, the metric's `reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Streaming => "streaming",
            Self::Complete => "complete",
            Self::UpstreamBodyError => "upstream_body_error",
            Self::UpstreamBodyTimeout => "upstream_body_timeout",
            Self::BodyError => "body_error",
            Self::ClientAborted => "client_aborted",
        }
    }

    /// The status counted for a response whose head said `head`: 504 for
    /// a stalled body, 502 for a broken one (what the gateway answers when
    /// the same happens before the head), `head` otherwise.
    pub fn status(self, head: u16) -> u16 {
        match self {
            Self::UpstreamBodyTimeout => 504,
            Self::UpstreamBodyError | Self::BodyError => 502,
            _ => head,
        }
    }

    fn failed(self) -> bool {
        matches!(
            self,
            Self::UpstreamBodyError | Self::UpstreamBodyTimeout | Self::BodyError
        )
    }
}

/// Middleware decisions, from the typed markers the layers put in the
/// response extensions ([`CacheDecision`], [`RateLimitDecision`], the auth
/// layer's [`AuthError`] put there by `crate::error::render`). Never from
/// response headers: an upstream's own `X-Cache: HIT`, `RateLimit-Policy`
/// or `WWW-Authenticate` is not a gateway decision. Only the markers of
/// layers the route has are looked up.
#[derive(Debug, Default, Clone, Copy)]
struct Decisions {
    cache: Option<&'static str>,
    ratelimit: Option<&'static str>,
    jwt: Option<&'static str>,
    concurrency: Option<&'static str>,
}

impl Decisions {
    fn of(ext: &http::Extensions, layers: Layers) -> Self {
        let cache = layers
            .cache
            .then(|| ext.get::<CacheDecision>())
            .flatten()
            .map(|d| d.as_str());
        let ratelimit = layers
            .ratelimit
            .then(|| ext.get::<RateLimitDecision>())
            .flatten()
            .map(|d| d.as_str());
        let jwt = layers
            .auth
            .then(|| ext.get::<AuthError>())
            .flatten()
            .map(|e| match e {
                AuthError::Forbidden(_) => "insufficient_scope",
                _ => "invalid_token",
            });
        let concurrency = (layers.concurrency
            && ext
                .get::<crate::middleware::concurrency::ConcurrencyRejected>()
                .is_some())
        .then_some("rejected");
        Self {
            cache,
            ratelimit,
            jwt,
            concurrency,
        }
    }
}

impl Record {
    /// Starts measuring a request routed to `route`; starts its SERVER
    /// span when `tracing` samples it.
    #[allow(clippy::too_many_arguments)]
    pub fn start<B>(
        route: Arc<RouteTelemetry>,
        telemetry: &Telemetry,
        start: Instant,
        req: &http::Request<B>,
        host: Option<&str>,
        request_id: HeaderValue,
        client: std::net::IpAddr,
    ) -> Box<Self> {
        let headers = req.headers();
        let metrics = &telemetry.metrics;
        let bytes_in = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let span = telemetry.tracing.as_ref().and_then(|t| {
            let sampled = t.sample(headers)?;
            Some(t.server_span(
                &sampled,
                &trace::ServerRequest {
                    method: req.method(),
                    uri: req.uri(),
                    version: req.version(),
                    host,
                    headers,
                    route: &route.name,
                    client_ip: client,
                    request_id: &request_id,
                },
            ))
        });
        // Exemplars carry the gateway's own trace when sampled, else a
        // client's sampled trace (tracing off).
        let trace_id = match &span {
            Some(s) => Some(s.trace_id_hex()),
            None if telemetry.tracing.is_none() => sampled_trace_id(headers).map(Box::from),
            None => None,
        };
        Box::new(Self {
            route,
            _inflight: metrics.inflight(),
            metrics: metrics.clone(),
            start,
            head: Duration::ZERO,
            upstream: None,
            method: req.method().clone(),
            uri: req.uri().clone(),
            status: 0,
            bytes_in,
            bytes_out: 0,
            trace_id,
            request_id,
            client,
            decisions: Decisions::default(),
            span,
            outcome: Outcome::Streaming,
            version: req.version(),
            tls: req.extensions().get::<crate::context::TlsInfo>().copied(),
        })
    }

    /// The parent of upstream attempt spans, when the request is sampled.
    pub fn span_parent(&self) -> Option<SpanParent> {
        self.span.as_ref().map(trace::ServerSpan::parent)
    }

    /// The route's name.
    pub fn route_name(&self) -> &str {
        &self.route.name
    }

    /// The response head is ready; `ext` are its extensions, where the
    /// layers left their decision markers.
    pub fn head(&mut self, status: u16, ext: &http::Extensions, upstream: Option<UpstreamInfo>) {
        self.head = self.start.elapsed();
        self.status = status;
        self.upstream = upstream;
        self.decisions = Decisions::of(ext, self.route.layers);
        if let Some(span) = self.span.as_mut() {
            span.head(status, self.upstream.as_ref().map(|u| &u.upstream));
            let d = self.decisions;
            let auth = d.jwt.or(self.route.layers.auth.then_some("passed"));
            for (name, key, value) in [
                ("gateway.auth", "gateway.auth.outcome", auth),
                (
                    "gateway.ratelimit",
                    "gateway.ratelimit.decision",
                    d.ratelimit,
                ),
                ("gateway.cache", "gateway.cache.status", d.cache),
                (
                    "gateway.concurrency",
                    "gateway.concurrency.decision",
                    d.concurrency,
                ),
            ] {
                if let Some(v) = value {
                    span.event(name, key, v);
                }
            }
        }
    }

    /// The shared rate limiter failed for this request (the response
    /// carried [`crate::middleware::ratelimit::LimiterFailed`]): its
    /// rate-limit decision is `backend_error`, whatever the fallback did.
    pub fn limiter_failed(&mut self) {
        self.decisions.ratelimit = Some("backend_error");
    }

    fn finish(&mut self) {
        let total = self.start.elapsed();
        let failed = self.outcome.failed();
        // A broken body counts as the 502/504 it effectively was.
        let status = self.outcome.status(self.status);
        if let Some(span) = self.span.as_mut() {
            if failed {
                span.body_failed(self.outcome.as_str());
            }
            span.end(self.bytes_out);
        }
        let rt = &self.route;
        if rt.enabled {
            if failed {
                self.metrics
                    .decision(&self.metrics.body_errors, &rt.name, self.outcome.as_str());
            }
            self.metrics.record(
                &rt.metrics,
                &metrics::Finished {
                    method: &self.method,
                    status,
                    total,
                    head: self.head,
                    upstream_head: self.upstream.as_ref().map(|u| u.head),
                    bytes_in: self.bytes_in,
                    bytes_out: self.bytes_out,
                    trace_id: self.trace_id.as_deref(),
                },
            );
            let d = self.decisions;
            let m = &self.metrics;
            for (family, decision) in [
                (&m.cache, d.cache),
                (&m.ratelimit, d.ratelimit),
                (&m.jwt_rejections, d.jwt),
            ] {
                if let Some(decision) = decision {
                    m.decision(family, &rt.name, decision);
                }
            }
            // The clock was just read for `total`.
            let now = self.start + total;
            for slo in &rt.slos {
                slo.record(now, total, status >= 500);
            }
        }
        let log = &rt.access_log;
        if log.enabled
            && (status >= 500
                || (log.always_log_client_errors && status >= 400)
                || (log.sample_ratio > 0.0 && fastrand::f64() < log.sample_ratio))
        {
            self.access_log(total, status);
        }
    }

    /// `status` is the one counted (see [`Outcome::status`]); the head's is
    /// `response_status`.
    fn access_log(&self, total: Duration, status: u16) {
        // The path only: query strings may carry secrets; headers never logged.
        tracing::info!(
            target: "access",
            request_id = self.request_id.to_str().unwrap_or_default(),
            trace_id = self.trace_id.as_deref().unwrap_or_default(),
            client = %self.client,
            route = %self.route.name,
            method = %self.method,
            path = self.uri.path(),
            status,
            response_status = self.status,
            outcome = self.outcome.as_str(),
            latency_ms = total.as_secs_f64() * 1000.0,
            upstream = self.upstream.as_ref().map_or("", |u| &*u.upstream),
            endpoint = self.upstream.as_ref().map_or("", |u| u.endpoint.as_str()),
            upstream_ms = self.upstream.as_ref().map_or(0.0, |u| u.head.as_secs_f64() * 1000.0),
            bytes_in = self.bytes_in.unwrap_or(0),
            bytes_out = self.bytes_out,
            cache = self.decisions.cache.unwrap_or_default(),
            ratelimit = self.decisions.ratelimit.unwrap_or_default(),
            protocol = ?self.version,
            tls_version = self.tls.map_or("", |t| t.version),
            alpn = self.tls.map_or("", |t| t.alpn),
            "request"
        );
    }
}

/// A response body that finishes its request's [`Record`] when dropped.
#[derive(Debug)]
pub struct TimedBody {
    inner: Body,
    // Boxed: responses are moved several times on their way out, and a
    // record is large.
    record: Option<Box<Record>>,
}

impl TimedBody {
    /// A body with nothing to record (admin answers, early errors).
    pub fn plain(inner: Body) -> Self {
        Self {
            inner,
            record: None,
        }
    }

    /// A body whose completion finishes `record`.
    pub fn new(inner: Body, record: Box<Record>) -> Self {
        Self {
            inner,
            record: Some(record),
        }
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        if let Some(r) = self.record.as_mut() {
            if r.outcome == Outcome::Streaming {
                // Never polled to its end: complete if nothing was left to
                // send (or HEAD), else the client stopped reading.
                let ended = http_body::Body::is_end_stream(&self.inner);
                r.outcome = if ended || r.method == Method::HEAD {
                    Outcome::Complete
                } else {
                    Outcome::ClientAborted
                };
            }
            r.finish();
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(o), Some(rec)) = (&r, this.record.as_mut()) {
            match o {
                Some(Ok(f)) => {
                    if let Some(d) = f.data_ref() {
                        rec.bytes_out += d.len() as u64;
                    }
                }
                Some(Err(e)) => rec.outcome = Outcome::of_error(e.as_ref()),
                None if rec.outcome == Outcome::Streaming => rec.outcome = Outcome::Complete,
                None => {}
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_validated_and_only_sampled_traces_are_used() {
        let mut h = HeaderMap::new();
        let ok = "00-4bf92f3577b34da6a3ce929d0e0736ae-00f067aa0ba902b7-01";
        h.insert(TRACEPARENT, HeaderValue::from_static(ok));
        assert_eq!(
            sampled_trace_id(&h),
            Some("4bf92f3577b34da6a3ce929d0e0736ae")
        );
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0736ae-00f067aa0ba902b7-00", // not sampled
            "ff-4bf92f3577b34da6a3ce929d0e0736ae-00f067aa0ba902b7-01", // bad version
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace
            "00-4BF92F3577B34DA6A3CE929D0E0736AE-00f067aa0ba902b7-01", // upper case
            "00-4bf92f3577b34da6a3ce929d0e0736ae-0000000000000000-01", // zero parent
            "garbage",
        ] {
            h.insert(TRACEPARENT, HeaderValue::from_static(bad));
            assert_eq!(sampled_trace_id(&h), None, "{bad}");
        }
    }

    #[test]
    fn slo_thresholds_become_exact_bucket_bounds() {
        let c = crate::config::load(&crate::config::Source::Embedded, &Default::default()).unwrap();
        let b = buckets(&c);
        assert!(b.contains(&0.35) && b.contains(&0.65), "{b:?}");
        assert!(b.windows(2).all(|w| w[0] < w[1]));
    }
}
