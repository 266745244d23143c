//! The per-route middleware, one concern per module: each is a `Layer`, a
//! `Service`, a named `ResponseFuture` and a small error type. They are
//! composed in one place, [`crate::stack`].

pub mod auth;
pub mod cache;
pub mod ratelimit;
pub mod retry;
pub mod shed;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigErrors};

/// What the routes of one config share: auth verifiers (with their JWKS
/// refreshers), the Redis limiter, trusted proxies. Built once per config.
#[derive(Debug)]
pub struct Shared {
    /// Verifiers by provider name.
    pub verifiers: BTreeMap<String, Arc<auth::Verifier>>,
    /// The shared limiter, when `[rate_limit.redis]` is set.
    pub redis: Option<Arc<ratelimit::RedisLimiter>>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted: ratelimit::TrustedProxies,
    /// Key bound of each in-process limiter.
    pub max_keys: usize,
    /// The response cache of every cached route.
    pub cache: Arc<cache::ResponseCache>,
}

impl Shared {
    /// Builds from a validated config; JWKS refreshers run until `stop`.
    /// Must run inside a tokio runtime.
    pub fn build(config: &Config, stop: &CancellationToken) -> Result<Self, ConfigErrors> {
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
        let redis = rl
            .redis
            .as_ref()
            .map(|r| {
                ratelimit::RedisLimiter::new(r)
                    .map(Arc::new)
                    .map_err(|m| ConfigErrors::at("rate_limit.redis.url", m))
            })
            .transpose()?;
        Ok(Self {
            verifiers,
            redis,
            trusted: ratelimit::TrustedProxies::new(&rl.trusted_proxies),
            max_keys: rl.max_keys,
            cache: Arc::new(cache::ResponseCache::new(config.cache.max_size.0)),
        })
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
