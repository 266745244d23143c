//! The fault suite behind `tests/reliability/run.sh`: each scenario starts the real
//! `gateway`, `mock-upstream` (and, where needed, its own `redis-server`) as processes on
//! free local ports, drives load at them while it injects one fault, and returns a [`Row`]
//! of figures and the bars they are judged on. The `reliability` binary runs them, prints
//! the table and writes it as JSON.
//!
//! | scenario | fault | bar |
//! | --- | --- | --- |
//! | `sigterm` | SIGTERM under load | 0 failed requests that were in flight; drain time |
//! | `sighup` | SIGHUP every second (two valid configs, one invalid) | 0 failed requests |
//! | `upstream-kill` | one of two endpoints killed, then restarted | only in-flight failures; breaker opens, half-opens, closes |
//! | `redis-*` | Redis killed for a while, per `on_error` policy | policy holds; p99 within 5 ms of baseline; recovery < 2 s |
//! | `slow-upstream` | every upstream answer takes 5 s | shedding and timeouts answer at once; admin within 10 ms |
//! | `idle-connections` | many idle keep-alive connections and WebSocket tunnels | fds back to baseline after they close |
//! | `soak` (`--soak`) | none: long moderate load | RSS growth < 5 %, fds flat, p99 drift < 10 % |

pub mod idle;
pub mod load;
pub mod procs;
pub mod redis;
pub mod report;
pub mod signals;
pub mod soak;
pub mod upstream;

use std::path::PathBuf;
use std::time::Duration;

pub use report::{Bar, Row};

/// What every scenario is told.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Directory of the `gateway`, `mock-upstream` and `loadgen` binaries.
    pub bins: PathBuf,
    /// Short durations and modest load (CI); latency bars are reported only.
    pub short: bool,
    /// Where scenario files (configs, loadgen results) are written.
    pub work: PathBuf,
    /// Soak duration (`--soak`).
    pub soak_time: Duration,
}

impl Ctx {
    /// `full` in a full run, `short` in a short one.
    pub fn pick<T>(&self, full: T, short: T) -> T {
        if self.short {
            short
        } else {
            full
        }
    }

    /// Whether latency bars decide the verdict (full runs) or are only reported.
    pub fn latency_binding(&self) -> bool {
        !self.short
    }

    /// A path under the work directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }
}

/// A scenario's error (setup failed, a process did not start, ...).
pub type Res<T> = Result<T, String>;

/// The names of the scenarios, in run order (`soak` only with `--soak`).
pub const SCENARIOS: [&str; 9] = [
    "sigterm",
    "sighup",
    "upstream-kill",
    "redis-local",
    "redis-fail_open",
    "redis-fail_closed",
    "slow-upstream",
    "idle-connections",
    "soak",
];

/// Runs one scenario by name.
pub async fn run(name: &str, ctx: &Ctx) -> Res<Row> {
    match name {
        "sigterm" => signals::sigterm(ctx).await,
        "sighup" => signals::sighup(ctx).await,
        "upstream-kill" => upstream::kill(ctx).await,
        "redis-local" => redis::outage(ctx, "local").await,
        "redis-fail_open" => redis::outage(ctx, "fail_open").await,
        "redis-fail_closed" => redis::outage(ctx, "fail_closed").await,
        "slow-upstream" => upstream::slow(ctx).await,
        "idle-connections" => idle::run(ctx).await,
        "soak" => soak::run(ctx).await,
        _ => Err(format!("unknown scenario {name:?}")),
    }
}
