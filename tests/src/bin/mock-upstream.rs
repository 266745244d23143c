//! `mock-upstream`: serves the simulated upstream APIs (see [`e2e::mock`]) until SIGINT or
//! SIGTERM.
//!
//! ```text
//! mock-upstream --listen 127.0.0.1:18080 --id a \
//!     --latency /api/v1/agents/run=lognormal:2s:20s \
//!     --fault '{"path_prefix":"/api/users","error_rate":0.01,"status":503}'
//! mock-upstream --listen 127.0.0.1:18443 --tls-cert server.pem --tls-key server.key
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use e2e::mock::{Fault, LatencyRule, MockOptions, MockTls, MockUpstream};

/// Simulated upstream services for gateway load tests.
#[derive(Debug, Parser)]
#[command(name = "mock-upstream", version)]
struct Cli {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: SocketAddr,
    /// Value of the `x-upstream-id` response header.
    #[arg(long, default_value = "mock")]
    id: String,
    /// HS256 secret of the issued JWTs.
    #[arg(
        long,
        env = "MOCK_JWT_SECRET",
        default_value = "meetinity-dev-secret-change-me-in-production",
        hide_env_values = true
    )]
    jwt_secret: String,
    /// Latency rule PREFIX=DIST, DIST one of fixed:50ms, uniform:10ms:30ms,
    /// lognormal:800ms:4s (repeatable; the longest matching prefix wins).
    #[arg(long = "latency", value_name = "PREFIX=DIST")]
    latency: Vec<LatencyRule>,
    /// Fault as JSON: {"path_prefix","error_rate","status","added_latency","reset_rate",
    /// "duration"} (repeatable).
    #[arg(long = "fault", value_name = "JSON")]
    faults: Vec<Fault>,
    /// Serve at most N requests at once, each for --base-latency, and
    /// queue the rest: latency rises with concurrency (an overloaded
    /// upstream; throughput at most N / base latency).
    #[arg(long, value_name = "N")]
    capacity: Option<usize>,
    /// Service time of each request under --capacity.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "20ms",
        requires = "capacity"
    )]
    base_latency: humantime::Duration,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(workers) = cli.workers {
        runtime.worker_threads(workers.max(1));
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mock-upstream: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let opts = MockOptions {
        listen: cli.listen,
        id: cli.id,
        jwt_secret: cli.jwt_secret,
        latency: cli.latency,
        faults: cli.faults,
        capacity: cli.capacity.map(|servers| e2e::mock::Capacity {
            servers: servers.max(1),
            base_latency: cli.base_latency.into(),
        }),
        tls: cli
            .tls_cert
            .zip(cli.tls_key)
            .map(|(cert, key)| MockTls { cert, key }),
    };
    let mock = match MockUpstream::start(opts).await {
        Ok(mock) => mock,
        Err(e) => {
            eprintln!("mock-upstream: cannot serve on {}: {e}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    println!("mock-upstream listening on {}", mock.addr());
    if let Err(e) = shutdown_signal().await {
        eprintln!("mock-upstream: cannot wait for signals: {e}");
    }
    tracing::info!("shutting down");
    mock.shutdown().await;
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
