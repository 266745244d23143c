//! Entries, the byte-bounded store and miss coalescing.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::policy::Storable;
use super::redis::RedisTier;
use crate::middleware::ratelimit::bounded_key;

/// A stored response.
#[derive(Debug)]
pub struct Entry {
    /// Status.
    pub status: StatusCode,
    /// Response headers as received (hop-by-hop already removed).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// When it was stored.
    pub stored: Instant,
    /// `Age` it already had upstream, in seconds.
    pub initial_age: u64,
    /// Lifetimes and `Vary` names.
    pub life: Storable,
    /// The request's values of the `Vary` headers.
    pub vary_values: Vec<Option<HeaderValue>>,
}

/// How usable an entry is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within its lifetime.
    Fresh,
    /// Past it, within `stale-while-revalidate`.
    Revalidate,
    /// Past both; usable only when the upstream fails, within `stale-if-error`.
    IfError,
    /// Unusable.
    Expired,
}

impl Entry {
    /// Current age (saturating: an `Age` near `u64::MAX` is "very old",
    /// never an overflow).
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored)
            .saturating_add(Duration::from_secs(self.initial_age))
    }

    /// How usable the entry is at `now`.
    pub fn freshness(&self, now: Instant) -> Freshness {
        let age = self.age(now);
        let l = &self.life;
        if age < l.ttl {
            Freshness::Fresh
        } else if age < l.ttl.saturating_add(l.stale_while_revalidate) {
            Freshness::Revalidate
        } else if age < l.ttl.saturating_add(l.stale_if_error) {
            Freshness::IfError
        } else {
            Freshness::Expired
        }
    }

    /// Whether the request has the values this variant was stored for.
    pub fn matches(&self, req: &HeaderMap) -> bool {
        self.matches_except(req, None)
    }

    /// [`Self::matches`] but for the `Vary` name `skip`, which the caller
    /// checks its own way (a compressing route: `Accept-Encoding`, whose
    /// negotiated coding is part of the key).
    pub fn matches_except(&self, req: &HeaderMap, skip: Option<&http::HeaderName>) -> bool {
        self.life
            .vary
            .iter()
            .zip(&self.vary_values)
            .all(|(name, v)| Some(name) == skip || req.get(name) == v.as_ref())
    }

    /// Bytes this entry holds under a key of `key_len` bytes: the key
    /// (a client chooses its length: a long path, query or `Host`), body,
    /// headers, the `Vary` names and values, plus a fixed overhead.
    fn weight(&self, key_len: usize) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        let vary: usize = self
            .life
            .vary
            .iter()
            .zip(&self.vary_values)
            .map(|(k, v)| k.as_str().len() + v.as_ref().map_or(0, HeaderValue::len) + 32)
            .sum();
        u32::try_from(
            key_len
                .saturating_add(self.body.len())
                .saturating_add(headers)
                .saturating_add(vary)
                .saturating_add(ENTRY_OVERHEAD),
        )
        .unwrap_or(u32::MAX)
    }
}

/// Bytes counted per entry beyond what it holds: the moka node, the `Arc`s,
/// the `HeaderMap` tables.
const ENTRY_OVERHEAD: usize = 512;

/// The store shared by every cached route of a config.
pub struct ResponseCache {
    entries: moka::sync::Cache<Arc<str>, Arc<Entry>>,
    /// Misses in flight, one leader each; bounded by requests in flight.
    inflight: Mutex<HashMap<Arc<str>, Arc<Notify>>>,
    /// The shared tier, when `[cache.redis]` is set.
    redis: Option<Arc<RedisTier>>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("entries", &self.entries.entry_count())
            .field("bytes", &self.entries.weighted_size())
            .field("redis", &self.redis)
            .finish()
    }
}

/// Result of [`ResponseCache::lead`].
pub enum Lead {
    /// This request fetches; followers wake when the guard drops.
    Leader(LeaderGuard),
    /// Another request is fetching: wait for it, then look again.
    Follower(Follower),
}

/// A request waiting for the leader of its key. It is registered for the
/// wakeup when [`ResponseCache::lead`] makes it, under the in-flight lock:
/// `notify_waiters` wakes every `Notified` created before it, polled or
/// not, so a leader finishing between the lock's release and the first
/// poll of [`Follower::wait`] cannot be missed (it was, and such a request
/// waited forever on a route without a timeout).
pub struct Follower(Pin<Box<OwnedNotified>>);

impl Follower {
    /// Resolves once the leader is done: it stored the response, found it
    /// not storable, failed, or was dropped (cancelled) — its
    /// [`LeaderGuard`] wakes the followers on every one of those paths.
    pub async fn wait(self) {
        self.0.await;
    }
}

/// Wakes the followers of one key when dropped (also on cancellation).
pub struct LeaderGuard {
    cache: Arc<ResponseCache>,
    key: Arc<str>,
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        let mut map = self
            .cache
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.remove(&self.key) {
            n.notify_waiters();
        }
    }
}

impl ResponseCache {
    /// A store of at most `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|k: &Arc<str>, e: &Arc<Entry>| e.weight(k.len()))
                .build(),
            inflight: Mutex::new(HashMap::new()),
            redis: None,
        }
    }

    /// Adds the shared Redis tier.
    #[must_use]
    pub fn with_redis(self, tier: RedisTier) -> Self {
        Self {
            redis: Some(Arc::new(tier)),
            ..self
        }
    }

    /// The shared Redis tier, if configured.
    pub fn redis(&self) -> Option<&Arc<RedisTier>> {
        self.redis.as_ref()
    }

    /// The entry under `key`.
    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.entries.get(key)
    }

    /// Stores `entry` under `key` (in memory only), then lets moka apply
    /// its pending writes: until it does, inserted entries (with their keys,
    /// up to 64 KiB each) wait in its write log outside the weighed bound,
    /// and a flood of distinct keys would hold hundreds of them. A fill
    /// already cost an upstream exchange; this is a short lock.
    pub fn insert(&self, key: Arc<str>, entry: impl Into<Arc<Entry>>) {
        self.entries.insert(key, entry.into());
        self.entries.run_pending_tasks();
    }

    /// Removes `key`.
    pub fn invalidate(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// Becomes the one request fetching `key`, or learns who is.
    pub fn lead(self: &Arc<Self>, key: &Arc<str>) -> Lead {
        let mut map = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get(key) {
            // Registered before the lock is released (see `Follower`).
            let mut notified = Box::pin(n.clone().notified_owned());
            notified.as_mut().enable();
            return Lead::Follower(Follower(notified));
        }
        map.insert(key.clone(), Arc::new(Notify::new()));
        Lead::Leader(LeaderGuard {
            cache: self.clone(),
            key: key.clone(),
        })
    }

    /// Removes entries whose path (and query) equals `exact` or starts with
    /// `prefix`; returns how many.
    pub fn purge(&self, exact: Option<&str>, prefix: Option<&str>) -> usize {
        // A long path is stored by its bounded form.
        let exact = exact.map(|e| bounded_key(e, MAX_PATH_BYTES));
        let exact = exact.as_deref();
        let mut n = 0;
        for (k, _) in &self.entries {
            if path_matches(&k, exact, prefix) {
                self.entries.invalidate(&*k);
                n += 1;
            }
        }
        self.entries.run_pending_tasks();
        n
    }

    /// Removes every entry of route `route` (its config changed or it went
    /// away on reload); returns how many.
    pub fn purge_route(&self, route: &str) -> usize {
        let mut n = 0;
        for (k, _) in &self.entries {
            if k.split('\0').next() == Some(route) {
                self.entries.invalidate(&*k);
                n += 1;
            }
        }
        self.entries.run_pending_tasks();
        n
    }

    /// Entries stored (approximate until pending tasks ran).
    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes stored (by the weigher).
    pub fn bytes(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

/// Whether the path (and query) of cache key `key` equals `exact` (with or
/// without its query) or starts with `prefix`.
pub fn path_matches(key: &str, exact: Option<&str>, prefix: Option<&str>) -> bool {
    let path = key.rsplit('\0').next().unwrap_or("");
    exact.is_some_and(|e| path == e || path.split('?').next() == Some(e))
        || prefix.is_some_and(|p| path.starts_with(p))
}

/// Longest `Host` kept as it is in a cache key (RFC 1035 names fit).
pub const MAX_HOST_BYTES: usize = 255;
/// Longest path and query kept as they are in a cache key; a longer one
/// keeps its first 512 bytes, so purging by a prefix that long finds it.
pub const MAX_PATH_BYTES: usize = 1024;

/// The cache key of a request on a route: `route \0 host \0 path?query`,
/// the same in memory and (after the prefix) in Redis. A `Host` or path a
/// client made long is replaced by
/// [`bounded_key`](crate::middleware::ratelimit::bounded_key) (its start and
/// a SHA-256 digest): a key is at most about 900 bytes whatever the client
/// sends, so neither the store's node overhead, nor entries its eviction
/// has not reclaimed yet, nor Redis hold client-sized keys. Short keys
/// (nearly all) are built as before, without hashing.
pub fn key(route: &str, host: &str, path_query: &str) -> Arc<str> {
    let host = bounded_key(host, MAX_HOST_BYTES);
    let path_query = bounded_key(path_query, MAX_PATH_BYTES);
    Arc::from(format!("{route}\0{host}\0{path_query}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn entry(initial_age: u64, ttl: Duration, swr: Duration, sie: Duration) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            stored: Instant::now(),
            initial_age,
            life: Storable {
                ttl,
                stale_while_revalidate: swr,
                stale_if_error: sie,
                vary: Vec::new(),
            },
            vary_values: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ages_and_lifetimes_saturate() {
        let max = Duration::MAX;
        let old = entry(u64::MAX, max, max, max);
        let swr = entry(0, Duration::from_secs(1), max, Duration::ZERO);
        let long = entry(0, max, Duration::ZERO, max);
        tokio::time::advance(Duration::from_secs(5)).await;
        let now = Instant::now();
        assert_eq!(old.age(now), Duration::MAX);
        // Saturated: an age of "forever" is not younger than "forever".
        assert_eq!(old.freshness(now), Freshness::Expired);
        assert_eq!(swr.freshness(now), Freshness::Revalidate);
        assert_eq!(long.freshness(now), Freshness::Fresh);
    }

    #[test]
    fn long_hosts_and_paths_make_bounded_keys() {
        assert_eq!(&*key("r", "h", "/a?b"), "r\0h\0/a?b");
        let host = "h".repeat(299_000);
        let query = format!("/p?{}", "q".repeat(65_536));
        let long = key("r", &host, &query);
        assert!(
            long.len() <= 2 + MAX_HOST_BYTES + 1 + MAX_PATH_BYTES,
            "{}",
            long.len()
        );
        assert!(long.starts_with("r\0hhh"));
        // Still distinct, and still found by a path prefix or the exact path.
        assert_ne!(key("r", &host, &format!("{query}x")), long);
        assert_ne!(key("r", &format!("{host}x"), &query), long);
        assert!(path_matches(&long, None, Some("/p?qqq")));
        let c = ResponseCache::new(1 << 20);
        let e = || entry(0, Duration::from_secs(60), Duration::ZERO, Duration::ZERO);
        c.insert(long.clone(), e());
        assert!(c.get(&long).is_some());
        assert_eq!(c.purge(Some(&query), None), 1);
        assert!(c.get(&long).is_none());
    }

    /// The lost wakeup of issue 12: a follower learns who leads (the lock
    /// is released), the leader finishes before the follower starts
    /// waiting, and the follower must still wake. Also with a follower
    /// polled once before the leader finishes (registered the usual way).
    #[tokio::test(start_paused = true)]
    async fn a_follower_wakes_even_when_the_leader_finished_before_it_waited() {
        let c = Arc::new(ResponseCache::new(1 << 20));
        let key: Arc<str> = Arc::from("r\0h\0/k");
        let Lead::Leader(leader) = c.lead(&key) else {
            panic!("first request leads")
        };
        let Lead::Follower(late) = c.lead(&key) else {
            panic!("second request follows")
        };
        let Lead::Follower(early) = c.lead(&key) else {
            panic!("third request follows")
        };
        let mut early = std::pin::pin!(early.wait());
        assert!(
            futures_util::poll!(&mut early).is_pending(),
            "waits while the leader runs"
        );
        // Between "released the lock" and "waiting": the leader is done.
        drop(leader);
        assert!(futures_util::poll!(&mut early).is_ready());
        tokio::time::timeout(Duration::from_secs(3600), late.wait())
            .await
            .expect("the late follower was woken, not left waiting forever");
        // The key is free again: the next request leads.
        assert!(matches!(c.lead(&key), Lead::Leader(_)));
    }

    #[test]
    fn the_weigher_counts_key_bytes() {
        let e = entry(0, Duration::from_secs(1), Duration::ZERO, Duration::ZERO);
        assert_eq!(e.weight(65_536) - e.weight(0), 65_536);
        // 64 KiB entries in a 1 MiB store: at most 16 of them stay.
        let c = ResponseCache::new(1 << 20);
        for i in 0..200 {
            let path = format!("/{i}?{}", "q".repeat(65_536));
            c.insert(
                Arc::from(path),
                entry(0, Duration::from_secs(60), Duration::ZERO, Duration::ZERO),
            );
        }
        assert!(c.bytes() <= 1 << 20, "{}", c.bytes());
        assert!(c.len() <= 16, "{}", c.len());
    }
}
