//! The run-time sets of faults and latency rules, and how a request picks from them.
//!
//! Both sets are almost always empty, so each keeps an atomic count that lets a plain
//! request skip the lock entirely. Both are bounded: adding past the cap drops the oldest.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use super::options::{Fault, LatencyRule};

/// Most faults kept at once.
pub const MAX_FAULTS: usize = 64;

/// Most latency rules kept at once.
pub const MAX_LATENCY_RULES: usize = 256;

/// The active faults.
#[derive(Debug, Default)]
pub(crate) struct FaultSet {
    len: AtomicUsize,
    faults: RwLock<Vec<Fault>>,
}

impl FaultSet {
    /// Adds a fault, dropping expired ones and, past [`MAX_FAULTS`], the oldest.
    pub(crate) fn add(&self, fault: Fault) {
        let now = Instant::now();
        let mut faults = self.faults.write().unwrap_or_else(PoisonError::into_inner);
        faults.retain(|f| f.is_active(now));
        if faults.len() >= MAX_FAULTS {
            faults.remove(0);
        }
        faults.push(fault);
        self.len.store(faults.len(), Relaxed);
    }

    /// Removes every fault.
    pub(crate) fn clear(&self) {
        let mut faults = self.faults.write().unwrap_or_else(PoisonError::into_inner);
        faults.clear();
        self.len.store(0, Relaxed);
    }

    /// The faults still active.
    pub(crate) fn list(&self) -> Vec<Fault> {
        let now = Instant::now();
        let faults = self.faults.read().unwrap_or_else(PoisonError::into_inner);
        faults
            .iter()
            .filter(|f| f.is_active(now))
            .cloned()
            .collect()
    }

    /// The active faults that apply to `path`, in the order they were added.
    pub(crate) fn matching(&self, path: &str) -> Vec<Fault> {
        if self.len.load(Relaxed) == 0 {
            return Vec::new();
        }
        let now = Instant::now();
        let mut expired = false;
        let matching = {
            let faults = self.faults.read().unwrap_or_else(PoisonError::into_inner);
            faults
                .iter()
                .filter(|f| {
                    let active = f.is_active(now);
                    expired |= !active;
                    active && path.starts_with(&f.path_prefix)
                })
                .cloned()
                .collect()
        };
        if expired {
            let mut faults = self.faults.write().unwrap_or_else(PoisonError::into_inner);
            faults.retain(|f| f.is_active(now));
            self.len.store(faults.len(), Relaxed);
        }
        matching
    }
}

/// The latency rules.
#[derive(Debug, Default)]
pub(crate) struct LatencySet {
    len: AtomicUsize,
    rules: RwLock<Vec<LatencyRule>>,
}

impl LatencySet {
    /// Adds a rule, replacing one with the same prefix and, past [`MAX_LATENCY_RULES`],
    /// the oldest.
    pub(crate) fn set(&self, rule: LatencyRule) {
        let mut rules = self.rules.write().unwrap_or_else(PoisonError::into_inner);
        rules.retain(|r| r.path_prefix != rule.path_prefix);
        if rules.len() >= MAX_LATENCY_RULES {
            rules.remove(0);
        }
        rules.push(rule);
        self.len.store(rules.len(), Relaxed);
    }

    /// Removes every rule.
    pub(crate) fn clear(&self) {
        let mut rules = self.rules.write().unwrap_or_else(PoisonError::into_inner);
        rules.clear();
        self.len.store(0, Relaxed);
    }

    /// The rules, in the order they were set.
    pub(crate) fn list(&self) -> Vec<LatencyRule> {
        self.rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A delay drawn from the longest rule matching `path`, if any.
    pub(crate) fn sample(&self, path: &str) -> Option<Duration> {
        if self.len.load(Relaxed) == 0 {
            return None;
        }
        let rules = self.rules.read().unwrap_or_else(PoisonError::into_inner);
        rules
            .iter()
            .filter(|r| path.starts_with(&r.path_prefix))
            .max_by_key(|r| r.path_prefix.len())
            .map(|r| r.dist.sample())
    }
}
