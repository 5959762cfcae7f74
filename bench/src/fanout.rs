//! `cluecast-bench fanout`: open-loop fan-out latency and correctness.
//!
//! P publishers publish events on a fixed schedule (R events/s per topic
//! over T topics, round-robin); S subscribers, subscriber i on topic
//! i % T, each receive every event of their topic. Every payload carries
//! its publisher, the publisher's counter and the time it was due, so each
//! delivery gives a latency (receive − due: a stalled server cannot hide
//! its stall) and is checked for loss, duplication and order.
//!
//! The driver starts a fresh appliance for every run (pinned to one CPU)
//! and a client process (`--role clients`, pinned to another) holding all
//! publishers and subscribers in one thread (see fanload.rs); it samples
//! the server's CPU and memory when the client process marks the start and
//! end of its measured window, stops the server with SIGTERM, checks it
//! exits 0, and reports every run and the median of the runs.
//!
//! `--target` picks what is measured: the appliance, or `ceiling` (this
//! binary's own trivial server, one send(2) per delivery: the most this
//! host's kernel allows, to compare the appliance with). Both are started,
//! pinned, sampled and stopped the same way.
//!
//! `--tls` measures the appliance serving TLS 1.3: the driver makes a
//! self-signed certificate (tls.rs), starts the appliance with
//! `--tls-cert` / `--tls-key` and has the client process trust it; with
//! `--vs-plain` every TLS run is paired with a plaintext run of the same
//! load just before it, and the report compares the two.
//!
//! `storm --attack` pairs each storm with the same storm under a flood of
//! unfinished handshakes, calm and attack alternating (under_attack.rs).

mod under_attack;

use std::io::Write;
use std::path::{Path, PathBuf};

use std::time::Duration;

use crate::attack::AttackFlags;
use crate::child::{self, Followed, Role};
use crate::cli::{Common, Durability};
use crate::fanload::{self, Outcome, Plan, Protocol, Scenario};
use crate::jitter;
use crate::plot;
use crate::procfs::{self, Cores};
use crate::report::{self, json_num, json_str, mib, num, pct, thousands};
use crate::server::{Server, Stopped};
use crate::stats::{attempt_tag, least_disturbed, median, nearest, redone_because};
use crate::targets::{self, Launch, Target};
use crate::tls::{self, CertFiles, TlsClient};

mod driver;
mod reports;
mod vs_plain;
use driver::{drive, launch, with_tls, CERT_WORDS};
use reports::{json_case, json_report, markdown_report, median_pool, median_run, pct_of_core};
use vs_plain::{comparison_json, comparison_markdown};

/// Time allowed on top of the plan's own phases for the client process to
/// start, and to exit after reporting.
const CLIENT_SLACK: Duration = Duration::from_secs(30);
/// Allowance per subscriber for connecting and subscribing (normally well
/// under a millisecond each on loopback).
const CONNECT_PER_SUBSCRIBER: Duration = Duration::from_millis(5);
/// Time for the server to drain and exit after SIGTERM (its own drain
/// timeout is 5 s by default).
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Most runs of one invocation.
const REPEAT_MAX: usize = 100;
/// How long the host's own stalls are probed before each run.
const STALL_PROBE: Duration = Duration::from_secs(1);

/// The scenario a run is: the fan-out load plus what shapes it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Shape {
    #[default]
    Fanout,
    Spike(SpikeFlags),
    Storm(StormFlags),
    Hunt(HuntFlags),
}

#[derive(clap::Args, Clone, Copy, Debug, PartialEq)]
pub struct SpikeFlags {
    /// Seconds into the measured window the spike starts
    #[arg(long, default_value_t = 3.0)]
    pub spike_at: f64,
    /// The spike's rate as a multiple of the steady one
    #[arg(long, default_value_t = 10.0)]
    pub spike_factor: f64,
    /// Milliseconds the rise takes (in ten steps)
    #[arg(long, default_value_t = 500)]
    pub spike_ramp_ms: u64,
    /// Seconds the spike's rate is held before it drops back
    #[arg(long, default_value_t = 3.0)]
    pub spike_hold: f64,
}

#[derive(clap::Args, Clone, Copy, Debug, PartialEq)]
pub struct StormFlags {
    /// Seconds into the measured window the subscribers drop
    #[arg(long, default_value_t = 3.0)]
    pub storm_at: f64,
    /// Subscribers that drop (the first ones; the rest stay connected and
    /// give the live latency meanwhile)
    #[arg(long, default_value_t = 1000)]
    pub storm_subscribers: usize,
    /// Milliseconds over which they come back, evenly spread
    #[arg(long, default_value_t = 1000)]
    pub storm_spread_ms: u64,
    #[command(flatten)]
    pub attack: AttackFlags,
}

#[derive(clap::Args, Clone, Copy, Debug, PartialEq)]
pub struct HuntFlags {
    /// Positions each player sends upstream per second
    #[arg(long, default_value_t = 1.0)]
    pub position_hz: f64,
}

/// `spike`: the fan-out load, then the rate rises within --spike-ramp-ms,
/// holds and drops back; latency in the spike against before it.
#[derive(clap::Args, Clone, Debug)]
#[command(mut_arg("rate", |a| a.default_value("5")))]
pub struct SpikeArgs {
    #[command(flatten)]
    pub load: Args,
    #[command(flatten)]
    pub spike: SpikeFlags,
}

/// `storm`: subscribers drop at once and come back within a second,
/// resuming; time until all have caught up, gaps, live latency meanwhile.
#[derive(clap::Args, Clone, Debug)]
pub struct StormArgs {
    #[command(flatten)]
    pub load: Args,
    #[command(flatten)]
    pub storm: StormFlags,
}

/// `hunt`: the original system's job. Players (subscribers) in several
/// hunts (topics), each player sending its position upstream; clue drops
/// and leaderboard updates published into each hunt.
#[derive(clap::Args, Clone, Debug)]
#[command(
    mut_arg("subscribers", |a| a.default_value("2500").help("Players; player i is in hunt i % --topics")),
    mut_arg("topics", |a| a.default_value("10").help("Hunts running at once")),
    mut_arg("rate", |a| a.default_value("2").help("Clue drops and leaderboard updates per second per hunt")),
    mut_arg("payload", |a| a.default_value("512").help("Payload bytes per clue / leaderboard update (at least 20)")),
)]
pub struct HuntArgs {
    #[command(flatten)]
    pub load: Args,
    #[command(flatten)]
    pub hunt: HuntFlags,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Fanout => "fanout",
            Shape::Spike(_) => "spike",
            Shape::Storm(_) => "storm",
            Shape::Hunt(_) => "hunt",
        }
    }

    /// Its own flags, for the client process.
    fn flags(self) -> Vec<String> {
        let words: Vec<(&str, String)> = match self {
            Shape::Fanout => vec![],
            Shape::Spike(f) => vec![
                ("--spike-at", f.spike_at.to_string()),
                ("--spike-factor", f.spike_factor.to_string()),
                ("--spike-ramp-ms", f.spike_ramp_ms.to_string()),
                ("--spike-hold", f.spike_hold.to_string()),
            ],
            Shape::Storm(f) => vec![
                ("--storm-at", f.storm_at.to_string()),
                ("--storm-subscribers", f.storm_subscribers.to_string()),
                ("--storm-spread-ms", f.storm_spread_ms.to_string()),
            ],
            Shape::Hunt(f) => vec![("--position-hz", f.position_hz.to_string())],
        };
        let attack = match self {
            Shape::Storm(f) => f.attack.flags(),
            _ => Vec::new(),
        };
        words
            .into_iter()
            .flat_map(|(k, v)| [k.to_string(), v])
            .chain(attack)
            .collect()
    }

    /// The client side's scenario: times in the window become times from
    /// the schedule's start. Err for a shape that does not fit the run.
    fn scenario(self, args: &Args) -> Result<Scenario, String> {
        let in_window = |secs: f64, what: &str| {
            if secs.is_finite() && secs >= 0.0 && secs < args.duration {
                Ok(Duration::from_secs_f64(args.warmup + secs))
            } else {
                Err(format!(
                    "{what} must be inside the measured window (0..{} s)",
                    args.duration
                ))
            }
        };
        match self {
            Shape::Fanout => Ok(Scenario::Fanout),
            Shape::Spike(f) => {
                let at = in_window(f.spike_at, "--spike-at")?;
                let ramp = Duration::from_millis(f.spike_ramp_ms);
                if !(f.spike_hold.is_finite() && f.spike_hold > 0.0) {
                    return Err("--spike-hold must be positive".into());
                }
                let hold = Duration::from_secs_f64(f.spike_hold);
                in_window(
                    f.spike_at + ramp.as_secs_f64() + f.spike_hold,
                    "the spike's end",
                )?;
                Ok(Scenario::Spike {
                    at,
                    ramp,
                    hold,
                    factor: f.spike_factor,
                })
            }
            Shape::Storm(f) => {
                let at = in_window(f.storm_at, "--storm-at")?;
                let spread = Duration::from_millis(f.storm_spread_ms);
                in_window(f.storm_at + spread.as_secs_f64(), "the storm's end")?;
                if f.storm_subscribers > args.subscribers {
                    return Err(format!(
                        "--storm-subscribers {} is more than --subscribers {}",
                        f.storm_subscribers, args.subscribers
                    ));
                }
                Ok(Scenario::Storm {
                    at,
                    subscribers: f.storm_subscribers,
                    spread,
                    newcomers: f.attack.attack.is_some(),
                })
            }
            Shape::Hunt(f) => Ok(Scenario::Hunt {
                positions_per_s: f.position_hz,
            }),
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The scenario (set by the subcommand)
    #[arg(skip)]
    pub shape: Shape,
    #[command(flatten)]
    pub common: Common,
    /// The server measured (the same load, accounting and figures for each)
    #[arg(long, value_enum, default_value_t = Target::Cluecast)]
    pub target: Target,
    /// Subscriber connections; subscriber i is on topic i % --topics
    #[arg(long, default_value_t = 2000)]
    pub subscribers: usize,
    /// Topics the events are spread over, round-robin
    #[arg(long, default_value_t = 20)]
    pub topics: usize,
    /// Publisher connections, sharing the schedule
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Events per second per topic (all publishers together)
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Payload bytes per event (at least 20: the stamp)
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Seconds of publishing in the measured window
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of publishing before the window, to let everything settle
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// After publishing stops, longest wait (s) for every event to arrive
    #[arg(long, default_value_t = 5.0)]
    pub drain_timeout: f64,
    #[command(flatten)]
    pub runs: crate::report::RunFlags,
    /// Free text naming this configuration in the report and JSON (e.g.
    /// `allocator=jemalloc` when --cluecast is such a build)
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write each run's latency distribution to this directory as HDR
    /// percentile files: SCENARIO-TARGET-N.hgrm, and SCENARIO-TARGET-median.hgrm
    /// (the run with the median p99), for `cluecast-bench plot`
    #[arg(long)]
    pub hgrm_dir: Option<PathBuf>,
    /// Where the client process writes its latency distribution (set by the
    /// driver)
    #[arg(long, hide = true)]
    pub hgrm_out: Option<PathBuf>,
    /// Serve and speak TLS 1.3 (the cluecast target only): the driver makes
    /// a self-signed certificate for localhost in a private temporary
    /// directory and starts the appliance with --tls-cert / --tls-key;
    /// every publisher and subscriber connects over TLS (rustls), each
    /// handshake done before the measured window
    #[arg(long)]
    pub tls: bool,
    /// With --tls: pair each TLS run with a plaintext run of the same load
    /// just before it (plain, TLS, plain, TLS, ...), report both, and the
    /// TLS / plaintext ratio of server CPU per delivery
    #[arg(long, requires = "tls")]
    pub vs_plain: bool,
    /// The certificate the client process trusts: TLS on (set by the
    /// driver)
    #[arg(long, hide = true)]
    pub tls_ca: Option<PathBuf>,

    // ---- driver ----
    /// Server --shards
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
}

impl Args {
    fn schedule_secs(&self) -> f64 {
        self.warmup + self.duration + self.drain_timeout
    }
}

pub fn main(args: &Args) -> Result<(), String> {
    let secs_ok = |x: f64| (0.0..86_400.0).contains(&x);
    let timing_ok = args.duration > 0.0
        && secs_ok(args.duration)
        && secs_ok(args.warmup)
        && secs_ok(args.drain_timeout);
    if !timing_ok {
        return Err(
            "--duration must be in (0, 86400) s, --warmup and --drain-timeout in [0, 86400) s"
                .into(),
        );
    }
    if args.subscribers == 0 || args.topics == 0 || args.publishers == 0 {
        return Err("need at least one subscriber, topic and publisher".into());
    }
    if args.runs.repeat == 0 || args.runs.repeat > REPEAT_MAX {
        return Err(format!("--repeat must be in 1..={REPEAT_MAX}"));
    }
    args.shape.scenario(args)?;
    under_attack::check(args)?;
    if (args.tls || args.tls_ca.is_some()) && args.target != Target::Cluecast {
        return Err(format!(
            "--tls is for the cluecast target only (the appliance serves TLS 1.3 with \
             --tls-cert / --tls-key); the {} target is measured over plain TCP",
            args.target.name()
        ));
    }
    match args.common.role {
        Role::Driver => {
            if args.tls && args.common.server.is_some() {
                return Err(
                    "--tls needs the appliance started by this tool (it makes the certificate \
                     the clients trust), not --server"
                        .into(),
                );
            }
            drive(args)
        }
        Role::Subscribers => clients(args),
    }
}

// ---------------------------------------------------------------------------
// The client side

/// `--role clients`: one run against a running server; speaks the line
/// protocol of child.rs on stdout.
fn clients(args: &Args) -> Result<(), String> {
    let (server, nonce) = args.common.client_start("clients")?;
    let tls = match &args.tls_ca {
        Some(ca) => Some(TlsClient::trusting(ca)?),
        None => None,
    };
    let attack = match args.shape {
        Shape::Storm(f) => f.attack.attackers(tls.as_ref()),
        _ => None,
    };
    let plan = Plan {
        server,
        protocol: args.target.protocol(),
        // Fresh topics: nobody else's events, sequences from 1.
        topic_prefix: format!("fanout.{nonce:08x}"),
        topics: args.topics,
        subscribers: args.subscribers,
        publishers: args.publishers,
        rate_per_topic: args.rate,
        payload_bytes: args.payload,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        drain_timeout: Duration::from_secs_f64(args.drain_timeout),
        connect_timeout: Duration::from_millis(args.common.connect_timeout_ms),
        scenario: args.shape.scenario(args)?,
        tls,
        attack,
    };
    let result = fanload::run(&plan, child::say_mark).and_then(|(o, latency)| {
        if let Some(path) = &args.hgrm_out {
            std::fs::write(path, plot::hgrm(&latency, 1e6))
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok(o)
    });
    match result {
        Ok(o) => {
            eprintln!(
                "fanout clients: {:.0} offered/s, {:.0} deliveries/s, p99 {:.3} ms, max {:.3} ms, \
                 lost {} dup {} reordered {}{}",
                o.window_sent as f64 / o.window_secs,
                o.window_deliveries as f64 / o.window_secs,
                o.lat_p99 as f64 / 1e6,
                o.lat_max as f64 / 1e6,
                o.lost,
                o.duplicated,
                o.reordered,
                crate::report::parenthesised(&o.note)
            );
            child::say(&o.to_line());
            Ok(())
        }
        Err(e) => {
            child::say_error(&e);
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------
// A run's figures (driver.rs fills them in, reports.rs reports them)

/// Figures of one run. Latencies in ms, CPU as % of one core.
#[derive(Clone, Debug, Default)]
struct Run {
    /// The run produced figures (it may still have problems).
    measured: bool,
    offered_per_s: f64,
    deliveries_per_s: f64,
    /// Deliveries/s a perfect server would have made of what was sent.
    ideal_deliveries_per_s: f64,
    /// p50, p90, p99, p99.9, p99.99, max.
    latency: [f64; 6],
    /// Receive − the server's publish_ts_ns: p50, p99, max.
    fanout: [f64; 3],
    /// publish_ts_ns − due: p99, max.
    publish_leg: [f64; 2],
    /// How long the generator took to read deliveries after they
    /// arrived: p50, p99, max (not in the latency).
    read_delay: [f64; 3],
    /// How late the generator sent: p99, max.
    send_lag: [f64; 2],
    /// The scenario's phase (the spike; the storm's reconnecting): p50,
    /// p99, p99.9, max; and p99, p99.9 of the window before it.
    phase: [f64; 4],
    steady: [f64; 2],
    /// Storm: subscribers dropped, back, resumed with a gap; ms from the
    /// drop until the last was caught up.
    storm: [u64; 3],
    storm_resume_ms: f64,
    /// Deliveries of events missed while away (not in the latencies).
    catch_up: u64,
    /// Hunt: positions sent upstream per second.
    positions_per_s: f64,
    /// The generator's core was too busy for the figures to be the
    /// server's: reported, not counted in the median.
    generator_bound: bool,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    refused: u64,
    unsent: u64,
    unacked: u64,
    invalid: u64,
    seq_errors: u64,
    server_cpu_pct: f64,
    /// The server process plus its core's ksoftirqd.
    server_core_pct: f64,
    server_rss_bytes: f64,
    generator_cpu_pct: f64,
    foreign_server_pct: f64,
    foreign_client_pct: f64,
    sends_per_s: f64,
    connect_secs: f64,
    /// Longest stall a busy loop saw just before the run on the server's /
    /// the generator's CPU, ms (the host's own jitter).
    host_stall_ms: [f64; 2],
    /// Storm --attack: the newcomers and the attackers.
    admission: under_attack::Figures,
    /// The latency distribution (plot.rs's hgrm text), empty without one.
    hgrm: String,
    /// The server did not exit 0 on SIGTERM, or deliveries went wrong.
    failed: bool,
    problems: Vec<String>,
    /// Attempts measured before this one and thrown away because the
    /// machine was busy with something else, with their problems.
    redone: usize,
    redone_problems: Vec<String>,
}

/// Share of its core (%) past which the generator, not the server, may be
/// what the figures show.
const GENERATOR_BOUND_PCT: f64 = 90.0;

impl Run {
    /// Measured and fit to count in the median.
    fn counted(&self) -> bool {
        self.measured && !self.generator_bound
    }

    /// How disturbed the run was: the larger share of a measured core that
    /// went elsewhere; infinite without figures (so it is measured again).
    /// A run that went wrong is not measured again for that alone: the
    /// report must show it.
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

/// The columns of a run that the median row summarises, with names for
/// JSON.
const LATENCY_KEYS: [&str; 6] = ["p50", "p90", "p99", "p999", "p9999", "max"];

#[cfg(test)]
mod tests;
