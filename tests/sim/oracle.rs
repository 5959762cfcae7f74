//! What the server sends each client, read and checked as it arrives:
//! every frame against what the driver knows (sequences without gap,
//! duplicate or reorder, epochs, acks, closes and their notices, the
//! errors and GOAWAYs each role may get), and the client's answer to it.

use std::sync::atomic::Ordering;

use cluecast_proto::{
    decode, ErrorCode, Frame, GoAwayReason, Limits, StartMode, Subscribe, SubscribeStatus,
};

use super::*;

impl World {
    /// Reads and checks what the server sent each client; acts on it.
    pub(super) fn serve_clients(&mut self) {
        for index in 0..self.clients.len() {
            if self.clients[index].gone {
                continue;
            }
            // The slow reader (client 0) reads one step in eight.
            if index == 0 && self.step % 8 != 0 && !self.stop.load(Ordering::Relaxed) {
                continue;
            }
            let sim = self.clients[index].sim;
            let bytes = self.net.client_read(sim);
            self.clients[index].buf.extend_from_slice(&bytes);
            loop {
                let buf = std::mem::take(&mut self.clients[index].buf);
                let decoded = match decode(&buf, &Limits::DEFAULT) {
                    Ok(Some((frame, used))) => {
                        let owned = OwnedFrame::from(&frame);
                        Some((owned, used))
                    }
                    Ok(None) => None,
                    Err(e) => self.fail(format!("server sent a malformed frame: {e}")),
                };
                self.clients[index].buf = buf;
                let Some((frame, used)) = decoded else { break };
                self.clients[index].buf.drain(..used);
                self.on_frame(index, frame);
                if self.clients[index].gone {
                    break;
                }
            }
            // The client may have reconnected meanwhile: ask about its current socket.
            let current = self.clients[index].sim;
            if !self.clients[index].gone && self.net.client_eof(current) {
                self.on_eof(index);
            }
        }
    }

    fn on_frame(&mut self, index: usize, frame: OwnedFrame) {
        let name = self.clients[index].name.clone();
        match frame {
            OwnedFrame::Welcome => {
                self.clients[index].handshaken = true;
                self.after_handshake(index);
            }
            OwnedFrame::Subscribed {
                topic,
                status,
                epoch,
                oldest_seq,
                last_seq,
            } => {
                let topic = topic_name(&topic);
                if status == SubscribeStatus::NotAuthorized {
                    self.fail(format!("{name}: {topic}: NotAuthorized without tokens"));
                }
                let client = &mut self.clients[index];
                client.subscribed += 1;
                let Role::Subscriber { positions, .. } = &mut client.role else {
                    self.fail(format!("{name}: SUBSCRIBED for a non-subscriber"));
                };
                let position = positions.entry(topic).or_default();
                position.confirmed = true;
                match status {
                    SubscribeStatus::Ok => {}
                    SubscribeStatus::NotAuthorized => unreachable!("checked above"),
                    // Oldest 0: nothing retained, the next event is the next one.
                    SubscribeStatus::NotRecovered | SubscribeStatus::EpochChanged => {
                        position.jump_to = Some(match oldest_seq {
                            0 => last_seq + 1,
                            oldest => oldest,
                        });
                    }
                }
                let had_events = position.last_seq > 0;
                if status == SubscribeStatus::EpochChanged {
                    // Only a closed history is ever replaced within a process
                    // (closed, or being closed while this client reconnected).
                    let (old, at) = (position.epoch, position.last_seq);
                    let closed =
                        self.ended_epochs.contains_key(&old) || self.closing == Some(topic);
                    if had_events && !closed {
                        self.fail(format!(
                            "{name}: {topic}: EpochChanged from {old:x} at {at} to {epoch:x}, \
                             a history never closed"
                        ));
                    }
                    position.last_seq = 0;
                    position.epoch = epoch;
                } else if position.epoch == 0 || !had_events {
                    // A topic without events has no epoch (0) until its first
                    // event brings the epoch of its history.
                    position.epoch = epoch;
                } else if position.epoch != epoch {
                    self.fail(format!("{name}: epoch changed within one process"));
                }
            }
            OwnedFrame::Event { topic, seq, epoch } => {
                let topic = topic_name(&topic);
                let Role::Subscriber { positions, .. } = &mut self.clients[index].role else {
                    self.fail(format!("{name}: EVENT for a non-subscriber"));
                };
                let Some(position) = positions.get_mut(topic) else {
                    self.fail(format!("{name}: EVENT of {topic}, not subscribed"));
                };
                let expected = position.jump_to.take().unwrap_or(position.last_seq + 1);
                if epoch == position.ended_epoch {
                    self.fail(format!("{name}: {topic}: event {seq} of a closed history"));
                }
                if position.last_seq == 0 {
                    position.epoch = epoch;
                }
                if seq != expected || epoch != position.epoch {
                    self.fail(format!(
                        "{name}: {topic}: got seq {seq}, expected {expected} (gap, duplicate or reorder)"
                    ));
                }
                position.last_seq = seq;
            }
            OwnedFrame::PublishAck {
                status,
                seq,
                epoch,
                topic_hint,
            } => {
                let durability = self.durability;
                let Role::Publisher {
                    acked,
                    in_flight,
                    next,
                    storage_refusals,
                } = &mut self.clients[index].role
                else {
                    self.fail(format!("{name}: PUBLISH_ACK for a non-publisher"));
                };
                if status == ErrorCode::StorageFailed as u16 && durability != Durability::Memory {
                    *in_flight -= 1;
                    *next -= 1;
                    *storage_refusals += 1;
                    return;
                }
                if status != 0 {
                    self.fail(format!("{name}: publish refused with status {status}"));
                }
                *acked += 1;
                *in_flight -= 1;
                let topic = TOPICS[topic_hint as usize % TOPICS.len()];
                let history = self.acked_epoch[topic];
                if history != epoch && self.acked_per_topic[topic] != 0 {
                    // Closes wait for every ack, so a history ends between acks.
                    self.fail(format!(
                        "{name}: {topic}: ack in epoch {epoch:x}, history {history:x}"
                    ));
                }
                self.acked_epoch.insert(topic, epoch);
                let newest = self.acked_per_topic.get_mut(topic).unwrap();
                *newest = (*newest).max(seq);
            }
            OwnedFrame::TopicClosed {
                request_id: 0,
                topic,
                last_seq,
                ..
            } => {
                let topic = topic_name(&topic);
                let position = match &self.clients[index].role {
                    Role::Subscriber { positions, .. } => positions.get(topic).copied(),
                    _ => None,
                };
                let Some(position) = position else {
                    self.fail(format!("{name}: TOPIC_CLOSED for {topic}, not subscribed"));
                };
                // The close in flight, or one already answered (the notice
                // may reach a subscriber after the answer reached the closer).
                // Its history's epoch is known once SUBSCRIBED named it, even
                // before any event: a subscriber catching up from 0 when the
                // close came may have received none (protocol section 8).
                let closed_after = match self.ended_epochs.get(&position.epoch) {
                    Some(&ended) => Some(ended),
                    _ if self.closing == Some(topic) => {
                        self.close_notices_in_flight += 1;
                        Some((
                            self.acked_per_topic[topic],
                            self.close_waits_for_subscribers,
                        ))
                    }
                    _ => None,
                };
                // A close that waited for every subscriber: each has seen the
                // whole history; else one may have been behind.
                let whole = match closed_after {
                    Some((last, true)) => last == last_seq && position.last_seq == last_seq,
                    Some((last, false)) => last == last_seq && position.last_seq <= last_seq,
                    None => false,
                };
                if !whole {
                    self.fail(format!(
                        "{name}: {topic} closed after {last_seq}, expected {closed_after:?}, \
                         received {}",
                        position.last_seq
                    ));
                }
                // The history is over: subscribe to whatever comes next, from 1.
                if let Role::Subscriber { positions, .. } = &mut self.clients[index].role {
                    positions.insert(
                        topic,
                        Position {
                            confirmed: true,
                            ended_epoch: position.epoch,
                            ..Position::default()
                        },
                    );
                }
                self.close_notices += 1;
                self.send(
                    index,
                    &Frame::Subscribe(Subscribe {
                        mode: StartMode::Resume,
                        epoch: 0,
                        last_seq: 0,
                        topic: topic.as_bytes(),
                    }),
                );
            }
            OwnedFrame::TopicClosed {
                topic,
                status,
                last_seq,
                ..
            } => {
                let topic = topic_name(&topic);
                let Role::Closer { closed, in_flight } = &mut self.clients[index].role else {
                    self.fail(format!("{name}: TOPIC_CLOSED answer for a non-closer"));
                };
                *in_flight = false;
                let notices = std::mem::take(&mut self.close_notices_in_flight);
                let refused_for_storage = status == ErrorCode::StorageFailed as u16
                    && self.durability != Durability::Memory;
                if refused_for_storage {
                    if notices > 0 {
                        self.fail(format!("{name}: a refused close of {topic} was announced"));
                    }
                    return; // the history goes on; closed again later
                }
                if status != 0 || last_seq != self.acked_per_topic[topic] {
                    self.fail(format!(
                        "{name}: closing {topic}: status {status}, last_seq {last_seq}, acked {}",
                        self.acked_per_topic[topic]
                    ));
                }
                *closed += 1;
                self.closing = None;
                let waited = self.close_waits_for_subscribers;
                self.ended_epochs
                    .insert(self.acked_epoch[topic], (last_seq, waited));
                self.acked_per_topic.insert(topic, 0);
                self.acked_epoch.insert(topic, 0);
            }
            OwnedFrame::Error { code } => match &mut self.clients[index].role {
                Role::Mute { got_error } if code == ErrorCode::HandshakeTimeout as u16 => {
                    *got_error = true;
                }
                Role::Intruder { got_error } if code == ErrorCode::NotAuthorized as u16 => {
                    *got_error = true;
                }
                _ => self.fail(format!("{name}: unexpected ERROR {code}")),
            },
            OwnedFrame::GoAway { reason } => {
                let client = &self.clients[index];
                let is_subscriber = matches!(client.role, Role::Subscriber { .. });
                match reason {
                    GoAwayReason::Shutdown => self.clients[index].gone = true,
                    // Only the short token expires: the client gets a fresh
                    // one and resumes.
                    GoAwayReason::TokenExpired if is_subscriber && client.name == "sub2" => {
                        let keys = self.keys.clone().expect("tokens are checked");
                        let role = &self.clients[index].role;
                        let token = self.token(&keys, role, 3600);
                        let client = &mut self.clients[index];
                        client.token = token;
                        client.tokens_expired += 1;
                        self.reconnect(index);
                    }
                    GoAwayReason::SlowConsumer if is_subscriber => self.reconnect(index),
                    // Refused at the door: only ever before WELCOME.
                    GoAwayReason::ServerFull if !client.handshaken => {
                        self.clients[index].refused += 1;
                        self.reconnect(index);
                    }
                    _ => self.fail(format!("{name}: unexpected GOAWAY {reason:?}")),
                }
            }
            OwnedFrame::Pong | OwnedFrame::Other => {}
        }
    }

    fn after_handshake(&mut self, index: usize) {
        let Role::Subscriber {
            topics, positions, ..
        } = &self.clients[index].role
        else {
            return;
        };
        let requests: Vec<(&'static str, Position)> = topics
            .iter()
            .map(|t| (*t, positions.get(t).copied().unwrap_or_default()))
            .collect();
        for (topic, position) in requests {
            let (mode, epoch) = if position.confirmed {
                (StartMode::Resume, position.epoch)
            } else {
                (StartMode::Live, 0)
            };
            self.send(
                index,
                &Frame::Subscribe(Subscribe {
                    mode,
                    epoch,
                    last_seq: position.last_seq,
                    topic: topic.as_bytes(),
                }),
            );
        }
    }

    fn on_eof(&mut self, index: usize) {
        match self.clients[index].role {
            Role::Mute { got_error: true } | Role::Intruder { got_error: true } => {
                self.clients[index].gone = true
            }
            Role::Subscriber { .. } if !self.stop.load(Ordering::Relaxed) => self.reconnect(index),
            _ if self.stop.load(Ordering::Relaxed) => self.clients[index].gone = true,
            _ => {
                let name = self.clients[index].name.clone();
                self.fail(format!("{name}: connection closed unexpectedly"));
            }
        }
    }
}

fn topic_name(bytes: &[u8]) -> &'static str {
    TOPICS
        .iter()
        .find(|t| t.as_bytes() == bytes)
        .copied()
        .unwrap_or_else(|| panic!("unknown topic {:?}", String::from_utf8_lossy(bytes)))
}

/// What the driver keeps of a frame (frames borrow the read buffer).
enum OwnedFrame {
    Welcome,
    Subscribed {
        topic: Vec<u8>,
        status: SubscribeStatus,
        epoch: u64,
        oldest_seq: u64,
        last_seq: u64,
    },
    Event {
        topic: Vec<u8>,
        seq: u64,
        epoch: u64,
    },
    PublishAck {
        status: u16,
        seq: u64,
        epoch: u64,
        topic_hint: u32,
    },
    TopicClosed {
        request_id: u32,
        status: u16,
        last_seq: u64,
        topic: Vec<u8>,
    },
    Error {
        code: u16,
    },
    GoAway {
        reason: GoAwayReason,
    },
    Pong,
    Other,
}

impl From<&Frame<'_>> for OwnedFrame {
    fn from(frame: &Frame<'_>) -> OwnedFrame {
        match frame {
            Frame::Welcome(_) => OwnedFrame::Welcome,
            Frame::Subscribed(s) => OwnedFrame::Subscribed {
                topic: s.topic.to_vec(),
                status: s.status,
                epoch: s.epoch,
                oldest_seq: s.oldest_seq,
                last_seq: s.last_seq,
            },
            Frame::Event(e) => OwnedFrame::Event {
                topic: e.topic.to_vec(),
                seq: e.seq,
                epoch: e.epoch,
            },
            // The request id carries the topic index (see `act`).
            Frame::PublishAck(a) => OwnedFrame::PublishAck {
                status: a.status,
                seq: a.seq,
                epoch: a.epoch,
                topic_hint: a.request_id,
            },
            Frame::TopicClosed(c) => OwnedFrame::TopicClosed {
                request_id: c.request_id,
                status: c.status,
                last_seq: c.last_seq,
                topic: c.topic.to_vec(),
            },
            Frame::Error(e) => OwnedFrame::Error { code: e.code },
            Frame::GoAway(g) => OwnedFrame::GoAway { reason: g.reason },
            Frame::Pong { .. } => OwnedFrame::Pong,
            _ => OwnedFrame::Other,
        }
    }
}
