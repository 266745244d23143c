//! `loadgen demo`: the main job on one machine. Starts `mock-upstream` and the gateway
//! (embedded default config) from the binaries next to this executable, on ports the OS
//! picks, runs the Meetinity baseline mix (the shipped `meetinity-gateway.toml`) through
//! the gateway, prints the SLA verdict, writes the HTML report, CSVs, JSON summary and
//! JUnit XML, then stops both processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use http_body_util::Full;

use crate::cli::{self, EXIT_USAGE};
use crate::client::{Conn, Target};
use crate::report::Outputs;
use crate::runner::{self, RunConfig};
use crate::scenario::Scenario;

/// The scenario the demo runs.
pub const DEMO_SCENARIO: &str = include_str!("../scenarios/meetinity-gateway.toml");

/// Bound on every start-up wait.
const START_WAIT: Duration = Duration::from_secs(20);

/// `loadgen demo` flags.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long the load runs.
    #[arg(short = 't', long, default_value = "60s", value_parser = cli::parse_duration)]
    pub run_time: Duration,
    /// Where the reports go.
    #[arg(long, default_value = "reports")]
    pub out: PathBuf,
    /// The preset of meetinity-gateway.toml to run.
    #[arg(long, default_value = "baseline")]
    pub preset: String,
    /// Directory of the mock-upstream and gateway binaries (default: next to loadgen).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// No live view.
    #[arg(long)]
    pub only_summary: bool,
}

/// A child process stopped with SIGTERM (then killed) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!(
            "loadgen demo: {} did not stop on SIGTERM; killed",
            self.name
        );
    }
}

/// Spawns `cmd` and waits for its first stdout line.
fn spawn(name: &'static str, mut cmd: Command) -> Result<(Proc, String), String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let stdout = child.stdout.take();
    let proc = Proc { name, child };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(out) = stdout {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        }
    });
    let line = rx
        .recv_timeout(START_WAIT)
        .map_err(|_| format!("{name} did not report its address within {START_WAIT:?}"))?;
    Ok((proc, line))
}

fn bin_dir(args: &DemoArgs) -> Result<PathBuf, String> {
    if let Some(d) = &args.bin_dir {
        return Ok(d.clone());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find loadgen's path: {e}"))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "cannot find loadgen's directory".to_owned())
}

async fn wait_ready(admin: &Target) -> Result<(), String> {
    let addr = admin.resolve()?;
    let deadline = tokio::time::Instant::now() + START_WAIT;
    loop {
        let req = http::Request::get("/ready")
            .header(http::header::HOST, admin.authority.clone())
            .body(Full::new(bytes::Bytes::new()))
            .map_err(|e| e.to_string())?;
        let ok = tokio::time::timeout(
            Duration::from_secs(2),
            Conn::default().send(addr, admin.tls.as_deref(), req),
        )
        .await
        .is_ok_and(|r| r.is_ok_and(|r| r.status().is_success()));
        if ok {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("the gateway was not ready within {START_WAIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn demo(args: &DemoArgs) -> Result<ExitCode, String> {
    let scenario = Scenario::from_toml(DEMO_SCENARIO).map_err(|e| e.to_string())?;
    let mut spec = scenario.spec(Some(&args.preset))?;
    spec.run_time = Some(args.run_time);
    let plan = spec.plan()?;
    let classes = scenario.select_classes(spec.user_classes.as_deref())?;
    let dir = bin_dir(args)?;
    for name in ["mock-upstream", "gateway"] {
        if !dir.join(name).exists() {
            return Err(format!(
                "{} not found: build every binary first (cargo build --release --bins)",
                dir.join(name).display()
            ));
        }
    }
    let mut mock_cmd = Command::new(dir.join("mock-upstream"));
    mock_cmd.args(["--listen", "127.0.0.1:0"]);
    let (mock, line) = spawn("mock-upstream", mock_cmd)?;
    let mock_addr = line
        .strip_prefix("mock-upstream listening on ")
        .ok_or_else(|| format!("unexpected mock-upstream output {line:?}"))?
        .trim()
        .to_owned();
    let mut gw_cmd = Command::new(dir.join("gateway"));
    gw_cmd
        .arg("serve")
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_UPSTREAM", &mock_addr)
        .env("RUST_LOG", "warn");
    let (gateway, line) = spawn("gateway", gw_cmd)?;
    let (gw_addr, admin_addr) = line
        .strip_prefix("gateway listening on ")
        .and_then(|r| r.split_once(" (admin "))
        .map(|(a, b)| {
            (
                a.trim().to_owned(),
                b.trim_end_matches(')').trim().to_owned(),
            )
        })
        .ok_or_else(|| format!("unexpected gateway output {line:?}"))?;
    println!("demo: mock-upstream on {mock_addr}, gateway on {gw_addr} (admin {admin_addr})");
    println!(
        "demo: {} preset {:?}: {} for {}",
        scenario.name,
        args.preset,
        plan.describe(),
        humantime::format_duration(args.run_time)
    );
    let (rt, workers) = cli::runtime(None)?;
    let target = Target::parse(&format!("http://{gw_addr}"))?;
    let admin = Target::parse(&format!("http://{admin_addr}"))?;
    let cfg = RunConfig {
        scenario: Arc::new(scenario),
        classes,
        plan,
        target,
        timeout: Duration::from_secs(30),
        max_body: crate::client::DEFAULT_MAX_BODY,
        max_requests: spec.max_requests,
        thresholds: spec.thresholds.iter().map(|t| t.source.clone()).collect(),
        live: !args.only_summary,
        control: Some(Target::parse(&format!("http://{mock_addr}"))?),
        workers,
        stop_timeout: Duration::from_secs(5),
        shard: None,
    };
    let result = rt.block_on(async {
        wait_ready(&admin).await?;
        runner::run(cfg).await
    })?;
    drop(gateway);
    drop(mock);
    let prefix = args.out.join("demo");
    let outputs = Outputs {
        csv: Some(prefix.clone()),
        html: Some(args.out.join("demo.html")),
        summary: Some(args.out.join("demo_summary.json")),
        junit: Some(args.out.join("demo_junit.xml")),
        result: Some(args.out.join("demo_result.json")),
    };
    let code = cli::finish(&result, &outputs);
    println!(
        "demo: reports in {}/ (demo.html, demo_stats.csv, demo_stats_history.csv, demo_failures.csv, demo_exceptions.csv, demo_summary.json, demo_junit.xml)",
        args.out.display()
    );
    Ok(code)
}

/// Runs the demo; the exit code follows `run`'s contract.
pub fn run(args: &DemoArgs) -> ExitCode {
    match demo(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen demo: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
