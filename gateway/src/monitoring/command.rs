//! `gateway monitoring generate --config FILE --out DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::Options;
use crate::config::{self, Overrides, Source};

/// `gateway monitoring ...`.
#[derive(Debug, Subcommand)]
pub enum MonitoringCommand {
    /// Write Prometheus rules and Grafana dashboards for the config's SLOs.
    Generate {
        /// Config file; the embedded default when absent.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Output directory (created; generated files are overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Prefix of every alert's runbook_url.
        #[arg(long, default_value = "monitoring/README.md")]
        runbook_base: String,
        /// The job label of the gateway's scrape target.
        #[arg(long, default_value = "gateway")]
        job: String,
        /// Test only: divide every window and `for:` by N.
        #[arg(long, default_value_t = 1, hide = true)]
        time_scale: u32,
    },
}

/// Runs a monitoring subcommand.
pub fn run(cmd: MonitoringCommand) -> ExitCode {
    match cmd {
        MonitoringCommand::Generate {
            config,
            out,
            runbook_base,
            job,
            time_scale,
        } => {
            let source = config.map_or(Source::Embedded, Source::File);
            let cfg = match config::load(&source, &Overrides::default()) {
                Ok(c) => c,
                Err(errs) => {
                    eprintln!("{source}: invalid config");
                    for e in &errs.0 {
                        eprintln!("  {e}");
                    }
                    return ExitCode::from(crate::cli::EXIT_INVALID);
                }
            };
            let opts = Options {
                time_scale: time_scale.max(1),
                runbook_base,
                job,
            };
            let files = super::generate(&cfg, &opts);
            match super::write(&out, &files) {
                Ok(()) => {
                    println!("{}: {} files", out.display(), files.len());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot write {}: {e}", out.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}
