//! Injected latency that is exact to well under a millisecond.
//!
//! tokio's timer wheel has a 1 ms resolution: it rounds a deadline up to the next tick and
//! its worker threads wake through millisecond `epoll_wait` timeouts, so a "fixed 50 ms"
//! sleep ends 50 to 56 ms later, which hides a 1 ms measurement error of a load generator.
//! [`sleep`] sleeps on tokio until [`MARGIN`] before the deadline (cheap, any number of
//! tasks), then hands the last stretch to one dedicated timer thread that keeps every
//! pending deadline in a heap and waits for the earliest with a nanosecond-resolution
//! futex timeout (`mpsc::Receiver::recv_timeout`), then completes the task's oneshot. No
//! task spins; the thread wakes only for deadlines and new registrations.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// How long before the deadline the tokio sleep ends and the timer thread takes over:
/// more than the timer wheel's rounding (1 ms) plus its wake-up jitter.
const MARGIN: Duration = Duration::from_millis(3);

/// One pending deadline; ordered by deadline, then by registration order.
struct Entry {
    deadline: Instant,
    seq: u64,
    done: oneshot::Sender<()>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

/// A registration: the deadline and whom to wake.
type Registration = (Instant, oneshot::Sender<()>);

/// The registration side of the timer thread, started on first use; `None` when the
/// thread could not be spawned (then [`sleep`] falls back to tokio alone).
fn thread() -> Option<&'static mpsc::Sender<Registration>> {
    static TX: OnceLock<Option<mpsc::Sender<Registration>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("mock-precise-timer".into())
            .spawn(move || run(&rx))
            .ok()
            .map(|_| tx)
    })
    .as_ref()
}

/// The timer thread: waits for the earliest deadline or a new registration, whichever
/// comes first, and completes every deadline that has passed.
fn run(rx: &mpsc::Receiver<Registration>) {
    let mut heap: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(e)| e.deadline <= now) {
            if let Some(Reverse(e)) = heap.pop() {
                // The task may be gone (connection closed): nothing to wake then.
                let _ = e.done.send(());
            }
        }
        let next = match heap.peek() {
            Some(Reverse(e)) => rx.recv_timeout(e.deadline.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok((deadline, done)) => {
                seq += 1;
                heap.push(Reverse(Entry {
                    deadline,
                    seq,
                    done,
                }));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Sleeps for `delay` with sub-millisecond accuracy (see the module documentation).
pub(crate) async fn sleep(delay: Duration) {
    let deadline = Instant::now() + delay;
    if delay > MARGIN {
        tokio::time::sleep_until(deadline - MARGIN).await;
    }
    if Instant::now() >= deadline {
        return;
    }
    let (done, wait) = oneshot::channel();
    match thread() {
        Some(tx) if tx.send((deadline, done)).is_ok() => {
            if wait.await.is_err() {
                tokio::time::sleep_until(deadline).await;
            }
        }
        _ => tokio::time::sleep_until(deadline).await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn never_early_and_ordered() {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for ms in [7u64, 1, 4, 0, 12] {
            tasks.push(tokio::spawn(async move {
                let d = Duration::from_millis(ms);
                let t = Instant::now();
                sleep(d).await;
                assert!(t.elapsed() >= d, "{ms} ms ended early: {:?}", t.elapsed());
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(start.elapsed() >= Duration::from_millis(12));
    }
}
