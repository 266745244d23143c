//! Locust-compatible CSV files (`PREFIX_stats.csv`, `PREFIX_stats_history.csv`,
//! `PREFIX_failures.csv`, `PREFIX_exceptions.csv`) with Locust's exact column headers, so
//! tooling that reads Locust's output reads ours. Times are milliseconds, as in Locust.
//! Byte-compatible with Locust's `StatsCSV` (locust/stats.py): Python `csv.writer`'s
//! minimal quoting and `\r\n`, the same columns and row order, integers where Locust
//! writes integers (counts, median, percentiles), floats in Python's `repr` style
//! ([`py_float`]) where it writes floats, `N/A` and `0` where it does.
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
pub const FAILURES_HEADER: [&str; 6] = [
    "Method",
    "Name",
    "Error",
    "Occurrences",
    "First Seen",
    "Last Seen",
];

/// `_exceptions.csv` columns.
pub const EXCEPTIONS_HEADER: [&str; 4] = ["Count", "Message", "Traceback", "Nodes"];

/// A float as Python's `repr` writes it (what Locust's `csv.writer` puts in its files):
/// the shortest digits that read back to the same value, fixed notation with at least one
/// decimal (`13.0`) for exponents -4..16, otherwise `1e-05` / `1.5e+16`.
pub fn py_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // Rust's `{:e}` gives the same shortest round-trip digits: `d.ddde-5`.
    let sci = format!("{:e}", v.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if v < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let body = if exp >= 0 {
            let point = usize::try_from(exp).unwrap_or(0) + 1;
            let mut int = digits
                .get(..point.min(digits.len()))
                .unwrap_or("")
                .to_owned();
            while int.len() < point {
                int.push('0');
            }
            let frac = digits.get(point..).filter(|f| !f.is_empty()).unwrap_or("0");
            format!("{int}.{frac}")
        } else {
            let zeros = usize::try_from(-exp - 1).unwrap_or(0);
            format!("0.{}{digits}", "0".repeat(zeros))
        };
        format!("{sign}{body}")
    } else {
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{esign}{:02}", exp.abs())
    }
}

/// A response time Locust writes as an integer (median, percentiles): whole milliseconds.
fn int_ms(v: f64) -> String {
    format!("{}", v.round().max(0.0))
}

/// Locust's median: the whole-millisecond median, but clamped to the exact max or min
/// (then a float) when rounding put it outside them.
fn median(requests: u64, median: f64, min: f64, max: f64) -> String {
    let m = median.round().max(0.0);
    if requests == 0 {
        "0".to_owned()
    } else if m > max {
        py_float(max)
    } else if m < min {
        py_float(min)
    } else {
        format!("{m}")
    }
}

/// A float column Locust writes as the integer `0` when there were no requests (its
/// `min_response_time or 0`, `max_response_time`'s initial 0, `avg_content_length`'s 0).
fn float_or_zero(requests: u64, v: f64) -> String {
    if requests == 0 {
        "0".to_owned()
    } else {
        py_float(v)
    }
}

/// `%Y-%m-%dT%H:%M:%SZ` of a Unix time (Locust's `format_utc_timestamp`).
pub fn utc_timestamp(unix: f64) -> String {
    let secs = unix.max(0.0).floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn stats_row(s: &StatEntry, secs: f64) -> Vec<String> {
    let n = s.requests;
    let mut row = vec![
        s.method.clone(),
        s.name.clone(),
        n.to_string(),
        s.failures.to_string(),
        median(n, s.percentile_ms(0.5), s.min_ms(), s.max_ms()),
        py_float(s.avg_ms()),
        float_or_zero(n, s.min_ms()),
        float_or_zero(n, s.max_ms()),
        float_or_zero(n, s.avg_size()),
        py_float(rate(n, secs)),
        py_float(rate(s.failures, secs)),
    ];
    for q in PERCENTILES {
        row.push(if n == 0 {
            "N/A".to_owned()
        } else {
            int_ms(s.percentile_ms(q))
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
    // Python's csv.writer: minimal quoting, `\r\n` after every row.
    csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Necessary)
        .terminator(csv::Terminator::CRLF)
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
    // Locust sorts its rows by (name, method); the Aggregated row comes last.
    let mut sorted: Vec<&StatEntry> = result.stats.iter().collect();
    sorted.sort_by(|a, b| (&a.name, &a.method).cmp(&(&b.name, &b.method)));
    for s in sorted {
        w.write_record(stats_row(s, secs)).map_err(err(&stats))?;
    }
    w.write_record(stats_row(&result.total, secs))
        .map_err(err(&stats))?;
    w.flush().map_err(|e| format!("{}: {e}", stats.display()))?;

    let mut w = open(&history)?;
    w.write_record(HISTORY_HEADER).map_err(err(&history))?;
    for p in &result.series {
        // Locust: int(time), the user count, "" and "Aggregated", rates as f"{x:2f}",
        // the cumulative percentiles as integers (N/A before the first request), then
        // the cumulative totals.
        let n = p.total_requests;
        let mut row = vec![
            format!("{}", p.unix.max(0.0).floor()),
            p.users.to_string(),
            String::new(),
            "Aggregated".to_owned(),
            format!("{:.6}", p.requests as f64),
            format!("{:.6}", p.failures as f64),
        ];
        for (i, q) in PERCENTILES.iter().enumerate() {
            row.push(if n == 0 {
                "N/A".to_owned()
            } else {
                // Result files from before the cumulative percentiles: the second's.
                int_ms(
                    p.total_percentiles
                        .get(i)
                        .copied()
                        .unwrap_or_else(|| p.pct(*q)),
                )
            });
        }
        row.extend([
            n.to_string(),
            p.total_failures.to_string(),
            median(n, p.total_median, p.total_min, p.total_max),
            py_float(p.total_avg),
            float_or_zero(n, p.total_min),
            float_or_zero(n, p.total_max),
            float_or_zero(n, p.total_avg_size),
        ]);
        w.write_record(row).map_err(err(&history))?;
    }
    w.flush()
        .map_err(|e| format!("{}: {e}", history.display()))?;

    let mut w = open(&failures)?;
    w.write_record(FAILURES_HEADER).map_err(err(&failures))?;
    for f in &result.failures {
        let seen = |t: Option<f64>| t.map(utc_timestamp).unwrap_or_default();
        w.write_record([
            f.method.clone(),
            f.name.clone(),
            f.error.clone(),
            f.occurrences.to_string(),
            seen(f.first_seen),
            seen(f.last_seen),
        ])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_as_python_repr() {
        for (v, py) in [
            (13.0, "13.0"),
            (0.1, "0.1"),
            (12.345678901234567, "12.345678901234567"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (2.5e-7, "2.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123.456, "123.456"),
            (0.0, "0.0"),
            (-2.5, "-2.5"),
            (1.0 / 3.0, "0.3333333333333333"),
        ] {
            assert_eq!(py_float(v), py, "{v}");
        }
    }

    #[test]
    fn utc_timestamps_match_strftime() {
        assert_eq!(utc_timestamp(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400.9), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_796_302_845.0), "2026-12-03T13:00:45Z");
    }
}
