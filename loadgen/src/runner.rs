//! Runs a plan: starts and stops simulated users (closed model, stages) or dispatches
//! iterations at their intended times (open model), ticks the per-second series and the
//! live view, schedules faults, and stops at the run time, the request budget or Ctrl-C.
//!
//! The open model keeps no queue: an arrival that finds all `max_vus` busy is dropped and
//! counted (k6's `dropped_iterations`), so memory stays bounded whatever the target does.
//! At the stop no task or arrival starts; requests in flight get the stop timeout to finish
//! (k6's `gracefulStop`), `on_stop` requests run in it too, and whatever is still in flight
//! then is cut off and recorded as a timeout failure with the time it had taken: a stuck
//! user is in every count, histogram and threshold, never silently left out.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{Conn, Target};
use crate::metrics::{LiveLine, Recorder, RunResult};
use crate::monitor::{self, Monitor};
use crate::plan::{Plan, Retarget};
use crate::scenario::Scenario;
use crate::user::{stop, Budget, Outcome, Shared, User};

/// How often the controller looks at the plan.
const CONTROL_PERIOD: Duration = Duration::from_millis(100);
/// Most time on_start may be retried for before a user gives up.
const ON_START_RETRY: Duration = Duration::from_secs(1);
/// After the hard stop, how long users get to record what they cut off and end.
const CUT_OFF_WAIT: Duration = Duration::from_secs(2);

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The scenario.
    pub scenario: Arc<Scenario>,
    /// Indices of the classes that run.
    pub classes: Vec<usize>,
    /// The load shape.
    pub plan: Plan,
    /// Where the load goes.
    pub target: Target,
    /// Default per-request timeout.
    pub timeout: Duration,
    /// Default of the most response-body bytes kept for checks.
    pub max_body: u64,
    /// Stop after this many requests.
    pub max_requests: Option<u64>,
    /// Threshold expressions to judge.
    pub thresholds: Vec<String>,
    /// Print the live line.
    pub live: bool,
    /// `mock-upstream`'s address for scheduled faults.
    pub control: Option<Target>,
    /// Worker threads of the runtime (for the CPU check).
    pub workers: usize,
    /// How long requests in flight and `on_stop` requests may take after the stop; what
    /// is still in flight then is recorded as a timeout failure.
    pub stop_timeout: Duration,
    /// `i/n` when this is one shard of a distributed run.
    pub shard: Option<(u64, u64)>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A running closed-model user.
struct Running {
    class: usize,
    stop: watch::Sender<u8>,
    handle: JoinHandle<()>,
}

/// Picks the class whose share is furthest below its weight (Locust's even spread).
fn pick_class(classes: &[usize], scenario: &Scenario, counts: &[u64]) -> usize {
    let mut best = classes.first().copied().unwrap_or(0);
    let mut best_ratio = f64::MAX;
    for &c in classes {
        let w = f64::from(scenario.classes.get(c).map_or(1, |k| k.weight.max(1)));
        let ratio = counts.get(c).copied().unwrap_or(0) as f64 / w;
        if ratio < best_ratio {
            best_ratio = ratio;
            best = c;
        }
    }
    best
}

/// Waits `d` or until the stop level reaches `level`; true when stopped.
async fn pause(d: Duration, stop: &mut watch::Receiver<u8>, level: u8) -> bool {
    if d.is_zero() {
        return *stop.borrow() >= level;
    }
    let stopped = tokio::select! {
        () = tokio::time::sleep(d) => None,
        _ = stop.wait_for(|s| *s >= level) => Some(true),
    };
    stopped.unwrap_or_else(|| *stop.borrow() >= level)
}

/// One closed-model user from start to stop.
async fn user_loop(
    shared: Arc<Shared>,
    class: usize,
    index: u64,
    mut stop_rx: watch::Receiver<u8>,
) {
    let scenario = Arc::clone(&shared.scenario);
    let Some(kind) = scenario.classes.get(class) else {
        return;
    };
    let mut user = User::new(&scenario, class, index);
    loop {
        match user.lifecycle(&shared, true, &mut stop_rx).await {
            Outcome::Ok => break,
            Outcome::Stopped => return,
            Outcome::Failed => {
                let wait = kind.wait.after(Duration::ZERO).min(ON_START_RETRY);
                let wait = wait.max(Duration::from_millis(100));
                if pause(wait, &mut stop_rx, stop::SOFT).await {
                    return;
                }
            }
        }
    }
    while *stop_rx.borrow() == stop::RUN {
        let Some(task) = kind.pick_task() else { break };
        let started = Instant::now();
        if user.task(&shared, task, None, &mut stop_rx).await == Outcome::Stopped {
            break;
        }
        if pause(kind.wait.after(started.elapsed()), &mut stop_rx, stop::SOFT).await {
            break;
        }
    }
    user.lifecycle(&shared, false, &mut stop_rx).await;
}

/// The open model's pool of idle users per class, and the cap on iterations in flight.
struct OpenPool {
    idle: Vec<Mutex<Vec<User>>>,
    in_flight: Arc<Semaphore>,
    max: u64,
    next_index: std::sync::atomic::AtomicU64,
}

impl OpenPool {
    fn take(&self, class: usize) -> Option<User> {
        self.idle
            .get(class)?
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn give(&self, user: User) {
        if let Some(slot) = self.idle.get(user.class) {
            slot.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(user);
        }
    }

    fn busy(&self) -> u64 {
        self.max
            .saturating_sub(self.in_flight.available_permits() as u64)
    }
}

/// One open-model iteration, measured from `intended`, holding its VU slot (`_permit`).
async fn iteration(
    shared: Arc<Shared>,
    pool: Arc<OpenPool>,
    class: usize,
    intended: Instant,
    mut stop_rx: watch::Receiver<u8>,
    _permit: OwnedSemaphorePermit,
) {
    let scenario = Arc::clone(&shared.scenario);
    let mut user = match pool.take(class) {
        Some(u) => u,
        None => {
            let index = pool
                .next_index
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut u = User::new(&scenario, class, index);
            if u.lifecycle(&shared, true, &mut stop_rx).await != Outcome::Ok {
                return;
            }
            u
        }
    };
    let Some(task) = scenario.classes.get(class).and_then(|c| c.pick_task()) else {
        return;
    };
    if user.task(&shared, task, Some(intended), &mut stop_rx).await != Outcome::Stopped {
        pool.give(user);
    }
}

/// Waits (polling, bounded by `until`) until no open-model iteration is in flight.
async fn wait_idle(pool: &OpenPool, until: Instant) {
    while pool.busy() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Picks a class by weight.
fn weighted_class(classes: &[usize], scenario: &Scenario) -> usize {
    let total: u64 = classes
        .iter()
        .map(|c| u64::from(scenario.classes.get(*c).map_or(0, |k| k.weight)))
        .sum();
    let mut r = fastrand::u64(..total.max(1));
    for &c in classes {
        let w = u64::from(scenario.classes.get(c).map_or(0, |k| k.weight));
        if r < w {
            return c;
        }
        r -= w;
    }
    classes.first().copied().unwrap_or(0)
}

/// Sends the scenario's faults to `mock-upstream` at their times.
fn schedule_faults(cfg: &RunConfig, shared: &Arc<Shared>, start: Instant) -> Vec<JoinHandle<()>> {
    let Some(control) = cfg.control.clone() else {
        if !cfg.scenario.faults.is_empty() {
            eprintln!(
                "loadgen: the scenario schedules {} fault(s) but no --control URL of mock-upstream was given: skipped",
                cfg.scenario.faults.len()
            );
        }
        return Vec::new();
    };
    cfg.scenario
        .faults
        .iter()
        .cloned()
        .map(|fault| {
            let shared = Arc::clone(shared);
            let control = control.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(start + fault.at).await;
                if let Err(e) = post_fault(&control, &fault.body).await {
                    shared
                        .recorder
                        .exception(&format!("scheduling a fault failed: {e}"));
                }
            })
        })
        .collect()
}

async fn post_fault(control: &Target, body: &serde_json::Value) -> Result<(), String> {
    let addr = control.resolve()?;
    let req = http::Request::post(format!("{}/_mock/faults", control.base_path))
        .header(http::header::HOST, control.authority.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        Conn::default().send(addr, control.tls.as_deref(), req),
    )
    .await
    .map_err(|_| "timeout".to_owned())?
    .map_err(|e| e.to_string())?;
    if res.status().as_u16() == 201 {
        Ok(())
    } else {
        Err(format!("{} answered {}", control.url, res.status()))
    }
}

fn print_live(line: &LiveLine, elapsed: Duration, total: Option<Duration>, users: u64, warn: &str) {
    let tty = std::io::stderr().is_terminal();
    let total = total.map_or_else(String::new, |t| format!("/{}s", t.as_secs()));
    let fail = if line.requests == 0 {
        0.0
    } else {
        line.failures as f64 * 100.0 / line.requests as f64
    };
    let text = format!(
        "[{:>4}s{total}] users {users:>5} | {:>8.1} req/s | {:>9} reqs | fail {fail:>5.2}% | p50 {:>7.1}ms p95 {:>7.1}ms p99 {:>7.1}ms{warn}",
        elapsed.as_secs(),
        line.rps,
        line.requests,
        line.p50,
        line.p95,
        line.p99
    );
    let mut err = std::io::stderr().lock();
    let _ = if tty {
        write!(err, "\r\x1b[2K{text}")
    } else {
        writeln!(err, "{text}")
    };
}

/// A change asked of a running run (the web UI's controls).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// Closed models: run this many users, spawned or stopped at the plan's spawn rate (or
    /// at `spawn_rate` when given).
    Users {
        /// The new user count.
        users: u64,
        /// Users started or stopped per second; the plan's when `None`.
        spawn_rate: Option<f64>,
    },
    /// Open models: start this many iterations per second from now on.
    Rate(f64),
}

/// What a run looks like this second, published for a live view.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Everything measured so far, with the run's context (the same value the run returns,
    /// up to now).
    pub result: RunResult,
    /// Users running (closed) or iterations in flight (open).
    pub users: u64,
    /// The user count (closed) or arrival rate (open) the run is moving to.
    pub target: f64,
    /// Whether the run is an open model.
    pub open: bool,
}

/// A live handle on a run ([`run_with`]): change its user count or arrival rate, stop it,
/// read a [`Snapshot`] each second. Cheap to clone; every clone drives the same run.
#[derive(Debug, Clone, Default)]
pub struct Control {
    inner: Arc<ControlInner>,
}

#[derive(Debug, Default)]
struct ControlInner {
    stop: std::sync::atomic::AtomicBool,
    change: Mutex<Option<Change>>,
    /// The open model's live rate as `f64` bits (0: the plan's).
    rate: std::sync::atomic::AtomicU64,
    snapshot: Mutex<Option<Arc<Snapshot>>>,
}

impl Control {
    /// Asks the run to stop as at the end of its run time (requests in flight get the stop
    /// timeout, the reports are complete).
    pub fn stop(&self) {
        self.inner
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`Control::stop`] was called.
    pub fn stop_requested(&self) -> bool {
        self.inner.stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks for a change; the runner takes it within its control period (100 ms). A later
    /// change replaces one not yet taken.
    pub fn change(&self, change: Change) {
        if let Change::Rate(r) = change {
            if r > 0.0 && r.is_finite() {
                self.inner
                    .rate
                    .store(r.to_bits(), std::sync::atomic::Ordering::Relaxed);
            }
        }
        *self
            .inner
            .change
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(change);
    }

    fn take_change(&self) -> Option<Change> {
        self.inner
            .change
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The open model's live arrival rate, when one was set.
    fn rate(&self) -> Option<f64> {
        let bits = self.inner.rate.load(std::sync::atomic::Ordering::Relaxed);
        (bits != 0).then(|| f64::from_bits(bits))
    }

    /// The last snapshot the run published (once a second).
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.inner
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn publish(&self, snapshot: Snapshot) {
        *self
            .inner
            .snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(snapshot));
    }
}

/// The closed model's user count at `elapsed`: the plan's, or the last live change's.
fn closed_target(plan: &Plan, retarget: Option<&Retarget>, elapsed: Duration) -> u64 {
    retarget.map_or_else(|| plan.users_at(elapsed), |r| r.users_at(elapsed))
}

/// Fills in the run's context around what the recorder measured.
fn with_context(
    mut result: RunResult,
    cfg: &RunConfig,
    started_unix: f64,
    monitor: &Monitor,
) -> RunResult {
    result.scenario = cfg.scenario.name.clone();
    result.host = cfg.target.url.clone();
    result.plan = cfg.plan.describe();
    result.started_unix = started_unix;
    result.thresholds = cfg.thresholds.clone();
    result.reliability = monitor.reliability();
    result.dropped_iterations = monitor.dropped_iterations();
    if let Some((i, n)) = cfg.shard {
        result.shards = vec![format!("{i}/{n}")];
    }
    result
}

/// Runs the whole plan and returns what it measured.
pub async fn run(cfg: RunConfig) -> Result<RunResult, String> {
    run_with(cfg, None).await
}

/// [`run`], driven live through `control` when given (the web UI): the same engine and
/// the same numbers, plus live changes of the user count or arrival rate, a stop, and a
/// [`Snapshot`] each second.
pub async fn run_with(cfg: RunConfig, control: Option<Control>) -> Result<RunResult, String> {
    let addr = cfg.target.resolve()?;
    let recorder = Recorder::new(&cfg.scenario.stat_names).map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared {
        scenario: Arc::clone(&cfg.scenario),
        target: cfg.target.clone(),
        addr,
        recorder,
        timeout: cfg.timeout,
        max_body: cfg.max_body,
        budget: cfg.max_requests.map(Budget::new),
    });
    let monitor = Arc::new(Monitor::default());
    let probe = {
        let m = Arc::clone(&monitor);
        tokio::spawn(async move { m.probe_lag().await })
    };
    let (interrupt_tx, interrupt_rx) = watch::channel(false);
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = interrupt_tx.send(true);
        }
    });
    let started_unix = unix_now();
    let start = Instant::now();
    let faults = schedule_faults(&cfg, &shared, start);
    // The open model's stop signal (closed-model users each have their own).
    let (stop_tx, stop_rx) = watch::channel(stop::RUN);
    let duration = cfg.plan.duration();

    let mut users: Vec<Running> = Vec::new();
    let mut stopping: Vec<Running> = Vec::new();
    let mut counts = vec![0u64; cfg.scenario.classes.len()];
    let mut next_index = 0u64;
    let pool = Arc::new(OpenPool {
        idle: (0..cfg.scenario.classes.len())
            .map(|_| Mutex::new(Vec::new()))
            .collect(),
        in_flight: Arc::new(Semaphore::new(match &cfg.plan {
            Plan::Open { max_vus, .. } => usize::try_from(*max_vus)
                .map_or(Semaphore::MAX_PERMITS, |n| n.min(Semaphore::MAX_PERMITS)),
            _ => 0,
        })),
        max: match &cfg.plan {
            Plan::Open { max_vus, .. } => *max_vus,
            _ => 0,
        },
        next_index: std::sync::atomic::AtomicU64::new(0),
    });
    let dispatcher = cfg.plan.is_open().then(|| {
        let shared = Arc::clone(&shared);
        let pool = Arc::clone(&pool);
        let plan = cfg.plan.clone();
        let classes = cfg.classes.clone();
        let monitor = Arc::clone(&monitor);
        let mut stop_rx = stop_rx.clone();
        let control = control.clone();
        tokio::spawn(async move {
            let mut at = Duration::ZERO;
            loop {
                let intended = start + at;
                tokio::select! {
                    () = tokio::time::sleep_until(intended) => {}
                    Ok(_) = stop_rx.wait_for(|s| *s >= stop::SOFT) => break,
                }
                monitor.arrival(intended.elapsed());
                // A free VU or none: an arrival never waits (k6 drops it), so nothing
                // queues and memory stays bounded whatever the target does.
                match Arc::clone(&pool.in_flight).try_acquire_owned() {
                    Ok(permit) => {
                        let class = weighted_class(&classes, &shared.scenario);
                        tokio::spawn(iteration(
                            Arc::clone(&shared),
                            Arc::clone(&pool),
                            class,
                            intended,
                            stop_rx.clone(),
                            permit,
                        ));
                    }
                    Err(_) => monitor.dropped(),
                }
                let next = match control.as_ref().and_then(Control::rate) {
                    // A live rate: evenly spaced arrivals until the plan's end.
                    Some(rate) => {
                        let n = at + Duration::from_secs_f64(1.0 / rate);
                        plan.duration().filter(|end| n < *end).map(|_| n)
                    }
                    None => plan.next_arrival(at),
                };
                match next {
                    Some(next) => at = next,
                    None => break,
                }
            }
        })
    });

    let mut ticker = tokio::time::interval(CONTROL_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_second = start + Duration::from_secs(1);
    let mut cpu_mark = (Instant::now(), monitor::process_cpu_ticks());
    let mut cpu_warn = false;
    let mut retarget: Option<Retarget> = None;
    let interrupted = loop {
        ticker.tick().await;
        let now = Instant::now();
        let elapsed = now - start;
        if *interrupt_rx.borrow() {
            break true;
        }
        let budget_spent = cfg
            .max_requests
            .is_some_and(|m| shared.recorder.requests() >= m);
        let time_up = duration.is_some_and(|d| elapsed >= d);
        let open_done =
            dispatcher.as_ref().is_some_and(JoinHandle::is_finished) && pool.busy() == 0;
        let stopped = control.as_ref().is_some_and(Control::stop_requested);
        if budget_spent || time_up || open_done || stopped {
            break false;
        }
        if let Some(Change::Users {
            users: to,
            spawn_rate,
        }) = control.as_ref().and_then(Control::take_change)
        {
            retarget = Some(Retarget {
                from: users.len() as u64,
                to,
                spawn_rate: spawn_rate.unwrap_or_else(|| cfg.plan.spawn_rate()),
                since: elapsed,
            });
        }
        if !cfg.plan.is_open() {
            let target = closed_target(&cfg.plan, retarget.as_ref(), elapsed);
            while (users.len() as u64) < target {
                let class = pick_class(&cfg.classes, &cfg.scenario, &counts);
                if let Some(c) = counts.get_mut(class) {
                    *c += 1;
                }
                let (tx, rx) = watch::channel(stop::RUN);
                let handle = tokio::spawn(user_loop(Arc::clone(&shared), class, next_index, rx));
                next_index += 1;
                users.push(Running {
                    class,
                    stop: tx,
                    handle,
                });
            }
            while (users.len() as u64) > target {
                let Some(u) = users.pop() else { break };
                if let Some(c) = counts.get_mut(u.class) {
                    *c = c.saturating_sub(1);
                }
                let _ = u.stop.send(stop::SOFT);
                stopping.push(u);
            }
            stopping.retain(|u| !u.handle.is_finished());
        }
        if now >= next_second {
            next_second += Duration::from_secs(1);
            if let (Some(before), Some(after)) = (cpu_mark.1, monitor::process_cpu_ticks()) {
                cpu_warn =
                    monitor.cpu_sample(after.saturating_sub(before), now - cpu_mark.0, cfg.workers);
            }
            cpu_mark = (now, monitor::process_cpu_ticks());
            let active = if cfg.plan.is_open() {
                pool.busy()
            } else {
                users.len() as u64
            };
            let line = shared
                .recorder
                .tick(unix_now(), elapsed.as_secs_f64(), active);
            if cfg.live {
                let mut warn = String::new();
                if cpu_warn {
                    warn.push_str(" | WARNING: generator CPU saturated");
                }
                if monitor.late_share() > 0.05 {
                    warn.push_str(" | WARNING: generator behind schedule");
                }
                let dropped = monitor.dropped_iterations();
                if dropped > 0 {
                    let _ = write!(
                        warn,
                        " | WARNING: {dropped} arrivals dropped, every VU busy (raise --max-vus)"
                    );
                }
                print_live(&line, elapsed, duration, active, &warn);
            }
            if let Some(control) = &control {
                let result = shared.recorder.result(elapsed);
                let (open, target) = if cfg.plan.is_open() {
                    (
                        true,
                        control.rate().unwrap_or_else(|| cfg.plan.rate_at(elapsed)),
                    )
                } else {
                    (
                        false,
                        closed_target(&cfg.plan, retarget.as_ref(), Duration::MAX) as f64,
                    )
                };
                control.publish(Snapshot {
                    result: with_context(result, &cfg, started_unix, &monitor),
                    users: active,
                    target,
                    open,
                });
            }
        }
    };
    let measured = start.elapsed();
    let active = if cfg.plan.is_open() {
        pool.busy()
    } else {
        users.len() as u64
    };

    // Stop, k6's gracefulStop: no new task or arrival; what is in flight gets the stop
    // timeout to finish, on_stop requests run in it too.
    let _ = stop_tx.send(stop::SOFT);
    let mut running: Vec<Running> = users.into_iter().chain(stopping).collect();
    for u in &running {
        let _ = u.stop.send(stop::SOFT);
    }
    for f in faults {
        f.abort();
    }
    let deadline = Instant::now() + cfg.stop_timeout;
    if let Some(d) = dispatcher {
        if tokio::time::timeout_at(deadline, d).await.is_err() {
            // Cannot happen (it ends at the stop signal); stop looking at it.
        }
    }
    for u in &mut running {
        let _ = tokio::time::timeout_at(deadline, &mut u.handle).await;
    }
    let mut open_stop = None;
    if cfg.plan.is_open() {
        wait_idle(&pool, deadline).await;
        // The pooled users' on_stop, in the same stop timeout.
        let (shared, pool, mut stop_rx) = (Arc::clone(&shared), Arc::clone(&pool), stop_rx);
        let classes = cfg.scenario.classes.len();
        let mut handle = tokio::spawn(async move {
            for class in 0..classes {
                while let Some(mut u) = pool.take(class) {
                    u.lifecycle(&shared, false, &mut stop_rx).await;
                }
            }
        });
        let _ = tokio::time::timeout_at(deadline, &mut handle).await;
        open_stop = Some(handle);
    }

    // The stop timeout ran out: requests still in flight are cut off, and recorded as
    // timeout failures by their users before these end.
    let _ = stop_tx.send(stop::HARD);
    for u in &running {
        let _ = u.stop.send(stop::HARD);
    }
    let cut_off = Instant::now() + CUT_OFF_WAIT;
    for handle in running
        .iter_mut()
        .map(|u| &mut u.handle)
        .chain(open_stop.as_mut())
        .filter(|h| !h.is_finished())
    {
        if tokio::time::timeout_at(cut_off, &mut *handle)
            .await
            .is_err()
        {
            handle.abort();
        }
    }
    if cfg.plan.is_open() {
        wait_idle(&pool, cut_off).await;
    }
    // The last point of the series, with what the stop recorded.
    shared
        .recorder
        .tick(unix_now(), measured.as_secs_f64(), active);
    if cfg.live && std::io::stderr().is_terminal() {
        eprintln!();
    }
    probe.abort();
    ctrl_c.abort();

    let mut result = with_context(
        shared.recorder.result(measured),
        &cfg,
        started_unix,
        &monitor,
    );
    result.interrupted = interrupted;
    Ok(result)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A run of `plan` against a listener that never answers (requests stay in flight, so
    /// the user count is all that changes), driven through a [`Control`].
    fn config(plan: Plan, target: &str) -> RunConfig {
        let scenario = Scenario::from_toml(
            "name = \"t\"\n[[user]]\nname = \"U\"\nwait_time = \"constant(1s)\"\n\
             [[user.task]]\nname = \"x\"\npath = \"/x\"\n",
        )
        .unwrap();
        RunConfig {
            scenario: Arc::new(scenario),
            classes: vec![0],
            plan,
            target: Target::parse(target).unwrap(),
            timeout: Duration::from_secs(600),
            max_body: 1024,
            max_requests: None,
            thresholds: Vec::new(),
            live: false,
            control: None,
            workers: 1,
            stop_timeout: Duration::from_millis(500),
            shard: None,
        }
    }

    async fn users_at(control: &Control, at: Duration, start: Instant) -> u64 {
        tokio::time::sleep_until(start + at).await;
        control.snapshot().expect("a snapshot each second").users
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_user_count_is_followed_at_the_spawn_rate_then_the_run_stops_on_request() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = format!("http://{}", listener.local_addr().unwrap());
        let plan = Plan::Closed {
            users: 2,
            spawn_rate: 10.0,
            run_time: None,
        };
        let control = Control::default();
        let start = Instant::now();
        let run = tokio::spawn(run_with(config(plan, &target), Some(control.clone())));
        let ms = Duration::from_millis;
        assert_eq!(
            users_at(&control, ms(2500), start).await,
            2,
            "the plan's users"
        );
        control.change(Change::Users {
            users: 6,
            spawn_rate: Some(2.0),
        });
        // Two users a second: 3 or 4 one second later, never the target at once.
        let one_later = users_at(&control, ms(3500), start).await;
        assert!((3..=4).contains(&one_later), "{one_later}");
        assert_eq!(
            users_at(&control, ms(5500), start).await,
            6,
            "the new target"
        );
        assert!((control.snapshot().unwrap().target - 6.0).abs() < 1e-9);
        // Down again at the plan's spawn rate (10/s): within a second.
        control.change(Change::Users {
            users: 1,
            spawn_rate: None,
        });
        assert_eq!(
            users_at(&control, ms(6500), start).await,
            1,
            "stopped users"
        );
        assert!(!run.is_finished(), "no run time: runs until stopped");
        control.stop();
        let result = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the run ends after a stop")
            .unwrap()
            .unwrap();
        assert_eq!(result.max_users, 6);
        assert!(!result.interrupted);
        let users: Vec<u64> = result.series.iter().map(|p| p.users).collect();
        assert!(users.contains(&6) && users.last() == Some(&1), "{users:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_model_takes_a_live_arrival_rate() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = format!("http://{}", listener.local_addr().unwrap());
        let plan = Plan::Open {
            start_rate: 4.0,
            stages: vec![crate::plan::Stage {
                duration: Duration::from_secs(60),
                target: 4.0,
            }],
            max_vus: 10_000,
        };
        let control = Control::default();
        let start = Instant::now();
        let run = tokio::spawn(run_with(config(plan, &target), Some(control.clone())));
        tokio::time::sleep_until(start + Duration::from_millis(2500)).await;
        let before = control.snapshot().unwrap();
        assert!(before.open && (before.target - 4.0).abs() < 1e-9);
        control.change(Change::Rate(40.0));
        tokio::time::sleep_until(start + Duration::from_millis(4500)).await;
        assert!((control.snapshot().unwrap().target - 40.0).abs() < 1e-9);
        control.stop();
        let result = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // About 4/s for 2.5 s, then 40/s for 2 s (4/s throughout: about 18).
        let arrivals = result.reliability.arrivals;
        assert!((80..=100).contains(&arrivals), "{arrivals} arrivals");
        assert!(result.duration_secs < 5.0, "stopped, not run for 60 s");
    }

    #[test]
    fn a_live_rate_needs_a_positive_finite_value() {
        let control = Control::default();
        assert_eq!(control.rate(), None);
        control.change(Change::Rate(-1.0));
        assert_eq!(control.rate(), None, "ignored");
        control.change(Change::Rate(250.0));
        assert_eq!(control.rate(), Some(250.0));
        assert_eq!(control.take_change(), Some(Change::Rate(250.0)));
        assert_eq!(control.take_change(), None, "taken once");
    }
}
