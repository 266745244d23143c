//! A mock whose latency rises with its own concurrency: `--capacity N
//! --base-latency 20ms` serves N requests at once, each taking the base
//! latency, and queues the rest in arrival order (a FIFO semaphore). So
//! latency is `base` while at most N are in flight, and grows by `base`
//! for every N queued before a request: the upstream of an overload test,
//! whose throughput is at most `N / base` however many it is sent.
//!
//! Applies to every counted request (not `/_mock`), after faults and
//! latency rules, before the route answers.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::options::ParseError;

/// `--capacity N --base-latency D`: at most `servers` requests served at
/// once, each for `base_latency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Requests served at once (at least 1).
    pub servers: usize,
    /// How long each is served.
    pub base_latency: Duration,
}

impl FromStr for Capacity {
    type Err = ParseError;

    /// Parses `N@D`, e.g. `8@50ms` (the CLI's two flags in one).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (n, d) = s
            .split_once('@')
            .ok_or(ParseError::Invalid("capacity: expected N@DURATION"))?;
        let servers: usize = n
            .trim()
            .parse()
            .map_err(|_| ParseError::Invalid("capacity: N must be a whole number"))?;
        if servers == 0 {
            return Err(ParseError::Invalid("capacity: N must be at least 1"));
        }
        let base_latency = humantime::parse_duration(d.trim())
            .map_err(|e| ParseError::Duration(d.to_owned(), e))?;
        Ok(Self {
            servers,
            base_latency,
        })
    }
}

/// The servers and their queue.
#[derive(Debug)]
pub(crate) struct Station {
    servers: Semaphore,
    base: Duration,
    /// Requests served or waiting now.
    present: AtomicUsize,
}

impl Station {
    pub(crate) fn new(c: Capacity) -> Self {
        Self {
            servers: Semaphore::new(c.servers.max(1)),
            base: c.base_latency,
            present: AtomicUsize::new(0),
        }
    }

    /// Waits for a server, then is served for the base latency. A request
    /// dropped while waiting (its client left) leaves the queue.
    pub(crate) async fn serve(&self) {
        self.present.fetch_add(1, Relaxed);
        let _left = Left(&self.present);
        if let Ok(_permit) = self.servers.acquire().await {
            tokio::time::sleep(self.base).await;
        }
    }

    /// Requests served or waiting now.
    #[cfg(test)]
    pub(crate) fn present(&self) -> usize {
        self.present.load(Relaxed)
    }
}

struct Left<'a>(&'a AtomicUsize);

impl Drop for Left<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    #[test]
    fn parses() {
        let c: Capacity = "8@50ms".parse().unwrap();
        assert_eq!((c.servers, c.base_latency), (8, Duration::from_millis(50)));
        assert!("0@50ms".parse::<Capacity>().is_err());
        assert!("8".parse::<Capacity>().is_err());
        assert!("x@1s".parse::<Capacity>().is_err());
    }

    /// Three times the servers: the last third waits two base latencies
    /// (real time: lower bounds exact, upper bounds generous).
    #[tokio::test]
    async fn latency_rises_with_concurrency() {
        let s = Arc::new(Station::new(Capacity {
            servers: 2,
            base_latency: Duration::from_millis(40),
        }));
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.serve().await;
                    start.elapsed()
                })
            })
            .collect();
        let mut took = Vec::new();
        for t in tasks {
            took.push(t.await.unwrap());
        }
        took.sort_unstable();
        for (i, t) in took.iter().enumerate() {
            let want = Duration::from_millis(40 * (i as u64 / 2 + 1));
            assert!(
                *t >= want && *t < want + Duration::from_millis(400),
                "{took:?}"
            );
        }
        assert_eq!(s.present(), 0);
    }
}
