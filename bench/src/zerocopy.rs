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

use crate::child::{self, Followed, Window};
use crate::cli::{Common, Durability};
use crate::clients::{self, Outcome, Plan};
use crate::procfs::{self, Cores};
use crate::report::{self, json_list, json_num, json_str, num, pct, thousands};
use crate::server::{Server, ServerCommand, Stopped};
use crate::stats::{attempt_tag, format_size, least_disturbed, median, paired_ratio, parse_size};
use crate::targets;

mod reports;
use reports::{json_report, markdown_report};

/// Time allowed for the client process to connect and subscribe everyone,
/// and for it to exit after reporting, on top of the plan's own phases.
const CLIENT_SLACK: Duration = Duration::from_secs(20);
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
    args.common
        .own_server_part("zerocopy", || drive(args), || subscribers(args))
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
        let mut server = Server::start(&cmd, crate::server::SERVER_START_TIMEOUT)?;
        server.own_dir(dir);
        Ok(server)
    });
    let Some(mut server) = Server::for_run(started, &mut run.problems) else {
        return run;
    };
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

#[cfg(test)]
mod tests;
