//! [`CacheLayer`] and [`Cache`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AGE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::policy::{age_seconds, explicitly_shared, storable, CacheControl, RouteRules};
use super::redis::RedisTier;
use super::store::{self, Entry, Freshness, Lead, LeaderGuard, ResponseCache};
use crate::body::Body;
use crate::config::{Algorithm, RouteCacheConfig};
use crate::error::BoxError;
use crate::middleware::compression::{self, Compressed, Negotiated};

/// `X-Cache`.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// RFC 9211 `Cache-Status`.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What the cache did for one response: a typed marker the layer puts in
/// the response extensions, which telemetry counts. Never read back from
/// `X-Cache`: an upstream may send that header too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheDecision {
    /// Answered from a fresh entry.
    Hit,
    /// Answered from a stale entry (revalidating, or the upstream failed).
    Stale,
    /// Went upstream; the answer may have been stored.
    Miss,
    /// Went upstream without using the cache: the request said `no-store`,
    /// or it is private (`Cookie`, `Authorization`) and nothing shareable
    /// was stored.
    Bypass,
}

impl CacheDecision {
    /// The metric label: `hit`, `stale`, `miss`, `bypass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Stale => "stale",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }

    /// The `X-Cache` value: `HIT`, `STALE` or `MISS`.
    pub fn x_cache(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Stale => "STALE",
            Self::Miss | Self::Bypass => "MISS",
        }
    }
}

/// One route's cache settings and the shared store.
#[derive(Debug)]
pub struct RouteCache {
    route: Arc<str>,
    store: Arc<ResponseCache>,
    /// The shared tier, when configured and the route uses it.
    shared: Option<Arc<RedisTier>>,
    rules: RouteRules,
    max_body: u64,
    /// The route's compression codings, when it compresses: its entries
    /// are then keyed by the coding negotiated for the request, one
    /// variant per coding.
    codings: Option<Vec<Algorithm>>,
}

impl RouteCache {
    /// From validated config.
    pub fn new(route: &str, cfg: &RouteCacheConfig, store: Arc<ResponseCache>) -> Self {
        Self {
            route: Arc::from(route),
            shared: store.redis().filter(|_| cfg.redis).cloned(),
            store,
            rules: RouteRules {
                default_ttl: cfg.ttl,
                share_authorized: cfg.share_authorized,
                stale_while_revalidate: cfg.stale_while_revalidate,
                stale_if_error: cfg.stale_if_error,
            },
            max_body: cfg.max_body.0,
            codings: None,
        }
    }

    /// Keys entries by the coding [`compression::negotiate`] picks among
    /// `codings` (the route's compression layer, inside this one, picks
    /// the same): `gzip, deflate, br` and `br;q=1, gzip` share the `br`
    /// entry, and a `gzip` client and a `br` client each have theirs.
    #[must_use]
    pub fn with_codings(self, codings: Option<Vec<Algorithm>>) -> Self {
        Self { codings, ..self }
    }

    fn key<B>(&self, req: &Request<B>) -> Arc<str> {
        let coding = self
            .codings
            .as_ref()
            .map(|c| compression::negotiate(req.headers(), c));
        self.key_for(req, coding)
    }

    /// The key of `req`'s URL for the variant of `coding` (`None`: a route
    /// that does not compress). The coding goes after the route name, so
    /// purging by route or by path finds every variant.
    fn key_for<B>(&self, req: &Request<B>, coding: Option<Negotiated>) -> Arc<str> {
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(http::uri::Authority::as_str))
            .unwrap_or("");
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        match coding {
            None => store::key(&self.route, host, pq),
            Some(c) => store::key(&format!("{}\0{}", self.route, c.as_str()), host, pq),
        }
    }

    /// Every key `req`'s URL may be stored under (all its variants).
    fn all_keys<B>(&self, req: &Request<B>) -> Vec<Arc<str>> {
        match &self.codings {
            None => vec![self.key_for(req, None)],
            Some(c) => std::iter::once(Negotiated::Identity)
                .chain(c.iter().map(|&a| Negotiated::Coding(a)))
                .map(|n| self.key_for(req, Some(n)))
                .collect(),
        }
    }

    /// Whether stored `e` answers a request with `headers`: its `Vary`
    /// values match; on a compressing route `Accept-Encoding` is instead
    /// checked by the entry's coding being one the request accepts (the
    /// key already holds the negotiated coding).
    fn fits(&self, e: &Entry, headers: &HeaderMap) -> bool {
        if self.codings.is_none() {
            return e.matches(headers);
        }
        let coding = e
            .headers
            .get(http::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok());
        e.matches_except(headers, Some(&http::header::ACCEPT_ENCODING))
            && compression::accept::accepts(headers, coding)
    }
}

/// Applies a [`RouteCache`].
#[derive(Debug, Clone)]
pub struct CacheLayer {
    cache: Arc<RouteCache>,
}

impl CacheLayer {
    /// A layer caching per `cache`.
    pub fn new(cache: RouteCache) -> Self {
        Self {
            cache: Arc::new(cache),
        }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Cache<S> {
        Cache {
            inner,
            cache: self.cache.clone(),
        }
    }
}

/// The cache middleware.
#[derive(Debug, Clone)]
pub struct Cache<S> {
    inner: S,
    cache: Arc<RouteCache>,
}

/// The future of [`Cache`] (lookups, coalescing and buffering make it a
/// state machine clearest as an `async` block).
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl<S> Service<Request<Body>> for Cache<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> ResponseFuture {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(run(inner, self.cache.clone(), req))
    }
}

fn tag(resp: &mut Response<Body>, decision: CacheDecision, status: &str) {
    let h = resp.headers_mut();
    h.insert(X_CACHE, HeaderValue::from_static(decision.x_cache()));
    if let Ok(v) = HeaderValue::from_str(status) {
        h.insert(CACHE_STATUS, v);
    }
    resp.extensions_mut().insert(decision);
}

fn from_entry(e: &Entry, head: bool, now: Instant) -> Response<Body> {
    let mut resp = Response::new(if head || e.body.is_empty() {
        Body::Empty
    } else {
        Body::full(e.body.clone())
    });
    *resp.status_mut() = e.status;
    *resp.headers_mut() = e.headers.clone();
    resp.headers_mut()
        .insert(AGE, HeaderValue::from(e.age(now).as_secs()));
    resp
}

fn ttl_left(e: &Entry, now: Instant) -> i128 {
    i128::from(u32::try_from(e.life.ttl.as_secs()).unwrap_or(u32::MAX))
        - i128::from(u32::try_from(e.age(now).as_secs()).unwrap_or(u32::MAX))
}

fn copy_request(req: &Request<Body>) -> Request<Body> {
    let mut r = Request::new(Body::Empty);
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    *r.extensions_mut() = req.extensions().clone();
    r
}

/// A fresh entry's answer; `detail` ends the `Cache-Status` member.
fn hit(e: &Entry, head: bool, now: Instant, detail: &str) -> Response<Body> {
    let mut resp = from_entry(e, head, now);
    tag(
        &mut resp,
        CacheDecision::Hit,
        &format!("gateway; hit; ttl={}{detail}", ttl_left(e, now)),
    );
    resp
}

/// A stale entry's answer while one background request refreshes it.
fn stale_while_revalidate<S>(
    inner: S,
    cache: &Arc<RouteCache>,
    key: Arc<str>,
    e: &Entry,
    req: &Request<Body>,
    leader: Option<LeaderGuard>,
) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
{
    if let Some(guard) = leader {
        let bg = copy_request(req);
        let cache = cache.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = fetch(inner, &cache, key, bg, false, CacheDecision::Miss).await {
                tracing::debug!(error = %e, "background revalidation failed");
            }
        });
    }
    let now = Instant::now();
    let mut resp = from_entry(e, req.method() == Method::HEAD, now);
    tag(
        &mut resp,
        CacheDecision::Stale,
        &format!("gateway; hit; ttl={}", ttl_left(e, now)),
    );
    resp
}

async fn run<S>(
    inner: S,
    cache: Arc<RouteCache>,
    req: Request<Body>,
) -> Result<Response<Body>, BoxError>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
{
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD {
        if method.is_safe() {
            return inner.oneshot(req).await.map_err(Into::into);
        }
        // RFC 9111 4.4: an unsafe request invalidates the URL, but only
        // once its response is a non-error one (2xx, 3xx): a refused or
        // failed POST changed nothing.
        let keys = cache.all_keys(&req);
        let resp = inner.oneshot(req).await.map_err(Into::into)?;
        if resp.status().is_success() || resp.status().is_redirection() {
            for key in keys {
                cache.store.invalidate(&key);
                if let Some(tier) = &cache.shared {
                    tier.delete(&key);
                }
            }
        }
        return Ok(resp);
    }
    let head = method == Method::HEAD;
    let key = cache.key(&req);
    let req_cc = CacheControl::parse(req.headers());
    if req_cc.no_store {
        let mut resp = inner.oneshot(req).await.map_err(Into::into)?;
        tag(&mut resp, CacheDecision::Bypass, "gateway; fwd=bypass");
        return Ok(resp);
    }
    let now = Instant::now();
    if cache.rules.private(req.headers()) {
        // A request with `Cookie`, or `Authorization` on a route without
        // `share_authorized`, may be answered personally: only an entry the
        // origin marked shareable (`public`, `s-maxage`) answers it, and it
        // goes upstream alone (no coalescing with other clients, no stale
        // answers); its response is stored only when explicitly shareable.
        if !req_cc.no_cache {
            let shareable = cache
                .store
                .get(&key)
                .filter(|e| cache.fits(e, req.headers()) && explicitly_shared(&e.headers));
            if let Some(e) = shareable.filter(|e| e.freshness(now) == Freshness::Fresh) {
                return Ok(hit(&e, head, now, ""));
            }
        }
        return fetch(inner, &cache, key, req, head, CacheDecision::Bypass).await;
    }
    let mut stale = None;
    if !req_cc.no_cache {
        if let Some(e) = cache
            .store
            .get(&key)
            .filter(|e| cache.fits(e, req.headers()))
        {
            match e.freshness(now) {
                Freshness::Fresh => return Ok(hit(&e, head, now, "")),
                Freshness::Revalidate => {
                    let leader = match cache.store.lead(&key) {
                        Lead::Leader(g) => Some(g),
                        Lead::Follower(_) => None,
                    };
                    return Ok(stale_while_revalidate(inner, &cache, key, &e, &req, leader));
                }
                Freshness::IfError => stale = Some(e),
                Freshness::Expired => {}
            }
        }
    }
    // A miss: one request per key goes on (to the shared tier, then
    // upstream), the others wait for it.
    let leader = match cache.store.lead(&key) {
        Lead::Leader(g) => Some(g),
        Lead::Follower(f) => {
            f.wait().await;
            if let Some(e) = cache
                .store
                .get(&key)
                .filter(|e| cache.fits(e, req.headers()))
            {
                let now = Instant::now();
                if e.freshness(now) == Freshness::Fresh {
                    return Ok(hit(&e, head, now, ""));
                }
            }
            None
        }
    };
    if let (Some(tier), false) = (&cache.shared, req_cc.no_cache) {
        // Another replica may have stored it; a failure is only a miss.
        let shared = tier
            .get(&key)
            .await
            .filter(|e| cache.fits(e, req.headers()));
        if let Some(e) = shared.map(Arc::new) {
            let now = Instant::now();
            let freshness = e.freshness(now);
            if freshness != Freshness::Expired {
                cache.store.insert(key.clone(), e.clone());
            }
            match freshness {
                Freshness::Fresh => return Ok(hit(&e, head, now, "; detail=shared")),
                Freshness::Revalidate => {
                    return Ok(stale_while_revalidate(inner, &cache, key, &e, &req, leader));
                }
                Freshness::IfError => stale = stale.or(Some(e)),
                Freshness::Expired => {}
            }
        }
    }
    let result = fetch(inner, &cache, key, req, head, CacheDecision::Miss).await;
    drop(leader);
    let failed = match &result {
        Ok(r) => r.status().is_server_error(),
        Err(_) => true,
    };
    if let (true, Some(e)) = (failed, stale) {
        let now = Instant::now();
        let fwd = result.as_ref().map_or_else(
            |_| String::new(),
            |r| format!("; fwd-status={}", r.status().as_u16()),
        );
        let mut resp = from_entry(&e, head, now);
        tag(
            &mut resp,
            CacheDecision::Stale,
            &format!("gateway; fwd=stale{fwd}; ttl={}", ttl_left(&e, now)),
        );
        return Ok(resp);
    }
    result
}

/// Sends `req` upstream and stores the answer when allowed; HEAD answers
/// are passed through, not stored. An answer not stored is marked
/// `unstored` (a miss, or a bypass for a private request).
async fn fetch<S>(
    inner: S,
    cache: &RouteCache,
    key: Arc<str>,
    req: Request<Body>,
    head: bool,
    unstored: CacheDecision,
) -> Result<Response<Body>, BoxError>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send,
    S::Error: Into<BoxError>,
{
    let req_headers = req.headers().clone();
    let mut resp = inner.oneshot(req).await.map_err(Into::into)?;
    let life = (!head)
        .then(|| storable(&req_headers, resp.status(), resp.headers(), &cache.rules))
        .flatten();
    // A body compressed on the way (its length unknown until it ends)
    // whose upstream declared a length ends too: it is gathered up to
    // `max_body` coded bytes, the size it is stored at.
    let coded_finite = resp
        .extensions()
        .get::<Compressed>()
        .is_some_and(|c| c.identity_len.is_some());
    let small = coded_finite
        || resp
            .body()
            .size_hint()
            .upper()
            .is_some_and(|n| n <= cache.max_body);
    let unstored_status = if unstored == CacheDecision::Bypass {
        "gateway; fwd=bypass"
    } else {
        "gateway; fwd=miss"
    };
    let Some(life) = life.filter(|_| small) else {
        tag(&mut resp, unstored, unstored_status);
        return Ok(resp);
    };
    let (parts, body) = resp.into_parts();
    let body: Bytes = match collect_capped(body, cache.max_body).await? {
        Ok(b) => b,
        Err(body) => {
            let mut resp = Response::from_parts(parts, body);
            tag(&mut resp, unstored, unstored_status);
            return Ok(resp);
        }
    };
    // Stored as copies: the body, header values and custom names received
    // are slices of the connection's read buffers, and a stored slice pins
    // its whole buffer (kilobytes for a two-byte body), which the weigher
    // cannot see. A copy per fill keeps the byte bound true.
    let vary_values = life
        .vary
        .iter()
        .map(|n| req_headers.get(n).map(owned_value))
        .collect();
    let initial_age = age_seconds(&parts.headers);
    let entry = Arc::new(Entry {
        status: parts.status,
        headers: owned_headers(&parts.headers),
        body: Bytes::copy_from_slice(&body),
        stored: Instant::now(),
        initial_age,
        life,
        vary_values,
    });
    cache.store.insert(key.clone(), entry.clone());
    if let Some(tier) = &cache.shared {
        tier.put(key, entry);
    }
    let mut resp = Response::from_parts(
        parts,
        if body.is_empty() {
            Body::Empty
        } else {
            Body::full(body)
        },
    );
    tag(&mut resp, CacheDecision::Miss, "gateway; fwd=miss; stored");
    Ok(resp)
}

/// `body` whole when it ends within `cap` bytes; otherwise a body that
/// sends what was read, then the rest as it comes (trailers are dropped,
/// as a stored body has none).
async fn collect_capped(mut body: Body, cap: u64) -> Result<Result<Bytes, Body>, BoxError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        if buf.len() as u64 > cap {
            use futures_util::StreamExt as _;
            let head = futures_util::stream::once(std::future::ready(Ok::<_, BoxError>(
                http_body::Frame::data(buf.freeze()),
            )));
            let rest = http_body_util::BodyStream::new(body);
            let chained = http_body_util::StreamBody::new(head.chain(rest));
            return Ok(Err(Body::Boxed(
                http_body_util::combinators::UnsyncBoxBody::new(chained),
            )));
        }
    }
    Ok(Ok(buf.freeze()))
}

/// `v` in an allocation of its own.
fn owned_value(v: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(v.as_bytes()))
        .unwrap_or_else(|_| v.clone());
    copy.set_sensitive(v.is_sensitive());
    copy
}

/// `h` with every custom name and every value in allocations of its own.
fn owned_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(h.len());
    for (k, v) in h {
        let k = HeaderName::from_bytes(k.as_str().as_bytes()).unwrap_or_else(|_| k.clone());
        out.append(k, owned_value(v));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::config::ByteSize;

    /// A cache whose upstream answers `max-age=10`, counting its calls.
    fn svc(
        hits: Arc<AtomicUsize>,
    ) -> Cache<tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>> {
        svc_with(hits, &[("cache-control", "max-age=10")])
    }

    fn req(m: Method) -> Request<Body> {
        Request::builder()
            .method(m)
            .uri("/a?b")
            .header("host", "h")
            .body(Body::Empty)
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn hits_do_not_reach_the_inner_service_until_expiry_or_invalidation() {
        let hits = Arc::new(AtomicUsize::new(0));
        let s = svc(hits.clone());
        let miss = s.clone().oneshot(req(Method::GET)).await.unwrap();
        assert_eq!(miss.headers()[X_CACHE], "MISS");
        tokio::time::advance(Duration::from_secs(9)).await;
        let hit = s.clone().oneshot(req(Method::GET)).await.unwrap();
        assert_eq!(hit.headers()[X_CACHE], "HIT");
        assert_eq!(hit.headers()[AGE], "9");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            s.clone().oneshot(req(Method::GET)).await.unwrap().headers()[X_CACHE],
            "MISS"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        // An unsafe method invalidates the URL.
        s.clone().oneshot(req(Method::POST)).await.unwrap();
        assert_eq!(
            s.clone().oneshot(req(Method::GET)).await.unwrap().headers()[X_CACHE],
            "MISS"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 4);
    }

    /// A cache whose upstream answers with `headers`, counting its calls.
    fn svc_with(
        hits: Arc<AtomicUsize>,
        headers: &'static [(&'static str, &'static str)],
    ) -> Cache<tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>> {
        let inner =
            tower::util::BoxCloneSyncService::new(tower::service_fn(move |_r: Request<Body>| {
                let n = hits.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut r = Response::new(Body::full(format!("n={n}")));
                    for (k, v) in headers {
                        r.headers_mut().append(*k, HeaderValue::from_static(v));
                    }
                    Ok::<_, BoxError>(r)
                }
            }));
        let cfg = RouteCacheConfig {
            ttl: Duration::from_secs(1),
            max_body: ByteSize(1024),
            share_authorized: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            redis: true,
        };
        let store = Arc::new(ResponseCache::new(1 << 20));
        CacheLayer::new(RouteCache::new("r", &cfg, store)).layer(inner)
    }

    /// Every way a leader can end wakes its followers, which then go
    /// upstream themselves: the leader's request cancelled (its future
    /// dropped), failed, or answered with something not storable.
    #[tokio::test(start_paused = true)]
    async fn followers_wake_on_every_leader_exit() {
        #[derive(Clone, Copy, Debug)]
        enum Exit {
            Cancelled,
            Failed,
            Uncacheable,
        }
        for exit in [Exit::Cancelled, Exit::Failed, Exit::Uncacheable] {
            let calls = Arc::new(AtomicUsize::new(0));
            let gate = Arc::new(tokio::sync::Notify::new());
            let (c, g) = (calls.clone(), gate.clone());
            let inner = tower::util::BoxCloneSyncService::new(tower::service_fn(
                move |_r: Request<Body>| {
                    let n = c.fetch_add(1, Ordering::SeqCst);
                    let g = g.clone();
                    async move {
                        if n == 0 {
                            // The leader's upstream answers when let go.
                            g.notified().await;
                            if matches!(exit, Exit::Failed | Exit::Cancelled) {
                                return Err::<Response<Body>, BoxError>("upstream failed".into());
                            }
                        }
                        let mut r = Response::new(Body::full("x"));
                        r.headers_mut()
                            .insert("cache-control", HeaderValue::from_static("no-store"));
                        Ok(r)
                    }
                },
            ));
            let cfg = RouteCacheConfig {
                ttl: Duration::from_secs(10),
                max_body: ByteSize(1024),
                share_authorized: false,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                redis: false,
            };
            let store = Arc::new(ResponseCache::new(1 << 20));
            let s = CacheLayer::new(RouteCache::new("r", &cfg, store)).layer(inner);
            let leader = tokio::spawn(s.clone().oneshot(req(Method::GET)));
            while calls.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
            let followers: Vec<_> = (0..8)
                .map(|_| tokio::spawn(s.clone().oneshot(req(Method::GET))))
                .collect();
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{exit:?}: followers wait");
            match exit {
                Exit::Cancelled => leader.abort(),
                Exit::Failed | Exit::Uncacheable => gate.notify_one(),
            }
            for f in followers {
                let r = tokio::time::timeout(Duration::from_secs(3600), f)
                    .await
                    .unwrap_or_else(|_| panic!("{exit:?}: a follower was never woken"))
                    .unwrap()
                    .unwrap();
                assert_eq!(r.status(), 200, "{exit:?}");
            }
            assert_eq!(calls.load(Ordering::SeqCst), 9, "{exit:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn extreme_lifetimes_and_ages_from_the_wire_never_panic() {
        for headers in [
            &[(
                "cache-control",
                "max-age=1, stale-while-revalidate=18446744073709551615",
            )][..],
            &[(
                "cache-control",
                "max-age=18446744073709551615, stale-if-error=18446744073709551615",
            )],
            &[("cache-control", "max-age=99999999999999999999999999999")],
            &[
                ("cache-control", "max-age=60"),
                ("age", "18446744073709551615"),
            ],
            &[
                ("cache-control", "s-maxage=18446744073709551615"),
                ("age", "99999999999999999999999999999"),
            ],
        ] {
            let hits = Arc::new(AtomicUsize::new(0));
            let s = svc_with(hits.clone(), headers);
            for _ in 0..3 {
                let r = s.clone().oneshot(req(Method::GET)).await.unwrap();
                assert_eq!(r.status(), 200, "{headers:?}");
                tokio::time::advance(Duration::from_secs(2)).await;
            }
        }
    }
}
