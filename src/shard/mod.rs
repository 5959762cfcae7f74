//! One shard: a pinned thread's event loop over its own ring.
//!
//! The shard owns its listener, its connections (a slab with generation-
//! checked ids), its frame arena, its view of every topic, and its ends of the
//! channels to the other shards. Each turn it submits and waits, copies the
//! ready completions out, runs their handlers, drains the channels, expires
//! timers, and finally starts one send for every connection with queued
//! frames, so everything queued meanwhile goes out in one send.
//!
//! A topic is sequenced by exactly one shard, its owner (a hash of the name).
//! A publish arriving elsewhere is forwarded to the owner; the owner assigns
//! the sequence, fans out to its own subscribers, and hands the encoded event
//! to every other shard, which fans it out to theirs. Closing a topic takes
//! the same road: the owner orders the close after the topic's last event
//! (and, in sync durability, after the writer has deleted it), then tells
//! every shard, which ends the topic for its subscribers. Later, the owner's
//! sequencing step becomes the apply step of a replicated log.
//!
//! This file holds the setup, the loop's turn and the routing of
//! completions; the handlers are split by job, each an `impl Core` of its
//! own: `accept` (the door), `net` (bytes in and out, closing), `session`
//! (protocol life, timers, drain), `fanout` (subscribers and delivery),
//! `sequencer` (publishes, acks, closes, durability), `paths`,
//! `storage_link` and `mesh` (the channels to the writer and the other
//! shards), and `handshakes` (the table of connections before HELLO, with
//! state of its own).

use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod accept;
mod channel;
mod fanout;
mod handshakes;
mod mesh;
mod net;
mod paths;
mod sequencer;
mod session;
mod storage_link;

use cluecast_proto::{
    decode, event_publish_ts_ns, ErrorCode, ErrorFrame, Event, Frame, GoAway, GoAwayReason, Limits,
    Path, PathQuery, Position, Publish, PublishAck, ResumePoint, StartMode, Subscribe,
    SubscribeStatus, Subscribed, TopicClose, TopicClosed, Welcome, ACK_FLAG_DURABLE,
    PATH_FLAG_LAST, PROTOCOL_VERSION, TOPIC_BYTES_HARD_MAX,
};
use cluecast_sys::spsc;
use slab::Slab;

use crate::admission::{is_this_host, Bucket, Rate, SourceCounts};
use crate::arena::{Arena, FrameRef, Use};
use crate::auth::{Grant, Keys};
use crate::conn::{Conn, ConnState};
use crate::metrics::{Gauges, Recorder, ShardMetrics};
use crate::ring::{Completion, Op, OpKind, Outcome, Ring, Token, GENERATION_MASK};
use crate::stats::ShardStats;
use crate::storage::{
    Durability, FromReader, Notice, PathRequest, ReadReply, ReadRequest, ReadStatus, StorageLink,
    StoredTopic, ToReader, ToWriter,
};
use crate::timer::TimerWheel;
use crate::tls::{TlsConfig, TlsConn};
use crate::topics::{Purpose, Subscriber, TopicLimits, Topics, UNCLASSIFIED};
use accept::Door;
use channel::{Channel, Outbox};
use fanout::Subscriptions;
pub use handshakes::HandshakeLimits;
use handshakes::{Handshakes, PressureReport, NO_SOURCE};
use mesh::{Mesh, MeshRecord};
use net::Io;
use paths::PathReads;
use sequencer::Appends;
use storage_link::StoragePorts;

const TIMER_TICK_MS: u64 = 50;
const TIMER_SLOTS: usize = 1024;

/// After the drain deadline cuts the stragglers, how long their cancels and
/// closes may take before the shard stops anyway.
pub const DRAIN_GRACE_MS: u64 = 1_000;

/// An answer record carrying a PUBLISH_ACK.
const ACK_RECORD_BYTES: usize = ConnId::BYTES + PublishAck::ENCODED_BYTES;

/// Everything a shard needs, built by the engine (or a test).
pub struct ShardSetup {
    pub id: usize,
    pub shards: usize,
    /// This process's random epoch: it seeds the shard's random numbers,
    /// which give every new history its epoch (so a wiped data directory or
    /// a memory-only history gets new epochs at every start).
    pub epoch: u64,
    /// The durable log; None for `--durability memory`.
    pub storage: Option<StorageLink>,
    /// Topics recovered from the durable log at start-up.
    pub stored_topics: Arc<[StoredTopic]>,
    pub listener: RawFd,
    pub connections_max: usize,
    pub limits: Limits,
    pub subscriptions_max: u16,
    pub topic_limits: TopicLimits,
    pub queue_bytes_max: usize,
    pub zerocopy_bytes_min: usize,
    pub heartbeat_ms: u32,
    pub idle_timeout_ms: u32,
    pub drain_timeout_ms: u32,
    pub retry_after_ms: u32,
    pub arena: Arena,
    /// Indexed by peer shard id; None at this shard's own index.
    pub mesh_tx: Vec<Option<spsc::Sender>>,
    pub mesh_rx: Vec<Option<spsc::Receiver>>,
    pub peer_ring_fds: Vec<RawFd>,
    /// The keys client tokens are checked with; None checks no tokens.
    pub keys: Option<Arc<Keys>>,
    /// Connections per source address, shared by every shard.
    pub sources: Arc<SourceCounts>,
    pub handshakes: HandshakeLimits,
    pub accept_rate: Rate,
    /// TLS handshakes begun per second (each costs an ECDHE and a signature).
    pub tls_handshake_rate: Rate,
    pub publish_rate: Rate,
    /// Serve TLS 1.3 with this certificate; None: plain TCP.
    pub tls: Option<Arc<TlsConfig>>,
    /// Where the shard publishes its metrics (and heartbeat).
    pub metrics: Arc<ShardMetrics>,
    pub stop: Arc<AtomicBool>,
}

/// A connection as it is remembered across a wait (an ack, a disk read, a
/// peer shard's answer): its slot, and the slot's generation then, so that
/// a later connection in the same slot is never taken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    /// Its size in a channel record.
    const BYTES: usize = 8;

    fn to_bytes(self) -> [u8; ConnId::BYTES] {
        let mut bytes = [0u8; ConnId::BYTES];
        bytes[..4].copy_from_slice(&self.index.to_be_bytes());
        bytes[4..].copy_from_slice(&self.generation.to_be_bytes());
        bytes
    }

    /// Reads the first `BYTES` of a record this process wrote.
    fn from_bytes(bytes: &[u8]) -> ConnId {
        let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        ConnId {
            index: word(0),
            generation: word(4),
        }
    }
}

/// Who gets a publish's acknowledgement.
#[derive(Clone, Copy, Debug)]
enum AckTo {
    Local {
        conn: ConnId,
        request_id: u32,
    },
    /// A publish forwarded by a peer shard: the ack goes back over its channel.
    Peer {
        peer: usize,
        origin: ConnId,
        request_id: u32,
    },
}

impl AckTo {
    fn request_id(self) -> u32 {
        match self {
            AckTo::Local { request_id, .. } | AckTo::Peer { request_id, .. } => request_id,
        }
    }

    fn peer(self) -> Option<usize> {
        match self {
            AckTo::Local { .. } => None,
            AckTo::Peer { peer, .. } => Some(peer),
        }
    }
}

pub struct Shard<R: Ring> {
    ring: R,
    core: Core,
    completions: Vec<Completion>,
}

struct Core {
    id: usize,
    shards: usize,
    limits: Limits,
    subscriptions_max: usize,
    queue_bytes_max: usize,
    zerocopy_bytes_min: usize,
    heartbeat_ms: u32,
    idle_timeout_ms: u32,
    drain_timeout_ms: u32,
    retry_after_ms: u32,

    door: Door,

    conns: Slab<Conn>,
    generations: Vec<u32>,
    connections_max: usize,

    arena: Arena,
    topics: Topics,
    timers: TimerWheel,
    fired: Vec<u32>,

    mesh: Mesh,
    /// Work was left for the next turn (a channel still had records after
    /// this turn's budget, or durable events wait for room in a peer's
    /// channel): it must not sleep.
    work_left: bool,

    storage: Option<StoragePorts>,
    appends: Appends,
    path_reads: PathReads,

    io: Io,

    outbox: Outbox,
    /// Connections with frames to send and no send in flight.
    dirty: Vec<u32>,

    keys: Option<Arc<Keys>>,
    sources: Arc<SourceCounts>,
    /// Connections in the Handshake state.
    handshakes: Handshakes,
    publish_rate: Rate,
    tls: Option<Arc<TlsConfig>>,
    stop: Arc<AtomicBool>,
    drain_deadline_ms: Option<u64>,
    /// The clocks as of this turn.
    now_ms: u64,
    wall_ns: u64,
    rng: u64,
    pub stats: ShardStats,
    /// Counts for the metrics beyond `stats`, and their copying.
    recorder: Recorder,
    subscriptions: Subscriptions,
    /// Queued bytes in all and on the deepest connection, as of the last
    /// walk, and when to walk again.
    queue_gauges: (u64, u64),
    queue_walk_at_ms: u64,
}

/// FNV-1a: a stable hash every shard computes alike to find a topic's owner.
pub fn topic_owner(topic: &[u8], shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in topic {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

impl<R: Ring> Shard<R> {
    pub fn new(ring: R, setup: ShardSetup) -> Shard<R> {
        let now_ms = ring.now_ms();
        let slots = setup.connections_max;
        // Handshakes hold at most half the slots: silent sockets then fill
        // the handshake table (which evicts) before they could fill the
        // shard (which refuses).
        let limits = HandshakeLimits {
            max: setup.handshakes.max.min((slots as u32 / 2).max(1)),
            ..setup.handshakes
        };
        let handshakes = Handshakes::new(limits, slots, setup.sources.slots());
        let mut core = Core {
            id: setup.id,
            shards: setup.shards,
            limits: setup.limits,
            subscriptions_max: setup.subscriptions_max as usize,
            queue_bytes_max: setup.queue_bytes_max,
            zerocopy_bytes_min: setup.zerocopy_bytes_min,
            heartbeat_ms: setup.heartbeat_ms,
            idle_timeout_ms: setup.idle_timeout_ms,
            drain_timeout_ms: setup.drain_timeout_ms,
            retry_after_ms: setup.retry_after_ms,
            door: Door::new(
                setup.listener,
                setup.accept_rate,
                setup.tls_handshake_rate,
                now_ms,
            ),
            conns: Slab::with_capacity(slots),
            generations: vec![0; slots],
            connections_max: setup.connections_max,
            arena: setup.arena,
            topics: Topics::new(setup.topic_limits),
            timers: TimerWheel::new(slots, TIMER_SLOTS, TIMER_TICK_MS, now_ms),
            fired: Vec::new(),
            mesh: Mesh::new(setup.id, setup.mesh_tx, setup.mesh_rx, &setup.peer_ring_fds),
            work_left: false,
            storage: setup.storage.map(|link| StoragePorts::new(link, setup.id)),
            appends: Appends::default(),
            path_reads: PathReads::default(),
            io: Io::new(slots),
            outbox: Outbox::default(),
            dirty: Vec::new(),
            keys: setup.keys,
            sources: setup.sources,
            handshakes,
            publish_rate: setup.publish_rate,
            tls: setup.tls,
            stop: setup.stop,
            drain_deadline_ms: None,
            now_ms,
            wall_ns: ring.wall_ns(),
            rng: setup.epoch ^ (setup.id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            stats: ShardStats::default(),
            recorder: Recorder::new(setup.metrics),
            subscriptions: Subscriptions::new(slots),
            queue_gauges: (0, 0),
            queue_walk_at_ms: 0,
        };
        for stored in setup.stored_topics.iter() {
            let owned_here = topic_owner(&stored.name, core.shards) == core.id;
            core.topics.restore(stored, owned_here);
        }
        core.encode_reject_frames();
        core.arm_accept();
        Shard {
            ring,
            core,
            completions: Vec::new(),
        }
    }

    /// One turn of the loop. Returns false once a drain has finished.
    pub fn turn(&mut self) -> io::Result<bool> {
        for (op, user_data) in self.core.outbox.drain() {
            self.ring.push(op, user_data);
        }
        let timeout_ms = if self.core.work_left {
            0
        } else {
            TIMER_TICK_MS as u32
        };
        self.ring.submit_and_wait(timeout_ms)?;
        self.ring.reap(&mut self.completions);
        self.core.now_ms = self.ring.now_ms();
        self.core.wall_ns = self.ring.wall_ns();
        for i in 0..self.completions.len() {
            let c = self.completions[i];
            self.dispatch(c);
        }
        self.completions.clear();
        self.core.work_left = false;
        self.core.drain_mesh();
        self.core.drain_storage();
        self.core.release_pending();
        self.core.expire_timers();
        if self.core.stop.load(Ordering::Relaxed) && self.core.drain_deadline_ms.is_none() {
            self.core.start_drain();
        }
        // What this turn's handlers left for its end, then the sends.
        self.core.rearm_receives();
        self.core.retry_disk_reads();
        self.core.retry_accept();
        self.core.flush();
        if self.core.recorder.due(self.core.now_ms) {
            let stats = self.stats();
            self.core.publish_metrics(&stats);
        }
        Ok(!self.core.drained())
    }

    fn dispatch(&mut self, c: Completion) {
        let Some(token) = Token::decode(c.user_data) else {
            panic!("completion with unknown user data {:#x}", c.user_data);
        };
        match token.kind {
            OpKind::Accept => {
                let peer = (c.result >= 0)
                    .then(|| self.ring.peer_ip(c.result))
                    .flatten();
                self.core.on_accept(c, peer);
            }
            OpKind::Recv => {
                let Some(index) = self.core.live(token) else {
                    // Connections are freed only after their last receive
                    // completion, so this cannot carry a buffer.
                    assert!(c.buffer_id().is_none(), "stale receive with a buffer");
                    return;
                };
                let bytes = match c.buffer_id() {
                    Some(bid) if c.result > 0 => self.ring.buffer(bid, c.result as usize),
                    _ => &[],
                };
                self.core.on_recv(index, c, bytes);
                if let Some(bid) = c.buffer_id() {
                    self.ring.recycle(bid);
                }
            }
            OpKind::Send => {
                if let Some(index) = self.core.live(token) {
                    self.core.on_send(index, c);
                }
            }
            OpKind::Close => {
                if let Some(index) = self.core.live(token) {
                    self.core.conns[index as usize].close_in_flight = false;
                    self.core.free_if_done(index);
                }
            }
            OpKind::Reject => self.core.on_reject_sent(token, c),
            OpKind::Cancel | OpKind::Wake | OpKind::CloseOrphan => {}
        }
    }

    pub fn stats(&self) -> ShardStats {
        ShardStats {
            cq_overflows: self.ring.cq_overflows(),
            ..self.core.stats
        }
    }

    pub fn connections(&self) -> usize {
        self.core.conns.len()
    }

    /// Frames still referenced in the arena: only history once every
    /// connection is gone (a leak check for tests).
    pub fn frames_live(&self) -> usize {
        self.core.arena.frames_live()
    }

    /// Connections that have not finished HELLO (0 once all are gone).
    pub fn handshakes(&self) -> u32 {
        self.core.handshakes.count()
    }

    /// Connections counted per source across every shard: 0 once all are
    /// gone (a leak check for tests).
    pub fn sources_counted(&self) -> u64 {
        self.core.sources.total()
    }

    /// Frames held by topic histories.
    pub fn history_frames(&self) -> usize {
        self.core.topics.history_frames()
    }

    /// Bytes queued for each connection, largest first (for tests and status).
    pub fn queued_bytes(&self) -> Vec<usize> {
        let mut queued: Vec<usize> = self
            .core
            .conns
            .iter()
            .map(|(_, c)| c.queued_bytes())
            .collect();
        queued.sort_unstable_by(|a, b| b.cmp(a));
        queued
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // Frames go back to the arena; the ring (dropped with the shard)
        // cancels whatever the kernel still had.
        self.release_held();
        self.topics.clear_history(&mut self.arena);
    }
}

impl Core {
    fn conn_id(&self, index: u32) -> ConnId {
        ConnId {
            index,
            generation: self.generations[index as usize],
        }
    }

    /// Whether `id` is still the connection it was, and open (past HELLO,
    /// not closing): the one liveness check for anything that waited.
    fn is_open(&self, id: ConnId) -> bool {
        self.conns.get(id.index as usize).is_some_and(|c| {
            c.state == ConnState::Open && self.generations[id.index as usize] == id.generation
        })
    }

    fn token(&self, kind: OpKind, index: u32) -> u64 {
        Token::new(kind, self.generations[index as usize], index).encode()
    }

    /// The slot of a completion's connection, if it is still the same one.
    fn live(&self, token: Token) -> Option<u32> {
        let index = token.index as usize;
        (self.conns.contains(index)
            && self.generations[index] & GENERATION_MASK == token.generation)
            .then_some(token.index)
    }

    /// A frame from the arena, evicting the oldest history if memory is short.
    pub(super) fn alloc(&mut self, len: usize, purpose: Use) -> Option<FrameRef> {
        loop {
            if let Some(frame) = self.arena.alloc(len, purpose) {
                return Some(frame);
            }
            if !self.topics.evict_for_memory(&mut self.arena) {
                return None;
            }
        }
    }

    /// An epoch for a new history (0 means none yet).
    fn fresh_epoch(&mut self) -> u64 {
        loop {
            let epoch = self.random();
            if epoch != 0 {
                return epoch;
            }
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: jitter only, no security role.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
