//! PromQL building blocks shared by the rules and the dashboards: label
//! selectors, durations, and the SLIs of an SLO.

use crate::config::telemetry::SloConfig;

/// The SLI windows of every SLO, in seconds (5m, 30m, 1h, 2h, 6h, 1d, 3d).
pub const WINDOWS: [u64; 7] = [300, 1800, 3600, 7200, 21600, 86400, 259200];

/// The SLO period the burn-rate factors are derived from (30 days).
pub const PERIOD: u64 = 30 * 86400;

/// A Prometheus duration for `secs` (`5m`, `1h`, `3d`, `90s`).
pub fn duration(secs: u64) -> String {
    let secs = secs.max(1);
    for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// `secs` divided by the time scale (at least one second).
pub fn scaled(secs: u64, scale: u32) -> u64 {
    (secs / u64::from(scale.max(1))).max(1)
}

/// The window name used in recording-rule names (`5m`, `1d`), unscaled so
/// the names are the same whatever the scale.
pub fn window_name(secs: u64) -> String {
    duration(secs)
}

/// `{a, b}` from matchers, or nothing when there are none.
pub fn selector(matchers: &[String]) -> String {
    if matchers.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", matchers.join(","))
    }
}

/// The route matcher of an SLO (none when it covers every route).
pub fn route_matchers(slo: &SloConfig) -> Vec<String> {
    if slo.routes.is_empty() {
        Vec::new()
    } else {
        vec![format!("route=~\"{}\"", alternation(&slo.routes))]
    }
}

/// `a|b|c` with regex metacharacters escaped (route names are plain words,
/// but a config may use dots or dashes).
pub fn alternation(names: &[String]) -> String {
    names
        .iter()
        .map(|n| {
            n.chars()
                .flat_map(|c| {
                    let esc = matches!(
                        c,
                        '.' | '+' | '*' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$'
                    );
                    // Inside a PromQL string a regex backslash is itself escaped.
                    let pre: &[char] = if esc { &['\\', '\\'] } else { &[] };
                    pre.iter().copied().chain(std::iter::once(c))
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// The `le` matcher of the bucket whose bound is `secs`. The gateway writes
/// bounds like `0.35` and `1.0`; Prometheus 3 normalises `1.0` to `1`, so an
/// integral bound matches both spellings.
pub fn le_matcher(secs: f64) -> String {
    let go = format!("{secs}");
    if go.contains('.') || go.contains('e') {
        format!("le=\"{go}\"")
    } else {
        format!("le=~\"{go}|{go}\\\\.0\"")
    }
}

/// `95` for 0.95, `99.9` for 0.999: the name of a latency objective.
pub fn quantile_name(q: f64) -> String {
    let s = format!("{:.3}", q * 100.0);
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// One SLI of an SLO: what counts as an error, and its objective.
#[derive(Debug, Clone)]
pub struct Sli {
    /// `availability` or `latency_p95` (the same names as the gateway's
    /// `gateway_slo_burn_rate{sli}` gauge).
    pub name: String,
    /// Fraction of good events required (0.995, or the quantile 0.95).
    pub objective: f64,
    /// Human description (`p95 <= 350ms`).
    pub description: String,
    /// The error ratio over a window: `{w}` is replaced by the window.
    template: String,
}

impl Sli {
    /// The error budget: the allowed fraction of bad events.
    pub fn budget(&self) -> f64 {
        1.0 - self.objective
    }

    /// The error-ratio expression over `window` (a PromQL duration).
    pub fn error_ratio(&self, window: &str) -> String {
        self.template.replace("{w}", window)
    }
}

/// The SLIs of `slo`: availability (5xx share) and one per latency
/// objective (share of requests above the threshold bucket).
pub fn slis(slo: &SloConfig) -> Vec<Sli> {
    let routes = route_matchers(slo);
    let mut out = Vec::new();
    if let Some(a) = slo.availability {
        let mut errors = routes.clone();
        errors.push("status=~\"5..\"".into());
        out.push(Sli {
            name: "availability".into(),
            objective: a,
            description: format!("{}% of requests without a 5xx", fmt_num(a * 100.0)),
            template: format!(
                "(sum(rate(gateway_requests_total{}[{{w}}])) or vector(0))\n/\nsum(rate(gateway_requests_total{}[{{w}}]))",
                selector(&errors),
                selector(&routes)
            ),
        });
    }
    for o in &slo.latency {
        let threshold = o.threshold.as_secs_f64();
        let mut bucket = routes.clone();
        bucket.push(le_matcher(threshold));
        let q = quantile_name(o.quantile);
        out.push(Sli {
            name: format!("latency_p{}", q.replace('.', "")),
            objective: o.quantile,
            description: format!("p{q} <= {}ms", fmt_num(threshold * 1000.0)),
            template: format!(
                "1 - (\n  sum(rate(gateway_request_duration_seconds_bucket{}[{{w}}]))\n  /\n  sum(rate(gateway_request_duration_seconds_count{}[{{w}}]))\n)",
                selector(&bucket),
                selector(&routes)
            ),
        });
    }
    out
}

/// A number without trailing zeros (`99.5`, `350`, `0.005`).
pub fn fmt_num(v: f64) -> String {
    let s = format!("{v:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(300), "5m");
        assert_eq!(duration(3600), "1h");
        assert_eq!(duration(259200), "3d");
        assert_eq!(duration(90), "90s");
        assert_eq!(duration(scaled(300, 60)), "5s");
        assert_eq!(duration(0), "1s");
    }

    #[test]
    fn le_matches_the_gateway_spelling() {
        assert_eq!(le_matcher(0.35), "le=\"0.35\"");
        assert_eq!(le_matcher(0.65), "le=\"0.65\"");
        assert_eq!(le_matcher(1.0), "le=~\"1|1\\\\.0\"");
    }

    #[test]
    fn route_alternation_escapes() {
        assert_eq!(
            alternation(&["a".into(), "b.c".into()]),
            "a|b\\\\.c".to_owned()
        );
    }

    #[test]
    fn quantile_names() {
        assert_eq!(quantile_name(0.95), "95");
        assert_eq!(quantile_name(0.999), "99.9");
    }
}
