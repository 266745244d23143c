//! loadgen's CSVs against real Locust's (pip-installed when missing): both run the same
//! mix against mock-upstream; every file's header line is byte-identical, every file is
//! Python `csv.writer` output (minimal quoting, `\r\n`), and every row's fields have the
//! shapes Locust's have (integers where Locust writes integers, Python float reprs where
//! it writes floats, `N/A`, empty fields, UTC timestamps, quoted text).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, mock_upstream, scratch};

/// (median, min, max) columns of `_stats.csv` and `_stats_history.csv`.
const STATS_MEDIAN: (usize, usize, usize) = (4, 6, 7);
const HISTORY_MEDIAN: (usize, usize, usize) = (19, 21, 22);
const NO_MEDIAN: (usize, usize, usize) = (usize::MAX, 0, 0);

const FILES: [&str; 4] = ["stats", "stats_history", "failures", "exceptions"];

/// A request name with a comma and quotes: both tools must quote it the same way.
const QUOTED: &str = "ok, \"quoted\"";

fn locust_available() -> Result<(), String> {
    let has = |py: &str| {
        Command::new("python3")
            .args(["-c", py])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has("import locust") {
        return Ok(());
    }
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "-q", "locust"])
        .output()
        .map_err(|e| format!("python3 -m pip: {e}"))?;
    if out.status.success() && has("import locust") {
        Ok(())
    } else {
        Err(format!(
            "pip install locust failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs `cmd` to completion within `limit`.
fn run(mut cmd: Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, err) = common::capture(&mut child);
    let status = common::wait_bounded(&mut child, &format!("{cmd:?}"), limit);
    std::process::Output {
        status,
        stdout: out.join().unwrap().into_bytes(),
        stderr: err.join().unwrap().into_bytes(),
    }
}

/// A field as Python's csv.writer (QUOTE_MINIMAL) writes it.
fn py_field(f: &str, alone: bool) -> String {
    if f.contains([',', '"', '\r', '\n']) || (alone && f.is_empty()) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_owned()
    }
}

/// Parses a CSV file and checks that it is exactly what Python's csv.writer writes for
/// its rows: minimal quoting, `\r\n` after every row.
fn rows(path: &Path) -> (String, Vec<Vec<String>>) {
    let bytes = std::fs::read(path).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let rows: Vec<Vec<String>> = r
        .records()
        .map(|rec| rec.unwrap().iter().map(str::to_owned).collect())
        .collect();
    let rewritten: String = rows
        .iter()
        .map(|row| {
            let fields: Vec<String> = row.iter().map(|f| py_field(f, row.len() == 1)).collect();
            format!("{}\r\n", fields.join(","))
        })
        .collect();
    assert_eq!(
        text,
        rewritten,
        "{} is not csv.writer output",
        path.display()
    );
    let header = text.split_inclusive("\r\n").next().unwrap_or("").to_owned();
    (header, rows)
}

/// The shape of a field: what kind of value Locust's writer produced.
fn shape(f: &str) -> &'static str {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let unsigned = f.strip_prefix('-').unwrap_or(f);
    if f.is_empty() {
        "empty"
    } else if f == "N/A" {
        "N/A"
    } else if digits(unsigned) {
        "int"
    } else if unsigned
        .split_once('.')
        .is_some_and(|(a, b)| digits(a) && digits(b) && (a == "0" || !a.starts_with('0')))
        && !unsigned.contains('e')
    {
        if unsigned.split_once('.').is_some_and(|(_, b)| b.len() == 6) {
            "float6-or-repr"
        } else {
            "float"
        }
    } else if unsigned.split_once('e').is_some_and(|(m, e)| {
        (digits(m)
            || m.split_once('.')
                .is_some_and(|(a, b)| digits(a) && digits(b)))
            && (e.starts_with('-') || e.starts_with('+'))
            && digits(&e[1..])
            && e.len() >= 3
    }) {
        "float"
    } else if f.len() == 20 && f.ends_with('Z') && f.as_bytes()[10] == b'T' {
        "utc"
    } else {
        "text"
    }
}

/// `float6-or-repr` (six decimals, as `f"{x:2f}"` writes) is also a valid repr: compare
/// as the looser `float` unless the column is one of the history's rate columns.
/// `median` is (median, min, max) column indices: Locust's median is an integer, or the
/// exact min or max (a float) when rounding put it outside them; both count as `median`.
fn shapes(
    row: &[String],
    strict_cols: &[usize],
    median: (usize, usize, usize),
) -> Vec<&'static str> {
    row.iter()
        .enumerate()
        .map(|(i, f)| match shape(f) {
            "int" if i == median.0 => "median",
            "float" | "float6-or-repr"
                if i == median.0 && (row[median.1] == *f || row[median.2] == *f) =>
            {
                "median"
            }
            "float6-or-repr" if !strict_cols.contains(&i) => "float",
            s => s,
        })
        .collect()
}

#[test]
fn csvs_are_byte_compatible_with_real_locusts() {
    if let Err(why) = locust_available() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let (mock, mock_addr) = mock_upstream();
    let mock_url = format!("http://{mock_addr}");
    let dir = scratch("csv_locust");

    // The same mix for both: three names, one always failing with 503.
    let locustfile = dir.join("locustfile.py");
    std::fs::write(
        &locustfile,
        format!(
            r#"from locust import FastHttpUser, task, constant_pacing


class Mixed(FastHttpUser):
    wait_time = constant_pacing(0.05)

    @task(3)
    def ok(self):
        self.client.get("/status/200", name="ok")

    @task(1)
    def quoted(self):
        self.client.get("/bytes/64", name={QUOTED:?})

    @task(1)
    def unavailable(self):
        self.client.get("/status/503", name="unavailable")
"#
        ),
    )
    .unwrap();
    let scenario = dir.join("scenario.toml");
    std::fs::write(
        &scenario,
        format!(
            r#"
name = "csv"

[[user]]
name = "Mixed"
wait_time = "constant_pacing(50ms)"

[[user.task]]
name = "ok"
path = "/status/200"
weight = 3

[[user.task]]
name = {QUOTED:?}
path = "/bytes/64"

[[user.task]]
name = "unavailable"
path = "/status/503"
"#
        ),
    )
    .unwrap();

    let locust_prefix = dir.join("locust");
    let mut locust = Command::new("python3");
    locust
        .args(["-m", "locust", "-f"])
        .arg(&locustfile)
        .args(["--headless", "-u", "4", "-r", "4", "-t", "5s"])
        .args([
            "--host",
            &mock_url,
            "--only-summary",
            "--loglevel",
            "WARNING",
        ])
        .arg("--csv")
        .arg(&locust_prefix)
        .current_dir(&dir);
    let out = run(locust, Duration::from_secs(90));
    // Locust exits 1 when any request failed (the 503s); it must have written the files.
    assert!(
        locust_prefix.with_file_name("locust_stats.csv").exists(),
        "Locust wrote no CSV: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let ours_prefix = dir.join("loadgen");
    let mut ours = Command::new(bin("loadgen"));
    ours.arg("run")
        .arg(&scenario)
        .args(["--host", &mock_url, "--headless", "--only-summary"])
        .args(["-u", "4", "-r", "4", "-t", "5s", "--workers", "1"])
        .arg("--csv")
        .arg(&ours_prefix);
    let out = run(ours, Duration::from_secs(90));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for file in FILES {
        let theirs = dir.join(format!("locust_{file}.csv"));
        let mine = dir.join(format!("loadgen_{file}.csv"));
        let (their_header, their_rows) = rows(&theirs);
        let (my_header, my_rows) = rows(&mine);
        assert_eq!(my_header, their_header, "{file}: header line");
        let width = their_rows[0].len();
        for row in my_rows.iter().chain(&their_rows) {
            assert_eq!(row.len(), width, "{file}: field count of {row:?}");
        }
        let (their_data, my_data) = (&their_rows[1..], &my_rows[1..]);
        match file {
            "stats" => {
                // Same rows in the same order (sorted by name, Aggregated last) and the
                // same shape field by field.
                let names = |r: &[Vec<String>]| r.iter().map(|r| r[1].clone()).collect::<Vec<_>>();
                assert_eq!(names(my_data), names(their_data), "stats rows");
                for (m, t) in my_data.iter().zip(their_data) {
                    assert_eq!(
                        shapes(m, &[], STATS_MEDIAN),
                        shapes(t, &[], STATS_MEDIAN),
                        "stats row\nours:   {m:?}\nlocust: {t:?}"
                    );
                }
            }
            "stats_history" => {
                // Every row of ours has the shape of a row Locust wrote with data.
                let strict = [4, 5];
                let theirs: Vec<Vec<&str>> = their_data
                    .iter()
                    .map(|r| shapes(r, &strict, HISTORY_MEDIAN))
                    .collect();
                assert!(!my_data.is_empty(), "history rows");
                for m in my_data {
                    assert!(
                        theirs.contains(&shapes(m, &strict, HISTORY_MEDIAN)),
                        "history row shape {:?} ({m:?}) not among Locust's {theirs:?}",
                        shapes(m, &strict, HISTORY_MEDIAN)
                    );
                }
            }
            "failures" => {
                assert!(
                    !their_data.is_empty() && !my_data.is_empty(),
                    "503 failures"
                );
                for (m, t) in my_data.iter().zip(their_data) {
                    assert_eq!(&m[..2], &t[..2], "failure method and name");
                    assert_eq!(
                        shapes(m, &[], NO_MEDIAN),
                        shapes(t, &[], NO_MEDIAN),
                        "failure row\nours:   {m:?}\nlocust: {t:?}"
                    );
                }
            }
            _ => {
                assert!(their_data.is_empty() && my_data.is_empty(), "no exceptions");
            }
        }
    }
    drop(mock);
}
