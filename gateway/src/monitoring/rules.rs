//! Prometheus rule files: SLO recording rules, SLO burn-rate alerts and
//! the fixed alerts of the gateway, rendered as YAML.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use super::promql::{self, duration, scaled, Sli, PERIOD, WINDOWS};
use super::{quote, File, Options, GENERATED};
use crate::config::Config;

/// A recording rule or an alert.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `record:` name, or `alert:` name when `alert` is true.
    pub name: String,
    /// Whether this is an alert.
    pub alert: bool,
    /// PromQL.
    pub expr: String,
    /// `for:` in seconds (alerts only; 0 = none).
    pub for_secs: u64,
    /// Labels added to the result.
    pub labels: BTreeMap<String, String>,
    /// `summary`, `description`, `runbook_url` (alerts only).
    pub annotations: BTreeMap<String, String>,
}

/// A rule group.
#[derive(Debug, Clone)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Rules, evaluated in order.
    pub rules: Vec<Rule>,
}

/// Renders groups as a Prometheus rule file.
pub fn render(groups: &[Group]) -> String {
    let mut s = String::from(GENERATED);
    s.push_str("groups:\n");
    for g in groups {
        let _ = writeln!(s, "  - name: {}", quote(&g.name));
        s.push_str("    rules:\n");
        for r in &g.rules {
            let key = if r.alert { "alert" } else { "record" };
            let _ = writeln!(s, "      - {key}: {}", r.name);
            s.push_str("        expr: |\n");
            for line in r.expr.lines() {
                let _ = writeln!(s, "          {line}");
            }
            if r.alert && r.for_secs > 0 {
                let _ = writeln!(s, "        for: {}", duration(r.for_secs));
            }
            for (key, map) in [("labels", &r.labels), ("annotations", &r.annotations)] {
                if map.is_empty() {
                    continue;
                }
                let _ = writeln!(s, "        {key}:");
                for (k, v) in map {
                    let _ = writeln!(s, "          {k}: {}", quote(v));
                }
            }
        }
    }
    s
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The name of the recording rule of an SLI error ratio over `window`.
pub fn ratio_rule(window_secs: u64) -> String {
    format!(
        "gateway_slo:sli_error:ratio_rate{}",
        promql::window_name(window_secs)
    )
}

/// A runbook anchor in monitoring/README.md: the alert name, lowercased.
fn runbook(opts: &Options, alert: &str) -> String {
    format!("{}#{}", opts.runbook_base, alert.to_lowercase())
}

struct AlertSpec<'a> {
    name: &'a str,
    expr: String,
    for_secs: u64,
    severity: &'a str,
    summary: &'a str,
    description: &'a str,
}

fn alert(opts: &Options, a: AlertSpec<'_>, extra: &[(&str, &str)]) -> Rule {
    let mut l = labels(extra);
    l.insert("severity".into(), a.severity.into());
    Rule {
        name: a.name.into(),
        alert: true,
        expr: a.expr,
        for_secs: if a.for_secs == 0 {
            0
        } else {
            scaled(a.for_secs, opts.time_scale)
        },
        labels: l,
        annotations: labels(&[
            ("summary", a.summary),
            ("description", a.description),
            ("runbook_url", &runbook(opts, a.name)),
        ]),
    }
}

fn slo_recordings(config: &Config, opts: &Options) -> Vec<Group> {
    let mut groups = Vec::new();
    for slo in &config.slos {
        let mut rules = Vec::new();
        let mut meta = Vec::new();
        for sli in promql::slis(slo) {
            let l = labels(&[("slo", &slo.name), ("sli", &sli.name)]);
            for w in WINDOWS {
                rules.push(Rule {
                    name: ratio_rule(w),
                    alert: false,
                    expr: sli.error_ratio(&duration(scaled(w, opts.time_scale))),
                    for_secs: 0,
                    labels: l.clone(),
                    annotations: BTreeMap::new(),
                });
            }
            meta.extend(meta_rules(&slo.name, &sli, opts, &l));
        }
        groups.push(Group {
            name: format!("gateway-slo-sli-recordings-{}", slo.name),
            rules,
        });
        groups.push(Group {
            name: format!("gateway-slo-meta-recordings-{}", slo.name),
            rules: meta,
        });
    }
    groups
}

fn meta_rules(slo: &str, sli: &Sli, opts: &Options, l: &BTreeMap<String, String>) -> Vec<Rule> {
    let rec = |name: &str, expr: String| Rule {
        name: name.into(),
        alert: false,
        expr,
        for_secs: 0,
        labels: l.clone(),
        annotations: BTreeMap::new(),
    };
    let sel = format!("{{slo=\"{slo}\",sli=\"{}\"}}", sli.name);
    let budget = promql::fmt_num(sli.budget());
    vec![
        rec(
            "gateway_slo:objective:ratio",
            format!("vector({})", promql::fmt_num(sli.objective)),
        ),
        rec(
            "gateway_slo:error_budget:ratio",
            format!("vector({budget})"),
        ),
        // The period's error ratio, from the 5m ratios (as Sloth does).
        rec(
            &ratio_rule(PERIOD),
            format!(
                "avg_over_time({}{sel}[{}])",
                ratio_rule(WINDOWS[0]),
                duration(scaled(PERIOD, opts.time_scale))
            ),
        ),
        rec(
            "gateway_slo:error_budget_remaining:ratio",
            format!("1 - ({}{sel} / {budget})", ratio_rule(PERIOD)),
        ),
    ]
}

/// A burn-rate condition: (factor, long window, short window), in seconds.
pub type BurnWindow = (f64, u64, u64);

/// Page: 14.4x over 1h and 5m, or 6x over 6h and 30m. Ticket: 3x over 1d
/// and 2h, or 1x over 3d and 6h (the SRE workbook's table for 30 days).
pub const BURN_RATES: [(&str, [BurnWindow; 2]); 2] = [
    ("page", [(14.4, 3600, 300), (6.0, 21600, 1800)]),
    ("ticket", [(3.0, 86400, 7200), (1.0, 259200, 21600)]),
];

fn slo_alerts(config: &Config, opts: &Options) -> Vec<Group> {
    let mut groups = Vec::new();
    for slo in &config.slos {
        let mut rules = Vec::new();
        for sli in promql::slis(slo) {
            let sel = format!("{{slo=\"{}\",sli=\"{}\"}}", slo.name, sli.name);
            let budget = promql::fmt_num(sli.budget());
            for (severity, pairs) in BURN_RATES {
                let conds: Vec<String> = pairs
                    .iter()
                    .map(|(factor, long, short)| {
                        let f = promql::fmt_num(*factor);
                        format!(
                            "(\n  {long}{sel} > ({f} * {budget})\n  and\n  {short}{sel} > ({f} * {budget})\n)",
                            long = ratio_rule(*long),
                            short = ratio_rule(*short),
                        )
                    })
                    .collect();
                let summary = format!(
                    "SLO {} ({}) is burning its error budget too fast",
                    slo.name, sli.description
                );
                let description = format!(
                    "The {} SLI of SLO {} is spending its {}% error budget faster than the {severity} burn-rate windows allow (the ratio varies by window: see the Overview dashboard's burn rates).",
                    sli.name,
                    slo.name,
                    promql::fmt_num(sli.budget() * 100.0)
                );
                rules.push(alert(
                    opts,
                    AlertSpec {
                        name: "GatewaySLOErrorBudgetBurn",
                        expr: conds.join("\nor\n"),
                        for_secs: 0,
                        severity,
                        summary: &summary,
                        description: &description,
                    },
                    &[("slo", &slo.name), ("sli", &sli.name)],
                ));
            }
        }
        groups.push(Group {
            name: format!("gateway-slo-alerts-{}", slo.name),
            rules,
        });
    }
    groups
}

/// Routes served by each upstream pool, from the config.
fn upstream_routes(config: &Config) -> BTreeMap<&str, Vec<String>> {
    let mut m: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for name in config.upstreams.keys() {
        m.entry(name.as_str()).or_default();
    }
    for r in &config.routes {
        m.entry(r.upstream.as_str())
            .or_default()
            .push(r.name.clone());
    }
    m
}

/// The fixed alerts (and the recording rules they use).
fn gateway_alerts(config: &Config, opts: &Options) -> Vec<Group> {
    let w = |secs: u64| duration(scaled(secs, opts.time_scale));
    let job = &opts.job;
    let mut rec = Vec::new();
    for (upstream, routes) in upstream_routes(config) {
        if routes.is_empty() {
            continue;
        }
        let r = promql::alternation(&routes);
        rec.push(Rule {
            name: "gateway_upstream:request_error:ratio_rate5m".into(),
            alert: false,
            expr: format!(
                "(sum(rate(gateway_requests_total{{route=~\"{r}\",status=~\"5..\"}}[{w5}])) or vector(0))\n/\nsum(rate(gateway_requests_total{{route=~\"{r}\"}}[{w5}]))",
                w5 = w(300)
            ),
            for_secs: 0,
            labels: labels(&[("upstream", upstream)]),
            annotations: BTreeMap::new(),
        });
    }
    let specs = vec![
        AlertSpec {
            name: "APIGatewayHighErrorRate",
            expr: format!(
                "(sum(rate(gateway_requests_total{{status=~\"5..\"}}[{w5}])) or vector(0))\n/\nsum(rate(gateway_requests_total[{w5}]))\n> 0.05",
                w5 = w(300)
            ),
            for_secs: 120,
            severity: "page",
            summary: "More than 5% of gateway requests fail with a 5xx",
            description: "{{ $value | humanizePercentage }} of requests answered 5xx over 5 minutes (SLA: below 0.5%).",
        },
        AlertSpec {
            name: "GatewayUpstreamErrorRatio",
            expr: "gateway_upstream:request_error:ratio_rate5m > 0.1".into(),
            for_secs: 300,
            severity: "ticket",
            summary: "Upstream {{ $labels.upstream }} fails more than 10% of requests",
            description: "{{ $value | humanizePercentage }} of the requests routed to upstream {{ $labels.upstream }} answered 5xx over 5 minutes.",
        },
        AlertSpec {
            name: "GatewayUpstreamNoHealthyEndpoint",
            expr: "max by (upstream) (gateway_upstream_endpoint_healthy) == 0".into(),
            for_secs: 60,
            severity: "page",
            summary: "Upstream {{ $labels.upstream }} has no healthy endpoint",
            description: "Every endpoint of upstream {{ $labels.upstream }} failed its health checks: its routes answer 503.",
        },
        AlertSpec {
            name: "GatewayCircuitOpen",
            // gateway_circuit_state: 0 closed, 1 open, 2 half-open.
            expr: "max by (upstream, endpoint) (gateway_circuit_state) == 1".into(),
            for_secs: 60,
            severity: "ticket",
            summary: "Circuit open to {{ $labels.upstream }} endpoint {{ $labels.endpoint }}",
            description: "The circuit breaker has kept endpoint {{ $labels.endpoint }} of upstream {{ $labels.upstream }} open for a minute: requests to it fail fast.",
        },
        AlertSpec {
            name: "GatewayRateLimiterBackendErrors",
            expr: format!(
                "sum(rate(gateway_ratelimit_decisions_total{{decision=\"backend_error\"}}[{w5}]))\n/\nsum(rate(gateway_ratelimit_decisions_total[{w5}]))\n> 0.01",
                w5 = w(300)
            ),
            for_secs: 300,
            severity: "ticket",
            summary: "The rate limiter cannot reach its backend (Redis)",
            description: "{{ $value | humanizePercentage }} of rate-limit decisions failed on the backend over 5 minutes: limits are not enforced as configured.",
        },
        AlertSpec {
            name: "GatewayDown",
            expr: format!("up{{job=\"{job}\"}} == 0"),
            for_secs: 60,
            severity: "page",
            summary: "Gateway instance {{ $labels.instance }} is down",
            description: "Prometheus has failed to scrape {{ $labels.instance }} for a minute.",
        },
        AlertSpec {
            name: "GatewayScrapeMissing",
            expr: format!("absent(up{{job=\"{job}\"}})"),
            for_secs: 300,
            severity: "page",
            summary: "No gateway target is being scraped",
            description: "Prometheus has no scrape target with job=\"{job}\": the gateway is unmonitored.",
        },
        AlertSpec {
            name: "GatewayConfigReloadFailed",
            expr: format!(
                "increase(gateway_config_reloads_total{{result=\"failure\"}}[{w10}]) > 0\nor\n(gateway_config_reloads_total{{result=\"failure\"}} unless gateway_config_reloads_total{{result=\"failure\"}} offset {w10})",
                w10 = w(600)
            ),
            for_secs: 0,
            severity: "ticket",
            summary: "Config reload failed on {{ $labels.instance }}",
            description: "A reload was rejected; the instance keeps serving its previous config, which now differs from the file.",
        },
        AlertSpec {
            name: "GatewayCacheHitRatioCollapse",
            expr: format!(
                "(\n  sum(rate(gateway_cache_requests_total{{decision=\"hit\"}}[{w15}]))\n  /\n  sum(rate(gateway_cache_requests_total{{decision!=\"bypass\"}}[{w15}]))\n)\n< 0.5 * (\n  sum(rate(gateway_cache_requests_total{{decision=\"hit\"}}[{w1d}] offset {w15}))\n  /\n  sum(rate(gateway_cache_requests_total{{decision!=\"bypass\"}}[{w1d}] offset {w15}))\n)",
                w15 = w(900),
                w1d = w(86400)
            ),
            for_secs: 900,
            severity: "ticket",
            summary: "Cache hit ratio fell below half of its daily level",
            description: "The cache hit ratio is {{ $value | humanizePercentage }} over 15 minutes, under half of the previous day's: upstreams take the extra load.",
        },
        // HTTPS termination: a served certificate close to its notAfter
        // (renewal failed; the gateway reloads renewed files by itself).
        AlertSpec {
            name: "GatewayTlsCertificateExpiringSoon",
            expr: format!(
                "gateway_tls_certificate_expiry_seconds{{job=\"{job}\"}} < 14 * 86400"
            ),
            for_secs: 900,
            severity: "ticket",
            summary: "TLS certificate {{ $labels.name }} expires within 14 days",
            description: "The certificate {{ $labels.name }} served by {{ $labels.instance }} expires in less than 14 days: its renewal (cert-manager, certbot) has not happened; the gateway picks up renewed files by itself.",
        },
        AlertSpec {
            name: "GatewayTlsCertificateExpiringSoon",
            expr: format!(
                "gateway_tls_certificate_expiry_seconds{{job=\"{job}\"}} < 2 * 86400"
            ),
            for_secs: 300,
            severity: "page",
            summary: "TLS certificate {{ $labels.name }} expires within 2 days",
            description: "The certificate {{ $labels.name }} served by {{ $labels.instance }} expires in less than 2 days (or has expired): clients will refuse the gateway. Renew it and replace the files (or send SIGHUP).",
        },
        AlertSpec {
            name: "GatewaySaturation",
            expr: format!(
                "gateway_route_inflight_requests{{job=\"{job}\"}} / gateway_route_inflight_limit{{job=\"{job}\"}} > 0.8\nor\ngateway_connections{{job=\"{job}\",listener=\"proxy\"}} / gateway_connections_limit{{job=\"{job}\",listener=\"proxy\"}} > 0.8\nor\nprocess_open_fds{{job=\"{job}\"}} / process_max_fds{{job=\"{job}\"}} > 0.8"
            ),
            for_secs: 300,
            severity: "ticket",
            summary: "Gateway {{ $labels.instance }} is near a concurrency limit",
            description: "{{ $value | humanizePercentage }} of a limit for 5 minutes: {{ if $labels.route }}requests in flight on route {{ $labels.route }} against its max_inflight (503s shed above it){{ else if $labels.listener }}client connections against server.max_connections (new ones are closed at accept above it){{ else }}open file descriptors against the process limit{{ end }}.",
        },
    ];
    let alerts = specs
        .into_iter()
        .map(|a| {
            let description = a.description.replace("{job}", job);
            alert(
                opts,
                AlertSpec {
                    description: &description,
                    ..a
                },
                &[],
            )
        })
        .collect();
    vec![
        Group {
            name: "gateway-recordings".into(),
            rules: rec,
        },
        Group {
            name: "gateway-alerts".into(),
            rules: alerts,
        },
    ]
}

/// All groups as one `PrometheusRule` for the Prometheus operator.
fn prometheus_rule(groups: &[Group]) -> String {
    let body = render(groups);
    let mut s = String::from(GENERATED);
    s.push_str("apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: gateway\n  labels:\n    app.kubernetes.io/name: gateway\n    release: prometheus\nspec:\n");
    for line in body.lines().skip(1) {
        let _ = writeln!(s, "  {line}");
    }
    s
}

/// The rule files.
pub fn files(config: &Config, opts: &Options) -> Vec<File> {
    let all: Vec<Group> = [
        slo_recordings(config, opts),
        slo_alerts(config, opts),
        gateway_alerts(config, opts),
    ]
    .concat();
    vec![
        File {
            path: PathBuf::from("kubernetes/prometheusrule.yaml"),
            text: prometheus_rule(&all),
        },
        File {
            path: PathBuf::from("rules/slo-recordings.yml"),
            text: render(&slo_recordings(config, opts)),
        },
        File {
            path: PathBuf::from("rules/slo-alerts.yml"),
            text: render(&slo_alerts(config, opts)),
        },
        File {
            path: PathBuf::from("rules/gateway-alerts.yml"),
            text: render(&gateway_alerts(config, opts)),
        },
    ]
}

/// Every rule of `config`, for tests that query each expression.
pub fn all(config: &Config, opts: &Options) -> Vec<Rule> {
    [
        slo_recordings(config, opts),
        slo_alerts(config, opts),
        gateway_alerts(config, opts),
    ]
    .into_iter()
    .flatten()
    .flat_map(|g| g.rules)
    .collect()
}
