//! cluecast-bench: measurements of the cluecast appliance.
//!
//! `cluecast-bench fanout` measures open-loop fan-out: latency from the time
//! each event was due to its delivery, and that every subscriber received
//! every event of its topic exactly once and in order.
//!
//! `cluecast-bench zerocopy` measures whether io_uring zero-copy sends
//! (`cluecast run --zerocopy-bytes-min`) pay for fan-out on this host; see
//! docs/ZEROCOPY.md.
//!
//! `cluecast-bench ceiling` is a trivial server (one send(2) per delivery)
//! that `fanout --target ceiling` measures as the host's practical ceiling.
//!
//! bench/README.md says how to run them and what they found.

mod ceiling;
mod child;
mod cli;
mod clients;
mod delivery;
mod fanload;
mod fanout;
mod jitter;
mod procfs;
mod report;
mod resp;
mod server;
mod stats;
mod targets;
mod wire;
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
    /// Open-loop fan-out: P publishers on a fixed schedule, S subscribers
    /// over T topics; latency percentiles, loss / duplication / order,
    /// server CPU and memory; markdown (or --json) on stdout, progress on
    /// stderr
    Fanout(fanout::Args),
    /// Fan-out throughput and server CPU per GB, plain sends vs zero-copy,
    /// per payload size; markdown (or --json) on stdout, progress on stderr
    Zerocopy(zerocopy::Args),
    /// A trivial server, one send(2) per delivery: the practical ceiling
    /// `fanout --target ceiling` compares against (started by the driver)
    Ceiling(ceiling::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Cmd::Fanout(args) => fanout::main(args),
        Cmd::Zerocopy(args) => zerocopy::main(args),
        Cmd::Ceiling(args) => ceiling::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluecast-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
