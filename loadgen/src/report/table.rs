//! The Locust-like final table on the terminal: per request name, then the percentiles,
//! the failures, the reliability of the generator and the SLA verdict.

use std::fmt::Write as _;

use crate::metrics::{rate, RunResult, StatEntry, PERCENTILES};
use crate::sla::Verdict;

const NAME_WIDTH: usize = 44;

fn cut(name: &str) -> String {
    if name.chars().count() <= NAME_WIDTH {
        name.to_owned()
    } else {
        let head: String = name.chars().take(NAME_WIDTH - 1).collect();
        format!("{head}…")
    }
}

fn stats_row(out: &mut String, s: &StatEntry, secs: f64) {
    let _ = writeln!(
        out,
        "{:<8} {:<NAME_WIDTH$} {:>9} {:>9} ({:>5.2}%) | {:>8.1} {:>8.1} {:>8.1} {:>8.1} | {:>9.1} {:>9.2}",
        s.method,
        cut(&s.name),
        s.requests,
        s.failures,
        s.error_rate_pct(),
        s.avg_ms(),
        s.min_ms(),
        s.max_ms(),
        s.percentile_ms(0.5),
        rate(s.requests, secs),
        rate(s.failures, secs),
    );
}

fn pct_row(out: &mut String, s: &StatEntry) {
    let _ = write!(out, "{:<8} {:<NAME_WIDTH$}", s.method, cut(&s.name));
    for q in PERCENTILES {
        let _ = write!(out, " {:>7.1}", s.percentile_ms(q));
    }
    let _ = writeln!(out, " {:>9}", s.requests);
}

/// The whole summary as text.
pub fn render(result: &RunResult, verdicts: &[Verdict]) -> String {
    let mut out = String::new();
    let secs = result.duration_secs;
    let header = format!(
        "{:<8} {:<NAME_WIDTH$} {:>9} {:>17} | {:>8} {:>8} {:>8} {:>8} | {:>9} {:>9}",
        "Type", "Name", "# reqs", "# fails", "Avg", "Min", "Max", "Med", "req/s", "fails/s"
    );
    let rule = "-".repeat(header.chars().count());
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "{rule}");
    for s in &result.stats {
        stats_row(&mut out, s, secs);
    }
    let _ = writeln!(out, "{rule}");
    stats_row(&mut out, &result.total, secs);
    let _ = writeln!(
        out,
        "\nResponse time percentiles (ms, HDR histogram, 3 significant digits)"
    );
    let _ = write!(out, "{:<8} {:<NAME_WIDTH$}", "Type", "Name");
    for q in PERCENTILES {
        let label = format!("{}%", q * 100.0);
        let _ = write!(out, " {label:>7}");
    }
    let _ = writeln!(out, " {:>9}", "# reqs");
    let _ = writeln!(out, "{rule}");
    for s in &result.stats {
        pct_row(&mut out, s);
    }
    let _ = writeln!(out, "{rule}");
    pct_row(&mut out, &result.total);
    if !result.failures.is_empty() {
        let _ = writeln!(
            out,
            "\nError report\n{:>10}  {:<8} {:<30} error",
            "# occurr", "method", "name"
        );
        for f in result.failures.iter().take(20) {
            let _ = writeln!(
                out,
                "{:>10}  {:<8} {:<30} {}",
                f.occurrences,
                f.method,
                cut(&f.name),
                f.error
            );
        }
    }
    if !result.exceptions.is_empty() {
        let _ = writeln!(out, "\nExceptions");
        for e in result.exceptions.iter().take(20) {
            let _ = writeln!(out, "{:>10}  {}", e.count, e.message);
        }
    }
    let _ = writeln!(
        out,
        "\n{} | {} | {:.1}s | {:.1} req/s | max users {}{}{}",
        result.scenario,
        result.plan,
        secs,
        result.rps(),
        result.max_users,
        if result.interrupted {
            " | interrupted"
        } else {
            ""
        },
        if result.shards.is_empty() {
            String::new()
        } else {
            format!(" | merged shards {}", result.shards.join(", "))
        }
    );
    if let Some(s) = &result.server {
        let _ = writeln!(
            out,
            "server-side: {:.0} requests, error rate {:.2}%, p95 {:.1}ms, p99 {:.1}ms (client-side p95 {:.1}ms, p99 {:.1}ms)",
            s.requests,
            s.error_rate_pct,
            s.p95_ms,
            s.p99_ms,
            result.total.percentile_ms(0.95),
            result.total.percentile_ms(0.99)
        );
        for d in &s.divergences {
            let _ = writeln!(out, "  DIVERGENCE: {d}");
        }
    }
    if result.stopped_in_flight > 0 {
        let _ = writeln!(
            out,
            "\nSTOPPED IN FLIGHT: {} request(s) had no response when the stop timeout ran out; they are failures ({:?}) with the time they had taken",
            result.stopped_in_flight,
            crate::metrics::STOPPED_IN_FLIGHT
        );
    }
    if result.dropped_iterations > 0 {
        let _ = writeln!(
            out,
            "\nDROPPED ITERATIONS: {} of {} arrivals found every VU busy and were never sent",
            result.dropped_iterations, result.reliability.arrivals
        );
    }
    if result.reliability.unreliable {
        let _ = writeln!(out, "\nUNRELIABLE RUN: the load did not go as planned (the generator did not keep up, or arrivals were dropped); these figures may not describe the target under the planned load:");
        for r in &result.reliability.reasons {
            let _ = writeln!(out, "  - {r}");
        }
    }
    if !verdicts.is_empty() {
        let _ = writeln!(out, "\nSLA thresholds");
        for v in verdicts {
            let _ = writeln!(
                out,
                "  [{}] {:<36} {}",
                if v.held { "PASS" } else { "FAIL" },
                v.threshold,
                v.detail
            );
        }
    }
    let _ = writeln!(out, "\n{}", verdict_line(result, verdicts));
    out
}

/// The one-line verdict.
pub fn verdict_line(result: &RunResult, verdicts: &[Verdict]) -> String {
    let missed = verdicts.iter().filter(|v| !v.held).count();
    let mut line = if verdicts.is_empty() {
        "VERDICT: no SLA thresholds set".to_owned()
    } else if missed == 0 {
        format!(
            "VERDICT: SLA HELD ({} of {} thresholds)",
            verdicts.len(),
            verdicts.len()
        )
    } else {
        format!(
            "VERDICT: SLA MISSED ({missed} of {} thresholds missed)",
            verdicts.len()
        )
    };
    if result.stopped_in_flight > 0 {
        let _ = write!(
            line,
            " [{} request(s) stuck at stop, counted as failures]",
            result.stopped_in_flight
        );
    }
    if result.dropped_iterations > 0 {
        let _ = write!(line, " [{} arrivals dropped]", result.dropped_iterations);
    }
    if result.reliability.unreliable {
        line.push_str(" [UNRELIABLE: see the reasons above]");
    }
    line
}
