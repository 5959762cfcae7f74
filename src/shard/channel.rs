//! A channel from this shard to another thread of the process (a peer
//! shard, the storage writer or reader): the bounded queue and the doorbell
//! that wakes the thread when it sleeps. `push` is the one place a doorbell
//! is rung.

use std::os::fd::RawFd;

use cluecast_sys::spsc;

use crate::ring::{Op, OpKind, Token};

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
    /// that thread sleeps, queues its wake in `ops`. False when the channel
    /// is full.
    pub(super) fn push(&self, ops: &mut Vec<(Op, u64)>, kind: u8, parts: &[&[u8]]) -> bool {
        if !self.tx.push(kind, parts) {
            return false;
        }
        if self.tx.ring_doorbell() {
            ops.push(self.wake);
        }
        true
    }
}
