//! Scenarios: user classes with weights, wait times, `on_start`/`on_stop` requests,
//! weighted tasks and ordered sequences, templated requests, checks and expected
//! statuses, load-shape presets, scheduled faults and SLA thresholds.
//!
//! Parse, validate, then trust: a scenario file ([`file`]) or the Rust API ([`builder`])
//! goes through one validation that reports every error with its key path
//! (`user[1].task[0].path: unknown variable "tokn"`), so a bad weight, wait time or
//! template fails when the scenario is loaded, never in the middle of a run.

pub mod builder;
pub mod file;
pub mod template;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Method};

use crate::checks::{Check, Expect, JsonPath};
use crate::plan::LoadSpec;
use crate::sla::Threshold;
use template::{JsonTemplate, Template};

pub use builder::{Req, ScenarioBuilder, UserBuilder};

/// A scenario that did not load: every problem found, one per line with its key path.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .errors.join("\n"))]
pub struct ScenarioError {
    /// Every problem, `key.path: what is wrong`.
    pub errors: Vec<String>,
}

/// How long a user waits after each task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WaitTime {
    /// No wait.
    None,
    /// Always this long.
    Constant(Duration),
    /// Uniformly between the bounds.
    Between(Duration, Duration),
    /// So that tasks start this far apart (whatever they took).
    ConstantPacing(Duration),
}

impl WaitTime {
    /// The wait after a task that started `task_took` ago.
    pub fn after(&self, task_took: Duration) -> Duration {
        match *self {
            Self::None => Duration::ZERO,
            Self::Constant(d) => d,
            Self::Between(lo, hi) => {
                let span = hi.saturating_sub(lo).as_secs_f64();
                lo + Duration::from_secs_f64(span * fastrand::f64())
            }
            Self::ConstantPacing(d) => d.saturating_sub(task_took),
        }
    }
}

/// A request body.
#[derive(Debug, Clone)]
pub enum BodyTemplate {
    /// No body.
    Empty,
    /// Text (template).
    Text(Template),
    /// JSON (string leaves are templates); sent with `content-type: application/json`.
    Json(JsonTemplate),
    /// Random bytes of a fixed size, drawn once.
    Payload(Bytes),
}

/// One request of a task, an `on_start` or an `on_stop`.
#[derive(Debug, Clone)]
pub struct Request {
    /// Index of its statistics entry in [`Scenario::stat_names`].
    pub stat: usize,
    /// Statistics name.
    pub name: String,
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: Template,
    /// Headers of this request (after the class's).
    pub headers: Vec<(HeaderName, Template)>,
    /// Body.
    pub body: BodyTemplate,
    /// Checks, in order.
    pub checks: Vec<Check>,
    /// Statuses that are a success.
    pub expect: Expect,
    /// Variables taken from the JSON response.
    pub extract: Vec<(String, JsonPath)>,
    /// Timeout (the run's default when `None`).
    pub timeout: Option<Duration>,
    /// Most response-body bytes kept for checks (the run's default when `None`).
    pub max_body: Option<u64>,
    /// Use a fresh connection and close it after.
    pub new_connection: bool,
    /// A WebSocket handshake (101 is success); the connection is dropped after.
    pub websocket: bool,
}

impl Request {
    /// Whether judging or extracting needs the response body kept.
    pub fn needs_body(&self) -> bool {
        !self.extract.is_empty() || self.checks.iter().any(Check::needs_body)
    }
}

/// A weighted task: one request, or an ordered sequence.
#[derive(Debug, Clone)]
pub struct Task {
    /// Relative weight.
    pub weight: u32,
    /// The requests, in order (one for a plain task).
    pub steps: Vec<Request>,
}

/// A user class.
#[derive(Debug, Clone)]
pub struct UserClass {
    /// Name.
    pub name: String,
    /// Relative share of the users.
    pub weight: u32,
    /// Wait after each task.
    pub wait: WaitTime,
    /// Headers on every request.
    pub headers: Vec<(HeaderName, Template)>,
    /// Variables rendered when a user starts.
    pub vars: Vec<(String, Template)>,
    /// Keep cookies.
    pub cookies: bool,
    /// One keep-alive connection per user.
    pub keep_alive: bool,
    /// Requests when a user starts.
    pub on_start: Vec<Request>,
    /// Requests when a user stops.
    pub on_stop: Vec<Request>,
    /// Weighted tasks.
    pub tasks: Vec<Task>,
}

impl UserClass {
    /// Picks a task by weight.
    pub fn pick_task(&self) -> Option<&Task> {
        let total: u64 = self.tasks.iter().map(|t| u64::from(t.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut r = fastrand::u64(..total);
        for task in &self.tasks {
            let w = u64::from(task.weight);
            if r < w {
                return Some(task);
            }
            r -= w;
        }
        self.tasks.last()
    }
}

/// A fault to set on `mock-upstream` at `at` from the start.
#[derive(Debug, Clone)]
pub struct ScheduledFault {
    /// When.
    pub at: Duration,
    /// The JSON for `POST /_mock/faults` (it carries its `duration`).
    pub body: serde_json::Value,
}

/// A named load shape.
#[derive(Debug, Clone)]
pub struct Preset {
    /// What it is for.
    pub description: String,
    /// The shape and its thresholds.
    pub spec: LoadSpec,
}

/// A validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Default target.
    pub host: Option<String>,
    /// The default load shape (`[run]`) with the scenario's thresholds.
    pub run: LoadSpec,
    /// Named presets.
    pub presets: BTreeMap<String, Preset>,
    /// Faults to schedule.
    pub faults: Vec<ScheduledFault>,
    /// User classes.
    pub classes: Vec<UserClass>,
    /// `(method, name)` of every statistics entry; [`Request::stat`] indexes it.
    pub stat_names: Vec<(String, String)>,
}

impl Scenario {
    /// Parses and validates a scenario from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let file: file::ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError {
            errors: vec![e.to_string().trim_end().to_owned()],
        })?;
        Self::from_file(file)
    }

    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            errors: vec![format!("{}: {e}", path.display())],
        })?;
        Self::from_toml(&text).map_err(|mut e| {
            e.errors
                .iter_mut()
                .for_each(|m| *m = format!("{}: {m}", path.display()));
            e
        })
    }

    /// Validates the raw file types (the Rust API builds these too).
    pub fn from_file(file: file::ScenarioFile) -> Result<Self, ScenarioError> {
        validate::scenario(file)
    }

    /// The load spec of a preset (the scenario's `[run]` overlaid with it).
    pub fn spec(&self, preset: Option<&str>) -> Result<LoadSpec, String> {
        match preset {
            None => Ok(self.run.clone()),
            Some(name) => self
                .presets
                .get(name)
                .map(|p| self.run.overlay(&p.spec))
                .ok_or_else(|| {
                    format!(
                        "unknown preset {name:?} (this scenario has: {})",
                        self.presets.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                }),
        }
    }

    /// Indices of the classes named in `filter` (all when `None`), or which names are
    /// unknown. Names may be given comma-separated.
    pub fn select_classes(&self, filter: Option<&[String]>) -> Result<Vec<usize>, String> {
        let Some(filter) = filter else {
            return Ok((0..self.classes.len()).collect());
        };
        let mut picked = Vec::new();
        for name in filter.iter().flat_map(|f| f.split(',')).map(str::trim) {
            if name.is_empty() {
                continue;
            }
            match self.classes.iter().position(|c| c.name == name) {
                Some(i) if !picked.contains(&i) => picked.push(i),
                Some(_) => {}
                None => {
                    return Err(format!(
                        "unknown user class {name:?} (this scenario has: {})",
                        self.classes
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            }
        }
        if picked.is_empty() {
            return Err("no user class selected".into());
        }
        Ok(picked)
    }

    /// The thresholds of a load spec (scenario's, preset's) as parsed values.
    pub fn thresholds(spec: &LoadSpec) -> &[Threshold] {
        &spec.thresholds
    }
}

#[cfg(test)]
mod tests;
