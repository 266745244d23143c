//! A window of latency samples: a log-scale histogram of atomic counters,
//! so recording is two relaxed adds and no lock; the quantile is read
//! (and the window emptied) once per window by the one holder of the
//! controller's lock.
//!
//! Buckets: exact below 16 µs, then 8 per power of two (at most 12.5 %
//! wide; a quantile is reported at its bucket's midpoint), up to 2^36 µs
//! (19 hours); longer samples count in the last bucket.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const SUB: usize = 8;
const EXACT: u64 = 2 * SUB as u64;
const MAX_LOG2: u32 = 36;
/// Number of buckets.
pub const BUCKETS: usize = (MAX_LOG2 as usize - 2) * SUB + SUB;

fn index(us: u64) -> usize {
    if us < EXACT {
        return us as usize;
    }
    let log = 63 - us.leading_zeros();
    if log > MAX_LOG2 {
        return BUCKETS - 1;
    }
    let shift = log - 3;
    // The top four bits: 8..=15.
    let mant = (us >> shift) as usize;
    (log as usize - 3) * SUB + mant
}

/// The midpoint of bucket `i`, in µs.
fn midpoint(i: usize) -> f64 {
    if (i as u64) < EXACT {
        return i as f64;
    }
    let shift = i / SUB - 1;
    let lower = ((i % SUB + SUB) as u64) << shift;
    lower as f64 + (1u64 << shift) as f64 / 2.0
}

/// The samples of the current window.
#[derive(Debug)]
pub struct LatencyWindow {
    buckets: Box<[AtomicU32]>,
    count: AtomicU64,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            count: AtomicU64::new(0),
        }
    }
}

impl LatencyWindow {
    /// Records one sample.
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(b) = self.buckets.get(index(us)) {
            b.fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
    }

    /// Samples recorded since the window was last taken (approximate
    /// while other threads record).
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Empties the window; returns its `q` quantile (`q` in (0, 1)) and
    /// its number of samples, `None` when it had none. A sample recorded
    /// while this runs lands in this window or the next.
    pub fn take(&self, q: f64) -> Option<(Duration, u64)> {
        self.count.swap(0, Relaxed);
        let counts: Vec<u32> = self.buckets.iter().map(|b| b.swap(0, Relaxed)).collect();
        let n: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        if n == 0 {
            return None;
        }
        // The smallest value with at least ceil(q × n) samples at or under it.
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0u64;
        for (i, &c) in counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some((Duration::from_secs_f64(midpoint(i) / 1e6), n));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_monotonic() {
        let mut last = 0;
        for us in 0..200_000u64 {
            let i = index(us);
            assert!(i == last || i == last + 1, "{us}: {i} after {last}");
            last = i;
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        assert!(index(1 << MAX_LOG2) < BUCKETS);
    }

    #[test]
    fn quantiles_are_within_the_bucket_width() {
        let w = LatencyWindow::default();
        assert_eq!(w.take(0.95), None);
        for ms in 1..=100u64 {
            w.record(Duration::from_millis(ms));
        }
        assert_eq!(w.count(), 100);
        let (p95, n) = w.take(0.95).unwrap();
        assert_eq!(n, 100);
        let err = (p95.as_secs_f64() * 1000.0 - 95.0).abs() / 95.0;
        assert!(err < 0.07, "{p95:?}");
        // Taken: empty again.
        assert_eq!(w.take(0.95), None);
        w.record(Duration::from_micros(3));
        assert_eq!(w.take(0.5).unwrap().0, Duration::from_micros(3));
    }
}
