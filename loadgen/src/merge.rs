//! `loadgen merge`: combines the result files of a distributed run (`--shard i/n` each)
//! into one result, exactly: histograms are added bucket by bucket, counters summed, so
//! the merged percentiles are those of one run that made every request. The per-second
//! series is aligned on wall-clock seconds; its per-second percentiles are the
//! request-weighted mean of the shards' (the only approximate figure).

use std::collections::BTreeMap;
use std::path::Path;

use crate::metrics::{RunResult, SeriesPoint, PERCENTILES, RESULT_FORMAT};

/// Reads one result file.
pub fn read(path: &Path) -> Result<RunResult, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let r: RunResult = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a loadgen result file: {e}", path.display()))?;
    if r.format != RESULT_FORMAT {
        return Err(format!(
            "{}: result format {} (this loadgen reads {RESULT_FORMAT})",
            path.display(),
            r.format
        ));
    }
    Ok(r)
}

fn merge_series(all: &[RunResult]) -> Vec<SeriesPoint> {
    let mut by_sec: BTreeMap<i64, Vec<&SeriesPoint>> = BTreeMap::new();
    for r in all {
        for p in &r.series {
            #[allow(clippy::cast_possible_truncation)]
            by_sec.entry(p.unix.round() as i64).or_default().push(p);
        }
    }
    let start = all.iter().map(|r| r.started_unix).fold(f64::MAX, f64::min);
    by_sec
        .into_values()
        .filter_map(|points| {
            let first = *points.first()?;
            let requests: u64 = points.iter().map(|p| p.requests).sum();
            let weight = |p: &SeriesPoint| {
                if requests == 0 {
                    1.0
                } else {
                    p.requests as f64
                }
            };
            let wsum: f64 = points.iter().map(|p| weight(p)).sum();
            let percentiles = (0..first.percentiles.len())
                .map(|i| {
                    points
                        .iter()
                        .map(|p| p.percentiles.get(i).copied().unwrap_or(0.0) * weight(p))
                        .sum::<f64>()
                        / wsum.max(1e-9)
                })
                .collect();
            let total_requests: u64 = points.iter().map(|p| p.total_requests).sum();
            let wavg = |f: fn(&SeriesPoint) -> f64| {
                points
                    .iter()
                    .map(|p| f(p) * p.total_requests as f64)
                    .sum::<f64>()
                    / (total_requests.max(1) as f64)
            };
            Some(SeriesPoint {
                unix: first.unix,
                elapsed: first.unix - start,
                users: points.iter().map(|p| p.users).sum(),
                requests,
                failures: points.iter().map(|p| p.failures).sum(),
                percentiles,
                total_requests,
                total_failures: points.iter().map(|p| p.total_failures).sum(),
                total_median: wavg(|p| p.total_median),
                total_avg: wavg(|p| p.total_avg),
                total_min: points.iter().map(|p| p.total_min).fold(f64::MAX, f64::min),
                total_max: points.iter().map(|p| p.total_max).fold(0.0, f64::max),
                total_avg_size: wavg(|p| p.total_avg_size),
                // Weighted like the interval percentiles: an estimate, as Locust's
                // distributed history is.
                total_percentiles: (0..PERCENTILES.len())
                    .map(|i| wavg_at(&points, i))
                    .collect(),
            })
        })
        .collect()
}

/// Merges results; thresholds of every shard are judged once on the merged result.
pub fn merge(mut all: Vec<RunResult>) -> Result<RunResult, String> {
    let Some(mut out) = all.first().cloned() else {
        return Err("nothing to merge".into());
    };
    all.sort_by(|a, b| a.shards.cmp(&b.shards));
    out.series = merge_series(&all);
    let start = all.iter().map(|r| r.started_unix).fold(f64::MAX, f64::min);
    let end = all
        .iter()
        .map(|r| r.started_unix + r.duration_secs)
        .fold(f64::MIN, f64::max);
    out.started_unix = start;
    out.duration_secs = (end - start).max(0.0);
    out.shards = all.iter().flat_map(|r| r.shards.iter().cloned()).collect();
    if out.shards.is_empty() {
        out.shards = (1..=all.len()).map(|i| format!("file {i}")).collect();
    }
    for r in all.iter().skip(1) {
        if r.scenario != out.scenario {
            return Err(format!(
                "cannot merge results of different scenarios ({:?} and {:?})",
                out.scenario, r.scenario
            ));
        }
        out.total.merge(&r.total);
        for s in &r.stats {
            match out
                .stats
                .iter_mut()
                .find(|o| o.method == s.method && o.name == s.name)
            {
                Some(o) => o.merge(s),
                None => out.stats.push(s.clone()),
            }
        }
        for f in &r.failures {
            match out
                .failures
                .iter_mut()
                .find(|o| o.method == f.method && o.name == f.name && o.error == f.error)
            {
                Some(o) => {
                    o.occurrences += f.occurrences;
                    o.first_seen = min_opt(o.first_seen, f.first_seen, f64::min);
                    o.last_seen = min_opt(o.last_seen, f.last_seen, f64::max);
                }
                None => out.failures.push(f.clone()),
            }
        }
        for e in &r.exceptions {
            match out.exceptions.iter_mut().find(|o| o.message == e.message) {
                Some(o) => o.count += e.count,
                None => out.exceptions.push(e.clone()),
            }
        }
        for t in &r.thresholds {
            if !out.thresholds.contains(t) {
                out.thresholds.push(t.clone());
            }
        }
        out.checks_passed += r.checks_passed;
        out.checks_failed += r.checks_failed;
        out.max_users += r.max_users;
        out.interrupted |= r.interrupted;
        out.stopped_in_flight += r.stopped_in_flight;
        out.dropped_iterations += r.dropped_iterations;
        let rel = &mut out.reliability;
        rel.unreliable |= r.reliability.unreliable;
        rel.reasons.extend(
            r.reliability
                .reasons
                .iter()
                .map(|x| format!("shard {}: {x}", r.shards.join(","))),
        );
        rel.max_lag_ms = rel.max_lag_ms.max(r.reliability.max_lag_ms);
        rel.cpu_saturated_secs += r.reliability.cpu_saturated_secs;
        rel.late_arrivals += r.reliability.late_arrivals;
        rel.arrivals += r.reliability.arrivals;
        if r.host != out.host {
            out.host = format!("{}, {}", out.host, r.host);
        }
    }
    out.failures
        .sort_by_key(|f| std::cmp::Reverse(f.occurrences));
    out.server = None;
    Ok(out)
}

/// The cumulative percentile `i` of shard points, weighted by their request counts.
fn wavg_at(points: &[&SeriesPoint], i: usize) -> f64 {
    let n: u64 = points.iter().map(|p| p.total_requests).sum();
    points
        .iter()
        .map(|p| p.total_percentiles.get(i).copied().unwrap_or(0.0) * p.total_requests as f64)
        .sum::<f64>()
        / (n.max(1) as f64)
}

/// Combines two optional times with `f` (either alone is kept).
fn min_opt(a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, b) => a.or(b),
    }
}
