//! Redis killed under load, per `on_error` policy of the shared rate limiter (the shared
//! cache tier uses the same Redis throughout).

use std::time::Duration;

use super::load::{self, OpenLoad, Rec};
use super::procs::{self, MockProc};
use super::{Ctx, Res, Row};
use crate::harness::{self, RedisServer};

/// The gateway config: one rate-limited route (store Redis, `on_error = policy`, a limit
/// no test reaches) and one cached route with the Redis tier.
fn config(upstream: std::net::SocketAddr, redis_port: u16, policy: &str, timeout: &str) -> String {
    format!(
        r#"[rate_limit.redis]
url = "redis://127.0.0.1:{redis_port}"
on_error = "{policy}"
timeout = "{timeout}"
[cache.redis]
url = "redis://127.0.0.1:{redis_port}"
timeout = "{timeout}"
[upstreams.pool]
endpoints = ["{upstream}"]
[[routes]]
name = "limited"
prefix = "/api"
upstream = "pool"
rate_limits = [{{ name = "shared", key = "route", limit = 1000000, window = "1s", store = "redis" }}]
[[routes]]
name = "cached"
prefix = "/cache"
upstream = "pool"
cache = {{ ttl = "1s" }}
"#
    )
}

/// Kills Redis (SIGKILL) under load for a while, then starts it again on its port.
///
/// Bars: the policy holds (`local` and `fail_open`: no failure at all; `fail_closed`: 503
/// during the outage and nothing else fails); p99 during the outage within 5 ms of the
/// baseline (fast-fail: no request waits for a dead Redis); recovery (first rate-limit
/// key written to the new Redis, and for `fail_closed` the first request let through)
/// under 2 s after Redis is back.
pub async fn outage(ctx: &Ctx, policy: &str) -> Res<Row> {
    let rate = ctx.pick(1000.0, 200.0);
    let base = ctx.pick(Duration::from_secs(10), Duration::from_secs(3));
    let out = ctx.pick(Duration::from_secs(20), Duration::from_secs(5));
    let after = ctx.pick(Duration::from_secs(8), Duration::from_secs(4));
    let mut row = Row::new(
        &format!("redis-{policy}"),
        format!(
            "{rate:.0} req/s, Redis killed for {} s, on_error = {policy}",
            out.as_secs()
        ),
    );
    if harness::find_tool("redis-server").is_none() {
        return Err("redis-server is not on PATH (apt-get install redis-server)".into());
    }
    let up = MockProc::start("a").await?;
    let port = harness::free_port();
    let redis = RedisServer::start(port).await;
    let cfg = ctx.file(&format!("redis-{policy}.toml"));
    // The default 50 ms Redis timeout in a full run; in a short run (debug binaries on a
    // loaded CI machine) a round trip can pass 50 ms with Redis up, and fail_closed would
    // then rightly refuse requests before the kill.
    let timeout = ctx.pick("50ms", "500ms");
    std::fs::write(&cfg, config(up.addr, port, policy, timeout)).map_err(|e| e.to_string())?;
    let gw = procs::gateway(&cfg, &[]);
    // Nine rate-limited requests to one cached (max-age 1 s: a local miss each second).
    let mut paths = vec!["/api/hello".to_owned(); 9];
    paths.push("/cache/1".into());
    let running = load::start(OpenLoad {
        addr: gw.addr,
        paths,
        rate,
        duration: base + out + after,
        timeout: Duration::from_secs(30),
    });
    running.until(base).await;
    let killed_at = running.now();
    drop(redis);
    running.until(base + out).await;
    let redis = RedisServer::start(port).await;
    let back_at = running.now();
    // Recovery: the gateway writes to the new (empty) Redis again.
    let mut used_at = None;
    while running.now() < back_at + Duration::from_secs(10) {
        let port = redis.port;
        let n = tokio::task::spawn_blocking(move || {
            std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "--raw", "dbsize"])
                .output()
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
        if n > 0 {
            used_at = Some(running.now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recs = running.finish().await?;
    let c = procs::plain_client();
    let text = procs::metrics(&c, gw.admin).await.unwrap_or_default();
    drop(redis);

    let during = |r: &Rec| r.start >= killed_at && r.start < back_at;
    let warm = Duration::from_secs(1).min(base / 2);
    let p99_base = load::p99(&recs, |r| r.start >= warm && r.start < killed_at);
    let p99_out = load::p99(&recs, during);
    let fivexx = recs
        .iter()
        .filter(|r| r.status() >= 500 || r.status() == 0)
        .count() as u64;
    let failed: Vec<&Rec> = recs.iter().filter(|r| !r.ok()).collect();
    let first_ok_after = recs
        .iter()
        .filter(|r| r.start >= back_at && r.ok() && r.path < 9)
        .map(Rec::end)
        .min();
    let recovered_at = match policy {
        "fail_closed" => match (used_at, first_ok_after) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        },
        _ => used_at,
    };
    let recover = recovered_at.map(|t| t.saturating_sub(back_at));
    // Requests in flight at the kill may see either side; a small grace on both edges.
    let grace = Duration::from_millis(250);
    let unexpected: u64 = match policy {
        "fail_closed" => failed
            .iter()
            .filter(|r| {
                let in_outage = r.start + grace >= killed_at
                    && r.start < recovered_at.unwrap_or(back_at) + grace;
                !(in_outage && r.status() == 503 && r.path < 9)
            })
            .count() as u64,
        _ => failed.len() as u64,
    };
    // The first few that should not have failed, for a look: status@sent (ms from start).
    let odd: Vec<String> = failed
        .iter()
        .filter(|r| match policy {
            "fail_closed" => {
                !(r.start + grace >= killed_at
                    && r.start < recovered_at.unwrap_or(back_at) + grace
                    && r.status() == 503
                    && r.path < 9)
            }
            _ => true,
        })
        .take(5)
        .map(|r| format!("{}@{:.0}ms", r.status(), load::ms(r.start)))
        .collect();
    if !odd.is_empty() {
        row.figure(
            "unexpected_first",
            format!(
                "{} (killed at {:.0} ms, back at {:.0} ms, recovered at {:.0} ms)",
                odd.join(" "),
                load::ms(killed_at),
                load::ms(back_at),
                recovered_at.map_or(f64::NAN, load::ms)
            ),
        );
    }
    let leaked = if policy == "fail_closed" {
        recs.iter()
            .filter(|r| r.path < 9 && r.ok() && r.start >= killed_at + grace && r.start < back_at)
            .count() as u64
    } else {
        0
    };
    row.sent = recs.len() as u64;
    row.failed = failed.len() as u64;
    row.unexpected = unexpected;
    row.p99_fault_ms = p99_out;
    row.recover_ms = recover.map(load::ms);
    row.figure("p99_baseline_ms", p99_base.unwrap_or(f64::NAN));
    row.figure("gateway_5xx_or_transport", fivexx);
    row.figure(
        "outcomes_during_outage",
        load::outcomes(recs.iter().filter(|r| during(r))),
    );
    row.figure(
        "outcomes_outside_outage",
        load::outcomes(recs.iter().filter(|r| !during(r))),
    );
    for u in ["ratelimit", "cache"] {
        // Present once the gateway has Redis fast-fail (decisions made without asking).
        if let Some(n) = procs::sample(
            &text,
            &format!(r#"gateway_redis_fast_failed_total{{use="{u}"}}"#),
        ) {
            row.figure(&format!("redis_fast_failed_{u}"), n);
        }
    }
    for op in ["ratelimit", "cache"] {
        if let Some(n) = procs::sample(
            &text,
            &format!(r#"gateway_redis_errors_total{{op="{op}"}}"#),
        ) {
            row.figure(&format!("redis_errors_{op}"), n);
        }
    }
    let holds = match policy {
        "fail_closed" => {
            format!("503 during the outage, no 2xx let through ({leaked} were), nothing else fails")
        }
        "fail_open" => "every request let through: 0 failures".into(),
        _ => "decided locally: 0 failures, no gateway 5xx".into(),
    };
    row.bar(
        &format!("policy {policy} holds"),
        unexpected == 0 && leaked == 0,
        true,
        format!(
            "{holds}; {} failed, {unexpected} should not have",
            failed.len()
        ),
    );
    if policy == "local" {
        row.bar(
            "no gateway 5xx under local",
            fivexx == 0,
            true,
            format!("{fivexx}"),
        );
    }
    let within = match (p99_base, p99_out) {
        (Some(b), Some(o)) => o <= b + 5.0,
        _ => false,
    };
    row.bar(
        "p99 during the outage within 5 ms of the baseline",
        within,
        ctx.latency_binding(),
        format!(
            "baseline {:.2} ms, outage {:.2} ms",
            p99_base.unwrap_or(f64::NAN),
            p99_out.unwrap_or(f64::NAN)
        ),
    );
    row.bar(
        "recovery < 2 s after Redis returns",
        recover.is_some_and(|r| r < Duration::from_secs(2)),
        true,
        match recover {
            Some(r) => format!("{:.0} ms", load::ms(r)),
            None => "not recovered within 10 s".into(),
        },
    );
    Ok(row)
}
