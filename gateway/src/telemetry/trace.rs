//! OpenTelemetry traces: a SERVER span per request, a CLIENT span per
//! upstream attempt, decision events, W3C trace context in and out, OTLP/HTTP
//! export from a batch processor thread.
//!
//! Spans are made directly with the `opentelemetry` API, not through
//! `tracing-opentelemetry`: the request path decides sampling itself before
//! anything is built, so a request that is not sampled (or a gateway with
//! tracing off) allocates no span data at all, and a client's `traceparent`
//! then passes through to the upstream unchanged. Sampling is parent-based:
//! a valid client `traceparent` decides (sampled or not), otherwise
//! `sample_ratio` of requests start a trace.
//!
//! Ended spans go to the SDK's batch processor, which exports from its own
//! thread with [`ExportClient`]: the gateway's cold-path client
//! ([`crate::client`], https or loopback http, bounded by the export
//! timeout) run on a small current-thread runtime of its own. The request
//! path only pushes into a bounded queue: with the collector down, spans are
//! dropped and counted, requests do not wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Version};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};
use opentelemetry_sdk::Resource;
use prometheus_client::metrics::counter::Counter;

use super::TRACEPARENT;
use crate::client::{BackgroundRuntime, ClientSettings, ColdClient};
use crate::config::TracingConfig;

/// `tracestate` (W3C Trace Context).
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// A recording span of the OpenTelemetry SDK.
pub type SdkSpan = opentelemetry_sdk::trace::Span;

/// The process's tracer: sampling, span creation, export.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    ratio: f64,
    ended: Counter,
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
}

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the OTLP trace exporter: {0}")]
pub struct ExporterError(pub(crate) String);

impl Tracing {
    /// The tracer for `cfg`, or `None` when tracing is off. Spawns the batch
    /// processor's thread.
    pub fn start(
        cfg: &TracingConfig,
        counters: &ExportCounters,
    ) -> Result<Option<Arc<Self>>, ExporterError> {
        if !cfg.enabled {
            return Ok(None);
        }
        // Encodes straight from the span data (see `super::otlp`).
        let exporter = super::otlp::OtlpExporter::new(cfg, ExportClient::new(cfg)?)?;
        let exporter = CountingExporter {
            inner: exporter,
            counters: counters.clone(),
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(cfg.max_queue_size)
            .with_max_export_batch_size(cfg.max_export_batch_size)
            .with_scheduled_delay(cfg.scheduled_delay)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            // The edge decides (parent-based ratio) before building a span.
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("gateway")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        tracing::info!(endpoint = %cfg.endpoint, ratio = cfg.sample_ratio, "exporting traces with OTLP/HTTP");
        Ok(Some(Arc::new(Self {
            provider,
            tracer,
            ratio: cfg.sample_ratio,
            ended: counters.ended.clone(),
            shutdown_timeout: cfg.shutdown_timeout,
        })))
    }

    /// Exports what is queued and stops the processor, waiting at most the
    /// configured shutdown timeout (on a blocking thread: the SDK's
    /// shutdown blocks).
    pub async fn shutdown(self: Arc<Self>) {
        let bound = self.shutdown_timeout;
        let task = tokio::task::spawn_blocking(move || self.provider.shutdown_with_timeout(bound));
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
        let cx = match &sampled.parent {
            Some(p) => {
                let state = req
                    .headers
                    .get(TRACESTATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<TraceState>().ok())
                    .unwrap_or_default();
                Context::new().with_remote_span_context(SpanContext::new(
                    p.trace_id,
                    p.span_id,
                    TraceFlags::SAMPLED,
                    true,
                    state,
                ))
            }
            None => Context::new(),
        };
        let method = method_name(req.method);
        let mut attrs = Vec::with_capacity(12);
        attrs.push(KeyValue::new("http.request.method", method));
        if method == "_OTHER" {
            attrs.push(KeyValue::new(
                "http.request.method_original",
                req.method.as_str().to_owned(),
            ));
        }
        attrs.push(KeyValue::new("url.path", req.path.to_owned()));
        attrs.push(KeyValue::new("url.scheme", "http"));
        attrs.push(KeyValue::new("http.route", arc_value(req.route)));
        attrs.push(KeyValue::new(
            "network.protocol.version",
            protocol_version(req.version),
        ));
        attrs.push(KeyValue::new("client.address", ip_string(req.client_ip)));
        if let Some((host, port)) = req.host.map(split_host) {
            attrs.push(KeyValue::new("server.address", host.to_owned()));
            if let Some(port) = port {
                attrs.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        if let Some(ua) = req
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            attrs.push(KeyValue::new("user_agent.original", ua.to_owned()));
        }
        if let Ok(id) = req.request_id.to_str() {
            attrs.push(KeyValue::new("gateway.request_id", id.to_owned()));
        }
        let mut name = String::with_capacity(method.len() + 1 + req.route.len());
        name.push_str(method);
        name.push(' ');
        name.push_str(req.route);
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &cx);
        ServerSpan {
            span: Box::new(span),
            tracer: self.tracer.clone(),
            ended: self.ended.clone(),
        }
    }
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
    /// Path (no query: it may carry secrets).
    pub path: &'a str,
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

/// The SERVER span of a sampled request, ended with its response body.
#[derive(Debug)]
pub struct ServerSpan {
    span: Box<SdkSpan>,
    tracer: SdkTracer,
    ended: Counter,
}

impl ServerSpan {
    /// Its trace id in hex (the exemplar label).
    pub fn trace_id_hex(&self) -> Box<str> {
        let mut s = String::with_capacity(32);
        push_hex(&mut s, &self.span.span_context().trace_id().to_bytes());
        s.into_boxed_str()
    }

    /// What the upstream attempts hang under (a request extension).
    pub fn parent(&self) -> SpanParent {
        let sc = self.span.span_context();
        SpanParent(Arc::new(ParentInner {
            tracer: self.tracer.clone(),
            context: SpanContext::new(
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags(),
                false,
                sc.trace_state().clone(),
            ),
            ended: self.ended.clone(),
        }))
    }

    /// The response head: status and upstream.
    pub fn head(&mut self, status: u16, upstream: Option<&str>) {
        let s = &mut self.span;
        s.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(u) = upstream {
            s.set_attribute(KeyValue::new("gateway.upstream", u.to_owned()));
        }
        if status >= 500 {
            s.set_attribute(KeyValue::new("error.type", status.to_string()));
            s.set_status(Status::error(""));
        }
    }

    /// A middleware decision, as an event `name` with one attribute.
    pub fn event(&mut self, name: &'static str, key: &'static str, value: &'static str) {
        self.span.add_event(name, vec![KeyValue::new(key, value)]);
    }

    /// The response body failed after the head (`kind` is `error.type`).
    pub fn body_failed(&mut self, kind: &'static str) {
        self.span.set_attribute(KeyValue::new("error.type", kind));
        self.span.set_status(Status::error("response body failed"));
    }

    /// Ends the span when the response body is done.
    pub fn end(&mut self, bytes_out: u64) {
        self.span.set_attribute(KeyValue::new(
            "http.response.body.size",
            i64::try_from(bytes_out).unwrap_or(i64::MAX),
        ));
        self.span.end();
    }
}

impl Drop for ServerSpan {
    fn drop(&mut self) {
        // The SDK ends a span that is dropped unended; count it either way.
        self.ended.inc();
    }
}

/// The sampled server span's context, carried to the proxy as a request
/// extension (present only on sampled requests).
#[derive(Debug, Clone)]
pub struct SpanParent(Arc<ParentInner>);

#[derive(Debug)]
struct ParentInner {
    tracer: SdkTracer,
    context: SpanContext,
    ended: Counter,
}

/// One upstream attempt of a sampled request. Dropped without an outcome
/// (the request was cancelled), it ends with `error.type = "cancelled"`.
#[derive(Debug)]
pub struct AttemptSpan {
    span: SdkSpan,
    ended: Counter,
    done: bool,
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
        let cx = Context::new().with_remote_span_context(p.context.clone());
        let name = method_name(method);
        let mut attrs = Vec::with_capacity(7);
        attrs.push(KeyValue::new("http.request.method", name));
        attrs.push(KeyValue::new("server.address", authority.host().to_owned()));
        if let Some(port) = authority.port_u16() {
            attrs.push(KeyValue::new("server.port", i64::from(port)));
        }
        attrs.push(KeyValue::new("network.protocol.version", "1.1"));
        attrs.push(KeyValue::new("gateway.upstream", arc_value(upstream)));
        if resend_count > 0 {
            attrs.push(KeyValue::new(
                "http.request.resend_count",
                i64::try_from(resend_count).unwrap_or(i64::MAX),
            ));
        }
        let span = p
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .start_with_context(&p.tracer, &cx);
        let sc = span.span_context();
        let header = traceparent(sc.trace_id(), sc.span_id());
        (
            AttemptSpan {
                span,
                ended: p.ended.clone(),
                done: false,
            },
            header,
        )
    }
}

impl AttemptSpan {
    /// The attempt got a response head.
    pub fn status(mut self, status: u16) {
        self.span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            self.span
                .set_attribute(KeyValue::new("error.type", status.to_string()));
            self.span.set_status(Status::error(""));
        }
        self.end();
    }

    /// The attempt failed without a response (`kind` is `error.type`).
    pub fn failed(mut self, kind: &'static str, description: String) {
        self.span.set_attribute(KeyValue::new("error.type", kind));
        self.span.set_status(Status::error(description));
        self.end();
    }

    fn end(&mut self) {
        self.done = true;
        self.span.end();
    }
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        if !self.done {
            self.span
                .set_attribute(KeyValue::new("error.type", "cancelled"));
            self.span.set_status(Status::error("request cancelled"));
            self.span.end();
        }
        self.ended.inc();
    }
}

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    /// Trace id.
    pub trace_id: TraceId,
    /// The caller's span id.
    pub span_id: SpanId,
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
        trace_id: TraceId::from(u128::from_str_radix(trace, 16).ok()?),
        span_id: SpanId::from(u64::from_str_radix(parent, 16).ok()?),
        sampled: flags & 1 == 1,
    })
}

/// `00-{trace}-{span}-01`.
fn traceparent(trace: TraceId, span: SpanId) -> HeaderValue {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    push_hex(&mut s, &trace.to_bytes());
    s.push('-');
    push_hex(&mut s, &span.to_bytes());
    s.push_str("-01");
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// An address as text; IPv4 without the formatter (every traced request).
fn ip_string(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(a) => {
            let mut s = String::with_capacity(15);
            for (i, o) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if o >= 100 {
                    s.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    s.push(char::from(b'0' + o / 10 % 10));
                }
                s.push(char::from(b'0' + o % 10));
            }
            s
        }
        v6 => v6.to_string(),
    }
}

/// Appends `bytes` in lower-case hex (ids: no formatter on the request path).
fn push_hex(s: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
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

fn arc_value(s: &Arc<str>) -> Value {
    Value::String(StringValue::from(s.clone()))
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

/// Counts exported and failed spans around the OTLP exporter.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    counters: ExportCounters,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let r = self.inner.export(batch).await;
        match &r {
            Ok(()) => {
                self.counters.exported.inc_by(n);
            }
            Err(e) => {
                self.counters.failed.inc_by(n);
                self.counters.errors.inc();
                tracing::debug!(error = %e, spans = n, "trace export failed; spans dropped");
            }
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter's HTTP client: the cold-path client ([`ColdClient`]) run on
/// a [`BackgroundRuntime`] of its own, since the SDK's batch processor
/// exports from its own thread with a plain executor (no tokio there). Its
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

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
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
        let t = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0736ae").unwrap();
        let s = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        assert_eq!(
            traceparent(t, s).to_str().unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0736ae-00f067aa0ba902b7-01"
        );
        let mut h = String::new();
        push_hex(&mut h, &[0x00, 0x0f, 0xa0, 0xff]);
        assert_eq!(h, "000fa0ff");
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.99.255",
            "::1",
            "2001:db8::7",
        ] {
            let a: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_string(a), a.to_string());
        }
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
