//! Load shedding: at most `max` requests in flight on a route; the next
//! one fails at once with 503 instead of queueing without bound.

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
        /// Admitted.
        Inner { #[pin] fut: F, slot: Slot },
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
            Proj::Inner { fut, .. } => fut.poll(cx).map_err(Into::into),
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
            slot,
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
}
