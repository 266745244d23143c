//! An open-model load driver that records every request: when it started (from the start
//! of the run), how long it took, its status and which upstream answered. Scenarios judge
//! the records against the times of their faults, which loadgen's aggregates cannot do
//! (which requests were in flight at a signal, which failed after a restart).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status (and its whole body).
    Status(u16),
    /// The connection could not be made (never reached the server).
    Connect,
    /// No response within the driver's timeout.
    Timeout,
    /// Any other transport error (reset, closed without a response, ...).
    Transport,
}

/// One request.
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    /// When it was sent, from the start of the run.
    pub start: Duration,
    /// How long until its body was complete (or it failed).
    pub lat: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// First byte of the `x-upstream-id` header (0 when absent).
    pub upstream: u8,
    /// Index of its path in [`OpenLoad::paths`].
    pub path: u8,
}

impl Rec {
    /// When it ended, from the start of the run.
    pub fn end(&self) -> Duration {
        self.start + self.lat
    }

    /// The status, 0 for a transport failure.
    pub fn status(&self) -> u16 {
        match self.outcome {
            Outcome::Status(s) => s,
            _ => 0,
        }
    }

    /// A 2xx or 3xx answer.
    pub fn ok(&self) -> bool {
        (200..400).contains(&self.status())
    }

    /// Whether it was in flight at `t` (sent before, ended after).
    pub fn in_flight_at(&self, t: Duration) -> bool {
        self.start < t && self.end() > t
    }

    /// Latency in ms.
    pub fn ms(&self) -> f64 {
        self.lat.as_secs_f64() * 1000.0
    }
}

/// An open-model load: `rate` requests per second, whatever the latency, for `duration`,
/// cycling through `paths`.
#[derive(Debug, Clone)]
pub struct OpenLoad {
    /// The gateway's proxy listener.
    pub addr: SocketAddr,
    /// Paths requested in turn.
    pub paths: Vec<String>,
    /// Requests per second.
    pub rate: f64,
    /// How long requests are started.
    pub duration: Duration,
    /// Bound on one request.
    pub timeout: Duration,
}

/// A load that is running.
#[derive(Debug)]
pub struct Running {
    /// Start of the run (every [`Rec::start`] is from here).
    pub t0: Instant,
    handle: JoinHandle<Vec<Rec>>,
}

impl Running {
    /// Time since the start.
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Sleeps until `at` from the start.
    pub async fn until(&self, at: Duration) {
        tokio::time::sleep_until(self.t0 + at).await;
    }

    /// Waits for every request to end; the records in start order.
    pub async fn finish(self) -> super::Res<Vec<Rec>> {
        let mut recs = self
            .handle
            .await
            .map_err(|e| format!("load driver failed: {e}"))?;
        recs.sort_by_key(|r| r.start);
        Ok(recs)
    }
}

/// A keep-alive HTTP/1.1 client that never re-sends a request on its own (so every
/// failure the gateway causes is seen).
pub fn strict_client() -> Client<HttpConnector, Empty<Bytes>> {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .retry_canceled_requests(false)
        .pool_idle_timeout(Duration::from_secs(20))
        .build(conn)
}

/// Starts `load` in the background.
pub fn start(load: OpenLoad) -> Running {
    let t0 = Instant::now();
    let handle = tokio::spawn(async move {
        let client = strict_client();
        let uris: Vec<String> = load
            .paths
            .iter()
            .map(|p| format!("http://{}{p}", load.addr))
            .collect();
        let (tx, mut rx) = mpsc::unbounded_channel();
        const TICK: Duration = Duration::from_millis(2);
        let per_tick = load.rate * TICK.as_secs_f64();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let (mut due, mut n) = (0.0_f64, 0_usize);
        while t0.elapsed() < load.duration {
            tick.tick().await;
            due += per_tick;
            while due >= 1.0 {
                due -= 1.0;
                let path = n % uris.len().max(1);
                n += 1;
                let (client, tx, timeout) = (client.clone(), tx.clone(), load.timeout);
                let uri = uris.get(path).cloned().unwrap_or_default();
                tokio::spawn(async move {
                    let rec = one(&client, uri, t0, timeout, path as u8).await;
                    let _ = tx.send(rec);
                });
            }
        }
        drop(tx);
        let mut recs = Vec::with_capacity(n);
        while let Some(r) = rx.recv().await {
            recs.push(r);
        }
        recs
    });
    Running { t0, handle }
}

async fn one(
    client: &Client<HttpConnector, Empty<Bytes>>,
    uri: String,
    t0: Instant,
    timeout: Duration,
    path: u8,
) -> Rec {
    let begun = Instant::now();
    let start = begun.duration_since(t0);
    let res = tokio::time::timeout(timeout, async {
        let req = Request::get(uri)
            .body(Empty::new())
            .map_err(|_| Outcome::Transport)?;
        let resp = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                Outcome::Connect
            } else {
                Outcome::Transport
            }
        })?;
        let status = resp.status().as_u16();
        let upstream = resp
            .headers()
            .get("x-upstream-id")
            .and_then(|v| v.as_bytes().first().copied())
            .unwrap_or(0);
        resp.into_body()
            .collect()
            .await
            .map_err(|_| Outcome::Transport)?;
        Ok::<_, Outcome>((status, upstream))
    })
    .await;
    let (outcome, upstream) = match res {
        Ok(Ok((s, u))) => (Outcome::Status(s), u),
        Ok(Err(o)) => (o, 0),
        Err(_) => (Outcome::Timeout, 0),
    };
    Rec {
        start,
        lat: begun.elapsed(),
        outcome,
        upstream,
        path,
    }
}

/// The `q` quantile (0..=1) of `values` in ms, `None` when empty.
pub fn quantile(mut values: Vec<f64>, q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let idx = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    values.get(idx).copied()
}

/// p99 in ms of the records `keep` selects.
pub fn p99<'a>(
    recs: impl IntoIterator<Item = &'a Rec>,
    keep: impl Fn(&Rec) -> bool,
) -> Option<f64> {
    quantile(
        recs.into_iter().filter(|r| keep(r)).map(Rec::ms).collect(),
        0.99,
    )
}

/// Seconds as a [`Duration`] for figures.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Counts per outcome, for figures: `{"200": 1234, "503": 5, "connect": 2}`.
pub fn outcomes<'a>(recs: impl IntoIterator<Item = &'a Rec>) -> serde_json::Value {
    let mut m = std::collections::BTreeMap::<String, u64>::new();
    for r in recs {
        let k = match r.outcome {
            Outcome::Status(s) => s.to_string(),
            Outcome::Connect => "connect error".into(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Transport => "transport error".into(),
        };
        *m.entry(k).or_default() += 1;
    }
    serde_json::json!(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(start_ms: u64, lat_ms: u64, outcome: Outcome) -> Rec {
        Rec {
            start: Duration::from_millis(start_ms),
            lat: Duration::from_millis(lat_ms),
            outcome,
            upstream: 0,
            path: 0,
        }
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(v.clone(), 0.99), Some(99.0));
        assert_eq!(quantile(v.clone(), 0.5), Some(50.0));
        assert_eq!(quantile(v.clone(), 1.0), Some(100.0));
        assert_eq!(quantile(v, 0.0), Some(1.0));
        assert_eq!(quantile(vec![7.0], 0.99), Some(7.0));
        assert_eq!(quantile(Vec::new(), 0.99), None);
    }

    #[test]
    fn in_flight_means_sent_before_and_ended_after() {
        let t = Duration::from_millis(100);
        assert!(rec(50, 100, Outcome::Status(200)).in_flight_at(t));
        assert!(
            !rec(50, 40, Outcome::Status(200)).in_flight_at(t),
            "ended before"
        );
        assert!(
            !rec(100, 10, Outcome::Status(200)).in_flight_at(t),
            "sent at the event"
        );
        assert!(
            !rec(150, 10, Outcome::Transport).in_flight_at(t),
            "sent after"
        );
    }

    #[test]
    fn only_2xx_and_3xx_are_ok() {
        assert!(rec(0, 1, Outcome::Status(200)).ok());
        assert!(rec(0, 1, Outcome::Status(304)).ok());
        assert!(!rec(0, 1, Outcome::Status(429)).ok());
        assert!(!rec(0, 1, Outcome::Status(503)).ok());
        assert!(!rec(0, 1, Outcome::Connect).ok());
        assert_eq!(rec(0, 1, Outcome::Timeout).status(), 0);
    }

    #[test]
    fn p99_keeps_only_the_selected_records() {
        let recs: Vec<Rec> = (0..200)
            .map(|i| rec(i, if i < 100 { 1 } else { 50 }, Outcome::Status(200)))
            .collect();
        assert_eq!(
            p99(&recs, |r| r.start < Duration::from_millis(100)),
            Some(1.0)
        );
        assert_eq!(p99(&recs, |_| true), Some(50.0));
        assert_eq!(p99(&recs, |_| false), None);
    }
}
