//! The reader thread: history from disk for subscribers that are behind
//! what the shards keep in memory (a resume after hours, a slow phone).
//!
//! Apart from the writer so that a burst of resumes never delays a group
//! commit. A shard asks for at most what the subscriber's queue has room
//! for, and keeps one request in flight per subscription, so replies are
//! bounded by the shards' own queue bounds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cluecast_proto::{
    ErrorCode, Frame, Limits, Path, Position, PATH_FLAG_CORRUPT, PATH_FLAG_LAST,
    PATH_FLAG_TRUNCATED, POSITION_BYTES,
};
use cluecast_sys::spsc;

use super::db::Db;
use super::path_block::decode_block;
use super::{
    FromReader, PathRequest, ReadRequest, ReadStatus, ToReader, READ_REPLY_BYTES_MAX,
    READ_REPLY_HEADER_BYTES,
};
use crate::ring::uring::Doorbell;

const IDLE_WAIT_MS: u32 = 100;
/// Most positions one PATH_QUERY is answered with (about 14 hours at 1 Hz);
/// the answer says when it stopped there. (All positions after `since_ms`
/// are read to sort them: 20 bytes each, briefly.)
const PATH_POSITIONS_MAX: usize = 50_000;
/// Room a path answer may need in the reply channel: the positions and the
/// frames' own bytes (8 per frame, frames of at least 4 KiB).
const PATH_REPLY_BYTES_MAX: usize = PATH_POSITIONS_MAX * (POSITION_BYTES + 1) + 4096;
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
    limits: Limits,
    ports: Vec<ReaderPort>,
    doorbell: Doorbell,
    reply: Vec<u8>,
    pub reads: u64,
    pub failures: u64,
}

impl Reader {
    pub fn new(db: Arc<Db>, limits: Limits, ports: Vec<ReaderPort>, doorbell: Doorbell) -> Reader {
        Reader {
            db,
            limits,
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
                let request = ToReader::decode(kind, body);
                let reply_kind = FromReader::kind_answering(&request);
                let reply_bytes_max = match &request {
                    ToReader::Read(read) => {
                        let frames = (read.bytes_max as usize).min(READ_REPLY_BYTES_MAX);
                        READ_REPLY_HEADER_BYTES + 256 + frames
                    }
                    ToReader::PathRead(_) => PATH_REPLY_BYTES_MAX,
                };
                if !self.ports[i].reply_tx.has_room(reply_bytes_max) {
                    blocked = true;
                    break;
                }
                let body = body.to_vec();
                match ToReader::decode(kind, &body) {
                    ToReader::Read(read) => self.serve_events(&read),
                    ToReader::PathRead(path) => self.serve_path(&path),
                }
                let port = &self.ports[i];
                let pushed = port.reply_tx.push(reply_kind, &[&self.reply]);
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

    /// Events a catching-up subscriber needs, into `reply`.
    fn serve_events(&mut self, request: &ReadRequest<'_>) {
        let bytes_max = (request.bytes_max as usize).min(READ_REPLY_BYTES_MAX);
        let frames_at = request.start_reply(&mut self.reply);
        let result = self.db.topic(request.topic).and_then(|row| match row {
            Some(row) if row.epoch == request.epoch => self.db.read_events(
                row,
                request.topic,
                request.from,
                request.to,
                bytes_max,
                &mut self.reply,
            ),
            // Not stored yet, or only an earlier history of the name is.
            _ => Ok((ReadStatus::NotYet, 0)),
        });
        let (status, oldest) = result.unwrap_or_else(|e| {
            self.failures += 1;
            crate::error!("storage: reading history failed: {e}");
            self.reply.truncate(frames_at);
            (ReadStatus::Failed, 0)
        });
        request.finish_reply(&mut self.reply, status, oldest);
    }

    /// The answer to a PATH_QUERY, as whole PATH frames, into `reply`. A
    /// damaged block is reported (logged, and flagged in the answer), never
    /// decoded into positions.
    fn serve_path(&mut self, request: &PathRequest<'_>) {
        request.start_reply(&mut self.reply);
        let mut found: Vec<Position> = Vec::new();
        let mut corrupt = false;
        let player = String::from_utf8_lossy(request.player);
        let result = self.db.for_each_path_block(request.player, |block, bytes| {
            match decode_block(bytes) {
                Ok(list) => {
                    found.extend(list.iter().filter(|p| p.client_ts_ms >= request.since_ms))
                }
                Err(e) => {
                    corrupt = true;
                    crate::error!("storage: block {block} of player {player:?}'s path: {e}");
                }
            }
            true
        });
        // Time order (stable: equal times stay in arrival order), so a long
        // answer can stop after a whole timestamp and be continued from it.
        found.sort_by_key(|p| p.client_ts_ms);
        let truncated = found.len() > PATH_POSITIONS_MAX;
        if truncated {
            let first_left_out = found[PATH_POSITIONS_MAX].client_ts_ms;
            found.truncate(PATH_POSITIONS_MAX);
            while found
                .last()
                .is_some_and(|p| p.client_ts_ms == first_left_out)
            {
                found.pop();
            }
        }
        let mut positions: Vec<u8> = found.iter().flat_map(|p| p.to_bytes()).collect();
        let status = match result {
            Ok(()) => 0,
            Err(e) => {
                self.failures += 1;
                crate::error!("storage: reading player {player:?}'s path failed: {e}");
                positions.clear();
                ErrorCode::StorageFailed as u16
            }
        };
        // PATH is 8 bytes (type, request id, status, flags) and the positions.
        let per_frame = (self.limits.frame_bytes_max as usize - 8) / POSITION_BYTES;
        let mut chunks = positions.chunks(per_frame * POSITION_BYTES).peekable();
        loop {
            let chunk = chunks.next().unwrap_or(&[]);
            let last = chunks.peek().is_none();
            let mut flags = 0;
            if last {
                flags |= PATH_FLAG_LAST;
                flags |= if truncated { PATH_FLAG_TRUNCATED } else { 0 };
                flags |= if corrupt { PATH_FLAG_CORRUPT } else { 0 };
            }
            let frame = Frame::Path(Path {
                request_id: request.request_id,
                status,
                flags,
                positions: chunk,
            });
            frame.encode(&mut self.reply);
            if last {
                break;
            }
        }
    }
}
