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

use cluecast_proto::Limits;

use crate::attack::AttackFlags;
use crate::child::{self, Followed, Role};
use crate::cli::{Common, Durability};
use crate::fanload::{self, Outcome, Plan, Protocol, Scenario};
use crate::jitter;
use crate::plot;
use crate::procfs::{self, Cores};
use crate::report::{self, command_line, json_num, json_str, mib, num, pct, thousands};
use crate::server::{Server, Stopped};
use crate::stats::{attempt_tag, least_disturbed, median, redone_because};
use crate::targets::{self, Launch, Target};
use crate::tls::{self, CertFiles, TlsClient};

mod reports;
use reports::{json_case, json_report, markdown_report, median_pool, median_run, pct_of_core};

/// Time allowed on top of the plan's own phases for the client process to
/// start, and to exit after reporting.
const CLIENT_SLACK: Duration = Duration::from_secs(30);
/// Allowance per subscriber for connecting and subscribing (normally well
/// under a millisecond each on loopback).
const CONNECT_PER_SUBSCRIBER: Duration = Duration::from_millis(5);
/// Time for the server to print `listening on`.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);
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
// The driver

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

/// How this run's target is started; `tls`: the appliance's certificate
/// and key files.
fn launch(args: &Args, tls: Option<(&Path, &Path)>) -> Launch {
    Launch {
        target: args.target,
        listen: args.common.listen,
        cpu: args.common.server_pin(),
        appliance_args: server_args(args, tls),
        payload_bytes: args.payload,
        durability: args.common.durability_or(Durability::Memory),
    }
}

/// The certificate and key as the report names them (the files are
/// temporary).
const CERT_WORDS: (&str, &str) = ("CERT.pem", "KEY.pem");

fn server_args(args: &Args, tls: Option<(&Path, &Path)>) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "run".into(),
        "--shards".into(),
        args.shards.to_string(),
        "--listen".into(),
        args.common.listen.to_string(),
    ];
    if args.payload > Limits::DEFAULT.payload_bytes_max as usize {
        v.extend(["--payload-bytes-max".into(), args.payload.to_string()]);
    }
    if let Some((cert, key)) = tls {
        v.extend([
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ]);
    }
    v.extend(args.common.server_args.iter().cloned());
    v
}

/// `args` for one side of the measurement: TLS on or off.
fn with_tls(args: &Args, tls: bool) -> Args {
    Args {
        tls,
        vs_plain: false,
        ..args.clone()
    }
}

fn drive(args: &Args) -> Result<(), String> {
    let host = procfs::host();
    // An attached server (--server) needs no program of ours.
    let program = match (
        args.common.server,
        targets::program(args.target, &args.common.cluecast),
    ) {
        (Some(_), _) => PathBuf::new(),
        (None, Ok(p)) => p,
        (None, Err(why)) => return skipped(args, &why),
    };
    let bench = std::env::current_exe().map_err(|e| format!("locating this binary: {e}"))?;
    let cores = args.common.cores(true);
    eprintln!(
        "fanout: {} runs of {} s (+{} s warm-up): {} subscribers, {} topics, {} publishers, \
         {} events/s per topic, {} B payloads; host: {} CPUs, {}, kernel {}",
        args.runs.repeat,
        args.duration,
        args.warmup,
        args.subscribers,
        args.topics,
        args.publishers,
        args.rate,
        args.payload,
        host.cpus,
        host.cpu_model,
        host.kernel
    );
    // One certificate for the whole invocation, removed at its end.
    let certs = match args.tls {
        true => Some(CertFiles::make()?),
        false => None,
    };
    // The sides measured, in the order each round runs them (with
    // --attack, alternating).
    let sides: Vec<Args> = match (args.vs_plain, under_attack::sides(args)) {
        (true, _) => vec![with_tls(args, false), with_tls(args, true)],
        (false, Some(sides)) => sides,
        (false, None) => vec![with_tls(args, args.tls)],
    };
    let mut runs: Vec<Vec<Run>> = vec![Vec::with_capacity(args.runs.repeat); sides.len()];
    for i in 0..args.runs.repeat {
        for k in under_attack::order(args, i, sides.len()) {
            let (side, side_runs) = (&sides[k], &mut runs[k]);
            let files = certs.as_ref().filter(|_| side.tls);
            let tag = match (args.vs_plain, side.tls) {
                (false, _) => under_attack::tag(side),
                (true, false) => " plain".into(),
                (true, true) => " TLS".into(),
            };
            let (mut run, thrown) =
                least_disturbed(args.common.retries, args.common.foreign_max, |attempt| {
                    let run = run_once(side, &bench, &program, cores, files);
                    eprintln!(
                        "[{}/{}]{tag}{} {}",
                        i + 1,
                        args.runs.repeat,
                        attempt_tag(attempt),
                        summary(side, &run)
                    );
                    let score = run.disturbance();
                    (run, score)
                });
            run.redone = thrown.len();
            for t in thrown {
                let why = redone_because(t.foreign_server_pct, t.foreign_client_pct);
                run.redone_problems.push(why.clone());
                run.redone_problems
                    .extend(t.problems.iter().map(|p| format!("{why}: {p}")));
            }
            side_runs.push(run);
        }
    }
    if let Some(dir) = &args.hgrm_dir {
        for (side, side_runs) in sides.iter().zip(&runs) {
            write_hgrms(side, dir, side_runs)?;
        }
    }
    report::emit(
        args.runs.report.as_deref(),
        args.runs.json,
        || {
            let mut md: Vec<String> = (sides.iter().zip(&runs))
                .map(|(side, side_runs)| markdown_report(side, &host, side_runs))
                .collect();
            match &runs[..] {
                [plain, tls] if args.vs_plain => md.push(comparison_markdown(args, plain, tls)),
                _ => md.extend(under_attack::comparison_markdown(args, &runs)),
            }
            md.join("\n")
        },
        || {
            let mut lines: String = (sides.iter().zip(&runs))
                .map(|(side, side_runs)| json_report(side, side_runs))
                .collect();
            match &runs[..] {
                [plain, tls] if args.vs_plain => lines.push_str(&comparison_json(args, plain, tls)),
                _ => lines.extend(under_attack::comparison_json(args, &runs)),
            }
            lines
        },
    )?;
    // The report is written either way; the exit status says whether it
    // is one of a healthy appliance.
    if runs.iter().flatten().any(|r| !r.measured || r.failed) {
        return Err(
            "some runs failed: no figures, deliveries lost / duplicated / out of order, or \
             a server that did not exit 0 (see the report)"
                .into(),
        );
    }
    Ok(())
}

/// Writes each run's latency distribution, and the median run's again as
/// `-median` (the counted run whose p99 is the median's).
fn write_hgrms(args: &Args, dir: &Path, runs: &[Run]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut stem = format!("{}-{}", args.shape.name(), args.target.name());
    if args.tls {
        stem.push_str("-tls");
    }
    if !args.label.is_empty() {
        let safe = |c: char| if c.is_ascii_alphanumeric() { c } else { '_' };
        stem = format!(
            "{stem}-{}",
            args.label.chars().map(safe).collect::<String>()
        );
    }
    let write = |name: String, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    for (i, r) in runs.iter().enumerate().filter(|(_, r)| !r.hgrm.is_empty()) {
        write(format!("{stem}-{}.hgrm", i + 1), &r.hgrm)?;
    }
    let p99 = median_run(runs).latency[2];
    let middle = median_pool(runs)
        .0
        .into_iter()
        .filter(|r| !r.hgrm.is_empty())
        .min_by(|a, b| {
            (a.latency[2] - p99)
                .abs()
                .total_cmp(&(b.latency[2] - p99).abs())
        });
    match middle {
        Some(r) => write(format!("{stem}-median.hgrm"), &r.hgrm),
        None => Ok(()),
    }
}

/// The report of a target that cannot be measured here; not a failure.
fn skipped(args: &Args, why: &str) -> Result<(), String> {
    eprintln!("fanout: target {} skipped: {why}", args.target.name());
    let text = if args.runs.json {
        format!("{{{},\"skipped\":{}}}\n", json_case(args), json_str(why))
    } else {
        format!(
            "# {} measurement (open loop), target `{}`\n\nSkipped: {why}.\n",
            args.shape.name(),
            args.target.name()
        )
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| format!("writing the report: {e}"))
}

/// One measurement: a fresh server, a client process, the figures; `certs`
/// with `--tls`.
fn run_once(
    args: &Args,
    bench: &Path,
    program: &Path,
    cores: Cores,
    certs: Option<&CertFiles>,
) -> Run {
    let mut run = Run::default();
    if !args.common.no_pin {
        let stalls = jitter::probe(
            &[args.common.server_cpu, args.common.client_cpu],
            STALL_PROBE,
        );
        run.host_stall_ms = [0, 1].map(|i| stalls[i].map_or(f64::NAN, |s| s.max_ms));
    } else {
        run.host_stall_ms = [f64::NAN; 2];
    }
    let started = match args.common.server {
        Some(addr) => Ok(Server::attach(addr, args.common.server_pid)),
        None => targets::start(
            &launch(args, certs.map(|c| (c.cert.as_path(), c.key.as_path()))),
            program,
            SERVER_START_TIMEOUT,
        ),
    };
    let mut server = match started {
        Ok(s) => s,
        Err(e) => {
            run.problems.push(e);
            run.failed = true;
            return run;
        }
    };
    run.problems.extend(server.identity_problem());
    let mut clients = std::process::Command::new(bench);
    clients
        .args([args.shape.name(), "--role", "clients"])
        .args(["--target", args.target.name()])
        .args(["--server", &server.addr().to_string()])
        .args(["--subscribers", &args.subscribers.to_string()])
        .args(["--topics", &args.topics.to_string()])
        .args(["--publishers", &args.publishers.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--payload", &args.payload.to_string()])
        .args(["--duration", &args.duration.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--drain-timeout", &args.drain_timeout.to_string()])
        .args(args.shape.flags());
    let hgrm_path = std::env::temp_dir().join(format!(
        "cluecast-bench-{}-{}.hgrm",
        std::process::id(),
        cluecast_sys::realtime_ns()
    ));
    clients.arg("--hgrm-out").arg(&hgrm_path);
    if let Some(c) = certs {
        clients.arg("--tls-ca").arg(&c.cert);
    }
    args.common.pass_to_client(&mut clients);
    let budget = CLIENT_SLACK
        + CONNECT_PER_SUBSCRIBER * (args.subscribers + args.publishers) as u32
        + Duration::from_secs_f64(args.schedule_secs());
    let Followed {
        result,
        window,
        problems,
    } = child::follow(clients, budget, &mut server, cores);
    run.problems.extend(problems);
    let stopped = server.stop(SERVER_STOP_TIMEOUT);
    run.failed |= stopped.problem.is_some();
    run.problems.extend(stopped.problems());
    run.hgrm = std::fs::read_to_string(&hgrm_path).unwrap_or_default();
    let _ = std::fs::remove_file(&hgrm_path);
    match (result.as_ref().map(Outcome::from_result), window) {
        (Some(Ok(o)), Some(w)) => {
            fill_figures(args, &mut run, &o, &w, &stopped);
            run.admission = under_attack::Figures::of(&o, &stopped);
            run.problems
                .extend(under_attack::problems(args, &run.admission));
        }
        (Some(Err(e)), _) => {
            run.failed = true;
            run.problems.push(e);
        }
        _ => run.failed = true,
    }
    run
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn fill_figures(args: &Args, run: &mut Run, o: &Outcome, w: &child::Window, stopped: &Stopped) {
    let secs = o.window_secs;
    let nan = f64::NAN;
    run.measured = secs > 0.0 && w.wall_secs > 0.0 && o.lat_count > 0;
    run.offered_per_s = o.window_sent as f64 / secs;
    run.deliveries_per_s = o.window_deliveries as f64 / secs;
    // Subscribers per topic, averaged over topics (i % T spreads them).
    run.ideal_deliveries_per_s =
        run.offered_per_s * args.subscribers as f64 / args.topics.max(1) as f64;
    run.latency = o.latency().map(ms);
    run.fanout = [o.fanout_p50, o.fanout_p99, o.fanout_max].map(ms);
    run.publish_leg = [o.publish_p99, o.publish_max].map(ms);
    if args.target.protocol() != Protocol::Cluecast {
        // No server timestamp in a peer's protocol: the split is unknown,
        // not 0.
        run.fanout = [nan; 3];
        run.publish_leg = [nan; 2];
    }
    run.read_delay = [o.read_delay_p50, o.read_delay_p99, o.read_delay_max].map(ms);
    run.phase = match o.phase_count {
        0 => [nan; 4],
        _ => o.phase().map(ms),
    };
    run.steady = [o.steady_p99, o.steady_p999].map(ms);
    run.storm = [o.storm_dropped, o.storm_rejoined, o.storm_gaps];
    run.storm_resume_ms = match o.storm_resume_ns {
        0 => nan,
        ns => ms(ns),
    };
    run.catch_up = o.catch_up_deliveries;
    run.positions_per_s = o.positions_sent as f64 / (args.warmup + args.duration);
    run.send_lag = [o.send_lag_p99, o.send_lag_max].map(ms);
    (run.lost, run.duplicated, run.reordered) = (o.lost, o.duplicated, o.reordered);
    (run.refused, run.unsent, run.unacked) = (o.refused, o.unsent, o.unacked);
    (run.invalid, run.seq_errors) = (o.invalid, o.seq_errors);
    let softirqd = w.server_core.map_or(0.0, |c| c.softirqd);
    run.server_cpu_pct = 100.0 * w.server_cpu_secs / w.wall_secs;
    run.server_core_pct = 100.0 * (w.server_cpu_secs + softirqd) / w.wall_secs;
    run.server_rss_bytes = w.server_rss_bytes.map_or(nan, |b| b as f64);
    run.generator_cpu_pct = 100.0 * o.generator_cpu_secs / secs;
    run.generator_bound = run.generator_cpu_pct > GENERATOR_BOUND_PCT;
    if run.generator_bound {
        run.problems.push(format!(
            "generator-bound: the generator's core was {:.0}% busy (over \
             {GENERATOR_BOUND_PCT}%), so these figures may be its limit rather than the \
             server's; not counted in the median unless every run was",
            run.generator_cpu_pct
        ));
    }
    run.foreign_server_pct = w
        .server_core
        .map_or(nan, |c| 100.0 * c.foreign(w.server_cpu_secs, w.wall_secs));
    run.foreign_client_pct = w.client_core.map_or(nan, |c| {
        100.0 * c.foreign(o.generator_cpu_secs, w.wall_secs)
    });
    run.connect_secs = o.connect_secs;
    let sends = stopped.stat("sends");
    // Whole-run counter over the publishing time: a rough rate.
    run.sends_per_s = sends.map_or(nan, |s| s as f64 / (args.warmup + args.duration));
    if !o.note.is_empty() {
        run.problems.push(format!("clients: {}", o.note));
    }
    if o.unstamped > 0 {
        run.problems.push(format!(
            "{} reads had no kernel receive timestamp: their deliveries count from the \
             time they were read",
            o.unstamped
        ));
    }
    let wrong = o.lost + o.duplicated + o.reordered + o.invalid + o.excluded_received;
    if wrong > 0 || o.seq_errors > 0 || o.subscribers_dropped > 0 || o.publishers_dropped > 0 {
        run.failed = true;
        run.problems.push(format!(
            "deliveries: {} lost, {} duplicated, {} reordered, {} invalid, {} received \
             although refused, {} sequence errors; {} subscribers and {} publishers dropped{}",
            o.lost,
            o.duplicated,
            o.reordered,
            o.invalid,
            o.excluded_received,
            o.seq_errors,
            o.subscribers_dropped,
            o.publishers_dropped,
            if o.approximate {
                " (approximate: too many gaps to track)"
            } else {
                ""
            }
        ));
    }
    if o.refused > 0 || o.unsent > 0 || o.unacked > 0 {
        run.problems.push(format!(
            "publishes: {} refused by the server, {} never sent (backlog over the limit), {} \
             never acknowledged",
            o.refused, o.unsent, o.unacked
        ));
    }
    let stat = |k: &str| stopped.stat(k).unwrap_or(0);
    let (catch_ups, goaways, overloaded, full, cq) = (
        stat("catch_ups"),
        stat("slow_consumer_goaways"),
        stat("overloaded"),
        stat("rejected_full"),
        stat("cq_overflows"),
    );
    if catch_ups + goaways + overloaded + full + cq > 0 {
        run.problems.push(format!(
            "server counters: {catch_ups} catch-ups, {goaways} slow-consumer GOAWAYs, \
             {overloaded} publishes refused Overloaded, {full} connections refused \
             (full), {cq} completion-queue overflows"
        ));
    }
    if args.tls && stat("tls_failures") > 0 {
        run.problems.push(format!(
            "server counters: {} connections cut off for breaking TLS (tls_failures)",
            stat("tls_failures")
        ));
    }
    // The peers have no such counters.
    if stopped.stats.is_empty() && args.target.has_shard_stats() && args.common.server.is_none() {
        run.problems
            .push("the server printed no ShardStats on exit".into());
    }
    // A generator that fell behind its own schedule inflates latencies
    // with its own delay.
    if run.send_lag[1] > 1.0 {
        // Without pinning there is no probe, so no stall figure to give.
        let stalls = if run.host_stall_ms[1].is_nan() {
            String::new()
        } else {
            format!(
                "; host stalls on its CPU reached {:.1} ms before the run",
                run.host_stall_ms[1]
            )
        };
        run.problems.push(format!(
            "the generator sent up to {:.1} ms late (p99 {:.3} ms{stalls}): that delay is in \
             the latencies",
            run.send_lag[1], run.send_lag[0]
        ));
    }
}

fn summary(args: &Args, run: &Run) -> String {
    let figures = run.measured.then(|| {
        format!(
            "{:.0} offered/s, {:.0} deliveries/s, latency p50 {:.3} p99 {:.3} p99.9 {:.3} max \
             {:.3} ms, lost {} dup {} reordered {}, server {:.0}% CPU {:.0} MiB, generator \
             {:.0}%{}",
            run.offered_per_s,
            run.deliveries_per_s,
            run.latency[0],
            run.latency[2],
            run.latency[3],
            run.latency[5],
            run.lost,
            run.duplicated,
            run.reordered,
            run.server_cpu_pct,
            run.server_rss_bytes / f64::from(1 << 20),
            run.generator_cpu_pct,
            under_attack::summary(args, run)
        )
    });
    report::summary(figures, &run.problems)
}

// ---------------------------------------------------------------------------
// TLS against plaintext (--vs-plain)

/// Server CPU per delivery, µs (the process's user + sys).
fn cpu_us_per_delivery(r: &Run) -> f64 {
    r.server_cpu_pct * 1e4 / r.deliveries_per_s
}

/// Its core's (the process plus the core's ksoftirqd) per delivery, µs.
fn core_us_per_delivery(r: &Run) -> f64 {
    r.server_core_pct * 1e4 / r.deliveries_per_s
}

/// What the pairs of runs (plaintext, then TLS, in the same round) give.
struct Pairs {
    /// TLS / plaintext of each pair: server CPU per delivery, its core's.
    cpu: Vec<f64>,
    core: Vec<f64>,
    /// Some pair has a generator-bound run (no pair was fit to count).
    generator_bound: bool,
}

impl Pairs {
    /// The pairs whose two runs count; when there are none, the measured
    /// ones (said so).
    fn of(plain: &[Run], tls: &[Run]) -> Pairs {
        let both = |f: fn(&Run) -> bool| -> Vec<(&Run, &Run)> {
            plain
                .iter()
                .zip(tls)
                .filter(|(p, t)| f(p) && f(t))
                .collect()
        };
        let (pairs, generator_bound) = match both(Run::counted) {
            counted if !counted.is_empty() => (counted, false),
            _ => (both(|r| r.measured), true),
        };
        let ratio = |f: fn(&Run) -> f64| pairs.iter().map(|(p, t)| f(t) / f(p)).collect();
        Pairs {
            cpu: ratio(cpu_us_per_delivery),
            core: ratio(core_us_per_delivery),
            generator_bound: generator_bound && !pairs.is_empty(),
        }
    }
}

/// The comparison section: each side's medians and TLS / plaintext.
fn comparison_markdown(args: &Args, plain: &[Run], tls: &[Run]) -> String {
    use std::fmt::Write as _;
    let (p, t) = (median_run(plain), median_run(tls));
    let pairs = Pairs::of(plain, tls);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# {} over TLS 1.3 against plaintext, target `{}`\n",
        args.shape.name(),
        args.target.name()
    );
    let _ = writeln!(
        s,
        "The two reports above, side by side: {} rounds, each a plaintext run and then a TLS \
         run of the same load, each against a fresh appliance (the same binary, started with \
         `--tls-cert` / `--tls-key` for the TLS run). Medians of each side as in its report; \
         *TLS / plain* is the ratio of those medians, except for the CPU per delivery, where it \
         is the median over the rounds of each round's ratio. *server CPU per delivery*: the \
         server process's user + sys over the window divided by the deliveries in it; *its \
         core's*: the same with the core's ksoftirqd added (loopback TCP work).\n",
        args.runs.repeat
    );
    let _ = writeln!(
        s,
        "| | plaintext | TLS | TLS / plain |\n|---|---:|---:|---:|"
    );
    let ratio = |a: f64, b: f64| num(b / a, 2);
    let mut row = |name: &str, a: String, b: String, r: String| {
        let _ = writeln!(s, "| {name} | {a} | {b} | {r} |");
    };
    row(
        "deliveries/s",
        thousands(p.deliveries_per_s),
        thousands(t.deliveries_per_s),
        ratio(p.deliveries_per_s, t.deliveries_per_s),
    );
    for (i, name) in [(0, "p50 ms"), (2, "p99 ms"), (3, "p99.9 ms"), (5, "max ms")] {
        row(
            name,
            num(p.latency[i], 3),
            num(t.latency[i], 3),
            ratio(p.latency[i], t.latency[i]),
        );
    }
    row(
        "server CPU (% of one core)",
        pct_of_core(p.server_cpu_pct),
        pct_of_core(t.server_cpu_pct),
        ratio(p.server_cpu_pct, t.server_cpu_pct),
    );
    row(
        "server's core, with ksoftirqd",
        pct_of_core(p.server_core_pct),
        pct_of_core(t.server_core_pct),
        ratio(p.server_core_pct, t.server_core_pct),
    );
    let med_of = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    row(
        "**server CPU per delivery, µs**",
        num(med_of(&cpu_per_delivery_of(plain)), 2),
        num(med_of(&cpu_per_delivery_of(tls)), 2),
        format!("**{}**", num(med_of(&pairs.cpu), 2)),
    );
    row(
        "its core's per delivery, µs",
        num(med_of(&core_per_delivery_of(plain)), 2),
        num(med_of(&core_per_delivery_of(tls)), 2),
        num(med_of(&pairs.core), 2),
    );
    row(
        "server RSS MiB",
        mib(p.server_rss_bytes, 0),
        mib(t.server_rss_bytes, 0),
        ratio(p.server_rss_bytes, t.server_rss_bytes),
    );
    row(
        "generator CPU (% of its core)",
        pct_of_core(p.generator_cpu_pct),
        pct_of_core(t.generator_cpu_pct),
        ratio(p.generator_cpu_pct, t.generator_cpu_pct),
    );
    row(
        "read delay p99 ms",
        num(p.read_delay[1], 3),
        num(t.read_delay[1], 3),
        ratio(p.read_delay[1], t.read_delay[1]),
    );
    row(
        "connect s",
        num(p.connect_secs, 1),
        num(t.connect_secs, 1),
        ratio(p.connect_secs, t.connect_secs),
    );
    let each: Vec<String> = pairs.cpu.iter().map(|r| num(*r, 2)).collect();
    let _ = writeln!(
        s,
        "\nServer CPU per delivery, TLS / plain, round by round: {}{}.",
        if each.is_empty() {
            "no round measured both".to_string()
        } else {
            each.join(", ")
        },
        if pairs.generator_bound {
            " (every pair had a generator-bound run: these may be the generator's limit)"
        } else {
            ""
        }
    );
    s
}

/// Server CPU per delivery of each measured, counted run (all measured
/// ones if none counts).
fn cpu_per_delivery_of(runs: &[Run]) -> Vec<f64> {
    median_pool(runs)
        .0
        .iter()
        .map(|r| cpu_us_per_delivery(r))
        .collect()
}

fn core_per_delivery_of(runs: &[Run]) -> Vec<f64> {
    median_pool(runs)
        .0
        .iter()
        .map(|r| core_us_per_delivery(r))
        .collect()
}

/// The comparison as one JSON line (`"comparison": "tls_vs_plain"`, no
/// `"run"`: summary.rs reads only medians).
fn comparison_json(args: &Args, plain: &[Run], tls: &[Run]) -> String {
    let pairs = Pairs::of(plain, tls);
    let med_of = |v: &[f64]| json_num(median(v).unwrap_or(f64::NAN));
    format!(
        "{{{},\"comparison\":\"tls_vs_plain\",\"rounds\":{},\
         \"server_cpu_per_delivery_us\":{{\"plain\":{},\"tls\":{}}},\
         \"server_core_per_delivery_us\":{{\"plain\":{},\"tls\":{}}},\
         \"tls_over_plain\":{{\"server_cpu_per_delivery\":{},\"server_core_per_delivery\":{},\
         \"rounds\":{}}},\"generator_bound\":{}}}\n",
        json_case(&with_tls(args, false)),
        args.runs.repeat,
        med_of(&cpu_per_delivery_of(plain)),
        med_of(&cpu_per_delivery_of(tls)),
        med_of(&core_per_delivery_of(plain)),
        med_of(&core_per_delivery_of(tls)),
        med_of(&pairs.cpu),
        med_of(&pairs.core),
        crate::report::json_list(&pairs.cpu),
        pairs.generator_bound,
    )
}

#[cfg(test)]
mod tests;
