//! The gateway's upstream HTTP/1.1 client against hand-written upstreams:
//! framing (chunked, close-delimited, interim 1xx), connection reuse, and
//! the keep-alive race with an upstream that closes idle connections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use e2e::harness::{client, config, get, simple, start_gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw upstream: for each connection, reads request heads and answers
/// each with `respond(n)` (n = request number on that connection); closes
/// the connection after `per_conn` requests. Counts connections.
async fn raw_upstream(
    per_conn: usize,
    respond: fn(usize) -> Vec<u8>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for n in 0..per_conn {
                    // Read one request head (these tests send no bodies).
                    loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            break;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    if s.write_all(&respond(n)).await.is_err() {
                        return;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn chunked_responses_with_trailers_are_decoded_and_reused() {
    let (up, conns) = raw_upstream(100, |_| {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n".to_vec()
    })
    .await;
    let gw = start_gateway(config("", &simple("raw", &[up], ""))).await;
    let c = client();
    for _ in 0..5 {
        let r = get(&c, gw.proxy_addr, "/x").await;
        assert_eq!(r.status(), 200);
        assert_eq!(&r.body[..], b"hello world");
        assert_eq!(r.header("x-up"), "1");
        assert!(
            r.header("transfer-encoding").is_empty() || r.header("transfer-encoding") == "chunked"
        );
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "one upstream connection for sequential requests"
    );
}

#[tokio::test]
async fn close_delimited_and_interim_responses() {
    let (up, _) = raw_upstream(1, |_| {
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close".to_vec()
    })
    .await;
    let gw = start_gateway(config("", &simple("raw", &[up], ""))).await;
    let c = client();
    for _ in 0..3 {
        let r = get(&c, gw.proxy_addr, "/x").await;
        assert_eq!(r.status(), 200);
        assert_eq!(&r.body[..], b"until close");
    }

    let (up, _) = raw_upstream(10, |_| {
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok".to_vec()
    })
    .await;
    let gw = start_gateway(config("", &simple("raw", &[up], ""))).await;
    let r = get(&c, gw.proxy_addr, "/x").await;
    assert_eq!(r.status(), 201);
    assert_eq!(&r.body[..], b"ok");
}

#[tokio::test]
async fn an_upstream_closing_idle_connections_causes_no_errors() {
    // Each connection serves exactly one request with keep-alive advertised,
    // then closes: the pooled connection is dead by the next request.
    let (up, conns) = raw_upstream(1, |_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
    })
    .await;
    let gw = start_gateway(config("", &simple("raw", &[up], ""))).await;
    let c = client();
    for i in 0..20 {
        let r = get(&c, gw.proxy_addr, "/x").await;
        assert_eq!(
            r.status(),
            200,
            "request {i}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(&r.body[..], b"ok");
        // Let the close reach the gateway sometimes, race it other times.
        if i % 2 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    assert!(conns.load(Ordering::SeqCst) >= 20);
}

#[tokio::test]
async fn invalid_upstream_responses_are_502() {
    let (up, _) = raw_upstream(1, |_| b"NOT HTTP AT ALL\r\n\r\n".to_vec()).await;
    let gw = start_gateway(config("", &simple("raw", &[up], ""))).await;
    let r = get(&client(), gw.proxy_addr, "/x").await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.json()["error"], "invalid response from upstream");

    let (up, _) = raw_upstream(1, |_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec()
    })
    .await;
    let gw = start_gateway(config("", &simple("raw", &[up], ""))).await;
    let r = get(&client(), gw.proxy_addr, "/x").await;
    assert_eq!(r.status(), 502);
}

#[tokio::test]
async fn an_upstream_closing_mid_body_aborts_the_response_and_the_gateway_keeps_serving() {
    // Promises 10 bytes, sends 5, closes.
    let (up, _) = raw_upstream(1, |_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello".to_vec()
    })
    .await;
    let gw = start_gateway(config("", &simple("raw", &[up], ""))).await;
    let c = client();
    let sent = tokio::time::timeout(
        e2e::harness::WAIT,
        c.request(
            http::Request::get(format!("http://{}/x", gw.proxy_addr))
                .body(http_body_util::Full::default())
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    // The connection is aborted: either before the client has the head, or
    // while it reads the body. It must never see a complete 10-byte body.
    if let Ok(resp) = sent {
        assert_eq!(resp.status(), 200);
        let body = tokio::time::timeout(
            e2e::harness::WAIT,
            http_body_util::BodyExt::collect(resp.into_body()),
        )
        .await
        .unwrap();
        assert!(
            body.is_err(),
            "a truncated body must not look complete to the client"
        );
    }
    // The gateway is fine afterwards.
    let (ok_up, _) = raw_upstream(10, |_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
    })
    .await;
    let gw2 = start_gateway(config("", &simple("raw", &[ok_up], ""))).await;
    assert_eq!(get(&c, gw2.proxy_addr, "/x").await.status(), 200);
}
