//! The shard's ends of the storage channels: records out to the writer
//! and the reader, notices (durable, failed, positions written) and read
//! replies in, and the state of a failed write until the writer recovers.

use super::*;

pub(super) struct StoragePorts {
    durability: Durability,
    /// Bytes of sequenced events the shard may hold while they wait for
    /// their WAL sync.
    pending_bytes_max: usize,
    writer: Channel,
    reader: Channel,
    notices: spsc::Receiver,
    replies: spsc::Receiver,
    /// A read reply, copied out of its channel so the shard may act on it.
    reply_scratch: Vec<u8>,
    /// A write failed: publishes are refused until RESUME reaches the writer.
    resume_owed: bool,
    /// An async write failed and the writer retries it: publishes are
    /// refused until the next DURABLE notice.
    stalled: bool,
}

impl StoragePorts {
    pub(super) fn new(link: StorageLink, shard_id: usize) -> StoragePorts {
        StoragePorts {
            durability: link.durability,
            pending_bytes_max: link.pending_bytes_max,
            writer: Channel::new(link.append_tx, link.writer_ring_fd, shard_id),
            reader: Channel::new(link.read_tx, link.reader_ring_fd, shard_id),
            notices: link.notice_rx,
            replies: link.reply_rx,
            reply_scratch: Vec::new(),
            resume_owed: false,
            stalled: false,
        }
    }

    pub(super) fn durability(&self) -> Durability {
        self.durability
    }

    pub(super) fn pending_bytes_max(&self) -> usize {
        self.pending_bytes_max
    }

    /// Whether a write failed and the writer has not recovered yet: stored
    /// topics take no publishes or closes meanwhile.
    pub(super) fn failing(&self) -> bool {
        self.resume_owed || self.stalled
    }

    pub(super) fn writer_has_room(&self, len: usize) -> bool {
        self.writer.has_room(len)
    }

    /// Hands a record to the writer; false when its channel is full.
    pub(super) fn to_writer(&self, outbox: &mut Outbox, record: &ToWriter<'_>) -> bool {
        record.push_with(|kind, parts| self.writer.push(outbox, kind, parts))
    }

    /// Hands a request to the reader; false when its channel is full.
    pub(super) fn to_reader(&self, outbox: &mut Outbox, record: &ToReader<'_>) -> bool {
        record.push_with(|kind, parts| self.reader.push(outbox, kind, parts))
    }
}

/// Bytes of history read from disk that one turn hands to subscribers; the
/// rest waits for the next turn, after live events have gone out.
const DISK_REPLY_BYTES_PER_TURN: usize = 256 << 10;

impl Core {
    /// In sync durability the writer failed every append after
    /// `durable_through`: those events are answered with an error, their
    /// sequences are given out again, and the writer is told to start anew.
    /// In async the writer retries (subscribers have the events already);
    /// publishes are refused until it succeeds.
    fn storage_failed(&mut self, message: &str) {
        self.stats.storage_failures += 1;
        crate::debug!("shard {}: storing events failed: {message}", self.id);
        self.refuse_waiting_path_reads();
        let ports = self.storage.as_mut().expect("failures come from storage");
        if ports.durability == Durability::Async {
            ports.stalled = true;
            return;
        }
        ports.resume_owed = true;
        self.fail_undurable_appends();
        self.send_resume();
    }

    fn send_resume(&mut self) {
        let Some(ports) = &mut self.storage else {
            return;
        };
        if ports.resume_owed && ports.to_writer(&mut self.outbox, &ToWriter::Resume) {
            ports.resume_owed = false;
        }
    }

    /// Notices from the writer and history from the reader.
    pub(super) fn drain_storage(&mut self) {
        let Some(ports) = &self.storage else { return };
        ports.notices.clear_doorbell();
        loop {
            let Some(ports) = &mut self.storage else {
                return;
            };
            let Some((kind, body)) = ports.notices.peek() else {
                break;
            };
            let (mut durable_through, mut positions_written) = (None, None);
            let failure = match Notice::decode(kind, body) {
                Notice::Durable { through } => {
                    ports.stalled = false;
                    durable_through = Some(through);
                    None
                }
                Notice::Paths { through } => {
                    positions_written = Some(through);
                    None
                }
                Notice::Failed { message, .. } => {
                    Some(String::from_utf8_lossy(message).into_owned())
                }
                Notice::Floor {
                    oldest,
                    epoch,
                    topic,
                } => {
                    // Not for a later history of the same name.
                    if let Some(t) = self.topics.find(topic) {
                        let topic = self.topics.get_mut(t);
                        if topic.epoch == epoch {
                            topic.stored_oldest_seq = topic.stored_oldest_seq.max(oldest);
                        }
                    }
                    None
                }
            };
            ports.notices.pop();
            if let Some(through) = durable_through {
                self.on_durable(through);
            }
            if let Some(through) = positions_written {
                self.on_positions_written(through);
            }
            if let Some(message) = failure {
                self.storage_failed(&message);
            }
        }
        self.send_resume();
        // History from disk is taken in slices per turn, so a resume storm
        // never holds up the turn that carries live events.
        let mut reply_bytes = 0;
        let mut first = true;
        while let Some(ports) = &mut self.storage {
            if first {
                ports.replies.clear_doorbell();
                first = false;
            }
            let Some((kind, body)) = ports.replies.peek() else {
                break;
            };
            if reply_bytes >= DISK_REPLY_BYTES_PER_TURN {
                self.work_left = true;
                break;
            }
            reply_bytes += body.len();
            let mut scratch = std::mem::take(&mut ports.reply_scratch);
            scratch.clear();
            scratch.extend_from_slice(body);
            ports.replies.pop();
            match FromReader::decode(kind, &scratch) {
                FromReader::Events {
                    reply,
                    topic,
                    frames,
                } => self.on_read_reply(&reply, topic, frames),
                FromReader::PathFrames {
                    conn,
                    generation,
                    frames,
                } => {
                    let asker = ConnId {
                        index: conn,
                        generation,
                    };
                    self.on_path_frames(asker, frames);
                }
            }
            if let Some(ports) = &mut self.storage {
                ports.reply_scratch = scratch;
            }
        }
    }
}
