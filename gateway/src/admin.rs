//! The admin listener: `/health` (liveness), `/ready` (config loaded and
//! every upstream pool has a live endpoint), `/metrics` (Prometheus text, or
//! OpenMetrics with exemplars when the scraper asks for it), `/slo` (the
//! live SLO report: JSON, or the live page when `Accept` prefers
//! `text/html`), `/slo/ui` (the live page, see [`slo_page`]) and
//! `POST /cache/purge?key=PATH` or `?prefix=PATH`
//! (removes cached responses by path, on every route, in memory and in the
//! shared Redis tier).
//!
//! Reads are open (probes and Prometheus reach them; keep the listener off
//! public networks). Writes need `Authorization: Bearer TOKEN` with the token
//! of `[admin]` (`token_env` or `token_file`, read on every write so a
//! rotated Secret applies at once), compared in constant time: a wrong or
//! missing token is a 401 with `WWW-Authenticate: Bearer`; with no token
//! configured every write is refused with 403. An empty `prefix=` (which
//! would purge everything) or `key=` is a 400.

use std::fmt::Write as _;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::Body;
use crate::config::AdminConfig;
use crate::server::{json, Shared};
use crate::telemetry::{metrics, process, protobuf};

pub mod slo_page;

/// Answers one admin request.
pub async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/cache/purge" {
        return purge(shared, &req).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"method not allowed"}"#.into(),
        );
    }
    match req.uri().path() {
        "/health" => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        "/ready" => ready(shared),
        "/metrics" => metrics(shared, req.headers()),
        "/slo" => {
            let mut r = match slo_page::negotiate(req.headers()) {
                slo_page::Format::Html => slo_page::page(),
                slo_page::Format::Json => slo(shared),
            };
            // The representation depends on Accept: caches must key on it.
            r.headers_mut()
                .insert(http::header::VARY, http::HeaderValue::from_static("accept"));
            r
        }
        "/slo/ui" => slo_page::page(),
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
    }
}

fn ready(shared: &Shared) -> Response<Body> {
    let rt = shared.runtime();
    let upstreams: serde_json::Map<String, serde_json::Value> = rt
        .upstreams
        .iter()
        .map(|(name, up)| {
            let eps: Vec<_> = up
                .endpoints()
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "endpoint": e.authority.as_str(),
                        "healthy": e.is_healthy(),
                        "inflight": e.inflight(),
                    })
                })
                .collect();
            (
                name.clone(),
                serde_json::json!({ "ready": up.has_healthy_endpoint(), "endpoints": eps }),
            )
        })
        .collect();
    let ready = rt.is_ready();
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "upstreams": upstreams,
        "cache": {
            "entries": rt.middleware.cache.len(),
            "bytes": rt.middleware.cache.bytes(),
            "redis_failures": rt.middleware.cache.redis().map(|r| r.failures()),
        },
        // Decisions the shared limiter could not make (then its on_error
        // policy applied): the metric until /metrics exists.
        "rate_limit_redis_failures": rt.middleware.redis.as_ref().map(|r| r.failures()),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, body.to_string())
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

fn metrics(shared: &Shared, headers: &http::HeaderMap) -> Response<Body> {
    let openmetrics = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let om = render_openmetrics(shared);
    // Native histograms exist only in the protobuf exposition: served to a
    // scraper that asks for it (Prometheus with native histograms on).
    if let Some(native) = shared.telemetry.metrics.native() {
        let protobuf = headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(protobuf::accepts);
        if protobuf {
            let body =
                protobuf::encode(&om, "gateway_request_duration_seconds", &native.snapshots());
            let mut r = Response::new(Body::full(body));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(protobuf::CONTENT_TYPE),
            );
            return r;
        }
    }
    let (body, ctype) = if openmetrics {
        (om, OPENMETRICS)
    } else {
        (metrics::to_prometheus_text(&om), PROMETHEUS_TEXT)
    };
    let mut r = Response::new(Body::full(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

/// Every family in OpenMetrics text, `# EOF` included.
pub fn render_openmetrics(shared: &Shared) -> String {
    let mut out = String::with_capacity(64 * 1024);
    shared.telemetry.metrics.encode_families(&mut out);
    let rt = shared.runtime();

    let mut health = Vec::new();
    let mut inflight = Vec::new();
    let mut idle = Vec::new();
    let mut open = Vec::new();
    let mut circuit = Vec::new();
    for (name, up) in &rt.upstreams {
        for ep in up.endpoints() {
            let labels = format!(
                "upstream=\"{}\",endpoint=\"{}\"",
                metrics::escape_label(name),
                metrics::escape_label(ep.authority.as_str())
            );
            health.push((labels.clone(), if ep.is_healthy() { 1.0 } else { 0.0 }));
            inflight.push((labels.clone(), ep.inflight() as f64));
            if let Some(state) = ep.circuit_state() {
                circuit.push((labels.clone(), f64::from(state)));
            }
            open.push((labels.clone(), ep.open_connections() as f64));
            idle.push((labels, ep.idle_connections() as f64));
        }
    }
    metrics::write_gauge_family(
        &mut out,
        "gateway_upstream_endpoint_healthy",
        "1 when the endpoint is in rotation (active health checks), 0 when ejected",
        &health,
    );
    metrics::write_gauge_family(
        &mut out,
        "gateway_upstream_endpoint_inflight_requests",
        "Requests in flight to the endpoint",
        &inflight,
    );
    metrics::write_gauge_family(
        &mut out,
        "gateway_upstream_endpoint_idle_connections",
        "Idle keep-alive connections pooled for the endpoint",
        &idle,
    );
    metrics::write_gauge_family(
        &mut out,
        "gateway_upstream_endpoint_open_connections",
        "Connections open to the endpoint (busy, idle and tunnelled), against the upstream's max_connections",
        &open,
    );

    let (mut route_inflight, mut route_limit) = (Vec::new(), Vec::new());
    for (route, shed) in &rt.shedders {
        let labels = format!("route=\"{}\"", metrics::escape_label(route));
        route_inflight.push((labels.clone(), shed.inflight() as f64));
        route_limit.push((labels, shed.max() as f64));
    }
    metrics::write_gauge_family(
        &mut out,
        "gateway_route_inflight_requests",
        "Requests in flight on a route with max_inflight (load shedding above the limit)",
        &route_inflight,
    );
    metrics::write_gauge_family(
        &mut out,
        "gateway_route_inflight_limit",
        "The route's max_inflight: requests above it are shed with 503",
        &route_limit,
    );
    // Adaptive concurrency (middleware::concurrency), per route that has it.
    let (mut c_limit, mut c_inflight) = (Vec::new(), Vec::new());
    for (route, c) in &rt.middleware.concurrency {
        let labels = format!("route=\"{}\"", metrics::escape_label(route));
        c_limit.push((labels.clone(), c.limit() as f64));
        c_inflight.push((labels, c.inflight() as f64));
    }
    metrics::write_gauge_family(
        &mut out,
        "gateway_concurrency_limit",
        "The route's adaptive concurrency limit now: requests above it are refused (503 or 429)",
        &c_limit,
    );
    metrics::write_gauge_family(
        &mut out,
        "gateway_concurrency_inflight",
        "Requests in flight on a route with an adaptive concurrency limit",
        &c_inflight,
    );
    if !rt.middleware.concurrency.is_empty() {
        let _ = writeln!(out, "# HELP gateway_concurrency_rejected Requests refused by the route's adaptive concurrency limit (never forwarded)");
        let _ = writeln!(out, "# TYPE gateway_concurrency_rejected counter");
        for (route, c) in &rt.middleware.concurrency {
            let _ = writeln!(
                out,
                "gateway_concurrency_rejected_total{{route=\"{}\"}} {}",
                metrics::escape_label(route),
                c.rejected()
            );
        }
    }
    metrics::write_gauge_family(
        &mut out,
        "gateway_circuit_state",
        "Circuit breaker state per endpoint: 0 closed, 1 open, 2 half-open",
        &circuit,
    );
    let redis_errors: Vec<(&str, u64)> = [
        (
            "ratelimit",
            rt.middleware.redis.as_ref().map(|r| r.failures()),
        ),
        ("cache", rt.middleware.cache.redis().map(|r| r.failures())),
    ]
    .into_iter()
    .filter_map(|(op, n)| Some((op, n?)))
    .collect();
    if !redis_errors.is_empty() {
        let _ = writeln!(out, "# HELP gateway_redis_errors Redis calls that failed or timed out, by use: the shared rate limiter (ratelimit), the shared cache tier (cache)");
        let _ = writeln!(out, "# TYPE gateway_redis_errors counter");
        for (op, n) in redis_errors {
            let _ = writeln!(out, "gateway_redis_errors_total{{op=\"{op}\"}} {n}");
        }
    }
    // Fast-fail (middleware::redis_conn::FastFail): whether each use of
    // Redis is being called, and the calls skipped while it was not.
    let gates: Vec<(&str, &crate::middleware::redis_conn::FastFail)> = [
        ("ratelimit", rt.middleware.redis.as_ref().map(|r| r.gate())),
        ("cache", rt.middleware.cache.redis().map(|r| r.gate())),
    ]
    .into_iter()
    .filter_map(|(u, g)| Some((u, g?)))
    .collect();
    if !gates.is_empty() {
        let up: Vec<(String, f64)> = gates
            .iter()
            .map(|(u, g)| (format!("use=\"{u}\""), if g.is_up() { 1.0 } else { 0.0 }))
            .collect();
        metrics::write_gauge_family(
            &mut out,
            "gateway_redis_up",
            "1 while Redis is called, 0 while it is skipped after consecutive failures (fast-fail; one probe at a time retries it), by use",
            &up,
        );
        let _ = writeln!(out, "# HELP gateway_redis_fast_failed Redis calls skipped by fast-fail: the on_error policy (rate limiter) or memory alone (cache) decided at once, by use");
        let _ = writeln!(out, "# TYPE gateway_redis_fast_failed counter");
        for (u, g) in &gates {
            let _ = writeln!(
                out,
                "gateway_redis_fast_failed_total{{use=\"{u}\"}} {}",
                g.skipped()
            );
        }
    }

    let now = tokio::time::Instant::now();
    let mut burn = Vec::new();
    let mut latency = Vec::new();
    let mut met = Vec::new();
    for report in rt.slos.report(now) {
        let slo = metrics::escape_label(&report.name);
        for w in &report.windows {
            if let Some(b) = w.availability_burn_rate {
                burn.push((
                    format!("slo=\"{slo}\",sli=\"availability\",window=\"{}\"", w.window),
                    b,
                ));
            }
            for lb in &w.latency_burn_rates {
                if let Some(b) = lb.burn_rate {
                    burn.push((
                        format!(
                            "slo=\"{slo}\",sli=\"latency_{}\",window=\"{}\"",
                            lb.objective, w.window
                        ),
                        b,
                    ));
                }
            }
            for (q, v) in [("0.5", w.p50_ms), ("0.95", w.p95_ms), ("0.99", w.p99_ms)] {
                if let Some(v) = v {
                    latency.push((
                        format!("slo=\"{slo}\",quantile=\"{q}\",window=\"{}\"", w.window),
                        v / 1000.0,
                    ));
                }
            }
            for o in &w.objectives {
                met.push((
                    format!(
                        "slo=\"{slo}\",objective=\"{}\",window=\"{}\"",
                        metrics::escape_label(&o.objective),
                        w.window
                    ),
                    if o.met { 1.0 } else { 0.0 },
                ));
            }
        }
    }
    metrics::write_gauge_family(
        &mut out,
        "gateway_slo_burn_rate",
        "Error-budget burn rate per SLO, SLI and window (1 = spending the budget exactly over the SLO period)",
        &burn,
    );
    metrics::write_gauge_family(
        &mut out,
        "gateway_slo_latency_seconds",
        "Exact latency quantiles of the live SLO windows (HDR histograms)",
        &latency,
    );
    metrics::write_gauge_family(
        &mut out,
        "gateway_slo_objective_met",
        "1 when the objective holds in the window",
        &met,
    );
    shared.connections.write_metrics(&mut out);
    if let Some(tls) = &shared.tls {
        tls.write_metrics(&mut out);
    }
    process::write(&mut out);
    let series = out
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count()
        + 1;
    metrics::write_gauge_family(
        &mut out,
        "gateway_metrics_series",
        "Series exposed on this endpoint, this one included",
        &[(String::new(), series as f64)],
    );
    out.push_str("# EOF\n");
    out
}

fn slo(shared: &Shared) -> Response<Body> {
    let rt = shared.runtime();
    let report = rt.slos.report(tokio::time::Instant::now());
    let body = serde_json::json!({ "slos": report });
    json(StatusCode::OK, body.to_string())
}

/// The shortest admin token accepted, in bytes (`openssl rand -hex 32`
/// gives 64).
pub const MIN_TOKEN_LEN: usize = 32;

/// The admin token, never printed.
pub struct AdminToken(Vec<u8>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Whether `offered` is the token, in time that depends only on the
    /// token's length (no early exit on the first differing byte).
    pub fn matches(&self, offered: &[u8]) -> bool {
        let mut diff = u8::from(offered.len() != self.0.len());
        for (i, t) in self.0.iter().enumerate() {
            diff |= t ^ offered.get(i).copied().unwrap_or(0);
        }
        std::hint::black_box(diff) == 0
    }
}

/// Loads the `[admin]` token: `Ok(None)` when none is configured (admin
/// writes are then refused), else the token, or the key (`token_env`,
/// `token_file`) and what is wrong. Validation and every admin write call it.
pub fn load_token(cfg: &AdminConfig) -> Result<Option<AdminToken>, (&'static str, String)> {
    let (field, raw) = match (&cfg.token_env, &cfg.token_file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(("token_env", "set only one of token_env, token_file".into()))
        }
        (Some(var), None) => (
            "token_env",
            std::env::var(var)
                .map_err(|_| {
                    (
                        "token_env",
                        format!("environment variable {var:?} is not set"),
                    )
                })?
                .into_bytes(),
        ),
        (None, Some(path)) => {
            let mut b = std::fs::read(path)
                .map_err(|e| ("token_file", format!("cannot read {}: {e}", path.display())))?;
            while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                b.pop();
            }
            ("token_file", b)
        }
    };
    if raw.len() < MIN_TOKEN_LEN {
        return Err((
            field,
            format!(
                "the admin token is {} bytes; at least {MIN_TOKEN_LEN} are required",
                raw.len()
            ),
        ));
    }
    if !raw.iter().all(|c| c.is_ascii_graphic()) {
        return Err((
            field,
            "the admin token must be printable ASCII without spaces (it is sent as a bearer token)"
                .into(),
        ));
    }
    Ok(Some(AdminToken(raw)))
}

/// Admits an admin write: `None` when the request carries the configured
/// bearer token, else the refusal.
fn authorize_write(cfg: &AdminConfig, headers: &http::HeaderMap) -> Option<Response<Body>> {
    let token = match load_token(cfg) {
        Ok(Some(t)) => t,
        Ok(None) => return Some(json(
            StatusCode::FORBIDDEN,
            r#"{"error":"admin writes are disabled: configure [admin] token_env or token_file"}"#
                .into(),
        )),
        Err((field, e)) => {
            // Validated at load: the variable or file went away since.
            tracing::error!(key = %format!("admin.{field}"), error = %e, "admin token unavailable");
            return Some(json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"admin token unavailable"}"#.into(),
            ));
        }
    };
    let mut all = headers.get_all(http::header::AUTHORIZATION).iter();
    let offered = match (all.next(), all.next()) {
        (Some(v), None) => v
            .as_bytes()
            .split_first_chunk::<7>()
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|(_, t)| t.trim_ascii()),
        _ => None,
    };
    let (challenge, body) = match offered {
        Some(t) if token.matches(t) => return None,
        Some(_) => (
            r#"Bearer realm="gateway-admin", error="invalid_token""#,
            r#"{"error":"invalid admin token"}"#,
        ),
        None => (
            r#"Bearer realm="gateway-admin""#,
            r#"{"error":"admin writes need Authorization: Bearer TOKEN"}"#,
        ),
    };
    let mut r = json(StatusCode::UNAUTHORIZED, body.into());
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static(challenge),
    );
    Some(r)
}

async fn purge(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST && req.method() != Method::DELETE {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"use POST or DELETE"}"#.into(),
        );
    }
    if let Some(refused) = authorize_write(&shared.runtime().config.admin, req.headers()) {
        return refused;
    }
    let (mut key, mut prefix) = (None, None);
    for pair in req.uri().query().unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("key", v)) => key = Some(percent_decode(v)),
            Some(("prefix", v)) => prefix = Some(percent_decode(v)),
            _ => {}
        }
    }
    if key.is_none() && prefix.is_none() {
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"give key=PATH or prefix=PATH"}"#.into(),
        );
    }
    if key.as_deref() == Some("") || prefix.as_deref() == Some("") {
        // `prefix=` matches every path: a purge of everything is not
        // something to do by leaving a parameter empty.
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"key and prefix must not be empty (prefix=/ purges everything)"}"#.into(),
        );
    }
    let cache = shared.runtime().middleware.cache.clone();
    let n = cache.purge(key.as_deref(), prefix.as_deref());
    let mut body = serde_json::json!({ "purged": n });
    if let Some(tier) = cache.redis() {
        // null when Redis failed part way (the failure is counted).
        body["purged_redis"] = tier.purge(key.as_deref(), prefix.as_deref()).await.into();
    }
    json(StatusCode::OK, body.to_string())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn file_cfg(name: &str, content: &str) -> AdminConfig {
        let p = std::env::temp_dir().join(format!("gw-admin-{name}-{}", std::process::id()));
        std::fs::write(&p, content).unwrap();
        AdminConfig {
            token_env: None,
            token_file: Some(p),
        }
    }

    #[test]
    fn tokens_load_only_when_long_printable_and_from_one_source() {
        let good = "a".repeat(MIN_TOKEN_LEN);
        assert!(load_token(&AdminConfig::default()).unwrap().is_none());
        let t = load_token(&file_cfg("ok", &format!("{good}\r\n")))
            .unwrap()
            .unwrap();
        assert!(t.matches(good.as_bytes()));
        assert!(!format!("{t:?}").contains("aaaa"));
        let (f, m) = load_token(&file_cfg("short", "0123456789abcdef")).unwrap_err();
        assert_eq!(f, "token_file");
        assert!(m.contains("16 bytes; at least 32"), "{m}");
        let spaced = format!("{} {}", &good[..20], &good[..20]);
        assert!(load_token(&file_cfg("sp", &spaced)).is_err());
        let both = AdminConfig {
            token_env: Some("X".into()),
            token_file: Some("/nonexistent".into()),
        };
        assert!(load_token(&both).unwrap_err().1.contains("only one"));
        let unset = AdminConfig {
            token_env: Some("GW_UNIT_SURELY_UNSET_ADMIN_TOKEN".into()),
            token_file: None,
        };
        assert_eq!(load_token(&unset).unwrap_err().0, "token_env");
    }

    #[test]
    fn matching_is_exact() {
        let t = AdminToken(b"0123456789abcdef0123456789abcdef".to_vec());
        assert!(t.matches(b"0123456789abcdef0123456789abcdef"));
        for wrong in [
            &b""[..],
            b"0123456789abcdef0123456789abcde",
            b"0123456789abcdef0123456789abcdeg",
            b"0123456789abcdef0123456789abcdef0",
            b"0123456789abcdef0123456789abcdef\0",
        ] {
            assert!(!t.matches(wrong), "{wrong:?}");
        }
    }

    fn headers(auth: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for a in auth {
            h.append(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn writes_need_the_bearer_token() {
        let good = "b".repeat(40);
        let cfg = file_cfg("w", &good);
        let ok = format!("Bearer {good}");
        let lower = format!("bearer {good}");
        assert!(authorize_write(&cfg, &headers(&[&ok])).is_none());
        assert!(authorize_write(&cfg, &headers(&[&lower])).is_none());
        for bad in [
            vec![],
            vec!["Bearer nope"],
            vec!["Basic Zm9v"],
            vec![ok.as_str(), ok.as_str()],
        ] {
            let r = authorize_write(&cfg, &headers(&bad)).unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad:?}");
            let c = r.headers()[http::header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap();
            assert!(c.starts_with("Bearer "), "{c}");
        }
        let r = authorize_write(&AdminConfig::default(), &headers(&[&ok])).unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
}
