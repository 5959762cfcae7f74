//! What leaves the shard: the `Outbox` of ring operations its handlers
//! produce during a turn, and each `Channel` to another thread of the
//! process (a peer shard, the storage writer or reader): the bounded queue
//! and the doorbell that wakes the thread when it sleeps. `Channel::push`
//! is the one place a doorbell is rung.

use std::os::fd::RawFd;

use cluecast_sys::spsc;

use crate::ring::{Op, OpKind, Token};

/// Ring operations produced by this turn's handlers, submitted together at
/// the start of the next wait.
#[derive(Default)]
pub(super) struct Outbox {
    ops: Vec<(Op, u64)>,
}

impl Outbox {
    pub(super) fn push(&mut self, op: Op, user_data: u64) {
        self.ops.push((op, user_data));
    }

    /// Everything queued, in order, leaving the outbox empty.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (Op, u64)> + '_ {
        self.ops.drain(..)
    }
}

pub(super) struct Channel {
    tx: spsc::Sender,
    /// The MSG_RING that wakes the thread sleeping on the other ring.
    wake: (Op, u64),
}

impl Channel {
    pub(super) fn new(tx: spsc::Sender, ring_fd: RawFd, shard_id: usize) -> Channel {
        let token = Token::new(OpKind::Wake, 0, shard_id as u32).encode();
        let op = Op::Wake {
            ring_fd,
            user_data: token,
        };
        Channel {
            tx,
            wake: (op, token),
        }
    }

    pub(super) fn has_room(&self, len: usize) -> bool {
        self.tx.has_room(len)
    }

    /// Whether records of each length fit one after the other.
    pub(super) fn has_room_for(&self, lens: &[usize]) -> bool {
        self.tx.has_room_for(lens)
    }

    /// Hands a record (its parts back to back) to the other thread and, if
    /// that thread sleeps, queues its wake in the outbox. False when the
    /// channel is full.
    pub(super) fn push(&self, outbox: &mut Outbox, kind: u8, parts: &[&[u8]]) -> bool {
        if !self.tx.push(kind, parts) {
            return false;
        }
        if self.tx.ring_doorbell() {
            let (op, user_data) = self.wake;
            outbox.push(op, user_data);
        }
        true
    }
}
