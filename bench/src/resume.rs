//! `cluecast-bench resume`: a storm of clients resuming far behind, served
//! from disk, and what it does to live subscribers meanwhile. The
//! appliance only, `--durability sync` unless told otherwise.
//!
//! The appliance keeps `--history-events-max` (here 64) events per topic
//! in memory, so a resume `--behind` (1,000) events back is fed from the
//! durable log by its reader thread. Each run, against a fresh appliance
//! and data directory:
//!
//! 1. The live process preloads `--topics` topics with `--preload`
//!    events each, then connects `--live` subscribers (subscriber i on
//!    topic i % K). The resume processes connect their share of
//!    `--clients` connections (handshake only, client j on topic j % K).
//! 2. Live load: the live process publishes `--rate` events/s per topic on
//!    a fixed schedule; after a second of warm-up, `--baseline` seconds
//!    of it are the baseline: live latency (due → the kernel's receive
//!    timestamp) without the storm.
//! 3. The storm: every resume process learns each topic's epoch and newest
//!    sequence N from one live SUBSCRIBE (its *probe*, which stays
//!    subscribed), then sends every client's SUBSCRIBE Resume (that epoch,
//!    last_seq = N − behind) at once. A client is *caught up* when it holds
//!    everything its process's probe has received live: from then on it
//!    is a live subscriber. The live load goes on until every client is
//!    caught up (or `--timeout`); its latency meanwhile is the storm's.
//! 4. Publishing stops; every client and live subscriber must then hold
//!    exactly every event after its starting point up to the topic's last,
//!    once each and in order: the `behind` events plus the live ones.
//!
//! The driver talks to its client processes over their stdin and stdout,
//! one line each (`ready`, `go`, `storm`, `resume`, `caught-up`, `stop`,
//! `final`, then `result` or `error`).

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use cluecast_proto::{EventHead, Frame, Limits, Publish, StartMode, Subscribe, SubscribeStatus};
use hdrhistogram::Histogram;

use crate::child::{self, result_struct, ResultLine, Role};
use crate::cli::{Common, Durability};
use crate::delivery::{Stamp, STAMP_BYTES};
use crate::net::{self, Epoll, READABLE};
use crate::plot;
use crate::procfs::{self, CoreUse};
use crate::report::{self, json_num, json_str, mib, num, thousands};
use crate::server::Server;
use crate::stats::{latency_histogram, shares, Percentiles};
use crate::targets::{self, Launch, Target};
use crate::wire::{self, refusal, set_note, Inbox, Turn};

mod driver;
mod live;
mod process;
mod reports;
mod resumer;
use driver::{drive, launch};
use live::live_process;
use process::{
    client_main, fit_descriptors, part_setup, ping_all, set_live_socket, Order, StdinLines,
};
use reports::{json_report, markdown_report, write_hgrms};
use resumer::resume_process;

/// Time for the server to drain and exit after SIGTERM (it sends every
/// connection a GOAWAY first).
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Allowance per connection for connecting (handshake, subscribe).
const CONNECT_PER_CONN: Duration = Duration::from_millis(5);
/// Slack on top of each phase's own time.
const SLACK: Duration = Duration::from_secs(30);
/// Warm-up of the live load before the baseline.
const WARMUP: Duration = Duration::from_secs(1);
/// After publishing stops, longest wait for everything to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes in flight while preloading.
const PRELOAD_WINDOW: usize = 64;
/// Payload bytes of every event (the live ones carry the stamp).
const PAYLOAD_BYTES: usize = 128;
/// Receive buffer per connection.
const INBOX_BYTES: usize = 16 << 10;
/// Reads per ready socket per wake-up.
const READS_PER_TURN: usize = 4;
/// Longest wait, so the schedule and stdin are seen promptly.
const WAIT_SLICE: Duration = Duration::from_millis(5);
/// Descriptors a client process keeps free besides its sockets.
const FDS_SPARE: u64 = 64;
/// Connections one resume process holds at most (the open-file limit
/// here is 20,000 per process).
const CLIENTS_PER_PROCESS: usize = 10_000;
/// Most client processes, most runs.
const PROCESSES_MAX: usize = 64;
const REPEAT_MAX: usize = 100;
/// How often the driver samples the server's memory during the storm.
const RSS_EVERY: Duration = Duration::from_millis(200);
/// Token of stdin in a client process's epoll set.
const STDIN_TOKEN: usize = usize::MAX;
/// Token of the probe connection.
const PROBE_TOKEN: usize = usize::MAX - 1;

#[derive(clap::Args, Clone, Debug)]
#[command(
    mut_arg("durability", |a| a.help(
        "The appliance's --durability [default: sync: the backlog is read from the durable log]"
    )),
    mut_arg("json", |a| a.help("Emit one JSON object per run (then one for the median)")),
)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Resuming connections, in all (driver) or this process's share
    /// (role clients); client j is on topic j % --topics
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Events each client resumes behind the newest
    #[arg(long, default_value_t = 1000)]
    pub behind: u64,
    /// Topics
    #[arg(long, default_value_t = 10)]
    pub topics: usize,
    /// Events published into each topic before anything else (default:
    /// --behind)
    #[arg(long)]
    pub preload: Option<u64>,
    /// Live subscribers whose latency is measured, subscriber i on topic
    /// i % --topics
    #[arg(long, default_value_t = 200)]
    pub live: usize,
    /// Live events per second per topic, on a fixed schedule
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of live load measured before the storm (after 1 s of
    /// warm-up)
    #[arg(long, default_value_t = 10.0)]
    pub baseline: f64,
    /// Longest wait (s) from the first resume until every client is caught
    /// up; past it the run fails
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Client processes the resuming connections are spread over
    /// (default: one per 10,000)
    #[arg(long)]
    pub processes: Option<usize>,
    /// The appliance's --history-events-max: events per topic kept in
    /// memory, older ones are read from disk (unless a --server-arg sets
    /// it)
    #[arg(long, default_value_t = 64)]
    pub history_events_max: usize,
    #[command(flatten)]
    pub runs: crate::report::RunFlags,
    /// Free text naming this configuration in the report and JSON
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write the live subscribers' latency distributions here:
    /// resume-baseline-N.hgrm and resume-storm-N.hgrm, and -median.hgrm of
    /// the run with the median storm p99
    #[arg(long)]
    pub hgrm_dir: Option<PathBuf>,

    // ---- client process ----
    /// Which client process this is (set by the driver)
    #[arg(long, value_enum, hide = true, default_value = "live")]
    pub part: Part,
    /// Index of this process's first client (set by the driver)
    #[arg(long, hide = true, default_value_t = 0)]
    pub first: usize,
    /// The run's topic names' nonce (set by the driver)
    #[arg(long, hide = true, default_value_t = 0)]
    pub nonce: u64,
    /// Where the live process writes its two distributions: PATH.baseline
    /// and PATH.storm (set by the driver)
    #[arg(long, hide = true)]
    pub hgrm_out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The preload, the live publisher and the live subscribers
    Live,
    /// A share of the resuming clients
    Resume,
}

result_struct! {
    /// What the live process saw. Times in nanoseconds.
    pub struct LiveOutcome {
        /// Seconds the preload took.
        pub preload_secs: f64,
        /// Live latency of events due in the baseline, and in the storm.
        pub base_count: u64,
        pub base_p50: u64,
        pub base_p90: u64,
        pub base_p99: u64,
        pub base_p999: u64,
        pub base_max: u64,
        pub storm_count: u64,
        pub storm_p50: u64,
        pub storm_p90: u64,
        pub storm_p99: u64,
        pub storm_p999: u64,
        pub storm_max: u64,
        /// The server's part of it: receive − the EVENT's publish_ts_ns
        /// (when the server sequenced it), baseline and storm.
        pub base_srv_p50: u64,
        pub base_srv_p99: u64,
        pub storm_srv_p50: u64,
        pub storm_srv_p99: u64,
        /// Live events published (acked with status 0), refused, unanswered.
        pub published: u64,
        pub refused: u64,
        pub unacked: u64,
        /// Live deliveries: received, expected and missing, received twice
        /// or out of order.
        pub delivered: u64,
        pub lost: u64,
        pub seq_errors: u64,
        /// How late the publisher wrote (max).
        pub send_lag_max: u64,
        /// Each topic's last sequence, `:`-separated.
        pub last_seqs: String,
    }
}

result_struct! {
    /// What one resume process saw. Times are CLOCK_REALTIME ns.
    pub struct ResumeOutcome {
        /// Clients connected, and answered SUBSCRIBED Ok.
        pub connected: u64,
        pub resumed: u64,
        /// Resumes answered with another status (the server could not
        /// make them whole).
        pub not_recovered: u64,
        /// Clients caught up within the timeout.
        pub caught_up: u64,
        /// Clients that ended holding exactly every event after their
        /// resume point up to the topic's last, once each, in order.
        pub exact: u64,
        /// Sequences skipped, and received again or out of order.
        pub gaps: u64,
        pub duplicates: u64,
        /// Events received in all, and up to each client's catch-up.
        pub received: u64,
        pub catch_up_events: u64,
        /// When the first SUBSCRIBE Resume was written; when the last
        /// client caught up.
        pub first_resume_ns: u64,
        pub last_caught_up_ns: u64,
        pub connect_secs: f64,
    }
}

pub fn main(args: &Args) -> Result<(), String> {
    check(args)?;
    args.common.own_server_part(
        "resume",
        || drive(args),
        || match args.part {
            Part::Live => live_process(args),
            Part::Resume => resume_process(args),
        },
    )
}

fn check(args: &Args) -> Result<(), String> {
    if args.clients == 0 || args.topics == 0 || args.live == 0 || args.behind == 0 {
        return Err("--clients, --topics, --live and --behind must be at least 1".into());
    }
    if args.topics > 64 {
        return Err("--topics must be at most 64 (one probe connection subscribes to all)".into());
    }
    if !(args.rate > 0.0 && args.rate <= 100_000.0) {
        return Err("--rate must be in (0, 100000] events/s per topic".into());
    }
    if !(args.baseline > 0.0
        && args.baseline < 3600.0
        && args.timeout > 0.0
        && args.timeout <= 3600.0)
    {
        return Err("--baseline must be in (0, 3600) s and --timeout in (0, 3600] s".into());
    }
    if args.preload() < args.behind {
        return Err("--preload must be at least --behind".into());
    }
    if args.common.role == Role::Driver {
        if !(1..=REPEAT_MAX).contains(&args.runs.repeat) {
            return Err(format!("--repeat must be in 1..={REPEAT_MAX}"));
        }
        let k = args.process_count();
        if !(1..=PROCESSES_MAX).contains(&k) || k > args.clients {
            return Err(format!(
                "--processes must be in 1..={PROCESSES_MAX} and at most --clients"
            ));
        }
    }
    Ok(())
}

impl Args {
    fn preload(&self) -> u64 {
        self.preload.unwrap_or(self.behind)
    }

    fn process_count(&self) -> usize {
        self.processes
            .unwrap_or_else(|| self.clients.div_ceil(CLIENTS_PER_PROCESS))
    }

    fn durability(&self) -> Durability {
        self.common.durability_or(Durability::Sync)
    }
}

/// Topic k of a run.
fn topic_name(nonce: u64, k: usize) -> String {
    format!("resume.{nonce:08x}.{k}")
}

// ---------------------------------------------------------------------------
// A run's figures (driver.rs fills them in, reports.rs reports them)

/// Figures of one run; ms for latencies, NaN where unknown.
#[derive(Clone, Debug)]
struct Run {
    measured: bool,
    clients: u64,
    resumed: u64,
    caught_up: u64,
    exact: u64,
    gaps: u64,
    duplicates: u64,
    not_recovered: u64,
    /// From the first SUBSCRIBE Resume to the last client caught up, s.
    catch_up_secs: f64,
    /// Events delivered to the resuming clients up to their catch-up, per
    /// second of catch_up_secs.
    resume_events_per_s: f64,
    catch_up_events: u64,
    /// Live latency: baseline and storm, p50, p90, p99, p99.9, max.
    base: [f64; 5],
    storm: [f64; 5],
    /// The server's part of live latency: p50, p99 in the baseline and in
    /// the storm.
    srv_part: [f64; 4],
    /// The server's and the generator's cores busy with anything in the
    /// storm, %.
    core_busy_pct: [f64; 2],
    live_lost: u64,
    live_seq_errors: u64,
    live_published: u64,
    preload_secs: f64,
    connect_secs: f64,
    /// Server CPU (% of one core) in the baseline and in the storm.
    server_cpu_pct: [f64; 2],
    /// Server RSS at the end of the baseline, and the most seen in the
    /// storm.
    server_rss_bytes: [f64; 2],
    /// All client processes together, % of one core, in the storm.
    generator_cpu_pct: f64,
    /// Share of the server's / the generator's core taken by others in the
    /// storm.
    foreign_pct: [f64; 2],
    data_dir_bytes: f64,
    hgrm: [String; 2],
    failed: bool,
    problems: Vec<String>,
}

impl Default for Run {
    fn default() -> Run {
        let nan = f64::NAN;
        Run {
            measured: false,
            clients: 0,
            resumed: 0,
            caught_up: 0,
            exact: 0,
            gaps: 0,
            duplicates: 0,
            not_recovered: 0,
            catch_up_secs: nan,
            resume_events_per_s: nan,
            catch_up_events: 0,
            base: [nan; 5],
            storm: [nan; 5],
            srv_part: [nan; 4],
            core_busy_pct: [nan; 2],
            live_lost: 0,
            live_seq_errors: 0,
            live_published: 0,
            preload_secs: nan,
            connect_secs: nan,
            server_cpu_pct: [nan; 2],
            server_rss_bytes: [nan; 2],
            generator_cpu_pct: nan,
            foreign_pct: [nan; 2],
            data_dir_bytes: nan,
            hgrm: [String::new(), String::new()],
            failed: false,
            problems: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
