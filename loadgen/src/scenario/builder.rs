//! The Rust API for scenarios, for what a file cannot say (generated classes, computed
//! payloads). It builds the same raw types as a file and goes through the same validation,
//! so a bad weight or wait time fails in [`ScenarioBuilder::build`], not at run time.
//!
//! ```
//! use loadgen::scenario::{Req, ScenarioBuilder, UserBuilder};
//!
//! let scenario = ScenarioBuilder::new("readers")
//!     .threshold("p95<350ms")
//!     .user(
//!         UserBuilder::new("Reader")
//!             .weight(3)
//!             .wait_time("between(100ms, 300ms)")
//!             .on_start(
//!                 Req::post("/api/auth/session")
//!                     .json(serde_json::json!({"username": "u{{user_index}}", "password": "pw"}))
//!                     .extract("token", "access_token"),
//!             )
//!             .task(5, Req::get("/api/users/{{randint(1, 100)}}")
//!                 .name("/api/users/[id]")
//!                 .header("authorization", "Bearer {{token}}")
//!                 .check_status(200)),
//!     )
//!     .build()
//!     .unwrap();
//! assert_eq!(scenario.classes[0].tasks.len(), 1);
//!
//! let bad = ScenarioBuilder::new("bad")
//!     .user(UserBuilder::new("X").weight(0).task(1, Req::get("/")))
//!     .build();
//! assert!(bad.unwrap_err().to_string().contains("user[0].weight"));
//! ```

use super::file::{CheckSpec, RequestSpec, RunSpec, ScenarioFile, UserSpec};
use super::{Scenario, ScenarioError};

/// Builds a [`Scenario`].
#[derive(Debug)]
pub struct ScenarioBuilder {
    file: ScenarioFile,
}

impl ScenarioBuilder {
    /// A scenario called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            file: ScenarioFile {
                name: Some(name.to_owned()),
                description: None,
                host: None,
                thresholds: Vec::new(),
                run: RunSpec::default(),
                preset: Default::default(),
                fault: Vec::new(),
                user: Vec::new(),
            },
        }
    }

    /// Adds a threshold (`p95<350ms`).
    pub fn threshold(mut self, expr: &str) -> Self {
        self.file.thresholds.push(expr.to_owned());
        self
    }

    /// Sets the default load shape.
    pub fn run(mut self, run: RunSpec) -> Self {
        self.file.run = run;
        self
    }

    /// Adds a user class.
    pub fn user(mut self, user: UserBuilder) -> Self {
        self.file.user.push(user.spec);
        self
    }

    /// Validates.
    pub fn build(self) -> Result<Scenario, ScenarioError> {
        Scenario::from_file(self.file)
    }
}

/// Builds a user class.
#[derive(Debug)]
pub struct UserBuilder {
    spec: UserSpec,
}

impl UserBuilder {
    /// A class called `name`, weight 1, no wait.
    pub fn new(name: &str) -> Self {
        Self {
            spec: UserSpec {
                name: name.to_owned(),
                weight: 1,
                wait_time: None,
                headers: Default::default(),
                vars: Default::default(),
                cookies: true,
                keep_alive: true,
                on_start: Vec::new(),
                on_stop: Vec::new(),
                task: Vec::new(),
            },
        }
    }

    /// Relative share of the users.
    pub fn weight(mut self, w: u32) -> Self {
        self.spec.weight = w;
        self
    }

    /// `constant(D)`, `between(A, B)` or `constant_pacing(D)`.
    pub fn wait_time(mut self, w: &str) -> Self {
        self.spec.wait_time = Some(w.to_owned());
        self
    }

    /// A variable rendered when each user starts.
    pub fn var(mut self, name: &str, template: &str) -> Self {
        self.spec.vars.insert(name.to_owned(), template.to_owned());
        self
    }

    /// A header on every request of the class.
    pub fn header(mut self, name: &str, template: &str) -> Self {
        self.spec
            .headers
            .insert(name.to_owned(), template.to_owned());
        self
    }

    /// A request when a user starts.
    pub fn on_start(mut self, r: Req) -> Self {
        self.spec.on_start.push(r.spec);
        self
    }

    /// A request when a user stops.
    pub fn on_stop(mut self, r: Req) -> Self {
        self.spec.on_stop.push(r.spec);
        self
    }

    /// A weighted single-request task.
    pub fn task(mut self, weight: u32, r: Req) -> Self {
        let mut spec = r.spec;
        spec.weight = Some(weight);
        self.spec.task.push(spec);
        self
    }

    /// A weighted sequence of requests, made in order.
    pub fn sequence(mut self, weight: u32, name: &str, steps: Vec<Req>) -> Self {
        self.spec.task.push(RequestSpec {
            weight: Some(weight),
            name: Some(name.to_owned()),
            step: steps.into_iter().map(|r| r.spec).collect(),
            ..RequestSpec::default()
        });
        self
    }
}

/// Builds a request.
#[derive(Debug, Clone)]
pub struct Req {
    spec: RequestSpec,
}

impl Req {
    /// A request with `method` to `path` (a template).
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            spec: RequestSpec {
                method: Some(method.to_owned()),
                path: Some(path.to_owned()),
                ..RequestSpec::default()
            },
        }
    }

    /// `GET path`.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// `POST path`.
    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    /// `PUT path`.
    pub fn put(path: &str) -> Self {
        Self::new("PUT", path)
    }

    /// Statistics name.
    pub fn name(mut self, name: &str) -> Self {
        self.spec.name = Some(name.to_owned());
        self
    }

    /// A header (template).
    pub fn header(mut self, name: &str, template: &str) -> Self {
        self.spec
            .headers
            .insert(name.to_owned(), template.to_owned());
        self
    }

    /// A JSON body (string leaves are templates); a value TOML cannot hold (null) is
    /// reported by `build`.
    pub fn json(mut self, v: serde_json::Value) -> Self {
        self.spec.json = Some(
            toml::Value::try_from(v)
                .unwrap_or_else(|e| toml::Value::String(format!("{{{{invalid json: {e}}}}}"))),
        );
        self
    }

    /// A text body (template).
    pub fn body(mut self, template: &str) -> Self {
        self.spec.body = Some(template.to_owned());
        self
    }

    /// A random body of `size` (`"100KB"`).
    pub fn payload(mut self, size: &str) -> Self {
        self.spec.payload = Some(size.to_owned());
        self
    }

    /// The status must be `status`.
    pub fn check_status(mut self, status: u16) -> Self {
        self.spec.checks.push(CheckSpec {
            status: Some(status),
            ..CheckSpec::default()
        });
        self
    }

    /// Any check.
    pub fn check(mut self, check: CheckSpec) -> Self {
        self.spec.checks.push(check);
        self
    }

    /// Statuses that count as success.
    pub fn expect_status(mut self, statuses: &[u16]) -> Self {
        self.spec.expect_status = Some(statuses.to_vec());
        self
    }

    /// The most response-body bytes kept for this request's checks (`"16MiB"`); the run's
    /// `--max-body-size` when unset.
    pub fn max_body_size(mut self, size: &str) -> Self {
        self.spec.max_body_size = Some(size.to_owned());
        self
    }

    /// Keeps the JSON field at `path` in variable `var`.
    pub fn extract(mut self, var: &str, path: &str) -> Self {
        self.spec.extract.insert(var.to_owned(), path.to_owned());
        self
    }
}
