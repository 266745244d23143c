//! A circuit breaker per endpoint, as a pure state machine over a clock
//! passed in (µs), so it is tested without sleeping.
//!
//! Closed: counts outcomes in a rolling window of buckets; trips on
//! `consecutive_failures` in a row, or when at least `min_requests` were
//! seen in the window and the failure ratio reached `failure_ratio`.
//! Open: refuses until its open time passed; each trip in a row doubles
//! the open time up to `max_open_time`. Half-open: lets at most
//! `half_open_probes` requests through at once; a success closes, a
//! failure opens again (for longer).

use std::time::Duration;

use crate::config::CircuitBreakerConfig;

const BUCKETS: u64 = 10;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests flow.
    Closed,
    /// Requests are refused until `until` (µs).
    Open {
        /// When the breaker turns half-open.
        until: u64,
    },
    /// A bounded number of probes may go through.
    HalfOpen {
        /// Probes in flight.
        probes: u32,
    },
}

/// One endpoint's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: Settings,
    state: State,
    consecutive: u32,
    trips: u32,
    /// (bucket index, successes, failures), ring of `BUCKETS`.
    window: [(u64, u32, u32); BUCKETS as usize],
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    consecutive_failures: u32,
    failure_ratio: f64,
    min_requests: u32,
    bucket_us: u64,
    open_us: u64,
    max_open_us: u64,
    probes: u32,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 4)
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: &CircuitBreakerConfig) -> Self {
        Self {
            cfg: Settings {
                consecutive_failures: cfg.consecutive_failures.max(1),
                failure_ratio: cfg.failure_ratio,
                min_requests: cfg.min_requests.max(1),
                bucket_us: (us(cfg.window) / BUCKETS).max(1),
                open_us: us(cfg.open_time).max(1),
                max_open_us: us(cfg.max_open_time).max(us(cfg.open_time)),
                probes: cfg.half_open_probes.max(1),
            },
            state: State::Closed,
            consecutive: 0,
            trips: 0,
            window: [(u64::MAX, 0, 0); BUCKETS as usize],
        }
    }

    /// The current state (open turns half-open once its time passed).
    pub fn state(&mut self, now: u64) -> State {
        if let State::Open { until } = self.state {
            if now >= until {
                self.state = State::HalfOpen { probes: 0 };
            }
        }
        self.state
    }

    /// Whether a request may be sent now, without taking a probe slot.
    pub fn available(&mut self, now: u64) -> bool {
        match self.state(now) {
            State::Closed => true,
            State::Open { .. } => false,
            State::HalfOpen { probes } => probes < self.cfg.probes,
        }
    }

    /// Takes the right to send one request (a probe slot when half-open).
    pub fn acquire(&mut self, now: u64) -> bool {
        match self.state(now) {
            State::Closed => true,
            State::Open { .. } => false,
            State::HalfOpen { probes } if probes < self.cfg.probes => {
                self.state = State::HalfOpen { probes: probes + 1 };
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    /// µs until an open breaker lets a probe through (0 otherwise).
    pub fn retry_in(&mut self, now: u64) -> u64 {
        match self.state(now) {
            State::Open { until } => until.saturating_sub(now),
            _ => 0,
        }
    }

    /// Records one request's outcome.
    pub fn record(&mut self, ok: bool, now: u64) {
        match self.state(now) {
            State::HalfOpen { .. } => {
                if ok {
                    self.close();
                } else {
                    self.trip(now);
                }
                return;
            }
            // A late answer to a request sent before the trip.
            State::Open { .. } => return,
            State::Closed => {}
        }
        let idx = now / self.cfg.bucket_us;
        let slot = usize::try_from(idx % BUCKETS).unwrap_or(0);
        if let Some(b) = self.window.get_mut(slot) {
            if b.0 != idx {
                *b = (idx, 0, 0);
            }
            if ok {
                b.1 += 1;
            } else {
                b.2 += 1;
            }
        }
        if ok {
            self.consecutive = 0;
            return;
        }
        self.consecutive += 1;
        let (mut total, mut failed) = (0u32, 0u32);
        for (i, s, f) in &self.window {
            if *i != u64::MAX && idx.saturating_sub(*i) < BUCKETS {
                total += s + f;
                failed += f;
            }
        }
        let ratio_trip = total >= self.cfg.min_requests
            && f64::from(failed) >= self.cfg.failure_ratio * f64::from(total);
        if self.consecutive >= self.cfg.consecutive_failures || ratio_trip {
            self.trip(now);
        }
    }

    fn trip(&mut self, now: u64) {
        let factor = 1u64 << self.trips.min(16);
        let open = self
            .cfg
            .open_us
            .saturating_mul(factor)
            .min(self.cfg.max_open_us);
        self.trips += 1;
        self.state = State::Open { until: now + open };
        self.consecutive = 0;
        self.window = [(u64::MAX, 0, 0); BUCKETS as usize];
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.trips = 0;
        self.consecutive = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            min_requests: 10,
            window: Duration::from_secs(10),
            open_time: Duration::from_secs(1),
            max_open_time: Duration::from_secs(4),
            half_open_probes: 1,
        }
    }

    const S: u64 = 1_000_000;

    #[test]
    fn trips_on_consecutive_failures_then_half_opens_and_closes() {
        let mut b = Breaker::new(&cfg());
        b.record(false, 0);
        b.record(false, 1);
        assert!(b.available(2));
        b.record(false, 2);
        assert_eq!(b.state(3), State::Open { until: 2 + S });
        assert!(!b.acquire(S));
        assert_eq!(b.retry_in(S), 2);
        // Half-open: exactly one probe.
        assert!(b.acquire(S + 2));
        assert!(!b.acquire(S + 3));
        assert!(!b.available(S + 3));
        b.record(true, S + 4);
        assert_eq!(b.state(S + 5), State::Closed);
    }

    #[test]
    fn open_time_grows_on_repeated_trips_up_to_the_max() {
        let mut b = Breaker::new(&cfg());
        let mut now = 0;
        for _ in 0..3 {
            b.record(false, now);
        }
        let mut expected = S;
        for _ in 0..4 {
            let State::Open { until } = b.state(now) else {
                panic!("not open")
            };
            assert_eq!(until - now, expected);
            now = until;
            assert!(b.acquire(now));
            b.record(false, now);
            expected = (expected * 2).min(4 * S);
        }
    }

    #[test]
    fn trips_on_ratio_only_with_enough_requests() {
        let mut b = Breaker::new(&cfg());
        // Alternating: never 3 in a row, ratio 50% once 10 are seen.
        for i in 0..9 {
            b.record(i % 2 == 0, i);
        }
        assert_eq!(b.state(10), State::Closed);
        b.record(false, 10);
        assert!(matches!(b.state(11), State::Open { .. }));
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut b = Breaker::new(&cfg());
        for i in 0..6 {
            b.record(i % 3 != 0, i);
        }
        // 11 s later the window is empty again.
        for i in 0..9 {
            b.record(true, 11 * S + i);
        }
        b.record(false, 11 * S + 10);
        assert_eq!(b.state(11 * S + 11), State::Closed);
    }
}
