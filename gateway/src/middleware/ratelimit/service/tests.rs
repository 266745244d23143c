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

/// The `t` of every member of a `RateLimit` value with `r=0`, and of the
/// member named `refuser`, in whole seconds (parsed by hand: names here
/// are plain).
fn zero_member_ts(ratelimit: &str, refuser: &str) -> Vec<(String, u64)> {
    ratelimit
        .split(", ")
        .filter_map(|m| {
            let mut parts = m.split(';');
            let name = parts.next()?.trim_matches('"').to_owned();
            let (mut r, mut t) = (None, 0);
            for p in parts {
                match p.split_once('=') {
                    Some(("r", v)) => r = v.parse::<u64>().ok(),
                    Some(("t", v)) => t = v.parse().unwrap(),
                    _ => {}
                }
            }
            (r == Some(0) || name == refuser).then_some((name, t))
        })
        .collect()
}

/// The review's case: A = 2 per 10 s listed before B = 1 per 1 s, requests
/// at 0 s and 0.5 s. The refusal's `Retry-After` is no earlier than any
/// `t` of a member at `r=0`, and a retry at `Retry-After` is admitted.
#[tokio::test(start_paused = true)]
async fn retry_after_is_no_earlier_than_any_exhausted_policy_and_a_retry_then_passes() {
    let hits = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::new(RoutePolicies::new(
        "r",
        vec![
            policy("A", RateLimitKey::Route, 2, Duration::from_secs(10)),
            policy("B", RateLimitKey::Route, 1, Duration::from_secs(1)),
        ],
    ));
    let mut s = layer.layer(stub(hits.clone()));
    call(&mut s, "10.0.0.1").await.unwrap();
    tokio::time::advance(Duration::from_millis(500)).await;
    let err = call(&mut s, "10.0.0.1").await.unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("RateLimited");
    let rl = limited
        .headers
        .iter()
        .find(|(k, _)| k == "ratelimit")
        .map(|(_, v)| v.to_str().unwrap().to_owned())
        .unwrap();
    let zero = zero_member_ts(&rl, &limited.policy);
    assert!(!zero.is_empty(), "{rl}");
    for (name, t) in &zero {
        assert!(
            limited.retry_after >= *t,
            "Retry-After {} earlier than {name}'s t={t} in {rl}",
            limited.retry_after
        );
    }
    tokio::time::advance(Duration::from_secs(limited.retry_after)).await;
    let resp = call(&mut s, "10.0.0.1").await;
    assert!(
        resp.is_ok(),
        "a retry after Retry-After {} (RateLimit {rl}) was refused: {:?}",
        limited.retry_after,
        resp.err()
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// A request refused by one policy is charged to none: A = 3 per 60 s
/// listed before B = 1 per 1 s; two requests B refuses leave A's quota
/// whole, so once B has a unit again A still has two.
#[tokio::test(start_paused = true)]
async fn a_refused_request_is_charged_to_no_policy() {
    let hits = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::new(RoutePolicies::new(
        "r",
        vec![
            policy("A", RateLimitKey::ClientIp, 3, Duration::from_secs(60)),
            policy("B", RateLimitKey::Route, 1, Duration::from_secs(1)),
        ],
    ));
    let mut s = layer.layer(stub(hits.clone()));
    let resp = call(&mut s, "10.0.0.1").await.unwrap();
    assert!(resp.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"A\";r=2;"));
    for _ in 0..2 {
        tokio::time::advance(Duration::from_millis(100)).await;
        let err = call(&mut s, "10.0.0.1").await.unwrap_err();
        let limited = err.downcast_ref::<RateLimited>().expect("RateLimited");
        assert_eq!(limited.policy, "B");
    }
    tokio::time::advance(Duration::from_millis(800)).await;
    let resp = call(&mut s, "10.0.0.1").await.unwrap();
    assert!(
        resp.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"A\";r=1;"),
        "{:?}",
        resp.headers()["ratelimit"]
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// Every policy is decided, not only up to the first refusal: when a
/// later policy would refuse longer, `Retry-After` waits for it too.
#[tokio::test(start_paused = true)]
async fn retry_after_waits_for_a_later_policy_that_refuses_longer() {
    let hits = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::new(RoutePolicies::new(
        "r",
        vec![
            policy("short", RateLimitKey::Route, 1, Duration::from_secs(1)),
            policy("long", RateLimitKey::Route, 1, Duration::from_secs(10)),
        ],
    ));
    let mut s = layer.layer(stub(hits.clone()));
    call(&mut s, "10.0.0.1").await.unwrap();
    let err = call(&mut s, "10.0.0.1").await.unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("RateLimited");
    assert_eq!(limited.policy, "long");
    assert_eq!(limited.retry_after, 10);
    let rl = limited
        .headers
        .iter()
        .find(|(k, _)| k == "ratelimit")
        .map(|(_, v)| v.to_str().unwrap())
        .unwrap();
    assert_eq!(rl, "\"short\";r=0;t=1, \"long\";r=0;t=10");
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(call(&mut s, "10.0.0.1").await.is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    call(&mut s, "10.0.0.1").await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// Two policies given one store get one each (a request locks each
/// policy's store once; sharing one would deadlock).
#[tokio::test(start_paused = true)]
async fn policies_given_one_store_do_not_deadlock() {
    let store = Arc::new(LocalStore::new(100));
    let cfg = |name: &str, limit| RateLimitPolicyConfig {
        name: name.into(),
        key: RateLimitKey::Route,
        limit,
        window: Duration::from_secs(60),
        store: RateLimitStore::Local,
    };
    let layer = RateLimitLayer::new(RoutePolicies::new(
        "r",
        vec![
            Policy::new(&cfg("a", 2), store.clone(), None),
            Policy::new(&cfg("b", 1), store, None),
        ],
    ));
    let mut s = layer.layer(stub(Arc::new(AtomicUsize::new(0))));
    let resp = tokio::time::timeout(Duration::from_secs(1), call(&mut s, "10.0.0.1"))
        .await
        .expect("no deadlock")
        .unwrap();
    assert_eq!(
        resp.headers()["ratelimit"],
        "\"a\";r=1;t=30, \"b\";r=0;t=60"
    );
    let err = call(&mut s, "10.0.0.1").await.unwrap_err();
    assert_eq!(err.downcast_ref::<RateLimited>().unwrap().policy, "b");
}

/// An in-process policy charged while Redis decides is refunded when the
/// request is refused after all: by the `local` fallback of a Redis policy,
/// or by `fail_closed`.
#[tokio::test]
async fn in_process_charges_are_taken_back_when_the_redis_side_refuses() {
    let shared = |limit| RateLimitPolicyConfig {
        name: "shared".into(),
        key: RateLimitKey::Route,
        limit,
        window: Duration::from_secs(60),
        store: RateLimitStore::Redis,
    };
    let own = RateLimitPolicyConfig {
        name: "own".into(),
        key: RateLimitKey::ClientIp,
        limit: 3,
        window: Duration::from_secs(60),
        store: RateLimitStore::Local,
    };
    // local fallback: "shared" (1 per 60 s, on its in-process store)
    // refuses the second request; "own" keeps two of three.
    let redis = dead_redis(OnRedisError::Local);
    let routes = RoutePolicies::new(
        "r",
        vec![
            Policy::new(&own, Arc::new(LocalStore::new(100)), Some(redis.clone())),
            Policy::new(&shared(1), Arc::new(LocalStore::new(100)), Some(redis)),
        ],
    );
    let mut s = RateLimitLayer::new(routes).layer(stub(Arc::new(AtomicUsize::new(0))));
    let resp = call(&mut s, "10.0.0.1").await.unwrap();
    assert!(resp.headers()["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"own\";r=2;"));
    for _ in 0..3 {
        let err = call(&mut s, "10.0.0.1").await.unwrap_err();
        let limited = err.downcast_ref::<RateLimited>().expect("RateLimited");
        assert_eq!(limited.policy, "shared");
        let rl = limited
            .headers
            .iter()
            .find(|(k, _)| k == "ratelimit")
            .map(|(_, v)| v.to_str().unwrap())
            .unwrap();
        // Real time (the dead Redis is real): t may be a second less.
        assert!(
            rl.starts_with("\"own\";r=2;t=") && rl.contains(", \"shared\";r=0;t="),
            "{rl}"
        );
    }
    // fail_closed: 503s charge nothing in process.
    let own_store = Arc::new(LocalStore::new(100));
    let redis = dead_redis(OnRedisError::FailClosed);
    let routes = RoutePolicies::new(
        "r",
        vec![
            Policy::new(&own, own_store.clone(), Some(redis.clone())),
            Policy::new(&shared(5), Arc::new(LocalStore::new(100)), Some(redis)),
        ],
    );
    let mut s = RateLimitLayer::new(routes).layer(stub(Arc::new(AtomicUsize::new(0))));
    for _ in 0..4 {
        let err = call(&mut s, "10.0.0.1").await.unwrap_err();
        assert!(err.is::<LimiterUnavailable>(), "{err}");
    }
    let g = Gcra::new(3, Duration::from_secs(60));
    let now = own_store.now_us();
    let mut held = own_store.lock("ip:10.0.0.1");
    assert_eq!(held.decide(&g, "ip:10.0.0.1", now, false).0.remaining, 3);
}
