//! Retries, circuit breaking and load shedding through the real gateway
//! against `mock-upstream` with injected faults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use e2e::harness::{self, client, config, get, send, start_gateway, TestClient};
use e2e::mock::{Fault, MockOptions, MockUpstream};
use http::Request;
use http_body_util::Full;
use tokio::time::Instant;

async fn mock(id: &str) -> MockUpstream {
    MockUpstream::start(MockOptions {
        id: id.into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn failing(prefix: &str) -> Fault {
    Fault {
        path_prefix: prefix.into(),
        error_rate: 1.0,
        status: 503,
        ..Default::default()
    }
}

fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn gw_config(endpoints: &[SocketAddr], upstream_extra: &str, route_extra: &str) -> gateway::Config {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    config(
        "",
        &format!(
            r#"
            [upstreams.pool]
            endpoints = [{}]
            {upstream_extra}
            [[routes]]
            name = "all"
            prefix = "/"
            upstream = "pool"
            {route_extra}
            "#,
            eps.join(", ")
        ),
    )
}

const RETRY: &str = r#"retry = { attempts = 3, backoff = "1ms", max_backoff = "5ms" }"#;

async fn post(c: &TestClient, addr: SocketAddr, path: &str) -> u16 {
    let req = Request::post(format!("http://{addr}{path}"))
        .body(Full::new(bytes::Bytes::from_static(b"{\"x\":1}")))
        .unwrap();
    send(c, req).await.status()
}

#[tokio::test]
async fn a_503_is_retried_on_the_second_endpoint() {
    harness::init_logs();
    let (a, b) = (mock("a").await, mock("b").await);
    a.set_fault(failing("/headers"));
    let gw = start_gateway(gw_config(&[a.addr(), b.addr()], "", RETRY)).await;
    let c = client();
    for _ in 0..10 {
        let got = get(&c, gw.proxy_addr, "/headers").await;
        assert_eq!(got.status(), 200);
        assert_eq!(got.header("x-upstream-id"), "b");
    }
    assert_eq!(b.hits("/headers"), 10);
    // Every attempt that hit a was retried once, on b, never on a again.
    let on_a = a.hits("/headers");
    assert!((1..=10).contains(&on_a), "{on_a}");
    // Each of those retries is counted.
    let retries = metric(
        &c,
        gw.admin_addr,
        r#"gateway_retries_total{upstream="pool"}"#,
    )
    .await;
    assert_eq!(retries, Some(on_a as f64));
}

/// One sample of the gateway's `/metrics`.
async fn metric(c: &harness::TestClient, admin: std::net::SocketAddr, series: &str) -> Option<f64> {
    harness::sample(&harness::metrics_text(c, admin).await, series)
}

#[tokio::test]
async fn a_post_that_reached_the_upstream_is_not_retried_but_a_refused_connect_is() {
    harness::init_logs();
    let (a, b) = (mock("a").await, mock("b").await);
    a.set_fault(failing("/delay"));
    let gw = start_gateway(gw_config(&[a.addr(), b.addr()], "", RETRY)).await;
    let c = client();
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..10 {
            v.push(post(&c, gw.proxy_addr, "/delay/0").await);
        }
        v
    };
    // Each POST reached exactly one upstream exactly once.
    assert_eq!(a.hits("/delay") + b.hits("/delay"), 10);
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count() as u64,
        a.hits("/delay")
    );
    // A refused connection never reached anyone: safe to retry even a POST.
    let before = b.hits("/delay");
    let gw = start_gateway(gw_config(&[closed_port(), b.addr()], "", RETRY)).await;
    for _ in 0..6 {
        assert_eq!(post(&c, gw.proxy_addr, "/delay/0").await, 200);
    }
    assert_eq!(b.hits("/delay"), before + 6);
}

#[tokio::test]
async fn an_empty_budget_stops_retries() {
    harness::init_logs();
    let (a, b) = (mock("a").await, mock("b").await);
    a.set_fault(failing("/headers"));
    let gw = start_gateway(gw_config(
        &[a.addr(), b.addr()],
        "",
        r#"retry = { attempts = 3, backoff = "1ms", max_backoff = "5ms", budget_ratio = 0.0, budget_min_per_sec = 0 }"#,
    ))
    .await;
    let c = client();
    let mut failed = 0;
    for _ in 0..10 {
        if get(&c, gw.proxy_addr, "/headers").await.status() == 503 {
            failed += 1;
        }
    }
    assert_eq!(
        a.hits("/headers") + b.hits("/headers"),
        10,
        "no retry at all"
    );
    assert_eq!(failed, a.hits("/headers"));
    let refused = metric(
        &c,
        gw.admin_addr,
        r#"gateway_retry_budget_exhausted_total{upstream="pool"}"#,
    )
    .await;
    assert_eq!(
        refused,
        Some(failed as f64),
        "every refused retry is counted"
    );
}

/// Longer than a refusal by the gateway itself can take, even on a loaded
/// machine; much shorter than the waits it is told apart from.
const FAST: Duration = Duration::from_secs(2);

fn circuit_open(got: &harness::Got) -> bool {
    got.status() == 503
        && got.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("circuit open"))
}

#[tokio::test]
async fn breaker_opens_sheds_at_once_then_a_probe_closes_it() {
    harness::init_logs();
    let a = mock("a").await;
    a.set_fault(failing("/headers"));
    // Open times long enough that the checks below fit in them under load;
    // every transition is waited for, never slept for.
    let gw = start_gateway(gw_config(
        &[a.addr()],
        r#"circuit_breaker = { consecutive_failures = 3, open_time = "2s", max_open_time = "8s" }"#,
        "",
    ))
    .await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, gw.proxy_addr, "/headers").await.status(), 503);
    }
    assert_eq!(a.hits("/headers"), 3);
    // Open: refused by the gateway itself, at once, with Retry-After.
    for _ in 0..5 {
        let t = Instant::now();
        let got = get(&c, gw.proxy_addr, "/headers").await;
        assert!(circuit_open(&got), "{:?}", got.body);
        let retry: u64 = got.header("retry-after").parse().unwrap();
        assert!((1..=2).contains(&retry), "{retry}");
        assert!(t.elapsed() < FAST, "{:?}", t.elapsed());
    }
    assert_eq!(a.hits("/headers"), 3);
    // Half-open after 2 s: one probe reaches the upstream, still failing,
    // and the breaker opens again (for 4 s).
    let addr = gw.proxy_addr;
    harness::wait_until("the half-open probe", || {
        let c = c.clone();
        let a = &a;
        async move {
            get(&c, addr, "/headers").await;
            a.hits("/headers") == 4
        }
    })
    .await;
    assert!(circuit_open(&get(&c, addr, "/headers").await));
    assert_eq!(a.hits("/headers"), 4);
    // Recovered: the next probe closes the breaker.
    a.clear_faults();
    harness::wait_until("a probe to close the breaker", || {
        let c = c.clone();
        async move { get(&c, addr, "/headers").await.status() == 200 }
    })
    .await;
    for _ in 0..5 {
        assert_eq!(get(&c, addr, "/headers").await.status(), 200);
    }
    assert_eq!(a.hits("/headers"), 4 + 1 + 5);
}

#[tokio::test]
async fn max_inflight_sheds_the_excess_fast() {
    harness::init_logs();
    let a = mock("a").await;
    let gw = start_gateway(gw_config(&[a.addr()], "", "max_inflight = 2")).await;
    let addr = gw.proxy_addr;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let c = client();
            tokio::spawn(async move { get(&c, addr, "/delay/3000").await.status() })
        })
        .collect();
    harness::wait_until("both slow requests at the upstream", || async {
        a.hits("/delay") == 2
    })
    .await;
    let c = client();
    for _ in 0..3 {
        let t = Instant::now();
        let got = get(&c, addr, "/delay/3000").await;
        assert_eq!(got.status(), 503);
        assert_eq!(got.header("retry-after"), "1");
        assert!(t.elapsed() < FAST, "{:?}", t.elapsed());
    }
    // Shed while both slots were still taken: not queued behind them.
    assert!(slow.iter().all(|t| !t.is_finished()));
    // The saturation gauges see the full route (the GatewaySaturation alert
    // divides one by the other).
    let text = harness::metrics_text(&c, gw.admin_addr).await;
    let inflight = r#"gateway_route_inflight_requests{route="all"}"#;
    assert_eq!(harness::sample(&text, inflight), Some(2.0), "{text}");
    assert_eq!(
        harness::sample(&text, r#"gateway_route_inflight_limit{route="all"}"#),
        Some(2.0)
    );
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    assert_eq!(a.hits("/delay"), 2);
    // Slots came back.
    assert_eq!(get(&c, addr, "/delay/0").await.status(), 200);
    harness::poll_until("the route's in-flight gauge back to 0", || async {
        let t = harness::metrics_text(&c, gw.admin_addr).await;
        (harness::sample(&t, inflight) == Some(0.0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_open_breaker_stays_open_across_a_reload() {
    harness::init_logs();
    let a = mock("a").await;
    a.set_fault(failing("/headers"));
    // A long open time: the breaker cannot half-open during the test.
    let breaker = r#"circuit_breaker = { consecutive_failures = 3, open_time = "60s", max_open_time = "60s" }"#;
    let base = gw_config(&[a.addr()], breaker, "");
    let gw = start_gateway(base.clone()).await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, gw.proxy_addr, "/headers").await.status(), 503);
    }
    assert!(circuit_open(&get(&c, gw.proxy_addr, "/headers").await));
    a.clear_faults();
    // The same config, then a change elsewhere (a route timeout): still open.
    gw.shared().apply(base.clone()).unwrap();
    assert!(circuit_open(&get(&c, gw.proxy_addr, "/headers").await));
    gw.shared()
        .apply(gw_config(&[a.addr()], breaker, r#"timeout = "30s""#))
        .unwrap();
    assert!(circuit_open(&get(&c, gw.proxy_addr, "/headers").await));
    assert_eq!(a.hits("/headers"), 3);
    // The breaker's own settings changed: it starts closed.
    let changed = r#"circuit_breaker = { consecutive_failures = 4, open_time = "60s", max_open_time = "60s" }"#;
    gw.shared()
        .apply(gw_config(&[a.addr()], changed, ""))
        .unwrap();
    assert_eq!(get(&c, gw.proxy_addr, "/headers").await.status(), 200);
    assert_eq!(a.hits("/headers"), 4);
}
