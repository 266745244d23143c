//! Active health checks: one task per endpoint, stopped with its runtime.

use std::sync::Arc;

use http::{Request, Uri};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use super::h1::{self, Exchange};
use super::{Endpoint, InflightGuard, Upstream};
use crate::body::Body;

/// Consecutive-result counter deciding an endpoint's health.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    ok: u32,
    fail: u32,
}

impl Streak {
    /// Records one check result; returns the new health when it changes.
    pub fn record(&mut self, success: bool, healthy: bool, rise: u32, fall: u32) -> Option<bool> {
        if success {
            self.ok = self.ok.saturating_add(1);
            self.fail = 0;
            (!healthy && self.ok >= rise).then_some(true)
        } else {
            self.fail = self.fail.saturating_add(1);
            self.ok = 0;
            (healthy && self.fail >= fall).then_some(false)
        }
    }
}

/// Starts a checker for every endpoint of `upstream` if it has a health
/// check; the tasks end when `stop` is cancelled.
pub fn spawn_health_checks(upstream: &Arc<Upstream>, stop: &CancellationToken) {
    let Some(hc) = upstream.health_check.clone() else {
        return;
    };
    for ep in upstream.endpoints() {
        let ep = ep.clone();
        let up = upstream.clone();
        let stop = stop.clone();
        let hc = hc.clone();
        tokio::spawn(async move {
            let uri: Option<Uri> = hc.path.parse().ok();
            let Some(uri) = uri else { return };
            let mut streak = Streak::default();
            let mut ticker = tokio::time::interval(hc.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let ok = check(&up, &ep, &uri, hc.timeout).await;
                if let Some(h) = streak.record(
                    ok,
                    ep.is_healthy(),
                    hc.healthy_threshold,
                    hc.unhealthy_threshold,
                ) {
                    transition(&up, &ep, h);
                }
            }
        });
    }
}

fn transition(up: &Upstream, ep: &Endpoint, healthy: bool) {
    ep.set_healthy(healthy);
    if healthy {
        tracing::info!(upstream = %up.name, endpoint = %ep.authority, "endpoint healthy, back in rotation");
    } else {
        tracing::warn!(upstream = %up.name, endpoint = %ep.authority, "endpoint unhealthy, ejected");
    }
}

async fn check(up: &Upstream, ep: &Arc<Endpoint>, uri: &Uri, timeout: std::time::Duration) -> bool {
    let mut req = Request::new(Body::Empty);
    *req.uri_mut() = uri.clone();
    req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("gateway-health-check"),
    );
    let guard = InflightGuard::new(ep.clone());
    // A check never queues at `max_connections` (as Envoy's, it is not
    // subject to the pool's limits): an endpoint busy at its cap is not
    // thereby unhealthy. A connection it opens past the cap counts while
    // open and is closed after the check.
    let pool = h1::PoolConfig {
        bypass_limit: true,
        ..up.pool
    };
    let exchange = async {
        match h1::send(guard, pool, &up.timers, req, &h1::Plain).await {
            Ok(Exchange::Response(resp)) => {
                let s = resp.status();
                // Drain the body so the connection can be reused.
                resp.into_body().collect().await.is_ok() && (s.is_success() || s.is_redirection())
            }
            _ => false,
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_decide_transitions() {
        let mut s = Streak::default();
        // Healthy endpoint, fall = 3.
        assert_eq!(s.record(false, true, 2, 3), None);
        assert_eq!(s.record(false, true, 2, 3), None);
        assert_eq!(s.record(false, true, 2, 3), Some(false));
        // Unhealthy, rise = 2; a failure in between resets the streak.
        assert_eq!(s.record(true, false, 2, 3), None);
        assert_eq!(s.record(false, false, 2, 3), None);
        assert_eq!(s.record(true, false, 2, 3), None);
        assert_eq!(s.record(true, false, 2, 3), Some(true));
        // No transition reported while the state already matches.
        assert_eq!(s.record(true, true, 2, 3), None);
    }
}
