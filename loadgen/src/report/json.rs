//! The JSON summary (`--summary-export`), with metric keys that follow k6's summary export:
//! `http_reqs`, `http_req_duration` (and `http_req_duration{name:NAME}` per request name),
//! `http_req_failed`, `checks`, `data_received`, `vus_max`, `dropped_iterations`. As in
//! k6, a threshold maps to `true` when it FAILED. A `loadgen` object adds the verdict, the
//! requests cut off at the stop (`stopped_in_flight`, already failures in
//! `http_req_failed`) and the generator's reliability.

use serde_json::{json, Map, Value};

use crate::metrics::{rate, RunResult, StatEntry, PERCENTILES};
use crate::sla::{Metric, Threshold, Verdict, IMPLICIT_DROPPED};

fn trend(s: &StatEntry) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("avg".into(), s.avg_ms().into());
    m.insert("min".into(), s.min_ms().into());
    m.insert("med".into(), s.percentile_ms(0.5).into());
    m.insert("max".into(), s.max_ms().into());
    for q in PERCENTILES {
        if q < 1.0 {
            m.insert(format!("p({})", q * 100.0), s.percentile_ms(q).into());
        }
    }
    m
}

/// Which k6 metric key a threshold belongs to.
fn metric_key(t: &Threshold) -> String {
    let base = match t.metric {
        Metric::ErrorRate | Metric::Failures => "http_req_failed",
        Metric::Rps | Metric::Requests => "http_reqs",
        Metric::DroppedIterations => "dropped_iterations",
        _ => "http_req_duration",
    };
    match &t.name {
        Some(n) => format!("{base}{{name:{n}}}"),
        None => base.to_owned(),
    }
}

/// The summary document.
pub fn render(result: &RunResult, verdicts: &[Verdict]) -> Value {
    let secs = result.duration_secs;
    let t = &result.total;
    let mut metrics = Map::new();
    metrics.insert(
        "http_reqs".into(),
        json!({"count": t.requests, "rate": rate(t.requests, secs)}),
    );
    metrics.insert("http_req_duration".into(), Value::Object(trend(t)));
    metrics.insert(
        "http_req_failed".into(),
        json!({
            "passes": t.failures,
            "fails": t.requests - t.failures,
            "value": if t.requests == 0 { 0.0 } else { t.failures as f64 / t.requests as f64 },
        }),
    );
    let checks = result.checks_passed + result.checks_failed;
    metrics.insert(
        "checks".into(),
        json!({
            "passes": result.checks_passed,
            "fails": result.checks_failed,
            "value": if checks == 0 { 1.0 } else { result.checks_passed as f64 / checks as f64 },
        }),
    );
    metrics.insert(
        "data_received".into(),
        json!({"count": t.bytes, "rate": rate(t.bytes, secs)}),
    );
    metrics.insert(
        "vus_max".into(),
        json!({"value": result.max_users, "min": result.max_users, "max": result.max_users}),
    );
    metrics.insert(
        "dropped_iterations".into(),
        json!({"count": result.dropped_iterations, "rate": rate(result.dropped_iterations, secs)}),
    );
    for s in &result.stats {
        metrics.insert(
            format!("http_req_duration{{name:{}}}", s.name),
            Value::Object(trend(s)),
        );
        metrics.insert(
            format!("http_reqs{{name:{}}}", s.name),
            json!({"count": s.requests, "rate": rate(s.requests, secs)}),
        );
        metrics.insert(
            format!("http_req_failed{{name:{}}}", s.name),
            json!({
                "passes": s.failures,
                "fails": s.requests - s.failures,
                "value": if s.requests == 0 { 0.0 } else { s.failures as f64 / s.requests as f64 },
            }),
        );
    }
    let judged = result
        .thresholds
        .iter()
        .zip(verdicts)
        .filter_map(|(expr, v)| {
            let th = expr.parse::<Threshold>().ok()?;
            Some((metric_key(&th), expr.clone(), v))
        });
    let implicit = verdicts
        .iter()
        .filter(|v| v.threshold == IMPLICIT_DROPPED)
        .map(|v| ("dropped_iterations".to_owned(), v.threshold.clone(), v));
    for (key, expr, v) in judged.chain(implicit) {
        let entry = metrics
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            let ths = m
                .entry("thresholds")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(ths) = ths {
                ths.insert(expr.clone(), (!v.held).into());
            }
        }
    }
    let missed = verdicts.iter().filter(|v| !v.held).count();
    json!({
        "root_group": {"name": "", "path": "", "id": "d41d8cd98f00b204e9800998ecf8427e", "groups": {}, "checks": {}},
        "metrics": metrics,
        "loadgen": {
            "scenario": result.scenario,
            "host": result.host,
            "plan": result.plan,
            "started_unix": result.started_unix,
            "duration_secs": secs,
            "interrupted": result.interrupted,
            "stopped_in_flight": result.stopped_in_flight,
            "dropped_iterations": result.dropped_iterations,
            "shards": result.shards,
            "verdict": if verdicts.is_empty() { "none" } else if missed == 0 { "held" } else { "missed" },
            "thresholds": verdicts,
            "reliability": result.reliability,
            "server": result.server,
        },
    })
}
