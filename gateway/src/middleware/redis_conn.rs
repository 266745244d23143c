//! The one way the middleware connects to Redis (rate limits, cache tier),
//! and [`FastFail`], which stops a Redis outage from costing every request
//! a full timeout.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use rustls::pki_types::pem::PemObject;
use tokio::time::Instant;

/// A multiplexed connection that connects lazily (start-up never waits for
/// Redis), reconnects on failure, and bounds each call by `timeout` (must be
/// called inside a tokio runtime). A `rediss://` URL connects over TLS
/// (rustls), verifying the server against `ca_file` (a PEM bundle) when
/// given, else the system's roots.
pub(crate) fn lazy_connection(
    url: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<ConnectionManager, String> {
    let client = match ca_file {
        None => redis::Client::open(url),
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
    }
    .map_err(|e| e.to_string())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())
}

/// Validates a Redis `ca_file`: only with a `rediss://` URL, and a
/// readable PEM bundle of at least one certificate.
pub(crate) fn check_ca_file(url: &str, ca_file: Option<&Path>) -> Result<(), String> {
    let Some(path) = ca_file else { return Ok(()) };
    if !url.starts_with("rediss://") {
        return Err("needs a rediss:// url (TLS)".into());
    }
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        },
    )
    .map(drop)
    .map_err(|e| format!("{}: {e}", path.display()))
}

/// A `PING` on `conn` within `timeout`: the background probe of
/// [`FastFail::run`].
pub(crate) fn ping(
    conn: &ConnectionManager,
    timeout: Duration,
) -> impl std::future::Future<Output = bool> + Send + 'static {
    let mut conn = conn.clone();
    async move {
        let cmd = redis::cmd("PING");
        matches!(
            tokio::time::timeout(timeout, cmd.query_async::<String>(&mut conn)).await,
            Ok(Ok(_))
        )
    }
}

/// Consecutive failed calls after which Redis is skipped.
pub const FAST_FAIL_AFTER: u32 = 3;
/// The first interval Redis is skipped for; it doubles after each failed
/// probe, up to [`FAST_FAIL_MAX`].
pub const FAST_FAIL_MIN: Duration = Duration::from_millis(100);
/// The longest interval Redis is skipped for: a Redis that came back is
/// used again within this plus one probe's round trip.
pub const FAST_FAIL_MAX: Duration = Duration::from_secs(1);

/// What [`FastFail::admit`] says about one call.
#[derive(Debug)]
#[must_use]
pub enum Admit<'a> {
    /// Redis is believed up: call it and [`FastFail::record`] the result.
    Call,
    /// The skip interval ended and this call is the one probe: call Redis
    /// and [`Probe::finish`] with the result (dropping it unfinished, as a
    /// cancelled request does, lets the next call probe).
    Probe(Probe<'a>),
    /// Redis is down: do not call it; apply the `on_error` policy at once.
    Skip,
}

/// The one call trying Redis while it is skipped.
#[derive(Debug)]
pub struct Probe<'a> {
    gate: &'a FastFail,
}

impl Probe<'_> {
    /// Records the probe's result: success uses Redis again; failure skips
    /// it for twice as long (at most [`FAST_FAIL_MAX`]).
    pub fn finish(self, ok: bool) {
        self.gate.probed(ok);
        // `Drop` frees the probe slot.
    }
}

/// A probe moved into a background task (see [`FastFail::run`]): frees the
/// probe slot when dropped, finished or not (a task cancelled at shutdown).
struct OwnedProbe(Arc<FastFail>);

impl Drop for OwnedProbe {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::Release);
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.gate.probing.store(false, Ordering::Release);
    }
}

/// Fast-fail for one use of Redis (a circuit breaker without the name):
/// after [`FAST_FAIL_AFTER`] consecutive errors or timeouts, calls are
/// skipped for an interval ([`FAST_FAIL_MIN`], doubling to
/// [`FAST_FAIL_MAX`] while probes keep failing) and the caller's `on_error`
/// policy applies at once; when it ends, one call at a time probes Redis.
///
/// The hot path (Redis up) is one atomic load before the call and, after
/// it, one load (a store only when a failure streak ends): no lock.
#[derive(Debug)]
pub struct FastFail {
    /// Start of this gate's clock (tokio's, so tests can pause it).
    epoch: Instant,
    /// Consecutive failed calls.
    failures: AtomicU32,
    /// While Redis is skipped: until when, µs since `epoch`, plus one (so
    /// that 0 means "not skipped").
    open_until: AtomicU64,
    /// The current skip interval, µs.
    interval_us: AtomicU64,
    /// A probe is in flight.
    probing: AtomicBool,
    /// Calls skipped since start (decided by the fallback at once).
    skipped: AtomicU64,
}

impl Default for FastFail {
    fn default() -> Self {
        Self::new()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl FastFail {
    /// A gate that lets calls through (Redis assumed up).
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            interval_us: AtomicU64::new(micros(FAST_FAIL_MIN)),
            probing: AtomicBool::new(false),
            skipped: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        micros(self.epoch.elapsed())
    }

    /// Whether the next call may go to Redis.
    pub fn admit(&self) -> Admit<'_> {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Admit::Call;
        }
        if self.now_us().saturating_add(1) >= until
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            return Admit::Probe(Probe { gate: self });
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        Admit::Skip
    }

    /// Records the result of an [`Admit::Call`].
    pub fn record(&self, ok: bool) {
        if ok {
            if self.failures.load(Ordering::Relaxed) != 0
                || self.open_until.load(Ordering::Relaxed) != 0
            {
                self.close();
            }
            return;
        }
        let n = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n >= FAST_FAIL_AFTER {
            // Only the call that trips it opens it (calls in flight when it
            // opened end later and change nothing).
            let until = self
                .now_us()
                .saturating_add(micros(FAST_FAIL_MIN))
                .saturating_add(1);
            if self
                .open_until
                .compare_exchange(0, until, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.interval_us
                    .store(micros(FAST_FAIL_MIN), Ordering::Relaxed);
                tracing::warn!(
                    failures = n,
                    skip = ?FAST_FAIL_MIN,
                    "redis failing: skipping it, the on_error policy decides at once"
                );
            }
        }
    }

    fn open_for(&self, interval: Duration) {
        self.interval_us.store(micros(interval), Ordering::Relaxed);
        let until = self
            .now_us()
            .saturating_add(micros(interval))
            .saturating_add(1);
        self.open_until.store(until, Ordering::Release);
    }

    /// A probe's result: success uses Redis again; failure skips it for
    /// twice as long (at most [`FAST_FAIL_MAX`]).
    fn probed(&self, ok: bool) {
        if ok {
            self.close();
        } else {
            let next = Duration::from_micros(self.interval_us.load(Ordering::Relaxed))
                .saturating_mul(2)
                .min(FAST_FAIL_MAX);
            self.open_for(next);
        }
    }

    fn close(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.interval_us
            .store(micros(FAST_FAIL_MIN), Ordering::Relaxed);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("redis answers again: using it");
        }
    }

    /// Whether Redis is being used (not skipped after failures): the
    /// `gateway_redis_up` gauge.
    pub fn is_up(&self) -> bool {
        self.open_until.load(Ordering::Relaxed) == 0
    }

    /// Calls skipped since start: decisions the `on_error` policy (or, for
    /// the cache, memory alone) made at once.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Runs `call` through the gate: `None` at once when Redis is skipped,
    /// else `call`'s result, recorded (`Some` is a success).
    ///
    /// When a skip interval ends, the probe runs in the background: `ping`
    /// (a cheap command, `true` when Redis answered in time) is spawned and
    /// this call, like every other while Redis is skipped, is decided by the
    /// `on_error` policy at once. No client request waits on a Redis that
    /// may still be down; only the [`FAST_FAIL_AFTER`] calls that trip the
    /// gate pay the timeout.
    pub async fn run<T, F, P>(self: &Arc<Self>, call: F, ping: impl FnOnce() -> P) -> Option<T>
    where
        F: std::future::Future<Output = Option<T>>,
        P: std::future::Future<Output = bool> + Send + 'static,
    {
        match self.admit() {
            Admit::Skip => None,
            Admit::Call => {
                let r = call.await;
                self.record(r.is_some());
                r
            }
            Admit::Probe(p) => {
                // The slot stays taken: the task's `OwnedProbe` frees it.
                std::mem::forget(p);
                let probe = OwnedProbe(self.clone());
                let ping = ping();
                tokio::spawn(async move {
                    let ok = ping.await;
                    probe.0.probed(ok);
                    drop(probe);
                });
                self.skipped.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn fail(g: &FastFail) {
        assert!(matches!(g.admit(), Admit::Call));
        g.record(false);
    }

    async fn advance(ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn skips_after_consecutive_failures_with_a_growing_interval() {
        let g = FastFail::new();
        // A success in between resets the streak.
        fail(&g);
        fail(&g);
        assert!(matches!(g.admit(), Admit::Call));
        g.record(true);
        fail(&g);
        fail(&g);
        assert!(g.is_up());
        fail(&g);
        assert!(!g.is_up());
        // Skipped for 100 ms, every call.
        for _ in 0..5 {
            assert!(matches!(g.admit(), Admit::Skip));
        }
        assert_eq!(g.skipped(), 5);
        advance(99).await;
        assert!(matches!(g.admit(), Admit::Skip));
        // Then one probe at a time.
        advance(1).await;
        let Admit::Probe(p) = g.admit() else {
            panic!("probe after 100 ms")
        };
        assert!(matches!(g.admit(), Admit::Skip), "one probe at a time");
        p.finish(false);
        // 200, 400, 800, then 1000 ms (the cap), and stays there.
        for ms in [200, 400, 800, 1000, 1000, 1000] {
            advance(ms - 1).await;
            assert!(matches!(g.admit(), Admit::Skip), "{ms}");
            advance(1).await;
            let Admit::Probe(p) = g.admit() else {
                panic!("probe after {ms} ms")
            };
            p.finish(false);
        }
        assert!(!g.is_up());
        // A successful probe: Redis is used again, and the next streak
        // starts from 100 ms.
        advance(1000).await;
        let Admit::Probe(p) = g.admit() else {
            panic!("probe")
        };
        p.finish(true);
        assert!(g.is_up());
        assert!(matches!(g.admit(), Admit::Call));
        fail(&g);
        fail(&g);
        fail(&g);
        advance(100).await;
        assert!(matches!(g.admit(), Admit::Probe(_)));
    }

    /// Through `run`: once tripped, no call waits on Redis, the probe
    /// included (it runs in the background), and a successful background
    /// probe puts Redis back in use.
    #[tokio::test(start_paused = true)]
    async fn run_probes_in_the_background_and_never_waits_once_tripped() {
        let g = Arc::new(FastFail::new());
        let slow_fail = || async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            None::<u8>
        };
        let never = || async { panic!("no ping while Redis is used") };
        for _ in 0..FAST_FAIL_AFTER {
            assert_eq!(g.run(slow_fail(), never).await, None);
        }
        assert!(!g.is_up());
        let pings = Arc::new(AtomicU32::new(0));
        let ping = |ok: bool| {
            let pings = pings.clone();
            move || async move {
                pings.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(500)).await;
                ok
            }
        };
        advance(100).await;
        // The probe's call answers at once (the ping is in the background).
        let start = Instant::now();
        assert_eq!(g.run(slow_fail(), ping(false)).await, None);
        assert_eq!(g.run(slow_fail(), ping(false)).await, None);
        assert_eq!(start.elapsed(), Duration::ZERO);
        tokio::task::yield_now().await;
        assert_eq!(pings.load(Ordering::SeqCst), 1, "one probe at a time");
        advance(500).await;
        tokio::task::yield_now().await;
        // The failed ping doubled the interval (200 ms from its end).
        advance(199).await;
        assert_eq!(g.run(slow_fail(), ping(true)).await, None);
        assert_eq!(pings.load(Ordering::SeqCst), 1);
        advance(1).await;
        assert_eq!(g.run(slow_fail(), ping(true)).await, None);
        tokio::task::yield_now().await;
        assert_eq!(pings.load(Ordering::SeqCst), 2);
        advance(500).await;
        tokio::task::yield_now().await;
        assert!(g.is_up(), "a successful ping puts Redis back in use");
        let ok = || async { Some(7u8) };
        assert_eq!(g.run(ok(), never).await, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_lets_the_next_call_probe() {
        let g = FastFail::new();
        for _ in 0..FAST_FAIL_AFTER {
            fail(&g);
        }
        advance(100).await;
        let Admit::Probe(p) = g.admit() else {
            panic!("probe")
        };
        drop(p);
        let Admit::Probe(p) = g.admit() else {
            panic!("probe again")
        };
        // Calls started before it opened and ending now change nothing:
        // a late failure does not extend the interval...
        g.record(false);
        assert!(matches!(g.admit(), Admit::Skip));
        p.finish(false);
        advance(200).await;
        // ...and a late success closes it (Redis answered).
        let Admit::Probe(_p) = g.admit() else {
            panic!("probe")
        };
        g.record(true);
        assert!(g.is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn run_skips_without_calling_and_recovers() {
        let g = Arc::new(FastFail::new());
        let calls = std::cell::Cell::new(0);
        let call = |ok: bool| {
            let calls = &calls;
            async move {
                calls.set(calls.get() + 1);
                ok.then_some(1)
            }
        };
        let up = || async { true };
        for _ in 0..FAST_FAIL_AFTER {
            assert_eq!(g.run(call(false), up).await, None);
        }
        assert_eq!(calls.get(), 3);
        assert_eq!(g.run(call(true), up).await, None, "skipped");
        assert_eq!(calls.get(), 3, "not called while skipped");
        advance(100).await;
        assert_eq!(g.run(call(true), up).await, None, "decided at once");
        assert_eq!(calls.get(), 3, "the probe is a ping, not the call");
        tokio::task::yield_now().await;
        assert!(g.is_up());
        assert_eq!(g.run(call(true), up).await, Some(1));
        assert_eq!(calls.get(), 4);
    }
}
