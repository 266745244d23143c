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

    /// The outcome from `allowed` and `ahead` = stored TAT − now (what the
    /// Redis script returns), so both stores report identically.
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
    fn never_more_than_limit_plus_elapsed_intervals() {
        // Property: over any sequence of arrivals, admitted <= limit + elapsed / T.
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..200 {
            let limit = rng.u32(1..50);
            let g = Gcra::new(limit, Duration::from_millis(rng.u64(1..5000)));
            let start = rng.u64(0..1 << 40);
            let (mut now, mut tat, mut admitted) = (start, 0, 0u64);
            for _ in 0..500 {
                now += rng.u64(0..g.interval_us / 2 + 1);
                let (o, t) = g.decide(tat, now);
                tat = t;
                admitted += u64::from(o.allowed);
                assert!(admitted <= u64::from(limit) + (now - start) / g.interval_us);
            }
        }
    }
}
