//! `Strict-Transport-Security` on a route's responses sent over TLS (a
//! route's `hsts`). Never on plaintext responses: RFC 6797 §7.2 says a
//! host must not send it over HTTP, and browsers ignore it there.
//!
//! The request carries [`TlsInfo`] only when its connection terminated
//! TLS (`server::tls`), so the layer reads that and nothing the client
//! could write (`X-Forwarded-Proto` is not a reason to add it).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::header::STRICT_TRANSPORT_SECURITY;
use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::context::TlsInfo;
use crate::error::{BoxError, Decorated};

/// Adds `Strict-Transport-Security: value` to responses of requests that
/// came over TLS.
#[derive(Debug, Clone)]
pub struct HstsLayer {
    value: HeaderValue,
}

impl HstsLayer {
    /// The layer of a route's `hsts` setting.
    pub fn new(config: &crate::config::tls::HstsConfig) -> Self {
        Self {
            value: config.header_value(),
        }
    }
}

impl<S> Layer<S> for HstsLayer {
    type Service = Hsts<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Hsts {
            inner,
            value: self.value.clone(),
        }
    }
}

/// See [`HstsLayer`].
#[derive(Debug, Clone)]
pub struct Hsts<S> {
    inner: S,
    value: HeaderValue,
}

impl<S, B, RB> Service<Request<B>> for Hsts<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let value = req
            .extensions()
            .get::<TlsInfo>()
            .map(|_| self.value.clone());
        ResponseFuture {
            inner: self.inner.call(req),
            value,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Hsts`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        value: Option<HeaderValue>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let r = ready!(this.inner.poll(cx));
        Poll::Ready(match (r, this.value.take()) {
            (Ok(mut resp), Some(v)) => {
                // The gateway's policy wins over an upstream's own header.
                resp.headers_mut().insert(STRICT_TRANSPORT_SECURITY, v);
                Ok(resp)
            }
            (Ok(resp), None) => Ok(resp),
            // The gateway's own error answers (401, 429, 503, the route
            // timeout's 504...) are sent over the same TLS connection: they
            // carry the header too, as error::render adds a Decorated's.
            (Err(e), Some(v)) => Err(Box::new(Decorated {
                headers: vec![(STRICT_TRANSPORT_SECURITY, v)],
                source: e.into(),
            })),
            (Err(e), None) => Err(e.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tower::ServiceExt;

    #[tokio::test]
    async fn only_requests_over_tls_get_the_header() {
        let layer = HstsLayer::new(&crate::config::tls::HstsConfig {
            max_age: Duration::from_secs(60),
            include_subdomains: true,
            preload: false,
        });
        let svc = layer.layer(tower::service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }));
        let plain = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert!(plain.headers().get(STRICT_TRANSPORT_SECURITY).is_none());
        let mut req = Request::new(());
        req.extensions_mut().insert(TlsInfo {
            version: "TLSv1.3",
            alpn: "h2",
            client_certificate: false,
        });
        let tls = svc.oneshot(req).await.unwrap();
        assert_eq!(
            tls.headers()[STRICT_TRANSPORT_SECURITY],
            "max-age=60; includeSubDomains"
        );
    }
}
