//! The connection's socket, counting bytes read so the server can tell a
//! client that stalled mid-headers (answered 408) from an idle keep-alive
//! connection (closed silently).
//!
//! One descriptor per connection: the 408 is written by the stream itself
//! when hyper drops it, once the server has marked the connection timed out
//! ([`ConnStats::answer_408_on_close`]). No second handle (a `dup`) is kept
//! to write it, and nothing is added to the read or write path.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use rustix::net::{send, shutdown, SendFlags, Shutdown};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::request_id;

/// Per-connection counters shared by the socket and the request handler.
#[derive(Debug, Default)]
pub struct ConnStats {
    read: AtomicU64,
    mark: AtomicU64,
    requests: AtomicU64,
    timed_out: AtomicBool,
}

impl ConnStats {
    /// A request's headers were parsed and it was dispatched.
    pub fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was answered: bytes read so far belong to finished requests.
    pub fn request_done(&self) {
        self.mark
            .store(self.read.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Requests dispatched on this connection.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Whether bytes arrived that no answered request accounts for: the
    /// start of a request whose headers never completed.
    pub fn has_partial_request(&self) -> bool {
        self.read.load(Ordering::Relaxed) > self.mark.load(Ordering::Relaxed)
    }

    /// The client did not complete its request headers in time: the
    /// stream answers 408 when it is dropped.
    pub fn answer_408_on_close(&self) {
        self.timed_out.store(true, Ordering::Relaxed);
    }
}

/// A TCP stream that counts the bytes read from it, holds its listener's
/// connection permit for as long as the socket is open (an upgraded
/// connection's too), and answers 408 on drop when told to.
#[derive(Debug)]
pub struct CountingStream {
    inner: TcpStream,
    stats: Arc<ConnStats>,
    _permit: OwnedSemaphorePermit,
}

impl CountingStream {
    /// Wraps `inner`, counting into `stats`.
    pub fn new(inner: TcpStream, stats: Arc<ConnStats>, permit: OwnedSemaphorePermit) -> Self {
        Self {
            inner,
            stats,
            _permit: permit,
        }
    }
}

impl Drop for CountingStream {
    fn drop(&mut self) {
        if self.stats.timed_out.load(Ordering::Relaxed) {
            send_408(&self.inner);
        }
    }
}

/// Writes a 408 with a fresh request id and shuts the write side down.
/// Best effort and never blocking: while headers are being read the send
/// buffer is empty, so the short answer fits; if it does not, the client
/// sees the connection close, as it would have without it. A plain
/// send(2) on the socket, not tokio's `try_write`: that one skips the
/// call unless the reactor has already seen the socket writable.
fn send_408(s: &TcpStream) {
    let id = request_id::generate();
    let id = id.to_str().unwrap_or_default();
    let body = format!(
        r#"{{"error":"client did not send complete request headers in time","request_id":"{id}"}}"#
    );
    let msg = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n{body}",
        body.len(),
    );
    let _ = send(s, msg.as_bytes(), SendFlags::NOSIGNAL);
    let _ = shutdown(s, Shutdown::Write);
}

impl AsyncRead for CountingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            this.stats.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
