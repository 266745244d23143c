#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::config::ByteSize;
use crate::upstream::error::{RequestBodyError, RequestBodyKind};
use http::Method;

fn cfg(attempts: u32) -> RetryConfig {
    RetryConfig {
        attempts,
        on_status: vec![502, 503, 504],
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(2),
        budget_ratio: 1.0,
        budget_min_per_sec: 100,
        max_replay_body: ByteSize(1024),
        idempotency_key: false,
    }
}

/// Answers with `statuses` in turn (then 200), or a connect error for 0.
fn stub(
    statuses: Vec<u16>,
    hits: Arc<AtomicUsize>,
) -> tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, BoxError> {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<Body>| {
        let n = hits.fetch_add(1, Ordering::SeqCst);
        let status = statuses.get(n).copied().unwrap_or(200);
        assert!(req.extensions().get::<Tried>().is_some());
        async move {
            if status == 0 {
                return Err::<Response<Body>, BoxError>(
                    UpstreamError::Connect(std::io::ErrorKind::ConnectionRefused.into()).into(),
                );
            }
            let mut r = Response::new(Body::Empty);
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            if status == 503 {
                r.headers_mut()
                    .insert(RETRY_AFTER, http::HeaderValue::from_static("1"));
            }
            Ok(r)
        }
    }))
}

fn req(method: Method) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri("/x")
        .body(Body::Empty)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn retries_idempotent_statuses_honouring_retry_after() {
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = RetryLayer::new(RetryPolicy::new(&cfg(3))).layer(stub(vec![502, 503], hits.clone()));
    let start = tokio::time::Instant::now();
    let resp = svc.oneshot(req(Method::GET)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    // The 503 asked for 1 s.
    assert!(start.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_post_that_reached_the_upstream_is_not_retried_but_a_refused_one_is() {
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = RetryLayer::new(RetryPolicy::new(&cfg(3))).layer(stub(vec![502], hits.clone()));
    assert_eq!(svc.oneshot(req(Method::POST)).await.unwrap().status(), 502);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = RetryLayer::new(RetryPolicy::new(&cfg(3))).layer(stub(vec![0, 0], hits.clone()));
    assert_eq!(svc.oneshot(req(Method::POST)).await.unwrap().status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn attempts_and_budget_bound_the_retries() {
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = RetryLayer::new(RetryPolicy::new(&cfg(2))).layer(stub(vec![502; 10], hits.clone()));
    assert_eq!(svc.oneshot(req(Method::GET)).await.unwrap().status(), 502);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // An empty budget: no retry at all.
    let mut c = cfg(5);
    c.budget_ratio = 0.0;
    c.budget_min_per_sec = 0;
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = RetryLayer::new(RetryPolicy::new(&c)).layer(stub(vec![502; 10], hits.clone()));
    assert_eq!(svc.oneshot(req(Method::GET)).await.unwrap().status(), 502);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[test]
fn retry_after_saturates_and_a_huge_one_means_no_retry() {
    let with = |v: &str| {
        let mut r = Response::new(Body::Empty);
        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut()
            .insert(RETRY_AFTER, http::HeaderValue::from_str(v).unwrap());
        r
    };
    let cap = Duration::from_secs(1 << 31);
    for (v, want) in [
        ("0", Some(Duration::ZERO)),
        ("1", Some(Duration::from_secs(1))),
        (" 7 ", Some(Duration::from_secs(7))),
        ("4294967295", Some(cap)),
        ("18446744073709551615", Some(cap)),
        ("9223372036854775808", Some(cap)),
        ("184467440737095516150000000000", Some(cap)),
        ("-1", None),
        ("1.5", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ] {
        assert_eq!(retry_after(&with(v)), want, "{v}");
    }
    // Before, an overflowing number parsed as absent: retried at once.
    let policy = RetryPolicy::new(&cfg(3));
    let huge: Result<Response<Body>, BoxError> = Ok(with(&"9".repeat(100)));
    assert_eq!(policy.wait(true, &huge, 1), None);
}

#[tokio::test(start_paused = true)]
async fn idempotency_key_makes_a_post_retryable_only_where_configured() {
    let post = || {
        Request::builder()
            .method(Method::POST)
            .uri("/x")
            .header("idempotency-key", "k-1")
            .body(Body::Empty)
            .unwrap()
    };
    // Not configured: the key is ignored, a POST is not retried.
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = RetryLayer::new(RetryPolicy::new(&cfg(3))).layer(stub(vec![502], hits.clone()));
    let resp = svc.oneshot(post()).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Configured: retried like an idempotent request.
    let hits = Arc::new(AtomicUsize::new(0));
    let mut c = cfg(3);
    c.idempotency_key = true;
    let svc = RetryLayer::new(RetryPolicy::new(&c)).layer(stub(vec![502], hits.clone()));
    let resp = svc.oneshot(post()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn client_body_errors_are_never_retried() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let inner = tower::service_fn(move |_req: Request<Body>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            Err::<Response<Body>, BoxError>(RequestBodyError::new(RequestBodyKind::Aborted).into())
        }
    });
    let svc = RetryLayer::new(RetryPolicy::new(&cfg(3))).layer(inner);
    let err = svc.oneshot(req(Method::PUT)).await.unwrap_err();
    assert!(err.is::<RequestBodyError>());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
