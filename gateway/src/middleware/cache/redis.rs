//! The optional shared tier: entries in Redis, read after a local miss and
//! written (in the background) after every local store, so replicas answer
//! each other's misses. Every call is bounded by the configured timeout; a
//! failure is counted and the cache carries on from memory alone. After a
//! few consecutive failures Redis is skipped for a short, growing interval
//! ([`FastFail`]), so an outage does not cost each miss a timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::aio::ConnectionManager;
use tokio::time::Instant;

use super::codec;
use super::store::{path_matches, Entry, MAX_PATH_BYTES};
use crate::config::CacheRedisConfig;
use crate::middleware::ratelimit::bounded_key;
use crate::middleware::redis_conn::FastFail;

/// Keys one `SCAN` step asks for while purging.
const SCAN_COUNT: usize = 500;

/// The Redis tier of a [`super::ResponseCache`].
pub struct RedisTier {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    failures: AtomicU64,
    gate: Arc<FastFail>,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("failures", &self.failures())
            .finish_non_exhaustive()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `*`, `?`, `[`, `]` and `\` escaped for a `SCAN MATCH` pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisTier {
    /// From validated config (connects lazily; must run inside a tokio
    /// runtime).
    pub fn new(cfg: &CacheRedisConfig) -> Result<Self, String> {
        let conn = crate::middleware::redis_conn::lazy_connection(
            &cfg.url,
            cfg.ca_file.as_deref(),
            cfg.timeout,
        )?;
        Ok(Self {
            conn,
            prefix: cfg.prefix.clone(),
            timeout: cfg.timeout,
            failures: AtomicU64::new(0),
            gate: Arc::new(FastFail::new()),
        })
    }

    /// Calls that failed or timed out since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn failed(&self, op: &str, why: &str) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed);
        // Every failure is counted; only some are logged.
        if n.is_power_of_two() || n.is_multiple_of(1000) {
            tracing::warn!(
                error = why,
                op,
                failures = n + 1,
                "redis cache tier failed; serving from memory"
            );
        }
    }

    /// Fast-fail state: whether Redis is used, calls skipped.
    pub fn gate(&self) -> &FastFail {
        &self.gate
    }

    /// `cmd`, bounded by the timeout; `None` at once while Redis is skipped.
    async fn run<T: redis::FromRedisValue>(&self, op: &str, cmd: &redis::Cmd) -> Option<T> {
        self.gate.run(self.call(op, cmd), || self.ping()).await
    }

    /// The background probe while Redis is skipped.
    fn ping(&self) -> impl std::future::Future<Output = bool> + Send + 'static {
        crate::middleware::redis_conn::ping(&self.conn, self.timeout)
    }

    async fn call<T: redis::FromRedisValue>(&self, op: &str, cmd: &redis::Cmd) -> Option<T> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(op, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(op, "timed out");
                None
            }
        }
    }

    fn redis_key(&self, key: &str) -> String {
        // Cache keys are bounded when built (`store::key`).
        format!("{}{key}", self.prefix)
    }

    /// The entry stored under `key` by any replica, aged to now; `None` on
    /// a miss, a failure or a malformed value.
    pub async fn get(&self, key: &str) -> Option<Entry> {
        let v: Option<Vec<u8>> = self
            .run("get", redis::cmd("GET").arg(self.redis_key(key)))
            .await?;
        codec::decode(Bytes::from(v?), Instant::now(), unix_ms())
    }

    /// Writes `entry` under `key` in the background, expiring when the
    /// entry is unusable even stale.
    pub fn put(self: &Arc<Self>, key: Arc<str>, entry: Arc<Entry>) {
        let this = self.clone();
        tokio::spawn(async move {
            let now = Instant::now();
            let life = codec::remaining_life(&entry, now);
            let px = u64::try_from(life.as_millis()).unwrap_or(u64::MAX);
            if px == 0 {
                return;
            }
            let value = codec::encode(&entry, now, unix_ms());
            let mut cmd = redis::cmd("SET");
            cmd.arg(this.redis_key(&key)).arg(value).arg("PX").arg(px);
            let _: Option<()> = this.run("set", &cmd).await;
        });
    }

    /// Deletes `key` in the background (an unsafe request invalidated it).
    pub fn delete(self: &Arc<Self>, key: &str) {
        let this = self.clone();
        let key = self.redis_key(key);
        tokio::spawn(async move {
            let _: Option<u64> = this.run("del", redis::cmd("DEL").arg(key)).await;
        });
    }

    /// Removes the entries whose path matches like
    /// [`super::ResponseCache::purge`]; returns how many, or `None` when
    /// Redis failed part way.
    pub async fn purge(&self, exact: Option<&str>, prefix: Option<&str>) -> Option<usize> {
        let pattern = format!("{}*", glob_escape(&self.prefix));
        // A long path is stored by its bounded form.
        let exact = exact.map(|e| bounded_key(e, MAX_PATH_BYTES));
        let exact = exact.as_deref();
        let mut cursor: u64 = 0;
        let mut n = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, keys): (u64, Vec<Vec<u8>>) = self.run("purge", &scan).await?;
            let doomed: Vec<&Vec<u8>> = keys
                .iter()
                .filter(|k| {
                    std::str::from_utf8(k)
                        .ok()
                        .and_then(|k| k.strip_prefix(&self.prefix))
                        .is_some_and(|k| path_matches(k, exact, prefix))
                })
                .collect();
            if !doomed.is_empty() {
                let mut del = redis::cmd("DEL");
                for k in &doomed {
                    del.arg(k.as_slice());
                }
                let d: u64 = self.run("purge", &del).await?;
                n += usize::try_from(d).unwrap_or(0);
            }
            if next == 0 {
                return Some(n);
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_patterns_match_the_prefix_literally() {
        assert_eq!(glob_escape("gw:cache:"), "gw:cache:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
