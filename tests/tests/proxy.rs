//! Routing, balancing, header rules and error statuses through the real
//! gateway against `mock-upstream`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use e2e::harness::{self, client, config, get, send, simple, start_gateway};
use e2e::mock::{Fault, MockOptions, MockUpstream};
use http::Request;
use http_body_util::Full;

async fn mock(id: &str) -> MockUpstream {
    MockUpstream::start(MockOptions {
        id: id.into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn closed_port() -> SocketAddr {
    // Bind then drop: nothing listens there afterwards.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn longest_prefix_routes_to_its_upstream_and_rewrites() {
    harness::init_logs();
    let (a, b) = (mock("a").await, mock("b").await);
    let gw = start_gateway(config(
        "",
        &format!(
            r#"
            [upstreams.a]
            endpoints = ["{}"]
            [upstreams.b]
            endpoints = ["{}"]
            [[routes]]
            name = "root"
            prefix = "/"
            upstream = "a"
            [[routes]]
            name = "api_users"
            prefix = "/api/users"
            upstream = "b"
            [[routes]]
            name = "stripped"
            prefix = "/svc"
            upstream = "b"
            strip_prefix = true
            [[routes]]
            name = "rewritten"
            prefix = "/v2/echo"
            upstream = "b"
            rewrite = "/headers"
            [[routes]]
            name = "post_only"
            prefix = "/only-post"
            upstream = "a"
            methods = ["POST"]
            "#,
            a.addr(),
            b.addr()
        ),
    ))
    .await;
    let c = client();
    let r = get(&c, gw.proxy_addr, "/api/users/7").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("x-upstream-id"), "b");
    let r = get(&c, gw.proxy_addr, "/api/hello").await;
    assert_eq!(r.header("x-upstream-id"), "a");
    // Segment boundary: /api/usersX is not under /api/users.
    let r = get(&c, gw.proxy_addr, "/api/usersX").await;
    assert_eq!(r.header("x-upstream-id"), "a");
    // strip_prefix: /svc/headers?x=1 reaches b as /headers?x=1.
    let r = get(&c, gw.proxy_addr, "/svc/headers?x=1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json()["uri"], "/headers?x=1");
    // rewrite: /v2/echo?q reaches b as /headers?q.
    let r = get(&c, gw.proxy_addr, "/v2/echo?q=2").await;
    assert_eq!(r.json()["uri"], "/headers?q=2");
    // Method-restricted route: a GET falls through to the catch-all.
    let r = get(&c, gw.proxy_addr, "/only-post").await;
    assert_eq!(r.header("x-upstream-id"), "a");
}

#[tokio::test]
async fn no_route_is_a_json_404_with_request_id() {
    let a = mock("a").await;
    let gw = start_gateway(config(
        "",
        &format!(
            "[upstreams.a]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"a\"\n\
             [[routes]]\nname = \"events\"\nprefix = \"/events\"\nupstream = \"a\"\nmethods = [\"POST\"]\n",
            a.addr()
        ),
    ))
    .await;
    let r = get(&client(), gw.proxy_addr, "/elsewhere").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.header("content-type"), "application/json");
    let v = r.json();
    assert_eq!(v["error"], "no route matches the request");
    assert_eq!(v["request_id"].as_str().unwrap().len(), 32);
    assert_eq!(v["request_id"], r.header("x-request-id"));
    assert_eq!(
        a.total_hits(),
        0,
        "a rejected request never reaches the upstream"
    );
}

#[tokio::test]
async fn round_robin_alternates_and_least_request_spreads() {
    let (a, b) = (mock("a").await, mock("b").await);
    for (balance, check_alternation) in [("round_robin", true), ("least_request", false)] {
        let gw = start_gateway(config(
            "",
            &simple(
                "pool",
                &[a.addr(), b.addr()],
                &format!("balance = \"{balance}\""),
            ),
        ))
        .await;
        let c = client();
        let mut seen = Vec::new();
        for _ in 0..40 {
            let r = get(&c, gw.proxy_addr, "/api/hello").await;
            assert_eq!(r.status(), 200);
            seen.push(r.header("x-upstream-id").to_owned());
        }
        let counts = seen.iter().fold(HashMap::new(), |mut m, id| {
            *m.entry(id.clone()).or_insert(0) += 1;
            m
        });
        assert_eq!(
            counts.len(),
            2,
            "{balance}: both endpoints used: {counts:?}"
        );
        if check_alternation {
            assert!(
                seen.windows(2).all(|w| w[0] != w[1]),
                "round robin alternates: {seen:?}"
            );
        }
        gw.shutdown();
        gw.wait().await;
    }
}

#[tokio::test]
async fn least_request_avoids_the_busy_endpoint() {
    let (slow, fast) = (mock("slow").await, mock("fast").await);
    let gw = start_gateway(config(
        "",
        &simple(
            "pool",
            &[slow.addr(), fast.addr()],
            "balance = \"least_request\"",
        ),
    ))
    .await;
    let c = client();
    // Occupy the slow endpoint with long requests.
    slow.set_latency(e2e::mock::LatencyRule {
        path_prefix: "/".into(),
        dist: "fixed:3s".parse().unwrap(),
    });
    let mut pending = Vec::new();
    for _ in 0..4 {
        let c = c.clone();
        let addr = gw.proxy_addr;
        pending.push(tokio::spawn(
            async move { get(&c, addr, "/api/hello").await },
        ));
    }
    harness::wait_until("slow endpoint busy", || async { slow.total_hits() >= 1 }).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let busy = slow.total_hits();
    for _ in 0..20 {
        get(&c, gw.proxy_addr, "/api/hello").await;
    }
    // With requests in flight on `slow`, P2C picks `fast` whenever both are
    // candidates: at most a few new requests can land on `slow`.
    assert!(
        slow.total_hits() - busy <= 2,
        "slow got {} new requests",
        slow.total_hits() - busy
    );
    for p in pending {
        p.await.unwrap();
    }
}

#[tokio::test]
async fn proxy_header_rules() {
    let a = mock("a").await;
    let gw = start_gateway(config("", &simple("a", &[a.addr()], ""))).await;
    let c = client();
    let req = Request::get(format!("http://{}/headers", gw.proxy_addr))
        .header("host", "api.example.com")
        .header("connection", "keep-alive, x-conn-private")
        .header("x-conn-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-request-id", "client-id-42")
        .header("x-custom", "kept")
        .body(Full::default())
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.header("x-request-id"),
        "client-id-42",
        "client id returned"
    );
    assert!(
        r.header("via").ends_with("1.1 gateway"),
        "via on response: {}",
        r.header("via")
    );
    let seen = r.json();
    let h = &seen["headers"];
    for gone in ["x-conn-private", "keep-alive", "proxy-authorization", "te"] {
        assert!(h.get(gone).is_none(), "{gone} must not be forwarded: {h}");
    }
    assert_eq!(h["x-custom"], "kept");
    // An untrusted peer's own X-Forwarded-For is discarded.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example.com");
    assert_eq!(h["via"], "1.1 gateway");
    assert_eq!(h["x-request-id"], "client-id-42");
    assert_eq!(
        h["host"],
        a.addr().to_string(),
        "upstream sees its own authority"
    );

    // Without a client id, one is generated, forwarded and returned.
    let r = get(&c, gw.proxy_addr, "/headers").await;
    let id = r.header("x-request-id").to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(r.json()["headers"]["x-request-id"], id.as_str());
}

#[tokio::test]
async fn upstream_refused_is_502_and_reset_is_502() {
    let gw = start_gateway(config(
        "",
        &simple("dead", &[closed_port()], "connect_timeout = \"1s\""),
    ))
    .await;
    let r = get(&client(), gw.proxy_addr, "/api/hello").await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.json()["error"], "upstream refused the connection");
    assert!(!r.header("x-request-id").is_empty());

    let a = mock("a").await;
    a.set_fault(Fault {
        path_prefix: "/api/hello".into(),
        reset_rate: 1.0,
        ..Default::default()
    });
    let gw = start_gateway(config("", &simple("a", &[a.addr()], ""))).await;
    let r = get(&client(), gw.proxy_addr, "/api/hello").await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.json()["error"], "upstream closed or reset the connection");
}

#[tokio::test]
async fn slow_upstream_is_504_by_upstream_or_route_timeout() {
    let a = mock("a").await;
    let gw = start_gateway(config(
        "",
        &format!(
            r#"
            [upstreams.a]
            endpoints = ["{0}"]
            request_timeout = "300ms"
            [upstreams.b]
            endpoints = ["{0}"]
            [[routes]]
            name = "up"
            prefix = "/delay"
            upstream = "a"
            [[routes]]
            name = "route"
            prefix = "/api"
            upstream = "b"
            timeout = "300ms"
            "#,
            a.addr()
        ),
    ))
    .await;
    let c = client();
    let r = get(&c, gw.proxy_addr, "/delay/3000").await;
    assert_eq!(r.status(), 504);
    assert_eq!(r.json()["error"], "upstream \"a\" timed out");
    let r = get(&c, gw.proxy_addr, "/delay/50").await;
    assert_eq!(r.status(), 200);

    a.set_latency(e2e::mock::LatencyRule {
        path_prefix: "/api/hello".into(),
        dist: "fixed:3s".parse().unwrap(),
    });
    let r = get(&c, gw.proxy_addr, "/api/hello").await;
    assert_eq!(r.status(), 504);
    assert_eq!(r.json()["error"], "route timeout exceeded");
}

#[tokio::test]
async fn body_over_the_route_limit_is_413_declared_or_streamed() {
    let a = mock("a").await;
    let gw = start_gateway(config(
        "max_body_size = \"1KiB\"",
        &simple("a", &[a.addr()], ""),
    ))
    .await;
    let c = client();
    // Declared Content-Length over the limit: rejected before the upstream.
    let req = Request::post(format!("http://{}/api/echo", gw.proxy_addr))
        .body(Full::new(Bytes::from(vec![b'x'; 2048])))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json()["error"],
        "request body exceeds the limit of 1024 bytes"
    );
    assert_eq!(a.hits("/api/echo"), 0);
    // Within the limit: passes.
    let req = Request::post(format!("http://{}/api/echo", gw.proxy_addr))
        .body(Full::new(Bytes::from(vec![b'x'; 1000])))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body.len(), 1000);

    // Chunked body (no Content-Length) growing past the limit.
    let chunks =
        futures_util::stream::iter((0..8).map(|_| {
            Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![b'y'; 512])))
        }));
    let body = http_body_util::StreamBody::new(chunks);
    let req = Request::post(format!("http://{}/upload", gw.proxy_addr))
        .body(body)
        .unwrap();
    let chunked_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let resp = tokio::time::timeout(harness::WAIT, chunked_client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 413);
}

/// Everything the peer sends until it closes the connection.
async fn read_until_closed(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    tokio::time::timeout(harness::WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// One whole response (head and `Content-Length` body), the connection
/// left open.
async fn read_one_response(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    tokio::time::timeout(harness::WAIT, async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text
                    .split("content-length: ")
                    .nth(1)
                    .and_then(|r| r.split("\r\n").next())
                    .and_then(|v| v.parse().ok())
                    .unwrap();
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn client_too_slow_sending_headers_gets_408() {
    use tokio::io::AsyncWriteExt;
    let a = mock("a").await;
    let gw = start_gateway(config(
        "header_read_timeout = \"300ms\"",
        &simple("a", &[a.addr()], ""),
    ))
    .await;
    // Partial headers, then silence.
    let mut s = tokio::net::TcpStream::connect(gw.proxy_addr).await.unwrap();
    s.write_all(b"GET /api/hello HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let text = read_until_closed(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("\"request_id\""), "{text}");

    // A keep-alive connection that finished its request and then idles is
    // closed without a 408.
    let mut s = tokio::net::TcpStream::connect(gw.proxy_addr).await.unwrap();
    s.write_all(b"GET /api/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let text = read_until_closed(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
    assert!(!text.contains("408"), "{text}");

    // A connection that sends nothing at all is closed silently too.
    let mut s = tokio::net::TcpStream::connect(gw.proxy_addr).await.unwrap();
    assert!(read_until_closed(&mut s).await.is_empty());

    // The second request of a keep-alive connection is timed too (its
    // header deadline is a recycled timer, moved on from the first's):
    // the whole first response, then the start of a second request.
    let mut s = tokio::net::TcpStream::connect(gw.proxy_addr).await.unwrap();
    s.write_all(b"GET /api/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_one_response(&mut s).await.starts_with("HTTP/1.1 200 "));
    s.write_all(b"GET /api/hello HTTP/1.1\r\n").await.unwrap();
    let text = read_until_closed(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
}

#[tokio::test]
async fn garbage_input_never_kills_the_gateway() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = mock("a").await;
    let gw = start_gateway(config("", &simple("a", &[a.addr()], ""))).await;
    let inputs: [&[u8]; 6] = [
        b"\x00\x01\x02\x03garbage\r\n\r\n",
        b"GET /api/hello HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /api/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET http://evil.example/api/hello HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        b"GET /api/hello HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: \xff\xfe\r\n\r\n",
    ];
    for input in inputs {
        let mut s = tokio::net::TcpStream::connect(gw.proxy_addr).await.unwrap();
        s.write_all(input).await.unwrap();
        let _ = s.shutdown().await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(harness::WAIT, s.read_to_end(&mut buf))
            .await
            .unwrap();
    }
    let r = get(&client(), gw.proxy_addr, "/api/hello").await;
    assert_eq!(r.status(), 200, "still serving");
}
