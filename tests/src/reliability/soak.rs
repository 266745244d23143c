//! Soak: moderate load for a long time (30 min by default, `--soak-time`), from loadgen;
//! the gateway's RSS and open fds sampled every 10 s.

use std::time::Duration;

use super::load;
use super::procs::{self, MockProc};
use super::{Ctx, Res, Row};
use crate::harness;

/// Bars, after a warm-up of a fifth of the run (at most 3 min), comparing the first and
/// the last fifth of the rest: RSS growth < 5 % (mean RSS), open fds flat (the fds that
/// no open client or upstream connection accounts for, `gateway_connections` and
/// `gateway_upstream_endpoint_open_connections`: the most in the last fifth at most 8
/// above the most in the first; connections follow the load, a leak does not), p99 drift
/// < 10 % (the median of loadgen's per-second p99s).
pub async fn run(ctx: &Ctx) -> Res<Row> {
    let rate = 500.0;
    let total = ctx.soak_time;
    let warmup = (total / 5).min(Duration::from_secs(180));
    let every = (total / 30).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut row = Row::new(
        "soak",
        format!(
            "{rate:.0} req/s (loadgen) for {} s, warm-up {} s",
            total.as_secs(),
            warmup.as_secs()
        ),
    );
    let up = MockProc::start("a").await?;
    let cfg = ctx.file("soak.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}\n[[routes]]\nname = \"cached\"\nprefix = \"/cache\"\nupstream = \"pool\"\ncache = {{ ttl = \"1s\" }}\n",
            harness::simple("pool", &[up.addr], "")
        ),
    )
    .map_err(|e| e.to_string())?;
    let gw = procs::gateway(&cfg, &[]);
    let pid = gw.child.id();
    let scenario = ctx.file("soak-loadgen.toml");
    std::fs::write(
        &scenario,
        r#"name = "reliability-soak"
[[user]]
name = "client"
[[user.task]]
weight = 6
name = "GET /api/hello"
path = "/api/hello"
[[user.task]]
weight = 2
name = "GET /api/users/[id]"
path = "/api/users/{{randint(1, 100)}}"
[[user.task]]
weight = 1
name = "POST /api/echo"
method = "POST"
path = "/api/echo"
payload = "2KB"
[[user.task]]
weight = 1
name = "GET /cache/[n]"
path = "/cache/{{randint(1, 5)}}"
"#,
    )
    .map_err(|e| e.to_string())?;
    let lg = procs::Loadgen::start(
        &scenario,
        &format!("http://{}", gw.addr),
        &[
            "--arrival-rate".into(),
            rate.to_string(),
            "--max-vus".into(),
            "200".into(),
            "--run-time".into(),
            format!("{}s", total.as_secs()),
            "--timeout".into(),
            "10s".into(),
        ],
        &ctx.file("soak-result.json"),
    )?;
    let start = tokio::time::Instant::now();
    let c = procs::plain_client();
    // (seconds, RSS KiB, open fds, connections open: client side and upstream side).
    let mut samples: Vec<(f64, u64, u64, u64)> = Vec::new();
    while start.elapsed() < total {
        tokio::time::sleep(every).await;
        if let (Ok(rss), Ok(fd)) = (procs::rss_kib(pid), procs::fds(pid)) {
            let text = procs::metrics(&c, gw.admin).await.unwrap_or_default();
            let conns = procs::sum(&text, "gateway_connections{")
                + procs::sum(&text, "gateway_upstream_endpoint_open_connections{");
            samples.push((start.elapsed().as_secs_f64(), rss, fd, conns as u64));
        }
    }
    let result = lg.finish(total + Duration::from_secs(120)).await?;
    let (sent, failed) = procs::loadgen_totals(&result);
    let w = warmup.as_secs_f64();
    // The first and the last fifth after warm-up, compared.
    let span = (total.as_secs_f64() - w) / 5.0;
    let end = total.as_secs_f64();
    let window = |from: f64, to: f64| -> Vec<(u64, u64, u64)> {
        samples
            .iter()
            .filter(|s| s.0 >= from && s.0 <= to)
            .map(|s| (s.1, s.2, s.3))
            .collect()
    };
    let (early, late) = (window(w, w + span), window(end - span, end + 1.0));
    let mean = |v: &[(u64, u64, u64)]| -> f64 {
        v.iter().map(|s| s.0 as f64).sum::<f64>() / v.len().max(1) as f64
    };
    let (rss0, rss1) = (mean(&early), mean(&late));
    let rss_max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let most =
        |v: &[(u64, u64, u64)], f: fn(&(u64, u64, u64)) -> u64| v.iter().map(f).max().unwrap_or(0);
    let (fd_early, fd_late) = (most(&early, |s| s.1), most(&late, |s| s.1));
    let (conn_early, conn_late) = (most(&early, |s| s.2), most(&late, |s| s.2));
    // fds that no open connection accounts for: what a leak would grow.
    let other = |s: &(u64, u64, u64)| s.1.saturating_sub(s.2);
    let (other_early, other_late) = (most(&early, other), most(&late, other));
    let growth = if rss0 > 0.0 {
        (rss1 - rss0) / rss0 * 100.0
    } else {
        f64::NAN
    };
    // Iterations in flight (loadgen's users): pools and buffers follow them, so a rise
    // in fds or RSS that comes with a rise here is load, not a leak.
    let users = |from: f64, to: f64| -> f64 {
        let v: Vec<f64> = result["series"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter(|p| {
                        let e = p["elapsed"].as_f64().unwrap_or(-1.0);
                        e >= from && e < to
                    })
                    .filter_map(|p| p["users"].as_f64())
                    .collect()
            })
            .unwrap_or_default();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let first = load::quantile(procs::loadgen_p99s(&result, w, w + span), 0.5);
    let last = load::quantile(procs::loadgen_p99s(&result, end - span, end), 0.5);
    let drift = match (first, last) {
        (Some(a), Some(b)) if a > 0.0 => (b - a) / a * 100.0,
        _ => f64::NAN,
    };
    row.sent = sent;
    row.failed = failed;
    row.unexpected = failed;
    row.p99_fault_ms = last;
    row.figure("rss_first_fifth_kib", rss0.round());
    row.figure("rss_last_fifth_kib", rss1.round());
    row.figure("rss_max_kib", rss_max);
    row.figure("rss_growth_pct", growth);
    row.figure("fds_max_first_fifth", fd_early);
    row.figure("fds_max_last_fifth", fd_late);
    row.figure("connections_max_first_fifth", conn_early);
    row.figure("connections_max_last_fifth", conn_late);
    row.figure("other_fds_max_first_fifth", other_early);
    row.figure("other_fds_max_last_fifth", other_late);
    row.figure("loadgen_max_vus", result["max_users"].as_u64().unwrap_or(0));
    row.figure("p99_first_ms", first.unwrap_or(f64::NAN));
    row.figure("p99_last_ms", last.unwrap_or(f64::NAN));
    row.figure("p99_drift_pct", drift);
    row.figure("in_flight_mean_first_fifth", users(w, w + span));
    row.figure("in_flight_mean_last_fifth", users(end - span, end + 1.0));
    row.figure(
        "samples",
        serde_json::json!(samples
            .iter()
            .map(|s| serde_json::json!([s.0.round(), s.1, s.2, s.3]))
            .collect::<Vec<_>>()),
    );
    row.bar(
        "0 failed requests",
        failed == 0 && sent > 0,
        true,
        format!("{failed} of {sent}"),
    );
    row.bar(
        "RSS growth after warm-up < 5 % (mean of the last fifth vs the first)",
        growth < 5.0,
        true,
        format!("{rss0:.0} -> {rss1:.0} KiB ({growth:+.1} %), max {rss_max} KiB"),
    );
    row.bar(
        "open fds flat: fds beyond open connections, most in the last fifth <= most in the first + 8",
        other_late <= other_early + 8,
        true,
        format!(
            "{other_early} -> {other_late} (all fds {fd_early} -> {fd_late}, connections {conn_early} -> {conn_late})"
        ),
    );
    row.bar(
        "p99 drift < 10 %",
        drift < 10.0,
        true,
        format!(
            "median per-second p99 {:.2} ms -> {:.2} ms ({drift:+.1} %)",
            first.unwrap_or(f64::NAN),
            last.unwrap_or(f64::NAN)
        ),
    );
    Ok(row)
}
