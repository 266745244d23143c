//! Measurement: HDR histograms (microseconds, 3 significant digits, 1 µs to 1 h) per
//! request name and in total, counters, a bounded table of failure kinds, and a per-second
//! time series. Memory depends on the number of request names, never on the number of
//! requests; the series grows by one small point per second.
//!
//! [`Recorder`] is the live side (shared by every simulated user); [`RunResult`] is what a
//! run produces, what a `--shard` writes to its result file, and what every report reads.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Lowest value tracked, in microseconds.
pub const LOWEST_US: u64 = 1;
/// Highest value tracked (one hour), in microseconds; longer latencies are clamped to it.
pub const HIGHEST_US: u64 = 3_600_000_000;
/// Significant digits kept.
pub const SIGFIG: u8 = 3;
/// The percentiles every report shows (Locust's columns).
pub const PERCENTILES: [f64; 11] = [
    0.50, 0.66, 0.75, 0.80, 0.90, 0.95, 0.98, 0.99, 0.999, 0.9999, 1.0,
];
/// Distinct failure kinds kept; further kinds are counted as one.
pub const MAX_FAILURE_KINDS: usize = 1000;
/// Distinct exception messages kept.
pub const MAX_EXCEPTION_KINDS: usize = 100;
/// The failure kind that absorbs the rest past [`MAX_FAILURE_KINDS`].
pub const OTHER_FAILURES: &str = "(other failures, past the table's bound)";
/// The failure of a request still in flight when the run's stop timeout ran out: a
/// timeout, as k6 (`request timeout`) and Locust would name it, with the time it had taken
/// so far as its latency.
pub const STOPPED_IN_FLIGHT: &str = "request timeout: still in flight when the run stopped";

/// A histogram could not be made.
#[derive(Debug, thiserror::Error)]
#[error("histogram: {0}")]
pub struct HistogramError(String);

/// An empty histogram with the bounds above.
pub fn new_histogram() -> Result<Histogram<u64>, HistogramError> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGFIG)
        .map_err(|e| HistogramError(format!("{e:?}")))
}

/// Serializes a histogram as `[[value_us, count], ...]` of its recorded buckets: exact at
/// the histogram's precision, so merged result files give the same percentiles as one run.
mod hist_serde {
    use hdrhistogram::Histogram;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(u64, u64)> = h
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        pairs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        let pairs = Vec::<(u64, u64)>::deserialize(d)?;
        let mut h = super::new_histogram().map_err(serde::de::Error::custom)?;
        for (v, n) in pairs {
            h.record_n(v.clamp(super::LOWEST_US, super::HIGHEST_US), n)
                .map_err(|e| serde::de::Error::custom(format!("{e:?}")))?;
        }
        Ok(h)
    }
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The statistics of one request name (or of all: the `Aggregated` row).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatEntry {
    /// HTTP method (empty for the aggregate).
    pub method: String,
    /// Request name.
    pub name: String,
    /// Requests made.
    pub requests: u64,
    /// Requests that failed.
    pub failures: u64,
    /// Response body bytes received.
    pub bytes: u64,
    /// Sum of the latencies in microseconds (for exact averages).
    pub sum_us: u64,
    /// Latencies in microseconds.
    #[serde(with = "hist_serde")]
    pub hist: Histogram<u64>,
}

impl StatEntry {
    /// An empty entry.
    pub fn new(method: &str, name: &str, template: &Histogram<u64>) -> Self {
        Self {
            method: method.to_owned(),
            name: name.to_owned(),
            requests: 0,
            failures: 0,
            bytes: 0,
            sum_us: 0,
            hist: Histogram::new_from(template),
        }
    }

    fn record(&mut self, latency_us: u64, bytes: u64, failed: bool) {
        self.requests += 1;
        self.failures += u64::from(failed);
        self.bytes += bytes;
        self.sum_us = self.sum_us.saturating_add(latency_us);
        self.hist
            .saturating_record(latency_us.clamp(LOWEST_US, HIGHEST_US));
    }

    /// Adds another entry's counts and histogram (exact).
    pub fn merge(&mut self, other: &StatEntry) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.bytes += other.bytes;
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        // Same bounds everywhere, so adding cannot fail; a failure would only lose samples.
        let _ = self.hist.add(&other.hist);
    }

    /// A percentile (`q` in 0..=1) in milliseconds.
    pub fn percentile_ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        us_to_ms(self.hist.value_at_quantile(q))
    }

    /// Average latency in milliseconds.
    pub fn avg_ms(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        self.sum_us as f64 / self.requests as f64 / 1000.0
    }

    /// Lowest latency in milliseconds.
    pub fn min_ms(&self) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        us_to_ms(self.hist.min())
    }

    /// Highest latency in milliseconds.
    pub fn max_ms(&self) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        us_to_ms(self.hist.max())
    }

    /// Failed share in percent.
    pub fn error_rate_pct(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        self.failures as f64 * 100.0 / self.requests as f64
    }

    /// Average response size in bytes.
    pub fn avg_size(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        self.bytes as f64 / self.requests as f64
    }
}

/// One failure kind (Locust's `_failures.csv` row).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureEntry {
    /// HTTP method.
    pub method: String,
    /// Request name.
    pub name: String,
    /// Error message.
    pub error: String,
    /// How often.
    pub occurrences: u64,
    /// Unix time of the first occurrence (Locust's `First Seen`).
    #[serde(default)]
    pub first_seen: Option<f64>,
    /// Unix time of the last occurrence (Locust's `Last Seen`).
    #[serde(default)]
    pub last_seen: Option<f64>,
}

/// One exception kind (Locust's `_exceptions.csv` row): errors of the user's flow rather
/// than of a request (a token that could not be extracted, a fault that could not be set).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExceptionEntry {
    /// How often.
    pub count: u64,
    /// Message.
    pub message: String,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Unix time at the end of the second.
    pub unix: f64,
    /// Seconds since the start.
    pub elapsed: f64,
    /// Simulated users (closed) or iterations in flight (open).
    pub users: u64,
    /// Requests completed in the second.
    pub requests: u64,
    /// Of which failed.
    pub failures: u64,
    /// Latency percentiles of the second, milliseconds, in [`PERCENTILES`] order.
    pub percentiles: Vec<f64>,
    /// Cumulative totals at that time: requests, failures.
    pub total_requests: u64,
    /// Cumulative failures.
    pub total_failures: u64,
    /// Cumulative median, average, min, max (ms) and average size (bytes).
    pub total_median: f64,
    /// Cumulative average latency.
    pub total_avg: f64,
    /// Cumulative lowest latency.
    pub total_min: f64,
    /// Cumulative highest latency.
    pub total_max: f64,
    /// Cumulative average response size.
    pub total_avg_size: f64,
    /// Cumulative latency percentiles, ms, in [`PERCENTILES`] order (what Locust's
    /// `_stats_history.csv` shows for the Aggregated row); empty in old result files.
    #[serde(default)]
    pub total_percentiles: Vec<f64>,
}

impl SeriesPoint {
    /// The interval's percentile `q` (one of [`PERCENTILES`]) in ms.
    pub fn pct(&self, q: f64) -> f64 {
        PERCENTILES
            .iter()
            .position(|p| (p - q).abs() < 1e-9)
            .and_then(|i| self.percentiles.get(i))
            .copied()
            .unwrap_or(0.0)
    }
}

/// Whether the generator kept up; an unreliable run says why.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reliability {
    /// True when any warning below made the run unreliable.
    pub unreliable: bool,
    /// Why.
    pub reasons: Vec<String>,
    /// Largest timer lag of the generator's runtime, ms.
    pub max_lag_ms: f64,
    /// Seconds with the generator's CPU saturated.
    pub cpu_saturated_secs: u64,
    /// Open model: arrivals sent later than their schedule allows.
    pub late_arrivals: u64,
    /// Open model: arrivals scheduled.
    pub arrivals: u64,
}

/// Server-side figures scraped from the gateway's `/metrics`, beside the client's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerSide {
    /// Requests the server counted during the run.
    pub requests: f64,
    /// Its error rate in percent (5xx).
    pub error_rate_pct: f64,
    /// Its p95 and p99 in ms (from histogram buckets).
    pub p95_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// Divergences from the client-side figures worth a look.
    pub divergences: Vec<String>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// Result file format version.
    pub format: u32,
    /// Scenario name.
    pub scenario: String,
    /// Target.
    pub host: String,
    /// The load shape, in words.
    pub plan: String,
    /// Unix time of the start.
    pub started_unix: f64,
    /// Seconds measured.
    pub duration_secs: f64,
    /// Per request name.
    pub stats: Vec<StatEntry>,
    /// All requests.
    pub total: StatEntry,
    /// Failure kinds.
    pub failures: Vec<FailureEntry>,
    /// Exception kinds.
    pub exceptions: Vec<ExceptionEntry>,
    /// Per-second series.
    pub series: Vec<SeriesPoint>,
    /// The threshold expressions judged on this result.
    pub thresholds: Vec<String>,
    /// Checks that passed and failed (k6's `checks`).
    pub checks_passed: u64,
    /// Failed checks.
    pub checks_failed: u64,
    /// Most users (or iterations in flight) at once.
    pub max_users: u64,
    /// Stopped by Ctrl-C.
    pub interrupted: bool,
    /// Whether the generator kept up.
    pub reliability: Reliability,
    /// Shards merged into this result (`i/n` each); empty for a single run.
    pub shards: Vec<String>,
    /// Requests still in flight when the stop timeout ran out, recorded as failures
    /// ([`STOPPED_IN_FLIGHT`]); they are in every count and histogram above.
    #[serde(default)]
    pub stopped_in_flight: u64,
    /// Open model: arrivals that found every VU busy and were dropped, never sent (k6's
    /// `dropped_iterations`).
    #[serde(default)]
    pub dropped_iterations: u64,
    /// Server-side cross-check, when scraped.
    pub server: Option<ServerSide>,
}

/// The current format of [`RunResult`] files.
pub const RESULT_FORMAT: u32 = 1;

impl RunResult {
    /// Requests per second over the run.
    pub fn rps(&self) -> f64 {
        rate(self.total.requests, self.duration_secs)
    }

    /// The entry of a request name, or the total for `None`.
    pub fn entry(&self, name: Option<&str>) -> Option<&StatEntry> {
        match name {
            None => Some(&self.total),
            Some(n) => self.stats.iter().find(|s| s.name == n),
        }
    }
}

/// Seconds since the Unix epoch (0 before it).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `n / secs`, 0 for an empty duration.
pub fn rate(n: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        n as f64 / secs
    }
}

/// The live view of the last second.
#[derive(Debug, Clone, Default)]
pub struct LiveLine {
    /// Requests completed in total.
    pub requests: u64,
    /// Failures in total.
    pub failures: u64,
    /// Requests per second in the last interval.
    pub rps: f64,
    /// p50, p95, p99 of the last interval, ms.
    pub p50: f64,
    /// p95.
    pub p95: f64,
    /// p99.
    pub p99: f64,
}

#[derive(Debug)]
struct Live {
    stats: Vec<StatEntry>,
    total: StatEntry,
    interval: Histogram<u64>,
    interval_requests: u64,
    interval_failures: u64,
    /// (occurrences, first seen, last seen unix time) per (entry, error).
    failures: HashMap<(usize, String), (u64, f64, f64)>,
    exceptions: HashMap<String, u64>,
    checks_passed: u64,
    checks_failed: u64,
    series: Vec<SeriesPoint>,
    max_users: u64,
    stopped_in_flight: u64,
}

/// The live recorder every simulated user reports to. One short lock per request; never
/// held across an await.
#[derive(Debug)]
pub struct Recorder {
    live: Mutex<Live>,
    /// The `--prometheus-listen` exporter, when one is served (atomics, no lock).
    prom: Option<std::sync::Arc<crate::prom::Exporter>>,
}

impl Recorder {
    /// A recorder for these `(method, name)` statistics entries, in this order.
    pub fn new(names: &[(String, String)]) -> Result<Self, HistogramError> {
        let template = new_histogram()?;
        Ok(Self {
            live: Mutex::new(Live {
                stats: names
                    .iter()
                    .map(|(m, n)| StatEntry::new(m, n, &template))
                    .collect(),
                total: StatEntry::new("", "Aggregated", &template),
                interval: Histogram::new_from(&template),
                interval_requests: 0,
                interval_failures: 0,
                failures: HashMap::new(),
                exceptions: HashMap::new(),
                checks_passed: 0,
                checks_failed: 0,
                series: Vec::new(),
                max_users: 0,
                stopped_in_flight: 0,
            }),
            prom: crate::prom::installed(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one request of entry `stat` that got no response; `error` makes it a
    /// failure.
    pub fn record(
        &self,
        stat: usize,
        latency: Duration,
        bytes: u64,
        checks: usize,
        error: Option<&str>,
    ) {
        self.record_response(stat, None, latency, bytes, checks, error);
    }

    /// Records one request of entry `stat` with its response status (`None`: no
    /// response); `error` makes it a failure.
    pub fn record_response(
        &self,
        stat: usize,
        status: Option<u16>,
        latency: Duration,
        bytes: u64,
        checks: usize,
        error: Option<&str>,
    ) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(HIGHEST_US);
        let failed = error.is_some();
        if let Some(p) = &self.prom {
            p.observe(stat, status, us, failed);
        }
        let mut live = self.lock();
        let live = &mut *live;
        if let Some(entry) = live.stats.get_mut(stat) {
            entry.record(us, bytes, failed);
        }
        live.total.record(us, bytes, failed);
        live.interval
            .saturating_record(us.clamp(LOWEST_US, HIGHEST_US));
        live.interval_requests += 1;
        live.interval_failures += u64::from(failed);
        let checks = checks as u64;
        match error {
            None => live.checks_passed += checks,
            Some(e) => {
                if e.starts_with("check failed") {
                    live.checks_failed += 1;
                    live.checks_passed += checks.saturating_sub(1);
                }
                let full = live.failures.len() >= MAX_FAILURE_KINDS;
                let mut key = (stat, e.to_owned());
                if full && !live.failures.contains_key(&key) {
                    key = (stat, OTHER_FAILURES.to_owned());
                }
                let now = unix_now();
                let seen = live.failures.entry(key).or_insert((0, now, now));
                seen.0 += 1;
                seen.2 = now;
            }
        }
    }

    /// Records a request still in flight when the run's stop timeout ran out: a failure
    /// ([`STOPPED_IN_FLIGHT`]) whose latency is the time it had taken so far.
    pub fn record_stopped(&self, stat: usize, latency: Duration, checks: usize) {
        self.record(stat, latency, 0, checks, Some(STOPPED_IN_FLIGHT));
        self.lock().stopped_in_flight += 1;
    }

    /// Records an exception of the users' flow.
    pub fn exception(&self, message: &str) {
        let mut live = self.lock();
        let full = live.exceptions.len() >= MAX_EXCEPTION_KINDS;
        if !full || live.exceptions.contains_key(message) {
            *live.exceptions.entry(message.to_owned()).or_default() += 1;
        }
    }

    /// Closes the current second: appends a series point and returns the live line.
    pub fn tick(&self, unix: f64, elapsed: f64, users: u64) -> LiveLine {
        if let Some(p) = &self.prom {
            p.set_users(users);
        }
        let mut live = self.lock();
        let live = &mut *live;
        live.max_users = live.max_users.max(users);
        let pct = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                us_to_ms(h.value_at_quantile(q))
            }
        };
        let point = SeriesPoint {
            unix,
            elapsed,
            users,
            requests: live.interval_requests,
            failures: live.interval_failures,
            percentiles: PERCENTILES
                .iter()
                .map(|q| pct(&live.interval, *q))
                .collect(),
            total_requests: live.total.requests,
            total_failures: live.total.failures,
            total_median: live.total.percentile_ms(0.5),
            total_avg: live.total.avg_ms(),
            total_min: live.total.min_ms(),
            total_max: live.total.max_ms(),
            total_avg_size: live.total.avg_size(),
            total_percentiles: PERCENTILES
                .iter()
                .map(|q| live.total.percentile_ms(*q))
                .collect(),
        };
        let line = LiveLine {
            requests: live.total.requests,
            failures: live.total.failures,
            rps: live.interval_requests as f64,
            p50: point.pct(0.5),
            p95: point.pct(0.95),
            p99: point.pct(0.99),
        };
        live.series.push(point);
        live.interval.reset();
        live.interval_requests = 0;
        live.interval_failures = 0;
        line
    }

    /// Requests recorded so far.
    pub fn requests(&self) -> u64 {
        self.lock().total.requests
    }

    /// The result so far (the caller fills in the run's context).
    pub fn result(&self, duration: Duration) -> RunResult {
        let live = self.lock();
        let mut failures: Vec<FailureEntry> = live
            .failures
            .iter()
            .map(|((stat, error), (n, first, last))| {
                let (method, name) = live
                    .stats
                    .get(*stat)
                    .map(|s| (s.method.clone(), s.name.clone()))
                    .unwrap_or_default();
                FailureEntry {
                    method,
                    name,
                    error: error.clone(),
                    occurrences: *n,
                    first_seen: Some(*first),
                    last_seen: Some(*last),
                }
            })
            .collect();
        failures.sort_by(|a, b| b.occurrences.cmp(&a.occurrences).then(a.name.cmp(&b.name)));
        let mut exceptions: Vec<ExceptionEntry> = live
            .exceptions
            .iter()
            .map(|(m, n)| ExceptionEntry {
                count: *n,
                message: m.clone(),
            })
            .collect();
        exceptions.sort_by(|a, b| b.count.cmp(&a.count).then(a.message.cmp(&b.message)));
        RunResult {
            format: RESULT_FORMAT,
            scenario: String::new(),
            host: String::new(),
            plan: String::new(),
            started_unix: 0.0,
            duration_secs: duration.as_secs_f64(),
            stats: live
                .stats
                .iter()
                .filter(|s| s.requests > 0)
                .cloned()
                .collect(),
            total: live.total.clone(),
            failures,
            exceptions,
            series: live.series.clone(),
            thresholds: Vec::new(),
            checks_passed: live.checks_passed,
            checks_failed: live.checks_failed,
            max_users: live.max_users,
            interrupted: false,
            reliability: Reliability::default(),
            shards: Vec::new(),
            stopped_in_flight: live.stopped_in_flight,
            dropped_iterations: 0,
            server: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_and_round_trips_exactly() {
        let rec = Recorder::new(&[("GET".into(), "/a".into())]).unwrap();
        for ms in 1..=100u64 {
            let err = (ms % 10 == 0).then_some("HTTP 502");
            rec.record(0, Duration::from_millis(ms), 10, 0, err);
        }
        rec.tick(0.0, 1.0, 3);
        let r = rec.result(Duration::from_secs(1));
        assert_eq!(r.total.requests, 100);
        assert_eq!(r.total.failures, 10);
        assert!((r.total.percentile_ms(0.5) - 50.0).abs() < 0.1);
        assert_eq!(r.failures.len(), 1);
        assert_eq!(r.series.len(), 1);
        let json = serde_json::to_string(&r).unwrap();
        let back: RunResult = serde_json::from_str(&json).unwrap();
        for q in PERCENTILES {
            assert_eq!(back.total.percentile_ms(q), r.total.percentile_ms(q));
        }
        let mut merged = back.total.clone();
        merged.merge(&r.total);
        assert_eq!(merged.requests, 200);
        assert_eq!(merged.percentile_ms(0.99), r.total.percentile_ms(0.99));
    }
}
