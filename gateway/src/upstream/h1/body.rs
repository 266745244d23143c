//! Body framing: the request body written upstream, and the response
//! body read from the upstream connection (length, chunked, close).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use std::future::Future as _;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::head::RequestFraming;
use super::pool::{Conn, PoolConfig};
use super::{release, UpstreamError, READ_CHUNK, WRITE_FLUSH};
use crate::body::Body;
use crate::error::BoxError;
use crate::timer::{PooledSleep, SleepPool};
use crate::upstream::tls::UpstreamIo;
use crate::upstream::InflightGuard;

pub(super) enum WriteError {
    /// Writing to the upstream failed.
    Io(io::Error),
    /// The upstream stopped reading the body for `body_idle_timeout`.
    Stalled,
    /// The client's body failed (its error, blame included).
    Body(BoxError),
}

/// How a request is written: its body framing, and the idle deadline of
/// each body write.
pub(super) struct Writing<'a> {
    pub(super) framing: RequestFraming,
    pub(super) idle: Duration,
    pub(super) timers: &'a Arc<SleepPool>,
}

/// What of a request reached the upstream.
#[derive(Debug, Default)]
pub(super) struct Sent {
    /// Bytes the upstream socket accepted (head and body).
    pub(super) bytes: u64,
    /// Whether a frame of the body was taken from the client (the body
    /// can no longer be sent again).
    pub(super) body_started: bool,
}

pub(super) async fn write_request(
    conn: &mut Conn,
    head: &[u8],
    body: &mut Body,
    how: &Writing<'_>,
    sent: &mut Sent,
) -> Result<(), WriteError> {
    if how.framing == RequestFraming::Empty {
        // The fast path: one write, no timer.
        write_counted(&mut conn.io, head, &mut sent.bytes)
            .await
            .map_err(WriteError::Io)?;
        // Checked here, not in `flush_tls`: plain TCP never enters it.
        if conn.io.needs_flush() {
            flush_tls(&mut conn.io, how).await?;
        }
        return Ok(());
    }
    let mut out = BytesMut::from(head);
    loop {
        let frame = match body.frame().now_or_never() {
            Some(f) => f,
            None => {
                flush(&mut conn.io, &mut out, how, &mut sent.bytes).await?;
                body.frame().await
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(WriteError::Body)?;
        sent.body_started = true;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if how.framing == RequestFraming::Chunked {
            // Chunk size line straight into the buffer, no allocation.
            let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{:x}\r\n", data.len()));
        }
        if data.len() >= WRITE_FLUSH / 4 {
            flush(&mut conn.io, &mut out, how, &mut sent.bytes).await?;
            write_idle(&mut conn.io, &data, how, &mut sent.bytes).await?;
        } else {
            out.extend_from_slice(&data);
        }
        if how.framing == RequestFraming::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= WRITE_FLUSH {
            flush(&mut conn.io, &mut out, how, &mut sent.bytes).await?;
        }
    }
    if how.framing == RequestFraming::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    flush(&mut conn.io, &mut out, how, &mut sent.bytes).await?;
    if conn.io.needs_flush() {
        flush_tls(&mut conn.io, how).await?;
    }
    Ok(())
}

/// Sends what a TLS stream still holds of the request (its writes may
/// return before the records reached the socket), within the idle
/// timeout. Called only when [`UpstreamIo::needs_flush`]: plain TCP has
/// nothing to flush and skips the extra future.
async fn flush_tls(io: &mut UpstreamIo, how: &Writing<'_>) -> Result<(), WriteError> {
    match io.flush().now_or_never() {
        Some(r) => r,
        None => how
            .timers
            .timeout(Instant::now(), how.idle, io.flush())
            .await
            .map_err(|_| WriteError::Stalled)?,
    }
    .map_err(WriteError::Io)
}

/// Writes all of `buf`, counting in `written` what the socket accepted
/// (`write_all` does not say how much it wrote before failing).
async fn write_counted(io: &mut UpstreamIo, mut buf: &[u8], written: &mut u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = io.write(buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        *written += n as u64;
        buf = &buf[n..];
    }
    Ok(())
}

/// [`write_counted`], failing with [`WriteError::Stalled`] when the
/// upstream accepts nothing for the idle timeout.
async fn write_idle(
    io: &mut UpstreamIo,
    mut buf: &[u8],
    how: &Writing<'_>,
    written: &mut u64,
) -> Result<(), WriteError> {
    while !buf.is_empty() {
        let n = match io.write(buf).now_or_never() {
            Some(r) => r,
            None => how
                .timers
                .timeout(Instant::now(), how.idle, io.write(buf))
                .await
                .map_err(|_| WriteError::Stalled)?,
        }
        .map_err(WriteError::Io)?;
        if n == 0 {
            return Err(WriteError::Io(io::ErrorKind::WriteZero.into()));
        }
        *written += n as u64;
        buf = &buf[n..];
    }
    Ok(())
}

async fn flush(
    io: &mut UpstreamIo,
    out: &mut BytesMut,
    how: &Writing<'_>,
    written: &mut u64,
) -> Result<(), WriteError> {
    if !out.is_empty() {
        write_idle(io, out, how, written).await?;
        out.clear();
    }
    Ok(())
}

/// `1*HEXDIG` as a `u64`; no sign, no `0x`, no overflow.
pub(super) fn parse_chunk_size(hex: &[u8]) -> Result<u64, UpstreamError> {
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

/// Chunked decoding state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
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
pub(super) enum Decoder {
    Length(u64),
    Chunked(Chunk),
    Close,
}

/// One step of the chunked decoder over `buf`.
pub(super) enum Step {
    Data(Bytes),
    NeedMore,
    Done,
}

pub(super) fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Step, UpstreamError> {
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
    pub(super) conn: Option<Conn>,
    pub(super) decoder: Decoder,
    pub(super) keep_alive: bool,
    pub(super) pool: PoolConfig,
    pub(super) guard: InflightGuard,
    pub(super) timers: Arc<SleepPool>,
    /// The body's deadline timer, taken the first time it has to wait.
    pub(super) sleep: Option<PooledSleep>,
    /// Bytes arrived since the timer was last moved.
    pub(super) progressed: bool,
    /// `body_timeout` from the head, if configured.
    pub(super) deadline: Option<Instant>,
    /// Whether the endpoint's breaker learns the outcome from this body
    /// (see [`H1Body::report_outcome`]).
    pub(super) report: bool,
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

    pub(super) fn outcome(&mut self, ok: bool) {
        if std::mem::take(&mut self.report) {
            self.guard.endpoint().record(ok);
        }
    }

    pub(super) fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            release(self.guard.endpoint(), conn, self.keep_alive, self.pool);
        }
        self.outcome(true);
    }

    /// The body failed: the connection is closed, never pooled.
    pub(super) fn fail(
        &mut self,
        e: UpstreamError,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.sleep = None;
        self.outcome(false);
        Poll::Ready(Some(Err(e.into())))
    }

    /// Nothing to read: arms the body timer (or moves it after progress);
    /// `true` when it has fired.
    pub(super) fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
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
