//! The live SLO page in headless Chromium: the real gateway binary with two `[[slos]]` over
//! routes to an in-process mock upstream, curl on `/slo` (still JSON, and the page only for a
//! client that prefers HTML), and a Playwright driver (`tests/slo_page_browser.py`) that opens
//! `/slo/ui`, reports what the DOM and the chart's data show before, during and after a load
//! run this test drives through the gateway, takes a screenshot and decodes it, renders
//! hostile names through the page, and opens `/slo` as a browser navigation.
//!
//! Needs Debian's `chromium` (`E2E_CHROMIUM` names another) and Python's `playwright` package
//! (no browser download: it launches that chromium); `scripts/test.sh` installs both. Without
//! them the test fails: CI must not skip it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use e2e::harness::{client, get, temp_dir, GatewayProcess, TestClient};
use e2e::{MockOptions, MockUpstream};

/// Bound on each exchange with the driver (a cold Chromium start included).
const DRIVER_WAIT: Duration = Duration::from_secs(90);

/// The headless browser binary.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("E2E_CHROMIUM") {
        return PathBuf::from(p);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find_map(e2e::harness::find_tool)
        .unwrap_or_else(|| {
            panic!(
                "headless Chromium not found on PATH (scripts/test.sh installs Debian's chromium)"
            )
        })
}

/// The driver process, killed on drop, with its stdout lines on a channel.
struct Driver {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Driver {
    fn start(admin: &str, out: &Path) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slo_page_browser.py");
        let python = std::env::var("E2E_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .arg(script)
            .arg(admin)
            .arg(chromium())
            .arg(out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{python} does not start: {e}"));
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self {
            child,
            lines,
            stderr,
        }
    }

    /// The next JSON line of phase `phase`, bounded.
    async fn next(&mut self, phase: &str) -> Value {
        let line = tokio::time::timeout(DRIVER_WAIT, self.lines.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "the browser driver gave no {phase:?} line; `pip install playwright` if it \
                     is missing (scripts/test.sh does). Its stderr:\n{}",
                    self.stderr.lock().unwrap()
                )
            });
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("driver line is not JSON ({e}): {line}"));
        assert_eq!(v["phase"], phase, "{v}");
        v
    }

    fn send(&mut self, cmd: Value) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Driver {
    /// Closes its stdin (the driver then closes the browser and exits) and waits a bounded
    /// moment before killing it.
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl -sS -D - [-H Accept: …] URL`: (head, body).
fn curl(url: &str, accept: Option<&str>) -> (String, String) {
    let mut cmd = Command::new(e2e::harness::tool("curl", "curl"));
    cmd.args(["-sS", "--max-time", "10", "-D", "-"]);
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    let out = cmd.arg(url).output().unwrap();
    assert!(out.status.success(), "curl {url}: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_ascii_lowercase(), body.to_owned())
}

/// `n` GETs of `path` through the gateway, 8 at a time; every status must be `status`.
async fn load(c: &TestClient, addr: std::net::SocketAddr, path: &str, n: usize, status: u16) {
    let statuses: Vec<u16> = futures_util::stream::iter(0..n)
        .map(|_| async move { get(c, addr, path).await.status() })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == status),
        "{path}: {statuses:?}"
    );
}

/// The section of SLO `name` in a snapshot.
fn section<'a>(snap: &'a Value, name: &str) -> &'a Value {
    snap["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no section {name}: {snap}"))
}

/// `objective -> met` in `window` of a section.
fn met_in(section: &Value, window: &str) -> Vec<(String, bool)> {
    section["objectives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let cell = o["cells"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["window"] == window)
                .unwrap_or_else(|| panic!("no {window} cell: {o}"));
            (
                o["objective"].as_str().unwrap().to_owned(),
                cell["met"] == "true",
            )
        })
        .collect()
}

const CONFIG: &str = r#"
[[routes]]
name = "api"
prefix = "/api"
rewrite = "/status/200"
upstream = "up"

[[routes]]
name = "search"
prefix = "/search"
rewrite = "/delay/20"
upstream = "up"

[[routes]]
name = "search-errors"
prefix = "/search-errors"
rewrite = "/status/503"
upstream = "up"

[[slos]]
name = "checkout"
routes = ["api"]
latency = [{ quantile = 0.95, threshold = "2s" }, { quantile = 0.99, threshold = "5s" }]
availability = 0.99

[[slos]]
name = "search"
routes = ["search", "search-errors"]
latency = [{ quantile = 0.5, threshold = "1s" }, { quantile = 0.99, threshold = "5ms" }]
availability = 0.999
min_throughput = 10000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slo_page_shows_every_objective_and_its_chart_follows_a_load_run_in_headless_chromium()
{
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = temp_dir("slo-page");
    let cfg = dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!("[upstreams.up]\nendpoints = [\"{}\"]\n{CONFIG}", up.addr()),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(Some(&cfg), &[]);
    let admin = format!("http://{}", gw.admin);

    // curl and other */* clients keep the JSON; a client preferring HTML gets the page.
    let (head, body) = curl(&format!("{admin}/slo"), None);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("vary: accept"), "{head}");
    let report: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = report["slos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["checkout", "search"]);
    let objective = &report["slos"][1]["windows"][0]["objectives"][1];
    assert_eq!(objective["objective"], "p99<=5ms");
    assert_eq!(objective["kind"], "latency");
    assert_eq!(objective["target"], 5.0);
    let (head, _) = curl(
        &format!("{admin}/slo"),
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5,*/*;q=0.1"),
    );
    assert!(head.contains("content-type: application/json"), "{head}");
    let (head, page) = curl(&format!("{admin}/slo"), Some("text/html,*/*;q=0.8"));
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(page.starts_with("<!doctype html>"), "{page:.40}");
    for h in [
        "content-security-policy: default-src 'none'; script-src 'sha256-",
        "cache-control: no-store",
        "x-content-type-options: nosniff",
    ] {
        assert!(head.contains(h), "{h} in {head}");
    }
    let (ui_head, ui) = curl(&format!("{admin}/slo/ui"), None);
    assert!(ui_head.contains("content-type: text/html"), "{ui_head}");
    assert_eq!(ui, page);

    let mut driver = Driver::start(&admin, &dir);
    let before = driver.next("seen").await["snapshot"].clone();
    assert_eq!(before["status"], "live", "{before}");
    assert_eq!(before["sections"].as_array().unwrap().len(), 2, "{before}");
    let checkout = section(&before, "checkout");
    let search = section(&before, "search");
    assert_eq!(checkout["title"], "checkout");
    assert_eq!(checkout["routes"], "routes: api");
    assert_eq!(search["routes"], "routes: search, search-errors");
    // Every objective of both SLOs, in every window, with its state: no traffic yet, so
    // only the minimum throughput is missed.
    for w in ["1m", "5m", "30m", "1h", "6h"] {
        assert_eq!(
            met_in(checkout, w),
            [
                ("p95<=2000ms".into(), true),
                ("p99<=5000ms".into(), true),
                ("availability>=99%".into(), true)
            ],
            "{w}"
        );
        assert_eq!(
            met_in(search, w),
            [
                ("p50<=1000ms".into(), true),
                ("p99<=5ms".into(), true),
                ("availability>=99.9%".into(), true),
                ("rate>=10000/s".into(), false)
            ],
            "{w}"
        );
    }
    assert_eq!(checkout["verdict"]["met"], "true", "{checkout}");
    assert_eq!(search["verdict"]["met"], "false", "{search}");
    assert_eq!(search["verdict"]["text"], "1 of 4 missed (5m)");
    for s in [checkout, search] {
        assert_eq!(s["chart"]["last"]["requests"], 0, "{s}");
        assert_eq!(s["chart"]["last"]["p95"], Value::Null, "{s}");
        assert_eq!(s["latency"]["p99"][0], "—", "{s}");
    }
    // Burn-rate pairs: availability and each latency SLI, 5m/1h at 14.4 and 30m/6h at 6.
    let pairs: Vec<(String, String, String)> = search["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["sli"].as_str().unwrap().to_owned(),
                p["cells"][0].as_str().unwrap().to_owned(),
                p["cells"][1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut want = Vec::new();
    for sli in ["availability", "latency_p50", "latency_p99"] {
        want.push((sli.to_owned(), "5m / 1h".to_owned(), "14.4×".to_owned()));
        want.push((sli.to_owned(), "30m / 6h".to_owned(), "6.00×".to_owned()));
    }
    assert_eq!(pairs, want);

    // Load through the gateway in two halves; the chart must show each without a reload.
    let c = client();
    let half = |n: usize| (n, n / 2);
    let (api_n, api_half) = half(300);
    let (search_n, search_half) = half(200);
    let errors_n = 10;
    load(&c, gw.addr, "/api", api_half, 200).await;
    load(&c, gw.addr, "/search", search_half, 200).await;
    driver.send(json!({ "expect": { "checkout": api_half, "search": search_half } }));
    let mid = driver.next("seen").await["snapshot"].clone();
    load(&c, gw.addr, "/api", api_n - api_half, 200).await;
    load(&c, gw.addr, "/search", search_n - search_half, 200).await;
    load(&c, gw.addr, "/search-errors", errors_n, 503).await;
    driver.send(json!({ "expect": { "checkout": api_n, "search": search_n + errors_n } }));
    let after = driver.next("seen").await["snapshot"].clone();
    driver.send(json!({ "finish": true }));
    let result = driver.next("result").await["result"].clone();

    // The chart moved: more points each time, the 1m window's requests and latency plotted.
    let points = |s: &Value, n: &str| section(s, n)["chart"]["points"].as_u64().unwrap();
    for name in ["checkout", "search"] {
        let (b, m, a) = (
            points(&before, name),
            points(&mid, name),
            points(&after, name),
        );
        assert!(b >= 1 && m > b && a > m, "{name}: {b} {m} {a} points");
        let last = &section(&after, name)["chart"]["last"];
        assert!(last["p95"].as_f64().unwrap() > 0.0, "{last}");
        assert!(last["rate"].as_f64().unwrap() > 0.0, "{last}");
    }
    assert_eq!(
        section(&mid, "checkout")["chart"]["last"]["requests"],
        api_half
    );
    let search_last = &section(&after, "search")["chart"]["last"];
    assert!(
        search_last["p50"].as_f64().unwrap() >= 20.0,
        "{search_last}"
    );
    let samples = result["samples"].as_array().unwrap();
    assert!(samples.len() >= 2, "{result}");
    let final_points = points(&result["final"], "checkout");
    assert!(final_points >= points(&after, "checkout") + 2);

    // No reload: the marker set after the first report survived, one navigation only.
    assert_eq!(result["final"]["marker"], "kept", "{result}");
    assert_eq!(result["final"]["navigations"], 1);
    assert_eq!(
        result["main_frame_navigations"].as_array().unwrap().len(),
        1
    );
    assert_eq!(result["final"]["failures"], 0, "{result}");

    // After the run: checkout meets everything; search misses p99 (20 ms > 5 ms), availability
    // (10 of 210 failed) and throughput, and meets p50.
    let checkout = section(&after, "checkout");
    let search = section(&after, "search");
    assert!(met_in(checkout, "1m").iter().all(|(_, m)| *m), "{checkout}");
    assert_eq!(
        met_in(search, "1m"),
        [
            ("p50<=1000ms".into(), true),
            ("p99<=5ms".into(), false),
            ("availability>=99.9%".into(), false),
            ("rate>=10000/s".into(), false)
        ]
    );
    assert_eq!(search["verdict"]["text"], "3 of 4 missed (5m)");
    assert_eq!(checkout["latency"]["requests"][0], api_n.to_string());
    assert_eq!(
        checkout["budget"][2]["cells"][0]["text"], "100.0 %",
        "{checkout}"
    );
    let avail_budget = &search["budget"][2]["cells"][0];
    assert_eq!(avail_budget["over"], true, "{search}");
    assert!(
        avail_budget["text"].as_str().unwrap().starts_with('-'),
        "{avail_budget}"
    );
    let firing: Vec<(&str, &str)> = search["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["cells"][0] == "5m / 1h")
        .map(|p| (p["sli"].as_str().unwrap(), p["firing"].as_str().unwrap()))
        .collect();
    assert_eq!(
        firing,
        [
            ("availability", "true"),
            ("latency_p50", "false"),
            ("latency_p99", "true")
        ]
    );
    assert!(
        checkout["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["firing"] == "false"),
        "{checkout}"
    );

    // The headers the browser saw: the strict policy, under which the page ran (it polled).
    let csp = result["page_headers"]["content-security-policy"]
        .as_str()
        .unwrap();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'sha256-"),
        "{csp}"
    );
    assert!(csp.contains("connect-src 'self'; img-src data:"), "{csp}");

    // Screenshot: decoded, not one colour, the header bar there; each chart (an element
    // screenshot of its canvas, legend excluded) has its quantile lines drawn.
    let shot = &result["screenshot"];
    assert!(shot["width"].as_u64().unwrap() >= 1000, "{shot}");
    assert!(shot["distinct_colours"].as_u64().unwrap() > 50, "{shot}");
    assert!(shot["most_common_share"].as_f64().unwrap() < 0.9, "{shot}");
    assert!(shot["header_dark"].as_u64().unwrap() >= 10_000, "{shot}");
    assert!(Path::new(shot["path"].as_str().unwrap()).is_file());
    for name in ["checkout", "search"] {
        // Lines of equal values overlap (p99 drawn last): their colours together.
        let chart = &result["charts"][name];
        let lines: u64 = ["p50_blue", "p95_orange", "p99_red"]
            .iter()
            .map(|k| chart[k].as_u64().unwrap())
            .sum();
        assert!(lines >= 50, "{name}: {chart}");
        assert!(
            chart["distinct_colours"].as_u64().unwrap() > 50,
            "{name}: {chart}"
        );
    }

    // Hostile names are shown as text: no element made from them, no script run.
    let hostile = &result["hostile"];
    assert_eq!(
        hostile["titles"][0], "<img src=x onerror=\"window.__pwned=1\">",
        "{hostile}"
    );
    assert_eq!(
        hostile["routes"][0],
        "routes: </script><script>window.__pwned=2</script>"
    );
    assert_eq!(hostile["first_objective"], "<b>bold</b>");
    assert_eq!(hostile["markup"], 0, "{hostile}");
    assert_eq!(hostile["pwned"], Value::Null, "{hostile}");

    // /slo navigated to by the browser is the page (Accept negotiation), which then polls
    // the JSON at the same URL.
    let nav = &result["negotiated"];
    assert_eq!(nav["content_type"], "text/html; charset=utf-8", "{nav}");
    assert_eq!(nav["vary"], "accept");
    assert_eq!(nav["title"], "Gateway SLOs");
    assert_eq!(nav["sections"], 2);

    // Nothing failed in the console (CSP violations would), nothing left the admin origin.
    assert_eq!(result["problems"], json!([]), "{result}");
    assert_eq!(result["external_requests"], json!([]), "{result}");
    eprintln!(
        "slo page: {} points, screenshot {}x{} with {} colours, charts {}",
        final_points, shot["width"], shot["height"], shot["distinct_colours"], result["charts"]
    );
    drop(up);
}
