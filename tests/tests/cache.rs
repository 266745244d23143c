//! The response cache through the real gateway against `mock-upstream`:
//! hit, miss, Age, no-store/private, Vary, Authorization, coalescing,
//! stale-if-error, stale-while-revalidate and purge on the admin listener.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use e2e::harness::{self, client, config, get, send, start_gateway, Got, TestClient};
use e2e::mock::{Fault, MockOptions, MockUpstream};
use http::Request;
use http_body_util::Full;

/// The admin token of every gateway here (admin writes need one).
const ADMIN_TOKEN_ENV: &str = "GW_E2E_CACHE_ADMIN_TOKEN";
const ADMIN_TOKEN: &str = "cache-e2e-admin-token-0123456789abcdef";

fn cache_config(m: &MockUpstream, route_cache: &str, extra: &str) -> gateway::Config {
    // Same value from every test: setting it concurrently is harmless.
    std::env::set_var(ADMIN_TOKEN_ENV, ADMIN_TOKEN);
    config(
        "",
        &format!(
            r#"
            [admin]
            token_env = "{ADMIN_TOKEN_ENV}"
            [cache]
            max_size = "1MiB"
            [upstreams.mock]
            endpoints = ["{}"]
            [[routes]]
            name = "cached"
            prefix = "/"
            upstream = "mock"
            cache = {route_cache}
            {extra}
            "#,
            m.addr()
        ),
    )
}

async fn setup(route_cache: &str) -> (MockUpstream, gateway::Handle, TestClient) {
    harness::init_logs();
    let m = MockUpstream::start(MockOptions::default()).await.unwrap();
    let gw = start_gateway(cache_config(&m, route_cache, "")).await;
    (m, gw, client())
}

async fn get_with(c: &TestClient, gw: &gateway::Handle, path: &str, h: &[(&str, &str)]) -> Got {
    let mut b = Request::get(format!("http://{}{path}", gw.proxy_addr));
    for (k, v) in h {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::default()).unwrap()).await
}

#[tokio::test]
async fn miss_then_hit_with_age_and_cache_status() {
    let (m, gw, c) = setup(r#"{ ttl = "30s" }"#).await;
    let first = get(&c, gw.proxy_addr, "/cache/60").await;
    assert_eq!(first.header("x-cache"), "MISS");
    assert_eq!(first.header("cache-status"), "gateway; fwd=miss; stored");
    let second = get(&c, gw.proxy_addr, "/cache/60").await;
    assert_eq!(second.header("x-cache"), "HIT");
    assert!(second
        .header("cache-status")
        .starts_with("gateway; hit; ttl="));
    assert_eq!(second.header("age"), "0");
    assert_eq!(second.body, first.body);
    assert_eq!(m.hits("/cache"), 1);
    // HEAD is answered from the stored GET, without a body.
    let head = send(
        &c,
        Request::head(format!("http://{}/cache/60", gw.proxy_addr))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(head.header("x-cache"), "HIT");
    assert!(head.body.is_empty());
    assert_eq!(m.hits("/cache"), 1);
}

#[tokio::test]
async fn no_store_private_and_authorization_are_not_shared() {
    let (m, gw, c) = setup(r#"{ ttl = "30s" }"#).await;
    for path in [
        "/response-headers?Cache-Control=no-store",
        "/response-headers?Cache-Control=private%2C%20max-age%3D60",
    ] {
        for _ in 0..2 {
            assert_eq!(get(&c, gw.proxy_addr, path).await.header("x-cache"), "MISS");
        }
    }
    assert_eq!(m.hits("/response-headers"), 4);
    // A response to an authorized request is not shared...
    let auth = [("authorization", "Bearer abc")];
    let p = "/response-headers?Cache-Control=max-age%3D60";
    for _ in 0..2 {
        assert_eq!(get_with(&c, &gw, p, &auth).await.header("x-cache"), "MISS");
    }
    // ...unless it says public.
    let p = "/response-headers?Cache-Control=public%2C%20max-age%3D60";
    assert_eq!(get_with(&c, &gw, p, &auth).await.header("x-cache"), "MISS");
    assert_eq!(get_with(&c, &gw, p, &auth).await.header("x-cache"), "HIT");
    assert_eq!(m.hits("/response-headers"), 7);
    // The client can ask to bypass.
    let got = get_with(&c, &gw, p, &[("cache-control", "no-store")]).await;
    assert_eq!(got.header("x-cache"), "MISS");
    assert_eq!(m.hits("/response-headers"), 8);
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let (m, gw, c) = setup(r#"{ ttl = "30s" }"#).await;
    let p = "/response-headers?Cache-Control=max-age%3D60&Vary=Accept-Language";
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(get_with(&c, &gw, p, &en).await.header("x-cache"), "MISS");
    assert_eq!(get_with(&c, &gw, p, &en).await.header("x-cache"), "HIT");
    // Never the English variant for a French request.
    assert_eq!(get_with(&c, &gw, p, &fr).await.header("x-cache"), "MISS");
    assert_eq!(get_with(&c, &gw, p, &fr).await.header("x-cache"), "HIT");
    assert_eq!(m.hits("/response-headers"), 2);
    // One variant per URL is kept: French replaced English.
    assert_eq!(get_with(&c, &gw, p, &en).await.header("x-cache"), "MISS");
    assert_eq!(m.hits("/response-headers"), 3);
}

#[tokio::test]
async fn concurrent_misses_are_coalesced_into_one_upstream_request() {
    let (m, gw, _) = setup(r#"{ ttl = "30s" }"#).await;
    let addr = gw.proxy_addr;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = client();
            tokio::spawn(async move { get(&c, addr, "/delay/300").await })
        })
        .collect();
    let mut x = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status(), 200);
        x.push(got.header("x-cache").to_owned());
    }
    assert_eq!(m.hits("/delay"), 1, "{x:?}");
    assert_eq!(x.iter().filter(|s| *s == "MISS").count(), 1, "{x:?}");
}

#[tokio::test]
async fn stale_if_error_and_stale_while_revalidate() {
    let (m, gw, c) = setup(r#"{ ttl = "30s", stale_if_error = "60s" }"#).await;
    let first = get(&c, gw.proxy_addr, "/cache/1").await;
    assert_eq!(first.json()["served"], 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    m.set_fault(Fault {
        path_prefix: "/cache".into(),
        error_rate: 1.0,
        status: 503,
        ..Default::default()
    });
    let stale = get(&c, gw.proxy_addr, "/cache/1").await;
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.header("x-cache"), "STALE");
    assert!(stale
        .header("cache-status")
        .contains("fwd=stale; fwd-status=503"));
    assert_eq!(stale.json()["served"], 1);
    assert_eq!(m.hits("/cache"), 2);

    // stale-while-revalidate: served stale at once, refreshed behind.
    m.clear_faults();
    let p = "/response-headers?Cache-Control=max-age%3D1%2C%20stale-while-revalidate%3D30";
    assert_eq!(get(&c, gw.proxy_addr, p).await.header("x-cache"), "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&c, gw.proxy_addr, p).await.header("x-cache"), "STALE");
    harness::wait_until("the background revalidation", || async {
        m.hits("/response-headers") == 2
    })
    .await;
    assert_eq!(get(&c, gw.proxy_addr, p).await.header("x-cache"), "HIT");
}

#[tokio::test]
async fn purge_by_prefix_and_key_on_the_admin_listener() {
    let (m, gw, c) = setup(r#"{ ttl = "30s" }"#).await;
    for p in ["/cache/60", "/cache/61", "/response-headers?a=1"] {
        get(&c, gw.proxy_addr, p).await;
        assert_eq!(get(&c, gw.proxy_addr, p).await.header("x-cache"), "HIT");
    }
    let purge = |q: &str| {
        Request::post(format!("http://{}/cache/purge?{q}", gw.admin_addr))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(Full::default())
            .unwrap()
    };
    let got = send(&c, purge("prefix=%2Fcache")).await;
    assert_eq!(got.json()["purged"], 2);
    let got = send(&c, purge("key=/response-headers")).await;
    assert_eq!(got.json()["purged"], 1);
    assert_eq!(
        get(&c, gw.proxy_addr, "/cache/60").await.header("x-cache"),
        "MISS"
    );
    assert_eq!(m.hits("/cache"), 3);
    assert_eq!(send(&c, purge("")).await.status(), 400);
}

#[tokio::test]
async fn cached_responses_survive_a_reload_unless_their_route_changed() {
    let (m, gw, c) = setup(r#"{ ttl = "30s" }"#).await;
    assert_eq!(
        get(&c, gw.proxy_addr, "/cache/60").await.header("x-cache"),
        "MISS"
    );
    assert_eq!(
        get(&c, gw.proxy_addr, "/cache/60").await.header("x-cache"),
        "HIT"
    );
    // The same config, then another route added: still a hit.
    let same = cache_config(&m, r#"{ ttl = "30s" }"#, "");
    gw.shared().apply(same).unwrap();
    assert_eq!(
        get(&c, gw.proxy_addr, "/cache/60").await.header("x-cache"),
        "HIT"
    );
    let other = r#"
        [[routes]]
        name = "other"
        prefix = "/other"
        upstream = "mock"
        cache = { ttl = "5s" }
    "#;
    gw.shared()
        .apply(cache_config(&m, r#"{ ttl = "30s" }"#, other))
        .unwrap();
    assert_eq!(
        get(&c, gw.proxy_addr, "/cache/60").await.header("x-cache"),
        "HIT"
    );
    assert_eq!(m.hits("/cache"), 1);
    // This route's cache settings changed: its entries are dropped.
    gw.shared()
        .apply(cache_config(&m, r#"{ ttl = "20s" }"#, other))
        .unwrap();
    assert_eq!(
        get(&c, gw.proxy_addr, "/cache/60").await.header("x-cache"),
        "MISS"
    );
    assert_eq!(m.hits("/cache"), 2);
}

#[tokio::test]
async fn the_redis_tier_is_shared_by_two_gateways_and_optional_when_redis_dies() {
    harness::init_logs();
    let m = MockUpstream::start(MockOptions::default()).await.unwrap();
    let redis = harness::RedisServer::start(harness::free_port()).await;
    let prefix = format!("gw-e2e-cache:{}:{}:", std::process::id(), fastrand::u64(..));
    let cfg = || {
        cache_config(
            &m,
            r#"{ ttl = "30s" }"#,
            &format!(
                "[cache.redis]\nurl = \"redis://127.0.0.1:{}\"\nprefix = \"{prefix}\"\ntimeout = \"200ms\"",
                redis.port
            ),
        )
    };
    let (a, b) = (start_gateway(cfg()).await, start_gateway(cfg()).await);
    // The cache key includes the host: replicas behind one name share it.
    const HOST: &[(&str, &str)] = &[("host", "api.example")];
    let c = client();
    let count = "return #redis.call('KEYS', ARGV[1])";
    let pattern = format!("{prefix}*");
    let stored = || redis.cli(&["EVAL", count, "0", &pattern]);

    // Stored through A (in memory, and in Redis behind the response)...
    let first = get_with(&c, &a, "/cache/60", HOST).await;
    assert_eq!(first.header("x-cache"), "MISS");
    harness::wait_until("the entry in redis", || async { stored() == "1" }).await;
    // ...expiring in Redis with the entry (`/cache/60` says max-age=60; no
    // stale use allowed).
    let pttl = "return redis.call('PTTL', redis.call('KEYS', ARGV[1])[1])";
    let ms: u64 = redis.cli(&["EVAL", pttl, "0", &pattern]).parse().unwrap();
    assert!((40_000..=60_000).contains(&ms), "{ms}");
    // ...is a hit on B, whose memory never saw it; then B has it locally.
    let on_b = get_with(&c, &b, "/cache/60", HOST).await;
    assert_eq!(on_b.header("x-cache"), "HIT");
    assert!(
        on_b.header("cache-status").ends_with("; detail=shared"),
        "{}",
        on_b.header("cache-status")
    );
    assert_eq!(on_b.body, first.body);
    let again = get_with(&c, &b, "/cache/60", HOST).await;
    assert_eq!(again.header("x-cache"), "HIT");
    assert!(!again.header("cache-status").contains("detail=shared"));
    assert_eq!(m.hits("/cache"), 1);

    // A purge removes the entry from Redis too.
    let purge = Request::post(format!(
        "http://{}/cache/purge?prefix=%2Fcache",
        a.admin_addr
    ))
    .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
    .body(Full::default())
    .unwrap();
    let got = send(&c, purge).await.json();
    assert_eq!(got["purged"], 1);
    assert_eq!(got["purged_redis"], 1);
    assert_eq!(stored(), "0");

    // Redis gone: B still answers (a miss, then from its own memory), and
    // counts the failed calls.
    drop(redis);
    let miss = get_with(&c, &b, "/cache/61", HOST).await;
    assert_eq!((miss.status(), miss.header("x-cache")), (200, "MISS"));
    let hit = get_with(&c, &b, "/cache/61", HOST).await;
    assert_eq!((hit.status(), hit.header("x-cache")), (200, "HIT"));
    assert_eq!(m.hits("/cache"), 2);
    harness::wait_until("the failures counted", || async {
        let text = harness::metrics_text(&c, b.admin_addr).await;
        harness::sample(&text, r#"gateway_redis_errors_total{op="cache"}"#)
            .is_some_and(|n| n >= 2.0)
    })
    .await;
    let ready = get(&c, b.admin_addr, "/ready").await.json();
    assert!(
        ready["cache"]["redis_failures"].as_u64().unwrap() >= 2,
        "{ready}"
    );
}
