//! The shared limiter: one `EVALSHA` of a GCRA script per decision over a
//! multiplexed, self-reconnecting connection, bounded by a timeout. After a
//! few consecutive failures Redis is skipped for a short, growing interval
//! ([`FastFail`]): the `on_error` policy decides at once instead of after a
//! timeout per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

use super::gcra::{Gcra, Outcome};
use crate::config::{OnRedisError, RedisConfig};
use crate::middleware::redis_conn::FastFail;

/// The same arithmetic as [`Gcra::decide`], atomically in Redis, with
/// Redis's clock so every replica agrees on "now". The key expires when its
/// bucket is full again, so idle keys cost no Redis memory.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local nxt = tat + interval
if nxt - now <= window then
  redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1)
  return {1, nxt - now}
end
return {0, tat - now}
";

/// A Redis-backed limiter shared by every route of a config.
pub struct RedisLimiter {
    conn: ConnectionManager,
    script: Script,
    /// Prefix of every key.
    pub prefix: String,
    timeout: Duration,
    /// What to do when Redis does not answer in time.
    pub on_error: OnRedisError,
    failures: AtomicU64,
    gate: Arc<FastFail>,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// Connects lazily (start-up does not wait for Redis; must run inside
    /// a tokio runtime).
    pub fn new(cfg: &RedisConfig) -> Result<Self, String> {
        let conn = crate::middleware::redis_conn::lazy_connection(
            &cfg.url,
            cfg.ca_file.as_deref(),
            cfg.timeout,
        )?;
        Ok(Self {
            conn,
            script: Script::new(GCRA_LUA),
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout,
            on_error: cfg.on_error,
            failures: AtomicU64::new(0),
            gate: Arc::new(FastFail::new()),
        })
    }

    /// Decisions that failed (timeout or error) since start: the metric of
    /// the fallback policy.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Fast-fail state: whether Redis is used, decisions made without it.
    pub fn gate(&self) -> &FastFail {
        &self.gate
    }

    /// One decision for the full Redis `key`, or `None` when Redis failed,
    /// was slower than the timeout, or is skipped after failures.
    pub async fn decide(&self, gcra: &Gcra, key: &str) -> Option<Outcome> {
        self.gate.run(self.call(gcra, key), || self.ping()).await
    }

    /// The background probe while Redis is skipped.
    fn ping(&self) -> impl std::future::Future<Output = bool> + Send + 'static {
        crate::middleware::redis_conn::ping(&self.conn, self.timeout)
    }

    async fn call(&self, gcra: &Gcra, key: &str) -> Option<Outcome> {
        let mut conn = self.conn.clone();
        let mut inv = self.script.key(key);
        inv.arg(gcra.interval_us).arg(gcra.window_us);
        let r = tokio::time::timeout(self.timeout, inv.invoke_async::<(u8, i64)>(&mut conn)).await;
        match r {
            Ok(Ok((allowed, ahead))) => {
                Some(gcra.outcome(allowed == 1, u64::try_from(ahead).unwrap_or(0)))
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed("timed out");
                None
            }
        }
    }

    fn failed(&self, why: &str) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed);
        // Every failure is counted; only some are logged.
        if n.is_power_of_two() || n.is_multiple_of(1000) {
            tracing::warn!(error = why, failures = n + 1, policy = ?self.on_error, "redis rate limiter failed");
        }
    }
}
