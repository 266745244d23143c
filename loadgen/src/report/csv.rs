//! Locust-compatible CSV files (`PREFIX_stats.csv`, `PREFIX_stats_history.csv`,
//! `PREFIX_failures.csv`, `PREFIX_exceptions.csv`) with Locust's exact column headers, so
//! tooling that reads Locust's output reads ours. Times are milliseconds, as in Locust.
//! An unreliable run is also written as a row of `_exceptions.csv` (the columns stay).

use std::path::{Path, PathBuf};

use crate::metrics::{rate, RunResult, StatEntry, PERCENTILES};

/// `_stats.csv` columns.
pub const STATS_HEADER: [&str; 22] = [
    "Type",
    "Name",
    "Request Count",
    "Failure Count",
    "Median Response Time",
    "Average Response Time",
    "Min Response Time",
    "Max Response Time",
    "Average Content Size",
    "Requests/s",
    "Failures/s",
    "50%",
    "66%",
    "75%",
    "80%",
    "90%",
    "95%",
    "98%",
    "99%",
    "99.9%",
    "99.99%",
    "100%",
];

/// `_stats_history.csv` columns.
pub const HISTORY_HEADER: [&str; 24] = [
    "Timestamp",
    "User Count",
    "Type",
    "Name",
    "Requests/s",
    "Failures/s",
    "50%",
    "66%",
    "75%",
    "80%",
    "90%",
    "95%",
    "98%",
    "99%",
    "99.9%",
    "99.99%",
    "100%",
    "Total Request Count",
    "Total Failure Count",
    "Total Median Response Time",
    "Total Average Response Time",
    "Total Min Response Time",
    "Total Max Response Time",
    "Total Average Content Size",
];

/// `_failures.csv` columns.
pub const FAILURES_HEADER: [&str; 4] = ["Method", "Name", "Error", "Occurrences"];

/// `_exceptions.csv` columns.
pub const EXCEPTIONS_HEADER: [&str; 4] = ["Count", "Message", "Traceback", "Nodes"];

fn ms(v: f64) -> String {
    format!("{}", v.round())
}

fn stats_row(s: &StatEntry, secs: f64) -> Vec<String> {
    let mut row = vec![
        s.method.clone(),
        s.name.clone(),
        s.requests.to_string(),
        s.failures.to_string(),
        ms(s.percentile_ms(0.5)),
        format!("{:.3}", s.avg_ms()),
        format!("{:.3}", s.min_ms()),
        format!("{:.3}", s.max_ms()),
        format!("{:.1}", s.avg_size()),
        format!("{:.3}", rate(s.requests, secs)),
        format!("{:.3}", rate(s.failures, secs)),
    ];
    for q in PERCENTILES {
        row.push(if s.requests == 0 {
            "N/A".to_owned()
        } else {
            ms(s.percentile_ms(q))
        });
    }
    row
}

/// The four file paths for `prefix`.
pub fn paths(prefix: &Path) -> [PathBuf; 4] {
    let p = prefix.display().to_string();
    [
        PathBuf::from(format!("{p}_stats.csv")),
        PathBuf::from(format!("{p}_stats_history.csv")),
        PathBuf::from(format!("{p}_failures.csv")),
        PathBuf::from(format!("{p}_exceptions.csv")),
    ]
}

fn open(path: &Path) -> Result<csv::Writer<std::fs::File>, String> {
    csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::NonNumeric)
        .from_path(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes the four files.
pub fn write(result: &RunResult, prefix: &Path) -> Result<(), String> {
    let [stats, history, failures, exceptions] = paths(prefix);
    fn err(p: &Path) -> impl Fn(csv::Error) -> String + '_ {
        move |e| format!("{}: {e}", p.display())
    }
    let secs = result.duration_secs;

    let mut w = open(&stats)?;
    w.write_record(STATS_HEADER).map_err(err(&stats))?;
    for s in &result.stats {
        w.write_record(stats_row(s, secs)).map_err(err(&stats))?;
    }
    w.write_record(stats_row(&result.total, secs))
        .map_err(err(&stats))?;
    w.flush().map_err(|e| format!("{}: {e}", stats.display()))?;

    let mut w = open(&history)?;
    w.write_record(HISTORY_HEADER).map_err(err(&history))?;
    for p in &result.series {
        let mut row = vec![
            format!("{}", p.unix.round()),
            p.users.to_string(),
            String::new(),
            "Aggregated".to_owned(),
            format!("{:.3}", p.requests as f64),
            format!("{:.3}", p.failures as f64),
        ];
        for q in PERCENTILES {
            row.push(if p.requests == 0 {
                "N/A".to_owned()
            } else {
                ms(p.pct(q))
            });
        }
        row.extend([
            p.total_requests.to_string(),
            p.total_failures.to_string(),
            ms(p.total_median),
            format!("{:.3}", p.total_avg),
            format!("{:.3}", p.total_min),
            format!("{:.3}", p.total_max),
            format!("{:.1}", p.total_avg_size),
        ]);
        w.write_record(row).map_err(err(&history))?;
    }
    w.flush()
        .map_err(|e| format!("{}: {e}", history.display()))?;

    let mut w = open(&failures)?;
    w.write_record(FAILURES_HEADER).map_err(err(&failures))?;
    for f in &result.failures {
        w.write_record([&f.method, &f.name, &f.error, &f.occurrences.to_string()])
            .map_err(err(&failures))?;
    }
    w.flush()
        .map_err(|e| format!("{}: {e}", failures.display()))?;

    let mut w = open(&exceptions)?;
    w.write_record(EXCEPTIONS_HEADER)
        .map_err(err(&exceptions))?;
    let node = if result.shards.is_empty() {
        "local".to_owned()
    } else {
        result.shards.join(" ")
    };
    for e in &result.exceptions {
        w.write_record([&e.count.to_string(), &e.message, "", &node])
            .map_err(err(&exceptions))?;
    }
    if result.reliability.unreliable {
        let msg = format!("UNRELIABLE RUN: {}", result.reliability.reasons.join("; "));
        w.write_record(["1", &msg, "", &node])
            .map_err(err(&exceptions))?;
    }
    w.flush()
        .map_err(|e| format!("{}: {e}", exceptions.display()))?;
    Ok(())
}
