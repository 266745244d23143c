//! The per-route middleware, one concern per module: each is a `Layer`, a
//! `Service`, a named `ResponseFuture` and a small error type. They are
//! composed in one place, [`crate::stack`].

pub mod auth;
pub mod cache;
pub mod compression;
pub mod concurrency;
pub mod edge;
pub mod ratelimit;
pub mod redis_conn;
pub mod retry;
pub mod shed;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigErrors, RateLimitPolicyConfig, RouteConfig};

/// What the routes of one config share: auth verifiers (with their JWKS
/// refreshers), the Redis limiter, the in-process limiter
/// stores and the response cache. Built once per config; on reload the
/// state whose config did not change is carried over (see [`Shared::build`]).
#[derive(Debug)]
pub struct Shared {
    /// Verifiers by provider name.
    pub verifiers: BTreeMap<String, Arc<auth::Verifier>>,
    /// The shared limiter, when `[rate_limit.redis]` is set.
    pub redis: Option<Arc<ratelimit::RedisLimiter>>,
    /// The in-process state of every rate-limit policy, by (route, policy)
    /// name, with the config it counts for.
    limiters: BTreeMap<(String, String), (RateLimitPolicyConfig, Arc<ratelimit::LocalStore>)>,
    /// The response cache of every cached route.
    pub cache: Arc<cache::ResponseCache>,
    /// The adaptive concurrency limiter of every route with
    /// `concurrency`, by route name (kept over a reload when unchanged).
    pub concurrency: BTreeMap<String, concurrency::ConcurrencyLayer>,
}

impl Shared {
    /// Builds from a validated config; JWKS refreshers run until `stop`.
    /// Must run inside a tokio runtime.
    ///
    /// With `previous` (the config and state being replaced by a reload),
    /// state is kept where its config is unchanged, so a reload neither lets
    /// a fresh burst through nor empties the cache: each route's in-process
    /// limiter state when the policy (and `rate_limit.max_keys`) is equal;
    /// the Redis limiter (its connection and failure count) when
    /// `[rate_limit.redis]` is equal; the response cache when `[cache]` is
    /// equal, minus the entries of routes that changed or went away.
    pub fn build(
        config: &Config,
        previous: Option<(&Config, &Shared)>,
        stop: &CancellationToken,
    ) -> Result<Self, ConfigErrors> {
        let mut verifiers = BTreeMap::new();
        for (name, cfg) in &config.auth {
            let v = auth::Verifier::new(name, cfg)
                .map_err(|m| ConfigErrors::at(format!("auth.{name}"), m))?;
            let v = Arc::new(v);
            if let Some(jwks) = v.jwks() {
                spawn_jwks_refresh(jwks.clone(), stop.clone());
            }
            verifiers.insert(name.clone(), v);
        }
        let rl = &config.rate_limit;
        let same_rl = |old: &Config| old.rate_limit.max_keys == rl.max_keys;
        let redis = match (&rl.redis, previous) {
            (Some(r), Some((old, s))) if old.rate_limit.redis.as_ref() == Some(r) => {
                s.redis.clone()
            }
            (Some(r), _) => Some(
                ratelimit::RedisLimiter::new(r)
                    .map(Arc::new)
                    .map_err(|m| ConfigErrors::at("rate_limit.redis.url", m))?,
            ),
            (None, _) => None,
        };
        let mut limiters = BTreeMap::new();
        for route in &config.routes {
            for p in &route.rate_limits {
                let key = (route.name.clone(), p.name.clone());
                let kept = previous
                    .filter(|(old, _)| same_rl(old))
                    .and_then(|(_, s)| s.limiters.get(&key))
                    .filter(|(cfg, _)| cfg == p)
                    .map(|(_, store)| store.clone());
                let store =
                    kept.unwrap_or_else(|| Arc::new(ratelimit::LocalStore::new(rl.max_keys)));
                limiters.insert(key, (p.clone(), store));
            }
        }
        let cache = match previous {
            Some((old, s)) if old.cache == config.cache => {
                for r in &old.routes {
                    if r.cache.is_some() && !config.routes.contains(r) {
                        s.cache.purge_route(&r.name);
                    }
                }
                s.cache.clone()
            }
            _ => {
                let c = cache::ResponseCache::new(config.cache.max_size.0);
                Arc::new(match &config.cache.redis {
                    Some(r) => c.with_redis(
                        cache::RedisTier::new(r)
                            .map_err(|m| ConfigErrors::at("cache.redis.url", m))?,
                    ),
                    None => c,
                })
            }
        };
        Ok(Self {
            verifiers,
            redis,
            limiters,
            cache,
            concurrency: concurrency::build(config, previous.map(|(_, s)| &s.concurrency)),
        })
    }

    /// The rate-limit policies of `route`, with their state.
    pub fn rate_limits(&self, route: &RouteConfig) -> Vec<ratelimit::Policy> {
        route
            .rate_limits
            .iter()
            .map(|p| {
                let store = self
                    .limiters
                    .get(&(route.name.clone(), p.name.clone()))
                    .map_or_else(
                        || Arc::new(ratelimit::LocalStore::new(1)),
                        |(_, s)| s.clone(),
                    );
                ratelimit::Policy::new(p, store, self.redis.clone())
            })
            .collect()
    }
}

fn spawn_jwks_refresh(jwks: Arc<auth::Jwks>, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            jwks.refresh().await;
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(jwks.refresh_interval) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn config(limit: u32, cached_ttl: &str) -> Config {
        let c = Config::from_toml(&format!(
            r#"
            [upstreams.u]
            endpoints = ["127.0.0.1:1"]
            [[routes]]
            name = "limited"
            prefix = "/a"
            upstream = "u"
            rate_limits = [
              {{ name = "p", key = "route", limit = {limit}, window = "60s" }},
              {{ name = "q", key = "client_ip", limit = 5, window = "1s" }},
            ]
            [[routes]]
            name = "cached"
            prefix = "/b"
            upstream = "u"
            cache = {{ ttl = "{cached_ttl}" }}
            [[routes]]
            name = "other"
            prefix = "/c"
            upstream = "u"
            cache = {{ ttl = "30s" }}
            "#
        ))
        .unwrap();
        crate::config::validate::validate(&c).unwrap();
        c
    }

    fn entry() -> cache::Entry {
        cache::Entry {
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::from_static(b"x"),
            stored: tokio::time::Instant::now(),
            initial_age: 0,
            life: cache::policy::Storable {
                ttl: std::time::Duration::from_secs(30),
                stale_while_revalidate: std::time::Duration::ZERO,
                stale_if_error: std::time::Duration::ZERO,
                vary: Vec::new(),
            },
            vary_values: Vec::new(),
        }
    }

    fn store(s: &Shared, route: &str, policy: &str) -> Arc<ratelimit::LocalStore> {
        s.limiters[&(route.to_owned(), policy.to_owned())].1.clone()
    }

    #[tokio::test]
    async fn reload_keeps_state_whose_config_is_unchanged() {
        let stop = CancellationToken::new();
        let a = config(3, "30s");
        let s1 = Shared::build(&a, None, &stop).unwrap();
        s1.cache
            .insert(cache::store::key("cached", "h", "/b"), entry());
        s1.cache
            .insert(cache::store::key("other", "h", "/c"), entry());
        // Same config: everything carried over.
        let s2 = Shared::build(&a, Some((&a, &s1)), &stop).unwrap();
        assert!(Arc::ptr_eq(
            &store(&s1, "limited", "p"),
            &store(&s2, "limited", "p")
        ));
        assert!(Arc::ptr_eq(&s1.cache, &s2.cache));
        assert_eq!(s2.cache.len(), 2);
        // One policy changed: only its state starts afresh.
        let b = config(4, "30s");
        let s3 = Shared::build(&b, Some((&a, &s2)), &stop).unwrap();
        assert!(!Arc::ptr_eq(
            &store(&s2, "limited", "p"),
            &store(&s3, "limited", "p")
        ));
        assert!(Arc::ptr_eq(
            &store(&s2, "limited", "q"),
            &store(&s3, "limited", "q")
        ));
        assert_eq!(s3.cache.len(), 2);
        // One cached route changed: its entries go, the others stay.
        let c = config(4, "10s");
        let s4 = Shared::build(&c, Some((&b, &s3)), &stop).unwrap();
        assert!(Arc::ptr_eq(&s3.cache, &s4.cache));
        assert!(s4
            .cache
            .get(&cache::store::key("cached", "h", "/b"))
            .is_none());
        assert!(s4
            .cache
            .get(&cache::store::key("other", "h", "/c"))
            .is_some());
        // The cache's own size changed: a new cache; max_keys: new stores.
        let mut d = c.clone();
        d.cache.max_size = crate::config::ByteSize(1 << 20);
        d.rate_limit.max_keys = 10;
        let s5 = Shared::build(&d, Some((&c, &s4)), &stop).unwrap();
        assert!(!Arc::ptr_eq(&s4.cache, &s5.cache));
        assert!(!Arc::ptr_eq(
            &store(&s4, "limited", "q"),
            &store(&s5, "limited", "q")
        ));
    }
}
