//! Everything a running mock shares between its connections.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use http::HeaderValue;
use tokio::sync::watch;

use super::flagmeter::Usage;
use super::jwt::JwtKeys;
use super::meetings::Meetings;
use super::options::MockOptions;
use super::rules::{FaultSet, LatencySet};
use super::stats::Stats;
use super::{meetinity, paracle};

/// The shared state of one mock upstream.
#[derive(Debug)]
pub(crate) struct State {
    /// Value of `x-upstream-id`.
    pub(crate) upstream_id: HeaderValue,
    pub(crate) keys: JwtKeys,
    pub(crate) stats: Stats,
    pub(crate) faults: FaultSet,
    pub(crate) latency: LatencySet,
    pub(crate) usage: Usage,
    pub(crate) meetings: Meetings,
    /// Pre-rendered bodies of the static lists.
    pub(crate) users_list: Bytes,
    pub(crate) agents_list: Bytes,
    pub(crate) workflows_list: Bytes,
    /// Whether the JWKS publishes `rs-2` too.
    pub(crate) jwks_rotated: AtomicBool,
    /// Source of ids for created users and agents and for runs.
    pub(crate) next_id: AtomicU64,
    /// How often `/cache/{secs}` was served.
    pub(crate) cache_served: AtomicU64,
    /// The capacity model (`--capacity`), if any.
    pub(crate) capacity: Option<super::capacity::Station>,
    /// Turns `true` (or closes) when the mock shuts down; long-lived tasks watch it.
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl State {
    /// Builds the state from the options; fails on an id that is no valid header value.
    pub(crate) fn new(opts: &MockOptions, shutdown: watch::Receiver<bool>) -> io::Result<Self> {
        let upstream_id = HeaderValue::from_str(&opts.id)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let state = Self {
            upstream_id,
            keys: JwtKeys::new(&opts.jwt_secret)?,
            stats: Stats::default(),
            faults: FaultSet::default(),
            latency: LatencySet::default(),
            usage: Usage::default(),
            meetings: Meetings::default(),
            users_list: meetinity::users_list_body(),
            agents_list: paracle::agents_body(),
            workflows_list: paracle::workflows_body(),
            jwks_rotated: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            cache_served: AtomicU64::new(0),
            capacity: opts.capacity.map(super::capacity::Station::new),
            shutdown,
        };
        for rule in &opts.latency {
            state.latency.set(rule.clone());
        }
        for fault in &opts.faults {
            state.faults.add(fault.clone());
        }
        Ok(state)
    }

    /// `POST /_mock/reset`: forgets stats, faults, latency rules, the JWKS rotation and the
    /// cache count (users, meetings and usage data stay).
    pub(crate) fn reset(&self) {
        self.stats.reset();
        self.faults.clear();
        self.latency.clear();
        self.jwks_rotated.store(false, Relaxed);
        self.cache_served.store(0, Relaxed);
    }
}
