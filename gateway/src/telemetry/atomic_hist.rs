//! A lock-free classic histogram for the request path.
//!
//! prometheus-client's `Histogram` takes a mutex and scans its bounds
//! linearly on every observation, and `HistogramWithExemplars` adds an
//! `RwLock` around that; the gateway observes three or four of them per
//! request, and every worker thread serving a route contends on them. This
//! one keeps a relaxed `AtomicU64` per bucket and the sum as `f64` bits
//! updated with a compare-and-swap loop, and finds the bucket by linear
//! scan (binary search from 35 bounds on). It encodes through
//! prometheus-client's own [`MetricEncoder::encode_histogram`], so a
//! registry renders it exactly as it renders a `Histogram` with the same
//! bounds and observations: same `le` edges (inclusive), same `_sum` (the
//! same `f64` additions; under concurrency in another order, as with the
//! mutex), same `_count`.
//!
//! `_count` is not kept: it is the sum of the bucket counts, read at
//! encode time, so it always equals the `+Inf` bucket. A scrape reads the
//! buckets and the sum one at a time, not as one snapshot: an observation
//! racing with it may be in its bucket but not yet in the sum (the next
//! scrape has both).
//!
//! Exemplars (the latest trace id per bucket, as `HistogramWithExemplars`
//! keeps them) are optional; an observation touches the bucket's exemplar
//! mutex only when it carries a trace id. prometheus-client does not let
//! other types build its `Exemplar`s, so the encoder cannot print them
//! from here: [`AtomicHistogram::exemplars`] hands them to the caller (see
//! `Metrics::encode_families`).

use std::iter::once;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Below this many bounds a bucket is found by linear scan (client_golang
/// uses 35 too).
const LINEAR_MAX: usize = 35;

/// A classic histogram with atomic buckets; clones share the series.
#[derive(Debug, Clone)]
pub struct AtomicHistogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// The finite upper bounds, in the order given; `+Inf` is implicit.
    bounds: Box<[f64]>,
    /// Whether to find buckets by binary search: `bounds` ascend and are
    /// many (see [`AtomicHistogram::bucket`]).
    binary: bool,
    /// Per bucket (not cumulative), `bounds.len() + 1` of them.
    counts: Box<[AtomicU64]>,
    /// The sum of the observations, as `f64` bits.
    sum: AtomicU64,
    /// Per bucket, its latest exemplar; empty when exemplars are off.
    exemplars: Box<[Mutex<Option<Exemplar>>]>,
}

/// An observation's trace id and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// The trace id.
    pub trace_id: String,
    /// The observed value.
    pub value: f64,
}

impl AtomicHistogram {
    /// A histogram with these upper bounds (non-finite ones are dropped, as
    /// `Histogram::new` does) and a `+Inf` bucket.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        Self::build(bounds, false)
    }

    /// The same, keeping the latest exemplar of each bucket.
    pub fn with_exemplars(bounds: impl IntoIterator<Item = f64>) -> Self {
        Self::build(bounds, true)
    }

    fn build(bounds: impl IntoIterator<Item = f64>, exemplars: bool) -> Self {
        let bounds: Box<[f64]> = bounds.into_iter().filter(|b| b.is_finite()).collect();
        let n = bounds.len() + 1;
        Self(Arc::new(Inner {
            binary: bounds.len() >= LINEAR_MAX && bounds.windows(2).all(|w| w[0] <= w[1]),
            counts: (0..n).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0.0f64.to_bits()),
            exemplars: (0..if exemplars { n } else { 0 })
                .map(|_| Mutex::new(None))
                .collect(),
            bounds,
        }))
    }

    /// The bucket of `v`: the first whose bound is `>= v` (`le` is
    /// inclusive), else `+Inf`; NaN goes to `+Inf`, as in prometheus-client.
    ///
    /// A linear scan below [`LINEAR_MAX`] bounds, as the Go client does:
    /// the gateway's bounds are 11 to about 20 and most observations fall
    /// in the first few buckets, where the scan stops after a comparison or
    /// three while a binary search always takes log2(n) steps (callgrind:
    /// ~110 instructions per request for three `partition_point`s).
    #[inline]
    fn bucket(&self, v: f64) -> usize {
        let b = &self.0.bounds;
        if v.is_nan() {
            b.len()
        } else if self.0.binary {
            b.partition_point(|x| *x < v)
        } else {
            b.iter().position(|x| *x >= v).unwrap_or(b.len())
        }
    }

    /// Records `v`; returns its bucket.
    #[inline]
    pub fn observe(&self, v: f64) -> usize {
        let i = self.bucket(v);
        if let Some(c) = self.0.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
        // The closure always returns Some: the update cannot fail.
        let _ = self.0.sum.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + v).to_bits())
        });
        i
    }

    /// Records `v`, and `trace_id` as its bucket's exemplar when given
    /// (and exemplars are on).
    #[inline]
    pub fn observe_with_exemplar(&self, v: f64, trace_id: Option<&str>) {
        let i = self.observe(v);
        if let (Some(t), Some(slot)) = (trace_id, self.0.exemplars.get(i)) {
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            match slot.as_mut() {
                // Reuses the buffer: no allocation once a bucket has one.
                Some(e) => {
                    e.trace_id.clear();
                    e.trace_id.push_str(t);
                    e.value = v;
                }
                None => {
                    *slot = Some(Exemplar {
                        trace_id: t.to_owned(),
                        value: v,
                    })
                }
            }
        }
    }

    /// The buckets' latest exemplars, by bucket index.
    pub fn exemplars(&self) -> Vec<(usize, Exemplar)> {
        self.0
            .exemplars
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| {
                let slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
                slot.clone().map(|e| (i, e))
            })
            .collect()
    }

    /// The sum of the observations.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum.load(Relaxed))
    }

    /// `(upper bound, count)` per bucket, not cumulative, `+Inf` last.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.0
            .bounds
            .iter()
            .copied()
            .chain(once(f64::INFINITY))
            .zip(self.0.counts.iter())
            .map(|(b, c)| (b, c.load(Relaxed)))
            .collect()
    }

    /// The number of observations: the sum of the bucket counts.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .fold(0u64, |n, c| n.saturating_add(c.load(Relaxed)))
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets = self.buckets();
        // The count from the same reads as the buckets: `_count` is the
        // `+Inf` bucket.
        let count = buckets.iter().fold(0u64, |n, b| n.saturating_add(b.1));
        encoder.encode_histogram::<NoLabelSet>(self.sum(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    fn text(name: &str, m: impl EncodeMetric + Send + Sync + std::fmt::Debug + 'static) -> String {
        let mut r = Registry::default();
        r.register(name, "Help text", m);
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &r).unwrap_or_default();
        s
    }

    #[test]
    fn le_is_inclusive_at_the_exact_edges() {
        let h = AtomicHistogram::new([0.1, 0.35, 0.65]);
        for v in [0.1, 0.35, 0.65] {
            h.observe(v);
        }
        // Just above an edge goes to the next bucket.
        h.observe(0.1f64.next_up());
        h.observe(0.65f64.next_up());
        h.observe(f64::NEG_INFINITY);
        h.observe(f64::INFINITY);
        assert_eq!(
            h.buckets(),
            vec![(0.1, 2), (0.35, 2), (0.65, 1), (f64::INFINITY, 2)]
        );
        assert_eq!(h.count(), 7);
    }

    #[test]
    fn binary_search_places_like_the_linear_scan() {
        let bounds: Vec<f64> = (1..=60).map(|i| f64::from(i) * 0.5).collect();
        let many = AtomicHistogram::new(bounds.iter().copied());
        assert!(many.0.binary);
        for i in 0..=130 {
            let v = f64::from(i) * 0.25;
            let want = bounds.iter().position(|b| *b >= v).unwrap_or(bounds.len());
            assert_eq!(many.observe(v), want, "{v}");
            assert_eq!(
                many.observe(v.next_up()),
                bounds
                    .iter()
                    .position(|b| *b >= v.next_up())
                    .unwrap_or(bounds.len())
            );
        }
        assert!(!AtomicHistogram::new([1.0, 2.0]).0.binary);
    }

    #[test]
    fn nan_counts_in_inf_as_prometheus_client_does() {
        let h = AtomicHistogram::new([1.0]);
        assert_eq!(h.observe(f64::NAN), 1);
        assert_eq!(h.count(), 1);
        assert!(h.sum().is_nan());
    }

    #[test]
    fn unsorted_bounds_place_like_a_linear_scan() {
        let h = AtomicHistogram::new([0.5, 0.1, f64::INFINITY, f64::NAN, 2.0]);
        assert_eq!(
            h.buckets().len(),
            4,
            "non-finite bounds dropped, +Inf added"
        );
        assert_eq!(h.observe(0.05), 0);
        assert_eq!(h.observe(0.3), 0);
        assert_eq!(h.observe(1.0), 2);
        assert_eq!(h.observe(3.0), 3);
    }

    #[test]
    fn sum_and_count() {
        let h = AtomicHistogram::new([1.0, 2.0]);
        let vs = [0.5, 1.5, 2.5, 0.25, 1.0];
        for v in vs {
            h.observe(v);
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.sum(), vs.iter().fold(0.0, |a, b| a + b));
        assert_eq!(h.buckets(), vec![(1.0, 3), (2.0, 1), (f64::INFINITY, 1)]);
    }

    #[test]
    fn concurrent_observes_add_up_exactly() {
        let h = AtomicHistogram::with_exemplars([1.0, 2.0, 4.0]);
        const THREADS: usize = 4;
        const PER: u64 = 20_000;
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let h = h.clone();
                s.spawn(move || {
                    for i in 0..PER {
                        // Integers and halves: every partial sum is exact
                        // in f64, whatever the interleaving.
                        let v = (i % 5) as f64 * 0.5 + t as f64;
                        h.observe_with_exemplar(v, (i % 7 == 0).then_some("ab"));
                    }
                });
            }
        });
        let mut want = AtomicHistogram::new([1.0, 2.0, 4.0]);
        let mut sum = 0.0;
        for t in 0..THREADS {
            for i in 0..PER {
                let v = (i % 5) as f64 * 0.5 + t as f64;
                sum += v;
                want.observe(v);
            }
        }
        assert_eq!(h.count(), THREADS as u64 * PER);
        assert_eq!(h.buckets(), want.buckets());
        assert_eq!(h.sum(), sum);
        want = h.clone();
        assert_eq!(want.count(), h.count(), "clones share the series");
    }

    #[test]
    fn exemplar_only_when_given() {
        let h = AtomicHistogram::with_exemplars([0.1, 1.0]);
        h.observe_with_exemplar(0.05, None);
        h.observe_with_exemplar(0.5, Some("aaaa"));
        h.observe_with_exemplar(0.7, Some("bbbb"));
        h.observe_with_exemplar(0.8, None);
        let ex = h.exemplars();
        assert_eq!(
            ex,
            vec![(
                1,
                Exemplar {
                    trace_id: "bbbb".into(),
                    value: 0.7
                }
            )],
            "the latest traced observation of bucket 1 only"
        );
        let plain = AtomicHistogram::new([0.1]);
        plain.observe_with_exemplar(0.05, Some("aaaa"));
        assert!(plain.exemplars().is_empty(), "exemplars off");
        assert_eq!(plain.count(), 1);
    }

    #[test]
    fn encodes_byte_identical_to_prometheus_client() {
        let bounds = [0.00005, 0.0001, 0.005, 0.1, 0.35, 1.0, 2.5];
        let ours = AtomicHistogram::new(bounds);
        let theirs = Histogram::new(bounds);
        for v in [
            0.0, 0.00005, 0.00007, 0.1, 0.35, 0.3500001, 0.2, 3.0, 1e-9, 7.25,
        ] {
            ours.observe(v);
            theirs.observe(v);
        }
        let (a, b) = (text("h", ours), text("h", theirs));
        assert_eq!(a, b);
        assert!(a.contains("h_count 10\n"), "{a}");
        // Empty histograms too.
        assert_eq!(
            text("e", AtomicHistogram::new([1.0])),
            text("e", Histogram::new([1.0]))
        );
    }
}
