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
//! single response byte arrived is resent once on a fresh connection (the
//! classic keep-alive race with an upstream closing an idle connection)
//! only when that is safe: no byte of it was written, or it is idempotent
//! (see [`send_timed`]). A non-idempotent request that reached the wire is
//! never resent: the client gets a 502.
//!
//! `request_timeout` (see [`send_timed`]) starts once the request body has
//! been written. Writing the body to an upstream that stops reading it for
//! `body_idle_timeout` fails with [`UpstreamError::WriteTimeout`]; a client
//! whose upload stalls is bounded by the request body's own idle timeout
//! ([`crate::body`]).
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

use std::sync::Arc;

use bytes::BytesMut;
use http::header::HeaderMap;
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use tokio::time::Instant;

use super::{Endpoint, InflightGuard};
use crate::body::Body;
use crate::error::BoxError;
use crate::timer::SleepPool;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most response header fields accepted.
const MAX_HEADERS: usize = 128;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;
/// Pending request bytes are flushed past this size.
const WRITE_FLUSH: usize = 64 * 1024;

mod body;
mod head;
mod pool;

pub use super::error::UpstreamError;
pub use body::H1Body;
use body::*;
use head::*;
pub use pool::{Conn, IdlePool, PoolConfig};

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
/// takes its deadline timer from `timers`. No deadline for the response
/// head (see [`send_timed`]).
pub async fn send(
    guard: InflightGuard,
    pool: PoolConfig,
    timers: &Arc<SleepPool>,
    req: Request<Body>,
    headers: &(dyn EncodeHeaders + Sync),
) -> Result<Exchange, BoxError> {
    send_timed(guard, pool, timers, None, req, headers).await
}

/// Like [`send`], with a deadline for the response head: `head_timeout`
/// (the upstream's `request_timeout`) starts once the whole request, body
/// included, has been written, so a long upload does not count against it;
/// it fails with [`UpstreamError::HeadTimeout`].
///
/// A request is resent (once, on a fresh connection) only after a reused
/// connection failed before any response byte arrived (the keep-alive
/// race), only if none of its body was taken from the client yet, and only
/// if no byte of it was written or it is idempotent
/// ([`super::error::resendable`]: an idempotent method, or an honoured
/// `Idempotency-Key`). Bytes actually written are counted, not inferred.
pub async fn send_timed(
    guard: InflightGuard,
    pool: PoolConfig,
    timers: &Arc<SleepPool>,
    head_timeout: Option<std::time::Duration>,
    req: Request<Body>,
    headers: &(dyn EncodeHeaders + Sync),
) -> Result<Exchange, BoxError> {
    let ep = guard.endpoint().clone();
    // The request's parts end here, before the first await: the future does
    // not carry them.
    let (head, mut body, framing, is_head, resendable) = {
        let (parts, body) = req.into_parts();
        let framing = RequestFraming::of(&parts.headers, &body);
        let head = encode_head(
            &parts,
            &ep.authority,
            framing,
            body.size_hint().exact(),
            headers,
        );
        let resendable = super::error::resendable(&parts.method, &parts.extensions);
        (
            head,
            body,
            framing,
            parts.method == Method::HEAD,
            resendable,
        )
    };
    let writing = Writing {
        framing,
        idle: pool.body_idle_timeout,
        timers,
    };
    let mut fresh_only = false;
    let (mut conn, resp) = loop {
        let (mut conn, reused) = pool::checkout(&ep, pool, fresh_only).await?;
        let mut sent = Sent::default();
        let wrote = write_request(&mut conn, &head, &mut body, &writing, &mut sent).await;
        // The body can be sent again only if none of it was taken yet.
        let may_resend = reused && !sent.body_started;
        match wrote {
            Ok(()) => {}
            Err(WriteError::Body(e)) => return Err(e),
            Err(WriteError::Io(_)) if may_resend && (sent.bytes == 0 || resendable) => {
                fresh_only = true;
                continue;
            }
            Err(WriteError::Io(e)) if sent.bytes == 0 => {
                return Err(UpstreamError::NotSent(e).into())
            }
            Err(WriteError::Io(e)) => return Err(UpstreamError::Io(e).into()),
            Err(WriteError::Stalled) => return Err(UpstreamError::WriteTimeout.into()),
        }
        let read = match head_timeout {
            Some(t) => timers
                .timeout(Instant::now(), t, read_head(&mut conn, is_head))
                .await
                .map_err(|_| UpstreamError::HeadTimeout)?,
            None => read_head(&mut conn, is_head).await,
        };
        match read {
            Ok(r) => break (conn, r),
            // Every byte of the request was written: resent only if that
            // is safe for it.
            Err(ReadError::NothingReceived(_)) if may_resend && resendable => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpStream;

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
        let conn = Conn::detached;
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
