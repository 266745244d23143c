//! Adaptive concurrency through the real gateway against `mock-upstream`
//! in its capacity mode (4 requests served at once, 50 ms each: at most
//! 80 req/s, latency rising with every request queued): under 3x overload
//! the limit falls and admitted latency comes down to the target; the
//! refused requests are 503 with `Retry-After` and a JSON body, and never
//! reach the upstream; after the overload the limit grows again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::harness::{self, client, config, metrics_text, sample, simple, start_gateway};
use e2e::mock::{Capacity, MockOptions, MockUpstream};
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

const TARGET: Duration = Duration::from_millis(300);

#[derive(Default)]
struct Seen {
    /// (sent at, latency) of each 200.
    ok: Vec<(Duration, Duration)>,
    refused: u64,
    other: Vec<u16>,
}

/// Sends `rate` requests/s for `secs` (an open model: a request is sent
/// on time whatever the others do), each bounded; returns what came back.
async fn open_load(gw: std::net::SocketAddr, rate: u32, secs: u64, t0: Instant) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let c = client();
    let gap = Duration::from_secs(1) / rate;
    let end = Instant::now() + Duration::from_secs(secs);
    let mut next = Instant::now();
    let mut tasks = Vec::new();
    while next < end {
        tokio::time::sleep_until(next).await;
        next += gap;
        let (c, seen) = (c.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let req = Request::get(format!("http://{gw}/api/hello"))
                .body(Full::default())
                .unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(20), c.request(req))
                .await
                .expect("answered within 20 s")
                .expect("HTTP exchange");
            let (head, body) = resp.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let took = sent.elapsed();
            let mut s = seen.lock().unwrap();
            match head.status.as_u16() {
                200 => s.ok.push((sent - t0, took)),
                503 => {
                    assert_eq!(head.headers["retry-after"], "1");
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(
                        v["request_id"].as_str().unwrap(),
                        head.headers["x-request-id"].to_str().unwrap()
                    );
                    assert!(v["error"].as_str().unwrap().contains("concurrency"));
                    s.refused += 1;
                }
                other => s.other.push(other),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap()
}

fn p95(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty());
    v.sort_unstable();
    v[(v.len() * 95).div_ceil(100) - 1]
}

async fn limit(admin: std::net::SocketAddr) -> f64 {
    let text = metrics_text(&client(), admin).await;
    sample(&text, "gateway_concurrency_limit{route=\"all\"}").expect("limit gauge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_brings_the_limit_down_to_the_target_and_it_recovers() {
    harness::init_logs();
    let mock = MockUpstream::start(MockOptions {
        capacity: Some(Capacity {
            servers: 4,
            base_latency: Duration::from_millis(50),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut body = simple("up", &[mock.addr()], "");
    body.push_str(
        "concurrency = { mode = \"adaptive\", target = \"p95<=300ms\", min = 2, max = 1024 }\n",
    );
    let gw = start_gateway(config("", &body)).await;
    let start = limit(gw.admin_addr).await;
    // sqrt(2 * 1024) rounded: above what the upstream can take at 300 ms.
    assert_eq!(start, 45.0);

    // 3x the upstream's 80 req/s for 12 s.
    let t0 = Instant::now();
    let over = open_load(gw.proxy_addr, 240, 12, t0).await;
    let after_overload = limit(gw.admin_addr).await;
    assert!(
        over.other.is_empty(),
        "unexpected statuses {:?}",
        over.other
    );
    assert!(over.refused > 0, "nothing refused at 3x");
    // Falls below where it started (and far below max).
    assert!(
        after_overload < start,
        "limit {after_overload} after overload, started at {start}"
    );
    // Admitted latency, last 5 s of the overload: near the target (the
    // aim is 0.9 x 300 ms; generous for a loaded machine). Without the
    // limit the queue grows by 2 s every second.
    let late: Vec<Duration> = over
        .ok
        .iter()
        .filter(|(at, _)| *at >= Duration::from_secs(7))
        .map(|&(_, took)| took)
        .collect();
    let late_p95 = p95(late.clone());
    assert!(
        late_p95 <= TARGET * 3 / 2,
        "admitted p95 {late_p95:?} over the last 5 s (target {TARGET:?}), limit {after_overload}"
    );
    // The upstream was kept busy: most of its 80 req/s were served.
    assert!(late.len() >= 5 * 40, "only {} admitted in 5 s", late.len());

    // Never forwarded: the upstream saw exactly the admitted requests.
    assert_eq!(mock.total_hits(), over.ok.len() as u64);
    let text = metrics_text(&client(), gw.admin_addr).await;
    assert_eq!(
        sample(&text, "gateway_concurrency_rejected_total{route=\"all\"}"),
        Some(over.refused as f64)
    );
    assert!(sample(&text, "gateway_concurrency_inflight{route=\"all\"}").is_some());

    // After: 16 clients in a loop (fewer than the upstream queues to the
    // target, so latency is under it while the limit is in use): it grows.
    let c = client();
    let until = Instant::now() + Duration::from_secs(6);
    let loops: Vec<_> = (0..16)
        .map(|_| {
            let c = c.clone();
            let gw = gw.proxy_addr;
            tokio::spawn(async move {
                let mut refused = 0u32;
                while Instant::now() < until {
                    let got = harness::get(&c, gw, "/api/hello").await;
                    match got.status() {
                        200 => {}
                        503 => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        s => panic!("status {s}"),
                    }
                }
                refused
            })
        })
        .collect();
    for l in loops {
        l.await.unwrap();
    }
    let recovered = limit(gw.admin_addr).await;
    assert!(
        recovered > after_overload,
        "limit {recovered} after recovery, {after_overload} after overload"
    );
    eprintln!(
        "limit: start {start}, after overload {after_overload}, recovered {recovered}; admitted p95 (last 5 s) {late_p95:?}; admitted {} refused {}",
        over.ok.len(),
        over.refused
    );
}
