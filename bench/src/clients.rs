//! The client side of one measurement: a publisher and S subscribers of one
//! topic, all driven by a single thread with poll(2).
//!
//! One thread (pinned to one CPU) keeps the load generator's own footprint
//! fixed and known: it is the other half of the 2-core budget, and on a
//! shared host a pool of threads would spread over the server's core.
//!
//! Flow control. The publisher keeps at most `window` PUBLISHes unacked, as
//! the protocol intends, but the server acknowledges an event once it is
//! sequenced, long before 32 sockets have carried it. Publishing on acks
//! alone would outrun the subscribers, overflow their queues and turn the
//! measurement into one of the catch-up path (or of slow-consumer GOAWAYs).
//! So the publisher also stays at most `lead_bytes` of events ahead of the
//! slowest subscriber: what is measured is the fastest fan-out the server
//! sustains with every subscriber keeping up. `lead_bytes = 0` disables
//! that bound (open loop, acks only).

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use cluecast_proto::{Event, EventHead, Frame, Limits, Publish};

use crate::child::{result_struct, Mark};
use crate::net::{self, pollfd};
use crate::wire::{self, refusal, set_note, Inbox, Turn};

/// Per-connection receive buffer. Only non-event frames (small) are ever
/// held whole, so this only sets how much one read() may return.
const INBOX_BYTES: usize = 256 << 10;
/// Reads per ready socket per loop turn, so no subscriber starves the rest.
const READS_PER_TURN: usize = 8;
/// Encoded PUBLISHes not yet written, above which no more are encoded.
const PUBLISH_BACKLOG_BYTES: usize = 64 << 10;
/// Longest sleep in poll(2), so phase changes are seen promptly.
const POLL_SLICE: Duration = Duration::from_millis(10);
/// Pause after an `Overloaded` refusal before publishing again.
const REFUSAL_BACKOFF: Duration = Duration::from_millis(1);

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub server: SocketAddr,
    pub topic: String,
    pub payload_bytes: usize,
    pub subscribers: usize,
    /// Publishing before the measured window starts.
    pub warmup: Duration,
    /// Publishing inside the measured window.
    pub duration: Duration,
    /// Most PUBLISHes without an ack.
    pub window: usize,
    /// Most event bytes published ahead of the slowest subscriber; 0 = no bound.
    pub lead_bytes: usize,
    /// After publishing stops, longest wait for subscribers to receive all.
    pub drain_timeout: Duration,
    /// For TCP connect and each handshake answer.
    pub connect_timeout: Duration,
}

result_struct! {
    /// What the client side saw.
    pub struct Outcome {
        /// PUBLISHes acknowledged with status 0 (whole run).
        pub published: u64,
        /// PUBLISHes refused (non-zero status, e.g. Overloaded).
        pub refused: u64,
        /// Length of the measured window: publishing plus the drain after it.
        pub window_secs: f64,
        /// Events received by all subscribers together inside the window.
        pub window_events: u64,
        /// Their bytes, whole frames as on the wire.
        pub window_bytes: u64,
        /// Events received by all subscribers together over the whole run.
        pub delivered: u64,
        /// Σ over subscribers of (events acknowledged − events received).
        pub lost: u64,
        /// Events whose sequence was not the one expected (gap or duplicate).
        pub seq_errors: u64,
        /// Subscribers whose connection ended early (GOAWAY, ERROR, close).
        pub subscribers_dropped: u64,
        /// CPU seconds of this process inside the window.
        pub client_cpu_secs: f64,
        /// Every subscriber received every acknowledged event before the
        /// drain timeout.
        pub drained: bool,
    }
}

// ---------------------------------------------------------------------------
// The run

struct Sub {
    stream: TcpStream,
    inbox: Inbox,
    next_seq: u64,
    received: u64,
    bytes: u64,
    alive: bool,
    /// Unwritten part of a PING (subscribers send nothing else).
    out: Vec<u8>,
}

struct Publisher {
    stream: TcpStream,
    inbox: Inbox,
    out: Vec<u8>,
    out_pos: usize,
    /// Encoded (or sent) and not yet acknowledged.
    in_flight: u64,
    request_id: u32,
    acked: u64,
    refused: u64,
    paused_until: Option<Instant>,
    alive: bool,
    blocked: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measure,
    Drain,
}

/// Runs the plan; `mark` is called at the start and end of the measured
/// window (always both, in order, unless setting up fails).
pub fn run(plan: &Plan, mut mark: impl FnMut(Mark)) -> Result<Outcome, String> {
    if plan.subscribers == 0 || plan.window == 0 {
        return Err("need at least one subscriber and a window of at least 1".into());
    }
    let topic = plan.topic.as_bytes();
    let id_base = format!("zcbench-{}", std::process::id());

    // Subscribers first, so every one of them sees every event.
    let mut subs = Vec::with_capacity(plan.subscribers);
    let mut limits = Limits::DEFAULT;
    let mut heartbeat_ms = 0;
    for i in 0..plan.subscribers {
        let mut c = wire::connect(
            plan.server,
            &format!("{id_base}-s{i}"),
            plan.connect_timeout,
        )?;
        (limits, heartbeat_ms) = (c.conn.limits, c.heartbeat_ms);
        wire::check_payload(plan.payload_bytes, &limits)?;
        let last_seq = c.subscribe_live(topic, plan.connect_timeout)?;
        let (stream, leftover) = c.conn.into_parts();
        stream
            .set_nonblocking(true)
            .map_err(|e| format!("socket options: {e}"))?;
        subs.push(Sub {
            stream,
            inbox: Inbox::new(&leftover, INBOX_BYTES, EventHead::BYTES_MIN)?,
            next_seq: last_seq + 1,
            received: 0,
            bytes: 0,
            alive: true,
            out: Vec::new(),
        });
    }
    let c = wire::connect(plan.server, &format!("{id_base}-pub"), plan.connect_timeout)?;
    let (stream, leftover) = c.conn.into_parts();
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("socket options: {e}"))?;
    let mut publisher = Publisher {
        stream,
        inbox: Inbox::new(&leftover, INBOX_BYTES, EventHead::BYTES_MIN)?,
        out: Vec::with_capacity(PUBLISH_BACKLOG_BYTES + plan.payload_bytes + 512),
        out_pos: 0,
        in_flight: 0,
        request_id: 0,
        acked: 0,
        refused: 0,
        paused_until: None,
        alive: true,
        blocked: false,
    };

    let payload: Vec<u8> = (0..plan.payload_bytes).map(|i| (i % 251) as u8).collect();
    let event_bytes = Frame::Event(Event {
        seq: 0,
        epoch: 0,
        publish_ts_ns: 0,
        topic,
        payload: &payload,
    })
    .encoded_len();
    let lead_events = match plan.lead_bytes {
        0 => u64::MAX,
        b => (b / event_bytes).max(1) as u64,
    };
    // The server drops connections silent for idle_timeout (> heartbeat):
    // subscribers ping so long runs are not cut short.
    let ping_every = (heartbeat_ms > 0).then(|| Duration::from_millis(u64::from(heartbeat_ms) / 2));
    let mut next_ping = ping_every.map(|p| Instant::now() + p);

    let mut note = String::new();
    let mut seq_errors = 0u64;
    let mut phase = Phase::Warmup;
    let start = Instant::now();
    let warm_end = start + plan.warmup;
    let measure_end = warm_end + plan.duration;
    let mut drain_deadline = measure_end + plan.drain_timeout;
    let mut window_start = start;
    let mut window_marked = false;
    let (mut events0, mut bytes0, mut cpu0) = (0u64, 0u64, 0f64);
    let mut pollfds: Vec<libc::pollfd> = Vec::with_capacity(plan.subscribers + 1);
    let mut who: Vec<usize> = Vec::with_capacity(plan.subscribers + 1);

    let (window_end, drained) = loop {
        let now = Instant::now();
        let all_dead = !publisher.alive && subs.iter().all(|s| !s.alive);
        if phase == Phase::Warmup && (now >= warm_end || all_dead) {
            events0 = subs.iter().map(|s| s.received).sum();
            bytes0 = subs.iter().map(|s| s.bytes).sum();
            cpu0 = crate::procfs::self_cpu_secs().unwrap_or(f64::NAN);
            window_start = Instant::now();
            window_marked = true;
            mark(Mark::WindowStart);
            phase = Phase::Measure;
        }
        if phase == Phase::Measure && (now >= measure_end || all_dead) {
            phase = Phase::Drain;
            drain_deadline = now + plan.drain_timeout;
        }
        let acked = publisher.acked;
        let everything_in = publisher.in_flight == 0
            && subs.iter().filter(|s| s.alive).all(|s| s.received >= acked);
        if phase == Phase::Drain && (everything_in || now >= drain_deadline || all_dead) {
            break (Instant::now(), everything_in && !all_dead);
        }

        // Publish as far as the window and the lead allow.
        if phase != Phase::Drain && publisher.alive {
            if publisher.paused_until.is_some_and(|t| now >= t) {
                publisher.paused_until = None;
            }
            let slowest = subs
                .iter()
                .filter(|s| s.alive)
                .map(|s| s.received)
                .min()
                .unwrap_or(u64::MAX);
            while publisher.paused_until.is_none()
                && publisher.in_flight < plan.window as u64
                && publisher.out.len() - publisher.out_pos < PUBLISH_BACKLOG_BYTES
                && (publisher.acked + publisher.in_flight).saturating_sub(slowest) < lead_events
            {
                if publisher.out_pos > 0 && publisher.out_pos == publisher.out.len() {
                    publisher.out.clear();
                    publisher.out_pos = 0;
                }
                Frame::Publish(Publish {
                    request_id: publisher.request_id,
                    topic,
                    payload: &payload,
                })
                .encode(&mut publisher.out);
                publisher.request_id = publisher.request_id.wrapping_add(1);
                publisher.in_flight += 1;
            }
        }
        if publisher.alive && publisher.out_pos < publisher.out.len() {
            match publisher.stream.write(&publisher.out[publisher.out_pos..]) {
                Ok(n) => {
                    publisher.out_pos += n;
                    publisher.blocked = false;
                    if publisher.out_pos == publisher.out.len() {
                        publisher.out.clear();
                        publisher.out_pos = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => publisher.blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    publisher.alive = false;
                    set_note(&mut note, format!("publisher: writing: {e}"));
                }
            }
        }
        if let (Some(at), Some(every)) = (next_ping, ping_every) {
            if now >= at {
                next_ping = Some(now + every);
                for s in subs.iter_mut().filter(|s| s.alive && s.out.is_empty()) {
                    Frame::Ping { nonce: 1 }.encode(&mut s.out);
                }
            }
        }
        for (i, s) in subs.iter_mut().enumerate() {
            if s.alive && !s.out.is_empty() {
                if let Err(e) = net::write_some(&mut s.stream, &mut s.out) {
                    s.alive = false;
                    set_note(&mut note, format!("subscriber {i}: writing: {e}"));
                }
            }
        }

        // Wait for input, at most until the next thing to do.
        pollfds.clear();
        who.clear();
        if publisher.alive {
            let mut events = libc::POLLIN;
            if publisher.blocked {
                events |= libc::POLLOUT;
            }
            pollfds.push(pollfd(publisher.stream.as_raw_fd(), events));
            who.push(usize::MAX);
        }
        for (i, s) in subs.iter().enumerate().filter(|(_, s)| s.alive) {
            let mut events = libc::POLLIN;
            if !s.out.is_empty() {
                events |= libc::POLLOUT;
            }
            pollfds.push(pollfd(s.stream.as_raw_fd(), events));
            who.push(i);
        }
        let can_write_more = publisher.alive
            && phase != Phase::Drain
            && !publisher.blocked
            && publisher.paused_until.is_none()
            && publisher.out_pos < publisher.out.len();
        let timeout_ms = if can_write_more {
            0
        } else {
            let slice = match publisher.paused_until {
                Some(t) => t.saturating_duration_since(now).min(POLL_SLICE),
                None => POLL_SLICE,
            };
            slice.as_millis() as i32
        };
        // SAFETY: pollfds is a valid array of its length.
        let ready = unsafe {
            libc::poll(
                pollfds.as_mut_ptr(),
                pollfds.len() as libc::nfds_t,
                timeout_ms,
            )
        };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("poll: {e}"));
            }
            continue;
        }
        let now = Instant::now();
        for (p, &w) in pollfds.iter().zip(&who) {
            if p.revents == 0 {
                continue;
            }
            if w == usize::MAX {
                if p.revents & libc::POLLOUT != 0 {
                    publisher.blocked = false;
                }
                if let Err(why) = read_publisher(&mut publisher, &limits, now) {
                    publisher.alive = false;
                    set_note(&mut note, format!("publisher: {why}"));
                }
                continue;
            }
            let s = &mut subs[w];
            if let Err(why) = read_subscriber(s, &limits, &mut seq_errors) {
                s.alive = false;
                set_note(&mut note, format!("subscriber {w}: {why}"));
            }
        }
    };

    let events1: u64 = subs.iter().map(|s| s.received).sum();
    let bytes1: u64 = subs.iter().map(|s| s.bytes).sum();
    let cpu1 = crate::procfs::self_cpu_secs().unwrap_or(f64::NAN);
    if !window_marked {
        mark(Mark::WindowStart);
    }
    mark(Mark::WindowEnd);
    let published = publisher.acked;
    let lost = subs
        .iter()
        .map(|s| published.saturating_sub(s.received))
        .sum();
    if !drained && note.is_empty() {
        set_note(
            &mut note,
            format!(
                "not every subscriber received every event within {:?}",
                plan.drain_timeout
            ),
        );
    }
    Ok(Outcome {
        published,
        refused: publisher.refused,
        window_secs: window_end.duration_since(window_start).as_secs_f64(),
        window_events: events1 - events0,
        window_bytes: bytes1 - bytes0,
        delivered: events1,
        lost,
        seq_errors,
        subscribers_dropped: subs.iter().filter(|s| !s.alive).count() as u64,
        client_cpu_secs: cpu1 - cpu0,
        drained,
        note,
    })
}

fn read_subscriber(s: &mut Sub, limits: &Limits, seq_errors: &mut u64) -> Result<(), String> {
    for _ in 0..READS_PER_TURN {
        let n = match wire::turn(s.inbox.fill(&mut s.stream), |&n| n)? {
            Turn::Read(n) => n,
            Turn::Again => continue,
            Turn::Empty => return Ok(()),
        };
        let (received, bytes, next_seq) = (&mut s.received, &mut s.bytes, &mut s.next_seq);
        s.inbox.drain(
            limits,
            |head, len| {
                let seq = head.seq();
                if seq != *next_seq {
                    *seq_errors += 1;
                }
                *next_seq = seq + 1;
                *received += 1;
                *bytes += len;
            },
            |frame| match refusal(frame) {
                Some(why) => Err(why),
                None => Ok(()), // PONG
            },
        )?;
        if n < s.inbox.free_min() {
            return Ok(()); // most likely drained the socket
        }
    }
    Ok(())
}

fn read_publisher(p: &mut Publisher, limits: &Limits, now: Instant) -> Result<(), String> {
    for _ in 0..READS_PER_TURN {
        let n = match wire::turn(p.inbox.fill(&mut p.stream), |&n| n)? {
            Turn::Read(n) => n,
            Turn::Again => continue,
            Turn::Empty => return Ok(()),
        };
        let (in_flight, acked, refused, paused) = (
            &mut p.in_flight,
            &mut p.acked,
            &mut p.refused,
            &mut p.paused_until,
        );
        p.inbox.drain_acks(limits, |ack| {
            if *in_flight == 0 {
                return Err("PUBLISH_ACK for no PUBLISH".into());
            }
            *in_flight -= 1;
            if ack.status == 0 {
                *acked += 1;
            } else {
                *refused += 1;
                *paused = Some(now + REFUSAL_BACKOFF);
            }
            Ok(())
        })?;
        if n < p.inbox.free_min() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_line_round_trip() {
        let o = Outcome {
            published: 10,
            refused: 1,
            window_secs: 5.25,
            window_events: 320,
            window_bytes: 1 << 30,
            delivered: 330,
            lost: 2,
            seq_errors: 0,
            subscribers_dropped: 1,
            client_cpu_secs: 4.5,
            drained: false,
            note: "subscriber 3: GOAWAY SlowConsumer\nsecond line".into(),
        };
        let line = crate::child::ResultLine::parse(&o.to_line()).unwrap();
        let back = Outcome::from_result(&line).unwrap();
        assert_eq!(
            back,
            Outcome {
                note: "subscriber 3: GOAWAY SlowConsumer second line".into(),
                ..o
            }
        );
    }
}
