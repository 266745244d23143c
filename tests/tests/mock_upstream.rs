//! The mock upstream on its own: every simulated API, the control plane (faults, latency,
//! stats, JWKS rotation), h2c and WebSocket. Each test starts its own mock on 127.0.0.1:0
//! and every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use e2e::mock::{Fault, LatencyRule, MockOptions, MockUpstream};
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Bound on every wait of these tests.
const WAIT: Duration = Duration::from_secs(20);

/// A collected response.
#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn start() -> MockUpstream {
    start_with(MockOptions {
        id: "m1".into(),
        ..Default::default()
    })
    .await
}

async fn start_with(opts: MockOptions) -> MockUpstream {
    timeout(WAIT, MockUpstream::start(opts))
        .await
        .unwrap()
        .unwrap()
}

/// Sends one request on a fresh HTTP/1.1 connection (so an injected reset cannot be
/// retried away); `Err` when the connection fails.
async fn try_send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Got, hyper::Error> {
    timeout(WAIT, async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let res = sender.send_request(req).await?;
        let (head, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Got {
            status: head.status,
            headers: head.headers,
            body,
        })
    })
    .await
    .expect("request within the bound")
}

fn build(
    method: Method,
    addr: SocketAddr,
    path: &str,
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(body.into()))
        .unwrap()
}

async fn send(req: Request<Full<Bytes>>, addr: SocketAddr) -> Got {
    try_send(addr, req).await.expect("request succeeds")
}

async fn get(addr: SocketAddr, path: &str) -> Got {
    send(build(Method::GET, addr, path, Bytes::new()), addr).await
}

async fn post_json(addr: SocketAddr, path: &str, body: Value) -> Got {
    let mut req = build(Method::POST, addr, path, body.to_string());
    req.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    send(req, addr).await
}

#[tokio::test]
async fn hello_health_and_unknown_paths() {
    let mock = start().await;
    let r = get(mock.addr(), "/api/hello").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream-id"), "m1");
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.json(), json!({ "message": "Hello, World!" }));
    let r = get(mock.addr(), "/api/hello?name=J%C3%BCrgen+M").await;
    assert_eq!(r.json()["message"], "Hello, Jürgen M!");
    assert_eq!(
        get(mock.addr(), "/health").await.json(),
        json!({ "status": "ok" })
    );
    let r = get(mock.addr(), "/no/such/path").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-upstream-id"), "m1");
    assert_eq!(r.json(), json!({ "error": "not found" }));
    assert_eq!(mock.hits("/api/hello"), 2);
    assert_eq!(mock.total_hits(), 4);
    mock.shutdown().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let mock = start().await;
    let stream = TcpStream::connect(mock.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{}/api/hello", mock.addr()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.headers()["x-upstream-id"], "m1");
}

#[tokio::test]
async fn echo_round_trips_100_kb() {
    let mock = start().await;
    let payload: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    let mut req = build(Method::POST, mock.addr(), "/api/echo", payload.clone());
    req.headers_mut()
        .insert("content-type", "application/x-test".parse().unwrap());
    let r = send(req, mock.addr()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/x-test");
    assert_eq!(r.body.len(), payload.len());
    assert!(r.body == payload, "echoed bytes differ");
}

#[tokio::test]
async fn users_and_profile() {
    let mock = start().await;
    let r = get(mock.addr(), "/api/users").await;
    assert_eq!(r.header("cache-control"), "public, max-age=30");
    assert_eq!(r.json().as_array().unwrap().len(), 20);
    let r = get(mock.addr(), "/api/users/7").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], 7);
    assert_eq!(get(mock.addr(), "/api/users/abc").await.status, 404);
    let r = post_json(mock.addr(), "/api/users", json!({ "username": "new" })).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["username"], "new");
    assert!(r.json()["id"].as_u64().is_some());
    let mut req = build(
        Method::PUT,
        mock.addr(),
        "/api/users/3",
        json!({ "name": "X" }).to_string(),
    );
    req.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    let r = send(req, mock.addr()).await;
    assert_eq!(
        (
            r.status.as_u16(),
            r.json()["name"].clone(),
            r.json()["id"].clone()
        ),
        (200, json!("X"), json!(3))
    );

    let mut req = build(Method::GET, mock.addr(), "/api/profile", Bytes::new());
    req.headers_mut()
        .insert("x-user-id", "user-alice".parse().unwrap());
    let r = send(req, mock.addr()).await;
    assert_eq!(r.json()["user_id"], "user-alice");
    let r = post_json(mock.addr(), "/api/profile", json!({ "bio": "hi" })).await;
    assert_eq!(
        (r.json()["bio"].clone(), r.json()["updated"].clone()),
        (json!("hi"), json!(true))
    );
}

#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    scope: String,
    roles: Vec<String>,
    exp: u64,
    iat: u64,
}

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_audience(&[e2e::mock::JWT_AUDIENCE]);
    v.set_issuer(&[e2e::mock::JWT_ISSUER]);
    v
}

fn jwk_key(jwks: &Value, kid: &str) -> DecodingKey {
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("{kid} not in {jwks}"));
    assert_eq!(
        (key["kty"].as_str(), key["alg"].as_str()),
        (Some("RSA"), Some("RS256"))
    );
    DecodingKey::from_rsa_components(key["n"].as_str().unwrap(), key["e"].as_str().unwrap())
        .unwrap()
}

#[tokio::test]
async fn session_tokens_verify_with_the_secret_and_the_jwks() {
    let mock = start_with(MockOptions {
        jwt_secret: "s3cret".into(),
        ..Default::default()
    })
    .await;
    let addr = mock.addr();

    let r = post_json(
        addr,
        "/api/auth/session",
        json!({ "username": "alice", "password": "pw" }),
    )
    .await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(
        (body["token_type"].as_str(), body["expires_in"].as_u64()),
        (Some("Bearer"), Some(3600))
    );
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(token).unwrap().kid.as_deref(),
        Some("hs-1")
    );
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(b"s3cret"),
        &validation(Algorithm::HS256),
    )
    .unwrap();
    assert_eq!(data.claims.sub, "user-alice");
    assert_eq!(data.claims.iss, "mock-upstream");
    assert_eq!(data.claims.scope, "users:read users:write profile");
    assert_eq!(data.claims.roles, ["user"]);
    assert_eq!(data.claims.exp - data.claims.iat, 3600);
    let wrong = DecodingKey::from_secret(b"other");
    assert!(jsonwebtoken::decode::<Claims>(token, &wrong, &validation(Algorithm::HS256)).is_err());

    let r = post_json(
        addr,
        "/api/auth/session",
        json!({ "username": "bob", "password": "pw", "alg": "RS256", "ttl_secs": 60, "scope": "a b" }),
    )
    .await;
    assert_eq!(r.json()["expires_in"], 60);
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(),
        Some("rs-1")
    );
    let jwks = get(addr, "/.well-known/jwks.json").await.json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    let key = jwk_key(&jwks, "rs-1");
    let data = jsonwebtoken::decode::<Claims>(&token, &key, &validation(Algorithm::RS256)).unwrap();
    assert_eq!(
        (data.claims.sub.as_str(), data.claims.scope.as_str()),
        ("user-bob", "a b")
    );

    // Rotation: rs-2 tokens are signed at once, but published only after the switch.
    let r = post_json(
        addr,
        "/api/auth/session",
        json!({ "username": "c", "password": "pw", "kid": "rs-2" }),
    )
    .await;
    let token = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(),
        Some("rs-2")
    );
    assert_eq!(
        post_json(addr, "/_mock/jwks/rotate", json!({}))
            .await
            .status,
        200
    );
    let jwks = get(addr, "/.well-known/jwks.json").await.json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    jsonwebtoken::decode::<Claims>(
        &token,
        &jwk_key(&jwks, "rs-2"),
        &validation(Algorithm::RS256),
    )
    .unwrap();
    assert!(jsonwebtoken::decode::<Claims>(
        &token,
        &jwk_key(&jwks, "rs-1"),
        &validation(Algorithm::RS256)
    )
    .is_err());

    let r = post_json(addr, "/api/auth/session", json!({ "username": "alice" })).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("password"));
    assert_eq!(
        post_json(
            addr,
            "/api/auth/session",
            json!({ "username": "a", "password": "b", "alg": "none" })
        )
        .await
        .status,
        400
    );
}

#[tokio::test]
async fn flagmeter_aggregates_usage() {
    let mock = start().await;
    let addr = mock.addr();
    for (tenant, feature, tokens) in [
        ("t1", "chat", 100),
        ("t1", "chat", 50),
        ("t1", "search", 7),
        ("t2", "chat", 1),
    ] {
        let r = post_json(
            addr,
            "/api/events",
            json!({ "tenant": tenant, "feature": feature, "tokens": tokens }),
        )
        .await;
        assert_eq!(r.status, 202);
        assert_eq!(r.json(), json!({ "accepted": true }));
    }
    let usage = get(addr, "/api/usage/t1").await.json();
    assert_eq!(
        usage,
        json!({
            "tenant": "t1", "events": 3, "total_tokens": 157,
            "features": { "chat": { "events": 2, "tokens": 150 }, "search": { "events": 1, "tokens": 7 } },
        })
    );
    assert_eq!(get(addr, "/api/usage/nobody").await.json()["events"], 0);
    let mut req = build(Method::POST, addr, "/api/events", "{not json");
    req.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    assert_eq!(send(req, addr).await.status, 400);
    assert_eq!(
        post_json(addr, "/api/events", json!({ "tenant": "t1" }))
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn paracle_agents_and_runs() {
    let mock = start().await;
    let addr = mock.addr();
    let r = post_json(
        addr,
        "/api/v1/auth/token",
        json!({ "username": "test_user", "password": "test_password" }),
    )
    .await;
    assert_eq!(r.json()["token_type"], "bearer");
    assert!(r.json()["access_token"].as_str().is_some());
    assert_eq!(
        get(addr, "/api/v1/agents").await.json()["agents"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(get(addr, "/api/v1/agents/architect").await.status, 200);
    assert_eq!(get(addr, "/api/v1/agents/nobody").await.status, 404);
    let created = post_json(addr, "/api/v1/agents", json!({ "name": "mine" })).await;
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(get(addr, &format!("/api/v1/agents/{id}")).await.status, 200);
    let run = post_json(
        addr,
        "/api/v1/agents/run",
        json!({ "agent_id": "coder", "task": "x" }),
    )
    .await;
    assert_eq!(run.json()["status"], "success");
    assert!(run.json()["run_id"].as_str().is_some());
    assert_eq!(get(addr, "/api/v1/workflows").await.status, 200);
    let run = post_json(
        addr,
        "/api/v1/workflows/run",
        json!({ "workflow_id": "code_review", "inputs": {} }),
    )
    .await;
    assert_eq!(
        (
            run.json()["status"].clone(),
            run.json()["workflow_id"].clone()
        ),
        (json!("success"), json!("code_review"))
    );
    assert!(run.json()["execution_time_seconds"].as_f64().unwrap() < 60.0);
}

#[tokio::test]
async fn meetings_create_join_leave_get() {
    let mock = start().await;
    let addr = mock.addr();
    let r = post_json(
        addr,
        "/api/meetings",
        json!({ "title": "Standup", "host_id": "h1" }),
    )
    .await;
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_u64().unwrap();
    for expected in [1, 2] {
        let r = post_json(
            addr,
            &format!("/api/meetings/{id}/join"),
            json!({ "user_id": "u" }),
        )
        .await;
        assert_eq!(r.json()["participants"], expected);
    }
    let r = send(
        build(
            Method::POST,
            addr,
            &format!("/api/meetings/{id}/leave"),
            Bytes::new(),
        ),
        addr,
    )
    .await;
    assert_eq!(r.json()["participants"], 1);
    let r = get(addr, &format!("/api/meetings/{id}")).await;
    assert_eq!(
        (r.json()["title"].clone(), r.json()["participants"].clone()),
        (json!("Standup"), json!(1))
    );
    assert_eq!(get(addr, "/api/meetings/999999").await.status, 404);
    assert_eq!(
        post_json(addr, "/api/meetings/999999/join", json!({}))
            .await
            .status,
        404
    );
    let list = get(addr, "/api/meetings?limit=5").await.json();
    assert_eq!(
        (list["total"].clone(), list["meetings"][0]["id"].clone()),
        (json!(1), json!(id))
    );

    let path = format!("/api/meetings/{id}/network-quality");
    let quality = |loss: f64, latency: f64| {
        post_json(
            addr,
            &path,
            json!({ "packet_loss": loss, "latency_ms": latency, "jitter_ms": 5 }),
        )
    };
    let good = quality(0.5, 40.0).await.json();
    assert_eq!(
        (good["quality"].clone(), good["recommended_bitrate"].clone()),
        (json!("good"), json!(2500))
    );
    let poor = quality(70.0, 300.0).await.json();
    assert_eq!(poor["quality"], "poor");
    assert!(poor["recommended_bitrate"].as_u64().unwrap() < 2500);
    assert_eq!(quality(120.0, 1.0).await.status, 400);
}

#[tokio::test]
async fn httpbin_endpoints() {
    let mock = start().await;
    let addr = mock.addr();
    let r = get(addr, "/bytes/5000000").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), "5000000");
    assert_eq!(r.body.len(), 5_000_000);

    let r = get(addr, "/status/503").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["status"].clone()),
        (503, json!(503))
    );
    let r = send(
        build(Method::DELETE, addr, "/status/204", Bytes::new()),
        addr,
    )
    .await;
    assert_eq!((r.status.as_u16(), r.body.len()), (204, 0));

    let mut req = build(Method::GET, addr, "/headers?x=1", Bytes::new());
    req.headers_mut()
        .insert("x-custom", "hello".parse().unwrap());
    req.headers_mut().append("x-multi", "a".parse().unwrap());
    req.headers_mut().append("x-multi", "b".parse().unwrap());
    let seen = send(req, addr).await.json();
    assert_eq!(seen["headers"]["x-custom"], "hello");
    assert_eq!(seen["headers"]["x-multi"], "a, b");
    assert_eq!(
        (
            seen["method"].as_str(),
            seen["uri"].as_str(),
            seen["version"].as_str()
        ),
        (Some("GET"), Some("/headers?x=1"), Some("HTTP/1.1"))
    );

    let r = send(
        build(Method::POST, addr, "/upload", vec![7u8; 3 << 20]),
        addr,
    )
    .await;
    assert_eq!(r.json()["received"], 3 << 20);

    let first = get(addr, "/cache/60").await;
    assert_eq!(first.header("cache-control"), "public, max-age=60");
    assert_eq!(first.json()["served"], 1);
    assert_eq!(get(addr, "/cache/60").await.json()["served"], 2);

    let r = get(addr, "/response-headers?X-Foo=bar&Cache-Control=no-store").await;
    assert_eq!(
        (r.header("x-foo"), r.header("cache-control")),
        ("bar", "no-store")
    );

    let started = Instant::now();
    let r = get(addr, "/delay/50").await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn faults_inject_errors_and_resets_and_expire() {
    let mock = start().await;
    let addr = mock.addr();
    mock.set_fault(Fault {
        path_prefix: "/api/hello".into(),
        error_rate: 1.0,
        status: 503,
        ..Default::default()
    });
    let r = get(addr, "/api/hello").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-upstream-id"), "m1");
    assert_eq!(
        get(addr, "/health").await.status,
        200,
        "other paths unaffected"
    );
    assert_eq!(mock.hits("/api/hello"), 1, "faulted requests are counted");
    mock.clear_faults();
    assert_eq!(get(addr, "/api/hello").await.status, 200);

    mock.set_fault(Fault {
        reset_rate: 1.0,
        ..Default::default()
    });
    let err = try_send(addr, build(Method::GET, addr, "/api/users/1", Bytes::new())).await;
    assert!(err.is_err(), "connection reset expected, got {err:?}");
    assert_eq!(mock.hits("/api/users/1"), 1);
    mock.clear_faults();

    // Through the control endpoint, with a duration.
    let r = post_json(
        addr,
        "/_mock/faults",
        json!({ "path_prefix": "/api", "error_rate": 1.0, "duration": "300ms" }),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["faults"][0]["status"], 502);
    assert_eq!(get(addr, "/api/hello").await.status, 502);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        get(addr, "/api/hello").await.status,
        200,
        "the fault expired"
    );
    assert_eq!(get(addr, "/_mock/faults").await.json()["faults"], json!([]));
    let r = post_json(addr, "/_mock/faults", json!({ "error_rate": 2.0 })).await;
    assert_eq!(r.status, 400);
    let r = post_json(addr, "/_mock/faults", json!({ "eror_rate": 1.0 })).await;
    assert_eq!(r.status, 400, "unknown fields are refused");
    let r = send(
        build(Method::DELETE, addr, "/_mock/faults", Bytes::new()),
        addr,
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn latency_rules_delay_matching_paths() {
    let mock = start().await;
    let addr = mock.addr();
    mock.set_latency(LatencyRule {
        path_prefix: "/api".into(),
        dist: "fixed:100ms".parse().unwrap(),
    });
    let started = Instant::now();
    assert_eq!(get(addr, "/api/hello").await.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "took {:?}",
        started.elapsed()
    );

    // The longest prefix wins: zero latency for /api/users.
    let r = post_json(
        addr,
        "/_mock/latency",
        json!({ "path_prefix": "/api/users", "dist": "fixed:0ms" }),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["latency"].as_array().unwrap().len(), 2);
    assert_eq!(
        post_json(addr, "/_mock/latency", json!({ "dist": "bogus:1s" }))
            .await
            .status,
        400
    );

    let started = Instant::now();
    let r = post_json(addr, "/api/v1/workflows/run", json!({})).await;
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(
        r.json()["execution_time_seconds"].as_f64().unwrap() >= 0.1,
        "injected latency is reported"
    );

    // Reset clears rules and stats.
    assert_eq!(post_json(addr, "/_mock/reset", json!({})).await.status, 200);
    assert_eq!(mock.total_hits(), 0);
    assert_eq!(
        get(addr, "/_mock/latency").await.json()["latency"],
        json!([])
    );
}

#[tokio::test]
async fn stats_count_paths_but_not_control_requests() {
    let mock = start().await;
    let addr = mock.addr();
    get(addr, "/api/users/1").await;
    get(addr, "/api/users/2").await;
    get(addr, "/api/users/2").await;
    get(addr, "/_mock/faults").await;
    let stats = get(addr, "/_mock/stats").await.json();
    assert_eq!(stats["total"], 3);
    assert_eq!(
        stats["paths"],
        json!({ "/api/users/1": 1, "/api/users/2": 2 })
    );
    assert_eq!(mock.hits("/api/users"), 3);
    assert_eq!(mock.hits("/api/users/2"), 2);
    assert_eq!(mock.hits(""), 3);
}

#[tokio::test]
async fn websocket_echoes_and_answers_pings() {
    let mock = start().await;
    for path in ["/ws", "/api/meetings/42/ws"] {
        let stream = TcpStream::connect(mock.addr()).await.unwrap();
        let url = format!("ws://{}{path}", mock.addr());
        let (mut ws, res) = timeout(WAIT, tokio_tungstenite::client_async(url, stream))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.headers()["x-upstream-id"], "m1");
        ws.send(Message::text("hello")).await.unwrap();
        let echoed = timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed, Message::text("hello"));
        ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        let echoed = timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed, Message::binary(vec![1u8, 2, 3]));
        ws.send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        let pong = timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(pong, Message::Pong(Bytes::from_static(b"p")));
        ws.close(None).await.unwrap();
        // The server completes the close handshake, then the stream ends.
        while let Some(msg) = timeout(WAIT, ws.next()).await.unwrap() {
            if msg.is_err() {
                break;
            }
        }
    }
    assert_eq!(
        get(mock.addr(), "/ws").await.status,
        426,
        "plain GET is no handshake"
    );
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let mock = start().await;
    let addr = mock.addr();
    assert_eq!(get(addr, "/health").await.status, 200);
    timeout(WAIT, mock.shutdown()).await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "nothing listens after shutdown"
    );
}

#[tokio::test]
async fn start_options_apply_and_bad_ids_are_refused() {
    let opts = MockOptions {
        latency: vec!["/api/hello=fixed:60ms".parse().unwrap()],
        faults: vec![r#"{"path_prefix":"/status","error_rate":1,"status":500}"#
            .parse()
            .unwrap()],
        ..Default::default()
    };
    let mock = start_with(opts).await;
    let started = Instant::now();
    assert_eq!(
        get(mock.addr(), "/api/hello").await.header("x-upstream-id"),
        "mock"
    );
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert_eq!(get(mock.addr(), "/status/200").await.status, 500);

    let bad = MockUpstream::start(MockOptions {
        id: "bad\nid".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(bad.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
}
