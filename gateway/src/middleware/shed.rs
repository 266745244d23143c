//! Load shedding: at most `max` requests in flight on a route; the next
//! one fails at once with 503 instead of queueing without bound.
//!
//! A request holds its slot until its response head, except an upgrade:
//! on a `101` the slot moves into the tunnel's [`TunnelLease`], so an open
//! WebSocket tunnel counts as a request in flight until it closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::Body;
use crate::error::{BoxError, GatewayError};
use crate::proxy::tunnel::TunnelLease;

/// Sheds requests above `max` in flight.
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    max: usize,
    inflight: Arc<AtomicUsize>,
}

impl LoadShedLayer {
    /// At most `max` requests in flight (until response headers).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            inflight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Requests in flight now, across every service this layer built.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> LoadShed<S> {
        LoadShed {
            inner,
            max: self.max,
            inflight: self.inflight.clone(),
        }
    }
}

/// The load-shedding middleware.
#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    max: usize,
    inflight: Arc<AtomicUsize>,
}

/// Releases one in-flight slot when dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// The future of [`LoadShed`].
    #[project = Proj]
    pub enum ResponseFuture<F> {
        /// Admitted; the slot is released with the response head (or
        /// with the tunnel, after a `101`).
        Inner { #[pin] fut: F, slot: Option<Slot> },
        /// Shed.
        Shed,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Inner { fut, slot } => {
                let out = std::task::ready!(fut.poll(cx)).map_err(Into::into);
                if let Ok(resp) = &out {
                    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        if let (Some(lease), Some(slot)) =
                            (resp.extensions().get::<TunnelLease>(), slot.take())
                        {
                            lease.hold(slot);
                        }
                    }
                }
                Poll::Ready(out)
            }
            Proj::Shed => Poll::Ready(Err(GatewayError::Overloaded.into())),
        }
    }
}

impl<S> Service<Request<Body>> for LoadShed<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let prev = self.inflight.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.inflight.clone());
        if prev >= self.max {
            drop(slot);
            return ResponseFuture::Shed;
        }
        ResponseFuture::Inner {
            fut: self.inner.call(req),
            slot: Some(slot),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn excess_is_shed_at_once_and_slots_come_back() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let inner = tower::service_fn(move |_r: Request<Body>| {
            h.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                Ok::<_, BoxError>(Response::new(Body::Empty))
            }
        });
        let svc = LoadShedLayer::new(2).layer(inner);
        let req = || Request::new(Body::Empty);
        let a = tokio::spawn(svc.clone().oneshot(req()));
        let b = tokio::spawn(svc.clone().oneshot(req()));
        tokio::task::yield_now().await;
        let err = svc.clone().oneshot(req()).await.unwrap_err();
        assert!(matches!(
            err.downcast_ref::<GatewayError>(),
            Some(GatewayError::Overloaded)
        ));
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        svc.oneshot(req()).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    /// A `101` carrying a tunnel lease keeps its slot until the lease
    /// ends; any other response gives it back with the head.
    #[tokio::test]
    async fn an_upgrade_keeps_its_slot_in_the_tunnel_lease() {
        let leases = Arc::new(std::sync::Mutex::new(Vec::new()));
        let l = leases.clone();
        let inner = tower::service_fn(move |r: Request<Body>| {
            let mut resp = Response::new(Body::Empty);
            if r.uri().path() == "/ws" {
                *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                let lease = TunnelLease::default();
                l.lock().unwrap().push(lease.clone());
                resp.extensions_mut().insert(lease);
            }
            std::future::ready(Ok::<_, BoxError>(resp))
        });
        let layer = LoadShedLayer::new(1);
        let svc = layer.layer(inner);
        let req = |p: &str| Request::get(p).body(Body::Empty).unwrap();
        svc.clone().oneshot(req("/plain")).await.unwrap();
        assert_eq!(layer.inflight(), 0);
        let resp = svc.clone().oneshot(req("/ws")).await.unwrap();
        drop(resp);
        assert_eq!(layer.inflight(), 1, "the open tunnel holds the slot");
        let err = svc.clone().oneshot(req("/plain")).await.unwrap_err();
        assert!(matches!(
            err.downcast_ref::<GatewayError>(),
            Some(GatewayError::Overloaded)
        ));
        let lease = leases.lock().unwrap().pop().unwrap();
        lease.release_for_test();
        assert_eq!(layer.inflight(), 0);
        svc.oneshot(req("/plain")).await.unwrap();
    }
}
