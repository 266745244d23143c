//! THE middleware order. Every route's service is built here, once per
//! config load, never per request.
//!
//! Request path, outermost first (the README's diagram copies this list):
//!
//! 1. `server` (edge, per connection): request id accepted or generated;
//!    the request sanitised once, in a fixed order (`server::sanitize`:
//!    Host, duplicate Authorization, upgrade, Connection tokens and
//!    hop-by-hop headers, identity headers, forwarding headers) and its
//!    context filled (`context::RequestContext`: the one client address and
//!    `X-Forwarded-For` line); the path normalised (`path`, 400 when
//!    refused); route matched on it (404/405); `Content-Length` checked
//!    against the route's body limit (413) and the body wrapped so a
//!    streamed body that grows past it fails with 413 too; the telemetry
//!    record and (when sampled) the SERVER span started; the span's context
//!    rides in the request extensions to the proxy.
//!
//!    1a. `hsts` (per route, `hsts`): `Strict-Transport-Security` on every
//!    answer sent over TLS (the gateway's errors too), never over plaintext.
//!
//!    1b. `response headers` (per route, `response_headers`): the route's
//!    response rules (remove, set, add; `{request_id}`, `{client_ip}`,
//!    `{route}`, `{claim.NAME}`), outermost so they run last on the way out,
//!    on every answer: preflights, cache hits, upstream responses and the
//!    gateway's own errors (set/add only), the route timeout's included.
//!
//!    1c. `cors` (per route, `cors`): a preflight is answered here from the
//!    policy, before auth and limits (preflights carry no credentials), and
//!    never forwarded, allowed or not; actual responses lose the upstream's
//!    CORS headers and get the policy's (and `Vary: Origin`), errors too.
//! 2. `timeout` (per route): the whole deadline until response headers, so
//!    everything below it, retries included, fits in it (504).
//! 3. `auth` (per route): JWT verified, scopes/roles checked (401/403),
//!    claim headers stripped then set; before rate limiting so limits can
//!    key on the subject, and so a refused token costs no quota.
//!
//!    3b. `request headers` (per route, `request_headers`): the route's
//!    request rules, after auth (so `{claim.NAME}` reads the verified
//!    token) and the edge's sanitising, before the limiter (a header key
//!    can use a value a rule set from a claim).
//! 4. `rate limit` (per route): GCRA policies, local or Redis (429); after
//!    auth, before anything that costs the upstream.
//!
//!    4b. `proxy status` (routes with `proxy_status = true`): RFC 9209
//!    `Proxy-Status` with `next-hop` and `received-status` on proxied
//!    responses; outside the cache, so a stored response never keeps one
//!    and a hit carries none (the gateway's own errors get theirs from
//!    `error::render` on every route).
//! 5. `cache` (per route): GET/HEAD served from memory (X-Cache,
//!    Cache-Status), misses coalesced; after auth and limits so both always
//!    apply, before retry so a hit costs no attempt.
//!
//!    5b. `compression` (per route): gzip/br/zstd negotiated from
//!    `Accept-Encoding`, coded as the body streams, `Vary: Accept-Encoding`
//!    on what it may code; inside the cache, so the cache stores the coded
//!    bytes, one variant per coding (its key holds the negotiated coding).
//! 6. `load shed` (per route): at most `max_inflight` requests in flight,
//!    503 at once beyond; outside retry so a retried request counts once;
//!    an upgraded (WebSocket) request keeps its slot until its tunnel
//!    closes. Or, with `concurrency` (adaptive, instead of
//!    `max_inflight`), at most a limit that follows the latency of
//!    admitted requests against the route's target (503/429 with
//!    `Retry-After` beyond it, never forwarded).
//! 7. `retry` (per route): idempotent or never-reached requests, budgeted,
//!    backoff with jitter, another endpoint each time; inside the deadline.
//! 8. `tunnel` (routes with `websocket = true`): gives a tunnel opened by
//!    a `101` the route's `websocket_idle_timeout` and open-tunnel gauge.
//! 9. `proxy` (innermost): endpoint pick (round-robin / P2C, healthy and
//!    circuit breaker not open, so each retry attempt is gated by the
//!    breakers; 503 with `Retry-After` at once when none), the response's
//!    hop-by-hop headers stripped (the request's were at the edge), `Via`
//!    added, path rewritten, upstream request with
//!    its own header deadline (504), connect/reset errors (502), upgrades
//!    tunnelled (WebSocket, on routes that allow it); the outcome is
//!    recorded with the endpoint's breaker when the response body ends; a
//!    sampled request gets a CLIENT span per attempt, whose id the
//!    upstream's `traceparent` carries.

use std::sync::Arc;

use crate::telemetry::Metrics;
use http::{Request, Response};
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;

use crate::body::Body;
use crate::config::RouteConfig;
use crate::error::BoxError;
use crate::middleware::auth::{AuthLayer, RoutePolicy};
use crate::middleware::cache::{CacheLayer, RouteCache};
use crate::middleware::compression::{CompressionLayer, RoutePolicy as CompressionPolicy};
use crate::middleware::edge::EdgeRules;
use crate::middleware::ratelimit::{RateLimitLayer, RoutePolicies};
use crate::middleware::retry::{RetryLayer, RetryPolicy};
use crate::middleware::shed::LoadShedLayer;
use crate::middleware::Shared;
use crate::proxy::tunnel::TunnelLayer;
use crate::proxy::{Proxy, Rewrite, Via};
use crate::routing::Matcher;
use crate::upstream::Upstream;

/// A route's complete service.
pub type RouteService = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// A route's built stack, and the handles of its layers that telemetry
/// reads at scrape time.
#[derive(Debug)]
pub struct RouteStack {
    /// The service, every layer included.
    pub service: RouteService,
    /// The load shedder (`max_inflight`), if the route has one: its
    /// in-flight count is exported as a gauge.
    pub shed: Option<LoadShedLayer>,
}

/// Builds the stack of one route (validated config: an auth provider it
/// names exists in `shared`).
pub fn route_stack(
    route: &RouteConfig,
    matcher: &Matcher,
    upstream: Arc<Upstream>,
    via: Via,
    shared: &Shared,
    metrics: Option<&Arc<Metrics>>,
) -> RouteStack {
    let rewrite = match (&route.rewrite, route.strip_prefix) {
        (Some(with), _) => Rewrite::Replace {
            prefix: matcher.prefix.clone(),
            with: with.clone(),
        },
        (None, true) => Rewrite::Replace {
            prefix: matcher.prefix.clone(),
            with: String::new(),
        },
        (None, false) => Rewrite::Keep,
    };
    let edge = EdgeRules::new(route, metrics);
    let auth = route.auth.as_ref().and_then(|a| {
        let verifier = shared.verifiers.get(&a.provider)?.clone();
        Some(AuthLayer::new(
            RoutePolicy::new(verifier, a).keep_claims(edge.keep_claims),
        ))
    });
    let limits = (!route.rate_limits.is_empty())
        .then(|| RateLimitLayer::new(RoutePolicies::new(&route.name, shared.rate_limits(route))));
    let shed = route.max_inflight.map(LoadShedLayer::new);
    let tunnels = route.websocket.then(|| {
        let gauge = metrics.map(|m| m.tunnels(&Arc::from(route.name.as_str())));
        TunnelLayer::new(route.websocket_idle_timeout, gauge)
    });
    let svc = ServiceBuilder::new()
        // HSTS on responses sent over TLS (route `hsts`): outermost, so
        // every response the route's layers produce carries it.
        .option_layer(route.hsts.as_ref().map(crate::server::hsts::HstsLayer::new))
        // Response header rules: they see every answer of the route last
        // (preflights, errors, hits), HSTS aside.
        .option_layer(edge.response)
        // CORS: preflights answered before auth and limits (they carry no
        // credentials), never forwarded; every response decorated.
        .option_layer(edge.cors)
        // Route deadline: outermost, so it bounds everything below.
        .option_layer(route.timeout.map(tower::timeout::TimeoutLayer::new))
        // Who is calling: 401/403 before any quota or upstream is spent.
        .option_layer(auth)
        // Request header rules: after auth (claims) and the edge's sanitising.
        .option_layer(edge.request)
        // How often: after auth (keys by subject), before the upstream.
        .option_layer(limits)
        // Proxy-Status received-status: outside the cache, so a hit (no
        // next hop) gets none and no stored response carries one.
        .option_layer(
            route
                .proxy_status
                .then(|| crate::proxy_status::ProxyStatusLayer::new(via.name())),
        )
        // Served from memory when fresh: a hit costs no upstream request.
        .option_layer(route.cache.as_ref().map(|c| {
            CacheLayer::new(
                RouteCache::new(&route.name, c, shared.cache.clone())
                    .with_codings(route.compression.as_ref().map(|z| z.algorithms.clone())),
            )
        }))
        // Coded as it streams; inside the cache: one stored variant per coding.
        .option_layer(route.compression.as_ref().map(|c| {
            let counters = metrics.map(|m| m.compression.route(&route.name));
            CompressionLayer::new(CompressionPolicy::new(c), counters)
        }))
        // How many at once: shed fast rather than queue without bound.
        .option_layer(shed.clone())
        // Or as many as keep latency at the SLO: adaptive, same place.
        .option_layer(shared.concurrency.get(&route.name).cloned())
        // Again, safely: each attempt goes through the breaker-gated pick.
        .option_layer(route.retry.as_ref().map(|r| {
            let policy = RetryPolicy::new(r);
            RetryLayer::new(match metrics {
                Some(m) => policy.with_counters(m.retry_counters(&upstream.name)),
                None => policy,
            })
        }))
        // Upgrades: a tunnel's idle timeout and gauge, set on its `101`.
        .option_layer(tunnels)
        // Forwarding: innermost.
        .service(Proxy::new(
            upstream.clone(),
            rewrite,
            via,
            metrics.map(|m| {
                (
                    m.upstream(&upstream.name),
                    m.attempt_counters(&upstream.name),
                )
            }),
        ));
    RouteStack {
        service: BoxCloneSyncService::new(svc),
        shed,
    }
}
