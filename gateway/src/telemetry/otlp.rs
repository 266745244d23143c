//! The OTLP/HTTP trace exporter: a batch of spans, already encoded by the
//! request path ([`super::span::SpanBuf`]), becomes an
//! `ExportTraceServiceRequest` (protobuf) POSTed to the collector with
//! [`ExportClient`].
//!
//! The request's head (the resource, written once at start, and the
//! instrumentation scope) goes into room the batch keeps in front of its
//! spans, so the spans are never copied or re-encoded. No generated message
//! structs: `opentelemetry-otlp` converted every span into prost structs (a
//! `String` per attribute key and value) and prost then measured every
//! nested message again at each level. This module holds the protobuf
//! primitives the span writer uses.
//!
//! The wire format and the HTTP exchange are those of `opentelemetry-otlp`
//! 0.33 (`http-proto`), which this replaced: the same messages and fields
//! (proto3: zero scalars left out, oneof values always written, `status`
//! always present), `POST` with `content-type: application/x-protobuf`, the
//! configured headers, and its recommended retry policy: up to 3 retries of
//! a network failure or a 429/502/503/504 answer, backing off 100 ms
//! doubling to 1.6 s (plus up to 100 ms jitter; a 429/503 `Retry-After` in
//! seconds raises the delay, at most 30 s), never past the export timeout.
//! Any other non-2xx answer fails the export at once. The decoding side is
//! checked with `opentelemetry-proto`'s generated types in the end-to-end
//! tests (`tests/src/otlp.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};

use super::trace::{ExportClient, ExporterError};
use crate::config::TracingConfig;

/// The exporter's `User-Agent`.
const USER_AGENT: &str = concat!("gateway-otlp/", env!("CARGO_PKG_VERSION"));
const MAX_RETRIES: u32 = 3;
const INITIAL_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(1600);
const MAX_JITTER_MS: u64 = 100;
const MAX_THROTTLE: Duration = Duration::from_secs(30);
/// The instrumentation scope.
const SCOPE_NAME: &str = "gateway";

/// Exports spans with OTLP/HTTP protobuf.
#[derive(Debug)]
pub struct OtlpExporter {
    client: ExportClient,
    endpoint: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    /// `ResourceSpans.resource` (field 1, tag and length included).
    resource: Vec<u8>,
    /// `ScopeSpans.scope` (field 1, tag and length included).
    scope: Vec<u8>,
    shut_down: AtomicBool,
}

impl OtlpExporter {
    /// An exporter for `cfg` sending with `client`.
    pub fn new(cfg: &TracingConfig, client: ExportClient) -> Result<Self, ExporterError> {
        let endpoint: Uri = cfg
            .endpoint
            .parse()
            .map_err(|e| ExporterError(format!("telemetry.tracing.endpoint: {e}")))?;
        let mut headers = vec![(
            http::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        )];
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| ExporterError(format!("telemetry.tracing.headers.{k}: {e}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| ExporterError(format!("telemetry.tracing.headers.{k}: {e}")))?;
            headers.retain(|(n, _)| *n != name);
            headers.push((name, value));
        }
        // As `opentelemetry-otlp`: the environment's headers on top.
        let env = std::env::var("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_HEADERS"))
            .unwrap_or_default();
        for (name, value) in env_headers(&env) {
            headers.retain(|(n, _)| *n != name);
            headers.push((name, value));
        }
        let env = std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
        Ok(Self {
            client,
            endpoint,
            headers,
            timeout: cfg.export_timeout,
            resource: {
                let mut b = Vec::new();
                let fields = resource(&cfg.service_name, &env);
                message(&mut b, 1, |b| b.extend_from_slice(&fields));
                b
            },
            scope: {
                let mut b = Vec::new();
                message(&mut b, 1, |b| {
                    string(b, 1, SCOPE_NAME);
                    string(b, 2, env!("CARGO_PKG_VERSION"));
                });
                b
            },
            shut_down: AtomicBool::new(false),
        })
    }

    /// The bytes a batch keeps free in front of its spans for
    /// [`Self::body`] to write the request's head into.
    pub fn head_room(&self) -> usize {
        self.resource.len() + self.scope.len() + HEAD_SLACK
    }

    /// The request body for a batch: `buf` holds [`Self::head_room`] free
    /// bytes, then the spans as encoded `ScopeSpans.spans` fields. The head
    /// is written right in front of the spans: the spans are not copied.
    pub fn body(&self, mut buf: Vec<u8>) -> Bytes {
        let room = self.head_room();
        let Some(spans_len) = buf.len().checked_sub(room) else {
            return Bytes::new();
        };
        let head = request_head(&self.resource, &self.scope, spans_len);
        let start = room - head.len();
        buf[start..room].copy_from_slice(&head);
        Bytes::from(buf).slice(start..)
    }

    /// Sends an export request `body` ([`Self::body`]), retrying as
    /// `opentelemetry-otlp` does.
    pub async fn export(&self, body: Bytes) -> Result<(), String> {
        if self.shut_down.load(Ordering::Relaxed) {
            return Err("exporter already shut down".to_owned());
        }
        if body.is_empty() {
            return Ok(());
        }
        let start = tokio::time::Instant::now();
        let mut attempt = 0;
        let mut delay = INITIAL_DELAY;
        let mut cap = MAX_DELAY;
        loop {
            let (retryable, server_delay, message) = match self.send_once(&body).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if !retryable || attempt >= MAX_RETRIES || start.elapsed() >= self.timeout {
                return Err(message);
            }
            attempt += 1;
            if let Some(d) = server_delay {
                let d = d.min(MAX_THROTTLE);
                if d > cap {
                    cap = MAX_THROTTLE;
                }
                if !d.is_zero() {
                    delay = delay.max(d);
                }
            }
            let jitter = Duration::from_millis(fastrand::u64(0..=MAX_JITTER_MS));
            let sleep = delay.saturating_add(jitter).min(cap);
            if sleep >= self.timeout.saturating_sub(start.elapsed()) {
                return Err(message);
            }
            // The export thread has nothing else to do meanwhile.
            std::thread::sleep(sleep);
            delay = delay.saturating_mul(2).min(cap);
        }
    }

    /// One POST; `Err((retryable, server delay, message))`.
    async fn send_once(&self, body: &Bytes) -> Result<(), (bool, Option<Duration>, String)> {
        let mut req = http::Request::new(body.clone());
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.endpoint.clone();
        let h = req.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        for (k, v) in &self.headers {
            h.insert(k.clone(), v.clone());
        }
        let resp = self
            .client
            .send_bytes(req)
            .await
            .map_err(|_| (true, None, "HTTP export failed: network error".to_owned()))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let code = status.as_u16();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(600)));
        let (retryable, delay) = match code {
            429 | 503 => (true, retry_after),
            502 | 504 => (true, None),
            _ => (false, None),
        };
        Err((
            retryable,
            delay,
            format!("HTTP export failed with status code: {code}"),
        ))
    }

    /// Refuses later exports.
    pub fn shut_down(&self) {
        self.shut_down.store(true, Ordering::Relaxed);
    }
}

/// The `Resource`'s attributes: `OTEL_RESOURCE_ATTRIBUTES` (`key=value`
/// pairs, percent-encoded, as the SDKs read it), the `telemetry.sdk.*`
/// facts, and `service.name` from the config over all of them.
fn resource(service_name: &str, env: &str) -> Vec<u8> {
    let mut attrs: Vec<(String, String)> = env
        .split_terminator(',')
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            let k = k.trim();
            let v = String::from_utf8(percent_decode(v.trim())?).ok()?;
            (!k.is_empty()).then(|| (k.to_owned(), v))
        })
        .collect();
    for (k, v) in [
        ("telemetry.sdk.name", SCOPE_NAME),
        ("telemetry.sdk.language", "rust"),
        ("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ("service.name", service_name),
    ] {
        attrs.retain(|(key, _)| key != k);
        attrs.push((k.to_owned(), v.to_owned()));
    }
    let mut out = Vec::new();
    for (k, v) in &attrs {
        message(&mut out, 1, |b| {
            string(b, 1, k);
            message(b, 2, |b| {
                tag(b, 1, 2);
                len_bytes(b, v.as_bytes());
            });
        });
    }
    out
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs separated by commas,
/// values percent-encoded; malformed pairs are skipped.
fn env_headers(s: &str) -> Vec<(HeaderName, HeaderValue)> {
    s.split_terminator(',')
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            let name = HeaderName::from_bytes(k.trim().as_bytes()).ok()?;
            let value = HeaderValue::from_bytes(&percent_decode(v.trim())?).ok()?;
            Some((name, value))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&out).ok()?;
    Some(out)
}

/// The bytes in front of a batch's spans: `ExportTraceServiceRequest {
/// resource_spans: [ResourceSpans { resource, scope_spans: [ScopeSpans {
/// scope, spans }] }] }` up to its first span, for `spans_len` bytes of
/// encoded `spans` fields.
fn request_head(resource: &[u8], scope: &[u8], spans_len: usize) -> Vec<u8> {
    let mut head = Vec::with_capacity(resource.len() + scope.len() + HEAD_SLACK);
    let scope_spans = scope.len() + spans_len;
    let resource_spans = resource.len() + 1 + varint_len(scope_spans as u64) + scope_spans;
    tag(&mut head, 1, 2);
    varint(&mut head, resource_spans as u64);
    head.extend_from_slice(resource);
    tag(&mut head, 2, 2);
    varint(&mut head, scope_spans as u64);
    head.extend_from_slice(scope);
    head
}

/// Room for the tags and lengths around the resource and scope (three
/// tags and lengths of at most 11 bytes each).
const HEAD_SLACK: usize = 33;

/// The encoded length of `v` as a varint.
pub(super) fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

pub(super) fn tag(b: &mut Vec<u8>, field: u32, wire: u8) {
    varint(b, (u64::from(field) << 3) | u64::from(wire));
}

pub(super) fn varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

pub(super) fn len_bytes(b: &mut Vec<u8>, data: &[u8]) {
    varint(b, data.len() as u64);
    b.extend_from_slice(data);
}

/// A proto3 `string` field (left out when empty).
pub(super) fn string(b: &mut Vec<u8>, field: u32, s: &str) {
    bytes(b, field, s.as_bytes());
}

/// A proto3 `bytes` field (left out when empty).
pub(super) fn bytes(b: &mut Vec<u8>, field: u32, data: &[u8]) {
    if !data.is_empty() {
        tag(b, field, 2);
        len_bytes(b, data);
    }
}

/// A proto3 varint field (left out when 0).
pub(super) fn uint(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(b, field, 0);
        varint(b, v);
    }
}

pub(super) fn fixed64(b: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(b, field, 1);
        b.extend_from_slice(&v.to_le_bytes());
    }
}

pub(super) fn fixed32(b: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        tag(b, field, 5);
        b.extend_from_slice(&v.to_le_bytes());
    }
}

/// An embedded message (always written, even empty): its fields are
/// written in place after a one-byte length, which is widened afterwards
/// if the message is 128 bytes or more (the body moves once then; small
/// messages, the attributes, never move).
pub(super) fn message(b: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    tag(b, field, 2);
    let start = b.len();
    b.push(0);
    f(b);
    let len = b.len() - start - 1;
    if len < 0x80 {
        b[start] = len as u8;
        return;
    }
    let mut prefix = [0u8; 10];
    let mut n = 0;
    let mut v = len as u64;
    while v >= 0x80 {
        prefix[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    prefix[n] = v as u8;
    n += 1;
    let end = b.len();
    b.resize(end + n - 1, 0);
    b.copy_within(start + 1..end, start + n);
    b[start..start + n].copy_from_slice(&prefix[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_lengths() {
        let mut b = Vec::new();
        varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        let mut b = Vec::new();
        message(&mut b, 1, |b| b.extend_from_slice(&[7u8; 200]));
        assert_eq!(&b[..3], &[0x0a, 0xc8, 0x01]);
        assert_eq!(b.len(), 203);
        let mut b = Vec::new();
        message(&mut b, 2, |b| b.extend_from_slice(&[1u8; 127]));
        assert_eq!(&b[..2], &[0x12, 127]);
        assert_eq!(b.len(), 129);
        let mut b = Vec::new();
        message(&mut b, 1, |b| b.extend_from_slice(&[7u8; 20000]));
        assert_eq!(&b[..4], &[0x0a, 0xa0, 0x9c, 0x01]);
        assert!(b[4..].iter().all(|x| *x == 7) && b.len() == 20004);
        let mut b = Vec::new();
        string(&mut b, 5, "");
        uint(&mut b, 6, 0);
        assert!(b.is_empty());
    }

    #[test]
    fn environment_headers_are_parsed_like_the_otlp_exporter() {
        let h = env_headers("api-key=a%20b, x-tenant = t1 ,bad,=v,k=%zz");
        let got: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(got, [("api-key", "a b"), ("x-tenant", "t1")]);
    }
}
