//! Miss coalescing under load through the real binaries (issue 12, defect
//! 2): many clients at once on an uncacheable URL of a cached route without
//! a route `timeout`. Each miss makes one leader and a crowd of followers
//! that wake when it is done; a follower that registered for the wakeup
//! too late waited forever (2 hangs in ~184k requests before the fix).
//! Here every request must be answered: zero hangs tolerated.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use e2e::harness::{self, GatewayProcess, WAIT};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

/// Concurrent clients, each on its own keep-alive connection.
const CLIENTS: usize = 64;
/// Requests in all (fewer if [`RUN_FOR`] runs out first).
const REQUESTS: u64 = 150_000;
/// Bound on the load phase.
const RUN_FOR: Duration = Duration::from_secs(20);
/// A request not answered within this hung.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `mock-upstream` binary on a free port, killed on drop.
struct MockProcess {
    child: Child,
    addr: SocketAddr,
}

impl MockProcess {
    fn spawn() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
            .args(["--listen", "127.0.0.1:0", "--workers", "1"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mock-upstream spawns");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(WAIT)
            .expect("mock-upstream reports its address");
        let addr = line
            .strip_prefix("mock-upstream listening on ")
            .expect("listening line")
            .parse()
            .unwrap();
        Self { child, addr }
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    hung: AtomicU64,
    other: AtomicU64,
    issued: AtomicU64,
}

/// One client: its own connection (a new one after a failure), requests
/// back to back until the shared budget or the time runs out.
async fn client(addr: SocketAddr, path: &'static str, tally: Arc<Tally>, until: Instant) {
    let mut conn = None;
    while Instant::now() < until && tally.issued.fetch_add(1, Ordering::Relaxed) < REQUESTS {
        if conn.is_none() {
            let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
                tally.other.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (tx, c) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(c);
            conn = Some(tx);
        }
        let tx = conn.as_mut().unwrap();
        let req = Request::get(path)
            .header("host", addr.to_string())
            .body(Empty::new())
            .unwrap();
        let exchange = async {
            tx.ready().await?;
            let resp = tx.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        };
        match tokio::time::timeout(CLIENT_TIMEOUT, exchange).await {
            Ok(Ok(s)) if s == 200 => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                tally.other.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
            Err(_) => {
                tally.hung.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_followers_on_an_uncacheable_url_never_hang() {
    harness::init_logs();
    let mock = MockProcess::spawn();
    // A cached route without `timeout`: nothing but the wakeup ends a
    // follower's wait.
    let path = harness::temp_file(
        "coalesce",
        "gateway.toml",
        &format!(
            r#"
            [cache]
            max_size = "8MiB"
            [upstreams.mock]
            endpoints = ["{}"]
            pool_max_idle = 256
            [[routes]]
            name = "cached"
            prefix = "/"
            upstream = "mock"
            cache = {{ ttl = "30s" }}
            "#,
            mock.addr
        ),
    );
    let gw = GatewayProcess::spawn(Some(&path), &[]);
    // no-store: never stored, so every request is a miss that coalesces
    // with whatever miss of the same URL is in flight.
    const URL: &str = "/response-headers?Cache-Control=no-store";
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let until = start + RUN_FOR;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(gw.addr, URL, tally.clone(), until)))
        .collect();
    for t in tasks {
        // Each client ends by RUN_FOR plus one client timeout.
        tokio::time::timeout(RUN_FOR + CLIENT_TIMEOUT + WAIT, t)
            .await
            .expect("client task ends")
            .unwrap();
    }
    let took = start.elapsed();
    let (ok, hung, other) = (
        tally.ok.load(Ordering::Relaxed),
        tally.hung.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
    );
    println!(
        "coalescing stress: {ok} answered, {hung} hung, {other} failed otherwise, \
         {CLIENTS} clients, in {took:?}"
    );
    assert_eq!(
        hung, 0,
        "requests hung (no answer within {CLIENT_TIMEOUT:?})"
    );
    assert_eq!(other, 0, "requests failed");
    assert!(ok >= 1_000, "too few requests to mean anything: {ok}");
    // They really were misses of a cached route, and the gateway still
    // answers at once.
    let c = harness::client();
    let got = harness::get(&c, gw.addr, URL).await;
    assert_eq!(got.header("x-cache"), "MISS");
    let text = harness::metrics_text(&c, gw.admin).await;
    let misses = harness::sample(
        &text,
        r#"gateway_cache_requests_total{route="cached",decision="miss"}"#,
    );
    assert!(misses.is_some_and(|m| m >= ok as f64), "{misses:?} < {ok}");
}
