//! The UI's session: at most one run at a time, built from the `run` command line the UI
//! was started with and the page's fields, exactly as `loadgen run` builds it
//! ([`crate::cli::prepare`]), driven by [`runner::run_with`] through a [`Control`]. When a
//! run ends its reports are written by [`crate::report::write_all`] into `out/run-N/`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::cli::RunArgs;
use crate::metrics::RunResult;
use crate::report::Outputs;
use crate::runner::{self, Change, Control};
use crate::scenario::Scenario;
use crate::sla::{self, Verdict};

/// The files of a finished run the page offers, and what they are.
pub const DOWNLOADS: [(&str, &str); 6] = [
    ("loadgen_stats.csv", "stats CSV"),
    ("loadgen_stats_history.csv", "history CSV"),
    ("loadgen_failures.csv", "failures CSV"),
    ("loadgen_exceptions.csv", "exceptions CSV"),
    ("report.html", "HTML report"),
    ("summary.json", "JSON summary"),
];

/// Most series points sent to the page (the last ones).
const SERIES_POINTS: usize = 1800;

/// The page's "start" form; an empty field keeps the preset's (or the scenario's) value.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartForm {
    /// A preset of the scenario.
    #[serde(default)]
    pub preset: Option<String>,
    /// Closed model users.
    #[serde(default)]
    pub users: Option<u64>,
    /// Users started per second.
    #[serde(default)]
    pub spawn_rate: Option<f64>,
    /// Run time (`30s`, `5m`); empty: until stopped.
    #[serde(default)]
    pub run_time: Option<String>,
    /// Target URL.
    #[serde(default)]
    pub host: Option<String>,
    /// Open model: iterations per second.
    #[serde(default)]
    pub arrival_rate: Option<f64>,
}

/// A change of a running run from the page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeForm {
    /// New user count (closed models).
    #[serde(default)]
    pub users: Option<u64>,
    /// New spawn rate for the change.
    #[serde(default)]
    pub spawn_rate: Option<f64>,
    /// New arrival rate (open models).
    #[serde(default)]
    pub arrival_rate: Option<f64>,
}

#[derive(Debug)]
struct Finished {
    result: RunResult,
    verdicts: Vec<Verdict>,
    dir: PathBuf,
}

#[derive(Debug, Default)]
struct State {
    runs: u64,
    running: Option<Control>,
    /// Whether the running run is an open model (it takes an arrival rate).
    open: bool,
    finished: Option<Arc<Finished>>,
    error: Option<String>,
}

/// The UI's one session.
#[derive(Debug)]
pub struct Session {
    template: RunArgs,
    scenario: Scenario,
    workers: usize,
    out: PathBuf,
    state: Mutex<State>,
}

fn stat_json(s: &crate::metrics::StatEntry, secs: f64) -> Value {
    json!({
        "method": s.method,
        "name": s.name,
        "requests": s.requests,
        "failures": s.failures,
        "median": s.percentile_ms(0.5),
        "p95": s.percentile_ms(0.95),
        "p99": s.percentile_ms(0.99),
        "avg": s.avg_ms(),
        "max": s.max_ms(),
        "rps": crate::metrics::rate(s.requests, secs),
    })
}

/// What the page shows of a result (live or final).
fn result_json(r: &RunResult, verdicts: &[Verdict]) -> Value {
    let skip = r.series.len().saturating_sub(SERIES_POINTS);
    let series: Vec<Value> = r
        .series
        .iter()
        .skip(skip)
        .map(|p| {
            json!([
                p.elapsed,
                p.requests,
                p.failures,
                p.pct(0.5),
                p.pct(0.95),
                p.pct(0.99),
                p.users
            ])
        })
        .collect();
    json!({
        "elapsed": r.duration_secs,
        "plan": r.plan,
        "host": r.host,
        "series": series,
        "stats": r.stats.iter().map(|s| stat_json(s, r.duration_secs)).collect::<Vec<_>>(),
        "total": stat_json(&r.total, r.duration_secs),
        "failures": r.failures.iter().map(|f| json!({
            "method": f.method, "name": f.name, "error": f.error, "occurrences": f.occurrences,
        })).collect::<Vec<_>>(),
        "verdicts": verdicts.iter().map(|v| json!({
            "threshold": v.threshold, "held": v.held, "detail": v.detail,
        })).collect::<Vec<_>>(),
        "unreliable": r.reliability.reasons,
    })
}

impl Session {
    /// A session for the `run` command line `template`, on a runtime of `workers` threads,
    /// writing reports under `out`.
    pub fn new(template: RunArgs, workers: usize, out: PathBuf) -> Result<Self, String> {
        let scenario = Scenario::load(&template.scenario).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        Ok(Self {
            template,
            scenario,
            workers,
            out,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The scenario's name.
    pub fn scenario_name(&self) -> &str {
        &self.scenario.name
    }

    /// The `run` arguments of a start form.
    fn args(&self, form: &StartForm) -> Result<RunArgs, String> {
        let mut args = self.template.clone();
        let text = |s: &Option<String>| {
            s.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        if let Some(p) = text(&form.preset) {
            args.preset = Some(p);
        }
        if let Some(h) = text(&form.host) {
            args.host = Some(h);
        }
        if let Some(t) = text(&form.run_time) {
            args.run_time = Some(crate::cli::parse_duration(&t)?);
        }
        args.users = form.users.or(args.users);
        args.spawn_rate = form.spawn_rate.or(args.spawn_rate);
        args.arrival_rate = form.arrival_rate.or(args.arrival_rate);
        args.only_summary = true;
        Ok(args)
    }

    /// Starts a run; an error when one is running or the form does not make a run.
    pub fn start(self: &Arc<Self>, form: &StartForm) -> Result<(), String> {
        let args = self.args(form)?;
        let (mut cfg, _) = crate::cli::prepare(&args)?;
        cfg.workers = self.workers;
        cfg.live = false;
        let open = cfg.plan.is_open();
        let control = Control::default();
        let run_no = {
            let mut state = self.lock();
            if state.running.is_some() {
                return Err("a run is already running: stop it first".into());
            }
            state.runs += 1;
            state.running = Some(control.clone());
            state.open = open;
            state.error = None;
            state.runs
        };
        let session = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = runner::run_with(cfg, Some(control)).await;
            session.finish(run_no, outcome);
        });
        Ok(())
    }

    /// Records a run's end and writes its reports, as a headless run does.
    fn finish(&self, run_no: u64, outcome: Result<RunResult, String>) {
        let done = outcome.and_then(|result| {
            let verdicts = sla::judge_all(&result);
            print!("{}", crate::report::table::render(&result, &verdicts));
            let dir = self.out.join(format!("run-{run_no}"));
            let outputs = Outputs {
                csv: Some(dir.join("loadgen")),
                html: Some(dir.join("report.html")),
                summary: Some(dir.join("summary.json")),
                junit: None,
                result: None,
            };
            crate::report::write_all(&result, &verdicts, &outputs)?;
            eprintln!("loadgen: run {run_no} ended; reports in {}", dir.display());
            Ok(Finished {
                result,
                verdicts,
                dir,
            })
        });
        let mut state = self.lock();
        state.running = None;
        match done {
            Ok(f) => state.finished = Some(Arc::new(f)),
            Err(e) => state.error = Some(e),
        }
    }

    /// Stops the running run (its reports follow when it has ended).
    pub fn stop(&self) -> Result<(), String> {
        let state = self.lock();
        let control = state.running.as_ref().ok_or("no run is running")?;
        control.stop();
        Ok(())
    }

    /// Changes the running run's user count or arrival rate.
    pub fn change(&self, form: &ChangeForm) -> Result<(), String> {
        let state = self.lock();
        let control = state.running.as_ref().ok_or("no run is running")?;
        let open = state.open;
        match (form.users, form.arrival_rate) {
            (Some(users), None) if !open => {
                if let Some(r) = form.spawn_rate {
                    if !(r > 0.0 && r.is_finite()) {
                        return Err("spawn_rate must be above 0".into());
                    }
                }
                control.change(Change::Users {
                    users,
                    spawn_rate: form.spawn_rate,
                });
                Ok(())
            }
            (None, Some(rate)) if open => {
                if !(rate > 0.0 && rate.is_finite()) {
                    return Err("arrival_rate must be above 0".into());
                }
                control.change(Change::Rate(rate));
                Ok(())
            }
            _ if open => Err("an open-model run takes an arrival_rate".into()),
            _ => Err("a closed-model run takes a user count".into()),
        }
    }

    /// The page's view: the scenario and its presets, the run's phase and everything it
    /// measured so far (live) or in the end.
    pub fn view(&self) -> Value {
        let state = self.lock();
        let presets: Vec<Value> = self
            .scenario
            .presets
            .iter()
            .map(|(name, p)| {
                let plan = self
                    .scenario
                    .spec(Some(name))
                    .and_then(|s| s.plan())
                    .map(|p| p.describe())
                    .unwrap_or_else(|e| e);
                json!({"name": name, "description": p.description, "plan": plan,
                       "open": p.spec.arrival_rate.is_some() || p.spec.arrival_stages.is_some()})
            })
            .collect();
        let default_plan = self
            .scenario
            .run
            .plan()
            .map(|p| p.describe())
            .unwrap_or_else(|e| e);
        let mut view = json!({
            "scenario": self.scenario.name,
            "host": self.template.host.clone().or_else(|| self.scenario.host.clone()),
            "presets": presets,
            "default_plan": default_plan,
            "runs": state.runs,
            "error": state.error,
        });
        if let Some(control) = &state.running {
            view["phase"] = json!(if control.stop_requested() {
                "stopping"
            } else {
                "running"
            });
            if let Some(snap) = control.snapshot() {
                let verdicts = sla::judge_all(&snap.result);
                view["run"] = result_json(&snap.result, &verdicts);
                view["users"] = json!(snap.users);
                view["target"] = json!(snap.target);
            }
            view["open"] = json!(state.open);
        } else if let Some(f) = &state.finished {
            view["phase"] = json!("done");
            view["run"] = result_json(&f.result, &f.verdicts);
            view["users"] = json!(0);
            view["downloads"] = json!(DOWNLOADS
                .iter()
                .map(|(file, what)| json!({"href": format!("/download/{file}"), "name": what}))
                .collect::<Vec<_>>());
        } else {
            view["phase"] = json!("idle");
        }
        view
    }

    /// A file of the last finished run: its bytes, when `name` is one of [`DOWNLOADS`].
    pub fn download(&self, name: &str) -> Option<Vec<u8>> {
        DOWNLOADS.iter().find(|(f, _)| *f == name)?;
        let dir = self.lock().finished.as_ref()?.dir.clone();
        std::fs::read(dir.join(name)).ok()
    }

    /// The exit code when the UI quits: the last finished run's verdict (0 without one).
    pub fn exit_code(&self) -> u8 {
        match &self.lock().finished {
            Some(f) if !f.verdicts.iter().all(|v| v.held) => crate::cli::EXIT_MISSED,
            _ => crate::cli::EXIT_HELD,
        }
    }
}
