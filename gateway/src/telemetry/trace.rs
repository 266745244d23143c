//! OpenTelemetry traces: a SERVER span per request, a CLIENT span per
//! upstream attempt, decision events, W3C trace context in and out, OTLP/HTTP
//! export from a batch thread.
//!
//! The request path decides sampling itself before anything is built, so a
//! request that is not sampled (or a gateway with tracing off) allocates no
//! span data at all, and a client's `traceparent` then passes through to the
//! upstream unchanged. Sampling is parent-based: a valid client
//! `traceparent` decides (sampled or not), otherwise `sample_ratio` of
//! requests start a trace.
//!
//! Spans are written by the gateway itself as OTLP protobuf ([`SpanBuf`];
//! see [`super::span`] for why not with the OpenTelemetry SDK), following
//! the HTTP semantic conventions. Ended spans go to bounded batches that
//! one thread exports with [`ExportClient`]: the gateway's cold-path client
//! ([`crate::client`], https or loopback http, bounded by the export
//! timeout) run on a small current-thread runtime of its own. The request
//! path only appends to its thread's batch: with the collector down, spans
//! are dropped and counted, requests do not wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Version};
use prometheus_client::metrics::counter::Counter;

use super::span::{new_span_id, new_trace_id, BatchSettings, Kind, Pipeline, SpanBuf, SpanIds};
use super::TRACEPARENT;
use crate::client::{BackgroundRuntime, ClientSettings, ColdClient};
use crate::config::TracingConfig;
use crate::request_id::hex_into;

/// `tracestate` (W3C Trace Context).
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The process's tracer: sampling, span creation, export.
#[derive(Debug)]
pub struct Tracing {
    pipeline: Arc<Pipeline>,
    ratio: f64,
    shutdown_timeout: Duration,
}

/// Counters of the export path (registered in [`super::Metrics`]).
#[derive(Debug, Clone, Default)]
pub struct ExportCounters {
    /// Sampled spans ended (handed to the export queue).
    pub ended: Counter,
    /// Spans the collector accepted.
    pub exported: Counter,
    /// Spans in export requests that failed.
    pub failed: Counter,
    /// Export requests that failed.
    pub errors: Counter,
    /// Spans dropped because the export queue was full.
    pub dropped: Counter,
}

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the OTLP trace exporter: {0}")]
pub struct ExporterError(pub(crate) String);

impl Tracing {
    /// The tracer for `cfg`, or `None` when tracing is off. Spawns the
    /// export thread.
    pub fn start(
        cfg: &TracingConfig,
        counters: &ExportCounters,
    ) -> Result<Option<Arc<Self>>, ExporterError> {
        if !cfg.enabled {
            return Ok(None);
        }
        let exporter = super::otlp::OtlpExporter::new(cfg, ExportClient::new(cfg)?)?;
        let pipeline = Pipeline::start(
            exporter,
            BatchSettings {
                max_queue_size: cfg.max_queue_size,
                max_export_batch_size: cfg.max_export_batch_size,
                scheduled_delay: cfg.scheduled_delay,
            },
            counters.clone(),
        )
        .map_err(|e| ExporterError(format!("cannot start the export thread: {e}")))?;
        tracing::info!(endpoint = %cfg.endpoint, ratio = cfg.sample_ratio, "exporting traces with OTLP/HTTP");
        Ok(Some(Arc::new(Self {
            pipeline,
            ratio: cfg.sample_ratio,
            shutdown_timeout: cfg.shutdown_timeout,
        })))
    }

    /// Exports what is queued and stops the export thread, waiting at most
    /// the configured shutdown timeout (on a blocking thread).
    pub async fn shutdown(self: Arc<Self>) {
        let bound = self.shutdown_timeout;
        let task = tokio::task::spawn_blocking(move || self.pipeline.shutdown(bound));
        match tokio::time::timeout(bound + Duration::from_millis(500), task).await {
            Ok(Ok(Ok(()))) => tracing::debug!("trace exporter flushed"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "trace exporter shutdown failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "trace exporter shutdown task failed"),
            Err(_) => tracing::warn!(?bound, "trace exporter did not flush in time"),
        }
    }

    /// The sampling decision for a request with these headers; `None` when
    /// not sampled (nothing is built, the headers are forwarded as they are).
    pub fn sample(&self, headers: &HeaderMap) -> Option<Sampled> {
        match parse_traceparent(headers) {
            Some(p) if p.sampled => Some(Sampled { parent: Some(p) }),
            Some(_) => None,
            None => {
                let sampled =
                    self.ratio >= 1.0 || (self.ratio > 0.0 && fastrand::f64() < self.ratio);
                sampled.then_some(Sampled { parent: None })
            }
        }
    }

    /// Starts the SERVER span of a sampled request.
    pub fn server_span(&self, sampled: &Sampled, req: &ServerRequest<'_>) -> ServerSpan {
        let (trace_id, parent, trace_state) = match &sampled.parent {
            Some(p) => (
                p.trace_id.to_be_bytes(),
                Some(p.span_id.to_be_bytes()),
                req.headers
                    .get(TRACESTATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(normalize_tracestate),
            ),
            None => (new_trace_id(), None, None),
        };
        let span_id = new_span_id();
        let mut span = SpanBuf::start(
            Kind::Server,
            SpanIds {
                trace_id: &trace_id,
                span_id: &span_id,
                parent: parent.as_ref(),
                parent_remote: parent.is_some(),
                trace_state: trace_state.as_deref(),
            },
        );
        let method = method_name(req.method);
        span.name(&[method, " ", req.route]);
        span.str("http.request.method", method);
        if method == "_OTHER" {
            span.str("http.request.method_original", req.method.as_str());
        }
        span.str("url.path", req.uri.path());
        span.str("url.scheme", "http");
        span.str("http.route", req.route);
        span.str("network.protocol.version", protocol_version(req.version));
        span.ip("client.address", req.client_ip);
        if let Some((host, port)) = req.host.map(split_host) {
            span.str("server.address", host);
            if let Some(port) = port {
                span.int("server.port", i64::from(port));
            }
        }
        if let Some(ua) = req.headers.get(http::header::USER_AGENT) {
            span.header("user_agent.original", ua);
        }
        span.header("gateway.request_id", req.request_id);
        ServerSpan {
            span: Some(span),
            trace_id,
            span_id,
            trace_state,
            pipeline: self.pipeline.clone(),
            end: ServerEnd::default(),
        }
    }
}

/// The `tracestate` kept on the trace's spans: its list members, checked as
/// W3C Trace Context defines them (at most 32; `key=value`, key lower-case
/// letters, digits and `_-*/` with an optional `@tenant`; value printable
/// ASCII but `,` and `=`, at most 256 characters) and joined with `,`;
/// `None` when it is empty or any member is invalid (then the spans carry
/// none; the header is still forwarded as it came).
fn normalize_tracestate(v: &str) -> Option<Arc<str>> {
    let valid_key = |k: &str| {
        let b = k.as_bytes();
        !b.is_empty()
            && b.len() <= 256
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().filter(|&&c| c == b'@').count() <= 1
            && b.iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-*/@".contains(&c))
    };
    let valid_value = |v: &str| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= 256
            && b[b.len() - 1] != b' '
            && b.iter()
                .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
    };
    let mut out = String::with_capacity(v.len());
    let mut n = 0;
    for member in v.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let (k, val) = member.split_once('=')?;
        if !valid_key(k) || !valid_value(val) {
            return None;
        }
        n += 1;
        if n > 32 {
            return None;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(member);
    }
    (!out.is_empty()).then(|| Arc::from(out))
}

/// A positive sampling decision.
#[derive(Debug)]
pub struct Sampled {
    parent: Option<Traceparent>,
}

/// What the SERVER span is made from.
#[derive(Debug)]
pub struct ServerRequest<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Request URI (its path is `url.path`; the query is never recorded: it
    /// may carry secrets).
    pub uri: &'a http::Uri,
    /// HTTP version.
    pub version: Version,
    /// `Host` (or the URI's authority).
    pub host: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Matched route name (`http.route`).
    pub route: &'a Arc<str>,
    /// The client address the edge resolved (the peer unless it is a
    /// trusted proxy).
    pub client_ip: std::net::IpAddr,
    /// Request id.
    pub request_id: &'a HeaderValue,
}

/// The SERVER span of a sampled request, ended with its response body (or
/// when dropped).
#[derive(Debug)]
pub struct ServerSpan {
    /// `None` once ended.
    span: Option<SpanBuf>,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    trace_state: Option<Arc<str>>,
    pipeline: Arc<Pipeline>,
    end: ServerEnd,
}

/// What the response tells the SERVER span, written when it ends (the
/// latest value of each wins).
#[derive(Debug, Default)]
struct ServerEnd {
    status: u16,
    upstream: Option<Arc<str>>,
    /// `error.type` set by a body failure (a 5xx status is its own).
    body_failed: Option<&'static str>,
    bytes_out: Option<u64>,
}

impl ServerSpan {
    /// Its trace id in hex (the exemplar label).
    pub fn trace_id_hex(&self) -> Box<str> {
        let mut s = [0u8; 32];
        hex_into(&mut s, &self.trace_id);
        std::str::from_utf8(&s).unwrap_or_default().into()
    }

    /// What the upstream attempts hang under (a request extension).
    pub fn parent(&self) -> SpanParent {
        SpanParent(Arc::new(ParentInner {
            pipeline: self.pipeline.clone(),
            trace_id: self.trace_id,
            span_id: self.span_id,
            trace_state: self.trace_state.clone(),
        }))
    }

    /// The response head: status and upstream.
    pub fn head(&mut self, status: u16, upstream: Option<&Arc<str>>) {
        self.end.status = status;
        if let Some(u) = upstream {
            self.end.upstream = Some(u.clone());
        }
    }

    /// A middleware decision, as an event `name` with one attribute.
    pub fn event(&mut self, name: &'static str, key: &'static str, value: &'static str) {
        if let Some(span) = &mut self.span {
            span.event(name, key, value);
        }
    }

    /// The response body failed after the head (`kind` is `error.type`).
    pub fn body_failed(&mut self, kind: &'static str) {
        self.end.body_failed = Some(kind);
    }

    /// Ends the span when the response body is done.
    pub fn end(&mut self, bytes_out: u64) {
        self.end.bytes_out = Some(bytes_out);
        self.finish();
    }

    fn finish(&mut self) {
        let Some(mut span) = self.span.take() else {
            return;
        };
        let end = &self.end;
        if end.status != 0 {
            span.int("http.response.status_code", i64::from(end.status));
        }
        if let Some(u) = &end.upstream {
            span.str("gateway.upstream", u);
        }
        if let Some(n) = end.bytes_out {
            span.int(
                "http.response.body.size",
                i64::try_from(n).unwrap_or(i64::MAX),
            );
        }
        let error = if let Some(kind) = end.body_failed {
            span.str("error.type", kind);
            Some("response body failed")
        } else if end.status >= 500 {
            span.status_text("error.type", end.status);
            Some("")
        } else {
            None
        };
        self.pipeline.push(&span.end(error));
    }
}

impl Drop for ServerSpan {
    fn drop(&mut self) {
        // Dropped unended (the request was cancelled): ended now.
        self.finish();
    }
}

/// The sampled server span's context, carried to the proxy as a request
/// extension (present only on sampled requests).
#[derive(Debug, Clone)]
pub struct SpanParent(Arc<ParentInner>);

#[derive(Debug)]
struct ParentInner {
    pipeline: Arc<Pipeline>,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    trace_state: Option<Arc<str>>,
}

/// One upstream attempt of a sampled request. Dropped without an outcome
/// (the request was cancelled), it ends with `error.type = "cancelled"`.
#[derive(Debug)]
pub struct AttemptSpan {
    /// `None` once ended.
    span: Option<SpanBuf>,
    pipeline: Arc<Pipeline>,
}

impl SpanParent {
    /// Starts the CLIENT span of one upstream attempt and returns it with
    /// the `traceparent` the upstream gets (its span id is the attempt's).
    pub fn attempt(
        &self,
        method: &Method,
        upstream: &Arc<str>,
        authority: &http::uri::Authority,
        resend_count: usize,
    ) -> (AttemptSpan, HeaderValue) {
        let p = &self.0;
        let span_id = new_span_id();
        let mut span = SpanBuf::start(
            Kind::Client,
            SpanIds {
                trace_id: &p.trace_id,
                span_id: &span_id,
                parent: Some(&p.span_id),
                parent_remote: false,
                trace_state: p.trace_state.as_deref(),
            },
        );
        let name = method_name(method);
        span.name(&[name]);
        span.str("http.request.method", name);
        span.str("server.address", authority.host());
        if let Some(port) = authority.port_u16() {
            span.int("server.port", i64::from(port));
        }
        span.str("network.protocol.version", "1.1");
        span.str("gateway.upstream", upstream);
        if resend_count > 0 {
            span.int(
                "http.request.resend_count",
                i64::try_from(resend_count).unwrap_or(i64::MAX),
            );
        }
        let header = traceparent(&p.trace_id, &span_id);
        (
            AttemptSpan {
                span: Some(span),
                pipeline: p.pipeline.clone(),
            },
            header,
        )
    }
}

impl AttemptSpan {
    /// The attempt got a response head.
    pub fn status(mut self, status: u16) {
        if let Some(mut span) = self.span.take() {
            span.int("http.response.status_code", i64::from(status));
            let error = (status >= 500).then(|| {
                span.status_text("error.type", status);
                ""
            });
            self.pipeline.push(&span.end(error));
        }
    }

    /// The attempt failed without a response (`kind` is `error.type`).
    pub fn failed(mut self, kind: &'static str, description: String) {
        if let Some(mut span) = self.span.take() {
            span.str("error.type", kind);
            self.pipeline.push(&span.end(Some(&description)));
        }
    }
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        if let Some(mut span) = self.span.take() {
            span.str("error.type", "cancelled");
            self.pipeline.push(&span.end(Some("request cancelled")));
        }
    }
}

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    /// Trace id.
    pub trace_id: u128,
    /// The caller's span id.
    pub span_id: u64,
    /// The sampled flag.
    pub sampled: bool,
}

/// The trace id, parent span id (lower-case hex) and flags of a valid
/// version-00-compatible `traceparent` (non-zero ids, version not `ff`):
/// the one validation behind [`parse_traceparent`] and exemplars'
/// [`super::sampled_trace_id`].
pub(crate) fn traceparent_fields(headers: &HeaderMap) -> Option<(&str, &str, u8)> {
    let v = headers.get(TRACEPARENT)?.to_str().ok()?;
    let mut parts = v.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2)
    {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    Some((trace, parent, u8::from_str_radix(flags, 16).ok()?))
}

/// Parses a valid version-00-compatible `traceparent`.
pub fn parse_traceparent(headers: &HeaderMap) -> Option<Traceparent> {
    let (trace, parent, flags) = traceparent_fields(headers)?;
    Some(Traceparent {
        trace_id: u128::from_str_radix(trace, 16).ok()?,
        span_id: u64::from_str_radix(parent, 16).ok()?,
        sampled: flags & 1 == 1,
    })
}

/// `00-{trace}-{span}-01`.
fn traceparent(trace: &[u8; 16], span: &[u8; 8]) -> HeaderValue {
    let mut s = [0u8; 55];
    s[..3].copy_from_slice(b"00-");
    hex_into(&mut s[3..35], trace);
    s[35] = b'-';
    hex_into(&mut s[36..52], span);
    s[52..].copy_from_slice(b"-01");
    HeaderValue::from_bytes(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Semantic-convention method name (`_OTHER` for unknown methods).
fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// `host[:port]` (IPv6 literals in brackets).
fn split_host(h: &str) -> (&str, Option<u16>) {
    if let Some(rest) = h.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (h, None),
    }
}

/// The exporter's HTTP client: the cold-path client ([`ColdClient`]) run on
/// a [`BackgroundRuntime`] of its own, awaited from the export thread. Its
/// own runtime, not the gateway's: an export never waits for a busy or
/// stopping request runtime, and dropping the tracer inside the gateway's
/// runtime cannot deadlock the final flush. Every export is bounded by the
/// export timeout (connect, TLS, request, answer), so the final flush stays
/// within `shutdown_timeout`.
#[derive(Debug)]
pub struct ExportClient {
    client: ColdClient,
    runtime: BackgroundRuntime,
    /// The last export failed (a failure is logged once, then its end).
    failing: AtomicBool,
}

/// Largest collector answer read.
const MAX_ANSWER: usize = 1 << 20;

impl ExportClient {
    /// A client for `cfg`'s endpoint: system roots plus `ca_file`.
    pub fn new(cfg: &TracingConfig) -> Result<Self, ExporterError> {
        let client = ColdClient::new(&ClientSettings {
            connect_timeout: cfg.export_timeout,
            timeout: cfg.export_timeout,
            max_body: MAX_ANSWER,
            ca_file: cfg.ca_file.clone(),
        })
        .map_err(|m| ExporterError(format!("telemetry.tracing.ca_file: {m}")))?;
        let runtime = BackgroundRuntime::start("gateway-otlp-io")
            .map_err(|e| ExporterError(format!("cannot start the export runtime: {e}")))?;
        Ok(Self {
            client,
            runtime,
            failing: AtomicBool::new(false),
        })
    }

    /// Logs the first failure of a run of failures, and the recovery.
    fn outcome(&self, uri: &http::Uri, failure: Option<String>) {
        match failure {
            Some(error) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(endpoint = %uri, %error, "trace export failed; spans are dropped until the collector answers");
                } else {
                    tracing::debug!(endpoint = %uri, %error, "trace export failed");
                }
            }
            None => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %uri, "trace export works again");
                }
            }
        }
    }
}

impl ExportClient {
    /// Sends one export request and reads the answer.
    pub async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, crate::error::BoxError> {
        let uri = request.uri().clone();
        let client = self.client.clone();
        let sent = self
            .runtime
            .run(async move { client.send(request).await })
            .await;
        match sent {
            Some(Ok(resp)) => {
                let failure = (!resp.status().is_success())
                    .then(|| format!("the collector answered {}", resp.status()));
                self.outcome(&uri, failure);
                Ok(resp)
            }
            Some(Err(e)) => {
                self.outcome(&uri, Some(e.to_string()));
                Err(Box::new(e))
            }
            None => Err("the export runtime stopped".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_written_in_lower_case_hex() {
        let t = 0x4bf92f3577b34da6a3ce929d0e0736ae_u128.to_be_bytes();
        let s = 0x00f067aa0ba902b7_u64.to_be_bytes();
        assert_eq!(
            traceparent(&t, &s).to_str().unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0736ae-00f067aa0ba902b7-01"
        );
        let mut h = [0u8; 8];
        hex_into(&mut h, &[0x00, 0x0f, 0xa0, 0xff]);
        assert_eq!(&h, b"000fa0ff");
    }

    #[test]
    fn traceparent_parses_ids_and_flag() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0736ae-00f067aa0ba902b7-00"),
        );
        let p = parse_traceparent(&h).unwrap();
        assert_eq!(
            format!("{:032x}", p.trace_id),
            "4bf92f3577b34da6a3ce929d0e0736ae"
        );
        assert_eq!(format!("{:016x}", p.span_id), "00f067aa0ba902b7");
        assert!(!p.sampled);
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0736ae-00f067aa0ba902b7-01-extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0736ae-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0736ae-00f067aa0ba902b7-01",
        ] {
            h.insert(TRACEPARENT, HeaderValue::from_static(bad));
            assert_eq!(parse_traceparent(&h), None, "{bad}");
        }
        // A future version with more fields is read by its first four.
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("01-4bf92f3577b34da6a3ce929d0e0736ae-00f067aa0ba902b7-01-xy"),
        );
        assert!(parse_traceparent(&h).unwrap().sampled);
    }

    #[test]
    fn tracestate_is_kept_only_when_every_member_is_valid() {
        let n = |v: &str| normalize_tracestate(v).map(|s| s.to_string());
        assert_eq!(n("vendor=1"), Some("vendor=1".into()));
        assert_eq!(
            n(" a=1 ,, t@sys=x y , b_-*/=z"),
            Some("a=1,t@sys=x y,b_-*/=z".into())
        );
        for bad in [
            "",
            " , ",
            "A=1",
            "a",
            "a=",
            "a=1,b",
            "a=x=y",
            "a=1 2 ,é=1",
            "a@b@c=1",
        ] {
            assert_eq!(n(bad), None, "{bad:?}");
        }
        assert_eq!(n(&format!("a={}", "v".repeat(257))), None);
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(n(&many.join(",")), None);
        assert!(n(&many[..32].join(",")).is_some());
    }

    #[test]
    fn hosts_split_into_address_and_port() {
        assert_eq!(split_host("example.com:8080"), ("example.com", Some(8080)));
        assert_eq!(split_host("example.com"), ("example.com", None));
        assert_eq!(split_host("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host("::1"), ("::1", None));
    }

    #[test]
    fn disabled_tracing_builds_nothing() {
        let t = Tracing::start(&TracingConfig::default(), &ExportCounters::default()).unwrap();
        assert!(t.is_none());
    }

    fn tracer(ratio: f64) -> Arc<Tracing> {
        let cfg = TracingConfig {
            enabled: true,
            endpoint: "http://127.0.0.1:9/v1/traces".into(),
            sample_ratio: ratio,
            ..TracingConfig::default()
        };
        Tracing::start(&cfg, &ExportCounters::default())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn sampling_is_parent_based_then_by_ratio() {
        let mut sampled = HeaderMap::new();
        sampled.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0736ae-00f067aa0ba902b7-01"),
        );
        let mut unsampled = HeaderMap::new();
        unsampled.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0736ae-00f067aa0ba902b7-00"),
        );
        let none = HeaderMap::new();
        let (never, always, some) = (tracer(0.0), tracer(1.0), tracer(0.25));
        assert!(never.sample(&sampled).is_some(), "a sampled parent wins");
        assert!(
            always.sample(&unsampled).is_none(),
            "an unsampled parent wins"
        );
        assert!(never.sample(&none).is_none());
        assert!(always.sample(&none).is_some());
        let n = (0..4000).filter(|_| some.sample(&none).is_some()).count();
        assert!((700..1300).contains(&n), "{n} of 4000 at ratio 0.25");
    }
}
