//! The clients' own moves each step (publish, close a topic when its time
//! has come, reset a connection, heartbeat) and the tests of when the game
//! is over.

use cluecast_proto::{Frame, Publish, TopicClose};

use super::*;

impl World {
    /// Client behaviour for this step: publish, reset, heartbeat.
    pub(super) fn act(&mut self) {
        let now = self.net.now_ms();
        let all_subscribed = self.clients.iter().all(|c| match &c.role {
            Role::Subscriber { topics, .. } => c.subscribed >= topics.len(),
            _ => true,
        });
        self.plan_close();
        // A close goes out once no publish is in flight, so its last
        // sequence is known (and, if it waits for them, every subscriber
        // has caught up).
        let quiescent = (!self.close_waits_for_subscribers || self.delivery_done())
            && self.clients.iter().all(|c| match c.role {
                Role::Publisher { in_flight, .. } => in_flight == 0,
                _ => true,
            });
        for index in 0..self.clients.len() {
            if self.clients[index].gone {
                continue;
            }
            if self.clients[index].handshaken
                && now - self.clients[index].last_sent_ms >= HEARTBEAT_MS
            {
                self.send(index, &Frame::Ping { nonce: now });
            }
            let step = self.step;
            let handshaken = self.clients[index].handshaken;
            match &mut self.clients[index].role {
                Role::Publisher {
                    next, in_flight, ..
                } if all_subscribed
                    && handshaken
                    && self.closing.is_none()
                    && *next < EVENTS_PER_PUBLISHER
                    && *in_flight < 8 =>
                {
                    let n = *next;
                    *next += 1;
                    *in_flight += 1;
                    let topic_index = self.rng.below(TOPICS.len() as u64) as u32;
                    let payload = format!("{}-{n}", self.clients[index].name);
                    self.send(
                        index,
                        &Frame::Publish(Publish {
                            request_id: topic_index,
                            topic: TOPICS[topic_index as usize].as_bytes(),
                            payload: payload.as_bytes(),
                        }),
                    );
                }
                Role::Closer { closed, in_flight } if handshaken && !*in_flight && quiescent => {
                    let Some(topic) = self.closing else { continue };
                    *in_flight = true;
                    let request_id = *closed + 1;
                    self.send(
                        index,
                        &Frame::TopicClose(TopicClose {
                            request_id,
                            topic: topic.as_bytes(),
                        }),
                    );
                }
                Role::Subscriber { reset_at, .. } if *reset_at == Some(step) => {
                    *reset_at = None;
                    let sim = self.clients[index].sim;
                    self.net.client_reset(sim);
                    self.reconnect(index);
                }
                _ => {}
            }
        }
    }

    /// The closer's next close is due once its share of the events is acked.
    fn plan_close(&mut self) {
        let closed = self.clients.iter().find_map(|c| match c.role {
            Role::Closer { closed, .. } => Some(closed),
            _ => None,
        });
        let Some(&(percent, wait)) = closed
            .filter(|_| self.closing.is_none())
            .and_then(|n| CLOSE_POINTS.get(n as usize))
        else {
            return;
        };
        let acked: u32 = self
            .clients
            .iter()
            .map(|c| match c.role {
                Role::Publisher { acked, .. } => acked,
                _ => 0,
            })
            .sum();
        let total = EVENTS_PER_PUBLISHER * PUBLISHERS as u32;
        if acked * 100 >= total * percent {
            self.closing = Some(TOPICS[self.rng.below(TOPICS.len() as u64) as usize]);
            self.close_waits_for_subscribers = wait;
        }
    }

    pub(super) fn closes_done(&self) -> bool {
        self.clients.iter().all(|c| match c.role {
            Role::Closer { closed, .. } => closed as usize == CLOSE_POINTS.len(),
            _ => true,
        })
    }

    pub(super) fn publishing_done(&self) -> bool {
        self.clients.iter().all(|c| match c.role {
            Role::Publisher { acked, .. } => acked == EVENTS_PER_PUBLISHER,
            _ => true,
        })
    }

    pub(super) fn delivery_done(&self) -> bool {
        self.clients.iter().all(|c| match &c.role {
            Role::Subscriber {
                topics, positions, ..
            } => topics.iter().all(|t| {
                positions
                    .get(t)
                    .is_some_and(|p| p.last_seq == self.acked_per_topic[t] && c.handshaken)
            }),
            Role::Mute { got_error } | Role::Intruder { got_error } => *got_error,
            Role::Publisher { .. } | Role::Closer { .. } => true,
        })
    }
}
