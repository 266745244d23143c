//! The connection's socket, counting bytes read so the server can tell a
//! client that stalled mid-headers (answered 408) from an idle keep-alive
//! connection (closed silently).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Per-connection counters shared by the socket and the request handler.
#[derive(Debug, Default)]
pub struct ConnStats {
    read: AtomicU64,
    mark: AtomicU64,
    requests: AtomicU64,
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
}

/// A TCP stream that counts the bytes read from it.
#[derive(Debug)]
pub struct CountingStream {
    inner: TcpStream,
    stats: Arc<ConnStats>,
}

impl CountingStream {
    /// Wraps `inner`, counting into `stats`.
    pub fn new(inner: TcpStream, stats: Arc<ConnStats>) -> Self {
        Self { inner, stats }
    }
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
