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
use super::store::{bounded_key, with_locked, LocalStore, MAX_KEY_BYTES};
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
}

/// Every policy of one route, built at config load.
///
/// A request is charged to all of its policies or to none: every policy
/// is decided first, and only when all of them admit it is it charged to
/// each. The in-process policies are decided under one critical section
/// (the shard of each policy's key, locked in the order of the stores'
/// addresses, the same for every request); the Redis policies in one
/// script call. A refusal reports every policy's state, uncharged, and a
/// `Retry-After` when all of them would admit a request again.
#[derive(Debug)]
pub struct RoutePolicies {
    route: Arc<str>,
    policies: Vec<Policy>,
    /// Indices of the policies by increasing store address: the order
    /// their shards are locked in.
    lock_order: Box<[usize]>,
    policy_header: HeaderValue,
    /// The shared limiter of the Redis policies (one per config).
    redis: Option<Arc<RedisLimiter>>,
}

/// One policy's part in one request's decision.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Its outcome; `None` when it was not decided (Redis failed and the
    /// policy fails open).
    outcome: Option<Outcome>,
    /// The TAT before and after an in-process charge, for a refund.
    charged: Option<(u64, u64)>,
}

impl RoutePolicies {
    /// The policies of route `route`. Each policy must have its own
    /// in-process store (the config gives one per route and policy name);
    /// a store passed for two policies is replaced by a fresh one for the
    /// second, since one request locks each policy's store once.
    pub fn new(route: &str, mut policies: Vec<Policy>) -> Self {
        for i in 1..policies.len() {
            let shared = policies.iter().take(i).any(|q| {
                policies
                    .get(i)
                    .is_some_and(|p| Arc::ptr_eq(&p.local, &q.local))
            });
            if let Some(p) = policies.get_mut(i).filter(|_| shared) {
                p.local = Arc::new(LocalStore::new(p.local.max_keys()));
            }
        }
        let desc: Vec<(&str, u32, u64)> = policies
            .iter()
            .map(|p| (&*p.name, p.gcra.limit, ceil_secs(p.gcra.window_us)))
            .collect();
        let policy_header =
            headers::policy_value(&desc).unwrap_or_else(|| HeaderValue::from_static(""));
        let mut lock_order: Vec<usize> = (0..policies.len()).collect();
        lock_order.sort_by_key(|&i| policies.get(i).map(|p| Arc::as_ptr(&p.local) as usize));
        Self {
            route: Arc::from(route),
            redis: policies.iter().find_map(|p| p.redis.clone()),
            lock_order: lock_order.into_boxed_slice(),
            policies,
            policy_header,
        }
    }

    /// Decides, under one critical section, every policy `pick` selects on
    /// its in-process store, writing each outcome to its slot. With
    /// `commit`, when every one of them admits the request it is charged
    /// to each (the charges are recorded in the slots); otherwise nothing
    /// is stored. Returns whether every selected policy admits it.
    fn decide_in_process(
        &self,
        keys: &[String],
        slots: &mut [Slot],
        pick: fn(&Policy) -> bool,
        commit: bool,
    ) -> bool {
        let policies = &self.policies;
        let mut items = self.lock_order.iter().filter_map(|&i| {
            let p = policies.get(i).filter(|p| pick(p))?;
            Some((i, &*p.local, keys.get(i)?.as_str()))
        });
        with_locked(&mut items, &mut (), &mut |held| {
            let picked = || {
                policies
                    .iter()
                    .zip(keys)
                    .enumerate()
                    .filter(|(_, (p, _))| pick(p))
            };
            // Look first: a refusal anywhere charges nothing.
            let mut all = true;
            for (i, (p, k)) in picked() {
                let now = p.local.now_us();
                let seen = held.decide(i, &p.gcra, k, now, false);
                let o = seen.map_or_else(|| p.gcra.peek(0, now), |(o, _)| o);
                all &= o.allowed;
                if let Some(slot) = slots.get_mut(i) {
                    slot.outcome = Some(o);
                }
            }
            if all && commit {
                // The shards are still held and a later `now` only admits
                // more: every charge below admits, as the look did.
                for (i, (p, k)) in picked() {
                    let now = p.local.now_us();
                    if let Some((o, charged)) = held.decide(i, &p.gcra, k, now, true) {
                        if let Some(slot) = slots.get_mut(i) {
                            *slot = Slot {
                                outcome: Some(o),
                                charged,
                            };
                        }
                    }
                }
            }
            all
        })
    }

    /// Takes back the in-process charges recorded in `slots`; their
    /// outcomes become the uncharged ones (a charge put the TAT one
    /// interval further ahead).
    fn refund(&self, keys: &[String], slots: &mut [Slot]) {
        for ((p, k), slot) in self.policies.iter().zip(keys).zip(slots) {
            if let Some((before, after)) = slot.charged.take() {
                p.local.refund(k, before, after);
                slot.outcome = slot.outcome.map(|o| {
                    p.gcra
                        .outcome(true, o.reset_us.saturating_sub(p.gcra.interval_us))
                });
            }
        }
    }

    /// Every policy on its in-process store, charged all or none.
    fn decide_local(&self, keys: &[String]) -> Decision {
        let mut slots = vec![Slot::default(); self.policies.len()];
        self.decide_in_process(keys, &mut slots, |_| true, true);
        self.finish(&slots, false)
    }

    /// Like [`Self::decide_local`], asking Redis for the Redis policies in
    /// one script call. The in-process policies are charged first (when
    /// they all admit the request) and refunded when Redis refuses it, so
    /// that while Redis answers no other request can take a unit this one
    /// holds; Redis charges its policies only when the in-process ones
    /// admitted the request and all of its own do. When Redis fails, the
    /// limiter's `on_error` decides and the decision is marked as
    /// `limiter_failed`: `local` decides the Redis policies on their
    /// in-process stores (charged only when they all admit the request,
    /// the other policies refunded when they do not).
    async fn decide(&self, keys: Vec<String>) -> Result<Decision, LimiterUnavailable> {
        let mut slots = vec![Slot::default(); self.policies.len()];
        let local_ok = self.decide_in_process(&keys, &mut slots, |p| p.redis.is_none(), true);
        let Some(redis) = &self.redis else {
            return Ok(self.finish(&slots, false));
        };
        let asks: Vec<(Gcra, String)> = self
            .policies
            .iter()
            .zip(&keys)
            .filter(|(p, _)| p.redis.is_some())
            .map(|(p, k)| {
                // Bounded: a long header key must not become a long Redis
                // key (Redis memory is bounded by bytes too); `keys` are.
                let full = format!("{}{}:{}:{}", redis.prefix, self.route, p.name, k);
                (p.gcra, full)
            })
            .collect();
        let mut failed = false;
        match redis.decide(&asks, local_ok).await {
            Some(d) => {
                let mut outcomes = d.outcomes.into_iter();
                for (p, slot) in self.policies.iter().zip(slots.iter_mut()) {
                    if p.redis.is_some() {
                        slot.outcome = outcomes.next();
                    }
                }
                if local_ok && !d.charged {
                    self.refund(&keys, &mut slots);
                }
            }
            None => {
                failed = true;
                match redis.on_error {
                    OnRedisError::FailOpen => {}
                    OnRedisError::FailClosed => {
                        self.refund(&keys, &mut slots);
                        return Err(LimiterUnavailable);
                    }
                    OnRedisError::Local => {
                        // Charged only when the in-process policies were
                        // (`local_ok`) and these all admit it; when they
                        // refuse, the in-process charges are taken back.
                        let fallback_ok = self.decide_in_process(
                            &keys,
                            &mut slots,
                            |p| p.redis.is_some(),
                            local_ok,
                        );
                        if local_ok && !fallback_ok {
                            self.refund(&keys, &mut slots);
                        }
                    }
                }
            }
        }
        Ok(self.finish(&slots, failed))
    }

    fn finish(&self, slots: &[Slot], limiter_failed: bool) -> Decision {
        let view: Vec<(&str, Gcra, Outcome)> = self
            .policies
            .iter()
            .zip(slots)
            .filter_map(|(p, s)| Some((&*p.name, p.gcra, s.outcome?)))
            .collect();
        let headers = headers::render(&self.policy_header, &view);
        match headers::retry_after(&view) {
            Some((policy, retry_after)) => Decision::Refused(RateLimited {
                policy: policy.to_owned(),
                retry_after,
                headers,
                limiter_failed,
            }),
            None => Decision::Allowed {
                headers,
                limiter_failed,
            },
        }
    }

    /// The key of each policy for `req`, bounded as the stores keep them.
    fn keys<B>(&self, req: &Request<B>) -> Vec<String> {
        self.policies
            .iter()
            .map(|p| {
                let k = p.key.key(req);
                if k.len() > MAX_KEY_BYTES {
                    bounded_key(&k, MAX_KEY_BYTES).into_owned()
                } else {
                    k
                }
            })
            .collect()
    }

    fn any_redis(&self) -> bool {
        self.redis.is_some()
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
        if !self.policies.any_redis() {
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
