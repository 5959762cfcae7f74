//! `SimRing`, one shard's ring: the `Ring` trait over the shared world, and
//! the provided-buffer pool it keeps outside the world's cell.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use super::net::FileKind;
use super::ops::{completes_at_submit, Queued};
use super::*;
use crate::ring::{Completion, Op, Ring};

/// Written over a recycled buffer, so bytes read through a stale pointer show.
const POISON: u8 = 0xa5;

/// One ring's provided buffers, handed out in ring order like a kernel
/// buffer ring: recycled buffers go to the back.
pub(super) struct BufferPool {
    bytes: Vec<u8>,
    pub(super) size: usize,
    filled: Vec<usize>,
    lent: Vec<bool>,
    pub(super) free: VecDeque<u16>,
}

impl BufferPool {
    pub(super) fn new(count: u16, size: usize) -> BufferPool {
        BufferPool {
            bytes: vec![POISON; usize::from(count) * size],
            size,
            filled: vec![0; usize::from(count)],
            lent: vec![false; usize::from(count)],
            free: (0..count).collect(),
        }
    }

    fn range(&self, buffer_id: u16) -> std::ops::Range<usize> {
        let start = usize::from(buffer_id) * self.size;
        start..start + self.size
    }

    /// Lends a buffer taken off the free list, filled from `bytes`.
    pub(super) fn fill(&mut self, buffer_id: u16, bytes: impl ExactSizeIterator<Item = u8>) {
        let len = bytes.len();
        let range = self.range(buffer_id);
        for (slot, byte) in self.bytes[range].iter_mut().zip(bytes) {
            *slot = byte;
        }
        self.filled[usize::from(buffer_id)] = len;
        self.lent[usize::from(buffer_id)] = true;
    }
}

impl Ring for SimRing {
    fn push(&mut self, op: Op, user_data: u64) {
        let mut world = self.net.world();
        world.check(&op);
        let id = world.next_op;
        world.next_op += 1;
        let ring = world.ring(self.fd);
        // Two live operations with one user_data would be indistinguishable
        // to the engine. Cancel, close and wake never stay in flight, so
        // theirs may repeat.
        if !completes_at_submit(&op) {
            let live = |q: &Queued| q.user_data == user_data && !completes_at_submit(&q.op);
            let queued = ring.queued.iter().any(live);
            assert!(
                !queued && !ring.in_flight.values().any(|f| f.live(user_data)),
                "sim: {op:?} reuses user_data {user_data:#x} of an operation still in flight"
            );
        }
        ring.queued.push(Queued { id, user_data, op });
    }

    fn submit_and_wait(&mut self, timeout_ms: u32) -> io::Result<()> {
        let mut guard = self.net.world();
        let world = &mut *guard;
        world.submit(self.fd);
        world.progress(self.fd, &mut self.pool);
        if world.ring(self.fd).ready.is_empty() {
            // Nothing else can happen in one thread: a real wait would sleep
            // out the whole timeout.
            world.now_ms += u64::from(timeout_ms);
        } else if world.config.faults {
            // Jitter: getting to the completions may take a moment.
            world.now_ms += world.rng.below(2);
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let ready = self.net.world().take_ready(self.fd);
        out.extend(ready.into_iter().map(|(_, completion)| completion));
    }

    fn buffer(&self, buffer_id: u16, len: usize) -> &[u8] {
        let pool = &self.pool;
        let i = usize::from(buffer_id);
        assert!(
            pool.lent.get(i) == Some(&true),
            "sim: read of provided buffer {buffer_id}, which the engine does not hold"
        );
        assert!(
            len <= pool.filled[i],
            "sim: read of {len} bytes from provided buffer {buffer_id}, which holds {}",
            pool.filled[i]
        );
        &pool.bytes[pool.range(buffer_id)][..len]
    }

    fn recycle(&mut self, buffer_id: u16) {
        let pool = &mut self.pool;
        let i = usize::from(buffer_id);
        assert!(
            pool.lent.get(i) == Some(&true),
            "sim: recycle of provided buffer {buffer_id}, which the engine does not hold \
             (recycled twice?)"
        );
        pool.lent[i] = false;
        let range = pool.range(buffer_id);
        pool.bytes[range].fill(POISON);
        pool.free.push_back(buffer_id);
    }

    fn now_ms(&self) -> u64 {
        self.net.now_ms()
    }

    fn wall_ns(&self) -> u64 {
        WALL_BASE_NS + self.net.now_ms() * 1_000_000
    }

    fn fd(&self) -> RawFd {
        self.fd
    }

    fn cq_overflows(&self) -> u64 {
        0
    }

    /// Every simulated client connects from an address of its own.
    fn peer_ip(&self, fd: RawFd) -> Option<IpAddr> {
        let world = self.net.view();
        let file = world.files.get(&fd).filter(|f| !f.released())?;
        let FileKind::Socket { client } = file.kind else {
            return None;
        };
        Some(IpAddr::V4(Ipv4Addr::new(
            10,
            0,
            (client >> 8) as u8,
            client as u8,
        )))
    }
}

impl Drop for SimRing {
    /// Tearing a ring down cancels its operations silently, dropping their
    /// file references.
    fn drop(&mut self) {
        let mut world = self.net.world();
        let ring = world
            .rings
            .remove(&self.fd)
            .expect("sim: ring is registered");
        for op in ring.in_flight.into_values() {
            if let Some(fd) = op.pending.file() {
                world.drop_ref(fd);
            }
        }
    }
}
