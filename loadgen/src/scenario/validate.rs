//! From the raw file types to a [`Scenario`]: every error collected with its key path.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Method};

use super::file::{CheckSpec, FaultSpec, RequestSpec, RunSpec, ScenarioFile, StageSpec, UserSpec};
use super::template::{parse_size, random_payload, JsonTemplate, Template, MAX_PAYLOAD};
use super::{
    BodyTemplate, Preset, Request, Scenario, ScenarioError, ScheduledFault, Task, UserClass,
    WaitTime,
};
use crate::checks::{Check, Expect, JsonPath};
use crate::plan::{LoadSpec, Stage};
use crate::sla::Threshold;

/// Errors collected so far.
#[derive(Debug, Default)]
struct Errors(Vec<String>);

impl Errors {
    fn at(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("{path}: {msg}"));
    }
}

fn duration(errors: &mut Errors, path: &str, s: &str) -> Option<Duration> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.at(
                path,
                format!("bad duration {s:?} ({e}); use e.g. \"250ms\", \"1m\""),
            );
            None
        }
    }
}

/// Parses `constant(1s)`, `between(1s, 3s)`, `constant_pacing(100ms)`.
pub(crate) fn parse_wait_time(s: &str) -> Result<WaitTime, String> {
    let s = s.trim();
    let (func, args) = s
        .strip_suffix(')')
        .and_then(|r| r.split_once('('))
        .ok_or_else(|| {
            format!(
                "bad wait_time {s:?}: expected constant(D), between(A, B) or constant_pacing(D)"
            )
        })?;
    let args: Vec<&str> = args.split(',').map(str::trim).collect();
    let d = |a: &str| {
        humantime::parse_duration(a).map_err(|e| format!("bad wait_time {s:?}: {a:?}: {e}"))
    };
    match (func.trim(), args.as_slice()) {
        ("constant", [a]) => Ok(WaitTime::Constant(d(a)?)),
        ("constant_pacing", [a]) => Ok(WaitTime::ConstantPacing(d(a)?)),
        ("between", [a, b]) => {
            let (a, b) = (d(a)?, d(b)?);
            if a > b {
                return Err(format!(
                    "bad wait_time {s:?}: the low bound is above the high bound"
                ));
            }
            Ok(WaitTime::Between(a, b))
        }
        _ => Err(format!(
            "bad wait_time {s:?}: expected constant(D), between(A, B) or constant_pacing(D)"
        )),
    }
}

fn stages(errors: &mut Errors, path: &str, specs: &[StageSpec]) -> Vec<Stage> {
    if specs.is_empty() {
        errors.at(path, "needs at least one stage");
    }
    specs
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let p = format!("{path}[{i}]");
            if !(s.target >= 0.0 && s.target.is_finite()) {
                errors.at(&format!("{p}.target"), "must be a number >= 0");
            }
            let d = duration(errors, &format!("{p}.duration"), &s.duration)?;
            Some(Stage {
                duration: d,
                target: s.target.max(0.0),
            })
        })
        .collect()
}

fn thresholds(errors: &mut Errors, path: &str, list: &[String]) -> Vec<Threshold> {
    list.iter()
        .enumerate()
        .filter_map(|(i, t)| match t.parse::<Threshold>() {
            Ok(t) => Some(t),
            Err(e) => {
                errors.at(&format!("{path}[{i}]"), e);
                None
            }
        })
        .collect()
}

fn load_spec(errors: &mut Errors, path: &str, run: &RunSpec) -> LoadSpec {
    let p = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    let spec = LoadSpec {
        users: run.users,
        spawn_rate: run.spawn_rate,
        run_time: run
            .run_time
            .as_deref()
            .and_then(|s| duration(errors, &p("run_time"), s)),
        max_requests: run.max_requests,
        stages: run.stages.as_ref().map(|s| stages(errors, &p("stages"), s)),
        arrival_rate: run.arrival_rate,
        arrival_stages: run
            .arrival_stages
            .as_ref()
            .map(|s| stages(errors, &p("arrival_stages"), s)),
        start_rate: run.start_rate,
        max_vus: run.max_vus,
        user_classes: run.user_classes.clone(),
        thresholds: thresholds(errors, &p("thresholds"), &run.thresholds),
    };
    if let Some(r) = run.spawn_rate.filter(|r| !(*r > 0.0 && r.is_finite())) {
        errors.at(&p("spawn_rate"), format!("must be above 0, got {r}"));
    }
    if let Some(r) = run.arrival_rate.filter(|r| !(*r > 0.0 && r.is_finite())) {
        errors.at(&p("arrival_rate"), format!("must be above 0, got {r}"));
    }
    if run.max_vus == Some(0) {
        errors.at(&p("max_vus"), "must be at least 1");
    }
    if run.max_requests == Some(0) {
        errors.at(&p("max_requests"), "must be at least 1");
    }
    if let Err(e) = spec.plan() {
        errors.at(if path.is_empty() { "run" } else { path }, e);
    }
    spec
}

fn fault(errors: &mut Errors, path: &str, f: &FaultSpec) -> Option<ScheduledFault> {
    let at = duration(errors, &format!("{path}.at"), &f.at);
    let length = duration(errors, &format!("{path}.duration"), &f.duration);
    for (k, v) in [("error_rate", f.error_rate), ("reset_rate", f.reset_rate)] {
        if !(0.0..=1.0).contains(&v) {
            errors.at(&format!("{path}.{k}"), "must be within 0..=1");
        }
    }
    if let Some(s) = f.status.filter(|s| !(200..=599).contains(s)) {
        errors.at(
            &format!("{path}.status"),
            format!("must be within 200..=599, got {s}"),
        );
    }
    if let Some(l) = &f.added_latency {
        duration(errors, &format!("{path}.added_latency"), l);
    }
    let mut body = serde_json::json!({
        "path_prefix": f.path_prefix,
        "error_rate": f.error_rate,
        "status": f.status.unwrap_or(502),
        "reset_rate": f.reset_rate,
        "duration": f.duration,
    });
    if let (Some(l), Some(obj)) = (&f.added_latency, body.as_object_mut()) {
        obj.insert("added_latency".into(), l.clone().into());
    }
    Some(ScheduledFault {
        at: at?,
        body: {
            length?;
            body
        },
    })
}

/// Validates one user class and the requests in it.
struct ClassCtx<'a> {
    errors: &'a mut Errors,
    stat_names: &'a mut Vec<(String, String)>,
    declared: BTreeSet<String>,
}

impl ClassCtx<'_> {
    fn template(&mut self, path: &str, s: &str) -> Option<Template> {
        match Template::parse(s) {
            Ok(t) => {
                self.check_vars(path, t.variables());
                Some(t)
            }
            Err(e) => {
                self.errors.at(path, e);
                None
            }
        }
    }

    fn check_vars<'v>(&mut self, path: &str, vars: impl IntoIterator<Item = &'v str>) {
        for v in vars {
            if !self.declared.contains(v) {
                let known: Vec<&str> = self.declared.iter().map(String::as_str).collect();
                self.errors.at(
                    path,
                    format!(
                        "unknown variable {v:?} (declared in vars or extract: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }
    }

    fn headers(&mut self, path: &str, h: &BTreeMap<String, String>) -> Vec<(HeaderName, Template)> {
        h.iter()
            .filter_map(|(k, v)| {
                let p = format!("{path}.{k}");
                let name = match HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()) {
                    Ok(n) => Some(n),
                    Err(_) => {
                        self.errors.at(&p, "not a valid header name");
                        None
                    }
                };
                let value = self.template(&p, v);
                Some((name?, value?))
            })
            .collect()
    }

    fn check(&mut self, path: &str, c: &CheckSpec) -> Option<Check> {
        let kinds = [
            c.status.is_some(),
            c.json.is_some(),
            c.slower_than.is_some(),
            c.body_contains.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            self.errors.at(
                path,
                "a check has exactly one of status, json (with equals or exists), slower_than, body_contains",
            );
            return None;
        }
        if let Some(s) = c.status {
            return Some(Check::Status(s));
        }
        if let Some(d) = &c.slower_than {
            return duration(self.errors, &format!("{path}.slower_than"), d).map(Check::SlowerThan);
        }
        if let Some(t) = &c.body_contains {
            return Some(Check::BodyContains(t.clone()));
        }
        let p = c.json.as_deref().unwrap_or_default();
        let Some(jp) = JsonPath::parse(p) else {
            self.errors.at(
                &format!("{path}.json"),
                format!("bad JSON path {p:?} (use a.b.0.c)"),
            );
            return None;
        };
        match (&c.equals, c.exists) {
            (Some(v), None) => match serde_json::to_value(v) {
                Ok(v) => Some(Check::JsonEquals(jp, v)),
                Err(e) => {
                    self.errors.at(&format!("{path}.equals"), e);
                    None
                }
            },
            (None, Some(e)) => Some(Check::JsonExists(jp, e)),
            (None, None) => Some(Check::JsonExists(jp, true)),
            (Some(_), Some(_)) => {
                self.errors.at(path, "use equals or exists, not both");
                None
            }
        }
    }

    fn request(&mut self, path: &str, r: &RequestSpec) -> Option<Request> {
        let method_s = r.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
        let method = match Method::from_bytes(method_s.as_bytes()) {
            Ok(m) => Some(m),
            Err(_) => {
                self.errors.at(
                    &format!("{path}.method"),
                    format!("bad method {method_s:?}"),
                );
                None
            }
        };
        let Some(path_src) = r.path.as_deref() else {
            self.errors.at(&format!("{path}.path"), "missing");
            return None;
        };
        if !path_src.starts_with('/') {
            self.errors.at(&format!("{path}.path"), "must start with /");
        }
        let tpath = self.template(&format!("{path}.path"), path_src);
        let headers = self.headers(&format!("{path}.headers"), &r.headers);
        let bodies = [r.body.is_some(), r.json.is_some(), r.payload.is_some()];
        if bodies.iter().filter(|b| **b).count() > 1 {
            self.errors.at(path, "set only one of body, json, payload");
        }
        let body = if let Some(b) = &r.body {
            self.template(&format!("{path}.body"), b)
                .map(BodyTemplate::Text)
        } else if let Some(j) = &r.json {
            match JsonTemplate::from_toml(j) {
                Ok(j) => {
                    self.check_vars(&format!("{path}.json"), j.variables());
                    Some(BodyTemplate::Json(j))
                }
                Err(e) => {
                    self.errors.at(&format!("{path}.json"), e);
                    None
                }
            }
        } else if let Some(p) = &r.payload {
            match parse_size(p).filter(|n| *n <= MAX_PAYLOAD) {
                Some(n) => Some(BodyTemplate::Payload(Bytes::from(random_payload(
                    usize::try_from(n).unwrap_or(0),
                )))),
                None => {
                    self.errors.at(
                        &format!("{path}.payload"),
                        format!("bad size {p:?} (e.g. 512, 100KB, 1MiB; at most 64MiB)"),
                    );
                    None
                }
            }
        } else {
            Some(BodyTemplate::Empty)
        };
        let checks: Vec<Check> = r
            .checks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| self.check(&format!("{path}.checks[{i}]"), c))
            .collect();
        let expect = match &r.expect_status {
            None if r.websocket => Expect::Statuses(vec![101]),
            None => Expect::Below400,
            Some(list) if list.is_empty() => {
                self.errors
                    .at(&format!("{path}.expect_status"), "must not be empty");
                Expect::Below400
            }
            Some(list) => {
                if let Some(s) = list.iter().find(|s| !(100..=599).contains(*s)) {
                    self.errors
                        .at(&format!("{path}.expect_status"), format!("bad status {s}"));
                }
                Expect::Statuses(list.clone())
            }
        };
        let extract = r
            .extract
            .iter()
            .filter_map(|(var, p)| match JsonPath::parse(p) {
                Some(jp) => Some((var.clone(), jp)),
                None => {
                    self.errors.at(
                        &format!("{path}.extract.{var}"),
                        format!("bad JSON path {p:?} (use a.b.0.c)"),
                    );
                    None
                }
            })
            .collect();
        let timeout = r
            .timeout
            .as_deref()
            .and_then(|t| duration(self.errors, &format!("{path}.timeout"), t));
        let max_body = r.max_body_size.as_deref().and_then(|s| {
            let n = parse_size(s).filter(|n| *n > 0);
            if n.is_none() {
                self.errors.at(
                    &format!("{path}.max_body_size"),
                    format!("bad size {s:?} (e.g. 64KB, 16MiB; more than 0)"),
                );
            }
            n
        });
        if r.websocket && method.as_ref().is_some_and(|m| m != Method::GET) {
            self.errors
                .at(&format!("{path}.method"), "a websocket request is a GET");
        }
        let method = method?;
        let tpath = tpath?;
        let name = r.name.clone().unwrap_or_else(|| tpath.stats_name());
        let key = (method.as_str().to_owned(), name.clone());
        let stat = match self.stat_names.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                self.stat_names.push(key);
                self.stat_names.len() - 1
            }
        };
        Some(Request {
            stat,
            name,
            method,
            path: tpath,
            headers,
            body: body?,
            checks,
            expect,
            extract,
            timeout,
            max_body,
            new_connection: r.new_connection || r.websocket,
            websocket: r.websocket,
        })
    }

    fn plain(&mut self, path: &str, r: &RequestSpec) -> Option<Request> {
        if r.weight.is_some() {
            self.errors
                .at(&format!("{path}.weight"), "only tasks have a weight");
        }
        if !r.step.is_empty() {
            self.errors
                .at(&format!("{path}.step"), "only tasks have steps");
        }
        self.request(path, r)
    }

    fn task(&mut self, path: &str, t: &RequestSpec) -> Option<Task> {
        let weight = t.weight.unwrap_or(1);
        if weight == 0 {
            self.errors
                .at(&format!("{path}.weight"), "must be at least 1");
        }
        let steps = if t.step.is_empty() {
            vec![self.request(path, t)?]
        } else {
            let has_request_fields = t.path.is_some()
                || t.method.is_some()
                || t.body.is_some()
                || t.json.is_some()
                || t.payload.is_some()
                || !t.headers.is_empty()
                || !t.checks.is_empty()
                || !t.extract.is_empty()
                || t.expect_status.is_some()
                || t.max_body_size.is_some();
            if has_request_fields {
                self.errors.at(
                    path,
                    "a sequence task (with step) has only weight, name and step; put the request fields in each step",
                );
            }
            let steps: Vec<Request> = t
                .step
                .iter()
                .enumerate()
                .filter_map(|(i, s)| self.plain(&format!("{path}.step[{i}]"), s))
                .collect();
            if steps.len() != t.step.len() {
                return None;
            }
            steps
        };
        Some(Task { weight, steps })
    }
}

fn all_requests(u: &UserSpec) -> impl Iterator<Item = &RequestSpec> {
    u.on_start.iter().chain(&u.on_stop).chain(
        u.task
            .iter()
            .flat_map(|t| std::iter::once(t).chain(&t.step)),
    )
}

fn class(
    errors: &mut Errors,
    stat_names: &mut Vec<(String, String)>,
    path: &str,
    u: &UserSpec,
) -> Option<UserClass> {
    if u.name.trim().is_empty() {
        errors.at(&format!("{path}.name"), "must not be empty");
    }
    if u.weight == 0 {
        errors.at(&format!("{path}.weight"), "must be at least 1");
    }
    if u.task.is_empty() {
        errors.at(
            &format!("{path}.task"),
            "a user class needs at least one task",
        );
    }
    let wait = match u.wait_time.as_deref().map(parse_wait_time) {
        None => Some(WaitTime::None),
        Some(Ok(w)) => Some(w),
        Some(Err(e)) => {
            errors.at(&format!("{path}.wait_time"), e);
            None
        }
    };
    let mut declared: BTreeSet<String> = u.vars.keys().cloned().collect();
    declared.extend(all_requests(u).flat_map(|r| r.extract.keys().cloned()));
    let mut ctx = ClassCtx {
        errors,
        stat_names,
        declared,
    };
    let headers = ctx.headers(&format!("{path}.headers"), &u.headers);
    let vars: Vec<(String, Template)> = u
        .vars
        .iter()
        .filter_map(|(k, v)| {
            let p = format!("{path}.vars.{k}");
            match Template::parse(v) {
                Ok(t) if !t.variables().is_empty() => {
                    ctx.errors.at(
                        &p,
                        "vars may use functions (randint, choice, uuid) but not other variables",
                    );
                    None
                }
                Ok(t) => Some((k.clone(), t)),
                Err(e) => {
                    ctx.errors.at(&p, e);
                    None
                }
            }
        })
        .collect();
    let on_start: Vec<Request> = u
        .on_start
        .iter()
        .enumerate()
        .filter_map(|(i, r)| ctx.plain(&format!("{path}.on_start[{i}]"), r))
        .collect();
    let on_stop: Vec<Request> = u
        .on_stop
        .iter()
        .enumerate()
        .filter_map(|(i, r)| ctx.plain(&format!("{path}.on_stop[{i}]"), r))
        .collect();
    let tasks: Vec<Task> = u
        .task
        .iter()
        .enumerate()
        .filter_map(|(i, t)| ctx.task(&format!("{path}.task[{i}]"), t))
        .collect();
    Some(UserClass {
        name: u.name.clone(),
        weight: u.weight,
        wait: wait?,
        headers,
        vars,
        cookies: u.cookies,
        keep_alive: u.keep_alive,
        on_start,
        on_stop,
        tasks,
    })
}

/// Validates a whole file.
pub(super) fn scenario(file: ScenarioFile) -> Result<Scenario, ScenarioError> {
    let mut errors = Errors::default();
    if let Some(host) = &file.host {
        if let Err(e) = crate::client::Target::parse(host) {
            errors.at("host", e);
        }
    }
    let mut run = load_spec(&mut errors, "", &file.run);
    let mut top = thresholds(&mut errors, "thresholds", &file.thresholds);
    top.append(&mut run.thresholds);
    run.thresholds = top;
    let presets: BTreeMap<String, Preset> = file
        .preset
        .iter()
        .map(|(name, spec)| {
            let p = format!("preset.{name}");
            let ls = load_spec(&mut errors, &p, spec);
            (
                name.clone(),
                Preset {
                    description: spec.description.clone().unwrap_or_default(),
                    spec: ls,
                },
            )
        })
        .collect();
    let faults: Vec<ScheduledFault> = file
        .fault
        .iter()
        .enumerate()
        .filter_map(|(i, f)| fault(&mut errors, &format!("fault[{i}]"), f))
        .collect();
    if file.user.is_empty() {
        errors.at("user", "a scenario needs at least one [[user]] class");
    }
    let mut names = BTreeSet::new();
    let mut stat_names = Vec::new();
    let classes: Vec<UserClass> = file
        .user
        .iter()
        .enumerate()
        .filter_map(|(i, u)| {
            let p = format!("user[{i}]");
            if !names.insert(u.name.clone()) {
                errors.at(
                    &format!("{p}.name"),
                    format!("duplicate class name {:?}", u.name),
                );
            }
            class(&mut errors, &mut stat_names, &p, u)
        })
        .collect();
    let scenario = Scenario {
        name: file.name.unwrap_or_else(|| "scenario".to_owned()),
        description: file.description.unwrap_or_default(),
        host: file.host,
        run,
        presets,
        faults,
        classes,
        stat_names,
    };
    for (name, preset) in std::iter::once(("run".to_owned(), &scenario.run)).chain(
        scenario
            .presets
            .iter()
            .map(|(n, p)| (format!("preset.{n}"), &p.spec)),
    ) {
        if let Err(e) = scenario.select_classes(preset.user_classes.as_deref()) {
            errors.at(&format!("{name}.user_classes"), e);
        }
    }
    if errors.0.is_empty() {
        Ok(scenario)
    } else {
        Err(ScenarioError { errors: errors.0 })
    }
}
