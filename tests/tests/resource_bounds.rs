//! Every resource the gateway holds for a client is bounded (issue 12,
//! defect 5), through the real gateway binary and a raw-socket upstream
//! that counts the connections it has open:
//! - an upgraded (WebSocket) tunnel that carries nothing for
//!   `websocket_idle_timeout` is closed on both sides, an active one is
//!   not, and an open tunnel holds its route's `max_inflight` slot;
//! - idle upstream connections are closed once they outlive
//!   `pool_idle_timeout`, with no further request to notice them;
//! - `max_connections` caps the connections to an endpoint: requests wait
//!   for one (`connect_queue_timeout`), then get 503 with `Retry-After`,
//!   and the endpoint's breaker does not count that against it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use e2e::harness::{self, client, get, metrics_text, sample, simple, wait_until, GatewayProcess};
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

/// An HTTP/1.1 upstream on a raw socket: answers every request `200 ok`
/// after `delay` (keep-alive; `/health` at once), and a WebSocket
/// handshake with `101`, then echoes. Counts the connections it accepted and has open.
#[derive(Clone)]
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

/// Counts one open connection until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Upstream {
    async fn start(delay: Duration) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Self {
            addr: l.local_addr().unwrap(),
            accepted: Arc::default(),
            open: Arc::default(),
            peak: Arc::default(),
        };
        let u = up.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                u.accepted.fetch_add(1, Ordering::SeqCst);
                let now = u.open.fetch_add(1, Ordering::SeqCst) + 1;
                u.peak.fetch_max(now, Ordering::SeqCst);
                let open = Open(u.open.clone());
                tokio::spawn(async move {
                    serve(s, delay).await;
                    drop(open);
                });
            }
        });
        up
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

async fn serve(mut s: TcpStream, delay: Duration) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end);
        if head.contains("upgrade: websocket") {
            let switch = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
            if s.write_all(switch).await.is_err() || s.write_all(&buf).await.is_err() {
                return;
            }
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            return;
        }
        if !head.starts_with("get /health") {
            tokio::time::sleep(delay).await;
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The real gateway binary serving `config` (upstreams and routes).
fn gateway(config: &str) -> GatewayProcess {
    let path = harness::temp_file("bounds", "gateway.toml", config);
    GatewayProcess::spawn(Some(&path), &[])
}

/// A WebSocket handshake through the gateway; the raw tunnel after `101`.
async fn open_tunnel(gw: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(gw).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: test\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = timeout(harness::WAIT, s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed during the handshake: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Sends `msg` through the tunnel and reads the echo.
async fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    timeout(harness::WAIT, s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("tunnel open");
    assert_eq!(back, msg);
}

/// Whether the gateway closed the tunnel (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 16];
    match timeout(within, s.read(&mut b)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(n)) => panic!("unexpected {n} bytes from an idle tunnel"),
        Err(_) => false,
    }
}

/// Waits until `up` has exactly `n` connections open, for at most `within`.
async fn open_becomes(up: &Upstream, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while up.open() != n {
        assert!(
            Instant::now() < deadline,
            "upstream still has {} connections open after {within:?} (want {n})",
            up.open()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn idle_tunnels_are_closed_on_both_sides_and_active_ones_are_not() {
    let up = Upstream::start(Duration::ZERO).await;
    let gw = gateway(&format!(
        "{}websocket = true\nwebsocket_idle_timeout = \"2s\"\n",
        simple("up", &[up.addr], "")
    ));
    let mut active = open_tunnel(gw.addr).await;
    let mut idle = open_tunnel(gw.addr).await;
    echo(&mut idle, b"once").await;
    open_becomes(&up, 2, harness::WAIT).await;

    // A byte every 250 ms for 5 s (two and a half idle timeouts) keeps
    // one open.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        echo(&mut active, b"ping").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The silent one is gone on both sides meanwhile.
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await,
        "an idle tunnel stays open past websocket_idle_timeout"
    );
    open_becomes(&up, 1, Duration::from_secs(5)).await;
    echo(&mut active, b"still").await;

    // Left alone, the active one follows within a bounded time.
    let quiet = Instant::now();
    assert!(closed_within(&mut active, Duration::from_secs(10)).await);
    assert!(
        quiet.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        quiet.elapsed()
    );
    open_becomes(&up, 0, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn open_tunnels_hold_their_routes_max_inflight() {
    let up = Upstream::start(Duration::ZERO).await;
    let gw = gateway(&format!(
        "{}websocket = true\nmax_inflight = 2\n",
        simple("up", &[up.addr], "")
    ));
    let c = client();
    assert_eq!(get(&c, gw.addr, "/plain").await.status(), 200);
    let mut first = open_tunnel(gw.addr).await;
    let mut second = open_tunnel(gw.addr).await;
    echo(&mut first, b"a").await;
    echo(&mut second, b"b").await;

    // Two tunnels open = two requests in flight: the third is shed.
    let shed = get(&c, gw.addr, "/plain").await;
    assert_eq!(
        shed.status(),
        503,
        "a third request passes max_inflight = 2"
    );
    assert!(!shed.header("retry-after").is_empty());
    let text = metrics_text(&c, gw.admin).await;
    assert_eq!(
        sample(&text, "gateway_websocket_tunnels{route=\"all\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "gateway_route_inflight_requests{route=\"all\"}"),
        Some(2.0)
    );

    // One tunnel closes: its slot comes back.
    drop(first);
    wait_until("a slot freed by the closed tunnel", || async {
        get(&c, gw.addr, "/plain").await.status() == 200
    })
    .await;
    echo(&mut second, b"c").await;
    let text = metrics_text(&c, gw.admin).await;
    assert_eq!(
        sample(&text, "gateway_websocket_tunnels{route=\"all\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn idle_upstream_connections_are_reaped_without_traffic() {
    // Slow enough that 100 concurrent requests need 100 connections.
    let up = Upstream::start(Duration::from_millis(300)).await;
    let gw = gateway(&simple("up", &[up.addr], "pool_idle_timeout = \"1s\""));
    let c = client();
    let burst: Vec<_> = (0..100)
        .map(|i| {
            let c = c.clone();
            let addr = gw.addr;
            tokio::spawn(async move { get(&c, addr, &format!("/burst/{i}")).await.status() })
        })
        .collect();
    for r in burst {
        assert_eq!(r.await.unwrap(), 200);
    }
    let opened = up.accepted();
    assert!(opened >= 50, "the burst opened only {opened} connections");
    // No further request: the pool alone must close them, within a few
    // seconds of their 1 s idle timeout.
    open_becomes(&up, 0, Duration::from_secs(8)).await;
    let text = metrics_text(&c, gw.admin).await;
    let series = format!(
        "gateway_upstream_endpoint_open_connections{{upstream=\"up\",endpoint=\"{}\"}}",
        up.addr
    );
    assert_eq!(sample(&text, &series), Some(0.0), "{text}");
}

#[tokio::test]
async fn max_connections_caps_one_h2c_connections_streams() {
    let up = Upstream::start(Duration::from_millis(50)).await;
    let gw = gateway(&simple(
        "up",
        &[up.addr],
        "max_connections = 8\nconnect_queue_timeout = \"20s\"",
    ));
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let tasks: Vec<_> = (0..250)
        .map(|i| {
            let h2 = h2.clone();
            let addr = gw.addr;
            tokio::spawn(async move {
                let req = Request::get(format!("http://{addr}/s/{i}"))
                    .body(Full::<Bytes>::default())
                    .unwrap();
                let resp = timeout(harness::WAIT, h2.request(req))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(resp.version(), http::Version::HTTP_2);
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                status
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(up.peak() <= 8, "{} connections open at once", up.peak());
    assert!(up.accepted() <= 8, "{} connections opened", up.accepted());
    let c = client();
    let text = metrics_text(&c, gw.admin).await;
    let series = format!(
        "gateway_upstream_endpoint_open_connections{{upstream=\"up\",endpoint=\"{}\"}}",
        up.addr
    );
    let open = sample(&text, &series).unwrap();
    assert!((1.0..=8.0).contains(&open), "{open}");
}

#[tokio::test]
async fn at_max_connections_excess_requests_get_503_fast_and_the_breaker_stays_closed() {
    // Every answer takes 2 s; two connections at most; a 100 ms queue.
    let up = Upstream::start(Duration::from_secs(2)).await;
    let gw = gateway(&simple(
        "up",
        &[up.addr],
        "max_connections = 2\nconnect_queue_timeout = \"100ms\"\n\
         circuit_breaker = { consecutive_failures = 2, open_time = \"60s\" }",
    ));
    let c = client();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let c = c.clone();
            let addr = gw.addr;
            tokio::spawn(async move {
                let t = Instant::now();
                let r = get(&c, addr, &format!("/slow/{i}")).await;
                (r.status(), r.header("retry-after").to_owned(), t.elapsed())
            })
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (status, retry_after, took) = t.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                limited += 1;
                assert!(!retry_after.is_empty(), "503 without Retry-After");
                assert!(took < Duration::from_millis(1500), "503 after {took:?}");
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(ok >= 2, "{ok} answered");
    assert!(
        limited >= 10,
        "only {limited} of 20 refused at max_connections = 2"
    );
    assert!(up.peak() <= 2, "{} connections open at once", up.peak());

    // Not the endpoint's fault: its breaker stayed closed and it serves.
    let text = metrics_text(&c, gw.admin).await;
    let series = format!(
        "gateway_circuit_state{{upstream=\"up\",endpoint=\"{}\"}}",
        up.addr
    );
    assert_eq!(sample(&text, &series), Some(0.0), "{text}");
    assert_eq!(get(&c, gw.addr, "/after").await.status(), 200);
}

#[tokio::test]
async fn health_checks_do_not_queue_behind_max_connections() {
    // One connection, kept busy by 2 s requests queued behind each other;
    // health checks every 100 ms must not wait for it (1 s timeout).
    let up = Upstream::start(Duration::from_secs(2)).await;
    let gw = gateway(&simple(
        "up",
        &[up.addr],
        "max_connections = 1\nconnect_queue_timeout = \"20s\"\n\
         health_check = { path = \"/health\", interval = \"100ms\", timeout = \"1s\", \
         unhealthy_threshold = 2, healthy_threshold = 1 }",
    ));
    let c = client();
    let healthy_series = format!(
        "gateway_upstream_endpoint_healthy{{upstream=\"up\",endpoint=\"{}\"}}",
        up.addr
    );
    wait_until("the endpoint healthy", || async {
        sample(&metrics_text(&c, gw.admin).await, &healthy_series) == Some(1.0)
    })
    .await;
    let busy: Vec<_> = (0..3)
        .map(|i| {
            let c = c.clone();
            let addr = gw.addr;
            tokio::spawn(async move { get(&c, addr, &format!("/busy/{i}")).await.status() })
        })
        .collect();
    // About 6 s of a busy slot: the endpoint stays in rotation throughout.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let text = metrics_text(&c, gw.admin).await;
        assert_eq!(
            sample(&text, &healthy_series),
            Some(1.0),
            "ejected while busy at max_connections"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for b in busy {
        assert_eq!(b.await.unwrap(), 200);
    }
    // Requests never went past the cap: checks' extra connections are
    // closed after use, so the three requests ran one after another.
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}
