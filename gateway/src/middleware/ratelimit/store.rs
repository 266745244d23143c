//! The in-process store of TATs: sharded, each shard a small critical
//! section (never held across an await), bounded in keys. A store owns the
//! clock its TATs are measured on, so it can outlive a config reload.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

use tokio::time::Instant;

use super::gcra::{Gcra, Outcome};

const SHARDS: usize = 16;

/// Longest key kept as it is; a longer one is bounded by [`bounded_key`].
/// A client chooses a header key's length (up to hyper's header limits), so
/// the store's memory is bounded by `max_keys` x about 200 bytes, not by
/// `max_keys` x whatever clients send.
pub const MAX_KEY_BYTES: usize = 128;

/// `key` itself when it is at most `max` bytes long; else its first
/// `min(max / 2, max - 65)` bytes (cut at a character boundary), `#` and
/// the 64 hex digits of its SHA-256: at most `max` bytes (for `max >= 65`),
/// still distinct per key (a client cannot aim a collision at another key's
/// bucket or cache entry), the same on every replica (Redis keys are
/// shared), and starting like the original for whoever reads or purges by
/// prefix. No allocation and no hashing for a short key.
pub fn bounded_key(key: &str, max: usize) -> Cow<'_, str> {
    if key.len() <= max {
        return Cow::Borrowed(key);
    }
    let mut keep = (max / 2).min(max.saturating_sub(65));
    while !key.is_char_boundary(keep) {
        keep -= 1;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(keep + 65);
    out.push_str(key.get(..keep).unwrap_or_default());
    out.push('#');
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    Cow::Owned(out)
}

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

    /// Decides for `key` at `now` (µs) and records the new TAT; a key
    /// longer than [`MAX_KEY_BYTES`] is remembered by [`bounded_key`].
    pub fn decide(&self, gcra: &Gcra, key: &str, now: u64) -> Outcome {
        let key = bounded_key(key, MAX_KEY_BYTES);
        let key = &*key;
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
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
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
    fn long_keys_are_bounded_and_stay_distinct() {
        let long = |c: char, n: usize| format!("hdr:{}", c.to_string().repeat(n));
        let a = long('a', 65_536);
        let b = format!("{}b", &a[..a.len() - 1]);
        let (ba, bb) = (
            bounded_key(&a, MAX_KEY_BYTES),
            bounded_key(&b, MAX_KEY_BYTES),
        );
        assert!(ba.len() <= MAX_KEY_BYTES && bb.len() <= MAX_KEY_BYTES);
        assert_ne!(ba, bb);
        assert!(ba.starts_with("hdr:aaa"));
        assert_eq!(ba, bounded_key(&a, MAX_KEY_BYTES), "deterministic");
        assert!(matches!(
            bounded_key("ip:1.2.3.4", MAX_KEY_BYTES),
            Cow::Borrowed(_)
        ));
        // Multi-byte characters are cut on a boundary.
        let e = "é".repeat(1000);
        assert!(bounded_key(&e, 101).len() <= 101);
        // The store limits each long key on its own, by its bounded form.
        let s = LocalStore::new(1000);
        let g = Gcra::new(1, Duration::from_secs(60));
        assert!(s.decide(&g, &a, 10).allowed);
        assert!(!s.decide(&g, &a, 10).allowed);
        assert!(s.decide(&g, &b, 10).allowed);
        let stored: usize = s
            .shards
            .iter()
            .map(|m| m.lock().unwrap().keys().map(|k| k.len()).sum::<usize>())
            .sum();
        assert!(stored <= 2 * MAX_KEY_BYTES, "{stored}");
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
