//! File descriptors cannot starve the gateway (issue 16, item 5): the soft
//! `RLIMIT_NOFILE` is raised to the hard limit at start; each client
//! connection holds one descriptor; client connections are capped below the
//! limit (over the cap: accepted and closed at once, counted), so however
//! many idle clients knock, the admin listener answers and requests on
//! admitted connections still get fresh upstream connections.
//!
//! Every test runs the real binary under `prlimit` with a low limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read as _;
use std::net::SocketAddr;
use std::time::Duration;

use e2e::harness::{
    client, metrics_text, poll_until, sample, simple, temp_file, wait_until, GatewayProcess,
};
use e2e::raw::{raw_request, response, RawUpstream, Step};

/// An upstream that closes after every response: each proxied request
/// needs a fresh upstream connect (a fresh descriptor).
async fn closing_upstream() -> RawUpstream {
    RawUpstream::start(|_| {
        vec![
            Step::Write(response(200, &[("connection", "close")], "fresh")),
            Step::Close,
        ]
    })
    .await
}

/// The gateway under `prlimit --nofile=SOFT:HARD`, idle clients allowed to
/// wait for their first byte far longer than the test runs.
fn spawn_limited(nofile: &str, upstream: SocketAddr, server_extra: &str) -> GatewayProcess {
    let cfg = format!(
        "[server]\nheader_read_timeout = \"300s\"\n{server_extra}\n{}",
        simple("up", &[upstream], "")
    );
    let path = temp_file("sec-fds", "gateway.toml", &cfg);
    let flag = format!("--nofile={nofile}");
    let json = ["--log-format", "json"];
    GatewayProcess::spawn_wrapped(&["prlimit", &flag], Some(&path), &[], &json)
}

fn open_fds(gw: &GatewayProcess) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", gw.child.id()))
        .unwrap()
        .count()
}

/// Whether the gateway has closed this client connection (EOF), without
/// blocking.
fn closed_by_peer(mut s: &std::net::TcpStream) -> bool {
    let mut b = [0_u8; 64];
    match s.read(&mut b) {
        Ok(n) => n == 0,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let text = metrics_text(&client(), admin).await;
    sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"))
}

const PROXY_OPEN: &str = "gateway_connections{listener=\"proxy\"}";
const PROXY_LIMIT: &str = "gateway_connections_limit{listener=\"proxy\"}";
const PROXY_REFUSED: &str = "gateway_connections_refused_total{listener=\"proxy\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_beyond_the_limit_starve_neither_admin_nor_upstream_connects() {
    let up = closing_upstream().await;
    let gw = spawn_limited("256:256", up.addr, "");
    // (256 - a reserve of 96) / 2: one client and one upstream descriptor
    // per admitted connection.
    let cap: u32 = 80;
    assert_eq!(metric(gw.admin, PROXY_LIMIT).await, f64::from(cap));
    assert_eq!(metric(gw.admin, "process_max_fds").await, 256.0);
    let get = "GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_request(gw.addr, get).await.0, 200);
    let base_fds = open_fds(&gw);

    // More idle clients than the process has descriptors.
    let total: u32 = 300;
    let idle: Vec<std::net::TcpStream> = (0..total)
        .map(|_| std::net::TcpStream::connect(gw.addr).unwrap())
        .collect();
    let refused = f64::from(total - cap);
    wait_until("the excess clients refused", || async {
        metric(gw.admin, PROXY_REFUSED).await >= refused
    })
    .await;
    assert_eq!(metric(gw.admin, PROXY_REFUSED).await, refused);
    assert_eq!(metric(gw.admin, PROXY_OPEN).await, f64::from(cap));

    // One descriptor per admitted connection (two before: the socket was
    // duplicated for the 408 path).
    let grown = open_fds(&gw).saturating_sub(base_fds);
    assert!(
        grown <= cap as usize + 16,
        "{grown} descriptors for {cap} idle connections"
    );

    // The refused ones were closed at once; the admitted ones stay open.
    for s in &idle {
        s.set_nonblocking(true).unwrap();
    }
    let admitted: Vec<usize> = poll_until("refused clients to see EOF", || {
        let open: Vec<usize> = idle
            .iter()
            .enumerate()
            .filter(|(_, s)| !closed_by_peer(s))
            .map(|(i, _)| i)
            .collect();
        async move { (open.len() == cap as usize).then_some(open) }
    })
    .await;

    // The admin listener answers, on fresh connections.
    for _ in 0..5 {
        let (status, text) = raw_request(
            gw.admin,
            "GET /health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200, "{text}");
    }

    // A new client over the cap is closed without an answer, and counted.
    let (status, text) = raw_request(gw.addr, get).await;
    assert_eq!(status, 0, "{text}");
    assert!(text.is_empty(), "{text}");
    assert_eq!(metric(gw.admin, PROXY_REFUSED).await, refused + 1.0);

    // Admitted clients still get answers, each through a fresh upstream
    // connection.
    let connects = up.connections();
    for &i in admitted.iter().take(10) {
        let mut s = idle[i].try_clone().unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        std::io::Write::write_all(&mut s, get.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        assert!(out.ends_with("fresh"), "{out}");
    }
    assert_eq!(up.connections(), connects + 10);

    // Once clients leave, new ones are admitted again.
    wait_until("the answered clients' slots freed", || async {
        metric(gw.admin, PROXY_OPEN).await == f64::from(cap - 10)
    })
    .await;
    let (status, text) = raw_request(gw.addr, get).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("fresh"), "{text}");
    drop(idle);
    wait_until("every idle client's slot freed", || async {
        metric(gw.admin, PROXY_OPEN).await == 0.0
    })
    .await;
}

#[tokio::test]
async fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    let up = closing_upstream().await;
    let gw = spawn_limited("256:4096", up.addr, "");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3..5], ["4096", "4096"], "{line}");
    assert_eq!(metric(gw.admin, "process_max_fds").await, 4096.0);
    assert_eq!(metric(gw.admin, PROXY_LIMIT).await, 2000.0);
    wait_until("the raise logged", || async {
        gw.logged(r#""soft_before":"256""#)
            && gw.logged(r#""soft":"4096""#)
            && gw.logged(r#""hard":"4096""#)
    })
    .await;
}

#[tokio::test]
async fn a_configured_cap_is_enforced_and_the_admin_listener_keeps_its_own() {
    let up = closing_upstream().await;
    let gw = spawn_limited("1024:1024", up.addr, "max_connections = 3");
    assert_eq!(metric(gw.admin, PROXY_LIMIT).await, 3.0);
    let idle: Vec<std::net::TcpStream> = (0..5)
        .map(|_| std::net::TcpStream::connect(gw.addr).unwrap())
        .collect();
    wait_until("two clients refused", || async {
        metric(gw.admin, PROXY_REFUSED).await == 2.0
    })
    .await;
    assert_eq!(metric(gw.admin, PROXY_OPEN).await, 3.0);
    // The proxy's cap is not the admin listener's.
    let (status, _) = raw_request(
        gw.admin,
        "GET /health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(gw.admin, "gateway_connections_limit{listener=\"admin\"}").await,
        32.0
    );
    drop(idle);
}
