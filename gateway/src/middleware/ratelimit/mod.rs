//! Rate limiting: GCRA, in process or shared through Redis.
//!
//! Each route may carry several policies (`limit` per `window`, keyed by
//! client IP, JWT subject, a header such as an API key, or the route). The
//! arithmetic is one pure [`Gcra`] used both by the in-process store (a
//! bounded, sharded map) and, as a Lua script run with one `EVALSHA` round
//! trip per request for all its Redis policies, by Redis (keys expire with
//! the bucket, so Redis memory does not grow without bound). Because each
//! decision is atomic (the request's in-process shards locked together,
//! one script there), concurrent requests cannot over-admit: the limit is
//! exact.
//!
//! A request is charged to all of its policies or to none: every policy is
//! decided, and it is charged only when all admit it. A refusal reports
//! every policy's state, and its `Retry-After` is the latest `t` of the
//! members that refuse it or are at `r=0`, so a retry then is admitted
//! (unless other requests took the quota meanwhile). With both kinds of
//! store on one route, the in-process policies are charged first and
//! refunded when the Redis ones refuse (or Redis fails and `fail_closed`
//! or the `local` fallback refuses); the refund is skipped when another
//! request charged the same key meanwhile (never under-counting), so in
//! that race alone a refused request may still hold an in-process unit.
//!
//! Every response of a limited route carries `X-RateLimit-Limit`,
//! `-Remaining`, `-Reset` (of the most constrained policy) and the
//! draft-ietf-httpapi-ratelimit-headers-10 fields `RateLimit-Policy` and
//! `RateLimit`, one member per policy (not checked against -11 or -12,
//! whose text could not be obtained). A refused request never reaches the
//! inner service; it fails with [`RateLimited`] (429 with `Retry-After`).
//!
//! When Redis fails or is slower than its timeout, the policy's `on_error`
//! decides (`local`, `fail_open`, `fail_closed`); after a few failures in a
//! row Redis is skipped for a short, growing interval and `on_error`
//! decides at once ([`crate::middleware::redis_conn::FastFail`]).
//!
//! Why not `governor`: its keyed store grows until pruned by hand, its
//! clock is not tokio's (tests could not pause time), and the Redis path
//! needs the same arithmetic as a script anyway; a 40-line GCRA shared by
//! both is easier to prove exact.

mod error;
mod gcra;
mod headers;
mod key;
mod redis;
mod service;
mod store;

pub use error::{LimiterFailed, LimiterUnavailable, RateLimited};
pub use gcra::{Gcra, Outcome};
pub use headers::RATELIMIT_POLICY;
pub use key::{parse_cidr, ClientIp, KeySource, TrustedProxies};
pub use redis::RedisLimiter;
pub use service::{
    Policy, RateLimit, RateLimitDecision, RateLimitLayer, ResponseFuture, RoutePolicies,
};
pub use store::{bounded_key, LocalStore, MAX_KEY_BYTES};
