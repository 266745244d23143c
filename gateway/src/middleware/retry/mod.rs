//! Retries of safe requests, within a budget.
//!
//! A request is retried only when that is safe, as the error says of
//! itself ([`crate::upstream::error`]): its method is idempotent (the one
//! [`idempotent`](crate::upstream::error::idempotent) list), or it carries
//! an `Idempotency-Key` on a route with `idempotency_key = true`, or no
//! byte of the attempt reached the upstream
//! ([`UpstreamError::retry_safe`](crate::upstream::error::UpstreamError::retry_safe)).
//! Retried outcomes are connect errors, resets and timeouts of such
//! requests, and the configured statuses (502/503/504 by default). An
//! error the client caused (its body malformed, too large, too slow or
//! abandoned) is never retried. Each retry goes to another endpoint
//! when there is one (the proxy avoids endpoints already tried), after an
//! exponential backoff with full jitter, or after the upstream's
//! `Retry-After` when it asks for no more than `max_retry_after`. Every
//! request deposits a fraction of a token in a [`Budget`] and every retry
//! withdraws one, so retries cannot multiply an outage. Bodies are replayed
//! only when small enough to be buffered (`max_replay_body`); the decision
//! is taken on response headers, so nothing was sent to the client yet.

mod budget;
mod service;

pub use budget::{backoff, Budget};
pub use service::{Retry, RetryLayer, RetryPolicy};
