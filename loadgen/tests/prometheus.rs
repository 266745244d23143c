//! `--prometheus-listen`: the real loadgen binary runs against mock-upstream and serves
//! its live metrics; the test scrapes them during the run and once more after the JSON
//! summary is written (loadgen waits for that last scrape), parses every line of the
//! exposition strictly, and checks the counts against the summary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use common::{bin, mock_upstream, scratch, WAIT};

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A strict parser of the text format 0.0.4: every line is a HELP, a TYPE (before any of
/// its family's samples, once) or a sample whose family has a TYPE; label values are
/// escaped; values are numbers. Histograms are cumulative and end with `+Inf` = `_count`.
fn parse(text: &str) -> Vec<Sample> {
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(is_name(name) && !help.is_empty(), "bad HELP: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(is_name(name), "bad TYPE: {line}");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "bad TYPE: {line}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {line}"
            );
            assert!(
                !out.iter().any(|s: &Sample| s.name.starts_with(name)),
                "TYPE after its samples: {line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line: {line:?}"
        );
        let (name, rest) = match line.find('{') {
            Some(i) => line.split_at(i),
            None => line.split_at(line.find(' ').unwrap()),
        };
        assert!(is_name(name), "bad metric name: {line}");
        let mut labels = BTreeMap::new();
        let mut rest: &str = rest;
        if let Some(body) = rest.strip_prefix('{') {
            let chars: Vec<char> = body.chars().collect();
            let mut i = 0;
            loop {
                let mut key = String::new();
                while chars[i] != '=' {
                    key.push(chars[i]);
                    i += 1;
                }
                assert!(is_name(&key), "bad label name {key:?}: {line}");
                assert_eq!(chars[i + 1], '"', "unquoted label value: {line}");
                i += 2;
                let mut value = String::new();
                loop {
                    match chars[i] {
                        '\\' => {
                            value.push(match chars[i + 1] {
                                'n' => '\n',
                                '\\' => '\\',
                                '"' => '"',
                                other => panic!("bad escape {other:?}: {line}"),
                            });
                            i += 2;
                        }
                        '"' => {
                            i += 1;
                            break;
                        }
                        c => {
                            value.push(c);
                            i += 1;
                        }
                    }
                }
                assert!(labels.insert(key, value).is_none(), "dup label: {line}");
                match chars[i] {
                    ',' => i += 1,
                    '}' => {
                        let used: usize = chars[..=i].iter().map(|c| c.len_utf8()).sum();
                        rest = &body[used..];
                        break;
                    }
                    other => panic!("bad label separator {other:?}: {line}"),
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value {v:?}: {line}")),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample without TYPE: {line}");
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

/// Histogram series are cumulative, `le` ascending, and end with `+Inf` equal to `_count`.
fn check_histograms(samples: &[Sample], family: &str) {
    let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.name == format!("{family}_bucket"))
    {
        let mut key = s.labels.clone();
        let le = key.remove("le").expect("a bucket has le");
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        by_series
            .entry(format!("{key:?}"))
            .or_default()
            .push((le, s.value));
    }
    assert!(!by_series.is_empty(), "no {family} buckets");
    for (key, buckets) in &by_series {
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{key}: buckets not cumulative: {buckets:?}"
        );
        let edges: Vec<f64> = buckets
            .iter()
            .map(|b| b.0)
            .filter(|e| e.is_finite())
            .collect();
        assert_eq!(
            edges,
            loadgen::prom::LATENCY_BUCKETS,
            "{key}: the gateway's edges"
        );
        let inf = buckets.last().unwrap();
        assert!(inf.0.is_infinite(), "{key}: last bucket is +Inf");
        let count = samples
            .iter()
            .find(|s| s.name == format!("{family}_count") && format!("{:?}", s.labels) == *key)
            .expect("a _count per series");
        assert_eq!(inf.1, count.value, "{key}: +Inf bucket = _count");
    }
}

/// `GET /metrics` over a plain socket: the status line and the body.
fn scrape(addr: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(len, body.len(), "content-length");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
        .map(|s| s.value)
        .sum()
}

#[test]
fn live_metrics_parse_strictly_and_agree_with_the_summary() {
    let (mock, mock_addr) = mock_upstream();
    let mock_url = format!("http://{mock_addr}");
    let dir = scratch("prometheus");
    let scenario = dir.join("scenario.toml");
    std::fs::write(
        &scenario,
        r#"
name = "prometheus \"live\""

[[user]]
name = "Mixed"
wait_time = "constant_pacing(20ms)"

[[user.task]]
name = "ok"
path = "/status/200"
weight = 3

[[user.task]]
name = "unavailable"
path = "/status/503"
"#,
    )
    .unwrap();
    let summary = dir.join("summary.json");
    let mut child = Command::new(bin("loadgen"))
        .arg("run")
        .arg(&scenario)
        .args(["--host", &mock_url])
        .args(["--users", "4", "--spawn-rate", "100", "--run-time", "5s"])
        .args(["--headless", "--only-summary", "--workers", "1"])
        .args(["--prometheus-listen", "127.0.0.1:0"])
        .arg("--summary-export")
        .arg(&summary)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("loadgen: Prometheus metrics on http://") {
                let _ = tx.send(rest.trim_end_matches("/metrics").to_owned());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr = rx
        .recv_timeout(WAIT)
        .expect("loadgen prints its metrics address");

    // During the run: every scrape parses strictly, users are all running, counts grow.
    let started = Instant::now();
    let mut last_total = 0.0;
    let mut during = 0;
    while started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(700));
        let (status, body) = scrape(&addr);
        assert_eq!(status, "HTTP/1.1 200 OK");
        let samples = parse(&body);
        let total = sum(&samples, "loadgen_requests_total", &[]);
        assert!(total >= last_total, "counters are monotonic");
        last_total = total;
        if total > 0.0 {
            check_histograms(&samples, "loadgen_request_duration_seconds");
            during += 1;
        }
        let cpu = sum(&samples, "loadgen_cpu_saturation", &[]);
        assert!((0.0..=2.0).contains(&cpu), "cpu saturation {cpu}");
        if started.elapsed() > Duration::from_secs(2) {
            assert_eq!(
                sum(&samples, "loadgen_users", &[]),
                4.0,
                "users gauge:\n{body}"
            );
        }
    }
    assert!(during >= 2, "scrapes with data during the run");
    let (status, _) = {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        (raw.lines().next().unwrap_or_default().to_owned(), ())
    };
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // After the summary is written, loadgen waits for one last scrape: it is final.
    let start = Instant::now();
    while !summary.exists() || std::fs::metadata(&summary).unwrap().len() == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "no summary");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let (_, body) = scrape(&addr);
    let samples = parse(&body);
    check_histograms(&samples, "loadgen_request_duration_seconds");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let m = &s["metrics"];
    let count = |k: &str, f: &str| m[k][f].as_f64().unwrap_or_else(|| panic!("{k}.{f}: {s}"));
    let reqs = count("http_reqs", "count");
    assert!(reqs > 100.0, "the run made requests: {reqs}");
    assert_eq!(sum(&samples, "loadgen_requests_total", &[]), reqs);
    assert_eq!(
        sum(&samples, "loadgen_request_failures_total", &[]),
        count("http_req_failed", "passes")
    );
    for name in ["ok", "unavailable"] {
        let n = count(&format!("http_reqs{{name:{name}}}"), "count");
        assert!(n > 0.0, "{name} ran");
        let l = [("name", name)];
        assert_eq!(sum(&samples, "loadgen_requests_total", &l), n, "{name}");
        assert_eq!(
            sum(&samples, "loadgen_request_duration_seconds_count", &l),
            n
        );
        let failed = count(&format!("http_req_failed{{name:{name}}}"), "passes");
        assert_eq!(sum(&samples, "loadgen_request_failures_total", &l), failed);
    }
    let unavailable = [("name", "unavailable"), ("status_class", "5xx")];
    assert_eq!(
        sum(&samples, "loadgen_request_failures_total", &unavailable),
        count("http_reqs{name:unavailable}", "count"),
        "every 503 is a 5xx failure"
    );
    assert_eq!(
        sum(
            &samples,
            "loadgen_requests_total",
            &[("name", "ok"), ("status_class", "2xx")]
        ),
        count("http_reqs{name:ok}", "count")
    );
    assert!(samples.iter().any(|x| x.name == "loadgen_run_info"
        && x.labels.get("scenario").map(String::as_str) == Some("prometheus \"live\"")));

    // And then it exits.
    let start = Instant::now();
    let code = loop {
        if let Some(c) = child.try_wait().unwrap() {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "loadgen did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = reader.join().unwrap();
    assert!(code.success(), "{err}");
    assert!(err.contains("for a last Prometheus scrape"), "{err}");
    drop(mock);
}

#[test]
fn loadgen_buckets_are_the_gateways() {
    let cfg =
        gateway::config::load(&gateway::config::Source::Embedded, &Default::default()).unwrap();
    assert_eq!(
        loadgen::prom::LATENCY_BUCKETS,
        gateway::telemetry::buckets(&cfg).as_slice(),
        "the embedded config's request-histogram edges (SLO thresholds merged in)"
    );
}
