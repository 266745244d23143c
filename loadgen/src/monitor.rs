//! The generator watches itself, so a slow generator is never mistaken for a slow gateway:
//! the lag of its own timers (a saturated runtime wakes late), its CPU use (from
//! `/proc/self/stat`), and in the open model how late arrivals leave against their
//! schedule and how many were dropped because every VU was busy. [`Monitor::reliability`]
//! turns these into the verdict every output carries.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::Reliability;

/// Timer period of the lag probe.
pub const PROBE_PERIOD: Duration = Duration::from_millis(50);
/// A probe waking this late counts as a late tick.
pub const LATE_TICK: Duration = Duration::from_millis(20);
/// An open-model arrival sent this late counts as behind schedule.
pub const LATE_ARRIVAL: Duration = Duration::from_millis(10);
/// CPU use (share of the worker threads) that counts as saturated.
pub const CPU_SATURATED: f64 = 0.95;

/// Counters of the generator's health.
#[derive(Debug, Default)]
pub struct Monitor {
    ticks: AtomicU64,
    late_ticks: AtomicU64,
    max_lag_us: AtomicU64,
    arrivals: AtomicU64,
    late_arrivals: AtomicU64,
    dropped: AtomicU64,
    cpu_seconds: AtomicU64,
    cpu_saturated: AtomicU64,
    max_cpu_pct: AtomicU64,
}

/// CPU time of this process in clock ticks (utime + stime), from `/proc/self/stat`.
pub fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Linux's clock tick rate for `/proc` times (USER_HZ, 100 on every common platform).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

impl Monitor {
    /// Runs the timer-lag probe until dropped (spawn it).
    pub async fn probe_lag(&self) {
        loop {
            let before = Instant::now();
            tokio::time::sleep(PROBE_PERIOD).await;
            let lag = before.elapsed().saturating_sub(PROBE_PERIOD);
            self.ticks.fetch_add(1, Relaxed);
            if lag > LATE_TICK {
                self.late_ticks.fetch_add(1, Relaxed);
            }
            let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
            self.max_lag_us.fetch_max(us, Relaxed);
        }
    }

    /// Notes an open-model arrival sent `late` after its intended time.
    pub fn arrival(&self, late: Duration) {
        self.arrivals.fetch_add(1, Relaxed);
        if late > LATE_ARRIVAL {
            self.late_arrivals.fetch_add(1, Relaxed);
        }
    }

    /// Notes an open-model arrival dropped because every VU was busy.
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }

    /// Arrivals dropped so far (k6's `dropped_iterations`).
    pub fn dropped_iterations(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Notes one second's CPU use: `ticks` of CPU over `wall` with `workers` threads.
    /// Returns whether that second was saturated.
    pub fn cpu_sample(&self, ticks: u64, wall: Duration, workers: usize) -> bool {
        let wall = wall.as_secs_f64();
        if wall <= 0.0 {
            return false;
        }
        let share = ticks as f64 / CLOCK_TICKS_PER_SEC / wall / workers.max(1) as f64;
        self.cpu_seconds.fetch_add(1, Relaxed);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        self.max_cpu_pct
            .fetch_max((share * 100.0).round().max(0.0) as u64, Relaxed);
        let saturated = share >= CPU_SATURATED;
        if saturated {
            self.cpu_saturated.fetch_add(1, Relaxed);
        }
        saturated
    }

    /// Whether the last probes say the generator is behind (for the live view).
    pub fn late_share(&self) -> f64 {
        let ticks = self.ticks.load(Relaxed);
        if ticks == 0 {
            return 0.0;
        }
        self.late_ticks.load(Relaxed) as f64 / ticks as f64
    }

    /// The verdict on the whole run.
    pub fn reliability(&self) -> Reliability {
        let mut reasons = Vec::new();
        let ticks = self.ticks.load(Relaxed);
        let late_ticks = self.late_ticks.load(Relaxed);
        let max_lag_ms = self.max_lag_us.load(Relaxed) as f64 / 1000.0;
        if ticks > 0 && late_ticks * 20 > ticks {
            reasons.push(format!(
                "generator runtime lagging: {late_ticks} of {ticks} timer ticks were more than {} ms late (max {max_lag_ms:.1} ms)",
                LATE_TICK.as_millis()
            ));
        }
        let secs = self.cpu_seconds.load(Relaxed);
        let saturated = self.cpu_saturated.load(Relaxed);
        if saturated >= 2 && saturated * 10 >= secs {
            reasons.push(format!(
                "generator CPU saturated in {saturated} of {secs} seconds (max {}% of its worker threads)",
                self.max_cpu_pct.load(Relaxed)
            ));
        }
        let arrivals = self.arrivals.load(Relaxed);
        let late = self.late_arrivals.load(Relaxed);
        if arrivals > 0 && late * 100 > arrivals {
            reasons.push(format!(
                "behind schedule: {late} of {arrivals} arrivals left more than {} ms after their intended time",
                LATE_ARRIVAL.as_millis()
            ));
        }
        let dropped = self.dropped.load(Relaxed);
        if dropped > 0 {
            reasons.push(format!(
                "dropped iterations: {dropped} of {arrivals} arrivals found every VU busy and were never sent (raise --max-vus); the target got less load than planned"
            ));
        }
        Reliability {
            unreliable: !reasons.is_empty(),
            reasons,
            max_lag_ms,
            cpu_saturated_secs: saturated,
            late_arrivals: late,
            arrivals,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_cpu_and_schedule() {
        let m = Monitor::default();
        assert!(!m.reliability().unreliable);
        for _ in 0..5 {
            assert!(m.cpu_sample(100, Duration::from_secs(1), 1));
        }
        let r = m.reliability();
        assert!(r.unreliable && r.reasons[0].contains("CPU saturated"));
        let m = Monitor::default();
        for i in 0..100 {
            m.arrival(Duration::from_millis(if i < 5 { 50 } else { 0 }));
        }
        assert!(m.reliability().reasons[0].contains("behind schedule"));
        let m = Monitor::default();
        m.arrival(Duration::ZERO);
        m.dropped();
        let r = m.reliability();
        assert!(r.unreliable && r.reasons[0].contains("dropped iterations: 1 of 1"));
        assert_eq!(m.dropped_iterations(), 1);
        assert!(process_cpu_ticks().is_some());
    }
}
