//! [`RetryLayer`] and [`Retry`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{RETRY_AFTER, UPGRADE};
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};

use super::budget::{backoff, Budget};
use crate::body::Body;
use crate::config::RetryConfig;
use crate::error::{Blame, BoxError, GatewayError};
use crate::proxy::Tried;
use crate::upstream::error::{has_idempotency_key, idempotent, IdempotencyKey, UpstreamError};
use prometheus_client::metrics::counter::Counter;

/// One route's retry settings and budget, built at config load.
#[derive(Debug)]
pub struct RetryPolicy {
    attempts: u32,
    on_status: Vec<u16>,
    backoff: Duration,
    max_backoff: Duration,
    max_retry_after: Duration,
    max_replay: u64,
    /// Honour `Idempotency-Key`: a request carrying one is resent like an
    /// idempotent one.
    idempotency_key: bool,
    budget: Budget,
    /// Retries made and retries refused by the budget (metrics).
    counters: Option<(Counter, Counter)>,
}

impl RetryPolicy {
    /// From validated config.
    pub fn new(cfg: &RetryConfig) -> Self {
        Self {
            attempts: cfg.attempts.max(1),
            on_status: cfg.on_status.clone(),
            backoff: cfg.backoff,
            max_backoff: cfg.max_backoff,
            max_retry_after: cfg.max_retry_after,
            max_replay: cfg.max_replay_body.0,
            idempotency_key: cfg.idempotency_key,
            budget: Budget::new(cfg.budget_ratio, cfg.budget_min_per_sec),
            counters: None,
        }
    }

    /// Counts retries and budget refusals into these counters.
    pub fn with_counters(mut self, counters: (Counter, Counter)) -> Self {
        self.counters = Some(counters);
        self
    }

    /// How long to wait before retrying after `result`, or `None` for no
    /// retry. `retry` is the number of the retry that would follow.
    fn wait(
        &self,
        idempotent: bool,
        result: &Result<Response<Body>, BoxError>,
        retry: u32,
    ) -> Option<Duration> {
        let jitter = backoff(self.backoff, self.max_backoff, retry, fastrand::f64());
        match result {
            Ok(resp) => {
                if !idempotent || !self.on_status.contains(&resp.status().as_u16()) {
                    return None;
                }
                match retry_after(resp) {
                    Some(d) if d > self.max_retry_after => None,
                    Some(d) => Some(d.max(jitter)),
                    None => Some(jitter),
                }
            }
            // What the error says of itself: never the client's fault;
            // safe for any method when no byte was sent, else only when
            // idempotent.
            Err(e) => match upstream_error(e.as_ref()) {
                _ if crate::error::blame(e.as_ref()) == Blame::Client => None,
                Some(u) if u.retry_safe() || idempotent => Some(jitter),
                _ if idempotent && is_upstream_timeout(e.as_ref()) => Some(jitter),
                _ => None,
            },
        }
    }
}

fn upstream_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a UpstreamError> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(u) = e.downcast_ref::<UpstreamError>() {
            return Some(u);
        }
        cur = e.source();
    }
    None
}

fn is_upstream_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        e.downcast_ref::<GatewayError>(),
        Some(GatewayError::UpstreamTimeout { .. })
    )
}

/// `Retry-After` as delay-seconds (an HTTP date is treated as absent). A
/// number too large for any type saturates (2^31 s, more than any
/// `max_retry_after`), so "wait forever" means no retry, never "retry now".
fn retry_after(resp: &Response<Body>) -> Option<Duration> {
    let v = resp.headers().get(RETRY_AFTER)?.to_str().ok()?;
    crate::middleware::cache::policy::delta_seconds(v.trim()).map(Duration::from_secs)
}

/// Applies a [`RetryPolicy`].
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
}

impl RetryLayer {
    /// A layer retrying per `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The retry middleware.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<RetryPolicy>,
}

/// The future of [`Retry`]: attempts, waits and body buffering make it a
/// state machine that is clearest as an `async` block.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl<S> Service<Request<Body>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<Body>) -> ResponseFuture {
        // An honoured key makes the request resendable by the upstream
        // client too (its keep-alive race resend).
        if self.policy.idempotency_key
            && !idempotent(req.method())
            && has_idempotency_key(req.headers())
        {
            req.extensions_mut().insert(IdempotencyKey);
        }
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        policy.budget.deposit();
        Box::pin(run(inner, policy, req))
    }
}

async fn run<S>(
    mut inner: S,
    policy: Arc<RetryPolicy>,
    req: Request<Body>,
) -> Result<Response<Body>, BoxError>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send,
    S::Error: Into<BoxError> + Send,
    S::Future: Send,
{
    let replayable = policy.attempts > 1
        && !req.headers().contains_key(UPGRADE)
        && (req.body().is_end_stream()
            || req
                .body()
                .size_hint()
                .upper()
                .is_some_and(|n| n <= policy.max_replay));
    if !replayable {
        return inner
            .ready()
            .await
            .map_err(Into::into)?
            .call(req)
            .await
            .map_err(Into::into);
    }
    let (parts, body) = req.into_parts();
    let body: Bytes = body.collect().await?.to_bytes();
    let tried = Tried::default();
    let safe = crate::upstream::error::resendable(&parts.method, &parts.extensions);
    let mut attempt = 1;
    loop {
        let mut req = Request::new(if body.is_empty() {
            Body::Empty
        } else {
            Body::full(body.clone())
        });
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        *req.extensions_mut() = parts.extensions.clone();
        req.extensions_mut().insert(tried.clone());
        let result = match inner.ready().await {
            Ok(svc) => svc.call(req).await.map_err(Into::into),
            Err(e) => Err(e.into()),
        };
        let wait = (attempt < policy.attempts)
            .then(|| policy.wait(safe, &result, attempt))
            .flatten();
        match wait {
            Some(d) if policy.budget.withdraw() => {
                if let Some((retries, _)) = &policy.counters {
                    retries.inc();
                }
                tracing::debug!(attempt, wait = ?d, "retrying");
                drop(result);
                tokio::time::sleep(d).await;
                attempt += 1;
            }
            Some(_) => {
                if let Some((_, exhausted)) = &policy.counters {
                    exhausted.inc();
                }
                return result;
            }
            None => return result,
        }
    }
}

#[cfg(test)]
mod tests;
