//! `cluecast-bench zerocopy`: does sending fan-out frames with io_uring
//! SEND_ZC (`--zerocopy-bytes-min`) pay on this host, and from which size?
//!
//! The driver starts a fresh appliance for every run (one shard, pinned to
//! one CPU) and a client process (`--role subscribers`, pinned to another
//! CPU) holding one publisher and S subscribers of one topic. The client
//! process tells the driver when its measured window starts and ends, and
//! the driver samples the server's CPU time at those moments. Plain and
//! zero-copy runs alternate (ABBA order) so drifts of a shared machine hit
//! both modes alike; the report gives medians and paired ratios.
//!
//! The client side is always a separate process so the same code measures
//! loopback, a veth pair between network namespaces (`--server-via` /
//! `--clients-via "ip netns exec NS"`), or another host (`--clients-via
//! "ssh HOST"`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::child::{self, Followed, Role, Window};
use crate::cli::{Common, Durability};
use crate::clients::{self, Outcome, Plan};
use crate::procfs::{self, Cores};
use crate::report::{self, command_line, json_list, json_num, json_str, num, pct, thousands};
use crate::server::{Server, ServerCommand, Stopped};
use crate::stats::{attempt_tag, format_size, least_disturbed, median, paired_ratio, parse_size};
use crate::targets;

/// Time allowed for the client process to connect and subscribe everyone,
/// and for it to exit after reporting, on top of the plan's own phases.
const CLIENT_SLACK: Duration = Duration::from_secs(20);
/// Time for the server to print `listening on`.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for the server to drain and exit after SIGTERM (its own drain
/// timeout is 5 s by default).
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// A ratio within 1 ± this is reported as no clear difference.
const NOISE: f64 = 0.05;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Payload sizes, comma-separated; K/M suffixes are binary (1K = 1024)
    #[arg(long, value_delimiter = ',', value_parser = parse_size,
          default_value = "1K,4K,16K,64K,256K")]
    pub sizes: Vec<usize>,
    /// Subscriber connections, all on one topic
    #[arg(long, default_value_t = 32)]
    pub subscribers: usize,
    /// Seconds of publishing in the measured window
    #[arg(long, default_value_t = 5.0)]
    pub duration_secs: f64,
    /// Publishing before the window, to let the server and TCP settle
    #[arg(long, default_value_t = 500)]
    pub warmup_ms: u64,
    /// Runs of every (size, mode) cell
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Most PUBLISHes without an ack
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Most event bytes the publisher may be ahead of the slowest
    /// subscriber (0 = acks only; subscribers may then fall behind)
    #[arg(long, value_parser = parse_size, default_value = "4M")]
    pub lead_bytes: usize,
    /// After publishing stops, longest wait for every event to arrive
    #[arg(long, default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// Emit one JSON object per (size, mode) cell instead of markdown
    #[arg(long)]
    pub json: bool,

    // ---- driver ----
    /// Address clients connect to, if not the one the server prints
    /// (e.g. when it listens on 0.0.0.0)
    #[arg(long)]
    pub connect_host: Option<IpAddr>,
    /// Server --zerocopy-bytes-min in the zero-copy mode
    #[arg(long, default_value_t = 1)]
    pub zerocopy_min: usize,
    /// Server --arena-bytes (zero-copy pins frames until the kernel's
    /// notification: a small arena refuses publishes in that mode first)
    #[arg(long, value_parser = parse_size, default_value = "512M")]
    pub arena_bytes: usize,
    /// Server --queue-bytes-max (keep it above --lead-bytes)
    #[arg(long, value_parser = parse_size, default_value = "8M")]
    pub queue_bytes_max: usize,
    /// Server --history-bytes-max (history shares the arena with frames in
    /// flight: too much of it and publishes are refused as Overloaded)
    #[arg(long, value_parser = parse_size, default_value = "4M")]
    pub history_bytes_max: usize,
    /// Command words to start the server through, e.g. "ip netns exec NS";
    /// it must exec the server in place (same process id)
    #[arg(long)]
    pub server_via: Option<String>,
    /// Command words to start the client process through, e.g.
    /// "ip netns exec NS" or "ssh HOST"
    #[arg(long)]
    pub clients_via: Option<String>,
    /// The cluecast-bench binary as the client side sees it [default: this one]
    #[arg(long)]
    pub clients_bench: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Plain,
    ZeroCopy,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::ZeroCopy => "zero-copy",
        }
    }
}

pub fn main(args: &Args) -> Result<(), String> {
    if args.sizes.is_empty() || args.repeat == 0 || args.subscribers == 0 {
        return Err("need at least one size, one run and one subscriber".into());
    }
    if !(args.duration_secs > 0.0 && args.duration_secs < 86_400.0) {
        return Err("--duration-secs must be in (0, 86400)".into());
    }
    match args.common.role {
        Role::Driver => {
            args.common.starts_its_own_server("zerocopy")?;
            drive(args)
        }
        Role::Subscribers => subscribers(args),
    }
}

// ---------------------------------------------------------------------------
// The client side

/// `--role subscribers`: one measurement per size against a running server.
/// Stdout carries the protocol to the driver: `window-start`,
/// `window-end`, then `result ...` (or `error ...`).
fn subscribers(args: &Args) -> Result<(), String> {
    let (server, nonce) = args.common.client_start("subscribers")?;
    for &size in &args.sizes {
        let plan = Plan {
            server,
            // A fresh topic per run: nobody else's events, sequences from 1.
            topic: format!("zcbench.{size}.{nonce:08x}"),
            payload_bytes: size,
            subscribers: args.subscribers,
            warmup: Duration::from_millis(args.warmup_ms),
            duration: Duration::from_secs_f64(args.duration_secs),
            window: args.window,
            lead_bytes: args.lead_bytes,
            drain_timeout: Duration::from_millis(args.drain_timeout_ms),
            connect_timeout: Duration::from_millis(args.common.connect_timeout_ms),
        };
        match clients::run(&plan, child::say_mark) {
            Ok(outcome) => {
                eprintln!(
                    "subscribers: {} x {}: {:.0} deliveries/s, {:.1} MB/s, lost {}{}",
                    args.subscribers,
                    format_size(size),
                    outcome.window_events as f64 / outcome.window_secs,
                    outcome.window_bytes as f64 / outcome.window_secs / 1e6,
                    outcome.lost,
                    if outcome.note.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", outcome.note)
                    }
                );
                child::say(&outcome.to_line());
            }
            Err(e) => {
                child::say_error(&e);
                return Err(e);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The driver

/// Figures of one run.
#[derive(Clone, Debug, Default)]
struct Run {
    /// The run produced numbers (it may still have problems).
    measured: bool,
    deliveries_per_s: f64,
    mb_per_s: f64,
    /// Server process user+sys CPU per delivered GB.
    server_cpu_per_gb: f64,
    /// The same plus the server CPU's ksoftirqd: all the work this load put
    /// on the server's core.
    work_per_gb: f64,
    /// Busy time of the server's core, whoever ran, per GB.
    core_busy_per_gb: f64,
    server_util: f64,
    work_util: f64,
    client_util: f64,
    /// Share of the server's / the clients' core taken by anything else
    /// (other processes, hypervisor steal); NaN when not known.
    foreign_server: f64,
    foreign_client: f64,
    bytes_per_send: f64,
    /// Server memory on transparent huge pages at the end of the window.
    server_thp_kib: Option<u64>,
    zero_copy_sends: u64,
    lost: u64,
    seq_errors: u64,
    refused: u64,
    catch_ups: u64,
    slow_goaways: u64,
    /// Completion-queue overflows the server counted (newer servers).
    cq_overflows: u64,
    /// The server did not exit 0 on SIGTERM, or deliveries went missing.
    failed: bool,
    problems: Vec<String>,
}

impl Run {
    /// How disturbed the run was: the larger foreign share; infinite when
    /// it failed or produced no figures (so it is measured again, though
    /// its problems are still reported).
    fn disturbance(&self) -> f64 {
        if !self.measured || self.failed {
            return f64::INFINITY;
        }
        [self.foreign_server, self.foreign_client]
            .into_iter()
            .filter(|x| x.is_finite())
            .fold(0.0, f64::max)
    }
}

struct Cell {
    size: usize,
    mode: Mode,
    runs: Vec<Run>,
    /// Runs measured but thrown away because the machine was busy with
    /// something else (or the run failed), and measured again.
    discarded: usize,
    /// Problems of the discarded runs: a failure must show in the report
    /// even when the run that replaced it went well.
    discarded_problems: Vec<String>,
}

impl Cell {
    fn new(size: usize, mode: Mode) -> Cell {
        Cell {
            size,
            mode,
            runs: Vec::new(),
            discarded: 0,
            discarded_problems: Vec::new(),
        }
    }
    fn values(&self, f: impl Fn(&Run) -> f64) -> Vec<f64> {
        self.runs
            .iter()
            .map(|r| if r.measured { f(r) } else { f64::NAN })
            .collect()
    }
    fn median(&self, f: impl Fn(&Run) -> f64) -> f64 {
        median(&self.values(f)).unwrap_or(f64::NAN)
    }
    /// Smallest and largest of the measured values.
    fn range(&self, f: impl Fn(&Run) -> f64) -> (f64, f64) {
        self.values(f)
            .into_iter()
            .filter(|x| x.is_finite())
            .fold((f64::NAN, f64::NAN), |(lo, hi), x| (lo.min(x), hi.max(x)))
    }
    fn total(&self, f: impl Fn(&Run) -> u64) -> u64 {
        self.runs.iter().map(f).sum()
    }
    fn measured(&self) -> usize {
        self.runs.iter().filter(|r| r.measured).count()
    }
}

fn server_args(args: &Args, mode: Mode) -> Vec<String> {
    let payload_max = args.sizes.iter().copied().max().unwrap_or(0).max(64 << 10);
    let zc_min = match mode {
        Mode::Plain => 0,
        Mode::ZeroCopy => args.zerocopy_min,
    };
    let mut v: Vec<String> = [
        "run".to_string(),
        "--shards".into(),
        "1".into(),
        "--listen".into(),
        args.common.listen.to_string(),
        "--payload-bytes-max".into(),
        payload_max.to_string(),
        "--queue-bytes-max".into(),
        args.queue_bytes_max.to_string(),
        "--history-bytes-max".into(),
        args.history_bytes_max.to_string(),
        "--arena-bytes".into(),
        args.arena_bytes.to_string(),
        "--zerocopy-bytes-min".into(),
        zc_min.to_string(),
    ]
    .into();
    v.extend(args.common.server_args.iter().cloned());
    targets::appliance_storage(&mut v, args.common.durability_or(Durability::Memory));
    v
}

fn drive(args: &Args) -> Result<(), String> {
    let host = procfs::host();
    let bench = match &args.clients_bench {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| format!("locating this binary: {e}"))?,
    };
    args.common.check_cluecast()?;
    // Clients started through anything but a network namespace (e.g. ssh)
    // run on another kernel: their CPU is not ours to sample.
    let clients_here = args
        .clients_via
        .as_deref()
        .is_none_or(|v| v.starts_with("ip netns exec"));
    let cores = args.common.cores(clients_here);
    let total = args.sizes.len() * 2 * args.repeat;
    eprintln!(
        "zerocopy: {} sizes x 2 modes x {} runs of {:.1}s (+{} ms warm-up), {} subscribers; \
         host: {} CPUs, {}, kernel {}",
        args.sizes.len(),
        args.repeat,
        args.duration_secs,
        args.warmup_ms,
        args.subscribers,
        host.cpus,
        host.cpu_model,
        host.kernel
    );
    let mut cells: Vec<Cell> = Vec::new();
    let mut done = 0;
    for &size in &args.sizes {
        let mut plain = Cell::new(size, Mode::Plain);
        let mut zc = Cell::new(size, Mode::ZeroCopy);
        for rep in 0..args.repeat {
            done += 1;
            // ABBA: a linear drift costs both modes the same.
            let order = if rep % 2 == 0 {
                [Mode::Plain, Mode::ZeroCopy]
            } else {
                [Mode::ZeroCopy, Mode::Plain]
            };
            // A pair disturbed by something else on the machine is measured
            // again (both members: the ratio needs them side by side); the
            // least disturbed attempt is kept.
            let (kept, thrown) =
                least_disturbed(args.common.retries, args.common.foreign_max, |attempt| {
                    let mut pair = Vec::with_capacity(2);
                    for mode in order {
                        let run = run_once(args, &bench, size, mode, cores);
                        eprintln!(
                            "[{done}/{}] {} {} run {}{}: {}",
                            total / 2,
                            format_size(size),
                            mode.name(),
                            rep + 1,
                            attempt_tag(attempt),
                            summary(&run)
                        );
                        pair.push((mode, run));
                    }
                    let score = pair
                        .iter()
                        .map(|(_, r)| r.disturbance())
                        .fold(0.0, f64::max);
                    (pair, score)
                });
            for (mode, run) in thrown.into_iter().flatten() {
                let cell = match mode {
                    Mode::Plain => &mut plain,
                    Mode::ZeroCopy => &mut zc,
                };
                cell.discarded += 1;
                cell.discarded_problems.extend(
                    run.problems
                        .iter()
                        .map(|p| format!("run {} (redone): {p}", rep + 1)),
                );
            }
            for (mode, run) in kept {
                match mode {
                    Mode::Plain => plain.runs.push(run),
                    Mode::ZeroCopy => zc.runs.push(run),
                }
            }
        }
        cells.push(plain);
        cells.push(zc);
    }
    report::emit(
        None,
        args.json,
        || markdown_report(args, &host, &cells),
        || json_report(args, &cells),
    )
}

fn summary(run: &Run) -> String {
    let figures = run.measured.then(|| {
        format!(
            "{:.0} deliveries/s, {:.0} MB/s, server {:.3} s/GB (+softirqd {:.3} s/GB), \
             server core {} / client {}, foreign {} / {}, lost {}",
            run.deliveries_per_s,
            run.mb_per_s,
            run.server_cpu_per_gb,
            run.work_per_gb,
            pct(run.work_util),
            pct(run.client_util),
            pct(run.foreign_server),
            pct(run.foreign_client),
            run.lost
        )
    });
    report::summary(figures, &run.problems)
}

/// One measurement: a fresh server, a client process, the figures.
fn run_once(args: &Args, bench: &std::path::Path, size: usize, mode: Mode, cores: Cores) -> Run {
    let mut run = Run::default();
    let mut cmd = ServerCommand {
        binary: args.common.cluecast.clone(),
        via: child::words(&args.server_via),
        cpu: args.common.server_pin(),
        args: server_args(args, mode),
        ready: None,
        stop_signal: libc::SIGTERM,
    };
    let started = targets::fresh_data_dir(&mut cmd).and_then(|dir| {
        let mut server = Server::start(&cmd, SERVER_START_TIMEOUT)?;
        server.own_dir(dir);
        Ok(server)
    });
    let mut server = match started {
        Ok(s) => s,
        Err(e) => {
            run.problems.push(e);
            return run;
        }
    };
    run.problems.extend(server.identity_problem());
    let addr = match args.connect_host {
        Some(ip) => SocketAddr::new(ip, server.addr().port()),
        None => server.addr(),
    };
    let client = measure_clients(args, bench, size, addr, &mut server, cores, &mut run);
    let stopped = server.stop(SERVER_STOP_TIMEOUT);
    run.failed |= stopped.problem.is_some();
    run.problems.extend(stopped.problems());
    if let Some((outcome, window)) = client {
        fill_figures(&mut run, &outcome, &window, &stopped);
    }
    run
}

/// Starts the client process and follows it; samples the server at its
/// marks. None when no figures came out.
fn measure_clients(
    args: &Args,
    bench: &std::path::Path,
    size: usize,
    addr: SocketAddr,
    server: &mut Server,
    cores: Cores,
    run: &mut Run,
) -> Option<(Outcome, Window)> {
    let mut cmd = child::command_via(&child::words(&args.clients_via), bench);
    cmd.args(["zerocopy", "--role", "subscribers"])
        .args(["--server", &addr.to_string()])
        .args(["--sizes", &size.to_string()])
        .args(["--subscribers", &args.subscribers.to_string()])
        .args(["--duration-secs", &args.duration_secs.to_string()])
        .args(["--warmup-ms", &args.warmup_ms.to_string()])
        .args(["--window", &args.window.to_string()])
        .args(["--lead-bytes", &args.lead_bytes.to_string()])
        .args(["--drain-timeout-ms", &args.drain_timeout_ms.to_string()]);
    args.common.pass_to_client(&mut cmd);
    let budget = CLIENT_SLACK
        + Duration::from_millis(args.warmup_ms + args.drain_timeout_ms)
        + Duration::from_secs_f64(args.duration_secs)
        + Duration::from_millis(args.common.connect_timeout_ms) * 2;
    let Followed {
        result,
        window,
        problems,
    } = child::follow(cmd, budget, server, cores);
    run.problems.extend(problems);
    let outcome = match Outcome::from_result(&result?) {
        Ok(o) => o,
        Err(e) => {
            run.problems.push(e);
            return None;
        }
    };
    Some((outcome, window?))
}

fn fill_figures(run: &mut Run, o: &Outcome, w: &Window, stopped: &Stopped) {
    let gb = o.window_bytes as f64 / 1e9;
    let softirqd = w.server_core.map_or(0.0, |c| c.softirqd);
    let nan = f64::NAN;
    run.measured = o.window_secs > 0.0 && o.window_bytes > 0 && w.wall_secs > 0.0;
    run.deliveries_per_s = o.window_events as f64 / o.window_secs;
    run.mb_per_s = o.window_bytes as f64 / o.window_secs / 1e6;
    run.server_cpu_per_gb = w.server_cpu_secs / gb;
    run.work_per_gb = (w.server_cpu_secs + softirqd) / gb;
    run.core_busy_per_gb = w.server_core.map_or(nan, |c| c.busy / gb);
    run.server_util = w.server_cpu_secs / w.wall_secs;
    run.work_util = (w.server_cpu_secs + softirqd) / w.wall_secs;
    run.client_util = o.client_cpu_secs / o.window_secs;
    run.foreign_server = w
        .server_core
        .map_or(nan, |c| c.foreign(w.server_cpu_secs, w.wall_secs));
    run.foreign_client = w
        .client_core
        .map_or(nan, |c| c.foreign(o.client_cpu_secs, w.wall_secs));
    let sends = stopped.stat("sends").unwrap_or(0);
    run.bytes_per_send = match sends {
        0 => nan,
        n => stopped.stat("send_bytes").unwrap_or(0) as f64 / n as f64,
    };
    run.server_thp_kib = w.server_thp_kib;
    run.zero_copy_sends = stopped.stat("zero_copy_sends").unwrap_or(0);
    run.catch_ups = stopped.stat("catch_ups").unwrap_or(0);
    run.slow_goaways = stopped.stat("slow_consumer_goaways").unwrap_or(0);
    run.cq_overflows = stopped.stat("cq_overflows").unwrap_or(0);
    run.lost = o.lost;
    run.seq_errors = o.seq_errors;
    run.refused = o.refused;
    if !o.note.is_empty() {
        run.problems.push(format!("clients: {}", o.note));
    }
    if o.lost > 0 || o.seq_errors > 0 {
        run.failed = true;
        run.problems.push(format!(
            "{} deliveries lost, {} out of sequence, {} subscribers dropped",
            o.lost, o.seq_errors, o.subscribers_dropped
        ));
    }
    if stopped.stats.is_empty() {
        run.problems
            .push("the server printed no ShardStats on exit".into());
    }
}

// ---------------------------------------------------------------------------
// Reports

fn pairs(cells: &[Cell]) -> Vec<(&Cell, &Cell)> {
    cells
        .chunks(2)
        .filter_map(|c| match c {
            [p, z] if p.mode == Mode::Plain && z.mode == Mode::ZeroCopy => Some((p, z)),
            _ => None,
        })
        .collect()
}

struct Ratios {
    throughput: f64,
    server_cpu: f64,
    work: f64,
}

fn ratios(plain: &Cell, zc: &Cell) -> Ratios {
    let r = |f: fn(&Run) -> f64| paired_ratio(&zc.values(f), &plain.values(f)).unwrap_or(f64::NAN);
    Ratios {
        throughput: r(|x| x.mb_per_s),
        server_cpu: r(|x| x.server_cpu_per_gb),
        work: r(|x| x.work_per_gb),
    }
}

/// Whether zero-copy did better: cheaper per GB in both CPU views without
/// losing throughput.
fn verdict(r: &Ratios) -> &'static str {
    if ![r.throughput, r.server_cpu, r.work]
        .iter()
        .all(|x| x.is_finite())
    {
        return "no figures";
    }
    let cheaper = r.server_cpu < 1.0 - NOISE && r.work < 1.0 - NOISE;
    let costlier = r.server_cpu > 1.0 + NOISE || r.work > 1.0 + NOISE;
    if cheaper && r.throughput > 1.0 - NOISE {
        "zero-copy wins"
    } else if costlier || r.throughput < 1.0 - NOISE {
        "zero-copy loses"
    } else {
        "no clear difference"
    }
}

/// The smallest size from which zero-copy wins at every larger size too;
/// 0 (off) when it never does.
fn suggested_min(cells: &[Cell]) -> usize {
    let verdicts: Vec<(usize, bool)> = pairs(cells)
        .into_iter()
        .map(|(p, z)| (p.size, verdict(&ratios(p, z)) == "zero-copy wins"))
        .collect();
    let mut min = 0;
    for &(size, wins) in verdicts.iter().rev() {
        if !wins {
            break;
        }
        min = size;
    }
    min
}

fn markdown_report(args: &Args, host: &procfs::Host, cells: &[Cell]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "# cluecast zero-copy fan-out measurement\n");
    let _ = writeln!(s, "- command: `{}`", command_line());
    let _ = writeln!(
        s,
        "- host: {} CPUs, `{}`, kernel `{}`",
        host.cpus, host.cpu_model, host.kernel
    );
    let _ = writeln!(
        s,
        "- path: server listens on {}{}; clients {}",
        args.common.listen,
        args.server_via
            .as_deref()
            .map(|v| format!(" (started via `{v}`)"))
            .unwrap_or_default(),
        args.clients_via
            .as_deref()
            .map(|v| format!("started via `{v}`"))
            .unwrap_or_else(|| "on this host".into())
    );
    let _ = writeln!(
        s,
        "- server: `cluecast {}` (zero-copy mode: `--zerocopy-bytes-min {}`){}",
        server_args(args, Mode::Plain).join(" "),
        args.zerocopy_min,
        args.common.pinned(", ", args.common.server_cpu)
    );
    let _ = writeln!(
        s,
        "- load: 1 publisher (≤ {} unacked, ≤ {} ahead of the slowest subscriber) and {} \
         subscribers on one topic, in one process{}",
        args.window,
        format_size(args.lead_bytes),
        args.subscribers,
        args.common.pinned(" ", args.common.client_cpu)
    );
    let _ = writeln!(
        s,
        "- each run: fresh server, {} ms warm-up, {} s measured publishing + drain; {} runs \
         per cell, plain and zero-copy alternating ABBA; a pair with more than {:.0}% of a \
         measured core going elsewhere is measured again (up to {} more times); figures are \
         medians\n",
        args.warmup_ms,
        args.duration_secs,
        args.repeat,
        args.common.foreign_max * 100.0,
        args.common.retries
    );
    let _ = writeln!(
        s,
        "Columns: MB = 10^6 bytes of EVENT frames received by all subscribers together. \
         *server s/GB*: user+sys CPU seconds of the server process per 10^9 delivered bytes. \
         *+softirqd s/GB*: the same plus the server CPU's ksoftirqd thread, where the kernel \
         finishes network work (on loopback / veth that includes the subscribers' TCP \
         receive path) — all the CPU this load costs on the server's core. *server core*: \
         that work as a share of the core; *client*: the client process's share of its core; \
         *foreign*: share of the server / client core that went to other processes or \
         hypervisor steal during the run (noise). *bytes/send*: the server's own counters.\n"
    );
    let _ = writeln!(
        s,
        "| payload | mode | runs | deliveries/s | MB/s | MB/s range | server s/GB | \
         +softirqd s/GB | server core | client | foreign | bytes/send | lost |"
    );
    let _ = writeln!(
        s,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for c in cells {
        let _ = writeln!(
            s,
            "| {} | {} | {}{} | {} | {} | {}–{} | {} | {} | {} | {} | {} / {} | {} | {} |",
            format_size(c.size),
            c.mode.name(),
            c.measured(),
            if c.discarded > 0 {
                format!(" (+{} redone)", c.discarded)
            } else {
                String::new()
            },
            thousands(c.median(|r| r.deliveries_per_s)),
            num(c.median(|r| r.mb_per_s), 0),
            num(c.range(|r| r.mb_per_s).0, 0),
            num(c.range(|r| r.mb_per_s).1, 0),
            num(c.median(|r| r.server_cpu_per_gb), 3),
            num(c.median(|r| r.work_per_gb), 3),
            pct(c.median(|r| r.work_util)),
            pct(c.median(|r| r.client_util)),
            pct(c.median(|r| r.foreign_server)),
            pct(c.median(|r| r.foreign_client)),
            thousands(c.median(|r| r.bytes_per_send)),
            c.total(|r| r.lost),
        );
    }
    let thp = cells
        .iter()
        .flat_map(|c| c.runs.iter().filter_map(|r| r.server_thp_kib))
        .max();
    if let Some(kib) = thp {
        let _ = writeln!(
            s,
            "\nServer memory on transparent huge pages (AnonHugePages at the end of the \
             window), largest over all runs: {} MiB.",
            kib >> 10
        );
    }
    let _ = writeln!(
        s,
        "\nZero-copy / plain: median of the ratios of the runs measured back to back \
         (for s/GB below 1 means zero-copy is cheaper, for MB/s above 1 means it is faster; \
         within ±{:.0}% counts as no difference):\n",
        NOISE * 100.0
    );
    let _ = writeln!(
        s,
        "| payload | MB/s | server s/GB | +softirqd s/GB | verdict |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---|");
    for (p, z) in pairs(cells) {
        let r = ratios(p, z);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            format_size(p.size),
            num(r.throughput, 2),
            num(r.server_cpu, 2),
            num(r.work, 2),
            verdict(&r)
        );
    }
    let min = suggested_min(cells);
    let _ = writeln!(
        s,
        "\nSuggested `--zerocopy-bytes-min` from these figures: **{}**{}\n",
        min,
        if min == 0 {
            " (off: zero-copy did not win at any measured size, or not at every size above one)"
                .to_string()
        } else {
            format!(" (zero-copy from {} up)", format_size(min))
        }
    );
    let mut problems = Vec::new();
    for c in cells {
        for (i, r) in c.runs.iter().enumerate() {
            let name = format!("{} {} run {}", format_size(c.size), c.mode.name(), i + 1);
            for p in &r.problems {
                problems.push(format!("- {name}: {p}"));
            }
            if r.catch_ups > 0 || r.slow_goaways > 0 || r.refused > 0 || r.cq_overflows > 0 {
                problems.push(format!(
                    "- {name}: {} publishes refused (Overloaded), {} subscriber catch-ups, \
                     {} slow-consumer GOAWAYs, {} completion-queue overflows",
                    r.refused, r.catch_ups, r.slow_goaways, r.cq_overflows
                ));
            }
        }
    }
    for c in cells {
        for p in &c.discarded_problems {
            problems.push(format!("- {} {} {p}", format_size(c.size), c.mode.name()));
        }
    }
    if problems.is_empty() {
        let _ = writeln!(
            s,
            "No problems: every run delivered every event to every subscriber, in sequence, \
             no publish was refused, and every server exited 0 on SIGTERM."
        );
    } else {
        let _ = writeln!(s, "Problems seen:\n");
        for p in problems {
            let _ = writeln!(s, "{p}");
        }
    }
    s
}

fn json_report(args: &Args, cells: &[Cell]) -> String {
    let mut out = String::new();
    let pairs = pairs(cells);
    for c in cells {
        let zc_min = match c.mode {
            Mode::Plain => 0,
            Mode::ZeroCopy => args.zerocopy_min,
        };
        let ratio = match c.mode {
            Mode::ZeroCopy => pairs
                .iter()
                .find(|(_, z)| z.size == c.size)
                .map(|(p, z)| {
                    let r = ratios(p, z);
                    format!(
                        "{{\"mb_per_s\":{},\"server_cpu_s_per_gb\":{},\
                         \"server_core_work_s_per_gb\":{},\"verdict\":{}}}",
                        json_num(r.throughput),
                        json_num(r.server_cpu),
                        json_num(r.work),
                        json_str(verdict(&r))
                    )
                })
                .unwrap_or_else(|| "null".into()),
            Mode::Plain => "null".into(),
        };
        let problems: Vec<String> = c
            .runs
            .iter()
            .flat_map(|r| r.problems.iter())
            .chain(&c.discarded_problems)
            .map(|p| json_str(p))
            .collect();
        out.push_str(&format!(
            "{{\"payload_bytes\":{},\"mode\":{},\"zerocopy_bytes_min\":{},\"subscribers\":{},\
             \"runs\":{},\"runs_measured\":{},\"runs_redone\":{},\"deliveries_per_s\":{},\
             \"mb_per_s\":{},\"server_cpu_s_per_gb\":{},\"server_core_work_s_per_gb\":{},\
             \"server_core_busy_s_per_gb\":{},\"server_cpu_util\":{},\
             \"server_core_work_util\":{},\"client_cpu_util\":{},\"foreign_server_core\":{},\
             \"foreign_client_core\":{},\"bytes_per_send\":{},\"lost\":{},\"seq_errors\":{},\
             \"refused\":{},\"catch_ups\":{},\"slow_consumer_goaways\":{},\"cq_overflows\":{},\
             \"zero_copy_sends\":{},\"server_anon_huge_kib\":{},\"per_run\":{{\"mb_per_s\":{},\"server_cpu_s_per_gb\":{},\
             \"server_core_work_s_per_gb\":{}}},\"ratio_vs_plain\":{},\"problems\":[{}]}}\n",
            c.size,
            json_str(c.mode.name()),
            zc_min,
            args.subscribers,
            c.runs.len(),
            c.measured(),
            c.discarded,
            json_num(c.median(|r| r.deliveries_per_s)),
            json_num(c.median(|r| r.mb_per_s)),
            json_num(c.median(|r| r.server_cpu_per_gb)),
            json_num(c.median(|r| r.work_per_gb)),
            json_num(c.median(|r| r.core_busy_per_gb)),
            json_num(c.median(|r| r.server_util)),
            json_num(c.median(|r| r.work_util)),
            json_num(c.median(|r| r.client_util)),
            json_num(c.median(|r| r.foreign_server)),
            json_num(c.median(|r| r.foreign_client)),
            json_num(c.median(|r| r.bytes_per_send)),
            c.total(|r| r.lost),
            c.total(|r| r.seq_errors),
            c.total(|r| r.refused),
            c.total(|r| r.catch_ups),
            c.total(|r| r.slow_goaways),
            c.total(|r| r.cq_overflows),
            c.total(|r| r.zero_copy_sends),
            c.runs
                .iter()
                .filter_map(|r| r.server_thp_kib)
                .max()
                .map_or("null".to_string(), |k| k.to_string()),
            json_list(&c.values(|r| r.mb_per_s)),
            json_list(&c.values(|r| r.server_cpu_per_gb)),
            json_list(&c.values(|r| r.work_per_gb)),
            ratio,
            problems.join(",")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mb: f64, cpu: f64) -> Run {
        Run {
            measured: true,
            mb_per_s: mb,
            server_cpu_per_gb: cpu,
            work_per_gb: cpu,
            ..Run::default()
        }
    }

    fn cells(size_ratios: &[(usize, f64)]) -> Vec<Cell> {
        size_ratios
            .iter()
            .flat_map(|&(size, cpu_ratio)| {
                let mut plain = Cell::new(size, Mode::Plain);
                plain.runs = vec![run(100.0, 1.0), run(110.0, 1.0)];
                let mut zc = Cell::new(size, Mode::ZeroCopy);
                zc.runs = vec![run(100.0, cpu_ratio), run(110.0, cpu_ratio)];
                [plain, zc]
            })
            .collect()
    }

    #[test]
    fn verdicts_and_suggested_minimum() {
        // Loses small, wins from 16K on: the default follows.
        let c = cells(&[(1024, 1.3), (4096, 1.0), (16384, 0.8), (65536, 0.7)]);
        let v: Vec<&str> = pairs(&c)
            .into_iter()
            .map(|(p, z)| verdict(&ratios(p, z)))
            .collect();
        assert_eq!(
            v,
            [
                "zero-copy loses",
                "no clear difference",
                "zero-copy wins",
                "zero-copy wins"
            ]
        );
        assert_eq!(suggested_min(&c), 16384);
        // A win that does not hold at the largest size does not count.
        assert_eq!(suggested_min(&cells(&[(1024, 0.8), (4096, 1.2)])), 0);
        assert_eq!(suggested_min(&cells(&[(1024, 1.2)])), 0);
    }

    #[test]
    fn disturbance_of_a_run() {
        let unmeasured = Run::default();
        assert_eq!(unmeasured.disturbance(), f64::INFINITY);
        let r = Run {
            measured: true,
            foreign_server: 0.05,
            foreign_client: f64::NAN,
            ..Run::default()
        };
        assert_eq!(r.disturbance(), 0.05);
    }
}
