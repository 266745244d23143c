//! Prometheus native histograms (`telemetry.native_histograms = true`).
//!
//! The request-duration histogram keeps, beside its classic buckets with the
//! exact SLO edges, a sparse exponential histogram of schema 3: bucket `i`
//! holds durations in `(2^((i-1)/8), 2^(i/8)]` seconds, so any quantile read
//! from it is within one bucket's width (a factor of 2^(1/8), +9.05 %) of the
//! truth, whatever the latency's shape, with no bucket layout to choose.
//!
//! Recording is one atomic add into a dense array (256 buckets from about
//! 1 µs to about 68 min, 2 KiB per series; shorter durations count in the
//! zero bucket, longer ones in the last bucket), plus the count and sum.
//! Prometheus reads native histograms only from its protobuf exposition;
//! [`super::protobuf`] serves it when a scraper asks for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Schema 3: 8 buckets per power of two.
pub const SCHEMA: i32 = 3;

/// Durations at or below this (2^-20 s, about 0.95 µs) count in the zero
/// bucket.
pub const ZERO_THRESHOLD: f64 = 1.0 / 1048576.0;

/// Index of the first bucket: its lower bound is the zero threshold.
const MIN_INDEX: i32 = -20 * 8 + 1;
/// Buckets in the dense array; the last one's upper bound is 2^12 s.
const BUCKETS: usize = 256;
const MAX_INDEX: i32 = MIN_INDEX + BUCKETS as i32 - 1;

/// `2^(k/8 - 1)` for k in 0..8: the bucket bounds of one power of two in
/// the range of a frexp fraction, [0.5, 1).
const BOUNDS: [f64; 8] = [
    0.5,
    0.545_253_866_332_628_8,
    0.594_603_557_501_360_5,
    0.648_419_777_325_504_8,
    0.707_106_781_186_547_5,
    0.771_105_412_703_970_4,
    0.840_896_415_253_714_4,
    0.917_004_043_204_671_1,
];

/// The schema-3 bucket index of `v` (> 0, finite, normal): the `i` with
/// `2^((i-1)/8) < v <= 2^(i/8)`, as the Go client computes it from frexp.
pub fn bucket_index(v: f64) -> i32 {
    let bits = v.to_bits();
    // frexp: v = frac * 2^exp with frac in [0.5, 1).
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1022;
    let frac = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1022u64 << 52));
    // The smallest k with BOUNDS[k] >= frac (8 when frac is above them all).
    let k = BOUNDS.partition_point(|b| *b < frac) as i32;
    k + (exp - 1) * 8
}

/// The upper bound of bucket `i`.
pub fn upper_bound(i: i32) -> f64 {
    2f64.powf(f64::from(i) / 8.0)
}

/// One native histogram series.
#[derive(Debug)]
pub struct NativeHistogram {
    zero: AtomicU64,
    buckets: Box<[AtomicU64]>,
    /// Sum of observations, f64 bits.
    sum: AtomicU64,
}

impl Default for NativeHistogram {
    fn default() -> Self {
        Self {
            zero: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }
}

/// A consistent-enough copy for one scrape: the count is the sum of the
/// buckets copied, so it always matches them.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Observations in all.
    pub count: u64,
    /// Their sum, seconds.
    pub sum: f64,
    /// Observations at or below [`ZERO_THRESHOLD`].
    pub zero_count: u64,
    /// Runs of populated buckets: (offset, length) as the protobuf's
    /// `BucketSpan`s: the first offset is the absolute index of its first
    /// bucket, each later one the gap after the previous run.
    pub spans: Vec<(i32, u32)>,
    /// Bucket counts in span order, each as the difference from the
    /// previous bucket's count (the first from 0).
    pub deltas: Vec<i64>,
}

impl NativeHistogram {
    /// Records one duration in seconds.
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        if v <= ZERO_THRESHOLD {
            self.zero.fetch_add(1, Ordering::Relaxed);
        } else {
            let i = if v.is_finite() {
                bucket_index(v).clamp(MIN_INDEX, MAX_INDEX)
            } else {
                MAX_INDEX
            };
            if let Some(b) = self.buckets.get((i - MIN_INDEX) as usize) {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        let add = if v.is_finite() { v.max(0.0) } else { 0.0 };
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some((f64::from_bits(s) + add).to_bits())
            });
    }

    /// The series as the exposition needs it.
    pub fn snapshot(&self) -> Snapshot {
        let zero_count = self.zero.load(Ordering::Relaxed);
        let mut count = zero_count;
        let mut spans: Vec<(i32, u32)> = Vec::new();
        let mut deltas = Vec::new();
        let (mut prev_count, mut prev_end): (i64, Option<i32>) = (0, None);
        for (k, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            count = count.saturating_add(n);
            let i = MIN_INDEX + k as i32;
            match (prev_end, spans.last_mut()) {
                // Adjacent to the previous bucket: the run grows.
                (Some(end), Some(last)) if end + 1 == i => last.1 += 1,
                (Some(end), _) => spans.push((i - end - 1, 1)),
                (None, _) => spans.push((i, 1)),
            }
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            deltas.push(n.saturating_sub(prev_count));
            prev_count = n;
            prev_end = Some(i);
        }
        Snapshot {
            count,
            sum: f64::from_bits(self.sum.load(Ordering::Relaxed)),
            zero_count,
            spans,
            deltas,
        }
    }
}

/// A series' labels: names and values, in the classic series' order.
pub type Labels = Vec<(&'static str, String)>;

/// Every native series of the request-duration family, by label set.
#[derive(Debug, Default)]
pub struct NativeFamily {
    series: Mutex<Vec<(Labels, Arc<NativeHistogram>)>>,
}

impl NativeFamily {
    /// The series for `labels`, created on first use (once per route,
    /// method and status class: callers cache the handle).
    pub fn series(&self, labels: Labels) -> Arc<NativeHistogram> {
        let mut all = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, h)) = all.iter().find(|(l, _)| *l == labels) {
            return h.clone();
        }
        let h = Arc::new(NativeHistogram::default());
        all.push((labels, h.clone()));
        h
    }

    /// Each series' labels and snapshot.
    pub fn snapshots(&self) -> Vec<(Labels, Snapshot)> {
        let all = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        all.iter().map(|(l, h)| (l.clone(), h.snapshot())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_index_matches_the_schema_definition() {
        // Powers of two are the upper bound of their bucket.
        assert_eq!(bucket_index(1.0), 0);
        assert_eq!(bucket_index(2.0), 8);
        assert_eq!(bucket_index(0.5), -8);
        // Just above a power of two: the next bucket.
        assert_eq!(bucket_index(1.000_001), 1);
        for v in [1e-6, 3.3e-4, 0.0123, 0.35, 0.65, 1.7, 42.0, 3000.0] {
            let i = bucket_index(v);
            assert!(
                upper_bound(i - 1) < v && v <= upper_bound(i) * (1.0 + 1e-12),
                "{v} in bucket {i}: ({}, {}]",
                upper_bound(i - 1),
                upper_bound(i)
            );
        }
    }

    #[test]
    fn snapshot_spans_and_deltas_describe_the_counts() {
        let h = NativeHistogram::default();
        // Buckets 0 (1.0), 1 (1.05), 1 again, then 8 (2.0) after a gap; and
        // one in the zero bucket.
        for v in [1.0, 1.05, 1.05, 2.0, 1e-9] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.zero_count, 1);
        assert!((s.sum - (1.0 + 1.05 + 1.05 + 2.0 + 1e-9)).abs() < 1e-9);
        // Run [0, 1] then a gap of 6 (buckets 2..=7) and run [8].
        assert_eq!(s.spans, vec![(0, 2), (6, 1)]);
        // Counts 1, 2, 1 as deltas.
        assert_eq!(s.deltas, vec![1, 1, -1]);
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let h = NativeHistogram::default();
        h.observe(1e9);
        h.observe(f64::INFINITY);
        h.observe(f64::NAN);
        h.observe(-1.0);
        let s = h.snapshot();
        assert_eq!(s.count, 3, "NaN is dropped; -1 counts as zero");
        assert_eq!(s.zero_count, 1);
        assert_eq!(s.spans, vec![(MAX_INDEX, 1)]);
        assert_eq!(s.deltas, vec![2]);
    }
}
