//! The standard signals on responses the gateway writes, through the real
//! gateway and `mock-upstream`, every field parsed as an RFC 9651
//! Structured Field with `sfv` (no regexes): RFC 9209 `Proxy-Status` on
//! the gateway's own errors and, on routes with `proxy_status = true`, on
//! proxied responses; draft-ietf-httpapi-ratelimit-headers-10 `RateLimit`
//! and `RateLimit-Policy`; `Retry-After`; RFC 9211 `Cache-Status`. And the
//! labelled counters a fresh gateway's `/metrics` shows at 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use e2e::harness::{
    self, client, config, free_port, get, metrics_text, poll_until, sample, start_gateway, Got,
};
use e2e::mock::{MockOptions, MockUpstream};
use sfv::{BareItem, FieldType, Item, List, ListEntry, Parser};

/// Every test here names the gateway the same: the name error responses
/// carry is one per process.
const VIA: &str = "edge-1";

fn gateway_config(body: &str) -> gateway::Config {
    config(&format!("via_name = \"{VIA}\""), body)
}

async fn mock() -> MockUpstream {
    MockUpstream::start(MockOptions::default()).await.unwrap()
}

/// The items of a List field (all its lines), parsed by `sfv`; panics on a
/// field that is not a valid List, or has an inner list.
fn list(got: &Got, field: &str) -> Vec<Item> {
    let lines: Vec<&str> = got
        .head
        .headers
        .get_all(field)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(!lines.is_empty(), "no {field} on a {}", got.status());
    let joined = lines.join(", ");
    let parsed: List = Parser::new(&joined)
        .parse()
        .unwrap_or_else(|e| panic!("{field}: {joined:?} is not an RFC 9651 List: {e}"));
    // Serialising what was parsed gives back a valid field too.
    assert!(parsed.serialize().is_some(), "{field}: {joined:?}");
    parsed
        .into_iter()
        .map(|m| match m {
            ListEntry::Item(i) => i,
            ListEntry::InnerList(_) => panic!("{field}: inner list in {joined:?}"),
        })
        .collect()
}

fn param<'a>(item: &'a Item, key: &str) -> Option<&'a BareItem> {
    item.params
        .iter()
        .find(|(k, _)| k.as_str() == key)
        .map(|(_, v)| v)
}

fn int(item: &Item, key: &str) -> i64 {
    param(item, key)
        .and_then(BareItem::as_integer)
        .map(i64::from)
        .unwrap_or_else(|| panic!("no Integer {key} in {item:?}"))
}

fn string(item: &BareItem) -> &str {
    item.as_string()
        .map(|s| s.as_str())
        .unwrap_or_else(|| panic!("not a String: {item:?}"))
}

fn token(item: &BareItem) -> &str {
    item.as_token()
        .map(|t| t.as_str())
        .unwrap_or_else(|| panic!("not a Token: {item:?}"))
}

/// The one Proxy-Status member of a gateway error: this gateway, the
/// error type, and none of the proxied-response parameters.
fn proxy_error(got: &Got) -> String {
    let members = list(got, "proxy-status");
    assert_eq!(members.len(), 1, "{members:?}");
    let m = &members[0];
    assert_eq!(token(&m.bare_item), VIA);
    assert!(param(m, "received-status").is_none(), "{m:?}");
    token(param(m, "error").expect("an error parameter")).to_owned()
}

/// The gateway's member on a proxied response: this gateway, the endpoint
/// as `next-hop`, the status received, no error.
fn proxied(got: &Got, endpoint: SocketAddr) -> i64 {
    let members = list(got, "proxy-status");
    let m = members.last().unwrap();
    assert_eq!(token(&m.bare_item), VIA);
    assert_eq!(
        string(param(m, "next-hop").expect("next-hop")),
        endpoint.to_string()
    );
    assert!(param(m, "error").is_none(), "{m:?}");
    int(m, "received-status")
}

fn retry_after(got: &Got) -> i64 {
    got.header("retry-after")
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {:?}", got.header("retry-after")))
}

#[tokio::test]
async fn a_429_carries_ratelimit_policy_retry_after_and_proxy_status() {
    harness::init_logs();
    let m = mock().await;
    let gw = start_gateway(gateway_config(&format!(
        r#"
        [upstreams.mock]
        endpoints = ["{}"]
        [[routes]]
        name = "limited"
        prefix = "/"
        upstream = "mock"
        proxy_status = true
        rate_limits = [{{ name = "per-client", key = "client_ip", limit = 2, window = "60s" }}]
        "#,
        m.addr()
    )))
    .await;
    let c = client();
    for remaining in [1, 0] {
        let ok = get(&c, gw.proxy_addr, "/headers").await;
        assert_eq!(ok.status(), 200);
        let rl = list(&ok, "ratelimit");
        assert_eq!(string(&rl[0].bare_item), "per-client");
        assert_eq!(int(&rl[0], "r"), remaining);
        // One unit comes back every 30 s: "additional quota" within 30 s.
        let t = int(&rl[0], "t");
        assert!((1..=30).contains(&t), "t={t}");
        assert_eq!(proxied(&ok, m.addr()), 200);
    }
    let refused = get(&c, gw.proxy_addr, "/headers").await;
    assert_eq!(refused.status(), 429);
    let policy = list(&refused, "ratelimit-policy");
    assert_eq!(policy.len(), 1);
    assert_eq!(string(&policy[0].bare_item), "per-client");
    assert_eq!(int(&policy[0], "q"), 2);
    assert_eq!(int(&policy[0], "w"), 60);
    let rl = list(&refused, "ratelimit");
    assert_eq!(string(&rl[0].bare_item), "per-client");
    assert_eq!(int(&rl[0], "r"), 0);
    let t = int(&rl[0], "t");
    let retry = retry_after(&refused);
    assert!(
        t >= 1 && retry >= t,
        "Retry-After {retry} earlier than t={t}"
    );
    // Refused by the gateway's policy, never forwarded: no next hop.
    assert_eq!(proxy_error(&refused), "http_request_denied");
    assert_eq!(m.hits("/headers"), 2);
}

/// Two policies, the first with quota left and the second exhausted: the
/// refused request is charged to neither (the first still reports `r=1`),
/// `Retry-After` is no earlier than the `t` of any member that refuses it
/// or is at `r=0`, and a retry at `Retry-After` is admitted. Real time:
/// "per-client" = 2 per 60 s before "burst" = 1 per 2 s, so the test
/// sleeps about 2 s.
#[tokio::test]
async fn a_429_of_two_policies_names_a_retry_after_every_policy_admits() {
    harness::init_logs();
    let m = mock().await;
    let gw = start_gateway(gateway_config(&format!(
        r#"
        [upstreams.mock]
        endpoints = ["{}"]
        [[routes]]
        name = "limited"
        prefix = "/"
        upstream = "mock"
        rate_limits = [
            {{ name = "per-client", key = "client_ip", limit = 2, window = "60s" }},
            {{ name = "burst", key = "route", limit = 1, window = "2s" }},
        ]
        "#,
        m.addr()
    )))
    .await;
    let c = client();
    let started = tokio::time::Instant::now();
    assert_eq!(get(&c, gw.proxy_addr, "/headers").await.status(), 200);
    let refused = get(&c, gw.proxy_addr, "/headers").await;
    assert_eq!(
        refused.status(),
        429,
        "the second request came {:?} after the first: over the 2 s of \"burst\"?",
        started.elapsed()
    );
    let policy = list(&refused, "ratelimit-policy");
    assert_eq!(policy.len(), 2, "{policy:?}");
    let rl = list(&refused, "ratelimit");
    let names: Vec<&str> = rl.iter().map(|m| string(&m.bare_item)).collect();
    assert_eq!(names, ["per-client", "burst"]);
    let retry = retry_after(&refused);
    for m in rl.iter().filter(|m| int(m, "r") == 0) {
        let t = int(m, "t");
        assert!(
            t >= 1 && retry >= t,
            "Retry-After {retry} earlier than t={t} of {:?} in {rl:?}",
            m.bare_item
        );
    }
    // Not charged for the refused request: one of two still available.
    assert_eq!(int(&rl[0], "r"), 1, "{rl:?}");
    assert_eq!(int(&rl[1], "r"), 0, "{rl:?}");
    assert!(
        (1..=2).contains(&retry),
        "Retry-After {retry}: \"burst\" frees a unit within 2 s"
    );
    tokio::time::sleep(std::time::Duration::from_secs(retry.unsigned_abs())).await;
    let again = get(&c, gw.proxy_addr, "/headers").await;
    assert_eq!(
        again.status(),
        200,
        "a retry after Retry-After {retry} was refused: RateLimit {:?}",
        again.header("ratelimit")
    );
    let rl = list(&again, "ratelimit");
    assert_eq!(int(&rl[0], "r"), 0, "{rl:?}");
    assert_eq!(m.hits("/headers"), 2);
}

#[tokio::test]
async fn the_gateways_503_and_the_upstreams_503_are_told_apart() {
    harness::init_logs();
    let m = mock().await;
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = start_gateway(gateway_config(&format!(
        r#"
        [upstreams.mock]
        endpoints = ["{}"]
        [upstreams.dead]
        endpoints = ["{dead}"]
        [upstreams.dead.health_check]
        path = "/health"
        interval = "50ms"
        timeout = "50ms"
        unhealthy_threshold = 1
        [[routes]]
        name = "dead"
        prefix = "/dead"
        upstream = "dead"
        proxy_status = true
        [[routes]]
        name = "live"
        prefix = "/"
        upstream = "mock"
        proxy_status = true
        "#,
        m.addr()
    )))
    .await;
    let c = client();
    // The upstream's own 503: relayed, with what the gateway received.
    let theirs = get(&c, gw.proxy_addr, "/status/503").await;
    assert_eq!(theirs.status(), 503);
    assert_eq!(proxied(&theirs, m.addr()), 503);
    // The gateway's 503: no healthy endpoint once the health check ejected
    // the only one.
    let ours = poll_until("the dead endpoint ejected", || async {
        let g = get(&c, gw.proxy_addr, "/dead").await;
        (g.status() == 503).then_some(g)
    })
    .await;
    assert_eq!(proxy_error(&ours), "destination_unavailable");
    assert!(retry_after(&ours) >= 1);
    assert!(ours.json()["error"]
        .as_str()
        .unwrap()
        .contains("no healthy endpoint"));
    // No route at all: the gateway cannot pick a next hop.
    let gw2 = start_gateway(gateway_config(&format!(
        "[upstreams.mock]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"mock\"\n",
        m.addr()
    )))
    .await;
    let none = get(&c, gw2.proxy_addr, "/elsewhere").await;
    assert_eq!(none.status(), 404);
    assert_eq!(proxy_error(&none), "destination_not_found");
}

#[tokio::test]
async fn refused_and_timed_out_upstreams_say_which() {
    harness::init_logs();
    let m = mock().await;
    let refused = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = start_gateway(gateway_config(&format!(
        r#"
        [upstreams.refused]
        endpoints = ["{refused}"]
        [upstreams.slow]
        endpoints = ["{}"]
        request_timeout = "300ms"
        [[routes]]
        name = "refused"
        prefix = "/refused"
        upstream = "refused"
        [[routes]]
        name = "slow"
        prefix = "/"
        upstream = "slow"
        "#,
        m.addr()
    )))
    .await;
    let c = client();
    let got = get(&c, gw.proxy_addr, "/refused").await;
    assert_eq!(got.status(), 502);
    assert_eq!(proxy_error(&got), "connection_refused");
    let got = get(&c, gw.proxy_addr, "/delay/3000").await;
    assert_eq!(got.status(), 504);
    assert_eq!(proxy_error(&got), "http_response_timeout");
    // Each attempt is counted under its upstream and outcome.
    let attempts = |t: &str, up: &str, outcome: &str| {
        sample(
            t,
            &format!("gateway_upstream_attempts_total{{upstream=\"{up}\",outcome=\"{outcome}\"}}"),
        )
    };
    let text = poll_until("both attempts counted", || async {
        let t = metrics_text(&c, gw.admin_addr).await;
        (attempts(&t, "slow", "timeout") == Some(1.0)).then_some(t)
    })
    .await;
    assert_eq!(
        attempts(&text, "refused", "connect_failed"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(attempts(&text, "refused", "2xx"), Some(0.0), "{text}");
    assert_eq!(attempts(&text, "slow", "2xx"), Some(0.0), "{text}");
}

#[tokio::test]
async fn a_cache_hit_carries_cache_status_and_ratelimit_and_no_next_hop() {
    harness::init_logs();
    let m = mock().await;
    let gw = start_gateway(gateway_config(&format!(
        r#"
        [cache]
        max_size = "1MiB"
        [upstreams.mock]
        endpoints = ["{}"]
        [[routes]]
        name = "cached"
        prefix = "/"
        upstream = "mock"
        proxy_status = true
        cache = {{ ttl = "30s" }}
        rate_limits = [{{ name = "all", key = "route", limit = 100, window = "60s" }}]
        "#,
        m.addr()
    )))
    .await;
    let c = client();
    let miss = get(&c, gw.proxy_addr, "/cache/60").await;
    assert_eq!(miss.status(), 200);
    let cs = list(&miss, "cache-status");
    assert_eq!(param(&cs[0], "fwd").map(token), Some("miss"), "{cs:?}");
    assert_eq!(proxied(&miss, m.addr()), 200);
    let hit = get(&c, gw.proxy_addr, "/cache/60").await;
    assert_eq!(hit.status(), 200);
    let cs = list(&hit, "cache-status");
    assert_eq!(
        param(&cs[0], "hit").and_then(BareItem::as_boolean),
        Some(true),
        "{cs:?}"
    );
    // The limiter applies to hits too; its fields are valid Lists.
    let rl = list(&hit, "ratelimit");
    assert_eq!(string(&rl[0].bare_item), "all");
    assert_eq!(int(&rl[0], "r"), 98);
    let policy = list(&hit, "ratelimit-policy");
    assert_eq!(int(&policy[0], "q"), 100);
    // Answered from memory: no next hop, so no Proxy-Status member, and
    // the stored response did not keep the miss's.
    assert!(
        hit.head.headers.get("proxy-status").is_none(),
        "{:?}",
        hit.head.headers.get("proxy-status")
    );
    assert_eq!(m.hits("/cache"), 1);
}

#[tokio::test]
async fn a_fresh_gateway_shows_its_known_series_at_zero() {
    harness::init_logs();
    let m = mock().await;
    let gw = start_gateway(gateway_config(&format!(
        r#"
        [cache]
        max_size = "1MiB"
        [upstreams.mock]
        endpoints = ["{}"]
        [[routes]]
        name = "limited"
        prefix = "/headers"
        upstream = "mock"
        rate_limits = [{{ name = "p", key = "route", limit = 5, window = "1s" }}]
        [[routes]]
        name = "cached"
        prefix = "/"
        upstream = "mock"
        cache = {{ ttl = "30s" }}
        "#,
        m.addr()
    )))
    .await;
    let c = client();
    // Before any proxied request.
    let text = metrics_text(&c, gw.admin_addr).await;
    let zero = |series: &str| {
        assert_eq!(
            sample(&text, series),
            Some(0.0),
            "{series} not at 0:\n{text}"
        );
    };
    for d in ["allowed", "limited", "backend_error"] {
        zero(&format!(
            "gateway_ratelimit_decisions_total{{route=\"limited\",decision=\"{d}\"}}"
        ));
    }
    for d in ["hit", "miss", "stale", "bypass"] {
        zero(&format!(
            "gateway_cache_requests_total{{route=\"cached\",decision=\"{d}\"}}"
        ));
    }
    for route in ["limited", "cached"] {
        for d in ["upstream_body_error", "upstream_body_timeout", "body_error"] {
            zero(&format!(
                "gateway_response_body_errors_total{{route=\"{route}\",decision=\"{d}\"}}"
            ));
        }
    }
    for r in ["success", "failure"] {
        zero(&format!("gateway_config_reloads_total{{result=\"{r}\"}}"));
    }
    for o in gateway::telemetry::metrics::ATTEMPT_OUTCOMES {
        zero(&format!(
            "gateway_upstream_attempts_total{{upstream=\"mock\",outcome=\"{o}\"}}"
        ));
    }
    // Only label values the config names: no limiter series for the
    // route without limits, no cache series for the route without cache,
    // no JWT series without auth.
    assert!(!text.contains("gateway_ratelimit_decisions_total{route=\"cached\""));
    assert!(!text.contains("gateway_cache_requests_total{route=\"limited\""));
    assert!(!text.contains("gateway_jwt_rejections_total{"));
    // The series count up from there.
    assert_eq!(get(&c, gw.proxy_addr, "/headers").await.status(), 200);
    let text = poll_until("the decision counted", || async {
        let t = metrics_text(&c, gw.admin_addr).await;
        (sample(
            &t,
            "gateway_ratelimit_decisions_total{route=\"limited\",decision=\"allowed\"}",
        ) == Some(1.0))
        .then_some(t)
    })
    .await;
    assert_eq!(
        sample(
            &text,
            "gateway_ratelimit_decisions_total{route=\"limited\",decision=\"limited\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "gateway_upstream_attempts_total{upstream=\"mock\",outcome=\"2xx\"}"
        ),
        Some(1.0)
    );
}
