//! The byte tunnel of an upgraded (WebSocket) connection, and what bounds
//! it.
//!
//! A tunnel is spawned when the upstream answers `101`; its [`TunnelLease`]
//! rides up in the `101` response's extensions, through the route's layers,
//! before the response is written (the tunnel starts only once the client
//! side is upgraded, which is after that). On the way up:
//! - [`TunnelLayer`] (routes with `websocket = true`) gives it the route's
//!   `websocket_idle_timeout` and the route's open-tunnel gauge;
//! - the load shedder ([`crate::middleware::shed`]) moves its `max_inflight`
//!   slot into it, so an open tunnel counts as a request in flight until it
//!   closes.
//!
//! A tunnel that carries no byte either way for the idle timeout is closed
//! on both sides; so is the tunnel once either side has closed and the
//! other finished. Its upstream connection counts against the endpoint's
//! `max_connections` until then.

use std::any::Any;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::body::Body;
use crate::upstream::h1::Conn;

/// Idle timeout of a tunnel no [`TunnelLayer`] configured (the config's
/// default).
const DEFAULT_IDLE: Duration = Duration::from_secs(300);

/// What an open tunnel holds and is bounded by; handed up in the `101`
/// response's extensions so the route's layers can fill it in. Dropping
/// every clone does not close the tunnel; the tunnel ending releases what
/// it holds.
#[derive(Debug, Clone, Default)]
pub struct TunnelLease(Arc<Mutex<Lease>>);

#[derive(Default)]
struct Lease {
    idle_timeout: Option<Duration>,
    gauge: Option<Gauge>,
    /// Released when the tunnel ends (the route's `max_inflight` slot).
    held: Vec<Box<dyn Any + Send>>,
    closed: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("idle_timeout", &self.idle_timeout)
            .field("held", &self.held.len())
            .field("closed", &self.closed)
            .finish()
    }
}

impl TunnelLease {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `what` alive until the tunnel ends (at once dropped if it
    /// already did).
    pub fn hold(&self, what: impl Any + Send) {
        let mut lease = self.lock();
        if !lease.closed {
            lease.held.push(Box::new(what));
        }
    }

    /// Sets the idle timeout and the open-tunnel gauge.
    fn configure(&self, idle_timeout: Duration, gauge: Option<Gauge>) {
        let mut lease = self.lock();
        lease.idle_timeout = Some(idle_timeout);
        lease.gauge = gauge;
    }

    /// Ends the lease: what it holds is dropped after the lock is released.
    fn close(&self) -> Vec<Box<dyn Any + Send>> {
        let mut lease = self.lock();
        lease.closed = true;
        std::mem::take(&mut lease.held)
    }

    /// Ends the lease as a closing tunnel does (tests of the layers).
    #[cfg(test)]
    pub(crate) fn release_for_test(&self) {
        drop(self.close());
    }
}

/// Spawns the tunnel of an upgraded connection and returns its lease, for
/// the `101` response's extensions.
pub(super) fn spawn(client: hyper::upgrade::OnUpgrade, upstream: Conn) -> TunnelLease {
    let lease = TunnelLease::default();
    tokio::spawn(tunnel(client, upstream, lease.clone()));
    lease
}

/// Copies bytes both ways between the client's upgraded connection and
/// the upstream connection that answered `101`, until either side closes
/// or nothing moves for the idle timeout.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: Conn, lease: TunnelLease) {
    // The upstream connection's slot counts against `max_connections`
    // until the tunnel ends.
    let (mut up, early, _slot) = upstream.into_parts();
    let client = client.await;
    // The response went through the route's layers: the lease is complete.
    let (idle, gauge) = {
        let l = lease.lock();
        (l.idle_timeout.unwrap_or(DEFAULT_IDLE), l.gauge.clone())
    };
    match client {
        Ok(c) => {
            if let Some(g) = &gauge {
                g.inc();
            }
            let mut client = TokioIo::new(c);
            match pump(&mut client, &mut up, &early, idle).await {
                Ok(Ended::Closed(to_up, to_client)) => {
                    tracing::debug!(to_up, to_client, "upgraded connection closed");
                }
                Ok(Ended::Idle) => {
                    tracing::debug!(idle_timeout = ?idle, "upgraded connection idle: closed");
                }
                Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
            }
            if let Some(g) = &gauge {
                g.dec();
            }
        }
        Err(e) => tracing::debug!(error = %e, "client upgrade failed"),
    }
    drop(lease.close());
    // Both connections close here, when dropped.
}

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Both directions finished: bytes sent upstream and to the client.
    Closed(u64, u64),
    /// Nothing moved either way for the idle timeout.
    Idle,
}

/// Writes `early` (bytes the upstream sent right after its `101`) to the
/// client, then copies both ways until both directions end or no byte
/// moves for `idle`.
async fn pump<C, U>(client: &mut C, up: &mut U, early: &[u8], idle: Duration) -> io::Result<Ended>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    if !early.is_empty() {
        tokio::io::AsyncWriteExt::write_all(client, early).await?;
    }
    let start = Instant::now();
    // Milliseconds from `start` to the last byte read on either side.
    let last = AtomicU64::new(0);
    let mut client = Watched {
        io: client,
        last: &last,
        start,
    };
    let mut up = Watched {
        io: up,
        last: &last,
        start,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut up);
    tokio::pin!(copy);
    loop {
        let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            r = &mut copy => return r.map(|(a, b)| Ended::Closed(a, b)),
            () = tokio::time::sleep_until(deadline) => {
                let last = start + Duration::from_millis(last.load(Ordering::Relaxed));
                if Instant::now().saturating_duration_since(last) >= idle {
                    return Ok(Ended::Idle);
                }
            }
        }
    }
}

/// A stream that notes when it last read a byte.
struct Watched<'a, T> {
    io: T,
    last: &'a AtomicU64,
    start: Instant,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX / 2);
            self.last.store(ms, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Gives the tunnels of a route (`websocket = true`) the route's
/// `websocket_idle_timeout` and open-tunnel gauge: on a `101` response it
/// fills in the [`TunnelLease`] the proxy put in its extensions. Any other
/// response passes untouched.
#[derive(Debug, Clone)]
pub struct TunnelLayer {
    settings: Arc<Settings>,
}

#[derive(Debug)]
struct Settings {
    idle_timeout: Duration,
    gauge: Option<Gauge>,
}

impl TunnelLayer {
    /// Tunnels closed after `idle_timeout` without a byte either way,
    /// counted in `gauge` while open.
    pub fn new(idle_timeout: Duration, gauge: Option<Gauge>) -> Self {
        Self {
            settings: Arc::new(Settings {
                idle_timeout,
                gauge,
            }),
        }
    }
}

impl<S> Layer<S> for TunnelLayer {
    type Service = Tunnels<S>;

    fn layer(&self, inner: S) -> Tunnels<S> {
        Tunnels {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// The service of [`TunnelLayer`].
#[derive(Debug, Clone)]
pub struct Tunnels<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> Service<Request<Body>> for Tunnels<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        ResponseFuture {
            fut: self.inner.call(req),
            settings: self.settings.clone(),
        }
    }
}

pin_project! {
    /// The future of [`Tunnels`].
    pub struct ResponseFuture<F> {
        #[pin]
        fut: F,
        settings: Arc<Settings>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.fut.poll(cx));
        if let Ok(resp) = &out {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(lease) = resp.extensions().get::<TunnelLease>() {
                    lease.configure(this.settings.idle_timeout, this.settings.gauge.clone());
                }
            }
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_ends_after_the_timeout_and_an_active_one_does_not() {
        let idle = Duration::from_secs(10);
        let (mut client, mut client_peer) = duplex(1024);
        let (mut up, mut up_peer) = duplex(1024);
        let started = Instant::now();
        let pumping = tokio::spawn(async move { pump(&mut client, &mut up, b"", idle).await });
        // Traffic every 6 s (less than the timeout) for 30 s keeps it open.
        for i in 0..5u8 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            assert!(!pumping.is_finished(), "closed while active at {i}");
            if i % 2 == 0 {
                client_peer.write_all(&[i]).await.unwrap();
                let mut b = [0u8; 1];
                up_peer.read_exact(&mut b).await.unwrap();
                assert_eq!(b[0], i);
            } else {
                up_peer.write_all(&[i]).await.unwrap();
                let mut b = [0u8; 1];
                client_peer.read_exact(&mut b).await.unwrap();
                assert_eq!(b[0], i);
            }
        }
        let quiet = Instant::now();
        let ended = pumping.await.unwrap().unwrap();
        assert_eq!(ended, Ended::Idle);
        let silent = quiet.elapsed();
        assert!(
            silent >= idle && silent <= idle + Duration::from_secs(1),
            "{silent:?}"
        );
        assert!(started.elapsed() >= Duration::from_secs(40));
        // Both sides see the tunnel gone once the task dropped them (here
        // the pump's caller owns them: the spawned task ended).
        let mut b = [0u8; 1];
        assert_eq!(client_peer.read(&mut b).await.unwrap(), 0);
        assert_eq!(up_peer.read(&mut b).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn early_bytes_reach_the_client_and_a_closed_tunnel_reports_counts() {
        let (mut client, mut client_peer) = duplex(1024);
        let (mut up, up_peer) = duplex(1024);
        let pumping = tokio::spawn(async move {
            pump(&mut client, &mut up, b"hi", Duration::from_secs(60)).await
        });
        let mut b = [0u8; 2];
        client_peer.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hi");
        drop(client_peer);
        drop(up_peer);
        assert_eq!(pumping.await.unwrap().unwrap(), Ended::Closed(0, 0));
    }

    #[test]
    fn a_lease_releases_what_it_holds_when_closed_and_refuses_it_after() {
        let held = Arc::new(());
        let lease = TunnelLease::default();
        lease.hold(held.clone());
        assert_eq!(Arc::strong_count(&held), 2);
        drop(lease.close());
        assert_eq!(Arc::strong_count(&held), 1);
        // Too late: dropped at once.
        lease.hold(held.clone());
        assert_eq!(Arc::strong_count(&held), 1);
    }
}
