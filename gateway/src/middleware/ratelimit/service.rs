//! [`RateLimitLayer`], [`RateLimit`] and their [`ResponseFuture`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service, ServiceExt};

use super::error::{LimiterFailed, LimiterUnavailable, RateLimited};
use super::gcra::{Gcra, Outcome};
use super::headers::{self, ceil_secs};
use super::key::KeySource;
use super::redis::RedisLimiter;
use super::store::{bounded_key, LocalStore, MAX_KEY_BYTES};
use crate::body::Body;
use crate::config::{OnRedisError, RateLimitPolicyConfig, RateLimitStore};
use crate::error::{BoxError, WithHeaders};

/// What the rate limiter decided for one response: a typed marker in the
/// response extensions, which telemetry counts. Never read back from
/// `RateLimit-Policy`: an upstream may send that header too. A refusal is
/// marked where it is rendered (`crate::error::render`), as is an allowed
/// request that failed below the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitDecision {
    /// Every policy admitted the request.
    Allowed,
    /// A policy refused it (429).
    Limited,
}

impl RateLimitDecision {
    /// The metric label: `allowed`, `limited`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Limited => "limited",
        }
    }
}

/// One policy of a route, with its own state.
#[derive(Debug)]
pub struct Policy {
    name: Arc<str>,
    gcra: Gcra,
    key: KeySource,
    local: Arc<LocalStore>,
    redis: Option<Arc<RedisLimiter>>,
}

impl Policy {
    /// From validated config; `local` is the in-process state (carried over
    /// a reload that left the policy unchanged); `redis` is used when the
    /// policy's store is Redis (`local` then serves the `local` fallback).
    pub fn new(
        cfg: &RateLimitPolicyConfig,
        local: Arc<LocalStore>,
        redis: Option<Arc<RedisLimiter>>,
    ) -> Self {
        Self {
            name: Arc::from(cfg.name.as_str()),
            gcra: Gcra::new(cfg.limit, cfg.window),
            key: KeySource::new(&cfg.key),
            local,
            redis: redis.filter(|_| cfg.store == RateLimitStore::Redis),
        }
    }

    fn decide_local(&self, key: &str) -> Outcome {
        self.local.decide(&self.gcra, key, self.local.now_us())
    }
}

/// Every policy of one route, built at config load.
#[derive(Debug)]
pub struct RoutePolicies {
    route: Arc<str>,
    policies: Vec<Policy>,
    policy_header: HeaderValue,
    any_redis: bool,
}

impl RoutePolicies {
    /// The policies of route `route`.
    pub fn new(route: &str, policies: Vec<Policy>) -> Self {
        let desc: Vec<(&str, u32, u64)> = policies
            .iter()
            .map(|p| (&*p.name, p.gcra.limit, ceil_secs(p.gcra.window_us)))
            .collect();
        let policy_header =
            headers::policy_value(&desc).unwrap_or_else(|| HeaderValue::from_static(""));
        Self {
            route: Arc::from(route),
            any_redis: policies.iter().any(|p| p.redis.is_some()),
            policies,
            policy_header,
        }
    }

    /// Decides every policy in order; stops at the first refusal (later
    /// policies are not charged for a refused request).
    fn decide_local(&self, keys: &[String]) -> Decision {
        let mut applied = Vec::with_capacity(self.policies.len());
        for (p, k) in self.policies.iter().zip(keys) {
            let o = p.decide_local(k);
            applied.push((p, o));
            if !o.allowed {
                break;
            }
        }
        self.finish(&applied, false)
    }

    /// Like [`Self::decide_local`], asking Redis for Redis policies; when
    /// Redis fails, the policy's `on_error` decides and the decision is
    /// marked as `limiter_failed`.
    async fn decide(&self, keys: Vec<String>) -> Result<Decision, LimiterUnavailable> {
        let mut applied = Vec::with_capacity(self.policies.len());
        let mut failed = false;
        for (p, k) in self.policies.iter().zip(&keys) {
            let o = match &p.redis {
                None => Some(p.decide_local(k)),
                Some(r) => {
                    // Bounded: a long header key must not become a long
                    // Redis key (Redis memory is bounded by bytes too).
                    let bounded = bounded_key(k, MAX_KEY_BYTES);
                    let full = format!("{}{}:{}:{}", r.prefix, self.route, p.name, bounded);
                    match r.decide(&p.gcra, &full).await {
                        Some(o) => Some(o),
                        None => {
                            failed = true;
                            match r.on_error {
                                OnRedisError::FailOpen => None,
                                OnRedisError::FailClosed => return Err(LimiterUnavailable),
                                OnRedisError::Local => Some(p.decide_local(k)),
                            }
                        }
                    }
                }
            };
            if let Some(o) = o {
                applied.push((p, o));
                if !o.allowed {
                    break;
                }
            }
        }
        Ok(self.finish(&applied, failed))
    }

    fn finish(&self, applied: &[(&Policy, Outcome)], limiter_failed: bool) -> Decision {
        let view: Vec<(&str, Gcra, Outcome)> = applied
            .iter()
            .map(|(p, o)| (&*p.name, p.gcra, *o))
            .collect();
        let headers = headers::render(&self.policy_header, &view);
        match applied.iter().find(|(_, o)| !o.allowed) {
            Some((p, o)) => Decision::Refused(RateLimited {
                policy: p.name.to_string(),
                retry_after: ceil_secs(o.reset_us).max(1),
                headers,
                limiter_failed,
            }),
            None => Decision::Allowed {
                headers,
                limiter_failed,
            },
        }
    }

    fn keys<B>(&self, req: &Request<B>) -> Vec<String> {
        self.policies.iter().map(|p| p.key.key(req)).collect()
    }
}

enum Decision {
    Allowed {
        headers: Vec<(HeaderName, HeaderValue)>,
        limiter_failed: bool,
    },
    Refused(RateLimited),
}

/// Applies a route's [`RoutePolicies`].
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    policies: Arc<RoutePolicies>,
}

impl RateLimitLayer {
    /// A layer enforcing `policies`.
    pub fn new(policies: RoutePolicies) -> Self {
        Self {
            policies: Arc::new(policies),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            policies: self.policies.clone(),
        }
    }
}

/// The rate-limit middleware.
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    policies: Arc<RoutePolicies>,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

pin_project! {
    /// The future of [`RateLimit`].
    #[project = Proj]
    pub enum ResponseFuture<F> {
        /// Admitted by local policies: the inner future, then the headers.
        Inner { #[pin] fut: F, headers: Vec<(HeaderName, HeaderValue)> },
        /// Refused without calling the inner service.
        Refused { err: Option<BoxError> },
        /// Waiting for Redis, then the inner service.
        Deciding { fut: BoxFuture },
    }
}

fn add_headers(resp: &mut Response<Body>, headers: Vec<(HeaderName, HeaderValue)>) {
    let h = resp.headers_mut();
    for (k, v) in headers {
        h.insert(k, v);
    }
    resp.extensions_mut().insert(RateLimitDecision::Allowed);
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Inner { fut, headers } => {
                let out = std::task::ready!(fut.poll(cx));
                // Taken only once ready: a pending poll must keep them.
                let headers = std::mem::take(headers);
                Poll::Ready(match out {
                    Ok(mut resp) => {
                        add_headers(&mut resp, headers);
                        Ok(resp)
                    }
                    // An error below still reports the limits.
                    Err(e) => Err(Box::new(WithHeaders {
                        headers,
                        source: e.into(),
                        limiter_failed: false,
                    })),
                })
            }
            Proj::Refused { err } => Poll::Ready(Err(err
                .take()
                .unwrap_or_else(|| "polled after completion".into()))),
            Proj::Deciding { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<S> Service<Request<Body>> for RateLimit<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let keys = self.policies.keys(&req);
        if !self.policies.any_redis {
            return match self.policies.decide_local(&keys) {
                Decision::Allowed { headers, .. } => ResponseFuture::Inner {
                    fut: self.inner.call(req),
                    headers,
                },
                Decision::Refused(e) => ResponseFuture::Refused {
                    err: Some(e.into()),
                },
            };
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let policies = self.policies.clone();
        ResponseFuture::Deciding {
            fut: Box::pin(async move {
                match policies.decide(keys).await? {
                    Decision::Allowed {
                        headers,
                        limiter_failed,
                    } => match inner.oneshot(req).await {
                        Ok(mut resp) => {
                            add_headers(&mut resp, headers);
                            if limiter_failed {
                                resp.extensions_mut().insert(LimiterFailed);
                            }
                            Ok(resp)
                        }
                        Err(e) => Err(Box::new(WithHeaders {
                            headers,
                            source: e.into(),
                            limiter_failed,
                        }) as BoxError),
                    },
                    Decision::Refused(e) => Err(e.into()),
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests;
