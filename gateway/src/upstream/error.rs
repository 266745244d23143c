//! Errors of the upstream exchange, carrying as data who is to blame and
//! whether resending the request is safe (pingora's `RetryType` is the
//! model): the breaker, the retry layer, health and telemetry read
//! [`UpstreamError::blame`], [`RequestBodyError::blame`] and
//! [`UpstreamError::retry_safe`] instead of guessing from variants.

use std::io;

use http::header::HeaderName;
use http::{HeaderMap, Method};

use crate::error::Blame;

/// `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Whether `m` is idempotent (RFC 9110 §9.2.2): sending it twice has the
/// effect of sending it once, so it may be resent after a failure. The one
/// list the upstream client and the retry layer both use.
pub fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Marks a request as safe to resend whatever its method: it carries an
/// `Idempotency-Key` on a route configured to honour it
/// (`[routes.retry] idempotency_key = true`). Inserted by the retry layer,
/// read by the upstream client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyKey;

/// Whether a request with this method and these extensions may be resent
/// after some of it reached the upstream: an idempotent method, or an
/// honoured `Idempotency-Key` ([`IdempotencyKey`]).
pub fn resendable(m: &Method, ext: &http::Extensions) -> bool {
    idempotent(m) || ext.get::<IdempotencyKey>().is_some()
}

/// Whether `headers` carry an `Idempotency-Key`.
pub fn has_idempotency_key(headers: &HeaderMap) -> bool {
    headers.contains_key(IDEMPOTENCY_KEY)
}

/// Why talking to an upstream failed. Always the upstream's fault
/// ([`Blame::Upstream`]); see [`UpstreamError::retry_safe`] for when it
/// may be resent.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connection could not be established.
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// The TCP connection was not established in time.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The connection failed before a single byte of the request was
    /// written to it.
    #[error("upstream connection failed before the request was sent: {0}")]
    NotSent(#[source] io::Error),
    /// The upstream closed the connection before a complete response head.
    #[error("upstream closed the connection before responding")]
    Closed,
    /// The connection failed while exchanging the request or response.
    #[error("upstream connection error: {0}")]
    Io(#[source] io::Error),
    /// The upstream sent something that is not valid HTTP/1.1.
    #[error("invalid response from upstream: {0}")]
    Protocol(&'static str),
    /// The upstream stopped reading the request body for
    /// `body_idle_timeout`.
    #[error("upstream stopped reading the request body")]
    WriteTimeout,
    /// No response head within `request_timeout` of the request being sent.
    #[error("upstream sent no response head in time")]
    HeadTimeout,
    /// The response body stalled past `body_idle_timeout` or outlasted
    /// `body_timeout`.
    #[error("upstream response body timed out")]
    BodyTimeout,
}

impl UpstreamError {
    /// Who failed: always the upstream.
    pub fn blame(&self) -> Blame {
        Blame::Upstream
    }

    /// Whether the request may be resent whatever its method: true only
    /// when no byte of it reached the upstream (the connection was never
    /// established, or failed before the first byte was written). Anything
    /// else may be resent only if the request is idempotent.
    pub fn retry_safe(&self) -> bool {
        matches!(
            self,
            Self::Connect(_) | Self::ConnectTimeout | Self::NotSent(_)
        )
    }
}

/// What went wrong with a client's request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBodyKind {
    /// Malformed framing (a bad chunk size line, ...): 400.
    Malformed,
    /// The client sent nothing for longer than the request body idle
    /// timeout, or was still uploading when the route's timeout passed: 408.
    TimedOut,
    /// The client went away before the end of its body: logged as 499.
    Aborted,
}

/// A client's request body failed. The client's fault
/// ([`Blame::Client`]): never recorded against an endpoint's breaker,
/// never retried.
#[derive(Debug, thiserror::Error)]
#[error("{}", match .kind {
    RequestBodyKind::Malformed => "malformed request body",
    RequestBodyKind::TimedOut => "request body timed out",
    RequestBodyKind::Aborted => "client aborted the request body",
})]
pub struct RequestBodyError {
    /// What went wrong.
    pub kind: RequestBodyKind,
    /// The underlying error, if any.
    #[source]
    pub source: Option<crate::error::BoxError>,
}

impl RequestBodyError {
    /// An error of `kind` without a cause.
    pub fn new(kind: RequestBodyKind) -> Self {
        Self { kind, source: None }
    }

    /// Who failed: always the client.
    pub fn blame(&self) -> Blame {
        Blame::Client
    }

    /// Never: the body is gone.
    pub fn retry_safe(&self) -> bool {
        false
    }

    /// A client body read error from hyper, by kind: bad framing is
    /// malformed; a connection closed, reset or cancelled mid-body is an
    /// abort.
    pub fn from_hyper(e: hyper::Error) -> Self {
        let malformed = e.is_parse()
            || std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<io::Error>())
                .is_some_and(|io| {
                    matches!(
                        io.kind(),
                        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
                    )
                });
        let kind = if malformed {
            RequestBodyKind::Malformed
        } else if e.is_timeout() {
            RequestBodyKind::TimedOut
        } else {
            RequestBodyKind::Aborted
        };
        Self {
            kind,
            source: Some(Box::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unsent_requests_are_safe_for_any_method() {
        let io = || io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(UpstreamError::Connect(io()).retry_safe());
        assert!(UpstreamError::ConnectTimeout.retry_safe());
        assert!(UpstreamError::NotSent(io()).retry_safe());
        for e in [
            UpstreamError::Closed,
            UpstreamError::Io(io()),
            UpstreamError::Protocol("x"),
            UpstreamError::HeadTimeout,
            UpstreamError::WriteTimeout,
            UpstreamError::BodyTimeout,
        ] {
            assert!(!e.retry_safe(), "{e}");
            assert_eq!(e.blame(), Blame::Upstream);
        }
        let b = RequestBodyError::new(RequestBodyKind::Aborted);
        assert_eq!(b.blame(), Blame::Client);
        assert!(!b.retry_safe());
    }

    #[test]
    fn idempotent_methods_and_keys() {
        for m in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
            assert!(idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!idempotent(&m), "{m}");
        }
        let mut ext = http::Extensions::new();
        assert!(!resendable(&Method::POST, &ext));
        ext.insert(IdempotencyKey);
        assert!(resendable(&Method::POST, &ext));
    }
}
