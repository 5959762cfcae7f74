//! The simulated ring: a deterministic, seeded, fault-injecting `Ring` over a
//! simulated TCP world, so the whole engine runs in one thread and any failure
//! replays from its seed.
//!
//! `SimNet` owns the world: the virtual clock, the fake descriptor table, the
//! listeners and connections (the test driver plays the clients), every ring's
//! queued and in-flight operations and ready completions, and the one PRNG all
//! randomness comes from. `SimRing` is one shard's ring: a handle on the world
//! plus its provided-buffer pool, kept outside the shared cell so `buffer()`
//! can lend plain borrows.
//!
//! Semantics follow the kernel as the engine sees it. Where the kernel would
//! merely misbehave later (a reused user_data, a double recycle, a buffer
//! changed under a zero-copy send), the simulation panics naming the rule.
//!
//! The files split the world by what each part owns: `net` the sockets
//! (the descriptor table's files and the clients the driver plays), `ops`
//! an operation's life from push to its last completion, `transfer` what
//! accept, receive and send move as an operation makes progress, `faults`
//! the fault rates and the PRNG, and `ring` `SimRing`'s side of the `Ring`
//! trait with its provided buffers.

use std::cell::{Ref, RefCell, RefMut};
use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::rc::Rc;

mod faults;
mod net;
mod ops;
mod ring;
#[cfg(test)]
mod tests;
mod transfer;

pub use faults::Rng;
use net::{Client, File};
use ops::RingState;
use ring::BufferPool;

/// Fake descriptors count up from here and are never reused, so a stale fd
/// is always detectable.
const FIRST_FD: RawFd = 1000;
/// The simulated wall clock at time 0 (November 2023, so timestamps look
/// real; tests mint tokens against it).
pub const WALL_BASE_NS: u64 = 1_700_000_000_000_000_000;

#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Provided buffers per ring (a power of two, as for a kernel buffer ring).
    pub recv_buffers: u16,
    pub recv_buffer_bytes: u32,
    /// Default server->client capacity per socket: the kernel send buffer
    /// plus the peer's receive window.
    pub socket_buffer_bytes: usize,
    /// Master switch for the random faults; off, the world is still seeded
    /// (operation order) but every operation does the obvious thing.
    pub faults: bool,
}

impl SimConfig {
    /// Small buffers and windows, so exhaustion and back-pressure happen.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            recv_buffers: 32,
            recv_buffer_bytes: 2048,
            socket_buffer_bytes: 16 * 1024,
            faults: true,
        }
    }
}

/// How often each fault was injected, so tests can assert they happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub torn_recvs: u64,
    pub ended_accepts: u64,
    pub ended_recvs: u64,
    pub short_sends: u64,
    pub spurious_eagains: u64,
    /// Zero-copy notifications that lagged their result by more than a step.
    pub lagged_notifs: u64,
    /// Reaps whose completions came out in a different order than produced.
    pub reordered_reaps: u64,
    /// Not a fault: receives that ended with -ENOBUFS.
    pub no_buffers: u64,
}

pub type ClientId = usize;

/// Handle on the simulated world, shared by every ring and the test driver.
#[derive(Clone)]
pub struct SimNet(Rc<RefCell<World>>);

pub struct SimRing {
    net: SimNet,
    fd: RawFd,
    pool: BufferPool,
}

struct World {
    config: SimConfig,
    rng: Rng,
    now_ms: u64,
    next_fd: RawFd,
    next_op: u64,
    files: BTreeMap<RawFd, File>,
    rings: BTreeMap<RawFd, RingState>,
    clients: Vec<Client>,
    stats: SimStats,
}

impl SimNet {
    pub fn new(config: SimConfig) -> SimNet {
        assert!(
            config.recv_buffers.is_power_of_two(),
            "sim: recv_buffers must be a power of two, got {}",
            config.recv_buffers
        );
        assert!(
            config.recv_buffer_bytes > 0 && i32::try_from(config.recv_buffer_bytes).is_ok(),
            "sim: recv_buffer_bytes must be in 1..=i32::MAX, got {}",
            config.recv_buffer_bytes
        );
        SimNet(Rc::new(RefCell::new(World {
            config,
            rng: Rng(config.seed),
            now_ms: 0,
            next_fd: FIRST_FD,
            next_op: 0,
            files: BTreeMap::new(),
            rings: BTreeMap::new(),
            clients: Vec::new(),
            stats: SimStats::default(),
        })))
    }

    fn world(&self) -> RefMut<'_, World> {
        self.0.borrow_mut()
    }

    fn view(&self) -> Ref<'_, World> {
        self.0.borrow()
    }

    /// A new ring with its own fake ring fd and provided-buffer pool.
    pub fn ring(&self) -> SimRing {
        let mut world = self.world();
        let fd = world.alloc_fd();
        world.rings.insert(fd, RingState::default());
        let pool = BufferPool::new(
            world.config.recv_buffers,
            world.config.recv_buffer_bytes as usize,
        );
        SimRing {
            net: self.clone(),
            fd,
            pool,
        }
    }

    pub fn advance_ms(&self, ms: u64) {
        self.world().now_ms += ms;
    }

    pub fn now_ms(&self) -> u64 {
        self.view().now_ms
    }

    /// Operations pushed on any ring whose last completion is not yet ready.
    pub fn ops_in_flight(&self) -> usize {
        let world = self.view();
        let rings = world.rings.values();
        rings.map(|r| r.queued.len() + r.in_flight.len()).sum()
    }

    pub fn stats(&self) -> SimStats {
        self.view().stats
    }
}

impl World {
    fn alloc_fd(&mut self) -> RawFd {
        let fd = self.next_fd;
        self.next_fd += 1;
        fd
    }
}
