//! SIGTERM and SIGHUP under load.

use std::time::Duration;

use super::load::{self, OpenLoad, Outcome};
use super::procs::{self, MockProc};
use super::{Ctx, Res, Row};
use crate::harness;

/// SIGTERM at `rate` req/s: every request in flight at the signal is answered; the drain
/// time is the time from the signal to the exit.
///
/// The requests take 100 ms at the upstream (`/delay/100`), so a few hundred are in flight
/// at the signal. A request sent before the signal counts as in flight unless its
/// connection was refused (then it never reached the gateway); one sent after may fail
/// (the listener is closed), which is expected.
pub async fn sigterm(ctx: &Ctx) -> Res<Row> {
    let rate = ctx.pick(2000.0, 200.0);
    let warm = ctx.pick(Duration::from_secs(6), Duration::from_secs(2));
    let after = Duration::from_secs(1);
    let mut row = Row::new(
        "sigterm",
        format!(
            "{rate:.0} req/s, /delay/100, SIGTERM after {} s",
            warm.as_secs()
        ),
    );
    let up = MockProc::start("a").await?;
    let cfg = ctx.file("sigterm.toml");
    std::fs::write(&cfg, harness::simple("pool", &[up.addr], "")).map_err(|e| e.to_string())?;
    let mut gw = procs::gateway(&cfg, &[]);
    let running = load::start(OpenLoad {
        addr: gw.addr,
        paths: vec!["/delay/100".into()],
        rate,
        duration: warm + after,
        timeout: Duration::from_secs(30),
    });
    running.until(warm).await;
    let signal_at = running.now();
    gw.signal("TERM");
    let code = procs::wait_exit(&mut gw.child, Duration::from_secs(60)).await;
    let drain = running.now().saturating_sub(signal_at);
    let recs = running.finish().await?;

    let before: Vec<_> = recs.iter().filter(|r| r.start < signal_at).collect();
    let in_flight = before.iter().filter(|r| r.in_flight_at(signal_at)).count();
    let failed = recs.iter().filter(|r| !r.ok()).count() as u64;
    let unexpected = before
        .iter()
        .filter(|r| !r.ok() && r.outcome != Outcome::Connect)
        .count() as u64;
    row.sent = recs.len() as u64;
    row.failed = failed;
    row.unexpected = unexpected;
    row.p99_fault_ms = load::p99(&recs, |r| {
        r.start < signal_at && r.start + Duration::from_secs(1) >= signal_at
    });
    row.figure("in_flight_at_signal", in_flight as u64);
    row.figure("drain_ms", load::ms(drain));
    row.figure(
        "sent_after_signal",
        recs.len().saturating_sub(before.len()) as u64,
    );
    row.figure(
        "outcomes_before_signal",
        load::outcomes(before.iter().copied()),
    );
    row.figure(
        "outcomes_after_signal",
        load::outcomes(recs.iter().filter(|r| r.start >= signal_at)),
    );
    row.bar(
        "0 failed requests that were in flight (sent before SIGTERM)",
        unexpected == 0,
        true,
        format!(
            "{unexpected} of {} sent before the signal ({in_flight} in flight at it)",
            before.len()
        ),
    );
    let code = code?;
    row.bar(
        "exits 0 after draining",
        code == Some(0),
        true,
        format!("exit code {code:?} after {:.0} ms", load::ms(drain)),
    );
    Ok(row)
}

/// SIGHUP every second under load, cycling two valid configs (each with another upstream)
/// and one invalid one: no request fails; every valid reload applies and every invalid
/// one is rejected. The load comes from loadgen (open model).
pub async fn sighup(ctx: &Ctx) -> Res<Row> {
    let rate = ctx.pick(2000.0, 200.0);
    let hups: u64 = ctx.pick(60, 9);
    let mut row = Row::new(
        "sighup",
        format!("{rate:.0} req/s (loadgen), SIGHUP every 1 s for {hups} s"),
    );
    let (a, b) = (MockProc::start("a").await?, MockProc::start("b").await?);
    let configs = [
        harness::simple("pool", &[a.addr], ""),
        harness::simple("pool", &[b.addr], ""),
        "[upstreams.pool]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"no-such-upstream\"\n"
            .to_owned(),
    ];
    let cfg = ctx.file("sighup.toml");
    procs::write_atomic(&cfg, &configs[0])?;
    let gw = procs::gateway(&cfg, &[]);
    let scenario = ctx.file("sighup-loadgen.toml");
    std::fs::write(
        &scenario,
        "name = \"reliability-sighup\"\n[[user]]\nname = \"client\"\n[[user.task]]\nname = \"GET /api/hello\"\npath = \"/api/hello\"\n",
    )
    .map_err(|e| e.to_string())?;
    let run_time = hups + 3;
    let lg = procs::Loadgen::start(
        &scenario,
        &format!("http://{}", gw.addr),
        &[
            "--arrival-rate".into(),
            rate.to_string(),
            "--max-vus".into(),
            "1000".into(),
            "--run-time".into(),
            format!("{run_time}s"),
            "--timeout".into(),
            "10s".into(),
        ],
        &ctx.file("sighup-result.json"),
    )?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = procs::plain_client();
    let (mut valid, mut invalid) = (0u64, 0u64);
    let start = tokio::time::Instant::now();
    for i in 0..hups {
        tokio::time::sleep_until(start + Duration::from_secs(i)).await;
        let which = (i % 3) as usize;
        procs::write_atomic(&cfg, &configs[which])?;
        gw.signal("HUP");
        if which == 2 {
            invalid += 1;
        } else {
            valid += 1;
        }
    }
    let result = lg.finish(Duration::from_secs(run_time + 60)).await?;
    let text = procs::metrics(&c, gw.admin).await?;
    let ok = procs::sample(&text, r#"gateway_config_reloads_total{result="success"}"#)
        .unwrap_or(0.0) as u64;
    let rejected = procs::sample(&text, r#"gateway_config_reloads_total{result="failure"}"#)
        .unwrap_or(0.0) as u64;
    let (sent, failed) = procs::loadgen_totals(&result);
    row.sent = sent;
    row.failed = failed;
    row.unexpected = failed;
    let p99s = procs::loadgen_p99s(&result, 1.0, (hups + 1) as f64);
    row.p99_fault_ms = load::quantile(p99s.clone(), 0.5);
    row.figure(
        "worst_second_p99_ms",
        load::quantile(p99s, 1.0).unwrap_or(0.0),
    );
    row.figure("reloads_applied", ok);
    row.figure("reloads_rejected", rejected);
    row.figure("hits_a", procs::mock_hits(&c, a.addr).await?);
    row.figure("hits_b", procs::mock_hits(&c, b.addr).await?);
    if let Some(f) = result["failures"].as_array().filter(|f| !f.is_empty()) {
        row.figure("failure_kinds", serde_json::Value::Array(f.clone()));
    }
    row.bar(
        "0 failed requests",
        failed == 0 && sent > 0,
        true,
        format!("{failed} of {sent}"),
    );
    row.bar(
        "every valid config applied, every invalid one rejected",
        ok == valid && rejected == invalid,
        true,
        format!("applied {ok}/{valid}, rejected {rejected}/{invalid}"),
    );
    Ok(row)
}
