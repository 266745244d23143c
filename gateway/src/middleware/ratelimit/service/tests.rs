#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::config::RateLimitKey;
use crate::context::{ClientAddr, RequestContext};

type Stub = tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

fn stub(hits: Arc<AtomicUsize>) -> Stub {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |_req: Request<Body>| {
        hits.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, BoxError>(Response::new(Body::Empty)) }
    }))
}

fn policy(name: &str, key: RateLimitKey, limit: u32, window: Duration) -> Policy {
    let cfg = RateLimitPolicyConfig {
        name: name.into(),
        key,
        limit,
        window,
        store: RateLimitStore::Local,
    };
    Policy::new(&cfg, Arc::new(LocalStore::new(1000)), None)
}

/// Waits for `s` to be ready, then sends it a request from `ip`.
async fn call<S>(s: &mut S, ip: &str) -> Result<S::Response, S::Error>
where
    S: Service<Request<Body>>,
{
    s.ready().await?.call(req(ip)).await
}

fn req(ip: &str) -> Request<Body> {
    let mut r = Request::get("/x").body(Body::Empty).unwrap();
    r.extensions_mut().insert(RequestContext::direct(
        &ClientAddr::new(format!("{ip}:1000").parse().unwrap()),
        http::HeaderValue::from_static("id"),
    ));
    r
}

#[tokio::test(start_paused = true)]
async fn over_the_limit_is_refused_with_headers_and_never_reaches_inner() {
    let hits = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::new(RoutePolicies::new(
        "r",
        vec![
            policy("per-ip", RateLimitKey::ClientIp, 3, Duration::from_secs(60)),
            policy("route", RateLimitKey::Route, 100, Duration::from_secs(1)),
        ],
    ));
    let mut s = layer.layer(stub(hits.clone()));
    for i in 0..3u32 {
        let resp = call(&mut s, "10.0.0.1").await.unwrap();
        let h = resp.headers();
        assert_eq!(
            h["ratelimit-policy"],
            "\"per-ip\";q=3;w=60, \"route\";q=100;w=1"
        );
        assert_eq!(h["x-ratelimit-limit"], "3");
        assert_eq!(h["x-ratelimit-remaining"], (2 - i).to_string().as_str());
        assert!(h["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with(&format!("\"per-ip\";r={};t=", 2 - i)));
    }
    let err = call(&mut s, "10.0.0.1").await.unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("RateLimited");
    assert_eq!(limited.policy, "per-ip");
    // 3 per 60 s: the next one fits in 20 s.
    assert_eq!(limited.retry_after, 20);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    // Another client has its own budget.
    call(&mut s, "10.0.0.2").await.unwrap();
    // And the first recovers once time passes.
    tokio::time::advance(Duration::from_secs(20)).await;
    call(&mut s, "10.0.0.1").await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn headers_survive_a_pending_inner_future_and_errors() {
    let slow =
        tower::util::BoxCloneSyncService::new(tower::service_fn(|req: Request<Body>| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if req.uri().path() == "/fail" {
                return Err::<Response<Body>, BoxError>(
                    crate::error::GatewayError::Overloaded.into(),
                );
            }
            Ok(Response::new(Body::Empty))
        }));
    let layer = RateLimitLayer::new(RoutePolicies::new(
        "r",
        vec![policy("p", RateLimitKey::Route, 5, Duration::from_secs(1))],
    ));
    let mut s = layer.layer(slow);
    let resp = call(&mut s, "10.0.0.1").await.unwrap();
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "4");
    let mut r = req("10.0.0.1");
    *r.uri_mut() = "/fail".parse().unwrap();
    let err = s.ready().await.unwrap().call(r).await.unwrap_err();
    let resp = crate::error::render(err.as_ref(), &http::HeaderValue::from_static("id"));
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "3");
}

/// A Redis limiter whose server is not there (a port just closed).
fn dead_redis(on_error: OnRedisError) -> Arc<RedisLimiter> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = crate::config::RedisConfig {
        url: format!("redis://127.0.0.1:{port}"),
        prefix: "t:".into(),
        timeout: Duration::from_millis(200),
        on_error,
        ca_file: None,
    };
    Arc::new(RedisLimiter::new(&cfg).unwrap())
}

fn redis_policy(redis: Arc<RedisLimiter>, limit: u32) -> RoutePolicies {
    let cfg = RateLimitPolicyConfig {
        name: "shared".into(),
        key: RateLimitKey::Route,
        limit,
        window: Duration::from_secs(60),
        store: RateLimitStore::Redis,
    };
    RoutePolicies::new(
        "r",
        vec![Policy::new(
            &cfg,
            Arc::new(LocalStore::new(100)),
            Some(redis),
        )],
    )
}

#[tokio::test]
async fn a_failed_shared_decision_is_marked_whatever_the_fallback_decides() {
    let id = http::HeaderValue::from_static("id");
    // local: the local limiter decides; allowed and refused are both marked.
    let hits = Arc::new(AtomicUsize::new(0));
    let redis = dead_redis(OnRedisError::Local);
    let mut s = RateLimitLayer::new(redis_policy(redis.clone(), 1)).layer(stub(hits.clone()));
    let resp = call(&mut s, "10.0.0.1").await.unwrap();
    assert_eq!(
        resp.extensions().get::<LimiterFailed>(),
        Some(&LimiterFailed)
    );
    let err = call(&mut s, "10.0.0.1").await.unwrap_err();
    let resp = crate::error::render(err.as_ref(), &id);
    assert_eq!(resp.status(), 429);
    assert!(resp.extensions().get::<LimiterFailed>().is_some());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(redis.failures(), 2);
    // fail_open: passes, marked.
    let mut s = RateLimitLayer::new(redis_policy(dead_redis(OnRedisError::FailOpen), 1))
        .layer(stub(hits.clone()));
    for _ in 0..2 {
        let resp = call(&mut s, "10.0.0.1").await.unwrap();
        assert!(resp.extensions().get::<LimiterFailed>().is_some());
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    // fail_closed: 503 without reaching the inner service, marked.
    let mut s = RateLimitLayer::new(redis_policy(dead_redis(OnRedisError::FailClosed), 1))
        .layer(stub(hits.clone()));
    let err = call(&mut s, "10.0.0.1").await.unwrap_err();
    let resp = crate::error::render(err.as_ref(), &id);
    assert_eq!(resp.status(), 503);
    assert!(resp.extensions().get::<LimiterFailed>().is_some());
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    // A purely local decision is never marked.
    let mut s = RateLimitLayer::new(RoutePolicies::new(
        "r",
        vec![policy("p", RateLimitKey::Route, 1, Duration::from_secs(60))],
    ))
    .layer(stub(hits));
    let resp = call(&mut s, "10.0.0.1").await.unwrap();
    assert!(resp.extensions().get::<LimiterFailed>().is_none());
    let err = call(&mut s, "10.0.0.1").await.unwrap_err();
    let resp = crate::error::render(err.as_ref(), &id);
    assert_eq!(resp.status(), 429);
    assert!(resp.extensions().get::<LimiterFailed>().is_none());
}
