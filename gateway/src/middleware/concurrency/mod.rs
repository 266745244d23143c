//! Adaptive concurrency aimed at the route's latency objective.
//!
//! `concurrency = { mode = "adaptive", target = "p95<=350ms", min = 4, max = 1024 }`
//! on a route admits a request only while fewer than the current limit are
//! in flight (one atomic add and compare); beyond it the request is
//! refused at once with `reject_status` (503, or 429) and `Retry-After`,
//! never forwarded. The limit follows the latency of admitted requests
//! (time to response head): once per window ([`window`], about as long as
//! the target's bound) the window's quantile is compared with the target
//! and [`control::Gradient`] grows the limit by a headroom of
//! `sqrt(limit)` while it is met, or shrinks it in proportion when not.
//!
//! Unlike a minimum-RTT gradient (Envoy's adaptive concurrency filter,
//! Netflix's gradient2), the reference is the SLO, not a measured
//! baseline: there is no probe window that pins concurrency to re-measure
//! it, so no burst of 503s every few minutes and no baseline that creeps
//! with load.
//!
//! ```
//! use gateway::config::concurrency::{ConcurrencyConfig, Target};
//! use gateway::middleware::concurrency::ConcurrencyLayer;
//!
//! let config: ConcurrencyConfig = toml::from_str(r#"mode = "adaptive""#).unwrap();
//! let layer = ConcurrencyLayer::new(&config, Target::parse("p95<=350ms").unwrap());
//! assert_eq!(layer.limit(), 64); // geometric mean of min 4 and max 1024
//! assert_eq!(layer.inflight(), 0);
//! ```

pub mod control;
mod service;
pub mod window;

use std::collections::BTreeMap;

pub use service::{
    Concurrency, ConcurrencyLayer, ConcurrencyLimited, ConcurrencyRejected, Permit, ResponseFuture,
    MIN_SAMPLES, RETRY_AFTER,
};

use crate::config::Config;

/// The limiters of every route with `concurrency`, by route name, from a
/// validated config; a route whose settings and target are unchanged
/// keeps its limiter from `previous` (its learned limit, and the slots of
/// requests still in flight).
pub fn build(
    config: &Config,
    previous: Option<&BTreeMap<String, ConcurrencyLayer>>,
) -> BTreeMap<String, ConcurrencyLayer> {
    config
        .routes
        .iter()
        .filter_map(|r| {
            let c = r.concurrency.as_ref()?;
            let target = c.target(&r.name, &config.slos).ok()?;
            let kept = previous
                .and_then(|p| p.get(&r.name))
                .filter(|l| l.is_for(c, target))
                .cloned();
            Some((
                r.name.clone(),
                kept.unwrap_or_else(|| ConcurrencyLayer::new(c, target)),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use http::{Request, Response, StatusCode};
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::body::Body;
    use crate::config::concurrency::{ConcurrencyConfig, Target};
    use crate::error::BoxError;
    use crate::proxy::tunnel::TunnelLease;

    fn config(min: usize, max: usize) -> ConcurrencyConfig {
        toml::from_str(&format!("mode = \"adaptive\"\nmin = {min}\nmax = {max}")).unwrap()
    }

    /// An upstream of `servers` that takes `base × max(1, inflight/servers)`
    /// (fixed at arrival); counts the requests it received.
    #[derive(Clone)]
    struct Queue {
        inflight: Arc<AtomicUsize>,
        hits: Arc<AtomicU64>,
        servers: usize,
        base: Duration,
    }

    impl Queue {
        fn new(servers: usize, base_ms: u64) -> Self {
            Self {
                inflight: Arc::default(),
                hits: Arc::default(),
                servers,
                base: Duration::from_millis(base_ms),
            }
        }
        fn service(
            &self,
        ) -> impl tower::Service<
            Request<Body>,
            Response = Response<Body>,
            Error = BoxError,
            Future = impl Send,
        > + Clone {
            let q = self.clone();
            tower::service_fn(move |_r: Request<Body>| {
                let q = q.clone();
                async move {
                    q.hits.fetch_add(1, Ordering::SeqCst);
                    let n = q.inflight.fetch_add(1, Ordering::SeqCst) + 1;
                    let d = q.base.mul_f64((n as f64 / q.servers as f64).max(1.0));
                    tokio::time::sleep(d).await;
                    q.inflight.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, BoxError>(Response::new(Body::Empty))
                }
            })
        }
    }

    /// Offers `rate` requests/s for `secs`; returns (admitted, refused).
    async fn drive<S>(svc: &S, rate: u64, secs: u64) -> (u64, u64)
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>
            + Clone
            + Send
            + 'static,
        S::Future: Send,
    {
        let ok = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        let gap = Duration::from_secs(1) / u32::try_from(rate).unwrap();
        for _ in 0..rate * secs {
            let svc = svc.clone();
            let (ok, refused) = (ok.clone(), refused.clone());
            tasks.push(tokio::spawn(async move {
                match svc.oneshot(Request::new(Body::Empty)).await {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        assert!(e.is::<ConcurrencyLimited>(), "{e}");
                        refused.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }));
            tokio::time::sleep(gap).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        (ok.load(Ordering::SeqCst), refused.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn refused_requests_never_reach_the_inner_service() {
        let q = Queue::new(100, 1000);
        let layer = ConcurrencyLayer::new(&config(2, 2), Target::parse("p95<=5s").unwrap());
        let svc = layer.layer(q.service());
        let a = tokio::spawn(svc.clone().oneshot(Request::new(Body::Empty)));
        let b = tokio::spawn(svc.clone().oneshot(Request::new(Body::Empty)));
        tokio::task::yield_now().await;
        assert_eq!(layer.inflight(), 2);
        let err = svc
            .clone()
            .oneshot(Request::new(Body::Empty))
            .await
            .unwrap_err();
        let refused = err.downcast_ref::<ConcurrencyLimited>().unwrap();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.retry_after, 1);
        assert_eq!(q.hits.load(Ordering::SeqCst), 2);
        assert_eq!(layer.rejected(), 1);
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        assert_eq!(layer.inflight(), 0);
        svc.oneshot(Request::new(Body::Empty)).await.unwrap();
        assert_eq!(q.hits.load(Ordering::SeqCst), 3);
    }

    /// Overload (3× the queue's capacity): the limit falls from its
    /// start, admitted latency settles near the aim (under the target),
    /// then with the load gone to what the queue serves at its base
    /// latency it recovers upward.
    #[tokio::test(start_paused = true)]
    async fn converges_down_under_overload_and_back_up_after() {
        // 5 servers × 50 ms: 100 req/s; at the aim (315 ms) ~31 in flight,
        // half the limit it starts with.
        let q = Queue::new(5, 50);
        let layer = ConcurrencyLayer::new(&config(4, 1024), Target::parse("p95<=350ms").unwrap());
        let svc = layer.layer(q.service());
        // A short warm-up at full use lets it grow first.
        let (_, _) = drive(&svc, 100, 3).await;
        let start = layer.limit();
        assert_eq!(start, 64);
        let (ok, refused) = drive(&svc, 300, 10).await;
        let over = layer.limit();
        assert!(refused > 0, "no request refused at 3x");
        // Goodput near capacity: ~100 req/s admitted.
        assert!(ok >= 750, "admitted {ok}");
        assert!(
            (20..=45).contains(&over),
            "limit {over} (started at {start})"
        );
        // After: 20 clients in a loop, fewer than the queue holds at the
        // aim (latency 200 ms) but enough to use the limit: it grows.
        let end = tokio::time::Instant::now() + Duration::from_secs(6);
        let loops: Vec<_> = (0..20)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    while tokio::time::Instant::now() < end {
                        if svc
                            .clone()
                            .oneshot(Request::new(Body::Empty))
                            .await
                            .is_err()
                        {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                })
            })
            .collect();
        for l in loops {
            l.await.unwrap();
        }
        assert!(layer.limit() > over, "{} <= {over}", layer.limit());
        // Light load (in flight far under the limit): it holds, rather
        // than drift to max while nothing tests it.
        let held = layer.limit();
        let (ok2, refused2) = drive(&svc, 20, 4).await;
        assert_eq!(refused2, 0);
        assert!(ok2 > 0);
        assert_eq!(layer.limit(), held);
    }

    /// A `101` carrying a tunnel lease keeps its slot until the lease ends.
    #[tokio::test]
    async fn an_upgrade_keeps_its_slot_in_the_tunnel_lease() {
        let lease = TunnelLease::default();
        let l = lease.clone();
        let inner = tower::service_fn(move |_r: Request<Body>| {
            let mut resp = Response::new(Body::Empty);
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            resp.extensions_mut().insert(l.clone());
            std::future::ready(Ok::<_, BoxError>(resp))
        });
        let layer = ConcurrencyLayer::new(&config(1, 1), Target::parse("p95<=1s").unwrap());
        let svc = layer.layer(inner);
        drop(
            svc.clone()
                .oneshot(Request::new(Body::Empty))
                .await
                .unwrap(),
        );
        assert_eq!(layer.inflight(), 1);
        assert!(svc
            .clone()
            .oneshot(Request::new(Body::Empty))
            .await
            .is_err());
        lease.release_for_test();
        assert_eq!(layer.inflight(), 0);
    }

    #[test]
    fn a_reload_keeps_an_unchanged_limiter() {
        let toml = |max: u32| {
            format!(
                "[upstreams.u]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\nconcurrency = {{ mode = \"adaptive\", max = {max} }}\n"
            )
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let a = Config::from_toml(&toml(1024)).unwrap();
            let first = build(&a, None);
            let same = build(&a, Some(&first));
            assert!(first["r"].same_state(&same["r"]));
            let b = Config::from_toml(&toml(512)).unwrap();
            let changed = build(&b, Some(&first));
            assert!(!first["r"].same_state(&changed["r"]));
        });
    }
}
