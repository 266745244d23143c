//! Server-side cross-check: scrape the gateway's Prometheus `/metrics` before and after a
//! run and set the server's p95, p99 and error rate (from its request-duration histogram
//! and request counter) beside the client's, flagging a divergence. Optional: when the
//! endpoint is absent or has no such families, the check is skipped with the reason.

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::{BodyExt, Full};

use crate::client::{Conn, Target};
use crate::metrics::{RunResult, ServerSide};

/// Fetches the metrics text.
pub async fn scrape(target: &Target) -> Result<String, String> {
    let addr = target.resolve()?;
    let path = if target.base_path.is_empty() {
        "/metrics".to_owned()
    } else {
        target.base_path.clone()
    };
    let req = http::Request::get(path)
        .header(http::header::HOST, target.authority.clone())
        .body(Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let fetch = async {
        let res = Conn::default()
            .send(addr, target.tls.as_deref(), req)
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("{} answered {status}", target.url));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| format!("{} did not answer within 5s", target.url))?
}

/// One sample line: name, labels, value.
fn parse_line(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((n, rest)) => {
            let rest = rest.trim_end().strip_suffix('}')?;
            let labels = rest
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.trim(), v.trim().trim_matches('"')))
                })
                .collect();
            (n, labels)
        }
        None => (head.trim(), BTreeMap::new()),
    };
    Some((name, labels, value))
}

/// What the cross-check reads from one scrape.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    /// Cumulative bucket counts by upper bound (seconds), summed over label sets.
    pub buckets: BTreeMap<u64, f64>,
    /// Requests counted.
    pub requests: f64,
    /// Of which 5xx.
    pub errors: f64,
}

fn le_key(le: &str) -> Option<u64> {
    if le == "+Inf" {
        return Some(u64::MAX);
    }
    let secs: f64 = le.parse().ok()?;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((secs * 1e6).round() as u64)
}

/// The (histogram, counter) families read, first present wins: the gateway's own
/// (`gateway/src/telemetry/metrics.rs`), then the common `http_*` convention. Exact
/// names: a suffix match would also add `gateway_upstream_request_duration_seconds` and
/// `gateway_cache_requests_total` into the totals.
pub const FAMILIES: [(&str, &str); 2] = [
    (
        "gateway_request_duration_seconds_bucket",
        "gateway_requests_total",
    ),
    (
        "http_request_duration_seconds_bucket",
        "http_requests_total",
    ),
];

/// Reads the request-duration histogram and the request counter (5xx by a `status` or
/// `code` label) of the first of [`FAMILIES`] present.
pub fn snapshot(text: &str) -> Result<Snapshot, String> {
    let samples: Vec<_> = text.lines().filter_map(parse_line).collect();
    // Present when declared (`# TYPE NAME histogram`: before any request the family has
    // no samples yet) or sampled.
    let declared = |hist: &str| {
        let base = hist.trim_end_matches("_bucket");
        text.lines().any(|l| {
            l.strip_prefix("# TYPE ")
                .and_then(|rest| rest.strip_prefix(base))
                .is_some_and(|rest| rest.trim() == "histogram")
        })
    };
    let Some((hist, counter)) = FAMILIES
        .iter()
        .find(|(hist, _)| declared(hist) || samples.iter().any(|(name, _, _)| name == hist))
    else {
        return Err(format!(
            "no request-duration histogram in the metrics (looked for {})",
            FAMILIES
                .map(|(h, _)| h.trim_end_matches("_bucket"))
                .join(", ")
        ));
    };
    let mut snap = Snapshot::default();
    for (name, labels, value) in samples {
        if name == *hist {
            if let Some(le) = labels.get("le").and_then(|le| le_key(le)) {
                *snap.buckets.entry(le).or_default() += value;
            }
        } else if name == *counter {
            snap.requests += value;
            let status = labels.get("status").or_else(|| labels.get("code"));
            if status.is_some_and(|s| s.starts_with('5')) {
                snap.errors += value;
            }
        }
    }
    Ok(snap)
}

/// The percentile `q` in ms of cumulative bucket deltas, interpolated within a bucket.
fn bucket_percentile(deltas: &[(u64, f64)], q: f64) -> f64 {
    let total = deltas.last().map_or(0.0, |(_, c)| *c);
    if total <= 0.0 {
        return 0.0;
    }
    let rank = q * total;
    let mut prev = (0u64, 0.0f64);
    for &(le, count) in deltas {
        if count >= rank {
            if le == u64::MAX {
                return prev.0 as f64 / 1000.0;
            }
            let span = count - prev.1;
            let frac = if span > 0.0 {
                (rank - prev.1) / span
            } else {
                1.0
            };
            return (prev.0 as f64 + (le - prev.0) as f64 * frac) / 1000.0;
        }
        prev = (le, count);
    }
    prev.0 as f64 / 1000.0
}

/// Compares the server's view of the run with the client's.
pub fn compare(
    before: Result<String, String>,
    after: Result<String, String>,
    result: &RunResult,
) -> Result<ServerSide, String> {
    let before = before?;
    let after = snapshot(&after?)?;
    // Before the gateway answered anything, prometheus-client exports no sample (and no
    // `# TYPE` line) of a labelled family: an absent family counts as zero then.
    let before = snapshot(&before).unwrap_or_default();
    let deltas: Vec<(u64, f64)> = after
        .buckets
        .iter()
        .map(|(le, c)| (*le, c - before.buckets.get(le).copied().unwrap_or(0.0)))
        .collect();
    let requests = after.requests - before.requests;
    let errors = after.errors - before.errors;
    let server = ServerSide {
        requests,
        error_rate_pct: if requests > 0.0 {
            errors * 100.0 / requests
        } else {
            0.0
        },
        p95_ms: bucket_percentile(&deltas, 0.95),
        p99_ms: bucket_percentile(&deltas, 0.99),
        divergences: Vec::new(),
    };
    Ok(with_divergences(server, result))
}

fn with_divergences(mut s: ServerSide, r: &RunResult) -> ServerSide {
    let client_p99 = r.total.percentile_ms(0.99);
    if client_p99 > 2.0 * s.p99_ms + 5.0 {
        s.divergences.push(format!(
            "client p99 {client_p99:.1}ms is far above the server's {:.1}ms: time lost between the generator and the gateway (network, generator, accept queue)",
            s.p99_ms
        ));
    }
    let client_requests = r.total.requests as f64;
    if s.requests > 0.0 && (s.requests - client_requests).abs() > 0.05 * client_requests + 10.0 {
        s.divergences.push(format!(
            "the server counted {:.0} requests, the client {client_requests:.0}",
            s.requests
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_prometheus_histograms() {
        let before = "gateway_request_duration_seconds_bucket{route=\"a\",le=\"0.01\"} 0\n\
                      gateway_request_duration_seconds_bucket{route=\"a\",le=\"0.1\"} 0\n\
                      gateway_request_duration_seconds_bucket{route=\"a\",le=\"+Inf\"} 0\n\
                      gateway_requests_total{status=\"200\"} 0\n";
        let after = "# HELP x\n\
                     gateway_request_duration_seconds_bucket{route=\"a\",le=\"0.01\"} 90\n\
                     gateway_request_duration_seconds_bucket{route=\"a\",le=\"0.1\"} 100\n\
                     gateway_request_duration_seconds_bucket{route=\"a\",le=\"+Inf\"} 100\n\
                     gateway_requests_total{status=\"200\"} 98\n\
                     gateway_requests_total{status=\"502\"} 2\n\
                     gateway_upstream_request_duration_seconds_bucket{le=\"0.01\"} 500\n\
                     gateway_upstream_request_duration_seconds_bucket{le=\"+Inf\"} 500\n\
                     gateway_cache_requests_total{result=\"hit\"} 40\n";
        let rec = crate::metrics::Recorder::new(&[]).unwrap();
        let result = rec.result(Duration::from_secs(1));
        let s = compare(Ok(before.into()), Ok(after.into()), &result).unwrap();
        assert_eq!(s.requests, 100.0);
        assert!((s.error_rate_pct - 2.0).abs() < 1e-9);
        assert!((s.p95_ms - 55.0).abs() < 1e-6, "{}", s.p95_ms);
        assert!(snapshot("up 1\n").is_err());
        // A first scrape without the family (nothing answered yet) counts as zero.
        let s = compare(Ok("up 1\n".into()), Ok(after.into()), &result).unwrap();
        assert_eq!(s.requests, 100.0);
        // Declared but not yet sampled (a gateway that answered nothing yet): empty.
        let fresh = "# TYPE gateway_request_duration_seconds histogram\n";
        assert_eq!(snapshot(fresh).unwrap(), Snapshot::default());
        // The common `http_*` names are read when the gateway's are absent.
        let other = snapshot("http_request_duration_seconds_bucket{le=\"+Inf\"} 7\nhttp_requests_total{code=\"500\"} 7\n").unwrap();
        assert_eq!((other.requests, other.errors), (7.0, 7.0));
    }
}
