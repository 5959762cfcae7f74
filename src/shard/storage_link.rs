//! The shard's end of the storage writer's channels: notices (durable,
//! failed, positions written) and read replies in, and the resume after a
//! failed write.

use super::*;

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
        // The positions of a failed batch are readable only once a later one
        // writes them: path reads waiting for them are refused, not held.
        while let Some((_, record)) = self.path_reads_waiting.pop_front() {
            self.end_path_read(&PathRequest::decode(&record), ErrorCode::StorageFailed);
        }
        if self.storage.as_ref().map(|s| s.durability) == Some(Durability::Async) {
            self.storage_stalled = true;
            return;
        }
        for pending in self.pending.iter_mut().rev() {
            // Older entries are durable, or failed by an earlier notice
            // (and are only waiting to be answered).
            if pending.append <= self.durable_through || pending.failed {
                break;
            }
            pending.failed = true;
            let topic = self.topics.get_mut(pending.topic);
            match pending.what {
                // Newest first, so each topic ends at its first failed sequence.
                Awaiting::Event { seq, .. } => topic.assigned_seq = seq - 1,
                Awaiting::Close { .. } => topic.closing = false,
            }
        }
        self.resume_owed = true;
        self.send_resume();
    }

    fn send_resume(&mut self) {
        let Some(link) = &self.storage else { return };
        if self.resume_owed
            && push_and_wake(
                &link.append_tx,
                link.writer_ring_fd,
                &mut self.ops,
                self.id,
                RESUME,
                &[],
            )
        {
            self.resume_owed = false;
        }
    }

    /// Notices from the writer and history from the reader.
    pub(super) fn drain_storage(&mut self) {
        let Some(link) = &self.storage else { return };
        link.notice_rx.clear_doorbell();
        loop {
            let Some(link) = &self.storage else { return };
            let Some((kind, body)) = link.notice_rx.peek() else {
                break;
            };
            let mut positions_written = None;
            let failure = match Notice::decode(kind, body) {
                Notice::Durable { through } => {
                    self.durable_through = self.durable_through.max(through);
                    self.storage_stalled = false;
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
            link.notice_rx.pop();
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
        while let Some(link) = &self.storage {
            if first {
                link.reply_rx.clear_doorbell();
                first = false;
            }
            let Some((kind, body)) = link.reply_rx.peek() else {
                break;
            };
            if reply_bytes >= DISK_REPLY_BYTES_PER_TURN {
                self.mesh_backlog = true;
                break;
            }
            reply_bytes += body.len();
            let mut scratch = std::mem::take(&mut self.reply_scratch);
            scratch.clear();
            scratch.extend_from_slice(body);
            link.reply_rx.pop();
            match kind {
                EVENTS => self.on_read_reply(&scratch),
                PATH_FRAMES => self.on_path_frames(&scratch),
                other => panic!("unknown storage reply kind {other}"),
            }
            self.reply_scratch = scratch;
        }
    }
}
