//! `gateway`: thin entry point — CLI, logging, runtime, exit code.

use std::process::ExitCode;

use clap::Parser;
use gateway::cli::{self, Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

// mimalloc, called like std's System allocator calls malloc (gateway::alloc).
#[global_allocator]
static GLOBAL: gateway::alloc::MiMalloc = gateway::alloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { file } => cli::check(file),
        Command::Monitoring { command } => gateway::monitoring::command::run(command),
        Command::Serve { config, workers } => {
            let workers = workers
                .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
                .unwrap_or(1)
                .max(1);
            let rt = if workers == 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .enable_all()
                    .build()
            };
            match rt {
                Ok(rt) => rt.block_on(cli::serve(config)),
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
