//! Issue 11, items 5 and 8 and the typed decision markers, through the real
//! gateway binary against a raw-socket upstream that records every request:
//! numbers from the wire saturate (no panic, the entry keeps serving), the
//! cache never shares a response to a request with `Cookie` or
//! `Authorization` unless the response says it may, an unsafe request
//! invalidates only after a non-error answer, and telemetry counts only the
//! gateway's own decisions, never an upstream's `X-Cache` or `RateLimit`
//! headers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::harness::{self, client, get, send, temp_file, GatewayProcess, Got, TestClient};
use e2e::raw::{response, RawRequest, RawUpstream, Step};
use http::Request;
use http_body_util::Full;

/// A gateway with one route `cached` (and `route_extra` on it) in front of
/// `up`.
fn gateway(
    up: &RawUpstream,
    route_extra: &str,
    env: &[(&str, String)],
    top: &str,
) -> GatewayProcess {
    let cfg = format!(
        r#"
        {top}
        [cache]
        max_size = "4MiB"
        [upstreams.raw]
        endpoints = ["{}"]
        [[routes]]
        name = "cached"
        prefix = "/"
        upstream = "raw"
        cache = {{ ttl = "30s" }}
        {route_extra}
        "#,
        up.addr
    );
    GatewayProcess::spawn(Some(&temp_file("sec-cache", "gateway.toml", &cfg)), env)
}

async fn get_with(c: &TestClient, gw: &GatewayProcess, path: &str, h: &[(&str, &str)]) -> Got {
    let mut b = Request::get(format!("http://{}{path}", gw.addr));
    for (k, v) in h {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::default()).unwrap()).await
}

async fn with_method(
    c: &TestClient,
    gw: &GatewayProcess,
    method: &str,
    path: &str,
    h: &[(&str, &str)],
) -> Got {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.addr));
    for (k, v) in h {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::default()).unwrap()).await
}

fn hits(up: &RawUpstream, target: &str) -> usize {
    up.requests().iter().filter(|r| r.target == target).count()
}

/// Responses whose lifetimes and ages are numbers no type holds.
fn extreme(req: &RawRequest) -> Vec<Step> {
    let headers: &[(&str, &str)] = match req.target.as_str() {
        "/swr" => &[(
            "cache-control",
            "max-age=1, stale-while-revalidate=18446744073709551615",
        )],
        "/sie" => &[(
            "cache-control",
            "max-age=1, stale-if-error=18446744073709551615",
        )],
        "/age" => &[
            ("cache-control", "max-age=60"),
            ("age", "18446744073709551615"),
        ],
        "/huge" => &[(
            "cache-control",
            "max-age=999999999999999999999999999999, s-maxage=18446744073709551616",
        )],
        "/old" => &[
            ("cache-control", "max-age=60"),
            ("age", "99999999999999999999999999999999999"),
        ],
        "/busy" => {
            return vec![Step::Write(response(
                503,
                &[("retry-after", "99999999999999999999999999")],
                "busy",
            ))]
        }
        _ => &[],
    };
    vec![Step::Write(response(200, headers, "ok"))]
}

/// Item 5: on main the first lookup after `max-age` (or any lookup of an
/// entry with `Age: 2^64-1`) overflowed a `Duration` and the panic took the
/// connection down, on every later request too. Now every request is
/// answered, and the overflowing `Retry-After` means "do not retry".
#[tokio::test]
async fn numbers_from_the_wire_saturate_and_nothing_panics() {
    let up = RawUpstream::start(extreme).await;
    let gw = gateway(
        &up,
        r#"retry = { attempts = 3, on_status = [503], max_retry_after = "2s", backoff = "1ms" }"#,
        &[],
        "",
    );
    let c = client();
    let paths = ["/swr", "/sie", "/age", "/huge", "/old"];
    for p in paths {
        assert_eq!(get(&c, gw.addr, p).await.status(), 200, "{p}");
    }
    // Past max-age=1: the stale arithmetic runs now.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    for round in 0..3 {
        for p in paths {
            let r = get(&c, gw.addr, p).await;
            assert_eq!(r.status(), 200, "{p} round {round}");
            assert_eq!(&r.body[..], b"ok", "{p}");
        }
    }
    // 2^31 s is "very old": the Age entries are never fresh, so they went
    // upstream each time; a clamped max-age still made /huge a hit.
    assert_eq!(hits(&up, "/huge"), 1);
    assert_eq!(hits(&up, "/age"), 4);
    assert_eq!(hits(&up, "/old"), 4);
    // stale-while-revalidate of "forever" (clamped) serves stale and
    // refreshes in the background.
    let r = get(&c, gw.addr, "/swr").await;
    assert!(
        ["HIT", "STALE"].contains(&r.header("x-cache")),
        "{}",
        r.header("x-cache")
    );
    // Retry-After too large for any type: not retried (main parsed it as
    // absent and retried at once).
    let busy = get(&c, gw.addr, "/busy").await;
    assert_eq!(busy.status(), 503);
    assert_eq!(hits(&up, "/busy"), 1);
    assert!(!gw.logged("panicked"), "the gateway panicked");
}

/// Personalised answers: the body is the request's cookie (or `anon`),
/// with a lifetime but not `private`, as origins often forget.
fn personal(req: &RawRequest) -> Vec<Step> {
    let who = req
        .header("cookie")
        .or(req.header("authorization"))
        .unwrap_or("anon")
        .to_owned();
    let cc = if req.target.starts_with("/public") {
        "public, max-age=60"
    } else if req.target.starts_with("/shared") {
        "s-maxage=60"
    } else {
        "max-age=60"
    };
    vec![Step::Write(response(200, &[("cache-control", cc)], &who))]
}

/// Item 8: on main a response to a request with `Cookie` was stored and
/// served to the next, anonymous client; and a request with `Cookie` or
/// `Authorization` was answered from an anonymous client's entry.
#[tokio::test]
async fn cookie_and_authorization_requests_neither_read_nor_fill_the_cache() {
    let up = RawUpstream::start(personal).await;
    let gw = gateway(&up, "", &[], "");
    let c = client();
    let alice = [("cookie", "session=alice")];
    // Fill attempt by a cookie holder: not stored.
    let r = get_with(&c, &gw, "/me", &alice).await;
    assert_eq!(&r.body[..], b"session=alice");
    assert_eq!(r.header("cache-status"), "gateway; fwd=bypass");
    let anon = get(&c, gw.addr, "/me").await;
    assert_eq!(&anon.body[..], b"anon", "alice's answer leaked to anon");
    assert_eq!(hits(&up, "/me"), 2);
    // Now /me is stored (anonymous): a cookie or a credential does not
    // read it.
    assert_eq!(get(&c, gw.addr, "/me").await.header("x-cache"), "HIT");
    let r = get_with(&c, &gw, "/me", &alice).await;
    assert_eq!(&r.body[..], b"session=alice");
    let r = get_with(&c, &gw, "/me", &[("authorization", "Bearer bob")]).await;
    assert_eq!(&r.body[..], b"Bearer bob");
    assert_eq!(hits(&up, "/me"), 4);
    // Authorization fills nothing either.
    let r = get_with(&c, &gw, "/other", &[("authorization", "Bearer bob")]).await;
    assert_eq!(&r.body[..], b"Bearer bob");
    assert_eq!(&get(&c, gw.addr, "/other").await.body[..], b"anon");
    // Explicitly shareable answers are stored and served, as RFC 9111 3.5
    // allows.
    for p in ["/public", "/shared"] {
        let first = get_with(&c, &gw, p, &alice).await;
        assert_eq!(first.header("cache-status"), "gateway; fwd=miss; stored");
        let again = get_with(&c, &gw, p, &[("cookie", "session=carol")]).await;
        assert_eq!(again.header("x-cache"), "HIT", "{p}");
        assert_eq!(hits(&up, p), 1);
    }
}

/// `/item` answers GET with a counter; POST with the status the request
/// asks for in `x-answer`.
fn item(n: Arc<AtomicUsize>) -> impl Fn(&RawRequest) -> Vec<Step> + Send + Sync + 'static {
    move |req| {
        if req.method == "GET" {
            let i = n.fetch_add(1, Ordering::SeqCst);
            return vec![Step::Write(response(
                200,
                &[("cache-control", "max-age=60")],
                &format!("v{i}"),
            ))];
        }
        let status = req
            .header("x-answer")
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        vec![Step::Write(response(status, &[], "done"))]
    }
}

/// RFC 9111 4.4: on main any POST invalidated the URL, even one the
/// upstream refused (403) or failed (500).
#[tokio::test]
async fn unsafe_requests_invalidate_only_after_a_non_error_answer() {
    let up = RawUpstream::start(item(Arc::new(AtomicUsize::new(0)))).await;
    let gw = gateway(&up, "", &[], "");
    let c = client();
    assert_eq!(&get(&c, gw.addr, "/item").await.body[..], b"v0");
    for refused in ["403", "404", "500", "503"] {
        let r = with_method(&c, &gw, "POST", "/item", &[("x-answer", refused)]).await;
        assert_eq!(r.status().to_string(), refused);
        let again = get(&c, gw.addr, "/item").await;
        assert_eq!(again.header("x-cache"), "HIT", "after a {refused} POST");
        assert_eq!(&again.body[..], b"v0");
    }
    for ok in ["200", "204", "303"] {
        let r = with_method(&c, &gw, "POST", "/item", &[("x-answer", ok)]).await;
        assert_eq!(r.status().to_string(), ok);
        assert_eq!(get(&c, gw.addr, "/item").await.header("x-cache"), "MISS");
        assert_eq!(get(&c, gw.addr, "/item").await.header("x-cache"), "HIT");
    }
}

/// An upstream that sends the gateway's own decision headers.
fn impostor(req: &RawRequest) -> Vec<Step> {
    let marks = [
        ("x-cache", "HIT"),
        ("cache-status", "gateway; hit"),
        ("ratelimit-policy", "\"x\";q=1;w=1"),
        ("ratelimit", "\"x\";r=0;t=1"),
    ];
    let resp = match req.target.as_str() {
        "/limited" => {
            let mut h = marks.to_vec();
            h.push(("retry-after", "1"));
            response(429, &h, "upstream says slow down")
        }
        "/unauth" => {
            let mut h = marks.to_vec();
            h.push(("www-authenticate", "Bearer error=\"invalid_token\""));
            response(401, &h, "upstream says no")
        }
        "/forbidden" => {
            let mut h = marks.to_vec();
            h.push(("www-authenticate", "Bearer error=\"insufficient_scope\""));
            response(403, &h, "upstream says no")
        }
        _ => response(200, &marks, "ok"),
    };
    vec![Step::Write(resp)]
}

/// Structure: on main telemetry read `X-Cache`, `RateLimit-Policy` and
/// `WWW-Authenticate` off the response, so an upstream's own headers were
/// counted as cache hits (a POST the cache passes through), rate-limit
/// refusals (an upstream 429) and JWT rejections (an upstream 401/403).
#[tokio::test]
async fn upstream_decision_headers_are_not_counted_as_gateway_decisions() {
    let up = RawUpstream::start(impostor).await;
    let secret = "sec-cache-test-secret-of-at-least-32-bytes".to_owned();
    let gw = gateway(
        &up,
        r#"rate_limits = [{ name = "p", key = "route", limit = 1000, window = "60s" }]
        auth = { provider = "jwt", mode = "optional" }"#,
        &[("SEC_CACHE_JWT_SECRET", secret)],
        r#"
        [auth.jwt]
        issuers = ["sec-cache"]
        audiences = ["gateway"]
        [[auth.jwt.keys]]
        kid = "k1"
        algorithms = ["HS256"]
        secret_env = "SEC_CACHE_JWT_SECRET"
        "#,
    );
    let c = client();
    let post = with_method(&c, &gw, "POST", "/post", &[]).await;
    assert_eq!(post.status(), 200);
    assert_eq!(get(&c, gw.addr, "/limited").await.status(), 429);
    assert_eq!(get(&c, gw.addr, "/unauth").await.status(), 401);
    assert_eq!(get(&c, gw.addr, "/forbidden").await.status(), 403);
    let get_ok = get(&c, gw.addr, "/page").await;
    assert_eq!(get_ok.header("x-cache"), "MISS");
    let series =
        |d: &str| format!("gateway_ratelimit_decisions_total{{route=\"cached\",decision=\"{d}\"}}");
    let text = harness::poll_until("five rate-limit decisions recorded", || async {
        let t = harness::metrics_text(&c, gw.admin).await;
        (harness::sample(&t, &series("allowed")) == Some(5.0)).then_some(t)
    })
    .await;
    let count = |s: &str| harness::sample(&text, s).unwrap_or(0.0);
    assert_eq!(
        count(&series("limited")),
        0.0,
        "an upstream 429 counted as limited"
    );
    for d in ["hit", "stale"] {
        let s = format!("gateway_cache_requests_total{{route=\"cached\",decision=\"{d}\"}}");
        assert_eq!(count(&s), 0.0, "an upstream X-Cache counted as {d}");
    }
    // The cache's own decisions still count: the GETs went upstream.
    let miss = "gateway_cache_requests_total{route=\"cached\",decision=\"miss\"}";
    assert_eq!(count(miss), 4.0);
    for d in ["invalid_token", "insufficient_scope"] {
        let s = format!("gateway_jwt_rejections_total{{route=\"cached\",decision=\"{d}\"}}");
        assert_eq!(count(&s), 0.0, "an upstream {d} counted as a JWT rejection");
    }
    // A real refusal by the gateway is still counted.
    let bad = get_with(&c, &gw, "/page", &[("authorization", "Bearer not.a.jwt")]).await;
    assert_eq!(bad.status(), 401);
    harness::wait_until("the gateway's own rejection counted", || async {
        let t = harness::metrics_text(&c, gw.admin).await;
        harness::sample(
            &t,
            "gateway_jwt_rejections_total{route=\"cached\",decision=\"invalid_token\"}",
        ) == Some(1.0)
    })
    .await;
}
