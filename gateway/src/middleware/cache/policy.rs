//! RFC 9111 decisions as pure functions: parse `Cache-Control`, decide
//! whether a response may be stored by a shared cache and for how long.

use std::time::Duration;

use http::header::{AGE, AUTHORIZATION, CACHE_CONTROL, COOKIE, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, StatusCode};

/// The directives we act on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age`.
    pub max_age: Option<u64>,
    /// `s-maxage` (shared caches; wins over `max-age`).
    pub s_maxage: Option<u64>,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (stored responses must be revalidated: we do not reuse).
    pub no_cache: bool,
    /// `private` (not for shared caches).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `stale-while-revalidate` (RFC 5861).
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Parses every `Cache-Control` field of `headers`; unknown directives
    /// are ignored, a malformed number makes its directive absent.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for v in headers.get_all(CACHE_CONTROL) {
            let Ok(v) = v.to_str() else { continue };
            for d in v.split(',') {
                let (name, arg) = match d.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (d.trim(), None),
                };
                let num = || arg.and_then(delta_seconds);
                // RFC 9111 4.2.1: invalid freshness information means stale.
                let lifetime = || Some(num().unwrap_or(0));
                match name.to_ascii_lowercase().as_str() {
                    "max-age" => cc.max_age = lifetime(),
                    "s-maxage" => cc.s_maxage = lifetime(),
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "stale-while-revalidate" => cc.stale_while_revalidate = num(),
                    "stale-if-error" => cc.stale_if_error = num(),
                    _ => {}
                }
            }
        }
        cc
    }
}

/// The greatest delta-seconds we represent: RFC 9111 1.2.2 says a larger
/// value, or a calculation that overflows, is taken as 2^31 seconds.
pub const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// Parses RFC 9111 `delta-seconds` (ASCII digits only: no sign, no
/// spaces, no fraction), clamped to [`MAX_DELTA_SECONDS`] however many
/// digits it has; `None` when it is not a number. Every number the cache
/// and the retry layer read from the wire (`max-age`, `s-maxage`,
/// `stale-while-revalidate`, `stale-if-error`, `Age`, `Retry-After`) goes
/// through here, so no later arithmetic sees more than 2^31.
pub fn delta_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits: a parse failure can only be an overflow.
    Some(
        s.parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)),
    )
}

/// A response's `Age` in seconds: the first member of the field (RFC 9111
/// 5.1), clamped; an invalid value is ignored (0).
pub fn age_seconds(headers: &HeaderMap) -> u64 {
    headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| delta_seconds(v.trim()))
        .unwrap_or(0)
}

/// A route's cache settings.
#[derive(Debug, Clone, Copy)]
pub struct RouteRules {
    /// Lifetime of a response without `max-age`/`s-maxage`.
    pub default_ttl: Duration,
    /// Share responses to requests with `Authorization` even without `public`.
    pub share_authorized: bool,
    /// Defaults for responses that do not say.
    pub stale_while_revalidate: Duration,
    /// Defaults for responses that do not say.
    pub stale_if_error: Duration,
}

impl RouteRules {
    /// Whether a request may be answered personally, so that neither a
    /// stored response answers it nor its response is stored unless the
    /// response is explicitly shareable: it carries `Authorization` (RFC
    /// 9111 3.5; unless the route sets `share_authorized`) or `Cookie` (our
    /// stricter rule: session cookies are credentials too, and origins
    /// often forget `private` on what they personalise).
    pub fn private(&self, req: &HeaderMap) -> bool {
        req.contains_key(COOKIE) || (req.contains_key(AUTHORIZATION) && !self.share_authorized)
    }
}

/// Whether the response headers `resp` say a shared cache may give it to
/// anyone (`public` or `s-maxage`): the only stored responses a private
/// request may get.
pub fn explicitly_shared(resp: &HeaderMap) -> bool {
    let cc = CacheControl::parse(resp);
    cc.public || cc.s_maxage.is_some()
}

/// How long a stored response may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storable {
    /// Fresh for this long.
    pub ttl: Duration,
    /// Then served stale while one background request revalidates.
    pub stale_while_revalidate: Duration,
    /// Or served stale when the upstream fails.
    pub stale_if_error: Duration,
    /// Request headers the response varies on.
    pub vary: Vec<HeaderName>,
}

/// Whether a shared cache may store this response to a GET, and how.
pub fn storable(
    req: &HeaderMap,
    status: StatusCode,
    resp: &HeaderMap,
    rules: &RouteRules,
) -> Option<Storable> {
    if !matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 404 | 410) {
        return None;
    }
    let req_cc = CacheControl::parse(req);
    let cc = CacheControl::parse(resp);
    if req_cc.no_store || cc.no_store || cc.no_cache || cc.private || resp.contains_key(SET_COOKIE)
    {
        return None;
    }
    // RFC 9111 3.5: responses to authorized requests (and, our rule, to
    // requests with cookies) are not shared unless the response allows it
    // (public, s-maxage); `share_authorized` opts a route in for
    // Authorization only.
    if rules.private(req) && !(cc.public || cc.s_maxage.is_some()) {
        return None;
    }
    let mut vary = Vec::new();
    for v in resp.get_all(VARY) {
        let Ok(v) = v.to_str() else { return None };
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            vary.push(HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()?);
        }
    }
    // Every number went through `delta_seconds`: at most 2^31 s each.
    let ttl = cc
        .s_maxage
        .or(cc.max_age)
        .map_or(rules.default_ttl, Duration::from_secs);
    let swr = cc
        .stale_while_revalidate
        .map_or(rules.stale_while_revalidate, Duration::from_secs);
    let sie = cc
        .stale_if_error
        .map_or(rules.stale_if_error, Duration::from_secs);
    (!ttl.is_zero() || !swr.is_zero() || !sie.is_zero()).then_some(Storable {
        ttl,
        stale_while_revalidate: swr,
        stale_if_error: sie,
        vary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    const RULES: RouteRules = RouteRules {
        default_ttl: Duration::from_secs(5),
        share_authorized: false,
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
    };

    #[test]
    fn parses_directives() {
        let cc = CacheControl::parse(&h(&[
            ("cache-control", "public, max-age=60"),
            (
                "cache-control",
                "s-maxage=\"30\", stale-if-error=5, Stale-While-Revalidate=7, bogus",
            ),
        ]));
        assert_eq!(cc.max_age, Some(60));
        assert_eq!(cc.s_maxage, Some(30));
        assert!(cc.public && !cc.private && !cc.no_store);
        assert_eq!(cc.stale_if_error, Some(5));
        assert_eq!(cc.stale_while_revalidate, Some(7));
        // Invalid freshness information means stale (RFC 9111 4.2.1).
        for bad in [
            "max-age=x",
            "max-age=-1",
            "max-age=1.5",
            "max-age= 1 2",
            "max-age",
        ] {
            assert_eq!(
                CacheControl::parse(&h(&[("cache-control", bad)])).max_age,
                Some(0),
                "{bad}"
            );
        }
        assert_eq!(
            CacheControl::parse(&h(&[("cache-control", "stale-if-error=-5")])).stale_if_error,
            None
        );
    }

    #[test]
    fn numbers_from_the_wire_are_clamped_to_2_pow_31() {
        for (s, want) in [
            ("0", Some(0)),
            ("1", Some(1)),
            ("2147483648", Some(MAX_DELTA_SECONDS)),
            ("4294967295", Some(MAX_DELTA_SECONDS)),
            ("9223372036854775808", Some(MAX_DELTA_SECONDS)),
            ("18446744073709551615", Some(MAX_DELTA_SECONDS)),
            ("18446744073709551616", Some(MAX_DELTA_SECONDS)),
            ("000000000000000000000000000000000000000007", Some(7)),
            ("", None),
            ("-1", None),
            ("+1", None),
            (" 1", None),
            ("1e9", None),
            ("0x10", None),
        ] {
            assert_eq!(delta_seconds(s), want, "{s:?}");
        }
        let huge = "9".repeat(10_000);
        assert_eq!(delta_seconds(&huge), Some(MAX_DELTA_SECONDS));
        assert_eq!(
            age_seconds(&h(&[("age", "18446744073709551615")])),
            MAX_DELTA_SECONDS
        );
        assert_eq!(age_seconds(&h(&[("age", "7, 9")])), 7);
        assert_eq!(age_seconds(&h(&[("age", "-3")])), 0);
        assert_eq!(age_seconds(&h(&[("age", "soon")])), 0);
    }

    proptest::proptest! {
        /// Whatever numbers a `Cache-Control` carries, the decision never
        /// panics and every lifetime is at most 2^31 s.
        #[test]
        fn extreme_directives_are_clamped(
            max_age in number(),
            s_maxage in number(),
            swr in number(),
            sie in number(),
            age in number(),
        ) {
            let cc = format!(
                "max-age={max_age}, s-maxage={s_maxage}, stale-while-revalidate={swr}, stale-if-error={sie}"
            );
            let resp = h(&[("cache-control", cc.as_str()), ("age", age.as_str())]);
            let cap = Duration::from_secs(MAX_DELTA_SECONDS);
            if let Some(st) = storable(&HeaderMap::new(), StatusCode::OK, &resp, &RULES) {
                proptest::prop_assert!(st.ttl <= cap);
                proptest::prop_assert!(st.stale_while_revalidate <= cap);
                proptest::prop_assert!(st.stale_if_error <= cap);
            }
            proptest::prop_assert!(age_seconds(&resp) <= MAX_DELTA_SECONDS);
        }
    }

    /// Numbers as an attacker writes them: the edges of every integer width,
    /// huge digit strings, signs, fractions, garbage.
    fn number() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just("0".to_owned()),
            Just("1".to_owned()),
            Just(u32::MAX.to_string()),
            Just(u64::MAX.to_string()),
            Just((1u64 << 63).to_string()),
            Just(format!("{}0", u64::MAX)),
            Just("-1".to_owned()),
            any::<u64>().prop_map(|n| n.to_string()),
            "[0-9]{1,400}",
            "-?[0-9]{0,30}(\\.[0-9]{0,5})?",
            "[ -~]{0,20}".prop_map(|s| s.replace(',', "")),
        ]
    }

    #[test]
    fn decides_what_a_shared_cache_stores() {
        let ok = StatusCode::OK;
        let none = HeaderMap::new();
        let s = |req: &HeaderMap, resp: &[(&str, &str)]| storable(req, ok, &h(resp), &RULES);
        assert_eq!(s(&none, &[]).unwrap().ttl, Duration::from_secs(5));
        assert_eq!(
            s(&none, &[("cache-control", "max-age=60, s-maxage=9")])
                .unwrap()
                .ttl,
            Duration::from_secs(9)
        );
        for cc in ["no-store", "private", "no-cache", "max-age=0"] {
            assert_eq!(s(&none, &[("cache-control", cc)]), None, "{cc}");
        }
        assert_eq!(s(&none, &[("set-cookie", "a=b")]), None);
        assert_eq!(s(&none, &[("vary", "*")]), None);
        assert_eq!(
            s(&none, &[("vary", "Accept-Language, accept")])
                .unwrap()
                .vary,
            ["accept-language", "accept"]
        );
        assert_eq!(s(&h(&[("cache-control", "no-store")]), &[]), None);
        let auth = h(&[("authorization", "Bearer x")]);
        assert_eq!(s(&auth, &[]), None);
        assert!(s(&auth, &[("cache-control", "public, max-age=3")]).is_some());
        let opted = RouteRules {
            share_authorized: true,
            ..RULES
        };
        assert!(storable(&auth, ok, &none, &opted).is_some());
        // Cookies: never shared unless the response says so, whatever the
        // route's `share_authorized`.
        let cookie = h(&[("cookie", "session=alice")]);
        assert_eq!(s(&cookie, &[]), None);
        assert_eq!(storable(&cookie, ok, &none, &opted), None);
        assert!(s(&cookie, &[("cache-control", "public, max-age=3")]).is_some());
        assert!(s(&cookie, &[("cache-control", "s-maxage=3")]).is_some());
        assert!(RULES.private(&cookie) && RULES.private(&auth) && !opted.private(&auth));
        assert!(!RULES.private(&none));
        assert!(explicitly_shared(&h(&[("cache-control", "public")])));
        assert!(!explicitly_shared(&h(&[("cache-control", "max-age=60")])));
        assert_eq!(
            storable(&none, StatusCode::INTERNAL_SERVER_ERROR, &none, &RULES),
            None
        );
        // Stale-only lifetimes still store.
        assert!(s(&none, &[("cache-control", "max-age=0, stale-if-error=60")]).is_some());
    }
}
