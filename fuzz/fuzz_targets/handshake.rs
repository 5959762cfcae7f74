//! The whole shard on the simulated ring, fed arbitrary client bytes: one
//! shard with memory-only history, checking tokens or not, played by up to
//! two clients whose writes, closes, resets, clock steps and turns the input
//! chooses (layout in `cluecast_fuzz::handshake`). Then the appliance is
//! stopped and drained as tests/sim/seeds.rs does.
//!
//! Asserted, besides every invariant the shard and the simulated ring check
//! themselves (they panic naming the rule):
//! - everything the server sends decodes, under the limits it announces,
//!   into frames a server may send: the first WELCOME, ERROR or GOAWAY, no
//!   second WELCOME, nothing after an ERROR or GOAWAY (docs/PROTOCOL.md,
//!   section 2), and a WELCOME announces the appliance's version and limits;
//! - a connection the client kept open and kept reading ends with ERROR or
//!   GOAWAY and a whole frame (a linger cuts only a connection that does not
//!   read: the clock steps pass with the shard turning, as it does when
//!   running); every connection's client sees the end (EOF) by the end of
//!   the drain;
//! - the drain finishes; then no server socket is open, no connection is
//!   held or counted per source, and the arena holds only history frames.

#![no_main]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use cluecast::auth::Keys;
use cluecast::config::{RunArgs, Settings};
use cluecast::engine::{shard_setups, Security};
use cluecast::ring::sim::{ClientId, SimConfig, SimNet, SimRing};
use cluecast::ring::Ring;
use cluecast::shard::Shard;
use cluecast::storage::Durability;
use cluecast_fuzz::handshake::{
    records, ACTION_CLOSE, ACTION_RESET, ACTION_STALL, CLOCK_TURN_MS, CONNECTIONS_MAX, FLAG_FAULTS,
    FLAG_TOKENS, STALL_WINDOW_BYTES, TURNS_MAX,
};
use cluecast_fuzz::key_file;
use cluecast_proto::{decode, Frame, Limits, PROTOCOL_VERSION};
use cluecast_sys::{PageKind, Region};
use libfuzzer_sys::fuzz_target;

/// Connections the shard takes at once: fewer than the clients may open, so
/// a reconnect that comes before its old connection is gone is refused.
const SHARD_CONNECTIONS_MAX: usize = 4;
/// Turns after the last record, before the stop.
const SETTLE_TURNS: usize = 8;
/// Turns the drain may take: its timeout is 10 idle turns.
const DRAIN_TURNS_MAX: usize = 1_000;

/// Small everything, short timeouts (so the clock steps reach them), and a
/// publish rate limit, as tests/sim/world.rs `settings()` with one shard.
static SETTINGS: LazyLock<Settings> = LazyLock::new(|| {
    cluecast::log::set_level(cluecast::log::Level::Error);
    RunArgs {
        shards: Some(1),
        durability: Some(Durability::Memory),
        payload_bytes_max: Some(256),
        queue_bytes_max: Some(Limits::frame_bytes_for(256, 4096) as usize + 4),
        history_events_max: Some(8),
        arena_bytes: Some(1 << 20),
        mesh_bytes: Some(1 << 16),
        subscriptions_max: Some(4),
        topics_max: Some(16),
        handshakes_max: Some(2),
        publish_rate_max: Some(50),
        heartbeat_ms: Some(1_000),
        idle_timeout_ms: Some(3_000),
        handshake_timeout_ms: Some(1_000),
        drain_timeout_ms: Some(500),
        ..RunArgs::default()
    }
    .resolve()
    .expect("valid fuzzing settings")
});

/// `CLUECAST_FUZZ_TRACE=1`: print what each connection receives (to see
/// what an input does, e.g. `cargo +nightly fuzz run handshake FILE`).
static TRACE: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("CLUECAST_FUZZ_TRACE").is_some_and(|v| v == "1"));

/// The frame arena's memory, mapped once: mapping and populating it for
/// every input took a fifth of the time. Each input's shard is dropped
/// before the next one's takes the span.
static REGION: LazyLock<Region> = LazyLock::new(|| {
    Region::map(SETTINGS.arena_bytes, PageKind::Transparent, None).expect("map the arena")
});

/// Written over the arena before each input, so a frame read before it is
/// written shows (as the simulated ring poisons recycled buffers).
const POISON: u8 = 0xa5;

static KEYS: LazyLock<Arc<Keys>> =
    LazyLock::new(|| Arc::new(Keys::parse(&key_file()).expect("the fuzz key")));

/// One connection, as its client sees it.
struct Conn {
    sim: ClientId,
    /// Received bytes; `buf[start..]` is not decoded yet.
    buf: Vec<u8>,
    start: usize,
    frames: usize,
    /// An ERROR or GOAWAY arrived: nothing may follow.
    ended: Option<&'static str>,
    /// The client closed (FIN): the server's sends fail from then on, so a
    /// frame may be cut short.
    closed: bool,
    /// The client reset it (RST): what was in flight is lost.
    reset: bool,
    /// The client is not reading it now.
    stalled: bool,
    /// The client stopped reading it for a while: the server may give up
    /// on it (after a linger, or as a slow consumer) mid-frame.
    ever_stalled: bool,
}

struct World {
    net: SimNet,
    limits: Limits,
    conns: Vec<Conn>,
    /// Each client's current connection, an index into `conns`.
    clients: [Option<usize>; 2],
}

impl World {
    /// The client's open connection, connecting it if it has none (and the
    /// connection budget allows).
    fn conn(&mut self, client: usize, listener: i32) -> Option<usize> {
        if let Some(index) = self.clients[client] {
            let c = &self.conns[index];
            if !c.closed && !c.reset {
                return Some(index);
            }
        }
        if self.conns.len() == CONNECTIONS_MAX {
            return None;
        }
        self.conns.push(Conn {
            sim: self.net.connect(listener),
            buf: Vec::new(),
            start: 0,
            frames: 0,
            ended: None,
            closed: false,
            reset: false,
            stalled: false,
            ever_stalled: false,
        });
        self.clients[client] = Some(self.conns.len() - 1);
        self.clients[client]
    }

    /// Reads and checks what the server sent every client.
    fn read(&mut self) {
        for (id, c) in self.conns.iter_mut().enumerate() {
            if c.reset || c.stalled {
                continue;
            }
            let bytes = self.net.client_read(c.sim);
            if bytes.is_empty() {
                continue;
            }
            if *TRACE {
                eprintln!(
                    "connection {id} read {} bytes at {} ms",
                    bytes.len(),
                    self.net.now_ms()
                );
            }
            c.buf.drain(..c.start);
            c.start = 0;
            c.buf.extend_from_slice(&bytes);
            loop {
                let (frame, used) = match decode(&c.buf[c.start..], &self.limits) {
                    Ok(Some(decoded)) => decoded,
                    Ok(None) => break,
                    Err(e) => panic!(
                        "connection {id}: the server sent bytes that do not decode ({e}) \
                         after {} frames: {:02x?}",
                        c.frames,
                        &c.buf[c.start..]
                    ),
                };
                if *TRACE {
                    eprintln!("connection {id} received {frame:?}");
                }
                check_frame(id, c.frames, &mut c.ended, &frame, &self.limits);
                c.frames += 1;
                c.start += used;
            }
        }
    }
}

/// Checks the `frames`-th frame the server sent on connection `id`.
fn check_frame(
    id: usize,
    frames: usize,
    ended: &mut Option<&'static str>,
    frame: &Frame<'_>,
    limits: &Limits,
) {
    let name = frame.frame_type().name();
    assert!(
        frame.frame_type().sent_by_server(),
        "connection {id}: the server sent {name}, a client-only frame"
    );
    if let Some(last) = ended {
        panic!("connection {id}: the server sent {name} after {last}, which ends a connection");
    }
    match frame {
        Frame::Welcome(w) => {
            assert_eq!(frames, 0, "connection {id}: WELCOME after another frame");
            assert_eq!(w.version, PROTOCOL_VERSION);
            assert_eq!(w.frame_bytes_max, limits.frame_bytes_max);
            assert_eq!(w.payload_bytes_max, limits.payload_bytes_max);
            assert_eq!(w.topic_bytes_max, limits.topic_bytes_max);
        }
        Frame::Error(_) | Frame::GoAway(_) => *ended = Some(name),
        _ => assert!(
            frames > 0,
            "connection {id}: the server's first frame is {name}, not WELCOME, ERROR or GOAWAY"
        ),
    }
}

/// One turn of the shard, then the clients read; false once drained.
fn turn(shard: &mut Shard<SimRing>, world: &mut World) -> bool {
    let running = shard.turn().expect("the simulated ring never fails a wait");
    world.read();
    running
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let settings = &*SETTINGS;
    let mut config = SimConfig::new(u64::from(flags));
    config.faults = flags & FLAG_FAULTS != 0;
    let window = config.socket_buffer_bytes;
    let net = SimNet::new(config);
    let mut spans = REGION.spans(1);
    for span in &mut spans {
        let len = span.len();
        span.bytes_mut(0, len).fill(POISON);
    }
    let ring = net.ring();
    let listener = net.listen();
    let stop = Arc::new(AtomicBool::new(false));
    let keys = (flags & FLAG_TOKENS != 0).then(|| KEYS.clone());
    let setup = shard_setups(
        settings,
        0xf022_0000_0000_0001,
        SHARD_CONNECTIONS_MAX,
        vec![listener],
        spans,
        vec![ring.fd()],
        &stop,
        Vec::new(),
        Arc::from([]),
        Security { keys, tls: None },
    )
    .pop()
    .expect("one shard");
    let mut shard = Shard::new(ring, setup);
    let mut world = World {
        net,
        limits: settings.limits(),
        conns: Vec::new(),
        clients: [None, None],
    };
    let mut turns = 0;
    for record in records(input) {
        if let Some(index) = world.conn(record.client, listener) {
            let sim = world.conns[index].sim;
            // Reading again, if it had stopped.
            world.conns[index].stalled = false;
            world.net.client_set_window(sim, window);
            if !record.bytes.is_empty() {
                world.net.client_write(sim, record.bytes);
            }
            match record.action {
                ACTION_CLOSE => {
                    world.net.client_close(sim);
                    world.conns[index].closed = true;
                }
                ACTION_RESET => {
                    world.net.client_reset(sim);
                    world.conns[index].reset = true;
                }
                ACTION_STALL => {
                    world.net.client_set_window(sim, STALL_WINDOW_BYTES);
                    world.conns[index].stalled = true;
                    world.conns[index].ever_stalled = true;
                }
                _ => {}
            }
        }
        // Time passes with the shard turning, as it does when running.
        let mut step_ms = record.clock_step_ms;
        while step_ms > 0 && turns < TURNS_MAX {
            let ms = step_ms.min(CLOCK_TURN_MS);
            world.net.advance_ms(ms);
            step_ms -= ms;
            turn(&mut shard, &mut world);
            turns += 1;
        }
        for _ in 0..record.turns.min(TURNS_MAX - turns) {
            turn(&mut shard, &mut world);
            turns += 1;
        }
    }
    for _ in 0..SETTLE_TURNS {
        turn(&mut shard, &mut world);
    }

    if *TRACE {
        eprintln!("stop at {} ms", world.net.now_ms());
    }
    stop.store(true, Ordering::Relaxed);
    let mut drain_turns = 0;
    while turn(&mut shard, &mut world) {
        drain_turns += 1;
        assert!(drain_turns < DRAIN_TURNS_MAX, "the drain did not finish");
    }
    // Whatever is left for clients that stopped reading.
    for c in &mut world.conns {
        c.stalled = false;
    }
    world.read();

    if *TRACE {
        eprintln!("drained at {} ms: {:?}", world.net.now_ms(), shard.stats());
    }
    for (id, c) in world.conns.iter().enumerate() {
        if c.closed || c.reset {
            continue;
        }
        assert!(
            world.net.client_eof(c.sim),
            "connection {id}: still open after the drain"
        );
        if c.ever_stalled {
            continue;
        }
        assert!(
            c.start == c.buf.len(),
            "connection {id}: closed inside a frame ({} bytes left over)",
            c.buf.len() - c.start
        );
        assert!(
            c.ended.is_some() || !world.net.client_was_accepted(c.sim),
            "connection {id}: closed without ERROR or GOAWAY after {} frames",
            c.frames
        );
    }
    assert_eq!(world.net.open_server_fds(), 0, "server sockets left open");
    assert_eq!(shard.connections(), 0, "connections left in the shard");
    assert_eq!(
        shard.sources_counted(),
        0,
        "connections left counted per source"
    );
    assert_eq!(
        shard.frames_live(),
        shard.history_frames(),
        "frames leaked: live in the arena but in no history"
    );
});
