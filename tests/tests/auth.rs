//! JWT authentication through the real gateway, with tokens issued by
//! `mock-upstream` (HS256 and RS256 via its JWKS, with rotation).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use e2e::harness::{self, client, config, send, start_gateway, Got, TestClient};
use e2e::mock::{MockOptions, MockUpstream};
use http::Request;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const SECRET_ENV: &str = "GW_E2E_JWT_SECRET";
const SECRET: &str = "meetinity-dev-secret-change-me-in-production";

struct Setup {
    mock: MockUpstream,
    gw: gateway::Handle,
    client: TestClient,
}

async fn setup() -> Setup {
    harness::init_logs();
    // Same value from every test: setting it concurrently is harmless.
    std::env::set_var(SECRET_ENV, SECRET);
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let m = mock.addr();
    let gw = start_gateway(config(
        "",
        &format!(
            r#"
            [auth.mock]
            issuers = ["mock-upstream"]
            audiences = ["meetinity"]
            leeway = "5s"
            forward_claims = {{ sub = "X-User-Id", scope = "X-User-Scopes" }}
            [[auth.mock.keys]]
            kid = "hs-1"
            algorithms = ["HS256"]
            secret_env = "{SECRET_ENV}"
            [auth.mock.jwks]
            url = "http://{m}/.well-known/jwks.json"
            algorithms = ["RS256"]
            min_refresh_interval = "300ms"
            [upstreams.mock]
            endpoints = ["{m}"]
            [[routes]]
            name = "headers"
            prefix = "/headers"
            upstream = "mock"
            auth = {{ provider = "mock", scopes = ["users:read"] }}
            [[routes]]
            name = "admin"
            prefix = "/api/users"
            upstream = "mock"
            auth = {{ provider = "mock", roles = ["admin"] }}
            [[routes]]
            name = "hello"
            prefix = "/api/hello"
            upstream = "mock"
            auth = {{ provider = "mock", mode = "optional" }}
            [[routes]]
            name = "public"
            prefix = "/"
            upstream = "mock"
            "#
        ),
    ))
    .await;
    Setup {
        mock,
        gw,
        client: client(),
    }
}

impl Setup {
    async fn token(&self, body: &str) -> String {
        let req = Request::post(format!("http://{}/api/auth/session", self.gw.proxy_addr))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let got = send(&self.client, req).await;
        assert_eq!(got.status(), 200, "{:?}", got.body);
        got.json()["access_token"].as_str().unwrap().to_owned()
    }

    async fn get(&self, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Got {
        let mut b = Request::get(format!("http://{}{path}", self.gw.proxy_addr));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        send(&self.client, b.body(Full::default()).unwrap()).await
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn forge(alg: Algorithm, kid: Option<&str>, claims: serde_json::Value, key: &[u8]) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(key)).unwrap()
}

fn claims() -> serde_json::Value {
    serde_json::json!({
        "sub": "user-forged", "iss": "mock-upstream", "aud": "meetinity",
        "exp": now() + 600, "nbf": now(), "scope": "users:read",
    })
}

fn assert_401(got: &Got, description: &str) {
    assert_eq!(got.status(), 401, "{:?}", got.body);
    let challenge = got.header("www-authenticate");
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains(description),
        "{challenge:?} should mention {description:?}"
    );
    assert!(got.json()["request_id"].is_string());
}

#[tokio::test]
async fn valid_hs256_and_rs256_tokens_pass_and_claims_are_forwarded_not_spoofed() {
    let s = setup().await;
    let hs = s.token(r#"{"username":"alice","password":"pw"}"#).await;
    let rs = s
        .token(r#"{"username":"bob","password":"pw","alg":"RS256"}"#)
        .await;
    for (token, sub) in [(&hs, "user-alice"), (&rs, "user-bob")] {
        let got = s
            .get(
                "/headers",
                Some(token),
                &[("x-user-id", "admin"), ("X-User-Scopes", "all")],
            )
            .await;
        assert_eq!(got.status(), 200, "{:?}", got.body);
        let seen = got.json();
        assert_eq!(seen["headers"]["x-user-id"], sub, "{seen}");
        assert_eq!(
            seen["headers"]["x-user-scopes"],
            "users:read users:write profile"
        );
    }
    // Public route: no token needed, and a spoofed identity is still removed
    // on routes that look at tokens.
    let got = s.get("/api/hello", None, &[("x-user-id", "admin")]).await;
    assert_eq!(got.status(), 200);
    assert_eq!(s.mock.hits("/headers"), 2);
}

#[tokio::test]
async fn bad_tokens_get_401_and_never_reach_the_upstream() {
    let s = setup().await;
    let secret = SECRET.as_bytes();
    let mut expired = claims();
    expired["exp"] = (now() - 600).into();
    let mut wrong_iss = claims();
    wrong_iss["iss"] = "someone-else".into();
    let mut wrong_aud = claims();
    wrong_aud["aud"] = "other-app".into();
    let cases = [
        (None, "Bearer realm"),
        (
            Some(forge(Algorithm::HS256, Some("hs-1"), expired, secret)),
            "token expired",
        ),
        (
            Some(forge(Algorithm::HS256, Some("hs-1"), wrong_iss, secret)),
            "wrong issuer",
        ),
        (
            Some(forge(Algorithm::HS256, Some("hs-1"), wrong_aud, secret)),
            "wrong audience",
        ),
        (
            Some(forge(
                Algorithm::HS256,
                Some("hs-1"),
                claims(),
                b"not-the-secret-at-all",
            )),
            "invalid signature",
        ),
        // Algorithm confusion: an HMAC token naming the RSA key.
        (
            Some(forge(
                Algorithm::HS256,
                Some("rs-1"),
                claims(),
                b"-----BEGIN PUBLIC KEY-----",
            )),
            "algorithm not allowed",
        ),
        // A key id nobody published.
        (
            Some(forge(Algorithm::HS256, Some("nope"), claims(), secret)),
            "unknown key id",
        ),
        // alg none.
        (
            Some("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.".to_owned()),
            "malformed",
        ),
    ];
    for (token, description) in &cases {
        let got = s.get("/headers", token.as_deref(), &[]).await;
        if token.is_none() {
            assert_eq!(got.status(), 401);
            assert!(got.header("www-authenticate").starts_with(description));
        } else {
            assert_401(&got, description);
            assert!(got
                .header("www-authenticate")
                .contains(r#"error="invalid_token""#));
        }
    }
    // Optional: anonymous passes, a bad token does not.
    assert_eq!(s.get("/api/hello", None, &[]).await.status(), 200);
    assert_401(&s.get("/api/hello", Some("x.y.z"), &[]).await, "malformed");
    assert_eq!(s.mock.hits("/headers"), 0);
}

#[tokio::test]
async fn missing_scope_or_role_is_403() {
    let s = setup().await;
    let narrow = s
        .token(r#"{"username":"carol","password":"pw","scope":"profile"}"#)
        .await;
    let got = s.get("/headers", Some(&narrow), &[]).await;
    assert_eq!(got.status(), 403);
    assert!(got
        .header("www-authenticate")
        .contains("insufficient_scope"));
    let user = s.token(r#"{"username":"carol","password":"pw"}"#).await;
    assert_eq!(s.get("/api/users", Some(&user), &[]).await.status(), 403);
    let admin = s
        .token(r#"{"username":"dave","password":"pw","roles":["admin"]}"#)
        .await;
    assert_eq!(s.get("/api/users", Some(&admin), &[]).await.status(), 200);
    assert_eq!(s.mock.hits("/headers"), 0);
    assert_eq!(s.mock.hits("/api/users"), 1);
}

#[tokio::test]
async fn rotated_jwks_is_followed_and_unknown_kids_cannot_hammer_the_issuer() {
    let s = setup().await;
    let rotated = s
        .token(r#"{"username":"erin","password":"pw","kid":"rs-2"}"#)
        .await;
    // Before rotation rs-2 is unknown to the issuer's JWKS too.
    assert_401(
        &s.get("/headers", Some(&rotated), &[]).await,
        "unknown key id",
    );
    // A flood of made-up kids: at most one refetch per min_refresh_interval.
    let before = s.mock.hits("/.well-known/jwks.json");
    for i in 0..50 {
        let t = forge(
            Algorithm::HS256,
            Some(&format!("made-up-{i}")),
            claims(),
            b"x",
        );
        assert_eq!(s.get("/headers", Some(&t), &[]).await.status(), 401);
    }
    let fetches = s.mock.hits("/.well-known/jwks.json") - before;
    assert!(fetches <= 2, "{fetches} JWKS fetches for 50 unknown kids");
    // The issuer rotates; the next unknown-kid refresh picks rs-2 up.
    let req = Request::post(format!("http://{}/_mock/jwks/rotate", s.mock.addr()))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&s.client, req).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = s.get("/headers", Some(&rotated), &[]).await;
    assert_eq!(got.status(), 200, "{:?}", got.body);
    assert_eq!(got.json()["headers"]["x-user-id"], "user-erin");
}

#[tokio::test]
async fn the_periodic_jwks_refresh_picks_up_rotation_without_any_unknown_kid() {
    harness::init_logs();
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let m = mock.addr();
    let gw = start_gateway(config(
        "",
        &format!(
            r#"
            [auth.mock]
            [auth.mock.jwks]
            url = "http://{m}/.well-known/jwks.json"
            refresh_interval = "200ms"
            min_refresh_interval = "1h"
            [upstreams.mock]
            endpoints = ["{m}"]
            [[routes]]
            name = "headers"
            prefix = "/headers"
            upstream = "mock"
            auth = {{ provider = "mock" }}
            [[routes]]
            name = "public"
            prefix = "/"
            upstream = "mock"
            "#
        ),
    ))
    .await;
    let s = Setup {
        mock,
        gw,
        client: client(),
    };
    let rotated = s
        .token(r#"{"username":"fay","password":"pw","kid":"rs-2"}"#)
        .await;
    // Unknown now, and the unknown-kid refresh is spent for an hour.
    harness::wait_until("the first JWKS fetch", || async {
        s.mock.hits("/.well-known/jwks.json") >= 1
    })
    .await;
    assert_eq!(s.get("/headers", Some(&rotated), &[]).await.status(), 401);
    let req = Request::post(format!("http://{}/_mock/jwks/rotate", s.mock.addr()))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&s.client, req).await.status(), 200);
    harness::wait_until("the periodic refresh to see rs-2", || async {
        s.get("/headers", Some(&rotated), &[]).await.status() == 200
    })
    .await;
}
