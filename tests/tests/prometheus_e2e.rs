//! End-to-end proof of monitoring/: a real Prometheus (Debian's package)
//! scrapes a live gateway process in front of `mock-upstream` while the real
//! `loadgen` binary drives traffic and schedules a fault on `mock-upstream`
//! (a scenario `[[fault]]` sent through `--control`). Every rule and dashboard
//! query must parse, recording rules and dashboard queries must return data
//! (except those documented below as empty without the feature's traffic),
//! and the error-rate and page burn-rate alerts must fire during the fault
//! and resolve after it. The nightly job's verdict follows: loadgen, stopped
//! with Ctrl-C, writes its reports and exits 1 for the missed error-rate
//! threshold.
//!
//! The rules are the generator's, rendered with `time_scale = 60` (every
//! window and `for:` divided by 60: 5m -> 5s, 1h -> 60s), so the whole
//! cycle fits in about a minute and a half. The shipped rules use 1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use e2e::harness::{bin, client, find_tool, free_port, GatewayProcess, TestClient};
use e2e::mock::{MockOptions, MockUpstream};
use e2e::prometheus::{get_json, urlencode, Prometheus};
use gateway::monitoring::{self, dashboards, rules, Options};
use serde_json::Value;

/// Queries that return nothing until the middleware they watch has
/// traffic: this test has no JWT, rate limit, cache, retries, circuit
/// breaker, Redis, reloads, request bodies, nor TLS listener.
const EMPTY_WITHOUT_FEATURE: [&str; 12] = [
    "gateway_tls_certificate_expiry_seconds",
    "gateway_tls_handshake_failures_total",
    "gateway_route_inflight",
    "gateway_circuit_state",
    "gateway_ratelimit_decisions_total",
    "gateway_cache_requests_total",
    "gateway_jwt_rejections_total",
    "gateway_retries_total",
    "gateway_retry_budget_exhausted_total",
    "gateway_redis_errors_total",
    "gateway_config_reloads_total",
    "gateway_request_size_bytes",
];

async fn query(c: &TestClient, prom: &str, expr: &str) -> Value {
    let url = format!("http://{prom}/api/v1/query?query={}", urlencode(expr));
    get_json(c, &url)
        .await
        .unwrap_or_else(|| panic!("no answer from Prometheus for {expr}"))
}

async fn firing(c: &TestClient, prom: &str) -> Vec<(String, String, String)> {
    let Some(v) = get_json(c, &format!("http://{prom}/api/v1/alerts")).await else {
        return Vec::new();
    };
    v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .map(|a| {
            let l = &a["labels"];
            let s = |k: &str| l[k].as_str().unwrap_or("").to_owned();
            (s("alertname"), s("severity"), s("sli"))
        })
        .collect()
}

fn page_burn(a: &(String, String, String)) -> bool {
    a.0 == "GatewaySLOErrorBudgetBurn" && a.1 == "page" && a.2 == "availability"
}

fn high_error(a: &(String, String, String)) -> bool {
    a.0 == "APIGatewayHighErrorRate"
}

/// Polls `cond` on the firing alerts every second for at most `secs`.
async fn wait_alerts(
    c: &TestClient,
    prom: &str,
    secs: u64,
    what: &str,
    cond: impl Fn(&[(String, String, String)]) -> bool,
) -> u64 {
    let start = tokio::time::Instant::now();
    loop {
        let f = firing(c, prom).await;
        if cond(&f) {
            return start.elapsed().as_secs();
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs}s waiting for {what}; firing: {f:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn start_prometheus(
    bin: &Path,
    dir: &Path,
    admin: std::net::SocketAddr,
    loadgen: &str,
) -> Prometheus {
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}/*.yml\nscrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: ['{admin}']\n  - job_name: loadgen\n    static_configs:\n      - targets: ['{loadgen}']\n",
        rules = dir.join("rules").display()
    );
    Prometheus::start(bin, dir, &config, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_gateway_evaluates_every_rule_and_alerts_fire_and_resolve() {
    let Some(prom_bin) = find_tool("prometheus") else {
        eprintln!(
            "SKIPPED: `prometheus` not on PATH (Debian's `prometheus` package; scripts/test.sh installs it)"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("gw-prom-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let cfg =
        gateway::config::load(&gateway::config::Source::Embedded, &Default::default()).unwrap();
    let opts = Options {
        time_scale: 60,
        ..Options::default()
    };
    monitoring::write(&dir, &monitoring::generate(&cfg, &opts)).unwrap();

    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let gw = GatewayProcess::spawn(None, &[("GATEWAY_UPSTREAM", mock.addr().to_string())]);
    // loadgen's live metrics (--prometheus-listen) are scraped too, for the client vs
    // server dashboard.
    let loadgen_metrics = format!("127.0.0.1:{}", free_port());
    let prom = start_prometheus(&prom_bin, &dir, gw.admin, &loadgen_metrics);
    let c = client();
    let p = prom.addr.clone();

    // Prometheus up and scraping the gateway.
    let start = tokio::time::Instant::now();
    loop {
        let v = get_json(&c, &format!("http://{p}/api/v1/query?query=up")).await;
        if v.as_ref().is_some_and(|v| {
            v["data"]["result"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["metric"]["job"] == "gateway" && r["value"][1] == "1")
        }) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Prometheus never scraped the gateway: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Traffic: the real loadgen, ~100 req/s over two request names, for at
    // most 180 s; its scenario makes half the /api requests answer 502 from
    // 12 s to 57 s into the run, through mock-upstream's control endpoint.
    let scenario = dir.join("scenario.toml");
    std::fs::write(
        &scenario,
        r#"
name = "prometheus-e2e"
thresholds = ["error_rate<0.5%"]

[[fault]]
at = "12s"
duration = "45s"
path_prefix = "/api"
error_rate = 0.5
status = 502

[[user]]
name = "Reader"
wait_time = "constant_pacing(20ms)"

[[user.task]]
name = "/api/hello"
path = "/api/hello"

[[user.task]]
name = "/api/users"
path = "/api/users"
"#,
    )
    .unwrap();
    let summary = dir.join("summary.json");
    let mut loadgen = std::process::Command::new(bin("loadgen"))
        .arg("run")
        .arg(&scenario)
        .args(["--host", &format!("http://{}", gw.addr)])
        .args(["--control", &format!("http://{}", mock.addr())])
        .args(["--users", "2", "--spawn-rate", "10", "--run-time", "180s"])
        .args(["--headless", "--only-summary"])
        .arg("--summary-export")
        .arg(&summary)
        .args(["--metrics-url", &format!("http://{}/metrics", gw.admin)])
        .args(["--prometheus-listen", &loadgen_metrics])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("loadgen starts");

    // Clean traffic first, so the windows have a baseline.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        loadgen.try_wait().unwrap().is_none(),
        "loadgen exited early"
    );
    assert!(firing(&c, &p)
        .await
        .iter()
        .all(|a| !page_burn(a) && !high_error(a)));

    let fired = wait_alerts(&c, &p, 50, "error-rate and page burn-rate alerts", |f| {
        f.iter().any(high_error) && f.iter().any(page_burn)
    })
    .await;
    eprintln!("alerts fired {fired}s after the clean baseline (the fault starts ~4s after it)");

    // Every rule and dashboard query, while every kind of data exists.
    let mut checked = 0;
    let mut empty = Vec::new();
    let rule_list = rules::all(&cfg, &opts);
    let mut exprs: Vec<(String, String, bool)> = rule_list
        .iter()
        .map(|r| (r.name.clone(), r.expr.clone(), !r.alert))
        .collect();
    exprs.extend(dashboards::queries(&cfg, &opts).into_iter().map(|(n, e)| {
        let e = e
            .replace("$__rate_interval", "5s")
            .replace("$route", ".*")
            .replace("$upstream", ".*");
        (n, e, true)
    }));
    for (name, expr, wants_data) in &exprs {
        let v = query(&c, &p, expr).await;
        assert_eq!(v["status"], "success", "{name}: {expr}\n{v}");
        checked += 1;
        let has_data = v["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty());
        if *wants_data && !has_data {
            if EMPTY_WITHOUT_FEATURE.iter().any(|m| expr.contains(m)) {
                empty.push(name.clone());
            } else {
                panic!("{name} returned no data: {expr}");
            }
        }
    }
    eprintln!(
        "{checked} expressions parsed; {} legitimately empty: {empty:?}",
        empty.len()
    );
    assert!(
        exprs.iter().any(|(n, e, _)| n.starts_with("loadgen:")
            && e.contains("loadgen_request_duration_seconds_bucket")
            && e.contains("gateway_request_duration_seconds_bucket")),
        "the client vs server dashboard was checked"
    );
    // loadgen's histogram has the gateway's bucket edges (the SLO thresholds included),
    // so the dashboard's client and server quantiles interpolate alike.
    let mut edges = Vec::new();
    for family in [
        "gateway_request_duration_seconds_bucket",
        "loadgen_request_duration_seconds_bucket",
    ] {
        let v = query(&c, &p, &format!("group by (le) ({family})")).await;
        let mut les: Vec<f64> = v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["metric"]["le"].as_str()?.parse().ok())
            .collect();
        les.sort_by(f64::total_cmp);
        assert!(les.len() > 10, "{family} edges: {v}");
        edges.push(les);
    }
    assert_eq!(edges[0], edges[1], "gateway vs loadgen bucket edges");

    // The scheduled fault ends 57 s into the run: both alerts resolve (the
    // 5s and 30s short windows recover).
    let resolved = wait_alerts(&c, &p, 100, "the alerts to resolve", |f| {
        !f.iter().any(high_error) && !f.iter().any(page_burn)
    })
    .await;
    eprintln!("alerts resolved {resolved}s after the expressions were checked");

    // Ctrl-C: loadgen stops cleanly, reports, and fails the nightly job.
    let ok = std::process::Command::new("kill")
        .args(["-INT", &loadgen.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -INT loadgen");
    let out = tokio::task::spawn_blocking(move || loadgen.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "loadgen exits 1 for the missed error-rate threshold\n{stdout}\n{stderr}"
    );
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let reqs = s["metrics"]["http_reqs"]["count"].as_f64().unwrap_or(0.0);
    let failed = s["metrics"]["http_req_failed"]["passes"]
        .as_f64()
        .unwrap_or(0.0);
    eprintln!("loadgen: {reqs} requests, {failed} failed\n{stdout}");
    assert!(reqs > 1000.0, "loadgen drove traffic: {s}");
    assert_eq!(s["loadgen"]["verdict"], "missed");
    assert_eq!(s["loadgen"]["interrupted"], true);
    assert!(failed > 0.0, "loadgen saw the fault: {s}");
    // loadgen waited for a last scrape before exiting: Prometheus holds its final counts,
    // exactly the summary's.
    let last = |metric: &str| {
        let expr = format!("sum(last_over_time({metric}[5m]))");
        let c = &c;
        let p = &p;
        async move {
            let v = query(c, p, &expr).await;
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|x| x.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{expr}: {v}"))
        }
    };
    assert_eq!(
        last("loadgen_requests_total").await,
        reqs,
        "scraped client requests"
    );
    assert_eq!(
        last("loadgen_request_failures_total").await,
        failed,
        "scraped client failures"
    );
    // The server-side cross-check read the gateway's own counters: it saw
    // the same requests (give or take those in flight at the scrapes).
    let server = &s["loadgen"]["server"];
    let server_reqs = server["requests"].as_f64().unwrap_or(-1.0);
    assert!(
        (server_reqs - reqs).abs() <= 0.02 * reqs + 10.0,
        "server-side {server_reqs} requests vs client {reqs}: {server}"
    );
    drop(prom);
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
