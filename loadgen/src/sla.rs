//! SLA thresholds and the verdict.
//!
//! A threshold is `METRIC OP VALUE`, optionally for one request name as `NAME: EXPR`:
//!
//! | metric | value |
//! | --- | --- |
//! | `p50` .. `p99.99`, `p100`, `avg`, `min`, `max`, `med` | a duration: `350ms`, `1.5s`, `800us` (bare numbers are ms) |
//! | `error_rate` | a percentage `0.5%`, or a fraction `0.005` |
//! | `rps` | requests per second over the run |
//! | `requests`, `failures` | counts |
//! | `dropped_iterations` | open-model arrivals dropped because every VU was busy (whole run only) |
//!
//! Requests still in flight when the run's stop timeout ran out are failures (a request
//! timeout) in every metric above. A run that dropped arrivals did not deliver its planned
//! load: when it has thresholds, none of them on `dropped_iterations`, [`judge_all`] adds
//! a missed verdict that says so; a `dropped_iterations` threshold (k6's opt-in) decides
//! instead.
//!
//! ```
//! use loadgen::sla::Threshold;
//!
//! let t: Threshold = "p95<350ms".parse().unwrap();
//! assert_eq!(t.to_string(), "p95<350ms");
//! let per_name: Threshold = "GET /api/users/[id]: p99<=650ms".parse().unwrap();
//! assert_eq!(per_name.name.as_deref(), Some("GET /api/users/[id]"));
//! assert!("p95<>1".parse::<Threshold>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::metrics::RunResult;

/// What a threshold measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// A latency percentile, `q` in 0..=1.
    Percentile(f64),
    /// Average latency.
    Avg,
    /// Lowest latency.
    Min,
    /// Highest latency.
    Max,
    /// Failed share, percent.
    ErrorRate,
    /// Requests per second.
    Rps,
    /// Requests.
    Requests,
    /// Failures.
    Failures,
    /// Open-model arrivals dropped (k6's `dropped_iterations`), for the whole run.
    DroppedIterations,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Op {
    fn holds(self, observed: f64, limit: f64) -> bool {
        match self {
            Self::Lt => observed < limit,
            Self::Le => observed <= limit,
            Self::Gt => observed > limit,
            Self::Ge => observed >= limit,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }
}

/// One SLA threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// The expression as written.
    pub source: String,
    /// A request name, or `None` for the total.
    pub name: Option<String>,
    /// What is measured.
    pub metric: Metric,
    /// How it compares.
    pub op: Op,
    /// The limit, in ms for latencies, percent for `error_rate`.
    pub value: f64,
}

/// A threshold that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad threshold {expr:?}: {why}")]
pub struct ThresholdError {
    /// The expression.
    pub expr: String,
    /// What is wrong.
    pub why: String,
}

fn parse_metric(s: &str) -> Option<Metric> {
    Some(match s {
        "avg" | "mean" => Metric::Avg,
        "min" => Metric::Min,
        "max" => Metric::Max,
        "med" | "median" => Metric::Percentile(0.5),
        "error_rate" | "errors" => Metric::ErrorRate,
        "rps" => Metric::Rps,
        "requests" => Metric::Requests,
        "failures" => Metric::Failures,
        "dropped_iterations" => Metric::DroppedIterations,
        _ => {
            let inner = s
                .strip_prefix("p(")
                .and_then(|r| r.strip_suffix(')'))
                .or_else(|| s.strip_prefix('p'))?;
            let p: f64 = inner.parse().ok()?;
            if !(0.0..=100.0).contains(&p) {
                return None;
            }
            Metric::Percentile(p / 100.0)
        }
    })
}

fn parse_duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1000.0,
        "us" | "µs" => 0.001,
        "m" | "min" => 60_000.0,
        _ => return None,
    };
    Some(n * factor)
}

impl FromStr for Threshold {
    type Err = ThresholdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| ThresholdError {
            expr: s.to_owned(),
            why: why.to_owned(),
        };
        let (name, expr) = match s.rsplit_once(": ") {
            Some((name, expr)) if !name.trim().is_empty() => {
                (Some(name.trim().to_owned()), expr.trim())
            }
            _ => (None, s.trim()),
        };
        let at = expr
            .find(['<', '>'])
            .ok_or_else(|| err("expected METRIC<VALUE, <=, > or >="))?;
        let (metric, rest) = expr.split_at(at);
        let (op, value) = if let Some(v) = rest.strip_prefix("<=") {
            (Op::Le, v)
        } else if let Some(v) = rest.strip_prefix(">=") {
            (Op::Ge, v)
        } else if let Some(v) = rest.strip_prefix('<') {
            (Op::Lt, v)
        } else if let Some(v) = rest.strip_prefix('>') {
            (Op::Gt, v)
        } else {
            return Err(err("expected <, <=, > or >="));
        };
        let metric = parse_metric(metric.trim()).ok_or_else(|| {
            err("unknown metric (p50..p100, p(99.9), avg, min, max, med, error_rate, rps, requests, failures, dropped_iterations)")
        })?;
        if metric == Metric::DroppedIterations && name.is_some() {
            return Err(err(
                "dropped_iterations counts arrivals of the whole run, not of a request name",
            ));
        }
        let value = value.trim();
        let value = match metric {
            Metric::Percentile(_) | Metric::Avg | Metric::Min | Metric::Max => {
                parse_duration_ms(value)
                    .ok_or_else(|| err("expected a duration such as 350ms or 1.5s"))?
            }
            Metric::ErrorRate => match value.strip_suffix('%') {
                Some(p) => p
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| err("expected a percentage such as 0.5%"))?,
                None => {
                    value
                        .parse::<f64>()
                        .map_err(|_| err("expected a percentage such as 0.5% or a fraction"))?
                        * 100.0
                }
            },
            Metric::Rps | Metric::Requests | Metric::Failures | Metric::DroppedIterations => {
                value.parse::<f64>().map_err(|_| err("expected a number"))?
            }
        };
        if !value.is_finite() || value < 0.0 {
            return Err(err("the value must be a non-negative number"));
        }
        Ok(Self {
            source: s.trim().to_owned(),
            name,
            metric,
            op,
            value,
        })
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The judgement of one threshold.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The threshold as written.
    pub threshold: String,
    /// Whether it held.
    pub held: bool,
    /// The observed value (ms, percent, per second or a count).
    pub observed: f64,
    /// Observed vs. wanted, in words.
    pub detail: String,
}

impl Threshold {
    /// Judges this threshold on `result`. A per-name threshold on a name that made no
    /// request does not hold (a silent name is not a met SLA).
    pub fn judge(&self, result: &RunResult) -> Verdict {
        if self.metric == Metric::DroppedIterations {
            let observed = result.dropped_iterations as f64;
            return Verdict {
                threshold: self.source.clone(),
                held: self.op.holds(observed, self.value),
                observed,
                detail: format!(
                    "observed {observed}, wanted {} {}",
                    self.op.as_str(),
                    self.value
                ),
            };
        }
        let Some(entry) = result.entry(self.name.as_deref()) else {
            return Verdict {
                threshold: self.source.clone(),
                held: false,
                observed: f64::NAN,
                detail: format!(
                    "no request named {:?} was made",
                    self.name.as_deref().unwrap_or_default()
                ),
            };
        };
        let (observed, unit) = match self.metric {
            Metric::Percentile(q) => (entry.percentile_ms(q), "ms"),
            Metric::Avg => (entry.avg_ms(), "ms"),
            Metric::Min => (entry.min_ms(), "ms"),
            Metric::Max => (entry.max_ms(), "ms"),
            Metric::ErrorRate => (entry.error_rate_pct(), "%"),
            Metric::Rps => (
                crate::metrics::rate(entry.requests, result.duration_secs),
                " req/s",
            ),
            Metric::Requests => (entry.requests as f64, ""),
            Metric::Failures => (entry.failures as f64, ""),
            Metric::DroppedIterations => (result.dropped_iterations as f64, ""),
        };
        let held = entry.requests > 0 && self.op.holds(observed, self.value);
        let detail = if entry.requests == 0 {
            "no requests".to_owned()
        } else {
            format!(
                "observed {observed:.2}{unit}, wanted {} {}{unit}",
                self.op.as_str(),
                self.value
            )
        };
        Verdict {
            threshold: self.source.clone(),
            held,
            observed,
            detail,
        }
    }
}

/// The name of the verdict [`judge_all`] adds when a threshold run dropped arrivals.
pub const IMPLICIT_DROPPED: &str = "dropped_iterations<1 (implicit)";

/// Judges every threshold expression of `result`; the ones that do not parse (a hand-edited
/// result file) are reported as missed. A run with thresholds that dropped arrivals, and
/// has no threshold of its own on `dropped_iterations`, gets one more, missed verdict
/// ([`IMPLICIT_DROPPED`]): its figures describe less load than the plan asked for.
pub fn judge_all(result: &RunResult) -> Vec<Verdict> {
    let mut on_dropped = false;
    let mut verdicts: Vec<Verdict> = result
        .thresholds
        .iter()
        .map(|t| match t.parse::<Threshold>() {
            Ok(t) => {
                on_dropped |= t.metric == Metric::DroppedIterations;
                t.judge(result)
            }
            Err(e) => Verdict {
                threshold: t.clone(),
                held: false,
                observed: f64::NAN,
                detail: e.to_string(),
            },
        })
        .collect();
    if !verdicts.is_empty() && !on_dropped && result.dropped_iterations > 0 {
        verdicts.push(Verdict {
            threshold: IMPLICIT_DROPPED.to_owned(),
            held: false,
            observed: result.dropped_iterations as f64,
            detail: format!(
                "{} of {} arrivals were dropped (every VU busy): the target got less load than planned; raise --max-vus, or set a dropped_iterations threshold to accept drops",
                result.dropped_iterations, result.reliability.arrivals
            ),
        });
    }
    verdicts
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_the_seed_thresholds() {
        let t = |s: &str| s.parse::<Threshold>().unwrap();
        assert_eq!(t("p95<350ms").metric, Metric::Percentile(0.95));
        assert_eq!(t("p99<650ms").value, 650.0);
        assert_eq!(t("p(99.9)<=1s").value, 1000.0);
        assert_eq!(t("error_rate<0.5%").value, 0.5);
        assert_eq!(t("error_rate<0.01").value, 1.0);
        assert_eq!(t("rps>=900").op, Op::Ge);
        assert_eq!(
            t("API - List Agents: p95<500ms").name.as_deref(),
            Some("API - List Agents")
        );
        assert_eq!(
            t("dropped_iterations<=10").metric,
            Metric::DroppedIterations
        );
        for bad in [
            "GET /a: dropped_iterations<1",
            "p95",
            "p101<1s",
            "p95<fast",
            "foo<1",
            "error_rate<x%",
            "rps>=-1",
        ] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad}");
        }
    }

    #[test]
    fn dropped_arrivals_fail_a_threshold_run_unless_a_threshold_accepts_them() {
        let rec = crate::metrics::Recorder::new(&[("GET".into(), "/a".into())]).unwrap();
        rec.record(0, std::time::Duration::from_millis(1), 0, 0, None);
        let mut r = rec.result(std::time::Duration::from_secs(1));
        r.thresholds = vec!["p95<1s".into()];
        assert!(judge_all(&r).iter().all(|v| v.held));
        r.dropped_iterations = 5;
        let v = judge_all(&r);
        assert_eq!(v.len(), 2);
        assert!(v[0].held && !v[1].held, "{v:?}");
        assert_eq!(v[1].threshold, IMPLICIT_DROPPED);
        assert!(v[1].detail.contains("5 of"), "{}", v[1].detail);
        r.thresholds.push("dropped_iterations<10".into());
        let v = judge_all(&r);
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|v| v.held), "{v:?}");
        r.thresholds = vec!["dropped_iterations<5".into()];
        assert!(!judge_all(&r)[0].held);
        r.thresholds.clear();
        assert!(judge_all(&r).is_empty(), "no thresholds, no verdict");
    }
}
