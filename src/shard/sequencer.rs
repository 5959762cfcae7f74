//! Publishes and topic closes: forwarded to the topic's owner, sequenced
//! there, held until durable in sync durability, and acknowledged. The
//! owner's sequencing step (`sequence`, `order_close`) is where a
//! replicated log's apply step will come in.

use super::*;

/// The longest answer: TOPIC_CLOSED with the longest topic.
const ANSWER_BYTES_MAX: usize = TopicClosed::ENCODED_BYTES_BEFORE_TOPIC + TOPIC_BYTES_HARD_MAX;

/// An event sequenced here, or a close ordered here, waiting for the WAL
/// sync that makes it durable (`sync` durability) before anyone sees it.
struct Pending {
    /// Its number among this shard's appends.
    append: u64,
    topic: u32,
    ack: AckTo,
    /// The write failed: answer with an error, change nothing.
    failed: bool,
    what: Awaiting,
}

enum Awaiting {
    /// Delivered to subscribers and acknowledged once durable.
    Event {
        seq: u64,
        epoch: u64,
        frame: FrameRef,
    },
    /// The topic ends everywhere once its deletion is durable. Its name is
    /// kept for the answer: after a failure the topic may go before that.
    Close { name: Box<[u8]> },
}

/// This shard's appends to the writer (events and closes, counted from 1
/// as the writer counts them), how far they are durable, and what waits for
/// that.
#[derive(Default)]
pub(super) struct Appends {
    pushed: u64,
    durable_through: u64,
    /// Events and closes waiting for durability, in append order, and the
    /// events' bytes.
    pending: VecDeque<Pending>,
    pending_bytes: usize,
}

impl Core {
    pub(super) fn publish(&mut self, index: u32, p: Publish<'_>, raw: &[u8]) {
        let refusal = if !self.allowed(index, |g| g.may_publish(p.topic)) {
            Some(ErrorCode::NotAuthorized)
        } else if !self.conns[index as usize]
            .publishes
            .take(self.publish_rate, self.now_ms)
        {
            self.stats.publishes_rate_limited += 1;
            Some(ErrorCode::Overloaded)
        } else {
            None
        };
        if let Some(code) = refusal {
            let ack = self.ack_frame(p.request_id, Err(code), false);
            self.queue_control(index, &ack);
            return;
        }
        let owner = topic_owner(p.topic, self.shards);
        if owner == self.id {
            let ack = AckTo::Local {
                conn: self.conn_id(index),
                request_id: p.request_id,
            };
            self.sequence(p.topic, p.payload, ack);
            return;
        }
        if !self.forward(owner, index, raw) {
            let ack = self.ack_frame(p.request_id, Err(ErrorCode::Overloaded), false);
            self.queue_control(index, &ack);
        }
    }

    /// Passes a client's request to the topic's owner; false (counted as
    /// overload) when the owner's channel is full.
    fn forward(&mut self, owner: usize, index: u32, raw: &[u8]) -> bool {
        let origin = self.conn_id(index);
        let request = MeshRecord::Request { origin, frame: raw };
        if !self.push_to_peer(owner, &request) {
            self.stats.overloaded += 1;
            return false;
        }
        true
    }

    fn ack_frame(
        &self,
        request_id: u32,
        result: Result<(u64, u64), ErrorCode>,
        durable: bool,
    ) -> Frame<'static> {
        let (status, epoch, seq) = match result {
            Ok((epoch, seq)) => (0, epoch, seq),
            Err(code) => (code as u16, 0, 0),
        };
        Frame::PublishAck(PublishAck {
            request_id,
            status,
            flags: if durable { ACK_FLAG_DURABLE } else { 0 },
            epoch,
            seq,
        })
    }

    /// Answers a publish; false (nothing sent) when the peer's channel has no
    /// room for the ack now.
    fn answer_publish(
        &mut self,
        to: AckTo,
        result: Result<(u64, u64), ErrorCode>,
        durable: bool,
    ) -> bool {
        let ack = self.ack_frame(to.request_id(), result, durable);
        self.answer(to, &ack)
    }

    /// Answers a TOPIC_CLOSE; false as for `answer_publish`.
    fn answer_close(&mut self, to: AckTo, topic: &[u8], result: Result<u64, ErrorCode>) -> bool {
        let (status, last_seq) = match result {
            Ok(last_seq) => (0, last_seq),
            Err(code) => (code as u16, 0),
        };
        let closed = Frame::TopicClosed(TopicClosed {
            request_id: to.request_id(),
            status,
            last_seq,
            topic,
        });
        self.answer(to, &closed)
    }

    /// Sends an answer to its requester: queued on the local connection
    /// (if still there), or handed back over the origin shard's channel.
    fn answer(&mut self, to: AckTo, frame: &Frame<'_>) -> bool {
        match to {
            AckTo::Local { conn, .. } => {
                if self.is_open(conn) {
                    self.queue_control(conn.index, frame);
                }
                true
            }
            AckTo::Peer { peer, origin, .. } => {
                let mut bytes = [0u8; ANSWER_BYTES_MAX];
                let len = frame.encoded_len();
                frame.encode_to_slice(&mut bytes[..len]);
                let answer = MeshRecord::Answer {
                    origin,
                    frame: &bytes[..len],
                };
                self.push_to_peer(peer, &answer)
            }
        }
    }

    /// Sequences a publish for a topic this shard owns and answers it: at
    /// once, or (`sync` durability) once the WAL sync covering it is done.
    /// A peer's ack always has room here (see `on_forwarded`).
    pub(super) fn sequence(&mut self, name: &[u8], payload: &[u8], ack: AckTo) {
        let result = self.try_sequence(name, payload, ack);
        if let Some(result) = result {
            let answered = self.answer_publish(ack, result, false);
            assert!(answered, "room for the ack was checked");
        }
    }

    /// The answer to give now, or None when the event waits for durability.
    fn try_sequence(
        &mut self,
        name: &[u8],
        payload: &[u8],
        ack: AckTo,
    ) -> Option<Result<(u64, u64), ErrorCode>> {
        let t = self.topics.find_or_create(name, Purpose::Event);
        let Some(t) = t.filter(|&t| self.topics.claim_sequencing(t)) else {
            // Past this shard's share of --topics-max: a topic made just now
            // for this publish must not linger.
            if let Some(t) = t {
                self.topics.remove_if_unused(t);
            }
            self.stats.overloaded += 1;
            return Some(Err(ErrorCode::Overloaded));
        };
        if self.storage.as_ref().is_some_and(|s| s.failing()) {
            return Some(Err(ErrorCode::StorageFailed));
        }
        if self.topics.get(t).closing {
            // Until the close is done the name has no history to add to.
            self.stats.overloaded += 1;
            return Some(Err(ErrorCode::Overloaded));
        }
        if self.topics.get(t).assigned_seq == 0 {
            // A new history: an epoch of its own, so a client holding a
            // sequence of an earlier history of this name (closed, or lost
            // with a wiped data directory) is never handed one of this.
            let epoch = self.fresh_epoch();
            self.topics.get_mut(t).epoch = epoch;
        }
        let topic = self.topics.get(t);
        let (seq, epoch) = (topic.assigned_seq + 1, topic.epoch);
        let event = Frame::Event(Event {
            seq,
            epoch,
            publish_ts_ns: self.wall_ns,
            topic: name,
            payload,
        });
        let len = event.encoded_len();
        let durability = self.storage.as_ref().map(|s| s.durability());
        let wait_for_sync = durability == Some(Durability::Sync);
        // In sync durability the events held until durable are bounded too
        // (a peer that stops draining must not make them pile up).
        let storage_has_room = self.storage.as_ref().is_none_or(|s| {
            s.writer_has_room(len)
                && (!wait_for_sync || self.appends.pending_bytes + len <= s.pending_bytes_max())
        });
        // Synced events reach the peers later, when durable.
        let answer = ack.peer().map(|peer| (peer, ACK_RECORD_BYTES));
        let room = storage_has_room && (wait_for_sync || self.peers_have_room(len, answer));
        let frame = if room {
            self.alloc(len, Use::Event)
        } else {
            None
        };
        let Some(frame) = frame else {
            self.stats.overloaded += 1;
            return Some(Err(ErrorCode::Overloaded));
        };
        event.encode_to_slice(self.arena.bytes_mut(frame));
        if let Some(ports) = &self.storage {
            let record = ToWriter::Append(self.arena.bytes(frame));
            let pushed = ports.to_writer(&mut self.outbox, &record);
            assert!(pushed, "room was checked before sequencing");
            self.appends.pushed += 1;
        }
        if wait_for_sync {
            self.appends.pending_bytes += len;
            self.topics.get_mut(t).assigned_seq = seq;
            self.hold_until_durable(t, ack, Awaiting::Event { seq, epoch, frame });
            return None;
        }
        self.send_to_peers(frame);
        self.count_published(t);
        self.deliver(t, seq, frame);
        Some(Ok((epoch, seq)))
    }

    /// A TOPIC_CLOSE from a client: carried out by the topic's owner.
    pub(super) fn close_topic(&mut self, index: u32, close: TopicClose<'_>, raw: &[u8]) {
        let owner = topic_owner(close.topic, self.shards);
        let ack = AckTo::Local {
            conn: self.conn_id(index),
            request_id: close.request_id,
        };
        // Closing a hunt is the publishers' right.
        if !self.allowed(index, |g| g.may_publish(close.topic)) {
            self.answer_close(ack, close.topic, Err(ErrorCode::NotAuthorized));
        } else if owner == self.id {
            self.order_close(close.topic, ack);
        } else if !self.forward(owner, index, raw) {
            self.answer_close(ack, close.topic, Err(ErrorCode::Overloaded));
        }
    }

    /// Closes a topic this shard owns, after every event sequenced before
    /// the request: at once, or (sync durability, history stored) once the
    /// writer's deletion is durable. The requester's answer always has room
    /// (see `on_forwarded`).
    pub(super) fn order_close(&mut self, name: &[u8], ack: AckTo) {
        let t = self.topics.find(name);
        // Whatever of its history may be on disk, or on its way there.
        let stored =
            self.storage.is_some() && t.is_some_and(|t| self.topics.get(t).assigned_seq > 0);
        let wait_for_sync =
            stored && self.storage.as_ref().map(|s| s.durability()) == Some(Durability::Sync);
        let refusal = if t.is_some_and(|t| self.topics.get(t).closing) {
            Some(ErrorCode::Overloaded)
        } else if stored && self.storage.as_ref().is_some_and(|s| s.failing()) {
            Some(ErrorCode::StorageFailed)
        } else if (!wait_for_sync && !self.close_has_room(name, ack))
            || self
                .storage
                .as_ref()
                .is_some_and(|s| stored && !s.writer_has_room(name.len()))
        {
            Some(ErrorCode::Overloaded)
        } else {
            None
        };
        if let Some(code) = refusal {
            if code == ErrorCode::Overloaded {
                self.stats.overloaded += 1;
            }
            let answered = self.answer_close(ack, name, Err(code));
            assert!(answered, "room for the answer was checked");
            return;
        }
        if stored {
            let ports = self.storage.as_ref().expect("stored");
            let pushed = ports.to_writer(&mut self.outbox, &ToWriter::Close(name));
            assert!(pushed, "room was checked");
            self.appends.pushed += 1;
        }
        if wait_for_sync {
            let t = t.expect("stored");
            self.topics.get_mut(t).closing = true;
            self.hold_until_durable(t, ack, Awaiting::Close { name: name.into() });
            return;
        }
        self.finish_close(name, ack);
    }

    /// Holds what waits for the WAL sync that covers the latest append.
    fn hold_until_durable(&mut self, topic: u32, ack: AckTo, what: Awaiting) {
        self.appends.pending.push_back(Pending {
            append: self.appends.pushed,
            topic,
            ack,
            failed: false,
            what,
        });
    }

    /// Whether every peer has room for the news of a close, and the
    /// requester's shard for the answer after it.
    fn close_has_room(&self, name: &[u8], ack: AckTo) -> bool {
        let answer_bytes = ConnId::BYTES + TopicClosed::ENCODED_BYTES_BEFORE_TOPIC + name.len();
        self.peers_have_room(8 + name.len(), ack.peer().map(|peer| (peer, answer_bytes)))
    }

    /// The owner's last step of a close (room was checked): every shard ends
    /// the topic, then the requester learns its last sequence.
    fn finish_close(&mut self, name: &[u8], ack: AckTo) {
        let last_seq = self
            .topics
            .find(name)
            .map_or(0, |t| self.topics.get(t).last_seq);
        let closed = MeshRecord::Closed {
            last_seq,
            topic: name,
        };
        let me = self.id;
        for peer in (0..self.shards).filter(|&peer| peer != me) {
            let pushed = self.push_to_peer(peer, &closed);
            assert!(pushed, "room was checked before closing");
        }
        crate::info!(
            "shard {}: topic {:?} closed after sequence {last_seq}; its history is deleted",
            self.id,
            String::from_utf8_lossy(name)
        );
        self.end_topic(name, last_seq);
        let answered = self.answer_close(ack, name, Ok(last_seq));
        assert!(answered, "room for the answer was checked");
    }

    /// Delivers the events and carries out the closes the writer has made
    /// durable, and answers their requesters, in order; stops at the first
    /// whose peer has no room.
    pub(super) fn release_pending(&mut self) {
        while let Some(front) = self.appends.pending.front() {
            let (failed, ack, t) = (front.failed, front.ack, front.topic);
            if failed {
                let answered = match front.what {
                    Awaiting::Event { .. } => {
                        self.answer_publish(ack, Err(ErrorCode::StorageFailed), false)
                    }
                    Awaiting::Close { ref name } => {
                        let name = name.clone();
                        self.answer_close(ack, &name, Err(ErrorCode::StorageFailed))
                    }
                };
                if !answered {
                    self.work_left = true;
                    return;
                }
                let pending = self.appends.pending.pop_front().expect("front exists");
                if let Awaiting::Event { frame, .. } = pending.what {
                    self.appends.pending_bytes -= self.arena.len(frame);
                    self.arena.release(frame);
                }
                continue;
            }
            if front.append > self.appends.durable_through {
                return;
            }
            match front.what {
                Awaiting::Event { seq, epoch, frame } => {
                    let len = self.arena.len(frame);
                    let answer = ack.peer().map(|peer| (peer, ACK_RECORD_BYTES));
                    if !self.peers_have_room(len, answer) {
                        self.work_left = true;
                        return;
                    }
                    self.appends.pending.pop_front();
                    self.appends.pending_bytes -= len;
                    self.send_to_peers(frame);
                    self.count_published(t);
                    self.deliver(t, seq, frame);
                    let answered = self.answer_publish(ack, Ok((epoch, seq)), true);
                    assert!(answered, "room for the ack was checked");
                }
                Awaiting::Close { ref name } => {
                    if !self.close_has_room(name, ack) {
                        self.work_left = true;
                        return;
                    }
                    let Some(Pending {
                        what: Awaiting::Close { name },
                        ..
                    }) = self.appends.pending.pop_front()
                    else {
                        unreachable!("the front is this close");
                    };
                    debug_assert!(self.topics.get(t).closing);
                    self.finish_close(&name, ack);
                }
            }
        }
    }

    /// The writer made this shard's appends durable up to `through`.
    pub(super) fn on_durable(&mut self, through: u64) {
        self.appends.durable_through = self.appends.durable_through.max(through);
    }

    /// In sync durability the writer failed every append after the last
    /// durable one: those events are answered with an error once their
    /// turn comes, and their sequences are given out again.
    pub(super) fn fail_undurable_appends(&mut self) {
        for pending in self.appends.pending.iter_mut().rev() {
            // Older entries are durable, or failed by an earlier notice
            // (and are only waiting to be answered).
            if pending.append <= self.appends.durable_through || pending.failed {
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
    }

    /// Gives the frames still held for durability back to the arena.
    pub(super) fn release_held(&mut self) {
        for pending in std::mem::take(&mut self.appends.pending) {
            if let Awaiting::Event { frame, .. } = pending.what {
                self.arena.release(frame);
            }
        }
    }
}
