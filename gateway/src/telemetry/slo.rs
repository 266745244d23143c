//! The live SLO engine: exact sliding-window latency distributions and
//! error counts per SLO, with objectives and error-budget burn rates.
//!
//! Each SLO keeps HDR histograms (1 µs to 60 s, 3 significant digits) in
//! three rings of sub-windows: 10 s slots for the last 5 minutes, 1 min
//! slots for the last hour and 10 min slots for the last 6 hours. A request
//! is recorded into the current 10 s slot only; completed slots roll up into
//! the coarser rings. Windows (1m, 5m, 30m, 1h, 6h) are merged on read. The
//! memory of an SLO is bounded by the ring sizes, whatever the load or the
//! run length.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::SloConfig;

const FINE: Duration = Duration::from_secs(10);
const FINE_SLOTS: usize = 30; // 5 min
const MID_PER_FINE: u32 = 6; // 1 min
const MID_SLOTS: usize = 60; // 1 h
const COARSE_PER_MID: u32 = 10; // 10 min
const COARSE_SLOTS: usize = 36; // 6 h
const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 60_000_000;

/// The windows reported, with their lengths.
pub const WINDOWS: [(&str, Duration); 5] = [
    ("1m", Duration::from_secs(60)),
    ("5m", Duration::from_secs(300)),
    ("30m", Duration::from_secs(1800)),
    ("1h", Duration::from_secs(3600)),
    ("6h", Duration::from_secs(21600)),
];

/// Multi-window burn-rate pairs of the Google SRE workbook: (short, long,
/// burn-rate threshold).
pub const BURN_PAIRS: [(&str, &str, f64); 2] = [("5m", "1h", 14.4), ("30m", "6h", 6.0)];

#[derive(Debug, Clone)]
struct Slot {
    hist: Histogram<u32>,
    total: u64,
    errors: u64,
    /// Requests slower than each latency objective's threshold.
    slow: Vec<u64>,
}

impl Slot {
    fn new(template: &Histogram<u32>, objectives: usize) -> Self {
        Self {
            hist: Histogram::new_from(template),
            total: 0,
            errors: 0,
            slow: vec![0; objectives],
        }
    }

    fn add(&mut self, other: &Slot) {
        let _ = self.hist.add(&other.hist);
        self.total += other.total;
        self.errors += other.errors;
        for (a, b) in self.slow.iter_mut().zip(&other.slow) {
            *a += b;
        }
    }

    fn clear(&mut self) {
        self.hist.reset();
        self.total = 0;
        self.errors = 0;
        self.slow.iter_mut().for_each(|s| *s = 0);
    }
}

#[derive(Debug)]
struct Rings {
    template: Histogram<u32>,
    /// Start of the current fine slot.
    start: Instant,
    current: Slot,
    fine: VecDeque<Slot>,
    mid_acc: Slot,
    mid_acc_n: u32,
    mid: VecDeque<Slot>,
    coarse_acc: Slot,
    coarse_acc_n: u32,
    coarse: VecDeque<Slot>,
}

impl Rings {
    fn new(template: Histogram<u32>, now: Instant, objectives: usize) -> Self {
        Self {
            start: now,
            current: Slot::new(&template, objectives),
            fine: VecDeque::with_capacity(FINE_SLOTS),
            mid_acc: Slot::new(&template, objectives),
            mid_acc_n: 0,
            mid: VecDeque::with_capacity(MID_SLOTS),
            coarse_acc: Slot::new(&template, objectives),
            template,
            coarse_acc_n: 0,
            coarse: VecDeque::with_capacity(COARSE_SLOTS),
        }
    }

    /// Rolls completed fine slots into the rings up to `now`.
    fn advance(&mut self, now: Instant) {
        let mut steps = 0u32;
        while now.saturating_duration_since(self.start) >= FINE {
            self.start += FINE;
            steps += 1;
            // After a long idle period, empty slots need no rolling beyond
            // the longest window.
            if steps as usize > FINE_SLOTS + (MID_SLOTS + COARSE_SLOTS * 10) * 6 {
                let n = self.current.slow.len();
                let template = Histogram::new_from(&self.template);
                *self = Rings::new(template, self.start, n);
                continue;
            }
            self.roll();
        }
    }

    fn roll(&mut self) {
        let n = self.current.slow.len();
        let fresh = self.recycle_fine(n);
        let done = std::mem::replace(&mut self.current, fresh);
        self.mid_acc.add(&done);
        self.fine.push_back(done);
        self.mid_acc_n += 1;
        if self.mid_acc_n == MID_PER_FINE {
            let fresh = self.recycle_mid(n);
            let mid_done = std::mem::replace(&mut self.mid_acc, fresh);
            self.mid_acc_n = 0;
            self.coarse_acc.add(&mid_done);
            self.mid.push_back(mid_done);
            self.coarse_acc_n += 1;
            if self.coarse_acc_n == COARSE_PER_MID {
                let fresh = self.recycle_coarse(n);
                let coarse_done = std::mem::replace(&mut self.coarse_acc, fresh);
                self.coarse_acc_n = 0;
                self.coarse.push_back(coarse_done);
            }
        }
    }

    // Reuse the oldest slot of a full ring instead of allocating.
    fn recycle_fine(&mut self, n: usize) -> Slot {
        recycle(&mut self.fine, FINE_SLOTS, &self.template, n)
    }
    fn recycle_mid(&mut self, n: usize) -> Slot {
        recycle(&mut self.mid, MID_SLOTS, &self.template, n)
    }
    fn recycle_coarse(&mut self, n: usize) -> Slot {
        recycle(&mut self.coarse, COARSE_SLOTS, &self.template, n)
    }

    /// Merges the slots covering the last `window`; returns the merged slot
    /// and the time it actually covers.
    fn window(&self, now: Instant, window: Duration, objectives: usize) -> (Slot, Duration) {
        let mut out = self.current.clone();
        let mut covered = now.saturating_duration_since(self.start);
        let fine_n = (window.as_secs() / FINE.as_secs()) as usize;
        if window <= FINE * FINE_SLOTS as u32 {
            for s in self.fine.iter().rev().take(fine_n.saturating_sub(1)) {
                out.add(s);
                covered += FINE;
            }
            return (out, covered);
        }
        // Coarser windows: the current minute so far, then whole minutes.
        out.add(&self.mid_acc);
        covered += FINE * self.mid_acc_n;
        let mid = FINE * MID_PER_FINE;
        let mid_n = (window.as_secs() / mid.as_secs()) as usize;
        if window <= mid * MID_SLOTS as u32 {
            for s in self.mid.iter().rev().take(mid_n.saturating_sub(1)) {
                out.add(s);
                covered += mid;
            }
            return (out, covered);
        }
        out.add(&self.coarse_acc);
        covered += mid * self.coarse_acc_n;
        let coarse = mid * COARSE_PER_MID;
        let coarse_n = (window.as_secs() / coarse.as_secs()) as usize;
        for s in self.coarse.iter().rev().take(coarse_n.saturating_sub(1)) {
            out.add(s);
            covered += coarse;
        }
        let _ = objectives;
        (out, covered)
    }
}

fn recycle(ring: &mut VecDeque<Slot>, cap: usize, template: &Histogram<u32>, n: usize) -> Slot {
    if ring.len() >= cap {
        if let Some(mut s) = ring.pop_front() {
            s.clear();
            return s;
        }
    }
    Slot::new(template, n)
}

/// One SLO and its windows.
#[derive(Debug)]
pub struct Slo {
    /// The objective as configured.
    pub config: SloConfig,
    thresholds_us: Vec<u64>,
    rings: Mutex<Rings>,
}

impl Slo {
    /// A new SLO with empty windows starting at `now`.
    pub fn new(config: SloConfig, now: Instant) -> Result<Self, hdrhistogram::CreationError> {
        // 1 µs to 60 s at 3 significant digits.
        let template = Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, 3)?;
        let thresholds_us = config
            .latency
            .iter()
            .map(|o| o.threshold.as_micros().min(u128::from(u64::MAX)) as u64)
            .collect();
        let n = config.latency.len();
        Ok(Self {
            config,
            thresholds_us,
            rings: Mutex::new(Rings::new(template, now, n)),
        })
    }

    /// Whether this SLO covers the route named `route`.
    pub fn covers(&self, route: &str) -> bool {
        self.config.routes.is_empty() || self.config.routes.iter().any(|r| r == route)
    }

    /// Records one request.
    pub fn record(&self, now: Instant, latency: Duration, error: bool) {
        let us = (latency.as_micros().min(u128::from(HIGHEST_US)) as u64).max(LOWEST_US);
        let Ok(mut r) = self.rings.lock() else { return };
        r.advance(now);
        let slot = &mut r.current;
        let _ = slot.hist.record(us);
        slot.total += 1;
        slot.errors += u64::from(error);
        for (s, t) in slot.slow.iter_mut().zip(&self.thresholds_us) {
            *s += u64::from(us > *t);
        }
    }

    /// The report of every window at `now`.
    pub fn report(&self, now: Instant) -> SloReport {
        let n = self.config.latency.len();
        let windows: Vec<(String, Slot, Duration)> = {
            let Ok(mut r) = self.rings.lock() else {
                return SloReport::empty(&self.config.name);
            };
            r.advance(now);
            WINDOWS
                .iter()
                .map(|(name, len)| {
                    let (slot, covered) = r.window(now, *len, n);
                    ((*name).to_owned(), slot, covered)
                })
                .collect()
        };
        let budget = self.config.availability.map(|a| 1.0 - a);
        let reports: Vec<WindowReport> = windows
            .iter()
            .map(|(name, slot, covered)| self.window_report(name, slot, *covered, budget))
            .collect();
        // Availability first (always, as before), then each latency SLI:
        // the `sli` label of `gateway_slo_burn_rate`.
        let slis = std::iter::once(("availability".to_owned(), None)).chain(
            self.config
                .latency
                .iter()
                .enumerate()
                .map(|(i, o)| (format!("latency_p{}", fmt_quantile(o.quantile)), Some(i))),
        );
        let burn_of = |w: &str, sli: Option<usize>| {
            let r = reports.iter().find(|r| r.window == w)?;
            match sli {
                None => r.availability_burn_rate,
                Some(i) => r.latency_burn_rates.get(i)?.burn_rate,
            }
        };
        let burn_pairs = slis
            .flat_map(|(sli, i)| {
                BURN_PAIRS.iter().map(move |(short, long, threshold)| {
                    (sli.clone(), i, *short, *long, *threshold)
                })
            })
            .map(|(sli, i, short, long, threshold)| {
                let (sb, lb) = (burn_of(short, i), burn_of(long, i));
                BurnPair {
                    sli,
                    short: short.to_owned(),
                    long: long.to_owned(),
                    threshold,
                    short_burn_rate: sb,
                    long_burn_rate: lb,
                    firing: matches!((sb, lb), (Some(a), Some(b)) if a > threshold && b > threshold),
                }
            })
            .collect();
        SloReport {
            name: self.config.name.clone(),
            routes: self.config.routes.clone(),
            windows: reports,
            burn_rate_pairs: burn_pairs,
        }
    }

    fn window_report(
        &self,
        name: &str,
        slot: &Slot,
        covered: Duration,
        budget: Option<f64>,
    ) -> WindowReport {
        let h = &slot.hist;
        let ms = |q: f64| {
            if slot.total == 0 {
                None
            } else {
                Some(h.value_at_quantile(q) as f64 / 1000.0)
            }
        };
        let secs = covered.as_secs_f64().max(1e-9);
        let rate = slot.total as f64 / secs;
        let error_ratio = if slot.total == 0 {
            0.0
        } else {
            slot.errors as f64 / slot.total as f64
        };
        let mut objectives = Vec::new();
        let mut latency_burn = Vec::new();
        for (i, o) in self.config.latency.iter().enumerate() {
            let value = ms(o.quantile);
            let target = o.threshold.as_secs_f64() * 1000.0;
            let slow = slot.slow.get(i).copied().unwrap_or(0);
            let burn_rate =
                (slot.total > 0).then(|| (slow as f64 / slot.total as f64) / (1.0 - o.quantile));
            objectives.push(Objective {
                objective: format!("p{}<={}ms", fmt_quantile(o.quantile), trim(target)),
                kind: "latency",
                target,
                value,
                met: value.is_none_or(|v| v <= target),
                budget_remaining: burn_rate.map(|b| 1.0 - b),
            });
            latency_burn.push(LatencyBurn {
                objective: format!("p{}", fmt_quantile(o.quantile)),
                burn_rate,
            });
        }
        let availability_burn_rate = budget.filter(|b| *b > 0.0).map(|b| error_ratio / b);
        if let Some(a) = self.config.availability {
            objectives.push(Objective {
                objective: format!("availability>={}%", trim(a * 100.0)),
                kind: "availability",
                target: a * 100.0,
                value: Some((1.0 - error_ratio) * 100.0),
                met: error_ratio <= 1.0 - a + f64::EPSILON,
                budget_remaining: availability_burn_rate
                    .filter(|_| slot.total > 0)
                    .map(|b| 1.0 - b),
            });
        }
        if let Some(t) = self.config.min_throughput {
            objectives.push(Objective {
                objective: format!("rate>={}/s", trim(t)),
                kind: "throughput",
                target: t,
                value: Some(rate),
                met: rate >= t,
                budget_remaining: None,
            });
        }
        WindowReport {
            window: name.to_owned(),
            covered_seconds: covered.as_secs_f64(),
            requests: slot.total,
            errors: slot.errors,
            rate,
            error_ratio,
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: (slot.total > 0).then(|| h.max() as f64 / 1000.0),
            objectives,
            availability_burn_rate,
            latency_burn_rates: latency_burn,
        }
    }

    /// Bytes held by this SLO's histograms (for the memory figure).
    pub fn memory_bytes(&self) -> usize {
        let Ok(r) = self.rings.lock() else { return 0 };
        let per = r.current.hist.distinct_values() * std::mem::size_of::<u32>();
        per * (3 + r.fine.len() + r.mid.len() + r.coarse.len())
    }
}

fn fmt_quantile(q: f64) -> String {
    let s = trim(q * 100.0);
    s.replace('.', "")
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_owned()
}

/// Every SLO of a config.
#[derive(Debug, Default)]
pub struct SloEngine {
    slos: Vec<Arc<Slo>>,
}

impl SloEngine {
    /// Builds the SLOs of `configs`, keeping the windows of SLOs that
    /// `previous` already tracked under the same name and definition.
    pub fn new(configs: &[SloConfig], previous: Option<&SloEngine>, now: Instant) -> Self {
        let slos = configs
            .iter()
            .filter_map(|c| {
                if let Some(kept) = previous.and_then(|p| p.slos.iter().find(|s| s.config == *c)) {
                    return Some(kept.clone());
                }
                match Slo::new(c.clone(), now) {
                    Ok(s) => Some(Arc::new(s)),
                    Err(e) => {
                        tracing::error!(slo = %c.name, error = %e, "cannot track SLO");
                        None
                    }
                }
            })
            .collect();
        Self { slos }
    }

    /// The SLOs covering route `name`.
    pub fn for_route(&self, name: &str) -> Vec<Arc<Slo>> {
        self.slos
            .iter()
            .filter(|s| s.covers(name))
            .cloned()
            .collect()
    }

    /// Every SLO.
    pub fn slos(&self) -> &[Arc<Slo>] {
        &self.slos
    }

    /// Reports of every SLO.
    pub fn report(&self, now: Instant) -> Vec<SloReport> {
        self.slos.iter().map(|s| s.report(now)).collect()
    }
}

/// `/slo` output for one SLO.
#[derive(Debug, Clone, Serialize)]
pub struct SloReport {
    /// SLO name.
    pub name: String,
    /// Routes covered (empty: all).
    pub routes: Vec<String>,
    /// One entry per window.
    pub windows: Vec<WindowReport>,
    /// Multi-window burn-rate alert pairs.
    pub burn_rate_pairs: Vec<BurnPair>,
}

impl SloReport {
    fn empty(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            routes: Vec::new(),
            windows: Vec::new(),
            burn_rate_pairs: Vec::new(),
        }
    }
}

/// One window of one SLO.
#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    /// `1m`, `5m`, `30m`, `1h`, `6h`.
    pub window: String,
    /// Time actually covered (shorter than the window after a start).
    pub covered_seconds: f64,
    /// Requests.
    pub requests: u64,
    /// 5xx responses.
    pub errors: u64,
    /// Requests per second over the covered time.
    pub rate: f64,
    /// errors / requests.
    pub error_ratio: f64,
    /// Percentiles in milliseconds (null without requests).
    pub p50_ms: Option<f64>,
    /// p90.
    pub p90_ms: Option<f64>,
    /// p95.
    pub p95_ms: Option<f64>,
    /// p99.
    pub p99_ms: Option<f64>,
    /// p99.9.
    pub p999_ms: Option<f64>,
    /// Slowest request.
    pub max_ms: Option<f64>,
    /// Each objective, met or missed.
    pub objectives: Vec<Objective>,
    /// error_ratio / (1 - availability).
    pub availability_burn_rate: Option<f64>,
    /// Per latency objective: (share slower than the threshold) / (1 - q).
    pub latency_burn_rates: Vec<LatencyBurn>,
}

/// An objective's verdict in a window.
#[derive(Debug, Clone, Serialize)]
pub struct Objective {
    /// e.g. `p95<=350ms`.
    pub objective: String,
    /// `latency`, `availability` or `throughput`.
    pub kind: &'static str,
    /// The bound, in the unit of `value`: the latency threshold (ms, an
    /// upper bound), the availability (%) or the minimum rate (req/s).
    pub target: f64,
    /// The measured value (ms, %, or req/s).
    pub value: Option<f64>,
    /// Whether it holds.
    pub met: bool,
    /// Share of the window's error budget left, `1 - burn rate` (0 when
    /// spent at exactly the allowed rate, negative when overspent); null
    /// without requests and for throughput, which has no budget.
    pub budget_remaining: Option<f64>,
}

/// Burn rate of a latency objective.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyBurn {
    /// e.g. `p95`.
    pub objective: String,
    /// Burn rate, null without requests.
    pub burn_rate: Option<f64>,
}

/// A short/long window pair of the multi-window burn-rate alert.
#[derive(Debug, Clone, Serialize)]
pub struct BurnPair {
    /// The SLI: `availability` or `latency_pNN` (the label of
    /// `gateway_slo_burn_rate`).
    pub sli: String,
    /// Short window.
    pub short: String,
    /// Long window.
    pub long: String,
    /// Both must exceed this to fire.
    pub threshold: f64,
    /// The SLI's burn rate in the short window.
    pub short_burn_rate: Option<f64>,
    /// The SLI's burn rate in the long window.
    pub long_burn_rate: Option<f64>,
    /// Whether the pair would page.
    pub firing: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::telemetry::default_slos;

    fn slo() -> Slo {
        Slo::new(default_slos().remove(0), Instant::now()).unwrap()
    }

    fn window<'a>(r: &'a SloReport, w: &str) -> &'a WindowReport {
        r.windows.iter().find(|x| x.window == w).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn percentiles_are_exact_to_three_digits() {
        let s = slo();
        // 1..=1000 ms, one request each: p50 = 500 ms, p99 = 990 ms.
        for ms in 1..=1000u64 {
            s.record(Instant::now(), Duration::from_millis(ms), false);
        }
        let r = s.report(Instant::now());
        let w = window(&r, "1m");
        assert_eq!(w.requests, 1000);
        let p50 = w.p50_ms.unwrap();
        let p99 = w.p99_ms.unwrap();
        assert!((p50 - 500.0).abs() <= 0.5, "{p50}");
        assert!((p99 - 990.0).abs() <= 1.0, "{p99}");
        assert!((w.max_ms.unwrap() - 1000.0).abs() <= 1.0);
        // p95 = 950 ms > 350 ms: missed; availability met.
        assert!(!w.objectives[0].met);
        assert!(w.objectives[2].met);
    }

    #[tokio::test(start_paused = true)]
    async fn windows_slide_and_roll_up() {
        let s = slo();
        // 10 errors now.
        for _ in 0..10 {
            s.record(Instant::now(), Duration::from_millis(5), true);
        }
        tokio::time::advance(Duration::from_secs(90)).await;
        for _ in 0..90 {
            s.record(Instant::now(), Duration::from_millis(5), false);
        }
        let r = s.report(Instant::now());
        // The 1m window no longer sees the errors; 5m and longer do.
        assert_eq!(window(&r, "1m").errors, 0);
        assert_eq!(window(&r, "1m").requests, 90);
        for w in ["5m", "30m", "1h", "6h"] {
            assert_eq!(window(&r, w).requests, 100, "{w}");
            assert_eq!(window(&r, w).errors, 10, "{w}");
        }
        // 10 % errors against a 0.5 % budget: burn rate 20.
        let burn = window(&r, "5m").availability_burn_rate.unwrap();
        assert!((burn - 20.0).abs() < 1e-9, "{burn}");
        assert!(r.burn_rate_pairs[0].firing, "{:?}", r.burn_rate_pairs);
        // Availability's pairs first, then each latency SLI's (5 ms is fast).
        let pairs: Vec<_> = r
            .burn_rate_pairs
            .iter()
            .map(|p| (p.sli.as_str(), p.short.as_str(), p.firing))
            .collect();
        assert_eq!(
            pairs,
            [
                ("availability", "5m", true),
                ("availability", "30m", true),
                ("latency_p95", "5m", false),
                ("latency_p95", "30m", false),
                ("latency_p99", "5m", false),
                ("latency_p99", "30m", false),
            ]
        );

        // After 10 minutes only the 30m+ windows remember them.
        tokio::time::advance(Duration::from_secs(600)).await;
        let r = s.report(Instant::now());
        assert_eq!(window(&r, "5m").requests, 0);
        assert_eq!(window(&r, "30m").errors, 10);
        // After 7 hours, nothing.
        tokio::time::advance(Duration::from_secs(7 * 3600)).await;
        let r = s.report(Instant::now());
        assert_eq!(window(&r, "6h").requests, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_over_a_long_run() {
        let s = slo();
        for _ in 0..(8 * 360) {
            // 8 hours in 10 s steps, a few requests each.
            for ms in [1u64, 10, 100] {
                s.record(Instant::now(), Duration::from_millis(ms), false);
            }
            tokio::time::advance(FINE).await;
        }
        let bytes = s.memory_bytes();
        let slots = FINE_SLOTS + MID_SLOTS + COARSE_SLOTS + 3;
        assert!(bytes <= slots * 20_000 * 4, "{bytes} bytes");
        let r = s.report(Instant::now());
        let six_h = window(&r, "6h").requests;
        assert!((3 * (2160 - 70)..=3 * 2161).contains(&six_h), "{six_h}");
        eprintln!("SLO engine memory after 8 h: {bytes} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_share_burn_rate_counts_requests_over_the_threshold() {
        let s = slo();
        for i in 0..100u64 {
            // 10 requests over 350 ms.
            let ms = if i < 10 { 400 } else { 50 };
            s.record(Instant::now(), Duration::from_millis(ms), false);
        }
        let r = s.report(Instant::now());
        let w = window(&r, "1m");
        // p95: 10 % slow / 5 % allowed = 2.
        assert!((w.latency_burn_rates[0].burn_rate.unwrap() - 2.0).abs() < 1e-9);
        // Twice the allowed share spent: the budget is overspent by one budget.
        let o = &w.objectives[0];
        assert_eq!((o.kind, o.target), ("latency", 350.0));
        assert!((o.budget_remaining.unwrap() + 1.0).abs() < 1e-9, "{o:?}");
        let a = &w.objectives[2];
        assert_eq!((a.kind, a.budget_remaining), ("availability", Some(1.0)));
        let five = window(&r, "5m").objectives[0].budget_remaining.unwrap();
        assert!((five + 1.0).abs() < 1e-9, "{five}");
        // Exactly at the threshold is not slow.
        let s = slo();
        s.record(Instant::now(), Duration::from_millis(350), false);
        let r = s.report(Instant::now());
        assert_eq!(window(&r, "1m").latency_burn_rates[0].burn_rate, Some(0.0));
    }
}
