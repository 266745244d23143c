//! The in-process store of TATs: sharded, each shard a small critical
//! section (never held across an await), bounded in keys. A store owns the
//! clock its TATs are measured on, so it can outlive a config reload.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};

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

/// TATs by key.
type Map = HashMap<Box<str>, u64>;

/// One shard: TATs by key.
type Shard = Mutex<Map>;

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
        let mut held = self.lock(&key);
        held.decide(gcra, &key, now, true).0
    }

    /// The shard of `key` (already bounded), locked. Never held across an
    /// await.
    pub(super) fn lock(&self, key: &str) -> Held<'_> {
        let idx = shard_of(key) % self.shards.len().max(1);
        Held {
            map: self
                .shards
                .get(idx)
                .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner)),
            per_shard: self.per_shard,
        }
    }

    /// Undoes a charge [`Held::decide`] recorded for `key` (bounded): puts
    /// back `before` when the TAT is still `after`, the one that charge
    /// stored. When another request has charged the key since, the TAT is
    /// left as it is: that request was decided with this charge counted,
    /// and taking it back now could admit more than the limit.
    pub(super) fn refund(&self, key: &str, before: u64, after: u64) {
        let mut held = self.lock(key);
        let Some(map) = held.map.as_mut() else {
            return;
        };
        if let Some(tat) = map.get_mut(key) {
            if *tat == after {
                *tat = before;
            }
        }
    }

    /// Capacity in keys (what [`Self::new`] was given, rounded to shards).
    pub fn max_keys(&self) -> usize {
        self.per_shard * self.shards.len()
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

/// One locked shard of a store (or none, when the store has no shard:
/// then every key is new).
pub(super) struct Held<'a> {
    map: Option<MutexGuard<'a, Map>>,
    per_shard: usize,
}

impl Held<'_> {
    /// Decides for `key` (bounded) at `now`. With `commit`, a request that
    /// passes is charged: the new TAT is stored and the TAT before it is
    /// returned (for [`LocalStore::refund`]). Without, nothing is stored
    /// and the outcome is a [`Gcra::peek`].
    pub(super) fn decide(
        &mut self,
        gcra: &Gcra,
        key: &str,
        now: u64,
        commit: bool,
    ) -> (Outcome, Option<(u64, u64)>) {
        let Some(map) = self.map.as_mut() else {
            return if commit {
                (gcra.decide(0, now).0, None)
            } else {
                (gcra.peek(0, now), None)
            };
        };
        let tat = map.get(key).copied();
        if !commit {
            return (gcra.peek(tat.unwrap_or(0), now), None);
        }
        let (o, next) = gcra.decide(tat.unwrap_or(0), now);
        if !o.allowed {
            // A refusal stores nothing new (`decide` returned the TAT as
            // it was, at least now).
            return (o, None);
        }
        if let Some(before) = tat {
            if let Some(t) = map.get_mut(key) {
                *t = next;
            }
            return (o, Some((before, next)));
        }
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
        (o, Some((0, next)))
    }
}

/// The shards one request's policies hold at once, as a chain of stack
/// frames (no allocation): see [`with_locked`].
pub(super) trait Chain {
    /// [`Held::decide`] on the shard of the policy at `index`; `None` when
    /// this chain does not hold it.
    fn decide(
        &mut self,
        index: usize,
        gcra: &Gcra,
        key: &str,
        now: u64,
        commit: bool,
    ) -> Option<(Outcome, Option<(u64, u64)>)>;
}

impl Chain for () {
    fn decide(
        &mut self,
        _: usize,
        _: &Gcra,
        _: &str,
        _: u64,
        _: bool,
    ) -> Option<(Outcome, Option<(u64, u64)>)> {
        None
    }
}

struct Link<'g, 'r> {
    index: usize,
    held: Held<'g>,
    rest: &'r mut dyn Chain,
}

impl Chain for Link<'_, '_> {
    fn decide(
        &mut self,
        index: usize,
        gcra: &Gcra,
        key: &str,
        now: u64,
        commit: bool,
    ) -> Option<(Outcome, Option<(u64, u64)>)> {
        if index == self.index {
            Some(self.held.decide(gcra, key, now, commit))
        } else {
            self.rest.decide(index, gcra, key, now, commit)
        }
    }
}

/// Locks the shard of every `(index, store, key)` that `items` yields, in
/// that order, then runs `f` with all of them held and releases them. One
/// request's decision over all its policies is thereby one critical
/// section. Deadlock-free when every caller yields the stores in one
/// global order and never the same store twice (the route sorts its
/// policies by store address, and no two of its policies share a store).
/// The locks are frames of this recursion, one per policy: nothing is
/// allocated.
pub(super) fn with_locked<'a, R>(
    items: &mut dyn Iterator<Item = (usize, &'a LocalStore, &'a str)>,
    chain: &mut dyn Chain,
    f: &mut dyn FnMut(&mut dyn Chain) -> R,
) -> R {
    match items.next() {
        None => f(chain),
        Some((index, store, key)) => {
            let mut link = Link {
                index,
                held: store.lock(key),
                rest: chain,
            };
            with_locked(items, &mut link, f)
        }
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

#[cfg(test)]
mod atomic_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::time::Duration;

    /// Decides `items` (index, store, key) under one critical section.
    fn all(
        items: &[(usize, &LocalStore, &str)],
        gcra: &Gcra,
        now: u64,
        commit: bool,
    ) -> Vec<(Outcome, Option<(u64, u64)>)> {
        let mut it = items.iter().copied();
        with_locked(&mut it, &mut (), &mut |chain| {
            items
                .iter()
                .map(|(i, _, k)| chain.decide(*i, gcra, k, now, commit).unwrap())
                .collect()
        })
    }

    #[test]
    fn a_look_stores_nothing_and_a_charge_can_be_refunded() {
        let (a, b) = (LocalStore::new(100), LocalStore::new(100));
        let g = Gcra::new(2, Duration::from_secs(10));
        let items = [(0, &a, "k"), (1, &b, "k")];
        for _ in 0..5 {
            let out = all(&items, &g, 1_000, false);
            assert!(out
                .iter()
                .all(|(o, c)| o.allowed && o.remaining == 2 && c.is_none()));
        }
        assert!(a.is_empty() && b.is_empty());
        let out = all(&items, &g, 1_000, true);
        assert!(out.iter().all(|(o, _)| o.allowed && o.remaining == 1));
        let (before, after) = out[0].1.unwrap();
        assert_eq!((before, after), (0, 5_001_000));
        // Refunded while untouched: as if never charged.
        a.refund("k", before, after);
        assert_eq!(all(&items, &g, 1_000, false)[0].0.remaining, 2);
        assert_eq!(all(&items, &g, 1_000, false)[1].0.remaining, 1);
        // Charged again, then by another request: the refund of the first
        // charge leaves the TAT alone (never under-counts).
        let first = all(&items[..1], &g, 1_000, true)[0].1.unwrap();
        assert!(all(&items[..1], &g, 1_000, true)[0].0.allowed);
        a.refund("k", first.0, first.1);
        assert!(!all(&items[..1], &g, 1_000, true)[0].0.allowed);
    }

    #[test]
    fn a_refused_charge_stores_nothing() {
        let a = LocalStore::new(100);
        let g = Gcra::new(1, Duration::from_secs(10));
        assert!(a.decide(&g, "k", 0).allowed);
        let out = all(&[(0, &a, "k")], &g, 0, true);
        assert!(!out[0].0.allowed);
        assert_eq!(out[0].1, None);
        assert!(a.decide(&g, "k", 10_000_000).allowed);
    }
}
