//! The control law: a gradient on aim / observed latency, with a headroom
//! term. Pure arithmetic, no clock, no I/O.
//!
//! Once per window the observed quantile of admitted requests' latency is
//! compared with the aim (a margin under the target, so the quantile over
//! a whole run stays under it rather than oscillating around it):
//!
//! - over the aim: the limit shrinks in proportion, `limit × aim/observed`
//!   (never by more than half), smoothed by [`SMOOTHING`] because the
//!   window still holds requests admitted under the previous, higher limit;
//! - clearly under it ([`HOLD_BAND`]), while the limit is being used (the
//!   window's peak in flight reached half of it): it grows by the headroom
//!   `sqrt(limit)`, and never past `limit × aim/observed`, the limit at
//!   which latency would reach the aim if it grew in proportion;
//! - otherwise it holds.
//!
//! There is no probe window and no baseline: the reference is the
//! configured target, so nothing ever pins concurrency to re-measure one.

use std::time::Duration;

/// The controller aims at this share of the target's latency bound.
pub const AIM: f64 = 0.9;
/// A decrease moves this share of the way to the proportional limit.
pub const SMOOTHING: f64 = 0.5;
/// One window never cuts the proportional limit below this share.
pub const MIN_GRADIENT: f64 = 0.5;
/// Growth only when the aim is at least this many times the observed.
pub const HOLD_BAND: f64 = 1.1;

/// The limit and the law that moves it.
#[derive(Debug, Clone)]
pub struct Gradient {
    min: f64,
    max: f64,
    aim: f64,
    limit: f64,
}

impl Gradient {
    /// A limit between `min` and `max` (`1 <= min <= max`) aimed at
    /// `threshold`; it starts at their geometric mean (64 for 4..1024),
    /// the middle of the range on the scale the law moves on.
    pub fn new(min: usize, max: usize, threshold: Duration) -> Self {
        let min = min.max(1) as f64;
        let max = (max as f64).max(min);
        Self {
            min,
            max,
            aim: threshold.as_secs_f64() * AIM,
            limit: (min * max).sqrt().round().clamp(min, max),
        }
    }

    /// The current limit (at least 1).
    pub fn limit(&self) -> usize {
        // In [min, max], both from usize values: the cast cannot wrap.
        self.limit.round().max(1.0) as usize
    }

    /// One window's update: `observed` is its latency quantile, `peak`
    /// the most requests it had in flight. Returns the new limit.
    pub fn update(&mut self, observed: Duration, peak: usize) -> usize {
        let observed = observed.as_secs_f64().max(1e-6);
        let gradient = self.aim / observed;
        let l = self.limit;
        let next = if gradient < 1.0 {
            l * (1.0 - SMOOTHING * (1.0 - gradient.max(MIN_GRADIENT)))
        } else if gradient >= HOLD_BAND && peak as f64 >= l / 2.0 {
            (l + l.sqrt()).min(l * gradient)
        } else {
            l
        };
        self.limit = next.clamp(self.min, self.max);
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(350);

    /// A queue of `servers`: latency is `base × max(1, inflight/servers)`.
    fn queue(limit: usize, servers: usize, base_ms: f64) -> Duration {
        Duration::from_secs_f64(base_ms / 1000.0 * (limit as f64 / servers as f64).max(1.0))
    }

    #[test]
    fn starts_in_the_middle_of_its_range() {
        assert_eq!(Gradient::new(4, 1024, T).limit(), 64);
        assert_eq!(Gradient::new(8, 8, T).limit(), 8);
        assert_eq!(Gradient::new(0, 0, T).limit(), 1);
    }

    #[test]
    fn grows_by_headroom_while_under_target_and_used() {
        let mut g = Gradient::new(4, 1024, T);
        let mut last = g.limit();
        for _ in 0..20 {
            let l = g.update(Duration::from_millis(20), last);
            assert!(l > last, "{l} > {last}");
            assert!(l as f64 <= last as f64 + (last as f64).sqrt() + 1.0);
            last = l;
        }
        // Up to max, never past it.
        for _ in 0..200 {
            last = g.update(Duration::from_millis(20), last);
        }
        assert_eq!(last, 1024);
    }

    #[test]
    fn holds_when_the_limit_is_not_used() {
        let mut g = Gradient::new(4, 1024, T);
        assert_eq!(g.update(Duration::from_millis(20), 10), 64);
        assert_eq!(g.update(Duration::from_millis(20), 31), 64);
        assert!(g.update(Duration::from_millis(20), 32) > 64);
    }

    #[test]
    fn shrinks_in_proportion_when_over_bounded_by_min() {
        let mut g = Gradient::new(4, 1024, T);
        // Observed at twice the aim: half the way to half.
        let aim = T.as_secs_f64() * AIM;
        let l = g.update(Duration::from_secs_f64(aim * 2.0), 64);
        assert_eq!(l, 48);
        // Slightly over: slightly down.
        let l2 = g.update(Duration::from_secs_f64(aim * 1.1), 64);
        assert!(l2 < l && l2 as f64 > l as f64 * 0.94, "{l2}");
        // Far over: never below half per window, never below min.
        let mut last = l2;
        for _ in 0..50 {
            let l = g.update(Duration::from_secs(60), last);
            assert!(l as f64 >= (last as f64 * 0.75).floor() - 1.0);
            last = l;
        }
        assert_eq!(last, 4);
    }

    #[test]
    fn holds_in_the_band_just_under_the_aim() {
        let mut g = Gradient::new(4, 1024, T);
        let aim = T.as_secs_f64() * AIM;
        assert_eq!(g.update(Duration::from_secs_f64(aim * 0.95), 64), 64);
        assert_eq!(g.update(Duration::from_secs_f64(aim), 64), 64);
    }

    /// Against a queue whose latency lags the limit by one window (the
    /// window's samples were admitted under the previous limit), from
    /// both ends of the range: it settles where latency meets the aim,
    /// under the target, without blowing up.
    #[test]
    fn settles_under_the_target_on_a_lagging_queue() {
        for start_high in [false, true] {
            let mut g = Gradient::new(4, 1024, T);
            if start_high {
                for _ in 0..100 {
                    g.update(Duration::from_millis(1), 1024);
                }
                assert_eq!(g.limit(), 1024);
            }
            let mut prev = g.limit();
            let mut tail = Vec::new();
            for i in 0..80 {
                let observed = queue(prev, 10, 50.0);
                prev = g.limit();
                g.update(observed, prev);
                if i >= 50 {
                    tail.push(g.limit());
                }
            }
            // 10 servers × 50 ms: latency meets 0.9 × 350 ms at 63.
            let (lo, hi) = (*tail.iter().min().unwrap(), *tail.iter().max().unwrap());
            assert!(
                (45..=70).contains(&lo) && (45..=70).contains(&hi),
                "{tail:?}"
            );
            assert!(hi - lo <= 10, "oscillates: {tail:?}");
        }
    }

    /// Noisy samples (±40 % around the queue's latency): the limit stays
    /// bounded and near the equilibrium; no blow-up either way.
    #[test]
    fn noise_does_not_blow_it_up() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut g = Gradient::new(4, 1024, T);
        let mut prev = g.limit();
        let mut tail = Vec::new();
        for i in 0..400 {
            let noise = 0.6 + 0.8 * rng.f64();
            let observed = queue(prev, 10, 50.0).mul_f64(noise);
            prev = g.limit();
            g.update(observed, prev);
            if i >= 100 {
                tail.push(g.limit());
            }
        }
        let mean = tail.iter().sum::<usize>() as f64 / tail.len() as f64;
        assert!((25.0..=80.0).contains(&mean), "mean {mean}");
        assert!(tail.iter().all(|&l| (8..=110).contains(&l)), "{tail:?}");
    }
}
