//! Live client-side metrics for Prometheus (`loadgen run --prometheus-listen ADDR`), as
//! k6 users watch them in Grafana next to the server's: requests and failures by request
//! name and status class, a latency histogram per name with the gateway's bucket edges
//! ([`LATENCY_BUCKETS`], so `histogram_quantile` interpolates the same way on both sides),
//! simulated users, and the generator's own CPU saturation.
//!
//! Recording is a handful of relaxed atomic adds per request (no lock, no allocation):
//! [`Exporter::observe`] is called by [`crate::metrics::Recorder`] beside its HDR
//! histograms. The text exposition is rendered only when Prometheus scrapes `/metrics`.
//!
//! [`serve`] binds the listener and installs the exporter for the process; every
//! [`crate::metrics::Recorder`] made afterwards reports to it, so runs started later in
//! the same process (the web UI) keep counting into the same monotonic counters.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Latency bucket upper bounds in seconds when the gateway's own are unknown: its
/// request-histogram edges under the shipped configs, `telemetry.buckets`' default with
/// the seed SLO thresholds (350 ms, 650 ms) merged in as `gateway::telemetry::buckets`
/// does (a test keeps the two equal; loadgen does not depend on the gateway crate). With
/// `--metrics-url`, the edges the gateway exposes are used instead ([`gateway_edges`]).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.35, 0.5, 0.65, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// The gateway's request-histogram family, whose edges loadgen copies when it can.
pub const GATEWAY_HISTOGRAM: &str = "gateway_request_duration_seconds_bucket";

/// The finite `le` edges of the gateway's request histogram in a text exposition, sorted;
/// `None` when it has none yet (no request recorded).
pub fn gateway_edges(text: &str) -> Option<Vec<f64>> {
    let mut edges: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.starts_with(GATEWAY_HISTOGRAM) && l[GATEWAY_HISTOGRAM.len()..].starts_with('{')
        })
        .filter_map(|l| {
            let rest = &l[l.find("le=\"")? + 4..];
            rest[..rest.find('"')?].parse::<f64>().ok()
        })
        .filter(|e| e.is_finite() && *e > 0.0)
        .collect();
    edges.sort_by(f64::total_cmp);
    edges.dedup();
    (!edges.is_empty()).then_some(edges)
}

/// Status-class label values; `error` is a request without a response (connection
/// failure, timeout, cut off at the stop).
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// Bound on a scrape request's head.
const MAX_HEAD: usize = 8 * 1024;
/// Bound on reading a scrape request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Period of the CPU sampler.
const CPU_PERIOD: Duration = Duration::from_secs(1);
/// Longest wait for a last scrape after the run ([`Server::linger`]).
pub const MAX_LINGER: Duration = Duration::from_secs(60);

/// The status-class index of a response status (`None`: no response).
pub fn class_index(status: Option<u16>) -> usize {
    match status {
        Some(100..=199) => 0,
        Some(200..=299) => 1,
        Some(300..=399) => 2,
        Some(400..=499) => 3,
        Some(500..=599) => 4,
        _ => 5,
    }
}

/// One request name's series.
#[derive(Debug)]
struct Series {
    method: String,
    name: String,
    requests: [AtomicU64; 6],
    failures: [AtomicU64; 6],
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

/// The live client-side metrics of this process.
#[derive(Debug)]
pub struct Exporter {
    edges: Vec<f64>,
    edges_us: Vec<u64>,
    series: Vec<Series>,
    scenario: String,
    users: AtomicU64,
    workers: u64,
    /// CPU used over the last sample, per mille of the worker threads.
    cpu_permille: AtomicU64,
    /// Process CPU time, clock ticks (1/100 s).
    cpu_ticks: AtomicU64,
    scrapes: AtomicU64,
}

impl Exporter {
    /// An exporter for these `(method, name)` statistics entries (the scenario's
    /// `stat_names`, in order), with `workers` runtime threads for the CPU share and
    /// `edges` (seconds, ascending; [`LATENCY_BUCKETS`] when `None`).
    pub fn new(
        scenario: &str,
        names: &[(String, String)],
        workers: usize,
        edges: Option<Vec<f64>>,
    ) -> Self {
        let edges = edges.unwrap_or_else(|| LATENCY_BUCKETS.to_vec());
        let edges_us = edges
            .iter()
            .map(|s| (s * 1_000_000.0).round() as u64)
            .collect::<Vec<_>>();
        let series = names
            .iter()
            .map(|(m, n)| Series {
                method: m.clone(),
                name: n.clone(),
                requests: Default::default(),
                failures: Default::default(),
                buckets: (0..=edges_us.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_us: AtomicU64::new(0),
            })
            .collect();
        Self {
            edges,
            edges_us,
            series,
            scenario: scenario.to_owned(),
            users: AtomicU64::new(0),
            workers: workers.max(1) as u64,
            cpu_permille: AtomicU64::new(0),
            cpu_ticks: AtomicU64::new(crate::monitor::process_cpu_ticks().unwrap_or(0)),
            scrapes: AtomicU64::new(0),
        }
    }

    /// Records one request of entry `stat`: its status (`None`: no response), latency in
    /// microseconds and whether it failed. Relaxed atomic adds only.
    pub fn observe(&self, stat: usize, status: Option<u16>, latency_us: u64, failed: bool) {
        let Some(s) = self.series.get(stat) else {
            return;
        };
        let class = class_index(status);
        if let Some(c) = s.requests.get(class) {
            c.fetch_add(1, Relaxed);
        }
        if failed {
            if let Some(c) = s.failures.get(class) {
                c.fetch_add(1, Relaxed);
            }
        }
        let bucket = self.edges_us.partition_point(|e| *e < latency_us);
        if let Some(b) = s.buckets.get(bucket) {
            b.fetch_add(1, Relaxed);
        }
        s.sum_us.fetch_add(latency_us, Relaxed);
    }

    /// Sets the simulated users (or iterations in flight) now running.
    pub fn set_users(&self, users: u64) {
        self.users.store(users, Relaxed);
    }

    /// Scrapes answered so far.
    pub fn scrapes(&self) -> u64 {
        self.scrapes.load(Relaxed)
    }

    fn sample_cpu(&self, wall: Duration) {
        let Some(now) = crate::monitor::process_cpu_ticks() else {
            return;
        };
        let before = self.cpu_ticks.swap(now, Relaxed);
        let wall = wall.as_secs_f64();
        if wall > 0.0 {
            let share = now.saturating_sub(before) as f64 / 100.0 / wall / self.workers as f64;
            self.cpu_permille
                .store((share * 1000.0).round().max(0.0) as u64, Relaxed);
        }
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096 + self.series.len() * 2048);
        let _ = writeln!(
            out,
            "# HELP loadgen_requests_total Requests completed by loadgen, by request name and status class (error: no response).\n# TYPE loadgen_requests_total counter"
        );
        for s in &self.series {
            for (i, c) in CLASSES.iter().enumerate() {
                let n = s.requests.get(i).map_or(0, |a| a.load(Relaxed));
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "loadgen_requests_total{{method=\"{}\",name=\"{}\",status_class=\"{c}\"}} {n}",
                        escape(&s.method),
                        escape(&s.name)
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP loadgen_request_failures_total Requests loadgen counted as failed (status, check, timeout or connection error).\n# TYPE loadgen_request_failures_total counter"
        );
        for s in &self.series {
            for (i, c) in CLASSES.iter().enumerate() {
                let n = s.failures.get(i).map_or(0, |a| a.load(Relaxed));
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "loadgen_request_failures_total{{method=\"{}\",name=\"{}\",status_class=\"{c}\"}} {n}",
                        escape(&s.method),
                        escape(&s.name)
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP loadgen_request_duration_seconds Client-side request latency, with the gateway's bucket edges.\n# TYPE loadgen_request_duration_seconds histogram"
        );
        for s in &self.series {
            let counts: Vec<u64> = s.buckets.iter().map(|b| b.load(Relaxed)).collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let labels = format!(
                "method=\"{}\",name=\"{}\"",
                escape(&s.method),
                escape(&s.name)
            );
            let mut cumulative = 0u64;
            for (edge, n) in self.edges.iter().zip(&counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "loadgen_request_duration_seconds_bucket{{{labels},le=\"{edge:?}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "loadgen_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {total}\nloadgen_request_duration_seconds_sum{{{labels}}} {:?}\nloadgen_request_duration_seconds_count{{{labels}}} {total}",
                s.sum_us.load(Relaxed) as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "# HELP loadgen_users Simulated users running (open model: iterations in flight).\n# TYPE loadgen_users gauge\nloadgen_users {}",
            self.users.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP loadgen_cpu_saturation Share of loadgen's worker threads its process used over the last second (>= 0.95: the generator, not the target, is the limit).\n# TYPE loadgen_cpu_saturation gauge\nloadgen_cpu_saturation {:?}",
            self.cpu_permille.load(Relaxed) as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "# HELP loadgen_worker_threads Runtime worker threads of loadgen.\n# TYPE loadgen_worker_threads gauge\nloadgen_worker_threads {}",
            self.workers
        );
        let _ = writeln!(
            out,
            "# HELP loadgen_run_info The scenario being run.\n# TYPE loadgen_run_info gauge\nloadgen_run_info{{scenario=\"{}\"}} 1",
            escape(&self.scenario)
        );
        out
    }
}

/// A label value escaped for the text format.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

static INSTALLED: RwLock<Option<Arc<Exporter>>> = RwLock::new(None);

/// The exporter every new [`crate::metrics::Recorder`] reports to, if one is served.
pub fn installed() -> Option<Arc<Exporter>> {
    INSTALLED
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// A running `/metrics` endpoint.
#[derive(Debug)]
pub struct Server {
    /// The bound address (the port the OS chose for `:0`).
    pub addr: SocketAddr,
    /// The exporter it serves.
    pub exporter: Arc<Exporter>,
    last_scrape: Arc<RwLock<Vec<Instant>>>,
}

impl Server {
    /// After a run: waits until Prometheus has scraped once more, so the final counts are
    /// stored, for at most twice the scrape interval seen plus a second (bounded by
    /// [`MAX_LINGER`]); returns at once when nothing has scraped.
    pub async fn linger(&self) {
        let (seen, interval) = {
            let times = self
                .last_scrape
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let interval = match times.as_slice() {
                [.., a, b] => *b - *a,
                _ => Duration::from_secs(15),
            };
            (times.len(), interval)
        };
        if seen == 0 {
            return;
        }
        let bound = (interval * 2 + Duration::from_secs(1)).min(MAX_LINGER);
        let start = Instant::now();
        let before = self.exporter.scrapes();
        eprintln!(
            "loadgen: waiting up to {:.0}s for a last Prometheus scrape",
            bound.as_secs_f64()
        );
        while self.exporter.scrapes() == before && start.elapsed() < bound {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Binds `addr`, installs an exporter for `names` (see [`Exporter::new`]) and serves
/// `/metrics` on it until the runtime ends. Prints the bound address to stderr.
pub async fn serve(
    addr: &str,
    scenario: &str,
    names: &[(String, String)],
    workers: usize,
    edges: Option<Vec<f64>>,
) -> Result<Server, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--prometheus-listen {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("--prometheus-listen {addr}: {e}"))?;
    let exporter = Arc::new(Exporter::new(scenario, names, workers, edges));
    *INSTALLED.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&exporter));
    let last_scrape = Arc::new(RwLock::new(Vec::new()));
    {
        let exporter = Arc::clone(&exporter);
        tokio::spawn(async move {
            let mut mark = Instant::now();
            loop {
                tokio::time::sleep(CPU_PERIOD).await;
                let now = Instant::now();
                exporter.sample_cpu(now - mark);
                mark = now;
            }
        });
    }
    {
        let exporter = Arc::clone(&exporter);
        let last_scrape = Arc::clone(&last_scrape);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let exporter = Arc::clone(&exporter);
                let last_scrape = Arc::clone(&last_scrape);
                tokio::spawn(async move {
                    if answer(stream, &exporter).await {
                        let mut times = last_scrape.write().unwrap_or_else(PoisonError::into_inner);
                        if times.len() >= 2 {
                            times.remove(0);
                        }
                        times.push(Instant::now());
                        exporter.scrapes.fetch_add(1, Relaxed);
                    }
                });
            }
        });
    }
    eprintln!("loadgen: Prometheus metrics on http://{bound}/metrics");
    Ok(Server {
        addr: bound,
        exporter,
        last_scrape,
    })
}

/// Answers one HTTP/1.x request on `stream` and closes it; true for a served scrape.
async fn answer(mut stream: TcpStream, exporter: &Exporter) -> bool {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return false;
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    let (status, ctype, body, scrape) = match (method, path) {
        (b"GET" | b"HEAD", b"/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            exporter.render(),
            true,
        ),
        (b"GET" | b"HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics\n".to_owned(),
            false,
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET /metrics\n".to_owned(),
            false,
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if method != b"HEAD" {
        response.push_str(&body);
    }
    let ok = stream.write_all(response.as_bytes()).await.is_ok();
    let _ = stream.shutdown().await;
    ok && scrape
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_le_inclusive() {
        let e = Exporter::new("s", &[("GET".into(), "/a \"q\"".into())], 1, None);
        e.observe(0, Some(200), 1_000, false); // exactly 1 ms: the 0.001 bucket
        e.observe(0, Some(503), 1_001, true);
        e.observe(0, None, 40_000_000, true); // past the last edge: +Inf only
        let text = e.render();
        let name = "method=\"GET\",name=\"/a \\\"q\\\"\"";
        for line in [
            format!("loadgen_request_duration_seconds_bucket{{{name},le=\"0.001\"}} 1"),
            format!("loadgen_request_duration_seconds_bucket{{{name},le=\"0.0025\"}} 2"),
            format!("loadgen_request_duration_seconds_bucket{{{name},le=\"30.0\"}} 2"),
            format!("loadgen_request_duration_seconds_bucket{{{name},le=\"+Inf\"}} 3"),
            format!("loadgen_request_duration_seconds_count{{{name}}} 3"),
            format!("loadgen_requests_total{{{name},status_class=\"2xx\"}} 1"),
            format!("loadgen_request_failures_total{{{name},status_class=\"5xx\"}} 1"),
            format!("loadgen_request_failures_total{{{name},status_class=\"error\"}} 1"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(!text.contains("status_class=\"4xx\""));
    }

    #[test]
    fn edges_are_read_from_the_gateways_exposition() {
        let text = "# TYPE gateway_request_duration_seconds histogram\n\
            gateway_request_duration_seconds_bucket{route=\"a\",le=\"0.35\"} 1\n\
            gateway_request_duration_seconds_bucket{route=\"a\",le=\"0.1\"} 1\n\
            gateway_request_duration_seconds_bucket{route=\"b\",le=\"0.1\"} 1\n\
            gateway_request_duration_seconds_bucket{route=\"a\",le=\"+Inf\"} 1\n\
            gateway_request_duration_seconds_bucket_x{le=\"9\"} 1\n\
            gateway_upstream_request_duration_seconds_bucket{le=\"7\"} 1\n";
        assert_eq!(gateway_edges(text), Some(vec![0.1, 0.35]));
        assert_eq!(gateway_edges("gateway_requests_total 3\n"), None);
    }
}
