//! The channels between shards: events fanned out by their owner,
//! forwarded requests and their answers, and topic closes, as typed
//! records encoded and decoded here only.

use super::*;

/// Channel records handled per peer per turn, so one busy peer cannot starve
/// the ring.
const MESH_RECORDS_PER_TURN: usize = 4096;

const RECORD_EVENT: u8 = 1;
const RECORD_REQUEST: u8 = 2;
const RECORD_ANSWER: u8 = 3;
const RECORD_CLOSED: u8 = 4;

/// What one shard tells another.
pub(super) enum MeshRecord<'a> {
    /// An event its owner sequenced, as the EVENT frame subscribers get.
    Event(&'a [u8]),
    /// A client's PUBLISH or TOPIC_CLOSE (the frame), for the topic's owner.
    Request { origin: ConnId, frame: &'a [u8] },
    /// The owner's answer to a request: an encoded PUBLISH_ACK or
    /// TOPIC_CLOSED for the origin connection.
    Answer { origin: ConnId, frame: &'a [u8] },
    /// The owner closed a topic after `last_seq`.
    Closed { last_seq: u64, topic: &'a [u8] },
}

impl<'a> MeshRecord<'a> {
    /// Pushes the record onto a peer's channel, waking the peer if it
    /// sleeps; false when the channel is full.
    fn push(&self, channel: &Channel, outbox: &mut Outbox) -> bool {
        let mut push = |kind, parts: &[&[u8]]| channel.push(outbox, kind, parts);
        match *self {
            MeshRecord::Event(frame) => push(RECORD_EVENT, &[frame]),
            MeshRecord::Request { origin, frame } => {
                push(RECORD_REQUEST, &[&origin.to_bytes(), frame])
            }
            MeshRecord::Answer { origin, frame } => {
                push(RECORD_ANSWER, &[&origin.to_bytes(), frame])
            }
            MeshRecord::Closed { last_seq, topic } => {
                push(RECORD_CLOSED, &[&last_seq.to_be_bytes(), topic])
            }
        }
    }

    /// A record as a peer shard of this process pushed it.
    fn decode(kind: u8, body: &'a [u8]) -> MeshRecord<'a> {
        match kind {
            RECORD_EVENT => MeshRecord::Event(body),
            RECORD_REQUEST | RECORD_ANSWER => {
                let (origin, frame) = body.split_at(ConnId::BYTES);
                let origin = ConnId::from_bytes(origin);
                if kind == RECORD_REQUEST {
                    MeshRecord::Request { origin, frame }
                } else {
                    MeshRecord::Answer { origin, frame }
                }
            }
            RECORD_CLOSED => {
                let (last_seq, topic) = body.split_at(8);
                let last_seq = u64::from_be_bytes(last_seq.try_into().expect("8 bytes"));
                MeshRecord::Closed { last_seq, topic }
            }
            other => panic!("unknown channel record kind {other}"),
        }
    }
}

/// This shard's ends of the channels to every other shard, indexed by peer
/// shard id (None at this shard's own index).
pub(super) struct Mesh {
    peers: Vec<Option<Channel>>,
    inbound: Vec<Option<spsc::Receiver>>,
}

impl Mesh {
    pub(super) fn new(
        shard_id: usize,
        tx: Vec<Option<spsc::Sender>>,
        rx: Vec<Option<spsc::Receiver>>,
        peer_ring_fds: &[RawFd],
    ) -> Mesh {
        assert_eq!(tx.len(), rx.len());
        assert_eq!(tx.len(), peer_ring_fds.len());
        let peers = tx
            .into_iter()
            .zip(peer_ring_fds)
            .map(|(tx, &ring_fd)| tx.map(|tx| Channel::new(tx, ring_fd, shard_id)))
            .collect();
        Mesh { peers, inbound: rx }
    }

    fn peer(&self, peer: usize) -> &Channel {
        self.peers[peer].as_ref().expect("a channel to every peer")
    }
}

impl Core {
    /// Pushes `record` to `peer`, waking it if it sleeps; false when its
    /// channel is full.
    pub(super) fn push_to_peer(&mut self, peer: usize, record: &MeshRecord<'_>) -> bool {
        record.push(self.mesh.peer(peer), &mut self.outbox)
    }

    /// Whether every peer's channel has room for a record of `len` bytes,
    /// and the channel of `answer`'s peer for an answer of its bytes after it.
    pub(super) fn peers_have_room(&self, len: usize, answer: Option<(usize, usize)>) -> bool {
        self.mesh.peers.iter().enumerate().all(|(peer, channel)| {
            channel.as_ref().is_none_or(|channel| match answer {
                Some((to, answer_bytes)) if to == peer => {
                    channel.has_room_for(&[len, answer_bytes])
                }
                _ => channel.has_room(len),
            })
        })
    }

    /// Hands an event to every peer shard (room was checked).
    pub(super) fn send_to_peers(&mut self, frame: FrameRef) {
        let event = MeshRecord::Event(self.arena.bytes(frame));
        for channel in self.mesh.peers.iter().flatten() {
            let pushed = event.push(channel, &mut self.outbox);
            assert!(pushed, "room was checked before sequencing");
        }
    }

    pub(super) fn drain_mesh(&mut self) {
        let receivers = std::mem::take(&mut self.mesh.inbound);
        for (peer, rx) in receivers.iter().enumerate() {
            let Some(rx) = rx else { continue };
            rx.clear_doorbell();
            let mut handled = 0;
            while let Some((kind, body)) = rx.peek() {
                if handled == MESH_RECORDS_PER_TURN {
                    self.work_left = true;
                    break;
                }
                let done = match MeshRecord::decode(kind, body) {
                    MeshRecord::Event(frame) => self.on_peer_event(frame),
                    MeshRecord::Request { origin, frame } => self.on_forwarded(peer, origin, frame),
                    MeshRecord::Answer { origin, frame } => self.on_peer_answer(origin, frame),
                    MeshRecord::Closed { last_seq, topic } => {
                        self.end_topic(topic, last_seq);
                        true
                    }
                };
                if !done {
                    // No memory or no room to answer: keep the record and
                    // push back on the peer until a later turn.
                    self.work_left = true;
                    break;
                }
                rx.pop();
                handled += 1;
            }
        }
        self.mesh.inbound = receivers;
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
    fn on_forwarded(&mut self, peer: usize, origin: ConnId, raw: &[u8]) -> bool {
        let Ok(Some((frame, _))) = decode(raw, &self.limits) else {
            panic!("a peer shard forwarded a malformed request");
        };
        let (request_id, answer_bytes) = match &frame {
            Frame::Publish(p) => (p.request_id, ACK_RECORD_BYTES),
            Frame::TopicClose(c) => (
                c.request_id,
                ConnId::BYTES + TopicClosed::ENCODED_BYTES_BEFORE_TOPIC + c.topic.len(),
            ),
            other => panic!("a peer shard forwarded {:?}", other.frame_type()),
        };
        if !self.mesh.peer(peer).has_room(answer_bytes) {
            return false;
        }
        let ack = AckTo::Peer {
            peer,
            origin,
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
    fn on_peer_answer(&mut self, origin: ConnId, ack: &[u8]) -> bool {
        if !self.is_open(origin) {
            return true; // the requester left; its answer has nobody to go to
        }
        let index = origin.index;
        let Some(frame) = self.alloc(ack.len(), Use::Control) else {
            return false;
        };
        self.arena.bytes_mut(frame).copy_from_slice(ack);
        self.conns[index as usize].push(frame, ack.len());
        self.mark_dirty(index);
        true
    }
}
