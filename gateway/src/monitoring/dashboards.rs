//! Grafana dashboards (JSON, with a datasource variable) and their
//! provisioning files.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::promql::{self, fmt_num};
use super::{quote, File, Options, GENERATED};
use crate::config::Config;

/// A panel's query: PromQL and its legend.
#[derive(Debug, Clone)]
pub struct Query {
    /// PromQL (may use `$route`, `$upstream` and `$__rate_interval`).
    pub expr: String,
    /// Legend format.
    pub legend: String,
}

fn q(expr: impl Into<String>, legend: &str) -> Query {
    Query {
        expr: expr.into(),
        legend: legend.into(),
    }
}

struct Panel {
    title: &'static str,
    kind: &'static str,
    unit: &'static str,
    queries: Vec<Query>,
    /// Threshold lines (value, label colour).
    lines: Vec<f64>,
}

fn panel(title: &'static str, unit: &'static str, queries: Vec<Query>) -> Panel {
    Panel {
        title,
        kind: "timeseries",
        unit,
        queries,
        lines: Vec::new(),
    }
}

const DS: &str = "${datasource}";

fn render_panel(p: &Panel, id: usize) -> Value {
    let w = 12;
    let x = (id % 2) * 12;
    let y = (id / 2) * 8;
    let targets: Vec<Value> = p
        .queries
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut v = json!({
                "refId": char::from(b'A' + u8::try_from(i % 26).unwrap_or(0)).to_string(),
                "datasource": {"type": "prometheus", "uid": DS},
                "expr": t.expr,
                "legendFormat": t.legend,
            });
            if p.kind == "heatmap" {
                v["format"] = json!("heatmap");
            }
            v
        })
        .collect();
    let mut steps = vec![json!({"color": "green", "value": null})];
    steps.extend(p.lines.iter().map(|v| json!({"color": "red", "value": v})));
    let mut field = json!({
        "defaults": {
            "unit": p.unit,
            "thresholds": {"mode": "absolute", "steps": steps},
        },
        "overrides": [],
    });
    if !p.lines.is_empty() {
        field["defaults"]["custom"] = json!({"thresholdsStyle": {"mode": "line"}});
    }
    let mut v = json!({
        "id": id + 1,
        "type": p.kind,
        "title": p.title,
        "datasource": {"type": "prometheus", "uid": DS},
        "gridPos": {"h": 8, "w": w, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": field,
    });
    if p.kind == "heatmap" {
        v["options"] = json!({
            "calculate": false,
            "yAxis": {"unit": "s"},
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges"},
        });
    }
    v
}

fn variable(name: &str, query: &str) -> Value {
    json!({
        "name": name,
        "label": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": DS},
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": true,
        "multi": true,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    })
}

fn dashboard(uid: &str, title: &str, vars: &[(&str, &str)], panels: &[Panel]) -> Value {
    let mut list = vec![json!({
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
    })];
    list.extend(vars.iter().map(|(n, query)| variable(n, query)));
    json!({
        "uid": uid,
        "title": title,
        "tags": ["gateway"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": true,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": list},
        "annotations": {"list": []},
        "links": [{"title": "Gateway", "type": "dashboards", "tags": ["gateway"], "asDropdown": true}],
        "panels": panels.iter().enumerate().map(|(i, p)| render_panel(p, i)).collect::<Vec<_>>(),
    })
}

const RI: &str = "$__rate_interval";

fn quantile(q: &str, sel: &str, by: &str) -> String {
    format!(
        "histogram_quantile({q}, sum by (le{by}) (rate(gateway_request_duration_seconds_bucket{sel}[{RI}])))"
    )
}

fn overview(config: &Config) -> Value {
    let sel = "{route=~\"$route\"}";
    let mut latency = vec![
        q(quantile("0.5", sel, ""), "p50"),
        q(quantile("0.95", sel, ""), "p95"),
        q(quantile("0.99", sel, ""), "p99"),
    ];
    let mut lines = Vec::new();
    let mut burn = Vec::new();
    let mut budget = Vec::new();
    for slo in &config.slos {
        for o in &slo.latency {
            lines.push(o.threshold.as_secs_f64());
            latency.push(q(
                format!("vector({})", fmt_num(o.threshold.as_secs_f64())),
                &format!("SLO {} p{}", slo.name, promql::quantile_name(o.quantile)),
            ));
        }
        let sel = format!("{{slo=\"{}\"}}", slo.name);
        for w in ["5m", "1h", "6h", "3d"] {
            burn.push(q(
                format!(
                    "gateway_slo:sli_error:ratio_rate{w}{sel}\n/ on (slo, sli)\ngateway_slo:error_budget:ratio{sel}"
                ),
                &format!("{{{{sli}}}} {w}"),
            ));
        }
        budget.push(q(
            format!("gateway_slo:error_budget_remaining:ratio{sel}"),
            "{{slo}} {{sli}}",
        ));
    }
    let panels = vec![
        panel(
            "Request rate by status",
            "reqps",
            vec![q(
                format!("sum by (status) (rate(gateway_requests_total{sel}[{RI}]))"),
                "{{status}}",
            )],
        ),
        Panel {
            lines,
            ..panel("Latency p50 / p95 / p99 against the SLO", "s", latency)
        },
        panel(
            "Error ratio (5xx)",
            "percentunit",
            vec![q(
                format!(
                    "(sum(rate(gateway_requests_total{{route=~\"$route\",status=~\"5..\"}}[{RI}])) or vector(0))\n/\nsum(rate(gateway_requests_total{sel}[{RI}]))"
                ),
                "5xx ratio",
            )],
        ),
        panel("Error budget remaining (30 days)", "percentunit", budget),
        Panel {
            lines: vec![1.0, 6.0, 14.4],
            ..panel("Burn rates (1 = budget spent exactly over 30 days)", "none", burn)
        },
        panel(
            "Live SLO burn rates (gateway engine)",
            "none",
            vec![q(
                "max by (slo, sli, window) (gateway_slo_burn_rate)",
                "{{slo}} {{sli}} {{window}}",
            )],
        ),
        Panel {
            kind: "heatmap",
            ..panel(
                "Latency heatmap",
                "s",
                vec![q(
                    format!("sum by (le) (increase(gateway_request_duration_seconds_bucket{sel}[{RI}]))"),
                    "{{le}}",
                )],
            )
        },
        panel(
            "In-flight requests",
            "none",
            vec![q("sum(gateway_inflight_requests)", "in flight")],
        ),
    ];
    dashboard(
        "gateway-overview",
        "Gateway / Overview",
        &[("route", "label_values(gateway_requests_total, route)")],
        &panels,
    )
}

fn routes() -> Value {
    let sel = "{route=~\"$route\"}";
    let panels = vec![
        panel(
            "Request rate by route",
            "reqps",
            vec![q(
                format!("sum by (route) (rate(gateway_requests_total{sel}[{RI}]))"),
                "{{route}}",
            )],
        ),
        panel(
            "5xx ratio by route",
            "percentunit",
            vec![q(
                format!("sum by (route) (rate(gateway_requests_total{{route=~\"$route\",status=~\"5..\"}}[{RI}]))\n/\nsum by (route) (rate(gateway_requests_total{sel}[{RI}]))"),
                "{{route}}",
            )],
        ),
        panel(
            "p95 by route",
            "s",
            vec![q(quantile("0.95", sel, ", route"), "{{route}}")],
        ),
        panel(
            "p99 by route",
            "s",
            vec![q(quantile("0.99", sel, ", route"), "{{route}}")],
        ),
        panel(
            "Gateway overhead p99 by route",
            "s",
            vec![q(
                format!("histogram_quantile(0.99, sum by (le, route) (rate(gateway_overhead_duration_seconds_bucket{sel}[{RI}])))"),
                "{{route}}",
            )],
        ),
        panel(
            "Request and response sizes (p95)",
            "bytes",
            vec![
                q(
                    format!("histogram_quantile(0.95, sum by (le, route) (rate(gateway_request_size_bytes_bucket{sel}[{RI}])))"),
                    "request {{route}}",
                ),
                q(
                    format!("histogram_quantile(0.95, sum by (le, route) (rate(gateway_response_size_bytes_bucket{sel}[{RI}])))"),
                    "response {{route}}",
                ),
            ],
        ),
        panel(
            "Requests by method",
            "reqps",
            vec![q(
                format!("sum by (route, method) (rate(gateway_requests_total{sel}[{RI}]))"),
                "{{route}} {{method}}",
            )],
        ),
        Panel {
            kind: "heatmap",
            ..panel(
                "Latency heatmap",
                "s",
                vec![q(
                    format!("sum by (le) (increase(gateway_request_duration_seconds_bucket{sel}[{RI}]))"),
                    "{{le}}",
                )],
            )
        },
    ];
    dashboard(
        "gateway-routes",
        "Gateway / Routes",
        &[("route", "label_values(gateway_requests_total, route)")],
        &panels,
    )
}

fn upstreams() -> Value {
    let sel = "{upstream=~\"$upstream\"}";
    let panels = vec![
        panel(
            "Upstream latency p95 / p99",
            "s",
            vec![
                q(
                    format!("histogram_quantile(0.95, sum by (le, upstream) (rate(gateway_upstream_request_duration_seconds_bucket{sel}[{RI}])))"),
                    "p95 {{upstream}}",
                ),
                q(
                    format!("histogram_quantile(0.99, sum by (le, upstream) (rate(gateway_upstream_request_duration_seconds_bucket{sel}[{RI}])))"),
                    "p99 {{upstream}}",
                ),
            ],
        ),
        panel(
            "Upstream 5xx ratio (5m)",
            "percentunit",
            vec![q(
                format!("gateway_upstream:request_error:ratio_rate5m{sel}"),
                "{{upstream}}",
            )],
        ),
        panel(
            "Endpoint health (1 = in rotation)",
            "none",
            vec![q(
                format!("max by (upstream, endpoint) (gateway_upstream_endpoint_healthy{sel})"),
                "{{upstream}} {{endpoint}}",
            )],
        ),
        panel(
            "Circuit state (0 closed, 1 open, 2 half-open)",
            "none",
            vec![q(
                format!("max by (upstream, endpoint) (gateway_circuit_state{sel})"),
                "{{upstream}} {{endpoint}}",
            )],
        ),
        panel(
            "Retries and exhausted retry budget",
            "ops",
            vec![
                q(
                    format!("sum by (upstream) (rate(gateway_retries_total{sel}[{RI}]))"),
                    "retries {{upstream}}",
                ),
                q(
                    format!("sum by (upstream) (rate(gateway_retry_budget_exhausted_total{sel}[{RI}]))"),
                    "budget exhausted {{upstream}}",
                ),
            ],
        ),
        panel(
            "Upstream attempts by outcome (status class, or why no response came)",
            "ops",
            vec![q(
                format!("sum by (upstream, outcome) (rate(gateway_upstream_attempts_total{sel}[{RI}])) > 0"),
                "{{upstream}} {{outcome}}",
            )],
        ),
        panel(
            "Endpoint in-flight and idle connections",
            "none",
            vec![
                q(
                    format!("sum by (upstream, endpoint) (gateway_upstream_endpoint_inflight_requests{sel})"),
                    "in flight {{endpoint}}",
                ),
                q(
                    format!("sum by (upstream, endpoint) (gateway_upstream_endpoint_idle_connections{sel})"),
                    "idle {{endpoint}}",
                ),
            ],
        ),
    ];
    dashboard(
        "gateway-upstreams",
        "Gateway / Upstreams",
        &[(
            "upstream",
            "label_values(gateway_upstream_endpoint_healthy, upstream)",
        )],
        &panels,
    )
}

fn middleware() -> Value {
    let sel = "{route=~\"$route\"}";
    let panels = vec![
        panel(
            "Rate-limit decisions",
            "ops",
            vec![q(
                format!("sum by (decision) (rate(gateway_ratelimit_decisions_total{sel}[{RI}]))"),
                "{{decision}}",
            )],
        ),
        panel(
            "Cache hit ratio",
            "percentunit",
            vec![q(
                format!("sum(rate(gateway_cache_requests_total{{route=~\"$route\",decision=\"hit\"}}[{RI}]))\n/\nsum(rate(gateway_cache_requests_total{{route=~\"$route\",decision!=\"bypass\"}}[{RI}]))"),
                "hit ratio",
            )],
        ),
        panel(
            "Cache decisions",
            "ops",
            vec![q(
                format!("sum by (decision) (rate(gateway_cache_requests_total{sel}[{RI}]))"),
                "{{decision}}",
            )],
        ),
        panel(
            "JWT rejections by reason",
            "ops",
            vec![q(
                format!("sum by (decision) (rate(gateway_jwt_rejections_total{sel}[{RI}]))"),
                "{{decision}}",
            )],
        ),
        panel(
            "Redis errors",
            "ops",
            vec![q(
                format!("sum by (op) (rate(gateway_redis_errors_total[{RI}]))"),
                "{{result}}",
            )],
        ),
        panel(
            "Config reloads",
            "none",
            vec![q(
                "sum by (result) (increase(gateway_config_reloads_total[1h]))",
                "{{result}}",
            )],
        ),
    ];
    dashboard(
        "gateway-middleware",
        "Gateway / Middleware",
        &[("route", "label_values(gateway_requests_total, route)")],
        &panels,
    )
}

fn resources(opts: &Options) -> Value {
    let job = format!("{{job=\"{}\"}}", opts.job);
    let panels = vec![
        panel(
            "CPU (cores)",
            "none",
            vec![q(
                format!("rate(process_cpu_seconds_total{job}[{RI}])"),
                "{{instance}}",
            )],
        ),
        panel(
            "Resident memory",
            "bytes",
            vec![q(
                format!("process_resident_memory_bytes{job}"),
                "{{instance}}",
            )],
        ),
        panel(
            "File descriptors (share of the limit)",
            "percentunit",
            vec![q(
                format!("process_open_fds{job} / process_max_fds{job}"),
                "{{instance}}",
            )],
        ),
        panel(
            "In-flight requests",
            "none",
            vec![q("gateway_inflight_requests", "{{instance}}")],
        ),
        Panel {
            lines: vec![0.8],
            ..panel(
                "Routes' in-flight share of max_inflight",
                "percentunit",
                vec![q(
                    "gateway_route_inflight_requests / gateway_route_inflight_limit",
                    "{{instance}} {{route}}",
                )],
            )
        },
        // HTTPS termination (`server.tls`): certificates' time left, with
        // the alert's 14-day and 2-day lines, and failed handshakes.
        Panel {
            lines: vec![1_209_600.0, 172_800.0],
            ..panel(
                "TLS certificates: time to expiry",
                "s",
                vec![q(
                    format!("gateway_tls_certificate_expiry_seconds{job}"),
                    "{{instance}} {{name}}",
                )],
            )
        },
        panel(
            "TLS handshake failures by reason",
            "reqps",
            vec![q(
                format!("sum by (reason) (rate(gateway_tls_handshake_failures_total{job}[{RI}]))"),
                "{{reason}}",
            )],
        ),
        panel(
            "Exposed series",
            "none",
            vec![q("gateway_metrics_series", "{{instance}}")],
        ),
        panel(
            "Scrape health",
            "none",
            vec![q(format!("up{job}"), "{{instance}}")],
        ),
    ];
    dashboard("gateway-resources", "Gateway / Resources", &[], &panels)
}

/// Client-side latency from `loadgen --prometheus-listen` beside the gateway's own, for
/// the run in the time range: loadgen's histogram uses the gateway's default bucket edges,
/// so both quantiles interpolate alike. Client minus server is the network and the
/// client's queueing; the gateway-added latency is its own overhead histogram (its
/// head-to-head time minus the upstream's).
fn loadgen_vs_gateway() -> Value {
    let gw = "{route=~\"$route\"}";
    let client = |q: &str| {
        format!(
            "histogram_quantile({q}, sum by (le) (rate(loadgen_request_duration_seconds_bucket[{RI}])))"
        )
    };
    let server = |q: &str| quantile(q, gw, "");
    let overhead = |q: &str| {
        format!(
            "histogram_quantile({q}, sum by (le) (rate(gateway_overhead_duration_seconds_bucket{gw}[{RI}])))"
        )
    };
    let panels = vec![
        panel(
            "p95: client (loadgen) vs server (gateway)",
            "s",
            vec![
                q(client("0.95"), "client p95"),
                q(server("0.95"), "server p95"),
            ],
        ),
        panel(
            "p99: client (loadgen) vs server (gateway)",
            "s",
            vec![
                q(client("0.99"), "client p99"),
                q(server("0.99"), "server p99"),
            ],
        ),
        panel(
            "Gateway-added latency (server minus upstream)",
            "s",
            vec![
                q(overhead("0.95"), "gateway-added p95"),
                q(overhead("0.99"), "gateway-added p99"),
            ],
        ),
        panel(
            "Client minus server (network, client queueing)",
            "s",
            vec![
                q(
                    format!("{} - {}", client("0.95"), server("0.95")),
                    "p95 difference",
                ),
                q(
                    format!("{} - {}", client("0.99"), server("0.99")),
                    "p99 difference",
                ),
            ],
        ),
        panel(
            "Requests/s: client vs server",
            "reqps",
            vec![
                q(
                    format!("sum(rate(loadgen_requests_total[{RI}]))"),
                    "client (loadgen)",
                ),
                q(
                    format!("sum(rate(gateway_requests_total{gw}[{RI}]))"),
                    "server (gateway)",
                ),
            ],
        ),
        panel(
            "Client requests/s by name and status class",
            "reqps",
            vec![q(
                format!("sum by (name, status_class) (rate(loadgen_requests_total[{RI}]))"),
                "{{name}} {{status_class}}",
            )],
        ),
        panel(
            "Client failures/s by status class",
            "reqps",
            vec![q(
                format!("sum by (status_class) (rate(loadgen_request_failures_total[{RI}]))"),
                "{{status_class}}",
            )],
        ),
        panel(
            "Simulated users",
            "none",
            vec![q("sum(loadgen_users)", "users")],
        ),
        Panel {
            lines: vec![0.95],
            ..panel(
                "Generator CPU saturation (>= 0.95: loadgen is the limit)",
                "percentunit",
                vec![q(
                    "max by (instance) (loadgen_cpu_saturation)",
                    "{{instance}}",
                )],
            )
        },
    ];
    dashboard(
        "gateway-loadgen",
        "Gateway / Load test: client vs server",
        &[("route", "label_values(gateway_requests_total, route)")],
        &panels,
    )
}

/// Every dashboard: (file stem, JSON).
pub fn dashboards(config: &Config, opts: &Options) -> Vec<(&'static str, Value)> {
    vec![
        ("overview", overview(config)),
        ("routes", routes()),
        ("upstreams", upstreams()),
        ("middleware", middleware()),
        ("resources", resources(opts)),
        ("loadgen", loadgen_vs_gateway()),
    ]
}

/// Every query of every dashboard, for tests that run each one.
pub fn queries(config: &Config, opts: &Options) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, d) in dashboards(config, opts) {
        for p in d["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("{name}: {}", p["title"]), e.to_owned()));
                }
            }
        }
    }
    out
}

/// The dashboard JSON files and Grafana provisioning files.
pub fn files(config: &Config, opts: &Options) -> Vec<File> {
    let mut out: Vec<File> = dashboards(config, opts)
        .into_iter()
        .map(|(name, d)| File {
            path: PathBuf::from(format!("grafana/dashboards/{name}.json")),
            text: format!("{}\n", serde_json::to_string_pretty(&d).unwrap_or_default()),
        })
        .collect();
    out.push(File {
        path: PathBuf::from("grafana/provisioning/dashboards/gateway.yml"),
        text: format!(
            "{GENERATED}apiVersion: 1\nproviders:\n  - name: gateway\n    folder: Gateway\n    type: file\n    disableDeletion: false\n    updateIntervalSeconds: 30\n    allowUiUpdates: false\n    options:\n      path: {}\n      foldersFromFilesStructure: false\n",
            quote("/var/lib/grafana/dashboards/gateway")
        ),
    });
    out.push(File {
        path: PathBuf::from("grafana/provisioning/datasources/prometheus.yml"),
        text: format!(
            "{GENERATED}apiVersion: 1\ndatasources:\n  - name: Prometheus\n    type: prometheus\n    uid: prometheus\n    access: proxy\n    url: {}\n    isDefault: true\n    jsonData:\n      timeInterval: 15s\n",
            quote("http://prometheus:9090")
        ),
    });
    out
}
