//! OpenTelemetry traces through the real gateway: spans exported with
//! OTLP/HTTP to a receiver built on the official protobuf definitions,
//! against `mock-upstream`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use e2e::harness::{self, client, config, metrics_text, poll_until, sample, send, start_gateway};
use e2e::mock::{Fault, MockOptions, MockUpstream};
use e2e::otlp::{OtlpReceiver, Received};
use http::Request;
use http_body_util::Full;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::time::Instant;

async fn mock(id: &str) -> MockUpstream {
    MockUpstream::start(MockOptions {
        id: id.into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// `[telemetry.tracing]` exporting to `endpoint` after 20 ms.
fn tracing_toml(endpoint: &str, ratio: f64, extra: &str) -> String {
    format!(
        r#"
        [telemetry.tracing]
        enabled = true
        endpoint = "{endpoint}"
        sample_ratio = {ratio}
        service_name = "gw-under-test"
        scheduled_delay = "20ms"
        {extra}
        "#
    )
}

fn gw_config(tracing: &str, endpoints: &[SocketAddr], route_extra: &str) -> gateway::Config {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    config(
        "",
        &format!(
            r#"
            {tracing}
            [upstreams.pool]
            endpoints = [{}]
            [[routes]]
            name = "all"
            prefix = "/"
            upstream = "pool"
            {route_extra}
            "#,
            eps.join(", ")
        ),
    )
}

/// A fresh sampled (`-01`) or unsampled (`-00`) client traceparent:
/// (header, trace id, span id).
fn client_traceparent(sampled: bool) -> (String, String, String) {
    let trace = format!("{:032x}", fastrand::u128(1..));
    let span = format!("{:016x}", fastrand::u64(1..));
    let flags = if sampled { "01" } else { "00" };
    (format!("00-{trace}-{span}-{flags}"), trace, span)
}

async fn get_with(
    c: &harness::TestClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> harness::Got {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::default()).unwrap()).await
}

/// Waits until the receiver holds at least `n` spans of `trace`.
async fn trace_spans(rx: &OtlpReceiver, trace: &str, n: usize) -> Vec<Received> {
    poll_until(&format!("{n} spans of trace {trace}"), || async {
        let spans: Vec<Received> = rx
            .spans()
            .into_iter()
            .filter(|s| s.trace_id() == trace)
            .collect();
        (spans.len() >= n).then_some(spans)
    })
    .await
}

fn only(spans: &[Received], kind: SpanKind) -> Vec<&Received> {
    spans.iter().filter(|s| s.kind() == kind).collect()
}

#[tokio::test]
async fn server_and_attempt_spans_follow_semconv_and_link_to_the_client_and_upstream() {
    harness::init_logs();
    let rx = OtlpReceiver::start().await;
    let (a, b) = (mock("a").await, mock("b").await);
    a.set_fault(Fault {
        path_prefix: "/headers".into(),
        error_rate: 1.0,
        status: 503,
        ..Default::default()
    });
    let gw = start_gateway(gw_config(
        &tracing_toml(&rx.endpoint(), 1.0, ""),
        &[a.addr(), b.addr()],
        r#"retry = { attempts = 3, backoff = "1ms", max_backoff = "5ms" }"#,
    ))
    .await;
    let c = client();
    // Round robin: of two requests, at least one tries `a` first (503)
    // and is retried on `b`.
    let mut retried = 0;
    for _ in 0..2 {
        let (tp, trace, client_span) = client_traceparent(true);
        let got = get_with(
            &c,
            gw.proxy_addr,
            "/headers",
            &[("traceparent", &tp), ("user-agent", "tracing-test/1.0")],
        )
        .await;
        assert_eq!(got.status(), 200);
        assert_eq!(got.header("x-upstream-id"), "b");
        let seen = got.json()["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .to_owned();

        // The server span, then one client span per attempt.
        let first = trace_spans(&rx, &trace, 2).await;
        let attempts_wanted = if only(&first, SpanKind::Client)
            .iter()
            .any(|s| s.int("http.response.status_code") == Some(503))
        {
            3
        } else {
            2
        };
        let spans = trace_spans(&rx, &trace, attempts_wanted).await;
        let servers = only(&spans, SpanKind::Server);
        assert_eq!(servers.len(), 1, "{spans:#?}");
        let server = servers[0];
        assert_eq!(server.service, "gw-under-test");
        assert_eq!(
            server.parent_id(),
            client_span,
            "child of the client's span"
        );
        assert_eq!(server.span.name, "GET all");
        assert_eq!(server.str("http.request.method").as_deref(), Some("GET"));
        assert_eq!(server.str("url.path").as_deref(), Some("/headers"));
        assert_eq!(server.str("url.scheme").as_deref(), Some("http"));
        assert_eq!(server.str("http.route").as_deref(), Some("all"));
        assert_eq!(server.int("http.response.status_code"), Some(200));
        assert_eq!(server.str("server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            server.int("server.port"),
            Some(i64::from(gw.proxy_addr.port()))
        );
        assert_eq!(
            server.str("network.protocol.version").as_deref(),
            Some("1.1")
        );
        assert_eq!(server.str("client.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            server.str("user_agent.original").as_deref(),
            Some("tracing-test/1.0")
        );
        assert_eq!(server.str("error.type"), None);
        assert_eq!(
            server.str("gateway.request_id").as_deref(),
            Some(got.header("x-request-id"))
        );

        let mut clients = only(&spans, SpanKind::Client);
        assert_eq!(clients.len(), attempts_wanted - 1, "{spans:#?}");
        clients.sort_by_key(|s| s.int("http.request.resend_count").unwrap_or(0));
        for (i, attempt) in clients.iter().enumerate() {
            assert_eq!(attempt.parent_id(), server.span_id(), "attempt {i}");
            assert_eq!(attempt.span.name, "GET");
            assert_eq!(attempt.str("server.address").as_deref(), Some("127.0.0.1"));
            assert_eq!(
                attempt.int("http.request.resend_count"),
                (i > 0).then_some(i as i64)
            );
        }
        let last = clients.last().unwrap();
        assert_eq!(last.int("http.response.status_code"), Some(200));
        assert_eq!(last.int("server.port"), Some(i64::from(b.addr().port())));
        // The upstream saw the attempt span as its parent.
        assert_eq!(seen, format!("00-{trace}-{}-01", last.span_id()));
        if clients.len() == 2 {
            retried += 1;
            let failed = clients[0];
            assert_eq!(failed.int("http.response.status_code"), Some(503));
            assert_eq!(failed.str("error.type").as_deref(), Some("503"));
            assert_eq!(failed.int("server.port"), Some(i64::from(a.addr().port())));
        }
    }
    assert!(retried >= 1, "no request was retried");
}

#[tokio::test]
async fn cache_and_rate_limit_decisions_are_span_events_and_exemplars_use_the_gateway_trace() {
    harness::init_logs();
    let rx = OtlpReceiver::start().await;
    let up = mock("u").await;
    let gw = start_gateway(gw_config(
        &format!(
            "{}\n[cache]\nmax_size = \"1MiB\"\n",
            tracing_toml(&rx.endpoint(), 1.0, "")
        ),
        &[up.addr()],
        r#"cache = { ttl = "60s" }
           rate_limits = [{ name = "all", key = "route", limit = 2, window = "1h" }]"#,
    ))
    .await;
    let c = client();
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(
                get_with(&c, gw.proxy_addr, "/api/hello", &[])
                    .await
                    .status(),
            );
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429]);
    let servers = poll_until("three server spans", || async {
        let s: Vec<Received> = rx
            .spans()
            .into_iter()
            .filter(|s| s.kind() == SpanKind::Server)
            .collect();
        (s.len() >= 3).then_some(s)
    })
    .await;
    let by_status = |code: i64| -> Vec<&Received> {
        servers
            .iter()
            .filter(|s| s.int("http.response.status_code") == Some(code))
            .collect()
    };
    let ok = by_status(200);
    assert_eq!(ok.len(), 2);
    let cache: BTreeSet<String> = ok
        .iter()
        .map(|s| s.event("gateway.cache", "gateway.cache.status").unwrap())
        .collect();
    assert_eq!(cache, BTreeSet::from(["hit".into(), "miss".into()]));
    for s in &ok {
        assert_eq!(
            s.event("gateway.ratelimit", "gateway.ratelimit.decision")
                .as_deref(),
            Some("allowed")
        );
    }
    let limited = by_status(429);
    assert_eq!(limited.len(), 1);
    assert_eq!(
        limited[0]
            .event("gateway.ratelimit", "gateway.ratelimit.decision")
            .as_deref(),
        Some("limited")
    );
    // The hit and the 429 never reached the upstream: one attempt span in all.
    let hit_trace = ok
        .iter()
        .find(|s| s.event("gateway.cache", "gateway.cache.status").as_deref() == Some("hit"))
        .unwrap()
        .trace_id();
    let clients = poll_until("the miss's attempt span", || async {
        let c: Vec<Received> = rx
            .spans()
            .into_iter()
            .filter(|s| s.kind() == SpanKind::Client)
            .collect();
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(clients.len(), 1);
    assert_ne!(clients[0].trace_id(), hit_trace);

    // Exemplars carry the gateway's own trace ids.
    let om = send(
        &c,
        Request::get(format!("http://{}/metrics", gw.admin_addr))
            .header("accept", "application/openmetrics-text; version=1.0.0")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let text = String::from_utf8(om.body.to_vec()).unwrap();
    let exemplar_traces: BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with("gateway_request_duration_seconds_bucket"))
        .filter_map(|l| l.split("trace_id=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    assert!(!exemplar_traces.is_empty(), "no exemplar in:\n{text}");
    let span_traces: BTreeSet<String> = servers.iter().map(Received::trace_id).collect();
    assert!(
        exemplar_traces.is_subset(&span_traces),
        "exemplars {exemplar_traces:?} are not the exported traces {span_traces:?}"
    );
}

#[tokio::test]
async fn unsampled_requests_export_nothing_and_forward_the_client_traceparent_unchanged() {
    harness::init_logs();
    let rx = OtlpReceiver::start().await;
    let up = mock("u").await;
    let gw = start_gateway(gw_config(
        &tracing_toml(&rx.endpoint(), 0.0, ""),
        &[up.addr()],
        "",
    ))
    .await;
    let c = client();
    for _ in 0..10 {
        let got = get_with(&c, gw.proxy_addr, "/headers", &[]).await;
        assert_eq!(got.status(), 200);
        assert!(got.json()["headers"]["traceparent"].is_null());
    }
    let (unsampled, _, _) = client_traceparent(false);
    let got = get_with(
        &c,
        gw.proxy_addr,
        "/headers",
        &[("traceparent", &unsampled), ("tracestate", "vendor=1")],
    )
    .await;
    assert_eq!(got.json()["headers"]["traceparent"], unsampled.as_str());
    assert_eq!(got.json()["headers"]["tracestate"], "vendor=1");

    // A sampled parent is honoured at ratio 0: its spans arrive, and they
    // are the only ones.
    let (sampled, trace, _) = client_traceparent(true);
    let got = get_with(
        &c,
        gw.proxy_addr,
        "/headers",
        &[("traceparent", &sampled), ("tracestate", "vendor=1")],
    )
    .await;
    assert_eq!(got.json()["headers"]["tracestate"], "vendor=1");
    let seen = got.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(seen.starts_with(&format!("00-{trace}-")) && seen != sampled);
    let spans = trace_spans(&rx, &trace, 2).await;
    // Both spans carry the client's trace state and W3C flags (sampled,
    // has-is-remote); only the server span's parent is remote.
    for s in &spans {
        assert_eq!(s.span.trace_state, "vendor=1", "{s:#?}");
        let remote = s.kind() == SpanKind::Server;
        assert_eq!(
            s.span.flags,
            0x101 | if remote { 0x200 } else { 0 },
            "{s:#?}"
        );
    }
    // Give any stray span a few more export rounds to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let traces: BTreeSet<String> = rx.spans().iter().map(Received::trace_id).collect();
    assert_eq!(traces, BTreeSet::from([trace]));
    assert_eq!(rx.spans().len(), 2);
}

#[tokio::test]
async fn a_dead_collector_costs_requests_nothing_and_failed_exports_are_counted() {
    harness::init_logs();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let up = mock("u").await;
    let gw = start_gateway(gw_config(
        &tracing_toml(
            &format!("http://{dead}/v1/traces"),
            1.0,
            "export_timeout = \"200ms\"\nmax_queue_size = 16\nmax_export_batch_size = 8",
        ),
        &[up.addr()],
        "",
    ))
    .await;
    let c = client();
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(
            get_with(&c, gw.proxy_addr, "/api/hello", &[])
                .await
                .status(),
            200
        );
    }
    // A bound no blocking exporter could meet (100 x 200 ms export
    // timeouts), generous for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "100 requests took {:?}",
        started.elapsed()
    );
    let m = poll_until("every span ended and failed exports counted", || async {
        let text = metrics_text(&c, gw.admin_addr).await;
        let errors = sample(&text, "gateway_trace_export_errors_total").unwrap_or(0.0);
        let ended = sample(&text, "gateway_trace_spans_ended_total").unwrap_or(0.0);
        (errors >= 1.0 && ended >= 200.0).then_some(text)
    })
    .await;
    // 100 server spans and 100 attempt spans.
    assert_eq!(sample(&m, "gateway_trace_spans_ended_total"), Some(200.0));
    assert!(sample(&m, "gateway_trace_spans_failed_total").unwrap() >= 1.0);
    assert_eq!(sample(&m, "gateway_trace_spans_exported_total"), Some(0.0));
}

#[tokio::test]
async fn shutdown_flushes_queued_spans() {
    harness::init_logs();
    let rx = OtlpReceiver::start().await;
    let up = mock("u").await;
    // A batch delay far beyond the test: only the shutdown flush exports.
    let mut cfg = gw_config(&tracing_toml(&rx.endpoint(), 1.0, ""), &[up.addr()], "");
    cfg.telemetry.tracing.scheduled_delay = Duration::from_secs(3600);
    let gw = start_gateway(cfg).await;
    let c = client();
    let (tp, trace, _) = client_traceparent(true);
    let got = get_with(&c, gw.proxy_addr, "/api/hello", &[("traceparent", &tp)]).await;
    assert_eq!(got.status(), 200);
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rx.spans().len(), 0, "exported before shutdown");
    gw.shutdown();
    tokio::time::timeout(harness::WAIT, gw.wait())
        .await
        .expect("gateway stops");
    let spans = trace_spans(&rx, &trace, 2).await;
    assert_eq!(only(&spans, SpanKind::Server).len(), 1);
}

#[tokio::test]
async fn auth_decisions_are_span_events() {
    harness::init_logs();
    // Same value as the auth tests use: setting it concurrently is harmless.
    std::env::set_var(
        "GW_E2E_JWT_SECRET",
        "meetinity-dev-secret-change-me-in-production",
    );
    let rx = OtlpReceiver::start().await;
    let up = mock("u").await;
    let gw = start_gateway(config(
        "",
        &format!(
            r#"
            {}
            [auth.mock]
            issuers = ["mock-upstream"]
            audiences = ["meetinity"]
            [[auth.mock.keys]]
            kid = "hs-1"
            algorithms = ["HS256"]
            secret_env = "GW_E2E_JWT_SECRET"
            [upstreams.pool]
            endpoints = ["{}"]
            [[routes]]
            name = "private"
            prefix = "/"
            upstream = "pool"
            auth = {{ provider = "mock" }}
            "#,
            tracing_toml(&rx.endpoint(), 1.0, ""),
            up.addr()
        ),
    ))
    .await;
    let c = client();
    let session = send(
        &c,
        Request::post(format!("http://{}/api/auth/session", up.addr()))
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from_static(
                br#"{"username":"alice","password":"pw"}"#,
            )))
            .unwrap(),
    )
    .await;
    let token = session.json()["access_token"].as_str().unwrap().to_owned();
    let denied = get_with(&c, gw.proxy_addr, "/api/hello", &[]).await;
    assert_eq!(denied.status(), 401);
    let bearer = format!("Bearer {token}");
    let ok = get_with(
        &c,
        gw.proxy_addr,
        "/api/hello",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(ok.status(), 200);
    let servers = poll_until("two server spans", || async {
        let s: Vec<Received> = rx
            .spans()
            .into_iter()
            .filter(|s| s.kind() == SpanKind::Server)
            .collect();
        (s.len() >= 2).then_some(s)
    })
    .await;
    let outcome = |status: i64| {
        servers
            .iter()
            .find(|s| s.int("http.response.status_code") == Some(status))
            .and_then(|s| s.event("gateway.auth", "gateway.auth.outcome"))
    };
    assert_eq!(outcome(401).as_deref(), Some("invalid_token"));
    assert_eq!(outcome(200).as_deref(), Some("passed"));
}

// Multi-threaded: the receiver must answer while this test blocks on the
// process's exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_the_endpoint_from_otel_env_and_flushes_on_sigterm() {
    harness::init_logs();
    let rx = OtlpReceiver::start().await;
    let up = mock("u").await;
    // The file's endpoint is wrong on purpose: OTEL_EXPORTER_OTLP_ENDPOINT
    // (a base URL) replaces it. Batches wait an hour: only the shutdown
    // flush can export.
    let text = format!(
        "{}\n{}",
        tracing_toml("http://127.0.0.1:9/v1/traces", 1.0, "")
            .replace("scheduled_delay = \"20ms\"", "scheduled_delay = \"1h\""),
        harness::simple("pool", &[up.addr()], "")
    );
    let path = std::env::temp_dir().join(format!(
        "gateway-tracing-{}-{}.toml",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&path, text).unwrap();
    let base = rx.endpoint().trim_end_matches("/v1/traces").to_owned();
    let mut gw =
        harness::GatewayProcess::spawn(Some(&path), &[("OTEL_EXPORTER_OTLP_ENDPOINT", base)]);
    let c = client();
    let (tp, trace, _) = client_traceparent(true);
    let got = get_with(&c, gw.addr, "/api/hello", &[("traceparent", &tp)]).await;
    assert_eq!(got.status(), 200);
    drop(c);
    gw.signal("TERM");
    let started = Instant::now();
    let code = gw.wait_exit();
    assert_eq!(code, Some(0), "{:#?}", gw.logs.lock().unwrap());
    // The flush got its answer: no exporter shutdown timeout was logged.
    assert!(
        !gw.logged("did not flush") && !gw.logged("shutdown failed"),
        "{:#?} after {:?}",
        gw.logs.lock().unwrap(),
        started.elapsed()
    );
    let spans = trace_spans(&rx, &trace, 2).await;
    assert_eq!(only(&spans, SpanKind::Server).len(), 1);
    assert_eq!(only(&spans, SpanKind::Client).len(), 1);
    let _ = std::fs::remove_file(&path);
}
