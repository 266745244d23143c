//! The in-process store of TATs: sharded, each shard a small critical
//! section (never held across an await), bounded in keys. A store owns the
//! clock its TATs are measured on, so it can outlive a config reload.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

use super::gcra::{Gcra, Outcome};

const SHARDS: usize = 16;

/// One shard: TATs by key.
type Shard = Mutex<HashMap<Box<str>, u64>>;

/// TATs by key, at most `max_keys` of them.
#[derive(Debug)]
pub struct LocalStore {
    shards: Box<[Shard]>,
    per_shard: usize,
    epoch: Instant,
}

impl LocalStore {
    /// A store remembering at most `max_keys` keys (at least one per shard).
    pub fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (max_keys / SHARDS).max(1),
            epoch: Instant::now(),
        }
    }

    /// Now on this store's clock (µs since it was created).
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX / 4)
    }

    /// Decides for `key` at `now` (µs) and records the new TAT.
    pub fn decide(&self, gcra: &Gcra, key: &str, now: u64) -> Outcome {
        let idx = shard_of(key) % self.shards.len().max(1);
        let Some(shard) = self.shards.get(idx) else {
            return gcra.decide(0, now).0;
        };
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tat) = map.get_mut(key) {
            let (o, next) = gcra.decide(*tat, now);
            *tat = next;
            return o;
        }
        let (o, next) = gcra.decide(0, now);
        if map.len() >= self.per_shard {
            // A TAT in the past is the same as no entry: drop those first.
            map.retain(|_, tat| *tat > now);
            if map.len() >= self.per_shard {
                // Still full of live keys: forget the one closest to expiry
                // (it is the one that would have been allowed soonest).
                if let Some(k) = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) {
                    map.remove(&k);
                }
            }
        }
        map.insert(Box::from(key), next);
        o
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn shard_of(key: &str) -> usize {
    // FNV-1a: cheap and good enough to spread keys over shards.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    usize::try_from(h >> 32).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bounded_in_keys() {
        let s = LocalStore::new(64);
        let g = Gcra::new(1, Duration::from_secs(60));
        for i in 0..10_000 {
            assert!(s.decide(&g, &format!("k{i}"), 1_000).allowed);
        }
        assert!(s.len() <= 64, "{}", s.len());
    }

    #[test]
    fn keys_are_independent() {
        let s = LocalStore::new(1000);
        let g = Gcra::new(2, Duration::from_secs(1));
        assert!(s.decide(&g, "a", 10).allowed);
        assert!(s.decide(&g, "a", 10).allowed);
        assert!(!s.decide(&g, "a", 10).allowed);
        assert!(s.decide(&g, "b", 10).allowed);
    }
}
