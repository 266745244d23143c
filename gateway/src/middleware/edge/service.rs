//! The header-rule layers: [`ResponseHeadersLayer`] (outermost of a route:
//! its rules see every answer last) and [`RequestHeadersLayer`] (after
//! auth: claims exist).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use futures_util::future::{ErrInto, TryFutureExt};
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::cors::decorate_error;
use super::rules::{HeaderRules, Vars};
use crate::body::Body;
use crate::context::RequestContext;
use crate::error::BoxError;
use crate::middleware::auth::{Claims, VerifiedClaims};

/// Where the request layer leaves the verified claims for the response
/// layer, which sees the request before auth ran: a request extension the
/// response layer puts in, only on routes whose response rules read claims.
#[derive(Debug, Clone, Default)]
pub struct ClaimsSlot(Arc<OnceLock<Arc<Claims>>>);

/// Applies a route's `response_headers` to every response of the route:
/// preflight answers, upstream and cached responses, and (`set` and `add`
/// only) the gateway's own error responses.
#[derive(Debug, Clone)]
pub struct ResponseHeadersLayer {
    rules: Arc<HeaderRules>,
}

impl ResponseHeadersLayer {
    /// A layer applying `rules`.
    pub fn new(rules: HeaderRules) -> Self {
        Self {
            rules: Arc::new(rules),
        }
    }
}

impl<S> Layer<S> for ResponseHeadersLayer {
    type Service = ResponseHeaders<S>;

    fn layer(&self, inner: S) -> ResponseHeaders<S> {
        ResponseHeaders {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// See [`ResponseHeadersLayer`].
#[derive(Debug, Clone)]
pub struct ResponseHeaders<S> {
    inner: S,
    rules: Arc<HeaderRules>,
}

pin_project! {
    /// The future of [`ResponseHeaders`]: holds what the placeholders need,
    /// taken from the request before it went down.
    pub struct ResponseHeadersFuture<F> {
        #[pin]
        fut: F,
        rules: Arc<HeaderRules>,
        request_id: Option<HeaderValue>,
        client_ip: Option<IpAddr>,
        claims: Option<ClaimsSlot>,
    }
}

impl<F, E> Future for ResponseHeadersFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.fut.poll(cx));
        let claims = this.claims.as_ref().and_then(|s| s.0.get());
        let vars = Vars {
            request_id: this.request_id.as_ref(),
            client_ip: *this.client_ip,
            claims: claims.map(|c| &**c),
        };
        Poll::Ready(match result {
            Ok(mut resp) => {
                this.rules.apply(resp.headers_mut(), &vars);
                Ok(resp)
            }
            Err(e) => Err(decorate_error(e.into(), || this.rules.error_headers(&vars))),
        })
    }
}

impl<S> Service<Request<Body>> for ResponseHeaders<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseHeadersFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let uses = self.rules.uses();
        let ctx = req.extensions().get::<RequestContext>();
        // Only what the templates read is kept.
        let request_id = ctx
            .filter(|_| uses.request_id)
            .map(|c| c.request_id().clone());
        let client_ip = ctx
            .filter(|_| uses.client_ip)
            .map(RequestContext::client_ip);
        let claims = uses.claims.then(|| {
            let slot = ClaimsSlot::default();
            req.extensions_mut().insert(slot.clone());
            slot
        });
        ResponseHeadersFuture {
            fut: self.inner.call(req),
            rules: self.rules.clone(),
            request_id,
            client_ip,
            claims,
        }
    }
}

/// Applies a route's `request_headers` after auth and the edge's
/// sanitation (so `{claim.NAME}` reads the verified token, and no client
/// header the edge removes comes back), and hands the verified claims to
/// the [`ResponseHeadersLayer`] when its rules read them.
#[derive(Debug, Clone)]
pub struct RequestHeadersLayer {
    rules: Option<Arc<HeaderRules>>,
}

impl RequestHeadersLayer {
    /// A layer applying `rules` (none: it only passes claims outwards).
    pub fn new(rules: Option<HeaderRules>) -> Self {
        Self {
            rules: rules.map(Arc::new),
        }
    }
}

impl<S> Layer<S> for RequestHeadersLayer {
    type Service = RequestHeaders<S>;

    fn layer(&self, inner: S) -> RequestHeaders<S> {
        RequestHeaders {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// See [`RequestHeadersLayer`].
#[derive(Debug, Clone)]
pub struct RequestHeaders<S> {
    inner: S,
    rules: Option<Arc<HeaderRules>>,
}

impl<S> Service<Request<Body>> for RequestHeaders<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ErrInto<S::Future, BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let claims = parts.extensions.get::<VerifiedClaims>();
        if let (Some(slot), Some(c)) = (parts.extensions.get::<ClaimsSlot>(), claims) {
            let _ = slot.0.set(c.0.clone());
        }
        if let Some(rules) = &self.rules {
            let ctx = parts.extensions.get::<RequestContext>();
            let vars = Vars {
                request_id: ctx.map(RequestContext::request_id),
                client_ip: ctx.map(RequestContext::client_ip),
                claims: claims.map(|c| &*c.0),
            };
            rules.apply(&mut parts.headers, &vars);
        }
        self.inner.call(Request::from_parts(parts, body)).err_into()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::config::edge::HeaderRulesConfig;
    use crate::context::ClientAddr;
    use std::sync::Mutex;
    use tower::{ServiceBuilder, ServiceExt};

    fn rules(toml: &str) -> HeaderRules {
        #[derive(serde::Deserialize)]
        struct W {
            r: HeaderRulesConfig,
        }
        let w: W = toml::from_str(toml).unwrap();
        HeaderRules::new(&w.r, "users", None)
    }

    /// Stands in for auth: admits with these claims.
    fn with_claims<S>(
        inner: S,
        claims: serde_json::Value,
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone,
    {
        let c = Arc::new(claims.as_object().unwrap().clone());
        tower::util::MapRequest::new(inner, move |mut r: Request<Body>| {
            r.extensions_mut().insert(VerifiedClaims(c.clone()));
            r
        })
    }

    fn request(headers: &[(&str, &str)]) -> Request<Body> {
        let mut b = Request::get("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut r = b.body(Body::Empty).unwrap();
        let peer = ClientAddr::new("198.51.100.4:5000".parse().unwrap());
        r.extensions_mut().insert(RequestContext::direct(
            &peer,
            HeaderValue::from_static("rid-1"),
        ));
        r
    }

    #[tokio::test]
    async fn request_and_response_rules_read_the_verified_claims() {
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        let upstream = tower::service_fn(move |r: Request<Body>| {
            *s.lock().unwrap() = Some(r.headers().clone());
            async {
                let mut resp = Response::new(Body::Empty);
                resp.headers_mut()
                    .insert("server", HeaderValue::from_static("upstream/1"));
                Ok::<_, BoxError>(resp)
            }
        });
        let inner = ServiceBuilder::new()
            .layer(RequestHeadersLayer::new(Some(rules(
                r#"r = { set = { "X-Tenant" = "{claim.tenant}" }, add = { "X-Client" = "{client_ip} {request_id}" }, remove = ["X-Debug"] }"#,
            ))))
            .service(upstream);
        let svc = ResponseHeadersLayer::new(rules(
            r#"r = { remove = ["Server"], set = { "X-Subject" = "{claim.sub}" } }"#,
        ))
        .layer(with_claims(
            inner,
            serde_json::json!({"sub": "u-9", "tenant": "acme"}),
        ));
        let resp = svc
            .oneshot(request(&[("x-tenant", "forged"), ("x-debug", "1")]))
            .await
            .unwrap();
        let up = seen.lock().unwrap().take().unwrap();
        assert_eq!(up["x-tenant"], "acme");
        assert_eq!(up.get_all("x-tenant").iter().count(), 1);
        assert_eq!(up["x-client"], "198.51.100.4 rid-1");
        assert!(!up.contains_key("x-debug"));
        assert_eq!(resp.headers()["x-subject"], "u-9");
        assert!(!resp.headers().contains_key("server"));
    }

    #[tokio::test]
    async fn gateway_errors_get_the_response_rules_set_and_add() {
        let failing = tower::service_fn(|_r: Request<Body>| async {
            Err::<Response<Body>, BoxError>(Box::new(crate::error::GatewayError::Overloaded))
        });
        let inner = RequestHeadersLayer::new(None).layer(failing);
        let svc = ResponseHeadersLayer::new(rules(
            r#"r = { set = { "X-Subject" = "{claim.sub}" }, add = { "X-Id" = "{request_id}" }, remove = ["Retry-After"] }"#,
        ))
        .layer(with_claims(inner, serde_json::json!({"sub": "u-9"})));
        let err = svc.oneshot(request(&[])).await.unwrap_err();
        let resp = crate::error::render(err.as_ref(), &HeaderValue::from_static("rid-1"));
        assert_eq!(resp.status(), 503);
        let h = resp.headers();
        assert_eq!(h["x-subject"], "u-9");
        assert_eq!(h["x-id"], "rid-1");
        // The gateway's own error headers stay.
        assert_eq!(h["retry-after"], "1");
    }

    #[tokio::test]
    async fn without_a_slot_nothing_is_kept_and_the_request_passes_untouched() {
        let upstream = tower::service_fn(|r: Request<Body>| async move {
            assert!(r.extensions().get::<ClaimsSlot>().is_none());
            Ok::<_, BoxError>(Response::new(Body::Empty))
        });
        let svc = ResponseHeadersLayer::new(rules(r#"r = { set = { "X-A" = "b" } }"#))
            .layer(RequestHeadersLayer::new(None).layer(upstream));
        let resp = svc.oneshot(request(&[])).await.unwrap();
        assert_eq!(resp.headers()["x-a"], "b");
    }
}
