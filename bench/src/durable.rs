//! `cluecast-bench durable`: what each `--durability` mode costs a
//! publisher. The appliance only.
//!
//! P publisher connections publish `--payload`-byte events round-robin
//! over T topics, each keeping W publishes in flight (closed loop: the
//! most the appliance acknowledges), or, with `--rate`, on a fixed
//! schedule whatever became of the earlier ones (open loop: latency at a
//! given load, from the time each publish was due). Every PUBLISH_ACK is
//! timed (publish → ack, the kernel's receive timestamp of the ack) and
//! checked: status, the durable flag (set on every ack in `sync`, on none
//! otherwise: docs/STORAGE.md), and the sequences acked per topic (1, 2,
//! 3, … each once, one epoch).
//!
//! The driver measures every mode of `--modes` in turn, `--repeat` rounds
//! of them (memory, async, sync, memory, …), each run against a fresh
//! appliance (and a fresh temporary data directory), and reports each run,
//! each mode's median, and each mode's throughput and p99 against
//! memory's (the median of the ratios of runs of the same round).

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluecast_proto::{EventHead, Frame, Limits, Publish, ACK_FLAG_DURABLE};

use crate::child::{self, result_struct, Followed, Mark, Role};
use crate::cli::{Common, Durability};
use crate::net::{self, pollfd};
use crate::plot;
use crate::procfs::{self, Cores};
use crate::report::{self, json_num, json_str, mib, num, pct, thousands};
use crate::server::Server;
use crate::stats::{
    attempt_tag, latency_histogram, least_disturbed, paired_ratio, redone_because, Percentiles,
};
use crate::targets::{self, Launch, Target};
use crate::wire::{self, set_note, Inbox, Turn};

mod clients;
mod reports;
use clients::clients;
use reports::{json_report, markdown_report, write_hgrms};

/// Time for the server to drain and exit after SIGTERM.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed on top of the run's own phases for the client process.
const CLIENT_SLACK: Duration = Duration::from_secs(30);
/// Most runs per mode.
const REPEAT_MAX: usize = 100;
/// A publisher's receive buffer (acks only).
const INBOX_BYTES: usize = 64 << 10;
/// Reads per ready socket per turn.
const READS_PER_TURN: usize = 4;
/// Open loop: unwritten bytes per publisher past which due publishes are
/// not sent (counted `unsent`): the server has stopped reading.
const BACKLOG_MAX: usize = 16 << 20;
/// Longest wait, so phase changes are seen promptly.
const WAIT_SLICE: Duration = Duration::from_millis(10);
/// Share of its core (%) past which the generator may be the limit.
const GENERATOR_BOUND_PCT: f64 = 90.0;

#[derive(clap::Args, Clone, Debug)]
#[command(
    mut_arg("durability", |a| a.hide(true)),
    mut_arg("repeat", |a| a.help(
        "Rounds: each mode is measured this many times (a fresh server each), the report gives every run and each mode's median"
    )),
    mut_arg("json", |a| a.help("Emit one JSON object per run, then one per mode for its median")),
)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// The durability modes measured, in this order in every round
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "memory,async,sync"
    )]
    pub modes: Vec<Durability>,
    /// Publisher connections
    #[arg(long, default_value_t = 8)]
    pub publishers: usize,
    /// Publishes each publisher keeps in flight (closed loop; not with
    /// --rate)
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Topics the publishes go to, round-robin
    #[arg(long, default_value_t = 8)]
    pub topics: usize,
    /// Payload bytes per publish
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Open loop: publishes per second in all, on a fixed schedule spread
    /// over the publishers; latency counts from the time each was due
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of publishing in the measured window
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of publishing before the window
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// After publishing stops, longest wait (s) for the last acks
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
    #[command(flatten)]
    pub runs: crate::report::RunFlags,
    /// Free text naming this configuration in the report and JSON
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write each run's publish → ack latency distribution here:
    /// durable-MODE-N.hgrm, and durable-MODE-median.hgrm (the run with its
    /// mode's median p99), for `cluecast-bench plot`
    #[arg(long)]
    pub hgrm_dir: Option<PathBuf>,
    /// Server --shards
    #[arg(long, default_value_t = 1)]
    pub shards: usize,

    // ---- client process ----
    /// The mode this client process's server runs in (set by the driver)
    #[arg(long, value_enum, hide = true, default_value = "memory")]
    pub mode: Durability,
    /// Where the client process writes its latency distribution (set by
    /// the driver)
    #[arg(long, hide = true)]
    pub hgrm_out: Option<PathBuf>,
}

result_struct! {
    /// What the client process saw. Times in nanoseconds.
    pub struct Outcome {
        /// Wall time of the measured window.
        pub window_secs: f64,
        /// PUBLISHes written (open loop: due) inside the window.
        pub window_sent: u64,
        /// Acks (status 0) received inside the window.
        pub window_acks: u64,
        /// Publish → ack of the publishes sent (due) inside the window.
        pub lat_count: u64,
        pub lat_p50: u64,
        pub lat_p90: u64,
        pub lat_p99: u64,
        pub lat_p999: u64,
        pub lat_max: u64,
        /// Whole run: PUBLISHes written.
        pub sent: u64,
        /// Acks with status 0, and of those, with the durable flag.
        pub acked: u64,
        pub durable: u64,
        /// Acks with a non-zero status.
        pub refused: u64,
        /// Open loop: due and never sent (backlog full).
        pub unsent: u64,
        /// Sent and never answered.
        pub unacked: u64,
        /// Acked sequences that were not 1, 2, 3, … once each per topic, or
        /// acks of a topic in more than one epoch.
        pub seq_errors: u64,
        /// Open loop: how late publishes were written.
        pub send_lag_p99: u64,
        pub send_lag_max: u64,
        /// CPU seconds of this process inside the window.
        pub generator_cpu_secs: f64,
    }
}

pub fn main(args: &Args) -> Result<(), String> {
    check(args)?;
    args.common
        .own_server_part("durable", || drive(args), || clients(args))
}

fn check(args: &Args) -> Result<(), String> {
    let secs_ok = |x: f64| (0.0..86_400.0).contains(&x);
    if !(args.duration > 0.0
        && secs_ok(args.duration)
        && secs_ok(args.warmup)
        && secs_ok(args.drain_timeout))
    {
        return Err(
            "--duration must be in (0, 86400) s, --warmup and --drain-timeout in [0, 86400) s"
                .into(),
        );
    }
    if args.publishers == 0 || args.topics == 0 || args.window == 0 {
        return Err("--publishers, --topics and --window must be at least 1".into());
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err("--rate must be positive".into());
        }
    }
    if args.common.role == Role::Driver {
        if args.modes.is_empty() {
            return Err("--modes names no mode".into());
        }
        if !(1..=REPEAT_MAX).contains(&args.runs.repeat) {
            return Err(format!("--repeat must be in 1..={REPEAT_MAX}"));
        }
        if args.common.durability.is_some()
            || targets::arg_value(&args.common.server_args, "--durability").is_some()
        {
            return Err("durable measures each of --modes: give no --durability".into());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The driver

/// Figures of one run. Latencies in ms.
#[derive(Clone, Debug)]
struct Run {
    mode: Durability,
    measured: bool,
    offered_per_s: f64,
    acks_per_s: f64,
    /// p50, p90, p99, p99.9, max.
    latency: [f64; 5],
    acked: u64,
    durable: u64,
    /// Acks whose durable flag is not what the mode promises.
    flag_violations: u64,
    refused: u64,
    unsent: u64,
    unacked: u64,
    seq_errors: u64,
    send_lag: [f64; 2],
    server_cpu_pct: f64,
    /// The server's core busy with anything (the appliance, the kernel's
    /// work for it such as writeback, and any other tenant), % of it.
    server_core_pct: f64,
    server_rss_bytes: f64,
    data_dir_bytes: f64,
    generator_cpu_pct: f64,
    generator_bound: bool,
    foreign_server_pct: f64,
    foreign_client_pct: f64,
    hgrm: String,
    failed: bool,
    problems: Vec<String>,
    redone: usize,
}

impl Run {
    fn new(mode: Durability) -> Run {
        let nan = f64::NAN;
        Run {
            mode,
            measured: false,
            offered_per_s: nan,
            acks_per_s: nan,
            latency: [nan; 5],
            acked: 0,
            durable: 0,
            flag_violations: 0,
            refused: 0,
            unsent: 0,
            unacked: 0,
            seq_errors: 0,
            send_lag: [nan; 2],
            server_cpu_pct: nan,
            server_core_pct: nan,
            server_rss_bytes: nan,
            data_dir_bytes: nan,
            generator_cpu_pct: nan,
            generator_bound: false,
            foreign_server_pct: nan,
            foreign_client_pct: nan,
            hgrm: String::new(),
            failed: false,
            problems: Vec::new(),
            redone: 0,
        }
    }

    fn durable_fraction(&self) -> f64 {
        if self.acked == 0 {
            f64::NAN
        } else {
            self.durable as f64 / self.acked as f64
        }
    }

    /// Share of a measured core that went elsewhere; infinite without
    /// figures.
    fn disturbance(&self) -> f64 {
        if !self.measured {
            return f64::INFINITY;
        }
        [self.foreign_server_pct, self.foreign_client_pct]
            .into_iter()
            .filter(|x| x.is_finite())
            .fold(0.0, f64::max)
            / 100.0
    }
}

fn server_args(args: &Args) -> Vec<String> {
    targets::appliance_args(&args.common, args.shards, args.payload, [])
}

fn launch(args: &Args, mode: Durability) -> Launch {
    Launch {
        target: Target::Cluecast,
        listen: args.common.listen,
        cpu: args.common.server_pin(),
        appliance_args: server_args(args),
        payload_bytes: args.payload,
        durability: mode,
    }
}

fn drive(args: &Args) -> Result<(), String> {
    let program = targets::program(Target::Cluecast, &args.common.cluecast)?;
    let bench = std::env::current_exe().map_err(|e| format!("locating this binary: {e}"))?;
    let host = procfs::host();
    let cores = args.common.cores(true);
    eprintln!(
        "durable: {} rounds of {} ({} s each, +{} s warm-up): {} publishers × {} over {} \
         topics, {} B payloads; host: {} CPUs, {}, kernel {}",
        args.runs.repeat,
        mode_list(args),
        args.duration,
        args.warmup,
        args.publishers,
        match args.rate {
            Some(r) => format!("{} publishes/s in all (open loop)", thousands(r)),
            None => format!("{} in flight", args.window),
        },
        args.topics,
        args.payload,
        host.cpus,
        host.cpu_model,
        host.kernel
    );
    let mut runs = Vec::new();
    for round in 0..args.runs.repeat {
        for &mode in &args.modes {
            let (mut run, thrown) =
                least_disturbed(args.common.retries, args.common.foreign_max, |attempt| {
                    let run = run_once(args, &bench, &program, mode, cores);
                    eprintln!(
                        "[{}/{}] {}{}: {}",
                        round + 1,
                        args.runs.repeat,
                        mode.name(),
                        attempt_tag(attempt),
                        summary(&run)
                    );
                    let score = run.disturbance();
                    (run, score)
                });
            run.redone = thrown.len();
            for t in thrown {
                run.problems
                    .push(redone_because(t.foreign_server_pct, t.foreign_client_pct));
            }
            runs.push(run);
        }
    }
    report::finish(
        &args.runs,
        args.hgrm_dir.as_deref(),
        |dir| write_hgrms(args, dir, &runs),
        || markdown_report(args, &host, &runs),
        || json_report(args, &runs),
        runs.iter().any(|r| !r.measured || r.failed).then_some(
            "some runs failed: no figures, a durable flag not as the mode promises, acked \
             sequences out of order, unanswered publishes, or a server that did not exit 0 \
             (see the report)",
        ),
    )
}

fn mode_list(args: &Args) -> String {
    let names: Vec<&str> = args.modes.iter().map(|m| m.name()).collect();
    names.join(", ")
}

fn run_once(args: &Args, bench: &Path, program: &Path, mode: Durability, cores: Cores) -> Run {
    let mut run = Run::new(mode);
    let started = targets::start(
        &launch(args, mode),
        program,
        crate::server::SERVER_START_TIMEOUT,
    );
    let Some(mut server) = Server::for_run(started, &mut run.problems) else {
        run.failed = true;
        return run;
    };
    let mut cmd = std::process::Command::new(bench);
    cmd.args(["durable", "--role", "clients"])
        .args(["--server", &server.addr().to_string()])
        .args(["--mode", mode.name()])
        .args(["--publishers", &args.publishers.to_string()])
        .args(["--window", &args.window.to_string()])
        .args(["--topics", &args.topics.to_string()])
        .args(["--payload", &args.payload.to_string()])
        .args(["--duration", &args.duration.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--drain-timeout", &args.drain_timeout.to_string()]);
    if let Some(rate) = args.rate {
        cmd.args(["--rate", &rate.to_string()]);
    }
    let hgrm_path = std::env::temp_dir().join(format!(
        "cluecast-bench-durable-{}-{}.hgrm",
        std::process::id(),
        cluecast_sys::realtime_ns()
    ));
    cmd.arg("--hgrm-out").arg(&hgrm_path);
    args.common.pass_to_client(&mut cmd);
    let budget =
        CLIENT_SLACK + Duration::from_secs_f64(args.warmup + args.duration + args.drain_timeout);
    let Followed {
        result,
        window,
        problems,
    } = child::follow(cmd, budget, &mut server, cores);
    run.problems.extend(problems);
    run.data_dir_bytes = server.data_dir_bytes().map_or(f64::NAN, |b| b as f64);
    let stopped = server.stop(SERVER_STOP_TIMEOUT);
    run.failed |= stopped.problem.is_some();
    run.problems.extend(stopped.problems());
    run.hgrm = std::fs::read_to_string(&hgrm_path).unwrap_or_default();
    let _ = std::fs::remove_file(&hgrm_path);
    match (result.as_ref().map(Outcome::from_result), window) {
        (Some(Ok(o)), Some(w)) => fill_figures(&mut run, &o, &w),
        (Some(Err(e)), _) => {
            run.failed = true;
            run.problems.push(e);
        }
        _ => run.failed = true,
    }
    run
}

fn fill_figures(run: &mut Run, o: &Outcome, w: &child::Window) {
    let ms = |ns: u64| ns as f64 / 1e6;
    let secs = o.window_secs;
    run.measured = secs > 0.0 && w.wall_secs > 0.0 && o.lat_count > 0;
    run.offered_per_s = o.window_sent as f64 / secs;
    run.acks_per_s = o.window_acks as f64 / secs;
    run.latency = [o.lat_p50, o.lat_p90, o.lat_p99, o.lat_p999, o.lat_max].map(ms);
    run.send_lag = [o.send_lag_p99, o.send_lag_max].map(ms);
    (run.acked, run.durable, run.refused) = (o.acked, o.durable, o.refused);
    (run.unsent, run.unacked, run.seq_errors) = (o.unsent, o.unacked, o.seq_errors);
    run.flag_violations = match run.mode {
        Durability::Sync => o.acked - o.durable,
        Durability::Async | Durability::Memory => o.durable,
    };
    run.server_cpu_pct = 100.0 * w.server_cpu_secs / w.wall_secs;
    run.server_core_pct = w
        .server_core
        .map_or(f64::NAN, |c| 100.0 * c.busy / w.wall_secs);
    run.server_rss_bytes = w.server_rss_bytes.map_or(f64::NAN, |b| b as f64);
    run.generator_cpu_pct = 100.0 * o.generator_cpu_secs / secs;
    run.generator_bound = run.generator_cpu_pct > GENERATOR_BOUND_PCT;
    run.foreign_server_pct = w.server_core.map_or(f64::NAN, |c| {
        100.0 * c.foreign(w.server_cpu_secs, w.wall_secs)
    });
    run.foreign_client_pct = w.client_core.map_or(f64::NAN, |c| {
        100.0 * c.foreign(o.generator_cpu_secs, w.wall_secs)
    });
    if !o.note.is_empty() {
        run.problems.push(format!("clients: {}", o.note));
    }
    if run.flag_violations > 0 {
        run.failed = true;
        run.problems.push(format!(
            "{} of {} acks had the durable flag {} in {} mode",
            run.flag_violations,
            o.acked,
            if run.mode == Durability::Sync {
                "clear"
            } else {
                "set"
            },
            run.mode.name()
        ));
    }
    if o.seq_errors > 0 {
        run.failed = true;
        run.problems.push(format!(
            "{} acked sequences were missing, repeated or in another epoch",
            o.seq_errors
        ));
    }
    if o.unacked > 0 {
        run.failed = true;
    }
    if o.refused > 0 {
        run.problems
            .push(format!("{} publishes refused (non-zero status)", o.refused));
    }
    if o.unsent > 0 {
        run.problems.push(format!(
            "{} due publishes not sent: the server stopped reading (backlog over {} MiB)",
            o.unsent,
            BACKLOG_MAX >> 20
        ));
    }
    if run.generator_bound {
        run.problems.push(format!(
            "generator-bound: the generator's core was {:.0}% busy (over \
             {GENERATOR_BOUND_PCT}%), so these figures may be its limit rather than the server's",
            run.generator_cpu_pct
        ));
    }
}

fn summary(run: &Run) -> String {
    let figures = run.measured.then(|| {
        format!(
            "{} acks/s, publish → ack p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms, {} durable, \
             server {:.0}% CPU {:.0} MiB, generator {:.0}%",
            thousands(run.acks_per_s),
            run.latency[0],
            run.latency[2],
            run.latency[3],
            run.latency[4],
            pct(run.durable_fraction()),
            run.server_cpu_pct,
            run.server_rss_bytes / f64::from(1 << 20),
            run.generator_cpu_pct
        )
    });
    report::summary(figures, &run.problems)
}

#[cfg(test)]
mod tests;
