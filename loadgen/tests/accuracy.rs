//! Measurement accuracy: a fixed 50 ms latency (an exact thread server, and mock-upstream)
//! is reported within 1 ms at p50 (and p99 on a quiet machine: tests/bench/accuracy.sh), and the open model shows a 1 s stall in its p99 where the
//! closed model hides it (no coordinated omission). Shards merge exactly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use e2e::mock::{MockOptions, MockUpstream};
use loadgen::client::Target;
use loadgen::metrics::RunResult;
use loadgen::plan::{Plan, Stage};
use loadgen::runner::{self, RunConfig};
use loadgen::scenario::{Req, Scenario, ScenarioBuilder, UserBuilder};

fn scenario(path: &str) -> Scenario {
    ScenarioBuilder::new("accuracy")
        .user(UserBuilder::new("U").task(1, Req::get(path).name("probe")))
        .build()
        .unwrap()
}

async fn run(scenario: Scenario, plan: Plan, host: &str, control: Option<&str>) -> RunResult {
    let cfg = RunConfig {
        scenario: Arc::new(scenario),
        classes: vec![0],
        plan,
        target: Target::parse(host).unwrap(),
        timeout: Duration::from_secs(10),
        max_body: loadgen::client::DEFAULT_MAX_BODY,
        max_requests: None,
        thresholds: Vec::new(),
        live: false,
        control: control.map(|c| Target::parse(c).unwrap()),
        workers: 2,
        stop_timeout: Duration::from_secs(2),
        shard: None,
    };
    tokio::time::timeout(Duration::from_secs(60), runner::run(cfg))
        .await
        .expect("the run ends on time")
        .unwrap()
}

/// A reference server whose latency is exact: one OS thread per connection, a
/// nanosecond-precision `thread::sleep(50ms)` per request, then a small HTTP/1.1
/// keep-alive response: the reference that mock-upstream's precise latency is held to.
fn exact_latency_server(latency: Duration) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut line = String::new();
                    // Request line and headers up to the blank line (GETs have no body).
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    std::thread::sleep(latency);
                    let body = "{\"ok\":true}";
                    let res = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if writer.write_all(res.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_50ms_latency_is_reported_within_1ms() {
    let addr = exact_latency_server(Duration::from_millis(50));
    let plan = Plan::Closed {
        users: 10,
        spawn_rate: 100.0,
        run_time: Some(Duration::from_secs(3)),
    };
    let r = run(
        scenario("/api/hello"),
        plan,
        &format!("http://{addr}"),
        None,
    )
    .await;
    let (p50, p99) = (r.total.percentile_ms(0.5), r.total.percentile_ms(0.99));
    eprintln!(
        "exact 50 ms: {} requests, p50 {p50:.3} ms, p99 {p99:.3} ms",
        r.total.requests
    );
    assert!(r.total.requests > 300, "{}", r.total.requests);
    assert_eq!(r.total.failures, 0);
    assert!((p50 - 50.0).abs() <= 1.0, "p50 {p50}");
    // p99 is within 1 ms on a quiet machine (release build: tests/bench/accuracy.sh); on
    // a loaded 2-core CI machine a debug build's p99 carries scheduler noise (62 ms seen
    // with two other builds running), so only a loose bound here.
    assert!((50.0..=100.0).contains(&p99), "p99 {p99}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_upstream_fixed_50ms_is_reported_within_1ms() {
    // mock-upstream finishes its injected latency on a precise timer thread (its
    // `timer` module), so its "fixed 50 ms" is 50 ms plus loopback and HTTP handling.
    let mock = MockUpstream::start(MockOptions {
        latency: vec!["/api/hello=fixed:50ms".parse().unwrap()],
        ..MockOptions::default()
    })
    .await
    .unwrap();
    let plan = Plan::Closed {
        users: 10,
        spawn_rate: 100.0,
        run_time: Some(Duration::from_secs(3)),
    };
    let r = run(
        scenario("/api/hello"),
        plan,
        &format!("http://{}", mock.addr()),
        None,
    )
    .await;
    mock.shutdown().await;
    let (p50, p99) = (r.total.percentile_ms(0.5), r.total.percentile_ms(0.99));
    eprintln!(
        "mock fixed 50 ms: {} requests, min {:.3} p50 {p50:.3} ms, p99 {p99:.3} ms, max {:.3} ms",
        r.total.requests,
        r.total.min_ms(),
        r.total.max_ms()
    );
    assert!(r.total.requests > 300, "{}", r.total.requests);
    assert_eq!(r.total.failures, 0);
    assert!(r.total.min_ms() >= 50.0, "never below the latency");
    assert!((p50 - 50.0).abs() <= 1.0, "p50 {p50}");
    // Within 1 ms in a release build on a quiet machine (tests/bench/accuracy.sh); loose
    // here for scheduler noise on a loaded 2-core CI machine, as above.
    assert!(p99 <= 100.0, "p99 {p99}");
}

/// One second of +1 s on every request, from 1 s to 2 s into a 4 s run, scheduled by the
/// scenario's fault through mock-upstream's control endpoint.
fn stalling(path: &str) -> Scenario {
    let text = format!(
        r#"
name = "stall"
[[fault]]
at = "1s"
duration = "1s"
path_prefix = "{path}"
added_latency = "1s"
[[user]]
name = "U"
[[user.task]]
name = "probe"
path = "{path}"
"#
    );
    Scenario::from_toml(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_model_shows_a_stall_the_closed_model_hides() {
    let mock = MockUpstream::start(MockOptions {
        latency: vec!["/api/users=fixed:2ms".parse().unwrap()],
        ..MockOptions::default()
    })
    .await
    .unwrap();
    let host = format!("http://{}", mock.addr());
    let secs = Duration::from_secs(4);

    // Closed loop: 4 users; during the stall each waits on one slow request, so only a
    // handful of the samples are slow.
    let closed = Plan::Closed {
        users: 4,
        spawn_rate: 100.0,
        run_time: Some(secs),
    };
    let c = run(stalling("/api/users"), closed, &host, Some(&host)).await;
    assert!(c.exceptions.is_empty(), "{:?}", c.exceptions);

    // Open model: 200 iterations/s whatever happens, with VUs enough for a second of them
    // (an arrival that finds every VU busy is dropped, as in k6): the iterations that
    // start during the stall are measured from their intended start.
    let open = Plan::Open {
        start_rate: 200.0,
        stages: vec![Stage {
            duration: secs,
            target: 200.0,
        }],
        max_vus: 300,
    };
    let o = run(stalling("/api/users"), open, &host, Some(&host)).await;
    mock.shutdown().await;
    assert!(o.exceptions.is_empty(), "{:?}", o.exceptions);
    assert_eq!(o.dropped_iterations, 0, "every arrival found a VU");
    let (cp99, op99) = (c.total.percentile_ms(0.99), o.total.percentile_ms(0.99));
    eprintln!(
        "stall: closed {} requests p50 {:.1} p99 {cp99:.1} ms; open {} requests p50 {:.1} p99 {op99:.1} ms",
        c.total.requests,
        c.total.percentile_ms(0.5),
        o.total.requests,
        o.total.percentile_ms(0.5)
    );
    assert!(
        c.total.max_ms() >= 900.0,
        "the closed run did see the stall"
    );
    assert!(cp99 < 500.0, "closed p99 {cp99} hides the stall");
    assert!(op99 >= 900.0, "open p99 {op99} shows the stall");
    assert!(
        o.total.requests >= 600,
        "the open model kept its schedule: {}",
        o.total.requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_merge_exactly() {
    let mock = MockUpstream::start(MockOptions {
        latency: vec!["/api/hello=uniform:1ms:20ms".parse().unwrap()],
        ..MockOptions::default()
    })
    .await
    .unwrap();
    let host = format!("http://{}", mock.addr());
    let plan = Plan::Closed {
        users: 3,
        spawn_rate: 100.0,
        run_time: Some(Duration::from_secs(1)),
    };
    let mut a = run(scenario("/api/hello"), plan.clone(), &host, None).await;
    let mut b = run(scenario("/api/hello"), plan, &host, None).await;
    mock.shutdown().await;
    a.shards = vec!["1/2".into()];
    b.shards = vec!["2/2".into()];
    a.thresholds = vec!["p99<1s".into()];
    // Through the result file format and back.
    let a2: RunResult = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    let b2: RunResult = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
    let merged = loadgen::merge::merge(vec![a2, b2]).unwrap();
    let mut expected = a.total.hist.clone();
    expected.add(&b.total.hist).unwrap();
    assert_eq!(merged.total.requests, a.total.requests + b.total.requests);
    for q in loadgen::metrics::PERCENTILES {
        assert_eq!(
            merged.total.hist.value_at_quantile(q),
            expected.value_at_quantile(q),
            "q {q}"
        );
    }
    assert_eq!(merged.shards, vec!["1/2", "2/2"]);
    assert_eq!(merged.thresholds, vec!["p99<1s"]);
    let verdicts = loadgen::sla::judge_all(&merged);
    assert!(verdicts[0].held);
}
