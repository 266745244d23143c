//! One scenario's figures ([`Row`]), the bars they are judged on ([`Bar`]), and the table
//! printed at the end of a run (Markdown, so it can be pasted into `docs/RELIABILITY.md`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

/// One bar a scenario must hold.
#[derive(Debug, Clone, Serialize)]
pub struct Bar {
    /// What is required, in words (`"0 failed in-flight requests"`).
    pub what: String,
    /// What was measured.
    pub measured: String,
    /// Whether it held.
    pub held: bool,
    /// Whether a miss fails the run (latency bars are reported only in short runs).
    pub binding: bool,
}

/// The figures of one scenario.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// The load, in words (`"2000 req/s open model, 8 s"`).
    pub load: String,
    /// Requests sent (or connections opened).
    pub sent: u64,
    /// Requests that failed (transport error or a status counted as failure).
    pub failed: u64,
    /// Of those, the ones that should not have failed.
    pub unexpected: u64,
    /// p99 latency during the fault, ms.
    pub p99_fault_ms: Option<f64>,
    /// Time to recover after the fault ended, ms.
    pub recover_ms: Option<f64>,
    /// Scenario-specific figures (drain time, RSS, fds, ...).
    pub figures: BTreeMap<String, Value>,
    /// The bars and how they went.
    pub bars: Vec<Bar>,
    /// Why the scenario could not run, if it could not.
    pub error: Option<String>,
    /// Wall-clock seconds the scenario took.
    pub secs: f64,
}

impl Row {
    /// An empty row for `scenario` under `load`.
    pub fn new(scenario: &str, load: String) -> Self {
        Self {
            scenario: scenario.to_owned(),
            load,
            ..Self::default()
        }
    }

    /// Records a figure.
    pub fn figure(&mut self, name: &str, value: impl Into<Value>) {
        self.figures.insert(name.to_owned(), value.into());
    }

    /// Records a bar.
    pub fn bar(&mut self, what: &str, held: bool, binding: bool, measured: String) {
        self.bars.push(Bar {
            what: what.to_owned(),
            measured,
            held,
            binding,
        });
    }

    /// A row for a scenario that could not run.
    pub fn failed_to_run(scenario: &str, error: String) -> Self {
        Self {
            scenario: scenario.to_owned(),
            error: Some(error),
            ..Self::default()
        }
    }

    /// Held: it ran and every binding bar held.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.bars.iter().all(|b| b.held || !b.binding)
    }

    /// `PASS`, `MISS` (a binding bar missed), `pass*` (only reported bars missed) or `ERROR`.
    pub fn verdict(&self) -> &'static str {
        if self.error.is_some() {
            "ERROR"
        } else if !self.passed() {
            "MISS"
        } else if self.bars.iter().any(|b| !b.held) {
            "pass*"
        } else {
            "PASS"
        }
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"))
}

fn figure_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// The whole table (Markdown), then each scenario's figures and bars.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| scenario | load | sent | failed | should not have | p99 during fault | recovery | verdict |\n",
    );
    out.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.load,
            r.sent,
            r.failed,
            r.unexpected,
            opt_ms(r.p99_fault_ms),
            opt_ms(r.recover_ms),
            r.verdict()
        );
    }
    out.push('\n');
    for r in rows {
        let _ = writeln!(out, "**{}** ({:.0} s)", r.scenario, r.secs);
        if let Some(e) = &r.error {
            let _ = writeln!(out, "- error: {e}");
        }
        if !r.figures.is_empty() {
            let figs: Vec<String> = r
                .figures
                .iter()
                .map(|(k, v)| format!("{k} {}", figure_text(v)))
                .collect();
            let _ = writeln!(out, "- figures: {}", figs.join(", "));
        }
        for b in &r.bars {
            let mark = match (b.held, b.binding) {
                (true, _) => "held",
                (false, true) => "MISSED",
                (false, false) => "missed (reported only)",
            };
            let _ = writeln!(out, "- bar: {} — {} — {mark}", b.what, b.measured);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_binding_bar_fails_the_row_a_reported_one_does_not() {
        let mut r = Row::new("x", "load".into());
        r.bar("a", true, true, "ok".into());
        assert_eq!((r.passed(), r.verdict()), (true, "PASS"));
        r.bar("latency", false, false, "slow".into());
        assert_eq!((r.passed(), r.verdict()), (true, "pass*"));
        r.bar("correctness", false, true, "1 failed".into());
        assert_eq!((r.passed(), r.verdict()), (false, "MISS"));
        let e = Row::failed_to_run("y", "no redis".into());
        assert_eq!((e.passed(), e.verdict()), (false, "ERROR"));
    }

    #[test]
    fn the_table_has_a_row_per_scenario_and_every_bar() {
        let mut r = Row::new("sigterm", "2000 req/s".into());
        r.sent = 10;
        r.p99_fault_ms = Some(1.25);
        r.figure("drain_ms", 104.4);
        r.bar("0 failed", false, true, "1 of 10".into());
        let t = table(&[r]);
        assert!(
            t.contains("| sigterm | 2000 req/s | 10 | 0 | 0 | 1.2 ms | - | MISS |"),
            "{t}"
        );
        assert!(t.contains("- figures: drain_ms 104.4"), "{t}");
        assert!(t.contains("- bar: 0 failed — 1 of 10 — MISSED"), "{t}");
    }
}
