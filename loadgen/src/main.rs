//! `loadgen`: the command line (see [`loadgen::cli`]). Exit 0 when every SLA threshold
//! held, 1 when one was missed, 2 for usage or scenario errors.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    loadgen::cli::main(loadgen::cli::Cli::parse())
}
