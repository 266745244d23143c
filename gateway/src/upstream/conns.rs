//! How many connections each endpoint has open, the cap on them, and the
//! background reaper of idle connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Upstream;

/// Open connections of one endpoint (busy, idle and tunnelled), and the
/// wake-up of requests waiting for one at `max_connections`.
#[derive(Debug, Default)]
pub struct ConnCount {
    open: AtomicUsize,
    released: Notify,
}

impl ConnCount {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A slot for one more connection, if fewer than `max` are open. A
    /// compare-and-swap loop, not a fetch_add: a refused attempt never
    /// inflates the count, so it never makes another one fail.
    pub(super) fn try_reserve(self: &Arc<Self>, max: usize) -> Option<ConnSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(ConnSlot {
            count: self.clone(),
            spare: false,
        })
    }

    /// A slot whatever the count (health checks). One taken at or past
    /// `max` is spare: its connection is closed after use, never pooled,
    /// so requests never reuse a connection beyond the cap.
    pub(super) fn reserve_past(self: &Arc<Self>, max: usize) -> ConnSlot {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        ConnSlot {
            count: self.clone(),
            spare: before >= max,
        }
    }

    /// Completes when a connection came back to the idle pool or closed
    /// (after [`Notified::enable`], also for a release before the await).
    pub(super) fn released(&self) -> Notified<'_> {
        self.released.notified()
    }
}

/// One connection counted against its endpoint until dropped.
#[derive(Debug)]
pub struct ConnSlot {
    count: Arc<ConnCount>,
    spare: bool,
}

impl ConnSlot {
    /// Wakes one request waiting at the cap: this connection is going back
    /// to the idle pool. Lock-free when nobody waits.
    pub(super) fn wake_one(&self) {
        self.count.released.notify_one();
    }

    /// Taken past the cap (see [`ConnCount::reserve_past`]): not to be pooled.
    pub(super) fn is_spare(&self) -> bool {
        self.spare
    }

    /// A slot of a counter of its own (tests).
    #[cfg(test)]
    pub(super) fn detached() -> Self {
        Arc::new(ConnCount::default()).reserve_past(usize::MAX)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.count.open.fetch_sub(1, Ordering::AcqRel);
        self.wake_one();
    }
}

/// How often the reaper runs: half the idle timeout, within [1 s, 30 s].
pub fn reap_period(idle_timeout: Duration) -> Duration {
    (idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Starts the idle-connection reaper of `upstream`: every [`reap_period`]
/// it closes the pooled connections of every endpoint that outlived
/// `pool_idle_timeout` or that the upstream closed, so none lingers until
/// the next request happens to take it. Ends when `stop` is cancelled
/// (reload or shutdown), like the health checkers.
pub fn spawn_reaper(upstream: &Arc<Upstream>, stop: &CancellationToken) {
    let up = upstream.clone();
    let stop = stop.clone();
    tokio::spawn(async move {
        let idle_timeout = up.pool.idle_timeout;
        let mut ticker = tokio::time::interval(reap_period(idle_timeout));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            for ep in up.endpoints() {
                let n = ep.idle.reap(idle_timeout);
                if n > 0 {
                    tracing::debug!(upstream = %up.name, endpoint = %ep.authority, closed = n, "idle connections reaped");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reap_period_is_half_the_idle_timeout_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(reap_period(s(90)), s(30));
        assert_eq!(reap_period(s(20)), s(10));
        assert_eq!(reap_period(s(1)), s(1));
        assert_eq!(reap_period(Duration::from_millis(10)), s(1));
        assert_eq!(reap_period(s(3600)), s(30));
    }

    #[test]
    fn slots_count_until_dropped_and_never_exceed_the_cap() {
        let c = Arc::new(ConnCount::default());
        let a = c.try_reserve(2).unwrap();
        let b = c.try_reserve(2).unwrap();
        assert_eq!(c.open(), 2);
        // Refused attempts leave the count alone.
        for _ in 0..3 {
            assert!(c.try_reserve(2).is_none());
        }
        assert_eq!(c.open(), 2);
        drop(a);
        assert_eq!(c.open(), 1);
        let _c = c.try_reserve(2).unwrap();
        drop(b);
        assert_eq!(c.open(), 1);
        // Past the cap only for health checks, and then spare.
        let _d = c.try_reserve(2).unwrap();
        let past = c.reserve_past(2);
        assert!(past.is_spare());
        assert_eq!(c.open(), 3);
        drop(past);
        assert!(!c.reserve_past(3).is_spare());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_slot_wakes_a_waiter() {
        let c = Arc::new(ConnCount::default());
        let slot = c.try_reserve(1).unwrap();
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move {
                let released = c.released();
                tokio::pin!(released);
                released.as_mut().enable();
                if let Some(s) = c.try_reserve(1) {
                    return Some(s);
                }
                released.await;
                c.try_reserve(1)
            })
        };
        tokio::task::yield_now().await;
        drop(slot);
        let got = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(got.is_some());
        assert_eq!(c.open(), 1);
    }
}
