//! Upstream connections, the idle keep-alive pool of an endpoint, and the
//! cap on how many connections an endpoint may have open.
//!
//! Every [`Conn`] holds a slot of its endpoint's connection count
//! from the moment it is opened until it is dropped, busy or idle (or
//! tunnelled after `101`). [`checkout`] takes the newest idle connection,
//! else opens one while the endpoint is below `max_connections`: one
//! compare-and-swap, no lock, no allocation. At the cap it waits, up to
//! `connect_queue_timeout`, for a connection to come back to the pool
//! (reused first) or to close, then fails with
//! [`GatewayError::ConnectionLimit`] (503, never an endpoint failure).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{UpstreamError, READ_CHUNK};
use crate::error::{BoxError, GatewayError};
use crate::upstream::conns::ConnSlot;
use crate::upstream::tls::UpstreamIo;
use crate::upstream::Endpoint;

/// An open upstream connection.
#[derive(Debug)]
pub struct Conn {
    pub(super) io: UpstreamIo,
    pub(super) buf: BytesMut,
    pub(super) idle_since: Instant,
    /// Counts this connection against the endpoint's cap until dropped.
    slot: ConnSlot,
}

impl Conn {
    /// Opens a connection to `ep` in the `slot` reserved for it: TCP, then
    /// the TLS handshake for an `https://` endpoint, both within `timeout`.
    /// A failed handshake (certificate not trusted, wrong name, ...) is a
    /// connect error carrying a [`TlsHandshakeError`](crate::upstream::tls::TlsHandshakeError),
    /// logged with the endpoint and the name verified.
    async fn open(ep: &Endpoint, timeout: Duration, slot: ConnSlot) -> Result<Self, UpstreamError> {
        let connect = async {
            let tcp = TcpStream::connect(ep.authority.as_str())
                .await
                .map_err(UpstreamError::Connect)?;
            let _ = tcp.set_nodelay(true);
            match &ep.tls {
                None => Ok(UpstreamIo::Plain(tcp)),
                Some(tls) => tls.handshake(tcp).await.map_err(|e| {
                    tracing::warn!(endpoint = %ep.authority, server_name = %e.server_name, error = %e.source, "upstream TLS handshake failed");
                    UpstreamError::Connect(e.into_io())
                }),
            }
        };
        let io = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)??;
        Ok(Self {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            idle_since: Instant::now(),
            slot,
        })
    }

    /// A connection over `io` counted by a counter of its own (tests).
    #[cfg(test)]
    pub(super) fn detached(io: TcpStream) -> Self {
        Self {
            io: UpstreamIo::Plain(io),
            buf: BytesMut::new(),
            idle_since: Instant::now(),
            slot: ConnSlot::detached(),
        }
    }

    /// Whether a pooled connection is unusable: the upstream closed it or
    /// sent bytes nobody asked for (a stray response would be read as the
    /// answer to the next, unrelated request); see
    /// [`UpstreamIo::looks_closed`] (a `MSG_PEEK` for plain TCP; for TLS,
    /// session tickets do not count).
    pub(super) fn looks_closed(&mut self) -> bool {
        self.io.looks_closed()
    }

    /// The raw stream, any bytes already read past the response head, and
    /// the connection's slot, for a tunnel after `101 Switching Protocols`
    /// (a tunnel still counts against the endpoint's `max_connections`
    /// until it closes).
    pub fn into_parts(self) -> (UpstreamIo, Bytes, ConnSlot) {
        (self.io, self.buf.freeze(), self.slot)
    }
}

/// A connection to `ep` for one request, and whether it was reused: the
/// newest idle one (unless `fresh`), else a new one while the endpoint has
/// fewer than `max_connections` open. At the cap, waits up to
/// `queue_timeout` for one to be returned to the pool (taken first) or
/// closed, then fails with [`GatewayError::ConnectionLimit`].
pub(super) async fn checkout(
    ep: &Endpoint,
    pool: PoolConfig,
    fresh: bool,
) -> Result<(Conn, bool), BoxError> {
    let take = || (!fresh).then(|| ep.idle.take(pool.idle_timeout)).flatten();
    if let Some(c) = take() {
        return Ok((c, true));
    }
    if pool.bypass_limit {
        let slot = ep.conns.reserve_past(pool.max_connections);
        return Ok((Conn::open(ep, pool.connect_timeout, slot).await?, false));
    }
    if let Some(slot) = ep.conns.try_reserve(pool.max_connections) {
        return Ok((Conn::open(ep, pool.connect_timeout, slot).await?, false));
    }
    // At the cap: the slow path.
    let deadline = Instant::now() + pool.queue_timeout;
    loop {
        // Registered before looking again, so a release in between wakes it.
        let released = ep.conns.released();
        tokio::pin!(released);
        released.as_mut().enable();
        if let Some(c) = take() {
            return Ok((c, true));
        }
        if let Some(slot) = ep.conns.try_reserve(pool.max_connections) {
            return Ok((Conn::open(ep, pool.connect_timeout, slot).await?, false));
        }
        // A fresh connection is needed and idle ones hold the slots: close
        // the oldest to make room.
        if fresh && ep.idle.drop_oldest() {
            continue;
        }
        if tokio::time::timeout_at(deadline, released).await.is_err() {
            tracing::debug!(endpoint = %ep.authority, open = ep.conns.open(), "connection limit: no connection freed in time");
            return Err(GatewayError::ConnectionLimit.into());
        }
    }
}

/// Idle keep-alive connections of one endpoint, newest last.
#[derive(Debug, Default)]
pub struct IdlePool {
    pub(super) conns: std::sync::Mutex<Vec<Conn>>,
}

impl IdlePool {
    pub(super) fn take(&self, idle_timeout: Duration) -> Option<Conn> {
        loop {
            let mut conn = self.conns.lock().ok()?.pop()?;
            if conn.idle_since.elapsed() < idle_timeout && !conn.looks_closed() {
                return Some(conn);
            }
        }
    }

    pub(super) fn put(&self, mut conn: Conn, max_idle: usize) {
        conn.idle_since = Instant::now();
        if let Ok(mut conns) = self.conns.lock() {
            if conns.len() < max_idle && !conn.slot.is_spare() {
                // A request waiting at the cap takes it once the lock is free.
                conn.slot.wake_one();
                conns.push(conn);
            }
        }
        // Otherwise dropped here: its slot wakes a waiter.
    }

    /// Closes the idle connections older than `idle_timeout` and those the
    /// upstream closed or wrote to; returns how many. The sockets are
    /// closed after the pool's lock is released.
    pub fn reap(&self, idle_timeout: Duration) -> usize {
        let now = Instant::now();
        let dead: Vec<Conn> = match self.conns.lock() {
            Ok(mut conns) => {
                let mut dead = Vec::new();
                let mut live = Vec::with_capacity(conns.len());
                for mut c in std::mem::take(&mut *conns) {
                    if now.saturating_duration_since(c.idle_since) < idle_timeout
                        && !c.looks_closed()
                    {
                        live.push(c);
                    } else {
                        dead.push(c);
                    }
                }
                *conns = live;
                dead
            }
            Err(_) => Vec::new(),
        };
        dead.len()
    }

    /// Closes the oldest idle connection, if any.
    fn drop_oldest(&self) -> bool {
        let oldest = match self.conns.lock() {
            Ok(mut conns) if !conns.is_empty() => Some(conns.remove(0)),
            _ => None,
        };
        oldest.is_some()
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
    /// Connections open at once per endpoint (busy, idle and tunnelled).
    pub max_connections: usize,
    /// Longest wait for a connection at `max_connections`.
    pub queue_timeout: Duration,
    /// Never wait at `max_connections` (health checks, as in Envoy): a
    /// connection opened past it is closed after use, never pooled.
    pub bypass_limit: bool,
    /// Longest wait for the next bytes of a response body.
    pub body_idle_timeout: Duration,
    /// Deadline for a whole response body from its head, if any.
    pub body_timeout: Option<Duration>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    /// An endpoint on a local listener that accepts (and keeps) every
    /// connection.
    async fn endpoint() -> (Arc<Endpoint>, Arc<std::sync::Mutex<Vec<TcpStream>>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let p = peers.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                p.lock().unwrap().push(s);
            }
        });
        let ep = Endpoint::new(
            addr.to_string().parse().unwrap(),
            true,
            None,
            Instant::now(),
        );
        (Arc::new(ep), peers)
    }

    fn config(max_connections: usize, queue_timeout: Duration) -> PoolConfig {
        PoolConfig {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_idle: 16,
            max_connections,
            queue_timeout,
            bypass_limit: false,
            body_idle_timeout: Duration::from_secs(5),
            body_timeout: None,
        }
    }

    #[tokio::test]
    async fn at_the_cap_a_request_waits_for_a_returned_connection_or_fails_alone() {
        let (ep, peers) = endpoint().await;
        let pool = config(1, Duration::from_secs(5));
        let (first, reused) = checkout(&ep, pool, false).await.unwrap();
        assert!(!reused);
        assert_eq!(ep.open_connections(), 1);

        // A second request waits; the first connection coming back to the
        // pool is handed to it, no new connection is opened.
        let waiter = {
            let ep = ep.clone();
            tokio::spawn(async move { checkout(&ep, pool, false).await.map(|(_, r)| r) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        ep.idle.put(first, pool.max_idle);
        assert!(waiter.await.unwrap().unwrap(), "reused the returned one");
        assert_eq!(
            ep.open_connections(),
            0,
            "the waiter's connection was dropped"
        );

        // With a short wait and the only slot busy: ConnectionLimit, fast,
        // and the count never goes past the cap.
        let (held, _) = checkout(&ep, pool, false).await.unwrap();
        let short = config(1, Duration::from_millis(30));
        let t = Instant::now();
        let err = checkout(&ep, short, false).await.unwrap_err();
        assert!(matches!(
            err.downcast_ref::<GatewayError>(),
            Some(GatewayError::ConnectionLimit)
        ));
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(ep.open_connections(), 1);

        // A closed connection frees its slot for a waiter (a fresh one).
        let waiter = {
            let ep = ep.clone();
            tokio::spawn(async move { checkout(&ep, pool, true).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        let (_c, reused) = waiter.await.unwrap().unwrap();
        assert!(!reused);
        assert_eq!(ep.open_connections(), 1);
        assert_eq!(
            peers.lock().unwrap().len(),
            3,
            "never more than one at once, three in all"
        );
    }

    /// A request that needs a fresh connection (its reused one failed)
    /// while idle connections hold every slot closes the oldest idle one
    /// instead of waiting.
    #[tokio::test]
    async fn a_fresh_connection_at_the_cap_displaces_an_idle_one() {
        let (ep, _peers) = endpoint().await;
        let pool = config(1, Duration::from_millis(30));
        let (c, _) = checkout(&ep, pool, false).await.unwrap();
        ep.idle.put(c, pool.max_idle);
        let (_fresh, reused) = checkout(&ep, pool, true).await.unwrap();
        assert!(!reused);
        assert_eq!((ep.idle.len(), ep.open_connections()), (0, 1));
    }

    #[tokio::test]
    async fn reap_closes_expired_and_dead_idle_connections_only() {
        let (ep, peers) = endpoint().await;
        let pool = config(16, Duration::from_secs(1));
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(checkout(&ep, pool, false).await.unwrap().0);
        }
        tokio::time::timeout(Duration::from_secs(5), async {
            while peers.lock().unwrap().len() < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        for c in conns {
            ep.idle.put(c, pool.max_idle);
        }
        assert_eq!(ep.idle.reap(Duration::from_secs(60)), 0);
        // The upstream closes one: reaped though young.
        drop(peers.lock().unwrap().remove(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ep.idle.reap(Duration::from_secs(60)), 1);
        assert_eq!((ep.idle.len(), ep.open_connections()), (2, 2));
        // The others once they outlived the idle timeout.
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(ep.idle.reap(Duration::from_millis(50)), 2);
        assert_eq!((ep.idle.len(), ep.open_connections()), (0, 0));
        // The upstream sees them closed.
        let mut b = [0u8; 1];
        let left = std::mem::take(&mut *peers.lock().unwrap());
        for mut p in left {
            let n = tokio::time::timeout(Duration::from_secs(5), p.read(&mut b)).await;
            assert_eq!(n.unwrap().unwrap(), 0, "EOF");
        }
    }

    #[test]
    fn the_limit_is_a_503_with_retry_after_blamed_on_the_gateway() {
        let c = crate::error::classify(&GatewayError::ConnectionLimit);
        assert_eq!(c.status, http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(c.retry_after, Some(1));
        assert_eq!(c.blame, crate::error::Blame::Gateway);
    }
}
