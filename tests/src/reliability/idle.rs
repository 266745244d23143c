//! Many idle keep-alive client connections and idle WebSocket tunnels: what they cost in
//! memory, and that every file descriptor comes back once they close.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::procs::{self, MockProc};
use super::{Ctx, Res, Row};

/// A keep-alive connection that has answered one request and now idles.
type Idle = (SendRequest<Empty<Bytes>>, JoinHandle<()>);

async fn keep_alive(addr: SocketAddr) -> Res<Idle> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get("/api/hello")
        .header("host", addr.to_string())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((send, task))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A WebSocket tunnel through the gateway to the mock's echo, checked with one message.
async fn tunnel(addr: SocketAddr) -> Res<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .map_err(|e| e.to_string())?;
    ws.send(Message::text("hello"))
        .await
        .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.as_str() == "hello" => Ok(ws),
        other => Err(format!("no echo: {other:?}")),
    }
}

/// Opens `n` of something with `open`, 100 at a time, each bounded by 30 s; the ones that
/// opened and how many failed (with the first error).
async fn open_many<T, F, Fut>(n: usize, open: F) -> (Vec<T>, u64, Option<String>)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Res<T>>,
{
    let results: Vec<Res<T>> = futures_util::stream::iter((0..n).map(|_| {
        let fut = open();
        async move {
            tokio::time::timeout(Duration::from_secs(30), fut)
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
        }
    }))
    .buffer_unordered(100)
    .collect()
    .await;
    let mut ok = Vec::with_capacity(n);
    let (mut failed, mut first) = (0, None);
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => {
                failed += 1;
                first.get_or_insert(e);
            }
        }
    }
    (ok, failed, first)
}

/// Opens the tunnels and connections, holds them, closes them all abruptly, then waits
/// (at most 30 s) for the gateway's open fds to come back to the baseline measured before:
/// the client sides close at once, the tunnels' upstream sides with them, and the pooled
/// upstream connections the burst left idle after the pool's 2 s idle timeout. Twice:
/// the allocator may keep the first round's memory after it closed, but the second round
/// reuses it: its peak must not exceed the first's by more than a tenth of the first's cost.
pub async fn run(ctx: &Ctx) -> Res<Row> {
    let conns = ctx.pick(10_000, 1_000);
    let tunnels = ctx.pick(1_000, 100);
    let mut row = Row::new(
        "idle-connections",
        format!("{conns} idle keep-alive + {tunnels} idle WebSocket tunnels"),
    );
    let nofile = procs::raise_own_nofile();
    if nofile < (conns + 2 * tunnels + 200) as u64 {
        return Err(format!(
            "open-file limit {nofile} too low for {conns} connections"
        ));
    }
    let up = MockProc::start("a").await?;
    let cfg = ctx.file("idle.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
max_connections = {}
[upstreams.pool]
endpoints = ["{}"]
pool_idle_timeout = "2s"
[[routes]]
name = "all"
prefix = "/"
upstream = "pool"
[[routes]]
name = "ws"
prefix = "/ws"
upstream = "pool"
websocket = true
"#,
            conns + tunnels + 1000,
            up.addr
        ),
    )
    .map_err(|e| e.to_string())?;
    let gw = procs::gateway(&cfg, &[]);
    let pid = gw.child.id();
    let addr = gw.addr;
    // Warm up with one request; the baseline then holds at most one pooled upstream
    // connection (the pool's idle timeout is 2 s, so the pooled connections the burst
    // below leaves must be reaped, not kept until next taken).
    let warm = keep_alive(addr).await?;
    close_all(vec![warm]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fd_base = procs::fds(pid)?;
    let mock_fd_base = procs::fds(up.pid())?;
    let rss_base = procs::rss_kib(pid)?;

    let one = cycle(ctx, addr, pid, up.pid(), conns, tunnels, fd_base).await?;
    // The same again: what a second round adds to RSS is what would leak per round.
    let two = cycle(ctx, addr, pid, up.pid(), conns, tunnels, fd_base).await?;
    let first_cost = one.rss_open.saturating_sub(rss_base);
    let second_growth = two.rss_open.saturating_sub(one.rss_open);

    let failed = one.failed + two.failed;
    row.sent = 2 * (conns + tunnels) as u64;
    row.failed = failed;
    row.unexpected = failed;
    row.recover_ms = Some(one.back_ms.max(two.back_ms));
    row.figure("open_ms", one.open_ms);
    row.figure("fds_baseline", fd_base);
    row.figure("fds_open", one.fd_open);
    row.figure("fds_after_close", one.fd_after);
    row.figure("fds_after_second_round", two.fd_after);
    row.figure("rss_baseline_kib", rss_base);
    row.figure("rss_open_kib", one.rss_open);
    row.figure("rss_open_second_round_kib", two.rss_open);
    row.figure("rss_after_close_kib", one.rss_after);
    row.figure("rss_after_second_round_kib", two.rss_after);
    row.figure(
        "rss_per_connection_kib",
        first_cost as f64 / (conns + tunnels) as f64,
    );
    row.figure("mock_fds_baseline", mock_fd_base);
    row.figure("mock_fds_while_open", one.mock_fds_open);
    row.figure("fresh_request_while_held_ms", one.fresh_ms);
    if let Some(e) = one.first_error.or(two.first_error) {
        row.figure("first_open_error", e);
    }
    row.bar(
        "every connection and tunnel opens and answers (two rounds)",
        failed == 0 && one.fresh_ok && two.fresh_ok,
        true,
        format!(
            "{failed} failed; a fresh request while held answered: {}",
            one.fresh_ok && two.fresh_ok
        ),
    );
    // Each held connection and tunnel is at least one fd (a tunnel's upstream side may be
    // a connection the pool already had).
    let expected = fd_base + conns as u64 + tunnels as u64;
    row.bar(
        "the gateway holds them all (fds rise by connections + tunnels)",
        one.fd_open + TOLERANCE >= expected,
        true,
        format!(
            "{fd_base} -> {} (expected >= {expected}); mock {mock_fd_base} -> {}",
            one.fd_open, one.mock_fds_open
        ),
    );
    row.bar(
        "no fd leaks: fds back to the baseline after they close (two rounds)",
        one.fd_after <= fd_base + TOLERANCE && two.fd_after <= fd_base + TOLERANCE,
        true,
        format!(
            "{fd_base} -> {} and {} (tolerance {TOLERANCE}) within {:.0} and {:.0} ms",
            one.fd_after, two.fd_after, one.back_ms, two.back_ms
        ),
    );
    row.bar(
        "no memory leak: a second round's peak RSS < the first's + 10 % of its cost",
        (second_growth as f64) < 0.1 * first_cost as f64,
        true,
        format!(
            "first round cost {first_cost} KiB; peak {} KiB, then {} KiB (+{second_growth} KiB)",
            one.rss_open, two.rss_open
        ),
    );
    Ok(row)
}

/// fds allowed above the baseline once everything closed.
const TOLERANCE: u64 = 4;

/// What one round of opening, holding and closing measured.
struct Cycle {
    failed: u64,
    first_error: Option<String>,
    open_ms: f64,
    fd_open: u64,
    rss_open: u64,
    mock_fds_open: u64,
    fresh_ok: bool,
    fresh_ms: f64,
    back_ms: f64,
    fd_after: u64,
    rss_after: u64,
}

async fn cycle(
    ctx: &Ctx,
    addr: SocketAddr,
    pid: u32,
    mock_pid: u32,
    conns: usize,
    tunnels: usize,
    fd_base: u64,
) -> Res<Cycle> {
    let t = tokio::time::Instant::now();
    // Tunnels first: the keep-alive burst then leaves idle upstream connections in the
    // pool, which its idle timeout must close.
    let (wss, tf, te) = open_many(tunnels, || tunnel(addr)).await;
    let (idle, cf, ce) = open_many(conns, || keep_alive(addr)).await;
    let open_ms = t.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_secs(ctx.pick(5, 1))).await;
    let fd_open = procs::fds(pid)?;
    let rss_open = procs::rss_kib(pid)?;
    // The gateway still answers a fresh request while holding them all.
    let t = tokio::time::Instant::now();
    let fresh = keep_alive(addr).await;
    let fresh_ms = t.elapsed().as_secs_f64() * 1000.0;
    let fresh_ok = fresh.is_ok();
    if let Ok(f) = fresh {
        close_all(vec![f]);
    }
    let mock_fds_open = procs::fds(mock_pid)?;

    let t = tokio::time::Instant::now();
    close_all(idle);
    drop(wss);
    // Back to the baseline: bounded by 30 s.
    let mut fd_after = procs::fds(pid)?;
    while fd_after > fd_base + TOLERANCE && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        fd_after = procs::fds(pid)?;
    }
    let back_ms = t.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Cycle {
        failed: cf + tf,
        first_error: ce.or(te),
        open_ms,
        fd_open,
        rss_open,
        mock_fds_open,
        fresh_ok,
        fresh_ms,
        back_ms,
        fd_after: procs::fds(pid)?,
        rss_after: procs::rss_kib(pid)?,
    })
}

fn close_all(conns: Vec<Idle>) {
    for (send, task) in conns {
        drop(send);
        task.abort();
    }
}
