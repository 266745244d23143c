//! Telemetry settings: metrics, access logs, traces context, and the SLOs
//! the gateway tracks live.

use std::time::Duration;

use serde::Deserialize;

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Record request metrics and SLO windows (off only to measure their cost).
    pub metrics: bool,
    /// Latency histogram bucket bounds in seconds. Every SLO latency
    /// threshold is added as an exact bound, so bucket-ratio SLIs are exact.
    pub buckets: Vec<f64>,
    /// Also keep the request-duration histogram as a Prometheus native
    /// histogram (schema 3), served in the protobuf exposition to scrapers
    /// that ask for it; the classic buckets stay. Read at start.
    pub native_histograms: bool,
    /// Access log settings.
    pub access_log: AccessLogConfig,
    /// OpenTelemetry traces.
    pub tracing: TracingConfig,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics: true,
            buckets: DEFAULT_BUCKETS.to_vec(),
            native_histograms: false,
            access_log: AccessLogConfig::default(),
            tracing: TracingConfig::default(),
        }
    }
}

/// Default latency buckets (seconds), before SLO thresholds are merged in.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// `[telemetry.access_log]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Emit access log lines at all.
    pub enabled: bool,
    /// Fraction of successful requests logged (0..=1); errors (5xx, and
    /// 4xx when `always_log_client_errors`) are always logged.
    pub sample_ratio: f64,
    /// Log every 4xx too.
    pub always_log_client_errors: bool,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sample_ratio: 0.01,
            always_log_client_errors: false,
        }
    }
}

/// `[telemetry.tracing]`: OpenTelemetry spans exported with OTLP/HTTP
/// (protobuf). Read at start; a reload that changes it takes effect only on
/// restart.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Create and export spans at all.
    pub enabled: bool,
    /// OTLP/HTTP traces URL (`https://collector:4318/v1/traces`; `http://`
    /// only to a loopback host).
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL, `/v1/traces` appended)
    /// replace it when set.
    pub endpoint: String,
    /// Fraction of requests without a parent that start a sampled trace
    /// (0..=1). A client's `traceparent` decides for its request
    /// (parent-based sampling).
    pub sample_ratio: f64,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Bound of one export request (connect, send, answer).
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
    /// How long ended spans wait before a batch is sent.
    #[serde(with = "humantime_serde")]
    pub scheduled_delay: Duration,
    /// Most spans per export request.
    pub max_export_batch_size: usize,
    /// Most ended spans waiting for export; beyond, spans are dropped.
    pub max_queue_size: usize,
    /// Bound of the final flush on shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// PEM CA bundle trusted besides the system roots (a collector with a
    /// private CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// Headers sent with every export (`{ authorization = "Bearer ..." }`);
    /// their values are never logged.
    pub headers: std::collections::BTreeMap<String, String>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: DEFAULT_OTLP_ENDPOINT.into(),
            sample_ratio: 0.01,
            service_name: "gateway".into(),
            export_timeout: Duration::from_secs(10),
            scheduled_delay: Duration::from_secs(5),
            max_export_batch_size: 512,
            max_queue_size: 2048,
            shutdown_timeout: Duration::from_secs(5),
            ca_file: None,
            headers: std::collections::BTreeMap::new(),
        }
    }
}

/// The OTLP/HTTP traces endpoint of a collector on this host.
pub const DEFAULT_OTLP_ENDPOINT: &str = "http://127.0.0.1:4318/v1/traces";

/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the traces URL, used as is.
pub const ENV_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_ENDPOINT`: the base URL, `/v1/traces` appended.
pub const ENV_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The traces URL from the OpenTelemetry environment variables, if set
/// (per the OTLP exporter spec: the signal-specific variable as is, the
/// base one with `/v1/traces` appended).
pub fn otlp_endpoint_from_env() -> Option<String> {
    otlp_endpoint_with(|k| std::env::var(k).ok())
}

/// [`otlp_endpoint_from_env`] with variables read by `lookup`.
pub fn otlp_endpoint_with(lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    let var = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
    if let Some(v) = var(ENV_OTLP_TRACES_ENDPOINT) {
        return Some(v.trim().to_owned());
    }
    var(ENV_OTLP_ENDPOINT).map(|base| format!("{}/v1/traces", base.trim().trim_end_matches('/')))
}

/// `[[slos]]`: a service level objective tracked live.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    /// Name (a metric label).
    pub name: String,
    /// Route names covered; empty means every route.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Latency objectives.
    #[serde(default)]
    pub latency: Vec<LatencyObjective>,
    /// Fraction of requests that must not fail with a 5xx (e.g. 0.995).
    #[serde(default)]
    pub availability: Option<f64>,
    /// Minimum sustained request rate (req/s) over a window.
    #[serde(default)]
    pub min_throughput: Option<f64>,
}

/// `p95 <= 350ms` is `{ quantile = 0.95, threshold = "350ms" }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LatencyObjective {
    /// Quantile in (0, 1).
    pub quantile: f64,
    /// Latency the quantile must not exceed.
    #[serde(with = "humantime_serde")]
    pub threshold: Duration,
}

/// The SLOs used when a config declares none: the Meetinity targets of the
/// seed documents (p95 <= 350 ms, p99 <= 650 ms, errors < 0.5 %, >= 900 req/s).
pub fn default_slos() -> Vec<SloConfig> {
    vec![SloConfig {
        name: "gateway".into(),
        routes: Vec::new(),
        latency: vec![
            LatencyObjective {
                quantile: 0.95,
                threshold: Duration::from_millis(350),
            },
            LatencyObjective {
                quantile: 0.99,
                threshold: Duration::from_millis(650),
            },
        ],
        availability: Some(0.995),
        min_throughput: Some(900.0),
    }]
}
