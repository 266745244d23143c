//! Semantic validation: every error, each with the key path it concerns.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::Config;

/// One problem in a config, e.g. `routes[2].upstream: unknown upstream "userz"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path (`routes[2].upstream`), or empty for a parse error.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All problems found in one config; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// A single parse or read error (no key path beyond what the message says).
    pub fn parse(message: String) -> Self {
        Self(vec![ConfigError {
            path: String::new(),
            message,
        }])
    }

    /// A single error at `path`.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![ConfigError {
            path: path.into(),
            message: message.into(),
        }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Checks everything serde cannot; returns every error found.
pub fn validate(config: &Config) -> Result<(), ConfigErrors> {
    let mut errs = Errors::default();
    let s = &config.server;
    let listen = check_addr(&mut errs, "server.listen", &s.listen);
    let admin = check_addr(&mut errs, "server.admin_listen", &s.admin_listen);
    if let (Some(a), Some(b)) = (listen, admin) {
        if a == b && a.port() != 0 {
            errs.push("server.admin_listen", "must differ from server.listen");
        }
    }
    positive(
        &mut errs,
        "server.header_read_timeout",
        s.header_read_timeout,
    );
    positive(&mut errs, "server.body_idle_timeout", s.body_idle_timeout);
    if s.max_body_size.0 == 0 {
        errs.push("server.max_body_size", "must be greater than 0");
    }
    if s.max_connections == Some(0) {
        errs.push("server.max_connections", "must be greater than 0");
    }
    if s.via_name.is_empty() || http::HeaderValue::from_str(&s.via_name).is_err() {
        errs.push("server.via_name", "must be a non-empty header-safe token");
    }
    for (i, h) in s.strip_request_headers.iter().enumerate() {
        if let Err(m) = crate::server::sanitize::strippable(h) {
            errs.push(format!("server.strip_request_headers[{i}]"), m);
        }
    }
    // Reads the admin token (env var or file) so `gateway check` and
    // start-up report a missing or short one; never prints it.
    if let Err((field, m)) = crate::admin::load_token(&config.admin) {
        errs.push(format!("admin.{field}"), m);
    }
    // `[server.tls]` (files read: pairs checked, CA parsed) and each
    // route's `hsts` (see config/tls.rs).
    if let Some(t) = &s.tls {
        for (k, m) in t.check(std::time::SystemTime::now()) {
            errs.push(format!("server.tls.{k}"), m);
        }
        if let Some(r) = &t.redirect_listen {
            let addr = check_addr(&mut errs, "server.tls.redirect_listen", r);
            if addr.is_some_and(|a| a.port() != 0 && (Some(a) == listen || Some(a) == admin)) {
                errs.push(
                    "server.tls.redirect_listen",
                    "must differ from server.listen and server.admin_listen",
                );
            }
        }
    }
    for (i, r) in config.routes.iter().enumerate() {
        for (k, m) in r
            .hsts
            .as_ref()
            .map(super::tls::HstsConfig::check)
            .unwrap_or_default()
        {
            errs.push(format!("routes[{i}].hsts.{k}"), m);
        }
    }

    // `https://` endpoints and `[upstreams.NAME.tls]`: files read, client
    // configs built once here (see config/upstream_tls.rs).
    for (k, m) in super::upstream_tls::check(config) {
        errs.push(k, m);
    }
    for (name, up) in &config.upstreams {
        let p = format!("upstreams.{name}");
        if !is_name(name) {
            errs.push(&p, "name may only contain letters, digits, '-' and '_'");
        }
        if up.endpoints.is_empty() {
            errs.push(
                format!("{p}.endpoints"),
                "at least one endpoint is required",
            );
        }
        let mut seen = HashSet::new();
        for (i, ep) in up.endpoints.iter().enumerate() {
            let ep_path = format!("{p}.endpoints[{i}]");
            if let Err(m) = check_endpoint(ep) {
                errs.push(&ep_path, m);
            }
            if !seen.insert(ep) {
                errs.push(&ep_path, format!("duplicate endpoint {ep:?}"));
            }
        }
        positive(
            &mut errs,
            &format!("{p}.connect_timeout"),
            up.connect_timeout,
        );
        positive(
            &mut errs,
            &format!("{p}.request_timeout"),
            up.request_timeout,
        );
        positive(
            &mut errs,
            &format!("{p}.body_idle_timeout"),
            up.body_idle_timeout,
        );
        if let Some(t) = up.body_timeout {
            positive(&mut errs, &format!("{p}.body_timeout"), t);
        }
        if up.max_connections == 0 {
            errs.push(format!("{p}.max_connections"), "must be at least 1");
        }
        if let Some(cb) = &up.circuit_breaker {
            let cp = format!("{p}.circuit_breaker");
            if cb.consecutive_failures == 0 {
                errs.push(format!("{cp}.consecutive_failures"), "must be at least 1");
            }
            if !(cb.failure_ratio > 0.0 && cb.failure_ratio <= 1.0) {
                errs.push(format!("{cp}.failure_ratio"), "must be in (0, 1]");
            }
            if cb.min_requests == 0 {
                errs.push(format!("{cp}.min_requests"), "must be at least 1");
            }
            if cb.half_open_probes == 0 {
                errs.push(format!("{cp}.half_open_probes"), "must be at least 1");
            }
            positive(&mut errs, &format!("{cp}.window"), cb.window);
            positive(&mut errs, &format!("{cp}.open_time"), cb.open_time);
            if cb.max_open_time < cb.open_time {
                errs.push(format!("{cp}.max_open_time"), "must be at least open_time");
            }
        }
        if let Some(hc) = &up.health_check {
            let hp = format!("{p}.health_check");
            if !hc.path.starts_with('/') {
                errs.push(format!("{hp}.path"), "must start with '/'");
            }
            positive(&mut errs, &format!("{hp}.interval"), hc.interval);
            positive(&mut errs, &format!("{hp}.timeout"), hc.timeout);
            if hc.healthy_threshold == 0 {
                errs.push(format!("{hp}.healthy_threshold"), "must be at least 1");
            }
            if hc.unhealthy_threshold == 0 {
                errs.push(format!("{hp}.unhealthy_threshold"), "must be at least 1");
            }
        }
    }

    let mut names = HashSet::new();
    let mut keys = HashSet::new();
    for (i, r) in config.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if !is_name(&r.name) {
            errs.push(
                format!("{p}.name"),
                "must be non-empty letters, digits, '-' and '_' (it is a metric label)",
            );
        } else if !names.insert(r.name.as_str()) {
            errs.push(
                format!("{p}.name"),
                format!("duplicate route name {:?}", r.name),
            );
        }
        if !r.prefix.starts_with('/') {
            errs.push(format!("{p}.prefix"), "must start with '/'");
        } else {
            // Requests are routed on normalised paths (path.rs): a prefix
            // not in normal form would never match.
            let encoded_slash = if r.allow_encoded_slash {
                crate::path::EncodedSlash::Keep
            } else {
                crate::path::EncodedSlash::Reject
            };
            match crate::path::normalize(&r.prefix, crate::path::PathOptions { encoded_slash }) {
                Ok(n) if n == r.prefix.as_str() => {}
                Ok(n) => errs.push(
                    format!("{p}.prefix"),
                    format!("not a normalised path (requests are routed on those): write {n:?}"),
                ),
                Err(e) => errs.push(format!("{p}.prefix"), format!("{e}: never matches")),
            }
        }
        if !config.upstreams.contains_key(&r.upstream) {
            errs.push(
                format!("{p}.upstream"),
                format!("unknown upstream {:?}", r.upstream),
            );
        }
        for (j, m) in r.methods.iter().enumerate() {
            if http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).is_err() {
                errs.push(format!("{p}.methods[{j}]"), format!("invalid method {m:?}"));
            }
        }
        if let Some(h) = &r.host {
            if h.is_empty() || http::uri::Authority::try_from(h.as_str()).is_err() {
                errs.push(format!("{p}.host"), format!("invalid host {h:?}"));
            }
        }
        if r.strip_prefix && r.rewrite.is_some() {
            errs.push(
                format!("{p}.rewrite"),
                "strip_prefix and rewrite cannot both be set",
            );
        }
        if let Some(rw) = &r.rewrite {
            if !rw.starts_with('/') || http::uri::PathAndQuery::try_from(rw.as_str()).is_err() {
                errs.push(format!("{p}.rewrite"), "must be a path starting with '/'");
            }
        }
        if let Some(t) = r.timeout {
            positive(&mut errs, &format!("{p}.timeout"), t);
        }
        if r.max_body_size.is_some_and(|b| b.0 == 0) {
            errs.push(format!("{p}.max_body_size"), "must be greater than 0");
        }
        let mut methods: Vec<String> = r.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
        methods.sort();
        let key = (
            r.prefix.trim_end_matches('/').to_owned(),
            r.host.clone(),
            methods,
        );
        if !keys.insert(key) {
            errs.push(
                format!("{p}.prefix"),
                format!(
                    "another route already matches prefix {:?} with the same host and methods",
                    r.prefix
                ),
            );
        }
    }

    // Each route's cors policy and header rules (config/edge.rs).
    for (i, r) in config.routes.iter().enumerate() {
        for (k, m) in super::edge::check_route(r, &config.auth) {
            errs.push(format!("routes[{i}].{k}"), m);
        }
    }
    middleware(config, &mut errs);
    validate_telemetry(config, &mut errs);

    if errs.0.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errs.0))
    }
}

/// Auth providers, rate-limit settings and each route's use of them.
fn middleware(config: &Config, errs: &mut Errors) {
    use crate::middleware::{auth, ratelimit};
    for (name, a) in &config.auth {
        let p = format!("auth.{name}");
        if !is_name(name) {
            errs.push(&p, "name may only contain letters, digits, '-' and '_'");
        }
        if a.keys.is_empty() && a.jwks.is_none() {
            errs.push(&p, "needs at least one of keys or jwks");
        }
        if a.leeway > auth::MAX_LEEWAY {
            errs.push(
                format!("{p}.leeway"),
                "must be at most 10m (a clock-skew allowance, not a lifetime)",
            );
        }
        for (i, k) in a.keys.iter().enumerate() {
            // Loads the key (env var, file, PEM) so `gateway check` reports
            // a missing secret; the secret itself is never printed.
            if let Err(m) = auth::Key::load(k) {
                errs.push(format!("{p}.keys[{i}]"), m);
            }
        }
        if let Some(j) = &a.jwks {
            for (key, m) in auth::Jwks::check(j) {
                errs.push(format!("{p}.jwks.{key}"), m);
            }
            positive(
                errs,
                &format!("{p}.jwks.refresh_interval"),
                j.refresh_interval,
            );
            positive(errs, &format!("{p}.jwks.timeout"), j.timeout);
        }
        for (claim, h) in &a.forward_claims {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                errs.push(
                    format!("{p}.forward_claims.{claim}"),
                    format!("invalid header name {h:?}"),
                );
            }
        }
    }
    let rl = &config.rate_limit;
    for (i, t) in rl.trusted_proxies.iter().enumerate() {
        if let Err(m) = ratelimit::parse_cidr(t) {
            errs.push(format!("rate_limit.trusted_proxies[{i}]"), m);
        }
    }
    if config.cache.max_size.0 == 0 {
        errs.push("cache.max_size", "must be greater than 0");
    }
    if let Some(r) = &config.cache.redis {
        if redis::Client::open(r.url.as_str()).is_err() {
            errs.push("cache.redis.url", format!("invalid Redis URL {:?}", r.url));
        }
        if let Err(m) = crate::middleware::redis_conn::check_ca_file(&r.url, r.ca_file.as_deref()) {
            errs.push("cache.redis.ca_file", m);
        }
        positive(errs, "cache.redis.timeout", r.timeout);
    }
    if rl.max_keys == 0 {
        errs.push("rate_limit.max_keys", "must be greater than 0");
    }
    if let Some(r) = &rl.redis {
        if redis::Client::open(r.url.as_str()).is_err() {
            errs.push(
                "rate_limit.redis.url",
                format!("invalid Redis URL {:?}", r.url),
            );
        }
        if let Err(m) = crate::middleware::redis_conn::check_ca_file(&r.url, r.ca_file.as_deref()) {
            errs.push("rate_limit.redis.ca_file", m);
        }
        positive(errs, "rate_limit.redis.timeout", r.timeout);
    }
    for (i, r) in config.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if let Some(a) = &r.auth {
            if !config.auth.contains_key(&a.provider) {
                errs.push(
                    format!("{p}.auth.provider"),
                    format!("unknown auth provider {:?}", a.provider),
                );
            }
            if a.mode == super::AuthMode::Off && !(a.scopes.is_empty() && a.roles.is_empty()) {
                errs.push(
                    format!("{p}.auth"),
                    "scopes and roles need mode required or optional",
                );
            }
        }
        if let Some(c) = &r.cache {
            if c.max_body.0 == 0 {
                errs.push(format!("{p}.cache.max_body"), "must be greater than 0");
            }
            if c.max_body.0 > config.cache.max_size.0 {
                errs.push(
                    format!("{p}.cache.max_body"),
                    "must not exceed cache.max_size",
                );
            }
        }
        for (k, m) in r.compression.iter().flat_map(|c| c.problems()) {
            errs.push(format!("{p}.compression.{k}"), m);
        }
        if r.max_inflight == Some(0) {
            errs.push(format!("{p}.max_inflight"), "must be at least 1");
        }
        if let Some(c) = &r.concurrency {
            for (path, m) in c.check(&format!("{p}.concurrency"), r, &config.slos) {
                errs.push(path, m);
            }
        }
        positive(
            errs,
            &format!("{p}.websocket_idle_timeout"),
            r.websocket_idle_timeout,
        );
        if let Some(rt) = &r.retry {
            if rt.attempts == 0 || rt.attempts > 10 {
                errs.push(format!("{p}.retry.attempts"), "must be between 1 and 10");
            }
            for (j, st) in rt.on_status.iter().enumerate() {
                if !(500..=599).contains(st) && *st != 429 && *st != 408 {
                    errs.push(
                        format!("{p}.retry.on_status[{j}]"),
                        format!("{st} is not a retryable status (408, 429, 5xx)"),
                    );
                }
            }
            if rt.backoff > rt.max_backoff {
                errs.push(format!("{p}.retry.backoff"), "must not exceed max_backoff");
            }
            if !(0.0..=10.0).contains(&rt.budget_ratio) {
                errs.push(
                    format!("{p}.retry.budget_ratio"),
                    "must be between 0 and 10",
                );
            }
        }
        let mut names = HashSet::new();
        for (j, l) in r.rate_limits.iter().enumerate() {
            let lp = format!("{p}.rate_limits[{j}]");
            if !is_name(&l.name) {
                errs.push(format!("{lp}.name"), "must be letters, digits, '-' and '_'");
            } else if !names.insert(l.name.as_str()) {
                errs.push(
                    format!("{lp}.name"),
                    format!("duplicate policy {:?}", l.name),
                );
            }
            if l.limit == 0 {
                errs.push(format!("{lp}.limit"), "must be at least 1");
            }
            if l.window < Duration::from_millis(1) {
                errs.push(format!("{lp}.window"), "must be at least 1ms");
            }
            if let super::RateLimitKey::Header(h) = &l.key {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    errs.push(format!("{lp}.key"), format!("invalid header name {h:?}"));
                }
            }
            if l.key == super::RateLimitKey::Subject && r.auth.is_none() {
                errs.push(
                    format!("{lp}.key"),
                    "keying by subject needs auth on the route",
                );
            }
            if l.store == super::RateLimitStore::Redis && rl.redis.is_none() {
                errs.push(
                    format!("{lp}.store"),
                    "store = \"redis\" needs [rate_limit.redis]",
                );
            }
        }
    }
}

fn validate_tracing(t: &super::TracingConfig, errs: &mut Errors) {
    const P: &str = "telemetry.tracing";
    // Only when on: an OTEL_EXPORTER_OTLP_ENDPOINT meant for other
    // processes must not stop a gateway that does not trace.
    if t.enabled {
        if let Err(m) = check_otlp_endpoint(&t.endpoint) {
            errs.push(
                format!("{P}.endpoint"),
                format!("{m} (or set by OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT)"),
            );
        }
        check_otlp_client(t, errs);
    }
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        errs.push(format!("{P}.sample_ratio"), "must be between 0 and 1");
    }
    if t.service_name.trim().is_empty() {
        errs.push(format!("{P}.service_name"), "must not be empty");
    }
    for (key, d) in [
        ("export_timeout", t.export_timeout),
        ("scheduled_delay", t.scheduled_delay),
        ("shutdown_timeout", t.shutdown_timeout),
    ] {
        if d.is_zero() {
            errs.push(format!("{P}.{key}"), "must be greater than 0");
        }
    }
    if t.max_queue_size == 0 {
        errs.push(format!("{P}.max_queue_size"), "must be at least 1");
    }
    if t.max_export_batch_size == 0 || t.max_export_batch_size > t.max_queue_size {
        errs.push(
            format!("{P}.max_export_batch_size"),
            "must be between 1 and max_queue_size",
        );
    }
}

/// An OTLP/HTTP endpoint the exporter may use: `https://host[:port]/path`,
/// or `http://` to a loopback host (the cold-path client's rule).
fn check_otlp_endpoint(e: &str) -> Result<(), String> {
    crate::client::check_url(e, crate::client::OTLP_HTTPS_REASON).map(|_| ())
}

/// `[telemetry.tracing]`'s `ca_file` and `headers` (only checked when on).
fn check_otlp_client(t: &super::TracingConfig, errs: &mut Errors) {
    const P: &str = "telemetry.tracing";
    if let Some(path) = &t.ca_file {
        if let Err(m) = crate::client::load_ca_file(path) {
            errs.push(format!("{P}.ca_file"), m);
        }
    }
    for (k, v) in &t.headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            errs.push(format!("{P}.headers.{k}"), "invalid header name");
        } else if http::HeaderValue::from_str(v).is_err() {
            // The value may be a secret: never echoed.
            errs.push(format!("{P}.headers.{k}"), "invalid header value");
        }
    }
}

fn validate_telemetry(config: &Config, errs: &mut Errors) {
    let t = &config.telemetry;
    for (i, b) in t.buckets.iter().enumerate() {
        if !b.is_finite() || *b <= 0.0 {
            errs.push(
                format!("telemetry.buckets[{i}]"),
                "must be a positive number of seconds",
            );
        }
    }
    validate_tracing(&t.tracing, errs);
    let r = t.access_log.sample_ratio;
    if !(0.0..=1.0).contains(&r) {
        errs.push(
            "telemetry.access_log.sample_ratio",
            "must be between 0 and 1",
        );
    }
    let routes: HashSet<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    let mut names = HashSet::new();
    for (i, slo) in config.slos.iter().enumerate() {
        let p = format!("slos[{i}]");
        if !is_name(&slo.name) {
            errs.push(
                format!("{p}.name"),
                "must be non-empty letters, digits, '-' and '_'",
            );
        } else if !names.insert(slo.name.as_str()) {
            errs.push(
                format!("{p}.name"),
                format!("duplicate SLO name {:?}", slo.name),
            );
        }
        for (j, r) in slo.routes.iter().enumerate() {
            if !routes.contains(r.as_str()) {
                errs.push(format!("{p}.routes[{j}]"), format!("unknown route {r:?}"));
            }
        }
        for (j, o) in slo.latency.iter().enumerate() {
            if !(o.quantile > 0.0 && o.quantile < 1.0) {
                errs.push(
                    format!("{p}.latency[{j}].quantile"),
                    "must be between 0 and 1 (exclusive)",
                );
            }
            positive(errs, &format!("{p}.latency[{j}].threshold"), o.threshold);
        }
        if let Some(a) = slo.availability {
            if !(a > 0.0 && a < 1.0) {
                errs.push(
                    format!("{p}.availability"),
                    "must be between 0 and 1 (exclusive), e.g. 0.995",
                );
            }
        }
        if slo
            .min_throughput
            .is_some_and(|t| !t.is_finite() || t <= 0.0)
        {
            errs.push(
                format!("{p}.min_throughput"),
                "must be a positive request rate",
            );
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn positive(errs: &mut Errors, path: &str, d: Duration) {
    if d.is_zero() {
        errs.push(path, "must be greater than 0");
    }
}

fn check_addr(errs: &mut Errors, path: &str, s: &str) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                path,
                format!("invalid socket address {s:?} (expected ip:port)"),
            );
            None
        }
    }
}

/// An endpoint is `[http://|https://]host:port` with an explicit port
/// (see [`super::upstream_tls::parse_endpoint`]).
pub(crate) fn check_endpoint(ep: &str) -> Result<http::uri::Authority, String> {
    super::upstream_tls::parse_endpoint(ep).map(|a| a.authority)
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn errors(toml: &str) -> Vec<String> {
        let c = Config::from_toml(toml).unwrap();
        match validate(&c) {
            Ok(()) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn reports_every_error_with_its_key_path() {
        let errs = errors(
            r#"
            [server]
            listen = "nope"
            body_idle_timeout = "0s"
            [upstreams.users]
            endpoints = ["127.0.0.1:1", "ftp://x:2", "127.0.0.1:1"]
            [[routes]]
            name = "a"
            prefix = "/a"
            upstream = "users"
            [[routes]]
            name = "a"
            prefix = "b"
            upstream = "users"
            [[routes]]
            name = "c"
            prefix = "/c"
            upstream = "userz"
            methods = ["G ET"]
            strip_prefix = true
            rewrite = "/x"
            "#,
        );
        let expect = [
            "server.listen: invalid socket address \"nope\"",
            "server.body_idle_timeout: must be greater than 0",
            "upstreams.users.endpoints[1]: \"ftp://x:2\": the scheme must be http:// or https://",
            "upstreams.users.endpoints[2]: duplicate endpoint",
            "routes[1].name: duplicate route name \"a\"",
            "routes[1].prefix: must start with '/'",
            "routes[2].upstream: unknown upstream \"userz\"",
            "routes[2].methods[0]: invalid method",
            "routes[2].rewrite: strip_prefix and rewrite cannot both be set",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|x| x.starts_with(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    }

    #[test]
    fn route_prefixes_must_be_normalised_paths() {
        let errs = errors(
            r#"
            [upstreams.u]
            endpoints = ["127.0.0.1:1"]
            [[routes]]
            name = "a"
            prefix = "/a/../b"
            upstream = "u"
            [[routes]]
            name = "c"
            prefix = "/c%2fd"
            upstream = "u"
            [[routes]]
            name = "e"
            prefix = "/e%2Ff/"
            upstream = "u"
            allow_encoded_slash = true
            "#,
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("routes[0].prefix: not a normalised path"));
        assert!(errs[0].contains("\"/b\""), "{errs:?}");
        assert!(errs[1].starts_with("routes[1].prefix: encoded slash"));
    }

    #[test]
    fn connection_and_tunnel_bounds_must_be_positive() {
        let errs = errors(
            r#"
            [upstreams.u]
            endpoints = ["127.0.0.1:1"]
            max_connections = 0
            [[routes]]
            name = "a"
            prefix = "/a"
            upstream = "u"
            websocket = true
            websocket_idle_timeout = "0s"
            "#,
        );
        let has = |key: &str| errs.iter().any(|e| e.starts_with(key));
        assert!(has("upstreams.u.max_connections"), "{errs:?}");
        assert!(has("routes[0].websocket_idle_timeout"), "{errs:?}");
    }

    #[test]
    fn ambiguous_routes_are_rejected() {
        let errs = errors(
            r#"
            [upstreams.u]
            endpoints = ["127.0.0.1:1"]
            [[routes]]
            name = "a"
            prefix = "/a/"
            upstream = "u"
            [[routes]]
            name = "b"
            prefix = "/a"
            upstream = "u"
            "#,
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("routes[1].prefix"));
    }

    #[test]
    fn middleware_errors_have_key_paths() {
        let errs = errors(
            r#"
            [auth.a]
            [[auth.a.keys]]
            algorithms = ["HS256", "RS256"]
            secret_env = "GW_UNIT_SURELY_UNSET_VARIABLE"
            [auth.c]
            [auth.b]
            [auth.b.jwks]
            url = "http://idp/jwks"
            algorithms = ["HS256"]
            [rate_limit]
            trusted_proxies = ["10.0.0.0/99"]
            [cache.redis]
            url = "http://not-redis"
            timeout = "0s"
            [upstreams.u]
            endpoints = ["127.0.0.1:1"]
            [[routes]]
            name = "r"
            prefix = "/"
            upstream = "u"
            auth = { provider = "zz" }
            rate_limits = [
              { name = "x", key = "subject", limit = 0, window = "1s", store = "redis" },
              { name = "x", key = { header = "bad header" }, limit = 1, window = "1s" },
            ]
            "#,
        );
        let expect = [
            "auth.a.keys[0]: a secret can only verify HS256",
            "auth.c: needs at least one of keys or jwks",
            "auth.b.jwks.url: http:// is only allowed to a loopback address; identity providers serve JWKS over https",
            "auth.b.jwks.algorithms: JWKS keys are public keys",
            "rate_limit.trusted_proxies[0]: invalid prefix length",
            "cache.redis.url: invalid Redis URL",
            "cache.redis.timeout: must be greater than 0",
            "routes[0].auth.provider: unknown auth provider \"zz\"",
            "routes[0].rate_limits[0].limit: must be at least 1",
            "routes[0].rate_limits[0].store: store = \"redis\" needs [rate_limit.redis]",
            "routes[0].rate_limits[1].name: duplicate policy",
            "routes[0].rate_limits[1].key: invalid header name",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|x| x.starts_with(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    }

    #[test]
    fn endpoints_need_a_port() {
        assert!(check_endpoint("localhost").is_err());
        assert!(check_endpoint("user@host:1").is_err());
        assert!(check_endpoint("localhost:80").is_ok());
        assert!(check_endpoint("[::1]:80").is_ok());
    }

    #[test]
    fn tracing_settings_are_checked_with_key_paths() {
        let errs = errors(
            r#"
            [telemetry.tracing]
            enabled = true
            endpoint = "http://collector:4318/v1/traces"
            sample_ratio = 1.5
            service_name = " "
            export_timeout = "0s"
            max_queue_size = 10
            max_export_batch_size = 11
            "#,
        );
        for want in [
            "telemetry.tracing.endpoint: http:// is only allowed to a loopback address; a collector elsewhere is reached over https",
            "telemetry.tracing.sample_ratio: must be between 0 and 1",
            "telemetry.tracing.service_name: must not be empty",
            "telemetry.tracing.export_timeout: must be greater than 0",
            "telemetry.tracing.max_export_batch_size: must be between 1 and max_queue_size",
        ] {
            assert!(errs.iter().any(|e| e.starts_with(want)), "{want}\n{errs:#?}");
        }
        assert_eq!(errs.len(), 5, "{errs:#?}");
        // The endpoint is only checked when tracing is on.
        let off =
            errors("[telemetry.tracing]\nenabled = false\nendpoint = \"http://collector:4318\"\n");
        assert!(off.is_empty(), "{off:#?}");
        assert!(check_otlp_endpoint("http://127.0.0.1:4318/v1/traces").is_ok());
        assert!(check_otlp_endpoint("https://collector:4318/v1/traces").is_ok());
        let bad_client = errors(
            "[telemetry.tracing]\nenabled = true\nca_file = \"/nonexistent/ca.pem\"\nheaders = { \"bad name\" = \"x\", authorization = \"a\\nb\" }\n",
        );
        for want in [
            "telemetry.tracing.ca_file: cannot read /nonexistent/ca.pem",
            "telemetry.tracing.headers.bad name: invalid header name",
            "telemetry.tracing.headers.authorization: invalid header value",
        ] {
            assert!(
                bad_client.iter().any(|e| e.starts_with(want)),
                "{want}\n{bad_client:#?}"
            );
        }
        assert!(check_otlp_endpoint("127.0.0.1:4318").is_err());
        assert!(check_otlp_endpoint("http:///v1/traces").is_err());
    }
}
