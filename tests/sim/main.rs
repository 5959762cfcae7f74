//! The whole engine on the simulated ring, in one thread, from seeds.
//!
//! Each seed builds one or two shards on a fault-injecting simulated network
//! (torn receives, short sends, spurious EAGAIN, ended multishots, ENOBUFS,
//! reordered completions) and plays a small game against them: subscribers,
//! publishers, a slow reader, a client whose connection is reset mid-stream,
//! a client that never says HELLO, one whose token a stranger signed (in the
//! half of the seeds where the appliance checks tokens, and where one
//! subscriber's token expires mid-game), and a game backend that closes a topic
//! mid-game (publishers pause until it is answered, then publish into the
//! new history) and again at the end. It checks every delivery as it happens
//! and the books at the end. A failure names its seed; replay it with
//! `CLUECAST_SIM_SEED=<seed> cargo test --test sim -- --nocapture`.

// The driver's model (the constants, each client and what it knows, the
// world) is here; world.rs builds it, oracle.rs checks what the server sends
// against it, driver.rs moves the clients, seeds.rs plays the seeds.
mod driver;
mod oracle;
mod seeds;
mod world;

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use cluecast::auth::Keys;
use cluecast::config::Settings;
use cluecast::ring::sim::{ClientId, Rng, SimNet, SimRing};
use cluecast::shard::Shard;
use cluecast::storage::sim::SimStorage;
use cluecast::storage::Durability;

const TOPICS: [&str; 3] = ["hunt-a", "hunt-b", "hunt-c"];
const SUBSCRIBERS: usize = 5;
const PUBLISHERS: usize = 2;
const EVENTS_PER_PUBLISHER: u32 = 120;
const STEPS_MAX: usize = 40_000;
const HEARTBEAT_MS: u64 = 5_000;
/// When the closer closes a topic: once this percentage of all events is
/// acked, and whether it waits for every subscriber to catch up first (so
/// each must have seen the whole history) or only for the acks (so slow
/// subscribers are cut short, and the bursts before are long enough to
/// overrun them).
const CLOSE_POINTS: [(u32, bool); 2] = [(75, false), (100, true)];

#[derive(Debug, Default, Clone, Copy)]
struct Position {
    /// SUBSCRIBED arrived: a reconnect resumes from here.
    confirmed: bool,
    /// 0 until the topic has an event.
    epoch: u64,
    last_seq: u64,
    /// After a SUBSCRIBED that admitted a gap, the next event must be this.
    jump_to: Option<u64>,
    /// The history this subscription was told is closed: no event of it may
    /// follow.
    ended_epoch: u64,
}

#[derive(Debug)]
enum Role {
    Subscriber {
        topics: Vec<&'static str>,
        positions: BTreeMap<&'static str, Position>,
        /// Reset mid-stream once, at this step.
        reset_at: Option<usize>,
    },
    Publisher {
        next: u32,
        acked: u32,
        in_flight: u32,
        /// Answered StorageFailed: not published, so published again.
        storage_refusals: u32,
    },
    /// Never says HELLO: must get ERROR(HandshakeTimeout), then EOF.
    Mute { got_error: bool },
    /// Says HELLO with a token signed by a stranger's key: must get
    /// ERROR(NotAuthorized), then EOF.
    Intruder { got_error: bool },
    /// The game backend ending hunts: closes a topic at each `CLOSE_POINTS`.
    Closer { closed: u32, in_flight: bool },
}

struct VClient {
    name: String,
    sim: ClientId,
    connected_shard: usize,
    role: Role,
    buf: Vec<u8>,
    handshaken: bool,
    subscribed: usize,
    last_sent_ms: u64,
    /// The server ended this connection (GOAWAY, EOF or our reset).
    gone: bool,
    reconnects: u32,
    /// GOAWAY(ServerFull) received.
    refused: u32,
    /// Sent in HELLO (empty when the appliance checks no tokens).
    token: Vec<u8>,
    /// GOAWAY(TokenExpired) received; a fresh token was minted each time.
    tokens_expired: u32,
}

struct World {
    seed: u64,
    net: SimNet,
    rng: Rng,
    listeners: Vec<RawFd>,
    shards: Vec<Shard<SimRing>>,
    /// The durable log's threads, stepped with the shards; None for
    /// memory-only history.
    storage: Option<SimStorage>,
    durability: Durability,
    /// The keys tokens are signed with, when the appliance checks them.
    keys: Option<Arc<Keys>>,
    stop: Arc<AtomicBool>,
    settings: Settings,
    clients: Vec<VClient>,
    /// Sequence acknowledged per topic in its current history: what every
    /// subscriber must reach.
    acked_per_topic: BTreeMap<&'static str, u64>,
    /// The epoch those acks named (0 before the first).
    acked_epoch: BTreeMap<&'static str, u64>,
    /// A close is due or in flight: publishers send nothing new meanwhile,
    /// so its last sequence is known.
    closing: Option<&'static str>,
    /// Whether the close due or in flight waited for every subscriber.
    close_waits_for_subscribers: bool,
    /// Closed histories: epoch -> (last sequence, the close waited for
    /// every subscriber).
    ended_epochs: BTreeMap<u64, (u64, bool)>,
    /// TOPIC_CLOSED notices subscribers received, in all and for the close
    /// in flight (none may come for a close that is refused).
    close_notices: u64,
    close_notices_in_flight: u64,
    step: usize,
}
