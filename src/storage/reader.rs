//! The reader thread: history from disk for subscribers that are behind
//! what the shards keep in memory (a resume after hours, a slow phone).
//!
//! Apart from the writer so that a burst of resumes never delays a group
//! commit. A shard asks for at most what the subscriber's queue has room
//! for, and keeps one request in flight per subscription, so replies are
//! bounded by the shards' own queue bounds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cluecast_sys::spsc;

use super::db::Db;
use super::{ReadRequest, ReadStatus, EVENTS, READ, READ_REPLY_BYTES_MAX, READ_REPLY_HEADER_BYTES};
use crate::ring::uring::Doorbell;

const IDLE_WAIT_MS: u32 = 100;
/// When a shard's reply channel is full: it empties it every turn.
const BLOCKED_WAIT_MS: u32 = 1;

/// The reader's ends of one shard's channels.
pub struct ReaderPort {
    pub read_rx: spsc::Receiver,
    pub reply_tx: spsc::Sender,
    pub ring_fd: std::os::fd::RawFd,
}

pub struct Reader {
    db: Arc<Db>,
    ports: Vec<ReaderPort>,
    doorbell: Doorbell,
    reply: Vec<u8>,
    pub reads: u64,
    pub failures: u64,
}

impl Reader {
    pub fn new(db: Arc<Db>, ports: Vec<ReaderPort>, doorbell: Doorbell) -> Reader {
        Reader {
            db,
            ports,
            doorbell,
            reply: Vec::with_capacity(READ_REPLY_HEADER_BYTES + READ_REPLY_BYTES_MAX),
            reads: 0,
            failures: 0,
        }
    }

    pub fn run(mut self, stop: &AtomicBool) -> (u64, u64) {
        loop {
            let (served, blocked) = self.round();
            if served == 0 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                self.doorbell.wait(if blocked {
                    BLOCKED_WAIT_MS
                } else {
                    IDLE_WAIT_MS
                });
            }
        }
        (self.reads, self.failures)
    }

    /// Serves every waiting request that has room for its reply; returns how
    /// many were served and whether some shard's reply channel was full.
    fn round(&mut self) -> (usize, bool) {
        let mut served = 0;
        let mut blocked = false;
        for i in 0..self.ports.len() {
            self.ports[i].read_rx.clear_doorbell();
            while let Some((kind, body)) = self.ports[i].read_rx.peek() {
                assert_eq!(kind, READ, "unknown read record kind");
                let request = ReadRequest::decode(body);
                let bytes_max = (request.bytes_max as usize).min(READ_REPLY_BYTES_MAX);
                let port = &self.ports[i];
                let reply_bytes_max = READ_REPLY_HEADER_BYTES + 256 + bytes_max;
                if !port.reply_tx.has_room(reply_bytes_max) {
                    blocked = true;
                    break;
                }
                let frames_at = request.start_reply(&mut self.reply);
                let result = self.db.topic(request.topic).and_then(|row| match row {
                    Some(row) => self.db.read_events(
                        row,
                        request.topic,
                        request.from,
                        request.to,
                        bytes_max,
                        &mut self.reply,
                    ),
                    None => Ok((ReadStatus::NotYet, 0)),
                });
                let (status, oldest) = result.unwrap_or_else(|e| {
                    self.failures += 1;
                    crate::error!("storage: reading history failed: {e}");
                    self.reply.truncate(frames_at);
                    (ReadStatus::Failed, 0)
                });
                request.finish_reply(&mut self.reply, status, oldest);
                let port = &self.ports[i];
                let pushed = port.reply_tx.push(EVENTS, &[&self.reply]);
                assert!(pushed, "room was checked");
                if port.reply_tx.ring_doorbell() {
                    self.doorbell.ring(port.ring_fd);
                }
                self.ports[i].read_rx.pop();
                self.reads += 1;
                served += 1;
            }
        }
        (served, blocked)
    }
}
