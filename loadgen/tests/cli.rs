//! The `loadgen` binary end to end: every shipped scenario validates, a short smoke run
//! through the real gateway and mock-upstream writes every report, and the exit codes
//! follow the contract (0 held, 1 missed, 2 usage or scenario error).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{loadgen, scenarios, scratch, stack};
use loadgen::scenario::Scenario;

#[test]
fn every_shipped_scenario_and_preset_validates() {
    let mut n = 0;
    for entry in std::fs::read_dir(scenarios()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        n += 1;
        let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.classes.is_empty(), "{}", path.display());
        let presets = std::iter::once(None).chain(s.presets.keys().map(|k| Some(k.as_str())));
        for p in presets {
            let spec = s.spec(p).unwrap();
            spec.plan()
                .unwrap_or_else(|e| panic!("{} preset {p:?}: {e}", path.display()));
            s.select_classes(spec.user_classes.as_deref()).unwrap();
        }
    }
    assert!(n >= 5, "expected a scenario per seed workload, found {n}");
    let checked = loadgen(&[
        "check",
        scenarios().join("meetinity-gateway.toml").to_str().unwrap(),
    ]);
    assert_eq!(checked.code, Some(0), "{}", checked.stderr);
}

#[test]
fn smoke_run_through_the_gateway_writes_every_report() {
    let (_mock, _gw, _mock_url, gw_url) = stack();
    let dir = scratch("smoke");
    let d = |f: &str| dir.join(f).display().to_string();
    let scenario = scenarios().join("meetinity-gateway.toml");
    let ran = loadgen(&[
        "run",
        scenario.to_str().unwrap(),
        "--host",
        &gw_url,
        "--users",
        "10",
        "--spawn-rate",
        "20",
        "--run-time",
        "2s",
        "--headless",
        "--only-summary",
        "--workers",
        "1",
        "--user-classes",
        "HighThroughputUser",
        "AuthenticatedUser",
        "--csv",
        &d("smoke"),
        "--html",
        &d("smoke.html"),
        "--summary-export",
        &d("summary.json"),
        "--junit",
        &d("junit.xml"),
        "--threshold",
        "error_rate<1%",
        "--threshold",
        "/api/users: p99<1s",
    ]);
    assert_eq!(
        ran.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        ran.stdout,
        ran.stderr
    );
    assert!(ran.stdout.contains("Aggregated"), "{}", ran.stdout);
    assert!(ran.stdout.contains("VERDICT: SLA HELD"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("/api/auth/session"),
        "on_start ran: {}",
        ran.stdout
    );

    let stats = std::fs::read_to_string(d("smoke_stats.csv")).unwrap();
    // Locust's csv.writer: minimal quoting, \r\n.
    assert!(stats.starts_with("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%\r\n"), "{stats}");
    assert!(stats.contains("\r\n,Aggregated,"));
    let history = std::fs::read_to_string(d("smoke_stats_history.csv")).unwrap();
    assert!(history.starts_with("Timestamp,User Count,Type,Name,Requests/s,"));
    assert!(history.lines().count() >= 2, "{history}");
    let failures = std::fs::read_to_string(d("smoke_failures.csv")).unwrap();
    assert!(failures.starts_with("Method,Name,Error,Occurrences,First Seen,Last Seen\r\n"));
    let exceptions = std::fs::read_to_string(d("smoke_exceptions.csv")).unwrap();
    assert!(exceptions.starts_with("Count,Message,Traceback,Nodes\r\n"));

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("summary.json")).unwrap()).unwrap();
    let m = &summary["metrics"];
    assert!(m["http_reqs"]["count"].as_u64().unwrap() > 10);
    assert!(m["http_req_duration"]["p(95)"].as_f64().unwrap() > 0.0);
    assert_eq!(m["http_req_failed"]["thresholds"]["error_rate<1%"], false);
    assert_eq!(summary["loadgen"]["verdict"], "held");
    let junit = std::fs::read_to_string(d("junit.xml")).unwrap();
    assert!(junit.contains("tests=\"2\" failures=\"0\""), "{junit}");
    let html = std::fs::read_to_string(d("smoke.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("SLA HELD"));
}

#[test]
fn missed_thresholds_exit_1_and_bad_input_exits_2() {
    let (_mock, _gw, _mock_url, gw_url) = stack();
    let scenario = scenarios().join("meetinity-gateway.toml");
    let ran = loadgen(&[
        "run",
        scenario.to_str().unwrap(),
        "--host",
        &gw_url,
        "--max-requests",
        "50",
        "--users",
        "5",
        "--only-summary",
        "--user-classes",
        "HighThroughputUser",
        "--threshold",
        "rps>=1000000",
        "--threshold",
        "p99<1us",
    ]);
    assert_eq!(ran.code, Some(1), "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("VERDICT: SLA MISSED (2 of 2"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains("Aggregated                                          50"),
        "exactly the budget:\n{}",
        ran.stdout
    );

    let dir = scratch("bad");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[user]]\nname = \"A\"\nwait_time = \"between(2s, 1s)\"\n[[user.task]]\npath = \"/{{nope}}\"\n",
    )
    .unwrap();
    let ran = loadgen(&["run", bad.to_str().unwrap(), "--host", &gw_url]);
    assert_eq!(ran.code, Some(2));
    assert!(
        ran.stderr.contains("user[0].wait_time: bad wait_time"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr
            .contains("user[0].task[0].path: unknown variable \"nope\""),
        "{}",
        ran.stderr
    );
    for args in [
        vec!["run", scenario.to_str().unwrap(), "--host", "https://x"],
        vec![
            "run",
            scenario.to_str().unwrap(),
            "--host",
            &gw_url,
            "--threshold",
            "p95<soon",
        ],
        vec![
            "run",
            scenario.to_str().unwrap(),
            "--host",
            &gw_url,
            "--user-classes",
            "Nobody",
        ],
        vec![
            "run",
            scenario.to_str().unwrap(),
            "--host",
            &gw_url,
            "--preset",
            "nope",
        ],
        vec!["run", "/nonexistent.toml", "--host", &gw_url],
        vec!["frobnicate"],
    ] {
        let ran = loadgen(&args);
        assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.stderr);
        assert!(!ran.stderr.trim().is_empty(), "{args:?} explains itself");
    }
}

#[test]
fn metrics_url_cross_checks_against_the_real_gateways_histograms() {
    let s = common::stack_with_admin();
    let dir = scratch("crosscheck");
    let summary = dir.join("summary.json");
    let metrics = format!("{}/metrics", s.admin_url);
    let scenario = scenarios().join("meetinity-gateway.toml");
    let ran = loadgen(&[
        "run",
        scenario.to_str().unwrap(),
        "--host",
        &s.gateway_url,
        "--users",
        "20",
        "--spawn-rate",
        "100",
        "--max-requests",
        "200",
        "--only-summary",
        "--user-classes",
        "HighThroughputUser",
        "--metrics-url",
        &metrics,
        "--summary-export",
        summary.to_str().unwrap(),
    ]);
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        !ran.stderr.contains("cross-check skipped"),
        "the gateway's metric names are read: {}",
        ran.stderr
    );
    let line = ran.stdout.lines().find(|l| l.starts_with("server-side: "));
    eprintln!("{line:?}");
    assert!(line.is_some(), "{}", ran.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let client = summary["metrics"]["http_reqs"]["count"].as_f64().unwrap();
    let server = &summary["loadgen"]["server"];
    let requests = server["requests"].as_f64().unwrap();
    assert_eq!(client, 200.0);
    // Every request the client sent went through the gateway and was counted once (a
    // response can reach the client just before the gateway records it: a little slack).
    assert!(
        (client - 5.0..=client).contains(&requests),
        "server counted {requests}, client {client}"
    );
    assert_eq!(server["error_rate_pct"].as_f64().unwrap(), 0.0);
    let (p95, p99) = (
        server["p95_ms"].as_f64().unwrap(),
        server["p99_ms"].as_f64().unwrap(),
    );
    assert!(p95 > 0.0 && p95 <= p99, "p95 {p95} p99 {p99}");
    // Server-side time is a part of client-side time, up to the histogram's bucket
    // interpolation (its buckets are wide: allow the next bucket bound).
    let client_max = summary["metrics"]["http_req_duration"]["max"]
        .as_f64()
        .unwrap();
    assert!(
        p99 <= client_max * 2.5 + 5.0,
        "p99 {p99} vs client max {client_max}"
    );
}
