//! The response cache: GET and HEAD, RFC 9111 basics, in memory (bounded by
//! bytes) and optionally in a Redis tier shared by replicas.
//!
//! [`policy`] decides, as pure functions, what may be stored and for how
//! long (`Cache-Control` `max-age`, `s-maxage`, `no-store`, `no-cache`,
//! `private`, `public`, `Vary`, authorized requests not shared unless the
//! response is `public`/`s-maxage` or the route opts in). [`store`] keeps
//! entries in a moka cache weighed by their bytes, and coalesces concurrent
//! misses for one key into one upstream request. [`service`] is the layer:
//! `X-Cache: HIT|MISS|STALE`, an RFC 9211 `Cache-Status`, `Age`,
//! `stale-while-revalidate` (one background refresh) and `stale-if-error`.
//! Unsafe methods invalidate the URL. The admin listener purges by key or
//! prefix.
//!
//! One variant per URL is kept: a response that varies is stored with the
//! request values of its `Vary` headers and served only to requests that
//! match them; another variant replaces it.
//!
//! [`redis`] is the optional shared tier (`[cache.redis]`): a local miss
//! (one per coalesced group) looks there before going upstream, and every
//! local store is written there in the background ([`codec`] is the byte
//! form, expiring in Redis with the entry's usable life). A hit from Redis
//! says `Cache-Status: gateway; hit; ttl=N; detail=shared`. Redis slow or
//! down: each call is bounded by its timeout, counted, and the cache works
//! from memory alone; after a few failures in a row Redis is skipped for a
//! while (fast-fail, [`crate::middleware::redis_conn::FastFail`]), so an
//! outage does not cost every miss a timeout. The client never sees an
//! error for it.

pub mod codec;
pub mod policy;
pub mod redis;
mod service;
pub(crate) mod store;

pub use redis::RedisTier;
pub use service::{Cache, CacheDecision, CacheLayer, RouteCache, CACHE_STATUS, X_CACHE};
pub use store::{Entry, ResponseCache};
