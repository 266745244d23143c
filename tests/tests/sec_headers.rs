//! Request sanitation at the edge (issue 11, items 2, 3, 9 and the edge
//! parts of 4 and 6), through the real binary against a raw-socket upstream
//! that records the exact bytes it receives: identity headers, Connection
//! tokens, forwarding headers and the one client address, Host and
//! Authorization rules, upgrades.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use e2e::harness::{poll_until, temp_dir, wait_until, GatewayProcess, WAIT};
use e2e::raw::{raw_request, response, RawRequest, RawUpstream, Step};
use e2e::{MockOptions, MockUpstream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "sec-headers-test-secret-0123456789abcdef";

/// An upstream that records every request; `/upgradable` and
/// `/public/switch` answer `101` as a misbehaving (or h2c-speaking)
/// upstream would, then send bytes of the "new protocol"; the rest `200`.
async fn raw_upstream() -> RawUpstream {
    RawUpstream::start(|req: &RawRequest| {
        if req.target.starts_with("/upgradable") || req.target.starts_with("/public/switch") {
            vec![
                Step::text(
                    "HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n",
                ),
                Step::text("TUNNEL-BYTES"),
                Step::Hang,
            ]
        } else {
            vec![Step::Write(response(200, &[], "ok"))]
        }
    })
    .await
}

/// A gateway process in front of `raw` (and `mock` for WebSockets).
fn gateway(raw: SocketAddr, mock: SocketAddr, server_extra: &str, extra: &str) -> GatewayProcess {
    let dir = temp_dir("sec-headers");
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let config = format!(
        r#"
[server]
strip_request_headers = ["X-Internal-Token"]
{server_extra}

{extra}

[telemetry.access_log]
sample_ratio = 1.0
always_log_client_errors = true

[auth.t]
forward_claims = {{ sub = "X-User-Id" }}
[[auth.t.keys]]
algorithms = ["HS256"]
secret_file = "{secret}"

[upstreams.raw]
endpoints = ["{raw}"]
[upstreams.mock]
endpoints = ["{mock}"]

[[routes]]
name = "public"
prefix = "/public"
upstream = "raw"

[[routes]]
name = "private"
prefix = "/private"
upstream = "raw"
auth = {{ provider = "t" }}

[[routes]]
name = "limited"
prefix = "/limited"
upstream = "raw"
rate_limits = [{{ name = "per-ip", key = "client_ip", limit = 2, window = "60s" }}]

[[routes]]
name = "hosted"
prefix = "/hosted"
upstream = "raw"
host = "good.example"

[[routes]]
name = "upgradable"
prefix = "/upgradable"
upstream = "raw"
websocket = true

[[routes]]
name = "ws"
prefix = "/ws"
upstream = "mock"
websocket = true

[[routes]]
name = "ws-off"
prefix = "/plain-ws"
upstream = "mock"
rewrite = "/ws"
"#,
        secret = secret.display(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    GatewayProcess::spawn_with_args(Some(&path), &[], &["--log-format", "json"])
}

async fn setup(server_extra: &str, extra: &str) -> (RawUpstream, MockUpstream, GatewayProcess) {
    let raw = raw_upstream().await;
    let mock = MockUpstream::start(MockOptions::default()).await.unwrap();
    let gw = gateway(raw.addr, mock.addr(), server_extra, extra);
    (raw, mock, gw)
}

fn token(sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "sub": sub, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Sends one raw request; returns the status and the whole response.
async fn send(gw: &GatewayProcess, head: &str) -> (u16, String) {
    raw_request(gw.addr, head).await
}

/// Sends `req` and reads until the response contains `needle` (or the
/// peer closes, or [`WAIT`] passes); returns what was read.
async fn read_until(addr: SocketAddr, req: &str, needle: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&out).contains(needle) {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The one request the upstream received (waiting for it, bounded).
async fn received(up: &RawUpstream, n: usize) -> RawRequest {
    wait_until("the upstream received the request", || async {
        up.requests().len() >= n
    })
    .await;
    up.requests()[n - 1].clone()
}

/// A 400 from the gateway: JSON body with the request id, `x-request-id`.
fn assert_gateway_400(status: u16, text: &str, what: &str) {
    assert_eq!(status, 400, "{what}: {text}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("{what}: no x-request-id in {head}"));
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["request_id"], id, "{what}: {body}");
    assert!(v["error"].is_string(), "{what}: {body}");
}

#[tokio::test]
async fn identity_headers_and_listed_headers_never_reach_the_upstream() {
    let (up, _mock, gw) = setup("", "").await;
    let (status, text) = send(
        &gw,
        "GET /public/x HTTP/1.1\r\nHost: gw.test\r\nX-User-Id: admin\r\nx-user-id: root\r\n\
         X-Internal-Token: s3cret\r\nX-Other: kept\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let r = received(&up, 1).await;
    assert!(r.all("x-user-id").is_empty(), "{}", r.head_text());
    assert!(r.all("x-internal-token").is_empty(), "{}", r.head_text());
    assert_eq!(r.header("x-other"), Some("kept"));
}

#[tokio::test]
async fn connection_tokens_cannot_remove_headers_the_gateway_adds() {
    let (up, _mock, gw) = setup("", "").await;
    let (status, text) = send(
        &gw,
        &format!(
            "GET /private/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {}\r\n\
             X-Request-Id: sec-conn-1\r\nConnection: close, X-Request-Id, X-User-Id\r\n\r\n",
            token("alice")
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let r = received(&up, 1).await;
    assert_eq!(r.all("x-user-id"), ["alice"], "{}", r.head_text());
    assert_eq!(r.all("x-request-id").len(), 1, "{}", r.head_text());
    assert!(!r.all("connection").iter().any(|v| v.contains("X-")));
}

const FORWARDING: &str = "Forwarded: for=6.6.6.6;proto=https\r\nX-Real-IP: 6.6.6.6\r\n\
    X-Forwarded-Host: public.example\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Proto: https\r\n";

#[tokio::test]
async fn an_untrusted_clients_forwarding_headers_are_not_forwarded() {
    let (up, _mock, gw) = setup("", "").await;
    let (status, text) = send(
        &gw,
        &format!(
            "GET /public/x HTTP/1.1\r\nHost: gw.test\r\n{FORWARDING}\
             X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let r = received(&up, 1).await;
    let head = r.head_text();
    for gone in ["forwarded", "x-real-ip", "x-forwarded-port"] {
        assert!(r.all(gone).is_empty(), "{gone} forwarded: {head}");
    }
    // The gateway's own, from what it knows: the peer, plain HTTP, Host.
    assert_eq!(r.all("x-forwarded-for"), ["127.0.0.1"], "{head}");
    assert_eq!(r.all("x-forwarded-proto"), ["http"], "{head}");
    assert_eq!(r.all("x-forwarded-host"), ["gw.test"], "{head}");
}

#[tokio::test]
async fn a_trusted_proxys_chain_is_one_line_and_one_client_for_limiter_and_log() {
    let (up, _mock, gw) = setup(
        "",
        "[rate_limit]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]",
    )
    .await;
    // Two X-Forwarded-For lines make one list; the client wrote 6.6.6.6.
    let (status, text) = send(
        &gw,
        &format!(
            "GET /limited/x HTTP/1.1\r\nHost: gw.test\r\n{FORWARDING}X-Request-Id: sec-trusted-1\r\n\
             X-Forwarded-For: 6.6.6.6, 203.0.113.9\r\nX-Forwarded-For: 10.0.0.5\r\n\
             Connection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let r = received(&up, 1).await;
    let head = r.head_text();
    assert_eq!(
        r.all("x-forwarded-for"),
        ["203.0.113.9, 10.0.0.5, 127.0.0.1"],
        "{head}"
    );
    // A trusted proxy's other forwarding headers are kept, not doubled.
    assert_eq!(r.all("forwarded"), ["for=6.6.6.6;proto=https"], "{head}");
    assert_eq!(r.all("x-real-ip"), ["6.6.6.6"], "{head}");
    assert_eq!(r.all("x-forwarded-port"), ["443"], "{head}");
    assert_eq!(r.all("x-forwarded-proto"), ["https"], "{head}");
    assert_eq!(r.all("x-forwarded-host"), ["public.example"], "{head}");
    // The access log names the same client.
    let client = poll_until("the access log line", || async {
        gw.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["target"] == "access" && v["fields"]["request_id"] == "sec-trusted-1")
            .map(|v| v["fields"]["client"].clone())
    })
    .await;
    assert_eq!(client, "203.0.113.9");
    // The limiter counts the same client, whatever was written left of it
    // and however the lines were split: its limit is 2.
    let xff = |v: &str| {
        format!("GET /limited/x HTTP/1.1\r\nHost: gw.test\r\nX-Forwarded-For: {v}\r\nConnection: close\r\n\r\n")
    };
    let (s2, _) = send(&gw, &xff("7.7.7.7, 203.0.113.9, 10.0.0.5")).await;
    let (s3, t3) = send(&gw, &xff("203.0.113.9")).await;
    assert_eq!((s2, s3), (200, 429), "{t3}");
    let (s4, _) = send(&gw, &xff("198.51.100.1")).await;
    assert_eq!(s4, 200, "another client has its own bucket");
}

#[tokio::test]
async fn host_rules_are_enforced_with_json_400s() {
    let (up, _mock, gw) = setup("", "").await;
    let long = "a".repeat(300);
    let cases = [
        ("no Host", "GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned()),
        (
            "two Host",
            "GET /public/x HTTP/1.1\r\nHost: gw.test\r\nHost: other.test\r\nConnection: close\r\n\r\n"
                .to_owned(),
        ),
        (
            "300-byte Host",
            format!("GET /public/x HTTP/1.1\r\nHost: {long}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "Host not an authority",
            "GET /public/x HTTP/1.1\r\nHost: a b@c\r\nConnection: close\r\n\r\n".to_owned(),
        ),
        (
            "two Authorization",
            "GET /public/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer a\r\n\
             Authorization: Bearer b\r\nConnection: close\r\n\r\n"
                .to_owned(),
        ),
    ];
    for (what, req) in &cases {
        let (status, text) = send(&gw, req).await;
        assert_gateway_400(status, &text, what);
    }
    assert!(
        up.requests().is_empty(),
        "a refused request reached the upstream"
    );

    // Absolute form: its authority wins over Host, for routing and upstream.
    let (status, text) = send(
        &gw,
        "GET http://good.example/hosted/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let r = received(&up, 1).await;
    assert_eq!(
        r.all("x-forwarded-host"),
        ["good.example"],
        "{}",
        r.head_text()
    );
    assert_eq!(r.target, "/hosted/x");
    // And the other way round: Host names the route's host, the target
    // another one: not that route.
    let (status, _) = send(
        &gw,
        "GET http://evil.example/hosted/x HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn h2c_upgrades_never_reach_the_upstream_nor_become_tunnels() {
    let (up, _mock, gw) = setup("", "").await;
    // On a route that allows WebSockets, and on one that does not.
    for (i, path) in ["/upgradable/x", "/public/switch"].iter().enumerate() {
        let (status, text) = send(
            &gw,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close, Upgrade, HTTP2-Settings\r\n\
                 Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            ),
        )
        .await;
        let r = received(&up, i + 1).await;
        let head = r.head_text().to_ascii_lowercase();
        assert!(!head.contains("upgrade"), "{head}");
        assert!(!head.contains("http2-settings"), "{head}");
        // The upstream's 101 to a plain request is refused, not tunnelled.
        assert_eq!(status, 502, "{text}");
        assert!(!text.contains("TUNNEL-BYTES"), "{text}");
    }
}

/// A WebSocket handshake for `path` (`Connection: close` too when `close`).
fn handshake(path: &str, close: bool) -> String {
    let close = if close { "close, " } else { "" };
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: {close}Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

#[tokio::test]
async fn websocket_upgrades_are_forwarded_only_where_the_route_allows_them() {
    let (up, mock, gw) = setup("", "").await;
    // Not allowed: forwarded as a plain request; the 101 is refused.
    let (status, text) = send(&gw, &handshake("/public/switch", true)).await;
    let r = received(&up, 1).await;
    let head = r.head_text().to_ascii_lowercase();
    assert!(r.all("upgrade").is_empty(), "{head}");
    assert!(!head.contains("connection: upgrade"), "{head}");
    assert_eq!(
        r.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    assert_eq!(status, 502, "{text}");
    // Allowed: the handshake reaches the upstream as one.
    let text = read_until(gw.addr, &handshake("/upgradable/x", false), "TUNNEL-BYTES").await;
    let r = received(&up, 2).await;
    assert_eq!(r.all("upgrade"), ["websocket"], "{}", r.head_text());
    assert_eq!(r.all("connection"), ["upgrade"], "{}", r.head_text());
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.contains("TUNNEL-BYTES"), "{text}");

    // With a real WebSocket upstream: works on the route that allows it...
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut ws, resp) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(format!("ws://{}/ws", gw.addr), stream),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let echo = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "hello");
    ws.close(None).await.unwrap();
    // ...and not on the same upstream path through a route that does not.
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let refused = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(format!("ws://{}/plain-ws", gw.addr), stream),
    )
    .await
    .unwrap();
    assert!(
        refused.is_err(),
        "handshake succeeded on a route without websocket"
    );
    drop(mock);
}
