//! Config types of the per-route middleware: JWT auth providers and rate
//! limits. Validated in [`super::validate`]; compiled in `middleware/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[auth.NAME]`: a JWT issuer the routes can reference by name.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthProviderConfig {
    /// Accepted `iss` values; empty accepts any issuer.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted `aud` values (one must match); empty skips the check.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "defaults::leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Static keys (HMAC secrets, PEM public keys).
    #[serde(default)]
    pub keys: Vec<AuthKeyConfig>,
    /// A JWKS document fetched at start and refreshed.
    #[serde(default)]
    pub jwks: Option<JwksConfig>,
    /// Claims forwarded to the upstream as headers (`sub = "X-User-Id"`);
    /// client-sent copies of these headers are always removed.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
}

/// One static verification key. Exactly one of `secret_env`,
/// `secret_file`, `pem_file` is set.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthKeyConfig {
    /// Key id matched against the token's `kid` (optional).
    #[serde(default)]
    pub kid: Option<String>,
    /// Algorithms this key may verify (`HS256`, `RS256`, `ES256`, `EdDSA`, ...).
    pub algorithms: Vec<String>,
    /// Name of an environment variable holding an HMAC secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding an HMAC secret (trailing newline ignored).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// File holding an RSA, EC or Ed25519 public key in PEM.
    #[serde(default)]
    pub pem_file: Option<PathBuf>,
}

/// A JWKS endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// `https://host/path` of the JWKS document (`http://` only to a
    /// loopback host).
    pub url: String,
    /// PEM CA bundle trusted besides the system roots (an identity provider
    /// with a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Algorithms the JWKS keys may verify.
    #[serde(default = "defaults::jwks_algorithms")]
    pub algorithms: Vec<String>,
    /// Periodic refresh.
    #[serde(default = "defaults::jwks_refresh", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// At most one refresh triggered by an unknown `kid` per this interval.
    #[serde(default = "defaults::jwks_min_refresh", with = "humantime_serde")]
    pub min_refresh_interval: Duration,
    /// Bound on one fetch.
    #[serde(default = "defaults::jwks_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// Whether a route needs a token.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No token: 401. Bad token: 401.
    #[default]
    Required,
    /// No token: passes anonymously. Bad token: 401.
    Optional,
    /// The route does not look at tokens (claim headers are still stripped).
    Off,
}

/// A route's `auth = { provider = "...", mode = "required", scopes = [...] }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteAuthConfig {
    /// Name of an `[auth.NAME]` provider.
    pub provider: String,
    /// Required, optional or off.
    #[serde(default)]
    pub mode: AuthMode,
    /// Scopes that must all be granted (`scope` / `scp` claims), else 403.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Roles of which one must be held (`roles` claim), else 403.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// `[rate_limit]`: settings shared by every limited route.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Peers (IP or CIDR) whose `X-Forwarded-For` is believed when keying by
    /// client IP; anyone else is keyed by their own address.
    pub trusted_proxies: Vec<String>,
    /// Upper bound on the keys one in-process limiter remembers.
    pub max_keys: usize,
    /// The shared Redis store, for policies with `store = "redis"`.
    pub redis: Option<RedisConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            max_keys: 100_000,
            redis: None,
        }
    }
}

/// What a Redis-backed policy does when Redis is slow or down.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    /// Let the request through.
    FailOpen,
    /// Refuse the request (503).
    FailClosed,
    /// Decide with this process's own limiter.
    #[default]
    Local,
}

/// `[rate_limit.redis]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Prefix of every key (share it between replicas of one deployment).
    #[serde(default = "defaults::redis_prefix")]
    pub prefix: String,
    /// Bound on one decision's round trip.
    #[serde(default = "defaults::redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Policy when Redis does not answer in time.
    #[serde(default)]
    pub on_error: OnRedisError,
    /// PEM bundle of a private CA for a `rediss://` URL (relative to the
    /// config file); default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// What a limit counts requests by.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    /// The client IP (trusted proxies' `X-Forwarded-For` resolved).
    ClientIp,
    /// The JWT `sub` (client IP for anonymous requests).
    Subject,
    /// The route as a whole.
    Route,
    /// The value of a header such as an API key (client IP when absent).
    Header(String),
}

/// Where a limit's state lives.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitStore {
    /// In this process.
    #[default]
    Local,
    /// In `[rate_limit.redis]`, shared by replicas.
    Redis,
}

/// One `[[routes.rate_limits]]` policy: `limit` requests per `window`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicyConfig {
    /// Policy name, reported in `RateLimit-Policy` and `RateLimit`.
    pub name: String,
    /// What requests are counted by.
    pub key: RateLimitKey,
    /// Requests allowed per window (also the burst).
    pub limit: u32,
    /// The window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Local or Redis.
    #[serde(default)]
    pub store: RateLimitStore,
}

mod defaults {
    use std::time::Duration;

    pub fn leeway() -> Duration {
        Duration::from_secs(30)
    }
    pub fn jwks_algorithms() -> Vec<String> {
        vec!["RS256".into()]
    }
    pub fn jwks_refresh() -> Duration {
        Duration::from_secs(300)
    }
    pub fn jwks_min_refresh() -> Duration {
        Duration::from_secs(10)
    }
    pub fn jwks_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn redis_prefix() -> String {
        "gw:rl:".into()
    }
    pub fn redis_timeout() -> Duration {
        Duration::from_millis(50)
    }
}

/// `[upstreams.NAME.circuit_breaker]`: one breaker per endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Trips after this many failures in a row.
    #[serde(default = "cb::consecutive_failures")]
    pub consecutive_failures: u32,
    /// Or when this share of the window's requests failed...
    #[serde(default = "cb::failure_ratio")]
    pub failure_ratio: f64,
    /// ...and the window saw at least this many.
    #[serde(default = "cb::min_requests")]
    pub min_requests: u32,
    /// The rolling window of the ratio.
    #[serde(default = "cb::window", with = "humantime_serde")]
    pub window: Duration,
    /// How long the first trip keeps the endpoint out; doubles per trip.
    #[serde(default = "cb::open_time", with = "humantime_serde")]
    pub open_time: Duration,
    /// Upper bound of the growing open time.
    #[serde(default = "cb::max_open_time", with = "humantime_serde")]
    pub max_open_time: Duration,
    /// Probes let through at once when half-open.
    #[serde(default = "cb::half_open_probes")]
    pub half_open_probes: u32,
}

/// `[routes.retry]`: retries of safe requests.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    #[serde(default = "retry::attempts")]
    pub attempts: u32,
    /// Upstream statuses that are retried.
    #[serde(default = "retry::on_status")]
    pub on_status: Vec<u16>,
    /// First backoff; doubles per retry, with full jitter.
    #[serde(default = "retry::backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// Largest backoff.
    #[serde(default = "retry::max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// An upstream `Retry-After` up to this long is waited for; a longer
    /// one ends the retries.
    #[serde(default = "retry::max_retry_after", with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// Retries may add at most this share of the requests...
    #[serde(default = "retry::budget_ratio")]
    pub budget_ratio: f32,
    /// ...plus this many per second.
    #[serde(default = "retry::budget_min_per_sec")]
    pub budget_min_per_sec: u32,
    /// Request bodies up to this size are buffered so they can be replayed;
    /// larger ones are sent once.
    #[serde(default = "retry::max_replay_body")]
    pub max_replay_body: super::ByteSize,
    /// Treat a request carrying an `Idempotency-Key` header as idempotent:
    /// it may be retried and resent after a connection failure like a
    /// `PUT`. Off by default: only an upstream that deduplicates on the
    /// key makes that safe.
    #[serde(default)]
    pub idempotency_key: bool,
}

mod cb {
    use std::time::Duration;

    pub fn consecutive_failures() -> u32 {
        5
    }
    pub fn failure_ratio() -> f64 {
        0.5
    }
    pub fn min_requests() -> u32 {
        20
    }
    pub fn window() -> Duration {
        Duration::from_secs(10)
    }
    pub fn open_time() -> Duration {
        Duration::from_secs(5)
    }
    pub fn max_open_time() -> Duration {
        Duration::from_secs(60)
    }
    pub fn half_open_probes() -> u32 {
        1
    }
}

mod retry {
    use std::time::Duration;

    pub fn attempts() -> u32 {
        3
    }
    pub fn on_status() -> Vec<u16> {
        vec![502, 503, 504]
    }
    pub fn backoff() -> Duration {
        Duration::from_millis(25)
    }
    pub fn max_backoff() -> Duration {
        Duration::from_millis(500)
    }
    pub fn max_retry_after() -> Duration {
        Duration::from_secs(1)
    }
    pub fn budget_ratio() -> f32 {
        0.2
    }
    pub fn budget_min_per_sec() -> u32 {
        10
    }
    pub fn max_replay_body() -> super::super::ByteSize {
        super::super::ByteSize(64 * 1024)
    }
}

/// `[cache]`: the store shared by every cached route.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Upper bound of stored responses (bodies and headers).
    pub max_size: super::ByteSize,
    /// A second tier in Redis shared by replicas: looked up after a local
    /// miss, written after every local store.
    pub redis: Option<CacheRedisConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_size: super::ByteSize(64 * 1024 * 1024),
            redis: None,
        }
    }
}

/// `[cache.redis]`: the shared cache tier. When Redis is slow or down the
/// cache works from memory alone (failures are counted, never an error to
/// the client).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheRedisConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Prefix of every key (share it between replicas of one deployment).
    #[serde(default = "cache_defaults::redis_prefix")]
    pub prefix: String,
    /// Bound on one lookup or write.
    #[serde(default = "cache_defaults::redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM bundle of a private CA for a `rediss://` URL (relative to the
    /// config file); default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// A route's `cache = { ttl = "30s", ... }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConfig {
    /// Lifetime of responses that carry no `max-age`/`s-maxage`.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Larger responses are not stored.
    #[serde(default = "cache_defaults::max_body")]
    pub max_body: super::ByteSize,
    /// Share responses to requests with `Authorization` (the route's
    /// answers do not depend on who asks).
    #[serde(default)]
    pub share_authorized: bool,
    /// Default `stale-while-revalidate` for responses that give none.
    #[serde(default, with = "humantime_serde")]
    pub stale_while_revalidate: Duration,
    /// Default `stale-if-error` for responses that give none.
    #[serde(default, with = "humantime_serde")]
    pub stale_if_error: Duration,
    /// Use the shared tier (`[cache.redis]`) when it is configured.
    #[serde(default = "cache_defaults::yes")]
    pub redis: bool,
}

mod cache_defaults {
    use std::time::Duration;

    pub fn max_body() -> super::super::ByteSize {
        super::super::ByteSize(1024 * 1024)
    }
    pub fn yes() -> bool {
        true
    }
    pub fn redis_prefix() -> String {
        "gw:cache:".into()
    }
    pub fn redis_timeout() -> Duration {
        Duration::from_millis(50)
    }
}
