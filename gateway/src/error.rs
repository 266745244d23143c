//! THE mapping from error kinds to HTTP responses.
//!
//! Layers fail with small typed errors (boxed as [`BoxError`]); [`render`]
//! walks the cause chain once, picks the status, and writes the JSON body
//! `{"error": "...", "request_id": "..."}` with the headers the kind calls
//! for. Internals never leak into the body; the full chain goes to the log.

use std::error::Error as StdError;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::body::Body;
use crate::middleware::auth::AuthError;
use crate::middleware::concurrency::{ConcurrencyLimited, ConcurrencyRejected};
use crate::middleware::ratelimit::{
    LimiterFailed, LimiterUnavailable, RateLimitDecision, RateLimited,
};
use crate::request_id::X_REQUEST_ID;
use crate::upstream::error::{RequestBodyError, RequestBodyKind, UpstreamError};

/// `499 Client Closed Request` (nginx's): the client left before the
/// answer; logged and counted, never seen by anyone.
pub const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// The error type flowing through the middleware stack.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Who failed, so logs and metrics do not have to guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The client sent something wrong or too slowly, or left.
    Client,
    /// The upstream failed.
    Upstream,
    /// The gateway itself (or its policy) refused.
    Gateway,
}

/// Errors raised by the gateway's own layers.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No route matches the request's path and host.
    #[error("no route matches the request")]
    NoRoute,
    /// A route matches the path but not the method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The request's declared `Content-Length` exceeds the route's limit.
    #[error(transparent)]
    BodyTooLarge(#[from] BodyTooLarge),
    /// No endpoint of the upstream pool is healthy.
    #[error("no healthy endpoint in upstream {upstream:?}")]
    NoHealthyEndpoint {
        /// Pool name.
        upstream: Arc<str>,
    },
    /// Every healthy endpoint's circuit breaker is open.
    #[error("every endpoint of upstream {upstream:?} is failing (circuit open)")]
    CircuitOpen {
        /// Pool name.
        upstream: Arc<str>,
        /// Seconds until the first breaker lets a probe through.
        retry_after: u64,
    },
    /// The route has as many requests in flight as it allows.
    #[error("route is overloaded")]
    Overloaded,
    /// The endpoint had `max_connections` open and none was freed within
    /// `connect_queue_timeout`: the gateway's own limit, never counted
    /// against the endpoint.
    #[error("upstream connection limit reached")]
    ConnectionLimit,
    /// The upstream did not send response headers in time.
    #[error("upstream {upstream:?} timed out")]
    UpstreamTimeout {
        /// Pool name.
        upstream: Arc<str>,
    },
    /// The request is malformed in a way hyper let through.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
}

/// An error from below a layer whose headers must be on every response of
/// the route (the rate-limit fields): [`render`] adds `headers` to
/// whatever response the wrapped error becomes.
#[derive(Debug, thiserror::Error)]
#[error("failed below a layer that adds response headers")]
pub struct WithHeaders {
    /// Headers for the error response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The actual error.
    #[source]
    pub source: BoxError,
    /// The shared rate limiter failed for this request (see
    /// [`LimiterFailed`]).
    pub limiter_failed: bool,
}

/// An error from below a layer that decorates every response of its route
/// (the CORS policy, response header rules): [`render`] adds `headers` to
/// whatever response the wrapped error becomes, like [`WithHeaders`] but
/// with no rate-limit meaning (telemetry reads nothing from it).
#[derive(Debug, thiserror::Error)]
#[error("failed below a layer that decorates responses")]
pub struct Decorated {
    /// Headers for the error response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The actual error.
    #[source]
    pub source: BoxError,
}

/// Whether an error of type `T` is anywhere in `err`'s cause chain.
pub fn chain_has<T: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<T>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The headers of every [`Decorated`] in `err`'s cause chain, outermost
/// first.
pub fn decorations(err: &(dyn StdError + 'static)) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(d) = e.downcast_ref::<Decorated>() {
            out.extend(d.headers.iter().cloned());
        }
        cur = e.source();
    }
    out
}

/// A request body exceeded the route's limit.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit in bytes.
    pub limit: u64,
}

/// What [`classify`] decided about an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// Response status.
    pub status: StatusCode,
    /// Public message (no internals).
    pub message: String,
    /// Who failed.
    pub blame: Blame,
    /// `Retry-After` seconds, if any.
    pub retry_after: Option<u64>,
    /// Other headers the kind calls for (`WWW-Authenticate`, rate-limit
    /// fields).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The shared rate limiter failed for this request: the response gets
    /// the [`LimiterFailed`] extension, so it is counted as such.
    pub limiter_failed: bool,
}

impl Classified {
    fn new(status: StatusCode, message: impl Into<String>, blame: Blame) -> Self {
        Self {
            status,
            message: message.into(),
            blame,
            retry_after: None,
            headers: Vec::new(),
            limiter_failed: false,
        }
    }
}

/// Who is to blame for `err`, from the first error in its cause chain
/// that carries it as data; what [`classify`] decides, without building
/// the message. The breaker and the proxy read this: only
/// [`Blame::Upstream`] counts against an endpoint.
pub fn blame(err: &(dyn StdError + 'static)) -> Blame {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(g) = e.downcast_ref::<GatewayError>() {
            return match g {
                GatewayError::NoRoute
                | GatewayError::MethodNotAllowed
                | GatewayError::BodyTooLarge(_)
                | GatewayError::BadRequest(_) => Blame::Client,
                GatewayError::NoHealthyEndpoint { .. }
                | GatewayError::CircuitOpen { .. }
                | GatewayError::UpstreamTimeout { .. } => Blame::Upstream,
                GatewayError::Overloaded | GatewayError::ConnectionLimit => Blame::Gateway,
            };
        }
        if let Some(b) = e.downcast_ref::<RequestBodyError>() {
            return b.blame();
        }
        if let Some(c) = e.downcast_ref::<ConcurrencyLimited>() {
            return concurrency_blame(c);
        }
        if e.is::<BodyTooLarge>() || e.is::<AuthError>() || e.is::<RateLimited>() {
            return Blame::Client;
        }
        if e.is::<LimiterUnavailable>() {
            return Blame::Gateway;
        }
        if e.is::<tower::timeout::error::Elapsed>() {
            return Blame::Upstream;
        }
        if let Some(u) = e.downcast_ref::<UpstreamError>() {
            return u.blame();
        }
        cur = e.source();
    }
    Blame::Gateway
}

/// Walks the cause chain of `err` and decides status, message and blame.
pub fn classify(err: &(dyn StdError + 'static)) -> Classified {
    let mut c = classify_kind(err);
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    let mut extra = Vec::new();
    while let Some(e) = cur {
        if let Some(w) = e.downcast_ref::<WithHeaders>() {
            extra.extend(w.headers.iter().cloned());
            c.limiter_failed |= w.limiter_failed;
        }
        if let Some(d) = e.downcast_ref::<Decorated>() {
            extra.extend(d.headers.iter().cloned());
        }
        cur = e.source();
    }
    if !extra.is_empty() {
        // The kind's own headers go last, so they win.
        extra.append(&mut c.headers);
        c.headers = extra;
    }
    c
}

fn classify_kind(err: &(dyn StdError + 'static)) -> Classified {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(g) = e.downcast_ref::<GatewayError>() {
            return match g {
                GatewayError::NoRoute => {
                    Classified::new(StatusCode::NOT_FOUND, g.to_string(), Blame::Client)
                }
                GatewayError::MethodNotAllowed => {
                    Classified::new(StatusCode::METHOD_NOT_ALLOWED, g.to_string(), Blame::Client)
                }
                GatewayError::BodyTooLarge(b) => too_large(b),
                GatewayError::NoHealthyEndpoint { .. } => Classified {
                    retry_after: Some(1),
                    ..Classified::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        g.to_string(),
                        Blame::Upstream,
                    )
                },
                GatewayError::CircuitOpen { retry_after, .. } => Classified {
                    retry_after: Some(*retry_after),
                    ..Classified::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        g.to_string(),
                        Blame::Upstream,
                    )
                },
                GatewayError::Overloaded | GatewayError::ConnectionLimit => Classified {
                    retry_after: Some(1),
                    ..Classified::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        g.to_string(),
                        Blame::Gateway,
                    )
                },
                GatewayError::UpstreamTimeout { .. } => {
                    Classified::new(StatusCode::GATEWAY_TIMEOUT, g.to_string(), Blame::Upstream)
                }
                GatewayError::BadRequest(_) => {
                    Classified::new(StatusCode::BAD_REQUEST, g.to_string(), Blame::Client)
                }
            };
        }
        if let Some(b) = e.downcast_ref::<BodyTooLarge>() {
            return too_large(b);
        }
        // Adaptive concurrency: 503 (or 429, the route's reject_status).
        if let Some(c) = e.downcast_ref::<ConcurrencyLimited>() {
            return Classified {
                retry_after: Some(c.retry_after),
                ..Classified::new(c.status, c.to_string(), concurrency_blame(c))
            };
        }
        if let Some(b) = e.downcast_ref::<RequestBodyError>() {
            let status = match b.kind {
                RequestBodyKind::Malformed => StatusCode::BAD_REQUEST,
                RequestBodyKind::TimedOut => StatusCode::REQUEST_TIMEOUT,
                RequestBodyKind::Aborted => CLIENT_CLOSED_REQUEST,
            };
            return Classified::new(status, b.to_string(), b.blame());
        }
        if let Some(a) = e.downcast_ref::<AuthError>() {
            let status = match a {
                AuthError::Forbidden(_) => StatusCode::FORBIDDEN,
                AuthError::Missing | AuthError::Invalid(_) => StatusCode::UNAUTHORIZED,
            };
            let challenge = HeaderValue::from_str(&a.challenge())
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
            return Classified {
                headers: vec![(WWW_AUTHENTICATE, challenge)],
                ..Classified::new(status, a.to_string(), Blame::Client)
            };
        }
        if let Some(r) = e.downcast_ref::<RateLimited>() {
            return Classified {
                retry_after: Some(r.retry_after.max(1)),
                headers: r.headers.clone(),
                limiter_failed: r.limiter_failed,
                ..Classified::new(StatusCode::TOO_MANY_REQUESTS, r.to_string(), Blame::Client)
            };
        }
        if e.is::<LimiterUnavailable>() {
            return Classified {
                retry_after: Some(1),
                limiter_failed: true,
                ..Classified::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    e.to_string(),
                    Blame::Gateway,
                )
            };
        }
        if e.is::<tower::timeout::error::Elapsed>() {
            return Classified::new(
                StatusCode::GATEWAY_TIMEOUT,
                "route timeout exceeded",
                Blame::Upstream,
            );
        }
        if let Some(u) = e.downcast_ref::<UpstreamError>() {
            let (status, message) = match u {
                UpstreamError::Connect(_) => {
                    (StatusCode::BAD_GATEWAY, "upstream refused the connection")
                }
                UpstreamError::ConnectTimeout => {
                    (StatusCode::GATEWAY_TIMEOUT, "upstream connect timed out")
                }
                UpstreamError::Closed | UpstreamError::Io(_) | UpstreamError::NotSent(_) => (
                    StatusCode::BAD_GATEWAY,
                    "upstream closed or reset the connection",
                ),
                UpstreamError::Protocol(_) => {
                    (StatusCode::BAD_GATEWAY, "invalid response from upstream")
                }
                UpstreamError::HeadTimeout => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream sent no response in time",
                ),
                UpstreamError::WriteTimeout => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream stopped reading the request",
                ),
                UpstreamError::BodyTimeout => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream response body timed out",
                ),
            };
            return Classified::new(status, message, u.blame());
        }
        cur = e.source();
    }
    Classified::new(StatusCode::BAD_GATEWAY, "bad gateway", Blame::Gateway)
}

/// A 429 asks the client to slow down (as a rate limit does); a 503 is
/// the gateway protecting the upstream.
fn concurrency_blame(c: &ConcurrencyLimited) -> Blame {
    if c.status.is_client_error() {
        Blame::Client
    } else {
        Blame::Gateway
    }
}

fn too_large(b: &BodyTooLarge) -> Classified {
    Classified::new(StatusCode::PAYLOAD_TOO_LARGE, b.to_string(), Blame::Client)
}

/// Renders `err` as the JSON error response for `request_id`.
pub fn render(err: &(dyn StdError + 'static), request_id: &HeaderValue) -> Response<Body> {
    let c = classify(err);
    let mut resp = json_error(c.status, &c.message, request_id);
    let h = resp.headers_mut();
    if let Some(secs) = c.retry_after {
        h.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    for (k, v) in c.headers {
        h.insert(k, v);
    }
    if c.limiter_failed {
        resp.extensions_mut().insert(LimiterFailed);
    }
    mark_decisions(err, resp.extensions_mut());
    // RFC 9209: the gateway answered itself, and why.
    let kind = crate::proxy_status::error_type(err);
    resp.headers_mut().insert(
        crate::proxy_status::PROXY_STATUS,
        crate::proxy_status::error_value(&crate::proxy_status::name(), kind),
    );
    resp
}

/// Puts on an error response the typed markers telemetry counts (it never
/// reads response headers, which an upstream could send too): the auth
/// layer's [`AuthError`] itself, the limiter's refusal, or the limiter's
/// admission of a request that then failed below it ([`WithHeaders`]).
fn mark_decisions(err: &(dyn StdError + 'static), ext: &mut http::Extensions) {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(a) = e.downcast_ref::<AuthError>() {
            ext.insert(*a);
        } else if e.is::<RateLimited>() {
            ext.insert(RateLimitDecision::Limited);
        } else if e.is::<WithHeaders>() {
            ext.insert(RateLimitDecision::Allowed);
        } else if e.is::<ConcurrencyLimited>() {
            ext.insert(ConcurrencyRejected);
        }
        cur = e.source();
    }
}

/// A JSON error response `{"error": message, "request_id": id}` with the
/// request id also in `X-Request-Id`.
pub fn json_error(status: StatusCode, message: &str, request_id: &HeaderValue) -> Response<Body> {
    let body = serde_json::json!({
        "error": message,
        "request_id": request_id.to_str().unwrap_or_default(),
    })
    .to_string();
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(X_REQUEST_ID, request_id.clone());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapper")]
    struct Wrapper(#[source] BoxError);

    #[test]
    fn every_kind_maps_to_its_status() {
        let up: Arc<str> = Arc::from("users");
        let cases: Vec<(BoxError, StatusCode, Option<u64>)> = vec![
            (GatewayError::NoRoute.into(), StatusCode::NOT_FOUND, None),
            (
                GatewayError::MethodNotAllowed.into(),
                StatusCode::METHOD_NOT_ALLOWED,
                None,
            ),
            (
                BodyTooLarge { limit: 10 }.into(),
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
            ),
            (
                GatewayError::NoHealthyEndpoint {
                    upstream: up.clone(),
                }
                .into(),
                StatusCode::SERVICE_UNAVAILABLE,
                Some(1),
            ),
            (
                GatewayError::CircuitOpen {
                    upstream: up.clone(),
                    retry_after: 4,
                }
                .into(),
                StatusCode::SERVICE_UNAVAILABLE,
                Some(4),
            ),
            (
                GatewayError::Overloaded.into(),
                StatusCode::SERVICE_UNAVAILABLE,
                Some(1),
            ),
            (
                ConcurrencyLimited {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    retry_after: 1,
                }
                .into(),
                StatusCode::SERVICE_UNAVAILABLE,
                Some(1),
            ),
            (
                ConcurrencyLimited {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    retry_after: 2,
                }
                .into(),
                StatusCode::TOO_MANY_REQUESTS,
                Some(2),
            ),
            (
                GatewayError::UpstreamTimeout { upstream: up }.into(),
                StatusCode::GATEWAY_TIMEOUT,
                None,
            ),
            (
                tower::timeout::error::Elapsed::new().into(),
                StatusCode::GATEWAY_TIMEOUT,
                None,
            ),
            (
                GatewayError::BadRequest("x").into(),
                StatusCode::BAD_REQUEST,
                None,
            ),
            // Found through the cause chain.
            (
                Box::new(Wrapper(BodyTooLarge { limit: 1 }.into())),
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
            ),
            ("something else".into(), StatusCode::BAD_GATEWAY, None),
            (AuthError::Missing.into(), StatusCode::UNAUTHORIZED, None),
            (
                AuthError::Invalid("token expired").into(),
                StatusCode::UNAUTHORIZED,
                None,
            ),
            (
                AuthError::Forbidden("a required scope is missing").into(),
                StatusCode::FORBIDDEN,
                None,
            ),
            (
                RateLimited {
                    policy: "p".into(),
                    retry_after: 3,
                    headers: vec![(
                        HeaderName::from_static("ratelimit"),
                        HeaderValue::from_static("\"p\";r=0;t=3"),
                    )],
                    limiter_failed: false,
                }
                .into(),
                StatusCode::TOO_MANY_REQUESTS,
                Some(3),
            ),
            (
                LimiterUnavailable.into(),
                StatusCode::SERVICE_UNAVAILABLE,
                Some(1),
            ),
            (
                RequestBodyError::new(RequestBodyKind::Malformed).into(),
                StatusCode::BAD_REQUEST,
                None,
            ),
            (
                RequestBodyError::new(RequestBodyKind::TimedOut).into(),
                StatusCode::REQUEST_TIMEOUT,
                None,
            ),
            (
                Box::new(Wrapper(
                    RequestBodyError::new(RequestBodyKind::Aborted).into(),
                )),
                CLIENT_CLOSED_REQUEST,
                None,
            ),
            (
                UpstreamError::NotSent(std::io::ErrorKind::BrokenPipe.into()).into(),
                StatusCode::BAD_GATEWAY,
                None,
            ),
            (
                UpstreamError::HeadTimeout.into(),
                StatusCode::GATEWAY_TIMEOUT,
                None,
            ),
            (
                UpstreamError::WriteTimeout.into(),
                StatusCode::GATEWAY_TIMEOUT,
                None,
            ),
            (
                UpstreamError::BodyTimeout.into(),
                StatusCode::GATEWAY_TIMEOUT,
                None,
            ),
        ];
        let id = HeaderValue::from_static("req-1");
        for (err, status, retry) in cases {
            // `blame` decides what `classify` does, without the message;
            // client faults are 4xx (499 included), never blamed upstream.
            let c = classify(err.as_ref());
            assert_eq!(blame(err.as_ref()), c.blame, "{err}");
            assert_eq!(c.blame == Blame::Client, status.is_client_error(), "{err}");
            let resp = render(err.as_ref(), &id);
            assert_eq!(resp.status(), status, "{err}");
            assert_eq!(resp.headers()[X_REQUEST_ID], "req-1");
            assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
            assert_eq!(
                resp.headers().get(RETRY_AFTER).map(|v| v
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()),
                retry
            );
            let Body::Full(Some(b)) = resp.into_body() else {
                panic!("not a full body")
            };
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["request_id"], "req-1");
            assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()));
        }
    }

    #[test]
    fn kinds_add_their_headers() {
        let id = HeaderValue::from_static("r");
        let resp = render(&AuthError::Invalid("token expired"), &id);
        assert_eq!(
            resp.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token", error_description="token expired""#
        );
        let resp = render(&AuthError::Forbidden("a required scope is missing"), &id);
        assert!(resp.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains(r#"error="insufficient_scope""#));
        let resp = render(&AuthError::Missing, &id);
        assert_eq!(
            resp.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="gateway""#
        );
        let limited = RateLimited {
            policy: "p".into(),
            retry_after: 2,
            headers: vec![(
                HeaderName::from_static("ratelimit"),
                HeaderValue::from_static("\"p\";r=0;t=2"),
            )],
            limiter_failed: false,
        };
        let resp = render(&limited, &id);
        assert_eq!(resp.headers()["ratelimit"], "\"p\";r=0;t=2");
        assert_eq!(resp.headers()[RETRY_AFTER], "2");
    }

    #[test]
    fn wrapped_errors_keep_their_kind_and_gain_headers() {
        let err = WithHeaders {
            headers: vec![(
                HeaderName::from_static("x-ratelimit-limit"),
                HeaderValue::from_static("5"),
            )],
            source: GatewayError::UpstreamTimeout {
                upstream: Arc::from("u"),
            }
            .into(),
            limiter_failed: false,
        };
        let resp = render(&err, &HeaderValue::from_static("r"));
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(resp.headers()["x-ratelimit-limit"], "5");
    }

    #[test]
    fn messages_are_json_escaped() {
        let id = HeaderValue::from_static("a\"b");
        let resp = json_error(StatusCode::NOT_FOUND, "quote \" and \\", &id);
        let Body::Full(Some(b)) = resp.into_body() else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"], "quote \" and \\");
        assert_eq!(v["request_id"], "a\"b");
    }

    #[test]
    fn error_responses_carry_the_typed_decision_markers() {
        let id = HeaderValue::from_static("r");
        let resp = render(&AuthError::Forbidden("a required role is missing"), &id);
        assert!(matches!(
            resp.extensions().get::<AuthError>(),
            Some(AuthError::Forbidden(_))
        ));
        let limited = RateLimited {
            policy: "p".into(),
            retry_after: 2,
            headers: Vec::new(),
            limiter_failed: false,
        };
        let resp = render(&limited, &id);
        assert_eq!(
            resp.extensions().get::<RateLimitDecision>(),
            Some(&RateLimitDecision::Limited)
        );
        let below = WithHeaders {
            headers: Vec::new(),
            source: GatewayError::Overloaded.into(),
            limiter_failed: false,
        };
        let resp = render(&below, &id);
        assert_eq!(
            resp.extensions().get::<RateLimitDecision>(),
            Some(&RateLimitDecision::Allowed)
        );
        let resp = render(&GatewayError::NoRoute, &id);
        assert!(resp.extensions().get::<RateLimitDecision>().is_none());
        assert!(resp.extensions().get::<AuthError>().is_none());
    }

    #[test]
    fn a_failed_shared_limiter_marks_the_error_response() {
        let id = HeaderValue::from_static("req-1");
        let marked = |e: BoxError| {
            render(e.as_ref(), &id)
                .extensions()
                .get::<LimiterFailed>()
                .is_some()
        };
        assert!(marked(LimiterUnavailable.into()));
        // An error below the layer after the fallback let the request pass.
        let below = |limiter_failed| -> BoxError {
            Box::new(WithHeaders {
                headers: Vec::new(),
                source: GatewayError::Overloaded.into(),
                limiter_failed,
            })
        };
        assert!(marked(below(true)));
        assert!(!marked(below(false)));
        assert!(!marked(GatewayError::Overloaded.into()));
    }
}
