//! The client side of `cluecast-bench fanout`: P publishers on an open-loop
//! schedule and S subscribers spread over T topics, all driven by one
//! thread (pinned by the caller) with epoll.
//!
//! Open loop. Every event has a time it is due; the publisher writes it at
//! that time whatever the server did with the earlier ones (acks are read
//! as they come, refusals counted), and the latency of a delivery is its
//! receive time minus that due time. A server that stalls therefore shows
//! the stall in full, for every event due while it stalled, instead of
//! making the generator wait and hide it (coordinated omission). If this
//! thread itself wakes late, the events go out late and the lateness counts
//! against the delivery too: `send_lag` reports how late the generator was.
//! To keep that small, the schedule is also checked every few sockets while
//! a burst of deliveries is read.
//!
//! Receive time. One thread reads thousands of sockets one after the
//! other: when an event reaches a hundred of them at once, the last is read
//! hundreds of microseconds after the first, a delay of the generator and
//! not of the appliance. So the receive time of a delivery is the kernel's timestamp
//! of the data reaching the subscriber's socket (SO_TIMESTAMPNS, the same
//! CLOCK_REALTIME), and the generator's own read delay after it is reported
//! apart (`read_delay`). Data without a kernel timestamp falls back to the
//! time it was read (`unstamped` counts those).
//!
//! Why epoll rather than the poll(2) loop of the zerocopy client: that one
//! watches 33 sockets; here thousands are mostly idle between events, and
//! poll(2) would rescan all of them on every wake-up (several per event as
//! the fan-out trickles in), costing the generator core and adding its own
//! delay to every latency measured. epoll's cost follows the ready sockets.
//! Its wait also takes a timeout in nanoseconds (`epoll_pwait2`), so sends
//! keep their schedule to within the kernel's timer slack, set to 1 µs.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use cluecast_proto::{EventHead, Frame, Limits, Position, Publish, SubscribeStatus};
use hdrhistogram::Histogram;

use crate::attack::{self, Attack};
use crate::child::{result_struct, Mark};
use crate::delivery::{Schedule, Seen, Stamp, Track, STAMP_BYTES};
use crate::dial::{self, JoinError};
use crate::net::{self, Epoll, READABLE, WRITABLE};
use crate::newcomers::Newcomers;
use crate::peers::{self, Message, Peer};
use crate::stats::{latency_histogram, Percentiles};
use crate::tls::{TlsClient, TlsLink, TlsTurn};
use crate::wire::{self, refusal, set_note, Inbox, Turn};

/// A subscriber's receive buffer: events here are a few hundred bytes.
const SUB_INBOX_BYTES: usize = 16 << 10;
/// A publisher's: only acks and pongs arrive.
const PUB_INBOX_BYTES: usize = 64 << 10;
/// Reads per ready socket per wake-up, so no socket starves the rest.
const READS_PER_TURN: usize = 4;
/// Unwritten PUBLISH bytes per publisher past which due events are not
/// sent at all (counted `unsent`): the server has stopped reading.
const PUBLISH_BACKLOG_MAX: usize = 16 << 20;
/// Longest wait, so phase changes and deadlines are seen promptly.
const WAIT_SLICE: Duration = Duration::from_millis(10);
/// Readiness reports taken per wait.
const EVENTS_PER_WAIT: usize = 1024;
/// While reading a burst, look at the publishing schedule after this many
/// ready sockets (≈ 5 µs each), so sends stay on time.
const PUBLISH_CHECK_EVERY: usize = 16;
/// Descriptors kept free besides the sockets (stdio, epoll, libraries).
const FDS_SPARE: u64 = 64;
/// How often the drain phase checks whether everything has arrived (the
/// check walks every subscriber).
const DRAIN_CHECK_EVERY: Duration = Duration::from_millis(5);
/// Progress line while connecting, every this many subscribers.
const CONNECT_PROGRESS_EVERY: usize = 1000;

/// What the server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// docs/PROTOCOL.md (the appliance, and `cluecast-bench ceiling`).
    Cluecast,
    /// A peer's: no sequence numbers, no server timestamp; loss and order
    /// come from the stamp (peers.rs).
    Peer(Peer),
}

impl Protocol {
    /// Whether the server answers every publish.
    fn acks(self) -> bool {
        matches!(self, Protocol::Cluecast | Protocol::Peer(Peer::Resp))
    }
}

/// What shapes the load beyond the fan-out itself. Times are from the
/// schedule's start (warm-up included).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Scenario {
    /// A steady rate.
    #[default]
    Fanout,
    /// The rate rises `factor`-fold in steps over `ramp`, holds for
    /// `hold`, then drops back.
    Spike {
        at: Duration,
        ramp: Duration,
        hold: Duration,
        factor: f64,
    },
    /// The first `subscribers` close their connections at once at `at`
    /// and come back spread evenly over `spread`, resuming where they
    /// were (where the protocol can); with `newcomers`, each from an
    /// address of its own, timed and retried when turned away
    /// (newcomers.rs).
    Storm {
        at: Duration,
        subscribers: usize,
        spread: Duration,
        newcomers: bool,
    },
    /// Every subscriber (a player) also sends its position
    /// `positions_per_s` times a second, upstream on its own connection
    /// (RESP, which cannot publish while subscribed, on a second one).
    Hunt { positions_per_s: f64 },
}

/// Steps of a spike's ramp: the rate rises in equal steps, reaching the
/// top one step before the ramp's end.
const RAMP_STEPS: u32 = 10;
/// Most positions per second per player (phones send one a second).
const POSITIONS_PER_S_MAX: f64 = 100.0;

impl Scenario {
    /// The publishing schedule this scenario gives `plan`.
    pub fn schedule(&self, plan: &Plan) -> Result<Schedule, String> {
        let rate = plan.rate_per_topic;
        let Scenario::Spike {
            at,
            ramp,
            hold,
            factor,
        } = *self
        else {
            return Schedule::new(plan.publishers, plan.topics, rate);
        };
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(format!("a spike factor of {factor} is not a spike"));
        }
        let at_ns = at.as_nanos() as u64;
        let step_ns = ramp.as_nanos() as u64 / u64::from(RAMP_STEPS);
        let mut profile = vec![(0, rate)];
        for k in 1..=RAMP_STEPS {
            let step_rate = rate * (1.0 + (factor - 1.0) * f64::from(k) / f64::from(RAMP_STEPS));
            profile.push((at_ns + step_ns * u64::from(k - 1), step_rate));
        }
        profile.push(((at + ramp + hold).as_nanos() as u64, rate));
        profile.dedup_by_key(|(start, _)| *start);
        Schedule::with_profile(plan.publishers, plan.topics, &profile)
    }

    /// The stretch whose latencies are reported apart (the spike, the
    /// storm's reconnecting), by due time from the schedule's start.
    pub fn phase(&self) -> Option<(Duration, Duration)> {
        match *self {
            Scenario::Spike { at, ramp, hold, .. } => Some((at, at + ramp + hold)),
            Scenario::Storm { at, spread, .. } => Some((at, at + spread)),
            Scenario::Fanout | Scenario::Hunt { .. } => None,
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub server: SocketAddr,
    pub protocol: Protocol,
    /// Topic k is `{topic_prefix}.{k}`.
    pub topic_prefix: String,
    pub topics: usize,
    pub subscribers: usize,
    pub publishers: usize,
    /// Events per second per topic, all publishers together.
    pub rate_per_topic: f64,
    pub payload_bytes: usize,
    /// Publishing before the measured window.
    pub warmup: Duration,
    /// Publishing inside the measured window.
    pub duration: Duration,
    /// After publishing stops, longest wait for everything to arrive.
    pub drain_timeout: Duration,
    /// For TCP connect and each handshake answer.
    pub connect_timeout: Duration,
    pub scenario: Scenario,
    /// Speak TLS 1.3 on every connection (the appliance's `--tls-cert`);
    /// None: plain TCP.
    pub tls: Option<TlsClient>,
    /// Attackers alongside, from the warm-up's start to the window's end
    /// (attack.rs).
    pub attack: Option<Attack>,
}

result_struct! {
    /// What the client side saw. Times in nanoseconds.
    pub struct Outcome {
        /// Seconds spent connecting and subscribing everyone.
        pub connect_secs: f64,
        /// Wall time of the measured window (the publishing after warm-up).
        pub window_secs: f64,
        /// Events due inside the window, all publishers.
        pub window_scheduled: u64,
        /// Of those, PUBLISHes handed to the socket.
        pub window_sent: u64,
        /// Deliveries received inside the window, all subscribers.
        pub window_deliveries: u64,
        /// Latency (receive − due) of the deliveries of events due inside
        /// the window, wherever they arrived (window or drain).
        pub lat_count: u64,
        pub lat_p50: u64,
        pub lat_p90: u64,
        pub lat_p99: u64,
        pub lat_p999: u64,
        pub lat_p9999: u64,
        pub lat_max: u64,
        /// The server's part of it: receive − the EVENT's publish_ts_ns
        /// (when the server sequenced it).
        pub fanout_p50: u64,
        pub fanout_p99: u64,
        pub fanout_max: u64,
        /// The scenario's phase (the spike; the storm's reconnecting):
        /// latency of the deliveries of events due in it (to subscribers
        /// that were connected). Zero without one.
        pub phase_count: u64,
        pub phase_p50: u64,
        pub phase_p99: u64,
        pub phase_p999: u64,
        pub phase_max: u64,
        /// The window before the phase: the steady state it is compared
        /// with.
        pub steady_p99: u64,
        pub steady_p999: u64,
        /// Storm: subscribers dropped, and back subscribed.
        pub storm_dropped: u64,
        pub storm_rejoined: u64,
        /// Storm: resumes the server could not make whole (its history
        /// no longer held what was missed).
        pub storm_gaps: u64,
        /// Storm: from the drop until the last subscriber back had
        /// received an event due after its return (so everything it
        /// missed before).
        pub storm_resume_ns: u64,
        /// Deliveries of events due while their subscriber was away
        /// (replayed on resume; not in the latencies).
        pub catch_up_deliveries: u64,
        /// Hunt: positions sent upstream.
        pub positions_sent: u64,
        /// Storm with newcomers (newcomers.rs): how many tried, got
        /// SUBSCRIBED, attempts turned away before WELCOME and newcomers
        /// turned away at least once; connect-to-SUBSCRIBED p50/p99/max.
        pub newcomers: u64,
        pub newcomers_subscribed: u64,
        pub newcomer_refusals: u64,
        pub newcomers_refused: u64,
        pub newcomer_p50: u64,
        pub newcomer_p99: u64,
        pub newcomer_max: u64,
        /// The attackers (attack.rs): connections opened, and how each
        /// ended.
        pub attack_opened: u64,
        pub attack_failed: u64,
        pub attack_goaway_server_full: u64,
        pub attack_errors: u64,
        pub attack_handshake_timeouts: u64,
        pub attack_closed_silently: u64,
        pub attack_welcomed: u64,
        pub attack_held: u64,
        /// The rest: publish_ts_ns − due (sending, the server's receive
        /// and sequencing), per delivery.
        pub publish_p99: u64,
        pub publish_max: u64,
        /// How long deliveries waited in their socket for this process to
        /// read them (not part of the latency).
        pub read_delay_p50: u64,
        pub read_delay_p99: u64,
        pub read_delay_max: u64,
        /// Reads whose data had no kernel timestamp (the receive time of
        /// their deliveries is the read time).
        pub unstamped: u64,
        /// How late the generator wrote PUBLISHes of the window.
        pub send_lag_p99: u64,
        pub send_lag_max: u64,
        /// Largest unwritten PUBLISH backlog of one publisher, bytes.
        pub backlog_max_bytes: u64,
        /// Whole run: events due (publishing stopped after these).
        pub scheduled: u64,
        /// PUBLISHes handed to the socket.
        pub sent: u64,
        /// Acknowledged with status 0.
        pub acked: u64,
        /// Acknowledged with a non-zero status (not published).
        pub refused: u64,
        /// Due but never sent (backlog full, or the publisher's connection
        /// gone).
        pub unsent: u64,
        /// Sent and never acknowledged.
        pub unacked: u64,
        /// Deliveries received, whole run, duplicates included.
        pub delivered: u64,
        /// Deliveries the subscribers should have received: every
        /// published event of their topic.
        pub expected: u64,
        /// Expected and never received.
        pub lost: u64,
        /// Received more than once.
        pub duplicated: u64,
        /// Received after a later event of the same publisher and topic.
        pub reordered: u64,
        /// EVENTs without a readable stamp, or on the wrong topic.
        pub invalid: u64,
        /// Per-topic sequence numbers that did not follow (gap, repeat).
        pub seq_errors: u64,
        /// Received although their publish was refused or never sent.
        pub excluded_received: u64,
        /// The loss figures may be off: too many gaps to remember.
        pub approximate: bool,
        pub subscribers_dropped: u64,
        pub publishers_dropped: u64,
        /// Everything expected arrived before the drain timeout.
        pub drained: bool,
        /// CPU seconds of this process inside the window.
        pub generator_cpu_secs: f64,
    }
}

impl Outcome {
    /// The latency percentiles: p50, p90, p99, p99.9, p99.99, max.
    pub fn latency(&self) -> [u64; 6] {
        let o = self;
        [
            o.lat_p50,
            o.lat_p90,
            o.lat_p99,
            o.lat_p999,
            o.lat_p9999,
            o.lat_max,
        ]
    }

    /// The phase's latency percentiles: p50, p99, p99.9, max.
    pub fn phase(&self) -> [u64; 4] {
        let o = self;
        [o.phase_p50, o.phase_p99, o.phase_p999, o.phase_max]
    }
}

// ---------------------------------------------------------------------------
// Connections

struct Sub {
    stream: TcpStream,
    inbox: Inbox,
    topic: usize,
    next_seq: u64,
    /// What arrived from each publisher.
    tracks: Vec<Track>,
    alive: bool,
    /// Disconnected by a storm, not yet back.
    away: bool,
    /// Events due before this (CLOCK_REALTIME ns) were missed while away:
    /// their deliveries are catch-up, not latency. 0: never away.
    back_ns: u64,
    /// When the first event due after `back_ns` arrived.
    caught_up_ns: Option<u64>,
    /// Unwritten PINGs and positions.
    out: Vec<u8>,
    /// RESP only: the connection positions go out on (a subscribed RESP
    /// connection cannot publish). Its replies are read and dropped.
    upstream: Option<TcpStream>,
    /// The TLS session over `stream`, with `--tls`.
    tls: Option<Box<TlsLink>>,
}

impl Sub {
    /// Something waits to be written: queued PINGs or positions, or TLS
    /// records not yet taken by the socket.
    fn has_output(&self) -> bool {
        !self.out.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }
}

struct Pub {
    stream: TcpStream,
    inbox: Inbox,
    out: Vec<u8>,
    out_pos: usize,
    /// Payload buffer: stamp, then padding.
    payload: Vec<u8>,
    /// The next counter (every counter below it was due).
    next: u64,
    sent: u64,
    acks: u64,
    refused: u64,
    unsent: u64,
    /// Counters not published (refused, never sent), in no order.
    excluded: Vec<u64>,
    /// How many of them per topic.
    excluded_on_topic: Vec<u64>,
    alive: bool,
    /// Registered for writability (the socket refused bytes).
    want_out: bool,
    /// The TLS session over `stream`, with `--tls`: `out` is plaintext,
    /// encrypted as the session takes it.
    tls: Option<Box<TlsLink>>,
}

impl Pub {
    /// A publisher that has sent nothing yet, on a connected socket.
    fn new(stream: TcpStream, inbox: Inbox, payload: Vec<u8>, topics: usize) -> Pub {
        Pub {
            inbox,
            stream,
            out: Vec::with_capacity(64 << 10),
            out_pos: 0,
            payload,
            next: 0,
            sent: 0,
            acks: 0,
            refused: 0,
            unsent: 0,
            excluded: Vec::new(),
            excluded_on_topic: vec![0; topics],
            alive: true,
            want_out: false,
            tls: None,
        }
    }

    fn backlog(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Writes what the socket takes. Ok(true) when everything went.
    fn flush(&mut self) -> Result<bool, String> {
        if self.tls.is_some() {
            return self.flush_tls();
        }
        crate::net::write_backlog(
            &mut self.stream,
            &mut self.out,
            &mut self.out_pos,
            PUBLISH_BACKLOG_MAX / 4,
        )
    }

    /// [`Pub::flush`] over TLS: the session takes the plaintext (as much
    /// as its 64 KiB of records allow; the rest stays in `out`, counted in
    /// the backlog) and writes records as the socket takes them. Ok(true)
    /// when every byte is taken and every record written.
    fn flush_tls(&mut self) -> Result<bool, String> {
        let tls = self.tls.as_mut().expect("a TLS publisher");
        let (taken, written) = tls
            .send(&mut self.stream, &self.out[self.out_pos..])
            .map_err(|e| format!("writing: {e}"))?;
        self.out_pos += taken;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            return Ok(written);
        }
        if self.out_pos >= PUBLISH_BACKLOG_MAX / 4 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(false)
    }

    fn exclude(&mut self, counter: u64, topic: usize) {
        self.excluded.push(counter);
        self.excluded_on_topic[topic] += 1;
    }

    /// The counter of an ack's request id: the newest counter with those
    /// low 32 bits (fewer than 2^32 are ever in flight).
    fn counter_of(&self, request_id: u32) -> Option<u64> {
        let last = self.next.checked_sub(1)?;
        last.checked_sub(u64::from((last as u32).wrapping_sub(request_id)))
    }
}

/// The first problem of a publisher and the first of a subscriber: later
/// ones are usually consequences, but a publisher's is never hidden behind
/// thousands of subscribers'.
#[derive(Default)]
struct Notes {
    publisher: String,
    subscriber: String,
}

impl Notes {
    fn publisher(&mut self, p: usize, text: impl std::fmt::Display) {
        set_note(&mut self.publisher, format!("publisher {p}: {text}"));
    }

    fn subscriber(&mut self, i: usize, text: impl std::fmt::Display) {
        set_note(&mut self.subscriber, format!("subscriber {i}: {text}"));
    }

    fn joined(self) -> String {
        [self.publisher, self.subscriber]
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// What the receive path updates, apart from the subscriber itself.
struct Rx {
    schedule: Schedule,
    /// Events due in [lo, hi) (CLOCK_REALTIME ns) have their latency kept.
    window_lo: u64,
    window_hi: u64,
    /// The scenario's phase inside the window (empty without one); the
    /// window before it is the steady state.
    phase_lo: u64,
    phase_hi: u64,
    latency: Histogram<u64>,
    phase: Histogram<u64>,
    steady: Histogram<u64>,
    catch_up: u64,
    fanout: Histogram<u64>,
    publish: Histogram<u64>,
    read_delay: Histogram<u64>,
    unstamped: u64,
    delivered: u64,
    invalid: u64,
    seq_errors: u64,
}

impl Rx {
    /// One EVENT, received at `recv_ns` (kernel) and read at `read_ns`.
    fn delivery(&mut self, head: EventHead<'_>, recv_ns: u64, read_ns: u64, sub: &mut SubView<'_>) {
        self.delivered += 1;
        let seq = head.seq();
        if seq != *sub.next_seq {
            self.seq_errors += 1;
        }
        *sub.next_seq = seq.wrapping_add(1);
        match head.publish_ts_ns().zip(head.payload()) {
            Some((ts, payload)) => self.stamped(payload, Some(ts), recv_ns, read_ns, sub),
            None => self.invalid += 1,
        }
    }

    /// One delivery of `payload`; `server_ts` is when the server sequenced
    /// it, if the protocol says (RESP does not).
    fn stamped(
        &mut self,
        payload: &[u8],
        server_ts: Option<u64>,
        recv_ns: u64,
        read_ns: u64,
        sub: &mut SubView<'_>,
    ) {
        let Some(stamp) = Stamp::read(payload) else {
            self.invalid += 1;
            return;
        };
        let Some(track) = sub.tracks.get_mut(stamp.publisher as usize) else {
            self.invalid += 1;
            return;
        };
        if self.schedule.topic_of(stamp.counter) != sub.topic {
            self.invalid += 1;
            return;
        }
        if track.see(self.schedule.index_on_topic(stamp.counter)) == Seen::Duplicate {
            return;
        }
        if stamp.scheduled_ns < sub.back_ns {
            // Missed while away: its wait is the outage, not latency.
            self.catch_up += 1;
            return;
        }
        if sub.back_ns > 0 && sub.caught_up_ns.is_none() {
            *sub.caught_up_ns = Some(recv_ns);
        }
        if (self.window_lo..self.window_hi).contains(&stamp.scheduled_ns) {
            let latency = recv_ns.saturating_sub(stamp.scheduled_ns);
            self.latency.saturating_record(latency);
            if (self.phase_lo..self.phase_hi).contains(&stamp.scheduled_ns) {
                self.phase.saturating_record(latency);
            } else if stamp.scheduled_ns < self.phase_lo {
                self.steady.saturating_record(latency);
            }
            if let Some(ts) = server_ts {
                self.fanout.saturating_record(recv_ns.saturating_sub(ts));
                self.publish
                    .saturating_record(ts.saturating_sub(stamp.scheduled_ns));
            }
            self.read_delay
                .saturating_record(read_ns.saturating_sub(recv_ns));
        }
    }
}

/// The publishing schedule and what the sending side measured.
struct Publishing<'a> {
    protocol: Protocol,
    schedule: Schedule,
    topics: &'a [String],
    /// CLOCK_REALTIME at the schedule's start.
    real0: u64,
    /// The window, in ns from the schedule's start; nothing is due after
    /// `end_ns`.
    warm_ns: u64,
    end_ns: u64,
    send_lag: Histogram<u64>,
    window_sent: u64,
    backlog_max: usize,
}

impl Publishing<'_> {
    /// Encodes every event due by `el` (ns from the start) and writes what
    /// the sockets take. Returns when the next event is due (u64::MAX: no
    /// more). A publisher whose connection fails is marked dead.
    fn publish_due(
        &mut self,
        pubs: &mut [Pub],
        epoll: &Epoll,
        el: u64,
        notes: &mut Notes,
    ) -> Result<u64, String> {
        let mut next_due = u64::MAX;
        let horizon = el.saturating_add(1).min(self.end_ns);
        for (p, pb) in pubs.iter_mut().enumerate() {
            if !pb.alive {
                continue;
            }
            let due_now = self.schedule.due_before(p, horizon);
            while pb.next < due_now {
                let n = pb.next;
                let due = self.schedule.due_ns(p, n);
                let topic = self.schedule.topic_of(n);
                pb.next += 1;
                if pb.backlog() >= PUBLISH_BACKLOG_MAX {
                    pb.unsent += 1;
                    pb.exclude(n, topic);
                    continue;
                }
                Stamp {
                    publisher: p as u32,
                    counter: n,
                    scheduled_ns: self.real0 + due,
                }
                .write(&mut pb.payload);
                let name = self.topics[topic].as_bytes();
                match self.protocol {
                    Protocol::Cluecast => Frame::Publish(Publish {
                        request_id: n as u32,
                        topic: name,
                        payload: &pb.payload,
                    })
                    .encode(&mut pb.out),
                    Protocol::Peer(peer) => peers::publish(peer, &mut pb.out, name, &pb.payload),
                }
                pb.sent += 1;
                if !self.protocol.acks() {
                    // Nothing will answer: handed over counts as answered.
                    pb.acks += 1;
                }
                if (self.warm_ns..self.end_ns).contains(&due) {
                    self.window_sent += 1;
                    self.send_lag.saturating_record(el - due);
                }
            }
            if pb.next < self.schedule.due_before(p, self.end_ns) {
                next_due = next_due.min(self.schedule.due_ns(p, pb.next));
            }
            self.backlog_max = self.backlog_max.max(pb.backlog());
            // A publisher waiting for writability is flushed when it comes.
            if pb.backlog() == 0 || pb.want_out {
                continue;
            }
            match pb.flush() {
                Ok(true) => {}
                Ok(false) => {
                    pb.want_out = true;
                    epoll.ctl(
                        libc::EPOLL_CTL_MOD,
                        pb.stream.as_raw_fd(),
                        p,
                        READABLE | WRITABLE,
                    )?;
                }
                Err(e) => {
                    pb.alive = false;
                    let _ = epoll.ctl(libc::EPOLL_CTL_DEL, pb.stream.as_raw_fd(), p, 0);
                    notes.publisher(p, e);
                }
            }
        }
        Ok(next_due)
    }
}

/// The parts of a [`Sub`] the receive path updates while its inbox is
/// borrowed.
struct SubView<'a> {
    topic: usize,
    next_seq: &'a mut u64,
    tracks: &'a mut [Track],
    back_ns: u64,
    caught_up_ns: &'a mut Option<u64>,
}

/// Reads what a subscriber's socket holds; Ok(true) when it now has an
/// answer to write (a PONG) and had nothing queued before.
fn read_sub(s: &mut Sub, protocol: Protocol, limits: &Limits, rx: &mut Rx) -> Result<bool, String> {
    if s.tls.is_some() {
        return read_sub_tls(s, protocol, limits, rx);
    }
    let out_before = s.out.len();
    for _ in 0..READS_PER_TURN {
        let (n, stamp) = match wire::turn(s.inbox.fill_stamped(&s.stream), |r| r.0)? {
            Turn::Read(r) => r,
            Turn::Again => continue,
            Turn::Empty => break,
        };
        take_sub_bytes(s, protocol, limits, rx, stamp)?;
        if n < s.inbox.free_min() {
            break; // most likely emptied the socket
        }
    }
    Ok(out_before == 0 && !s.out.is_empty())
}

/// [`read_sub`] over TLS: the ciphertext read as there (kernel receive
/// timestamps, READS_PER_TURN reads at most), every record it completes
/// decrypted and handed over in the same turn.
fn read_sub_tls(
    s: &mut Sub,
    protocol: Protocol,
    limits: &Limits,
    rx: &mut Rx,
) -> Result<bool, String> {
    let had_output = s.has_output();
    let mut turn = TlsTurn::new(READS_PER_TURN);
    loop {
        let tls = s.tls.as_mut().expect("a TLS subscriber");
        let Some((_, stamp)) = turn.next(tls, &s.stream, &mut s.inbox)? else {
            break;
        };
        take_sub_bytes(s, protocol, limits, rx, stamp)?;
    }
    Ok(!had_output && s.has_output())
}

/// Handles what one read put in a subscriber's inbox; `stamp` is the
/// kernel's receive time of the read.
#[inline]
fn take_sub_bytes(
    s: &mut Sub,
    protocol: Protocol,
    limits: &Limits,
    rx: &mut Rx,
    stamp: Option<u64>,
) -> Result<(), String> {
    // One clock read per read: the events in it are handled together.
    let read_ns = cluecast_sys::realtime_ns();
    let recv_ns = stamp.unwrap_or_else(|| {
        rx.unstamped += 1;
        read_ns
    });
    let mut view = SubView {
        topic: s.topic,
        next_seq: &mut s.next_seq,
        tracks: &mut s.tracks,
        back_ns: s.back_ns,
        caught_up_ns: &mut s.caught_up_ns,
    };
    match protocol {
        Protocol::Cluecast => s.inbox.drain(
            limits,
            |head, _| rx.delivery(head, recv_ns, read_ns, &mut view),
            |frame| match refusal(frame) {
                Some(why) => Err(why),
                None => Ok(()), // PONG
            },
        ),
        Protocol::Peer(peer) => {
            let out = &mut s.out;
            peers::drain(&mut s.inbox, peer, |m| match m {
                Message::Delivery(payload) => {
                    rx.delivered += 1;
                    rx.stamped(payload, None, recv_ns, read_ns, &mut view);
                    Ok(())
                }
                Message::Ping => {
                    peers::pong(out);
                    Ok(())
                }
                Message::Other => Ok(()),
                Message::Ack => Err("an answer to a publish on a subscriber".into()),
            })
        }
    }
}

fn read_pub(
    p: &mut Pub,
    protocol: Protocol,
    limits: &Limits,
    schedule: &Schedule,
) -> Result<(), String> {
    if p.tls.is_some() {
        return read_pub_tls(p, protocol, limits, schedule);
    }
    for _ in 0..READS_PER_TURN {
        let n = match wire::turn(p.inbox.fill(&mut p.stream), |&n| n)? {
            Turn::Read(n) => n,
            Turn::Again => continue,
            Turn::Empty => return Ok(()),
        };
        take_pub_bytes(p, protocol, limits, schedule)?;
        if n < p.inbox.free_min() {
            return Ok(());
        }
    }
    Ok(())
}

/// [`read_pub`] over TLS (see [`read_sub_tls`]).
fn read_pub_tls(
    p: &mut Pub,
    protocol: Protocol,
    limits: &Limits,
    schedule: &Schedule,
) -> Result<(), String> {
    let mut turn = TlsTurn::new(READS_PER_TURN);
    loop {
        let tls = p.tls.as_mut().expect("a TLS publisher");
        if turn.next(tls, &p.stream, &mut p.inbox)?.is_none() {
            return Ok(());
        }
        take_pub_bytes(p, protocol, limits, schedule)?;
    }
}

/// Handles what one read put in a publisher's inbox: acks (refusals
/// remembered), a peer's PINGs.
#[inline]
fn take_pub_bytes(
    p: &mut Pub,
    protocol: Protocol,
    limits: &Limits,
    schedule: &Schedule,
) -> Result<(), String> {
    if let Protocol::Peer(peer) = protocol {
        // RESP's PUBLISH answers the number of receivers; an error
        // reply cannot be tied to its counter (unsent ones leave no
        // reply), so it ends the publisher. A NATS PING is answered
        // with the next write.
        let (acks, sent, out) = (&mut p.acks, p.sent, &mut p.out);
        return peers::drain(&mut p.inbox, peer, |m| match m {
            Message::Ack if *acks < sent => {
                *acks += 1;
                Ok(())
            }
            Message::Ping => {
                peers::pong(out);
                Ok(())
            }
            Message::Other => Ok(()),
            other => Err(format!("a publisher got {other:?}")),
        });
    }
    let mut refused = Vec::new();
    let (acks, sent) = (&mut p.acks, p.sent);
    p.inbox.drain_acks(limits, |ack| {
        if *acks >= sent {
            return Err("PUBLISH_ACK for no PUBLISH".into());
        }
        *acks += 1;
        if ack.status != 0 {
            refused.push(ack.request_id);
        }
        Ok(())
    })?;
    for request_id in refused {
        let counter = p
            .counter_of(request_id)
            .ok_or_else(|| format!("PUBLISH_ACK for unknown request {request_id}"))?;
        p.refused += 1;
        p.exclude(counter, schedule.topic_of(counter));
    }
    Ok(())
}

/// Whether every publish is answered and every live subscriber has every
/// event it should.
fn all_in(subs: &[Sub], pubs: &[Pub], schedule: &Schedule) -> bool {
    if pubs.iter().any(|p| p.alive && p.acks < p.sent) {
        return false;
    }
    subs.iter().filter(|s| s.alive).all(|s| {
        pubs.iter().zip(&s.tracks).all(|(p, t)| {
            let want = schedule.count_on_topic(p.next, s.topic) - p.excluded_on_topic[s.topic];
            t.unique >= want
        })
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measure,
    Drain,
}

/// A connection past its handshake (and SUBSCRIBE, for a subscriber), still
/// blocking.
pub struct Joined {
    pub stream: TcpStream,
    /// Bytes read past the last answer awaited.
    pub buf: Vec<u8>,
    /// The sequence of the first event to come (1 where the protocol has
    /// none).
    pub next_seq: u64,
    /// A resume that could not be made whole (cluecast's NotRecovered or
    /// EpochChanged).
    pub gap: bool,
    /// The TLS session over `stream`, when joined with TLS; plaintext it
    /// had decrypted is in `buf`.
    pub tls: Option<Box<TlsLink>>,
}

/// Connects to `server` speaking `protocol` as `id` (over TLS with `tls`:
/// the appliance only; from the local address `source`, the appliance
/// only, when given), subscribing to `topic` if given, live or (where the
/// protocol can) resuming after a sequence; the server's limits and
/// heartbeat, if it announces them, go to `limits` and `heartbeat_ms`.
#[allow(clippy::too_many_arguments)]
pub fn join(
    protocol: Protocol,
    server: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
    id: &str,
    topic: Option<&str>,
    resume_after: Option<u64>,
    limits: &mut Limits,
    heartbeat_ms: &mut u32,
    tls: Option<&TlsClient>,
) -> Result<Joined, JoinError> {
    if let Protocol::Peer(peer) = protocol {
        if tls.is_some() || source.is_some() {
            return Err(JoinError::Failed(
                "TLS and source addresses are for the appliance only".into(),
            ));
        }
        let (stream, buf) = peers::join(peer, server, timeout, id, topic)?;
        return Ok(Joined {
            stream,
            buf,
            next_seq: 1,
            gap: false,
            tls: None,
        });
    }
    if let Some(tls) = tls {
        let mut c = dial::connect_tls_from(server, source, id, timeout, tls)?;
        (*limits, *heartbeat_ms) = (c.conn.limits, c.heartbeat_ms);
        let (next_seq, gap) = subscribe(&mut c, topic, resume_after, timeout)?;
        let (stream, mut buf) = c.conn.into_parts();
        let (link, stream) = TlsLink::from_stream(stream, &mut buf)?;
        return Ok(Joined {
            stream,
            buf,
            next_seq,
            gap,
            tls: Some(Box::new(link)),
        });
    }
    let mut c = dial::connect_from(server, source, id, timeout)?;
    (*limits, *heartbeat_ms) = (c.conn.limits, c.heartbeat_ms);
    let (next_seq, gap) = subscribe(&mut c, topic, resume_after, timeout)?;
    let (stream, buf) = c.conn.into_parts();
    Ok(Joined {
        stream,
        buf,
        next_seq,
        gap,
        tls: None,
    })
}

/// The SUBSCRIBE of [`join`], if `topic` is given: the sequence of the
/// first event to come, and whether a resume left a gap.
fn subscribe<S: net::Blocking>(
    c: &mut wire::Connected<S>,
    topic: Option<&str>,
    resume_after: Option<u64>,
    timeout: Duration,
) -> Result<(u64, bool), String> {
    Ok(match topic {
        Some(t) => {
            let s = c.subscribe(t.as_bytes(), resume_after, timeout)?;
            if resume_after.is_none() && s.status != SubscribeStatus::Ok {
                return Err(format!("SUBSCRIBED with status {:?}", s.status));
            }
            (s.next_seq, s.status != SubscribeStatus::Ok)
        }
        None => (1, false),
    })
}

/// Raises the open-file limit and checks the sockets fit well below it.
fn check_descriptors(sockets: usize) -> Result<(), String> {
    let lim = cluecast_sys::raise_nofile_limit().map_err(|e| e.to_string())?;
    let need = sockets as u64 + FDS_SPARE;
    if need > lim.soft {
        return Err(format!(
            "{sockets} sockets need about {need} descriptors; the open-file limit is {}",
            lim.soft
        ));
    }
    Ok(())
}

/// The live one-line progress display, on a terminal only.
struct Progress {
    next: Instant,
    delivered: u64,
    shown: bool,
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(1);

    fn new(now: Instant) -> Option<Progress> {
        // SAFETY: isatty on a descriptor number has no preconditions.
        let tty = unsafe { libc::isatty(2) } == 1;
        tty.then_some(Progress {
            next: now + Self::EVERY,
            delivered: 0,
            shown: false,
        })
    }

    /// Rewrites the line (due once `next` has passed): phase, time,
    /// delivery rate.
    fn tick(
        &mut self,
        now: Instant,
        phase: Phase,
        el_s: f64,
        total_s: f64,
        delivered: u64,
        away: usize,
    ) {
        let rate =
            (delivered - self.delivered) as f64 / (now - self.next + Self::EVERY).as_secs_f64();
        (self.next, self.delivered, self.shown) = (now + Self::EVERY, delivered, true);
        let what = match phase {
            Phase::Warmup => "warm-up",
            Phase::Measure => "measuring",
            Phase::Drain => "draining",
        };
        eprint!(
            "\r{what} {el_s:5.1} / {total_s:.1} s, {rate:9.0} deliveries/s, {away} subscribers away  "
        );
    }

    fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

/// A storm's progress: who is away, who is back.
struct StormRun {
    /// When the drop happens and over how long they come back, ns from
    /// the start.
    at_ns: u64,
    spread_ns: u64,
    /// Subscribers 0..count take part.
    count: usize,
    /// CLOCK_REALTIME of the drop, once it happened.
    dropped_real_ns: Option<u64>,
    /// Subscribers whose time to come back has come (the first ones).
    rejoined: usize,
    gaps: u64,
    /// Each from its own address, timed, tried again when turned away.
    newcomers: Option<Newcomers>,
}

impl StormRun {
    /// When subscriber `k` (< count) comes back, ns from the start.
    fn back_at(&self, k: usize) -> u64 {
        self.at_ns + self.spread_ns * k as u64 / self.count as u64
    }

    /// When something is next to do, ns from the start.
    fn next_ns(&self) -> u64 {
        let retry_ns = self.newcomers.as_ref().map_or(u64::MAX, Newcomers::next_ns);
        match self.dropped_real_ns {
            None => self.at_ns,
            Some(_) if self.rejoined < self.count => self.back_at(self.rejoined).min(retry_ns),
            Some(_) => retry_ns,
        }
    }

    /// The next subscriber due to connect by `now_ns` (from the start):
    /// the next to come back, else a newcomer's retry.
    fn due(&mut self, now_ns: u64) -> Option<usize> {
        self.dropped_real_ns?;
        if self.rejoined < self.count && now_ns >= self.back_at(self.rejoined) {
            self.rejoined += 1;
            return Some(self.rejoined - 1);
        }
        self.newcomers.as_mut()?.due(now_ns)
    }
}

/// The hunt's upstream: position `m` of the whole stream is player
/// `m % S`'s, due at `m / (S × rate)` s.
struct Positions {
    per_s: f64,
    next: u64,
    sent: u64,
    /// A position body: fixed coordinates, the time stamped per send.
    fix: Position,
    /// The peers' channel for each hunt's positions (`HUNT.pos`).
    channels: Vec<String>,
}

impl Positions {
    fn due_before(&self, ns: u64) -> u64 {
        (ns as f64 * self.per_s / 1e9).ceil() as u64
    }

    fn due_ns(&self, m: u64) -> u64 {
        (m as f64 * 1e9 / self.per_s) as u64
    }

    /// Queues every position due by `el` on its player's connection;
    /// players with bytes to write are added to `writing`.
    fn send_due(&mut self, el: u64, plan: &Plan, subs: &mut [Sub], writing: &mut Vec<usize>) {
        let due = self.due_before(el.saturating_add(1));
        if due <= self.next {
            return;
        }
        let ts_ms = cluecast_sys::realtime_ns() / 1_000_000;
        for m in self.next..due {
            let i = (m % subs.len() as u64) as usize;
            let s = &mut subs[i];
            if !s.alive || s.away {
                continue;
            }
            if !s.has_output() {
                writing.push(i);
            }
            let fix = Position {
                client_ts_ms: ts_ms,
                ..self.fix
            };
            match plan.protocol {
                Protocol::Cluecast => Frame::Position(fix).encode(&mut s.out),
                Protocol::Peer(peer) => {
                    let mut body = [0u8; 20];
                    body[0..4].copy_from_slice(&fix.lat_e7.to_be_bytes());
                    body[4..8].copy_from_slice(&fix.lon_e7.to_be_bytes());
                    body[8..12].copy_from_slice(&fix.accuracy_cm.to_be_bytes());
                    body[12..20].copy_from_slice(&fix.client_ts_ms.to_be_bytes());
                    let channel = self.channels[s.topic].as_bytes();
                    peers::publish(peer, &mut s.out, channel, &body);
                }
            }
            self.sent += 1;
        }
        self.next = due;
    }
}

/// Brings subscriber `i` back after a storm on a fresh connection (from
/// `source`, if given), resuming after the last sequence it had; Ok(true)
/// when the resume left a gap.
#[allow(clippy::too_many_arguments)]
fn rejoin(
    s: &mut Sub,
    plan: &Plan,
    source: Option<IpAddr>,
    topic: &str,
    id: &str,
    inbox: (usize, usize),
    epoll: &Epoll,
    token: usize,
) -> Result<bool, JoinError> {
    let (mut limits, mut heartbeat_ms) = (Limits::DEFAULT, 0);
    let c = join(
        plan.protocol,
        plan.server,
        source,
        plan.connect_timeout,
        id,
        Some(topic),
        Some(s.next_seq - 1),
        &mut limits,
        &mut heartbeat_ms,
        plan.tls.as_ref(),
    )?;
    c.stream
        .set_nonblocking(true)
        .and_then(|_| net::enable_rx_timestamps(&c.stream))
        .map_err(|e| format!("socket options: {e}"))?;
    s.inbox = Inbox::new(&c.buf, inbox.0, inbox.1)?;
    s.stream = c.stream;
    s.tls = c.tls;
    s.next_seq = c.next_seq;
    s.away = false;
    s.back_ns = cluecast_sys::realtime_ns();
    s.caught_up_ns = None;
    epoll.ctl(libc::EPOLL_CTL_ADD, s.stream.as_raw_fd(), token, READABLE)?;
    Ok(c.gap)
}

/// Writes what a subscriber has queued (PINGs, positions) on the
/// connection it writes on; RESP's upstream replies are read and dropped.
fn write_queued(s: &mut Sub) -> io::Result<()> {
    if let Some(tls) = s.tls.as_mut() {
        let (taken, _) = tls.send(&mut s.stream, &s.out)?;
        s.out.drain(..taken);
        return Ok(());
    }
    match s.upstream.as_mut() {
        Some(up) => {
            let mut sink = [0u8; 4096];
            loop {
                match io::Read::read(up, &mut sink) {
                    Ok(0) => return Err(io::Error::other("the upstream connection closed")),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            net::write_some(up, &mut s.out)
        }
        None => net::write_some(&mut s.stream, &mut s.out),
    }
}

/// Runs the plan; `mark` is called at the start and end of the measured
/// window (always both, in order, unless setting up fails). Returns what
/// was seen and the latency distribution of the window (ns).
pub fn run(plan: &Plan, mut mark: impl FnMut(Mark)) -> Result<(Outcome, Histogram<u64>), String> {
    if plan.subscribers == 0 {
        return Err("need at least one subscriber".into());
    }
    if plan.payload_bytes < STAMP_BYTES {
        return Err(format!(
            "--payload must be at least {STAMP_BYTES} bytes (the stamp)"
        ));
    }
    let schedule = plan.scenario.schedule(plan)?;
    let topics: Vec<String> = (0..plan.topics)
        .map(|k| format!("{}.{k}", plan.topic_prefix))
        .collect();
    let mut storm = None;
    let mut positions = None;
    match plan.scenario {
        Scenario::Storm {
            at,
            subscribers,
            spread,
            newcomers,
        } => {
            if subscribers == 0 || subscribers > plan.subscribers {
                return Err(format!(
                    "a storm of {subscribers} out of {} subscribers",
                    plan.subscribers
                ));
            }
            storm = Some(StormRun {
                at_ns: at.as_nanos() as u64,
                spread_ns: spread.as_nanos() as u64,
                count: subscribers,
                dropped_real_ns: None,
                rejoined: 0,
                gaps: 0,
                newcomers: newcomers.then(|| Newcomers::new(subscribers)),
            });
        }
        Scenario::Hunt { positions_per_s } => {
            if !(positions_per_s > 0.0 && positions_per_s <= POSITIONS_PER_S_MAX) {
                return Err(format!(
                    "{positions_per_s} positions/s per player: must be in (0, {POSITIONS_PER_S_MAX}]"
                ));
            }
            positions = Some(Positions {
                per_s: positions_per_s * plan.subscribers as f64,
                next: 0,
                sent: 0,
                // A square in a city centre, to within 5 m.
                fix: Position {
                    lat_e7: 525_200_000,
                    lon_e7: 134_050_000,
                    accuracy_cm: 500,
                    client_ts_ms: 1,
                },
                channels: topics.iter().map(|t| format!("{t}.pos")).collect(),
            });
        }
        Scenario::Fanout | Scenario::Spike { .. } => {}
    }
    let upstreams = positions.is_some() && plan.protocol == Protocol::Peer(Peer::Resp);
    let sockets = plan.subscribers * if upstreams { 2 } else { 1 } + plan.publishers;
    check_descriptors(sockets + plan.attack.as_ref().map_or(0, |a| a.sockets_max))?;
    // Wake-ups within 1 µs of the schedule instead of the default 50 µs.
    // SAFETY: prctl with an integer argument.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
    let topic_len_max = topics.iter().map(String::len).max().unwrap_or(0);
    // Each EVENT is looked at up to the end of the payload's stamp.
    let peek = EventHead::payload_at(topic_len_max) + STAMP_BYTES;
    let id_base = format!("fanout-{}", std::process::id());

    // A RESP message is parsed whole, so it must fit in a quarter of the
    // inbox; EVENTs are looked at by their first bytes only.
    let sub_inbox_bytes = match plan.protocol {
        Protocol::Cluecast => SUB_INBOX_BYTES,
        Protocol::Peer(_) => SUB_INBOX_BYTES.max(4 * (plan.payload_bytes + 512)),
    };

    // Subscribers first, so every one of them sees every event.
    let connect_start = Instant::now();
    let mut subs = Vec::with_capacity(plan.subscribers);
    let mut limits = Limits::DEFAULT;
    let mut heartbeat_ms = 0;
    // One client's handshake (and SUBSCRIBE to `topic`); `who` names it in
    // an error.
    let mut join_one = |who: &str, id: &str, topic: Option<&str>| {
        join(
            plan.protocol,
            plan.server,
            None,
            plan.connect_timeout,
            id,
            topic,
            None,
            &mut limits,
            &mut heartbeat_ms,
            plan.tls.as_ref(),
        )
        .map_err(String::from)
        .and_then(|c| wire::check_payload(plan.payload_bytes, &limits).map(|_| c))
        .map_err(|e| format!("{who}: {e}"))
    };
    for i in 0..plan.subscribers {
        let topic = i % plan.topics;
        let c = join_one(
            &format!("subscriber {i}"),
            &format!("{id_base}-s{i}"),
            Some(&topics[topic]),
        )?;
        c.stream
            .set_nonblocking(true)
            .and_then(|_| net::enable_rx_timestamps(&c.stream))
            .map_err(|e| format!("socket options: {e}"))?;
        let upstream = match upstreams {
            true => Some(
                net::tcp_connect(plan.server, plan.connect_timeout)
                    .and_then(|up| {
                        up.set_nonblocking(true)
                            .map_err(|e| format!("socket options: {e}"))?;
                        Ok(up)
                    })
                    .map_err(|e| format!("subscriber {i} upstream: {e}"))?,
            ),
            false => None,
        };
        subs.push(Sub {
            inbox: Inbox::new(&c.buf, sub_inbox_bytes, peek)?,
            stream: c.stream,
            topic,
            next_seq: c.next_seq,
            tracks: vec![Track::default(); plan.publishers],
            alive: true,
            away: false,
            back_ns: 0,
            caught_up_ns: None,
            out: Vec::new(),
            upstream,
            tls: c.tls,
        });
        if (i + 1) % CONNECT_PROGRESS_EVERY == 0 {
            eprintln!(
                "fanout clients: {} subscribers connected in {:.1} s",
                i + 1,
                connect_start.elapsed().as_secs_f64()
            );
        }
    }
    let mut pubs = Vec::with_capacity(plan.publishers);
    for p in 0..plan.publishers {
        let c = join_one(&format!("publisher {p}"), &format!("{id_base}-p{p}"), None)?;
        c.stream
            .set_nonblocking(true)
            .map_err(|e| format!("socket options: {e}"))?;
        let inbox = Inbox::new(&c.buf, PUB_INBOX_BYTES, EventHead::BYTES_MIN)?;
        let payload = (0..plan.payload_bytes).map(|i| (i % 251) as u8).collect();
        let mut pb = Pub::new(c.stream, inbox, payload, plan.topics);
        pb.tls = c.tls;
        pubs.push(pb);
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    eprintln!(
        "fanout clients: {} subscribers and {} publishers connected in {connect_secs:.1} s",
        plan.subscribers, plan.publishers
    );
    if plan.tls.is_some() {
        let links = (subs.iter().map(|s| &s.tls)).chain(pubs.iter().map(|p| &p.tls));
        let resumed = links.flatten().filter(|t| t.resumed()).count();
        eprintln!(
            "fanout clients: TLS 1.3 handshakes: {} full, {resumed} resumed with a ticket",
            plan.subscribers + plan.publishers - resumed
        );
    }

    // Tokens: publishers 0..P, subscriber i at P + i.
    let mut epoll = Epoll::new()?;
    for (t, p) in pubs.iter().enumerate() {
        epoll.ctl(libc::EPOLL_CTL_ADD, p.stream.as_raw_fd(), t, READABLE)?;
    }
    for (i, s) in subs.iter().enumerate() {
        epoll.ctl(
            libc::EPOLL_CTL_ADD,
            s.stream.as_raw_fd(),
            plan.publishers + i,
            READABLE,
        )?;
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];

    // The server drops connections silent for idle_timeout (> heartbeat):
    // subscribers ping so long runs are not cut short.
    let ping_every = (heartbeat_ms > 0).then(|| Duration::from_millis(u64::from(heartbeat_ms) / 2));
    // Subscribers with PINGs or positions to write.
    let mut writing: Vec<usize> = Vec::new();

    let warm_ns = plan.warmup.as_nanos() as u64;
    let end_ns = warm_ns + plan.duration.as_nanos() as u64;
    // The schedule runs on the monotonic clock from t0; stamps and receive
    // times are CLOCK_REALTIME (comparable with the server's
    // publish_ts_ns), anchored at the same moment.
    let t0 = Instant::now();
    let real0 = cluecast_sys::realtime_ns();
    // The attack begins with the warm-up, so the server is under siege
    // before the storm, and ends with the window (dropped on an early
    // return: that stops it too).
    let mut attackers = plan
        .attack
        .as_ref()
        .map(|a| a.start(plan.server))
        .transpose()?;
    let mut attacked = None;
    let since_t0 = || Instant::now().duration_since(t0).as_nanos() as u64;
    let mut next_ping = ping_every.map(|p| t0 + p);
    let (phase_lo, phase_hi) = match plan.scenario.phase() {
        Some((lo, hi)) => (lo.as_nanos() as u64, hi.as_nanos() as u64),
        None => (end_ns, end_ns),
    };
    let mut rx = Rx {
        schedule: schedule.clone(),
        window_lo: real0 + warm_ns,
        window_hi: real0 + end_ns,
        phase_lo: real0 + phase_lo.clamp(warm_ns, end_ns),
        phase_hi: real0 + phase_hi.clamp(warm_ns, end_ns),
        latency: latency_histogram(),
        phase: latency_histogram(),
        steady: latency_histogram(),
        catch_up: 0,
        fanout: latency_histogram(),
        publish: latency_histogram(),
        read_delay: latency_histogram(),
        unstamped: 0,
        delivered: 0,
        invalid: 0,
        seq_errors: 0,
    };
    let mut publishing = Publishing {
        protocol: plan.protocol,
        schedule: schedule.clone(),
        topics: &topics,
        real0,
        warm_ns,
        end_ns,
        send_lag: latency_histogram(),
        window_sent: 0,
        backlog_max: 0,
    };
    let mut notes = Notes::default();
    let mut phase = Phase::Warmup;
    let mut drain_deadline = t0 + plan.warmup + plan.duration + plan.drain_timeout;
    let mut next_drain_check = t0;
    let (mut window_start, mut window_end) = (t0, t0);
    let (mut delivered0, mut delivered1) = (0u64, 0u64);
    let (mut cpu0, mut cpu1) = (f64::NAN, f64::NAN);
    let mut marked = 0;
    let mut progress = Progress::new(t0);
    let total_s = (plan.warmup + plan.duration).as_secs_f64();

    let drained = loop {
        let now = Instant::now();
        let el = now.duration_since(t0).as_nanos() as u64;
        if let Some(p) = progress.as_mut().filter(|p| now >= p.next) {
            let away = subs.iter().filter(|s| s.away).count();
            p.tick(now, phase, el as f64 / 1e9, total_s, rx.delivered, away);
        }
        // Publish everything due by now (nothing is due after end_ns)
        // before the drain phase may decide everything has arrived.
        let next_due = publishing.publish_due(&mut pubs, &epoll, el, &mut notes)?;
        let all_dead = subs.iter().all(|s| !s.alive) && pubs.iter().all(|p| !p.alive);
        // What the measured window's edges record.
        let edge = |delivered| {
            let cpu = crate::procfs::self_cpu_secs().unwrap_or(f64::NAN);
            (delivered, cpu, Instant::now())
        };
        if phase == Phase::Warmup && (el >= warm_ns || all_dead) {
            (delivered0, cpu0, window_start) = edge(rx.delivered);
            mark(Mark::WindowStart);
            marked += 1;
            phase = Phase::Measure;
        }
        if phase == Phase::Measure && (el >= end_ns || all_dead) {
            (delivered1, cpu1, window_end) = edge(rx.delivered);
            mark(Mark::WindowEnd);
            marked += 1;
            phase = Phase::Drain;
            attacked = attackers.take().map(attack::Running::stop);
            drain_deadline = window_end + plan.drain_timeout;
        }
        if phase == Phase::Drain {
            if all_dead || now >= drain_deadline {
                break false;
            }
            if now >= next_drain_check {
                if all_in(&subs, &pubs, &schedule) {
                    break true;
                }
                next_drain_check = now + DRAIN_CHECK_EVERY;
            }
        }

        if let Some(st) = storm.as_mut() {
            if st.dropped_real_ns.is_none() && el >= st.at_ns {
                for (i, s) in subs[..st.count].iter_mut().enumerate() {
                    if s.alive {
                        let fd = s.stream.as_raw_fd();
                        let _ = epoll.ctl(libc::EPOLL_CTL_DEL, fd, plan.publishers + i, 0);
                        let _ = s.stream.shutdown(std::net::Shutdown::Both);
                        s.away = true;
                    }
                }
                st.dropped_real_ns = Some(cluecast_sys::realtime_ns());
            }
            while let Some(i) = st.due(since_t0()) {
                let s = &mut subs[i];
                if !s.alive {
                    continue;
                }
                let id = format!("{id_base}-s{i}");
                let inbox = (sub_inbox_bytes, peek);
                let token = plan.publishers + i;
                let source = st.newcomers.as_mut().map(|n| n.trying(i));
                let back = rejoin(s, plan, source, &topics[s.topic], &id, inbox, &epoll, token);
                match (back, st.newcomers.as_mut()) {
                    (Ok(gap), n) => {
                        st.gaps += u64::from(gap);
                        if let Some(n) = n {
                            n.subscribed(i);
                        }
                    }
                    (Err(JoinError::Unwelcome(u)), Some(n)) => {
                        n.refused(i, u.retry_after_ms, since_t0());
                    }
                    (Err(e), _) => {
                        (s.alive, s.away) = (false, false);
                        notes.subscriber(i, format!("coming back: {e}"));
                    }
                }
            }
        }

        if let (Some(at), Some(every)) = (next_ping, ping_every) {
            if now >= at {
                next_ping = Some(now + every);
                for (i, s) in subs.iter_mut().enumerate() {
                    if s.alive && !s.away && !s.has_output() {
                        Frame::Ping { nonce: i as u64 }.encode(&mut s.out);
                        writing.push(i);
                    }
                }
            }
        }
        if let Some(positions) = positions.as_mut().filter(|_| phase != Phase::Drain) {
            positions.send_due(el, plan, &mut subs, &mut writing);
        }
        writing.retain(|&i| {
            let s = &mut subs[i];
            if !s.alive || s.away {
                s.out.clear();
                return false;
            }
            if let Err(e) = write_queued(s) {
                s.alive = false;
                notes.subscriber(i, format!("writing: {e}"));
            }
            s.alive && s.has_output()
        });

        // Sleep until the next event is due or the phase changes.
        let wake_ns = match phase {
            Phase::Warmup => next_due.min(warm_ns),
            Phase::Measure => next_due.min(end_ns),
            Phase::Drain => u64::MAX,
        };
        let scenario_ns = storm.as_ref().map_or(u64::MAX, StormRun::next_ns).min(
            positions
                .as_ref()
                .filter(|_| phase != Phase::Drain)
                .map_or(u64::MAX, |ps| ps.due_ns(ps.next)),
        );
        let wake_ns = wake_ns.min(scenario_ns);
        let mut timeout = Duration::from_nanos(wake_ns.saturating_sub(el)).min(WAIT_SLICE);
        if !writing.is_empty() {
            timeout = timeout.min(Duration::from_millis(1));
        }
        let ready = match epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("epoll_wait: {e}")),
        };
        for (k, ev) in events[..ready].iter().enumerate() {
            if k > 0 && k % PUBLISH_CHECK_EVERY == 0 {
                publishing.publish_due(&mut pubs, &epoll, since_t0(), &mut notes)?;
            }
            let token = ev.u64 as usize;
            if let Some(pb) = pubs.get_mut(token) {
                if !pb.alive {
                    continue;
                }
                let mut result = read_pub(pb, plan.protocol, &limits, &schedule);
                if result.is_ok() && pb.want_out && ev.events & WRITABLE != 0 {
                    result = pb.flush().and_then(|flushed| {
                        if flushed {
                            pb.want_out = false;
                            epoll.ctl(
                                libc::EPOLL_CTL_MOD,
                                pb.stream.as_raw_fd(),
                                token,
                                READABLE,
                            )?;
                        }
                        Ok(())
                    });
                }
                if let Err(why) = result {
                    pb.alive = false;
                    let _ = epoll.ctl(libc::EPOLL_CTL_DEL, pb.stream.as_raw_fd(), token, 0);
                    notes.publisher(token, why);
                }
                continue;
            }
            let i = token - plan.publishers;
            let Some(s) = subs.get_mut(i) else { continue };
            if !s.alive {
                continue;
            }
            match read_sub(s, plan.protocol, &limits, &mut rx) {
                Ok(true) => writing.push(i),
                Ok(false) => {}
                Err(why) => {
                    s.alive = false;
                    let _ = epoll.ctl(libc::EPOLL_CTL_DEL, s.stream.as_raw_fd(), token, 0);
                    notes.subscriber(i, why);
                }
            }
        }
    };
    if let Some(p) = &progress {
        p.finish();
    }
    if marked == 0 {
        mark(Mark::WindowStart);
    }
    if marked < 2 {
        delivered1 = rx.delivered;
        window_end = Instant::now();
        mark(Mark::WindowEnd);
    }

    // The final count: every published event of its topic, per subscriber.
    let mut o = Outcome {
        connect_secs,
        window_secs: window_end.duration_since(window_start).as_secs_f64(),
        window_sent: publishing.window_sent,
        window_deliveries: delivered1 - delivered0,
        backlog_max_bytes: publishing.backlog_max as u64,
        unstamped: rx.unstamped,
        delivered: rx.delivered,
        invalid: rx.invalid,
        seq_errors: rx.seq_errors,
        drained,
        generator_cpu_secs: cpu1 - cpu0,
        ..Outcome::default()
    };
    let lat = Percentiles::of(&rx.latency);
    (
        o.lat_count,
        o.lat_p50,
        o.lat_p90,
        o.lat_p99,
        o.lat_p999,
        o.lat_p9999,
        o.lat_max,
    ) = (
        lat.count, lat.p50, lat.p90, lat.p99, lat.p999, lat.p9999, lat.max,
    );
    let ph = Percentiles::of(&rx.phase);
    (
        o.phase_count,
        o.phase_p50,
        o.phase_p99,
        o.phase_p999,
        o.phase_max,
    ) = (ph.count, ph.p50, ph.p99, ph.p999, ph.max);
    let steady = Percentiles::of(&rx.steady);
    (o.steady_p99, o.steady_p999) = (steady.p99, steady.p999);
    o.catch_up_deliveries = rx.catch_up;
    o.positions_sent = positions.as_ref().map_or(0, |ps| ps.sent);
    let mut storm_note = None;
    if let Some(st) = &storm {
        let stormed = &subs[..st.count];
        o.storm_dropped = st.dropped_real_ns.map_or(0, |_| st.count as u64);
        let back: Vec<&Sub> = stormed.iter().filter(|s| s.back_ns > 0).collect();
        o.storm_rejoined = back.len() as u64;
        o.storm_gaps = st.gaps;
        let behind = back.iter().filter(|s| s.caught_up_ns.is_none()).count();
        match (st.dropped_real_ns, behind) {
            (Some(dropped), 0) => {
                let last = back.iter().filter_map(|s| s.caught_up_ns).max();
                o.storm_resume_ns = last.map_or(0, |t| t.saturating_sub(dropped));
            }
            (Some(_), _) => {
                storm_note = Some(format!(
                    "{behind} subscribers back from the storm never caught up"
                ))
            }
            (None, _) => storm_note = Some("the storm never came (the run ended first)".into()),
        }
        if let Some(n) = &st.newcomers {
            n.fill(&mut o);
        }
    }
    let fan = Percentiles::of(&rx.fanout);
    (o.fanout_p50, o.fanout_p99, o.fanout_max) = (fan.p50, fan.p99, fan.max);
    let publish = Percentiles::of(&rx.publish);
    (o.publish_p99, o.publish_max) = (publish.p99, publish.max);
    let read = Percentiles::of(&rx.read_delay);
    (o.read_delay_p50, o.read_delay_p99, o.read_delay_max) = (read.p50, read.p99, read.max);
    let lag = Percentiles::of(&publishing.send_lag);
    (o.send_lag_p99, o.send_lag_max) = (lag.p99, lag.max);
    // Excluded counters as indices on their topic, ascending, per
    // (publisher, topic).
    let mut excluded: Vec<Vec<Vec<u64>>> = Vec::with_capacity(pubs.len());
    for (p, pb) in pubs.iter_mut().enumerate() {
        o.window_scheduled += schedule.due_before(p, end_ns) - schedule.due_before(p, warm_ns);
        o.scheduled += pb.next;
        o.sent += pb.sent;
        o.acked += pb.acks - pb.refused;
        o.refused += pb.refused;
        o.unsent += pb.unsent;
        o.unacked += pb.sent - pb.acks;
        o.publishers_dropped += u64::from(!pb.alive);
        pb.excluded.sort_unstable();
        let mut by_topic = vec![Vec::new(); plan.topics];
        for &n in &pb.excluded {
            by_topic[schedule.topic_of(n)].push(schedule.index_on_topic(n));
        }
        excluded.push(by_topic);
    }
    for s in &subs {
        o.subscribers_dropped += u64::from(!s.alive);
        for (p, t) in s.tracks.iter().enumerate() {
            let published = schedule.count_on_topic(pubs[p].next, s.topic);
            let tally = t.tally(published, &excluded[p][s.topic]);
            o.expected += published - pubs[p].excluded_on_topic[s.topic];
            o.lost += tally.lost;
            o.excluded_received += tally.excluded_received;
            o.duplicated += t.duplicated;
            o.reordered += t.reordered;
            o.approximate |= t.approximate();
        }
    }
    o.note = notes.joined();
    if let Some(note) = storm_note {
        set_note(&mut o.note, note);
    }
    match attacked {
        Some(Ok(counts)) => counts.fill(&mut o),
        Some(Err(e)) => set_note(&mut o.note, format!("attackers: {e}")),
        None => {}
    }
    if !drained {
        set_note(
            &mut o.note,
            format!(
                "not everything arrived within {:?} of the end of publishing",
                plan.drain_timeout
            ),
        );
    }
    Ok((o, rx.latency))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_request_ids_map_back_to_counters() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let inbox = Inbox::new(&[], PUB_INBOX_BYTES, EventHead::BYTES_MIN).unwrap();
        let mut p = Pub::new(stream, inbox, Vec::new(), 4);
        assert_eq!(p.counter_of(0), None, "nothing sent yet");
        p.next = 10;
        assert_eq!(p.counter_of(9), Some(9));
        assert_eq!(p.counter_of(3), Some(3));
        assert_eq!(p.counter_of(10), None, "not sent yet");
        // Past 2^32 the request id wraps; the newest match wins.
        p.next = (1 << 32) + 5;
        assert_eq!(p.counter_of(4), Some((1 << 32) + 4));
        assert_eq!(p.counter_of(u32::MAX), Some((1 << 32) - 1));
        p.exclude(6, 2);
        assert_eq!((p.excluded.clone(), p.excluded_on_topic[2]), (vec![6], 1));
    }
}
