//! A config compiled for serving: routes with their built stacks, upstream
//! pools with their clients and health checkers. Swapped atomically on
//! reload; the old one lives on until its last in-flight request ends.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{Config, ConfigErrors};
use crate::middleware;
use crate::middleware::shed::LoadShedLayer;
use crate::proxy::Via;
use crate::routing::{Matcher, Router};
use crate::server::sanitize::EdgePolicy;
use crate::stack::{self, RouteService};
use crate::telemetry::{Layers, RouteTelemetry, SloEngine, Telemetry};
use crate::upstream::{spawn_health_checks, spawn_reaper, Upstream};

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// Configured name (metric label).
    pub name: Arc<str>,
    /// Request body limit in bytes.
    pub max_body: u64,
    /// WebSocket handshakes are forwarded as upgrades (`websocket = true`).
    pub websocket: bool,
    /// An encoded slash (`%2F`) in the path is accepted
    /// (`allow_encoded_slash = true`; see [`crate::path`]).
    pub allow_encoded_slash: bool,
    /// The route's middleware stack.
    pub service: RouteService,
    /// Metric handles and SLOs of the route.
    pub telemetry: Arc<RouteTelemetry>,
}

/// Everything a request needs, built from one validated config.
#[derive(Debug)]
pub struct Runtime {
    /// The config this was built from.
    pub config: Config,
    /// Routes, most specific first.
    pub router: Router<Route>,
    /// Upstream pools by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// The live SLOs.
    pub slos: SloEngine,
    /// Telemetry of requests that matched no route.
    pub unmatched: Arc<RouteTelemetry>,
    /// What the edge's sanitation needs (identity headers to strip,
    /// trusted proxies), computed once per config.
    pub edge: EdgePolicy,
    /// What the routes share: the response cache (purged from the admin
    /// listener), the Redis limiter (its failure count is reported there),
    /// limiter state; carried over reloads where unchanged.
    pub middleware: middleware::Shared,
    /// The load shedders of routes with `max_inflight`, by route name
    /// (their in-flight counts are exported at scrape time).
    pub shedders: Vec<(Arc<str>, LoadShedLayer)>,
    /// Cancels the background tasks (health checks, reapers) on drop.
    _health: DropGuard,
}

impl Runtime {
    /// Builds a runtime from a *validated* config (each route's stack from
    /// [`stack::route_stack`]) and starts its health checks, idle
    /// connection reapers and JWKS refreshers, all stopped when it is
    /// dropped (must run inside a tokio runtime). Fails only
    /// when a secret or key file changed since validation. From `previous`,
    /// endpoint health carries over (a reload does not put ejected endpoints
    /// back), and so does the state whose config did not change: whole
    /// endpoints (circuit breaker, idle connections) when their pool's
    /// breaker settings are equal, limiter state, the cache
    /// ([`middleware::Shared::build`]).
    pub fn build(
        config: Config,
        previous: Option<&Runtime>,
        telemetry: &Telemetry,
    ) -> Result<Self, ConfigErrors> {
        let stop = CancellationToken::new();
        let shared = middleware::Shared::build(
            &config,
            previous.map(|p| (&p.config, &p.middleware)),
            &stop,
        )?;
        let upstreams: BTreeMap<String, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, cfg)| {
                let prev = previous
                    .and_then(|p| p.upstreams.get(name))
                    .map(AsRef::as_ref);
                let up = Arc::new(Upstream::new(name, cfg, prev));
                spawn_health_checks(&up, &stop);
                spawn_reaper(&up, &stop);
                (name.clone(), up)
            })
            .collect();
        let via = Via::new(&config.server.via_name);
        // The name of the Proxy-Status members error responses carry.
        crate::proxy_status::set_name(&config.server.via_name);
        // Labelled counters whose label values the config names, at 0.
        telemetry.metrics.create_known_series(&config);
        let slos = SloEngine::new(
            &config.slos,
            previous.map(|p| &p.slos),
            tokio::time::Instant::now(),
        );
        let metrics = &telemetry.metrics;
        let route_telemetry = |name: &Arc<str>, slos: Vec<_>, layers: Layers| {
            Arc::new(RouteTelemetry {
                name: name.clone(),
                metrics: metrics.route(name),
                slos,
                enabled: config.telemetry.metrics,
                access_log: config.telemetry.access_log.clone(),
                layers,
            })
        };
        let mut shedders = Vec::new();
        let routes = config
            .routes
            .iter()
            .filter_map(|r| {
                let up = upstreams.get(&r.upstream)?.clone();
                let matcher = Matcher::new(&r.prefix, r.host.as_deref(), &r.methods);
                let name: Arc<str> = Arc::from(r.name.as_str());
                let route_metrics = config.telemetry.metrics.then_some(metrics);
                let stack =
                    stack::route_stack(r, &matcher, up, via.clone(), &shared, route_metrics);
                if let Some(s) = stack.shed {
                    shedders.push((name.clone(), s));
                }
                let route = Route {
                    telemetry: route_telemetry(
                        &name,
                        slos.for_route(&r.name),
                        Layers {
                            auth: r
                                .auth
                                .as_ref()
                                .is_some_and(|a| a.mode != crate::config::AuthMode::Off),
                            ratelimit: !r.rate_limits.is_empty(),
                            cache: r.cache.is_some(),
                            concurrency: r.concurrency.is_some(),
                        },
                    ),
                    max_body: r.max_body_size.unwrap_or(config.server.max_body_size).0,
                    websocket: r.websocket,
                    allow_encoded_slash: r.allow_encoded_slash,
                    service: stack.service,
                    name,
                };
                Some((matcher, route))
            })
            .collect();
        let unmatched = route_telemetry(&Arc::from("unmatched"), Vec::new(), Layers::default());
        Ok(Self {
            router: Router::new(routes),
            middleware: shared,
            shedders,
            upstreams,
            slos,
            unmatched,
            edge: EdgePolicy::new(&config),
            config,
            _health: stop.drop_guard(),
        })
    }

    /// Whether every upstream pool has a healthy endpoint.
    pub fn is_ready(&self) -> bool {
        self.upstreams.values().all(|u| u.has_healthy_endpoint())
    }
}
