//! Load shapes: the closed model (Locust's `--users`, `--spawn-rate`, `--run-time`),
//! k6-style stages of user targets (ramps, holds, spikes), and the open model (a constant
//! or staged arrival rate of iterations, whatever the target's latency).
//!
//! A [`LoadSpec`] is what the scenario's `[run]`, a preset and the command line say, each
//! overriding the one before; [`LoadSpec::plan`] turns it into one [`Plan`].
//!
//! ```
//! use std::time::Duration;
//! use loadgen::plan::{Plan, Stage};
//!
//! let ramp = Plan::Stages(vec![
//!     Stage { duration: Duration::from_secs(10), target: 100.0 },
//!     Stage { duration: Duration::from_secs(10), target: 100.0 },
//! ]);
//! assert_eq!(ramp.users_at(Duration::from_secs(5)), 50);
//! assert_eq!(ramp.duration(), Some(Duration::from_secs(20)));
//! ```

use std::time::Duration;

use crate::sla::Threshold;

/// One stage: move linearly from the previous target to `target` over `duration`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    /// How long the stage lasts.
    pub duration: Duration,
    /// Users (closed) or iterations per second (open) at the end of the stage.
    pub target: f64,
}

/// What the scenario, a preset or the command line say about the load shape.
#[derive(Debug, Clone, Default)]
pub struct LoadSpec {
    /// Closed model: users.
    pub users: Option<u64>,
    /// Closed model: users started per second.
    pub spawn_rate: Option<f64>,
    /// Run time.
    pub run_time: Option<Duration>,
    /// Stop after this many requests.
    pub max_requests: Option<u64>,
    /// Closed model stages.
    pub stages: Option<Vec<Stage>>,
    /// Open model constant rate.
    pub arrival_rate: Option<f64>,
    /// Open model stages.
    pub arrival_stages: Option<Vec<Stage>>,
    /// Open model: rate before the first arrival stage.
    pub start_rate: Option<f64>,
    /// Open model: most iterations in flight.
    pub max_vus: Option<u64>,
    /// User classes to run.
    pub user_classes: Option<Vec<String>>,
    /// Thresholds added.
    pub thresholds: Vec<Threshold>,
}

/// Default closed-model users when nothing says.
pub const DEFAULT_USERS: u64 = 1;
/// Default open-model cap of iterations in flight.
pub const DEFAULT_MAX_VUS: u64 = 1000;

impl LoadSpec {
    /// `self` overridden by whatever `over` sets (thresholds add up). A shape set in `over`
    /// replaces the shape of `self` entirely, so a preset with stages is not mixed with the
    /// file's `users`.
    pub fn overlay(&self, over: &LoadSpec) -> LoadSpec {
        let over_shape = over.users.is_some()
            || over.stages.is_some()
            || over.arrival_rate.is_some()
            || over.arrival_stages.is_some();
        let base = if over_shape {
            LoadSpec {
                users: None,
                spawn_rate: None,
                stages: None,
                arrival_rate: None,
                arrival_stages: None,
                start_rate: None,
                ..self.clone()
            }
        } else {
            self.clone()
        };
        let mut thresholds = base.thresholds.clone();
        thresholds.extend(over.thresholds.iter().cloned());
        LoadSpec {
            users: over.users.or(base.users),
            spawn_rate: over.spawn_rate.or(base.spawn_rate),
            run_time: over.run_time.or(base.run_time),
            max_requests: over.max_requests.or(base.max_requests),
            stages: over.stages.clone().or(base.stages),
            arrival_rate: over.arrival_rate.or(base.arrival_rate),
            arrival_stages: over.arrival_stages.clone().or(base.arrival_stages),
            start_rate: over.start_rate.or(base.start_rate),
            max_vus: over.max_vus.or(base.max_vus),
            user_classes: over.user_classes.clone().or(base.user_classes),
            thresholds,
        }
    }

    /// The one plan this spec describes, or why it describes none.
    pub fn plan(&self) -> Result<Plan, String> {
        let shapes = [
            self.stages.is_some(),
            self.arrival_rate.is_some(),
            self.arrival_stages.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if shapes > 1 {
            return Err("set only one of stages, arrival_rate, arrival_stages".into());
        }
        let max_vus = self.max_vus.unwrap_or(DEFAULT_MAX_VUS);
        if max_vus == 0 {
            return Err("max_vus must be at least 1".into());
        }
        if let Some(stages) = &self.stages {
            return Ok(Plan::Stages(stages.clone()));
        }
        if let Some(rate) = self.arrival_rate {
            if !(rate > 0.0 && rate.is_finite()) {
                return Err("arrival_rate must be above 0".into());
            }
            let Some(run_time) = self.run_time else {
                return Err("an arrival_rate needs a run_time".into());
            };
            return Ok(Plan::Open {
                start_rate: rate,
                stages: vec![Stage {
                    duration: run_time,
                    target: rate,
                }],
                max_vus,
            });
        }
        if let Some(stages) = &self.arrival_stages {
            return Ok(Plan::Open {
                start_rate: self.start_rate.unwrap_or(0.0),
                stages: stages.clone(),
                max_vus,
            });
        }
        let users = self.users.unwrap_or(DEFAULT_USERS);
        let spawn_rate = self.spawn_rate.unwrap_or(users as f64);
        if !(spawn_rate > 0.0 && spawn_rate.is_finite()) {
            return Err("spawn_rate must be above 0".into());
        }
        Ok(Plan::Closed {
            users,
            spawn_rate,
            run_time: self.run_time,
        })
    }

    /// This worker's share of the load for `--shard index/count` (index from 1): users,
    /// spawn and arrival rates and the request budget are split; the first shards take the
    /// remainder of an uneven split.
    pub fn shard(&self, index: u64, count: u64) -> LoadSpec {
        let split = |n: u64| n / count + u64::from(index <= n % count);
        let scale = |r: f64| r / count as f64;
        let stages = |s: &Option<Vec<Stage>>, f: &dyn Fn(f64) -> f64| {
            s.as_ref().map(|s| {
                s.iter()
                    .map(|st| Stage {
                        duration: st.duration,
                        target: f(st.target),
                    })
                    .collect()
            })
        };
        let users_share = |t: f64| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let n = t.round().max(0.0) as u64;
            split(n) as f64
        };
        LoadSpec {
            users: self.users.map(split),
            spawn_rate: self.spawn_rate.map(scale),
            max_requests: self.max_requests.map(split),
            stages: stages(&self.stages, &users_share),
            arrival_rate: self.arrival_rate.map(scale),
            arrival_stages: stages(&self.arrival_stages, &scale),
            start_rate: self.start_rate.map(scale),
            max_vus: self.max_vus.map(|v| split(v).max(1)),
            ..self.clone()
        }
    }
}

/// How load is generated.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// `users` users, started at `spawn_rate` per second, until `run_time` (or forever).
    Closed {
        /// Users at full load.
        users: u64,
        /// Users started per second.
        spawn_rate: f64,
        /// Run time.
        run_time: Option<Duration>,
    },
    /// Users following the stages from 0.
    Stages(Vec<Stage>),
    /// Iterations started at a rate, whatever the latency, from `start_rate` along the stages.
    Open {
        /// Rate at time 0.
        start_rate: f64,
        /// Rate stages.
        stages: Vec<Stage>,
        /// Most iterations in flight.
        max_vus: u64,
    },
}

/// The value at `t` of a piecewise-linear function starting at `start` through `stages`;
/// `None` after the last stage.
fn staged_value(start: f64, stages: &[Stage], t: Duration) -> Option<f64> {
    let mut from = start;
    let mut elapsed = Duration::ZERO;
    for stage in stages {
        let end = elapsed + stage.duration;
        if t < end {
            let frac = if stage.duration.is_zero() {
                1.0
            } else {
                (t - elapsed).as_secs_f64() / stage.duration.as_secs_f64()
            };
            return Some(from + (stage.target - from) * frac);
        }
        from = stage.target;
        elapsed = end;
    }
    None
}

impl Plan {
    /// How long the plan runs (`None`: until stopped).
    pub fn duration(&self) -> Option<Duration> {
        match self {
            Self::Closed { run_time, .. } => *run_time,
            Self::Stages(stages) | Self::Open { stages, .. } => {
                Some(stages.iter().map(|s| s.duration).sum())
            }
        }
    }

    /// The most users (closed) or iterations in flight (open) at any time: one connection
    /// each.
    pub fn max_concurrency(&self) -> u64 {
        match self {
            Self::Closed { users, .. } => *users,
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Self::Stages(stages) => stages
                .iter()
                .map(|s| s.target.max(0.0).ceil() as u64)
                .max()
                .unwrap_or(0),
            Self::Open { max_vus, .. } => *max_vus,
        }
    }

    /// Whether this is the open model.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open { .. })
    }

    /// Closed models: how many users should run at `t`.
    pub fn users_at(&self, t: Duration) -> u64 {
        let users = match self {
            Self::Closed {
                users, spawn_rate, ..
            } => (spawn_rate * t.as_secs_f64()).floor().min(*users as f64) + 1.0,
            Self::Stages(stages) => staged_value(0.0, stages, t)
                .or_else(|| stages.last().map(|s| s.target))
                .unwrap_or(0.0)
                .round(),
            Self::Open { .. } => 0.0,
        };
        let cap = match self {
            Self::Closed { users, .. } => *users as f64,
            _ => f64::MAX,
        };
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = users.min(cap).max(0.0) as u64;
        n
    }

    /// Open model: the arrival rate at `t` (per second).
    pub fn rate_at(&self, t: Duration) -> f64 {
        match self {
            Self::Open {
                start_rate, stages, ..
            } => staged_value(*start_rate, stages, t).unwrap_or(0.0),
            _ => 0.0,
        }
    }

    /// Open model: the intended time of the arrival after one at `t`, or `None` when the
    /// plan is over. Arrivals are spaced so that the integral of the rate between two is
    /// one (k6's `constant-arrival-rate` and `ramping-arrival-rate`).
    pub fn next_arrival(&self, t: Duration) -> Option<Duration> {
        let end = self.duration()?.as_secs_f64();
        let mut t = t.as_secs_f64();
        // Integrate the rate until one arrival's worth has passed: steps short against
        // the current interval, so ramps (even from zero) are followed closely.
        let mut area = 0.0;
        while t < end {
            let rate = self.rate_at(Duration::from_secs_f64(t));
            let dt = if rate > 1e-9 {
                (0.05 / rate).clamp(1e-6, 0.01)
            } else {
                0.01
            };
            let next_rate = self.rate_at(Duration::from_secs_f64(t + dt));
            let step = (rate + next_rate) / 2.0 * dt;
            if area + step >= 1.0 {
                let frac = if step > 0.0 { (1.0 - area) / step } else { 1.0 };
                let at = t + dt * frac;
                return (at < end).then(|| Duration::from_secs_f64(at));
            }
            area += step;
            t += dt;
        }
        None
    }

    /// A one-line description for reports.
    pub fn describe(&self) -> String {
        let h = |d: Duration| humantime::format_duration(d).to_string();
        match self {
            Self::Closed {
                users,
                spawn_rate,
                run_time,
            } => format!(
                "closed model: {users} users, spawn rate {spawn_rate}/s, run time {}",
                run_time.map_or_else(|| "unbounded".to_owned(), h)
            ),
            Self::Stages(stages) => format!(
                "stages: {}",
                stages
                    .iter()
                    .map(|s| format!("{}:{}", h(s.duration), s.target))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::Open {
                start_rate,
                stages,
                max_vus,
            } => format!(
                "open model: from {start_rate}/s, {} (max {max_vus} in flight)",
                stages
                    .iter()
                    .map(|s| format!("{}:{}/s", h(s.duration), s.target))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// A live change of the closed model's user count (the web UI's "users" field): from the
/// `from` users running at `since` (time into the run) to `to`, spawning or stopping
/// `spawn_rate` users per second, as Locust does when its user count is edited mid-run. It
/// replaces the plan's own shape from then on.
///
/// ```
/// use std::time::Duration;
/// use loadgen::plan::Retarget;
///
/// let up = Retarget { from: 2, to: 6, spawn_rate: 2.0, since: Duration::from_secs(10) };
/// assert_eq!(up.users_at(Duration::from_secs(10)), 2);
/// assert_eq!(up.users_at(Duration::from_secs(11)), 4);
/// assert_eq!(up.users_at(Duration::from_secs(60)), 6);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retarget {
    /// Users running when the change was made.
    pub from: u64,
    /// The new user count.
    pub to: u64,
    /// Users started or stopped per second (infinite or not above 0: at once).
    pub spawn_rate: f64,
    /// When the change was made, since the start of the run.
    pub since: Duration,
}

impl Retarget {
    /// How many users should run at `t` (time into the run).
    pub fn users_at(&self, t: Duration) -> u64 {
        let dt = t.saturating_sub(self.since).as_secs_f64();
        let step = if self.spawn_rate > 0.0 && self.spawn_rate.is_finite() {
            (self.spawn_rate * dt).floor()
        } else {
            f64::INFINITY
        };
        let gap = self.from.abs_diff(self.to);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let moved = if step >= gap as f64 { gap } else { step as u64 };
        if self.to >= self.from {
            self.from + moved
        } else {
            self.from - moved
        }
    }
}

impl Plan {
    /// Closed models: the users per second a live change of the user count moves at (the
    /// plan's spawn rate; stages move at once).
    pub fn spawn_rate(&self) -> f64 {
        match self {
            Self::Closed { spawn_rate, .. } => *spawn_rate,
            _ => f64::INFINITY,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn closed_model_spawns_at_the_rate() {
        let p = Plan::Closed {
            users: 10,
            spawn_rate: 2.0,
            run_time: Some(S(60)),
        };
        assert_eq!(p.users_at(Duration::ZERO), 1);
        assert_eq!(p.users_at(S(2)), 5);
        assert_eq!(p.users_at(S(100)), 10);
    }

    #[test]
    fn open_model_counts_arrivals() {
        let constant = Plan::Open {
            start_rate: 100.0,
            stages: vec![Stage {
                duration: S(2),
                target: 100.0,
            }],
            max_vus: 10,
        };
        let mut n = 1;
        let mut t = Duration::ZERO;
        while let Some(next) = constant.next_arrival(t) {
            n += 1;
            t = next;
        }
        assert!((199..=201).contains(&n), "{n}");
        let ramp = Plan::Open {
            start_rate: 0.0,
            stages: vec![Stage {
                duration: S(2),
                target: 100.0,
            }],
            max_vus: 10,
        };
        let mut n = 0;
        let mut t = Duration::ZERO;
        while let Some(next) = ramp.next_arrival(t) {
            n += 1;
            t = next;
        }
        assert!((90..=110).contains(&n), "{n}");
    }

    #[test]
    fn specs_overlay_and_shard() {
        let file = LoadSpec {
            users: Some(50),
            spawn_rate: Some(5.0),
            run_time: Some(S(60)),
            ..LoadSpec::default()
        };
        let preset = LoadSpec {
            arrival_rate: Some(90.0),
            ..LoadSpec::default()
        };
        let spec = file.overlay(&preset);
        assert_eq!(spec.users, None);
        assert!(spec.plan().unwrap().is_open());
        let shard = file.shard(1, 3);
        assert_eq!(shard.users, Some(17));
        assert_eq!(file.shard(3, 3).users, Some(16));
        let bad = LoadSpec {
            stages: Some(vec![]),
            arrival_rate: Some(1.0),
            ..LoadSpec::default()
        };
        assert!(bad.plan().is_err());
    }

    #[test]
    fn a_live_change_moves_at_the_spawn_rate_both_ways() {
        let up = Retarget {
            from: 3,
            to: 10,
            spawn_rate: 2.0,
            since: S(5),
        };
        assert_eq!(up.users_at(S(4)), 3, "before the change");
        assert_eq!(up.users_at(S(5)), 3);
        assert_eq!(up.users_at(Duration::from_millis(6500)), 6);
        assert_eq!(up.users_at(S(9)), 10, "capped at the target");
        let down = Retarget {
            from: 10,
            to: 1,
            spawn_rate: 4.0,
            since: S(0),
        };
        assert_eq!(down.users_at(S(1)), 6);
        assert_eq!(down.users_at(S(100)), 1);
        let at_once = Retarget {
            from: 0,
            to: 50,
            spawn_rate: f64::INFINITY,
            since: S(1),
        };
        assert_eq!(at_once.users_at(S(1)), 50);
        let still = Retarget {
            from: 7,
            to: 7,
            spawn_rate: 1.0,
            since: S(0),
        };
        assert_eq!(still.users_at(S(3)), 7);
    }
}
