//! Native histograms proven with the real Prometheus (Debian's 2.42): one
//! Prometheus with `--enable-feature=native-histograms` scrapes the gateway's
//! protobuf exposition (native series), another without the feature scrapes
//! the same gateway's text (classic buckets). `histogram_quantile` over the
//! native series must agree with the classic series (inside the classic
//! bucket the classic estimate falls in) and with the SLO engine's `/slo`
//! (an HDR histogram) within the native schema's error: one bucket of
//! schema 3, a factor of 2^(1/8).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use e2e::harness::{client, find_tool, get, poll_until, simple, GatewayProcess, TestClient};
use e2e::mock::{MockOptions, MockUpstream};
use e2e::prometheus::Prometheus;

/// One schema-3 bucket: the native estimate's worst-case relative error.
const BUCKET_FACTOR: f64 = 1.090_507_732_665_257_7;

fn start_prometheus(
    bin: &Path,
    dir: &Path,
    admin: std::net::SocketAddr,
    native: bool,
) -> Prometheus {
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: ['{admin}']\n"
    );
    let extra: &[&str] = if native {
        &["--enable-feature=native-histograms"]
    } else {
        &[]
    };
    Prometheus::start(bin, dir, &config, extra)
}

async fn query(c: &TestClient, prom: &Prometheus, expr: &str) -> Option<f64> {
    let v = prom.query(c, expr).await?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_quantiles_agree_with_classic_buckets_and_the_slo_engine() {
    let Some(prom_bin) = find_tool("prometheus") else {
        panic!(
            "`prometheus` not on PATH (Debian's `prometheus` package; scripts/test.sh installs it)"
        );
    };
    let up = MockUpstream::start(MockOptions::default()).await.unwrap();
    let dir = std::env::temp_dir().join(format!("gateway-native-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n[telemetry]\nnative_histograms = true\n",
            simple("up", &[up.addr()], "")
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(Some(&path), &[]);
    let c = client();

    // 300 requests with upstream delays spread over 3..=302 ms (a shape the
    // classic buckets cut coarsely), 50 at a time.
    let delays: Vec<u64> = (3..303).collect();
    for chunk in delays.chunks(50) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|d| {
                let (c, addr, d) = (c.clone(), gw.addr, *d);
                tokio::spawn(async move { get(&c, addr, &format!("/delay/{d}")).await.status() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
    }
    let n = delays.len() as f64;

    let native = start_prometheus(&prom_bin, &dir.join("native"), gw.admin, true);
    let classic = start_prometheus(&prom_bin, &dir.join("classic"), gw.admin, false);
    let sel = r#"gateway_request_duration_seconds{route="all",status_class="2xx"}"#;
    let bucket_sel = r#"gateway_request_duration_seconds_bucket{route="all",status_class="2xx"}"#;
    // Both have scraped the final counts (bounded: Prometheus starts in a
    // few seconds even on a loaded machine).
    poll_until("native Prometheus has every request", || async {
        (query(&c, &native, &format!("histogram_count({sel})")).await == Some(n)).then_some(())
    })
    .await;
    poll_until("classic Prometheus has every request", || async {
        let count = r#"gateway_request_duration_seconds_count{route="all",status_class="2xx"}"#;
        (query(&c, &classic, count).await == Some(n)).then_some(())
    })
    .await;
    // The native Prometheus took the protobuf exposition: the series is one
    // native histogram, not classic _bucket series.
    assert_eq!(
        query(&c, &native, &format!("count({bucket_sel})")).await,
        None
    );

    let slo = get(&c, gw.admin, "/slo").await.json();
    let w = &slo["slos"][0]["windows"][0];
    assert_eq!(w["requests"].as_f64(), Some(n), "{slo}");
    let buckets: Vec<f64> = {
        let text = get(&c, gw.admin, "/metrics").await;
        let text = String::from_utf8_lossy(&text.body).into_owned();
        let mut b: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.starts_with("gateway_request_duration_seconds_bucket{")
                    && l.contains("route=\"all\"")
            })
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next()?.parse().ok())
            .collect();
        b.sort_by(f64::total_cmp);
        b.dedup();
        b
    };
    for (q, key) in [(0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")] {
        let nat = query(&c, &native, &format!("histogram_quantile({q}, {sel})"))
            .await
            .unwrap();
        let cls = query(
            &c,
            &classic,
            &format!("histogram_quantile({q}, {bucket_sel})"),
        )
        .await
        .unwrap();
        let hdr = w[key].as_f64().unwrap() / 1000.0;
        println!("q={q}: native {nat:.4}s classic {cls:.4}s /slo {hdr:.4}s");
        assert!(
            nat / hdr <= BUCKET_FACTOR && hdr / nat <= BUCKET_FACTOR,
            "q={q}: native {nat} vs /slo {hdr}: more than one schema-3 bucket apart"
        );
        // The classic bucket the classic estimate interpolates in, widened
        // by one native bucket either side.
        let hi = buckets.iter().copied().find(|b| *b >= cls).unwrap();
        let lo = buckets
            .iter()
            .copied()
            .rev()
            .find(|b| *b < cls)
            .unwrap_or(0.0);
        assert!(
            nat > lo / BUCKET_FACTOR && nat <= hi * BUCKET_FACTOR,
            "q={q}: native {nat} outside the classic bucket ({lo}, {hi}] of {cls}"
        );
    }
}
