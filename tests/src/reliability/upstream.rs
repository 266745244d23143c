//! Upstream faults: one of two endpoints killed and restarted, and an upstream that takes
//! 5 s for every answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::load::{self, OpenLoad, Outcome, Rec};
use super::procs::{self, MockProc};
use super::{Ctx, Res, Row};

/// One of two endpoints killed (SIGKILL) under load, restarted on its port a few seconds
/// later. Bars: the only failures are requests that were in flight to it at the kill
/// (retries move the rest to the other endpoint); its breaker opens, half-opens (probes
/// while it is down and after the restart) and closes; recovery = restart to the breaker
/// closed, and to the first answer from it.
pub async fn kill(ctx: &Ctx) -> Res<Row> {
    let rate = ctx.pick(2000.0, 200.0);
    let warm = ctx.pick(Duration::from_secs(5), Duration::from_secs(2));
    let down = ctx.pick(Duration::from_secs(6), Duration::from_secs(3));
    let after = ctx.pick(Duration::from_secs(6), Duration::from_secs(4));
    let mut row = Row::new(
        "upstream-kill",
        format!(
            "{rate:.0} req/s, /delay/20 over 2 endpoints, b killed for {} s",
            down.as_secs()
        ),
    );
    let a = MockProc::start("a").await?;
    let port_b = crate::harness::free_port();
    let mut b = MockProc::start_on("b", port_b).await?;
    let cfg = ctx.file("kill.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[upstreams.pool]
endpoints = ["{}", "{}"]
connect_timeout = "500ms"
circuit_breaker = {{ consecutive_failures = 3, open_time = "500ms", max_open_time = "2s" }}
[[routes]]
name = "all"
prefix = "/"
upstream = "pool"
retry = {{ attempts = 2, backoff = "1ms", max_backoff = "5ms" }}
"#,
            a.addr, b.addr
        ),
    )
    .map_err(|e| e.to_string())?;
    let gw = procs::gateway(&cfg, &[]);
    let running = load::start(OpenLoad {
        addr: gw.addr,
        paths: vec!["/delay/20".into()],
        rate,
        duration: warm + down + after,
        timeout: Duration::from_secs(30),
    });
    // The breaker state of b, polled every 10 ms: (time, state) at every change.
    let states: Arc<Mutex<Vec<(Duration, u8)>>> = Arc::default();
    let series = format!(
        r#"gateway_circuit_state{{upstream="pool",endpoint="{}"}}"#,
        b.addr
    );
    let poller = {
        let (states, t0, admin) = (states.clone(), running.t0, gw.admin);
        let total = warm + down + after + Duration::from_secs(2);
        tokio::spawn(async move {
            let c = procs::plain_client();
            while t0.elapsed() < total {
                if let Ok(text) = procs::metrics(&c, admin).await {
                    if let Some(s) = procs::sample(&text, &series) {
                        let mut v = states.lock().await;
                        if v.last().map(|l| l.1) != Some(s as u8) {
                            v.push((t0.elapsed(), s as u8));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    running.until(warm).await;
    let killed_at = running.now();
    b.kill();
    running.until(warm + down).await;
    drop(b);
    let b = MockProc::start_on("b", port_b).await?;
    let restarted_at = running.now();
    let recs = running.finish().await?;
    let _ = poller.await;
    let states = states.lock().await.clone();
    drop(b);

    let failed: Vec<&Rec> = recs.iter().filter(|r| !r.ok()).collect();
    let in_flight = recs.iter().filter(|r| r.in_flight_at(killed_at)).count();
    let unexpected = failed.iter().filter(|r| !r.in_flight_at(killed_at)).count() as u64;
    row.sent = recs.len() as u64;
    row.failed = failed.len() as u64;
    row.unexpected = unexpected;
    row.p99_fault_ms = load::p99(&recs, |r| r.start >= killed_at && r.start < restarted_at);
    row.figure(
        "p99_before_ms",
        load::p99(&recs, |r| r.start < killed_at).unwrap_or(0.0),
    );
    row.figure("in_flight_at_kill", in_flight as u64);
    row.figure("outcomes", load::outcomes(&recs));
    let trail: Vec<String> = states
        .iter()
        .map(|(t, s)| {
            format!(
                "{}@{:.2}s",
                ["closed", "open", "half-open"]
                    .get(*s as usize)
                    .unwrap_or(&"?"),
                t.as_secs_f64()
            )
        })
        .collect();
    row.figure("breaker_b", trail.join(" "));
    let opened = states.iter().any(|(t, s)| *s == 1 && *t >= killed_at);
    let half_seen = states.iter().any(|(t, s)| *s == 2 && *t >= killed_at);
    let closed_at = states
        .iter()
        .find(|(t, s)| *s == 0 && *t >= restarted_at)
        .map(|(t, _)| *t);
    let first_b = recs
        .iter()
        .filter(|r| r.start >= restarted_at && r.upstream == b'b' && r.ok())
        .map(Rec::end)
        .min();
    row.recover_ms = closed_at.map(|t| load::ms(t.saturating_sub(restarted_at)));
    if let Some(t) = first_b {
        row.figure(
            "first_answer_from_b_after_restart_ms",
            load::ms(t.saturating_sub(restarted_at)),
        );
    }
    row.figure(
        "answers_from_b_after_restart",
        recs.iter()
            .filter(|r| r.start >= restarted_at && r.upstream == b'b' && r.ok())
            .count() as u64,
    );
    row.bar(
        "failures limited to requests in flight at the kill",
        unexpected == 0,
        true,
        format!(
            "{} failed, {unexpected} of them not in flight at the kill ({in_flight} in flight)",
            failed.len()
        ),
    );
    // The state machine cannot go from open to closed without half-open; a half-open
    // that lasted less than the poll interval is inferred from open -> closed.
    row.bar(
        "breaker opens, half-opens and closes",
        opened && closed_at.is_some(),
        true,
        format!(
            "opened {opened}, half-open {}, closed after restart {}",
            if half_seen {
                "seen"
            } else {
                "not seen by the 10 ms poll (inferred)"
            },
            closed_at.is_some()
        ),
    );
    row.bar(
        "b serves again after the restart",
        first_b.is_some(),
        true,
        format!(
            "first answer {:?}",
            first_b.map(|t| t.saturating_sub(restarted_at))
        ),
    );
    Ok(row)
}

/// Every upstream answer takes 5 s (mock-upstream's fault API, `added_latency`, set by
/// loadgen's `[[fault]]` schedule; loadgen also loads the timeout route). A route
/// with `max_inflight` sheds the excess with 503 at once; a route with a 500 ms `timeout`
/// answers 504 at the timeout; the gateway's `/health`, `/ready` and `/metrics` keep
/// answering within 10 ms.
pub async fn slow(ctx: &Ctx) -> Res<Row> {
    let rate = ctx.pick(400.0, 100.0);
    let dur = ctx.pick(Duration::from_secs(15), Duration::from_secs(5));
    const TIMEOUT_MS: f64 = 500.0;
    let mut row = Row::new(
        "slow-upstream",
        format!("{rate:.0} req/s for {} s, every answer 5 s", dur.as_secs()),
    );
    let up = MockProc::start("a").await?;
    let c = procs::plain_client();
    let cfg = ctx.file("slow.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[upstreams.pool]
endpoints = ["{}"]
[[routes]]
name = "shed"
prefix = "/api/hello"
upstream = "pool"
max_inflight = 20
[[routes]]
name = "timeout"
prefix = "/api/users"
upstream = "pool"
timeout = "500ms"
"#,
            up.addr
        ),
    )
    .map_err(|e| e.to_string())?;
    let gw = procs::gateway(&cfg, &[]);
    // loadgen injects the fault through mock-upstream's control API (its `[[fault]]`
    // schedule) and adds load on the timeout route, judged by itself: only 504s.
    let scenario = ctx.file("slow-loadgen.toml");
    std::fs::write(
        &scenario,
        format!(
            r#"name = "reliability-slow-upstream"
[[fault]]
at = "0s"
duration = "{}s"
path_prefix = "/api"
added_latency = "5s"
[[user]]
name = "client"
[[user.task]]
name = "GET /api/users (timeout route)"
path = "/api/users"
expect_status = [504]
"#,
            dur.as_secs() + 30
        ),
    )
    .map_err(|e| e.to_string())?;
    let summary = ctx.file("slow-summary.json");
    let lg = procs::Loadgen::start(
        &scenario,
        &format!("http://{}", gw.addr),
        &[
            "--arrival-rate".into(),
            (rate / 4.0).to_string(),
            "--max-vus".into(),
            "1000".into(),
            "--run-time".into(),
            format!("{}s", dur.as_secs() + 1),
            "--timeout".into(),
            "20s".into(),
            "--control".into(),
            format!("http://{}", up.addr),
            "--summary-export".into(),
            summary.display().to_string(),
        ],
        &ctx.file("slow-result.json"),
    )?;
    let faults = format!("http://{}/_mock/faults", up.addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = procs::call(&c, http::Method::GET, &faults, "").await?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if v["faults"].as_array().is_some_and(|f| !f.is_empty()) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err("loadgen did not schedule its fault on mock-upstream".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let running = load::start(OpenLoad {
        addr: gw.addr,
        paths: vec!["/api/hello".into(), "/api/users".into()],
        rate,
        duration: dur,
        timeout: Duration::from_secs(20),
    });
    // The admin endpoints, each every 60 ms, all through the run.
    let admin = gw.admin;
    let probes = tokio::spawn(async move {
        let c = procs::plain_client();
        let mut lat = Vec::new();
        let mut bad = 0u64;
        let end = tokio::time::Instant::now() + dur;
        let paths = ["/health", "/ready", "/metrics"];
        let mut i = 0;
        while tokio::time::Instant::now() < end {
            let t = tokio::time::Instant::now();
            let url = format!("http://{admin}{}", paths[i % 3]);
            i += 1;
            if !matches!(
                procs::call(&c, http::Method::GET, &url, "").await,
                Ok((200, _))
            ) {
                bad += 1;
            }
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (lat, bad)
    });
    let recs = running.finish().await?;
    let (admin_lat, admin_bad) = probes.await.map_err(|e| e.to_string())?;
    let lg_result = lg.finish(dur + Duration::from_secs(60)).await?;
    let (lg_sent, lg_failed) = procs::loadgen_totals(&lg_result);
    let lg_p99 = std::fs::read_to_string(&summary)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["metrics"]["http_req_duration"]["p(99)"].as_f64());

    let shed = |r: &&Rec| r.path == 0;
    let timed = |r: &&Rec| r.path == 1;
    let shed_503: Vec<f64> = recs
        .iter()
        .filter(shed)
        .filter(|r| r.status() == 503)
        .map(Rec::ms)
        .collect();
    let shed_200 = recs
        .iter()
        .filter(shed)
        .filter(|r| r.status() == 200)
        .count() as u64;
    let to_504: Vec<f64> = recs
        .iter()
        .filter(timed)
        .filter(|r| r.status() == 504)
        .map(Rec::ms)
        .collect();
    // Expected: 200 (admitted, after 5 s) or 503 (shed) on the shedding route, 504 on the
    // timeout route; anything else should not have happened.
    let unexpected = recs
        .iter()
        .filter(|r| {
            !matches!(
                (r.path, r.outcome),
                (0, Outcome::Status(200 | 503)) | (1, Outcome::Status(504))
            )
        })
        .count() as u64;
    row.sent = recs.len() as u64 + lg_sent;
    // Every 503 and 504 is a failed request, though the one this fault calls for.
    row.failed = recs.iter().filter(|r| !r.ok()).count() as u64 + lg_sent;
    row.unexpected = unexpected + lg_failed;
    row.figure("loadgen_504", lg_sent);
    row.figure("loadgen_not_504", lg_failed);
    row.figure("loadgen_p99_ms", lg_p99.unwrap_or(f64::NAN));
    let p99_503 = load::quantile(shed_503.clone(), 0.99);
    let p99_504 = load::quantile(to_504.clone(), 0.99);
    let admin_p99 = load::quantile(admin_lat.clone(), 0.99);
    let admin_max = load::quantile(admin_lat.clone(), 1.0);
    row.p99_fault_ms = p99_503;
    row.figure("shed_503", shed_503.len() as u64);
    row.figure("shed_admitted_200", shed_200);
    row.figure("shed_503_p99_ms", p99_503.unwrap_or(0.0));
    row.figure("timeout_504", to_504.len() as u64);
    row.figure(
        "timeout_504_p50_ms",
        load::quantile(to_504.clone(), 0.5).unwrap_or(0.0),
    );
    row.figure("timeout_504_p99_ms", p99_504.unwrap_or(0.0));
    row.figure("admin_probes", admin_lat.len() as u64);
    row.figure("admin_p99_ms", admin_p99.unwrap_or(0.0));
    row.figure("admin_max_ms", admin_max.unwrap_or(0.0));
    row.figure("outcomes", load::outcomes(&recs));
    let binding = ctx.latency_binding();
    row.bar(
        "only 200/503 (shed route) and 504 (timeout route)",
        unexpected == 0,
        true,
        format!("{unexpected} other outcomes"),
    );
    row.bar(
        "loadgen (fault scheduled by its [[fault]]): every answer on the timeout route a 504",
        lg_failed == 0 && lg_sent > 0,
        true,
        format!("{lg_failed} of {lg_sent} not 504"),
    );
    row.bar(
        "shedding answers at once: 503 p99 < 50 ms",
        p99_503.is_some_and(|p| p < 50.0),
        binding,
        format!(
            "{} shed, p99 {:.1} ms",
            shed_503.len(),
            p99_503.unwrap_or(f64::NAN)
        ),
    );
    let at_timeout =
        |p: Option<f64>| p.is_some_and(|p| (TIMEOUT_MS..TIMEOUT_MS + 100.0).contains(&p));
    row.bar(
        "timeouts answer at the timeout: 504 p99 < 500 ms + 100 ms",
        at_timeout(p99_504) && at_timeout(lg_p99),
        binding,
        format!(
            "{} timed out, p99 {:.1} ms (loadgen: {lg_sent}, p99 {:.1} ms)",
            to_504.len(),
            p99_504.unwrap_or(f64::NAN),
            lg_p99.unwrap_or(f64::NAN)
        ),
    );
    row.bar(
        "/health, /ready, /metrics answer within 10 ms (p99)",
        admin_bad == 0 && admin_p99.is_some_and(|p| p <= 10.0),
        binding,
        format!(
            "{} probes, {admin_bad} failed, p99 {:.1} ms, max {:.1} ms",
            admin_lat.len(),
            admin_p99.unwrap_or(f64::NAN),
            admin_max.unwrap_or(f64::NAN)
        ),
    );
    Ok(row)
}
