//! RFC 9209 `Proxy-Status`: why the gateway answered itself, and (on
//! routes with `proxy_status = true`) what it received from the upstream.
//!
//! Every response [`crate::error::render`] writes carries one list member
//! `<name>; error=<type>`, the type picked by [`error_type`] from the same
//! typed errors `classify` reads, so a client (or the next proxy) can tell
//! the gateway's 503 from the upstream's. On a route that asks for it,
//! [`ProxyStatusLayer`] appends `<name>; next-hop="<endpoint>";
//! received-status=<code>` to proxied responses (appended: an upstream
//! that is itself a proxy keeps its own members first, RFC 9209 §2).
//!
//! `<name>` is `server.via_name`, serialised as an RFC 9651 Token when it
//! matches the token grammar and as a String otherwise ([`sf_item`]).
//! `details` is never sent on errors: it would carry internals (RFC 9209
//! §5); the endpoint goes out only on routes that opt in.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::error::{BodyTooLarge, GatewayError};
use crate::middleware::auth::AuthError;
use crate::middleware::concurrency::ConcurrencyLimited;
use crate::middleware::ratelimit::{LimiterUnavailable, RateLimited};
use crate::telemetry::UpstreamInfo;
use crate::upstream::error::{RequestBodyError, UpstreamError};

/// `Proxy-Status` (RFC 9209).
pub const PROXY_STATUS: HeaderName = HeaderName::from_static("proxy-status");

/// The RFC 9209 §2.3 proxy error types the gateway reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// §2.3.2: no route: the gateway cannot determine the next hop.
    DestinationNotFound,
    /// §2.3.3: no healthy endpoint, or every breaker open.
    DestinationUnavailable,
    /// §2.3.5: the endpoint is unreachable (network/host unreachable).
    DestinationIpUnroutable,
    /// §2.3.6: the endpoint refused the connection.
    ConnectionRefused,
    /// §2.3.7: the connection closed before any response was received.
    ConnectionTerminated,
    /// §2.3.8: connecting to the endpoint timed out.
    ConnectionTimeout,
    /// §2.3.10: the upstream stopped reading the request body.
    ConnectionWriteTimeout,
    /// §2.3.11: the endpoint's `max_connections` were all busy.
    ConnectionLimitReached,
    /// §2.3.12: the upstream's TLS handshake failed on the protocol.
    TlsProtocolError,
    /// §2.3.13: the upstream's certificate failed verification.
    TlsCertificateError,
    /// §2.3.14: the upstream sent a TLS alert during the handshake.
    TlsAlertReceived,
    /// §2.3.15: a 4xx the gateway generates because the request itself is
    /// wrong (400, 405, 408, 413), as the origin would have.
    HttpRequestError,
    /// §2.3.16: refused by the gateway's policy (401, 403, 429): never
    /// forwarded.
    HttpRequestDenied,
    /// §2.3.17: the response was cut off.
    HttpResponseIncomplete,
    /// §2.3.26: no complete response within the configured time.
    HttpResponseTimeout,
    /// §2.3.28: the upstream sent something that is not valid HTTP.
    HttpProtocolError,
    /// §2.3.29: answered locally without trying the next hop (the route's
    /// concurrency limit: `max_inflight`, adaptive concurrency, 503 or
    /// 429).
    ProxyInternalResponse,
    /// §2.3.30: the gateway failed for reasons of its own (its shared
    /// limiter unavailable, an unexpected error).
    ProxyInternalError,
}

impl ProxyError {
    /// The registered type name (an RFC 9651 Token).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DestinationNotFound => "destination_not_found",
            Self::DestinationUnavailable => "destination_unavailable",
            Self::DestinationIpUnroutable => "destination_ip_unroutable",
            Self::ConnectionRefused => "connection_refused",
            Self::ConnectionTerminated => "connection_terminated",
            Self::ConnectionTimeout => "connection_timeout",
            Self::ConnectionWriteTimeout => "connection_write_timeout",
            Self::ConnectionLimitReached => "connection_limit_reached",
            Self::TlsProtocolError => "tls_protocol_error",
            Self::TlsCertificateError => "tls_certificate_error",
            Self::TlsAlertReceived => "tls_alert_received",
            Self::HttpRequestError => "http_request_error",
            Self::HttpRequestDenied => "http_request_denied",
            Self::HttpResponseIncomplete => "http_response_incomplete",
            Self::HttpResponseTimeout => "http_response_timeout",
            Self::HttpProtocolError => "http_protocol_error",
            Self::ProxyInternalResponse => "proxy_internal_response",
            Self::ProxyInternalError => "proxy_internal_error",
        }
    }
}

/// An error carrying its own Proxy-Status type, for layers whose error
/// kind `error_type` does not know: [`error_type`] stops at the first one
/// in the cause chain.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct Tagged {
    /// The type to report.
    pub error: ProxyError,
    /// The actual error.
    #[source]
    pub source: crate::error::BoxError,
}

/// The TLS type of a failed handshake with an `https://` upstream, from the
/// rustls error inside the connect error.
fn tls_error(io: &std::io::Error) -> Option<ProxyError> {
    let hs = io
        .get_ref()?
        .downcast_ref::<crate::upstream::tls::TlsHandshakeError>()?;
    Some(
        match hs
            .source
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(_)) => ProxyError::TlsCertificateError,
            Some(rustls::Error::AlertReceived(_)) => ProxyError::TlsAlertReceived,
            _ => ProxyError::TlsProtocolError,
        },
    )
}

/// The Proxy-Status type of `err`, from the first error in its cause chain
/// that carries one; the same kinds, in the same order, as
/// `crate::error::classify` reads for the status.
pub fn error_type(err: &(dyn StdError + 'static)) -> ProxyError {
    use std::io::ErrorKind;
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<Tagged>() {
            return t.error;
        }
        if let Some(g) = e.downcast_ref::<GatewayError>() {
            return match g {
                GatewayError::NoRoute => ProxyError::DestinationNotFound,
                GatewayError::MethodNotAllowed
                | GatewayError::BodyTooLarge(_)
                | GatewayError::BadRequest(_) => ProxyError::HttpRequestError,
                GatewayError::NoHealthyEndpoint { .. } | GatewayError::CircuitOpen { .. } => {
                    ProxyError::DestinationUnavailable
                }
                GatewayError::Overloaded => ProxyError::ProxyInternalResponse,
                GatewayError::ConnectionLimit => ProxyError::ConnectionLimitReached,
                GatewayError::UpstreamTimeout { .. } => ProxyError::HttpResponseTimeout,
            };
        }
        // Adaptive concurrency (503, or 429 when the route says so): the
        // gateway's capacity decision, answered without trying the next hop.
        if e.is::<ConcurrencyLimited>() {
            return ProxyError::ProxyInternalResponse;
        }
        if e.is::<BodyTooLarge>() || e.is::<RequestBodyError>() {
            return ProxyError::HttpRequestError;
        }
        if e.is::<AuthError>() || e.is::<RateLimited>() {
            return ProxyError::HttpRequestDenied;
        }
        if e.is::<LimiterUnavailable>() {
            return ProxyError::ProxyInternalError;
        }
        if e.is::<tower::timeout::error::Elapsed>() {
            return ProxyError::HttpResponseTimeout;
        }
        if let Some(u) = e.downcast_ref::<UpstreamError>() {
            return match u {
                UpstreamError::Connect(io)
                    if matches!(
                        io.kind(),
                        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable
                    ) =>
                {
                    ProxyError::DestinationIpUnroutable
                }
                UpstreamError::Connect(io) => {
                    tls_error(io).unwrap_or(ProxyError::ConnectionRefused)
                }
                UpstreamError::ConnectTimeout => ProxyError::ConnectionTimeout,
                UpstreamError::Io(io) if io.kind() == ErrorKind::UnexpectedEof => {
                    ProxyError::HttpResponseIncomplete
                }
                UpstreamError::Closed | UpstreamError::Io(_) | UpstreamError::NotSent(_) => {
                    ProxyError::ConnectionTerminated
                }
                UpstreamError::Protocol(_) => ProxyError::HttpProtocolError,
                UpstreamError::HeadTimeout | UpstreamError::BodyTimeout => {
                    ProxyError::HttpResponseTimeout
                }
                UpstreamError::WriteTimeout => ProxyError::ConnectionWriteTimeout,
            };
        }
        cur = e.source();
    }
    ProxyError::ProxyInternalError
}

/// Whether `s` matches the RFC 9651 `sf-token` grammar:
/// `( ALPHA / "*" ) *( tchar / ":" / "/" )`.
fn is_token(s: &str) -> bool {
    let mut bytes = s.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'*');
    first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b":/!#$%&'*+-.^_`|~".contains(&b))
}

/// `s` as an RFC 9651 `sf-string`: quoted, `"` and `\` escaped; a byte
/// outside printable ASCII (which a String cannot hold) becomes `?`.
pub fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// The proxy's name as a bare item: a Token when it is one, else a String.
pub fn sf_item(name: &str) -> String {
    if is_token(name) {
        name.to_owned()
    } else {
        sf_string(name)
    }
}

/// `server.via_name`'s default until a config sets it.
static NAME: LazyLock<ArcSwap<String>> = LazyLock::new(|| ArcSwap::from_pointee("gateway".into()));

/// Sets the name error responses carry (`server.via_name`; at every config
/// load, the runtime is one per process).
pub fn set_name(via_name: &str) {
    NAME.store(Arc::new(sf_item(via_name)));
}

/// The serialised name set by [`set_name`].
pub fn name() -> Arc<String> {
    NAME.load_full()
}

/// `<name>; error=<type>`, `name` already serialised ([`sf_item`]).
pub fn error_value(name: &str, error: ProxyError) -> HeaderValue {
    HeaderValue::from_str(&format!("{name}; error={}", error.as_str()))
        .unwrap_or_else(|_| HeaderValue::from_static("gateway; error=proxy_internal_error"))
}

/// `<name>; next-hop="<endpoint>"; received-status=<code>`.
pub fn received_value(name: &str, next_hop: &str, status: u16) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{name}; next-hop={}; received-status={status}",
        sf_string(next_hop)
    ))
    .ok()
}

/// Appends the received-status member to responses that came from an
/// upstream (those carrying [`UpstreamInfo`]); a cache hit, which had no
/// next hop, gets none.
#[derive(Debug, Clone)]
pub struct ProxyStatusLayer {
    name: Arc<str>,
}

impl ProxyStatusLayer {
    /// A layer naming the gateway `via_name`.
    pub fn new(via_name: &str) -> Self {
        Self {
            name: Arc::from(sf_item(via_name)),
        }
    }
}

impl<S> Layer<S> for ProxyStatusLayer {
    type Service = ProxyStatus<S>;

    fn layer(&self, inner: S) -> ProxyStatus<S> {
        ProxyStatus {
            inner,
            name: self.name.clone(),
        }
    }
}

/// The service of [`ProxyStatusLayer`].
#[derive(Debug, Clone)]
pub struct ProxyStatus<S> {
    inner: S,
    name: Arc<str>,
}

impl<S, B, RB> Service<Request<B>> for ProxyStatus<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ResponseFuture {
            fut: self.inner.call(req),
            name: self.name.clone(),
        }
    }
}

pin_project! {
    /// The future of [`ProxyStatus`].
    pub struct ResponseFuture<F> {
        #[pin]
        fut: F,
        name: Arc<str>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = std::task::ready!(this.fut.poll(cx))?;
        let status = resp.status().as_u16();
        let member = resp
            .extensions()
            .get::<UpstreamInfo>()
            .and_then(|u| received_value(this.name, u.endpoint.as_str(), status));
        if let Some(v) = member {
            resp.headers_mut().append(PROXY_STATUS, v);
        }
        Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_are_tokens_when_they_can_be() {
        assert_eq!(sf_item("gateway"), "gateway");
        assert_eq!(sf_item("edge-1.example:8080/a"), "edge-1.example:8080/a");
        assert_eq!(sf_item("*x"), "*x");
        // A digit first, a space, a quote: Strings.
        assert_eq!(sf_item("1gw"), "\"1gw\"");
        assert_eq!(sf_item("my gw"), "\"my gw\"");
        assert_eq!(sf_item("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(sf_item("tab\there"), "\"tab?here\"");
        assert_eq!(sf_item(""), "\"\"");
    }

    #[test]
    fn values_are_one_list_member() {
        assert_eq!(
            error_value("gw", ProxyError::DestinationUnavailable),
            "gw; error=destination_unavailable"
        );
        assert_eq!(
            received_value("\"my gw\"", "127.0.0.1:8080", 503).unwrap(),
            "\"my gw\"; next-hop=\"127.0.0.1:8080\"; received-status=503"
        );
    }
}

#[cfg(test)]
mod render_tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use http::StatusCode;

    use super::*;
    use crate::error::{render, BoxError, WithHeaders};
    use crate::upstream::error::RequestBodyKind;

    /// Every error kind `render` knows, with the status it gets and the
    /// Proxy-Status type that must go with it.
    #[test]
    fn every_error_response_says_why_in_proxy_status() {
        let up: Arc<str> = Arc::from("users");
        let io = |k: std::io::ErrorKind| std::io::Error::from(k);
        let cases: Vec<(BoxError, u16, &str)> = vec![
            (GatewayError::NoRoute.into(), 404, "destination_not_found"),
            (
                GatewayError::MethodNotAllowed.into(),
                405,
                "http_request_error",
            ),
            (BodyTooLarge { limit: 1 }.into(), 413, "http_request_error"),
            (
                GatewayError::BadRequest("x").into(),
                400,
                "http_request_error",
            ),
            (
                RequestBodyError::new(RequestBodyKind::TimedOut).into(),
                408,
                "http_request_error",
            ),
            (AuthError::Missing.into(), 401, "http_request_denied"),
            (
                AuthError::Forbidden("scope").into(),
                403,
                "http_request_denied",
            ),
            (
                RateLimited {
                    policy: "p".into(),
                    retry_after: 1,
                    headers: Vec::new(),
                    limiter_failed: false,
                }
                .into(),
                429,
                "http_request_denied",
            ),
            (LimiterUnavailable.into(), 503, "proxy_internal_error"),
            (
                GatewayError::NoHealthyEndpoint {
                    upstream: up.clone(),
                }
                .into(),
                503,
                "destination_unavailable",
            ),
            (
                GatewayError::CircuitOpen {
                    upstream: up.clone(),
                    retry_after: 2,
                }
                .into(),
                503,
                "destination_unavailable",
            ),
            (
                GatewayError::Overloaded.into(),
                503,
                "proxy_internal_response",
            ),
            (
                ConcurrencyLimited {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    retry_after: 1,
                }
                .into(),
                503,
                "proxy_internal_response",
            ),
            (
                ConcurrencyLimited {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    retry_after: 1,
                }
                .into(),
                429,
                "proxy_internal_response",
            ),
            (
                GatewayError::ConnectionLimit.into(),
                503,
                "connection_limit_reached",
            ),
            (
                GatewayError::UpstreamTimeout { upstream: up }.into(),
                504,
                "http_response_timeout",
            ),
            (
                tower::timeout::error::Elapsed::new().into(),
                504,
                "http_response_timeout",
            ),
            (
                UpstreamError::Connect(io(std::io::ErrorKind::ConnectionRefused)).into(),
                502,
                "connection_refused",
            ),
            (
                UpstreamError::Connect(io(std::io::ErrorKind::HostUnreachable)).into(),
                502,
                "destination_ip_unroutable",
            ),
            (
                UpstreamError::ConnectTimeout.into(),
                504,
                "connection_timeout",
            ),
            (UpstreamError::Closed.into(), 502, "connection_terminated"),
            (
                UpstreamError::NotSent(io(std::io::ErrorKind::BrokenPipe)).into(),
                502,
                "connection_terminated",
            ),
            (
                UpstreamError::Io(io(std::io::ErrorKind::UnexpectedEof)).into(),
                502,
                "http_response_incomplete",
            ),
            (
                UpstreamError::Protocol("bad status line").into(),
                502,
                "http_protocol_error",
            ),
            (
                UpstreamError::HeadTimeout.into(),
                504,
                "http_response_timeout",
            ),
            (
                UpstreamError::WriteTimeout.into(),
                504,
                "connection_write_timeout",
            ),
            (
                UpstreamError::BodyTimeout.into(),
                504,
                "http_response_timeout",
            ),
            ("unexpected".into(), 502, "proxy_internal_error"),
            // Found through the cause chain, below a layer adding headers.
            (
                Box::new(WithHeaders {
                    headers: Vec::new(),
                    source: UpstreamError::ConnectTimeout.into(),
                    limiter_failed: false,
                }),
                504,
                "connection_timeout",
            ),
            // A layer's own error, tagged with its type.
            (
                Box::new(Tagged {
                    error: ProxyError::ProxyInternalResponse,
                    source: "adaptive limit".into(),
                }),
                502,
                "proxy_internal_response",
            ),
        ];
        let id = HeaderValue::from_static("r");
        let name = name();
        for (err, status, kind) in cases {
            let resp = render(err.as_ref(), &id);
            assert_eq!(
                resp.status(),
                StatusCode::from_u16(status).unwrap(),
                "{err}"
            );
            assert_eq!(error_type(err.as_ref()).as_str(), kind, "{err}");
            assert_eq!(
                resp.headers()[PROXY_STATUS],
                format!("{name}; error={kind}"),
                "{err}"
            );
        }
    }
}
