//! Why a rate-limited route refused a request.

use http::{HeaderName, HeaderValue};

/// The request is over a limit (429). Carries the rate-limit headers so the
/// error response reports them like any other response of the route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limit {policy:?} exceeded")]
pub struct RateLimited {
    /// The policy that refused.
    pub policy: String,
    /// Seconds until a request may pass (>= 1).
    pub retry_after: u64,
    /// The `RateLimit*` and `X-RateLimit-*` headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The shared limiter failed for this request and the local fallback
    /// refused it (counted as `backend_error`).
    pub limiter_failed: bool,
}

/// The shared limiter did not answer in time and the policy is
/// `fail_closed` (503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limiter unavailable")]
pub struct LimiterUnavailable;

/// Response extension: the shared (Redis) limiter failed for this request
/// and its `on_error` policy decided instead. The edge counts the request
/// as a `backend_error` rate-limit decision; error responses get it from
/// [`crate::error::render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterFailed;
