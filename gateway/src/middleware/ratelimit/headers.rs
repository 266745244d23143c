//! The rate-limit response headers: `RateLimit-Policy` and `RateLimit` as
//! draft-ietf-httpapi-ratelimit-headers-10 defines them (RFC 9651 Lists of
//! Items whose value is the policy name as a String), and the de facto
//! `X-RateLimit-*` fields, unchanged.
//!
//! Checked against the -10 text (the editors' source at the tag
//! `draft-ietf-httpapi-ratelimit-headers-10`): `w` "MUST be a non-negative,
//! non-zero, Integer"; `t` is the seconds "until additional quota ... is
//! made available" (for GCRA, the next unit back, or the next admission
//! once refused), not until the quota is fully restored, which
//! `X-RateLimit-Reset` keeps reporting; `t` is left out when the whole
//! quota is available (nothing more to make available); a refusal's `t` is
//! the earliest time its `Retry-After` may name, which "SHOULD NOT
//! reference a point in time earlier than the reset parameter": with
//! several policies, `Retry-After` is the latest `t` of the members that
//! refuse the request or are at `r=0` ([`retry_after`]), and a refused
//! request is charged to no policy, so its members report the quota as it
//! is. Not checked against the text of -11 (2026-05-23) or -12
//! (2026-11-20), which could not be obtained here (the editors' open PR
//! #166 had proposed renaming `r` and `t`). Public implementations written
//! after May 2026 that cite -11 send the same fields and parameters
//! (`"name";q=;w=` and `"name";r=;t=`) and give `Retry-After` precedence on
//! a 429, as this module does; what -11 changed beyond that is unverified.

use http::{HeaderName, HeaderValue};

use super::gcra::{Gcra, Outcome};
use crate::proxy_status::sf_string;

/// `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset` (seconds until the quota is fully restored).
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// draft-ietf-httpapi-ratelimit-headers-10 `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// draft-ietf-httpapi-ratelimit-headers-10 `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whole seconds, rounded up.
pub fn ceil_secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// The `RateLimit-Policy` value: `"name";q=100;w=60, ...`, built once;
/// `policies` are (name, quota, window in seconds).
pub fn policy_value(policies: &[(&str, u32, u64)]) -> Option<HeaderValue> {
    let s: Vec<String> = policies
        .iter()
        // `w` "MUST be a non-negative, non-zero, Integer".
        .map(|(n, q, w)| format!("{};q={q};w={}", sf_string(n), (*w).max(1)))
        .collect();
    HeaderValue::from_str(&s.join(", ")).ok()
}

/// µs until additional quota is made available (the `t` parameter): once
/// refused, until the next request fits; when admitted, until the next
/// unit comes back; `None` when the whole quota is available.
pub fn additional_quota_us(g: &Gcra, o: &Outcome) -> Option<u64> {
    if !o.allowed {
        return Some(o.reset_us);
    }
    if o.remaining >= g.limit {
        return None;
    }
    // `remaining` = ⌊(window − ahead) / T⌋: one more unit is free once
    // window − ahead reaches (remaining + 1)·T.
    let next_free = (u64::from(o.remaining) + 1).saturating_mul(g.interval_us);
    Some(
        o.reset_us
            .saturating_add(next_free)
            .saturating_sub(g.window_us),
    )
}

/// The headers of one response given each applied policy's outcome
/// (`name`, its GCRA, outcome); the `X-` fields follow the policy with the
/// fewest requests remaining.
pub fn render(
    policy: &HeaderValue,
    applied: &[(&str, Gcra, Outcome)],
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(5);
    let mut members = String::new();
    for (name, g, o) in applied {
        if !members.is_empty() {
            members.push_str(", ");
        }
        members.push_str(&sf_string(name));
        members.push_str(&format!(";r={}", o.remaining));
        if let Some(us) = additional_quota_us(g, o) {
            members.push_str(&format!(";t={}", ceil_secs(us)));
        }
    }
    out.push((RATELIMIT_POLICY, policy.clone()));
    if let Ok(v) = HeaderValue::from_str(&members) {
        if !members.is_empty() {
            out.push((RATELIMIT, v));
        }
    }
    // Ties go to the latest reset: the most constrained policy.
    if let Some((_, g, o)) = applied
        .iter()
        .min_by_key(|(_, _, o)| (o.allowed, o.remaining, std::cmp::Reverse(o.reset_us)))
    {
        out.push((X_RATELIMIT_LIMIT, HeaderValue::from(g.limit)));
        out.push((X_RATELIMIT_REMAINING, HeaderValue::from(o.remaining)));
        out.push((X_RATELIMIT_RESET, HeaderValue::from(ceil_secs(o.reset_us))));
    }
    out
}

/// For a refused request (some policy does not admit it), the policy
/// that refused it and its `Retry-After` in whole seconds (at least 1):
/// the latest `t` among the members that refuse it or are at `r=0`, so a
/// retry at `Retry-After` is not refused by any of them ("SHOULD NOT
/// reference a point in time earlier than the reset parameter"). `None`
/// when every policy admits it. When several refuse, the policy named is
/// the one that admits last.
pub fn retry_after<'a>(applied: &[(&'a str, Gcra, Outcome)]) -> Option<(&'a str, u64)> {
    let (refuser, ..) = applied
        .iter()
        .filter(|(_, _, o)| !o.allowed)
        .max_by_key(|(_, _, o)| o.reset_us)?;
    let latest = applied
        .iter()
        .filter(|(_, _, o)| !o.allowed || o.remaining == 0)
        .filter_map(|(_, g, o)| additional_quota_us(g, o))
        .max()
        .unwrap_or(0);
    Some((refuser, ceil_secs(latest).max(1)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    fn header<'a>(h: &'a [(HeaderName, HeaderValue)], name: &HeaderName) -> &'a str {
        h.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_str().unwrap())
            .unwrap_or("")
    }

    #[test]
    fn t_is_the_time_until_additional_quota_not_until_full() {
        // 10 per 10 s: one unit back every second.
        let g = Gcra::new(10, Duration::from_secs(10));
        let policy = policy_value(&[("p", 10, 10)]).unwrap();
        // Fresh key, one request taken: 9 left, full again in 1 s, and the
        // taken unit back in 1 s.
        let (o, tat) = g.decide(0, 0);
        let h = render(&policy, &[("p", g, o)]);
        assert_eq!(header(&h, &RATELIMIT), "\"p\";r=9;t=1");
        assert_eq!(header(&h, &X_RATELIMIT_RESET), "1");
        // Five taken at once (4 more), 0.5 s later: 5 left; the quota is
        // whole again in 4.5 s (X-RateLimit-Reset 5) but the next unit is
        // back in 0.5 s (t=1).
        let mut tat = tat;
        for _ in 0..4 {
            tat = g.decide(tat, 0).1;
        }
        let (o, _) = g.decide(tat, 500_000);
        assert_eq!(o.remaining, 4);
        let h = render(&policy, &[("p", g, o)]);
        assert_eq!(header(&h, &RATELIMIT), "\"p\";r=4;t=1");
        assert_eq!(header(&h, &X_RATELIMIT_RESET), "6");
        assert_eq!(additional_quota_us(&g, &o), Some(500_000));
        // Refused: t is when the next request fits.
        let full = g.outcome(false, 10_000_000);
        assert_eq!(additional_quota_us(&g, &full), Some(1_000_000));
        // Whole quota available: no t.
        let whole = g.outcome(true, 0);
        assert_eq!(whole.remaining, 10);
        assert_eq!(additional_quota_us(&g, &whole), None);
        let h = render(&policy, &[("p", g, whole)]);
        assert_eq!(header(&h, &RATELIMIT), "\"p\";r=10");
    }

    #[test]
    fn names_are_sf_strings_and_w_is_never_zero() {
        let v = policy_value(&[("a\"b\\c", 5, 0), ("d", 1, 60)]).unwrap();
        assert_eq!(v, r#""a\"b\\c";q=5;w=1, "d";q=1;w=60"#);
    }
}
