//! Routes with several rate-limit policies, in process and in Redis,
//! through the real gateway and its own `redis-server`: a refused request
//! is charged to no policy (the in-process ones, and the Redis ones, which
//! one script decides all or none), and a 429's `Retry-After` is one every
//! policy admits a retry at. `RateLimit` is parsed with `sfv`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::harness::{self, client, config, free_port, get, start_gateway, Got, RedisServer};
use e2e::mock::{MockOptions, MockUpstream};
use sfv::{Item, List, ListEntry, Parser};

/// A unique Redis key prefix per test run.
fn prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("gw-e2e-multi:{test}:{}:{nanos}:", std::process::id())
}

/// The members of `RateLimit` as (name, r, t).
fn members(got: &Got) -> Vec<(String, i64, Option<i64>)> {
    let field = got.header("ratelimit");
    let list: List = Parser::new(field)
        .parse()
        .unwrap_or_else(|e| panic!("RateLimit {field:?}: {e}"));
    list.into_iter()
        .map(|m| match m {
            ListEntry::Item(Item {
                bare_item, params, ..
            }) => {
                let int = |k: &str| {
                    params
                        .iter()
                        .find(|(n, _)| n.as_str() == k)
                        .and_then(|(_, v)| v.as_integer())
                        .map(i64::from)
                };
                let name = bare_item.as_string().unwrap().as_str().to_owned();
                (name, int("r").unwrap(), int("t"))
            }
            ListEntry::InnerList(_) => panic!("inner list in {field:?}"),
        })
        .collect()
}

fn retry_after(got: &Got) -> u64 {
    got.header("retry-after").parse().unwrap()
}

async fn gateway(redis: u16, test: &str, m: SocketAddr, routes: &str) -> gateway::Handle {
    start_gateway(config(
        "",
        &format!(
            r#"
            [rate_limit.redis]
            url = "redis://127.0.0.1:{redis}"
            prefix = "{}"
            timeout = "2s"
            on_error = "fail_closed"
            [upstreams.mock]
            endpoints = ["{m}"]
            {routes}
            "#,
            prefix(test)
        ),
    ))
    .await
}

/// Two Redis policies: "per-client" = 2 per 60 s before "burst" = 1 per
/// 2 s. The refusal leaves "per-client" at r=1, its `Retry-After` covers
/// every member at r=0, and a retry then passes. Sleeps about 2 s.
#[tokio::test]
async fn redis_policies_a_429_is_charged_to_none_and_its_retry_after_holds() {
    harness::init_logs();
    let m = MockUpstream::start(MockOptions::default()).await.unwrap();
    let port = free_port();
    let redis = RedisServer::start(port).await;
    let gw = gateway(
        port,
        "retry",
        m.addr(),
        r#"
        [[routes]]
        name = "limited"
        prefix = "/"
        upstream = "mock"
        rate_limits = [
            { name = "per-client", key = "client_ip", limit = 2, window = "60s", store = "redis" },
            { name = "burst", key = "route", limit = 1, window = "2s", store = "redis" },
        ]
        "#,
    )
    .await;
    let c = client();
    let started = tokio::time::Instant::now();
    assert_eq!(get(&c, gw.proxy_addr, "/headers").await.status(), 200);
    let refused = get(&c, gw.proxy_addr, "/headers").await;
    assert_eq!(
        refused.status(),
        429,
        "the second request came {:?} after the first: over the 2 s of \"burst\"?",
        started.elapsed()
    );
    let rl = members(&refused);
    assert_eq!(rl[0].0, "per-client");
    assert_eq!(rl[0].1, 1, "charged for a refused request: {rl:?}");
    let retry = retry_after(&refused);
    for (name, r, t) in &rl {
        if *r == 0 {
            let t = t.unwrap_or_else(|| panic!("{name} at r=0 without t"));
            assert!(
                retry >= t.unsigned_abs(),
                "Retry-After {retry} earlier than {name}'s t={t}"
            );
        }
    }
    // Both keys are in Redis, and only the admitted request was counted:
    // "per-client" is one interval (30 s) ahead, not two.
    let keys = redis.cli(&["--scan", "--pattern", "gw-e2e-multi:retry:*"]);
    assert_eq!(keys.lines().count(), 2, "{keys}");
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let again = get(&c, gw.proxy_addr, "/headers").await;
    assert_eq!(
        again.status(),
        200,
        "a retry after Retry-After {retry} was refused: {:?}",
        again.header("ratelimit")
    );
    assert_eq!(members(&again)[0].1, 0);
    assert_eq!(m.hits("/headers"), 2);
}

/// Mixed stores, each order: an in-process policy listed before a Redis
/// one that refuses, and a Redis policy before an in-process one that
/// refuses. Refused requests leave the other policy's quota as it was.
#[tokio::test]
async fn mixed_stores_a_refused_request_is_charged_to_none() {
    harness::init_logs();
    let m = MockUpstream::start(MockOptions::default()).await.unwrap();
    let port = free_port();
    let _redis = RedisServer::start(port).await;
    let gw = gateway(
        port,
        "mixed",
        m.addr(),
        r#"
        [[routes]]
        name = "local-first"
        prefix = "/headers"
        upstream = "mock"
        rate_limits = [
            { name = "local", key = "client_ip", limit = 3, window = "3600s" },
            { name = "shared", key = "route", limit = 1, window = "3600s", store = "redis" },
        ]
        [[routes]]
        name = "redis-first"
        prefix = "/"
        upstream = "mock"
        rate_limits = [
            { name = "shared", key = "client_ip", limit = 3, window = "3600s", store = "redis" },
            { name = "local", key = "route", limit = 1, window = "3600s" },
        ]
        "#,
    )
    .await;
    let c = client();
    for (path, refuser) in [("/headers", "shared"), ("/api/hello", "local")] {
        let ok = get(&c, gw.proxy_addr, path).await;
        assert_eq!(ok.status(), 200, "{path}");
        assert_eq!(members(&ok)[0].1, 2, "{path}");
        for _ in 0..3 {
            let refused = get(&c, gw.proxy_addr, path).await;
            assert_eq!(refused.status(), 429, "{path}");
            let rl = members(&refused);
            assert_eq!(rl[1].0, refuser);
            assert_eq!(rl[1].1, 0, "{path}: {rl:?}");
            // The first policy still has two of three.
            assert_eq!(rl[0].1, 2, "{path}: charged for a refused request: {rl:?}");
            // The refusing policy frees a unit in an hour.
            assert!(retry_after(&refused) >= 3599, "{path}");
        }
    }
    assert_eq!(m.hits("/headers"), 1);
    assert_eq!(m.hits("/api/hello"), 1);
}
