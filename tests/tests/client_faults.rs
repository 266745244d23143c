//! Faults of the client's request, through the real gateway binary against
//! raw-socket upstreams that record the exact bytes they receive: a
//! malformed, oversized, abandoned or stalled upload is the client's fault
//! (400/413/499/408) and never trips the upstream's breaker; a
//! non-idempotent request that reached the upstream is never resent; and
//! `request_timeout` starts once the upload is done.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::StreamBody;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use e2e::harness::{
    client, get, metrics_text, poll_until, sample, temp_file, wait_until, GatewayProcess,
};
use e2e::raw::{raw_request, response, RawUpstream, Step};

/// The gateway with one upstream `up` at `upstream` (with `upstream_extra`), `[server]`
/// settings `server`, and `routes` (TOML `[[routes]]` tables).
fn spawn(
    upstream: std::net::SocketAddr,
    server: &str,
    upstream_extra: &str,
    routes: &str,
) -> GatewayProcess {
    let path = temp_file(
        "clientfaults",
        "gateway.toml",
        &format!(
            "[server]\n{server}\n[upstreams.up]\nendpoints = [\"{}\"]\n{upstream_extra}\n{routes}\n\
             [telemetry.access_log]\nenabled = true\nsample_ratio = 0.0\nalways_log_client_errors = true\n\
             [[slos]]\nname = \"edge\"\nroutes = [\"all\"]\navailability = 0.99\n",
            upstream
        ),
    );
    GatewayProcess::spawn_with_args(Some(&path), &[], &["--log-format", "json"])
}

fn route(name: &str, prefix: &str, extra: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nupstream = \"up\"\n{extra}\n")
}

/// Reads the response status from `s` (0 when the gateway closed without
/// one), bounded.
async fn status_of(s: &mut TcpStream) -> u16 {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sends `head` then `body` and returns the status (writes may fail once
/// the gateway has answered and closed: that is fine).
async fn post_raw(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await;
    status_of(&mut s).await
}

/// Sends `head` and then one byte of body every `every`, until the
/// gateway answers; returns the status and how long it took.
async fn trickle(addr: std::net::SocketAddr, head: &str, every: Duration) -> (u16, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..60 {
            if wr.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut out)).await;
    writer.abort();
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, start.elapsed())
}

fn get_req(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
}

async fn get_ok(gw: &GatewayProcess, what: &str) {
    let (status, text) = raw_request(gw.addr, &get_req("/ok")).await;
    assert_eq!(
        status, 200,
        "after {what}, GET answered {status} (breaker open?): {text}"
    );
}

/// `gateway_requests_total{route, method="POST", status}`.
fn posts(text: &str, route: &str, status: &str) -> Option<f64> {
    sample(
        text,
        &format!("gateway_requests_total{{route=\"{route}\",method=\"POST\",status=\"{status}\"}}"),
    )
}

/// The gateway for client faults: a breaker that five failures open, a
/// 1 KiB body limit and a 1.5 s body idle timeout on `/`, a route `/timed`
/// with a 1 s timeout.
async fn faults_gateway() -> (RawUpstream, GatewayProcess) {
    // The upstream answers whatever reaches it whole.
    let up = RawUpstream::start(|_| vec![Step::Write(response(200, &[], "ok"))]).await;
    let gw = spawn(
        up.addr,
        "body_idle_timeout = \"1500ms\"",
        "request_timeout = \"4s\"\ncircuit_breaker = { consecutive_failures = 5, open_time = \"60s\" }",
        &format!(
            "{}{}",
            route("timed", "/timed", "timeout = \"1s\""),
            route("all", "/", "max_body_size = \"1KiB\""),
        ),
    );
    get_ok(&gw, "start").await;
    (up, gw)
}

/// After five faults answered `status` on `route`: a GET on the same
/// upstream still succeeds (the breaker is closed), the metrics count five
/// `status` and no 5xx, and the SLO saw no error.
async fn blamed_on_the_client(gw: &GatewayProcess, route: &str, status: &str) {
    get_ok(gw, &format!("five {status} on {route}")).await;
    let m = poll_until("the five faults counted", || async {
        let m = metrics_text(&client(), gw.admin).await;
        (posts(&m, route, status) == Some(5.0)).then_some(m)
    })
    .await;
    for bad in ["500", "502", "503", "504", "5xx"] {
        assert_eq!(posts(&m, route, bad), None, "{bad}: {m}");
    }
    let circuit = m
        .lines()
        .find(|l| l.starts_with("gateway_circuit_state"))
        .unwrap_or_default();
    assert!(circuit.ends_with(" 0"), "breaker not closed: {circuit}");
    let slo = get(&client(), gw.admin, "/slo").await.json();
    assert_eq!(slo["slos"][0]["windows"][0]["errors"], 0, "{slo}");
}

const CHUNKED: &str = "POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";

#[tokio::test]
async fn malformed_chunked_bodies_are_400_not_upstream_failures() {
    let (_up, gw) = faults_gateway().await;
    for _ in 0..5 {
        let status = post_raw(gw.addr, CHUNKED, b"5\r\nhello\r\nzz\r\nmore\r\n").await;
        assert_eq!(status, 400, "malformed chunked body");
    }
    blamed_on_the_client(&gw, "all", "400").await;
}

#[tokio::test]
async fn bodies_over_the_limit_mid_stream_are_413_not_upstream_failures() {
    let (_up, gw) = faults_gateway().await;
    // No Content-Length: the limit is found mid-stream.
    let over = format!("100\r\n{}\r\n", "a".repeat(256)).repeat(16);
    for _ in 0..5 {
        let status = post_raw(gw.addr, CHUNKED, over.as_bytes()).await;
        assert_eq!(status, 413, "oversized body");
    }
    blamed_on_the_client(&gw, "all", "413").await;
}

#[tokio::test]
async fn aborted_uploads_are_499_not_upstream_failures() {
    let (_up, gw) = faults_gateway().await;
    // The client sends part of its body and leaves.
    for _ in 0..5 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\n\r\n0123456789")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(s);
    }
    blamed_on_the_client(&gw, "all", "499").await;
    wait_until("the aborts in the access log as 499", || async {
        let logs = gw.logs.lock().unwrap().clone();
        logs.iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "access" && v["fields"]["status"] == 499)
            .count()
            == 5
    })
    .await;
}

#[tokio::test]
async fn stalled_uploads_are_408_after_the_body_idle_timeout() {
    let (_up, gw) = faults_gateway().await;
    // One byte, then silence.
    let stalled = "POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n";
    let runs = (0..5).map(|_| trickle(gw.addr, stalled, Duration::from_secs(10)));
    for (status, took) in futures_util::future::join_all(runs).await {
        assert_eq!(status, 408, "stalled upload");
        assert!(took < Duration::from_secs(4), "{took:?}");
    }
    blamed_on_the_client(&gw, "all", "408").await;
}

#[tokio::test]
async fn uploads_slower_than_the_route_timeout_are_408_not_504() {
    let (_up, gw) = faults_gateway().await;
    // 5 bytes/s, never idle, still uploading when the route's 1 s passes.
    let slow = "POST /timed/up HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n";
    let runs = (0..5).map(|_| trickle(gw.addr, slow, Duration::from_millis(200)));
    for (status, _) in futures_util::future::join_all(runs).await {
        assert_eq!(status, 408, "slow upload past the route timeout");
    }
    blamed_on_the_client(&gw, "timed", "408").await;
}

/// Answers a request on a fresh connection; closes a reused one without a
/// word (an upstream closing an idle keep-alive connection just as a
/// request arrives on it).
async fn racing_upstream() -> RawUpstream {
    RawUpstream::start(|req| {
        if req.index == 0 {
            vec![Step::Write(response(200, &[], "fresh"))]
        } else {
            vec![Step::Close]
        }
    })
    .await
}

/// Warms the pool (one answered request leaves a pooled connection), then
/// sends `req` and returns its status and how many times the upstream
/// received a request to `path`.
async fn after_warm(gw: &GatewayProcess, up: &RawUpstream, req: &str, path: &str) -> (u16, usize) {
    let (status, text) = raw_request(gw.addr, &get_req("/warm")).await;
    assert_eq!(status, 200, "{text}");
    let (status, _) = raw_request(gw.addr, req).await;
    let seen = up.requests().iter().filter(|r| r.target == path).count();
    (status, seen)
}

/// What the upstream received: method, target, connection.
fn targets(up: &RawUpstream) -> Vec<(String, String, usize)> {
    up.requests()
        .into_iter()
        .map(|r| (r.method, r.target, r.conn))
        .collect()
}

#[tokio::test]
async fn a_post_that_reached_the_upstream_is_never_resent() {
    let up = racing_upstream().await;
    let gw = spawn(
        up.addr,
        "",
        "",
        &format!(
            "{}{}",
            route(
                "keyed",
                "/keyed",
                "[routes.retry]\nattempts = 1\nidempotency_key = true"
            ),
            route("all", "/", ""),
        ),
    );
    let post = |path: &str, key: bool| {
        let key = if key { "Idempotency-Key: k-1\r\n" } else { "" };
        format!("POST {path} HTTP/1.1\r\nHost: t\r\n{key}Content-Length: 0\r\nConnection: close\r\n\r\n")
    };
    // An empty POST on a connection the upstream closes unanswered: sent
    // once, the client gets 502.
    let (status, seen) = after_warm(&gw, &up, &post("/p1", false), "/p1").await;
    assert_eq!((status, seen), (502, 1), "{:?}", targets(&up));
    // An Idempotency-Key where the route does not honour it: the same.
    let (status, seen) = after_warm(&gw, &up, &post("/p2", true), "/p2").await;
    assert_eq!((status, seen), (502, 1), "{:?}", targets(&up));
    // Where the route honours it: resent once, on a fresh connection.
    let (status, seen) = after_warm(&gw, &up, &post("/keyed/p3", true), "/keyed/p3").await;
    assert_eq!((status, seen), (200, 2), "{:?}", targets(&up));
    // A GET is still resent once (the keep-alive race).
    let (status, seen) = after_warm(&gw, &up, &get_req("/g"), "/g").await;
    assert_eq!((status, seen), (200, 2), "{:?}", targets(&up));
}

#[tokio::test]
async fn request_timeout_starts_once_the_upload_is_done() {
    const SIZE: usize = 40 << 20;
    let up = RawUpstream::start(|req| {
        if req.target == "/slow" {
            vec![
                Step::Sleep(Duration::from_secs(9)),
                Step::Write(response(200, &[], "late")),
            ]
        } else {
            vec![Step::Write(response(200, &[], &req.body.len().to_string()))]
        }
    })
    .await;
    let gw = spawn(
        up.addr,
        "",
        "request_timeout = \"5s\"",
        &route("all", "/", "max_body_size = \"64MiB\""),
    );
    // 40 MiB at about 5 MiB/s: 8 s of upload, longer than request_timeout.
    let start = Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let piece = vec![b'u'; 256 << 10];
    let mut sent = 0;
    while sent < SIZE {
        // Paced against the clock: piece n leaves at n * 50 ms.
        let due = start + Duration::from_millis(50) * u32::try_from(sent / piece.len()).unwrap();
        tokio::time::sleep_until(due).await;
        if s.write_all(&piece).await.is_err() {
            // Answered (and closed) before the end: the status says why.
            break;
        }
        sent += piece.len();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "after {sent} bytes: {text}"
    );
    assert!(
        start.elapsed() > Duration::from_secs(7),
        "{:?}",
        start.elapsed()
    );
    assert!(text.ends_with(&SIZE.to_string()), "{text}");

    // An upstream slower than request_timeout after the body: 504.
    let start = Instant::now();
    let (status, text) = raw_request(
        gw.addr,
        "POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(status, 504, "{text}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(4900) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

/// Sends a 32 MiB body as fast as the gateway takes it to `path`; the
/// status and how long the answer took.
async fn upload_fast(gw: &GatewayProcess, path: &str) -> (String, Duration) {
    const SIZE: usize = 32 << 20;
    let start = Instant::now();
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\n\r\n");
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await.unwrap();
        let piece = vec![b'w'; 1 << 20];
        for _ in 0..SIZE / piece.len() {
            if wr.write_all(&piece).await.is_err() {
                return;
            }
        }
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut out)).await;
    writer.abort();
    let text = String::from_utf8_lossy(&out);
    (
        text.lines().next().unwrap_or_default().to_owned(),
        start.elapsed(),
    )
}

#[tokio::test]
async fn an_upstream_that_stops_reading_the_body_is_504_never_the_clients_fault() {
    // Reads the request head, then holds the connection without reading.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && matches!(s.read(&mut b).await, Ok(1)) {
                head.push(b[0]);
            }
            held.push(s);
        }
    });
    let gw = spawn(
        addr,
        "",
        "request_timeout = \"30s\"\nbody_idle_timeout = \"3s\"",
        &format!(
            "{}{}",
            route(
                "timed",
                "/timed",
                "timeout = \"1s\"\nmax_body_size = \"64MiB\""
            ),
            route("all", "/", "max_body_size = \"64MiB\""),
        ),
    );
    // The upstream's body_idle_timeout bounds the writes (the request
    // would hang otherwise: request_timeout starts after the body).
    let (status, took) = upload_fast(&gw, "/up").await;
    assert_eq!(status, "HTTP/1.1 504 Gateway Timeout");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // A route timeout while the gateway waits on the upstream, not on the
    // client, is the upstream's 504, not the client's 408.
    let (status, took) = upload_fast(&gw, "/timed/up").await;
    assert_eq!(status, "HTTP/1.1 504 Gateway Timeout");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn clients_that_leave_before_the_answer_are_499_not_upstream_failures() {
    // Answers after 2 s: every client leaves before that.
    let up = RawUpstream::start(|req| {
        if req.target == "/ok" {
            vec![Step::Write(response(200, &[], "ok"))]
        } else {
            vec![
                Step::Sleep(Duration::from_secs(2)),
                Step::Write(response(200, &[], "late")),
            ]
        }
    })
    .await;
    let gw = spawn(
        up.addr,
        "",
        "circuit_breaker = { consecutive_failures = 5, open_time = \"60s\" }",
        &route("all", "/", ""),
    );
    // HTTP/1.1: five GETs whose clients close their connection while the
    // upstream thinks.
    for _ in 0..5 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(get_req("/slow").as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(s);
    }
    // h2c: five POSTs whose streams the client resets mid-upload.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..5 {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
        let body = StreamBody::new(tokio_stream_from(rx));
        let req = http::Request::post(format!("http://{}/upload", gw.addr))
            .body(body)
            .unwrap();
        let pending = tokio::spawn(sender.send_request(req));
        tx.send(Ok(Frame::data(Bytes::from_static(b"part of it"))))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The body fails: the client resets the stream.
        let _ = tx.send(Err(std::io::ErrorKind::Other.into())).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), pending).await;
        sender.ready().await.unwrap();
    }
    get_ok(&gw, "ten clients that left").await;
    let m = poll_until("the ten departures counted as 499", || async {
        let m = metrics_text(&client(), gw.admin).await;
        let get = sample(
            &m,
            r#"gateway_requests_total{route="all",method="GET",status="499"}"#,
        );
        (get == Some(5.0) && posts(&m, "all", "499") == Some(5.0)).then_some(m)
    })
    .await;
    assert!(!m.contains(r#"status="5"#), "{m}");
    let circuit = m
        .lines()
        .find(|l| l.starts_with("gateway_circuit_state"))
        .unwrap_or_default();
    assert!(circuit.ends_with(" 0"), "breaker not closed: {circuit}");
}

/// The receiving half of a channel as a stream of frames.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
