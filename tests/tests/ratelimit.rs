//! Rate limiting through the real gateway: headers, 429, recovery,
//! exactness under concurrency (local, and shared by two gateways through
//! Redis), and Redis going away and coming back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use bytes::Bytes;
use e2e::harness::{
    self, client, config, free_port, get, start_gateway, wait_until, RedisServer, WAIT,
};
use e2e::mock::{MockOptions, MockUpstream};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

async fn mock() -> MockUpstream {
    MockUpstream::start(MockOptions::default()).await.unwrap()
}

/// A unique Redis key prefix per test run.
fn prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("gw-e2e:{test}:{}:{nanos}:", std::process::id())
}

fn limited(m: SocketAddr, limits: &str, redis: &str) -> gateway::Config {
    config(
        "",
        &format!(
            r#"
            {redis}
            [upstreams.mock]
            endpoints = ["{m}"]
            [[routes]]
            name = "limited"
            prefix = "/headers"
            upstream = "mock"
            rate_limits = [{limits}]
            [[routes]]
            name = "free"
            prefix = "/"
            upstream = "mock"
            "#
        ),
    )
}

/// Opens `n` HTTP/1.1 connections first, then sends one GET on each at
/// once; returns the statuses.
async fn burst(addrs: &[SocketAddr], n: usize, path: &str) -> Vec<u16> {
    let mut senders = Vec::new();
    for i in 0..n {
        let addr = addrs[i % addrs.len()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tx, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        senders.push((addr, tx));
    }
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|(addr, mut tx)| {
            let start = start.clone();
            let path = path.to_owned();
            tokio::spawn(async move {
                let req = Request::get(format!("http://{addr}{path}"))
                    .header("host", addr.to_string())
                    .body(Empty::new())
                    .unwrap();
                start.wait().await;
                let resp = tokio::time::timeout(WAIT, tx.send_request(req))
                    .await
                    .unwrap()
                    .unwrap();
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                status
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// A decision refused or passed "at once" takes less than this, even on a
/// loaded machine (the Redis timeouts in these tests are 50-100 ms; a
/// reconnect loop or a wait for the upstream would take seconds).
const FAST: Duration = Duration::from_secs(2);

/// The series the `RateLimiterBackendErrors` alert of monitoring/ watches.
const BACKEND_ERROR: &str =
    r#"gateway_ratelimit_decisions_total{route="limited",decision="backend_error"}"#;

/// Waits until the sample `series` of `/metrics` equals `want` (decisions
/// are counted when a response body is dropped, just after the client got
/// it), then checks it stays there.
async fn wait_metric(c: &harness::TestClient, admin: SocketAddr, series: &str, want: f64) {
    let c2 = c.clone();
    harness::poll_until(&format!("{series} == {want}"), || {
        let c = c2.clone();
        async move {
            let v = harness::sample(&harness::metrics_text(&c, admin).await, series);
            (v == Some(want)).then_some(())
        }
    })
    .await;
}

fn count(statuses: &[u16], s: u16) -> usize {
    statuses.iter().filter(|x| **x == s).count()
}

#[tokio::test]
async fn headers_on_every_response_429_with_retry_after_then_recovery() {
    harness::init_logs();
    let m = mock().await;
    let gw = start_gateway(limited(
        m.addr(),
        r#"{ name = "per-client", key = "client_ip", limit = 3, window = "1s" },
           { name = "route", key = "route", limit = 1000, window = "60s" }"#,
        "",
    ))
    .await;
    let c = client();
    for i in 0..3 {
        let got = get(&c, gw.proxy_addr, "/headers").await;
        assert_eq!(got.status(), 200);
        assert_eq!(
            got.header("ratelimit-policy"),
            r#""per-client";q=3;w=1, "route";q=1000;w=60"#
        );
        let rl = got.header("ratelimit");
        assert!(
            rl.starts_with(&format!(r#""per-client";r={};t="#, 2 - i))
                && rl.contains(r#""route";r="#),
            "{rl}"
        );
        assert_eq!(got.header("x-ratelimit-limit"), "3");
        assert_eq!(got.header("x-ratelimit-remaining"), (2 - i).to_string());
        assert!(!got.header("x-ratelimit-reset").is_empty());
    }
    let got = get(&c, gw.proxy_addr, "/headers").await;
    assert_eq!(got.status(), 429);
    let retry: u64 = got.header("retry-after").parse().unwrap();
    assert!(retry >= 1);
    let t: u64 = got
        .header("ratelimit")
        .split(";t=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= t, "Retry-After {retry} earlier than t={t}");
    assert_eq!(got.header("x-ratelimit-remaining"), "0");
    assert!(got.json()["error"].as_str().unwrap().contains("rate limit"));
    assert!(got.json()["request_id"].is_string());
    // The refused request never reached the upstream; the free route is free.
    assert_eq!(m.hits("/headers"), 3);
    assert!(get(&c, gw.proxy_addr, "/get")
        .await
        .header("ratelimit")
        .is_empty());
    // After the interval the client recovers.
    tokio::time::sleep(Duration::from_millis(1000 / 3 + 50)).await;
    assert_eq!(get(&c, gw.proxy_addr, "/headers").await.status(), 200);
}

#[tokio::test]
async fn local_limit_is_exact_under_concurrency() {
    harness::init_logs();
    let m = mock().await;
    let gw = start_gateway(limited(
        m.addr(),
        // 10 per minute: exact whatever the machine's load.
        r#"{ name = "per-client", key = "client_ip", limit = 10, window = "60s" }"#,
        "",
    ))
    .await;
    let t = Instant::now();
    let statuses = burst(&[gw.proxy_addr], 100, "/headers").await;
    let took = t.elapsed();
    println!("local: 100 concurrent requests in {took:?}");
    assert_eq!(count(&statuses, 200), 10, "{statuses:?} in {took:?}");
    assert_eq!(count(&statuses, 429), 90);
    assert_eq!(m.hits("/headers"), 10);
}

#[tokio::test]
async fn redis_limit_is_exact_across_two_gateway_processes() {
    harness::init_logs();
    let m = mock().await;
    let port = free_port();
    let _redis = RedisServer::start(port).await;
    // 10 per minute: exact whatever the machine's load (at 10 per second
    // a burst slower than 100 ms would rightly admit an 11th).
    let text = format!(
        r#"
        [rate_limit.redis]
        url = "redis://127.0.0.1:{port}"
        prefix = "{}"
        timeout = "2s"
        on_error = "fail_closed"
        [upstreams.mock]
        endpoints = ["{}"]
        [[routes]]
        name = "limited"
        prefix = "/headers"
        upstream = "mock"
        rate_limits = [{{ name = "shared", key = "route", limit = 10, window = "60s", store = "redis" }}]
        [[routes]]
        name = "local"
        prefix = "/api/hello"
        upstream = "mock"
        rate_limits = [{{ name = "own", key = "route", limit = 2, window = "60s" }}]
        "#,
        prefix("exact"),
        m.addr()
    );
    let path = std::env::temp_dir().join(format!(
        "gw-rl-two-{}-{}.toml",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&path, text).unwrap();
    let a = harness::GatewayProcess::spawn(Some(&path), &[]);
    let b = harness::GatewayProcess::spawn(Some(&path), &[]);
    let t = Instant::now();
    // Alternating: 50 requests on each process, all at once.
    let statuses = burst(&[a.addr, b.addr], 100, "/headers").await;
    let took = t.elapsed();
    println!("redis: 100 concurrent requests over two gateway processes in {took:?}");
    assert_eq!(count(&statuses, 200), 10, "{statuses:?} in {took:?}");
    assert_eq!(count(&statuses, 429), 90);
    assert_eq!(m.hits("/headers"), 10);
    // Each process counted its own share of the 10.
    let c = client();
    let allowed = r#"gateway_ratelimit_decisions_total{route="limited",decision="allowed"}"#;
    let mut total = 0.0;
    for admin in [a.admin, b.admin] {
        let text = harness::metrics_text(&c, admin).await;
        total += harness::sample(&text, allowed).unwrap_or(0.0);
    }
    assert_eq!(total, 10.0);

    // SIGHUP with the config unchanged: neither limit lets a new burst
    // through (the in-process state of the local one is kept too).
    let got: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(get(&c, a.addr, "/api/hello").await.status());
        }
        v
    };
    assert_eq!(got, [200, 200, 429]);
    a.signal("HUP");
    wait_until("the reload", || async { a.logged("config reloaded") }).await;
    assert_eq!(get(&c, a.addr, "/api/hello").await.status(), 429);
    assert_eq!(get(&c, a.addr, "/headers").await.status(), 429);
    assert_eq!(m.hits("/api/hello"), 2);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn redis_unreachable_falls_back_as_configured() {
    harness::init_logs();
    let m = mock().await;
    let dead = free_port();
    let c = client();
    for (policy, want) in [
        ("local", [200, 200, 429]),
        ("fail_open", [200, 200, 200]),
        ("fail_closed", [503, 503, 503]),
    ] {
        let gw = start_gateway(limited(
            m.addr(),
            r#"{ name = "p", key = "client_ip", limit = 2, window = "60s", store = "redis" }"#,
            &format!(
                "[rate_limit.redis]\nurl = \"redis://127.0.0.1:{dead}\"\ntimeout = \"50ms\"\non_error = \"{policy}\""
            ),
        ))
        .await;
        for w in want {
            let t = Instant::now();
            let got = get(&c, gw.proxy_addr, "/headers").await;
            assert_eq!(got.status(), w, "{policy}");
            // Bounded by the 50 ms timeout, not by a reconnect loop; the
            // bound is loose because the test machine may be loaded.
            assert!(t.elapsed() < FAST, "{policy}: {:?}", t.elapsed());
            if w == 503 {
                assert_eq!(got.header("retry-after"), "1");
            }
        }
        // Each of them is a backend_error decision, whatever the fallback did.
        wait_metric(&c, gw.admin_addr, BACKEND_ERROR, 3.0).await;
    }
}

#[tokio::test]
async fn redis_killed_mid_test_then_restarted() {
    harness::init_logs();
    let m = mock().await;
    let port = free_port();
    let redis = RedisServer::start(port).await;
    let gw = start_gateway(limited(
        m.addr(),
        r#"{ name = "p", key = "client_ip", limit = 3, window = "60s", store = "redis" }"#,
        &format!(
            "[rate_limit.redis]\nurl = \"redis://127.0.0.1:{port}\"\nprefix = \"{}\"\ntimeout = \"100ms\"\non_error = \"fail_closed\"",
            prefix("restart")
        ),
    ))
    .await;
    let c = client();
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(get(&c, gw.proxy_addr, "/headers").await.status());
        }
        v
    };
    assert_eq!(statuses, [200, 200, 200, 429]);
    drop(redis);
    // Down: refused fast (fail_closed), bounded by the timeout.
    for _ in 0..3 {
        let t = Instant::now();
        let got = get(&c, gw.proxy_addr, "/headers").await;
        assert_eq!(got.status(), 503);
        assert!(t.elapsed() < FAST, "{:?}", t.elapsed());
    }
    // Every failed decision is counted (reported on the admin listener).
    let ready = get(&c, gw.admin_addr, "/ready").await.json();
    assert!(
        ready["rate_limit_redis_failures"].as_u64().unwrap() >= 3,
        "{ready}"
    );
    // Back (empty: it kept no data): the gateway reconnects by itself.
    let _redis = RedisServer::start(port).await;
    let gw_addr = gw.proxy_addr;
    wait_until("the limiter to use redis again", || {
        let c = c.clone();
        async move { get(&c, gw_addr, "/headers").await.status() == 200 }
    })
    .await;
    let mut after = Vec::new();
    for _ in 0..3 {
        after.push(get(&c, gw.proxy_addr, "/headers").await.status());
    }
    assert_eq!(after, [200, 200, 429]);
    assert_eq!(m.hits("/headers"), 6);
}

#[tokio::test]
async fn redis_killed_backend_errors_are_counted_and_each_policy_applies() {
    harness::init_logs();
    let m = mock().await;
    let port = free_port();
    let redis = RedisServer::start(port).await;
    let c = client();
    let policies = ["local", "fail_open", "fail_closed"];
    let mut gws = Vec::new();
    for policy in policies {
        let gw = start_gateway(limited(
            m.addr(),
            r#"{ name = "p", key = "client_ip", limit = 2, window = "60s", store = "redis" }"#,
            &format!(
                "[rate_limit.redis]\nurl = \"redis://127.0.0.1:{port}\"\nprefix = \"{}\"\ntimeout = \"100ms\"\non_error = \"{policy}\"",
                prefix(policy)
            ),
        ))
        .await;
        // Up: one request counted in Redis (1 of 2 used).
        let got = get(&c, gw.proxy_addr, "/headers").await;
        assert_eq!(got.status(), 200, "{policy}");
        assert_eq!(got.header("x-ratelimit-remaining"), "1", "{policy}");
        gws.push(gw);
    }
    drop(redis);
    let want = [[200, 200, 429], [200, 200, 200], [503, 503, 503]];
    for ((policy, gw), want) in policies.iter().zip(&gws).zip(want) {
        let mut got = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            got.push(get(&c, gw.proxy_addr, "/headers").await.status());
            assert!(t.elapsed() < FAST, "{policy}: {:?}", t.elapsed());
        }
        // local: this process's own limiter (it had not counted the request
        // Redis did); fail_open: every request passes; fail_closed: 503.
        assert_eq!(got, want, "{policy}");
        // Exactly the decisions taken while Redis was down are backend
        // errors, under the name and label the alert in monitoring/ uses.
        wait_metric(&c, gw.admin_addr, BACKEND_ERROR, 3.0).await;
        let text = harness::metrics_text(&c, gw.admin_addr).await;
        let allowed = r#"gateway_ratelimit_decisions_total{route="limited",decision="allowed"}"#;
        assert_eq!(harness::sample(&text, allowed), Some(1.0), "{policy}");
        // Created at 0 with the config (the series exist before any event).
        let limited = r#"gateway_ratelimit_decisions_total{route="limited",decision="limited"}"#;
        assert_eq!(harness::sample(&text, limited), Some(0.0), "{policy}");
        let errors = harness::sample(&text, r#"gateway_redis_errors_total{op="ratelimit"}"#);
        assert!(errors.is_some_and(|e| e >= 3.0), "{policy}: {errors:?}");
    }
    let alert =
        std::fs::read_to_string(harness::workspace().join("monitoring/rules/gateway-alerts.yml"))
            .unwrap();
    assert!(alert.contains(r#"gateway_ratelimit_decisions_total{decision="backend_error"}"#));
    // The upstream saw what the policies let through: 1 + 2, 1 + 3, 1 + 0.
    assert_eq!(m.hits("/headers"), 8);
}

#[tokio::test]
async fn a_reload_keeps_the_state_of_unchanged_limits() {
    harness::init_logs();
    let m = mock().await;
    let limits =
        |n: u32| format!(r#"{{ name = "p", key = "client_ip", limit = {n}, window = "60s" }}"#);
    let base = limited(m.addr(), &limits(3), "");
    let gw = start_gateway(base.clone()).await;
    let c = client();
    let statuses = |n: usize| {
        let c = c.clone();
        let addr = gw.proxy_addr;
        async move {
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(get(&c, addr, "/headers").await.status());
            }
            v
        }
    };
    assert_eq!(statuses(4).await, [200, 200, 200, 429]);
    // The same config again: no fresh burst.
    gw.shared().apply(base.clone()).unwrap();
    assert_eq!(statuses(1).await, [429]);
    // Another route changed (and one added): this route keeps its state.
    let mut other = base.clone();
    other.routes[1].prefix = "/get".into();
    let mut extra = other.routes[1].clone();
    extra.name = "extra".into();
    extra.prefix = "/anything".into();
    other.routes.push(extra);
    gw.shared().apply(other.clone()).unwrap();
    assert_eq!(statuses(1).await, [429]);
    // This route's policy changed: its state starts afresh.
    let mut changed = limited(m.addr(), &limits(2), "");
    changed.routes[1] = other.routes[1].clone();
    gw.shared().apply(changed).unwrap();
    assert_eq!(statuses(3).await, [200, 200, 429]);
    assert_eq!(m.hits("/headers"), 5);
}

#[tokio::test]
async fn keys_by_subject_header_and_trusted_forwarded_for() {
    use jsonwebtoken::{EncodingKey, Header};
    harness::init_logs();
    let m = mock().await;
    let secret = std::env::temp_dir().join(format!("gw-rl-secret-{}", std::process::id()));
    std::fs::write(&secret, "ratelimit-test-secret-0123456789").unwrap();
    let gw = start_gateway(config(
        "",
        &format!(
            r#"
            [auth.t]
            [[auth.t.keys]]
            algorithms = ["HS256"]
            secret_file = "{}"
            [rate_limit]
            trusted_proxies = ["127.0.0.1"]
            [upstreams.mock]
            endpoints = ["{}"]
            [[routes]]
            name = "by-subject"
            prefix = "/headers"
            upstream = "mock"
            auth = {{ provider = "t" }}
            rate_limits = [{{ name = "per-user", key = "subject", limit = 2, window = "60s" }}]
            [[routes]]
            name = "by-key"
            prefix = "/api/hello"
            upstream = "mock"
            rate_limits = [{{ name = "per-key", key = {{ header = "X-Api-Key" }}, limit = 2, window = "60s" }}]
            [[routes]]
            name = "by-ip"
            prefix = "/health"
            upstream = "mock"
            rate_limits = [{{ name = "per-ip", key = "client_ip", limit = 2, window = "60s" }}]
            "#,
            secret.display(),
            m.addr()
        ),
    ))
    .await;
    let c = client();
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = |sub: &str| {
        jsonwebtoken::encode(
            &Header::default(),
            &serde_json::json!({ "sub": sub, "exp": exp }),
            &EncodingKey::from_secret(b"ratelimit-test-secret-0123456789"),
        )
        .unwrap()
    };
    let statuses = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let c = c.clone();
        let addr = gw.proxy_addr;
        async move {
            let mut out = Vec::new();
            for _ in 0..3 {
                let mut b = Request::get(format!("http://{addr}{path}"));
                for (k, v) in &headers {
                    b = b.header(*k, v);
                }
                let req = b.body(http_body_util::Full::<Bytes>::default()).unwrap();
                out.push(harness::send(&c, req).await.status());
            }
            out
        }
    };
    let bearer = |s: &str| vec![("authorization", format!("Bearer {}", token(s)))];
    assert_eq!(statuses("/headers", bearer("ann")).await, [200, 200, 429]);
    assert_eq!(statuses("/headers", bearer("bob")).await, [200, 200, 429]);
    let key = |k: &str| vec![("x-api-key", k.to_owned())];
    assert_eq!(statuses("/api/hello", key("k1")).await, [200, 200, 429]);
    assert_eq!(statuses("/api/hello", key("k2")).await, [200, 200, 429]);
    // The peer (127.0.0.1) is a trusted proxy: the client is the last
    // untrusted X-Forwarded-For hop, whatever the client wrote before it.
    let xff = |v: &str| vec![("x-forwarded-for", v.to_owned())];
    assert_eq!(
        statuses("/health", xff("6.6.6.6, 192.0.2.1")).await,
        [200, 200, 429]
    );
    assert_eq!(
        statuses("/health", xff("7.7.7.7, 192.0.2.1")).await,
        [429, 429, 429]
    );
    assert_eq!(statuses("/health", xff("192.0.2.2")).await, [200, 200, 429]);
}
