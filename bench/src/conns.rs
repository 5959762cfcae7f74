//! `cluecast-bench conns`: what an idle subscribed connection costs the
//! server, and how fast connections are taken on.
//!
//! N connections, each subscribed to one of T topics (connection j on
//! topic j % T) and then left idle, as many as the host allows. One
//! process may hold only as many as its open-file limit, so the driver
//! spreads them over K client processes (`--role clients`), each opening
//! its share one connection after another. The driver starts a fresh target
//! per run and reads its memory twice: settled before any connection
//! (baseline), and --hold seconds after the last connection is up (loaded).
//! It then lets the clients go, stops the server with SIGTERM and checks
//! its exit.
//!
//! The resident memory is the server's user-space memory only: the
//! kernel's socket buffers are not in it.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::RecvTimeoutError;
use std::thread;
use std::time::{Duration, Instant};

use cluecast_proto::Limits;

use crate::child::{self, result_struct, Mark, ResultLine, Role};
use crate::cli::{Common, Durability};
use crate::fanload;
use crate::procfs;
use crate::report::{self, json_num, json_str, mib, num, thousands};
use crate::server::Server;
use crate::stats::{median_by, shares};
use crate::targets::{self, Launch, Target};
use crate::wire::set_note;

mod reports;
use reports::{json_report, markdown_report};

/// Most client processes of one run.
const PROCESSES_MAX: usize = 64;
/// Most runs of one invocation.
const REPEAT_MAX: usize = 100;
/// Longest --hold. The clients send nothing once subscribed, and the
/// appliance closes a connection silent for its idle timeout (90 s by
/// default), so the hold stays well below that.
const HOLD_SECS_MAX: f64 = 60.0;
/// Descriptors a client process keeps free besides its sockets (stdio,
/// libraries).
const FDS_SPARE: u64 = 64;
/// Time for the server to go quiet after it starts, before the baseline.
const SERVER_SETTLE: Duration = Duration::from_secs(1);
/// Time for the server to drain and exit after SIGTERM (the appliance
/// sends every connection a GOAWAY first; its drain timeout is 5 s).
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// A client process's connecting: this plus CONNECT_PER_CONN per
/// connection of its share, after which it gives up on the rest.
const CONNECT_SLACK: Duration = Duration::from_secs(30);
/// Allowance per connection (about 1 ms here, with four client processes
/// sharing one CPU).
const CONNECT_PER_CONN: Duration = Duration::from_millis(5);
/// Time allowed on top of the connecting for a client process to start
/// and report, and to exit once let go.
const CLIENT_SLACK: Duration = Duration::from_secs(10);

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// The server measured
    #[arg(long, value_enum, default_value_t = Target::Cluecast)]
    pub target: Target,
    /// Idle subscribed connections: in all (driver), this process's share
    /// (role clients)
    #[arg(long, default_value_t = 19_500)]
    pub connections: usize,
    /// Client processes the connections are spread over (each holds its
    /// share open, within its own open-file limit)
    #[arg(long, default_value_t = 4)]
    pub processes: usize,
    /// Topics; connection j subscribes to topic j % --topics
    #[arg(long, default_value_t = 100)]
    pub topics: usize,
    /// Seconds the server is left with every connection up before its
    /// memory is read
    #[arg(long = "hold", default_value_t = 3.0)]
    pub hold_secs: f64,
    #[command(flatten)]
    pub runs: crate::report::RunFlags,

    // ---- client process ----
    /// Index of this process's first connection (role clients)
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// Shared part of the topic names, the same in every client process of
    /// a run (role clients; default: a fresh one)
    #[arg(long)]
    pub nonce: Option<u64>,
}

result_struct! {
    /// What one client process did.
    pub struct Outcome {
        /// Connections subscribed and held.
        pub connected: u64,
        /// Connections of its share that failed or were never tried.
        pub failures: u64,
        /// Seconds from its first connect to its last answer.
        pub connect_secs: f64,
    }
}

pub fn main(args: &Args) -> Result<(), String> {
    check(args)?;
    args.common
        .own_server_part("conns", || drive(args), || clients(args))
}

/// The flags, as far as they can be judged before anything starts.
fn check(args: &Args) -> Result<(), String> {
    if args.connections == 0 || args.topics == 0 {
        return Err("--connections and --topics must be at least 1".into());
    }
    if !(0.0..=HOLD_SECS_MAX).contains(&args.hold_secs) {
        return Err(format!("--hold must be in 0..={HOLD_SECS_MAX} s"));
    }
    if args.common.role == Role::Driver {
        if !(1..=PROCESSES_MAX).contains(&args.processes) {
            return Err(format!("--processes must be in 1..={PROCESSES_MAX}"));
        }
        if args.processes > args.connections || args.topics > args.connections {
            return Err("--processes and --topics must not exceed --connections".into());
        }
        if !(1..=REPEAT_MAX).contains(&args.runs.repeat) {
            return Err(format!("--repeat must be in 1..={REPEAT_MAX}"));
        }
    }
    Ok(())
}

/// Whether `share` sockets fit one process's open-file limit `soft`.
fn fits_open_files(share: usize, soft: u64) -> Result<(), String> {
    let need = share as u64 + FDS_SPARE;
    if need > soft {
        return Err(format!(
            "{share} connections in one process need about {need} descriptors; the open-file \
             limit is {soft}: use more --processes"
        ));
    }
    Ok(())
}

/// Raises this process's open-file limit and checks `share` fits it.
fn raise_and_fit(share: usize) -> Result<u64, String> {
    let lim = cluecast_sys::raise_nofile_limit().map_err(|e| e.to_string())?;
    fits_open_files(share, lim.soft)?;
    Ok(lim.soft)
}

/// How long a client process spends connecting `share` connections at
/// most.
fn connect_budget(share: usize) -> Duration {
    CONNECT_SLACK + CONNECT_PER_CONN * share.min(u32::MAX as usize) as u32
}

// ---------------------------------------------------------------------------
// The client side

/// `--role clients`: opens this process's share, reports, and holds the
/// connections until stdin closes; speaks the line protocol of child.rs.
fn clients(args: &Args) -> Result<(), String> {
    let (server, own_nonce) = args.common.client_start("clients")?;
    if let Err(e) = raise_and_fit(args.connections) {
        child::say_error(&e);
        return Err(e);
    }
    let nonce = args.nonce.unwrap_or(own_nonce);
    let connect_timeout = Duration::from_millis(args.common.connect_timeout_ms);
    let deadline = Instant::now() + connect_budget(args.connections);
    let (mut limits, mut heartbeat_ms) = (Limits::DEFAULT, 0);
    let mut held = Vec::with_capacity(args.connections);
    let mut o = Outcome::default();
    child::say_mark(Mark::WindowStart);
    let start = Instant::now();
    for j in args.first..args.first + args.connections {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            set_note(
                &mut o.note,
                format!(
                    "gave up after {:?} with {} connections not tried",
                    connect_budget(args.connections),
                    args.first + args.connections - j
                ),
            );
            break;
        }
        let topic = format!("conns.{nonce:08x}.{}", j % args.topics);
        match fanload::join(
            args.target.protocol(),
            server,
            None,
            connect_timeout.min(left),
            &format!("conns-{nonce:08x}-{j}"),
            Some(&topic),
            None,
            &mut limits,
            &mut heartbeat_ms,
            None,
        ) {
            Ok(c) => held.push(c.stream),
            Err(e) => set_note(&mut o.note, format!("connection {j}: {e}")),
        }
    }
    o.connect_secs = start.elapsed().as_secs_f64();
    child::say_mark(Mark::WindowEnd);
    o.connected = held.len() as u64;
    o.failures = (args.connections - held.len()) as u64;
    eprintln!(
        "conns clients: {} of {} connected in {:.1} s{}",
        o.connected,
        args.connections,
        o.connect_secs,
        crate::report::parenthesised(&o.note)
    );
    child::say(&o.to_line());
    // Idle from here, with nothing to answer: the appliance sends idle
    // subscribers nothing and closes only connections silent for 90 s (its
    // idle timeout), NATS pings every 2 minutes, MQTT connects without
    // keep-alive, Redis never times out; a run holds for seconds. The
    // driver counts the server's descriptors when it reads its memory, so
    // a connection lost meanwhile would show.
    wait_for_stdin_to_close();
    drop(held);
    Ok(())
}

/// Blocks until stdin reaches its end: the driver closes it when done, and
/// it ends too if the driver dies, so the hold cannot outlive the run.
fn wait_for_stdin_to_close() {
    let mut stdin = std::io::stdin().lock();
    let mut sink = [0u8; 256];
    loop {
        match stdin.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------
// The driver

/// The server's memory and descriptors at one moment; NaN where unread.
#[derive(Clone, Copy, Debug)]
struct Footprint {
    rss_bytes: f64,
    anon_bytes: f64,
    fds: f64,
}

impl Footprint {
    fn of(pid: u32) -> Footprint {
        let read = |x: Option<u64>| x.map_or(f64::NAN, |v| v as f64);
        Footprint {
            rss_bytes: read(procfs::rss_bytes(pid)),
            anon_bytes: read(procfs::rss_anon_bytes(pid)),
            fds: read(procfs::open_fds(pid).map(|n| n as u64)),
        }
    }
}

/// Figures of one run; bytes, NaN where unknown.
#[derive(Clone, Debug)]
struct Run {
    /// Connections subscribed and held, all processes.
    connections: u64,
    /// Connections wanted and not held.
    failures: u64,
    connect_per_s: f64,
    baseline: Footprint,
    loaded: Footprint,
    /// (loaded − baseline) RSS / connections.
    rss_per_conn: f64,
    /// Loaded RSS / connections (the server's fixed memory included).
    loaded_per_conn: f64,
    /// (loaded − baseline) RssAnon / connections.
    anon_per_conn: f64,
    /// Not every connection held, or the server did not exit 0.
    failed: bool,
    problems: Vec<String>,
}

impl Default for Run {
    fn default() -> Run {
        let unread = Footprint {
            rss_bytes: f64::NAN,
            anon_bytes: f64::NAN,
            fds: f64::NAN,
        };
        Run {
            connections: 0,
            failures: 0,
            connect_per_s: f64::NAN,
            baseline: unread,
            loaded: unread,
            rss_per_conn: f64::NAN,
            loaded_per_conn: f64::NAN,
            anon_per_conn: f64::NAN,
            failed: false,
            problems: Vec::new(),
        }
    }
}

/// `bytes` per connection; NaN without connections.
fn per_conn(bytes: f64, connections: u64) -> f64 {
    if connections == 0 {
        f64::NAN
    } else {
        bytes / connections as f64
    }
}

impl Run {
    /// Fills the figures of `connections` held over `connect_secs`.
    fn figures(&mut self, connections: u64, connect_secs: f64) {
        self.connections = connections;
        self.connect_per_s = if connect_secs > 0.0 {
            connections as f64 / connect_secs
        } else {
            f64::NAN
        };
        let (b, l) = (self.baseline, self.loaded);
        self.rss_per_conn = per_conn(l.rss_bytes - b.rss_bytes, connections);
        self.loaded_per_conn = per_conn(l.rss_bytes, connections);
        self.anon_per_conn = per_conn(l.anon_bytes - b.anon_bytes, connections);
    }
}

/// How the target is started.
fn launch(args: &Args) -> Launch {
    Launch {
        target: args.target,
        listen: args.common.listen,
        cpu: args.common.server_pin(),
        appliance_args: server_args(args),
        payload_bytes: 0,
        durability: args.common.durability_or(Durability::Memory),
    }
}

/// `cluecast run ...`: one shard, room for every connection (unless
/// --server-arg says otherwise; the appliance warns and takes less if its
/// open-file limit does not allow that many).
fn server_args(args: &Args) -> Vec<String> {
    let given = (args.common.server_args.iter()).any(|a| a.starts_with("--connections-max"));
    let room = (!given).then(|| ["--connections-max".into(), args.connections.to_string()]);
    targets::appliance_args(&args.common, 1, 0, room.into_iter().flatten())
}

fn drive(args: &Args) -> Result<(), String> {
    let program = match targets::program(args.target, &args.common.cluecast) {
        Ok(p) => p,
        Err(why) => return skipped(args, &why),
    };
    let plan = shares(args.connections, args.processes);
    let share_max = plan.iter().map(|&(_, n)| n).max().unwrap_or(0);
    // The client processes inherit the raised limit.
    let nofile = raise_and_fit(share_max)?;
    let bench = std::env::current_exe().map_err(|e| format!("locating this binary: {e}"))?;
    let host = procfs::host();
    eprintln!(
        "conns: {} runs against {}: {} connections over {} topics from {} processes (open-file \
         limit {nofile}); host: {} CPUs, {}, kernel {}",
        args.runs.repeat,
        args.target.name(),
        args.connections,
        args.topics,
        args.processes,
        host.cpus,
        host.cpu_model,
        host.kernel
    );
    let mut runs = Vec::with_capacity(args.runs.repeat);
    for i in 0..args.runs.repeat {
        // Fresh topics per run, shared by its client processes.
        let nonce = cluecast_sys::random_u64().map_err(|e| format!("getrandom: {e}"))?;
        let run = run_once(args, &bench, &program, &plan, nonce & 0xffff_ffff);
        eprintln!("[{}/{}] {}", i + 1, args.runs.repeat, summary(&run));
        runs.push(run);
    }
    report::finish(
        &args.runs,
        None,
        |_| Ok(()),
        || markdown_report(args, &host, nofile, &runs),
        || json_report(args, &runs),
        runs.iter().any(|r| r.failed).then_some(
            "some runs failed: not every connection was held, or a server that did not exit 0 \
             (see the report)",
        ),
    )
}

/// The report of a target that cannot be measured here; not a failure.
fn skipped(args: &Args, why: &str) -> Result<(), String> {
    eprintln!("conns: target {} skipped: {why}", args.target.name());
    let text = if args.runs.json {
        format!(
            "{{\"scenario\":\"conns\",\"target\":\"{}\",\"skipped\":{}}}\n",
            args.target.name(),
            json_str(why)
        )
    } else {
        format!(
            "# idle connections, target `{}`\n\nSkipped: {why}.\n",
            args.target.name()
        )
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| format!("writing the report: {e}"))
}

/// One measurement: a fresh server, the client processes, the figures.
fn run_once(args: &Args, bench: &Path, program: &Path, plan: &[(usize, usize)], nonce: u64) -> Run {
    let mut run = Run::default();
    let started = targets::start(&launch(args), program, crate::server::SERVER_START_TIMEOUT);
    let Some(mut server) = Server::for_run(started, &mut run.problems) else {
        run.failed = true;
        return run;
    };
    thread::sleep(SERVER_SETTLE);
    run.baseline = Footprint::of(server.pid());
    let mut clients = Clients::start(args, bench, server.addr(), nonce, plan, &mut run.problems);
    let share_max = plan.iter().map(|&(_, n)| n).max().unwrap_or(0);
    let said = clients.collect(
        &mut server,
        connect_budget(share_max) + CLIENT_SLACK,
        &mut run.problems,
    );
    thread::sleep(Duration::from_secs_f64(args.hold_secs));
    run.loaded = Footprint::of(server.pid());
    if let Some(how) = server.exited() {
        run.problems
            .push(format!("the server exited {how} during the run"));
    }
    clients.release(&mut run.problems);
    let stopped = server.stop(SERVER_STOP_TIMEOUT);
    run.failed |= stopped.problem.is_some();
    run.problems.extend(stopped.problems());

    let connected: u64 = said.outcomes.iter().map(|o| o.connected).sum();
    let connect_secs = match (said.first_start, said.last_end) {
        (Some(t0), Some(t1)) => t1.duration_since(t0).as_secs_f64(),
        _ => f64::NAN,
    };
    run.figures(connected, connect_secs);
    run.failures = args.connections as u64 - connected.min(args.connections as u64);
    if run.failures > 0 {
        run.failed = true;
        run.problems.push(format!(
            "{} of {} connections were not held",
            run.failures, args.connections
        ));
    }
    let fds_added = run.loaded.fds - run.baseline.fds;
    if fds_added < connected as f64 {
        run.failed = true;
        run.problems.push(format!(
            "the server held {fds_added} descriptors more than at the baseline, for {connected} \
             connections: some were closed before its memory was read"
        ));
    }
    if let Some(full) = stopped.stat("rejected_full").filter(|&n| n > 0) {
        run.problems.push(format!(
            "the server refused {full} connections as full (its capacity, see its log)"
        ));
    }
    run
}

/// What the client processes of a run said.
#[derive(Default)]
struct Said {
    outcomes: Vec<Outcome>,
    /// When the first process started connecting.
    first_start: Option<Instant>,
    /// When the last one finished.
    last_end: Option<Instant>,
}

/// The client processes of one run.
struct Clients {
    group: child::Group,
}

impl Clients {
    /// Starts a client process per share; one that cannot start is a
    /// problem, its share is not held.
    fn start(
        args: &Args,
        bench: &Path,
        server: SocketAddr,
        nonce: u64,
        plan: &[(usize, usize)],
        problems: &mut Vec<String>,
    ) -> Clients {
        let commands = plan.iter().map(|&(first, count)| {
            let mut cmd = Command::new(bench);
            cmd.args(["conns", "--role", "clients"])
                .args(["--target", args.target.name()])
                .args(["--server", &server.to_string()])
                .args(["--connections", &count.to_string()])
                .args(["--first", &first.to_string()])
                .args(["--topics", &args.topics.to_string()])
                .args(["--nonce", &nonce.to_string()]);
            args.common.pass_to_client(&mut cmd);
            cmd
        });
        let (group, failed) = child::Group::start(commands);
        problems.extend(failed);
        Clients { group }
    }

    /// Waits up to `budget` for every process's result (or its error, or
    /// its end), noting when the first started connecting and the last
    /// finished.
    fn collect(
        &mut self,
        server: &mut Server,
        budget: Duration,
        problems: &mut Vec<String>,
    ) -> Said {
        let mut said = Said::default();
        let mut done = vec![false; self.group.children.len()];
        let deadline = Instant::now() + budget;
        while done.contains(&false) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                problems.push(format!(
                    "{} client process(es) gave no result within {budget:?}",
                    done.iter().filter(|d| !**d).count()
                ));
                break;
            }
            match self
                .group
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok((_, Some(line))) if line == "window-start" => {
                    said.first_start.get_or_insert_with(Instant::now);
                }
                Ok((_, Some(line))) if line == "window-end" => {
                    said.last_end = Some(Instant::now());
                }
                Ok((k, Some(line))) if line.starts_with("result ") => {
                    match ResultLine::parse(&line).and_then(|r| Outcome::from_result(&r)) {
                        Ok(o) => {
                            if !o.note.is_empty() {
                                problems.push(format!("client process {k}: {}", o.note));
                            }
                            said.outcomes.push(o);
                        }
                        Err(e) => problems.push(format!("client process {k}: {e}")),
                    }
                    done[k] = true;
                }
                Ok((k, Some(line))) if line.starts_with("error ") => {
                    problems.push(format!("client process {k}: {}", &line[6..]));
                    done[k] = true;
                }
                Ok((k, Some(line))) => {
                    problems.push(format!("client process {k} printed {line:?}"));
                }
                Ok((k, None)) => {
                    if !done[k] {
                        problems.push(format!("client process {k} ended without a result"));
                        done[k] = true;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(how) = server.exited() {
                        problems.push(format!("the server exited {how} while clients connected"));
                        break;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        said
    }

    /// Lets every process go; waits up to CLIENT_SLACK for all, kills the
    /// rest.
    fn release(mut self, problems: &mut Vec<String>) {
        self.group.release(CLIENT_SLACK, problems);
    }
}

fn summary(run: &Run) -> String {
    let figures = (run.connections > 0).then(|| {
        format!(
            "{} connected ({} not), {} connections/s; server RSS {} → {} MiB: {} B per \
             connection ({} B loaded / N)",
            run.connections,
            run.failures,
            thousands(run.connect_per_s),
            mib(run.baseline.rss_bytes, 1),
            mib(run.loaded.rss_bytes, 1),
            num(run.rss_per_conn, 0),
            num(run.loaded_per_conn, 0)
        )
    });
    report::summary(figures, &run.problems)
}

#[cfg(test)]
mod tests;
