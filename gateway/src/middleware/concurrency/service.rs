//! The layer: admission against the current limit, samples on the way
//! out, one controller update per window.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::control::Gradient;
use super::window::LatencyWindow;
use crate::body::Body;
use crate::config::concurrency::{ConcurrencyConfig, Target};
use crate::error::BoxError;
use crate::proxy::tunnel::TunnelLease;

/// A window closes after at least this many samples ...
pub const MIN_SAMPLES: u64 = 10;
/// ... or after this many window lengths with fewer.
const MAX_WINDOWS: u32 = 4;
/// `Retry-After` of a refused request, seconds.
pub const RETRY_AFTER: u64 = 1;

/// A request refused because the route had as many requests in flight as
/// its adaptive limit allows; never forwarded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("route is over its concurrency limit")]
pub struct ConcurrencyLimited {
    /// The route's `reject_status` (503 or 429).
    pub status: StatusCode,
    /// `Retry-After` seconds.
    pub retry_after: u64,
}

/// The typed marker of a refusal in the response extensions (put there by
/// [`crate::error::render`]), which telemetry turns into a span event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyRejected;

/// What the controller needs under its lock.
#[derive(Debug)]
struct Control {
    law: Gradient,
    /// When the current window started.
    started: Instant,
}

/// The state shared by every request of a route.
#[derive(Debug)]
struct Limiter {
    limit: AtomicUsize,
    inflight: AtomicUsize,
    /// The most in flight since the window started.
    peak: AtomicUsize,
    rejected: AtomicU64,
    samples: LatencyWindow,
    /// Nanoseconds after `epoch` when the current window may close.
    due: AtomicU64,
    epoch: Instant,
    window: Duration,
    quantile: f64,
    refused: ConcurrencyLimited,
    control: Mutex<Control>,
}

impl Limiter {
    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records one admitted request's latency; closes the window when due
    /// (whoever gets the lock; others go on at once).
    fn record(&self, latency: Duration, now: Instant) {
        self.samples.record(latency);
        if self.nanos(now) < self.due.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut c) = self.control.try_lock() else {
            return;
        };
        let elapsed = now.saturating_duration_since(c.started);
        if elapsed < self.window
            || (self.samples.count() < MIN_SAMPLES && elapsed < self.window * MAX_WINDOWS)
        {
            return;
        }
        let peak = self
            .peak
            .swap(self.inflight.load(Ordering::Relaxed), Ordering::Relaxed);
        if let Some((observed, n)) = self.samples.take(self.quantile) {
            let before = c.law.limit();
            let limit = c.law.update(observed, peak);
            self.limit.store(limit, Ordering::Relaxed);
            tracing::trace!(
                observed_ms = observed.as_secs_f64() * 1e3,
                samples = n,
                peak,
                before,
                limit,
                "concurrency window"
            );
        }
        c.started = now;
        self.due
            .store(self.nanos(now + self.window), Ordering::Relaxed);
    }
}

/// Limits a route's requests in flight to an adaptive limit aimed at a
/// latency target. Clones share the limit and the counts.
#[derive(Debug, Clone)]
pub struct ConcurrencyLayer {
    limiter: Arc<Limiter>,
    config: ConcurrencyConfig,
    target: Target,
}

impl ConcurrencyLayer {
    /// A limiter for a validated `config` aimed at `target`; the window
    /// is as long as the target's latency bound (100 ms to 1 s), so a
    /// window sees about one generation of requests.
    pub fn new(config: &ConcurrencyConfig, target: Target) -> Self {
        let law = Gradient::new(config.min, config.max, target.threshold);
        let window = target
            .threshold
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        let now = Instant::now();
        let status =
            StatusCode::from_u16(config.reject_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let limiter = Limiter {
            limit: AtomicUsize::new(law.limit()),
            inflight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
            samples: LatencyWindow::default(),
            due: AtomicU64::new(u64::try_from(window.as_nanos()).unwrap_or(u64::MAX)),
            epoch: now,
            window,
            quantile: target.quantile,
            refused: ConcurrencyLimited {
                status,
                retry_after: RETRY_AFTER,
            },
            control: Mutex::new(Control { law, started: now }),
        };
        Self {
            limiter: Arc::new(limiter),
            config: config.clone(),
            target,
        }
    }

    /// Whether this limiter was built from `config` and `target` (a
    /// reload keeps it, with its learned limit, when both are unchanged).
    pub fn is_for(&self, config: &ConcurrencyConfig, target: Target) -> bool {
        self.config == *config && self.target == target
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limiter.limit.load(Ordering::Relaxed)
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> usize {
        self.limiter.inflight.load(Ordering::Relaxed)
    }

    /// Whether both share one state.
    #[cfg(test)]
    pub(crate) fn same_state(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.limiter, &other.limiter)
    }

    /// Requests refused so far.
    pub fn rejected(&self) -> u64 {
        self.limiter.rejected.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for ConcurrencyLayer {
    type Service = Concurrency<S>;

    fn layer(&self, inner: S) -> Concurrency<S> {
        Concurrency {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// The adaptive concurrency middleware.
#[derive(Debug, Clone)]
pub struct Concurrency<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

/// An admitted request's slot: gives it back when dropped, and records
/// the request's latency unless that was done at its response head (a
/// request cancelled by the route timeout or the client counts with the
/// time it had taken: at least that slow).
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    start: Instant,
    recorded: bool,
}

impl Permit {
    fn record(&mut self) {
        if !self.recorded {
            self.recorded = true;
            let now = Instant::now();
            self.limiter
                .record(now.saturating_duration_since(self.start), now);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.record();
        self.limiter.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// The future of [`Concurrency`].
    #[project = Proj]
    pub enum ResponseFuture<F> {
        /// Admitted; the slot is given back with the response head (or
        /// with the tunnel, after a `101`).
        Admitted { #[pin] fut: F, permit: Option<Permit> },
        /// Refused.
        Refused { err: Option<ConcurrencyLimited> },
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Admitted { fut, permit } => {
                let out = std::task::ready!(fut.poll(cx)).map_err(Into::into);
                if let Some(mut p) = permit.take() {
                    p.record();
                    let lease = out
                        .as_ref()
                        .ok()
                        .filter(|r| r.status() == StatusCode::SWITCHING_PROTOCOLS)
                        .and_then(|r| r.extensions().get::<TunnelLease>());
                    match lease {
                        Some(lease) => lease.hold(p),
                        None => drop(p),
                    }
                }
                Poll::Ready(out)
            }
            Proj::Refused { err } => Poll::Ready(Err(match err.take() {
                Some(e) => e.into(),
                None => "polled after completion".into(),
            })),
        }
    }
}

impl<S> Service<Request<Body>> for Concurrency<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let l = &self.limiter;
        let prev = l.inflight.fetch_add(1, Ordering::AcqRel);
        if prev >= l.limit.load(Ordering::Relaxed) {
            l.inflight.fetch_sub(1, Ordering::AcqRel);
            l.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                limit = l.limit.load(Ordering::Relaxed),
                "refused: concurrency limit"
            );
            return ResponseFuture::Refused {
                err: Some(l.refused.clone()),
            };
        }
        l.peak.fetch_max(prev + 1, Ordering::Relaxed);
        let permit = Permit {
            limiter: l.clone(),
            start: Instant::now(),
            recorded: false,
        };
        ResponseFuture::Admitted {
            fut: self.inner.call(req),
            permit: Some(permit),
        }
    }
}
