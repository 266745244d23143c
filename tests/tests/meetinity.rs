//! `deploy/config/meetinity.toml` as shipped, against `mock-upstream`:
//! public and authenticated routes, the per-client limit the seed's
//! RateLimitTestUser trips, the cached users list.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use bytes::Bytes;
use e2e::harness::{self, client, send, start_gateway, Got, TestClient};
use e2e::mock::{MockOptions, MockUpstream};
use gateway::config::{self, Overrides, Source};
use http::Request;
use http_body_util::Full;

async fn req(c: &TestClient, gw: &gateway::Handle, path: &str, h: &[(&str, &str)]) -> Got {
    let mut b = Request::get(format!("http://{}{path}", gw.proxy_addr));
    for (k, v) in h {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::default()).unwrap()).await
}

#[tokio::test]
async fn the_shipped_meetinity_config_protects_limits_and_caches() {
    harness::init_logs();
    let m = MockUpstream::start(MockOptions::default()).await.unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/meetinity.toml");
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        upstream: Some(vec![m.addr().to_string()]),
        ..Overrides::default()
    };
    let cfg = config::load(&Source::File(path), &overrides).unwrap();
    let gw = start_gateway(cfg).await;
    let c = client();
    // An address of its own: the limiter may be shared through Redis. The
    // config trusts 127.0.0.1 as a proxy, so this test is that proxy and
    // names the client in X-Forwarded-For.
    let me = format!(
        "10.{}.{}.{}",
        fastrand::u8(..),
        fastrand::u8(..),
        fastrand::u8(1..255)
    );
    let id = [("x-forwarded-for", me.as_str())];

    let hello = req(&c, &gw, "/api/hello", &id).await;
    assert_eq!(hello.status(), 200);
    assert_eq!(hello.header("x-ratelimit-limit"), "50");
    assert_eq!(
        hello.header("ratelimit-policy"),
        r#""per-client";q=50;w=10"#
    );
    assert_eq!(req(&c, &gw, "/api/users", &id).await.status(), 401);

    let login = Request::post(format!("http://{}/api/auth/session", gw.proxy_addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"username":"ann-{me}","password":"pw"}}"#
        ))))
        .unwrap();
    let token = send(&c, login).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = format!("Bearer {token}");
    let auth = [
        ("x-forwarded-for", me.as_str()),
        ("authorization", bearer.as_str()),
    ];
    let first = req(&c, &gw, "/api/users", &auth).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.header("x-cache"), "MISS");
    assert_eq!(
        req(&c, &gw, "/api/users", &auth).await.header("x-cache"),
        "HIT"
    );
    assert_eq!(m.hits("/api/users"), 1);
    assert_eq!(req(&c, &gw, "/api/profile", &auth).await.status(), 200);

    // RateLimitTestUser: far faster than 5/s; the burst of 50 runs out.
    let mut statuses = Vec::new();
    for _ in 0..50 {
        statuses.push(req(&c, &gw, "/api/hello", &id).await.status());
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!((1..=10).contains(&limited), "{statuses:?}");
    // Another client is unaffected; a new X-Client-Id is not another client.
    let rotated = [("x-forwarded-for", me.as_str()), ("x-client-id", "fresh")];
    assert_eq!(req(&c, &gw, "/api/hello", &rotated).await.status(), 429);
    let other = format!("172.16.{}.{}", fastrand::u8(..), fastrand::u8(1..255));
    assert_eq!(
        req(
            &c,
            &gw,
            "/api/hello",
            &[("x-forwarded-for", other.as_str())]
        )
        .await
        .status(),
        200
    );
}
