//! Topics as subscribers see them: subscribe and unsubscribe, delivery of
//! each event to the local subscribers, refills from history or disk for
//! those catching up, and a topic's end. Owns each connection's list of
//! subscriptions (`Subscriptions`); the topics own their subscriber lists.

use super::*;

/// How long a subscriber whose history is not yet on disk (or whose read
/// failed) waits before asking again.
const DISK_RETRY_MS: u64 = 50;

/// One of a connection's subscriptions: which topic, and where the
/// connection sits in that topic's subscriber list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SubRef {
    topic: u32,
    position: u32,
}

#[derive(Default)]
struct SlotSubscriptions {
    subs: Vec<SubRef>,
    /// Subscriptions being fed from history.
    catching_up: u16,
}

/// The subscriptions of every connection slot, and the connections waiting
/// to be fed from disk again. A slot's list is allocated when first used
/// and kept for the slot's next connection.
pub(super) struct Subscriptions {
    by_slot: Vec<SlotSubscriptions>,
    /// Subscriptions held by this shard's connections.
    total: u64,
    /// Connections to feed from disk again at `disk_retry_at_ms`.
    disk_retry: Vec<u32>,
    disk_retry_at_ms: u64,
}

impl Subscriptions {
    pub(super) fn new(slots: usize) -> Subscriptions {
        Subscriptions {
            by_slot: (0..slots).map(|_| SlotSubscriptions::default()).collect(),
            total: 0,
            disk_retry: Vec::new(),
            disk_retry_at_ms: 0,
        }
    }

    pub(super) fn total(&self) -> u64 {
        self.total
    }

    /// Whether some subscription of the connection in `index` is fed from
    /// history.
    pub(super) fn catching_up(&self, index: u32) -> bool {
        self.by_slot[index as usize].catching_up > 0
    }

    pub(super) fn none(&self, index: u32) -> bool {
        self.by_slot[index as usize].subs.is_empty()
    }
}

impl Core {
    pub(super) fn subscribe(&mut self, index: u32, s: Subscribe<'_>) {
        if !self.allowed(index, |g| g.may_subscribe(s.topic)) {
            let refused = Frame::Subscribed(Subscribed {
                status: SubscribeStatus::NotAuthorized,
                epoch: 0,
                oldest_seq: 0,
                last_seq: 0,
                topic: s.topic,
            });
            self.queue_control(index, &refused);
            return;
        }
        if let Some(existing) = self.topics.find(s.topic) {
            // A repeated SUBSCRIBE restarts the subscription from its position.
            self.unsubscribe(index, existing);
        }
        if self.subscriptions.by_slot[index as usize].subs.len() >= self.subscriptions_max {
            let message = format!(
                "at most {} subscriptions per connection",
                self.subscriptions_max
            );
            self.error_close(index, ErrorCode::TooManySubscriptions, &message);
            return;
        }
        let Some(t) = self.topics.find_or_create(s.topic, Purpose::Subscribe) else {
            self.error_close(index, ErrorCode::Overloaded, "the topic table is full");
            return;
        };
        let topic = self.topics.get(t);
        let oldest = topic.oldest_retained_seq();
        let (status, start) = match s.mode {
            StartMode::Live => (SubscribeStatus::Ok, topic.last_seq + 1),
            StartMode::Resume if s.epoch != 0 && s.epoch != topic.epoch => {
                (SubscribeStatus::EpochChanged, oldest)
            }
            StartMode::Resume if s.last_seq.saturating_add(1) < oldest => {
                (SubscribeStatus::NotRecovered, oldest)
            }
            StartMode::Resume => (SubscribeStatus::Ok, s.last_seq.saturating_add(1)),
        };
        let subscribed = Frame::Subscribed(Subscribed {
            status,
            epoch: topic.epoch,
            oldest_seq: if oldest > topic.last_seq { 0 } else { oldest },
            last_seq: topic.last_seq,
            topic: s.topic,
        });
        let catching_up = start <= topic.last_seq;
        if !self.queue_control(index, &subscribed) {
            return;
        }
        let topic = self.topics.get_mut(t);
        let position = topic.subscribers.len() as u32;
        topic.subscribers.push(Subscriber {
            conn: index,
            next_seq: start,
            catching_up,
            reading: false,
        });
        let slot = &mut self.subscriptions.by_slot[index as usize];
        slot.subs.push(SubRef { topic: t, position });
        self.subscriptions.total += 1;
        if catching_up {
            slot.catching_up += 1;
            self.stats.catch_ups += 1;
            self.refill(index);
        }
    }

    pub(super) fn unsubscribe(&mut self, index: u32, t: u32) {
        let slot = &mut self.subscriptions.by_slot[index as usize];
        let Some(i) = slot.subs.iter().position(|s| s.topic == t) else {
            return;
        };
        let sub_ref = slot.subs.swap_remove(i);
        self.subscriptions.total -= 1;
        let topic = self.topics.get_mut(t);
        let removed = topic.subscribers.swap_remove(sub_ref.position as usize);
        debug_assert_eq!(removed.conn, index);
        if removed.catching_up {
            slot.catching_up -= 1;
        }
        // The subscriber moved into the hole must learn its new position.
        if let Some(moved) = topic.subscribers.get(sub_ref.position as usize) {
            let owner = &mut self.subscriptions.by_slot[moved.conn as usize];
            let entry = owner
                .subs
                .iter_mut()
                .find(|s| s.topic == t)
                .expect("a subscriber's connection lists the subscription");
            entry.position = sub_ref.position;
        }
        self.topics.remove_if_unused(t);
    }

    pub(super) fn unsubscribe_all(&mut self, index: u32) {
        while let Some(sub) = self.subscriptions.by_slot[index as usize]
            .subs
            .last()
            .copied()
        {
            self.unsubscribe(index, sub.topic);
        }
    }

    /// Feeds catching-up subscriptions from history while the queue has room.
    pub(super) fn refill(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        let slot = &mut self.subscriptions.by_slot[index as usize];
        let mut gap = false;
        let mut queued_any = false;
        let mut retry_disk = false;
        for i in 0..slot.subs.len() {
            let sub_ref = slot.subs[i];
            let topic = self.topics.get_mut(sub_ref.topic);
            let position = sub_ref.position as usize;
            if !topic.subscribers[position].catching_up {
                continue;
            }
            let mut next_seq = topic.subscribers[position].next_seq;
            let mut caught_up = false;
            loop {
                if next_seq > topic.last_seq {
                    caught_up = true;
                    break;
                }
                let Some(frame) = topic.history_frame(next_seq) else {
                    if !topic.on_disk_only(next_seq) {
                        gap = true;
                    } else if !topic.subscribers[position].reading {
                        // Ask for what fits in the queue now; the reply
                        // continues this loop (`on_read_reply`).
                        let room = self.queue_bytes_max.saturating_sub(conn.queued_bytes());
                        let request = ReadRequest {
                            conn: index,
                            generation: self.generations[index as usize],
                            epoch: topic.epoch,
                            from: next_seq,
                            to: topic.oldest_seq() - 1,
                            bytes_max: room.min(u32::MAX as usize) as u32,
                            topic: &topic.name,
                        };
                        let ports = self
                            .storage
                            .as_ref()
                            .expect("only stored topics are on disk");
                        if room < self.queue_bytes_max / 4 {
                            // Wait for the socket to drain: the next send's
                            // completion refills.
                        } else if ports.to_reader(&mut self.outbox, &ToReader::Read(request)) {
                            topic.subscribers[position].reading = true;
                            self.stats.disk_reads += 1;
                        } else {
                            retry_disk = true;
                        }
                    }
                    break;
                };
                let len = self.arena.len(frame);
                if !conn.has_room(len, self.queue_bytes_max) {
                    break;
                }
                self.arena.retain(frame);
                conn.push(frame, len);
                next_seq += 1;
                queued_any = true;
            }
            let sub = &mut topic.subscribers[position];
            sub.next_seq = next_seq;
            if caught_up {
                sub.catching_up = false;
                slot.catching_up -= 1;
            }
            if gap {
                break;
            }
        }
        if queued_any {
            self.mark_dirty(index);
        }
        if retry_disk {
            self.retry_from_disk(index);
        }
        if gap {
            // History moved past what this subscriber still needs.
            self.stats.slow_consumer_goaways += 1;
            self.goaway_resume(index, GoAwayReason::SlowConsumer, 0);
        }
    }

    /// Ends a closed topic on this shard: every subscriber is told (the
    /// TOPIC_CLOSED notice, request_id 0) and loses the subscription, and
    /// the topic and its history go. The next event of the name starts anew.
    pub(super) fn end_topic(&mut self, name: &[u8], last_seq: u64) {
        let Some(t) = self.topics.find(name) else {
            return;
        };
        let subscribers: Vec<u32> = self
            .topics
            .get(t)
            .subscribers
            .iter()
            .map(|s| s.conn)
            .collect();
        for &conn in &subscribers {
            self.unsubscribe(conn, t);
        }
        // A topic without events went with its last subscriber.
        if self.topics.find(name) == Some(t) {
            self.topics.remove(t, &mut self.arena);
        }
        let notice = Frame::TopicClosed(TopicClosed {
            request_id: 0,
            status: 0,
            last_seq,
            topic: name,
        });
        for conn in subscribers {
            self.queue_control(conn, &notice);
        }
    }

    /// Queues the events a disk read found for a catching-up subscriber, if
    /// it is still the one that asked and still where it was.
    pub(super) fn on_read_reply(&mut self, reply: &ReadReply, topic_name: &[u8], frames: &[u8]) {
        let mut frames = frames;
        let index = reply.conn;
        let alive = self.is_open(ConnId {
            index,
            generation: reply.generation,
        });
        let Some(t) = self.topics.find(topic_name).filter(|_| alive) else {
            return;
        };
        let slot = &self.subscriptions.by_slot[index as usize];
        let Some(sub_ref) = slot.subs.iter().find(|s| s.topic == t).copied() else {
            return;
        };
        let topic = self.topics.get_mut(t);
        let sub = &mut topic.subscribers[sub_ref.position as usize];
        if !sub.catching_up || !sub.reading || sub.next_seq != reply.from {
            return;
        }
        sub.reading = false;
        match reply.status {
            ReadStatus::Found => {
                let mut queued = false;
                while let Ok(Some((Frame::Event(event), used))) = decode(frames, &self.limits) {
                    let conn = &mut self.conns[index as usize];
                    let sub = &mut self.topics.get_mut(t).subscribers[sub_ref.position as usize];
                    assert_eq!(
                        event.seq, sub.next_seq,
                        "the reader returns events in order"
                    );
                    if !conn.has_room(used, self.queue_bytes_max) {
                        break;
                    }
                    let Some(frame) = self.arena.alloc(used, Use::Event) else {
                        break;
                    };
                    self.arena.bytes_mut(frame).copy_from_slice(&frames[..used]);
                    let conn = &mut self.conns[index as usize];
                    conn.push(frame, used);
                    self.topics.get_mut(t).subscribers[sub_ref.position as usize].next_seq += 1;
                    self.stats.disk_deliveries += 1;
                    frames = &frames[used..];
                    queued = true;
                }
                if queued {
                    self.mark_dirty(index);
                    self.refill(index);
                }
                // Nothing fitted: the next send's completion refills.
            }
            ReadStatus::Gone => {
                // Nothing before `oldest` can be replayed without a gap any
                // more: the subscriber is told (GOAWAY, then NotRecovered).
                let topic = self.topics.get_mut(t);
                topic.stored_oldest_seq = topic.stored_oldest_seq.max(reply.oldest);
                self.refill(index);
            }
            ReadStatus::NotYet | ReadStatus::Failed => self.retry_from_disk(index),
        }
    }

    /// Feeds the subscribers waiting for the disk again, once their pause
    /// is over.
    pub(super) fn retry_disk_reads(&mut self) {
        let waiting = &mut self.subscriptions;
        if !waiting.disk_retry.is_empty() && self.now_ms >= waiting.disk_retry_at_ms {
            for index in std::mem::take(&mut waiting.disk_retry) {
                // The slot may hold another connection by now; refill only
                // touches subscriptions that are catching up.
                let open = self
                    .conns
                    .get(index as usize)
                    .is_some_and(|c| c.state == ConnState::Open)
                    && self.subscriptions.catching_up(index);
                if open {
                    self.refill(index);
                }
            }
        }
    }

    /// Refills the connection from disk again shortly (the writer is
    /// behind, a read failed, or the reader's channel was full).
    fn retry_from_disk(&mut self, index: u32) {
        let waiting = &mut self.subscriptions;
        if waiting.disk_retry.is_empty() {
            waiting.disk_retry_at_ms = self.now_ms + DISK_RETRY_MS;
        }
        waiting.disk_retry.push(index);
    }

    /// The metrics class of topic `t`, looked up once per topic.
    fn topic_class(&mut self, t: u32) -> u8 {
        let topic = self.topics.get_mut(t);
        if topic.class == UNCLASSIFIED {
            topic.class = self.recorder.class_of(&topic.name);
        }
        topic.class
    }

    /// Counts an event this shard sequenced and fans out.
    pub(super) fn count_published(&mut self, t: u32) {
        self.stats.published += 1;
        let class = self.topic_class(t);
        self.recorder.event_in(class);
    }

    /// Fans event `seq` of topic `t` out to the local subscribers and keeps it
    /// in history (which takes over the caller's reference).
    pub(super) fn deliver(&mut self, t: u32, seq: u64, frame: FrameRef) {
        let len = self.arena.len(frame);
        let class = self.topic_class(t);
        let mut delivered = 0;
        let topic = self.topics.get_mut(t);
        for sub in topic.subscribers.iter_mut() {
            if sub.catching_up || seq < sub.next_seq {
                continue;
            }
            let conn = &mut self.conns[sub.conn as usize];
            if !conn.has_room(len, self.queue_bytes_max) {
                // Full queue: this subscriber is fed from history as its
                // socket drains; nobody else waits for it.
                sub.catching_up = true;
                self.subscriptions.by_slot[sub.conn as usize].catching_up += 1;
                self.stats.catch_ups += 1;
                continue;
            }
            self.arena.retain(frame);
            conn.push(frame, len);
            sub.next_seq = seq + 1;
            delivered += 1;
            if !conn.dirty && !conn.send_in_flight {
                conn.dirty = true;
                self.dirty.push(sub.conn);
            }
        }
        self.stats.deliveries += delivered;
        self.recorder.events_out(class, delivered);
        self.topics.append(t, seq, frame, &mut self.arena);
        let topic = self.topics.get_mut(t);
        if self.storage.is_some() && topic.stored_oldest_seq == 0 {
            topic.stored_oldest_seq = seq;
        }
    }

    /// Each subscription of the connection in `index`: its topic and the
    /// next sequence it is owed.
    pub(super) fn subscribed(&self, index: u32) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.subscriptions.by_slot[index as usize]
            .subs
            .iter()
            .map(|s| {
                (
                    s.topic,
                    self.topics.get(s.topic).subscribers[s.position as usize].next_seq,
                )
            })
    }
}
