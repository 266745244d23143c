//! File descriptors and connection caps: the gateway raises its soft
//! `RLIMIT_NOFILE` to the hard limit at start, and caps client connections
//! below that limit so idle or slow clients can never take the descriptors
//! that upstream connections and the admin listener need.
//!
//! Each client connection holds one descriptor (see `io::CountingStream`);
//! while a request is in flight on it, the proxy may hold one upstream
//! connection more. Like nginx's `worker_connections`, which counts client
//! and upstream connections alike, the default cap is therefore half of
//! what remains after a fixed [`RESERVE`]. Over the cap a new connection is
//! accepted and closed at once and counted, as Envoy's listener connection
//! limit does (`downstream_cx_overflow`): the client learns at once instead
//! of waiting in the kernel's backlog. The admin listener has its own small
//! cap, [`ADMIN_MAX_CONNECTIONS`], so neither listener can starve the other.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections the admin listener holds at once (scrapes, probes, purges).
pub const ADMIN_MAX_CONNECTIONS: usize = 32;

/// Descriptors kept out of the client share: the admin listener's
/// connections, plus 64 for the process itself (stdio, the runtime's
/// epoll and wake descriptors, both listeners, the accept of a refused
/// connection, Redis, the OTLP exporter, files read on reload).
pub const RESERVE: u64 = ADMIN_MAX_CONNECTIONS as u64 + 64;

/// The open-file limit before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// Soft limit found at start (`None`: unlimited).
    pub before: Option<u64>,
    /// Soft limit now in force.
    pub soft: Option<u64>,
    /// Hard limit.
    pub hard: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and logs both. A
/// failure is logged and the old limit kept: the connection cap is derived
/// from whatever limit is in force.
pub fn raise_nofile_limit() -> NofileLimit {
    let now = getrlimit(Resource::Nofile);
    let mut limit = NofileLimit {
        before: now.current,
        soft: now.current,
        hard: now.maximum,
    };
    // An unlimited hard limit is not possible for NOFILE on Linux; keep
    // the soft one then rather than guess.
    if let (Some(soft), Some(hard)) = (now.current, now.maximum) {
        if soft < hard {
            let want = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            match setrlimit(Resource::Nofile, want) {
                Ok(()) => limit.soft = Some(hard),
                Err(e) => {
                    tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)");
                }
            }
        }
    }
    tracing::info!(
        soft_before = %Shown(limit.before),
        soft = %Shown(limit.soft),
        hard = %Shown(limit.hard),
        "open-file limit (RLIMIT_NOFILE)"
    );
    limit
}

/// A limit for the log: its number, or `unlimited`.
struct Shown(Option<u64>);

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("unlimited"),
        }
    }
}

/// The soft `RLIMIT_NOFILE` in force (`None`: unlimited).
pub fn nofile_soft_limit() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// The default proxy connection cap under an open-file limit: half of
/// what is left after [`RESERVE`] (one client plus one upstream descriptor
/// per connection), at least 1; unbounded (the semaphore's maximum) when
/// the limit is.
pub fn default_max_connections(nofile: Option<u64>) -> usize {
    match nofile {
        Some(n) => {
            let share = n.saturating_sub(RESERVE) / 2;
            usize::try_from(share)
                .unwrap_or(usize::MAX)
                .clamp(1, Semaphore::MAX_PERMITS)
        }
        None => Semaphore::MAX_PERMITS,
    }
}

/// One listener's cap: a permit per open connection, refusals counted.
#[derive(Debug)]
pub struct ConnLimit {
    permits: Arc<Semaphore>,
    max: usize,
    refused: AtomicU64,
}

impl ConnLimit {
    /// A cap of `max` connections (clamped to what a semaphore holds).
    pub fn new(max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            refused: AtomicU64::new(0),
        }
    }

    /// A permit for one more connection, held as long as its socket, or
    /// `None` (counted as a refusal) when the cap is reached.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Some(p);
        }
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        // The first refusal of a flood, then every 1024th: visible, not a
        // log flood of its own.
        if n == 1 || n.is_multiple_of(1024) {
            tracing::warn!(
                max_connections = self.max,
                refused_total = n,
                "connection cap reached: new connections are closed at once"
            );
        }
        None
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The caps of both listeners.
#[derive(Debug)]
pub struct Connections {
    /// The proxy listener (`server.max_connections`).
    pub proxy: ConnLimit,
    /// The admin listener ([`ADMIN_MAX_CONNECTIONS`]).
    pub admin: ConnLimit,
}

impl Connections {
    /// Caps for `configured` proxy connections, or the default derived
    /// from the open-file limit in force; warns when a configured cap
    /// leaves less than the reserve.
    pub fn new(configured: Option<usize>) -> Self {
        let nofile = nofile_soft_limit();
        let derived = default_max_connections(nofile);
        let max = configured.unwrap_or(derived);
        if let (Some(n), Some(c)) = (nofile, configured) {
            if c as u64 > n.saturating_sub(RESERVE) {
                tracing::warn!(
                    max_connections = c,
                    open_file_limit = n,
                    reserve = RESERVE,
                    "server.max_connections leaves less than the reserve of the open-file limit: \
                     idle clients can make upstream connects and the admin listener fail"
                );
            }
        }
        tracing::info!(
            max_connections = max,
            admin_max_connections = ADMIN_MAX_CONNECTIONS,
            open_file_limit = %Shown(nofile),
            "connection caps"
        );
        Self {
            proxy: ConnLimit::new(max),
            admin: ConnLimit::new(ADMIN_MAX_CONNECTIONS),
        }
    }

    /// Appends `gateway_connections`, `gateway_connections_limit` and
    /// `gateway_connections_refused_total` per listener, in OpenMetrics text.
    pub fn write_metrics(&self, out: &mut String) {
        let both = [("proxy", &self.proxy), ("admin", &self.admin)];
        let family =
            |out: &mut String, name: &str, kind: &str, help: &str, value: fn(&ConnLimit) -> u64| {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                // A counter's samples are named `<family>_total`.
                let suffix = if kind == "counter" { "_total" } else { "" };
                for (l, c) in both {
                    let _ = writeln!(out, "{name}{suffix}{{listener=\"{l}\"}} {}", value(c));
                }
            };
        family(
            out,
            "gateway_connections",
            "gauge",
            "Client connections open, per listener",
            |c| c.open() as u64,
        );
        family(
            out,
            "gateway_connections_limit",
            "gauge",
            "Client connections a listener holds at once (server.max_connections for the proxy)",
            |c| c.max() as u64,
        );
        family(
            out,
            "gateway_connections_refused",
            "counter",
            "Connections closed at accept because the listener's cap was reached",
            ConnLimit::refused,
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_default_cap_leaves_the_reserve_and_an_upstream_descriptor_per_client() {
        assert_eq!(default_max_connections(Some(1024)), (1024 - 96) / 2);
        assert_eq!(default_max_connections(Some(256)), 80);
        assert_eq!(default_max_connections(Some(1_048_576)), 524_240);
        // Clients + their upstream connections + the reserve fit the limit.
        for n in [160_u64, 256, 1024, 4096, 65_536] {
            let c = default_max_connections(Some(n)) as u64;
            assert!(2 * c + RESERVE <= n, "{n}: {c}");
        }
        // Absurdly low limits still admit one connection; none is unlimited.
        assert_eq!(default_max_connections(Some(10)), 1);
        assert_eq!(default_max_connections(None), Semaphore::MAX_PERMITS);
    }

    #[test]
    fn over_the_cap_connections_are_refused_and_counted_until_one_closes() {
        let c = ConnLimit::new(2);
        let a = c.admit().unwrap();
        let _b = c.admit().unwrap();
        assert_eq!(c.open(), 2);
        assert!(c.admit().is_none());
        assert!(c.admit().is_none());
        assert_eq!(c.refused(), 2);
        drop(a);
        assert_eq!(c.open(), 1);
        assert!(c.admit().is_some());
        assert_eq!(c.refused(), 2);
    }

    #[test]
    fn metrics_name_both_listeners() {
        let c = Connections {
            proxy: ConnLimit::new(3),
            admin: ConnLimit::new(ADMIN_MAX_CONNECTIONS),
        };
        let _p = c.proxy.admit().unwrap();
        let mut out = String::new();
        c.write_metrics(&mut out);
        assert!(
            out.contains("gateway_connections{listener=\"proxy\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("gateway_connections{listener=\"admin\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("gateway_connections_limit{listener=\"proxy\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("gateway_connections_refused_total{listener=\"admin\"} 0\n"),
            "{out}"
        );
    }

    #[test]
    fn a_zero_cap_is_rejected_with_its_key_path() {
        let c = crate::Config::from_toml("[server]\nmax_connections = 0\n").unwrap();
        let e = crate::config::validate::validate(&c)
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.max_connections"), "{e}");
        let c = crate::Config::from_toml("[server]\nmax_connections = 5\n").unwrap();
        assert_eq!(c.server.max_connections, Some(5));
    }

    #[test]
    fn raising_keeps_a_soft_limit_at_most_the_hard_one() {
        let l = raise_nofile_limit();
        if let (Some(s), Some(h)) = (l.soft, l.hard) {
            assert!(s <= h);
        }
        assert_eq!(nofile_soft_limit(), l.soft);
    }
}
