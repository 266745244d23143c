//! A lean HTTP/1.1 client for upstream connections.
//!
//! Unlike a general-purpose client, it runs inside the task that serves the
//! downstream request: the request head and body are written and the
//! response is read by that task, and the response body reads straight from
//! the upstream socket when the server polls it. No connection task, no
//! channels, no extra wake-ups: that is where a proxy built on a general
//! client spends its time. Connections are kept alive in a small LIFO pool
//! per endpoint ([`super::Endpoint`]) and returned as soon as a response is
//! complete.
//!
//! Framing follows RFC 9112: `Content-Length`, `chunked`, close-delimited;
//! no body for `HEAD`, 1xx, 204 and 304; interim 1xx responses (other than
//! 101) are skipped. A request that failed on a reused connection before a
//! single response byte arrived is retried once on a fresh connection when
//! it is safe (idempotent, or no body was sent): the classic keep-alive race
//! with an upstream closing an idle connection.
//!
//! Parsing is strict where a lenient reading would let an upstream smuggle
//! a second response or frame a body two ways: `Content-Length` is
//! `1*DIGIT` (identical comma-separated repeats collapse to one value, sent
//! downstream as one; anything else is a 502); a chunk size is `1*HEXDIG`
//! that must fit 64 bits; a status outside 100-599 is a 502. A response with
//! both `Transfer-Encoding: chunked` and `Content-Length` is read as chunked
//! (RFC 9112 §6.3), its `Content-Length` removed, and its connection closed
//! afterwards.
//!
//! Connection reuse is safe only if nothing unexpected can still arrive on
//! a connection: one goes back to the pool only when its response ended
//! exactly at the end of what was read (no byte beyond it, no framing
//! fault), and a pooled connection is checked on take-out with one
//! non-blocking `MSG_PEEK` read: readable data or EOF means the upstream
//! sent something nobody asked for (or left), and the connection is closed.
//!
//! A response body that goes silent for `body_idle_timeout` (or outlasts the
//! optional `body_timeout`) fails with [`UpstreamError::BodyTimeout`]: the
//! client's response is aborted, never ended cleanly, and the upstream
//! connection is closed. One pooled timer per body, armed the first time
//! the body has to wait and moved (not re-armed) after progress.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use std::future::Future as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Endpoint, InflightGuard};
use crate::body::Body;
use crate::error::BoxError;
use crate::timer::{PooledSleep, SleepPool};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most response header fields accepted.
const MAX_HEADERS: usize = 128;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;
/// Pending request bytes are flushed past this size.
const WRITE_FLUSH: usize = 64 * 1024;

/// Why talking to an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connection could not be established.
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// The TCP connection was not established in time.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The upstream closed the connection before a complete response head.
    #[error("upstream closed the connection before responding")]
    Closed,
    /// The connection failed while exchanging the request or response.
    #[error("upstream connection error: {0}")]
    Io(#[source] io::Error),
    /// The upstream sent something that is not valid HTTP/1.1.
    #[error("invalid response from upstream: {0}")]
    Protocol(&'static str),
    /// The response body stalled past `body_idle_timeout` or outlasted
    /// `body_timeout`.
    #[error("upstream response body timed out")]
    BodyTimeout,
}

/// An open upstream connection.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    idle_since: Instant,
}

impl Conn {
    /// Opens a connection to `ep`.
    pub async fn open(ep: &Endpoint, timeout: Duration) -> Result<Self, UpstreamError> {
        let io = tokio::time::timeout(timeout, TcpStream::connect(ep.authority.as_str()))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Connect)?;
        let _ = io.set_nodelay(true);
        Ok(Self {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            idle_since: Instant::now(),
        })
    }

    /// Whether a pooled connection is unusable: the upstream closed it or
    /// sent bytes nobody asked for (a stray response would be read as the
    /// answer to the next, unrelated request). A healthy idle connection is
    /// never readable. One non-blocking `MSG_PEEK` receive asks the kernel
    /// itself: the runtime's readiness may not have seen bytes that arrived
    /// since its last poll of the driver.
    fn looks_closed(&self) -> bool {
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(&self.io).peek(&mut probe) {
            // Data, or 0 = EOF.
            Ok(_) => true,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    /// The raw stream and any bytes already read past the response head,
    /// for a tunnel after `101 Switching Protocols`.
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        (self.io, self.buf.freeze())
    }
}

/// Idle keep-alive connections of one endpoint, newest first.
#[derive(Debug, Default)]
pub struct IdlePool {
    conns: std::sync::Mutex<Vec<Conn>>,
}

impl IdlePool {
    fn take(&self, idle_timeout: Duration) -> Option<Conn> {
        loop {
            let conn = self.conns.lock().ok()?.pop()?;
            if conn.idle_since.elapsed() < idle_timeout && !conn.looks_closed() {
                return Some(conn);
            }
        }
    }

    fn put(&self, mut conn: Conn, max_idle: usize) {
        conn.idle_since = Instant::now();
        if let Ok(mut conns) = self.conns.lock() {
            if conns.len() < max_idle {
                conns.push(conn);
            }
        }
    }

    /// Idle connections currently pooled.
    pub fn len(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Whether no connection is pooled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pool settings of an upstream.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// TCP connect deadline.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Idle connections kept per endpoint.
    pub max_idle: usize,
    /// Longest wait for the next bytes of a response body.
    pub body_idle_timeout: Duration,
    /// Deadline for a whole response body from its head, if any.
    pub body_timeout: Option<Duration>,
}

/// What came back from an upstream.
#[derive(Debug)]
pub enum Exchange {
    /// A response whose body streams from the upstream.
    Response(Response<Body>),
    /// `101 Switching Protocols`: the response head and the raw connection.
    Upgrade(Response<Body>, Conn),
}

/// How a request's header fields are written into the upstream head.
/// [`Plain`] writes them as they are; the proxy's forwarding headers
/// (`proxy::Forwarding`) rewrite a few on the way, with no map operation.
pub trait EncodeHeaders {
    /// Writes `headers` into `out` as HTTP/1.1 header lines (see [`line`]).
    fn encode(&self, headers: &HeaderMap, out: &mut BytesMut);
}

/// The header fields as they are.
#[derive(Debug, Clone, Copy)]
pub struct Plain;

impl EncodeHeaders for Plain {
    fn encode(&self, headers: &HeaderMap, out: &mut BytesMut) {
        for (name, value) in headers {
            line(out, name.as_str().as_bytes(), &[value.as_bytes()]);
        }
    }
}

/// Writes the header line `name: parts...`.
pub fn line(out: &mut BytesMut, name: &[u8], value: &[&[u8]]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    for v in value {
        out.extend_from_slice(v);
    }
    out.extend_from_slice(b"\r\n");
}

/// Sends `req` (whose URI is origin-form path and query) to the endpoint
/// held by `guard`, reusing a pooled connection when one is available.
/// Its header fields are written by `headers`; a streamed response body
/// takes its deadline timer from `timers`.
pub async fn send(
    guard: InflightGuard,
    pool: PoolConfig,
    timers: &Arc<SleepPool>,
    req: Request<Body>,
    headers: &(dyn EncodeHeaders + Sync),
) -> Result<Exchange, BoxError> {
    let ep = guard.endpoint().clone();
    // The request's parts end here, before the first await: the future does
    // not carry them.
    let (head, mut body, framing, is_head, replayable_method) = {
        let (parts, body) = req.into_parts();
        let framing = RequestFraming::of(&parts.headers, &body);
        let head = encode_head(
            &parts,
            &ep.authority,
            framing,
            body.size_hint().exact(),
            headers,
        );
        let replayable_method = matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        (
            head,
            body,
            framing,
            parts.method == Method::HEAD,
            replayable_method,
        )
    };
    let mut fresh_only = false;
    let (mut conn, resp) = loop {
        let (mut conn, reused) = match (!fresh_only)
            .then(|| ep.idle.take(pool.idle_timeout))
            .flatten()
        {
            Some(c) => (c, true),
            None => (Conn::open(&ep, pool.connect_timeout).await?, false),
        };
        let mut body_started = false;
        let wrote = write_request(&mut conn, &head, &mut body, framing, &mut body_started).await;
        let retry_ok =
            reused && !body_started && (replayable_method || framing == RequestFraming::Empty);
        match wrote {
            Ok(()) => {}
            Err(WriteError::Body(e)) => return Err(e),
            Err(WriteError::Io(_)) if retry_ok => {
                fresh_only = true;
                continue;
            }
            Err(WriteError::Io(e)) => return Err(UpstreamError::Io(e).into()),
        }
        match read_head(&mut conn, is_head).await {
            Ok(r) => break (conn, r),
            Err(ReadError::NothingReceived(_)) if retry_ok && framing == RequestFraming::Empty => {
                fresh_only = true;
            }
            Err(ReadError::NothingReceived(e) | ReadError::Failed(e)) => return Err(e.into()),
        }
    };
    let Head {
        parts,
        framing,
        keep_alive,
    } = resp;
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Exchange::Upgrade(
            Response::from_parts(parts, Body::Empty),
            conn,
        ));
    }
    let body = match framing {
        ResponseFraming::Empty => {
            release(&ep, conn, keep_alive, pool);
            Body::Empty
        }
        ResponseFraming::Length(n) if conn.buf.len() as u64 >= n => {
            // The whole body arrived with the head: hand the connection back now.
            let data = conn.buf.split_to(n as usize).freeze();
            release(&ep, conn, keep_alive, pool);
            Body::full(data)
        }
        framing => Body::H1(Box::new(H1Body {
            conn: Some(conn),
            decoder: match framing {
                ResponseFraming::Length(n) => Decoder::Length(n),
                ResponseFraming::Chunked => Decoder::Chunked(Chunk::Size),
                _ => Decoder::Close,
            },
            keep_alive,
            pool,
            guard,
            timers: timers.clone(),
            sleep: None,
            progressed: false,
            deadline: pool.body_timeout.map(|t| Instant::now() + t),
            report: false,
        })),
    };
    Ok(Exchange::Response(Response::from_parts(parts, body)))
}

fn release(ep: &Arc<Endpoint>, conn: Conn, keep_alive: bool, pool: PoolConfig) {
    // Leftover bytes mean the upstream sent more than one response: unusable.
    if keep_alive && conn.buf.is_empty() {
        ep.idle.put(conn, pool.max_idle);
    }
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestFraming {
    Empty,
    Length,
    Chunked,
}

impl RequestFraming {
    fn of(headers: &HeaderMap, body: &Body) -> Self {
        if body.is_end_stream() {
            Self::Empty
        } else if headers.contains_key(header::CONTENT_LENGTH) || body.size_hint().exact().is_some()
        {
            Self::Length
        } else {
            Self::Chunked
        }
    }
}

fn encode_head(
    parts: &http::request::Parts,
    authority: &http::uri::Authority,
    framing: RequestFraming,
    exact_len: Option<u64>,
    headers: &(dyn EncodeHeaders + Sync),
) -> BytesMut {
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let mut out = BytesMut::with_capacity(256 + parts.headers.len() * 48);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(pq.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    headers.encode(&parts.headers, &mut out);
    match framing {
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        RequestFraming::Length if !parts.headers.contains_key(header::CONTENT_LENGTH) => {
            // An exact size without the header (an h2 client, a buffered body).
            out.extend_from_slice(
                format!("content-length: {}\r\n", exact_len.unwrap_or(0)).as_bytes(),
            );
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    out
}

enum WriteError {
    Io(io::Error),
    Body(BoxError),
}

async fn write_request(
    conn: &mut Conn,
    head: &[u8],
    body: &mut Body,
    framing: RequestFraming,
    started: &mut bool,
) -> Result<(), WriteError> {
    if framing == RequestFraming::Empty {
        return conn.io.write_all(head).await.map_err(WriteError::Io);
    }
    let mut out = BytesMut::from(head);
    loop {
        let frame = match body.frame().now_or_never() {
            Some(f) => f,
            None => {
                flush(&mut conn.io, &mut out).await?;
                body.frame().await
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(WriteError::Body)?;
        *started = true;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if framing == RequestFraming::Chunked {
            // Chunk size line straight into the buffer, no allocation.
            let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{:x}\r\n", data.len()));
        }
        if data.len() >= WRITE_FLUSH / 4 {
            flush(&mut conn.io, &mut out).await?;
            conn.io.write_all(&data).await.map_err(WriteError::Io)?;
        } else {
            out.extend_from_slice(&data);
        }
        if framing == RequestFraming::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= WRITE_FLUSH {
            flush(&mut conn.io, &mut out).await?;
        }
    }
    if framing == RequestFraming::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    flush(&mut conn.io, &mut out).await
}

async fn flush(io: &mut TcpStream, out: &mut BytesMut) -> Result<(), WriteError> {
    if !out.is_empty() {
        io.write_all(out).await.map_err(WriteError::Io)?;
        out.clear();
    }
    Ok(())
}

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseFraming {
    Empty,
    Length(u64),
    Chunked,
    Close,
}

struct Head {
    parts: http::response::Parts,
    framing: ResponseFraming,
    keep_alive: bool,
}

enum ReadError {
    /// Failed before a single response byte arrived (safe to retry).
    NothingReceived(UpstreamError),
    Failed(UpstreamError),
}

async fn read_head(conn: &mut Conn, is_head_request: bool) -> Result<Head, ReadError> {
    let mut received_any = false;
    loop {
        if !conn.buf.is_empty() {
            received_any = true;
            if let Some(head) =
                parse_head(&mut conn.buf, is_head_request).map_err(ReadError::Failed)?
            {
                return Ok(head);
            }
            if conn.buf.len() > MAX_HEAD {
                return Err(ReadError::Failed(UpstreamError::Protocol(
                    "response head too large",
                )));
            }
        }
        conn.buf.reserve(READ_CHUNK);
        let fail = |e| {
            if received_any {
                ReadError::Failed(e)
            } else {
                ReadError::NothingReceived(e)
            }
        };
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(0) => return Err(fail(UpstreamError::Closed)),
            Ok(_) => {}
            Err(e) => return Err(fail(UpstreamError::Io(e))),
        }
    }
}

/// Parses one response head from the front of `buf` (skipping interim 1xx
/// responses); `None` when more bytes are needed.
fn parse_head(buf: &mut BytesMut, is_head_request: bool) -> Result<Option<Head>, UpstreamError> {
    loop {
        // Uninitialized slots: nothing to fill before parsing.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
        let len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(UpstreamError::Protocol("too many response headers"))
            }
            Err(_) => return Err(UpstreamError::Protocol("malformed response head")),
        };
        // HTTP's range only: a `999` would otherwise reach the client and
        // mint a metric series of its own.
        let code = resp.code.unwrap_or(0);
        if !(100..=599).contains(&code) {
            return Err(UpstreamError::Protocol("status code out of range"));
        }
        let status = StatusCode::from_u16(code)
            .map_err(|_| UpstreamError::Protocol("invalid status code"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            buf.advance(len);
            continue;
        }
        let version = if resp.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Offsets of names and values, so the head can be frozen once and the
        // values shared without copying.
        let base = buf.as_ptr() as usize;
        let mut spans = Vec::with_capacity(resp.headers.len());
        for h in resp.headers.iter() {
            let n = h.name.as_ptr() as usize - base;
            let v = h.value.as_ptr() as usize - base;
            spans.push((n, h.name.len(), v, h.value.len()));
        }
        let head = buf.split_to(len).freeze();
        // Room for what the proxy adds (Via, X-Request-Id) without growing.
        let mut map = HeaderMap::with_capacity(spans.len() + 2);
        // Which framing headers are present: looked up only if they are.
        let mut seen = Seen::default();
        for (n, nl, v, vl) in spans {
            let name = HeaderName::from_bytes(&head[n..n + nl])
                .map_err(|_| UpstreamError::Protocol("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
                .map_err(|_| UpstreamError::Protocol("invalid header value"))?;
            seen.note(&name);
            map.append(name, value);
        }
        let (framing, must_close) = framing_of(&mut map, status, is_head_request, seen)?;
        let keep_alive = !must_close
            && framing != ResponseFraming::Close
            && if seen.connection {
                keeps_alive(&map, version)
            } else {
                version != Version::HTTP_10
            };
        let mut parts = Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        parts.headers = map;
        return Ok(Some(Head {
            parts,
            framing,
            keep_alive,
        }));
    }
}

/// Framing headers present in a response head.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    transfer_encoding: bool,
    content_length: bool,
    connection: bool,
}

impl Seen {
    fn note(&mut self, name: &HeaderName) {
        if name == header::CONTENT_LENGTH {
            self.content_length = true;
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == header::CONNECTION {
            self.connection = true;
        }
    }
}

/// The body framing of a response, and whether its connection must be
/// closed after it. Normalises `Content-Length` in `h` to one value and
/// removes it when `Transfer-Encoding` is present too.
fn framing_of(
    h: &mut HeaderMap,
    status: StatusCode,
    is_head_request: bool,
    seen: Seen,
) -> Result<(ResponseFraming, bool), UpstreamError> {
    let no_body = is_head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if seen.transfer_encoding {
        // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and
        // such a message may be an attempt at request/response smuggling:
        // the client gets one framing (no Content-Length) and the
        // connection is not reused.
        let must_close = seen.content_length;
        if must_close {
            h.remove(header::CONTENT_LENGTH);
        }
        if no_body {
            return Ok((ResponseFraming::Empty, must_close));
        }
        let chunked = h
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|te| te.to_str().ok())
            .and_then(|s| s.rsplit(',').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        let framing = if chunked {
            ResponseFraming::Chunked
        } else {
            ResponseFraming::Close
        };
        return Ok((framing, must_close));
    }
    if seen.content_length {
        let n = content_length(h)?;
        return Ok((
            match n {
                _ if no_body => ResponseFraming::Empty,
                0 => ResponseFraming::Empty,
                n => ResponseFraming::Length(n),
            },
            false,
        ));
    }
    Ok((
        if no_body {
            ResponseFraming::Empty
        } else {
            ResponseFraming::Close
        },
        false,
    ))
}

/// The value of the `Content-Length` fields of `h`, parsed strictly: each
/// is `1*DIGIT`, or a comma-separated list of identical such values (RFC
/// 9110 §8.6), several fields only if they agree. When the fields were not
/// already one canonical value, they are replaced by it, so the client
/// receives exactly one.
fn content_length(h: &mut HeaderMap) -> Result<u64, UpstreamError> {
    let mut len: Option<u64> = None;
    let mut canonical = true;
    for v in h.get_all(header::CONTENT_LENGTH) {
        let bytes = v.as_bytes();
        if len.is_some() || bytes.len() > 1 && bytes[0] == b'0' {
            canonical = false;
        }
        for part in bytes.split(|&b| b == b',') {
            let part = trim_ows(part);
            if part.len() != bytes.len() {
                canonical = false;
            }
            let n = parse_decimal(part)?;
            if len.is_some_and(|l| l != n) {
                return Err(UpstreamError::Protocol("conflicting content-length"));
            }
            len = Some(n);
        }
    }
    let n = len.ok_or(UpstreamError::Protocol("invalid content-length"))?;
    if !canonical {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(n)
}

/// `1*DIGIT` as a `u64`; no sign, no space, no overflow.
fn parse_decimal(digits: &[u8]) -> Result<u64, UpstreamError> {
    if digits.is_empty() {
        return Err(UpstreamError::Protocol("invalid content-length"));
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return Err(UpstreamError::Protocol("invalid content-length"));
        }
        acc.checked_mul(10)
            .and_then(|a| a.checked_add(u64::from(b - b'0')))
            .ok_or(UpstreamError::Protocol("content-length too large"))
    })
}

/// `1*HEXDIG` as a `u64`; no sign, no `0x`, no overflow.
fn parse_chunk_size(hex: &[u8]) -> Result<u64, UpstreamError> {
    if hex.is_empty() {
        return Err(UpstreamError::Protocol("invalid chunk size"));
    }
    hex.iter().try_fold(0u64, |acc, &b| {
        let d = char::from(b)
            .to_digit(16)
            .ok_or(UpstreamError::Protocol("invalid chunk size"))?;
        acc.checked_mul(16)
            .and_then(|a| a.checked_add(u64::from(d)))
            .ok_or(UpstreamError::Protocol("chunk size too large"))
    })
}

/// Strips optional whitespace (SP, HTAB) at both ends.
fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

fn keeps_alive(h: &HeaderMap, version: Version) -> bool {
    let has = |token: &str| {
        h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if version == Version::HTTP_10 {
        has("keep-alive")
    } else {
        !has("close")
    }
}

/// Chunked decoding state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Reading trailer lines until the empty one.
    Trailer,
}

#[derive(Debug)]
enum Decoder {
    Length(u64),
    Chunked(Chunk),
    Close,
}

/// One step of the chunked decoder over `buf`.
enum Step {
    Data(Bytes),
    NeedMore,
    Done,
}

fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Step, UpstreamError> {
    loop {
        match *state {
            Chunk::Size | Chunk::Trailer => {
                let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if buf.len() > 4096 {
                        return Err(UpstreamError::Protocol("chunk line too long"));
                    }
                    return Ok(Step::NeedMore);
                };
                let line = buf.split_to(end + 2);
                let line = &line[..end];
                if *state == Chunk::Trailer {
                    if line.is_empty() {
                        return Ok(Step::Done);
                    }
                    continue;
                }
                // chunk-size [ BWS ";" chunk-ext ]: trailing whitespace only.
                let hex = line.split(|&b| b == b';').next().unwrap_or_default();
                let hex = match hex.iter().rposition(|&b| b != b' ' && b != b'\t') {
                    Some(end) => &hex[..=end],
                    None => &[],
                };
                let size = parse_chunk_size(hex)?;
                *state = if size == 0 {
                    Chunk::Trailer
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = left.min(buf.len() as u64);
                let data = buf.split_to(n as usize).freeze();
                *state = if n == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n)
                };
                return Ok(Step::Data(data));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(UpstreamError::Protocol("missing CRLF after chunk"));
                }
                buf.advance(2);
                *state = Chunk::Size;
            }
        }
    }
}

/// A response body read from the upstream connection as the client
/// consumes it; the connection goes back to the pool when it is complete.
#[derive(Debug)]
pub struct H1Body {
    conn: Option<Conn>,
    decoder: Decoder,
    keep_alive: bool,
    pool: PoolConfig,
    guard: InflightGuard,
    timers: Arc<SleepPool>,
    /// The body's deadline timer, taken the first time it has to wait.
    sleep: Option<PooledSleep>,
    /// Bytes arrived since the timer was last moved.
    progressed: bool,
    /// `body_timeout` from the head, if configured.
    deadline: Option<Instant>,
    /// Whether the endpoint's breaker learns the outcome from this body
    /// (see [`H1Body::report_outcome`]).
    report: bool,
}

impl H1Body {
    /// Has this body record the exchange's outcome with the endpoint's
    /// circuit breaker when it ends, instead of the caller at head time: a
    /// success when it completes (or the client stops reading), a failure
    /// when it breaks off or stalls. A half-open breaker's probe is held
    /// until then.
    pub fn report_outcome(&mut self) {
        self.report = true;
    }

    fn outcome(&mut self, ok: bool) {
        if std::mem::take(&mut self.report) {
            self.guard.endpoint().record(ok);
        }
    }

    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            release(self.guard.endpoint(), conn, self.keep_alive, self.pool);
        }
        self.outcome(true);
    }

    /// The body failed: the connection is closed, never pooled.
    fn fail(&mut self, e: UpstreamError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.sleep = None;
        self.outcome(false);
        Poll::Ready(Some(Err(e.into())))
    }

    /// Nothing to read: arms the body timer (or moves it after progress);
    /// `true` when it has fired.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let idle = Instant::now() + self.pool.body_idle_timeout;
        let at = self.deadline.map_or(idle, |d| d.min(idle));
        match &mut self.sleep {
            Some(sleep) => {
                if std::mem::take(&mut self.progressed) {
                    sleep.reset(at);
                }
            }
            None => {
                self.progressed = false;
                self.sleep = Some(self.timers.sleep_until(at));
            }
        }
        self.sleep
            .as_mut()
            .is_some_and(|s| Pin::new(s).poll(cx).is_ready())
    }

    /// Polls the next frame.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.decoder {
                Decoder::Length(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Decoder::Length(left) if !conn.buf.is_empty() => {
                    let n = (*left).min(conn.buf.len() as u64);
                    *left -= n;
                    let data = conn.buf.split_to(n as usize).freeze();
                    if *left == 0 {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoder::Chunked(state) if !conn.buf.is_empty() => {
                    match decode_chunked(state, &mut conn.buf) {
                        Ok(Step::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                        Ok(Step::Done) => {
                            self.finish();
                            return Poll::Ready(None);
                        }
                        Ok(Step::NeedMore) => {}
                        Err(e) => return self.fail(e),
                    }
                }
                Decoder::Close if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                _ => {}
            }
            conn.buf.reserve(READ_CHUNK);
            let n = match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return self.fail(UpstreamError::Io(e)),
                Poll::Pending => {
                    if self.timed_out(cx) {
                        return self.fail(UpstreamError::BodyTimeout);
                    }
                    return Poll::Pending;
                }
            };
            if n == 0 {
                if matches!(self.decoder, Decoder::Close) {
                    self.conn = None;
                    self.outcome(true);
                    return Poll::Ready(None);
                }
                return self.fail(UpstreamError::Protocol("upstream closed mid-body"));
            }
            self.progressed = true;
        }
    }

    /// Whether the body is known to be complete.
    pub fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.decoder, Decoder::Length(0))
    }

    /// Exact size when known.
    pub fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) if self.conn.is_some() => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        // Dropped before its end: the client stopped reading. Not the
        // endpoint's fault; its connection is closed with the body.
        self.outcome(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete head of a response to a non-HEAD request.
    fn head(raw: &[u8]) -> Head {
        parse(raw, false).unwrap().unwrap()
    }

    fn parse(raw: &[u8], head_req: bool) -> Result<Option<Head>, UpstreamError> {
        let mut buf = BytesMut::from(raw);
        parse_head(&mut buf, head_req)
    }

    #[test]
    fn parses_heads_and_picks_framing() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello");
        assert_eq!(h.parts.status, 200);
        assert_eq!(h.parts.headers["x-a"], "b");
        assert_eq!(h.framing, ResponseFraming::Length(5));
        assert!(h.keep_alive);

        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(h.framing, ResponseFraming::Chunked);
        let h = head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.framing, ResponseFraming::Close);
        assert!(!h.keep_alive);
        let h = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, ResponseFraming::Empty);
        let h = head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n");
        assert_eq!(h.framing, ResponseFraming::Empty);
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Le", false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn skips_interim_responses_but_not_101() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let h = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.parts.status, 201);
        let h = head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(h.parts.status, 101);
    }

    /// A pooled connection on which the upstream wrote bytes nobody asked
    /// for is never handed out, even when the runtime has not polled its
    /// I/O driver since they arrived (readiness alone misses them: on a
    /// busy runtime the next request can take the connection first).
    #[tokio::test]
    async fn take_out_discards_connections_with_unsolicited_bytes_or_eof() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let conn = |io| Conn {
            io,
            buf: BytesMut::new(),
            idle_since: Instant::now(),
        };
        let pool = IdlePool::default();
        let idle = Duration::from_secs(60);

        // Healthy: nothing to read, handed out.
        let c = TcpStream::connect(addr).await.unwrap();
        let (_peer, _) = l.accept().unwrap();
        pool.put(conn(c), 8);
        assert!(pool.take(idle).is_some());

        // Stray bytes, written while this task never yields to the driver.
        let c = TcpStream::connect(addr).await.unwrap();
        let (mut peer, _) = l.accept().unwrap();
        pool.put(conn(c), 8);
        std::io::Write::write_all(&mut peer, b"HTTP/1.1 200 OK\r\nX-Evil: 1\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(pool.take(idle).is_none());
        assert!(pool.is_empty());

        // EOF: the upstream closed it.
        let c = TcpStream::connect(addr).await.unwrap();
        let (peer, _) = l.accept().unwrap();
        pool.put(conn(c), 8);
        drop(peer);
        std::thread::sleep(Duration::from_millis(20));
        assert!(pool.take(idle).is_none());
    }

    #[test]
    fn content_length_is_strict_and_normalised() {
        let head = |cl: &str| format!("HTTP/1.1 200 OK\r\n{cl}\r\n\r\n");
        for bad in [
            "Content-Length: +5",
            "Content-Length: -5",
            "Content-Length: 0x5",
            "Content-Length: 5 5",
            "Content-Length: 5,",
            "Content-Length: ,5",
            "Content-Length: 5, 6",
            "Content-Length: 5\r\nContent-Length: 6",
            "Content-Length: 99999999999999999999999",
            "Content-Length: ",
        ] {
            assert!(parse(head(bad).as_bytes(), false).is_err(), "{bad}");
        }
        for (ok, n) in [
            ("Content-Length: 5", "5"),
            ("Content-Length: 5, 5", "5"),
            ("Content-Length: 5,5 , 5", "5"),
            ("Content-Length: 5\r\nContent-Length: 5", "5"),
            ("Content-Length: 007", "7"),
            (
                "Content-Length: 18446744073709551615",
                "18446744073709551615",
            ),
        ] {
            let h = parse(head(ok).as_bytes(), false).unwrap().unwrap();
            let values: Vec<_> = h.parts.headers.get_all("content-length").iter().collect();
            assert_eq!(values, [n], "{ok}");
            assert!(h.keep_alive, "{ok}");
        }
    }

    #[test]
    fn chunked_with_content_length_drops_it_and_closes() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, ResponseFraming::Chunked);
        assert!(!h.parts.headers.contains_key("content-length"));
        assert!(!h.keep_alive);
    }

    #[test]
    fn statuses_outside_http_range_are_refused() {
        for code in ["999", "600", "099", "000"] {
            let raw = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
            assert!(parse(raw.as_bytes(), false).is_err(), "{code}");
        }
        let h = head(b"HTTP/1.1 599 X\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.parts.status, 599);
    }

    #[test]
    fn chunk_sizes_are_strict_hex_that_fits() {
        for bad in [
            &b"+5\r\nhello\r\n"[..],
            b"0x5\r\nhello\r\n",
            b"-5\r\n",
            b" 5\r\nhello\r\n",
            b"\r\n",
            b"10000000000000000\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            assert!(
                dechunk(&[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let (out, done) = dechunk(&[b"5 ;x=1\r\nhello\r\n0\r\n\r\n"]).unwrap();
        assert_eq!((&out[..], done), (&b"hello"[..], true));
        // The largest size parses (and is then bounded by what arrives).
        let (out, done) = dechunk(&[b"ffffffffffffffff\r\nab"]).unwrap();
        assert_eq!((&out[..], done), (&b"ab"[..], false));
    }

    #[test]
    fn rejects_bad_heads() {
        assert!(parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false
        )
        .is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(parse(b"garbage\r\n\r\n", false).is_err());
        let many: String = (0..200).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(parse(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes(), false).is_err());
    }

    fn dechunk(input: &[&[u8]]) -> Result<(Vec<u8>, bool), UpstreamError> {
        let mut state = Chunk::Size;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input {
            buf.extend_from_slice(piece);
            loop {
                match decode_chunked(&mut state, &mut buf)? {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::NeedMore => break,
                    Step::Done => return Ok((out, true)),
                }
            }
        }
        Ok((out, false))
    }

    #[test]
    fn decodes_chunked_bodies_split_anywhere() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n";
        for split in 0..wire.len() {
            let (a, b) = wire.split_at(split);
            let (out, done) = dechunk(&[a, b]).unwrap();
            assert_eq!(out, b"hello world", "split at {split}");
            assert!(done);
        }
        assert!(dechunk(&[b"zz\r\n"]).is_err());
        assert!(dechunk(&[b"2\r\nabXX"]).is_err());
        let (out, done) = dechunk(&[b"3\r\nab"]).unwrap();
        assert_eq!(out, b"ab");
        assert!(!done);
    }
}
