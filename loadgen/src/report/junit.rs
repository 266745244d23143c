//! JUnit XML of the SLA checks, one test case per threshold, for CI.

use std::fmt::Write as _;

use super::escape;
use crate::metrics::RunResult;
use crate::sla::Verdict;

/// The JUnit XML document.
pub fn render(result: &RunResult, verdicts: &[Verdict]) -> String {
    let failures = verdicts.iter().filter(|v| !v.held).count();
    let name = escape(&result.scenario);
    let mut out = String::new();
    let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        out,
        r#"<testsuites name="loadgen" tests="{}" failures="{failures}" time="{:.3}">"#,
        verdicts.len(),
        result.duration_secs
    );
    let _ = writeln!(
        out,
        r#"  <testsuite name="SLA {name}" tests="{}" failures="{failures}" errors="0" skipped="0" time="{:.3}">"#,
        verdicts.len(),
        result.duration_secs
    );
    let _ = writeln!(out, "    <properties>");
    for (k, v) in [
        ("host", result.host.clone()),
        ("plan", result.plan.clone()),
        ("requests", result.total.requests.to_string()),
        ("rps", format!("{:.1}", result.rps())),
        ("reliable", (!result.reliability.unreliable).to_string()),
        ("stopped_in_flight", result.stopped_in_flight.to_string()),
        ("dropped_iterations", result.dropped_iterations.to_string()),
    ] {
        let _ = writeln!(
            out,
            r#"      <property name="{k}" value="{}"/>"#,
            escape(&v)
        );
    }
    let _ = writeln!(out, "    </properties>");
    for v in verdicts {
        let case = format!(
            r#"    <testcase classname="sla.{name}" name="{}" time="0""#,
            escape(&v.threshold)
        );
        if v.held {
            let _ = writeln!(out, "{case}/>");
        } else {
            let _ = writeln!(
                out,
                "{case}>\n      <failure type=\"threshold\" message=\"{}\">{}</failure>\n    </testcase>",
                escape(&v.detail),
                escape(&v.detail)
            );
        }
    }
    if result.reliability.unreliable {
        let _ = writeln!(
            out,
            "    <system-err>UNRELIABLE RUN: {}</system-err>",
            escape(&result.reliability.reasons.join("; "))
        );
    }
    let _ = writeln!(out, "  </testsuite>\n</testsuites>");
    out
}
