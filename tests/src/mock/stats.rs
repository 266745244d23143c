//! Request counters: a total and one counter per distinct path, bounded.
//!
//! Counting sits on every request, so it takes no global lock: the per-path map is split
//! into shards by path hash, a known path only takes its shard's read lock and bumps an
//! atomic, and only the first request of a new path takes a write lock. Past
//! [`MAX_PATHS`] distinct paths, new paths are counted together as `"other"`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{PoisonError, RwLock};

/// Most distinct paths counted one by one.
pub const MAX_PATHS: usize = 1024;

const SHARDS: usize = 16;

type Shard = RwLock<HashMap<Box<str>, AtomicU64>>;

/// Counts of the requests a mock upstream received (control requests excluded).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    total: AtomicU64,
    distinct: AtomicUsize,
    other: AtomicU64,
    hasher: RandomState,
    shards: [Shard; SHARDS],
}

impl Stats {
    /// Counts one request for `path`.
    pub(crate) fn record(&self, path: &str) {
        self.total.fetch_add(1, Relaxed);
        let shard = self.shard(path);
        if let Some(count) = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
        {
            count.fetch_add(1, Relaxed);
            return;
        }
        if self.distinct.load(Relaxed) >= MAX_PATHS {
            self.other.fetch_add(1, Relaxed);
            return;
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get(path) {
            count.fetch_add(1, Relaxed);
        } else if self.distinct.fetch_add(1, Relaxed) < MAX_PATHS {
            map.insert(path.into(), AtomicU64::new(1));
        } else {
            self.distinct.fetch_sub(1, Relaxed);
            self.other.fetch_add(1, Relaxed);
        }
    }

    /// Requests counted since start or the last reset.
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// Requests whose path starts with `prefix` (only paths counted one by one).
    pub(crate) fn hits(&self, prefix: &str) -> u64 {
        if prefix.is_empty() {
            return self.total();
        }
        self.shards
            .iter()
            .map(|shard| {
                let map = shard.read().unwrap_or_else(PoisonError::into_inner);
                map.iter()
                    .filter(|(path, _)| path.starts_with(prefix))
                    .map(|(_, count)| count.load(Relaxed))
                    .sum::<u64>()
            })
            .sum()
    }

    /// Per-path counts, sorted by path, with `"other"` when paths overflowed.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for shard in &self.shards {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            out.extend(
                map.iter()
                    .map(|(path, count)| (path.to_string(), count.load(Relaxed))),
            );
        }
        let other = self.other.load(Relaxed);
        if other > 0 {
            out.insert("other".to_owned(), other);
        }
        out
    }

    /// Forgets every count.
    pub(crate) fn reset(&self) {
        for shard in &self.shards {
            shard
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
        self.distinct.store(0, Relaxed);
        self.other.store(0, Relaxed);
        self.total.store(0, Relaxed);
    }

    fn shard(&self, path: &str) -> &Shard {
        // The modulo keeps the index below SHARDS, so the truncation loses nothing.
        #[allow(clippy::cast_possible_truncation)]
        let index = (self.hasher.hash_one(path) % SHARDS as u64) as usize;
        &self.shards[index]
    }
}
