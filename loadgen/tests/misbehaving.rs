//! The verdict sees what users saw, against targets that misbehave (issue 16, items 7-9):
//! the real `loadgen` binary against raw-socket targets on 127.0.0.1 that never answer
//! one path, never accept a connection, or send an endless chunked body.
//!
//! - A request still in flight when the stop timeout runs out is a timeout failure, with
//!   at least the time it had taken, in every output; requests that finish within the
//!   stop timeout are measured as usual.
//! - The open model drops an arrival that finds every VU busy (k6's `dropped_iterations`):
//!   counted in every output, the run marked unreliable, a threshold run missed unless a
//!   `dropped_iterations` threshold accepts the drops; memory stays bounded.
//! - A body kept for checks is capped (`--max-body-size`, a request's `max_body_size`):
//!   past the cap the check fails with the reason and the connection is closed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use common::{bin, peak_rss_kb, scratch};
use serde_json::Value;

/// Reads one request head; its path, or `None` at EOF.
fn read_head(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut first = String::new();
    if reader.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
        }
    }
    first.split_whitespace().nth(1).map(str::to_owned)
}

/// Serves each connection on a thread: `/hang` is never answered (the connection is held
/// until the client closes it), `/slow` after 300 ms, anything else at once; keep-alive.
fn hanging_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                while let Some(path) = read_head(&mut reader) {
                    if path == "/hang" {
                        // Never answer; wait for the client to give up.
                        let mut sink = [0u8; 256];
                        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
                        return;
                    }
                    if path == "/slow" {
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    let res = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if writer.write_all(res).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A response that never ends: chunk after 64 KiB chunk until the client closes. Counts
/// the connections open at once (the most of them in `max_open`).
fn endless_target(max_open: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (open, max_open) = (Arc::clone(&open), Arc::clone(&max_open));
            std::thread::spawn(move || {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                max_open.fetch_max(now, Ordering::SeqCst);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                if read_head(&mut reader).is_some() {
                    let mut chunk = b"10000\r\n".to_vec();
                    chunk.extend(std::iter::repeat_n(b'a', 0x10000));
                    chunk.extend_from_slice(b"\r\n");
                    let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                    if writer.write_all(head).is_ok() {
                        while writer.write_all(&chunk).is_ok() {}
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    addr
}

/// What a bounded loadgen run said.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    peak_kb: u64,
    took: Duration,
}

impl Ran {
    /// Both outputs, for assertion messages.
    fn all(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }
}

/// Runs `loadgen ARGS`, sampling its peak memory; killed (and the test failed) past
/// `kill_mb` so a regression never takes the machine down, or past 60 s.
fn run(args: &[&str], kill_mb: u64) -> Ran {
    let started = Instant::now();
    let mut child = Command::new(bin("loadgen"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (out, err) = common::capture(&mut child);
    let mut peak_kb = 0;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if let Some(kb) = peak_rss_kb(pid) {
            peak_kb = peak_kb.max(kb);
        }
        let over = peak_kb > kill_mb * 1024;
        if over || started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "loadgen {args:?} killed: peak RSS {:.1} MB (limit {kill_mb} MB), {:?} elapsed",
                peak_kb as f64 / 1024.0,
                started.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        peak_kb,
        took: started.elapsed(),
    }
}

/// `loadgen run SCENARIO --host HOST --workers 1 --only-summary EXTRA...` through [`run`].
fn run_scenario(scenario: &str, host: &str, extra: &[&str], kill_mb: u64) -> Ran {
    let mut args = vec![
        "run",
        scenario,
        "--host",
        host,
        "--workers",
        "1",
        "--only-summary",
    ];
    args.extend_from_slice(extra);
    run(&args, kill_mb)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `dropped_iterations` of a summary export.
fn dropped_count(summary: &Value) -> u64 {
    summary["metrics"]["dropped_iterations"]["count"]
        .as_u64()
        .unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Five users, one task in twenty to a path that never answers: every user ends up stuck.
const STUCK: &str = r#"
name = "stuck"
[[user]]
name = "U"
[[user.task]]
weight = 19
name = "ok"
path = "/ok"
[[user.task]]
weight = 1
name = "hang"
path = "/hang"
"#;

#[test]
fn requests_in_flight_at_the_stop_are_timeout_failures_in_every_output() {
    let addr = hanging_target();
    let dir = scratch("misbehaving-stuck");
    let scenario = write(&dir, "stuck.toml", STUCK);
    let d = |f: &str| dir.join(f).display().to_string();
    let host = format!("http://{addr}");
    let ran = run_scenario(
        &scenario,
        &host,
        &[
            "--users",
            "5",
            "--spawn-rate",
            "100",
            "--run-time",
            "2s",
            "--stop-timeout",
            "1s",
            "--threshold",
            "error_rate<1%",
            "--summary-export",
            &d("summary.json"),
            "--csv",
            &d("stuck"),
            "--html",
            &d("stuck.html"),
            "--junit",
            &d("junit.xml"),
        ],
        400,
    );
    let all = ran.all();
    // Before: 0 % errors, "SLA HELD", exit 0, the five stuck requests nowhere.
    assert_eq!(ran.code, Some(1), "{all}");
    assert!(ran.stdout.contains("SLA MISSED"), "{all}");
    assert!(
        ran.stdout.contains("STOPPED IN FLIGHT: 5 request(s)"),
        "{all}"
    );
    assert!(
        ran.stdout
            .contains("request timeout: still in flight when the run stopped"),
        "{all}"
    );
    assert!(ran.took < Duration::from_secs(20), "took {:?}", ran.took);

    let s = json(&dir.join("summary.json"));
    let m = &s["metrics"];
    assert_eq!(m["http_req_failed"]["passes"], 5, "{s:#}");
    assert_eq!(m["http_reqs{name:hang}"]["count"], 5, "{s:#}");
    assert_eq!(m["http_req_failed{name:hang}"]["passes"], 5, "{s:#}");
    assert_eq!(m["http_req_failed{name:ok}"]["passes"], 0, "{s:#}");
    // Latency at least the time taken: stuck before the end, cut off 1 s after it.
    let hang = &m["http_req_duration{name:hang}"];
    assert!(hang["min"].as_f64().unwrap() >= 1000.0, "{hang}");
    assert!(m["http_req_duration"]["max"].as_f64().unwrap() >= 1000.0);
    assert_eq!(s["loadgen"]["stopped_in_flight"], 5);
    assert_eq!(s["loadgen"]["verdict"], "missed");
    assert_eq!(m["http_req_failed"]["thresholds"]["error_rate<1%"], true);

    let failures = std::fs::read_to_string(dir.join("stuck_failures.csv")).unwrap();
    assert!(
        failures.contains("GET,hang,request timeout: still in flight when the run stopped,5,"),
        "{failures}"
    );
    let stats = std::fs::read_to_string(dir.join("stuck_stats.csv")).unwrap();
    let row = stats.lines().find(|l| l.contains(",hang,")).unwrap();
    assert!(row.starts_with("GET,hang,5,5,"), "{row}");
    let html = std::fs::read_to_string(dir.join("stuck.html")).unwrap();
    assert!(html.contains("5 stopped in flight"), "html");
    assert!(html.contains("request timeout: still in flight"), "html");
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert!(
        junit.contains(r#"name="stopped_in_flight" value="5""#),
        "{junit}"
    );
}

#[test]
fn requests_that_finish_within_the_stop_timeout_are_measured_not_failed() {
    let addr = hanging_target();
    let dir = scratch("misbehaving-grace");
    let scenario = write(
        &dir,
        "slow.toml",
        "name = \"slow\"\n[[user]]\nname = \"U\"\n[[user.task]]\nname = \"slow\"\npath = \"/slow\"\n",
    );
    let summary = dir.join("summary.json").display().to_string();
    let host = format!("http://{addr}");
    let ran = run_scenario(
        &scenario,
        &host,
        &[
            "--users",
            "3",
            "--spawn-rate",
            "100",
            "--run-time",
            "1s",
            "--stop-timeout",
            "3s",
            "--threshold",
            "error_rate<1%",
            "--summary-export",
            &summary,
        ],
        400,
    );
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    let s = json(Path::new(&summary));
    // Each user was mid-request at the stop: those finished in the stop timeout.
    assert_eq!(s["metrics"]["http_req_failed"]["passes"], 0, "{s:#}");
    assert_eq!(s["loadgen"]["stopped_in_flight"], 0);
    assert!(
        s["metrics"]["http_reqs"]["count"].as_u64().unwrap() >= 9,
        "{s:#}"
    );
    assert!(ran.took < Duration::from_secs(15), "took {:?}", ran.took);
}

#[test]
fn open_model_arrivals_without_a_free_vu_are_dropped_counted_and_fail_the_verdict() {
    let addr = hanging_target();
    let dir = scratch("misbehaving-dropped");
    let scenario = write(&dir, "stuck.toml", STUCK);
    let d = |f: &str| dir.join(f).display().to_string();
    let host = format!("http://{addr}");
    let base = |threshold: &'static str, summary: &str, html: &str| -> Ran {
        run_scenario(
            &scenario,
            &host,
            &[
                "--arrival-rate",
                "200",
                "--max-vus",
                "4",
                "--run-time",
                "2s",
                "--stop-timeout",
                "500ms",
                "--threshold",
                "p50<1s",
                "--threshold",
                threshold,
                "--summary-export",
                summary,
                "--html",
                html,
            ],
            400,
        )
    };
    // The stuck VUs leave most arrivals without one. Before: they queued as tasks, were
    // never sent nor counted, and both thresholds held ("SLA HELD", exit 0).
    let ran = base("requests>0", &d("summary.json"), &d("report.html"));
    let all = ran.all();
    assert_eq!(ran.code, Some(1), "{all}");
    assert!(ran.stdout.contains("DROPPED ITERATIONS: "), "{all}");
    assert!(ran.stdout.contains("UNRELIABLE RUN"), "{all}");
    assert!(
        ran.stdout
            .contains("[FAIL] dropped_iterations<1 (implicit)"),
        "{all}"
    );
    let s = json(&dir.join("summary.json"));
    let dropped = dropped_count(&s);
    let sent = s["metrics"]["http_reqs"]["count"].as_u64().unwrap();
    let rel = &s["loadgen"]["reliability"];
    let arrivals = rel["arrivals"].as_u64().unwrap();
    assert!(dropped >= 50, "{s:#}");
    // Every arrival is accounted for: sent (answered or cut off at the stop), or dropped.
    assert_eq!(sent + dropped, arrivals, "{s:#}");
    assert_eq!(s["loadgen"]["dropped_iterations"], dropped);
    assert_eq!(
        s["loadgen"]["stopped_in_flight"], 4,
        "the four stuck VUs: {s:#}"
    );
    assert_eq!(rel["unreliable"], true);
    assert!(
        rel["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().starts_with("dropped iterations: ")),
        "{rel}"
    );
    assert_eq!(
        s["metrics"]["dropped_iterations"]["thresholds"]["dropped_iterations<1 (implicit)"],
        true
    );
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(
        html.contains(&format!("{dropped} dropped iterations")),
        "html"
    );
    assert!(html.contains("dropped_iterations&lt;1 (implicit)"), "html");

    // Opting in, as in k6: a dropped_iterations threshold decides instead.
    let ran = base(
        "dropped_iterations<1000000",
        &d("summary2.json"),
        &d("report2.html"),
    );
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("SLA HELD (2 of 2"), "{}", ran.stdout);
    let s = json(&dir.join("summary2.json"));
    assert!(dropped_count(&s) >= 50);
}

#[test]
fn a_target_that_never_accepts_keeps_the_arrival_queue_bounded() {
    // Bound, never accepted: connections beyond the backlog hang in connect.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = scratch("misbehaving-never-accepts");
    let scenario = write(
        &dir,
        "one.toml",
        "name = \"one\"\n[[user]]\nname = \"U\"\n[[user.task]]\nname = \"x\"\npath = \"/x\"\n",
    );
    let summary = dir.join("summary.json").display().to_string();
    let host = format!("http://{addr}");
    // Before: every waiting arrival was a spawned task; RSS grew by hundreds of MB in
    // seconds (killed at 300 MB here).
    let ran = run_scenario(
        &scenario,
        &host,
        &[
            "--arrival-rate",
            "50000",
            "--max-vus",
            "10",
            "--run-time",
            "4s",
            "--stop-timeout",
            "500ms",
            "--threshold",
            "p99<1s",
            "--summary-export",
            &summary,
        ],
        300,
    );
    drop(listener);
    let all = ran.all();
    eprintln!(
        "never accepting, 50,000 arrivals/s, 10 VUs: peak RSS {:.1} MB in {:?}",
        ran.peak_kb as f64 / 1024.0,
        ran.took
    );
    assert_eq!(ran.code, Some(1), "{all}");
    assert!(ran.peak_kb > 0);
    assert!(
        ran.peak_kb < 64 * 1024,
        "peak RSS {:.1} MB (limit 64 MB)",
        ran.peak_kb as f64 / 1024.0
    );
    let s = json(Path::new(&summary));
    let dropped = dropped_count(&s);
    let sent = s["metrics"]["http_reqs"]["count"].as_u64().unwrap();
    assert!(dropped >= 10_000, "{s:#}");
    assert_eq!(sent, 10, "only the ten VUs' iterations were sent: {s:#}");
    assert_eq!(s["metrics"]["http_req_failed"]["passes"], 10, "{s:#}");
    assert_eq!(
        sent + dropped,
        s["loadgen"]["reliability"]["arrivals"].as_u64().unwrap()
    );
    assert_eq!(s["loadgen"]["reliability"]["unreliable"], true);
    assert!(ran.took < Duration::from_secs(20), "took {:?}", ran.took);
}

#[test]
fn an_endless_body_under_a_body_check_is_capped_and_its_connection_closed() {
    let max_open = Arc::new(AtomicUsize::new(0));
    let addr = endless_target(Arc::clone(&max_open));
    let dir = scratch("misbehaving-endless");
    let scenario = write(
        &dir,
        "endless.toml",
        r#"
name = "endless"
[[user]]
name = "U"
[[user.task]]
name = "default cap"
path = "/a"
checks = [{ body_contains = "needle" }]
[[user.task]]
name = "own cap"
path = "/b"
max_body_size = "64KB"
checks = [{ body_contains = "needle" }]
"#,
    );
    let summary = dir.join("summary.json").display().to_string();
    let failures = dir.join("endless").display().to_string();
    let host = format!("http://{addr}");
    // Before: the whole body was kept; GBs within seconds (killed at 400 MB here).
    let ran = run_scenario(
        &scenario,
        &host,
        &[
            "--users",
            "1",
            "--run-time",
            "2s",
            "--stop-timeout",
            "500ms",
            "--summary-export",
            &summary,
            "--csv",
            &failures,
        ],
        400,
    );
    let all = ran.all();
    eprintln!(
        "endless body: peak RSS {:.1} MB, at most {} connections open at once",
        ran.peak_kb as f64 / 1024.0,
        max_open.load(Ordering::SeqCst)
    );
    assert!(
        ran.peak_kb < 100 * 1024,
        "peak RSS {:.1} MB (limit 100 MB)",
        ran.peak_kb as f64 / 1024.0
    );
    let s = json(Path::new(&summary));
    let m = &s["metrics"];
    let requests = m["http_reqs"]["count"].as_u64().unwrap();
    assert!(requests >= 2, "{all}");
    // Every request failed its check (none can pass), none by a timeout.
    assert_eq!(m["http_req_failed"]["passes"].as_u64().unwrap(), requests);
    assert_eq!(s["loadgen"]["stopped_in_flight"], 0, "{s:#}");
    let csv = std::fs::read_to_string(dir.join("endless_failures.csv")).unwrap();
    assert!(
        csv.contains(",default cap,check failed: response body over the 4 MiB kept for checks (max_body_size); not read further,"),
        "{csv}"
    );
    assert!(
        csv.contains(",own cap,check failed: response body over the 64 KiB kept for checks"),
        "{csv}"
    );
    assert!(!csv.contains("timeout"), "{csv}");
    // Past the cap the connection is closed, not drained in the background: drained
    // connections would stay open, one more per request; closed ones leave one user with
    // one open connection (a few for a moment, while the server notices the close).
    assert!(requests >= 20, "{requests} requests");
    let most = max_open.load(Ordering::SeqCst);
    assert!(
        most <= 8,
        "{most} connections open at once over {requests} requests"
    );
}

#[test]
fn max_body_size_is_validated_with_its_key_path() {
    let dir = scratch("misbehaving-validate");
    let scenario = write(
        &dir,
        "bad.toml",
        "name = \"bad\"\n[[user]]\nname = \"U\"\n[[user.task]]\npath = \"/a\"\nmax_body_size = \"lots\"\n",
    );
    let ran = common::loadgen(&["check", &scenario]);
    assert_eq!(ran.code, Some(2));
    assert!(
        ran.stderr
            .contains("user[0].task[0].max_body_size: bad size \"lots\""),
        "{}",
        ran.stderr
    );
    let ran = common::loadgen(&["run", &scenario, "--max-body-size", "0"]);
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
}
