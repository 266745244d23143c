//! Recycled timers for per-request deadlines.
//!
//! A tokio timer costs little to create but much to arm and to drop: its
//! first poll takes the timer driver's lock and files it in the wheel, and
//! dropping it takes the lock again to unlink it. A proxied request had two
//! (hyper's header-read deadline and the upstream response deadline), about
//! 5 % of the gateway's user-space instructions per request. Moving an armed
//! timer's deadline *later* is cheap (one atomic update; the wheel re-files
//! the entry when its old slot comes up). Deadlines here are "now + a fixed
//! timeout", so each one is later than the last: a [`SleepPool`] keeps
//! armed timers when a request is done with them and hands them out again
//! with the new deadline.
//!
//! The price: an idle pooled timer still holds the waker of the task that
//! last polled it. If it is not reused before its old deadline, it fires
//! once and wakes that task for nothing (a connection then finds nothing to
//! read), and until then that task's allocation stays alive. Both are
//! bounded by [`MAX_POOLED`] timers per pool and by the longest timeout.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Armed timers kept per pool; beyond this, a finished timer is dropped.
pub const MAX_POOLED: usize = 256;

/// Armed timers waiting for their next deadline. A pool belongs to one
/// runtime (its timers are filed in that runtime's wheel): create it, and
/// use it, from tasks of the runtime that serves the requests.
#[derive(Debug, Default)]
pub struct SleepPool {
    free: Mutex<Vec<Pin<Box<Sleep>>>>,
}

impl SleepPool {
    /// An empty pool.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A timer that fires at `deadline`: a pooled one moved there, or a new
    /// one. Must be called within a tokio runtime with time enabled.
    pub fn sleep_until(self: &Arc<Self>, deadline: Instant) -> PooledSleep {
        let pooled = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let sleep = match pooled {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        PooledSleep {
            sleep: Some(sleep),
            pool: self.clone(),
        }
    }

    /// Runs `fut` for at most `timeout` from `start`: its output, or
    /// `Err(Elapsed)` when the deadline passes first (the future is then
    /// dropped). Like `tokio::time::timeout`, with a pooled timer.
    pub async fn timeout<F: Future>(
        self: &Arc<Self>,
        start: Instant,
        timeout: Duration,
        fut: F,
    ) -> Result<F::Output, Elapsed> {
        let mut fut = pin!(fut);
        let mut sleep = self.sleep_until(start + timeout);
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            Pin::new(&mut sleep).poll(cx).map(|()| Err(Elapsed))
        })
        .await
    }

    /// Armed timers currently pooled.
    pub fn len(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no timer is pooled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// A timer from a [`SleepPool`]; it goes back to the pool when dropped.
#[derive(Debug)]
pub struct PooledSleep {
    /// `None` only while dropping.
    sleep: Option<Pin<Box<Sleep>>>,
    pool: Arc<SleepPool>,
}

impl PooledSleep {
    /// Moves the deadline (cheap when it moves later).
    pub fn reset(&mut self, deadline: Instant) {
        if let Some(sleep) = &mut self.sleep {
            sleep.as_mut().reset(deadline);
        }
    }
}

impl Future for PooledSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for PooledSleep {
    fn drop(&mut self) {
        let Some(sleep) = self.sleep.take() else {
            return;
        };
        let mut free = self
            .pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if free.len() < MAX_POOLED {
            free.push(sleep);
        }
    }
}

/// hyper's timer on a [`SleepPool`]: the HTTP/1 header-read deadline,
/// armed per request, reuses armed timers.
#[derive(Debug, Clone)]
pub struct PooledTimer(Arc<SleepPool>);

impl PooledTimer {
    /// A timer with its own pool.
    pub fn new() -> Self {
        Self(SleepPool::new())
    }
}

impl Default for PooledTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl hyper::rt::Sleep for PooledSleep {}

// hyper's trait speaks std's `Instant`; each one is converted to tokio's at
// once, so paused test time still applies.
#[allow(clippy::disallowed_types)]
impl hyper::rt::Timer for PooledTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.0.sleep_until(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.0.sleep_until(deadline.into()))
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<PooledSleep>() {
            Some(pooled) => Pin::into_inner(pooled).reset(new_deadline.into()),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pooled_timer_fires_at_its_new_deadline() {
        let pool = SleepPool::new();
        let start = Instant::now();
        pool.sleep_until(start + Duration::from_secs(1)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(pool.len(), 1, "the timer went back to the pool");
        // Reused (the pool still holds one), moved 5 s on: it fires then,
        // not at its old, already passed deadline.
        let again = Instant::now();
        pool.sleep_until(again + Duration::from_secs(5)).await;
        assert_eq!(again.elapsed(), Duration::from_secs(5));
        assert_eq!(pool.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_armed_timer_moved_later_does_not_fire_early() {
        let pool = SleepPool::new();
        let start = Instant::now();
        // Armed (polled once) with a 10 s deadline, then returned unfired.
        {
            let mut s = pool.sleep_until(start + Duration::from_secs(10));
            assert!(futures_util::poll!(&mut s).is_pending());
        }
        // Handed out again with a later deadline: the cheap, extend-only path.
        let s = pool.sleep_until(start + Duration::from_secs(30));
        assert_eq!(pool.len(), 0);
        s.await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_is_honoured_too() {
        let pool = SleepPool::new();
        let start = Instant::now();
        {
            let mut s = pool.sleep_until(start + Duration::from_secs(60));
            assert!(futures_util::poll!(&mut s).is_pending());
        }
        pool.sleep_until(start + Duration::from_secs(2)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_returns_the_output_or_elapsed() {
        let pool = SleepPool::new();
        let start = Instant::now();
        let fast = pool.timeout(start, Duration::from_secs(2), async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            7
        });
        assert_eq!(fast.await, Ok(7));
        let start = Instant::now();
        let slow = pool.timeout(start, Duration::from_secs(2), async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            7
        });
        assert_eq!(slow.await, Err(Elapsed));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_pool_is_bounded() {
        let pool = SleepPool::new();
        let deadline = Instant::now() + Duration::from_secs(1);
        let held: Vec<_> = (0..MAX_POOLED + 10)
            .map(|_| pool.sleep_until(deadline))
            .collect();
        drop(held);
        assert_eq!(pool.len(), MAX_POOLED);
    }

    #[tokio::test(start_paused = true)]
    async fn hyper_timer_sleeps_and_resets() {
        use hyper::rt::Timer;
        let timer = PooledTimer::new();
        let start = Instant::now();
        let mut s = timer.sleep(Duration::from_secs(1));
        timer.reset(&mut s, timer.now() + Duration::from_secs(4));
        s.await;
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }
}
