//! The retry budget and the backoff, as plain arithmetic.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: each request deposits `ratio` of a token, each retry
/// withdraws one; `min_per_sec` tokens a second are added regardless, so a
/// quiet route can still retry. The balance is capped so credit from a busy
/// past cannot fund a retry storm later.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_sec: f64,
    cap: f64,
    /// (tokens, last refill); a few arithmetic operations under the lock.
    state: Mutex<(f64, Instant)>,
}

impl Budget {
    /// Retries ≤ `ratio` × requests + `min_per_sec` per second.
    pub fn new(ratio: f32, min_per_sec: u32) -> Self {
        let ratio = f64::from(ratio.clamp(0.0, 10.0));
        let min_per_sec = f64::from(min_per_sec);
        let cap = min_per_sec.max(1.0) + ratio * 1000.0;
        Self {
            ratio,
            min_per_sec,
            cap,
            state: Mutex::new((min_per_sec.min(cap), Instant::now())),
        }
    }

    /// Called once per request.
    pub fn deposit(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.0 = (s.0 + self.ratio).min(self.cap);
    }

    /// Takes one retry's worth, if there is one.
    pub fn withdraw(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.min_per_sec).min(self.cap);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Full-jitter exponential backoff before retry number `retry` (1-based):
/// uniform in `[0, min(max, base × 2^(retry-1))]`, `rand` giving `[0, 1)`.
pub fn backoff(base: Duration, max: Duration, retry: u32, rand: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << retry.saturating_sub(1).min(16));
    exp.min(max).mul_f64(rand.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_share_of_requests_plus_a_floor() {
        let b = Budget::new(0.2, 0);
        for _ in 0..100 {
            b.deposit();
        }
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 20);
        let b = Budget::new(0.0, 5);
        let now = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(now, 5);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..100).filter(|_| b.withdraw()).count(), 5);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let (b, m) = (Duration::from_millis(10), Duration::from_millis(100));
        assert_eq!(backoff(b, m, 1, 0.999_999).as_millis(), 9);
        assert_eq!(backoff(b, m, 3, 0.5), Duration::from_millis(20));
        assert_eq!(backoff(b, m, 10, 0.5), Duration::from_millis(50));
        assert_eq!(backoff(b, m, 3, 0.0), Duration::ZERO);
    }
}
