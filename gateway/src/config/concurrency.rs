//! `concurrency = { mode = "adaptive", target = "p95<=350ms", min = 4, max = 1024 }`:
//! a route's adaptive concurrency limit, aimed at a latency objective.
//!
//! A fixed limit is `max_inflight` (the load shedder); this is the
//! adaptive one (see [`crate::middleware::concurrency`]). A route has one
//! or the other, never both: two limits on one slot count would disagree
//! about which one refused.

use std::time::Duration;

use serde::Deserialize;

use super::SloConfig;

/// The only mode: `"adaptive"`. A fixed limit is the route's `max_inflight`.
pub const MODE_ADAPTIVE: &str = "adaptive";

/// A route's adaptive concurrency limit.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyConfig {
    /// `"adaptive"` (the only mode; `max_inflight` is the fixed limit).
    pub mode: String,
    /// Latency objective of admitted requests, `p95<=350ms`; defaults to
    /// the first latency objective of the first `[[slos]]` entry covering
    /// the route.
    #[serde(default)]
    pub target: Option<String>,
    /// The limit never falls below this.
    #[serde(default = "default_min")]
    pub min: usize,
    /// The limit never grows above this.
    #[serde(default = "default_max")]
    pub max: usize,
    /// Status of a refused request: 503 (default) or 429.
    #[serde(default = "default_reject_status")]
    pub reject_status: u16,
}

fn default_min() -> usize {
    4
}
fn default_max() -> usize {
    1024
}
fn default_reject_status() -> u16 {
    503
}

/// A latency objective: the `quantile` of admitted requests' latency must
/// not exceed `threshold`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// In (0, 1): 0.95 for `p95`.
    pub quantile: f64,
    /// Latency bound.
    pub threshold: Duration,
}

impl Target {
    /// Parses `p95<=350ms` (also `p99.9 <= 1s`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a latency target like \"p95<=350ms\"");
        let (q, d) = s.split_once("<=").ok_or_else(bad)?;
        let q = q.trim().strip_prefix('p').ok_or_else(bad)?;
        let pct: f64 = q.parse().map_err(|_| bad())?;
        if !(pct > 0.0 && pct < 100.0) {
            return Err(format!(
                "{s:?}: the percentile must be between 0 and 100 (exclusive)"
            ));
        }
        let threshold = humantime_serde::re::humantime::parse_duration(d.trim())
            .map_err(|e| format!("{s:?}: {e}"))?;
        if threshold.is_zero() {
            return Err(format!("{s:?}: the latency bound must be greater than 0"));
        }
        Ok(Self {
            quantile: pct / 100.0,
            threshold,
        })
    }
}

impl ConcurrencyConfig {
    /// The target of route `route`: its own, else the first latency
    /// objective of the first SLO covering the route. `Err` names what
    /// is wrong (for `validate`).
    pub fn target(&self, route: &str, slos: &[SloConfig]) -> Result<Target, String> {
        if let Some(t) = &self.target {
            return Target::parse(t);
        }
        slos.iter()
            .filter(|s| s.routes.is_empty() || s.routes.iter().any(|r| r == route))
            .find_map(|s| s.latency.first())
            .map(|o| Target {
                quantile: o.quantile,
                threshold: o.threshold,
            })
            .ok_or_else(|| {
                format!("no target set and no [[slos]] latency objective covers route {route:?}")
            })
    }

    /// Every problem, as (key path under `prefix`, message).
    pub fn check(
        &self,
        prefix: &str,
        route: &super::RouteConfig,
        slos: &[SloConfig],
    ) -> Vec<(String, String)> {
        let mut errs = Vec::new();
        if self.mode != MODE_ADAPTIVE {
            errs.push((
                format!("{prefix}.mode"),
                format!(
                    "unknown mode {:?}: the only mode is \"adaptive\" (a fixed limit is the route's max_inflight)",
                    self.mode
                ),
            ));
        }
        if let Err(m) = self.target(&route.name, slos) {
            errs.push((format!("{prefix}.target"), m));
        }
        if self.min == 0 {
            errs.push((format!("{prefix}.min"), "must be at least 1".to_owned()));
        }
        if self.max < self.min {
            errs.push((format!("{prefix}.max"), "must not be below min".to_owned()));
        }
        if self.max > MAX_LIMIT {
            errs.push((
                format!("{prefix}.max"),
                format!("must not exceed {MAX_LIMIT}"),
            ));
        }
        if self.reject_status != 503 && self.reject_status != 429 {
            errs.push((
                format!("{prefix}.reject_status"),
                format!("{} is not 503 or 429", self.reject_status),
            ));
        }
        if route.max_inflight.is_some() {
            errs.push((
                prefix.to_owned(),
                "max_inflight is set too: keep one (max_inflight is the fixed limit, concurrency the adaptive one)".to_owned(),
            ));
        }
        errs
    }
}

/// The highest `max` accepted.
pub const MAX_LIMIT: usize = 1_000_000;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{telemetry::default_slos, LatencyObjective};

    #[test]
    fn targets_parse_or_say_why_not() {
        let t = Target::parse("p95<=350ms").unwrap();
        assert!((t.quantile - 0.95).abs() < 1e-9);
        assert_eq!(t.threshold, Duration::from_millis(350));
        let t = Target::parse(" p99.9 <= 1s ").unwrap();
        assert!((t.quantile - 0.999).abs() < 1e-9);
        for bad in [
            "95<=1s",
            "p95<1s",
            "p0<=1s",
            "p100<=1s",
            "p95<=0ms",
            "p95<=soon",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_settings_are_named_by_key_path() {
        let text = r#"
            slos = []
            [upstreams.u]
            endpoints = ["127.0.0.1:1"]
            [[routes]]
            name = "a"
            prefix = "/a"
            upstream = "u"
            max_inflight = 10
            concurrency = { mode = "fixed", min = 0, max = 2000000, reject_status = 500 }
            [[routes]]
            name = "b"
            prefix = "/b"
            upstream = "u"
            concurrency = { mode = "adaptive", target = "p95<350ms", min = 8, max = 4 }
        "#;
        let c = crate::config::Config::from_toml(text).unwrap();
        let errs = crate::config::validate::validate(&c).unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "routes[0].concurrency.mode",
            "routes[0].concurrency.target",
            "routes[0].concurrency.min",
            "routes[0].concurrency.max",
            "routes[0].concurrency.reject_status",
            "routes[0].concurrency",
            "routes[1].concurrency.target",
            "routes[1].concurrency.max",
        ] {
            assert!(paths.contains(&want), "{want} not in {paths:?}");
        }
        let text = errs.to_string();
        assert!(text.contains("max_inflight"), "{text}");
        assert!(text.contains("no [[slos]] latency objective"), "{text}");
    }

    #[test]
    fn the_target_defaults_to_the_routes_slo() {
        let c: ConcurrencyConfig = toml::from_str("mode = \"adaptive\"").unwrap();
        assert_eq!((c.min, c.max, c.reject_status), (4, 1024, 503));
        let t = c.target("any", &default_slos()).unwrap();
        assert_eq!(t.threshold, Duration::from_millis(350));
        let only_b = SloConfig {
            name: "b".into(),
            routes: vec!["b".into()],
            latency: vec![LatencyObjective {
                quantile: 0.99,
                threshold: Duration::from_millis(80),
            }],
            availability: None,
            min_throughput: None,
        };
        let slos = [only_b];
        assert_eq!(
            c.target("b", &slos).unwrap().threshold,
            Duration::from_millis(80)
        );
        assert!(c.target("a", &slos).unwrap_err().contains("no target"));
    }
}
