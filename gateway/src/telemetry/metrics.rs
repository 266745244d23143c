//! Prometheus metrics (`prometheus-client`, the Prometheus project's own
//! crate: it is the one that can attach exemplars to histogram buckets).
//!
//! Label sets are bounded by construction: route names and upstream names
//! come from the config, methods are folded to a fixed set, statuses are
//! registered codes (any other code is folded to its class, `4xx`; outside
//! 100-599, `other`). Families persist across config reloads; each route
//! keeps lazily resolved handles to its own series so the hot path does one
//! labelled lookup (the request counter) and otherwise touches handles.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use http::Method;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::atomic_hist::AtomicHistogram;

/// Methods are folded to these (and `OTHER`) to bound cardinality.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// The method label for `m`.
pub fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

/// A `&'static str` label value from a fixed table.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct Fixed(pub &'static str);

impl EncodeLabelValue for Fixed {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0, encoder)
    }
}

/// `{route, method, status}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    route: Arc<str>,
    method: Fixed,
    status: StatusLabel,
}

/// The `status` label: a registered status code as itself, any other code
/// as its class (`4xx`), so a client or upstream cannot mint series. A
/// class still matches the rules' `status=~"5.."`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct StatusLabel(u16);

impl StatusLabel {
    /// The label of `status`.
    pub fn of(status: u16) -> Self {
        // 499 is the gateway's own "client closed request" (unregistered,
        // but a client error it logs itself and operators look for).
        let registered = status == 499
            || http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .is_some();
        if registered {
            Self(status)
        } else {
            // The class index, which no real code uses.
            Self(class_index(status) as u16)
        }
    }
}

impl EncodeLabelValue for StatusLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match CLASSES.get(usize::from(self.0)) {
            Some(class) if self.0 < 100 => EncodeLabelValue::encode(class, encoder),
            _ => write!(encoder, "{}", self.0),
        }
    }
}

/// `{route, method, status_class}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    route: Arc<str>,
    method: Fixed,
    status_class: Fixed,
}

/// `{route}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    route: Arc<str>,
}

/// `{upstream}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Upstream pool name.
    pub upstream: Arc<str>,
}

/// `{trace_id}`, the exemplar of a latency observation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabel {
    /// W3C trace id (32 hex digits).
    pub trace_id: String,
}

/// A labelled decision counter: `{route, decision}` style families used by
/// the middleware layers (rate limit, cache, JWT).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Route name.
    pub route: Arc<str>,
    /// The decision or reason.
    pub decision: Fixed,
}

/// `{upstream, outcome}` of an upstream attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Upstream pool name.
    pub upstream: Arc<str>,
    /// One of [`ATTEMPT_OUTCOMES`].
    pub outcome: Fixed,
}

/// What an upstream attempt can come to: its response's status class, or
/// why no response came (the `error.type` of its CLIENT span). Every pool
/// has a series for each, at 0 from the config load.
pub const ATTEMPT_OUTCOMES: [&str; 15] = [
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "connect_failed",
    "connect_timeout",
    "connection_closed",
    "io_error",
    "protocol_error",
    "timeout",
    "write_timeout",
    "body_timeout",
    "client_error",
    "_OTHER",
];

/// `{result}` of a config reload.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `failure`.
    pub result: Fixed,
}

/// The request-path histograms are [`AtomicHistogram`]s (no lock per
/// observation); the upstream one stays prometheus-client's, which the
/// proxy holds.
type DurationHistogram = AtomicHistogram;

const DURATION: &str = "gateway_request_duration_seconds";
const DURATION_HELP: &str =
    "Time from request head received to the last response byte, by route, method and status class";

/// Every metric family of the gateway.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    buckets: Arc<[f64]>,
    requests: Family<RequestLabels, Counter>,
    duration: Family<DurationLabels, DurationHistogram, Latency>,
    upstream_duration: Family<UpstreamLabels, Histogram, Latency>,
    /// The duration series created so far, for their exemplars (see
    /// [`Metrics::encode_families`]).
    duration_series: Mutex<HashMap<DurationLabels, DurationHistogram>>,
    overhead: Family<RouteLabels, AtomicHistogram, Overhead>,
    request_size: Family<RouteLabels, AtomicHistogram, fn() -> AtomicHistogram>,
    response_size: Family<RouteLabels, AtomicHistogram, fn() -> AtomicHistogram>,
    inflight: Gauge,
    /// Native request-duration histograms, when `telemetry.native_histograms`.
    native: Option<super::native::NativeFamily>,
    /// Rate-limit decisions: `allowed`, `limited`, `backend_error`.
    pub ratelimit: Family<DecisionLabels, Counter>,
    /// Cache lookups: `hit`, `miss`, `stale`, `bypass`.
    pub cache: Family<DecisionLabels, Counter>,
    /// JWT rejections by reason.
    pub jwt_rejections: Family<DecisionLabels, Counter>,
    /// Responses whose body failed after the head was sent:
    /// `upstream_body_error`, `upstream_body_timeout`, `body_error`.
    pub body_errors: Family<DecisionLabels, Counter>,
    /// Header-rule values dropped because they resolved to an invalid
    /// header value, by route and side (`request`, `response`).
    pub header_rule_drops: Family<DecisionLabels, Counter>,
    /// Upstream attempts by upstream and outcome.
    upstream_attempts: Family<OutcomeLabels, Counter>,
    /// Retries by upstream.
    pub retries: Family<UpstreamLabels, Counter>,
    /// Retries refused because the budget was spent.
    pub retry_budget_exhausted: Family<UpstreamLabels, Counter>,
    /// Config reloads by result.
    pub config_reloads: Family<ResultLabels, Counter>,
    /// Upgraded (WebSocket) connections open, by route.
    tunnels: Family<RouteLabels, Gauge>,
    /// Trace export counters.
    pub trace: super::trace::ExportCounters,
    /// Response compression: responses and bytes by route and coding.
    pub compression: crate::middleware::compression::CompressionMetrics,
}

/// Builds latency histograms with the configured bounds.
#[derive(Debug, Clone)]
pub struct Latency(Arc<[f64]>);

impl MetricConstructor<Histogram> for Latency {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

impl MetricConstructor<DurationHistogram> for Latency {
    fn new_metric(&self) -> DurationHistogram {
        AtomicHistogram::with_exemplars(self.0.iter().copied())
    }
}

impl MetricConstructor<HistogramWithExemplars<TraceLabel>> for Latency {
    fn new_metric(&self) -> HistogramWithExemplars<TraceLabel> {
        HistogramWithExemplars::new(self.0.iter().copied())
    }
}

/// Overhead histograms: the gateway's own time is small, so finer bounds
/// below 1 ms, then the latency bounds.
#[derive(Debug, Clone)]
pub struct Overhead(Arc<[f64]>);

impl MetricConstructor<AtomicHistogram> for Overhead {
    fn new_metric(&self) -> AtomicHistogram {
        let mut v: Vec<f64> = vec![0.00005, 0.0001, 0.00025, 0.0005];
        v.extend(self.0.iter().copied().filter(|x| *x > 0.0005));
        AtomicHistogram::new(v)
    }
}

fn size_histogram() -> AtomicHistogram {
    // 64 B to 64 MiB.
    AtomicHistogram::new(exponential_buckets(64.0, 4.0, 11))
}

impl Metrics {
    /// Registers every family; `buckets` are the latency bounds in seconds.
    pub fn new(buckets: &[f64]) -> Self {
        let buckets: Arc<[f64]> = Arc::from(buckets);
        let mut registry = Registry::default();
        let duration = Family::new_with_constructor(Latency(buckets.clone()));
        let upstream_duration = Family::new_with_constructor(Latency(buckets.clone()));
        let overhead = Family::new_with_constructor(Overhead(buckets.clone()));
        let m = Self {
            requests: Family::default(),
            duration,
            duration_series: Mutex::default(),
            upstream_duration,
            overhead,
            request_size: Family::new_with_constructor(size_histogram),
            response_size: Family::new_with_constructor(size_histogram),
            inflight: Gauge::default(),
            native: None,
            ratelimit: Family::default(),
            cache: Family::default(),
            jwt_rejections: Family::default(),
            body_errors: Family::default(),
            header_rule_drops: Family::default(),
            upstream_attempts: Family::default(),
            retries: Family::default(),
            retry_budget_exhausted: Family::default(),
            config_reloads: Family::default(),
            tunnels: Family::default(),
            trace: super::trace::ExportCounters::default(),
            compression: Default::default(),
            buckets,
            registry: Registry::default(),
        };
        registry.register(
            "gateway_requests",
            "Requests answered, by route, method and status code",
            m.requests.clone(),
        );
        registry.register(DURATION, DURATION_HELP, m.duration.clone());
        registry.register(
            "gateway_upstream_request_duration_seconds",
            "Time from sending a request upstream to its response head, by upstream",
            m.upstream_duration.clone(),
        );
        registry.register(
            "gateway_overhead_duration_seconds",
            "Time the gateway itself added to a request (its head-to-head time minus the upstream's, same clock)",
            m.overhead.clone(),
        );
        registry.register(
            "gateway_request_size_bytes",
            "Request body sizes (when declared), by route",
            m.request_size.clone(),
        );
        registry.register(
            "gateway_response_size_bytes",
            "Response body bytes sent, by route",
            m.response_size.clone(),
        );
        registry.register(
            "gateway_inflight_requests",
            "Requests being served",
            m.inflight.clone(),
        );
        registry.register(
            "gateway_ratelimit_decisions",
            "Rate-limit decisions (allowed, limited, backend_error) by route",
            m.ratelimit.clone(),
        );
        registry.register(
            "gateway_cache_requests",
            "Cache lookups (hit, miss, stale, bypass) by route",
            m.cache.clone(),
        );
        registry.register(
            "gateway_jwt_rejections",
            "Requests rejected by JWT authentication, by route and reason",
            m.jwt_rejections.clone(),
        );
        registry.register(
            "gateway_response_body_errors",
            "Responses whose body failed after the head was sent (counted as 502 or 504 in gateway_requests_total), by route and reason",
            m.body_errors.clone(),
        );
        registry.register(
            "gateway_header_rule_values_dropped",
            "Header rule values dropped because a placeholder resolved to an invalid header value, by route and side (request, response)",
            m.header_rule_drops.clone(),
        );
        registry.register(
            "gateway_upstream_attempts",
            "Upstream attempts, by upstream and outcome (the response's status class, or why no response came)",
            m.upstream_attempts.clone(),
        );
        registry.register(
            "gateway_retries",
            "Upstream retries, by upstream",
            m.retries.clone(),
        );
        registry.register(
            "gateway_retry_budget_exhausted",
            "Retries refused because the retry budget was spent, by upstream",
            m.retry_budget_exhausted.clone(),
        );
        registry.register(
            "gateway_websocket_tunnels",
            "Upgraded (WebSocket) connections open, by route",
            m.tunnels.clone(),
        );
        registry.register(
            "gateway_config_reloads",
            "Config reloads by result (success, failure)",
            m.config_reloads.clone(),
        );
        registry.register(
            "gateway_trace_spans_ended",
            "Sampled spans ended and queued for OTLP export",
            m.trace.ended.clone(),
        );
        registry.register(
            "gateway_trace_spans_exported",
            "Spans the OTLP collector accepted",
            m.trace.exported.clone(),
        );
        registry.register(
            "gateway_trace_spans_failed",
            "Spans dropped because their OTLP export request failed",
            m.trace.failed.clone(),
        );
        registry.register(
            "gateway_trace_export_errors",
            "OTLP export requests that failed (collector down, timeout, refusal)",
            m.trace.errors.clone(),
        );
        registry.register(
            "gateway_trace_spans_dropped",
            "Sampled spans dropped because the export queue was full (collector slow or down)",
            m.trace.dropped.clone(),
        );
        m.compression.register(&mut registry);
        Self { registry, ..m }
    }

    /// Latency bucket bounds in seconds.
    pub fn buckets(&self) -> &[f64] {
        &self.buckets
    }

    /// Keeps native histograms of request durations too (see
    /// [`super::native`]).
    pub fn with_native_histograms(mut self, on: bool) -> Self {
        self.native = on.then(super::native::NativeFamily::default);
        self
    }

    /// The native request-duration series, when enabled.
    pub fn native(&self) -> Option<&super::native::NativeFamily> {
        self.native.as_ref()
    }

    /// Handles for one route.
    pub fn route(&self, name: &Arc<str>) -> RouteMetrics {
        RouteMetrics {
            route: name.clone(),
            requests: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            duration: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            native: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            per_route: OnceLock::new(),
        }
    }

    /// The upstream latency histogram of pool `name`.
    pub fn upstream(&self, name: &Arc<str>) -> Histogram {
        self.upstream_duration.get_or_create_owned(&UpstreamLabels {
            upstream: name.clone(),
        })
    }

    /// The attempt counters of pool `name`, one per [`ATTEMPT_OUTCOMES`]
    /// in its order, created (at 0) now.
    pub fn attempt_counters(&self, name: &Arc<str>) -> Arc<[Counter]> {
        ATTEMPT_OUTCOMES
            .iter()
            .map(|o| {
                self.upstream_attempts.get_or_create_owned(&OutcomeLabels {
                    upstream: name.clone(),
                    outcome: Fixed(o),
                })
            })
            .collect()
    }

    /// The open-tunnel gauge of route `name`.
    pub fn tunnels(&self, name: &Arc<str>) -> Gauge {
        self.tunnels.get_or_create_owned(&RouteLabels {
            route: name.clone(),
        })
    }

    /// The retry counters of pool `name`: (retries, refused by the budget).
    pub fn retry_counters(&self, name: &Arc<str>) -> (Counter, Counter) {
        let l = UpstreamLabels {
            upstream: name.clone(),
        };
        (
            self.retries.get_or_create_owned(&l),
            self.retry_budget_exhausted.get_or_create_owned(&l),
        )
    }

    /// One more request in flight until the guard drops.
    pub fn inflight(self: &Arc<Self>) -> InflightGuard {
        self.inflight.inc();
        InflightGuard(self.clone())
    }

    /// Records a finished request.
    pub fn record(&self, rm: &RouteMetrics, r: &Finished<'_>) {
        let m = method_index(r.method);
        let c = class_index(r.status);
        let labels = || RequestLabels {
            route: rm.route.clone(),
            method: Fixed(METHODS[m]),
            status: StatusLabel::of(r.status),
        };
        let (status, counter) = rm.requests[m][c]
            .get_or_init(|| (r.status, self.requests.get_or_create_owned(&labels())));
        if *status == r.status {
            counter.inc();
        } else {
            self.requests.get_or_create(&labels()).inc();
        }
        let h = rm.duration[m][c].get_or_init(|| {
            let labels = DurationLabels {
                route: rm.route.clone(),
                method: Fixed(METHODS[m]),
                status_class: Fixed(CLASSES[c]),
            };
            let h = self.duration.get_or_create_owned(&labels);
            self.duration_series
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(labels)
                .or_insert_with(|| h.clone());
            h
        });
        h.observe_with_exemplar(r.total.as_secs_f64(), r.trace_id);
        if let Some(native) = &self.native {
            rm.native[m][c]
                .get_or_init(|| {
                    native.series(vec![
                        ("route", rm.route.to_string()),
                        ("method", METHODS[m].to_owned()),
                        ("status_class", CLASSES[c].to_owned()),
                    ])
                })
                .observe(r.total.as_secs_f64());
        }
        // Series of a route appear with its first request, not at load.
        let per = rm.per_route.get_or_init(|| {
            let labels = RouteLabels {
                route: rm.route.clone(),
            };
            PerRoute {
                overhead: self.overhead.get_or_create_owned(&labels),
                request_size: self.request_size.get_or_create_owned(&labels),
                response_size: self.response_size.get_or_create_owned(&labels),
            }
        });
        let own = match r.upstream_head {
            Some(up) => r.head.saturating_sub(up),
            None => r.head,
        };
        per.overhead.observe(own.as_secs_f64());
        if let Some(n) = r.bytes_in {
            per.request_size.observe(n as f64);
        }
        per.response_size.observe(r.bytes_out as f64);
    }

    /// Counts one middleware decision in `family`.
    pub fn decision(
        &self,
        family: &Family<DecisionLabels, Counter>,
        route: &Arc<str>,
        decision: &'static str,
    ) {
        family
            .get_or_create(&DecisionLabels {
                route: route.clone(),
                decision: Fixed(decision),
            })
            .inc();
    }

    /// Counts a config reload.
    pub fn reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: Fixed(if ok { "success" } else { "failure" }),
            })
            .inc();
    }

    /// Creates at 0 the labelled counters whose label values the config
    /// names (at every load and reload), so dashboards and `rate()` have
    /// series before the first event: per route, the decisions of the
    /// layers it has (rate limit, cache, JWT) and the body failure reasons;
    /// the reload results. Only values known from config, so no more
    /// series than the routes' layers call for (at most 12 per route); a
    /// few map inserts per route at load, nothing on the request path.
    /// Retry counters already exist from when the stack is built.
    pub fn create_known_series(&self, config: &crate::config::Config) {
        use crate::middleware::cache::CacheDecision;
        use crate::middleware::ratelimit::RateLimitDecision;
        let ratelimit: [&str; 3] = [
            RateLimitDecision::Allowed.as_str(),
            RateLimitDecision::Limited.as_str(),
            "backend_error",
        ];
        let cache: [&str; 4] = [
            CacheDecision::Hit.as_str(),
            CacheDecision::Miss.as_str(),
            CacheDecision::Stale.as_str(),
            CacheDecision::Bypass.as_str(),
        ];
        let jwt: [&str; 2] = ["invalid_token", "insufficient_scope"];
        let body: [&str; 3] = [
            super::Outcome::UpstreamBodyError.as_str(),
            super::Outcome::UpstreamBodyTimeout.as_str(),
            super::Outcome::BodyError.as_str(),
        ];
        for result in ["success", "failure"] {
            self.config_reloads.get_or_create_owned(&ResultLabels {
                result: Fixed(result),
            });
        }
        if !config.telemetry.metrics {
            return;
        }
        for r in &config.routes {
            let route: Arc<str> = Arc::from(r.name.as_str());
            let auth = r
                .auth
                .as_ref()
                .is_some_and(|a| a.mode != crate::config::AuthMode::Off);
            for (family, on, decisions) in [
                (&self.ratelimit, !r.rate_limits.is_empty(), &ratelimit[..]),
                (&self.cache, r.cache.is_some(), &cache[..]),
                (&self.jwt_rejections, auth, &jwt[..]),
                (&self.body_errors, true, &body[..]),
            ] {
                for d in decisions.iter().filter(|_| on) {
                    family.get_or_create_owned(&DecisionLabels {
                        route: route.clone(),
                        decision: Fixed(d),
                    });
                }
            }
        }
    }

    /// Encodes the registry in OpenMetrics text, without the final `# EOF`.
    pub fn encode_families(&self, out: &mut String) {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_ok() {
            let s = self.add_exemplars(s);
            out.push_str(s.trim_end().trim_end_matches("# EOF").trim_end());
            out.push('\n');
        }
    }

    /// Appends the duration buckets' exemplars to their lines of `text`.
    ///
    /// prometheus-client prints exemplars only from its own types (their
    /// `Exemplar` cannot be built outside the crate), so they are rendered
    /// by prometheus-client itself: each series' exemplars are observed
    /// into a scratch `HistogramWithExemplars` family with the same name,
    /// labels and bounds, encoded, and each exemplar suffix
    /// (` # {trace_id="…"} value`) is moved onto the bucket line with the
    /// same name and labels, so the text is the one the registry printed
    /// when the duration histograms were `HistogramWithExemplars`. At
    /// scrape time only, a few lines per series.
    fn add_exemplars(&self, text: String) -> String {
        let scratch: Family<DurationLabels, HistogramWithExemplars<TraceLabel>, Latency> =
            Family::new_with_constructor(Latency(self.buckets.clone()));
        let mut any = false;
        for (labels, h) in self
            .duration_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            for (_, e) in h.exemplars() {
                let trace_id = e.trace_id;
                any = true;
                scratch
                    .get_or_create(labels)
                    .observe(e.value, Some(TraceLabel { trace_id }), None);
            }
        }
        if !any {
            return text;
        }
        let mut registry = Registry::default();
        registry.register(DURATION, DURATION_HELP, scratch);
        let mut rendered = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut rendered, &registry).is_err() {
            return text;
        }
        // `{name}_bucket{labels,le="…"} {count} # {trace_id="…"} {value}`:
        // keyed by what precedes the count. Route names are letters,
        // digits, `-` and `_`, so the first ` # {` that follows
        // `} {digits}` ends the count.
        let bucket = format!("{DURATION}_bucket{{");
        let mut suffixes: HashMap<&str, &str> = HashMap::new();
        for line in rendered.lines().filter(|l| l.starts_with(&bucket)) {
            let mut from = 0;
            while let Some(i) = line[from..].find(" # {").map(|i| i + from) {
                if let Some((key, count)) = line[..i].rsplit_once(' ') {
                    if key.ends_with('}')
                        && !count.is_empty()
                        && count.bytes().all(|b| b.is_ascii_digit())
                    {
                        suffixes.insert(key, &line[i..]);
                        break;
                    }
                }
                from = i + 1;
            }
        }
        let mut out = String::with_capacity(text.len() + rendered.len());
        for line in text.lines() {
            out.push_str(line);
            if line.starts_with(&bucket) {
                if let Some(suffix) = line.rsplit_once(' ').and_then(|(key, _)| suffixes.get(key)) {
                    out.push_str(suffix);
                }
            }
            out.push('\n');
        }
        out
    }
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub struct InflightGuard(Arc<Metrics>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.dec();
    }
}

/// One route's series, resolved lazily.
#[derive(Debug)]
pub struct RouteMetrics {
    route: Arc<str>,
    /// Per method and status class, the counter of the first status seen
    /// (most requests of a class share one status): no label hashing or
    /// family lock for them.
    requests: [[OnceLock<(u16, Counter)>; 6]; 8],
    duration: [[OnceLock<DurationHistogram>; 6]; 8],
    native: [[OnceLock<Arc<super::native::NativeHistogram>>; 6]; 8],
    per_route: OnceLock<PerRoute>,
}

#[derive(Debug)]
struct PerRoute {
    overhead: AtomicHistogram,
    request_size: AtomicHistogram,
    response_size: AtomicHistogram,
}

/// What is known about a request once its response is complete.
#[derive(Debug)]
pub struct Finished<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Response status.
    pub status: u16,
    /// Head received to last byte sent.
    pub total: std::time::Duration,
    /// Head received to response head ready.
    pub head: std::time::Duration,
    /// Upstream send to upstream response head, if the request went upstream.
    pub upstream_head: Option<std::time::Duration>,
    /// Declared request body size.
    pub bytes_in: Option<u64>,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Trace id for the exemplar.
    pub trace_id: Option<&'a str>,
}

/// Appends a gauge family by hand (for values computed at scrape time).
pub fn write_gauge_family(out: &mut String, name: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Escapes a label value for the text formats.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Converts OpenMetrics text to the Prometheus text format 0.0.4: counter
/// families named with `_total`, no exemplars, no `# UNIT`, no `# EOF`.
pub fn to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut pending_help: Option<&str> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            pending_help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            if let Some(h) = pending_help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                let _ = writeln!(out, "# HELP {name} {text}");
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
            continue;
        }
        // Strip an exemplar: `sample value # {labels} value [ts]`.
        let sample = match line.find(" # {") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(sample);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(status: u16, total_ms: u64) -> Finished<'static> {
        Finished {
            method: &Method::GET,
            status,
            total: std::time::Duration::from_millis(total_ms),
            head: std::time::Duration::from_millis(total_ms),
            upstream_head: Some(std::time::Duration::from_millis(total_ms.saturating_sub(1))),
            bytes_in: None,
            bytes_out: 10,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0736ae"),
        }
    }

    fn scrape(m: &Metrics) -> String {
        let mut s = String::new();
        m.encode_families(&mut s);
        s
    }

    #[test]
    fn le_is_inclusive_at_an_slo_boundary() {
        let m = Metrics::new(&[0.1, 0.35, 0.65]);
        let rm = m.route(&Arc::from("users"));
        m.record(&rm, &finished(200, 350));
        let text = scrape(&m);
        let le = |b: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("gateway_request_duration_seconds_bucket")
                        && l.contains(&format!("le=\"{b}\""))
                })
                .map(|l| l.split(' ').nth(1).unwrap().to_owned())
                .unwrap()
        };
        assert_eq!(le("0.1"), "0");
        assert_eq!(le("0.35"), "1", "350 ms counts in le=0.35:\n{text}");
        assert_eq!(le("0.65"), "1");
    }

    #[test]
    fn series_are_labelled_by_route_method_and_status() {
        let m = Metrics::new(&[0.1]);
        let rm = m.route(&Arc::from("users"));
        m.record(&rm, &finished(200, 5));
        m.record(&rm, &finished(503, 5));
        m.record(
            &rm,
            &Finished {
                method: &Method::from_bytes(b"PURGE").unwrap(),
                ..finished(200, 5)
            },
        );
        let text = scrape(&m);
        assert!(
            text.contains(r#"gateway_requests_total{route="users",method="GET",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"gateway_requests_total{route="users",method="GET",status="503"} 1"#)
        );
        assert!(
            text.contains(r#"method="OTHER""#),
            "unknown methods fold into OTHER"
        );
        assert!(text.contains(r#"status_class="5xx""#));
        // The client errors the gateway answers itself keep their code
        // (499 included, unregistered) and their 4xx class.
        m.record(&rm, &finished(499, 5));
        m.record(&rm, &finished(408, 5));
        let text = scrape(&m);
        for code in ["499", "408"] {
            let series = format!(
                r#"gateway_requests_total{{route="users",method="GET",status="{code}"}} 1"#
            );
            assert!(text.contains(&series), "{text}");
        }
        assert!(text.contains(r#"status_class="4xx""#), "{text}");
        assert!(
            text.contains("trace_id=\"4bf92f3577b34da6a3ce929d0e0736ae\""),
            "exemplar present"
        );
        let prom = to_prometheus_text(&text);
        assert!(
            prom.contains("# TYPE gateway_requests_total counter"),
            "{prom}"
        );
        assert!(
            !prom.contains("trace_id"),
            "no exemplars in the 0.0.4 text format"
        );
        assert!(!prom.contains("# EOF"));
    }

    /// A few requests of one route (one series per family, so the order of
    /// the lines is fixed).
    fn golden_scrape() -> String {
        let m = Metrics::new(&[0.005, 0.1, 0.35, 1.0]);
        let rm = m.route(&Arc::from("users"));
        let req = |total_us: u64, up_us: Option<u64>, bytes_in, bytes_out, trace_id| Finished {
            method: &Method::GET,
            status: 200,
            total: std::time::Duration::from_micros(total_us),
            head: std::time::Duration::from_micros(total_us / 2),
            upstream_head: up_us.map(std::time::Duration::from_micros),
            bytes_in,
            bytes_out,
            trace_id,
        };
        let a = "4bf92f3577b34da6a3ce929d0e0736ae";
        let b = "0af7651916cd43dd8448eb211c80319c";
        m.record(&rm, &req(350_000, Some(100_000), Some(64), 70_000, Some(a)));
        m.record(&rm, &req(4_200, Some(4_000), None, 0, None));
        m.record(&rm, &req(5_000, None, Some(65), 64, Some(b)));
        m.record(&rm, &req(1_500_000, Some(1_000), Some(0), 1 << 30, Some(a)));
        m.record(&rm, &req(120_000, Some(59_990), None, 4096, Some(a)));
        m.record(&rm, &req(300_000, Some(1), None, 4097, Some(b)));
        m.record(&rm, &req(100_000, Some(1), None, 1, None));
        let mut s = String::new();
        m.encode_families(&mut s);
        s
    }

    /// The families `record` feeds, as prometheus-client's `Histogram` and
    /// `HistogramWithExemplars` encoded them for `golden_scrape` (captured
    /// from the implementation before `AtomicHistogram`, ae8fe31).
    const GOLDEN: &str = r#"# HELP gateway_requests Requests answered, by route, method and status code.
# TYPE gateway_requests counter
gateway_requests_total{route="users",method="GET",status="200"} 7
# HELP gateway_request_duration_seconds Time from request head received to the last response byte, by route, method and status class.
# TYPE gateway_request_duration_seconds histogram
gateway_request_duration_seconds_sum{route="users",method="GET",status_class="2xx"} 2.3792
gateway_request_duration_seconds_count{route="users",method="GET",status_class="2xx"} 7
gateway_request_duration_seconds_bucket{le="0.005",route="users",method="GET",status_class="2xx"} 2 # {trace_id="0af7651916cd43dd8448eb211c80319c"} 0.005
gateway_request_duration_seconds_bucket{le="0.1",route="users",method="GET",status_class="2xx"} 3
gateway_request_duration_seconds_bucket{le="0.35",route="users",method="GET",status_class="2xx"} 6 # {trace_id="0af7651916cd43dd8448eb211c80319c"} 0.3
gateway_request_duration_seconds_bucket{le="1.0",route="users",method="GET",status_class="2xx"} 6
gateway_request_duration_seconds_bucket{le="+Inf",route="users",method="GET",status_class="2xx"} 7 # {trace_id="4bf92f3577b34da6a3ce929d0e0736ae"} 1.5
# HELP gateway_overhead_duration_seconds Time the gateway itself added to a request (its head-to-head time minus the upstream's, same clock).
# TYPE gateway_overhead_duration_seconds histogram
gateway_overhead_duration_seconds_sum{route="users"} 1.026508
gateway_overhead_duration_seconds_count{route="users"} 7
gateway_overhead_duration_seconds_bucket{le="0.00005",route="users"} 2
gateway_overhead_duration_seconds_bucket{le="0.0001",route="users"} 2
gateway_overhead_duration_seconds_bucket{le="0.00025",route="users"} 2
gateway_overhead_duration_seconds_bucket{le="0.0005",route="users"} 2
gateway_overhead_duration_seconds_bucket{le="0.005",route="users"} 3
gateway_overhead_duration_seconds_bucket{le="0.1",route="users"} 5
gateway_overhead_duration_seconds_bucket{le="0.35",route="users"} 6
gateway_overhead_duration_seconds_bucket{le="1.0",route="users"} 7
gateway_overhead_duration_seconds_bucket{le="+Inf",route="users"} 7
# HELP gateway_request_size_bytes Request body sizes (when declared), by route.
# TYPE gateway_request_size_bytes histogram
gateway_request_size_bytes_sum{route="users"} 129.0
gateway_request_size_bytes_count{route="users"} 3
gateway_request_size_bytes_bucket{le="64.0",route="users"} 2
gateway_request_size_bytes_bucket{le="256.0",route="users"} 3
gateway_request_size_bytes_bucket{le="1024.0",route="users"} 3
gateway_request_size_bytes_bucket{le="4096.0",route="users"} 3
gateway_request_size_bytes_bucket{le="16384.0",route="users"} 3
gateway_request_size_bytes_bucket{le="65536.0",route="users"} 3
gateway_request_size_bytes_bucket{le="262144.0",route="users"} 3
gateway_request_size_bytes_bucket{le="1048576.0",route="users"} 3
gateway_request_size_bytes_bucket{le="4194304.0",route="users"} 3
gateway_request_size_bytes_bucket{le="16777216.0",route="users"} 3
gateway_request_size_bytes_bucket{le="67108864.0",route="users"} 3
gateway_request_size_bytes_bucket{le="+Inf",route="users"} 3
# HELP gateway_response_size_bytes Response body bytes sent, by route.
# TYPE gateway_response_size_bytes histogram
gateway_response_size_bytes_sum{route="users"} 1073820082.0
gateway_response_size_bytes_count{route="users"} 7
gateway_response_size_bytes_bucket{le="64.0",route="users"} 3
gateway_response_size_bytes_bucket{le="256.0",route="users"} 3
gateway_response_size_bytes_bucket{le="1024.0",route="users"} 3
gateway_response_size_bytes_bucket{le="4096.0",route="users"} 4
gateway_response_size_bytes_bucket{le="16384.0",route="users"} 5
gateway_response_size_bytes_bucket{le="65536.0",route="users"} 5
gateway_response_size_bytes_bucket{le="262144.0",route="users"} 6
gateway_response_size_bytes_bucket{le="1048576.0",route="users"} 6
gateway_response_size_bytes_bucket{le="4194304.0",route="users"} 6
gateway_response_size_bytes_bucket{le="16777216.0",route="users"} 6
gateway_response_size_bytes_bucket{le="67108864.0",route="users"} 6
gateway_response_size_bytes_bucket{le="+Inf",route="users"} 7
"#;

    #[test]
    fn scrape_is_byte_identical_to_prometheus_client_histograms() {
        let text = golden_scrape();
        let end = text
            .find("# HELP gateway_inflight_requests")
            .unwrap_or(text.len());
        assert_eq!(&text[..end], GOLDEN, "{text}");
    }

    /// Several duration series with exemplars, against prometheus-client's
    /// `HistogramWithExemplars` fed the same observations (the series'
    /// order is a hash map's, so lines are compared sorted).
    #[test]
    fn exemplars_match_histogram_with_exemplars_across_series() {
        let bounds = [0.005, 0.1, 0.35, 1.0];
        let m = Metrics::new(&bounds);
        let reference: Family<DurationLabels, HistogramWithExemplars<TraceLabel>, Latency> =
            Family::new_with_constructor(Latency(Arc::from(&bounds[..])));
        let routes = [Arc::<str>::from("users"), Arc::from("orders")];
        let rms: Vec<_> = routes.iter().map(|r| m.route(r)).collect();
        let methods = [
            Method::GET,
            Method::POST,
            Method::from_bytes(b"PURGE").unwrap(),
        ];
        for i in 0..200u64 {
            let (ri, mi) = ((i % 2) as usize, (i % 3) as usize);
            let status = [200, 404, 503, 302][(i % 4) as usize];
            let total = std::time::Duration::from_micros(i * i * 37 % 1_500_000);
            let trace = format!("{i:032x}");
            let trace_id = (i % 3 != 1).then_some(trace.as_str());
            let f = Finished {
                method: &methods[mi],
                status,
                total,
                head: total,
                upstream_head: None,
                bytes_in: None,
                bytes_out: 0,
                trace_id,
            };
            m.record(&rms[ri], &f);
            reference
                .get_or_create(&DurationLabels {
                    route: routes[ri].clone(),
                    method: Fixed(METHODS[method_index(&methods[mi])]),
                    status_class: Fixed(CLASSES[class_index(status)]),
                })
                .observe(
                    total.as_secs_f64(),
                    trace_id.map(|t| TraceLabel {
                        trace_id: t.to_owned(),
                    }),
                    None,
                );
        }
        let mut registry = Registry::default();
        registry.register(DURATION, DURATION_HELP, reference);
        let mut want = String::new();
        prometheus_client::encoding::text::encode_registry(&mut want, &registry).unwrap();
        let family = |t: &str| {
            let mut v: Vec<String> = t
                .lines()
                .filter(|l| l.contains("gateway_request_duration_seconds"))
                .map(str::to_owned)
                .collect();
            v.sort();
            v
        };
        let got = family(&scrape(&m));
        assert_eq!(got, family(&want));
        assert!(got.iter().filter(|l| l.contains(" # {trace_id=")).count() > 20);
        // i mod 12 picks the route, method and status: 12 series.
        assert_eq!(got.iter().filter(|l| l.contains("_count{")).count(), 12);
    }
}
