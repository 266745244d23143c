//! [`CorsPolicy`] (compiled once per route), [`CorsLayer`], [`Cors`] and
//! [`CorsFuture`].
//!
//! Why not tower-http's `CorsLayer` (in the workspace for compression):
//! it answers *every* `OPTIONS` request itself (a plain `OPTIONS` never
//! reaches the upstream), it leaves headers of the upstream's own CORS
//! policy it does not set itself (an upstream's
//! `Access-Control-Allow-Credentials: true` would survive a policy without
//! credentials), it builds a `HeaderMap` per request, it decorates only
//! `Ok` responses (ours fail as typed errors rendered at the edge, so a
//! 401 or 429 would reach the page without CORS headers and the script
//! could not read it), and it panics on an invalid policy at the first
//! request where we refuse it when the config loads.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS,
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use http::{Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::Body;
use crate::config::edge::CorsConfig;
use crate::error::{BoxError, Decorated};

const STAR: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");

/// Which origins may read the route's responses.
#[derive(Debug, Clone)]
enum Origins {
    /// `["*"]`: any origin, answered `Access-Control-Allow-Origin: *`.
    Any,
    /// Exact origins, lower-cased; the configured value is what is sent.
    List(Vec<HeaderValue>),
}

/// A route's CORS policy, compiled from a validated [`CorsConfig`]: every
/// header value is built here, so a request only compares and clones.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: Origins,
    methods: Option<HeaderValue>,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

fn join(list: &[String], upper: bool) -> Option<HeaderValue> {
    if list.is_empty() {
        return None;
    }
    let s = list
        .iter()
        .map(|v| {
            if upper {
                v.to_ascii_uppercase()
            } else {
                v.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    HeaderValue::from_str(&s).ok()
}

impl CorsPolicy {
    /// Compiles a validated policy (an entry that is not a valid header
    /// value, which validation refuses, is skipped).
    pub fn new(cfg: &CorsConfig) -> Self {
        let origins = if cfg.allow_origins.iter().any(|o| o == "*") {
            Origins::Any
        } else {
            Origins::List(
                cfg.allow_origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(&o.to_ascii_lowercase()).ok())
                    .collect(),
            )
        };
        Self {
            origins,
            // Methods are case-sensitive tokens; browsers upper-case only
            // the standard ones, so they are sent as configured.
            methods: join(&cfg.allow_methods, false),
            headers: join(&cfg.allow_headers, false),
            expose: join(&cfg.expose_headers, false),
            credentials: cfg.allow_credentials,
            max_age: cfg.max_age.map(|d| HeaderValue::from(d.as_secs())),
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request from
    /// `origin`, or `None` when that origin is not allowed. Never the
    /// request's own bytes: `*` or the configured origin it matched.
    pub fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        match &self.origins {
            Origins::Any => Some(STAR),
            Origins::List(list) => list
                .iter()
                .find(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
                .cloned(),
        }
    }

    /// Whether responses vary by `Origin` (they do unless any origin gets
    /// the same `*`).
    fn varies(&self) -> bool {
        matches!(self.origins, Origins::List(_))
    }

    /// Whether `req` is a CORS preflight: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method` (Fetch standard, §3.2.2). Any other
    /// `OPTIONS` is an ordinary request.
    pub fn is_preflight<B>(req: &Request<B>) -> bool {
        req.method() == Method::OPTIONS
            && req.headers().contains_key(ORIGIN)
            && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The answer to a preflight from `origin`: `200` with an empty body.
    /// An allowed origin gets the policy's headers; any other origin gets
    /// none of them (only `Vary: Origin`), so the browser fails the
    /// request, as Traefik and Envoy (with
    /// `forward_not_matching_preflights = false`, Envoy Gateway's setting)
    /// answer. The browser checks the method and headers it asked for
    /// against the lists.
    pub fn preflight(&self, origin: Option<&HeaderValue>) -> Response<Body> {
        let mut resp = Response::new(Body::Empty);
        *resp.status_mut() = StatusCode::OK;
        let h = resp.headers_mut();
        if self.varies() {
            h.insert(VARY, VARY_ORIGIN);
        }
        let Some(allow) = self.allow_origin(origin) else {
            return resp;
        };
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if self.credentials {
            h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        if let Some(m) = &self.methods {
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, m.clone());
        }
        if let Some(v) = &self.headers {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        if let Some(v) = &self.max_age {
            h.insert(ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        resp
    }

    /// Decorates an actual response: the upstream's own CORS headers are
    /// removed (the gateway's policy is the authority), then
    /// `Access-Control-Allow-Origin`, `-Allow-Credentials` and
    /// `-Expose-Headers` for an allowed origin, and `Vary: Origin` on every
    /// response (with or without `Origin`), so a shared cache keeps them
    /// apart.
    pub fn decorate(&self, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
        strip_cors(h);
        if self.varies() {
            add_vary_origin(h);
        }
        let Some(allow) = self.allow_origin(origin) else {
            return;
        };
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if self.credentials {
            h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        if let Some(v) = &self.expose {
            h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }

    /// The headers [`CorsPolicy::decorate`] would add, for a gateway
    /// error rendered at the edge.
    pub fn error_headers(&self, origin: Option<&HeaderValue>) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = HeaderMap::new();
        self.decorate(origin, &mut h);
        h.into_iter().filter_map(|(k, v)| Some((k?, v))).collect()
    }
}

/// Removes every `Access-Control-*` response header (allocates only when
/// there is one).
fn strip_cors(h: &mut HeaderMap) {
    let is_cors = |n: &HeaderName| n.as_str().starts_with("access-control-");
    if !h.keys().any(is_cors) {
        return;
    }
    let names: Vec<HeaderName> = h.keys().filter(|n| is_cors(n)).cloned().collect();
    for n in names {
        h.remove(n);
    }
}

/// Appends `Vary: Origin` unless a `Vary` already lists `Origin` or `*`.
fn add_vary_origin(h: &mut HeaderMap) {
    let listed = h.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.eq_ignore_ascii_case("origin"))
        })
    });
    if !listed {
        h.append(VARY, VARY_ORIGIN);
    }
}

/// Applies a [`CorsPolicy`]: preflights answered here, never passed on;
/// actual responses (and gateway errors) decorated.
#[derive(Debug, Clone)]
pub struct CorsLayer {
    policy: Arc<CorsPolicy>,
}

impl CorsLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: CorsPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Cors<S> {
        Cors {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The CORS middleware; see [`CorsLayer`].
#[derive(Debug, Clone)]
pub struct Cors<S> {
    inner: S,
    policy: Arc<CorsPolicy>,
}

pin_project! {
    /// The future of [`Cors`].
    #[project = Proj]
    pub enum CorsFuture<F> {
        /// A preflight, answered without calling the inner service.
        Preflight { resp: Option<Response<Body>> },
        /// An actual request: decorated when the inner service answers.
        Actual {
            #[pin]
            fut: F,
            origin: Option<HeaderValue>,
            policy: Arc<CorsPolicy>,
        },
    }
}

impl<F, E> Future for CorsFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Preflight { resp } => Poll::Ready(
                resp.take()
                    .ok_or_else(|| "cors future polled after completion".into()),
            ),
            Proj::Actual {
                fut,
                origin,
                policy,
            } => Poll::Ready(match ready!(fut.poll(cx)) {
                Ok(mut resp) => {
                    policy.decorate(origin.as_ref(), resp.headers_mut());
                    Ok(resp)
                }
                Err(e) => Err(decorate_error(e.into(), || {
                    policy.error_headers(origin.as_ref())
                })),
            }),
        }
    }
}

/// Wraps `e` so its rendered response gets `headers` (the route timeout's
/// too: the edge finds its `Elapsed` anywhere in the chain and keeps these
/// decorations when it turns a slow upload's timeout into a 408).
pub(super) fn decorate_error(
    e: BoxError,
    headers: impl FnOnce() -> Vec<(HeaderName, HeaderValue)>,
) -> BoxError {
    let headers = headers();
    if headers.is_empty() {
        return e;
    }
    Box::new(Decorated { headers, source: e })
}

impl<S> Service<Request<Body>> for Cors<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = CorsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let origin = req.headers().get(ORIGIN).cloned();
        if CorsPolicy::is_preflight(&req) {
            // Before auth and limits: a preflight carries no credentials.
            return CorsFuture::Preflight {
                resp: Some(self.policy.preflight(origin.as_ref())),
            };
        }
        CorsFuture::Actual {
            fut: self.inner.call(req),
            origin,
            policy: self.policy.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tower::ServiceExt;

    fn policy(origins: &[&str], credentials: bool) -> CorsPolicy {
        CorsPolicy::new(&CorsConfig {
            allow_origins: origins.iter().map(|s| (*s).to_owned()).collect(),
            allow_methods: vec!["GET".into(), "PUT".into()],
            allow_headers: vec!["X-Custom".into(), "Authorization".into()],
            expose_headers: vec!["X-Trace".into()],
            allow_credentials: credentials,
            max_age: Some(Duration::from_secs(600)),
        })
    }

    fn req(method: Method, origin: Option<&str>, preflight: bool) -> Request<Body> {
        let mut b = Request::builder().method(method).uri("/api/x");
        if let Some(o) = origin {
            b = b.header(ORIGIN, o);
        }
        if preflight {
            b = b
                .header(ACCESS_CONTROL_REQUEST_METHOD, "PUT")
                .header("access-control-request-headers", "x-custom");
        }
        b.body(Body::Empty).unwrap()
    }

    /// A CORS layer over an upstream that counts its calls and answers with
    /// its own (hostile) CORS headers, or fails.
    fn service(
        p: CorsPolicy,
        fail: bool,
    ) -> (
        impl Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone,
        Arc<AtomicUsize>,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let inner = tower::service_fn(move |_req: Request<Body>| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                if fail {
                    return Err::<Response<Body>, BoxError>(Box::new(
                        crate::error::GatewayError::Overloaded,
                    ));
                }
                let mut r = Response::new(Body::full("up"));
                let h = r.headers_mut();
                h.insert(
                    ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("https://evil.example"),
                );
                h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
                h.insert("access-control-allow-private-network", TRUE);
                h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
                Ok(r)
            }
        });
        (CorsLayer::new(p).layer(inner), calls)
    }

    #[tokio::test]
    async fn an_allowed_preflight_is_answered_here_with_the_policy() {
        let (svc, calls) = service(policy(&["https://App.example.com"], true), false);
        let resp = svc
            .oneshot(req(Method::OPTIONS, Some("https://app.example.com"), true))
            .await
            .unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "a preflight reached the upstream"
        );
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        // The configured origin (lower-cased), not the request's bytes.
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET, PUT");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "X-Custom, Authorization");
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(h[VARY], "Origin");
        assert!(!h.contains_key(ACCESS_CONTROL_EXPOSE_HEADERS));
    }

    #[tokio::test]
    async fn a_disallowed_preflight_is_answered_here_without_cors_headers() {
        let (svc, calls) = service(policy(&["https://app.example.com"], true), false);
        for origin in [
            "https://evil.example",
            "null",
            "https://app.example.com.evil.example",
        ] {
            let resp = svc
                .clone()
                .oneshot(req(Method::OPTIONS, Some(origin), true))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let h = resp.headers();
            assert!(
                !h.keys().any(|k| k.as_str().starts_with("access-control-")),
                "{origin}: {h:?}"
            );
            assert_eq!(h[VARY], "Origin");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "a preflight reached the upstream"
        );
    }

    #[tokio::test]
    async fn a_plain_options_request_is_forwarded() {
        let (svc, calls) = service(policy(&["https://app.example.com"], false), false);
        // No Access-Control-Request-Method: not a preflight.
        let resp = svc
            .oneshot(req(Method::OPTIONS, Some("https://app.example.com"), false))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            resp.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
    }

    #[tokio::test]
    async fn actual_responses_get_the_policy_and_lose_the_upstreams_cors_headers() {
        let (svc, _) = service(policy(&["https://app.example.com"], false), false);
        let resp = svc
            .clone()
            .oneshot(req(Method::GET, Some("https://app.example.com"), false))
            .await
            .unwrap();
        let h = resp.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        // The upstream said credentials: the policy does not.
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS), "{h:?}");
        assert!(
            !h.contains_key("access-control-allow-private-network"),
            "{h:?}"
        );
        assert_eq!(h[ACCESS_CONTROL_EXPOSE_HEADERS], "X-Trace");
        let vary: Vec<_> = h.get_all(VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);

        // Another origin, or none: no CORS headers at all, still Vary.
        for origin in [Some("https://evil.example"), None] {
            let resp = svc
                .clone()
                .oneshot(req(Method::GET, origin, false))
                .await
                .unwrap();
            let h = resp.headers();
            assert!(
                !h.keys().any(|k| k.as_str().starts_with("access-control-")),
                "{origin:?}: {h:?}"
            );
            assert!(h.get_all(VARY).iter().any(|v| v == "Origin"));
        }
    }

    #[tokio::test]
    async fn a_wildcard_policy_sends_a_star_and_no_vary() {
        let (svc, _) = service(policy(&["*"], false), false);
        let resp = svc
            .oneshot(req(Method::GET, Some("https://any.example"), false))
            .await
            .unwrap();
        assert_eq!(resp.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let vary: Vec<_> = resp.headers().get_all(VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding"]);
    }

    #[tokio::test]
    async fn gateway_errors_are_rendered_with_the_cors_headers() {
        let (svc, _) = service(policy(&["https://app.example.com"], true), true);
        let err = svc
            .oneshot(req(Method::GET, Some("https://app.example.com"), false))
            .await
            .unwrap_err();
        let resp = crate::error::render(err.as_ref(), &HeaderValue::from_static("id-1"));
        assert_eq!(resp.status(), 503);
        let h = resp.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[VARY], "Origin");
        // Telemetry reads no rate-limit decision from this wrapper.
        assert!(resp
            .extensions()
            .get::<crate::middleware::ratelimit::RateLimitDecision>()
            .is_none());
    }

    #[test]
    fn the_route_timeout_is_decorated_too() {
        let e: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        let e = decorate_error(e, || vec![(VARY, VARY_ORIGIN)]);
        let d = e.downcast_ref::<Decorated>().unwrap();
        assert!(d.source.is::<tower::timeout::error::Elapsed>());
        let e: BoxError = "x".into();
        assert!(decorate_error(e, Vec::new)
            .downcast_ref::<Decorated>()
            .is_none());
    }
}
