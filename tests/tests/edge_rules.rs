//! Edge rules per route through the real gateway binary, against a raw
//! upstream that records the exact bytes it receives: CORS preflights
//! answered at the gateway and never forwarded (allowed or not), CORS
//! headers on actual responses (the upstream's own removed), request and
//! response header rules with claim placeholders from a real JWT, and the
//! removal of client-sent headers. Then a real browser: headless Chromium
//! (Playwright, `tests/cors_browser.py`) fetches cross-origin through the
//! gateway from an allowed page and from another origin's page.
//!
//! Needs `cargo build --workspace --bins` (scripts/test.sh does), and for
//! the browser test Debian's `chromium` (`E2E_CHROMIUM` names another) and
//! Python's `playwright` (no browser download: it launches that chromium);
//! scripts/test.sh installs both. Without them the browser test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use e2e::harness::{self, client, metrics_text, sample, send, GatewayProcess, Got, TestClient};
use e2e::raw::{response, RawRequest, RawUpstream, Step};
use http::Request;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET_ENV: &str = "GW_EDGE_JWT_SECRET";
const SECRET: &str = "edge-rules-test-secret-of-at-least-32-bytes";

/// What the upstream answers: a body, its own (hostile) CORS policy and a
/// `Server` header, which the route's policy and rules must replace.
fn upstream_answer(_: &RawRequest) -> Vec<Step> {
    vec![Step::Write(response(
        200,
        &[
            ("server", "upstream/1.0"),
            ("access-control-allow-origin", "*"),
            ("access-control-allow-methods", "DELETE"),
            ("access-control-allow-credentials", "false"),
            ("x-tenant-echo", "echo"),
            ("x-not-exposed", "secret"),
            ("content-type", "application/json"),
        ],
        r#"{"hello":"from upstream"}"#,
    ))]
}

/// The gateway config: one route with auth, a CORS policy allowing
/// `origin` with credentials, and header rules.
fn config_text(upstream: &RawUpstream, origin: &str) -> String {
    format!(
        r#"
[auth.jwt]
issuers = ["edge-test"]
forward_claims = {{ sub = "X-User-Id" }}
[[auth.jwt.keys]]
algorithms = ["HS256"]
secret_env = "{SECRET_ENV}"

[upstreams.raw]
endpoints = ["{up}"]

[[routes]]
name = "app"
prefix = "/api"
upstream = "raw"
auth = {{ provider = "jwt" }}
cors = {{ allow_origins = ["{origin}"], allow_methods = ["GET", "POST", "PUT"], allow_headers = ["X-Custom", "Authorization", "Content-Type"], expose_headers = ["X-Tenant-Echo"], allow_credentials = true, max_age = "10m" }}
request_headers = {{ set = {{ "X-Tenant" = "{{claim.tenant}}", "X-Route" = "{{route}}" }}, add = {{ "X-Caller" = "{{claim.sub}}@{{client_ip}}" }}, remove = ["Cookie", "X-Debug"] }}
response_headers = {{ set = {{ "X-Served-For" = "{{claim.sub}}", "X-Request-Ref" = "{{request_id}}" }}, remove = ["Server"] }}

[[routes]]
name = "limited"
prefix = "/limited"
upstream = "raw"
rate_limits = [{{ name = "ip", key = "client_ip", limit = 1, window = "1m" }}]
cors = {{ allow_origins = ["{origin}"] }}
"#,
        up = upstream.addr
    )
}

fn spawn(config: &str) -> GatewayProcess {
    let path = harness::temp_file("edge-rules", "gateway.toml", config);
    GatewayProcess::spawn(Some(&path), &[(SECRET_ENV, SECRET.to_owned())])
}

fn token(claims: serde_json::Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut c = claims;
    c["iss"] = "edge-test".into();
    c["exp"] = (now + 600).into();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn request(
    c: &TestClient,
    gw: &GatewayProcess,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.addr));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::new(Bytes::new())).unwrap()).await
}

fn cors_headers(got: &Got) -> Vec<String> {
    got.head
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .map(|k| k.to_string())
        .collect()
}

const APP: &str = "https://app.example.com";

#[tokio::test]
async fn preflights_are_answered_at_the_gateway_and_never_reach_the_upstream() {
    harness::init_logs();
    let up = RawUpstream::start(upstream_answer).await;
    let gw = spawn(&config_text(&up, APP));
    let c = client();

    // Allowed origin: the policy, no credentials needed (the route has
    // auth: a preflight is answered before it).
    let got = request(
        &c,
        &gw,
        "OPTIONS",
        "/api/items/7",
        &[
            ("origin", APP),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-custom, authorization"),
        ],
    )
    .await;
    assert_eq!(got.status(), 200, "{:?}", got.body);
    assert_eq!(got.header("access-control-allow-origin"), APP);
    assert_eq!(got.header("access-control-allow-credentials"), "true");
    assert_eq!(got.header("access-control-allow-methods"), "GET, POST, PUT");
    assert_eq!(
        got.header("access-control-allow-headers"),
        "X-Custom, Authorization, Content-Type"
    );
    assert_eq!(got.header("access-control-max-age"), "600");
    assert_eq!(got.header("vary"), "Origin");
    assert!(got.body.is_empty());
    // Response rules run on the preflight's answer too (no token: no
    // claim, so the set header is absent; the request id is there).
    assert_eq!(got.header("x-request-ref"), got.header("x-request-id"));

    // Disallowed origins (another host, a suffix trick, `null`): answered
    // 200 without any CORS header, as Traefik and Envoy Gateway do.
    for origin in [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "null",
    ] {
        let got = request(
            &c,
            &gw,
            "OPTIONS",
            "/api/items/7",
            &[("origin", origin), ("access-control-request-method", "PUT")],
        )
        .await;
        assert_eq!(got.status(), 200, "{origin}");
        assert!(
            cors_headers(&got).is_empty(),
            "{origin}: {:?}",
            got.head.headers
        );
        assert_eq!(got.header("vary"), "Origin");
    }

    // A plain OPTIONS (no Access-Control-Request-Method) is no preflight:
    // it goes through auth like any request (401 without a token).
    let got = request(&c, &gw, "OPTIONS", "/api/items/7", &[("origin", APP)]).await;
    assert_eq!(got.status(), 401);
    // ... and the 401 carries the policy's headers, so a page can read it.
    assert_eq!(got.header("access-control-allow-origin"), APP);
    assert_eq!(got.header("access-control-allow-credentials"), "true");
    assert_eq!(got.header("vary"), "Origin");

    assert!(
        up.requests().is_empty(),
        "the upstream received: {:?}",
        up.requests()
            .iter()
            .map(RawRequest::head_text)
            .collect::<Vec<_>>()
    );

    // Preflights spend no rate-limit quota: after ten of them, the one
    // request a minute the route allows still passes; the next is refused
    // with a 429 the page can read (the policy's headers on the error).
    let preflight = [("origin", APP), ("access-control-request-method", "GET")];
    for _ in 0..10 {
        let got = request(&c, &gw, "OPTIONS", "/limited/x", &preflight).await;
        assert_eq!(got.status(), 200);
        assert_eq!(got.header("access-control-allow-origin"), APP);
        assert!(!got.head.headers.contains_key("x-ratelimit-limit"));
    }
    let got = request(&c, &gw, "GET", "/limited/x", &[("origin", APP)]).await;
    assert_eq!(got.status(), 200, "{:?}", got.body);
    assert_eq!(got.header("access-control-allow-origin"), APP);
    let got = request(&c, &gw, "GET", "/limited/x", &[("origin", APP)]).await;
    assert_eq!(got.status(), 429, "{:?}", got.body);
    assert_eq!(got.header("access-control-allow-origin"), APP);
    assert_eq!(got.header("vary"), "Origin");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn actual_requests_get_the_policy_and_the_header_rules_with_claims() {
    harness::init_logs();
    let up = RawUpstream::start(upstream_answer).await;
    let gw = spawn(&config_text(&up, APP));
    let c = client();
    let t = token(serde_json::json!({"sub": "user-1", "tenant": "acme"}));
    let bearer = format!("Bearer {t}");

    let got = request(
        &c,
        &gw,
        "GET",
        "/api/items/7",
        &[
            ("authorization", &bearer),
            ("origin", APP),
            ("cookie", "session=abc"),
            ("x-debug", "1"),
            ("x-tenant", "forged"),
            ("x-caller", "client-said"),
        ],
    )
    .await;
    assert_eq!(got.status(), 200, "{:?}", got.body);

    // What the upstream received, byte for byte.
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    let head = r.head_text();
    assert_eq!(r.all("x-tenant"), ["acme"], "{head}");
    assert_eq!(r.all("x-route"), ["app"], "{head}");
    // Added beside the client's value, from the verified token and the
    // gateway's client address.
    assert_eq!(
        r.all("x-caller"),
        ["client-said", "user-1@127.0.0.1"],
        "{head}"
    );
    assert!(r.header("cookie").is_none(), "{head}");
    assert!(r.header("x-debug").is_none(), "{head}");
    assert_eq!(r.header("x-user-id"), Some("user-1"), "{head}");
    assert_eq!(r.header("origin"), Some(APP), "{head}");

    // What the client got: the policy, not the upstream's CORS headers.
    assert_eq!(got.header("access-control-allow-origin"), APP);
    assert_eq!(got.header("access-control-allow-credentials"), "true");
    assert_eq!(got.header("access-control-expose-headers"), "X-Tenant-Echo");
    assert!(!got
        .head
        .headers
        .contains_key("access-control-allow-methods"));
    assert_eq!(
        got.head
            .headers
            .get_all("access-control-allow-origin")
            .iter()
            .count(),
        1
    );
    assert_eq!(got.header("vary"), "Origin");
    // Response rules: a claim, the request id, the upstream's Server gone.
    assert_eq!(got.header("x-served-for"), "user-1");
    assert_eq!(got.header("x-request-ref"), got.header("x-request-id"));
    assert!(!got.header("x-request-id").is_empty());
    assert!(
        !got.head.headers.contains_key("server"),
        "{:?}",
        got.head.headers
    );

    // Another origin: forwarded (the browser enforces CORS on the answer),
    // no CORS header in the answer.
    let got = request(
        &c,
        &gw,
        "GET",
        "/api/items/8",
        &[
            ("authorization", &bearer),
            ("origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(got.status(), 200);
    assert!(cors_headers(&got).is_empty(), "{:?}", got.head.headers);
    assert_eq!(got.header("vary"), "Origin");
    assert_eq!(up.requests().len(), 2);

    // A claim that is no valid header value: the set header is dropped
    // (the client's copy too), counted, and the request still served.
    let bad = token(serde_json::json!({"sub": "user-2", "tenant": "line\r\nX-Injected: 1"}));
    let got = request(
        &c,
        &gw,
        "GET",
        "/api/items/9",
        &[
            ("authorization", &format!("Bearer {bad}")),
            ("x-tenant", "forged"),
        ],
    )
    .await;
    assert_eq!(got.status(), 200);
    let r = up.last().unwrap();
    assert!(r.header("x-tenant").is_none(), "{}", r.head_text());
    assert!(r.header("x-injected").is_none(), "{}", r.head_text());
    let m = metrics_text(&c, gw.admin).await;
    assert_eq!(
        sample(
            &m,
            r#"gateway_header_rule_values_dropped_total{route="app",decision="request"}"#
        ),
        Some(1.0),
        "{}",
        m.lines()
            .filter(|l| l.contains("header_rule"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The headless browser binary.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("E2E_CHROMIUM") {
        return PathBuf::from(p);
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(p) = harness::find_tool(name) {
            return p;
        }
    }
    panic!("headless Chromium not found on PATH (scripts/test.sh installs Debian's chromium)");
}

/// A tiny page server on 127.0.0.1 (a free port): every request gets a
/// blank HTML page, so the page's origin is `http://127.0.0.1:PORT`.
async fn page_server() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let page = "<!doctype html><title>page</title><p>cross-origin test page</p>";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// Runs the Playwright driver, bounded; its JSON line.
fn drive(page_a: &str, page_b: &str, target: &str, token: &str) -> serde_json::Value {
    let python = std::env::var("E2E_PYTHON").unwrap_or_else(|_| "python3".into());
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cors_browser.py");
    let child = Command::new(&python)
        .arg(&driver)
        .args([page_a, page_b, target])
        .arg(chromium())
        .arg(token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python} does not start: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("the browser driver did not finish within 90 s");
        }
    };
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "the browser driver failed ({}); `pip install playwright` if it is missing \
         (scripts/test.sh does):\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("driver output is not JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_reads_the_response_from_the_allowed_origin_only() {
    harness::init_logs();
    let up = RawUpstream::start(upstream_answer).await;
    let (page_a, page_b) = (page_server().await, page_server().await);
    let gw = spawn(&config_text(&up, &page_a));
    let target = format!("http://{}/api/items/7", gw.addr);
    let t = token(serde_json::json!({"sub": "browser-user", "tenant": "acme"}));
    let (a, b, tg, tt) = (page_a.clone(), page_b.clone(), target.clone(), t.clone());
    let seen = tokio::task::spawn_blocking(move || drive(&a, &b, &tg, &tt))
        .await
        .unwrap();
    eprintln!("the browser saw: {seen}");

    // Origin A: preflight passed, the PUT went through and the script read
    // the body and the exposed header (not the unexposed one).
    let a = &seen["a"];
    assert_eq!(a["origin"], page_a.as_str(), "{seen}");
    assert_eq!(a["resolved"], true, "{seen}");
    assert_eq!(a["status"], 200, "{seen}");
    assert_eq!(a["body"], r#"{"hello":"from upstream"}"#, "{seen}");
    assert_eq!(a["exposed"], "echo", "{seen}");
    assert_eq!(a["hidden"], serde_json::Value::Null, "{seen}");

    // Origin B: the browser refused (a TypeError, as fetch() reports a
    // CORS failure), its console says why.
    let b = &seen["b"];
    assert_eq!(b["origin"], page_b.as_str(), "{seen}");
    assert_eq!(b["resolved"], false, "{seen}");
    assert_eq!(b["error"], "TypeError", "{seen}");
    assert!(
        b["console"].as_array().unwrap().iter().any(|m| m
            .as_str()
            .unwrap_or_default()
            .contains("blocked by CORS policy")),
        "{seen}"
    );

    // The upstream saw exactly A's PUT: no preflight (A's or B's) and
    // nothing from B.
    let reqs = up.requests();
    let heads: Vec<String> = reqs.iter().map(RawRequest::head_text).collect();
    assert_eq!(reqs.len(), 1, "{heads:#?}");
    assert_eq!(reqs[0].method, "PUT", "{heads:#?}");
    assert_eq!(reqs[0].header("origin"), Some(page_a.as_str()));
    assert_eq!(reqs[0].header("x-tenant"), Some("acme"));
    assert!(reqs.iter().all(|r| r.method != "OPTIONS"), "{heads:#?}");
    assert!(
        reqs.iter()
            .all(|r| r.header("origin") != Some(page_b.as_str())),
        "{heads:#?}"
    );

    // Both preflights were answered by the gateway (as the route's OPTIONS
    // 200s in its metrics).
    let m = metrics_text(&client(), gw.admin).await;
    assert_eq!(
        sample(
            &m,
            r#"gateway_requests_total{route="app",method="OPTIONS",status="200"}"#
        ),
        Some(2.0),
        "{}",
        m.lines()
            .filter(|l| l.starts_with("gateway_requests_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
