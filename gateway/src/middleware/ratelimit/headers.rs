//! The rate-limit response headers.

use http::{HeaderName, HeaderValue};

use super::gcra::Outcome;

/// `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset` (seconds).
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// draft-ietf-httpapi-ratelimit-headers-10 `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// draft-ietf-httpapi-ratelimit-headers-10 `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whole seconds, rounded up.
pub fn ceil_secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// The `RateLimit-Policy` value: `"name";q=100;w=60, ...`, built once.
pub fn policy_value(policies: &[(&str, u32, u64)]) -> Option<HeaderValue> {
    let s: Vec<String> = policies
        .iter()
        .map(|(n, q, w)| format!("\"{n}\";q={q};w={w}"))
        .collect();
    HeaderValue::from_str(&s.join(", ")).ok()
}

/// The headers of one response given each applied policy's outcome
/// (`name`, `limit`, outcome); the `X-` fields follow the policy with the
/// fewest requests remaining.
pub fn render(
    policy: &HeaderValue,
    applied: &[(&str, u32, Outcome)],
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(5);
    let mut members = String::new();
    for (name, _, o) in applied {
        if !members.is_empty() {
            members.push_str(", ");
        }
        members.push_str(&format!(
            "\"{name}\";r={};t={}",
            o.remaining,
            ceil_secs(o.reset_us)
        ));
    }
    out.push((RATELIMIT_POLICY, policy.clone()));
    if let Ok(v) = HeaderValue::from_str(&members) {
        if !members.is_empty() {
            out.push((RATELIMIT, v));
        }
    }
    if let Some((_, limit, o)) = applied
        .iter()
        .min_by_key(|(_, _, o)| (o.allowed, o.remaining))
    {
        out.push((X_RATELIMIT_LIMIT, HeaderValue::from(*limit)));
        out.push((X_RATELIMIT_REMAINING, HeaderValue::from(o.remaining)));
        out.push((X_RATELIMIT_RESET, HeaderValue::from(ceil_secs(o.reset_us))));
    }
    out
}
