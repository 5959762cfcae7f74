//! The world a seed builds (shards, listeners, storage, keys, the settings
//! every seed shares) and the driver's end of each client connection:
//! tokens, HELLO, sending a frame, reconnecting; a shard turn with its
//! queue bound checked, and a failure that names the seed and its replay.

use std::sync::atomic::Ordering;

use cluecast::auth::Claims;
use cluecast::config::RunArgs;
use cluecast::engine::{shard_setups, Security};
use cluecast::ring::sim::{SimConfig, WALL_BASE_NS};
use cluecast::ring::Ring;
use cluecast::storage;
use cluecast_proto::{Frame, Hello, Limits};
use cluecast_sys::{PageKind, Region};

use super::*;

fn settings(shards: usize, zerocopy_bytes_min: usize, durability: Durability) -> Settings {
    RunArgs {
        shards: Some(shards),
        durability: Some(durability),
        zerocopy_bytes_min: Some(zerocopy_bytes_min),
        payload_bytes_max: Some(256),
        // Small enough that the slow reader overflows its queue and the
        // history, so catch-up and GOAWAY run in most seeds.
        queue_bytes_max: Some(Limits::frame_bytes_for(256, 4096) as usize + 4),
        history_events_max: Some(8),
        arena_bytes: Some(1 << 20),
        mesh_bytes: Some(1 << 16),
        heartbeat_ms: Some(HEARTBEAT_MS as u32),
        idle_timeout_ms: Some(3 * HEARTBEAT_MS as u32),
        handshake_timeout_ms: Some(2_000),
        drain_timeout_ms: Some(3_000),
        ..RunArgs::default()
    }
    .resolve()
    .expect("valid simulation settings")
}

impl World {
    pub(super) fn new(seed: u64) -> (World, Region) {
        // The driver's own choices, seeded apart from the network's.
        let mut rng = Rng(seed ^ 0x5eed);
        let mut config = SimConfig::new(seed);
        // Few receive buffers in some seeds, so multishot receives run dry.
        if rng.below(4) == 0 {
            config.recv_buffers = 4;
        }
        let net = SimNet::new(config);
        let shard_count = 1 + rng.below(2) as usize;
        // Zero-copy sends for every event in half the seeds.
        let zerocopy_bytes_min = if rng.below(2) == 0 { 0 } else { 32 };
        // Memory-only history, or a log written after delivery (async) or
        // before it (sync), a third of the seeds each.
        let durability =
            [Durability::Memory, Durability::Async, Durability::Sync][rng.below(3) as usize];
        // Tokens checked in half the seeds.
        let keys = (rng.below(2) == 0).then(|| Arc::new(sim_keys(SIM_KEY)));
        let mut settings = settings(shard_count, zerocopy_bytes_min, durability);
        // Tight admission in a quarter of the seeds: two handshakes in
        // flight per shard (the mute client holds one until a newcomer
        // evicts it) and 20 accepts a second, so clients are refused at the
        // door or evicted, and retry.
        if rng.below(4) == 0 {
            settings.handshakes_max = 2;
            settings.accepts_per_s = 20;
        }
        // A full appliance in a quarter of the seeds: room for exactly the
        // nine clients (one spare on two shards), so a reconnect that comes
        // before its old connection is gone (or lands on the fuller shard) is
        // refused and retries.
        let connections_max = match (rng.below(4), shard_count) {
            (0, 1) => 9,
            (0, _) => 5,
            _ => 64,
        };
        let region = Region::map(
            settings.arena_bytes * shard_count,
            PageKind::Transparent,
            None,
        )
        .unwrap();
        let rings: Vec<SimRing> = (0..shard_count).map(|_| net.ring()).collect();
        let listeners: Vec<RawFd> = (0..shard_count).map(|_| net.listen()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let ring_fds: Vec<RawFd> = rings.iter().map(|r| r.fd()).collect();
        // The simulated storage is stepped, not woken: its doorbells are no
        // ring (the wake-ups complete with EBADF, which shards ignore).
        let (links, storage) = if durability == Durability::Memory {
            (Vec::new(), None)
        } else {
            let (links, writers, readers) = storage::links(
                shard_count,
                durability,
                settings.storage_queue_bytes,
                &ring_fds,
                -1,
                -1,
            );
            let sim = SimStorage::new(seed, settings.limits(), durability, writers, readers);
            (links, Some(sim))
        };
        let setups = shard_setups(
            &settings,
            0xe90c_0000_0000_0001 ^ seed,
            connections_max,
            listeners.clone(),
            region.spans(shard_count),
            ring_fds,
            &stop,
            links,
            Arc::from([]),
            Security {
                keys: keys.clone(),
                tls: None,
            },
        );
        let shards = rings
            .into_iter()
            .zip(setups)
            .map(|(ring, setup)| Shard::new(ring, setup))
            .collect();
        let world = World {
            seed,
            net,
            rng,
            listeners,
            shards,
            storage,
            durability,
            keys,
            stop,
            settings,
            clients: Vec::new(),
            acked_per_topic: TOPICS.iter().map(|t| (*t, 0)).collect(),
            acked_epoch: TOPICS.iter().map(|t| (*t, 0)).collect(),
            closing: None,
            close_waits_for_subscribers: false,
            ended_epochs: BTreeMap::new(),
            close_notices: 0,
            close_notices_in_flight: 0,
            step: 0,
        };
        (world, region)
    }

    pub(super) fn fail(&self, message: String) -> ! {
        panic!(
            "seed {}: step {}: {message}\nreplay: CLUECAST_SIM_SEED={} cargo test --test sim",
            self.seed, self.step, self.seed
        );
    }

    /// A token for `role` from `keys`, valid for `ttl_s` of simulated time.
    pub(super) fn token(&self, keys: &Keys, role: &Role, ttl_s: u64) -> Vec<u8> {
        let now_s = (WALL_BASE_NS / 1_000_000 + self.net.now_ms()) / 1000;
        let names = |topics: &[&str]| topics.iter().map(|t| t.to_string()).collect();
        // Exactly what each role needs: its topics, or all of them.
        let (subscribe, publish) = match role {
            Role::Subscriber { topics, .. } => (names(topics), vec![]),
            Role::Publisher { .. } => (vec![], vec!["*".to_string()]),
            Role::Closer { .. } => (vec![], names(&TOPICS)),
            Role::Mute { .. } | Role::Intruder { .. } => (vec![], vec![]),
        };
        let claims = Claims {
            sub: "sim".into(),
            exp: now_s + ttl_s,
            nbf: Some(now_s),
            subscribe,
            publish,
            paths: false,
        };
        keys.mint(None, &claims).expect("valid claims").into_bytes()
    }

    pub(super) fn add_client(&mut self, name: String, role: Role) {
        // Tokens last the whole run, but one subscriber's expires after 2 s.
        let ttl_s = if name == "sub2" { 2 } else { 3600 };
        let token = match (&self.keys, &role) {
            (_, Role::Intruder { .. }) => self.token(&sim_keys(STRANGER_KEY), &role, ttl_s),
            (Some(keys), _) => self.token(keys, &role, ttl_s),
            (None, _) => Vec::new(),
        };
        let shard = self.rng.below(self.listeners.len() as u64) as usize;
        let sim = self.net.connect(self.listeners[shard]);
        self.clients.push(VClient {
            name,
            sim,
            connected_shard: shard,
            role,
            buf: Vec::new(),
            handshaken: false,
            subscribed: 0,
            last_sent_ms: self.net.now_ms(),
            gone: false,
            reconnects: 0,
            refused: 0,
            token,
            tokens_expired: 0,
        });
        let index = self.clients.len() - 1;
        if !matches!(self.clients[index].role, Role::Mute { .. }) {
            self.send_hello(index);
        }
    }

    fn send_hello(&mut self, index: usize) {
        let token = std::mem::take(&mut self.clients[index].token);
        self.send(
            index,
            &Frame::Hello(Hello {
                version_min: 1,
                version_max: 1,
                client_id: b"sim",
                token: &token,
            }),
        );
        self.clients[index].token = token;
    }

    pub(super) fn send(&mut self, index: usize, frame: &Frame<'_>) {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        let client = &mut self.clients[index];
        client.last_sent_ms = self.net.now_ms();
        self.net.client_write(client.sim, &bytes);
    }

    pub(super) fn turn_shards(&mut self) -> bool {
        if let Some(storage) = &mut self.storage {
            storage.step();
        }
        let mut running = false;
        for shard in &mut self.shards {
            running |= shard.turn().expect("the simulated ring never fails a wait");
        }
        let bound = self.settings.queue_bytes_max + 512;
        for (id, shard) in self.shards.iter().enumerate() {
            if let Some(&largest) = shard.queued_bytes().first() {
                if largest > bound {
                    self.fail(format!(
                        "shard {id} queued {largest} bytes for one connection, bound {bound}"
                    ));
                }
            }
        }
        running
    }

    /// A new connection that resumes every subscription where it stood
    /// (none once the appliance is stopping: its listeners are closed).
    pub(super) fn reconnect(&mut self, index: usize) {
        if self.stop.load(Ordering::Relaxed) {
            self.clients[index].gone = true;
            return;
        }
        let shard = self.rng.below(self.listeners.len() as u64) as usize;
        let old = self.clients[index].sim;
        self.net.client_close(old);
        let sim = self.net.connect(self.listeners[shard]);
        let client = &mut self.clients[index];
        client.sim = sim;
        client.connected_shard = shard;
        client.buf.clear();
        client.handshaken = false;
        client.reconnects += 1;
        if let Role::Subscriber { positions, .. } = &mut client.role {
            // A subscription not yet confirmed starts over, live.
            positions.retain(|_, p| p.confirmed);
            for p in positions.values_mut() {
                p.jump_to = None;
            }
        }
        if !matches!(self.clients[index].role, Role::Mute { .. }) {
            self.send_hello(index);
        }
    }

    pub(super) fn summary(&self) -> String {
        let world = format!(
            "durability {:?}, acked {:?}, storage {:?}\n",
            self.durability,
            self.acked_per_topic,
            self.storage.as_ref().map(|s| s.stats)
        );
        world
            + &self
                .clients
                .iter()
                .map(|c| {
                    format!(
                        "{} shard {} reconnects {}: {:?}",
                        c.name, c.connected_shard, c.reconnects, c.role
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
    }
}

/// The appliance's key, and one it does not have (same id).
const SIM_KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const STRANGER_KEY: &str = "a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5";

fn sim_keys(secret: &str) -> Keys {
    Keys::parse(&format!("sim = \"{secret}\"")).expect("a valid key")
}
