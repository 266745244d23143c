//! Command line: `gateway serve`, `gateway check`, `gateway monitoring`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Overrides, Source};

/// The gateway's command line.
#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "API gateway with built-in SLO telemetry"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve traffic (SIGHUP reloads the config, SIGTERM/SIGINT drain and stop).
    Serve {
        /// Config file; the embedded default when absent.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Tokio worker threads (default: number of cores).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate a config file: exit 0 with a summary, or 2 with every error.
    Check {
        /// Config file.
        file: PathBuf,
    },
    /// Generate monitoring (Prometheus rules, Grafana dashboards) from the SLOs.
    Monitoring {
        /// What to do.
        #[command(subcommand)]
        command: crate::monitoring::command::MonitoringCommand,
    },
}

/// Exit code for an invalid config or bad usage.
pub const EXIT_INVALID: u8 = 2;

/// `gateway check FILE`.
pub fn check(file: PathBuf) -> ExitCode {
    match config::load(&Source::File(file.clone()), &Overrides::default()) {
        Ok(c) => {
            println!(
                "{}: ok ({} routes, {} upstreams, {} endpoints)",
                file.display(),
                c.routes.len(),
                c.upstreams.len(),
                c.upstreams
                    .values()
                    .map(|u| u.endpoints.len())
                    .sum::<usize>()
            );
            // Upstreams that skip certificate verification.
            for w in config::upstream_tls::warnings(&c) {
                eprintln!("  warning: {w}");
            }
            // Certificates that expire soon (expired ones are errors).
            if let Some(t) = &c.server.tls {
                for w in t.warnings(std::time::SystemTime::now()) {
                    eprintln!("  warning: {w}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(errs) => {
            eprintln!("{}: invalid config", file.display());
            for e in &errs.0 {
                eprintln!("  {e}");
            }
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// `gateway serve`: runs until SIGTERM/SIGINT, reloading on SIGHUP.
pub async fn serve(config: Option<PathBuf>) -> ExitCode {
    let source = config.map_or(Source::Embedded, Source::File);
    let overrides = Overrides::from_env();
    let cfg = match config::load(&source, &overrides) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{source}: invalid config");
            for e in &errs.0 {
                eprintln!("  {e}");
            }
            return ExitCode::from(EXIT_INVALID);
        }
    };
    // Before the listeners: the connection cap is derived from this limit.
    crate::server::limits::raise_nofile_limit();
    let handle = match crate::start(cfg, source.clone(), overrides).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Handlers before the address is announced: a SIGHUP sent as soon as
    // it is must reload, not kill the process (the default action).
    let signals = Signals::install();
    tracing::info!(proxy = %handle.proxy_addr, admin = %handle.admin_addr, config = %source, "gateway listening");
    println!(
        "gateway listening on {} (admin {})",
        handle.proxy_addr, handle.admin_addr
    );
    match signals {
        Ok(s) => s.run(&handle).await,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            handle.shutdown();
        }
    }
    handle.wait().await;
    tracing::info!("gateway stopped");
    ExitCode::SUCCESS
}

/// The process signals the gateway handles, registered.
#[cfg(unix)]
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Reloads on SIGHUP until SIGTERM/SIGINT, then starts the drain.
    async fn run(mut self, handle: &crate::Handle) {
        loop {
            tokio::select! {
                _ = self.hup.recv() => { let _ = handle.reload(); }
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
            }
        }
        tracing::info!("shutdown requested");
        handle.shutdown();
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self)
    }

    async fn run(self, handle: &crate::Handle) {
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("cannot wait for Ctrl-C: {e}");
        }
        handle.shutdown();
    }
}
