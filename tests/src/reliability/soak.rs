//! Soak: moderate load for a long time (30 min by default, `--soak-time`), from loadgen;
//! the gateway's RSS and open fds sampled every 10 s.

use std::time::Duration;

use super::load;
use super::procs::{self, MockProc};
use super::{Ctx, Res, Row};
use crate::harness;

/// Bars, after a warm-up of a tenth of the run (at most 3 min): RSS growth < 5 %, open
/// fds flat (within 8 of the value at the end of the warm-up), p99 drift < 10 % (the
/// median of loadgen's per-second p99s over the first and the last fifth after warm-up).
pub async fn run(ctx: &Ctx) -> Res<Row> {
    let rate = 500.0;
    let total = ctx.soak_time;
    let warmup = (total / 10).min(Duration::from_secs(180));
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
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    while start.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if let (Ok(rss), Ok(fd)) = (procs::rss_kib(pid), procs::fds(pid)) {
            samples.push((start.elapsed().as_secs_f64(), rss, fd));
        }
    }
    let result = lg.finish(total + Duration::from_secs(120)).await?;
    let (sent, failed) = procs::loadgen_totals(&result);
    let w = warmup.as_secs_f64();
    let after: Vec<&(f64, u64, u64)> = samples.iter().filter(|s| s.0 >= w).collect();
    let (rss0, fd0) = after.first().map_or((0, 0), |s| (s.1, s.2));
    let (rss1, _) = after.last().map_or((0, 0), |s| (s.1, s.2));
    let rss_max = after.iter().map(|s| s.1).max().unwrap_or(0);
    let fd_max = after.iter().map(|s| s.2).max().unwrap_or(0);
    let fd_min = after.iter().map(|s| s.2).min().unwrap_or(0);
    let growth = if rss0 == 0 {
        f64::NAN
    } else {
        (rss1 as f64 - rss0 as f64) / rss0 as f64 * 100.0
    };
    let span = (total.as_secs_f64() - w) / 5.0;
    let first = load::quantile(procs::loadgen_p99s(&result, w, w + span), 0.5);
    let end = total.as_secs_f64();
    let last = load::quantile(procs::loadgen_p99s(&result, end - span, end), 0.5);
    let drift = match (first, last) {
        (Some(a), Some(b)) if a > 0.0 => (b - a) / a * 100.0,
        _ => f64::NAN,
    };
    row.sent = sent;
    row.failed = failed;
    row.unexpected = failed;
    row.p99_fault_ms = last;
    row.figure("rss_after_warmup_kib", rss0);
    row.figure("rss_end_kib", rss1);
    row.figure("rss_max_kib", rss_max);
    row.figure("rss_growth_pct", growth);
    row.figure("fds_after_warmup", fd0);
    row.figure("fds_min_max", format!("{fd_min}..{fd_max}"));
    row.figure("p99_first_ms", first.unwrap_or(f64::NAN));
    row.figure("p99_last_ms", last.unwrap_or(f64::NAN));
    row.figure("p99_drift_pct", drift);
    row.figure(
        "samples",
        serde_json::json!(samples
            .iter()
            .map(|s| serde_json::json!([s.0.round(), s.1, s.2]))
            .collect::<Vec<_>>()),
    );
    row.bar(
        "0 failed requests",
        failed == 0 && sent > 0,
        true,
        format!("{failed} of {sent}"),
    );
    row.bar(
        "RSS growth after warm-up < 5 %",
        growth < 5.0,
        true,
        format!("{rss0} -> {rss1} KiB ({growth:+.1} %), max {rss_max} KiB"),
    );
    row.bar(
        "open fds flat after warm-up (within 8)",
        fd_max.saturating_sub(fd0) <= 8,
        true,
        format!("{fd0} at warm-up, {fd_min}..{fd_max} after"),
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
