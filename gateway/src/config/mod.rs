//! Gateway configuration: serde types, the embedded default, environment
//! overrides and loading.
//!
//! The flow is always *parse, validate, then trust*: [`Config::from_toml`]
//! deserializes with `deny_unknown_fields`, [`validate::validate`] collects
//! every semantic error with its key path, and only a config that passed both
//! is turned into a running [`crate::runtime::Runtime`]. `gateway check`,
//! start-up and SIGHUP reload all go through [`load`].

mod compression;
pub mod concurrency;
pub mod edge;
mod middleware;
mod size;
pub mod telemetry;
pub mod tls;
pub mod upstream_tls;
pub mod validate;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use compression::{Algorithm, CompressionLevel, RouteCompressionConfig};
pub use middleware::{
    AuthKeyConfig, AuthMode, AuthProviderConfig, CacheConfig, CacheRedisConfig,
    CircuitBreakerConfig, JwksConfig, OnRedisError, RateLimitConfig, RateLimitKey,
    RateLimitPolicyConfig, RateLimitStore, RedisConfig, RetryConfig, RouteAuthConfig,
    RouteCacheConfig,
};
pub use size::ByteSize;
pub use telemetry::{AccessLogConfig, LatencyObjective, SloConfig, TelemetryConfig, TracingConfig};
pub use validate::{ConfigError, ConfigErrors};

/// The embedded default configuration (`deploy/config/local.toml` is a copy).
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// Environment variable overriding `server.listen`.
pub const ENV_LISTEN: &str = "GATEWAY_LISTEN";
/// Environment variable overriding `server.admin_listen`.
pub const ENV_ADMIN_LISTEN: &str = "GATEWAY_ADMIN_LISTEN";
/// Environment variable overriding the endpoints of every upstream pool
/// (comma-separated `host:port` list).
pub const ENV_UPSTREAM: &str = "GATEWAY_UPSTREAM";
/// Environment variable overriding the URL of the shared Redis
/// (`rate_limit.redis.url` and `cache.redis.url`), so one config serves
/// every environment.
pub const ENV_REDIS_URL: &str = "GATEWAY_REDIS_URL";

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners and connection-level settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Upstream pools by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// JWT auth providers by name, referenced by routes.
    #[serde(default)]
    pub auth: BTreeMap<String, AuthProviderConfig>,
    /// Settings shared by every rate-limited route.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// The response cache shared by every cached route.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Routes, matched by longest path prefix.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Metrics, access logs.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The admin listener's write endpoints (`POST /cache/purge`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Service level objectives tracked live; the seed's Meetinity targets
    /// when absent.
    #[serde(default = "telemetry::default_slos")]
    pub slos: Vec<SloConfig>,
}

/// `[admin]`: the bearer token admin write endpoints require. Without one
/// every admin write is refused (403); reads (`/health`, `/ready`,
/// `/metrics`, `/slo`) stay open.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Environment variable holding the token.
    pub token_env: Option<String>,
    /// File holding the token (trailing newline ignored); relative to the
    /// config file. Read on every admin write, so a rotated file applies.
    pub token_file: Option<std::path::PathBuf>,
}

/// Listener and connection settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Proxy listener address.
    pub listen: String,
    /// Admin listener address (`/health`, `/ready`, `/metrics`, `/slo`).
    pub admin_listen: String,
    /// A client that has not sent complete request headers within this time
    /// gets a 408.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A client whose request body sends nothing for this long gets a 408
    /// (the client's fault: never counted against the upstream).
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Default request body limit for routes that set none.
    pub max_body_size: ByteSize,
    /// Accept HTTP/2 with prior knowledge (h2c) besides HTTP/1.1.
    pub http2: bool,
    /// Client connections the proxy listener holds at once; beyond it a new
    /// connection is accepted and closed at once (counted). Default: half
    /// of what the open-file limit leaves after a reserve (see
    /// `server::limits`), so each client connection can have an upstream one.
    pub max_connections: Option<usize>,
    /// Name used in the `Via` header.
    pub via_name: String,
    /// Request headers removed from every request on every route at the
    /// edge, before anything else reads them (besides every header named
    /// in an auth provider's `forward_claims`, always removed).
    pub strip_request_headers: Vec<String>,
    /// `[server.tls]`: HTTPS on the proxy listener (see [`tls::TlsConfig`]).
    pub tls: Option<tls::TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            max_body_size: ByteSize(10 * 1024 * 1024),
            http2: true,
            max_connections: None,
            via_name: "gateway".into(),
            strip_request_headers: Vec::new(),
            tls: None,
        }
    }
}

/// How an upstream pool picks an endpoint.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each healthy endpoint in turn.
    #[default]
    RoundRobin,
    /// Power of two random choices, the one with fewer requests in flight.
    LeastRequest,
}

/// An upstream pool.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` of each endpoint (plain HTTP/1.1 with keep-alive).
    pub endpoints: Vec<String>,
    /// Balancing policy.
    #[serde(default)]
    pub balance: Balance,
    /// TCP connect timeout.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers arrive (504 after).
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest silence allowed between two reads of a response body; the
    /// client is then cut off and the upstream counted as failed.
    #[serde(default = "defaults::body_idle_timeout", with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Optional deadline for a whole response body, from its head; none
    /// by default (streams may be long).
    #[serde(default, with = "humantime_serde")]
    pub body_timeout: Option<Duration>,
    /// Idle keep-alive connections are closed after this long.
    #[serde(default = "defaults::pool_idle_timeout", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// At most this many idle connections are kept per endpoint.
    #[serde(default = "defaults::pool_max_idle")]
    pub pool_max_idle: usize,
    /// At most this many connections open per endpoint: busy, idle and
    /// WebSocket tunnels. At the cap a request waits for one to be freed.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// How long a request waits at `max_connections` for a connection
    /// to be freed before it is answered 503 with `Retry-After`.
    #[serde(default = "defaults::connect_queue_timeout", with = "humantime_serde")]
    pub connect_queue_timeout: Duration,
    /// Active health checking; endpoints are always in rotation without it.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// A circuit breaker per endpoint; none without it.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// `[upstreams.NAME.tls]`: verification and client certificate for its
    /// `https://` endpoints (see [`upstream_tls::UpstreamTlsConfig`]).
    #[serde(default)]
    pub tls: upstream_tls::UpstreamTlsConfig,
}

/// Active health check of every endpoint of a pool.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path requested with GET; a 2xx or 3xx answer is healthy.
    #[serde(default = "defaults::health_path")]
    pub path: String,
    /// Time between two checks of one endpoint.
    #[serde(default = "defaults::health_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// A check that takes longer failed.
    #[serde(default = "defaults::health_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive successes that bring an unhealthy endpoint back.
    #[serde(default = "defaults::healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that eject a healthy endpoint.
    #[serde(default = "defaults::unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

/// A route: which requests go to which upstream, and how.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Bounded-cardinality name used in logs and metrics.
    pub name: String,
    /// Path prefix; the longest matching prefix wins. Matches on segment
    /// boundaries: `/api/users` matches `/api/users` and `/api/users/7`,
    /// not `/api/usersX`.
    pub prefix: String,
    /// Upstream pool name.
    pub upstream: String,
    /// Allowed methods; empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Required `Host` (without port); absent means any.
    #[serde(default)]
    pub host: Option<String>,
    /// Remove the matched prefix before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the matched prefix with this path before forwarding.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// Whole-request deadline until response headers (504 after).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Request body limit; defaults to `server.max_body_size`.
    #[serde(default)]
    pub max_body_size: Option<ByteSize>,
    /// JWT authentication of this route.
    #[serde(default)]
    pub auth: Option<RouteAuthConfig>,
    /// Rate limits of this route, each checked in order.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitPolicyConfig>,
    /// Response caching of GET and HEAD; none without it.
    #[serde(default)]
    pub cache: Option<RouteCacheConfig>,
    /// Response compression (gzip, br, zstd); none without it.
    #[serde(default)]
    pub compression: Option<RouteCompressionConfig>,
    /// Retries of safe requests; none without it.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Requests in flight on this route above which new ones are shed
    /// with 503 at once.
    #[serde(default)]
    pub max_inflight: Option<usize>,
    /// Adaptive concurrency limit aimed at a latency target (instead of
    /// the fixed `max_inflight`); none without it.
    #[serde(default)]
    pub concurrency: Option<concurrency::ConcurrencyConfig>,
    /// Forward `Upgrade: websocket` handshakes (then tunnel after `101`).
    /// Off by default: without it an upgrade request is forwarded as a
    /// plain request, and no other upgrade token is ever forwarded.
    #[serde(default)]
    pub websocket: bool,
    /// An upgraded (WebSocket) connection that carries no byte either way
    /// for this long is closed on both sides.
    #[serde(default = "defaults::websocket_idle_timeout", with = "humantime_serde")]
    pub websocket_idle_timeout: Duration,
    /// Accept an encoded slash (`%2F`) in the path: kept encoded, as data
    /// inside its segment (not a separator for routing), and forwarded as
    /// is. Off by default: such a path is refused with 400.
    #[serde(default)]
    pub allow_encoded_slash: bool,
    /// RFC 9209 `Proxy-Status` on proxied responses too (`next-hop`, the
    /// endpoint; `received-status`), not only on the gateway's own errors.
    #[serde(default)]
    pub proxy_status: bool,
    /// CORS policy: preflights answered at the gateway, CORS headers on
    /// every response (see [`edge::CorsConfig`]).
    #[serde(default)]
    pub cors: Option<edge::CorsConfig>,
    /// Header rules applied to the request after auth (see
    /// [`edge::HeaderRulesConfig`]).
    #[serde(default)]
    pub request_headers: Option<edge::HeaderRulesConfig>,
    /// Header rules applied last to every response of the route.
    #[serde(default)]
    pub response_headers: Option<edge::HeaderRulesConfig>,
    /// `Strict-Transport-Security` on this route's responses sent over TLS.
    #[serde(default)]
    pub hsts: Option<tls::HstsConfig>,
}

mod defaults {
    use std::time::Duration;

    pub fn connect_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(30)
    }
    /// As nginx's `proxy_read_timeout`: the time between two reads.
    pub fn body_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn pool_idle_timeout() -> Duration {
        Duration::from_secs(90)
    }
    pub fn pool_max_idle() -> usize {
        1024
    }
    /// Envoy's default cap on connections to a cluster.
    pub fn max_connections() -> usize {
        1024
    }
    pub fn connect_queue_timeout() -> Duration {
        Duration::from_secs(3)
    }
    pub fn websocket_idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn health_path() -> String {
        "/health".into()
    }
    pub fn health_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn healthy_threshold() -> u32 {
        2
    }
    pub fn unhealthy_threshold() -> u32 {
        3
    }
}

/// Address overrides taken from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Replaces `server.listen`.
    pub listen: Option<String>,
    /// Replaces `server.admin_listen`.
    pub admin_listen: Option<String>,
    /// Replaces every pool's endpoints.
    pub upstream: Option<Vec<String>>,
    /// Replaces the shared Redis URL.
    pub redis_url: Option<String>,
    /// Replaces `telemetry.tracing.endpoint` (from the OpenTelemetry
    /// variables, see [`telemetry::otlp_endpoint_from_env`]).
    pub otlp_endpoint: Option<String>,
}

impl Overrides {
    /// Reads `GATEWAY_LISTEN`, `GATEWAY_ADMIN_LISTEN`, `GATEWAY_UPSTREAM`,
    /// `GATEWAY_REDIS_URL` and the OTLP endpoint variables.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self {
            listen: var(ENV_LISTEN),
            admin_listen: var(ENV_ADMIN_LISTEN),
            upstream: var(ENV_UPSTREAM).map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            }),
            redis_url: var(ENV_REDIS_URL).map(|v| v.trim().to_owned()),
            otlp_endpoint: telemetry::otlp_endpoint_from_env(),
        }
    }

    fn apply(&self, config: &mut Config) {
        if let Some(l) = &self.listen {
            config.server.listen.clone_from(l);
        }
        if let Some(l) = &self.admin_listen {
            config.server.admin_listen.clone_from(l);
        }
        if let Some(eps) = &self.upstream {
            for up in config.upstreams.values_mut() {
                up.endpoints.clone_from(eps);
            }
        }
        if let Some(url) = &self.redis_url {
            let mut used = false;
            if let Some(redis) = config.rate_limit.redis.as_mut() {
                redis.url.clone_from(url);
                used = true;
            }
            if let Some(redis) = config.cache.redis.as_mut() {
                redis.url.clone_from(url);
                used = true;
            }
            if !used {
                tracing::warn!(
                    "{ENV_REDIS_URL} is set but the config has neither [rate_limit.redis] nor [cache.redis]: nothing uses Redis"
                );
            }
        }
        if let Some(e) = &self.otlp_endpoint {
            config.telemetry.tracing.endpoint.clone_from(e);
        }
    }
}

impl Config {
    /// Makes relative key and secret file paths relative to `base` (the
    /// config file's directory), so a config works from any directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        for provider in self.auth.values_mut() {
            for key in &mut provider.keys {
                for p in [&mut key.secret_file, &mut key.pem_file]
                    .into_iter()
                    .flatten()
                {
                    if p.is_relative() {
                        *p = base.join(&*p);
                    }
                }
            }
        }
        if let Some(p) = self.admin.token_file.as_mut().filter(|p| p.is_relative()) {
            *p = base.join(&*p);
        }
        // CA bundles of the cold-path client (JWKS, OTLP).
        let jwks_cas = self
            .auth
            .values_mut()
            .filter_map(|a| a.jwks.as_mut()?.ca_file.as_mut());
        for p in jwks_cas.chain(self.telemetry.tracing.ca_file.as_mut()) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        // Upstream TLS files and the Redis CA bundles.
        for up in self.upstreams.values_mut() {
            up.tls.resolve_paths(base);
        }
        let redis_cas = [
            self.rate_limit
                .redis
                .as_mut()
                .and_then(|r| r.ca_file.as_mut()),
            self.cache.redis.as_mut().and_then(|r| r.ca_file.as_mut()),
        ];
        for p in redis_cas.into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(t) = self.server.tls.as_mut() {
            t.resolve_paths(base);
        }
    }

    /// Parses TOML text (no semantic validation).
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        toml::from_str(text).map_err(|e| ConfigErrors::parse(e.to_string()))
    }
}

/// Where a config comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The embedded default.
    Embedded,
    /// A TOML file.
    File(std::path::PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("<embedded default>"),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Reads, parses, applies overrides to and validates a config.
pub fn load(source: &Source, overrides: &Overrides) -> Result<Config, ConfigErrors> {
    let text = match source {
        Source::Embedded => DEFAULT_TOML.to_owned(),
        Source::File(path) => read(path)?,
    };
    let mut config = Config::from_toml(&text)?;
    if let Source::File(path) = source {
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
    }
    overrides.apply(&mut config);
    validate::validate(&config)?;
    Ok(config)
}

fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::parse(format!("cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let config = load(&Source::Embedded, &Overrides::default()).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080");
        assert_eq!(config.server.admin_listen, "127.0.0.1:9090");
        assert!(config
            .upstreams
            .values()
            .all(|u| u.endpoints == ["127.0.0.1:18080"]));
        assert!(config.routes.iter().any(|r| r.prefix == "/api/users"));
    }

    #[test]
    fn overrides_replace_addresses_in_any_config() {
        let o = Overrides {
            listen: Some("127.0.0.1:1".into()),
            admin_listen: Some("127.0.0.1:2".into()),
            upstream: Some(vec!["127.0.0.1:3".into(), "127.0.0.1:4".into()]),
            redis_url: Some("redis://127.0.0.1:5/2".into()),
            otlp_endpoint: Some("http://127.0.0.1:5/v1/traces".into()),
        };
        let config = load(&Source::Embedded, &o).unwrap();
        assert_eq!(
            config.telemetry.tracing.endpoint,
            "http://127.0.0.1:5/v1/traces"
        );
        assert_eq!(config.server.listen, "127.0.0.1:1");
        assert_eq!(config.server.admin_listen, "127.0.0.1:2");
        for up in config.upstreams.values() {
            assert_eq!(up.endpoints, ["127.0.0.1:3", "127.0.0.1:4"]);
        }
    }

    #[test]
    fn the_redis_url_override_replaces_the_configured_one_and_is_validated() {
        let text = "[rate_limit.redis]\nurl = \"redis://127.0.0.1:6379\"\n[cache.redis]\nurl = \"redis://127.0.0.1:6379\"\n";
        let mut c = Config::from_toml(text).unwrap();
        let o = Overrides {
            redis_url: Some("redis://10.0.0.7:6380/1".into()),
            ..Overrides::default()
        };
        o.apply(&mut c);
        assert_eq!(
            c.rate_limit.redis.as_ref().map(|r| r.url.as_str()),
            Some("redis://10.0.0.7:6380/1")
        );
        assert_eq!(
            c.cache.redis.as_ref().map(|r| r.url.as_str()),
            Some("redis://10.0.0.7:6380/1")
        );
        let o = Overrides {
            redis_url: Some("http://not-redis".into()),
            ..Overrides::default()
        };
        o.apply(&mut c);
        let err = validate::validate(&c).unwrap_err().to_string();
        assert!(err.contains("rate_limit.redis.url"), "{err}");
    }

    #[test]
    fn otlp_endpoint_variables_follow_the_exporter_spec() {
        use telemetry::{otlp_endpoint_with, ENV_OTLP_ENDPOINT, ENV_OTLP_TRACES_ENDPOINT};
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(otlp_endpoint_with(env(&[])), None);
        assert_eq!(
            otlp_endpoint_with(env(&[(ENV_OTLP_ENDPOINT, "http://c:4318/")])).as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert_eq!(
            otlp_endpoint_with(env(&[
                (ENV_OTLP_ENDPOINT, "http://c:4318"),
                (ENV_OTLP_TRACES_ENDPOINT, "http://t:1/custom"),
            ]))
            .as_deref(),
            Some("http://t:1/custom")
        );
        assert_eq!(otlp_endpoint_with(env(&[(ENV_OTLP_ENDPOINT, "  ")])), None);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n").unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
    }

    #[test]
    fn human_durations_and_sizes_parse() {
        let c = Config::from_toml(
            "[server]\nheader_read_timeout = \"250ms\"\nmax_body_size = \"1MiB\"\n",
        )
        .unwrap();
        assert_eq!(c.server.header_read_timeout, Duration::from_millis(250));
        assert_eq!(c.server.max_body_size, ByteSize(1 << 20));
    }
}
