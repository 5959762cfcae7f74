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
use crate::report::{self, command_line, json_num, json_str, mib, num, thousands};
use crate::server::Server;
use crate::stats::{latency_histogram, Percentiles};
use crate::targets::{self, Launch, Target};
use crate::wire::{self, refusal, set_note, Inbox, Turn};

mod reports;
use reports::{json_report, markdown_report, write_hgrms};

/// Time for the server to print `listening on`.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);
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
    match args.common.role {
        Role::Driver => {
            args.common.starts_its_own_server("resume")?;
            drive(args)
        }
        Role::Subscribers => match args.part {
            Part::Live => live_process(args),
            Part::Resume => resume_process(args),
        },
    }
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
// The client processes' side

/// Lines from the driver on stdin, read without blocking the event loop.
struct StdinLines {
    buf: Vec<u8>,
    closed: bool,
}

impl StdinLines {
    fn new() -> Result<StdinLines, String> {
        // SAFETY: fcntl on our own stdin.
        unsafe {
            let flags = libc::fcntl(0, libc::F_GETFL);
            if flags < 0 || libc::fcntl(0, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(format!("stdin: {}", io::Error::last_os_error()));
            }
        }
        Ok(StdinLines {
            buf: Vec::new(),
            closed: false,
        })
    }

    /// The complete lines available now.
    fn read(&mut self) -> Vec<String> {
        let mut chunk = [0u8; 4096];
        loop {
            // SAFETY: reads into a live buffer of its size.
            let n = unsafe { libc::read(0, chunk.as_mut_ptr().cast(), chunk.len()) };
            match n {
                0 => {
                    self.closed = true;
                    break;
                }
                n if n > 0 => self.buf.extend_from_slice(&chunk[..n as usize]),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.closed = true;
                    }
                    break;
                }
            }
        }
        let mut lines = Vec::new();
        while let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=at).collect();
            lines.push(String::from_utf8_lossy(&line[..at]).trim().to_string());
        }
        lines
    }

    /// Waits up to `timeout` for the next line.
    fn wait_line(&mut self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut pending = Vec::new();
        loop {
            pending.extend(self.read());
            if !pending.is_empty() {
                // The driver sends one command at a time.
                return Ok(pending.remove(0));
            }
            if self.closed {
                return Err("the driver went away".into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no word from the driver within {timeout:?}"));
            }
            let mut fd = net::pollfd(0, libc::POLLIN);
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut fd, 1, left.as_millis().min(1000) as i32) };
        }
    }
}

/// Raises the open-file limit and checks `sockets` fit below it.
fn fit_descriptors(sockets: usize) -> Result<(), String> {
    let lim = cluecast_sys::raise_nofile_limit().map_err(|e| e.to_string())?;
    let need = sockets as u64 + FDS_SPARE;
    if need > lim.soft {
        return Err(format!(
            "{sockets} sockets in one process need about {need} descriptors; the open-file \
             limit is {}: use more --processes",
            lim.soft
        ));
    }
    Ok(())
}

/// Runs `body`, telling the driver its result or error.
fn client_main<T>(
    args: &Args,
    role: &str,
    body: impl FnOnce(SocketAddr, &mut StdinLines) -> Result<T, String>,
    line: impl FnOnce(&T) -> String,
) -> Result<(), String> {
    let result = args
        .common
        .client_start(role)
        .and_then(|(server, _)| Ok((server, StdinLines::new()?)))
        .and_then(|(server, mut stdin)| body(server, &mut stdin));
    match result {
        Ok(o) => {
            crate::child::say(&line(&o));
            Ok(())
        }
        Err(e) => {
            crate::child::say_error(&e);
            Err(e)
        }
    }
}

fn set_live_socket(stream: &TcpStream) -> Result<(), String> {
    stream
        .set_nonblocking(true)
        .and_then(|_| net::enable_rx_timestamps(stream))
        .map_err(|e| format!("socket options: {e}"))
}

/// A subscription's order check: the sequence expected next; gaps and
/// repeats counted.
#[derive(Clone, Copy, Debug, Default)]
struct Order {
    next: u64,
    received: u64,
    gaps: u64,
    duplicates: u64,
}

impl Order {
    fn starting_after(last: u64) -> Order {
        Order {
            next: last + 1,
            ..Order::default()
        }
    }

    fn see(&mut self, seq: u64) {
        self.received += 1;
        if seq == self.next {
            self.next += 1;
        } else if seq < self.next {
            self.duplicates += 1;
        } else {
            self.gaps += seq - self.next;
            self.next = seq + 1;
        }
    }

    /// Holds exactly `after + 1 ..= last`, once each, in order.
    fn exact(&self, after: u64, last: u64) -> bool {
        self.gaps == 0 && self.duplicates == 0 && self.next == last + 1 && {
            self.received == last - after
        }
    }
}

/// Queues a PING on every connection with nothing queued.
fn ping_all<'a>(conns: impl Iterator<Item = (&'a mut TcpStream, &'a mut Vec<u8>)>) {
    for (stream, out) in conns {
        if out.is_empty() {
            Frame::Ping { nonce: 1 }.encode(out);
        }
        let _ = net::write_some(stream, out);
    }
}

// ---- the live process ----

struct LiveSub {
    stream: TcpStream,
    inbox: Inbox,
    topic: usize,
    start_after: u64,
    order: Order,
    out: Vec<u8>,
    alive: bool,
}

fn live_process(args: &Args) -> Result<(), String> {
    client_main(
        args,
        "clients --part live",
        |server, stdin| live_run(args, server, stdin),
        LiveOutcome::to_line,
    )
}

/// Publishes `count` events into every topic over a blocking connection,
/// `PRELOAD_WINDOW` in flight; returns each topic's newest sequence.
fn preload(
    c: &mut wire::Connected,
    topics: &[String],
    count: u64,
    timeout: Duration,
) -> Result<Vec<u64>, String> {
    let payload = vec![0x5au8; PAYLOAD_BYTES];
    let total = count * topics.len() as u64;
    let mut newest = vec![0u64; topics.len()];
    let mut out = Vec::new();
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < total {
        out.clear();
        while sent < total && sent - acked < PRELOAD_WINDOW as u64 {
            Frame::Publish(Publish {
                request_id: sent as u32,
                topic: topics[(sent % topics.len() as u64) as usize].as_bytes(),
                payload: &payload,
            })
            .encode(&mut out);
            sent += 1;
        }
        c.conn
            .stream
            .write_all(&out)
            .map_err(|e| format!("preloading: {e}"))?;
        while acked < sent {
            let ack = wire::await_frame(
                &mut c.conn,
                Instant::now() + timeout,
                "preloading",
                |f| match f {
                    Frame::PublishAck(a) => Some(*a),
                    _ => None,
                },
            )?;
            if ack.status != 0 {
                return Err(format!(
                    "preloading: a publish refused, status {}",
                    ack.status
                ));
            }
            let k = (u64::from(ack.request_id) % topics.len() as u64) as usize;
            newest[k] = newest[k].max(ack.seq);
            acked += 1;
        }
    }
    Ok(newest)
}

fn live_run(
    args: &Args,
    server: SocketAddr,
    stdin: &mut StdinLines,
) -> Result<LiveOutcome, String> {
    let timeout = Duration::from_millis(args.common.connect_timeout_ms);
    fit_descriptors(args.live + 1)?;
    let topics: Vec<String> = (0..args.topics)
        .map(|k| topic_name(args.nonce, k))
        .collect();
    let id = format!("resume-{:08x}-live", args.nonce);
    let mut o = LiveOutcome::default();

    let mut publisher = wire::connect(server, &format!("{id}-pub"), timeout)?;
    let t = Instant::now();
    preload(&mut publisher, &topics, args.preload(), timeout)?;
    o.preload_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "resume live: {} events in each of {} topics preloaded in {:.1} s",
        args.preload(),
        args.topics,
        o.preload_secs
    );

    let topic_len_max = topics.iter().map(String::len).max().unwrap_or(0);
    let peek = EventHead::payload_at(topic_len_max) + STAMP_BYTES;
    let mut subs = Vec::with_capacity(args.live);
    let mut heartbeat_ms = 0;
    for i in 0..args.live {
        let topic = i % args.topics;
        let mut c = wire::connect(server, &format!("{id}-s{i}"), timeout)
            .map_err(|e| format!("live subscriber {i}: {e}"))?;
        heartbeat_ms = c.heartbeat_ms;
        let last = c
            .subscribe_live(topics[topic].as_bytes(), timeout)
            .map_err(|e| format!("live subscriber {i}: {e}"))?;
        let (stream, leftover) = c.conn.into_parts();
        set_live_socket(&stream)?;
        subs.push(LiveSub {
            inbox: Inbox::new(&leftover, INBOX_BYTES, peek)?,
            stream,
            topic,
            start_after: last,
            order: Order::starting_after(last),
            out: Vec::new(),
            alive: true,
        });
    }
    let limits = publisher.conn.limits;
    let (mut pub_stream, leftover) = publisher.conn.into_parts();
    set_live_socket(&pub_stream)?;
    let mut pub_inbox = Inbox::new(&leftover, INBOX_BYTES, EventHead::BYTES_MIN)?;
    let mut pub_out: Vec<u8> = Vec::with_capacity(64 << 10);

    crate::child::say("ready");
    let go = stdin.wait_line(Duration::from_secs(3600))?;
    if go != "go" {
        return Err(format!("expected `go` from the driver, got {go:?}"));
    }

    let mut epoll = Epoll::new()?;
    const PUB_TOKEN: usize = usize::MAX - 2;
    epoll.ctl(
        libc::EPOLL_CTL_ADD,
        pub_stream.as_raw_fd(),
        PUB_TOKEN,
        READABLE,
    )?;
    epoll.ctl(libc::EPOLL_CTL_ADD, 0, STDIN_TOKEN, READABLE)?;
    for (i, s) in subs.iter().enumerate() {
        epoll.ctl(libc::EPOLL_CTL_ADD, s.stream.as_raw_fd(), i, READABLE)?;
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    // SAFETY: prctl with an integer argument.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }

    let per_s = args.rate * args.topics as f64;
    let due_ns = |g: u64| (g as f64 * 1e9 / per_s) as u64;
    let t0 = Instant::now();
    let real0 = cluecast_sys::realtime_ns();
    let base_lo = WARMUP.as_nanos() as u64;
    let base_hi = base_lo + Duration::from_secs_f64(args.baseline).as_nanos() as u64;
    let longest =
        base_hi + Duration::from_secs_f64(args.timeout).as_nanos() as u64 + 60_000_000_000;
    let mut stop_ns = u64::MAX; // publishing stops at this (ns from t0)
    let mut storm_said = false;
    let mut next = 0u64; // the next event of the schedule
    let mut in_flight: HashMap<u32, usize> = HashMap::new();
    let mut last_seq: Vec<u64> = vec![0; args.topics];
    let mut payload = vec![0u8; PAYLOAD_BYTES];
    let mut base = latency_histogram();
    let mut storm = latency_histogram();
    let mut srv = [latency_histogram(), latency_histogram()];
    let mut note = String::new();
    let ping_every = (heartbeat_ms > 0).then(|| Duration::from_millis(u64::from(heartbeat_ms) / 2));
    let mut next_ping = ping_every.map(|p| t0 + p);
    let mut drain_deadline: Option<Instant> = None;

    loop {
        let now = Instant::now();
        let el = now.duration_since(t0).as_nanos() as u64;
        if !storm_said && el >= base_hi {
            crate::child::say("storm");
            storm_said = true;
        }
        if stop_ns == u64::MAX && el >= longest {
            stop_ns = el;
            set_note(&mut note, "the driver never said stop".to_string());
        }
        // Publish what is due.
        while stop_ns == u64::MAX && due_ns(next) <= el {
            let due = due_ns(next);
            o.send_lag_max = o.send_lag_max.max(el - due);
            let topic = (next % args.topics as u64) as usize;
            Stamp {
                publisher: 0,
                counter: next,
                scheduled_ns: real0 + due,
            }
            .write(&mut payload);
            Frame::Publish(Publish {
                request_id: next as u32,
                topic: topics[topic].as_bytes(),
                payload: &payload,
            })
            .encode(&mut pub_out);
            in_flight.insert(next as u32, topic);
            next += 1;
        }
        if !pub_out.is_empty() {
            net::write_some(&mut pub_stream, &mut pub_out)
                .map_err(|e| format!("live publisher: writing: {e}"))?;
        }
        if let (Some(at), Some(every)) = (next_ping, ping_every) {
            if now >= at {
                next_ping = Some(now + every);
                ping_all(
                    subs.iter_mut()
                        .filter(|s| s.alive)
                        .map(|s| (&mut s.stream, &mut s.out)),
                );
            }
        }
        if stop_ns != u64::MAX {
            let done = in_flight.is_empty()
                && subs
                    .iter()
                    .filter(|s| s.alive)
                    .all(|s| s.order.next > last_seq[s.topic]);
            let deadline = *drain_deadline.get_or_insert(now + DRAIN_TIMEOUT);
            if done || now >= deadline {
                break;
            }
        }
        let wake = match stop_ns {
            u64::MAX => Duration::from_nanos(due_ns(next).saturating_sub(el)).min(WAIT_SLICE),
            _ => WAIT_SLICE,
        };
        let ready = match epoll.wait(&mut events, wake) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("epoll_wait: {e}")),
        };
        for ev in &events[..ready] {
            match ev.u64 as usize {
                STDIN_TOKEN => {
                    for line in stdin.read() {
                        if line == "stop" && stop_ns == u64::MAX {
                            stop_ns = t0.elapsed().as_nanos() as u64;
                        }
                    }
                    if stdin.closed && stop_ns == u64::MAX {
                        return Err("the driver went away".into());
                    }
                    if stdin.closed {
                        let _ = epoll.ctl(libc::EPOLL_CTL_DEL, 0, STDIN_TOKEN, 0);
                    }
                }
                PUB_TOKEN => {
                    for _ in 0..READS_PER_TURN {
                        let n = match wire::turn(pub_inbox.fill(&mut pub_stream), |&n| n)
                            .map_err(|e| format!("live publisher: {e}"))?
                        {
                            Turn::Read(n) => n,
                            Turn::Again => continue,
                            Turn::Empty => break,
                        };
                        pub_inbox.drain(
                            &limits,
                            |_, _| {},
                            |f| {
                                if let Some(why) = refusal(f) {
                                    return Err(format!("live publisher: {why}"));
                                }
                                if let Frame::PublishAck(a) = f {
                                    let topic = in_flight
                                        .remove(&a.request_id)
                                        .ok_or("live publisher: an ack for no publish")?;
                                    if a.status == 0 {
                                        o.published += 1;
                                        last_seq[topic] = last_seq[topic].max(a.seq);
                                    } else {
                                        o.refused += 1;
                                    }
                                }
                                Ok(())
                            },
                        )?;
                        if n < pub_inbox.free_min() {
                            break;
                        }
                    }
                }
                i => {
                    let Some(s) = subs.get_mut(i) else { continue };
                    if !s.alive {
                        continue;
                    }
                    let stop_real = match stop_ns {
                        u64::MAX => u64::MAX,
                        ns => real0 + ns,
                    };
                    let windows = [real0 + base_lo, real0 + base_hi, stop_real];
                    let hists = [&mut base, &mut storm];
                    if let Err(why) = read_live(s, &limits, windows, hists, &mut srv) {
                        s.alive = false;
                        let _ = epoll.ctl(libc::EPOLL_CTL_DEL, s.stream.as_raw_fd(), i, 0);
                        set_note(&mut note, format!("live subscriber {i}: {why}"));
                    }
                }
            }
        }
    }
    o.unacked = in_flight.len() as u64;
    for s in &subs {
        o.delivered += s.order.received;
        o.seq_errors += s.order.gaps + s.order.duplicates;
        let want = last_seq[s.topic].saturating_sub(s.start_after);
        o.lost += want.saturating_sub(s.order.received);
    }
    let [b, st] = [&srv[0], &srv[1]].map(Percentiles::of);
    (
        o.base_srv_p50,
        o.base_srv_p99,
        o.storm_srv_p50,
        o.storm_srv_p99,
    ) = (b.p50, b.p99, st.p50, st.p99);
    o.last_seqs = last_seq
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(":");
    for (h, fields) in [
        (
            &base,
            [
                &mut o.base_count,
                &mut o.base_p50,
                &mut o.base_p90,
                &mut o.base_p99,
                &mut o.base_p999,
                &mut o.base_max,
            ],
        ),
        (
            &storm,
            [
                &mut o.storm_count,
                &mut o.storm_p50,
                &mut o.storm_p90,
                &mut o.storm_p99,
                &mut o.storm_p999,
                &mut o.storm_max,
            ],
        ),
    ] {
        let p = Percentiles::of(h);
        for (f, v) in fields
            .into_iter()
            .zip([p.count, p.p50, p.p90, p.p99, p.p999, p.max])
        {
            *f = v;
        }
    }
    if let Some(path) = &args.hgrm_out {
        for (h, ext) in [(&base, "baseline"), (&storm, "storm")] {
            let p = path.with_extension(ext);
            std::fs::write(&p, plot::hgrm(h, 1e6))
                .map_err(|e| format!("writing {}: {e}", p.display()))?;
        }
    }
    if o.unacked > 0 {
        set_note(
            &mut note,
            format!("{} live publishes unanswered", o.unacked),
        );
    }
    o.note = note;
    eprintln!(
        "resume live: baseline p99 {:.3} ms, storm p99 {:.3} ms, {} published, lost {}{}",
        o.base_p99 as f64 / 1e6,
        o.storm_p99 as f64 / 1e6,
        o.published,
        o.lost,
        report::parenthesised(&o.note)
    );
    Ok(o)
}

/// Reads a live subscriber's socket: order, and latency (receive − due)
/// into `base` for events due in [w0, w1), `storm` for [w1, w2); the
/// server's part (receive − publish_ts_ns) into `srv` likewise.
fn read_live(
    s: &mut LiveSub,
    limits: &Limits,
    [w0, w1, w2]: [u64; 3],
    [base, storm]: [&mut Histogram<u64>; 2],
    srv: &mut [Histogram<u64>; 2],
) -> Result<(), String> {
    for _ in 0..READS_PER_TURN {
        let (n, stamp) = match wire::turn(s.inbox.fill_stamped(&s.stream), |r| r.0)? {
            Turn::Read(r) => r,
            Turn::Again => continue,
            Turn::Empty => return Ok(()),
        };
        let recv_ns = stamp.unwrap_or_else(cluecast_sys::realtime_ns);
        let order = &mut s.order;
        let mut bad = None;
        s.inbox.drain(
            limits,
            |head, _| {
                order.see(head.seq());
                let Some((ts, due)) = head
                    .publish_ts_ns()
                    .zip(head.payload())
                    .and_then(|(ts, p)| Some((ts, Stamp::read(p)?.scheduled_ns)))
                else {
                    bad = Some("an EVENT without a stamp");
                    return;
                };
                let latency = recv_ns.saturating_sub(due);
                let server_part = recv_ns.saturating_sub(ts);
                if (w0..w1).contains(&due) {
                    base.saturating_record(latency);
                    srv[0].saturating_record(server_part);
                } else if (w1..w2).contains(&due) {
                    storm.saturating_record(latency);
                    srv[1].saturating_record(server_part);
                }
            },
            |f| match refusal(f) {
                Some(why) => Err(why),
                None => Ok(()),
            },
        )?;
        if let Some(why) = bad {
            return Err(why.into());
        }
        if n < s.inbox.free_min() {
            return Ok(());
        }
    }
    Ok(())
}

// ---- a resume process ----

struct Client {
    stream: TcpStream,
    inbox: Inbox,
    topic: usize,
    /// Resumed after this sequence (set when the SUBSCRIBE goes).
    after: u64,
    order: Order,
    /// SUBSCRIBED came, with status Ok.
    answered: bool,
    resumed: bool,
    caught_up_ns: Option<u64>,
    events_at_catch_up: u64,
    out: Vec<u8>,
    alive: bool,
}

fn resume_process(args: &Args) -> Result<(), String> {
    client_main(
        args,
        "clients --part resume",
        |server, stdin| resume_run(args, server, stdin),
        ResumeOutcome::to_line,
    )
}

fn resume_run(
    args: &Args,
    server: SocketAddr,
    stdin: &mut StdinLines,
) -> Result<ResumeOutcome, String> {
    let timeout = Duration::from_millis(args.common.connect_timeout_ms);
    fit_descriptors(args.clients + 1)?;
    let topics: Vec<String> = (0..args.topics)
        .map(|k| topic_name(args.nonce, k))
        .collect();
    let id = format!("resume-{:08x}", args.nonce);
    let mut o = ResumeOutcome::default();
    let mut note = String::new();

    let t = Instant::now();
    let mut clients = Vec::with_capacity(args.clients);
    let (mut limits, mut heartbeat_ms) = (Limits::DEFAULT, 0);
    for j in args.first..args.first + args.clients {
        let c = wire::connect(server, &format!("{id}-c{j}"), timeout)
            .map_err(|e| format!("client {j}: {e}"))?;
        (limits, heartbeat_ms) = (c.conn.limits, c.heartbeat_ms);
        let (stream, leftover) = c.conn.into_parts();
        set_live_socket(&stream)?;
        clients.push(Client {
            inbox: Inbox::new(&leftover, INBOX_BYTES, EventHead::BYTES_MIN)?,
            stream,
            topic: j % args.topics,
            after: 0,
            order: Order::default(),
            answered: false,
            resumed: false,
            caught_up_ns: None,
            events_at_catch_up: 0,
            out: Vec::new(),
            alive: true,
        });
    }
    o.connected = clients.len() as u64;
    o.connect_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "resume clients {}..{}: connected in {:.1} s",
        args.first,
        args.first + args.clients,
        o.connect_secs
    );
    crate::child::say("ready");

    let mut epoll = Epoll::new()?;
    epoll.ctl(libc::EPOLL_CTL_ADD, 0, STDIN_TOKEN, READABLE)?;
    for (i, c) in clients.iter().enumerate() {
        epoll.ctl(libc::EPOLL_CTL_ADD, c.stream.as_raw_fd(), i, READABLE)?;
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let ping_every = (heartbeat_ms > 0).then(|| Duration::from_millis(u64::from(heartbeat_ms) / 2));
    let mut next_ping = ping_every.map(|p| Instant::now() + p);
    // The probe: subscribed live to every topic once the storm starts.
    let mut probe: Option<(TcpStream, Inbox, Vec<u64>)> = None;
    let mut resume_deadline: Option<Instant> = None;
    let mut said_caught_up = false;
    let mut last: Option<Vec<u64>> = None;
    let mut final_deadline: Option<Instant> = None;

    loop {
        let now = Instant::now();
        if let (Some(at), Some(every)) = (next_ping, ping_every) {
            if now >= at {
                next_ping = Some(now + every);
                ping_all(
                    clients
                        .iter_mut()
                        .filter(|c| c.alive)
                        .map(|c| (&mut c.stream, &mut c.out)),
                );
            }
        }
        if probe.is_some() && !said_caught_up {
            let behind = clients
                .iter()
                .filter(|c| c.alive && c.caught_up_ns.is_none())
                .count();
            let late = resume_deadline.is_some_and(|d| now >= d);
            if behind == 0 || late {
                if late {
                    set_note(
                        &mut note,
                        format!("{behind} clients not caught up within {} s", args.timeout),
                    );
                }
                crate::child::say("caught-up");
                said_caught_up = true;
            }
        }
        if let Some(last) = &last {
            let done = clients
                .iter()
                .filter(|c| c.alive)
                .all(|c| c.order.next > last[c.topic]);
            if done || final_deadline.is_some_and(|d| now >= d) {
                break;
            }
        }
        let ready = match epoll.wait(&mut events, WAIT_SLICE) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("epoll_wait: {e}")),
        };
        for ev in &events[..ready] {
            match ev.u64 as usize {
                STDIN_TOKEN => {
                    for line in stdin.read() {
                        if line == "resume" && probe.is_none() {
                            let p = start_storm(args, server, &topics, &mut clients, &mut o)?;
                            epoll.ctl(
                                libc::EPOLL_CTL_ADD,
                                p.0.as_raw_fd(),
                                PROBE_TOKEN,
                                READABLE,
                            )?;
                            probe = Some(p);
                            resume_deadline =
                                Some(Instant::now() + Duration::from_secs_f64(args.timeout));
                        } else if let Some(seqs) = line.strip_prefix("final ") {
                            let seqs: Result<Vec<u64>, _> =
                                seqs.split(':').map(str::parse).collect();
                            match seqs {
                                Ok(v) if v.len() == args.topics => last = Some(v),
                                _ => return Err(format!("a bad `final` line: {line:?}")),
                            }
                            final_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                        } else if !line.is_empty() && line != "resume" {
                            return Err(format!("an unknown word from the driver: {line:?}"));
                        }
                    }
                    if stdin.closed {
                        return Err("the driver went away".into());
                    }
                }
                PROBE_TOKEN => {
                    let Some((stream, inbox, newest)) = probe.as_mut() else {
                        continue;
                    };
                    read_probe(stream, inbox, newest, &limits, &topics)
                        .map_err(|e| format!("the probe: {e}"))?;
                }
                i => {
                    let newest = match &probe {
                        Some((_, _, n)) => n.as_slice(),
                        None => &[],
                    };
                    let c = &mut clients[i];
                    if !c.alive {
                        continue;
                    }
                    if let Err(why) = read_client(c, &limits, newest) {
                        c.alive = false;
                        let _ = epoll.ctl(libc::EPOLL_CTL_DEL, c.stream.as_raw_fd(), i, 0);
                        set_note(&mut note, format!("client {}: {why}", args.first + i));
                    }
                }
            }
        }
    }
    let last = last.unwrap_or_default();
    for c in &clients {
        o.resumed += u64::from(c.resumed);
        o.not_recovered += u64::from(c.answered && !c.resumed);
        o.caught_up += u64::from(c.caught_up_ns.is_some());
        o.gaps += c.order.gaps;
        o.duplicates += c.order.duplicates;
        o.received += c.order.received;
        o.catch_up_events += c.events_at_catch_up;
        o.last_caught_up_ns = o.last_caught_up_ns.max(c.caught_up_ns.unwrap_or(0));
        let exact = c.alive
            && c.resumed
            && last
                .get(c.topic)
                .is_some_and(|&l| c.order.exact(c.after, l));
        o.exact += u64::from(exact);
    }
    o.note = note;
    eprintln!(
        "resume clients {}..{}: {} caught up, {} exact, {} gaps, {} duplicates{}",
        args.first,
        args.first + args.clients,
        o.caught_up,
        o.exact,
        o.gaps,
        o.duplicates,
        report::parenthesised(&o.note)
    );
    Ok(o)
}

/// The storm: the probe learns every topic's epoch and newest sequence,
/// then every client's SUBSCRIBE Resume goes out at once.
fn start_storm(
    args: &Args,
    server: SocketAddr,
    topics: &[String],
    clients: &mut [Client],
    o: &mut ResumeOutcome,
) -> Result<(TcpStream, Inbox, Vec<u64>), String> {
    let timeout = Duration::from_millis(args.common.connect_timeout_ms);
    let mut probe = wire::connect(
        server,
        &format!("resume-{:08x}-probe-{}", args.nonce, args.first),
        timeout,
    )
    .map_err(|e| format!("the probe: {e}"))?;
    let mut epochs = Vec::with_capacity(topics.len());
    let mut newest = Vec::with_capacity(topics.len());
    for t in topics {
        probe
            .conn
            .send(&Frame::Subscribe(Subscribe {
                mode: StartMode::Live,
                epoch: 0,
                last_seq: 0,
                topic: t.as_bytes(),
            }))
            .map_err(|e| format!("the probe: {e}"))?;
        let (epoch, last) = wire::await_frame(
            &mut probe.conn,
            Instant::now() + timeout,
            "the probe's SUBSCRIBED",
            |f| match f {
                Frame::Subscribed(s) if s.topic == t.as_bytes() => Some((s.epoch, s.last_seq)),
                _ => None,
            },
        )?;
        if last < args.behind {
            return Err(format!(
                "topic {t} holds {last} events, fewer than --behind"
            ));
        }
        epochs.push(epoch);
        newest.push(last);
    }
    o.first_resume_ns = cluecast_sys::realtime_ns();
    for c in clients.iter_mut().filter(|c| c.alive) {
        c.after = newest[c.topic] - args.behind;
        c.order = Order::starting_after(c.after);
        Frame::Subscribe(Subscribe {
            mode: StartMode::Resume,
            epoch: epochs[c.topic],
            last_seq: c.after,
            topic: topics[c.topic].as_bytes(),
        })
        .encode(&mut c.out);
        net::write_some(&mut c.stream, &mut c.out)
            .map_err(|e| format!("sending SUBSCRIBE Resume: {e}"))?;
        if !c.out.is_empty() {
            return Err("a SUBSCRIBE did not fit an empty socket".into());
        }
    }
    let (stream, leftover) = probe.conn.into_parts();
    set_live_socket(&stream)?;
    let inbox = Inbox::new(&leftover, INBOX_BYTES, EventHead::payload_at(64))?;
    Ok((stream, inbox, newest))
}

/// The probe's live events: each topic's newest sequence so far.
fn read_probe(
    stream: &mut TcpStream,
    inbox: &mut Inbox,
    newest: &mut [u64],
    limits: &Limits,
    topics: &[String],
) -> Result<(), String> {
    for _ in 0..READS_PER_TURN {
        let n = match wire::turn(inbox.fill(stream), |&n| n)? {
            Turn::Read(n) => n,
            Turn::Again => continue,
            Turn::Empty => return Ok(()),
        };
        inbox.drain(
            limits,
            |head, _| {
                let name = head.topic();
                if let Some(k) = topics.iter().position(|t| Some(t.as_bytes()) == name) {
                    newest[k] = newest[k].max(head.seq());
                }
            },
            |f| match refusal(f) {
                Some(why) => Err(why),
                None => Ok(()),
            },
        )?;
        if n < inbox.free_min() {
            return Ok(());
        }
    }
    Ok(())
}

/// A resuming client's input: SUBSCRIBED, then its events in order; it is
/// caught up once it holds what the probe holds of its topic (`newest`).
fn read_client(c: &mut Client, limits: &Limits, newest: &[u64]) -> Result<(), String> {
    for _ in 0..READS_PER_TURN {
        let (n, stamp) = match wire::turn(c.inbox.fill_stamped(&c.stream), |r| r.0)? {
            Turn::Read(r) => r,
            Turn::Again => continue,
            Turn::Empty => return Ok(()),
        };
        let recv_ns = stamp.unwrap_or_else(cluecast_sys::realtime_ns);
        let (order, caught_up, at_catch_up) =
            (&mut c.order, &mut c.caught_up_ns, &mut c.events_at_catch_up);
        let head_of_topic = newest.get(c.topic).copied().unwrap_or(u64::MAX);
        let (answered, resumed) = (&mut c.answered, &mut c.resumed);
        c.inbox.drain(
            limits,
            |head, _| {
                let seq = head.seq();
                order.see(seq);
                if caught_up.is_none() && seq >= head_of_topic {
                    *caught_up = Some(recv_ns);
                    *at_catch_up = order.received;
                }
            },
            |f| match f {
                Frame::Subscribed(s) => {
                    *answered = true;
                    *resumed = s.status == SubscribeStatus::Ok;
                    if !*resumed {
                        return Err(format!(
                            "SUBSCRIBED {:?} (oldest held {})",
                            s.status, s.oldest_seq
                        ));
                    }
                    Ok(())
                }
                f => match refusal(f) {
                    Some(why) => Err(why),
                    None => Ok(()),
                },
            },
        )?;
        if n < c.inbox.free_min() {
            return Ok(());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The driver

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

fn server_args(args: &Args) -> Vec<String> {
    let mut v: Vec<String> = ["run", "--shards", "1", "--listen"]
        .map(String::from)
        .to_vec();
    v.push(args.common.listen.to_string());
    if targets::arg_value(&args.common.server_args, "--history-events-max").is_none() {
        v.extend([
            "--history-events-max".into(),
            args.history_events_max.to_string(),
        ]);
    }
    v.extend(args.common.server_args.iter().cloned());
    v
}

fn launch(args: &Args) -> Launch {
    Launch {
        target: Target::Cluecast,
        listen: args.common.listen,
        cpu: args.common.server_pin(),
        appliance_args: server_args(args),
        payload_bytes: PAYLOAD_BYTES,
        durability: args.durability(),
    }
}

/// The resuming clients of each process, as (first index, count).
fn shares(clients: usize, processes: usize) -> Vec<(usize, usize)> {
    let (each, extra) = (clients / processes, clients % processes);
    let mut first = 0;
    (0..processes)
        .map(|k| {
            let count = each + usize::from(k < extra);
            first += count;
            (first - count, count)
        })
        .collect()
}

fn drive(args: &Args) -> Result<(), String> {
    let program = targets::program(Target::Cluecast, &args.common.cluecast)?;
    let bench = std::env::current_exe().map_err(|e| format!("locating this binary: {e}"))?;
    let host = procfs::host();
    let plan = shares(args.clients, args.process_count());
    // The client processes inherit the raised limit.
    fit_descriptors(plan.iter().map(|&(_, n)| n).max().unwrap_or(0) + 1)?;
    eprintln!(
        "resume: {} runs: {} clients ({} processes) each {} events behind on {} topics, {} live \
         subscribers at {} events/s per topic, durability {}; host: {} CPUs, {}, kernel {}",
        args.runs.repeat,
        args.clients,
        plan.len(),
        args.behind,
        args.topics,
        args.live,
        args.rate,
        args.durability().name(),
        host.cpus,
        host.cpu_model,
        host.kernel
    );
    let mut runs = Vec::with_capacity(args.runs.repeat);
    for i in 0..args.runs.repeat {
        let nonce =
            cluecast_sys::random_u64().map_err(|e| format!("getrandom: {e}"))? & 0xffff_ffff;
        let run = run_once(args, &bench, &program, &plan, nonce);
        eprintln!("[{}/{}] {}", i + 1, args.runs.repeat, summary(&run));
        runs.push(run);
    }
    if let Some(dir) = &args.hgrm_dir {
        write_hgrms(args, dir, &runs)?;
    }
    report::emit(
        args.runs.report.as_deref(),
        args.runs.json,
        || markdown_report(args, &host, &runs),
        || json_report(args, &runs),
    )?;
    if runs.iter().any(|r| !r.measured || r.failed) {
        return Err(
            "some runs failed: clients not caught up or not holding exactly their events, live \
             deliveries lost, a timeout, or a server that did not exit 0 (see the report)"
                .into(),
        );
    }
    Ok(())
}

/// The client processes of one run: process 0 is the live one.
struct Procs {
    group: child::Group,
    /// Lines that came while waiting for something else.
    results: Vec<Option<String>>,
    ended: Vec<bool>,
}

impl Procs {
    fn start(commands: Vec<Command>) -> Result<Procs, String> {
        let count = commands.len();
        let (group, failed) = child::Group::start(commands);
        if let Some(e) = failed.into_iter().next() {
            return Err(e);
        }
        Ok(Procs {
            group,
            results: vec![None; count],
            ended: vec![false; count],
        })
    }

    fn tell(&mut self, k: usize, word: &str) -> Result<(), String> {
        let stdin = self.group.stdin(k).ok_or("stdin already closed")?;
        writeln!(stdin, "{word}")
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("telling client process {k} `{word}`: {e}"))
    }

    /// Waits until each of `who` said a line starting with `word` (a
    /// `result` line is kept for [`Procs::results`]); calls `tick` every
    /// RSS_EVERY. Err names who did not, and why.
    fn wait(
        &mut self,
        who: &[usize],
        word: &str,
        budget: Duration,
        server: &mut Server,
        mut tick: impl FnMut(&Server),
    ) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + budget;
        let mut said: Vec<Option<String>> = vec![None; self.group.children.len()];
        while who.iter().any(|&k| said[k].is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing: Vec<String> = who
                    .iter()
                    .filter(|&&k| said[k].is_none())
                    .map(|k| k.to_string())
                    .collect();
                return Err(format!(
                    "client process(es) {} did not say `{word}` within {budget:?}",
                    missing.join(", ")
                ));
            }
            match self.group.lines.recv_timeout(left.min(RSS_EVERY)) {
                Ok((k, Some(line))) => {
                    if let Some(e) = line.strip_prefix("error ") {
                        return Err(format!("client process {k}: {e}"));
                    }
                    if line.starts_with("result ") {
                        self.results[k] = Some(line.clone());
                    }
                    if line.starts_with(word) {
                        said[k] = Some(line);
                    }
                }
                Ok((k, None)) => {
                    self.ended[k] = true;
                    if said[k].is_none() && who.contains(&k) {
                        return Err(format!("client process {k} ended before saying `{word}`"));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(how) = server.exited() {
                        return Err(format!("the server exited {how} during the run"));
                    }
                    tick(server);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("every client process ended".into())
                }
            }
        }
        Ok(who.iter().filter_map(|&k| said[k].take()).collect())
    }

    /// CPU seconds of every client process so far.
    fn cpu_secs(&self) -> f64 {
        self.group
            .children
            .iter()
            .map(|c| procfs::process_cpu_secs(c.id()).unwrap_or(f64::NAN))
            .sum()
    }

    /// Lets every process go, waits briefly for each, kills the rest.
    fn finish(mut self, problems: &mut Vec<String>) {
        self.group.release(Duration::from_secs(10), problems);
    }
}

fn client_command(
    args: &Args,
    bench: &Path,
    server: SocketAddr,
    nonce: u64,
    part: Part,
) -> Command {
    let mut cmd = Command::new(bench);
    cmd.args(["resume", "--role", "clients"])
        .args(["--part", if part == Part::Live { "live" } else { "resume" }])
        .args(["--server", &server.to_string()])
        .args(["--nonce", &nonce.to_string()])
        .args(["--topics", &args.topics.to_string()])
        .args(["--behind", &args.behind.to_string()])
        .args(["--preload", &args.preload().to_string()])
        .args(["--live", &args.live.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--baseline", &args.baseline.to_string()])
        .args(["--timeout", &args.timeout.to_string()]);
    args.common.pass_to_client(&mut cmd);
    cmd
}

/// One measurement: a fresh server and data directory, the client
/// processes, the figures.
fn run_once(args: &Args, bench: &Path, program: &Path, plan: &[(usize, usize)], nonce: u64) -> Run {
    let mut run = Run::default();
    let mut server = match targets::start(&launch(args), program, SERVER_START_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            run.problems.push(e);
            run.failed = true;
            return run;
        }
    };
    run.problems.extend(server.identity_problem());
    let hgrm_path = std::env::temp_dir().join(format!(
        "cluecast-bench-resume-{}-{}",
        std::process::id(),
        cluecast_sys::realtime_ns()
    ));
    let mut commands = vec![client_command(
        args,
        bench,
        server.addr(),
        nonce,
        Part::Live,
    )];
    commands[0].arg("--hgrm-out").arg(&hgrm_path);
    for &(first, count) in plan {
        let mut cmd = client_command(args, bench, server.addr(), nonce, Part::Resume);
        cmd.args(["--clients", &count.to_string()])
            .args(["--first", &first.to_string()]);
        commands.push(cmd);
    }
    let outcome = match Procs::start(commands) {
        Ok(mut procs) => {
            let result = storm(args, plan, &mut procs, &mut server, &mut run);
            if let Err(e) = &result {
                run.problems.push(e.clone());
                run.failed = true;
            }
            procs.finish(&mut run.problems);
            result.ok()
        }
        Err(e) => {
            run.problems.push(e);
            run.failed = true;
            None
        }
    };
    run.data_dir_bytes = server.data_dir_bytes().map_or(f64::NAN, |b| b as f64);
    let stopped = server.stop(SERVER_STOP_TIMEOUT);
    run.failed |= stopped.problem.is_some();
    run.problems.extend(stopped.problems());
    for (i, ext) in ["baseline", "storm"].iter().enumerate() {
        let p = hgrm_path.with_extension(ext);
        run.hgrm[i] = std::fs::read_to_string(&p).unwrap_or_default();
        let _ = std::fs::remove_file(&p);
    }
    if let Some((live, resumes)) = outcome {
        fill_figures(args, &mut run, &live, &resumes);
    }
    run
}

/// The run's phases, driven through the client processes' lines.
fn storm(
    args: &Args,
    plan: &[(usize, usize)],
    procs: &mut Procs,
    server: &mut Server,
    run: &mut Run,
) -> Result<(LiveOutcome, Vec<ResumeOutcome>), String> {
    let all: Vec<usize> = (0..=plan.len()).collect();
    let resumers: Vec<usize> = (1..=plan.len()).collect();
    let share_max = plan.iter().map(|&(_, n)| n).max().unwrap_or(0);
    let connect = SLACK
        + CONNECT_PER_CONN * (share_max + args.live) as u32
        + Duration::from_secs_f64(args.preload() as f64 * args.topics as f64 / 1000.0);
    procs.wait(&all, "ready", connect, server, |_| {})?;
    let cores = [
        (!args.common.no_pin).then(|| procfs::Core::new(args.common.server_cpu)),
        (!args.common.no_pin).then(|| procfs::Core::new(args.common.client_cpu)),
    ];
    let sample = |server: &Server| {
        (
            procfs::process_cpu_secs(server.pid()).unwrap_or(f64::NAN),
            Instant::now(),
            procfs::rss_bytes(server.pid()).map_or(f64::NAN, |b| b as f64),
        )
    };
    procs.tell(0, "go")?;
    let (cpu0, t0, _) = sample(server);
    let phase = WARMUP + Duration::from_secs_f64(args.baseline) + SLACK;
    procs.wait(&[0], "storm", phase, server, |_| {})?;
    // The baseline is the window up to now, less the warm-up.
    let (cpu1, t1, rss1) = sample(server);
    let core0 = cores.map(CoreUse::sample);
    let gen0 = procs.cpu_secs();
    run.server_cpu_pct[0] = 100.0 * (cpu1 - cpu0) / t1.duration_since(t0).as_secs_f64();
    run.server_rss_bytes[0] = rss1;
    for &k in &resumers {
        procs.tell(k, "resume")?;
    }
    let mut rss_max = rss1;
    let budget = Duration::from_secs_f64(args.timeout) + SLACK;
    procs.wait(&resumers, "caught-up", budget, server, |s| {
        if let Some(b) = procfs::rss_bytes(s.pid()) {
            rss_max = rss_max.max(b as f64);
        }
    })?;
    let (cpu2, t2, rss2) = sample(server);
    let core1 = cores.map(CoreUse::sample);
    let gen1 = procs.cpu_secs();
    let wall = t2.duration_since(t1).as_secs_f64();
    run.server_cpu_pct[1] = 100.0 * (cpu2 - cpu1) / wall;
    run.server_rss_bytes[1] = rss_max.max(rss2);
    run.generator_cpu_pct = 100.0 * (gen1 - gen0) / wall;
    let ours = [cpu2 - cpu1, gen1 - gen0];
    for i in 0..2 {
        if let (Some(a), Some(b)) = (core0[i], core1[i]) {
            run.foreign_pct[i] = 100.0 * b.since(a).foreign(ours[i], wall);
            run.core_busy_pct[i] = 100.0 * b.since(a).busy / wall;
        }
    }
    procs.tell(0, "stop")?;
    let drain = DRAIN_TIMEOUT + SLACK;
    procs.wait(&[0], "result ", drain, server, |_| {})?;
    let live = parse_result(procs, 0, LiveOutcome::from_result)?;
    let word = format!("final {}", live.last_seqs);
    for &k in &resumers {
        procs.tell(k, &word)?;
    }
    procs.wait(&resumers, "result ", drain, server, |_| {})?;
    let resumes = resumers
        .iter()
        .map(|&k| parse_result(procs, k, ResumeOutcome::from_result))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((live, resumes))
}

fn parse_result<T>(
    procs: &Procs,
    k: usize,
    from: fn(&ResultLine) -> Result<T, String>,
) -> Result<T, String> {
    let line = procs.results[k]
        .as_deref()
        .ok_or_else(|| format!("no result from client process {k}"))?;
    ResultLine::parse(line).and_then(|r| from(&r))
}

fn fill_figures(args: &Args, run: &mut Run, live: &LiveOutcome, resumes: &[ResumeOutcome]) {
    let ms = |ns: u64| ns as f64 / 1e6;
    let sum = |f: fn(&ResumeOutcome) -> u64| resumes.iter().map(f).sum::<u64>();
    run.clients = sum(|o| o.connected);
    run.resumed = sum(|o| o.resumed);
    run.caught_up = sum(|o| o.caught_up);
    run.exact = sum(|o| o.exact);
    run.gaps = sum(|o| o.gaps);
    run.duplicates = sum(|o| o.duplicates);
    run.not_recovered = sum(|o| o.not_recovered);
    run.catch_up_events = sum(|o| o.catch_up_events);
    run.connect_secs = resumes.iter().map(|o| o.connect_secs).fold(0.0, f64::max);
    let first = resumes
        .iter()
        .map(|o| o.first_resume_ns)
        .filter(|&t| t > 0)
        .min();
    let last = resumes.iter().map(|o| o.last_caught_up_ns).max();
    if let (Some(first), Some(last)) = (first, last) {
        if run.caught_up == args.clients as u64 && last > first {
            run.catch_up_secs = (last - first) as f64 / 1e9;
            run.resume_events_per_s = run.catch_up_events as f64 / run.catch_up_secs;
        }
    }
    run.base = [
        live.base_p50,
        live.base_p90,
        live.base_p99,
        live.base_p999,
        live.base_max,
    ]
    .map(ms);
    run.storm = [
        live.storm_p50,
        live.storm_p90,
        live.storm_p99,
        live.storm_p999,
        live.storm_max,
    ]
    .map(ms);
    run.srv_part = [
        live.base_srv_p50,
        live.base_srv_p99,
        live.storm_srv_p50,
        live.storm_srv_p99,
    ]
    .map(ms);
    run.live_lost = live.lost;
    run.live_seq_errors = live.seq_errors;
    run.live_published = live.published;
    run.preload_secs = live.preload_secs;
    // A storm shorter than the live schedule's step has no live latency of
    // its own (NaN), but its other figures stand.
    run.measured = run.catch_up_secs.is_finite() && live.base_count > 0;
    if live.storm_count == 0 {
        run.storm = [f64::NAN; 5];
        run.srv_part[2..].fill(f64::NAN);
    }
    for note in std::iter::once(&live.note).chain(resumes.iter().map(|o| &o.note)) {
        if !note.is_empty() {
            run.problems.push(format!("clients: {note}"));
        }
    }
    let wanted = args.clients as u64;
    let mut fail = |what: String| {
        run.problems.push(what);
        run.failed = true;
    };
    if run.caught_up < wanted {
        fail(format!(
            "{} of {wanted} clients caught up (within {} s)",
            run.caught_up, args.timeout
        ));
    }
    if run.exact < wanted {
        fail(format!(
            "{} of {wanted} clients ended holding exactly their {} events plus the live ones \
             ({} resumed Ok, {} not recovered, {} sequences skipped, {} received twice or out \
             of order)",
            run.exact, args.behind, run.resumed, run.not_recovered, run.gaps, run.duplicates
        ));
    }
    if live.lost > 0 || live.seq_errors > 0 || live.unacked > 0 || live.refused > 0 {
        fail(format!(
            "live: {} deliveries lost, {} out of order, {} publishes unanswered, {} refused",
            live.lost, live.seq_errors, live.unacked, live.refused
        ));
    }
    if live.send_lag_max > 10_000_000 {
        run.problems.push(format!(
            "the live publisher sent up to {:.1} ms late: that delay is in the latencies",
            ms(live.send_lag_max)
        ));
    }
}

fn summary(run: &Run) -> String {
    let figures = run.measured.then(|| {
        format!(
            "{} of {} caught up in {:.2} s ({} events/s to resuming clients), {} exact; live \
             p99 {:.3} ms baseline, {:.3} ms in the storm; server {:.0}% CPU in the storm, RSS up \
             to {} MiB",
            run.caught_up,
            run.clients,
            run.catch_up_secs,
            thousands(run.resume_events_per_s),
            run.exact,
            run.base[2],
            run.storm[2],
            run.server_cpu_pct[1],
            mib(run.server_rss_bytes[1], 0)
        )
    });
    report::summary(figures, &run.problems)
}

#[cfg(test)]
mod tests;
