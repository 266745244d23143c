//! Path traversal past a route's middleware (issue 11, item 1), through the
//! real binary against an upstream that resolves paths like common web
//! frameworks (`e2e::raw::framework_upstream`: decodes everything, strips
//! `;` parameters, takes `\` as `/`, resolves `..`) and records the exact
//! request target it receives.
//!
//! `/api/hello` is public and `/api/profile` needs a token. Every traversal
//! from the first to the second either reaches `/api/profile`'s auth (401)
//! or is refused (400); the upstream never serves `/api/profile` without a
//! token, and what it receives is exactly the normalised path the route
//! matched, with the query untouched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{SystemTime, UNIX_EPOCH};

use e2e::harness::{temp_dir, GatewayProcess};
use e2e::raw::{framework_path, framework_upstream, raw_request, RawUpstream};
use jsonwebtoken::{EncodingKey, Header};

const SECRET: &str = "sec-path-test-secret-0123456789abcdefghijklmnop";
const SECRET_ENV: &str = "GW_SEC_PATH_SECRET";

fn token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({ "sub": "alice", "exp": now + 600, "iat": now });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A public `/api/hello`, an auth-required `/api/profile` and
/// `/api/files` with `allow_encoded_slash`, all to `up`.
fn gateway(up: &RawUpstream) -> GatewayProcess {
    let dir = temp_dir("sec-path");
    let config = format!(
        r#"
[auth.t]
[[auth.t.keys]]
algorithms = ["HS256"]
secret_env = "{SECRET_ENV}"

[upstreams.app]
endpoints = ["{addr}"]

[[routes]]
name = "hello"
prefix = "/api/hello"
upstream = "app"

[[routes]]
name = "profile"
prefix = "/api/profile"
upstream = "app"
auth = {{ provider = "t", mode = "required" }}

[[routes]]
name = "files"
prefix = "/api/files"
upstream = "app"
allow_encoded_slash = true
"#,
        addr = up.addr,
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    GatewayProcess::spawn(Some(&path), &[(SECRET_ENV, SECRET.to_string())])
}

async fn get(gw: &GatewayProcess, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = format!("GET {target} HTTP/1.1\r\nhost: api.test\r\nconnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw_request(gw.addr, &req).await
}

/// The upstream's request targets so far.
fn targets(up: &RawUpstream) -> Vec<String> {
    up.requests().into_iter().map(|r| r.target).collect()
}

/// The traversal variants tried, with the status expected now: 401 when the
/// normalised path is `/api/profile` (its auth applies), 400 when refused.
const TRAVERSALS: &[(&str, u16)] = &[
    ("/api/hello/../profile", 401),
    ("/api/hello/%2e%2e/profile", 401),
    ("/api/hello/%2E%2e/profile", 401),
    ("/api/hello/.%2E/profile", 401),
    ("/api/hello/%2e./profile", 401),
    ("/api/hello//../profile", 401),
    ("/api/hello/./../profile", 401),
    ("/api/hello/x/../../profile", 401),
    ("/api/hello/../../../api/profile", 401),
    ("/api/%68ello/%2e%2e/%70rofile", 401),
    ("/api/hello/..%2fprofile", 400),
    ("/api/hello/..%2Fprofile", 400),
    ("/api/hello/%2e%2e%2fprofile", 400),
    ("/api/hello/..;/profile", 400),
    ("/api/hello;x=1/../profile", 400),
    ("/api/hello/..%3b/profile", 400),
    ("/api/hello/..%5cprofile", 400),
    ("/api/hello/..%5Cprofile", 400),
    ("/api/hello/..\\profile", 400),
    ("/api/hello/%00/../profile", 400),
    ("/api/hello%00/../profile", 400),
    ("/api/hello/%0a", 400),
    ("/api/hello/%zz/../profile", 400),
    ("/api/hello/%252e%252e/profile", 200),
    // An encoded slash is no way around a route's rules either, even on the
    // route that keeps them.
    ("/api/files/..%2F..%2Fprofile", 400),
    ("/api/files/%2e%2e%2fprofile", 400),
];

#[tokio::test]
async fn traversal_past_auth_is_routed_on_the_normalised_path_or_refused() {
    let up = framework_upstream().await;
    let gw = gateway(&up);
    for (target, want) in TRAVERSALS {
        let (status, text) = get(&gw, target, &[]).await;
        assert_eq!(status, *want, "{target}: {text}");
        if status == 400 {
            // The gateway's own JSON error, with the request id.
            assert!(
                text.contains(r#""error":"bad request: "#),
                "{target}: {text}"
            );
            assert!(text.contains(r#""request_id":""#), "{target}: {text}");
            assert!(
                text.to_ascii_lowercase().contains("x-request-id: "),
                "{text}"
            );
        }
        if status == 401 {
            assert!(text.contains("www-authenticate"), "{target}: {text}");
        }
    }
    // Absolute-form targets are normalised the same way.
    let (status, text) = get(&gw, "http://api.test/api/hello/%2e%2e/profile", &[]).await;
    assert_eq!(status, 401, "{text}");
    // Not one of them made the upstream serve /api/profile without a token
    // (the 200 above is for /api/hello/%252e%252e/profile, whose `%25`
    // stays encoded: the framework decodes once, to a literal `%2e%2e`).
    let served: Vec<String> = targets(&up).iter().map(|t| framework_path(t)).collect();
    assert!(
        !served.iter().any(|p| p == "/api/profile"),
        "upstream served {served:?} for {:?}",
        targets(&up)
    );
    assert_eq!(targets(&up), ["/api/hello/%252e%252e/profile"]);

    // With a token the same traversal reaches /api/profile, forwarded as
    // exactly that.
    let auth = format!("Bearer {}", token());
    let (status, text) = get(
        &gw,
        "/api/hello/%2e%2e/profile",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("served: /api/profile"), "{text}");
    assert_eq!(up.last().unwrap().target, "/api/profile");
}

#[tokio::test]
async fn the_upstream_receives_exactly_the_normalised_path_and_the_query_untouched() {
    let up = framework_upstream().await;
    let gw = gateway(&up);
    let cases = [
        ("/api/hello/./x", "/api/hello/x"),
        ("/api/%68ello", "/api/hello"),
        ("/api//hello///x/", "/api/hello/x/"),
        ("/api/hello/a/b/..", "/api/hello/a/"),
        ("/api/hello/%7euser%2Dx", "/api/hello/~user-x"),
        ("/api/hello/a%20b%2ac", "/api/hello/a%20b%2Ac"),
        ("/api/hello/x", "/api/hello/x"),
        (
            "/api/hello/./q?a=%2e%2e/../x&b=%2f;c\\&d=%00",
            "/api/hello/q?a=%2e%2e/../x&b=%2f;c\\&d=%00",
        ),
        ("/api/hello/q?a=..%2f&b", "/api/hello/q?a=..%2f&b"),
        // The route that keeps encoded slashes forwards them as sent
        // (their hex upper-cased).
        ("/api/files/a%2Fb/c", "/api/files/a%2Fb/c"),
        ("/api/files/a%2fb/./c?x=%2f", "/api/files/a%2Fb/c?x=%2f"),
    ];
    for (sent, want) in cases {
        let (status, text) = get(&gw, sent, &[]).await;
        assert_eq!(status, 200, "{sent}: {text}");
        let got = up.last().unwrap();
        assert_eq!(got.target, want, "sent {sent}");
        assert!(got
            .head_text()
            .starts_with(&format!("GET {want} HTTP/1.1\r\n")));
    }
    // ... and only that route.
    let before = up.requests().len();
    let (status, text) = get(&gw, "/api/hello/a%2Fb", &[]).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("encoded slash"), "{text}");
    assert_eq!(up.requests().len(), before);
}

/// The cache key is built from the normalised path: spellings of one path
/// share one entry (and one spelling cannot poison another path's entry).
#[tokio::test]
async fn the_cache_key_is_the_normalised_path() {
    let up = RawUpstream::start(|req| {
        let body = format!("served: {}", framework_path(&req.target));
        vec![e2e::raw::Step::Write(e2e::raw::response(
            200,
            &[("cache-control", "public, max-age=60")],
            &body,
        ))]
    })
    .await;
    let dir = temp_dir("sec-path");
    let config = format!(
        r#"
[upstreams.app]
endpoints = ["{addr}"]

[[routes]]
name = "cached"
prefix = "/api/c"
upstream = "app"
cache = {{ ttl = "60s" }}
"#,
        addr = up.addr,
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let gw = GatewayProcess::spawn(Some(&path), &[]);
    let (status, text) = get(&gw, "/api/c/x", &[]).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("x-cache: miss"),
        "{text}"
    );
    for spelling in ["/api/c/%78", "/api/c/./x", "/api//c/y/../x", "/api/%63/x"] {
        let (status, text) = get(&gw, spelling, &[]).await;
        assert_eq!(status, 200, "{spelling}: {text}");
        assert!(
            text.to_ascii_lowercase().contains("x-cache: hit"),
            "{spelling}: {text}"
        );
        assert!(text.ends_with("served: /api/c/x"), "{text}");
    }
    assert_eq!(targets(&up), ["/api/c/x"]);
}
