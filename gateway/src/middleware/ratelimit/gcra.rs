//! The generic cell rate algorithm, as pure arithmetic on microseconds.

use std::time::Duration;

/// `limit` requests per `window`, all of which may come at once: the
/// emission interval is `T = window / limit` and the burst tolerance is
/// `window - T`. State per key is one number, the theoretical arrival time
/// (TAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Requests per window.
    pub limit: u32,
    /// Emission interval `T` in µs.
    pub interval_us: u64,
    /// `limit * T` in µs: how far ahead of now the TAT may run.
    pub window_us: u64,
}

/// One decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the request may pass.
    pub allowed: bool,
    /// Requests still allowed right now.
    pub remaining: u32,
    /// µs until the quota is fully restored (allowed) or until the next
    /// request is allowed (refused).
    pub reset_us: u64,
}

impl Gcra {
    /// `limit` per `window` (`limit >= 1`, `window > 0`, validated).
    pub fn new(limit: u32, window: Duration) -> Self {
        let limit = limit.max(1);
        let window_us = u64::try_from(window.as_micros()).unwrap_or(u64::MAX / 4);
        let interval_us = (window_us / u64::from(limit)).max(1);
        Self {
            limit,
            interval_us,
            window_us: interval_us * u64::from(limit),
        }
    }

    /// Decides at `now` given the stored TAT (0 when the key is new).
    /// Returns the outcome and the TAT to store.
    pub fn decide(&self, tat: u64, now: u64) -> (Outcome, u64) {
        let tat = tat.max(now);
        let next = tat + self.interval_us;
        if next - now <= self.window_us {
            (self.outcome(true, next - now), next)
        } else {
            (self.outcome(false, tat - now), tat)
        }
    }

    /// Whether a request at `now` would pass, without charging it: the
    /// outcome describes the state as it is (an admitting outcome's
    /// `remaining` is how many requests pass from now on, at least 1).
    /// What a request refused by another policy reports for this one.
    pub fn peek(&self, tat: u64, now: u64) -> Outcome {
        let tat = tat.max(now);
        let ahead = tat - now;
        self.outcome(ahead + self.interval_us <= self.window_us, ahead)
    }

    /// The outcome from `allowed` and `ahead` = stored TAT − now (what the
    /// Redis script returns), so both stores report identically. When
    /// allowed, `ahead` is after the charge for a charged request, before
    /// it for a [`Self::peek`].
    pub fn outcome(&self, allowed: bool, ahead: u64) -> Outcome {
        if allowed {
            let free = self.window_us.saturating_sub(ahead);
            Outcome {
                allowed,
                remaining: u32::try_from(free / self.interval_us).unwrap_or(u32::MAX),
                reset_us: ahead,
            }
        } else {
            Outcome {
                allowed,
                remaining: 0,
                // The next request fits once TAT + T − window ≤ now.
                reset_us: (ahead + self.interval_us).saturating_sub(self.window_us),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_burst_passes_then_exactly_one_per_interval() {
        let g = Gcra::new(10, Duration::from_secs(1));
        let mut tat = 0;
        let now = 5_000_000;
        let mut passed = 0;
        for i in 0..100 {
            let (o, t) = g.decide(tat, now);
            tat = t;
            if o.allowed {
                passed += 1;
                assert_eq!(o.remaining, 9 - i);
            } else {
                assert_eq!(o.remaining, 0);
                assert_eq!(o.reset_us, 100_000);
            }
        }
        assert_eq!(passed, 10);
        // 99 ms later: still refused; 100 ms later: one more.
        assert!(!g.decide(tat, now + 99_999).0.allowed);
        let (o, tat) = g.decide(tat, now + 100_000);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
        assert!(!g.decide(tat, now + 100_000).0.allowed);
        // After a whole window the burst is back.
        let (o, _) = g.decide(tat, now + 1_100_000);
        assert_eq!(o.remaining, 9);
    }

    #[test]
    fn peek_tells_what_decide_would_do_and_charges_nothing() {
        let g = Gcra::new(2, Duration::from_secs(10));
        // Fresh: both units available, nothing to wait for.
        let o = g.peek(0, 1_000);
        assert!(o.allowed);
        assert_eq!((o.remaining, o.reset_us), (2, 0));
        let (_, tat) = g.decide(0, 1_000);
        // One used 0.5 s ago: one left, the used one back in 4.5 s.
        let o = g.peek(tat, 501_000);
        assert!(o.allowed);
        assert_eq!((o.remaining, o.reset_us), (1, 4_500_000));
        let (_, tat) = g.decide(tat, 501_000);
        // Both used: refused until 4.5 s from now, exactly as decide says.
        let o = g.peek(tat, 501_000);
        assert_eq!(o, g.decide(tat, 501_000).0);
        assert!(!o.allowed);
        assert_eq!(o.reset_us, 4_500_000);
    }

    proptest::proptest! {
        /// `peek` agrees with `decide` on whether a request passes, and a
        /// passing peek's `remaining` is one more than the charged one's.
        #[test]
        fn peek_agrees_with_decide(
            limit in 1u32..50,
            window_ms in 1u64..60_000,
            tat in 0u64..(1 << 36),
            now in 0u64..(1 << 36),
        ) {
            let g = Gcra::new(limit, Duration::from_millis(window_ms));
            let p = g.peek(tat, now);
            let (d, _) = g.decide(tat, now);
            proptest::prop_assert_eq!(p.allowed, d.allowed);
            if d.allowed {
                proptest::prop_assert_eq!(p.remaining, d.remaining + 1);
            } else {
                proptest::prop_assert_eq!(p, d);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Over any arrivals, the admitted count never exceeds the burst plus
        /// one per emission interval elapsed since the first arrival.
        #[test]
        fn never_more_than_limit_plus_elapsed_intervals(
            limit in 1u32..200,
            window_ms in 1u64..600_000,
            start in 0u64..(1 << 40),
            gaps in proptest::collection::vec(0f64..3.0, 1..400),
        ) {
            let g = Gcra::new(limit, Duration::from_millis(window_ms));
            let (mut now, mut tat, mut admitted) = (start, 0, 0u64);
            for gap in gaps {
                // Gaps are in emission intervals: bursts (0), trickles, pauses.
                let step = (gap * g.interval_us as f64) as u64;
                now += step;
                let (o, t) = g.decide(tat, now);
                tat = t;
                admitted += u64::from(o.allowed);
                proptest::prop_assert!(
                    admitted <= u64::from(limit) + (now - start) / g.interval_us
                );
            }
        }

        /// `remaining` is a promise: exactly that many more requests pass at
        /// the same instant, and a refusal's `reset` is when the next fits.
        #[test]
        fn remaining_and_reset_tell_the_truth(
            limit in 1u32..100,
            window_ms in 1u64..120_000,
            used in 0u32..120,
            now in 0u64..(1 << 40),
        ) {
            let g = Gcra::new(limit, Duration::from_millis(window_ms));
            let mut tat = 0;
            let mut last = None;
            for _ in 0..used {
                let (o, t) = g.decide(tat, now);
                tat = t;
                last = Some(o);
            }
            proptest::prop_assume!(last.is_some_and(|o| o.allowed));
            let promised = last.map_or(0, |o| o.remaining);
            let mut passed = 0;
            loop {
                let (o, t) = g.decide(tat, now);
                tat = t;
                if !o.allowed {
                    // The next request fits exactly at now + reset.
                    proptest::prop_assert!(o.reset_us >= 1);
                    proptest::prop_assert!(!g.decide(tat, now + o.reset_us - 1).0.allowed);
                    proptest::prop_assert!(g.decide(tat, now + o.reset_us).0.allowed);
                    break;
                }
                passed += 1;
            }
            proptest::prop_assert_eq!(passed, promised);
        }

        /// A burst at one instant admits exactly min(n, limit): the
        /// exactness the e2e tests prove through the gateway.
        #[test]
        fn a_burst_admits_exactly_the_limit(
            limit in 1u32..500,
            window_ms in 1u64..600_000,
            n in 0u32..1000,
            now in 0u64..(1 << 40),
        ) {
            let g = Gcra::new(limit, Duration::from_millis(window_ms));
            let mut tat = 0;
            let mut admitted = 0;
            for _ in 0..n {
                let (o, t) = g.decide(tat, now);
                tat = t;
                admitted += u32::from(o.allowed);
            }
            proptest::prop_assert_eq!(admitted, n.min(limit));
        }
    }
}
