//! cluecast-bench: measurements of the cluecast appliance.
//!
//! `cluecast-bench zerocopy` measures whether io_uring zero-copy sends
//! (`cluecast run --zerocopy-bytes-min`) pay for fan-out on this host; see
//! docs/ZEROCOPY.md.

mod clients;
mod procfs;
mod server;
mod stats;
mod zerocopy;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cluecast-bench",
    version,
    about = "Measurements of the cluecast appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Fan-out throughput and server CPU per GB, plain sends vs zero-copy,
    /// per payload size; markdown (or --json) on stdout, progress on stderr
    Zerocopy(zerocopy::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Cmd::Zerocopy(args) => zerocopy::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluecast-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
