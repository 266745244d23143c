//! The live web UI (`loadgen ui SCENARIO`, and `loadgen run` in a terminal without
//! `--headless`), like Locust's: a page served by loadgen itself (inline JS and CSS, charts
//! drawn on `<canvas>`, nothing fetched from elsewhere) where a user picks a preset or the
//! users, spawn rate, run time and host, starts and stops runs, changes the user count (or
//! the arrival rate of an open model) while running, watches live charts, the per-name
//! table, failures and the SLA thresholds, and downloads the reports of a finished run.
//!
//! - [`control`]: the session: builds each run exactly as `loadgen run` does and drives
//!   [`crate::runner::run_with`] through a [`crate::runner::Control`] (one engine, the same
//!   numbers), and writes the reports with the same writers when a run ends.
//! - [`server`]: the HTTP endpoints and their CSRF guard: every request's `Host` must name
//!   the loopback listener (no DNS rebinding), and every state-changing `POST` must carry
//!   the per-process random token the page embeds (`X-Loadgen-Token`, a custom header a
//!   cross-site form or `fetch` cannot send without a CORS preflight loadgen never grants)
//!   and, when the browser sends an `Origin`, one that matches the `Host`.
//! - [`page`]: the page.

pub mod control;
pub mod page;
pub mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::RunArgs;

/// The default listen address (Locust's port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8089";

/// `loadgen ui`.
#[derive(Debug, Clone, Args)]
pub struct UiArgs {
    /// The scenario file (TOML).
    pub scenario: PathBuf,
    /// Target URL (http://HOST:PORT); the scenario's `host` when absent (editable in the
    /// page).
    #[arg(short = 'H', long)]
    pub host: Option<String>,
    /// Where the UI listens (loopback by default; port 0 picks a free one).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Directory for each run's reports (`run-N/`); a fresh temporary directory when absent.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
}

/// Runs the UI until Ctrl-C. `template` is the `run` command line every run starts from
/// (the page's fields override its preset, users, spawn rate, run time and host). Exit 0,
/// or the verdict of the last finished run (1 when it missed a threshold), 2 for errors.
pub fn serve(template: RunArgs, listen: SocketAddr, out: Option<PathBuf>) -> ExitCode {
    let (rt, workers) = match crate::cli::runtime(template.workers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(crate::cli::EXIT_USAGE);
        }
    };
    let out = out
        .unwrap_or_else(|| std::env::temp_dir().join(format!("loadgen-ui-{}", std::process::id())));
    let session = match control::Session::new(template, workers, out) {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(crate::cli::EXIT_USAGE);
        }
    };
    let code = rt.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("loadgen: cannot listen on {listen}: {e}");
                return crate::cli::EXIT_USAGE;
            }
        };
        let addr = listener.local_addr().unwrap_or(listen);
        eprintln!("loadgen: web UI at http://{addr}/ (Ctrl-C to quit)");
        tokio::select! {
            () = server::serve(listener, std::sync::Arc::clone(&session)) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        session.exit_code()
    });
    // Runs still going are cut off with the runtime.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code)
}

/// `loadgen ui ARGS`.
pub fn main(args: &UiArgs) -> ExitCode {
    let mut template = match RunArgs::defaults(&args.scenario) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(crate::cli::EXIT_USAGE);
        }
    };
    template.host.clone_from(&args.host);
    template.workers = args.workers;
    serve(template, args.listen, args.out.clone())
}
