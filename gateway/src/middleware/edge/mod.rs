//! Edge rules per route: the CORS policy and request/response header rules.
//!
//! Three layers, placed by [`crate::stack`]:
//!
//! - [`ResponseHeadersLayer`] (outermost): the route's `response_headers`
//!   rules run last on the way out, on every response of the route: CORS
//!   preflight answers, upstream and cached responses, and the gateway's
//!   own error responses (their `set` and `add` values; `remove` does not
//!   touch the gateway's error headers), as Traefik's headers middleware
//!   modifies whatever the middlewares inside it answer.
//! - [`CorsLayer`]: a preflight (`OPTIONS` with `Origin` and
//!   `Access-Control-Request-Method`) is answered here, before auth and
//!   rate limits (preflights carry no credentials), and never reaches the
//!   upstream, whether its origin is allowed or not; actual responses lose
//!   the upstream's CORS headers and get the policy's.
//! - [`RequestHeadersLayer`] (after auth): the route's `request_headers`
//!   rules, with the verified token's claims.
//!
//! One exception: the answer to a route `timeout` (504, or 408 when the
//! client's upload was what was slow) is not decorated, because the edge
//! must see that error undisturbed to tell the two apart.
//!
//! A route without `cors`, `request_headers` or `response_headers` gets
//! none of these layers: nothing is allocated or checked for it.

mod cors;
mod rules;
mod service;

use std::sync::Arc;

use crate::config::RouteConfig;
use crate::telemetry::metrics::{DecisionLabels, Fixed};
use crate::telemetry::Metrics;

pub use cors::{Cors, CorsFuture, CorsLayer, CorsPolicy};
pub use rules::{HeaderRules, Uses, Vars};
pub use service::{
    ClaimsSlot, RequestHeaders, RequestHeadersLayer, ResponseHeaders, ResponseHeadersFuture,
    ResponseHeadersLayer,
};

/// The edge layers of one route, built once per config load.
#[derive(Debug, Clone, Default)]
pub struct EdgeRules {
    /// The CORS layer, when the route has a policy.
    pub cors: Option<CorsLayer>,
    /// The response rules, when the route has some.
    pub response: Option<ResponseHeadersLayer>,
    /// The request rules (or the claims hand-over for the response rules).
    pub request: Option<RequestHeadersLayer>,
    /// Whether auth must keep the verified claims for the rules.
    pub keep_claims: bool,
}

impl EdgeRules {
    /// Compiles a validated route's `cors`, `request_headers` and
    /// `response_headers`; `metrics` counts values dropped as invalid
    /// (`gateway_header_rule_values_dropped_total{route, decision}`).
    pub fn new(route: &RouteConfig, metrics: Option<&Arc<Metrics>>) -> Self {
        let counter = |side: &'static str| {
            metrics.map(|m| {
                m.header_rule_drops
                    .get_or_create(&DecisionLabels {
                        route: Arc::from(route.name.as_str()),
                        decision: Fixed(side),
                    })
                    .clone()
            })
        };
        let compile = |r: &Option<crate::config::edge::HeaderRulesConfig>, side| {
            r.as_ref()
                .filter(|r| !r.is_empty())
                .map(|r| HeaderRules::new(r, &route.name, counter(side)))
        };
        let request = compile(&route.request_headers, "request");
        let response = compile(&route.response_headers, "response");
        let response_claims = response.as_ref().is_some_and(|r| r.uses().claims);
        let keep_claims = response_claims || request.as_ref().is_some_and(|r| r.uses().claims);
        Self {
            cors: route
                .cors
                .as_ref()
                .map(|c| CorsLayer::new(CorsPolicy::new(c))),
            request: (request.is_some() || response_claims)
                .then(|| RequestHeadersLayer::new(request)),
            response: response.map(ResponseHeadersLayer::new),
            keep_claims,
        }
    }
}
