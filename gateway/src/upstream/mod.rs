//! Upstream pools: endpoints, balancing, the keep-alive client, health.
//!
//! An [`Upstream`] picks an endpoint per request (round-robin, or
//! least-request by power of two random choices), skipping endpoints that
//! active health checks ejected; each [`Endpoint`] keeps its own pool of idle
//! keep-alive connections for the in-task HTTP/1.1 client in [`h1`], at
//! most `max_connections` open at once ([`conns`]), and a reaper closes
//! idle ones that expired even when no request comes to take them.

mod balance;
pub mod breaker;
pub mod conns;
pub mod error;
pub mod h1;
mod health;
pub mod tls;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::uri::Authority;
use tokio::time::Instant;

use crate::config::upstream_tls::{self, parse_endpoint};
use crate::config::{Balance, CircuitBreakerConfig, HealthCheckConfig, UpstreamConfig};
use crate::error::GatewayError;
use crate::timer::SleepPool;
use breaker::Breaker;

pub use conns::spawn_reaper;
pub use h1::PoolConfig;
pub use health::spawn_health_checks;

/// One endpoint of a pool.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port`.
    pub authority: Authority,
    /// TLS for an `https://` endpoint; `None` for plaintext.
    pub tls: Option<tls::EndpointTls>,
    healthy: AtomicBool,
    inflight: AtomicUsize,
    idle: h1::IdlePool,
    /// Connections open (busy, idle, tunnelled), against `max_connections`.
    conns: Arc<conns::ConnCount>,
    /// Short critical sections only, never across an await.
    breaker: Option<Mutex<Breaker>>,
    epoch: Instant,
}

impl Endpoint {
    fn new(authority: Authority, healthy: bool, breaker: Option<Breaker>, epoch: Instant) -> Self {
        Self {
            authority,
            tls: None,
            healthy: AtomicBool::new(healthy),
            inflight: AtomicUsize::new(0),
            idle: h1::IdlePool::default(),
            conns: Arc::default(),
            breaker: breaker.map(Mutex::new),
            epoch,
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX / 4)
    }

    fn with_breaker<T>(&self, none: T, f: impl FnOnce(&mut Breaker, u64) -> T) -> T {
        match &self.breaker {
            None => none,
            Some(b) => {
                let now = self.now_us();
                f(&mut b.lock().unwrap_or_else(PoisonError::into_inner), now)
            }
        }
    }

    /// Whether the breaker lets a request through (always without one).
    pub fn breaker_available(&self) -> bool {
        self.with_breaker(true, |b, now| b.available(now))
    }

    /// Breaker state for metrics: 0 closed, 1 open, 2 half-open; `None`
    /// without a breaker.
    pub fn circuit_state(&self) -> Option<u8> {
        self.with_breaker(None, |b, now| {
            Some(match b.state(now) {
                breaker::State::Closed => 0,
                breaker::State::Open { .. } => 1,
                breaker::State::HalfOpen { .. } => 2,
            })
        })
    }

    /// Records a request's outcome with the breaker.
    pub fn record(&self, ok: bool) {
        self.with_breaker((), |b, now| b.record(ok, now));
    }

    /// Idle keep-alive connections pooled for this endpoint.
    pub fn idle_connections(&self) -> usize {
        self.idle.len()
    }

    /// Connections open to this endpoint: busy, idle and tunnelled.
    pub fn open_connections(&self) -> usize {
        self.conns.open()
    }

    /// Whether the endpoint is in rotation.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Requests currently in flight to this endpoint.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }
}

/// Counts a request against an endpoint until dropped.
#[derive(Debug)]
pub struct InflightGuard(Arc<Endpoint>);

impl InflightGuard {
    fn new(ep: Arc<Endpoint>) -> Self {
        ep.inflight.fetch_add(1, Ordering::Relaxed);
        Self(ep)
    }

    /// The endpoint this request went to.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream pool.
#[derive(Debug)]
pub struct Upstream {
    /// Pool name (a metric label).
    pub name: Arc<str>,
    endpoints: Box<[Arc<Endpoint>]>,
    balance: Balance,
    next: AtomicUsize,
    /// Connection pool settings.
    pub pool: PoolConfig,
    /// Deadline for response headers.
    pub request_timeout: Duration,
    /// Armed timers for that deadline, reused request after request.
    pub timers: Arc<SleepPool>,
    /// Active health check settings.
    pub health_check: Option<HealthCheckConfig>,
    /// Circuit breaker settings (decides whether a reload keeps endpoints).
    breaker: Option<CircuitBreakerConfig>,
}

impl Upstream {
    /// Builds a pool. From `previous` (the pool this one replaces on
    /// reload), an endpoint that is still listed is kept whole (health,
    /// circuit breaker, idle connections, in-flight count) when the breaker
    /// settings are unchanged; otherwise only its health carries over and
    /// its breaker starts closed.
    pub fn new(name: &str, cfg: &UpstreamConfig, previous: Option<&Upstream>) -> Self {
        let epoch = Instant::now();
        // Built once when the config loaded (validation); an error here
        // only for a config that skipped validation: its https endpoints
        // are left out, loudly.
        let client = cfg
            .endpoints
            .iter()
            .any(|e| parse_endpoint(e).is_ok_and(|a| a.tls))
            .then(|| cfg.tls.client())
            .transpose()
            .unwrap_or_else(|e| {
                tracing::error!(upstream = name, error = %e, "upstream TLS settings unusable: its https endpoints are left out");
                None
            });
        let endpoints = cfg
            .endpoints
            .iter()
            .filter_map(|e| {
                let addr = parse_endpoint(e).ok()?;
                let tls = match (addr.tls, &client) {
                    (false, _) => None,
                    (true, None) => return None,
                    (true, Some(c)) => {
                        let name = upstream_tls::server_name(
                            cfg.tls.server_name.as_deref(),
                            &addr.authority,
                        )
                        .map_err(
                            |m| tracing::error!(upstream = name, endpoint = %addr.authority, "{m}"),
                        )
                        .ok()?;
                        Some(tls::EndpointTls::new(c.config.clone(), name, c.fingerprint))
                    }
                };
                Some((addr.authority, tls))
            })
            .map(|(auth, tls)| {
                let fingerprint = tls.as_ref().map(|t| t.fingerprint);
                let prev = previous.and_then(|p| {
                    let ep = p.endpoints.iter().find(|e| {
                        e.authority == auth && e.tls.as_ref().map(|t| t.fingerprint) == fingerprint
                    })?;
                    Some((ep, p.breaker == cfg.circuit_breaker))
                });
                match prev {
                    Some((ep, true)) => ep.clone(),
                    _ => {
                        let healthy = prev.is_none_or(|(e, _)| e.is_healthy());
                        let breaker = cfg.circuit_breaker.as_ref().map(Breaker::new);
                        let mut ep = Endpoint::new(auth, healthy, breaker, epoch);
                        ep.tls = tls;
                        Arc::new(ep)
                    }
                }
            })
            .collect();
        Self {
            name: Arc::from(name),
            endpoints,
            balance: cfg.balance,
            next: AtomicUsize::new(0),
            pool: PoolConfig {
                connect_timeout: cfg.connect_timeout,
                idle_timeout: cfg.pool_idle_timeout,
                max_idle: cfg.pool_max_idle,
                max_connections: cfg.max_connections,
                queue_timeout: cfg.connect_queue_timeout,
                bypass_limit: false,
                body_idle_timeout: cfg.body_idle_timeout,
                body_timeout: cfg.body_timeout,
            },
            request_timeout: cfg.request_timeout,
            timers: previous.map_or_else(SleepPool::new, |p| p.timers.clone()),
            health_check: cfg.health_check.clone(),
            breaker: cfg.circuit_breaker.clone(),
        }
    }

    /// Every endpoint of the pool.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Whether at least one endpoint is in rotation.
    pub fn has_healthy_endpoint(&self) -> bool {
        self.endpoints.iter().any(|e| e.is_healthy())
    }

    /// Picks an endpoint for one request: healthy, breaker not open, and
    /// not in `avoid` when another qualifies (a retry goes elsewhere). Fails
    /// at once when none can take it: 503, with `Retry-After` the time until
    /// the first breaker half-opens.
    pub fn pick(&self, avoid: &[Authority]) -> Result<InflightGuard, GatewayError> {
        let usable = |e: &Arc<Endpoint>| e.is_healthy() && e.breaker_available();
        let idx = self
            .choose(|e| usable(e) && !avoid.contains(&e.authority))
            .or_else(|| self.choose(usable));
        let ep = idx.and_then(|i| self.endpoints.get(i));
        if let Some(ep) = ep {
            // The probe slot of a half-open breaker is taken here.
            if ep.with_breaker(true, |b, now| b.acquire(now)) {
                return Ok(InflightGuard::new(ep.clone()));
            }
        }
        let open: Vec<u64> = self
            .endpoints
            .iter()
            .filter(|e| e.is_healthy())
            .filter_map(|e| {
                e.breaker
                    .as_ref()
                    .map(|_| e.with_breaker(0, |b, now| b.retry_in(now)))
            })
            .collect();
        if open.is_empty() {
            return Err(GatewayError::NoHealthyEndpoint {
                upstream: self.name.clone(),
            });
        }
        let wait_us = open.into_iter().min().unwrap_or(0);
        Err(GatewayError::CircuitOpen {
            upstream: self.name.clone(),
            retry_after: wait_us.div_ceil(1_000_000).max(1),
        })
    }

    fn choose(&self, ok: impl Fn(&Arc<Endpoint>) -> bool) -> Option<usize> {
        match self.balance {
            Balance::RoundRobin => balance::round_robin(&self.endpoints, &self.next, ok),
            Balance::LeastRequest => {
                balance::p2c(&self.endpoints, ok, |e| e.inflight(), fastrand::usize)
            }
        }
    }
}
