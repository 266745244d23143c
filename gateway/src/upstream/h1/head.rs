//! Request head encoding and response head parsing: status, header
//! fields, and the framing of the response body (RFC 9112 §6).

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body::Body as _;
use tokio::io::AsyncReadExt;

use super::pool::Conn;
use super::{EncodeHeaders, UpstreamError, MAX_HEAD, MAX_HEADERS, READ_CHUNK};
use crate::body::Body;

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestFraming {
    Empty,
    Length,
    Chunked,
}

impl RequestFraming {
    pub(super) fn of(headers: &HeaderMap, body: &Body) -> Self {
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

pub(super) fn encode_head(
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

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResponseFraming {
    Empty,
    Length(u64),
    Chunked,
    Close,
}

pub(super) struct Head {
    pub(super) parts: http::response::Parts,
    pub(super) framing: ResponseFraming,
    pub(super) keep_alive: bool,
}

pub(super) enum ReadError {
    /// Failed before a single response byte arrived (the request may be
    /// resent if that is safe for it).
    NothingReceived(UpstreamError),
    Failed(UpstreamError),
}

pub(super) async fn read_head(conn: &mut Conn, is_head_request: bool) -> Result<Head, ReadError> {
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
pub(super) fn parse_head(
    buf: &mut BytesMut,
    is_head_request: bool,
) -> Result<Option<Head>, UpstreamError> {
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
pub(super) struct Seen {
    pub(super) transfer_encoding: bool,
    pub(super) content_length: bool,
    pub(super) connection: bool,
}

impl Seen {
    pub(super) fn note(&mut self, name: &HeaderName) {
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
pub(super) fn framing_of(
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
pub(super) fn content_length(h: &mut HeaderMap) -> Result<u64, UpstreamError> {
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
pub(super) fn parse_decimal(digits: &[u8]) -> Result<u64, UpstreamError> {
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

/// Strips optional whitespace (SP, HTAB) at both ends.
pub(super) fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

pub(super) fn keeps_alive(h: &HeaderMap, version: Version) -> bool {
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
