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
//! `cluecast-bench durable` measures what each `--durability` mode costs a
//! publisher: throughput and publish → ack latency.
//!
//! `cluecast-bench ceiling` is a trivial server (one send(2) per delivery)
//! that `fanout --target ceiling` measures as the host's practical ceiling.
//!
//! bench/README.md says how to run them and what they found.

#[cfg(test)]
mod accounting_tests;
mod attack;
mod ceiling;
mod child;
mod cli;
mod clients;
mod conns;
mod delivery;
mod dial;
mod durable;
mod fanload;
mod fanout;
mod jitter;
mod mqtt;
mod nats;
mod net;
mod newcomers;
mod outcome;
mod pairs;
mod peers;
mod plot;
mod procfs;
mod report;
mod resp;
mod resume;
mod server;
mod stats;
mod summary;
mod targets;
mod tls;
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
    /// The original system's job: players in several hunts, each sending
    /// its position upstream once a second, clue drops and leaderboard
    /// updates fanned out into each hunt
    Hunt(fanout::HuntArgs),
    /// A steady fan-out, then 10x the rate within 500 ms, held, then back:
    /// latency in the spike against the steady state, and losses
    Spike(fanout::SpikeArgs),
    /// Subscribers drop at once and come back within a second, resuming:
    /// time until all have caught up, gaps, live latency meanwhile
    Storm(fanout::StormArgs),
    /// Fan-out throughput and server CPU per GB, plain sends vs zero-copy,
    /// per payload size; markdown (or --json) on stdout, progress on stderr
    Zerocopy(zerocopy::Args),
    /// One SVG percentile plot of several latency distributions (.hgrm
    /// files from `--hgrm-dir`), a curve each
    Plot(plot::Args),
    /// The comparison table of runs: the median lines of `--json` files,
    /// a table per case, cluecast's latency as a multiple of each target's
    Summary(summary::Args),
    /// Two builds compared round by round (bench/event-path.sh): each
    /// figure's median per build and the median of the per-round ratios
    Pairs(pairs::Args),
    /// A trivial server, one send(2) per delivery: the practical ceiling
    /// `fanout --target ceiling` compares against (started by the driver)
    Ceiling(ceiling::Args),
    /// Idle subscribed connections, as many as the host allows: server
    /// memory per connection and connect rate; markdown (or --json) on
    /// stdout, progress on stderr
    Conns(conns::Args),
    /// Publish throughput and publish → ack latency in each durability
    /// mode (memory, async, sync) side by side, and the durable flag of
    /// every ack checked; the appliance only
    Durable(durable::Args),
    /// Clients resuming far behind at once, served from disk: time until
    /// all have caught up (gap- and duplicate-free), resume throughput,
    /// and live latency meanwhile against the same live load without
    /// them; the appliance only
    Resume(resume::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Cmd::Fanout(args) => fanout::main(args),
        Cmd::Hunt(a) => fanout::main(&fanout::Args {
            shape: fanout::Shape::Hunt(a.hunt),
            ..a.load.clone()
        }),
        Cmd::Spike(a) => fanout::main(&fanout::Args {
            shape: fanout::Shape::Spike(a.spike),
            ..a.load.clone()
        }),
        Cmd::Storm(a) => fanout::main(&fanout::Args {
            shape: fanout::Shape::Storm(a.storm),
            ..a.load.clone()
        }),
        Cmd::Zerocopy(args) => zerocopy::main(args),
        Cmd::Ceiling(args) => ceiling::main(args),
        Cmd::Plot(args) => plot::main(args),
        Cmd::Summary(args) => summary::main(args),
        Cmd::Pairs(args) => pairs::main(args),
        Cmd::Conns(args) => conns::main(args),
        Cmd::Durable(args) => durable::main(args),
        Cmd::Resume(args) => resume::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluecast-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
