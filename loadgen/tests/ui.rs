//! The web UI through the page itself in headless Chromium: `loadgen ui` against
//! mock-upstream on free ports, a Playwright driver (`tests/ui_browser.py`) that fills the
//! form, starts a run of 2 users, applies 6 users mid-run and waits for the users figure
//! and the users chart's data to follow, stops, downloads the stats CSV through its link
//! and takes a screenshot. This test checks what the driver saw, the CSV against the file
//! the report writer wrote, the screenshot's pixels, and the CSRF guard on the wire.
//!
//! Needs Debian's `chromium` (`LOADGEN_CHROMIUM` names another) and Python's `playwright`
//! package (`pip install playwright`; no browser download: it launches that chromium);
//! `scripts/test.sh` installs both. Without them the test fails: CI must not skip it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, mock_upstream, scratch, wait_bounded, Proc};

const SCENARIO: &str = r#"
name = "ui-test"
thresholds = ["p99<5s", "error_rate<5%"]

[run]
users = 1
spawn_rate = 10

[preset.pair]
description = "two users"
users = 2
spawn_rate = 2

[preset.budget]
description = "three users, exactly 60 requests"
users = 3
spawn_rate = 30
max_requests = 60

[[user]]
name = "Reader"
wait_time = "constant(100ms)"

[[user.task]]
name = "GET /health"
path = "/health"
"#;

/// The headless browser binary.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("LOADGEN_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("headless Chromium not found on PATH (scripts/test.sh installs Debian's chromium)");
}

/// `loadgen ui` on a free port: the process and its URL (read from stderr, bounded).
fn start_ui(scenario: &Path, host: &str, out: &Path) -> (Proc, String) {
    let mut child = Command::new(bin("loadgen"))
        .args(["ui", scenario.to_str().unwrap(), "--host", host])
        .args(["--listen", "127.0.0.1:0", "--workers", "1", "--out"])
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loadgen starts");
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("loadgen: web UI at ") {
                let url = rest.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(url.trim_end_matches('/').to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(common::WAIT)
        .expect("loadgen ui prints its URL");
    (
        Proc {
            child,
            line: url.clone(),
        },
        url,
    )
}

/// One raw HTTP/1.1 exchange; the status code.
fn status_of(addr: &str, request: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The driver's run, bounded; its JSON line.
fn drive(url: &str, out: &Path) -> serde_json::Value {
    let python = std::env::var("LOADGEN_PYTHON").unwrap_or_else(|_| "python3".into());
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui_browser.py");
    let mut child = Command::new(&python)
        .arg(&driver)
        .arg(url)
        .arg(chromium())
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python} does not start: {e}"));
    let (stdout, stderr) = common::capture(&mut child);
    let status = wait_bounded(&mut child, "the browser driver", Duration::from_secs(90));
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(
        status.success(),
        "the browser driver failed ({status}); `pip install playwright` if it is missing \
         (scripts/test.sh does):\n{stderr}"
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("driver output is not JSON ({e}): {stdout}"))
}

/// Decoded RGB pixels of a PNG.
fn pixels(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).expect("the PNG decodes");
    let step = info.color_type.samples();
    let rgb = buf[..info.buffer_size()]
        .chunks(step)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    (info.width, info.height, rgb)
}

#[test]
fn the_page_starts_a_run_changes_its_users_stops_and_downloads_the_csv_in_headless_chromium() {
    let dir = scratch("ui");
    let scenario = dir.join("ui.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let (_mock, mock_addr) = mock_upstream();
    let out = dir.join("out");
    let (_ui, url) = start_ui(&scenario, &format!("http://{mock_addr}"), &out);
    let addr = url.trim_start_matches("http://").to_owned();

    // The CSRF guard, on the wire: no token, a wrong Origin, a rebound Host.
    let post = |extra: &str| {
        format!(
            "POST /api/start HTTP/1.1\r\nhost: {addr}\r\n{extra}content-length: 2\r\nconnection: close\r\n\r\n{{}}"
        )
    };
    assert_eq!(status_of(&addr, &post("")), 403, "a POST without the token");
    let page = {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET / HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf
    };
    let token = page
        .split("const TOKEN = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the page embeds its token")
        .to_owned();
    assert!(!page.contains("src=\"http"), "no external script");
    let cross = post(&format!(
        "x-loadgen-token: {token}\r\norigin: http://evil.example\r\n"
    ));
    assert_eq!(
        status_of(&addr, &cross),
        403,
        "a cross-origin POST with the token"
    );
    let rebound = "GET /api/state HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n\r\n";
    assert_eq!(status_of(&addr, rebound), 421, "a rebound Host");

    let seen = drive(&url, &dir);
    let list = |k: &str| -> Vec<serde_json::Value> {
        seen[k]
            .as_array()
            .unwrap_or_else(|| panic!("{k} in {seen}"))
            .clone()
    };
    assert_eq!(
        list("page_errors"),
        Vec::<serde_json::Value>::new(),
        "{seen}"
    );
    assert_eq!(
        list("external_requests"),
        Vec::<serde_json::Value>::new(),
        "{seen}"
    );
    assert!(list("presets").contains(&"pair".into()), "{seen}");
    assert_eq!(seen["host_field"], format!("http://{mock_addr}"));
    assert_eq!(seen["phase_running"], "running");
    // The users chart's data: 2 users, then 6 after the change, never back.
    let users: Vec<u64> = list("users_series")
        .iter()
        .map(|u| u.as_u64().unwrap())
        .collect();
    let first_six = users.iter().position(|u| *u == 6).expect("6 users plotted");
    assert!(users[..first_six].contains(&2), "{users:?}");
    assert!(users[first_six..].iter().all(|u| *u == 6), "{users:?}");
    assert_eq!(seen["target_figure"], "6");
    assert_eq!(
        list("stats_rows"),
        vec![
            serde_json::json!("GET /health"),
            serde_json::json!("Aggregated")
        ]
    );
    assert_eq!(list("verdicts").len(), 2);
    assert!(
        list("verdicts").iter().all(|v| v == "verdict held"),
        "{seen}"
    );
    assert_eq!(list("downloads").len(), 6, "{seen}");

    // The downloaded CSV is the report writer's file, with Locust's header.
    let downloaded = std::fs::read(seen["csv"].as_str().unwrap()).unwrap();
    assert_eq!(seen["csv_name"], "loadgen_stats.csv");
    let written = std::fs::read(out.join("run-1/loadgen_stats.csv")).unwrap();
    assert_eq!(downloaded, written, "the download is the written report");
    let mut rows = csv::Reader::from_reader(downloaded.as_slice());
    let header: Vec<String> = rows.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header, loadgen::report::csv::STATS_HEADER.to_vec());
    let records: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    let aggregated = records
        .iter()
        .find(|r| &r[1] == "Aggregated")
        .expect("Aggregated row");
    let total: u64 = aggregated[2].parse().unwrap();
    assert_eq!(
        total,
        seen["requests_total"].as_u64().unwrap(),
        "page and CSV agree"
    );
    assert!(total >= 10, "{total} requests");
    for f in ["report.html", "summary.json", "loadgen_stats_history.csv"] {
        assert!(out.join("run-1").join(f).is_file(), "{f} written");
    }

    // The screenshot decodes and is not blank: the page's colours are there.
    let (w, h, rgb) = pixels(Path::new(seen["screenshot"].as_str().unwrap()));
    assert!(w >= 1000 && h >= 1000, "{w}x{h}");
    let has = |pred: &dyn Fn(&[u8; 3]) -> bool| rgb.iter().filter(|p| pred(p)).count();
    let dark_header = has(&|p| p[0] < 40 && p[1] < 45 && p[2] < 60);
    let green_verdict = has(&|p| p[1] > 110 && p[0] < 70 && p[2] < 110);
    let purple_users_line = has(&|p| p[0] > 80 && p[0] < 130 && p[1] < 90 && p[2] > 160);
    assert!(dark_header > 10_000, "the header bar: {dark_header} px");
    assert!(
        green_verdict > 500,
        "the held thresholds: {green_verdict} px"
    );
    assert!(
        purple_users_line > 100,
        "the users line: {purple_users_line} px"
    );
}

/// One raw HTTP/1.1 exchange; the body.
fn body_of(addr: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// `(Type, Name, Request Count, Failure Count)` of a stats CSV.
fn counts(path: &Path) -> Vec<(String, String, u64, u64)> {
    let mut r = csv::Reader::from_path(path).unwrap();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (
                rec[0].to_owned(),
                rec[1].to_owned(),
                rec[2].parse().unwrap(),
                rec[3].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_run_from_the_ui_counts_what_the_same_headless_run_counts() {
    let dir = scratch("ui-same-engine");
    let scenario = dir.join("ui.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let (_mock, mock_addr) = mock_upstream();
    let host = format!("http://{mock_addr}");
    let out = dir.join("out");
    let (_ui, url) = start_ui(&scenario, &host, &out);
    let addr = url.trim_start_matches("http://").to_owned();
    let get = |path: &str| {
        body_of(
            &addr,
            &format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"),
        )
    };
    let page = get("/");
    let token = page
        .split("const TOKEN = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let body = r#"{"preset":"budget"}"#;
    let started = body_of(
        &addr,
        &format!(
            "POST /api/start HTTP/1.1\r\nhost: {addr}\r\nx-loadgen-token: {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(started.contains("\"ok\":true"), "{started}");
    let start = std::time::SystemTime::now();
    loop {
        let state: serde_json::Value = serde_json::from_str(&get("/api/state")).unwrap();
        if state["phase"] == "done" {
            break;
        }
        assert!(
            start.elapsed().unwrap_or_default() < Duration::from_secs(30),
            "the budget run did not end: {state}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let headless = dir.join("headless");
    let ran = common::loadgen(&[
        "run",
        scenario.to_str().unwrap(),
        "--host",
        &host,
        "--preset",
        "budget",
        "--workers",
        "1",
        "--only-summary",
        "--csv",
        headless.to_str().unwrap(),
    ]);
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    let from_ui = counts(&out.join("run-1/loadgen_stats.csv"));
    assert_eq!(from_ui, counts(&dir.join("headless_stats.csv")));
    assert_eq!(
        from_ui.last(),
        Some(&(String::new(), "Aggregated".to_owned(), 60, 0)),
        "exactly the budget"
    );
}
