//! The channels between shards: events fanned out by their owner,
//! forwarded requests and their answers, and topic closes.

use super::*;

/// Channel records handled per peer per turn, so one busy peer cannot starve
/// the ring.
const MESH_RECORDS_PER_TURN: usize = 4096;

impl Core {
    pub(super) fn ring_doorbell(&mut self, peer: usize) {
        let tx = self.mesh_tx[peer]
            .as_ref()
            .expect("a channel to every peer");
        if tx.ring_doorbell() {
            self.ops.push(wake_op(self.peer_ring_fds[peer], self.id));
        }
    }

    pub(super) fn drain_mesh(&mut self) {
        self.mesh_backlog = false;
        let receivers = std::mem::take(&mut self.mesh_rx);
        for (peer, rx) in receivers.iter().enumerate() {
            let Some(rx) = rx else { continue };
            rx.clear_doorbell();
            let mut handled = 0;
            while let Some((kind, body)) = rx.peek() {
                if handled == MESH_RECORDS_PER_TURN {
                    self.mesh_backlog = true;
                    break;
                }
                let done = match kind {
                    RECORD_EVENT => self.on_peer_event(body),
                    RECORD_REQUEST => self.on_forwarded(peer, body),
                    RECORD_ANSWER => self.on_peer_answer(body),
                    RECORD_CLOSED => {
                        let (last_seq, name) = body.split_at(8);
                        let last_seq = u64::from_be_bytes(last_seq.try_into().expect("8 bytes"));
                        self.end_topic(name, last_seq);
                        true
                    }
                    other => panic!("unknown channel record kind {other}"),
                };
                if !done {
                    // No memory or no room to answer: keep the record and
                    // push back on the peer until a later turn.
                    self.mesh_backlog = true;
                    break;
                }
                rx.pop();
                handled += 1;
            }
        }
        self.mesh_rx = receivers;
    }

    fn on_peer_event(&mut self, body: &[u8]) -> bool {
        let Ok(Some((Frame::Event(event), _))) = decode(body, &self.limits) else {
            panic!("a peer shard sent a malformed event");
        };
        let t = self
            .topics
            .find_or_create(event.topic, Purpose::Event)
            .expect("events always find room");
        let Some(frame) = self.alloc(body.len(), Use::Event) else {
            return false;
        };
        let topic = self.topics.get_mut(t);
        if topic.last_seq == 0 {
            // The first event names the epoch its owner chose for this history.
            topic.epoch = event.epoch;
        }
        self.arena.bytes_mut(frame).copy_from_slice(body);
        self.stats.events_from_peers += 1;
        self.deliver(t, event.seq, frame);
        true
    }

    /// A request a peer passed on to this shard, the topic's owner. It waits
    /// in the channel (false) until the peer's channel has room for the
    /// answer, so the answer always has room.
    fn on_forwarded(&mut self, peer: usize, body: &[u8]) -> bool {
        let (origin, raw) = body.split_at(ORIGIN_BYTES);
        let Ok(Some((frame, _))) = decode(raw, &self.limits) else {
            panic!("a peer shard forwarded a malformed request");
        };
        let (request_id, answer_bytes) = match &frame {
            Frame::Publish(p) => (p.request_id, ACK_RECORD_BYTES),
            Frame::TopicClose(c) => (
                c.request_id,
                ORIGIN_BYTES + TOPIC_CLOSED_BYTES + c.topic.len(),
            ),
            other => panic!("a peer shard forwarded {:?}", other.frame_type()),
        };
        let tx = self.mesh_tx[peer]
            .as_ref()
            .expect("a channel to every peer");
        if !tx.has_room(answer_bytes) {
            return false;
        }
        let ack = AckTo::Peer {
            peer,
            origin: origin.try_into().expect("origin bytes"),
            request_id,
        };
        match frame {
            Frame::Publish(p) => self.sequence(p.topic, p.payload, ack),
            Frame::TopicClose(c) => self.order_close(c.topic, ack),
            _ => unreachable!("matched above"),
        }
        true
    }

    /// The owner's answer to a request this shard forwarded.
    fn on_peer_answer(&mut self, body: &[u8]) -> bool {
        let (origin, ack) = body.split_at(ORIGIN_BYTES);
        let index = u32::from_be_bytes(origin[..4].try_into().expect("4 bytes"));
        let generation = u32::from_be_bytes(origin[4..].try_into().expect("4 bytes"));
        let alive = self.conns.contains(index as usize)
            && self.generations[index as usize] == generation
            && self.conns[index as usize].state == ConnState::Open;
        if !alive {
            return true; // the requester left; its answer has nobody to go to
        }
        let Some(frame) = self.alloc(ack.len(), Use::Control) else {
            return false;
        };
        self.arena.bytes_mut(frame).copy_from_slice(ack);
        self.conns[index as usize].push(frame, ack.len());
        self.mark_dirty(index);
        true
    }
}
