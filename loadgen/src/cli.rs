//! The command line: `run`, `ui`, `merge`, `check`, `demo`. Flags follow Locust where Locust has
//! them (`--host`, `--users`, `--spawn-rate`, `--run-time`, `--headless`, `--csv`,
//! `--html`, `--only-summary`, `--user-classes`) and k6 for `--summary-export` and
//! `--stage`. Exit codes: 0 every SLA threshold held, 1 one missed, 2 usage or scenario
//! error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::{Target, Verify};
use crate::metrics::RunResult;
use crate::plan::{LoadSpec, Stage};
use crate::report::{self, Outputs};
use crate::runner::{self, RunConfig};
use crate::scenario::Scenario;
use crate::sla::{self, Threshold};

/// Exit code: every threshold held.
pub const EXIT_HELD: u8 = 0;
/// Exit code: a threshold was missed.
pub const EXIT_MISSED: u8 = 1;
/// Exit code: usage or scenario error.
pub const EXIT_USAGE: u8 = 2;

/// Locust-style load generator with HDR latency histograms and SLA verdicts.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario file against a target.
    Run(Box<RunArgs>),
    /// Merge result files of a distributed run (`--shard i/n`) into one report.
    Merge(MergeArgs),
    /// Validate scenario files (exit 0, or 2 with every error and its key path).
    Check {
        /// Scenario files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The live web UI (like Locust's) for a scenario: pick a preset or users, spawn rate,
    /// run time and host, start, stop, change the user count while running, watch the
    /// charts, download the reports.
    Ui(crate::ui::UiArgs),
    /// The full demo: mock-upstream + gateway on free local ports, the Meetinity baseline
    /// mix through them, the SLA verdict, the HTML report and CSVs.
    Demo(crate::demo::DemoArgs),
}

/// Report files.
#[derive(Debug, Clone, Default, Args)]
pub struct OutputArgs {
    /// Write Locust-compatible CSVs: PREFIX_stats.csv, _stats_history.csv, _failures.csv,
    /// _exceptions.csv.
    #[arg(long, value_name = "PREFIX")]
    pub csv: Option<PathBuf>,
    /// Write the self-contained HTML report.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Write the JSON summary (k6 summary-export keys).
    #[arg(long, value_name = "FILE")]
    pub summary_export: Option<PathBuf>,
    /// Write JUnit XML of the SLA checks.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// An SLA threshold (`p95<350ms`, `error_rate<0.5%`, `rps>=900`, `NAME: p99<1s`);
    /// repeatable, adds to the scenario's.
    #[arg(long = "threshold", value_name = "EXPR")]
    pub thresholds: Vec<String>,
}

impl OutputArgs {
    fn outputs(&self, result: Option<PathBuf>) -> Outputs {
        Outputs {
            csv: self.csv.clone(),
            html: self.html.clone(),
            summary: self.summary_export.clone(),
            junit: self.junit.clone(),
            result,
        }
    }
}

/// `loadgen run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The scenario file (TOML).
    pub scenario: PathBuf,
    /// Target URL (http://HOST:PORT); the scenario's `host` when absent.
    #[arg(short = 'H', long)]
    pub host: Option<String>,
    /// A preset of the scenario (light, baseline, spike, ...).
    #[arg(long)]
    pub preset: Option<String>,
    /// Closed model: simulated users.
    #[arg(short = 'u', long)]
    pub users: Option<u64>,
    /// Closed model: users started per second.
    #[arg(short = 'r', long)]
    pub spawn_rate: Option<f64>,
    /// Stop after this long (`30s`, `5m`, `1h30m`).
    #[arg(short = 't', long, value_parser = parse_duration)]
    pub run_time: Option<Duration>,
    /// Stop after this many requests.
    #[arg(long)]
    pub max_requests: Option<u64>,
    /// A k6-style stage DURATION:TARGET users (repeatable, in order).
    #[arg(long = "stage", value_parser = parse_stage)]
    pub stages: Vec<Stage>,
    /// Open model: iterations started per second, whatever the latency.
    #[arg(long)]
    pub arrival_rate: Option<f64>,
    /// Open model: a stage DURATION:RATE of arrival rates (repeatable).
    #[arg(long = "arrival-stage", value_parser = parse_stage)]
    pub arrival_stages: Vec<Stage>,
    /// Open model: most iterations in flight.
    #[arg(long)]
    pub max_vus: Option<u64>,
    /// Only these user classes (space- or comma-separated).
    #[arg(long, num_args = 1..)]
    pub user_classes: Option<Vec<String>>,
    /// No web UI. Without it, `run` in a terminal (stdin and stdout both terminals) with
    /// none of --run-time, --max-requests, --shard, --result, --only-summary,
    /// --prometheus-listen, --metrics-url, report files or thresholds starts the web UI on
    /// --listen instead, as Locust does; otherwise it runs headless.
    #[arg(long)]
    pub headless: bool,
    /// Where the web UI listens when `run` starts it.
    #[arg(long, default_value = crate::ui::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// No live view; only the final summary.
    #[arg(long)]
    pub only_summary: bool,
    /// Per-request timeout (a request's `timeout` overrides it).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// After the run time: how long requests in flight and on_stop requests may take
    /// (k6's gracefulStop); requests still in flight then are recorded as timeout failures.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub stop_timeout: Duration,
    /// Most response-body bytes kept for checks and extraction (`4MiB`, `512KB`; a
    /// request's `max_body_size` overrides it); a longer body fails its checks and is not
    /// read further.
    #[arg(long, default_value = "4MiB", value_parser = parse_max_body)]
    pub max_body_size: u64,
    /// Runtime worker threads (default: one per core; 1 = a single-threaded runtime).
    #[arg(long)]
    pub workers: Option<usize>,
    /// PEM CA bundle an `https://` target's certificate is verified against, instead of
    /// the system's roots (a staging gateway with a private CA).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub cacert: Option<PathBuf>,
    /// Do not verify an `https://` target's certificate at all: for a test target only.
    #[arg(long)]
    pub insecure: bool,
    /// mock-upstream's URL, for the scenario's scheduled faults.
    #[arg(long, value_name = "URL")]
    pub control: Option<String>,
    /// The gateway's Prometheus endpoint, scraped before and after for a server-side
    /// cross-check (skipped cleanly when it is absent).
    #[arg(long, value_name = "URL")]
    pub metrics_url: Option<String>,
    /// Serve live client-side metrics for Prometheus at http://ADDR/metrics (requests and
    /// failures by name and status class, latency histograms with the gateway's bucket
    /// edges, users, CPU saturation); `127.0.0.1:0` picks a free port (printed). After the
    /// run, loadgen waits (bounded) for one last scrape.
    #[arg(long, value_name = "ADDR")]
    pub prometheus_listen: Option<String>,
    /// Run one worker's share `I/N` of a distributed run and write a result file.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<(u64, u64)>,
    /// Write the result file (for `loadgen merge`); default with --shard:
    /// loadgen-result-I-of-N.json.
    #[arg(long, value_name = "FILE")]
    pub result: Option<PathBuf>,
    /// Report files and thresholds.
    #[command(flatten)]
    pub out: OutputArgs,
}

impl RunArgs {
    /// The `run` command line `loadgen run SCENARIO` would have (every default).
    pub fn defaults(scenario: &std::path::Path) -> Result<Self, String> {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            run: RunArgs,
        }
        Only::try_parse_from([std::ffi::OsStr::new("loadgen"), scenario.as_os_str()])
            .map(|o| o.run)
            .map_err(|e| e.to_string())
    }

    /// Whether this command line starts the web UI: not `--headless`, stdin and stdout
    /// are terminals, and nothing bounds or scripts the run (no run time, request budget,
    /// shard, result or report file, threshold, `--only-summary`, `--prometheus-listen` or
    /// `--metrics-url`). Scripts, CI and tests (stdout piped) always run headless.
    pub fn wants_ui(&self, terminal: bool) -> bool {
        let out = &self.out;
        let scripted = self.run_time.is_some()
            || self.max_requests.is_some()
            || self.shard.is_some()
            || self.result.is_some()
            || self.only_summary
            || self.prometheus_listen.is_some()
            || self.metrics_url.is_some()
            || out.csv.is_some()
            || out.html.is_some()
            || out.summary_export.is_some()
            || out.junit.is_some()
            || !out.thresholds.is_empty();
        !self.headless && terminal && !scripted
    }
}

/// `loadgen merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Result files written by `loadgen run --shard`.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Report files and extra thresholds.
    #[command(flatten)]
    pub out: OutputArgs,
}

/// Parses a human duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("bad duration {s:?}: {e}"))
}

fn parse_max_body(s: &str) -> Result<u64, String> {
    crate::scenario::template::parse_size(s)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("bad size {s:?}: expected e.g. 4MiB, 512KB, 65536 (more than 0)"))
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    let (d, t) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("bad stage {s:?}: expected DURATION:TARGET, e.g. 30s:100"))?;
    let target: f64 = t
        .trim()
        .parse()
        .map_err(|_| format!("bad stage {s:?}: target {t:?} is not a number"))?;
    if !(target >= 0.0 && target.is_finite()) {
        return Err(format!("bad stage {s:?}: the target must be >= 0"));
    }
    Ok(Stage {
        duration: parse_duration(d)?,
        target,
    })
}

fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("bad shard {s:?}: expected I/N, e.g. 2/4"))?;
    let (i, n): (u64, u64) = (
        i.trim().parse().map_err(|_| format!("bad shard {s:?}"))?,
        n.trim().parse().map_err(|_| format!("bad shard {s:?}"))?,
    );
    if n == 0 || i == 0 || i > n {
        return Err(format!("bad shard {s:?}: need 1 <= I <= N"));
    }
    Ok((i, n))
}

/// A usage error: printed, exit 2.
fn usage(msg: &str) -> ExitCode {
    eprintln!("loadgen: {msg}");
    ExitCode::from(EXIT_USAGE)
}

/// Builds the runtime: `workers` threads, or a single-threaded runtime for 1.
pub fn runtime(workers: Option<usize>) -> Result<(tokio::runtime::Runtime, usize), String> {
    let n = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = if n <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()
    };
    rt.map(|rt| (rt, n.max(1)))
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Judges, prints and writes a result; the exit code.
pub fn finish(result: &RunResult, outputs: &Outputs) -> ExitCode {
    let verdicts = sla::judge_all(result);
    print!("{}", report::table::render(result, &verdicts));
    if let Err(e) = report::write_all(result, &verdicts, outputs) {
        eprintln!("loadgen: writing the reports failed: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    if verdicts.iter().all(|v| v.held) {
        ExitCode::from(EXIT_HELD)
    } else {
        ExitCode::from(EXIT_MISSED)
    }
}

/// Everything `run` needs, resolved from the file, the preset and the flags.
pub fn prepare(args: &RunArgs) -> Result<(RunConfig, Option<String>), String> {
    let scenario = Scenario::load(&args.scenario).map_err(|e| e.to_string())?;
    let base = scenario.spec(args.preset.as_deref())?;
    let cli_thresholds: Vec<Threshold> = args
        .out
        .thresholds
        .iter()
        .map(|t| t.parse::<Threshold>().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let flags = LoadSpec {
        users: args.users,
        spawn_rate: args.spawn_rate,
        run_time: args.run_time,
        max_requests: args.max_requests,
        stages: (!args.stages.is_empty()).then(|| args.stages.clone()),
        arrival_rate: args.arrival_rate,
        arrival_stages: (!args.arrival_stages.is_empty()).then(|| args.arrival_stages.clone()),
        start_rate: None,
        max_vus: args.max_vus,
        user_classes: args.user_classes.clone(),
        thresholds: cli_thresholds,
    };
    let mut spec = base.overlay(&flags);
    if let Some((i, n)) = args.shard {
        spec = spec.shard(i, n);
    }
    let plan = spec.plan()?;
    crate::limits::ensure_open_files(plan.max_concurrency())?;
    let classes = scenario.select_classes(spec.user_classes.as_deref())?;
    let host = args
        .host
        .clone()
        .or_else(|| scenario.host.clone())
        .ok_or("no target: give --host URL (or host = \"...\" in the scenario)")?;
    let verify = match (&args.cacert, args.insecure) {
        (Some(ca), _) => Verify::CaFile(ca.clone()),
        (None, true) => Verify::Insecure,
        (None, false) => Verify::SystemRoots,
    };
    if args.insecure && host.starts_with("https://") {
        eprintln!("loadgen: --insecure: the certificate of {host} is NOT verified");
    }
    let target = Target::parse(&host)?.verify(&verify)?;
    let control = args.control.as_deref().map(Target::parse).transpose()?;
    Ok((
        RunConfig {
            scenario: Arc::new(scenario),
            classes,
            plan,
            target,
            timeout: args.timeout,
            max_body: args.max_body_size,
            max_requests: spec.max_requests,
            thresholds: spec.thresholds.iter().map(|t| t.source.clone()).collect(),
            live: !args.only_summary,
            control,
            workers: 1,
            stop_timeout: args.stop_timeout,
            shard: args.shard,
        },
        args.metrics_url.clone(),
    ))
}

fn run(args: &RunArgs) -> ExitCode {
    let (mut cfg, metrics_url) = match prepare(args) {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    let metrics = match metrics_url.as_deref().map(Target::parse).transpose() {
        Ok(m) => m,
        Err(e) => return usage(&e),
    };
    if cfg.plan.duration().is_none() && cfg.max_requests.is_none() {
        eprintln!("loadgen: no --run-time or --max-requests: running until Ctrl-C");
    }
    let (rt, workers) = match runtime(args.workers) {
        Ok(r) => r,
        Err(e) => return usage(&e),
    };
    cfg.workers = workers;
    let mut prom = None;
    let result = rt.block_on(async {
        let before = match &metrics {
            Some(m) => Some(crate::crosscheck::scrape(m).await),
            None => None,
        };
        if let Some(addr) = &args.prometheus_listen {
            // The gateway's own bucket edges when it exposes them already.
            let edges = before
                .as_ref()
                .and_then(|b| b.as_ref().ok())
                .and_then(|text| crate::prom::gateway_edges(text));
            let s = &cfg.scenario;
            prom = Some(crate::prom::serve(addr, &s.name, &s.stat_names, workers, edges).await?);
        }
        let mut result = runner::run(cfg).await?;
        if let (Some(m), Some(before)) = (&metrics, before) {
            let after = crate::crosscheck::scrape(m).await;
            match crate::crosscheck::compare(before, after, &result) {
                Ok(server) => result.server = Some(server),
                Err(why) => eprintln!("loadgen: server-side cross-check skipped: {why}"),
            }
        }
        Ok::<_, String>(result)
    });
    let result = match result {
        Ok(r) => r,
        Err(e) => return usage(&e),
    };
    let result_file = args.result.clone().or_else(|| {
        args.shard
            .map(|(i, n)| PathBuf::from(format!("loadgen-result-{i}-of-{n}.json")))
    });
    let code = finish(&result, &args.out.outputs(result_file));
    if let Some(p) = &prom {
        rt.block_on(p.linger());
    }
    code
}

fn merge(args: &MergeArgs) -> ExitCode {
    let all: Result<Vec<RunResult>, String> =
        args.files.iter().map(|f| crate::merge::read(f)).collect();
    let mut merged = match all.and_then(crate::merge::merge) {
        Ok(m) => m,
        Err(e) => return usage(&e),
    };
    for t in &args.out.thresholds {
        if let Err(e) = t.parse::<Threshold>() {
            return usage(&e.to_string());
        }
        merged.thresholds.push(t.clone());
    }
    finish(&merged, &args.out.outputs(None))
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for f in files {
        match Scenario::load(f) {
            Ok(s) => println!(
                "{}: ok ({} user classes, {} presets, {} request names)",
                f.display(),
                s.classes.len(),
                s.presets.len(),
                s.stat_names.len()
            ),
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    ExitCode::from(if ok { EXIT_HELD } else { EXIT_USAGE })
}

/// Runs a parsed command line.
pub fn main(cli: Cli) -> ExitCode {
    match &cli.command {
        Command::Run(args) => {
            use std::io::IsTerminal;
            let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
            if args.wants_ui(terminal) {
                crate::ui::serve((**args).clone(), args.listen, None)
            } else {
                run(args)
            }
        }
        Command::Ui(args) => crate::ui::main(args),
        Command::Merge(args) => merge(args),
        Command::Check { files } => check(files),
        Command::Demo(args) => crate::demo::run(args),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["loadgen", "run", "s.toml"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn run_starts_the_ui_only_in_a_terminal_and_when_nothing_scripts_the_run() {
        assert!(args(&[]).wants_ui(true));
        assert!(args(&["--users", "5", "--host", "http://x"]).wants_ui(true));
        assert!(
            !args(&[]).wants_ui(false),
            "piped: scripts and tests stay headless"
        );
        for scripted in [
            &["--headless"][..],
            &["--run-time", "10s"],
            &["--max-requests", "10"],
            &["--only-summary"],
            &["--csv", "out"],
            &["--threshold", "p95<1s"],
            &["--shard", "1/2"],
            &["--metrics-url", "http://127.0.0.1:9/metrics"],
        ] {
            assert!(!args(scripted).wants_ui(true), "{scripted:?}");
        }
        assert_eq!(
            args(&[]).listen,
            crate::ui::DEFAULT_LISTEN
                .parse::<std::net::SocketAddr>()
                .unwrap()
        );
    }
}
