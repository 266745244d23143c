//! RFC 9111 decisions as pure functions: parse `Cache-Control`, decide
//! whether a response may be stored by a shared cache and for how long.

use std::time::Duration;

use http::header::{AUTHORIZATION, CACHE_CONTROL, SET_COOKIE, VARY};
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
                let num = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "max-age" => cc.max_age = num(),
                    "s-maxage" => cc.s_maxage = num(),
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
    // RFC 9111 3.5: authorized responses are not shared unless the
    // response allows it (public, s-maxage) or the route opted in.
    if req.contains_key(AUTHORIZATION)
        && !(cc.public || cc.s_maxage.is_some() || rules.share_authorized)
    {
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
        assert_eq!(
            CacheControl::parse(&h(&[("cache-control", "max-age=x")])).max_age,
            None
        );
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
        assert_eq!(
            storable(&none, StatusCode::INTERNAL_SERVER_ERROR, &none, &RULES),
            None
        );
        // Stale-only lifetimes still store.
        assert!(s(&none, &[("cache-control", "max-age=0, stale-if-error=60")]).is_some());
    }
}
