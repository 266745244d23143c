//! The scenario file format: TOML, read with `deny_unknown_fields` into these raw types,
//! then validated as a whole by [`super::Scenario::from_toml`] (every error with its key
//! path). Durations are human (`"250ms"`, `"1m"`), sizes too (`"100KB"`).
//!
//! ```toml
//! name = "meetinity-gateway"
//! thresholds = ["p95<350ms", "error_rate<0.5%"]
//!
//! [run]                          # defaults; a preset, then the command line, override
//! users = 50
//! spawn_rate = 5
//! run_time = "1m"
//!
//! [preset.light]
//! users = 10
//! user_classes = ["PublicRouteUser"]
//!
//! [[user]]
//! name = "PublicRouteUser"
//! weight = 3
//! wait_time = "between(1s, 3s)"  # constant(D), between(A, B), constant_pacing(D)
//!
//! [[user.on_start]]
//! method = "POST"
//! path = "/api/auth/session"
//! json = { username = "u{{user_index}}", password = "pw" }
//! extract = { token = "access_token" }
//!
//! [[user.task]]
//! weight = 5
//! name = "GET /api/users/[id]"
//! path = "/api/users/{{randint(1, 100)}}"
//! headers = { authorization = "Bearer {{token}}" }
//! checks = [{ status = 200 }, { json = "id", exists = true }, { slower_than = "500ms" }]
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Scenario name (reports and JUnit).
    pub name: Option<String>,
    /// One line on what it reproduces.
    pub description: Option<String>,
    /// Default target URL (`--host` overrides).
    pub host: Option<String>,
    /// SLA thresholds judged on every run of this scenario.
    #[serde(default)]
    pub thresholds: Vec<String>,
    /// Default load shape.
    #[serde(default)]
    pub run: RunSpec,
    /// Named load shapes (`--preset NAME`).
    #[serde(default)]
    pub preset: BTreeMap<String, RunSpec>,
    /// Faults scheduled on `mock-upstream` through its control endpoint.
    #[serde(default)]
    pub fault: Vec<FaultSpec>,
    /// The user classes.
    #[serde(default)]
    pub user: Vec<UserSpec>,
}

/// A load shape: closed (`users`, `spawn_rate`, `run_time`), stages, or an open model
/// (`arrival_rate` or `arrival_stages`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// What this preset is for.
    pub description: Option<String>,
    /// Closed model: simulated users.
    pub users: Option<u64>,
    /// Closed model: users started per second.
    pub spawn_rate: Option<f64>,
    /// How long the run lasts.
    pub run_time: Option<String>,
    /// Stop after this many requests.
    pub max_requests: Option<u64>,
    /// Closed model with k6-style stages of user targets.
    pub stages: Option<Vec<StageSpec>>,
    /// Open model: iterations started per second.
    pub arrival_rate: Option<f64>,
    /// Open model with staged arrival rates.
    pub arrival_stages: Option<Vec<StageSpec>>,
    /// Open model: arrival rate at the start of `arrival_stages`.
    pub start_rate: Option<f64>,
    /// Open model: most iterations in flight (simulated users kept).
    pub max_vus: Option<u64>,
    /// Only these user classes.
    pub user_classes: Option<Vec<String>>,
    /// Thresholds added by this preset.
    #[serde(default)]
    pub thresholds: Vec<String>,
}

/// One stage: move linearly to `target` over `duration`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// How long the stage lasts.
    pub duration: String,
    /// Users (closed) or iterations per second (open) at the end of the stage.
    pub target: f64,
}

/// A fault for `mock-upstream`'s `POST /_mock/faults`, sent at `at` for `duration`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// When to inject it, from the start of the run.
    pub at: String,
    /// How long it lasts.
    pub duration: String,
    /// Path prefix it applies to (all paths when absent).
    #[serde(default)]
    pub path_prefix: String,
    /// Fraction of matching requests answered with `status`.
    #[serde(default)]
    pub error_rate: f64,
    /// Status of the injected errors (502 when absent).
    pub status: Option<u16>,
    /// Delay added to every matching request.
    pub added_latency: Option<String>,
    /// Fraction of matching requests whose connection is dropped.
    #[serde(default)]
    pub reset_rate: f64,
}

/// A user class.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    /// Class name (`--user-classes`, reports).
    pub name: String,
    /// Relative share of the simulated users.
    #[serde(default = "one")]
    pub weight: u32,
    /// `constant(D)`, `between(A, B)` or `constant_pacing(D)`; no wait when absent.
    pub wait_time: Option<String>,
    /// Headers sent on every request of the class (templates).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Variables set when a user starts (templates, rendered once per user).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Keep and send cookies (default true).
    #[serde(default = "yes")]
    pub cookies: bool,
    /// Reuse one keep-alive connection per user (default true); false opens a new
    /// connection for every request (connection churn).
    #[serde(default = "yes")]
    pub keep_alive: bool,
    /// Requests made once when a user starts.
    #[serde(default)]
    pub on_start: Vec<RequestSpec>,
    /// Requests made once when a user stops.
    #[serde(default)]
    pub on_stop: Vec<RequestSpec>,
    /// Weighted tasks: each a request, or a sequence of `step`s.
    #[serde(default)]
    pub task: Vec<RequestSpec>,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// A request, or (in `task` only) a weighted task: a single request or a `step` sequence.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Task weight (tasks only; default 1).
    pub weight: Option<u32>,
    /// Ordered requests of a sequence task (tasks only).
    #[serde(default)]
    pub step: Vec<RequestSpec>,
    /// Statistics name (default: the method and the path with `[expr]` for each hole).
    pub name: Option<String>,
    /// HTTP method (default GET).
    pub method: Option<String>,
    /// Path and query (template).
    pub path: Option<String>,
    /// Request headers (templates).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Raw body (template).
    pub body: Option<String>,
    /// JSON body (string leaves are templates).
    pub json: Option<toml::Value>,
    /// A random body of this size (`"100KB"`).
    pub payload: Option<String>,
    /// Checks that turn a response into a failure.
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// Statuses that count as success (default: below 400).
    pub expect_status: Option<Vec<u16>>,
    /// Variables taken from the JSON response: `{ var = "dotted.path" }`.
    #[serde(default)]
    pub extract: BTreeMap<String, String>,
    /// Per-request timeout (default: the run's `--timeout`).
    pub timeout: Option<String>,
    /// Most response-body bytes kept for `checks` and `extract` (`"16MiB"`; default: the
    /// run's `--max-body-size`, 4 MiB). A longer body fails the request's checks and is
    /// not read further.
    pub max_body_size: Option<String>,
    /// Open a new connection for this request (and close it after).
    #[serde(default)]
    pub new_connection: bool,
    /// Make a WebSocket handshake (101 is success), then drop the connection.
    #[serde(default)]
    pub websocket: bool,
}

/// One check; exactly one of `status`, `json`, `slower_than`, `body_contains`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// The status must be this.
    pub status: Option<u16>,
    /// A dotted path into the JSON body; with `equals` or `exists`.
    pub json: Option<String>,
    /// The JSON field must equal this value.
    pub equals: Option<toml::Value>,
    /// The JSON field must exist (true) or be absent (false).
    pub exists: Option<bool>,
    /// The response must not take longer than this.
    pub slower_than: Option<String>,
    /// The body must contain this text.
    pub body_contains: Option<String>,
}
