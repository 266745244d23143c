//! Upstream connections and the idle keep-alive pool of an endpoint.

use std::io;
use std::mem::MaybeUninit;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{UpstreamError, READ_CHUNK};
use crate::upstream::Endpoint;

/// An open upstream connection.
#[derive(Debug)]
pub struct Conn {
    pub(super) io: TcpStream,
    pub(super) buf: BytesMut,
    pub(super) idle_since: Instant,
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
    pub(super) fn looks_closed(&self) -> bool {
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
    pub(super) conns: std::sync::Mutex<Vec<Conn>>,
}

impl IdlePool {
    pub(super) fn take(&self, idle_timeout: Duration) -> Option<Conn> {
        loop {
            let conn = self.conns.lock().ok()?.pop()?;
            if conn.idle_since.elapsed() < idle_timeout && !conn.looks_closed() {
                return Some(conn);
            }
        }
    }

    pub(super) fn put(&self, mut conn: Conn, max_idle: usize) {
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
