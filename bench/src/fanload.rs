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
use crate::child::Mark;
use crate::delivery::{Schedule, Seen, Stamp, Track, STAMP_BYTES};
use crate::dial::{self, JoinError};
use crate::net::{self, Epoll, READABLE, WRITABLE};
use crate::newcomers::Newcomers;
pub use crate::outcome::Outcome;
use crate::peers::{self, Message, Peer};
use crate::stats::{latency_histogram, Percentiles};
use crate::tls::{TlsClient, TlsLink, TlsTurn};
use crate::wire::{self, refusal, set_note, Inbox, Turn};

mod conns;
mod driver;
mod handshake;
mod phases;
mod publish;
mod receive;
use conns::{Notes, Pub, Sub};
pub use driver::run;
use driver::Phase;
pub use handshake::join;
use handshake::{check_descriptors, rejoin, write_queued};
use phases::{Positions, Progress, StormRun};
use publish::Publishing;
use receive::{read_pub, read_sub, Rx};

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
