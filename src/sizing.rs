//! What the appliance takes from its host for one set of settings: the
//! memory each shard maps and pins, the descriptors its connections need,
//! and the CPU each shard runs on. `run` (engine) sizes itself with these
//! and `cluecast tune` prepares the host with the same numbers, so the two
//! cannot disagree.

use crate::config::Settings;
use crate::placement::{self, HugePages};
use crate::ring::uring::UringConfig;

/// Descriptors kept back from the connection budget: rings, listeners,
/// stdio, log files.
const FDS_RESERVED: u64 = 64;
/// The accept backlog of each shard's listener (net.core.somaxconn caps it).
pub const LISTEN_BACKLOG: i32 = 4096;
/// Descriptors per shard kept for refusing clients past capacity.
const REFUSING_FDS: usize = 256;
/// What `run` maps and what io_uring pins at start-up for one set of
/// settings. `run` maps exactly this (through `placement`) and `cluecast
/// tune` reserves huge pages and checks limits against it, so the two
/// cannot disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemoryPlan {
    /// One shard's mapping: its frame arena, receive buffers and their ring.
    pub shard_bytes: usize,
    /// 2 MiB huge pages all shards take when enough are reserved.
    pub huge_pages: usize,
    /// An upper bound on the locked memory io_uring charges to the user
    /// without CAP_IPC_LOCK: each registered arena, and each ring's queues
    /// and receive buffer ring (estimated from their entry sizes).
    pub memlock_bytes: usize,
}

pub fn memory_plan(settings: &Settings) -> MemoryPlan {
    const PAGE_BYTES: usize = 4096;
    const SQE_BYTES: usize = 64;
    const CQE_BYTES: usize = 16;
    const BUF_RING_ENTRY_BYTES: usize = 16;
    let pages = |bytes: usize| bytes.div_ceil(PAGE_BYTES) * PAGE_BYTES;
    let shard_bytes = placement::shard_bytes(settings.arena_bytes, ring_config(settings));
    let sq = settings.ring_entries as usize;
    // The rings' header fits in the page added to the completion queue.
    let ring_bytes = pages(sq * SQE_BYTES)
        + pages(PAGE_BYTES + 4 * sq * CQE_BYTES + sq * 4)
        + pages(settings.recv_buffers as usize * BUF_RING_ENTRY_BYTES);
    // Pinning covers whole pages: 2 MiB ones unless huge pages are off.
    let arena_pinned = match settings.huge_pages {
        HugePages::Off => pages(settings.arena_bytes),
        HugePages::Auto | HugePages::Require => {
            cluecast_sys::huge_pages_for(settings.arena_bytes) * cluecast_sys::HUGE_PAGE_BYTES
        }
    };
    MemoryPlan {
        shard_bytes,
        huge_pages: settings.shards * cluecast_sys::huge_pages_for(shard_bytes),
        memlock_bytes: settings.shards * (arena_pinned + ring_bytes),
    }
}

/// The rings' sizes, as the settings ask.
pub fn ring_config(settings: &Settings) -> UringConfig {
    UringConfig {
        sq_entries: settings.ring_entries,
        recv_buffers: settings.recv_buffers,
        recv_buffer_bytes: settings.recv_buffer_bytes,
    }
}

/// Connections each shard can hold under an open-file limit of
/// `nofile_soft` (0: none), after the descriptors kept back.
pub fn connection_capacity(nofile_soft: u64, shards: usize) -> usize {
    let fd_budget = nofile_soft.saturating_sub(FDS_RESERVED) as usize / shards;
    if fd_budget < 2 {
        return 0;
    }
    // Refusing a client past capacity briefly takes a descriptor too (one
    // small send, then close); past this many at once, accept backs off.
    fd_budget - (fd_budget / 4).clamp(1, REFUSING_FDS)
}

/// The smallest open-file limit that gives each shard `connections` slots.
pub fn nofile_needed(connections: usize, shards: usize) -> u64 {
    assert!(connections >= 1 && shards >= 1);
    // The capacity grows with the limit: search for the first that fits.
    let (mut low, mut high) = (
        FDS_RESERVED,
        FDS_RESERVED + 2 * (connections * shards) as u64,
    );
    while low < high {
        let mid = low + (high - low) / 2;
        if connection_capacity(mid, shards) >= connections {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    low
}

/// The CPU shard `id` pins itself to: the id-th of the CPUs the process may
/// use (what `cluecast tune` places interrupts on).
pub fn shard_cpu(allowed_cpus: &[usize], id: usize) -> usize {
    allowed_cpus[id % allowed_cpus.len()]
}
