//! The self-contained HTML report: inline SVG charts (requests/s and failures/s, users,
//! p50/p95/p99 over time, the response-time distribution), the per-name tables, the
//! failures, the generator's reliability and the SLA verdict. No script, no external
//! resource: one file that opens anywhere.

use std::fmt::Write as _;

use super::escape;
use crate::metrics::{rate, RunResult, StatEntry, PERCENTILES};
use crate::sla::Verdict;

const W: f64 = 560.0;
const H: f64 = 220.0;
const PAD_L: f64 = 56.0;
const PAD_B: f64 = 28.0;
const PAD_T: f64 = 12.0;
const PAD_R: f64 = 12.0;

/// One line of a chart.
struct Line<'a> {
    label: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// A "nice" upper bound for an axis.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_tick(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// An SVG line chart; `x_labels` maps an x value to its axis text.
fn chart(title: &str, y_unit: &str, lines: &[Line<'_>], x_label: &dyn Fn(f64) -> String) -> String {
    let all = lines.iter().flat_map(|l| l.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if (x1 - x0).abs() < 1e-9 {
        x1 = x0 + 1.0;
    }
    let y1 = nice_max(y1);
    let pw = W - PAD_L - PAD_R;
    let ph = H - PAD_T - PAD_B;
    let sx = |x: f64| PAD_L + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| PAD_T + ph - y / y1 * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<figure class="chart"><figcaption>{}</figcaption><svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}">"#,
        escape(title),
        escape(title)
    );
    for i in 0..=4 {
        let v = y1 * f64::from(i) / 4.0;
        let y = sy(v);
        let _ = write!(
            s,
            r##"<line x1="{PAD_L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}{}</text>"##,
            W - PAD_R,
            PAD_L - 4.0,
            y + 4.0,
            fmt_tick(v),
            y_unit
        );
    }
    for i in 0..=4 {
        let v = x0 + (x1 - x0) * f64::from(i) / 4.0;
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="{}" class="tick">{}</text>"#,
            sx(v),
            H - 8.0,
            // The last label ends at the plot's edge instead of being cut by the frame.
            if i == 4 { "end" } else { "middle" },
            escape(&x_label(v))
        );
    }
    for (i, line) in lines.iter().enumerate() {
        let pts: Vec<String> = line
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"#,
            line.color,
            pts.join(" ")
        );
        let lx = PAD_L + 8.0 + 110.0 * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"#,
            PAD_T,
            line.color,
            lx + 14.0,
            PAD_T + 9.0,
            escape(line.label)
        );
    }
    s.push_str("</svg></figure>");
    s
}

fn secs_label(v: f64) -> String {
    // Short runs put ticks between whole seconds: 2.5s, not a second "3s".
    if v < 10.0 && (v - v.round()).abs() >= 0.05 {
        format!("{v:.1}s")
    } else {
        format!("{v:.0}s")
    }
}

/// The latency at increasing percentiles, HdrHistogram-plot style: x is "nines"
/// (`-log10(1 - q)`: 1 = 90 %, 2 = 99 %, 3 = 99.9 %).
fn distribution(total: &StatEntry) -> Vec<(f64, f64)> {
    let mut points = Vec::new();
    let mut nines = 0.0;
    while nines <= 4.0 {
        let q = 1.0 - 10f64.powf(-nines);
        points.push((nines, total.percentile_ms(q)));
        nines += 0.1;
    }
    points
}

fn nines_label(v: f64) -> String {
    let q = (1.0 - 10f64.powf(-v)) * 100.0;
    if q >= 99.0 {
        format!("{q:.2}%")
    } else {
        format!("{q:.0}%")
    }
}

fn stats_table(result: &RunResult) -> String {
    let mut s = String::from(
        "<table><thead><tr><th>Type</th><th>Name</th><th># reqs</th><th># fails</th><th>Avg</th><th>Min</th><th>Max</th><th>Avg size</th><th>req/s</th><th>fails/s</th>",
    );
    for q in PERCENTILES {
        let _ = write!(s, "<th>{}%</th>", q * 100.0);
    }
    s.push_str("</tr></thead><tbody>");
    let secs = result.duration_secs;
    for (i, e) in result
        .stats
        .iter()
        .chain(std::iter::once(&result.total))
        .enumerate()
    {
        let class = if i == result.stats.len() {
            " class=\"total\""
        } else {
            ""
        };
        let _ = write!(
            s,
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.0}</td><td>{:.1}</td><td>{:.2}</td>",
            escape(&e.method),
            escape(&e.name),
            e.requests,
            e.failures,
            e.avg_ms(),
            e.min_ms(),
            e.max_ms(),
            e.avg_size(),
            rate(e.requests, secs),
            rate(e.failures, secs)
        );
        for q in PERCENTILES {
            let _ = write!(s, "<td>{:.1}</td>", e.percentile_ms(q));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table><p class=\"note\">Times in ms from HDR histograms (1 µs resolution, 3 significant digits).</p>");
    s
}

/// The whole document.
pub fn render(result: &RunResult, verdicts: &[Verdict]) -> String {
    let series = &result.series;
    let rps = Line {
        label: "requests/s",
        color: "#2b6cb0",
        points: series
            .iter()
            .map(|p| (p.elapsed, p.requests as f64))
            .collect(),
    };
    let fps = Line {
        label: "failures/s",
        color: "#c53030",
        points: series
            .iter()
            .map(|p| (p.elapsed, p.failures as f64))
            .collect(),
    };
    let users = Line {
        label: "users",
        color: "#2f855a",
        points: series.iter().map(|p| (p.elapsed, p.users as f64)).collect(),
    };
    let pline = |label, color, q| Line {
        label,
        color,
        points: series
            .iter()
            .filter(|p| p.requests > 0)
            .map(|p| (p.elapsed, p.pct(q)))
            .collect(),
    };
    let missed = verdicts.iter().filter(|v| !v.held).count();
    let (verdict_class, verdict_text) = if verdicts.is_empty() {
        ("none", "No SLA thresholds set".to_owned())
    } else if missed == 0 {
        (
            "held",
            format!(
                "SLA HELD: {} of {} thresholds",
                verdicts.len(),
                verdicts.len()
            ),
        )
    } else {
        (
            "missed",
            format!(
                "SLA MISSED: {missed} of {} thresholds missed",
                verdicts.len()
            ),
        )
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>loadgen report: {title}</title><style>
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1a202c;background:#fff}}
h1{{font-size:22px;margin:0 0 4px}} h2{{font-size:17px;margin:24px 0 8px}}
.meta{{color:#4a5568}} .verdict{{font-size:18px;font-weight:600;padding:10px 14px;border-radius:6px;margin:14px 0;display:inline-block}}
.held{{background:#c6f6d5;color:#22543d}} .missed{{background:#fed7d7;color:#742a2a}} .none{{background:#edf2f7}}
.unreliable{{background:#fefcbf;border:2px solid #d69e2e;padding:10px 14px;border-radius:6px;margin:10px 0}}
table{{border-collapse:collapse;font-size:12px;margin:6px 0}} th,td{{border:1px solid #e2e8f0;padding:3px 6px;text-align:right}}
th{{background:#f7fafc}} td:nth-child(2),th:nth-child(2){{text-align:left}} tr.total td{{font-weight:600;background:#f7fafc}}
.charts{{display:flex;flex-wrap:wrap;gap:12px}} figure.chart{{margin:0;border:1px solid #e2e8f0;border-radius:6px;padding:6px}}
figcaption{{font-weight:600;margin:2px 6px}} .tick{{font-size:10px;fill:#4a5568}} .legend{{font-size:11px;fill:#1a202c}}
.pass{{color:#22543d;font-weight:600}} .fail{{color:#9b2c2c;font-weight:600}} .note{{color:#718096;font-size:12px}}
</style></head><body>
<h1>loadgen report: {title}</h1>
<div class="meta">target {host} · {plan} · {secs:.1} s · {reqs} requests · {rps:.1} req/s · max users {users} · <span id="stopped-in-flight">{stopped} stopped in flight</span> · <span id="dropped-iterations">{dropped} dropped iterations</span>{shards}{interrupted}</div>
<div class="verdict {verdict_class}" id="verdict">{verdict_text}</div>"#,
        title = escape(&result.scenario),
        host = escape(&result.host),
        plan = escape(&result.plan),
        secs = result.duration_secs,
        reqs = result.total.requests,
        rps = result.rps(),
        users = result.max_users,
        stopped = result.stopped_in_flight,
        dropped = result.dropped_iterations,
        shards = if result.shards.is_empty() {
            String::new()
        } else {
            format!(" · merged shards {}", escape(&result.shards.join(", ")))
        },
        interrupted = if result.interrupted {
            " · interrupted"
        } else {
            ""
        },
    );
    if result.stopped_in_flight > 0 {
        let _ = write!(
            s,
            "<div class=\"unreliable\" id=\"stopped\"><strong>Stopped in flight:</strong> {} request(s) had no response when the stop timeout ran out; they are counted as failures ({}) with the time they had taken.</div>",
            result.stopped_in_flight,
            escape(crate::metrics::STOPPED_IN_FLIGHT)
        );
    }
    if result.reliability.unreliable {
        s.push_str("<div class=\"unreliable\" id=\"unreliable\"><strong>Unreliable run:</strong> the load did not go as planned (the generator did not keep up, or arrivals were dropped), so these figures may not describe the target under the planned load.<ul>");
        for r in &result.reliability.reasons {
            let _ = write!(s, "<li>{}</li>", escape(r));
        }
        s.push_str("</ul></div>");
    }
    if !verdicts.is_empty() {
        s.push_str("<h2>SLA thresholds</h2><table><thead><tr><th>Result</th><th>Threshold</th><th>Observed</th></tr></thead><tbody>");
        for v in verdicts {
            let _ = write!(
                s,
                "<tr><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
                if v.held { "pass" } else { "fail" },
                if v.held { "PASS" } else { "FAIL" },
                escape(&v.threshold),
                escape(&v.detail)
            );
        }
        s.push_str("</tbody></table>");
    }
    s.push_str("<h2>Over time</h2><div class=\"charts\">");
    s.push_str(&chart("Requests per second", "", &[rps, fps], &secs_label));
    s.push_str(&chart("Users", "", &[users], &secs_label));
    s.push_str(&chart(
        "Response time percentiles (per second)",
        "ms",
        &[
            pline("p50", "#2b6cb0", 0.5),
            pline("p95", "#dd6b20", 0.95),
            pline("p99", "#c53030", 0.99),
        ],
        &secs_label,
    ));
    s.push_str(&chart(
        "Response time distribution (whole run)",
        "ms",
        &[Line {
            label: "latency at percentile",
            color: "#6b46c1",
            points: distribution(&result.total),
        }],
        &nines_label,
    ));
    s.push_str("</div><h2>Requests</h2>");
    s.push_str(&stats_table(result));
    if !result.failures.is_empty() {
        s.push_str("<h2>Failures</h2><table><thead><tr><th>Method</th><th>Name</th><th>Error</th><th>Occurrences</th></tr></thead><tbody>");
        for f in &result.failures {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&f.method),
                escape(&f.name),
                escape(&f.error),
                f.occurrences
            );
        }
        s.push_str("</tbody></table>");
    }
    if !result.exceptions.is_empty() {
        s.push_str("<h2>Exceptions</h2><table><thead><tr><th>Count</th><th>Message</th></tr></thead><tbody>");
        for e in &result.exceptions {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td></tr>",
                e.count,
                escape(&e.message)
            );
        }
        s.push_str("</tbody></table>");
    }
    if let Some(server) = &result.server {
        let _ = write!(
            s,
            "<h2>Server-side cross-check</h2><p>{:.0} requests, error rate {:.2}%, p95 {:.1} ms, p99 {:.1} ms</p>",
            server.requests, server.error_rate_pct, server.p95_ms, server.p99_ms
        );
        for d in &server.divergences {
            let _ = write!(s, "<p class=\"fail\">Divergence: {}</p>", escape(d));
        }
    }
    s.push_str("<p class=\"note\">Generated by loadgen.</p></body></html>\n");
    s
}
