//! Upstreams that misbehave on cue (late bytes, short bodies, stalls, bad
//! framing, out-of-range statuses), through the real gateway binary against
//! raw-socket upstreams: no response ever reaches the wrong client, every
//! broken response counts as a failure, and framing reaches the client in
//! one normalised form or as a 502.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tokio::time::Instant;

use e2e::harness::{
    client, get, metrics_text, poll_until, sample, temp_file, wait_until, GatewayProcess,
};
use e2e::raw::{exchange, raw_request, response, RawUpstream, Step};

/// The stray response an upstream writes after the one asked for.
const EVIL: &str =
    "HTTP/1.1 200 OK\r\ncontent-length: 12\r\nx-evil: 1\r\ncache-control: max-age=60\r\n\r\nPOISONED-204";

/// One upstream `up` and a catch-all route `all` (with `route_extra`).
fn spawn(up: &RawUpstream, upstream_extra: &str, route_extra: &str, tail: &str) -> GatewayProcess {
    let path = temp_file("upfaults", "gateway.toml", &format!(
        "[upstreams.up]\nendpoints = [\"{}\"]\n{upstream_extra}\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"up\"\n{route_extra}\n{tail}",
        up.addr
    ));
    GatewayProcess::spawn_with_args(Some(&path), &[], &["--log-format", "json"])
}

fn get_req(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
}

/// A fresh answer naming the path it answers.
fn fresh(path: &str) -> Vec<u8> {
    let body = format!("fresh {path}");
    response(200, &[("cache-control", "max-age=60")], &body)
}

/// Upstream: the first request (`/first`) gets `first` then, 300 ms later,
/// the stray [`EVIL`] response on the same keep-alive connection; every
/// other request a fresh answer.
async fn poisoning_upstream(first: &'static [u8]) -> RawUpstream {
    RawUpstream::start(move |req| {
        if req.target == "/first" {
            vec![
                Step::Write(first.to_vec()),
                Step::Sleep(Duration::from_millis(300)),
                Step::text(EVIL),
            ]
        } else {
            vec![Step::Write(fresh(&req.target))]
        }
    })
    .await
}

/// Sends the first request, waits until the stray bytes have surely
/// arrived, then asks for `/second` as an unrelated client.
async fn first_then_second(gw: &GatewayProcess, first: &str) -> (u16, String) {
    let (status, _) = raw_request(gw.addr, first).await;
    assert!(status == 200 || status == 204, "first answered {status}");
    tokio::time::sleep(Duration::from_millis(900)).await;
    raw_request(gw.addr, &get_req("/second")).await
}

fn assert_clean(status: u16, text: &str) {
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("fresh /second"), "{text}");
    assert!(!text.to_ascii_lowercase().contains("x-evil"), "{text}");
    assert!(!text.contains("POISONED"), "{text}");
}

#[tokio::test]
async fn a_stray_response_after_204_never_reaches_the_next_client() {
    let up = poisoning_upstream(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let gw = spawn(&up, "", "", "");
    let (status, text) = first_then_second(&gw, &get_req("/first")).await;
    assert_clean(status, &text);
    // The poisoned connection was closed; the second request used another.
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn a_stray_response_after_head_never_reaches_the_next_client() {
    let up = poisoning_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n").await;
    let gw = spawn(&up, "", "", "");
    let head = "HEAD /first HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let (status, text) = first_then_second(&gw, head).await;
    assert_clean(status, &text);
}

#[tokio::test]
async fn bytes_beyond_content_length_sent_late_never_reach_the_next_client() {
    let up = poisoning_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
    let gw = spawn(&up, "", "", "");
    let (status, text) = first_then_second(&gw, &get_req("/first")).await;
    assert_clean(status, &text);
}

#[tokio::test]
async fn a_cached_route_never_stores_stray_bytes() {
    let up = poisoning_upstream(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let gw = spawn(
        &up,
        "",
        "cache = { ttl = \"60s\" }",
        "[cache]\nmax_size = \"1MiB\"\n",
    );
    let (status, text) = first_then_second(&gw, &get_req("/first")).await;
    assert_clean(status, &text);
    // Served again from the cache: still the right answer.
    let (status, text) = raw_request(gw.addr, &get_req("/second")).await;
    assert_clean(status, &text);
    assert!(text.contains("HIT"), "{text}");
}

/// `gateway_requests_total` of route `all`, `GET`, answered `status`.
fn requests_answered(text: &str, status: u16) -> Option<f64> {
    let series =
        format!("gateway_requests_total{{route=\"all\",method=\"GET\",status=\"{status}\"}}");
    sample(text, &series)
}

async fn metrics(gw: &GatewayProcess) -> String {
    metrics_text(&client(), gw.admin).await
}

#[tokio::test]
async fn a_stalled_body_cuts_the_client_off_and_counts_an_upstream_error() {
    let up = RawUpstream::start(|_| {
        vec![
            Step::text("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"),
            Step::Hang,
        ]
    })
    .await;
    let gw = spawn(&up, "body_idle_timeout = \"500ms\"", "", "");
    let started = Instant::now();
    let out = exchange(
        gw.addr,
        get_req("/stall").as_bytes(),
        Duration::from_secs(15),
    )
    .await;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("0123456789"), "{text}");
    // Cut off by the 500 ms idle timeout, well before the client's own 15 s.
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(8),
        "{took:?}"
    );
    let text = poll_until("the stalled body counted", || async {
        let m = metrics(&gw).await;
        m.contains("gateway_response_body_errors_total{route=\"all\",decision=\"upstream_body_timeout\"} 1")
            .then_some(m)
    })
    .await;
    assert_eq!(requests_answered(&text, 504), Some(1.0), "{text}");
    assert_eq!(requests_answered(&text, 200), None);
}

#[tokio::test]
async fn truncated_bodies_are_errors_in_metrics_slo_access_log_and_breaker() {
    let up = RawUpstream::start(|_| {
        vec![
            Step::text("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"),
            Step::Close,
        ]
    })
    .await;
    let gw = spawn(
        &up,
        "circuit_breaker = { consecutive_failures = 3, open_time = \"60s\" }",
        "",
        "[telemetry.access_log]\nenabled = true\nsample_ratio = 0.0\n[[slos]]\nname = \"edge\"\nroutes = [\"all\"]\navailability = 0.99\n",
    );
    for _ in 0..3 {
        // The client gets a cut-off 200 or, when the break came before the
        // head was flushed, nothing: never a complete response.
        let (status, text) = raw_request(gw.addr, &get_req("/short")).await;
        assert!(matches!(status, 0 | 200), "{text}");
    }
    // Three broken bodies in a row opened the breaker.
    let (status, text) = raw_request(gw.addr, &get_req("/short")).await;
    assert_eq!(status, 503, "{text}");
    assert_eq!(up.requests().len(), 3);

    let text = poll_until("the truncated bodies counted", || async {
        let m = metrics(&gw).await;
        m.contains(
            "gateway_response_body_errors_total{route=\"all\",decision=\"upstream_body_error\"} 3",
        )
        .then_some(m)
    })
    .await;
    assert_eq!(requests_answered(&text, 502), Some(3.0), "{text}");
    assert_eq!(requests_answered(&text, 200), None, "{text}");
    let slo = get(&client(), gw.admin, "/slo").await.json();
    let w = &slo["slos"][0]["windows"][0];
    assert_eq!(w["errors"], 4, "{slo}");
    // Logged although successes are not sampled: an error, with its outcome.
    wait_until("access log lines of the broken bodies", || async {
        let logs = gw.logs.lock().unwrap().clone();
        logs.iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["target"] == "access"
                    && v["fields"]["status"] == 502
                    && v["fields"]["response_status"] == 200
                    && v["fields"]["outcome"] == "upstream_body_error"
            })
            .count()
            == 3
    })
    .await;
}

#[tokio::test]
async fn content_length_values_reach_the_client_normalised_or_as_502() {
    let up = RawUpstream::start(|req| {
        let head = match req.target.as_str() {
            "/plus" => "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello",
            "/list" => "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
            "/two" => "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
            "/differ" => "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            "/huge" => "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\nhello",
            _ => "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        };
        vec![Step::text(head)]
    })
    .await;
    let gw = spawn(&up, "", "", "");
    for path in ["/plus", "/differ", "/huge"] {
        let (status, text) = raw_request(gw.addr, &get_req(path)).await;
        assert_eq!(status, 502, "{path}: {text}");
        assert!(!text.contains("hello"), "{path}: {text}");
    }
    for path in ["/list", "/two"] {
        let (status, text) = raw_request(gw.addr, &get_req(path)).await;
        assert_eq!(status, 200, "{path}: {text}");
        let lengths: Vec<&str> = text
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
            .collect();
        assert_eq!(lengths.len(), 1, "{path}: {text}");
        assert_eq!(lengths[0].split(':').nth(1).unwrap().trim(), "5", "{text}");
        assert!(text.ends_with("\r\n\r\nhello"), "{path}: {text}");
    }
}

#[tokio::test]
async fn chunked_with_content_length_is_read_as_chunked_without_it_and_not_reused() {
    let up = RawUpstream::start(|_| {
        vec![Step::text(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )]
    })
    .await;
    let gw = spawn(&up, "", "", "");
    for _ in 0..2 {
        let (status, text) = raw_request(gw.addr, &get_req("/te-cl")).await;
        assert_eq!(status, 200, "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("content-length: 3"),
            "{text}"
        );
        assert!(text.contains("hello"), "{text}");
    }
    // The connection of such a response is never reused.
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn malformed_chunk_sizes_abort_the_response() {
    let up = RawUpstream::start(|req| {
        let size = match req.target.as_str() {
            "/plus" => "+5",
            "/hex" => "0x5",
            _ => "10000000000000005",
        };
        vec![Step::text(&format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n"
        ))]
    })
    .await;
    let gw = spawn(&up, "", "", "");
    for path in ["/plus", "/hex", "/overlong"] {
        let out = exchange(gw.addr, get_req(path).as_bytes(), Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&out);
        // The head may have gone out; the body never ends cleanly.
        assert!(!text.contains("hello"), "{path}: {text}");
        assert!(!text.ends_with("0\r\n\r\n"), "{path}: {text}");
    }
    let text = poll_until("the broken bodies counted", || async {
        let m = metrics(&gw).await;
        let n = sample(
            &m,
            "gateway_response_body_errors_total{route=\"all\",decision=\"upstream_body_error\"}",
        )
        .unwrap_or(0.0);
        (n == 3.0).then_some(m)
    })
    .await;
    assert!(!text.contains("status=\"200\""), "{text}");
}

#[tokio::test]
async fn statuses_outside_http_range_become_502_and_mint_no_series() {
    let up = RawUpstream::start(|req| {
        let status = match req.target.as_str() {
            "/999" => "999",
            "/600" => "600",
            _ => "299",
        };
        vec![Step::text(&format!(
            "HTTP/1.1 {status} Whatever\r\ncontent-length: 2\r\n\r\nok"
        ))]
    })
    .await;
    let gw = spawn(&up, "", "", "");
    for path in ["/999", "/600"] {
        let (status, text) = raw_request(gw.addr, &get_req(path)).await;
        assert_eq!(status, 502, "{path}: {text}");
    }
    // An unregistered code inside the range passes, labelled by its class.
    let (status, _) = raw_request(gw.addr, &get_req("/299")).await;
    assert_eq!(status, 299);
    let text = poll_until("the requests counted", || async {
        let m = metrics(&gw).await;
        m.contains("status=\"2xx\"").then_some(m)
    })
    .await;
    assert!(!text.contains("status=\"999\""), "{text}");
    assert!(!text.contains("status=\"600\""), "{text}");
    assert!(!text.contains("status=\"299\""), "{text}");
    assert_eq!(requests_answered(&text, 502), Some(2.0), "{text}");
}
