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

use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod handshakes;

use cluecast_proto::{
    decode, event_publish_ts_ns, ErrorCode, ErrorFrame, Event, Frame, GoAway, GoAwayReason, Limits,
    Path, PathQuery, Position, Publish, PublishAck, ResumePoint, StartMode, Subscribe,
    SubscribeStatus, Subscribed, TopicClose, TopicClosed, Welcome, ACK_FLAG_DURABLE,
    PATH_FLAG_LAST, PROTOCOL_VERSION,
};
use cluecast_sys::spsc;
use slab::Slab;

use crate::admission::{is_this_host, Bucket, Rate, SourceCounts};
use crate::arena::{Arena, FrameRef, Use};
use crate::auth::{Grant, Keys};
use crate::conn::{Conn, ConnState, SubRef};
use crate::metrics::{Gauges, Recorder, ShardMetrics, UNCLASSIFIED};
use crate::ring::{Completion, Op, OpKind, Ring, Token, GENERATION_MASK};
use crate::storage::{
    decode_path_frames, Durability, Notice, PathRequest, ReadReply, ReadRequest, ReadStatus,
    StorageLink, StoredTopic, APPEND, CLOSE, EVENTS, PATH_FRAMES, PATH_READ, POSITION, READ,
    RESUME,
};
use crate::timer::TimerWheel;
use crate::tls::{TlsConfig, TlsConn};
use crate::topics::{Purpose, Subscriber, TopicLimits, Topics};
pub use handshakes::HandshakeLimits;
use handshakes::{Handshakes, PressureReport, NO_SOURCE};

/// Most frames gathered into one send (the kernel's UIO_MAXIOV is 1024; more
/// than this buys nothing for small frames).
const SEND_FRAMES_MAX: usize = 64;
/// Most bytes gathered into one send.
const SEND_BYTES_MAX: usize = 64 << 10;
/// GOAWAY(ServerFull) frames encoded at start-up, each with its own
/// jittered retry hint; a refused client gets one at random.
const REJECT_FRAMES: usize = 64;
/// Of each admission rate's burst, the last 1/this is kept for sources that
/// hold no handshake (see `may_enter`).
const QUIET_RESERVE_PARTS: u32 = 8;
/// Channel records handled per peer per turn, so one busy peer cannot starve
/// the ring.
const MESH_RECORDS_PER_TURN: usize = 4096;
const TIMER_TICK_MS: u64 = 50;
const TIMER_SLOTS: usize = 1024;
/// How long a closing connection may take to flush its last frames (at most
/// one send's worth and a GOAWAY or ERROR): long enough for a phone on a poor
/// link, short enough that a peer that stopped reading cannot hold the slot.
const LINGER_MS: u64 = 10_000;

/// Capacity a connection's partial-frame buffer may keep once emptied.
const RX_KEEP_BYTES: usize = 4096;

/// After the drain deadline cuts the stragglers, how long their cancels and
/// closes may take before the shard stops anyway.
pub const DRAIN_GRACE_MS: u64 = 1_000;

/// Channel record kinds.
const RECORD_EVENT: u8 = 1;
/// A client's PUBLISH or TOPIC_CLOSE for the topic's owner: origin, then
/// the frame.
const RECORD_REQUEST: u8 = 2;
/// The owner's answer to a forwarded request: origin, then the encoded
/// PUBLISH_ACK or TOPIC_CLOSED.
const RECORD_ANSWER: u8 = 3;
/// The owner closed a topic: its last sequence (u64), then the topic.
const RECORD_CLOSED: u8 = 4;
/// Forwarded requests and their answers start with the origin connection's id.
const ORIGIN_BYTES: usize = 8;
/// An answer record carrying a PUBLISH_ACK (28 bytes).
const ACK_RECORD_BYTES: usize = ORIGIN_BYTES + 28;
/// A TOPIC_CLOSED frame without its topic's bytes.
const TOPIC_CLOSED_BYTES: usize = 20;
/// The longest answer: TOPIC_CLOSED with a 255-byte topic.
const ANSWER_BYTES_MAX: usize = TOPIC_CLOSED_BYTES + 255;
/// How long a subscriber whose history is not yet on disk (or whose read
/// failed) waits before asking again.
const DISK_RETRY_MS: u64 = 50;
/// Bytes of history read from disk that one turn hands to subscribers; the
/// rest waits for the next turn, after live events have gone out.
const DISK_REPLY_BYTES_PER_TURN: usize = 256 << 10;
/// How often the queue gauges walk every connection (a read of each).
const QUEUE_WALK_INTERVAL_MS: u64 = 1_000;

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

/// Counters a shard keeps about itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShardStats {
    pub accepted: u64,
    /// Connections refused (GOAWAY ServerFull with a retry hint; closed when
    /// TLS is on): the shard full, its source at its limit, accepts or TLS
    /// handshakes past their rate.
    pub rejected_full: u64,
    pub refused_source: u64,
    pub refused_rate: u64,
    pub refused_tls_rate: u64,
    /// Handshakes cut to make room for a newcomer (GOAWAY ServerFull), and
    /// those that sent no whole HELLO in time (ERROR HandshakeTimeout).
    pub handshakes_evicted: u64,
    pub handshakes_timed_out: u64,
    /// Publishes answered Overloaded for their connection's rate.
    pub publishes_rate_limited: u64,
    pub closed: u64,
    pub published: u64,
    pub events_from_peers: u64,
    pub deliveries: u64,
    pub sends: u64,
    pub send_bytes: u64,
    pub short_sends: u64,
    pub zero_copy_sends: u64,
    pub catch_ups: u64,
    pub slow_consumer_goaways: u64,
    /// Reads of history from disk, and the events they delivered.
    pub disk_reads: u64,
    pub disk_deliveries: u64,
    /// FAILED notices from the storage writer.
    pub storage_failures: u64,
    /// Positions handed to the writer, and those not stored (no client_id,
    /// memory-only history, or the writer a whole channel behind).
    pub positions: u64,
    pub positions_not_stored: u64,
    pub errors_sent: u64,
    /// Connections whose peer broke TLS (a bad handshake, a forged record).
    pub tls_failures: u64,
    /// Requests refused for the connection's token rights, and
    /// connections told their token expired.
    pub not_authorized: u64,
    pub tokens_expired: u64,
    pub recv_no_buffers: u64,
    pub overloaded: u64,
    /// Completions the kernel had to hold back because the queue was full.
    pub cq_overflows: u64,
}

/// A block of iovecs and the msghdr pointing at them, for one gathering send.
/// Never moved once made (its vector never grows past the capacity reserved
/// at start-up), so the kernel may read it.
struct IovBlock {
    msg: libc::msghdr,
    iov: [libc::iovec; SEND_FRAMES_MAX],
}

impl IovBlock {
    fn new() -> IovBlock {
        IovBlock {
            msg: libc::msghdr {
                msg_name: std::ptr::null_mut(),
                msg_namelen: 0,
                msg_iov: std::ptr::null_mut(),
                msg_iovlen: 0,
                msg_control: std::ptr::null_mut(),
                msg_controllen: 0,
                msg_flags: 0,
            },
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; SEND_FRAMES_MAX],
        }
    }
}

/// Who gets a publish's acknowledgement.
#[derive(Clone, Copy, Debug)]
enum AckTo {
    Local {
        conn: u32,
        generation: u32,
        request_id: u32,
    },
    /// A publish forwarded by a peer shard: the ack goes back over its channel.
    Peer {
        peer: usize,
        origin: [u8; ORIGIN_BYTES],
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

/// An event sequenced here, or a close ordered here, waiting for the WAL
/// sync that makes it durable (`sync` durability) before anyone sees it.
struct Pending {
    /// Its number among this shard's appends.
    append: u64,
    topic: u32,
    ack: AckTo,
    /// The write failed: answer with an error, change nothing.
    failed: bool,
    what: Awaiting,
}

enum Awaiting {
    /// Delivered to subscribers and acknowledged once durable.
    Event {
        seq: u64,
        epoch: u64,
        frame: FrameRef,
    },
    /// The topic ends everywhere once its deletion is durable. Its name is
    /// kept for the answer: after a failure the topic may go before that.
    Close { name: Box<[u8]> },
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

    listener: Option<RawFd>,
    accept_armed: bool,
    accept_retry_at_ms: Option<u64>,

    conns: Slab<Conn>,
    generations: Vec<u32>,
    connections_max: usize,
    /// The GOAWAY(ServerFull) frames, back to back; never moved or freed, so
    /// the kernel may read them while a refusal is in flight.
    reject_frames: Box<[u8]>,
    reject_frame_bytes: usize,

    arena: Arena,
    topics: Topics,
    timers: TimerWheel,
    fired: Vec<u32>,

    mesh_tx: Vec<Option<spsc::Sender>>,
    mesh_rx: Vec<Option<spsc::Receiver>>,
    peer_ring_fds: Vec<RawFd>,
    /// A channel still had records after this turn's budget, or durable
    /// events wait for room in a peer's channel.
    mesh_backlog: bool,

    storage: Option<StorageLink>,
    /// APPEND records pushed to the writer, ever (the writer counts alike).
    appends: u64,
    durable_through: u64,
    /// Events and closes waiting for durability, in append order, and the
    /// events' bytes.
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    /// A write failed: publishes are refused until RESUME reaches the writer.
    resume_owed: bool,
    /// An async write failed and the writer retries it: publishes are
    /// refused until the next DURABLE notice.
    storage_stalled: bool,
    /// Subscribers to feed from disk again at `disk_retry_at_ms`.
    disk_retry: Vec<u32>,
    disk_retry_at_ms: u64,
    /// A read reply, copied out of its channel so the shard may act on it.
    reply_scratch: Vec<u8>,
    /// POSITION records pushed to the writer, ever, and how many of them it
    /// has written: a PATH_QUERY waits in `path_reads_waiting` (with the
    /// count it must see, and its read request) until the positions
    /// received before it are readable.
    positions_pushed: u64,
    positions_written: u64,
    path_reads_waiting: VecDeque<(u64, Box<[u8]>)>,

    /// One block per connection sending at once, made the first time that
    /// many send together (so idle connections cost none): with fewer, a
    /// backlogged connection would send one frame per send and never catch
    /// up. Room for every slot is reserved at start-up (address space only
    /// until used).
    iov_blocks: Vec<IovBlock>,
    iov_free: Vec<u32>,

    /// Operations produced by handlers, pushed to the ring at the end of a turn.
    ops: Vec<(Op, u64)>,
    /// Connections with frames to send and no send in flight.
    dirty: Vec<u32>,
    /// Connections whose multishot receive ended for want of buffers.
    recv_rearm: Vec<u32>,

    keys: Option<Arc<Keys>>,
    sources: Arc<SourceCounts>,
    /// Connections in the Handshake state.
    handshakes: Handshakes,
    accept_rate: Rate,
    accepts: Bucket,
    tls_handshake_rate: Rate,
    tls_handshakes: Bucket,
    publish_rate: Rate,
    tls: Option<Arc<TlsConfig>>,
    /// Plaintext decrypted from one receive, before it is parsed.
    tls_plain: Vec<u8>,
    stop: Arc<AtomicBool>,
    drain_deadline_ms: Option<u64>,
    /// The clocks as of this turn.
    now_ms: u64,
    wall_ns: u64,
    rng: u64,
    pub stats: ShardStats,
    /// Counts for the metrics beyond `stats`, and their copying.
    recorder: Recorder,
    /// Subscriptions held by this shard's connections.
    subscriptions: u64,
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

/// The MSG_RING that wakes the thread sleeping on `ring_fd`.
fn wake_op(ring_fd: RawFd, shard_id: usize) -> (Op, u64) {
    let token = Token::new(OpKind::Wake, 0, shard_id as u32).encode();
    let op = Op::Wake {
        ring_fd,
        user_data: token,
    };
    (op, token)
}

/// Hands a record to the storage writer, waking it if it sleeps; false when
/// its channel is full.
fn push_to_writer(
    link: &StorageLink,
    ops: &mut Vec<(Op, u64)>,
    shard_id: usize,
    kind: u8,
    parts: &[&[u8]],
) -> bool {
    if !link.append_tx.push(kind, parts) {
        return false;
    }
    if link.append_tx.ring_doorbell() {
        ops.push(wake_op(link.writer_ring_fd, shard_id));
    }
    true
}

/// Records how long after its sequencing an EVENT frame was sent (other
/// frames are not events and are skipped).
fn record_publish_to_send(recorder: &mut Recorder, wall_ns: u64, frame: &[u8]) {
    if let Some(published_ns) = event_publish_ts_ns(frame) {
        // The wall clock may step back: a late event is never negative.
        recorder.publish_to_send_us(wall_ns.saturating_sub(published_ns) / 1_000);
    }
}

fn is_transient(errno: i32) -> bool {
    matches!(
        errno,
        libc::EAGAIN | libc::EINTR | libc::ENOBUFS | libc::ENOMEM
    )
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
        let iov_blocks = Vec::with_capacity(slots);
        let iov_free = Vec::with_capacity(slots);
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
            listener: Some(setup.listener),
            accept_armed: false,
            accept_retry_at_ms: None,
            conns: Slab::with_capacity(slots),
            generations: vec![0; slots],
            connections_max: setup.connections_max,
            reject_frames: Box::default(),
            reject_frame_bytes: 0,
            arena: setup.arena,
            topics: Topics::new(setup.topic_limits),
            timers: TimerWheel::new(slots, TIMER_SLOTS, TIMER_TICK_MS, now_ms),
            fired: Vec::new(),
            mesh_tx: setup.mesh_tx,
            mesh_rx: setup.mesh_rx,
            peer_ring_fds: setup.peer_ring_fds,
            mesh_backlog: false,
            storage: setup.storage,
            appends: 0,
            durable_through: 0,
            pending: VecDeque::new(),
            pending_bytes: 0,
            resume_owed: false,
            storage_stalled: false,
            disk_retry: Vec::new(),
            disk_retry_at_ms: 0,
            reply_scratch: Vec::new(),
            positions_pushed: 0,
            positions_written: 0,
            path_reads_waiting: VecDeque::new(),
            iov_blocks,
            iov_free,
            ops: Vec::new(),
            dirty: Vec::new(),
            recv_rearm: Vec::new(),
            keys: setup.keys,
            sources: setup.sources,
            handshakes,
            accept_rate: setup.accept_rate,
            accepts: Bucket::new(setup.accept_rate, now_ms),
            tls_handshake_rate: setup.tls_handshake_rate,
            tls_handshakes: Bucket::new(setup.tls_handshake_rate, now_ms),
            publish_rate: setup.publish_rate,
            tls: setup.tls,
            tls_plain: Vec::new(),
            stop: setup.stop,
            drain_deadline_ms: None,
            now_ms,
            wall_ns: ring.wall_ns(),
            rng: setup.epoch ^ (setup.id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            stats: ShardStats::default(),
            recorder: Recorder::new(setup.metrics),
            subscriptions: 0,
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
        for (op, user_data) in self.core.ops.drain(..) {
            self.ring.push(op, user_data);
        }
        let timeout_ms = if self.core.mesh_backlog {
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
        self.core.drain_mesh();
        self.core.drain_storage();
        self.core.release_pending();
        self.core.expire_timers();
        if self.core.stop.load(Ordering::Relaxed) && self.core.drain_deadline_ms.is_none() {
            self.core.start_drain();
        }
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
        for pending in std::mem::take(&mut self.pending) {
            if let Awaiting::Event { frame, .. } = pending.what {
                self.arena.release(frame);
            }
        }
        self.topics.clear_history(&mut self.arena);
    }
}

impl Core {
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

    fn arm_accept(&mut self) {
        if let Some(listener) = self.listener {
            self.ops.push((
                Op::AcceptMulti { listener },
                Token::new(OpKind::Accept, 0, 0).encode(),
            ));
            self.accept_armed = true;
        }
    }

    // ---- accepting ----------------------------------------------------

    fn on_accept(&mut self, c: Completion, peer: Option<IpAddr>) {
        if !c.more() {
            self.accept_armed = false;
        }
        if c.result >= 0 {
            let fd = c.result;
            let source = peer
                .filter(|ip| !is_this_host(*ip))
                .map(|ip| self.sources.slot(ip));
            if self.listener.is_none() {
                self.close_orphan(fd);
            } else if self.may_enter(source) {
                // A socket already gone (no peer) is admitted uncounted; its
                // first receive ends it.
                self.admit(fd, source);
            } else {
                self.reject(fd);
            }
        } else if c.result != -libc::ECANCELED {
            crate::warn!(
                "shard {}: accept failed: {}",
                self.id,
                io::Error::from_raw_os_error(-c.result)
            );
            // Out of descriptors or memory: give the system a moment.
            self.accept_retry_at_ms = Some(self.now_ms + 100);
        }
        if !self.accept_armed && self.accept_retry_at_ms.is_none() {
            self.arm_accept();
        }
    }

    /// Whether a connection from `source` may come in (counted against its
    /// source if so); a refusal is counted by its reason. A source holding
    /// no handshake here is a newcomer: the last `1 / QUIET_RESERVE_PARTS`
    /// of each rate's burst is kept for newcomers, so sources holding
    /// handshakes open cannot use it all up.
    fn may_enter(&mut self, source: Option<u32>) -> bool {
        let quiet = self.handshakes.is_quiet(source.unwrap_or(NO_SOURCE));
        let reserve = |rate: Rate| {
            if quiet {
                0
            } else {
                rate.burst / QUIET_RESERVE_PARTS
            }
        };
        if self.conns.len() >= self.connections_max {
            self.stats.rejected_full += 1;
            return false;
        }
        if source.is_some_and(|slot| !self.sources.take(slot)) {
            self.stats.refused_source += 1;
            return false;
        }
        let (now_ms, accept_rate, tls_rate) =
            (self.now_ms, self.accept_rate, self.tls_handshake_rate);
        let refused = if !self
            .accepts
            .take_leaving(accept_rate, now_ms, reserve(accept_rate))
        {
            Some(&mut self.stats.refused_rate)
        } else if self.tls.is_some()
            && !self
                .tls_handshakes
                .take_leaving(tls_rate, now_ms, reserve(tls_rate))
        {
            Some(&mut self.stats.refused_tls_rate)
        } else {
            None
        };
        match refused {
            None => true,
            Some(count) => {
                *count += 1;
                if let Some(slot) = source {
                    self.sources.release(slot);
                }
                false
            }
        }
    }

    /// Makes room in a full handshake table by cutting its likeliest
    /// attacker (see `Handshakes::victim`) with GOAWAY ServerFull; a TLS
    /// client still in its TLS handshake cannot be told anything and is
    /// closed.
    fn evict_handshake(&mut self) {
        let Some(index) = self.handshakes.victim() else {
            return;
        };
        self.stats.handshakes_evicted += 1;
        self.handshakes.evicted();
        let tls_unfinished = self.conns[index as usize]
            .tls
            .as_ref()
            .is_some_and(|tls| tls.handshaking());
        if tls_unfinished {
            self.abort(index);
        } else {
            let retry_after_ms = self.jittered_retry();
            self.goaway_resume(index, GoAwayReason::ServerFull, retry_after_ms);
        }
        debug_assert!(!self.handshakes.contains(index));
    }

    fn close_orphan(&mut self, fd: RawFd) {
        self.ops.push((
            Op::Close { fd },
            Token::new(OpKind::CloseOrphan, 0, 0).encode(),
        ));
    }

    fn insert(&mut self, fd: RawFd) -> u32 {
        let index = self.conns.insert(Conn::new(fd, self.now_ms)) as u32;
        assert!(
            (index as usize) < self.generations.len(),
            "slab outgrew its capacity"
        );
        index
    }

    fn admit(&mut self, fd: RawFd, source: Option<u32>) {
        if self.handshakes.is_full() {
            self.evict_handshake();
        }
        let index = self.insert(fd);
        let conn = &mut self.conns[index as usize];
        conn.source = source;
        conn.publishes = Bucket::new(self.publish_rate, self.now_ms);
        conn.tls = self
            .tls
            .as_ref()
            .map(|config| Box::new(TlsConn::new(config)));
        self.handshakes
            .enter(index, source.unwrap_or(NO_SOURCE), self.now_ms);
        self.stats.accepted += 1;
        self.arm_recv(index);
    }

    /// Past a limit: a GOAWAY with a jittered retry hint, so a reconnect
    /// storm spreads itself out, then close. No slot, no state: the token
    /// carries the socket, which frame and how much of it is sent.
    fn reject(&mut self, fd: RawFd) {
        if self.tls.is_some() {
            // A refusal in the clear means nothing to a TLS client, and a
            // handshake for it would spend what the limit protects: close.
            self.close_orphan(fd);
            return;
        }
        let which = (self.random() % REJECT_FRAMES as u64) as u32;
        self.send_reject(fd, which, 0);
    }

    fn send_reject(&mut self, fd: RawFd, which: u32, sent: u32) {
        let at = which as usize * self.reject_frame_bytes + sent as usize;
        let end = (which as usize + 1) * self.reject_frame_bytes;
        self.ops.push((
            Op::Send {
                fd,
                ptr: self.reject_frames[at..end].as_ptr(),
                len: (end - at) as u32,
            },
            Token::new(OpKind::Reject, sent << 8 | which, fd as u32).encode(),
        ));
    }

    /// A refusal's send completed: finish a short one, else close.
    fn on_reject_sent(&mut self, token: Token, c: Completion) {
        let fd = token.index as RawFd;
        let (which, sent) = (token.generation & 0xff, token.generation >> 8);
        let sent = sent + c.result.max(0) as u32;
        let unfinished = c.result > 0 && (sent as usize) < self.reject_frame_bytes;
        if unfinished || (c.result < 0 && is_transient(-c.result)) {
            self.send_reject(fd, which, sent);
        } else {
            self.close_orphan(fd);
        }
    }

    fn encode_reject_frames(&mut self) {
        // The token holds which frame (8 bits) and how much of it was sent.
        const { assert!(REJECT_FRAMES <= 256) };
        let mut bytes = Vec::new();
        for _ in 0..REJECT_FRAMES {
            let frame = Frame::GoAway(GoAway {
                reason: GoAwayReason::ServerFull,
                retry_after_ms: self.jittered_retry(),
                reconnect: b"",
                resume: vec![],
            });
            self.reject_frame_bytes = frame.encoded_len();
            frame.encode(&mut bytes);
        }
        self.reject_frames = bytes.into_boxed_slice();
    }

    fn jittered_retry(&mut self) -> u32 {
        let base = self.retry_after_ms as u64;
        (base + self.random() % (base + 1)) as u32
    }

    fn arm_recv(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        debug_assert!(!conn.recv_armed);
        conn.recv_armed = true;
        let fd = conn.fd;
        let token = self.token(OpKind::Recv, index);
        self.ops.push((Op::RecvMulti { fd }, token));
    }

    // ---- receiving ----------------------------------------------------

    fn on_recv(&mut self, index: u32, c: Completion, bytes: &[u8]) {
        let conn = &mut self.conns[index as usize];
        if !c.more() {
            conn.recv_armed = false;
        }
        let reading = matches!(conn.state, ConnState::Handshake | ConnState::Open);
        match c.result {
            n if n > 0 => {
                if reading {
                    conn.last_rx_ms = self.now_ms;
                    self.on_bytes(index, bytes);
                    let conn = &self.conns[index as usize];
                    let still_reading =
                        matches!(conn.state, ConnState::Handshake | ConnState::Open);
                    if still_reading && !conn.recv_armed {
                        self.arm_recv(index);
                    }
                }
            }
            0 => {
                if reading {
                    self.abort(index);
                }
            }
            e if e == -libc::ENOBUFS => {
                self.stats.recv_no_buffers += 1;
                if reading {
                    // Buffers come back at the end of this turn's handlers.
                    self.recv_rearm.push(index);
                }
            }
            e if e == -libc::ECANCELED => {}
            _ => {
                if reading {
                    self.abort(index);
                }
            }
        }
        self.free_if_done(index);
    }

    /// Bytes received: decrypted first on a TLS connection.
    fn on_bytes(&mut self, index: u32, bytes: &[u8]) {
        let Some(mut tls) = self.conns[index as usize].tls.take() else {
            self.on_plaintext(index, bytes);
            return;
        };
        let mut plain = std::mem::take(&mut self.tls_plain);
        plain.clear();
        let received = tls.receive(bytes, &mut plain);
        let wants_write = tls.has_output();
        self.conns[index as usize].tls = Some(tls);
        match received {
            Err(why) => {
                self.stats.tls_failures += 1;
                crate::debug!("shard {}: connection {index}: TLS: {why}", self.id);
                self.abort(index);
            }
            Ok(()) => {
                if !plain.is_empty() {
                    self.on_plaintext(index, &plain);
                }
                // Handshake records to answer with.
                if wants_write && self.conns[index as usize].state != ConnState::Closing {
                    self.mark_dirty(index);
                }
            }
        }
        self.tls_plain = plain;
    }

    /// Handles every whole frame in what arrived and keeps the partial rest.
    fn on_plaintext(&mut self, index: u32, bytes: &[u8]) {
        let mut pending = std::mem::take(&mut self.conns[index as usize].rx);
        if pending.is_empty() {
            // The common case: whole frames straight from the receive buffer.
            if let Some(used) = self.on_frames(index, bytes) {
                pending.extend_from_slice(&bytes[used..]);
            }
        } else {
            pending.extend_from_slice(bytes);
            match self.on_frames(index, &pending) {
                Some(used) => drop(pending.drain(..used)),
                None => pending.clear(),
            }
        }
        // A large frame once received must not pin its buffer for the life
        // of the connection.
        if pending.is_empty() && pending.capacity() > RX_KEEP_BYTES {
            pending = Vec::new();
        }
        self.conns[index as usize].rx = pending;
    }

    /// Handles the whole frames at the front of `input`; returns how many
    /// bytes they took, or None once the connection stopped reading.
    fn on_frames(&mut self, index: u32, input: &[u8]) -> Option<usize> {
        let mut at = 0;
        while at < input.len() {
            match decode(&input[at..], &self.limits) {
                Ok(Some((frame, used))) => {
                    let raw = &input[at..at + used];
                    at += used;
                    self.on_frame(index, frame, raw);
                    let state = self.conns[index as usize].state;
                    if !matches!(state, ConnState::Handshake | ConnState::Open) {
                        return None;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    self.error_close(index, err.code(), &err.to_string());
                    return None;
                }
            }
        }
        Some(at)
    }

    fn on_frame(&mut self, index: u32, frame: Frame<'_>, raw: &[u8]) {
        let state = self.conns[index as usize].state;
        match (state, frame) {
            (ConnState::Handshake, Frame::Hello(hello)) => {
                if hello.version_min > PROTOCOL_VERSION || hello.version_max < PROTOCOL_VERSION {
                    let message = format!(
                        "this server speaks protocol version {PROTOCOL_VERSION} only, the client \
                         offered {}..={}",
                        hello.version_min, hello.version_max
                    );
                    self.error_close(index, ErrorCode::UnsupportedVersion, &message);
                    return;
                }
                if let Some(keys) = &self.keys {
                    let now_s = self.wall_ns / 1_000_000_000;
                    match keys.verify(hello.token, now_s) {
                        Ok(grant) => {
                            // The token's clock is the wall's; timers run on
                            // the shard's.
                            let left_ms = (grant.expires_s - now_s).saturating_mul(1000);
                            let conn = &mut self.conns[index as usize];
                            conn.token_deadline_ms = self.now_ms.saturating_add(left_ms);
                            conn.player = grant.subject.clone();
                            conn.grant = Some(Box::new(grant));
                        }
                        Err(refusal) => {
                            self.stats.not_authorized += 1;
                            let message = refusal.to_string();
                            self.error_close(index, ErrorCode::NotAuthorized, &message);
                            return;
                        }
                    }
                }
                let welcome = Frame::Welcome(Welcome {
                    version: PROTOCOL_VERSION,
                    heartbeat_ms: self.heartbeat_ms,
                    idle_timeout_ms: self.idle_timeout_ms,
                    frame_bytes_max: self.limits.frame_bytes_max,
                    payload_bytes_max: self.limits.payload_bytes_max,
                    subscriptions_max: self.subscriptions_max as u16,
                    topic_bytes_max: self.limits.topic_bytes_max,
                });
                self.handshakes.leave(index);
                let conn = &mut self.conns[index as usize];
                conn.state = ConnState::Open;
                if conn.grant.is_none() {
                    conn.player = hello.client_id.into();
                }
                let deadline =
                    (self.now_ms + self.idle_timeout_ms as u64).min(conn.token_deadline_ms);
                self.timers.schedule(index, deadline);
                self.queue_control(index, &welcome);
            }
            (ConnState::Handshake, _) => {
                self.error_close(
                    index,
                    ErrorCode::UnexpectedFrame,
                    "the first frame must be HELLO",
                );
            }
            (_, Frame::Subscribe(subscribe)) => self.subscribe(index, subscribe),
            (_, Frame::Unsubscribe { topic }) => {
                if let Some(t) = self.topics.find(topic) {
                    self.unsubscribe(index, t);
                }
                self.queue_control(index, &Frame::Unsubscribed { topic });
            }
            (_, Frame::Publish(publish)) => self.publish(index, publish, raw),
            (_, Frame::TopicClose(close)) => self.close_topic(index, close, raw),
            (_, Frame::Position(position)) => {
                if let Err(code) = position.validate() {
                    self.error_close(index, code, "position out of range");
                    return;
                }
                self.store_position(index, &position);
            }
            (_, Frame::PathQuery(query)) => self.path_query(index, &query),
            (_, Frame::Ping { nonce }) => {
                self.queue_control(index, &Frame::Pong { nonce });
            }
            (_, Frame::Pong { .. }) => {}
            (_, other) => {
                let message = format!(
                    "{:?} frames are sent by the server only",
                    other.frame_type()
                );
                self.error_close(index, ErrorCode::UnexpectedFrame, &message);
            }
        }
    }

    /// Whether the connection's token allows what `right` checks (always,
    /// when the appliance checks no tokens); a refusal is counted.
    fn allowed(&mut self, index: u32, right: impl Fn(&Grant) -> bool) -> bool {
        let grant = self.conns[index as usize].grant.as_deref();
        let allowed = grant.is_none_or(right);
        if !allowed {
            self.stats.not_authorized += 1;
        }
        allowed
    }

    // ---- subscriptions ------------------------------------------------

    fn subscribe(&mut self, index: u32, s: Subscribe<'_>) {
        if !self.allowed(index, |g| g.may_subscribe(s.topic)) {
            let refused = Frame::Subscribed(Subscribed {
                status: SubscribeStatus::NotAuthorized,
                epoch: 0,
                oldest_seq: 0,
                last_seq: 0,
                topic: s.topic,
            });
            self.queue_control(index, &refused);
            return;
        }
        if let Some(existing) = self.topics.find(s.topic) {
            // A repeated SUBSCRIBE restarts the subscription from its position.
            self.unsubscribe(index, existing);
        }
        if self.conns[index as usize].subs.len() >= self.subscriptions_max {
            let message = format!(
                "at most {} subscriptions per connection",
                self.subscriptions_max
            );
            self.error_close(index, ErrorCode::TooManySubscriptions, &message);
            return;
        }
        let Some(t) = self.topics.find_or_create(s.topic, Purpose::Subscribe) else {
            self.error_close(index, ErrorCode::Overloaded, "the topic table is full");
            return;
        };
        let topic = self.topics.get(t);
        let oldest = topic.oldest_retained_seq();
        let (status, start) = match s.mode {
            StartMode::Live => (SubscribeStatus::Ok, topic.last_seq + 1),
            StartMode::Resume if s.epoch != 0 && s.epoch != topic.epoch => {
                (SubscribeStatus::EpochChanged, oldest)
            }
            StartMode::Resume if s.last_seq.saturating_add(1) < oldest => {
                (SubscribeStatus::NotRecovered, oldest)
            }
            StartMode::Resume => (SubscribeStatus::Ok, s.last_seq.saturating_add(1)),
        };
        let subscribed = Frame::Subscribed(Subscribed {
            status,
            epoch: topic.epoch,
            oldest_seq: if oldest > topic.last_seq { 0 } else { oldest },
            last_seq: topic.last_seq,
            topic: s.topic,
        });
        let catching_up = start <= topic.last_seq;
        if !self.queue_control(index, &subscribed) {
            return;
        }
        let generation = self.generations[index as usize];
        let topic = self.topics.get_mut(t);
        let position = topic.subscribers.len() as u32;
        topic.subscribers.push(Subscriber {
            conn: index,
            generation,
            next_seq: start,
            catching_up,
            reading: false,
        });
        let conn = &mut self.conns[index as usize];
        conn.subs.push(SubRef { topic: t, position });
        self.subscriptions += 1;
        if catching_up {
            conn.catching_up += 1;
            self.stats.catch_ups += 1;
            self.refill(index);
        }
    }

    fn unsubscribe(&mut self, index: u32, t: u32) {
        let conn = &mut self.conns[index as usize];
        let Some(i) = conn.subs.iter().position(|s| s.topic == t) else {
            return;
        };
        let sub_ref = conn.subs.swap_remove(i);
        self.subscriptions -= 1;
        let topic = self.topics.get_mut(t);
        let removed = topic.subscribers.swap_remove(sub_ref.position as usize);
        debug_assert_eq!(removed.conn, index);
        if removed.catching_up {
            conn.catching_up -= 1;
        }
        // The subscriber moved into the hole must learn its new position.
        if let Some(moved) = topic.subscribers.get(sub_ref.position as usize) {
            let owner = &mut self.conns[moved.conn as usize];
            let entry = owner
                .subs
                .iter_mut()
                .find(|s| s.topic == t)
                .expect("a subscriber's connection lists the subscription");
            entry.position = sub_ref.position;
        }
        self.topics.remove_if_unused(t);
    }

    fn unsubscribe_all(&mut self, index: u32) {
        while let Some(sub) = self.conns[index as usize].subs.last().copied() {
            self.unsubscribe(index, sub.topic);
        }
    }

    /// Feeds catching-up subscriptions from history while the queue has room.
    fn refill(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        let mut gap = false;
        let mut queued_any = false;
        let mut retry_disk = false;
        for i in 0..conn.subs.len() {
            let sub_ref = conn.subs[i];
            let topic = self.topics.get_mut(sub_ref.topic);
            let position = sub_ref.position as usize;
            if !topic.subscribers[position].catching_up {
                continue;
            }
            let mut next_seq = topic.subscribers[position].next_seq;
            let mut caught_up = false;
            loop {
                if next_seq > topic.last_seq {
                    caught_up = true;
                    break;
                }
                let Some(frame) = topic.history_frame(next_seq) else {
                    if !topic.on_disk_only(next_seq) {
                        gap = true;
                    } else if !topic.subscribers[position].reading {
                        // Ask for what fits in the queue now; the reply
                        // continues this loop (`on_read_reply`).
                        let room = self.queue_bytes_max.saturating_sub(conn.queued_bytes());
                        let request = ReadRequest {
                            conn: index,
                            generation: self.generations[index as usize],
                            epoch: topic.epoch,
                            from: next_seq,
                            to: topic.oldest_seq() - 1,
                            bytes_max: room.min(u32::MAX as usize) as u32,
                            topic: &topic.name,
                        };
                        let link = self
                            .storage
                            .as_ref()
                            .expect("only stored topics are on disk");
                        if room < self.queue_bytes_max / 4 {
                            // Wait for the socket to drain: the next send's
                            // completion refills.
                        } else if link.read_tx.push(READ, &[&request.encode(), &topic.name]) {
                            topic.subscribers[position].reading = true;
                            self.stats.disk_reads += 1;
                            if link.read_tx.ring_doorbell() {
                                let ring_fd = link.reader_ring_fd;
                                self.ops.push(wake_op(ring_fd, self.id));
                            }
                        } else {
                            retry_disk = true;
                        }
                    }
                    break;
                };
                let len = self.arena.len(frame);
                if !conn.has_room(len, self.queue_bytes_max) {
                    break;
                }
                self.arena.retain(frame);
                conn.push(frame, len);
                next_seq += 1;
                queued_any = true;
            }
            let sub = &mut topic.subscribers[position];
            sub.next_seq = next_seq;
            if caught_up {
                sub.catching_up = false;
                conn.catching_up -= 1;
            }
            if gap {
                break;
            }
        }
        if queued_any {
            self.mark_dirty(index);
        }
        if retry_disk {
            self.retry_from_disk(index);
        }
        if gap {
            // History moved past what this subscriber still needs.
            self.stats.slow_consumer_goaways += 1;
            self.goaway_resume(index, GoAwayReason::SlowConsumer, 0);
        }
    }

    // ---- players' paths ------------------------------------------------

    /// Appends a position to its player's path. Positions of a client that
    /// gave no client_id have no player to belong to, and with memory-only
    /// history there is no path; both are counted, not stored.
    fn store_position(&mut self, index: u32, position: &Position) {
        let player = &self.conns[index as usize].player;
        let Some(link) = self.storage.as_ref().filter(|_| !player.is_empty()) else {
            self.stats.positions_not_stored += 1;
            return;
        };
        let len = [player.len() as u8];
        let parts: [&[u8]; 3] = [&len, player, &position.to_bytes()];
        if push_to_writer(link, &mut self.ops, self.id, POSITION, &parts) {
            self.stats.positions += 1;
            self.positions_pushed += 1;
        } else {
            // The writer is behind by a whole channel: overload, counted.
            self.stats.positions_not_stored += 1;
        }
    }

    /// Passes a PATH_QUERY to the storage reader once every position this
    /// shard received before it is written (a connection reads its own
    /// writes); the answer comes back as whole PATH frames (`on_path_frames`).
    fn path_query(&mut self, index: u32, query: &PathQuery<'_>) {
        let allowed = self.allowed(index, |g| g.may_read_path(query.player));
        let refusal = match &self.storage {
            _ if !allowed => Some(ErrorCode::NotAuthorized),
            None => Some(ErrorCode::StorageFailed),
            Some(_) if self.conns[index as usize].path_query_in_flight => {
                Some(ErrorCode::Overloaded)
            }
            Some(_) => {
                let request = PathRequest {
                    conn: index,
                    generation: self.generations[index as usize],
                    request_id: query.request_id,
                    since_ms: query.since_ms,
                    player: query.player,
                };
                self.conns[index as usize].path_query_in_flight = true;
                if self.positions_written >= self.positions_pushed {
                    self.read_path(&request);
                } else {
                    let record = [&request.encode()[..], query.player].concat();
                    let wait_for = self.positions_pushed;
                    self.path_reads_waiting.push_back((wait_for, record.into()));
                }
                None
            }
        };
        if let Some(code) = refusal {
            self.refuse_path(index, query.request_id, code);
        }
    }

    /// Hands a path read to the reader; a full channel refuses it as
    /// Overloaded.
    fn read_path(&mut self, request: &PathRequest<'_>) {
        let link = self.storage.as_ref().expect("path reads need storage");
        if link
            .read_tx
            .push(PATH_READ, &[&request.encode(), request.player])
        {
            if link.read_tx.ring_doorbell() {
                self.ops.push(wake_op(link.reader_ring_fd, self.id));
            }
            return;
        }
        self.end_path_read(request, ErrorCode::Overloaded);
    }

    /// The writer has written positions up to `through`: the path reads
    /// waiting for them go to the reader.
    fn on_positions_written(&mut self, through: u64) {
        self.positions_written = self.positions_written.max(through);
        while let Some((wait_for, _)) = self.path_reads_waiting.front() {
            if *wait_for > self.positions_written {
                break;
            }
            let (_, record) = self.path_reads_waiting.pop_front().expect("front exists");
            self.read_path(&PathRequest::decode(&record));
        }
    }

    /// Answers a path read that will not reach the reader, if its
    /// connection is still the one that asked.
    fn end_path_read(&mut self, request: &PathRequest<'_>, code: ErrorCode) {
        let alive = self.conns.get(request.conn as usize).is_some_and(|c| {
            c.state == ConnState::Open
                && self.generations[request.conn as usize] == request.generation
        });
        if alive {
            self.conns[request.conn as usize].path_query_in_flight = false;
            self.refuse_path(request.conn, request.request_id, code);
        }
    }

    fn refuse_path(&mut self, index: u32, request_id: u32, code: ErrorCode) {
        let answer = Frame::Path(Path {
            request_id,
            status: code as u16,
            flags: PATH_FLAG_LAST,
            positions: &[],
        });
        self.queue_control(index, &answer);
    }

    /// The reader's answer to a PATH_QUERY: control frames, outside the
    /// queue bound (one answer per connection at a time, bounded in size).
    fn on_path_frames(&mut self, body: &[u8]) {
        let (index, generation, mut frames) = decode_path_frames(body);
        let alive = self.conns.get(index as usize).is_some_and(|c| {
            c.state == ConnState::Open && self.generations[index as usize] == generation
        });
        if !alive {
            return;
        }
        self.conns[index as usize].path_query_in_flight = false;
        while frames.len() >= 4 {
            let len = 4 + u32::from_be_bytes(frames[..4].try_into().expect("4 bytes")) as usize;
            let Some(frame) = self.alloc(len, Use::Control) else {
                crate::warn!("shard {}: no arena memory for a path answer", self.id);
                self.abort(index);
                return;
            };
            self.arena.bytes_mut(frame).copy_from_slice(&frames[..len]);
            self.conns[index as usize].push(frame, len);
            frames = &frames[len..];
        }
        self.mark_dirty(index);
    }

    // ---- publishing and fan-out ---------------------------------------

    fn publish(&mut self, index: u32, p: Publish<'_>, raw: &[u8]) {
        let refusal = if !self.allowed(index, |g| g.may_publish(p.topic)) {
            Some(ErrorCode::NotAuthorized)
        } else if !self.conns[index as usize]
            .publishes
            .take(self.publish_rate, self.now_ms)
        {
            self.stats.publishes_rate_limited += 1;
            Some(ErrorCode::Overloaded)
        } else {
            None
        };
        if let Some(code) = refusal {
            let ack = self.ack_frame(p.request_id, Err(code), false);
            self.queue_control(index, &ack);
            return;
        }
        let owner = topic_owner(p.topic, self.shards);
        if owner == self.id {
            let ack = AckTo::Local {
                conn: index,
                generation: self.generations[index as usize],
                request_id: p.request_id,
            };
            self.sequence(p.topic, p.payload, ack);
            return;
        }
        if !self.forward(owner, index, raw) {
            let ack = self.ack_frame(p.request_id, Err(ErrorCode::Overloaded), false);
            self.queue_control(index, &ack);
        }
    }

    /// Passes a client's request to the topic's owner; false (counted as
    /// overload) when the owner's channel is full.
    fn forward(&mut self, owner: usize, index: u32, raw: &[u8]) -> bool {
        let origin = self.origin(index);
        let tx = self.mesh_tx[owner]
            .as_ref()
            .expect("a channel to every peer");
        if !tx.push(RECORD_REQUEST, &[&origin, raw]) {
            self.stats.overloaded += 1;
            return false;
        }
        self.ring_doorbell(owner);
        true
    }

    fn origin(&self, index: u32) -> [u8; ORIGIN_BYTES] {
        let mut origin = [0u8; ORIGIN_BYTES];
        origin[..4].copy_from_slice(&index.to_be_bytes());
        origin[4..].copy_from_slice(&self.generations[index as usize].to_be_bytes());
        origin
    }

    fn ack_frame(
        &self,
        request_id: u32,
        result: Result<(u64, u64), ErrorCode>,
        durable: bool,
    ) -> Frame<'static> {
        let (status, epoch, seq) = match result {
            Ok((epoch, seq)) => (0, epoch, seq),
            Err(code) => (code as u16, 0, 0),
        };
        Frame::PublishAck(PublishAck {
            request_id,
            status,
            flags: if durable { ACK_FLAG_DURABLE } else { 0 },
            epoch,
            seq,
        })
    }

    /// Answers a publish; false (nothing sent) when the peer's channel has no
    /// room for the ack now.
    fn answer_publish(
        &mut self,
        to: AckTo,
        result: Result<(u64, u64), ErrorCode>,
        durable: bool,
    ) -> bool {
        let ack = self.ack_frame(to.request_id(), result, durable);
        self.answer(to, &ack)
    }

    /// Answers a TOPIC_CLOSE; false as for `answer_publish`.
    fn answer_close(&mut self, to: AckTo, topic: &[u8], result: Result<u64, ErrorCode>) -> bool {
        let (status, last_seq) = match result {
            Ok(last_seq) => (0, last_seq),
            Err(code) => (code as u16, 0),
        };
        let closed = Frame::TopicClosed(TopicClosed {
            request_id: to.request_id(),
            status,
            last_seq,
            topic,
        });
        self.answer(to, &closed)
    }

    /// Sends an answer to its requester: queued on the local connection
    /// (if still there), or handed back over the origin shard's channel.
    fn answer(&mut self, to: AckTo, frame: &Frame<'_>) -> bool {
        match to {
            AckTo::Local {
                conn, generation, ..
            } => {
                let alive = self.conns.get(conn as usize).is_some_and(|c| {
                    c.state == ConnState::Open && self.generations[conn as usize] == generation
                });
                if alive {
                    self.queue_control(conn, frame);
                }
                true
            }
            AckTo::Peer { peer, origin, .. } => {
                let mut bytes = [0u8; ANSWER_BYTES_MAX];
                let len = frame.encoded_len();
                frame.encode_to_slice(&mut bytes[..len]);
                let tx = self.mesh_tx[peer]
                    .as_ref()
                    .expect("a channel to every peer");
                if !tx.push(RECORD_ANSWER, &[&origin, &bytes[..len]]) {
                    return false;
                }
                self.ring_doorbell(peer);
                true
            }
        }
    }

    /// Whether every peer's channel has room for a record of `len` bytes,
    /// and the channel of `answer`'s peer for an answer of its bytes after it.
    fn peers_have_room(&self, len: usize, answer: Option<(usize, usize)>) -> bool {
        self.mesh_tx.iter().enumerate().all(|(peer, tx)| {
            tx.as_ref().is_none_or(|tx| match answer {
                Some((to, answer_bytes)) if to == peer => tx.has_room_for(&[len, answer_bytes]),
                _ => tx.has_room(len),
            })
        })
    }

    /// Hands an event to every peer shard (room was checked).
    fn send_to_peers(&mut self, frame: FrameRef) {
        for peer in 0..self.shards {
            if let Some(tx) = &self.mesh_tx[peer] {
                let pushed = tx.push(RECORD_EVENT, &[self.arena.bytes(frame)]);
                assert!(pushed, "room was checked before sequencing");
                self.ring_doorbell(peer);
            }
        }
    }

    /// Sequences a publish for a topic this shard owns and answers it: at
    /// once, or (`sync` durability) once the WAL sync covering it is done.
    /// A peer's ack always has room here (see `on_forwarded`).
    fn sequence(&mut self, name: &[u8], payload: &[u8], ack: AckTo) {
        let result = self.try_sequence(name, payload, ack);
        if let Some(result) = result {
            let answered = self.answer_publish(ack, result, false);
            assert!(answered, "room for the ack was checked");
        }
    }

    /// The answer to give now, or None when the event waits for durability.
    fn try_sequence(
        &mut self,
        name: &[u8],
        payload: &[u8],
        ack: AckTo,
    ) -> Option<Result<(u64, u64), ErrorCode>> {
        let t = self.topics.find_or_create(name, Purpose::Event);
        let Some(t) = t.filter(|&t| self.topics.claim_sequencing(t)) else {
            // Past this shard's share of --topics-max: a topic made just now
            // for this publish must not linger.
            if let Some(t) = t {
                self.topics.remove_if_unused(t);
            }
            self.stats.overloaded += 1;
            return Some(Err(ErrorCode::Overloaded));
        };
        if self.resume_owed || self.storage_stalled {
            return Some(Err(ErrorCode::StorageFailed));
        }
        if self.topics.get(t).closing {
            // Until the close is done the name has no history to add to.
            self.stats.overloaded += 1;
            return Some(Err(ErrorCode::Overloaded));
        }
        if self.topics.get(t).assigned_seq == 0 {
            // A new history: an epoch of its own, so a client holding a
            // sequence of an earlier history of this name (closed, or lost
            // with a wiped data directory) is never handed one of this.
            let epoch = self.fresh_epoch();
            self.topics.get_mut(t).epoch = epoch;
        }
        let topic = self.topics.get(t);
        let (seq, epoch) = (topic.assigned_seq + 1, topic.epoch);
        let event = Frame::Event(Event {
            seq,
            epoch,
            publish_ts_ns: self.wall_ns,
            topic: name,
            payload,
        });
        let len = event.encoded_len();
        let durability = self.storage.as_ref().map(|s| s.durability);
        let wait_for_sync = durability == Some(Durability::Sync);
        // In sync durability the events held until durable are bounded too
        // (a peer that stops draining must not make them pile up).
        let storage_has_room = self.storage.as_ref().is_none_or(|s| {
            s.append_tx.has_room(len)
                && (!wait_for_sync || self.pending_bytes + len <= s.pending_bytes_max)
        });
        // Synced events reach the peers later, when durable.
        let answer = ack.peer().map(|peer| (peer, ACK_RECORD_BYTES));
        let room = storage_has_room && (wait_for_sync || self.peers_have_room(len, answer));
        let frame = if room {
            self.alloc(len, Use::Event)
        } else {
            None
        };
        let Some(frame) = frame else {
            self.stats.overloaded += 1;
            return Some(Err(ErrorCode::Overloaded));
        };
        event.encode_to_slice(self.arena.bytes_mut(frame));
        if let Some(link) = &self.storage {
            let bytes = self.arena.bytes(frame);
            let pushed = push_to_writer(link, &mut self.ops, self.id, APPEND, &[bytes]);
            assert!(pushed, "room was checked before sequencing");
            self.appends += 1;
        }
        if wait_for_sync {
            self.pending_bytes += len;
            self.topics.get_mut(t).assigned_seq = seq;
            self.hold_until_durable(t, ack, Awaiting::Event { seq, epoch, frame });
            return None;
        }
        self.send_to_peers(frame);
        self.count_published(t);
        self.deliver(t, seq, frame);
        Some(Ok((epoch, seq)))
    }

    /// A TOPIC_CLOSE from a client: carried out by the topic's owner.
    fn close_topic(&mut self, index: u32, close: TopicClose<'_>, raw: &[u8]) {
        let owner = topic_owner(close.topic, self.shards);
        let ack = AckTo::Local {
            conn: index,
            generation: self.generations[index as usize],
            request_id: close.request_id,
        };
        // Closing a hunt is the publishers' right.
        if !self.allowed(index, |g| g.may_publish(close.topic)) {
            self.answer_close(ack, close.topic, Err(ErrorCode::NotAuthorized));
        } else if owner == self.id {
            self.order_close(close.topic, ack);
        } else if !self.forward(owner, index, raw) {
            self.answer_close(ack, close.topic, Err(ErrorCode::Overloaded));
        }
    }

    /// Closes a topic this shard owns, after every event sequenced before
    /// the request: at once, or (sync durability, history stored) once the
    /// writer's deletion is durable. The requester's answer always has room
    /// (see `on_forwarded`).
    fn order_close(&mut self, name: &[u8], ack: AckTo) {
        let t = self.topics.find(name);
        // Whatever of its history may be on disk, or on its way there.
        let stored =
            self.storage.is_some() && t.is_some_and(|t| self.topics.get(t).assigned_seq > 0);
        let wait_for_sync =
            stored && self.storage.as_ref().map(|s| s.durability) == Some(Durability::Sync);
        let refusal = if t.is_some_and(|t| self.topics.get(t).closing) {
            Some(ErrorCode::Overloaded)
        } else if stored && (self.resume_owed || self.storage_stalled) {
            Some(ErrorCode::StorageFailed)
        } else if (!wait_for_sync && !self.close_has_room(name, ack))
            || self
                .storage
                .as_ref()
                .is_some_and(|s| stored && !s.append_tx.has_room(name.len()))
        {
            Some(ErrorCode::Overloaded)
        } else {
            None
        };
        if let Some(code) = refusal {
            if code == ErrorCode::Overloaded {
                self.stats.overloaded += 1;
            }
            let answered = self.answer_close(ack, name, Err(code));
            assert!(answered, "room for the answer was checked");
            return;
        }
        if stored {
            let link = self.storage.as_ref().expect("stored");
            let pushed = push_to_writer(link, &mut self.ops, self.id, CLOSE, &[name]);
            assert!(pushed, "room was checked");
            self.appends += 1;
        }
        if wait_for_sync {
            let t = t.expect("stored");
            self.topics.get_mut(t).closing = true;
            self.hold_until_durable(t, ack, Awaiting::Close { name: name.into() });
            return;
        }
        self.finish_close(name, ack);
    }

    /// Holds what waits for the WAL sync that covers the latest append.
    fn hold_until_durable(&mut self, topic: u32, ack: AckTo, what: Awaiting) {
        self.pending.push_back(Pending {
            append: self.appends,
            topic,
            ack,
            failed: false,
            what,
        });
    }

    /// Whether every peer has room for the news of a close, and the
    /// requester's shard for the answer after it.
    fn close_has_room(&self, name: &[u8], ack: AckTo) -> bool {
        let answer_bytes = ORIGIN_BYTES + TOPIC_CLOSED_BYTES + name.len();
        self.peers_have_room(8 + name.len(), ack.peer().map(|peer| (peer, answer_bytes)))
    }

    /// The owner's last step of a close (room was checked): every shard ends
    /// the topic, then the requester learns its last sequence.
    fn finish_close(&mut self, name: &[u8], ack: AckTo) {
        let last_seq = self
            .topics
            .find(name)
            .map_or(0, |t| self.topics.get(t).last_seq);
        for peer in 0..self.shards {
            if let Some(tx) = &self.mesh_tx[peer] {
                let pushed = tx.push(RECORD_CLOSED, &[&last_seq.to_be_bytes(), name]);
                assert!(pushed, "room was checked before closing");
                self.ring_doorbell(peer);
            }
        }
        crate::info!(
            "shard {}: topic {:?} closed after sequence {last_seq}; its history is deleted",
            self.id,
            String::from_utf8_lossy(name)
        );
        self.end_topic(name, last_seq);
        let answered = self.answer_close(ack, name, Ok(last_seq));
        assert!(answered, "room for the answer was checked");
    }

    /// Ends a closed topic on this shard: every subscriber is told (the
    /// TOPIC_CLOSED notice, request_id 0) and loses the subscription, and
    /// the topic and its history go. The next event of the name starts anew.
    fn end_topic(&mut self, name: &[u8], last_seq: u64) {
        let Some(t) = self.topics.find(name) else {
            return;
        };
        let subscribers: Vec<u32> = self
            .topics
            .get(t)
            .subscribers
            .iter()
            .map(|s| s.conn)
            .collect();
        for &conn in &subscribers {
            self.unsubscribe(conn, t);
        }
        // A topic without events went with its last subscriber.
        if self.topics.find(name) == Some(t) {
            self.topics.remove(t, &mut self.arena);
        }
        let notice = Frame::TopicClosed(TopicClosed {
            request_id: 0,
            status: 0,
            last_seq,
            topic: name,
        });
        for conn in subscribers {
            self.queue_control(conn, &notice);
        }
    }

    /// Delivers the events and carries out the closes the writer has made
    /// durable, and answers their requesters, in order; stops at the first
    /// whose peer has no room.
    fn release_pending(&mut self) {
        while let Some(front) = self.pending.front() {
            let (failed, ack, t) = (front.failed, front.ack, front.topic);
            if failed {
                let answered = match front.what {
                    Awaiting::Event { .. } => {
                        self.answer_publish(ack, Err(ErrorCode::StorageFailed), false)
                    }
                    Awaiting::Close { ref name } => {
                        let name = name.clone();
                        self.answer_close(ack, &name, Err(ErrorCode::StorageFailed))
                    }
                };
                if !answered {
                    self.mesh_backlog = true;
                    return;
                }
                let pending = self.pending.pop_front().expect("front exists");
                if let Awaiting::Event { frame, .. } = pending.what {
                    self.pending_bytes -= self.arena.len(frame);
                    self.arena.release(frame);
                }
                continue;
            }
            if front.append > self.durable_through {
                return;
            }
            match front.what {
                Awaiting::Event { seq, epoch, frame } => {
                    let len = self.arena.len(frame);
                    let answer = ack.peer().map(|peer| (peer, ACK_RECORD_BYTES));
                    if !self.peers_have_room(len, answer) {
                        self.mesh_backlog = true;
                        return;
                    }
                    self.pending.pop_front();
                    self.pending_bytes -= len;
                    self.send_to_peers(frame);
                    self.count_published(t);
                    self.deliver(t, seq, frame);
                    let answered = self.answer_publish(ack, Ok((epoch, seq)), true);
                    assert!(answered, "room for the ack was checked");
                }
                Awaiting::Close { ref name } => {
                    if !self.close_has_room(name, ack) {
                        self.mesh_backlog = true;
                        return;
                    }
                    let Some(Pending {
                        what: Awaiting::Close { name },
                        ..
                    }) = self.pending.pop_front()
                    else {
                        unreachable!("the front is this close");
                    };
                    debug_assert!(self.topics.get(t).closing);
                    self.finish_close(&name, ack);
                }
            }
        }
    }

    /// In sync durability the writer failed every append after
    /// `durable_through`: those events are answered with an error, their
    /// sequences are given out again, and the writer is told to start anew.
    /// In async the writer retries (subscribers have the events already);
    /// publishes are refused until it succeeds.
    fn storage_failed(&mut self, message: &str) {
        self.stats.storage_failures += 1;
        crate::debug!("shard {}: storing events failed: {message}", self.id);
        // The positions of a failed batch are readable only once a later one
        // writes them: path reads waiting for them are refused, not held.
        while let Some((_, record)) = self.path_reads_waiting.pop_front() {
            self.end_path_read(&PathRequest::decode(&record), ErrorCode::StorageFailed);
        }
        if self.storage.as_ref().map(|s| s.durability) == Some(Durability::Async) {
            self.storage_stalled = true;
            return;
        }
        for pending in self.pending.iter_mut().rev() {
            // Older entries are durable, or failed by an earlier notice
            // (and are only waiting to be answered).
            if pending.append <= self.durable_through || pending.failed {
                break;
            }
            pending.failed = true;
            let topic = self.topics.get_mut(pending.topic);
            match pending.what {
                // Newest first, so each topic ends at its first failed sequence.
                Awaiting::Event { seq, .. } => topic.assigned_seq = seq - 1,
                Awaiting::Close { .. } => topic.closing = false,
            }
        }
        self.resume_owed = true;
        self.send_resume();
    }

    fn send_resume(&mut self) {
        let Some(link) = &self.storage else { return };
        if self.resume_owed && link.append_tx.push(RESUME, &[]) {
            self.resume_owed = false;
            if link.append_tx.ring_doorbell() {
                self.ops.push(wake_op(link.writer_ring_fd, self.id));
            }
        }
    }

    /// Notices from the writer and history from the reader.
    fn drain_storage(&mut self) {
        let Some(link) = &self.storage else { return };
        link.notice_rx.clear_doorbell();
        loop {
            let Some(link) = &self.storage else { return };
            let Some((kind, body)) = link.notice_rx.peek() else {
                break;
            };
            let mut positions_written = None;
            let failure = match Notice::decode(kind, body) {
                Notice::Durable { through } => {
                    self.durable_through = self.durable_through.max(through);
                    self.storage_stalled = false;
                    None
                }
                Notice::Paths { through } => {
                    positions_written = Some(through);
                    None
                }
                Notice::Failed { message, .. } => {
                    Some(String::from_utf8_lossy(message).into_owned())
                }
                Notice::Floor {
                    oldest,
                    epoch,
                    topic,
                } => {
                    // Not for a later history of the same name.
                    if let Some(t) = self.topics.find(topic) {
                        let topic = self.topics.get_mut(t);
                        if topic.epoch == epoch {
                            topic.stored_oldest_seq = topic.stored_oldest_seq.max(oldest);
                        }
                    }
                    None
                }
            };
            link.notice_rx.pop();
            if let Some(through) = positions_written {
                self.on_positions_written(through);
            }
            if let Some(message) = failure {
                self.storage_failed(&message);
            }
        }
        self.send_resume();
        // History from disk is taken in slices per turn, so a resume storm
        // never holds up the turn that carries live events.
        let mut reply_bytes = 0;
        let mut first = true;
        while let Some(link) = &self.storage {
            if first {
                link.reply_rx.clear_doorbell();
                first = false;
            }
            let Some((kind, body)) = link.reply_rx.peek() else {
                break;
            };
            if reply_bytes >= DISK_REPLY_BYTES_PER_TURN {
                self.mesh_backlog = true;
                break;
            }
            reply_bytes += body.len();
            let mut scratch = std::mem::take(&mut self.reply_scratch);
            scratch.clear();
            scratch.extend_from_slice(body);
            link.reply_rx.pop();
            match kind {
                EVENTS => self.on_read_reply(&scratch),
                PATH_FRAMES => self.on_path_frames(&scratch),
                other => panic!("unknown storage reply kind {other}"),
            }
            self.reply_scratch = scratch;
        }
    }

    /// Queues the events a disk read found for a catching-up subscriber, if
    /// it is still the one that asked and still where it was.
    fn on_read_reply(&mut self, body: &[u8]) {
        let (reply, topic_name, mut frames) = ReadReply::decode(body);
        let index = reply.conn;
        let alive = self.conns.get(index as usize).is_some_and(|c| {
            c.state == ConnState::Open && self.generations[index as usize] == reply.generation
        });
        let Some(t) = self.topics.find(topic_name).filter(|_| alive) else {
            return;
        };
        let conn = &mut self.conns[index as usize];
        let Some(sub_ref) = conn.subs.iter().find(|s| s.topic == t).copied() else {
            return;
        };
        let topic = self.topics.get_mut(t);
        let sub = &mut topic.subscribers[sub_ref.position as usize];
        if !sub.catching_up || !sub.reading || sub.next_seq != reply.from {
            return;
        }
        sub.reading = false;
        match reply.status {
            ReadStatus::Found => {
                let mut queued = false;
                while let Ok(Some((Frame::Event(event), used))) = decode(frames, &self.limits) {
                    let conn = &mut self.conns[index as usize];
                    let sub = &mut self.topics.get_mut(t).subscribers[sub_ref.position as usize];
                    assert_eq!(
                        event.seq, sub.next_seq,
                        "the reader returns events in order"
                    );
                    if !conn.has_room(used, self.queue_bytes_max) {
                        break;
                    }
                    let Some(frame) = self.arena.alloc(used, Use::Event) else {
                        break;
                    };
                    self.arena.bytes_mut(frame).copy_from_slice(&frames[..used]);
                    let conn = &mut self.conns[index as usize];
                    conn.push(frame, used);
                    self.topics.get_mut(t).subscribers[sub_ref.position as usize].next_seq += 1;
                    self.stats.disk_deliveries += 1;
                    frames = &frames[used..];
                    queued = true;
                }
                if queued {
                    self.mark_dirty(index);
                    self.refill(index);
                }
                // Nothing fitted: the next send's completion refills.
            }
            ReadStatus::Gone => {
                // Nothing before `oldest` can be replayed without a gap any
                // more: the subscriber is told (GOAWAY, then NotRecovered).
                let topic = self.topics.get_mut(t);
                topic.stored_oldest_seq = topic.stored_oldest_seq.max(reply.oldest);
                self.refill(index);
            }
            ReadStatus::NotYet | ReadStatus::Failed => self.retry_from_disk(index),
        }
    }

    /// Refills the connection from disk again shortly (the writer is
    /// behind, a read failed, or the reader's channel was full).
    fn retry_from_disk(&mut self, index: u32) {
        if self.disk_retry.is_empty() {
            self.disk_retry_at_ms = self.now_ms + DISK_RETRY_MS;
        }
        self.disk_retry.push(index);
    }

    fn ring_doorbell(&mut self, peer: usize) {
        let tx = self.mesh_tx[peer]
            .as_ref()
            .expect("a channel to every peer");
        if tx.ring_doorbell() {
            self.ops.push(wake_op(self.peer_ring_fds[peer], self.id));
        }
    }

    /// A frame from the arena, evicting the oldest history if memory is short.
    fn alloc(&mut self, len: usize, purpose: Use) -> Option<FrameRef> {
        loop {
            if let Some(frame) = self.arena.alloc(len, purpose) {
                return Some(frame);
            }
            if !self.topics.evict_for_memory(&mut self.arena) {
                return None;
            }
        }
    }

    /// The metrics class of topic `t`, looked up once per topic.
    fn topic_class(&mut self, t: u32) -> u8 {
        let topic = self.topics.get_mut(t);
        if topic.class == UNCLASSIFIED {
            topic.class = self.recorder.class_of(&topic.name);
        }
        topic.class
    }

    /// Counts an event this shard sequenced and fans out.
    fn count_published(&mut self, t: u32) {
        self.stats.published += 1;
        let class = self.topic_class(t);
        self.recorder.event_in(class);
    }

    /// Fans event `seq` of topic `t` out to the local subscribers and keeps it
    /// in history (which takes over the caller's reference).
    fn deliver(&mut self, t: u32, seq: u64, frame: FrameRef) {
        let len = self.arena.len(frame);
        let class = self.topic_class(t);
        let mut delivered = 0;
        let topic = self.topics.get_mut(t);
        for sub in topic.subscribers.iter_mut() {
            if sub.catching_up || seq < sub.next_seq {
                continue;
            }
            let conn = &mut self.conns[sub.conn as usize];
            if !conn.has_room(len, self.queue_bytes_max) {
                // Full queue: this subscriber is fed from history as its
                // socket drains; nobody else waits for it.
                sub.catching_up = true;
                conn.catching_up += 1;
                self.stats.catch_ups += 1;
                continue;
            }
            self.arena.retain(frame);
            conn.push(frame, len);
            sub.next_seq = seq + 1;
            delivered += 1;
            if !conn.dirty && !conn.send_in_flight {
                conn.dirty = true;
                self.dirty.push(sub.conn);
            }
        }
        self.stats.deliveries += delivered;
        self.recorder.events_out(class, delivered);
        self.topics.append(t, seq, frame, &mut self.arena);
        let topic = self.topics.get_mut(t);
        if self.storage.is_some() && topic.stored_oldest_seq == 0 {
            topic.stored_oldest_seq = seq;
        }
    }

    // ---- the channels between shards ------------------------------------

    fn drain_mesh(&mut self) {
        self.mesh_backlog = false;
        let receivers = std::mem::take(&mut self.mesh_rx);
        for (peer, rx) in receivers.iter().enumerate() {
            let Some(rx) = rx else { continue };
            rx.clear_doorbell();
            let mut handled = 0;
            while let Some((kind, body)) = rx.peek() {
                if handled == MESH_RECORDS_PER_TURN {
                    self.mesh_backlog = true;
                    break;
                }
                let done = match kind {
                    RECORD_EVENT => self.on_peer_event(body),
                    RECORD_REQUEST => self.on_forwarded(peer, body),
                    RECORD_ANSWER => self.on_peer_answer(body),
                    RECORD_CLOSED => {
                        let (last_seq, name) = body.split_at(8);
                        let last_seq = u64::from_be_bytes(last_seq.try_into().expect("8 bytes"));
                        self.end_topic(name, last_seq);
                        true
                    }
                    other => panic!("unknown channel record kind {other}"),
                };
                if !done {
                    // No memory or no room to answer: keep the record and
                    // push back on the peer until a later turn.
                    self.mesh_backlog = true;
                    break;
                }
                rx.pop();
                handled += 1;
            }
        }
        self.mesh_rx = receivers;
    }

    fn on_peer_event(&mut self, body: &[u8]) -> bool {
        let Ok(Some((Frame::Event(event), _))) = decode(body, &self.limits) else {
            panic!("a peer shard sent a malformed event");
        };
        let t = self
            .topics
            .find_or_create(event.topic, Purpose::Event)
            .expect("events always find room");
        let Some(frame) = self.alloc(body.len(), Use::Event) else {
            return false;
        };
        let topic = self.topics.get_mut(t);
        if topic.last_seq == 0 {
            // The first event names the epoch its owner chose for this history.
            topic.epoch = event.epoch;
        }
        self.arena.bytes_mut(frame).copy_from_slice(body);
        self.stats.events_from_peers += 1;
        self.deliver(t, event.seq, frame);
        true
    }

    /// A request a peer passed on to this shard, the topic's owner. It waits
    /// in the channel (false) until the peer's channel has room for the
    /// answer, so the answer always has room.
    fn on_forwarded(&mut self, peer: usize, body: &[u8]) -> bool {
        let (origin, raw) = body.split_at(ORIGIN_BYTES);
        let Ok(Some((frame, _))) = decode(raw, &self.limits) else {
            panic!("a peer shard forwarded a malformed request");
        };
        let (request_id, answer_bytes) = match &frame {
            Frame::Publish(p) => (p.request_id, ACK_RECORD_BYTES),
            Frame::TopicClose(c) => (
                c.request_id,
                ORIGIN_BYTES + TOPIC_CLOSED_BYTES + c.topic.len(),
            ),
            other => panic!("a peer shard forwarded {:?}", other.frame_type()),
        };
        let tx = self.mesh_tx[peer]
            .as_ref()
            .expect("a channel to every peer");
        if !tx.has_room(answer_bytes) {
            return false;
        }
        let ack = AckTo::Peer {
            peer,
            origin: origin.try_into().expect("origin bytes"),
            request_id,
        };
        match frame {
            Frame::Publish(p) => self.sequence(p.topic, p.payload, ack),
            Frame::TopicClose(c) => self.order_close(c.topic, ack),
            _ => unreachable!("matched above"),
        }
        true
    }

    /// The owner's answer to a request this shard forwarded.
    fn on_peer_answer(&mut self, body: &[u8]) -> bool {
        let (origin, ack) = body.split_at(ORIGIN_BYTES);
        let index = u32::from_be_bytes(origin[..4].try_into().expect("4 bytes"));
        let generation = u32::from_be_bytes(origin[4..].try_into().expect("4 bytes"));
        let alive = self.conns.contains(index as usize)
            && self.generations[index as usize] == generation
            && self.conns[index as usize].state == ConnState::Open;
        if !alive {
            return true; // the requester left; its answer has nobody to go to
        }
        let Some(frame) = self.alloc(ack.len(), Use::Control) else {
            return false;
        };
        self.arena.bytes_mut(frame).copy_from_slice(ack);
        self.conns[index as usize].push(frame, ack.len());
        self.mark_dirty(index);
        true
    }

    // ---- sending --------------------------------------------------------

    fn mark_dirty(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(index);
        }
    }

    /// Encodes a control frame into the arena and queues it. Control frames
    /// bypass the queue bound (they are few and small); a connection the
    /// arena cannot serve at all is closed.
    fn queue_control(&mut self, index: u32, frame: &Frame<'_>) -> bool {
        let len = frame.encoded_len();
        let Some(f) = self.alloc(len, Use::Control) else {
            // Even the reserve for answers is gone: nothing sensible can be
            // said to this client any more.
            crate::warn!(
                "shard {}: frame arena exhausted; closing connection {index}",
                self.id
            );
            self.stats.overloaded += 1;
            self.abort(index);
            return false;
        };
        frame.encode_to_slice(self.arena.bytes_mut(f));
        self.conns[index as usize].push(f, len);
        self.mark_dirty(index);
        true
    }

    /// Starts one send on every connection that has frames and none in flight.
    fn flush(&mut self) {
        // Slots listed this turn may have been freed (and even reused) by a
        // later completion of the same batch: look before touching.
        for index in std::mem::take(&mut self.recv_rearm) {
            let rearm = self.conns.get(index as usize).is_some_and(|conn| {
                matches!(conn.state, ConnState::Handshake | ConnState::Open) && !conn.recv_armed
            });
            if rearm {
                self.arm_recv(index);
            }
        }
        if !self.disk_retry.is_empty() && self.now_ms >= self.disk_retry_at_ms {
            for index in std::mem::take(&mut self.disk_retry) {
                // The slot may hold another connection by now; refill only
                // touches subscriptions that are catching up.
                let open = self
                    .conns
                    .get(index as usize)
                    .is_some_and(|c| c.state == ConnState::Open && c.catching_up > 0);
                if open {
                    self.refill(index);
                }
            }
        }
        if self.accept_retry_at_ms.is_some_and(|at| self.now_ms >= at) {
            self.accept_retry_at_ms = None;
            if !self.accept_armed {
                self.arm_accept();
            }
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        for &index in &dirty {
            let Some(conn) = self.conns.get_mut(index as usize) else {
                continue;
            };
            conn.dirty = false;
            if conn.state == ConnState::Closing || conn.send_in_flight {
                continue;
            }
            if !conn.has_output() {
                if conn.state == ConnState::Flushing {
                    self.close_now(index);
                }
                continue;
            }
            self.start_send(index);
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty; // keep the allocation
        }
    }

    /// A TLS connection's send: its queued frames encrypted (once the
    /// handshake is done) after whatever records wait.
    fn start_send_tls(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        let mut tls = conn.tls.take().expect("a TLS connection");
        if !tls.handshaking() && !tls.has_output() && !conn.queue_is_empty() {
            let arena = &self.arena;
            let mut bytes = 0;
            let frames = conn.next_send(
                arena,
                usize::MAX,
                SEND_BYTES_MAX,
                usize::MAX,
                |f, off, len| {
                    tls.write(&arena.bytes(f)[off..off + len]);
                    bytes += len;
                },
            );
            // Handed to TLS: the frames are done with (sent, as far as
            // the metrics tell).
            conn.start_send(frames, bytes);
            self.recorder.send_frames(frames);
            let (recorder, wall_ns) = (&mut self.recorder, self.wall_ns);
            conn.complete_send(bytes, &mut self.arena, |frame| {
                record_publish_to_send(recorder, wall_ns, frame)
            });
        }
        let out = tls.next_output();
        if !out.is_empty() {
            let (ptr, len) = (out.as_ptr(), out.len() as u32);
            let fd = conn.fd;
            conn.send_in_flight = true;
            let token = self.token(OpKind::Send, index);
            self.ops.push((Op::Send { fd, ptr, len }, token));
        }
        self.conns[index as usize].tls = Some(tls);
    }

    fn start_send(&mut self, index: u32) {
        if self.conns[index as usize].tls.is_some() {
            self.start_send_tls(index);
            return;
        }
        let conn = &self.conns[index as usize];
        let (head, offset) = conn.head().expect("a queued frame");
        let head_len = self.arena.len(head);
        let fd = conn.fd;
        let token = self.token(OpKind::Send, index);
        let zero_copy = self.zerocopy_bytes_min > 0 && head_len >= self.zerocopy_bytes_min;
        if zero_copy {
            self.ops.push((
                Op::SendZeroCopy {
                    fd,
                    ptr: self.arena.ptr(head, offset),
                    len: (head_len - offset) as u32,
                    buf_index: self.arena.buf_index(),
                },
                token,
            ));
            self.stats.zero_copy_sends += 1;
            self.recorder.send_frames(1);
            let conn = &mut self.conns[index as usize];
            conn.start_send(1, head_len - offset);
            conn.send_is_zero_copy = true;
            return;
        }
        let split = if self.zerocopy_bytes_min > 0 {
            self.zerocopy_bytes_min
        } else {
            usize::MAX
        };
        if self.iov_free.is_empty() && self.iov_blocks.len() < self.connections_max {
            assert!(
                self.iov_blocks.len() < self.iov_blocks.capacity(),
                "iovec blocks must never move"
            );
            self.iov_free.push(self.iov_blocks.len() as u32);
            self.iov_blocks.push(IovBlock::new());
        }
        let block = self.iov_free.last().copied();
        let mut bytes = head_len - offset;
        let frames = match block {
            Some(block) => {
                let iov = &mut self.iov_blocks[block as usize].iov;
                let arena = &self.arena;
                let mut n = 0;
                bytes = 0;
                conn.next_send(
                    arena,
                    SEND_FRAMES_MAX,
                    SEND_BYTES_MAX,
                    split,
                    |f, off, len| {
                        iov[n] = libc::iovec {
                            iov_base: arena.ptr(f, off) as *mut libc::c_void,
                            iov_len: len,
                        };
                        n += 1;
                        bytes += len;
                    },
                )
            }
            None => 1,
        };
        if frames > 1 {
            let block = self.iov_free.pop().expect("checked above");
            let b = &mut self.iov_blocks[block as usize];
            b.msg.msg_iov = b.iov.as_mut_ptr();
            b.msg.msg_iovlen = frames;
            self.ops.push((
                Op::SendVectored {
                    fd,
                    msg: &b.msg as *const libc::msghdr,
                },
                token,
            ));
            self.conns[index as usize].iov_block = Some(block);
        } else {
            self.ops.push((
                Op::Send {
                    fd,
                    ptr: self.arena.ptr(head, offset),
                    len: (head_len - offset) as u32,
                },
                token,
            ));
        }
        self.recorder.send_frames(frames);
        let conn = &mut self.conns[index as usize];
        conn.start_send(frames, bytes);
        conn.send_is_zero_copy = false;
    }

    fn on_send(&mut self, index: u32, c: Completion) {
        let conn = &mut self.conns[index as usize];
        if c.notification() {
            conn.zc_notified(&mut self.arena);
            self.free_if_done(index);
            return;
        }
        if conn.send_is_zero_copy && c.more() {
            conn.pin_head_for_notification(&mut self.arena);
        }
        if let Some(block) = conn.iov_block.take() {
            self.iov_free.push(block);
        }
        match c.result {
            n if n > 0 => {
                let sent = n as usize;
                self.stats.sends += 1;
                self.stats.send_bytes += sent as u64;
                let conn = &mut self.conns[index as usize];
                if let Some(tls) = &mut conn.tls {
                    // Ciphertext: its frames were booked when encrypted.
                    tls.sent(sent);
                    conn.send_in_flight = false;
                } else {
                    let (recorder, wall_ns) = (&mut self.recorder, self.wall_ns);
                    let short = conn.complete_send(sent, &mut self.arena, |frame| {
                        record_publish_to_send(recorder, wall_ns, frame)
                    });
                    if short {
                        self.stats.short_sends += 1;
                    }
                }
                let conn = &self.conns[index as usize];
                let (state, catching_up) = (conn.state, conn.catching_up);
                if state == ConnState::Open && catching_up > 0 {
                    self.refill(index);
                }
                let conn = &self.conns[index as usize];
                let more = conn.has_output() || conn.state == ConnState::Flushing;
                if more && conn.state != ConnState::Closing {
                    self.mark_dirty(index);
                }
            }
            e if e < 0 && is_transient(-e) => {
                let conn = &mut self.conns[index as usize];
                conn.abandon_send();
                if conn.state != ConnState::Closing {
                    self.mark_dirty(index);
                }
            }
            _ => {
                // Reset, broken pipe, cancelled by our own close, or a zero
                // byte send: the connection is over.
                self.conns[index as usize].abandon_send();
                self.abort(index);
            }
        }
        self.free_if_done(index);
    }

    // ---- closing ----------------------------------------------------------

    /// Queues `frame` as the connection's last, stops reading, and closes once
    /// it is sent (or after a linger, if the client does not read).
    fn send_then_close(&mut self, index: u32, frame: &Frame<'_>) {
        self.unsubscribe_all(index);
        self.conns[index as usize].drop_unsent(&mut self.arena, |_| {});
        if !self.queue_control(index, frame) {
            return;
        }
        self.leave_handshake(index);
        let conn = &mut self.conns[index as usize];
        conn.state = ConnState::Flushing;
        if conn.recv_armed {
            let token = self.token(OpKind::Recv, index);
            self.ops.push((
                Op::Cancel { target: token },
                Token::new(OpKind::Cancel, 0, index).encode(),
            ));
        }
        self.timers.schedule(index, self.now_ms + LINGER_MS);
    }

    fn error_close(&mut self, index: u32, code: ErrorCode, message: &str) {
        self.stats.errors_sent += 1;
        // ERROR carries at most 255 bytes of text; cut on a character boundary.
        let end = (0..=message.len().min(255))
            .rev()
            .find(|&i| message.is_char_boundary(i))
            .unwrap_or(0);
        let message = &message.as_bytes()[..end];
        crate::debug!(
            "shard {}: closing connection {index}: {code:?}: {}",
            self.id,
            String::from_utf8_lossy(message)
        );
        let frame = Frame::Error(ErrorFrame {
            code: code as u16,
            message,
        });
        self.send_then_close(index, &frame);
    }

    /// GOAWAY naming where each subscription stands (a subscriber that fell
    /// behind the history window, a token that expired, a drain): the client
    /// reconnects and resumes (and learns what it missed) from there.
    fn goaway_resume(&mut self, index: u32, reason: GoAwayReason, retry_after_ms: u32) {
        // Frames not yet handed to the kernel are not delivered: each
        // subscription resumes after the last sequence that was.
        let mut undelivered: Vec<(u64, Vec<u8>)> = Vec::new();
        let limits = self.limits;
        self.conns[index as usize].drop_unsent(&mut self.arena, |bytes| {
            if let Ok(Some((Frame::Event(e), _))) = decode(bytes, &limits) {
                undelivered.push((e.seq, e.topic.to_vec()));
            }
        });
        // The list is cut short rather than exceed the frame limit.
        let mut room = self.limits.frame_bytes_max as usize - 64;
        let mut points: Vec<(u64, u64, Box<[u8]>)> = Vec::new();
        for s in &self.conns[index as usize].subs {
            let topic = self.topics.get(s.topic);
            let next = topic.subscribers[s.position as usize].next_seq;
            let first_undelivered = undelivered
                .iter()
                .filter(|(_, name)| name[..] == topic.name[..])
                .map(|(seq, _)| *seq)
                .min()
                .unwrap_or(next);
            let entry_bytes = 8 + 8 + 1 + topic.name.len();
            if entry_bytes > room {
                break;
            }
            room -= entry_bytes;
            points.push((topic.epoch, first_undelivered - 1, topic.name.clone()));
        }
        let frame = Frame::GoAway(GoAway {
            reason,
            retry_after_ms,
            reconnect: b"",
            resume: points
                .iter()
                .map(|(epoch, last_seq, name)| ResumePoint {
                    epoch: *epoch,
                    last_seq: *last_seq,
                    topic: name,
                })
                .collect(),
        });
        self.send_then_close(index, &frame);
    }

    /// Stops everything and closes now: nothing more is sent.
    fn abort(&mut self, index: u32) {
        let conn = &self.conns[index as usize];
        if conn.state == ConnState::Closing {
            return;
        }
        self.unsubscribe_all(index);
        self.conns[index as usize].drop_unsent(&mut self.arena, |_| {});
        let conn = &self.conns[index as usize];
        if conn.recv_armed {
            let token = self.token(OpKind::Recv, index);
            self.ops.push((
                Op::Cancel { target: token },
                Token::new(OpKind::Cancel, 0, index).encode(),
            ));
        }
        if conn.send_in_flight {
            let token = self.token(OpKind::Send, index);
            self.ops.push((
                Op::Cancel { target: token },
                Token::new(OpKind::Cancel, 0, index).encode(),
            ));
        }
        self.close_now(index);
    }

    /// A connection that leaves without finishing HELLO frees its place.
    fn leave_handshake(&mut self, index: u32) {
        self.handshakes.leave(index);
    }

    fn close_now(&mut self, index: u32) {
        self.leave_handshake(index);
        let token = self.token(OpKind::Close, index);
        let conn = &mut self.conns[index as usize];
        debug_assert_ne!(conn.state, ConnState::Closing);
        conn.state = ConnState::Closing;
        conn.close_in_flight = true;
        self.ops.push((Op::Close { fd: conn.fd }, token));
        self.timers.cancel(index);
    }

    fn free_if_done(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        if conn.state != ConnState::Closing || !conn.quiescent() {
            return;
        }
        debug_assert!(conn.subs.is_empty());
        conn.release_all(&mut self.arena);
        if let Some(block) = conn.iov_block.take() {
            self.iov_free.push(block);
        }
        let conn = self.conns.remove(index as usize);
        if let Some(slot) = conn.source {
            self.sources.release(slot);
        }
        debug_assert!(
            self.handshakes.count() as usize <= self.conns.len(),
            "more handshakes counted than connections"
        );
        self.generations[index as usize] = (self.generations[index as usize] + 1) & GENERATION_MASK;
        self.stats.closed += 1;
    }

    // ---- metrics ----------------------------------------------------------

    /// Copies the counters into the shard's shared block (see `metrics`).
    fn publish_metrics(&mut self, stats: &ShardStats) {
        if self.now_ms >= self.queue_walk_at_ms {
            self.queue_walk_at_ms = self.now_ms + QUEUE_WALK_INTERVAL_MS;
            let (mut total, mut deepest) = (0, 0);
            for (_, conn) in self.conns.iter() {
                total += conn.queued_bytes() as u64;
                deepest = deepest.max(conn.queued_bytes() as u64);
            }
            self.queue_gauges = (total, deepest);
        }
        let gauges = Gauges {
            connections: self.conns.len() as u64,
            subscriptions: self.subscriptions,
            topics: self.topics.count() as u64,
            queued_bytes: self.queue_gauges.0,
            queue_deepest_bytes: self.queue_gauges.1,
            handshakes: self.handshakes.count() as u64,
            handshake_timeout_ms: self.handshakes.timeout_ms() as u64,
        };
        let wall_ms = self.wall_ns / 1_000_000;
        self.recorder.publish(self.now_ms, wall_ms, stats, gauges);
    }

    // ---- time -------------------------------------------------------------

    fn expire_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        // The timeout is for the whole HELLO: bytes trickling in do not
        // extend it.
        let timeout_ms = self.handshakes.timeout_ms();
        self.handshakes.expire(self.now_ms, &mut fired);
        for &index in &fired {
            self.stats.handshakes_timed_out += 1;
            let message = format!("no HELLO within {timeout_ms} ms");
            self.error_close(index, ErrorCode::HandshakeTimeout, &message);
        }
        fired.clear();
        self.report_handshake_pressure();
        self.timers.expire(self.now_ms, &mut fired);
        for &index in &fired {
            let conn = &self.conns[index as usize];
            match conn.state {
                ConnState::Open => {
                    let deadline = conn.last_rx_ms + self.idle_timeout_ms as u64;
                    if self.now_ms >= conn.token_deadline_ms {
                        self.stats.tokens_expired += 1;
                        self.goaway_resume(index, GoAwayReason::TokenExpired, 0);
                    } else if self.now_ms >= deadline {
                        let message = format!("nothing received for {} ms", self.idle_timeout_ms);
                        self.error_close(index, ErrorCode::IdleTimeout, &message);
                    } else {
                        let deadline = deadline.min(conn.token_deadline_ms);
                        self.timers.schedule(index, deadline);
                    }
                }
                // The client would not take its last frames within the linger.
                ConnState::Flushing => self.abort(index),
                // Handshakes expire through their table.
                ConnState::Handshake | ConnState::Closing => {}
            }
        }
        fired.clear();
        self.fired = fired;
    }

    fn report_handshake_pressure(&mut self) {
        match self.handshakes.report(self.now_ms) {
            Some(PressureReport::Under {
                count,
                max,
                timeout_ms,
                evicted,
                timed_out,
            }) => crate::warn!(
                "shard {}: {count} of {max} handshakes in flight: handshake timeout shortened \
                 to {timeout_ms} ms; since the last report {evicted} evicted for newcomers, \
                 {timed_out} timed out",
                self.id
            ),
            Some(PressureReport::Over) => crate::info!(
                "shard {}: handshake pressure over: handshake timeout back to {} ms",
                self.id,
                self.handshakes.timeout_ms()
            ),
            None => {}
        }
    }

    /// SIGTERM/SIGINT: stop accepting, tell every client to go away, and give
    /// them the drain deadline to receive it.
    fn start_drain(&mut self) {
        self.drain_deadline_ms = Some(self.now_ms + self.drain_timeout_ms as u64);
        if let Some(listener) = self.listener.take() {
            if self.accept_armed {
                self.ops.push((
                    Op::Cancel {
                        target: Token::new(OpKind::Accept, 0, 0).encode(),
                    },
                    Token::new(OpKind::Cancel, 0, 0).encode(),
                ));
            }
            self.close_orphan(listener);
        }
        let open: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, ConnState::Handshake | ConnState::Open))
            .map(|(i, _)| i as u32)
            .collect();
        for index in open {
            let retry_after_ms = self.jittered_retry();
            self.goaway_resume(index, GoAwayReason::Shutdown, retry_after_ms);
        }
    }

    /// True once a drain has sent everything it could and every connection
    /// is gone (or the deadline passed and stragglers were cut).
    fn drained(&mut self) -> bool {
        let Some(deadline) = self.drain_deadline_ms else {
            return false;
        };
        if self.now_ms >= deadline {
            let left: Vec<u32> = self
                .conns
                .iter()
                .filter(|(_, c)| c.state != ConnState::Closing)
                .map(|(i, _)| i as u32)
                .collect();
            for index in left {
                self.abort(index);
            }
        }
        self.conns.is_empty() || self.now_ms >= deadline + DRAIN_GRACE_MS
    }
}
