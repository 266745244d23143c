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
            err("unknown metric (p50..p100, p(99.9), avg, min, max, med, error_rate, rps, requests, failures)")
        })?;
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
            Metric::Rps | Metric::Requests | Metric::Failures => {
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

/// Judges every threshold expression of `result`; the ones that do not parse (a hand-edited
/// result file) are reported as missed.
pub fn judge_all(result: &RunResult) -> Vec<Verdict> {
    result
        .thresholds
        .iter()
        .map(|t| match t.parse::<Threshold>() {
            Ok(t) => t.judge(result),
            Err(e) => Verdict {
                threshold: t.clone(),
                held: false,
                observed: f64::NAN,
                detail: e.to_string(),
            },
        })
        .collect()
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
        for bad in [
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
}
