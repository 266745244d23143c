//! The shared limiter: one `EVALSHA` of a GCRA script per request (all of
//! its Redis policies at once, charged all or none) over a
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

/// The same arithmetic as [`Gcra::decide`] and [`Gcra::peek`], for every
/// Redis policy of one request at once, atomically in Redis, with Redis's
/// clock so every replica agrees on "now". `KEYS` are the policies' keys;
/// `ARGV[1]` is 1 to charge the request when every key admits it (0: only
/// look, because an in-process policy already refused it), then each
/// key's interval and window. Nothing is stored unless every key admits
/// the request: a refused request is charged to none of them. Returns
/// whether it was charged, then per key whether that key admits it and the
/// TAT − now after the charge (or as it is, when not charged). A key
/// expires when its bucket is full again, so idle keys cost no Redis
/// memory. (Under Redis Cluster the keys of one call would need one hash
/// slot; the limiter uses a single Redis.)
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local tats = {}
local admit = {}
local all = ARGV[1] == '1'
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat == nil or tat < now then tat = now end
  tats[i] = tat
  admit[i] = tat + interval - now <= window
  if not admit[i] then all = false end
end
local out = {all and 1 or 0}
for i = 1, n do
  local tat = tats[i]
  if all then
    tat = tat + tonumber(ARGV[2 * i])
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  end
  out[2 * i] = admit[i] and 1 or 0
  out[2 * i + 1] = tat - now
end
return out
";

/// What Redis decided for one request's Redis policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// Whether the request was charged to every key (never to only some).
    pub charged: bool,
    /// Each key's outcome, in the order asked.
    pub outcomes: Vec<Outcome>,
}

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

    /// One decision over every `(gcra, full Redis key)` of a request:
    /// whether the request was charged (only when `commit` and every key
    /// admits it), and each key's outcome in order (a charged outcome, a
    /// [`Gcra::peek`] when not charged). `None` when Redis failed, was
    /// slower than the timeout, or is skipped after failures.
    pub async fn decide(&self, asks: &[(Gcra, String)], commit: bool) -> Option<Decided> {
        self.gate.run(self.call(asks, commit), || self.ping()).await
    }

    /// The background probe while Redis is skipped.
    fn ping(&self) -> impl std::future::Future<Output = bool> + Send + 'static {
        crate::middleware::redis_conn::ping(&self.conn, self.timeout)
    }

    async fn call(&self, asks: &[(Gcra, String)], commit: bool) -> Option<Decided> {
        let mut conn = self.conn.clone();
        let mut inv = self.script.prepare_invoke();
        inv.arg(u8::from(commit));
        for (gcra, key) in asks {
            inv.key(key).arg(gcra.interval_us).arg(gcra.window_us);
        }
        let r = tokio::time::timeout(self.timeout, inv.invoke_async::<Vec<i64>>(&mut conn)).await;
        let out = match r {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                return None;
            }
            Err(_) => {
                self.failed("timed out");
                return None;
            }
        };
        let Some((&charged, per_key)) = out.split_first() else {
            self.failed("empty script reply");
            return None;
        };
        if per_key.len() != 2 * asks.len() {
            self.failed("script reply of the wrong length");
            return None;
        }
        let outcomes = asks
            .iter()
            .zip(per_key.chunks_exact(2))
            .map(|((gcra, _), kv)| match kv {
                [admits, ahead] => gcra.outcome(*admits == 1, u64::try_from(*ahead).unwrap_or(0)),
                _ => gcra.outcome(false, gcra.window_us),
            })
            .collect();
        Some(Decided {
            charged: charged == 1,
            outcomes,
        })
    }

    fn failed(&self, why: &str) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed);
        // Every failure is counted; only some are logged.
        if n.is_power_of_two() || n.is_multiple_of(1000) {
            tracing::warn!(error = why, failures = n + 1, policy = ?self.on_error, "redis rate limiter failed");
        }
    }
}
