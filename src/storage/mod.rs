//! The durable log: what the shards hand to disk and read back.
//!
//! One RocksDB instance (`db`) holds events, topics, player paths and
//! metadata in column families sharing one WAL. Two threads own it: the
//! `writer` group-commits whatever the shards appended meanwhile (one batch,
//! one WAL sync) and tells each shard how far its appends are durable; the
//! `reader` serves the history a catching-up subscriber needs from disk. The
//! shards' rings never wait on either: they talk over the same bounded
//! channels and MSG_RING doorbells the shards use among themselves, with the
//! record formats below as the only contract.
//!
//! Sequencing stays on the topic's owner shard; the writer stores what it is
//! given, in order. A replicated log later puts its commit in front of this
//! step, and the owner's apply step stays the one place sequences are made.

pub mod db;
pub mod path_block;
pub mod reader;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod writer;

use std::os::fd::RawFd;

use cluecast_proto::{Position, POSITION_BYTES};
use cluecast_sys::spsc;

pub use reader::{Reader, ReaderPort};
pub use writer::{Retention, Writer, WriterPort};

/// How an acknowledged publish survives a crash.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// History in memory only: a restart loses it (and changes every epoch).
    Memory,
    /// Acked and delivered at once, written to the WAL without waiting for
    /// the disk; an unclean stop changes every topic's epoch.
    Async,
    /// Acked (durable) and delivered only after the WAL sync that covers it.
    Sync,
}

impl Durability {
    pub fn name(self) -> &'static str {
        match self {
            Durability::Memory => "memory",
            Durability::Async => "async",
            Durability::Sync => "sync",
        }
    }
}

// ---- shard -> writer records ----------------------------------------------

const APPEND: u8 = 1;
const RESUME: u8 = 2;
const POSITION: u8 = 3;
const CLOSE: u8 = 4;

/// What a shard hands the writer, on its append channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToWriter<'a> {
    /// An event to store: its encoded EVENT frame.
    Append(&'a [u8]),
    /// The shard has failed every append after a FAILED notice and starts
    /// anew.
    Resume,
    /// A player's position (str8 player, then the POSITION body).
    Position {
        player: &'a [u8],
        position: Position,
    },
    /// The topic is closed: delete its events and its row. Counted among
    /// the shard's appends, so DURABLE and FAILED cover it too.
    Close(&'a [u8]),
}

impl<'a> ToWriter<'a> {
    /// Hands the record's kind and parts to `push` (a channel's push) and
    /// returns what it returns.
    pub fn push_with(&self, push: impl FnOnce(u8, &[&[u8]]) -> bool) -> bool {
        match *self {
            ToWriter::Append(frame) => push(APPEND, &[frame]),
            ToWriter::Resume => push(RESUME, &[]),
            ToWriter::Position { player, position } => {
                // A player is a HELLO client_id (a str8) or a token's
                // subject (at most `auth::SUBJECT_BYTES_MAX`): its length
                // fits a byte.
                debug_assert!(player.len() <= usize::from(u8::MAX));
                let len = [player.len() as u8];
                push(POSITION, &[&len, player, &position.to_bytes()])
            }
            ToWriter::Close(topic) => push(CLOSE, &[topic]),
        }
    }

    /// A record as a shard of this process pushed it.
    pub fn decode(kind: u8, body: &'a [u8]) -> ToWriter<'a> {
        match kind {
            APPEND => ToWriter::Append(body),
            RESUME => ToWriter::Resume,
            POSITION => {
                let player_len = body[0] as usize;
                let (player, fix) = body[1..].split_at(player_len);
                let fix: &[u8; POSITION_BYTES] = fix.try_into().expect("a whole position");
                ToWriter::Position {
                    player,
                    position: Position::from_bytes(fix),
                }
            }
            CLOSE => ToWriter::Close(body),
            other => panic!("unknown storage record kind {other}"),
        }
    }
}

// ---- writer -> shard records ----------------------------------------------

/// u64: the shard's appends, counted from 1, are durable up to this one.
pub const DURABLE: u8 = 1;
/// u64 then text: the appends after the last DURABLE failed, up to this
/// one, and every later one until the shard sends RESUME.
pub const FAILED: u8 = 2;
/// u64, u64 epoch, then the topic: retention deleted the events of the
/// topic's history in that epoch before this sequence.
pub const FLOOR: u8 = 3;
/// u64: the shard's POSITION records, counted from 1, are written up to
/// this one, so a path read from now on sees them.
pub const PATHS: u8 = 4;

// ---- shard <-> reader records -----------------------------------------------

const READ: u8 = 1;
const PATH_READ: u8 = 2;
const EVENTS: u8 = 1;
const PATH_FRAMES: u8 = 2;

/// What a shard asks the reader, on its read channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToReader<'a> {
    Read(ReadRequest<'a>),
    PathRead(PathRequest<'a>),
}

impl<'a> ToReader<'a> {
    /// Hands the record's kind and parts to `push` (a channel's push) and
    /// returns what it returns.
    pub fn push_with(&self, push: impl FnOnce(u8, &[&[u8]]) -> bool) -> bool {
        match self {
            ToReader::Read(read) => push(READ, &[&read.encode(), read.topic]),
            ToReader::PathRead(path) => push(PATH_READ, &[&path.encode(), path.player]),
        }
    }

    /// A record as a shard of this process pushed it.
    pub fn decode(kind: u8, body: &'a [u8]) -> ToReader<'a> {
        match kind {
            READ => ToReader::Read(ReadRequest::decode(body)),
            PATH_READ => ToReader::PathRead(PathRequest::decode(body)),
            other => panic!("unknown read record kind {other}"),
        }
    }
}

/// The reader's answer to a `ToReader` record, on the shard's reply channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FromReader<'a> {
    /// A `ReadReply` header, the topic, then whole EVENT frames.
    Events {
        reply: ReadReply,
        topic: &'a [u8],
        frames: &'a [u8],
    },
    /// The connection that asked, then the whole PATH frames answering its
    /// query.
    PathFrames {
        conn: u32,
        generation: u32,
        frames: &'a [u8],
    },
}

impl<'a> FromReader<'a> {
    /// The kind of record a reply to `request` is pushed as.
    pub fn kind_answering(request: &ToReader<'_>) -> u8 {
        match request {
            ToReader::Read(_) => EVENTS,
            ToReader::PathRead(_) => PATH_FRAMES,
        }
    }

    /// A reply as the reader of this process pushed it.
    pub fn decode(kind: u8, body: &'a [u8]) -> FromReader<'a> {
        match kind {
            EVENTS => {
                let (reply, topic, frames) = ReadReply::decode(body);
                FromReader::Events {
                    reply,
                    topic,
                    frames,
                }
            }
            PATH_FRAMES => {
                assert!(body.len() >= 8, "a short path reply");
                FromReader::PathFrames {
                    conn: be_u32(&body[0..]),
                    generation: be_u32(&body[4..]),
                    frames: &body[8..],
                }
            }
            other => panic!("unknown storage reply kind {other}"),
        }
    }
}

/// A PATH_QUERY passed on to the reader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRequest<'a> {
    pub conn: u32,
    pub generation: u32,
    pub request_id: u32,
    pub since_ms: u64,
    pub player: &'a [u8],
}

const PATH_REQUEST_HEADER_BYTES: usize = 4 + 4 + 4 + 8;

impl<'a> PathRequest<'a> {
    pub fn encode(&self) -> [u8; PATH_REQUEST_HEADER_BYTES] {
        let mut out = [0u8; PATH_REQUEST_HEADER_BYTES];
        out[0..4].copy_from_slice(&self.conn.to_be_bytes());
        out[4..8].copy_from_slice(&self.generation.to_be_bytes());
        out[8..12].copy_from_slice(&self.request_id.to_be_bytes());
        out[12..20].copy_from_slice(&self.since_ms.to_be_bytes());
        out
    }

    /// The header as encoded, then the player (the record's remaining bytes).
    pub fn decode(body: &'a [u8]) -> PathRequest<'a> {
        assert!(
            body.len() > PATH_REQUEST_HEADER_BYTES,
            "a shard sent a short path read"
        );
        PathRequest {
            conn: be_u32(&body[0..]),
            generation: be_u32(&body[4..]),
            request_id: be_u32(&body[8..]),
            since_ms: be_u64(&body[12..]),
            player: &body[PATH_REQUEST_HEADER_BYTES..],
        }
    }
}

impl PathRequest<'_> {
    /// Starts the reply to this request in `out`: the connection that asked.
    /// The PATH frames follow.
    pub fn start_reply(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.conn.to_be_bytes());
        out.extend_from_slice(&self.generation.to_be_bytes());
    }
}

/// Events of one topic's history in `epoch` a subscriber still needs,
/// `from..=to`, at most `bytes_max` of frames. While the log holds another
/// history of the name (an earlier one whose close the writer has not
/// reached yet), the answer is NotYet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest<'a> {
    pub conn: u32,
    pub generation: u32,
    pub epoch: u64,
    pub from: u64,
    pub to: u64,
    pub bytes_max: u32,
    pub topic: &'a [u8],
}

/// What a read found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Frames follow, from the requested sequence on.
    Found = 0,
    /// The requested sequence is not stored (retention deleted it, or a
    /// failed async batch never wrote it); `oldest` is the next one that is.
    Gone = 1,
    /// Not stored yet (the writer is behind): ask again shortly.
    NotYet = 2,
    /// The disk read failed (the reader logged why).
    Failed = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadReply {
    pub conn: u32,
    pub generation: u32,
    pub from: u64,
    pub status: ReadStatus,
    pub oldest: u64,
}

const READ_REQUEST_HEADER_BYTES: usize = 4 + 4 + 8 + 8 + 8 + 4;
pub const READ_REPLY_HEADER_BYTES: usize = 4 + 4 + 8 + 1 + 8;

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

impl<'a> ReadRequest<'a> {
    pub fn encode(&self) -> [u8; READ_REQUEST_HEADER_BYTES] {
        let mut out = [0u8; READ_REQUEST_HEADER_BYTES];
        out[0..4].copy_from_slice(&self.conn.to_be_bytes());
        out[4..8].copy_from_slice(&self.generation.to_be_bytes());
        out[8..16].copy_from_slice(&self.epoch.to_be_bytes());
        out[16..24].copy_from_slice(&self.from.to_be_bytes());
        out[24..32].copy_from_slice(&self.to.to_be_bytes());
        out[32..36].copy_from_slice(&self.bytes_max.to_be_bytes());
        out
    }

    /// Starts the reply to this request in `out`: room for its header, then
    /// the topic. Returns where the frames begin.
    pub fn start_reply(&self, out: &mut Vec<u8>) -> usize {
        out.clear();
        out.resize(READ_REPLY_HEADER_BYTES, 0);
        // Topics are at most 255 bytes (str8 on the wire).
        out.push(self.topic.len() as u8);
        out.extend_from_slice(self.topic);
        out.len()
    }

    /// Completes a reply begun with `start_reply`.
    pub fn finish_reply(&self, out: &mut [u8], status: ReadStatus, oldest: u64) {
        let header = ReadReply {
            conn: self.conn,
            generation: self.generation,
            from: self.from,
            status,
            oldest,
        };
        out[..READ_REPLY_HEADER_BYTES].copy_from_slice(&header.encode());
    }

    /// The header as encoded, then the topic (the record's remaining bytes).
    pub fn decode(body: &'a [u8]) -> ReadRequest<'a> {
        assert!(
            body.len() > READ_REQUEST_HEADER_BYTES,
            "a shard sent a short read"
        );
        ReadRequest {
            conn: be_u32(&body[0..]),
            generation: be_u32(&body[4..]),
            epoch: be_u64(&body[8..]),
            from: be_u64(&body[16..]),
            to: be_u64(&body[24..]),
            bytes_max: be_u32(&body[32..]),
            topic: &body[READ_REQUEST_HEADER_BYTES..],
        }
    }
}

impl ReadReply {
    fn encode(&self) -> [u8; READ_REPLY_HEADER_BYTES] {
        let mut out = [0u8; READ_REPLY_HEADER_BYTES];
        out[0..4].copy_from_slice(&self.conn.to_be_bytes());
        out[4..8].copy_from_slice(&self.generation.to_be_bytes());
        out[8..16].copy_from_slice(&self.from.to_be_bytes());
        out[16] = self.status as u8;
        out[17..25].copy_from_slice(&self.oldest.to_be_bytes());
        out
    }

    /// The header, the topic and the frames.
    fn decode(body: &[u8]) -> (ReadReply, &[u8], &[u8]) {
        assert!(body.len() >= READ_REPLY_HEADER_BYTES, "a short read reply");
        let status = match body[16] {
            0 => ReadStatus::Found,
            1 => ReadStatus::Gone,
            2 => ReadStatus::NotYet,
            3 => ReadStatus::Failed,
            other => panic!("unknown read status {other}"),
        };
        let reply = ReadReply {
            conn: be_u32(&body[0..]),
            generation: be_u32(&body[4..]),
            from: be_u64(&body[8..]),
            status,
            oldest: be_u64(&body[17..]),
        };
        let rest = &body[READ_REPLY_HEADER_BYTES..];
        let topic_len = rest[0] as usize;
        (reply, &rest[1..1 + topic_len], &rest[1 + topic_len..])
    }
}

/// A notice from the writer, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice<'a> {
    Durable {
        through: u64,
    },
    Failed {
        through: u64,
        message: &'a [u8],
    },
    Floor {
        oldest: u64,
        epoch: u64,
        topic: &'a [u8],
    },
    Paths {
        through: u64,
    },
}

impl<'a> Notice<'a> {
    pub fn decode(kind: u8, body: &'a [u8]) -> Notice<'a> {
        let through = be_u64(body);
        match kind {
            DURABLE => Notice::Durable { through },
            FAILED => Notice::Failed {
                through,
                message: &body[8..],
            },
            FLOOR => Notice::Floor {
                oldest: through,
                epoch: be_u64(&body[8..]),
                topic: &body[16..],
            },
            PATHS => Notice::Paths { through },
            other => panic!("unknown storage notice kind {other}"),
        }
    }
}

/// A topic found on disk at start-up, as every shard must know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredTopic {
    pub name: Box<[u8]>,
    pub epoch: u64,
    /// Newest stored sequence.
    pub last_seq: u64,
    /// Oldest stored sequence (the retention floor); 0 when none is stored.
    pub oldest_seq: u64,
}

/// One shard's ends of its channels to the storage threads.
pub struct StorageLink {
    pub durability: Durability,
    /// Bytes of sequenced events a shard may hold while they wait for their
    /// WAL sync (and the appends channel's capacity).
    pub pending_bytes_max: usize,
    pub append_tx: spsc::Sender,
    pub notice_rx: spsc::Receiver,
    pub read_tx: spsc::Sender,
    pub reply_rx: spsc::Receiver,
    pub writer_ring_fd: RawFd,
    pub reader_ring_fd: RawFd,
}

/// Capacity of a shard's read-reply channel: room for a few replies.
pub const REPLY_CHANNEL_BYTES: usize = 4 << 20;
/// Capacity of a shard's notice and read-request channels (small records).
pub const SMALL_CHANNEL_BYTES: usize = 256 << 10;
/// Most frame bytes one read reply carries.
pub const READ_REPLY_BYTES_MAX: usize = 1 << 20;

/// Builds both ends of every shard's storage channels; `append_bytes` is the
/// capacity of each shard's append channel (it bounds events awaiting disk).
pub fn links(
    shards: usize,
    durability: Durability,
    append_bytes: usize,
    shard_ring_fds: &[RawFd],
    writer_ring_fd: RawFd,
    reader_ring_fd: RawFd,
) -> (Vec<StorageLink>, Vec<WriterPort>, Vec<ReaderPort>) {
    assert_eq!(shard_ring_fds.len(), shards);
    let mut links = Vec::with_capacity(shards);
    let mut writer_ports = Vec::with_capacity(shards);
    let mut reader_ports = Vec::with_capacity(shards);
    for &ring_fd in shard_ring_fds {
        let (append_tx, append_rx) = spsc::channel(append_bytes);
        let (notice_tx, notice_rx) = spsc::channel(SMALL_CHANNEL_BYTES);
        let (read_tx, read_rx) = spsc::channel(SMALL_CHANNEL_BYTES);
        let (reply_tx, reply_rx) = spsc::channel(REPLY_CHANNEL_BYTES);
        let link = StorageLink {
            durability,
            pending_bytes_max: append_bytes,
            append_tx,
            notice_rx,
            read_tx,
            reply_rx,
            writer_ring_fd,
            reader_ring_fd,
        };
        links.push(link);
        writer_ports.push(WriterPort {
            append_rx,
            notice_tx,
            ring_fd,
        });
        reader_ports.push(ReaderPort {
            read_rx,
            reply_tx,
            ring_fd,
        });
    }
    (links, writer_ports, reader_ports)
}
