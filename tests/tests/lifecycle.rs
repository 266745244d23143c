//! Health-check ejection and return, graceful shutdown under load, hot
//! reload, bounded memory while streaming — against real processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use e2e::harness::{self, client, config, get, simple, start_gateway, wait_until, GatewayProcess};
use e2e::mock::{Fault, MockOptions, MockUpstream};
use http::Request;
use http_body_util::BodyExt;

async fn mock(id: &str) -> MockUpstream {
    MockUpstream::start(MockOptions {
        id: id.into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn temp_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gateway-e2e-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn health_fault() -> Fault {
    Fault {
        path_prefix: "/health".into(),
        error_rate: 1.0,
        status: 503,
        ..Default::default()
    }
}

#[tokio::test]
async fn unhealthy_endpoints_leave_the_balancer_and_come_back() {
    harness::init_logs();
    let (a, b) = (mock("a").await, mock("b").await);
    let hc = "[upstreams.pool.health_check]\npath = \"/health\"\ninterval = \"50ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n";
    let gw = start_gateway(config(
        "",
        &format!("{}{hc}", simple("pool", &[a.addr(), b.addr()], "")),
    ))
    .await;
    let c = client();
    let ready = |c: harness::TestClient, admin| async move { get(&c, admin, "/ready").await };

    a.set_fault(health_fault());
    wait_until("a ejected", || async {
        ready(c.clone(), gw.admin_addr).await.json()["upstreams"]["pool"]["endpoints"][0]["healthy"]
            == false
    })
    .await;
    let before = a.hits("/api");
    for _ in 0..20 {
        let r = get(&c, gw.proxy_addr, "/api/hello").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("x-upstream-id"), "b");
    }
    assert_eq!(
        a.hits("/api"),
        before,
        "an ejected endpoint gets no traffic"
    );
    assert_eq!(
        ready(c.clone(), gw.admin_addr).await.status(),
        200,
        "still ready with b"
    );

    // Both down: 503 at once with Retry-After, and not ready.
    b.set_fault(health_fault());
    wait_until("not ready", || async {
        ready(c.clone(), gw.admin_addr).await.status() == 503
    })
    .await;
    let r = get(&c, gw.proxy_addr, "/api/hello").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(
        r.json()["error"],
        "no healthy endpoint in upstream \"pool\""
    );

    // Recovery.
    a.clear_faults();
    b.clear_faults();
    wait_until("ready again", || async {
        ready(c.clone(), gw.admin_addr).await.status() == 200
    })
    .await;
    wait_until("a back in rotation", || async {
        get(&c, gw.proxy_addr, "/api/hello")
            .await
            .header("x-upstream-id")
            == "a"
    })
    .await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let up = mock("up").await;
    let mut gw = GatewayProcess::spawn(None, &[("GATEWAY_UPSTREAM", up.addr().to_string())]);
    let c = client();
    assert_eq!(get(&c, gw.addr, "/api/hello").await.status(), 200);

    const N: u64 = 40;
    let mut inflight = Vec::new();
    for _ in 0..N {
        let c = c.clone();
        let addr = gw.addr;
        inflight.push(tokio::spawn(async move {
            get(&c, addr, "/delay/700").await.status()
        }));
    }
    wait_until("all requests reached the upstream", || async {
        up.hits("/delay") >= N
    })
    .await;
    gw.signal("TERM");
    for r in inflight {
        assert_eq!(
            r.await.unwrap(),
            200,
            "an in-flight request failed during shutdown"
        );
    }
    assert_eq!(
        tokio::task::spawn_blocking(move || gw.wait_exit())
            .await
            .unwrap(),
        Some(0)
    );
}

#[tokio::test]
async fn reload_applies_valid_configs_and_keeps_serving_on_invalid_ones() {
    let (a, b) = (mock("a").await, mock("b").await);
    let v1 = simple("pool", &[a.addr()], "");
    let path = temp_file("gateway.toml", &v1);
    let gw = GatewayProcess::spawn(Some(&path), &[]);
    let c = client();
    assert_eq!(
        get(&c, gw.addr, "/api/hello").await.header("x-upstream-id"),
        "a"
    );

    // Valid change: same keep-alive client, new upstream.
    std::fs::write(&path, simple("pool", &[b.addr()], "")).unwrap();
    gw.signal("HUP");
    wait_until("reload took effect", || async {
        get(&c, gw.addr, "/api/hello").await.header("x-upstream-id") == "b"
    })
    .await;

    // Invalid change: rejected with its key path, old config keeps serving.
    std::fs::write(
        &path,
        "[upstreams.pool]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"x\"\nprefix = \"/\"\nupstream = \"userz\"\n",
    )
    .unwrap();
    gw.signal("HUP");
    wait_until("rejection logged", || async {
        gw.logged("routes[0].upstream: unknown upstream")
    })
    .await;
    for _ in 0..10 {
        let r = get(&c, gw.addr, "/api/hello").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("x-upstream-id"), "b");
    }
    // Broken TOML too.
    std::fs::write(&path, "this is [not toml").unwrap();
    gw.signal("HUP");
    wait_until("parse error logged", || async {
        gw.logged("config reload rejected") && gw.logged("TOML") || gw.logged("expected")
    })
    .await;
    assert_eq!(get(&c, gw.addr, "/api/hello").await.status(), 200);
}

/// Samples the gateway's RSS while `work` runs; returns the peak growth in KiB.
async fn peak_rss_growth<F: std::future::Future<Output = ()>>(gw: &GatewayProcess, work: F) -> u64 {
    let base = gw.rss_kib();
    let pid_rss = || gw.rss_kib();
    let mut peak = base;
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            () = &mut work => break,
            _ = tick.tick() => peak = peak.max(pid_rss()),
        }
    }
    peak.max(pid_rss()).saturating_sub(base)
}

#[tokio::test]
async fn large_bodies_stream_with_bounded_memory() {
    const SIZE: u64 = 200 * 1024 * 1024;
    let up = mock("up").await;
    let gw = GatewayProcess::spawn(None, &[("GATEWAY_UPSTREAM", up.addr().to_string())]);
    let c = client();
    // Warm up the connection pools.
    assert_eq!(get(&c, gw.addr, "/bytes/1000").await.body.len(), 1000);

    // 200 MB download.
    let addr = gw.addr;
    let dl = async {
        let resp = c
            .request(
                Request::get(format!("http://{addr}/bytes/{SIZE}"))
                    .body(Default::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(d) = frame.unwrap().into_data() {
                n += d.len() as u64;
            }
        }
        assert_eq!(n, SIZE);
    };
    let grew = tokio::time::timeout(Duration::from_secs(120), peak_rss_growth(&gw, dl))
        .await
        .unwrap();
    eprintln!("download: gateway RSS grew by {grew} KiB for {SIZE} bytes");
    assert!(grew < 16 * 1024, "download grew RSS by {grew} KiB");

    // 200 MB upload on a route whose limit (1 GiB) allows it.
    let ul = async {
        let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
        let chunks = futures_util::stream::iter(
            (0..SIZE / chunk.len() as u64)
                .map(move |_| Ok::<_, std::io::Error>(http_body::Frame::data(chunk.clone()))),
        );
        let req = Request::post(format!("http://{addr}/upload"))
            .body(http_body_util::StreamBody::new(chunks))
            .unwrap();
        let uc = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
        let resp = uc.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["received"], SIZE);
    };
    let grew = tokio::time::timeout(Duration::from_secs(120), peak_rss_growth(&gw, ul))
        .await
        .unwrap();
    eprintln!("upload: gateway RSS grew by {grew} KiB for {SIZE} bytes");
    assert!(grew < 16 * 1024, "upload grew RSS by {grew} KiB");
}

/// Both listeners queue up to 4,096 pending connections (clamped by the
/// kernel's `somaxconn`), not the runtime's default of 128, which a burst of
/// reconnecting clients overflowed (a dropped SYN waits 1 s to be resent).
/// `ss -ltn` shows a listener's backlog as its Send-Q.
#[tokio::test]
async fn listeners_have_a_production_backlog() {
    let up = mock("a").await;
    let gw = GatewayProcess::spawn(None, &[("GATEWAY_UPSTREAM", up.addr().to_string())]);
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let want = somaxconn.min(4096);
    for addr in [gw.addr, gw.admin] {
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{}", addr.port())])
            .output()
            .expect("ss (iproute2) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        // State Recv-Q Send-Q Local Peer
        let backlog: u32 = text
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no listener on {addr} in {text:?}"));
        assert_eq!(backlog, want, "{addr}: {text}");
    }
}
