//! `reliability`: the fault suite (see [`e2e::reliability`]). Runs each scenario against
//! the gateway, mock-upstream and loadgen binaries of `--bin-dir`, prints the table and
//! writes it as JSON; exits 1 when a scenario misses a binding bar or cannot run.
//!
//! ```text
//! tests/reliability/run.sh                 # release build, every scenario, full durations
//! tests/reliability/run.sh --short         # short version of every scenario (CI)
//! tests/reliability/run.sh --only sigterm  # one scenario (repeatable)
//! tests/reliability/run.sh --soak          # and the 30 min soak (nightly)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use e2e::reliability::{self, Ctx, Row, SCENARIOS};

/// The gateway's fault suite: figures, not adjectives.
#[derive(Debug, Parser)]
#[command(name = "reliability")]
struct Cli {
    /// Directory of the gateway, mock-upstream and loadgen binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Short durations and modest load (CI); latency bars are reported only.
    #[arg(long)]
    short: bool,
    /// Also run the soak scenario.
    #[arg(long)]
    soak: bool,
    /// Soak duration.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    soak_time: Duration,
    /// Run only this scenario (repeatable).
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Where the JSON results go (the run's configs and loadgen results go to `work/`
    /// beside it).
    #[arg(long, default_value = "target/reliability/results.json")]
    out: PathBuf,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.list {
        for s in SCENARIOS {
            println!("{s}");
        }
        return ExitCode::SUCCESS;
    }
    if let Some(bad) = cli.only.iter().find(|n| !SCENARIOS.contains(&n.as_str())) {
        eprintln!("reliability: unknown scenario {bad:?}; one of {SCENARIOS:?}");
        return ExitCode::from(2);
    }
    let bins = match cli.bin_dir.canonicalize() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("reliability: --bin-dir {}: {e}", cli.bin_dir.display());
            return ExitCode::from(2);
        }
    };
    for b in ["gateway", "mock-upstream", "loadgen"] {
        if !bins.join(b).exists() {
            eprintln!(
                "reliability: {} missing (cargo build -p gateway -p e2e -p loadgen --bins)",
                bins.join(b).display()
            );
            return ExitCode::from(2);
        }
    }
    // Before any thread starts: the harness finds the binaries here.
    std::env::set_var(e2e::harness::ENV_BIN_DIR, &bins);
    // Configs, loadgen scenarios and results of this run, kept beside the JSON for a look
    // after the run (emptied when the next run starts).
    let work = cli
        .out
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
        .join(if cli.short { "work-short" } else { "work" });
    let _ = std::fs::remove_dir_all(&work);
    if let Err(e) = std::fs::create_dir_all(&work) {
        eprintln!("reliability: {}: {e}", work.display());
        return ExitCode::from(2);
    }
    let ctx = Ctx {
        bins,
        short: cli.short,
        work,
        soak_time: cli.soak_time,
    };
    let names: Vec<&str> = SCENARIOS
        .iter()
        .copied()
        .filter(|n| {
            if cli.only.is_empty() {
                *n != "soak" || cli.soak
            } else {
                cli.only.iter().any(|o| o == n)
            }
        })
        .collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("reliability: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows = rt.block_on(run_all(&names, &ctx));
    let table = reliability::report::table(&rows);
    println!("\n{table}");
    let doc = serde_json::json!({
        "date_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "mode": if cli.short { "short" } else { "full" },
        "machine": {
            "cores": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim(),
        },
        "bin_dir": ctx.bins,
        "passed": rows.iter().all(Row::passed),
        "scenarios": rows,
    });
    if let Some(dir) = cli.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match serde_json::to_string_pretty(&doc)
        .map_err(|e| e.to_string())
        .and_then(|t| std::fs::write(&cli.out, t).map_err(|e| e.to_string()))
    {
        Ok(()) => println!("results: {}", cli.out.display()),
        Err(e) => eprintln!("reliability: {}: {e}", cli.out.display()),
    }
    if rows.iter().all(Row::passed) {
        ExitCode::SUCCESS
    } else {
        let missed: Vec<&str> = rows
            .iter()
            .filter(|r| !r.passed())
            .map(|r| r.scenario.as_str())
            .collect();
        eprintln!("reliability: missed: {}", missed.join(", "));
        ExitCode::FAILURE
    }
}

async fn run_all(names: &[&str], ctx: &Ctx) -> Vec<Row> {
    let mut rows = Vec::new();
    for name in names {
        eprintln!("reliability: {name} ...");
        let started = tokio::time::Instant::now();
        // In a task of its own, so a panic in the harness becomes this row's error.
        let (n, c) = (name.to_string(), ctx.clone());
        let mut row = match tokio::spawn(async move { reliability::run(&n, &c).await }).await {
            Ok(Ok(row)) => row,
            Ok(Err(e)) => Row::failed_to_run(name, e),
            Err(e) => Row::failed_to_run(name, format!("panicked: {e}")),
        };
        row.secs = started.elapsed().as_secs_f64();
        // How busy the machine was (other processes included): context for the latencies.
        if let Some(load) = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split(' ').next().and_then(|v| v.parse::<f64>().ok()))
        {
            row.figure("loadavg_1m_after", load);
        }
        eprintln!("reliability: {name}: {} ({:.0} s)", row.verdict(), row.secs);
        rows.push(row);
        // Let sockets of the last scenario wind down before the next.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rows
}
