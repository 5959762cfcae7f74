//! The client's life across connections: reconnecting with backoff,
//! resuming every subscription, the per-topic resume state that drops
//! duplicates, and the frames no request waits for.

use super::conn::{Conn, Inbound};
use super::delivery::{Delivery, OwnedEvent, OwnedSubscribed};
use super::{Client, ClientError, Lost, SubState};
use crate::codec::{valid_topic, Limits};
use crate::frame::*;
use crate::retry::{redirect_of, retry_delay};
use std::collections::BTreeSet;
use std::net::Shutdown;
use std::time::{Duration, Instant};

impl Client {
    // -- connection management ---------------------------------------------

    /// Makes sure there is a connection, reconnecting (with backoff) if
    /// needed. `Ok(false)`: the deadline came first.
    pub(super) fn ensure_connected(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<bool, ClientError> {
        loop {
            if self.conn.is_some() {
                return Ok(true);
            }
            let next_attempt = match &self.lost {
                Some(lost) if !self.closed => lost.next_attempt,
                _ => return Err(ClientError::Closed),
            };
            let now = Instant::now();
            if let Some(deadline) = deadline {
                if deadline < next_attempt {
                    std::thread::sleep(deadline.saturating_duration_since(now));
                    return Ok(false);
                }
            }
            std::thread::sleep(next_attempt.saturating_duration_since(now));
            self.reconnect_once()?;
        }
    }

    /// One reconnect attempt. `Err` only for a failure that retrying cannot
    /// fix; other failures schedule the next attempt.
    fn reconnect_once(&mut self) -> Result<(), ClientError> {
        if self.token_expired {
            // The same token would be refused: the app must set a new one.
            return Err(ClientError::TokenExpired);
        }
        let Some(lost) = self.lost.take() else {
            return Ok(());
        };
        let attempts = lost.attempts + 1;
        let addr = lost.redirect.as_deref().unwrap_or(&self.config.server);
        match Conn::open(addr, &self.config) {
            Ok((conn, welcome)) => {
                self.conn = Some(conn);
                self.welcome = welcome;
                self.connected_at = Instant::now();
                self.attempts_before = attempts;
                self.queue.push_back(Delivery::Reconnected {
                    reason: lost.reason,
                    attempts,
                });
                match self.resubscribe_all() {
                    Err(e) if e.is_fatal() => {
                        self.closed = true;
                        Err(e)
                    }
                    // Any other failure was recorded as a new loss by
                    // `send` / `recv`; the caller's loop tries again.
                    _ => Ok(()),
                }
            }
            Err(e) if e.is_fatal() => {
                self.closed = true;
                Err(e)
            }
            Err(e) => {
                let goaway = match &e {
                    ClientError::GoAway(g) => Some(g),
                    _ => None,
                };
                self.lost = Some(Lost {
                    reason: lost.reason,
                    next_attempt: Instant::now()
                        + retry_delay(&self.config, &mut self.rng, attempts, goaway),
                    redirect: goaway.and_then(redirect_of),
                    attempts,
                });
                Ok(())
            }
        }
    }

    /// Re-SUBSCRIBEs every topic with Resume from its saved point and queues
    /// each SUBSCRIBED as a delivery.
    fn resubscribe_all(&mut self) -> Result<(), ClientError> {
        let subs: Vec<(String, SubState)> =
            self.subs.iter().map(|(t, s)| (t.clone(), *s)).collect();
        // Pipelined: all requests first, then the answers, in any order.
        for (topic, state) in &subs {
            self.send(&Frame::Subscribe(Subscribe {
                mode: StartMode::Resume,
                epoch: state.epoch,
                last_seq: state.last_seq,
                topic: topic.as_bytes(),
            }))?;
        }
        let mut waiting: BTreeSet<&str> = subs.iter().map(|(t, _)| t.as_str()).collect();
        let deadline = self.request_deadline();
        while !waiting.is_empty() {
            let s =
                self.await_answer(
                    deadline,
                    "SUBSCRIBED after reconnect",
                    |inbound| match inbound {
                        Inbound::Subscribed(s) if waiting.remove(s.topic.as_str()) => {
                            Answer::Done(s)
                        }
                        other => Answer::NotOurs(other),
                    },
                )?;
            if s.status == SubscribeStatus::NotAuthorized {
                // The new connection's token no longer allows it:
                // the subscription ends (the app sees the status).
                self.subs.remove(&s.topic);
            } else if let Some(state) = self.subs.get_mut(&s.topic) {
                *state = state_after_subscribed(&s, StartMode::Resume, state.epoch, state.last_seq);
            }
            self.queue.push_back(Delivery::Subscribed(s));
        }
        Ok(())
    }

    /// Forgets the connection and schedules the reconnect (or closes the
    /// client if reconnecting is off).
    fn connection_lost(&mut self, reason: &ClientError) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.frames.stream.tcp().shutdown(Shutdown::Both);
        }
        if !self.config.reconnect {
            self.closed = true;
            return;
        }
        let goaway = match reason {
            ClientError::GoAway(g) => Some(g),
            _ => None,
        };
        self.token_expired |= goaway.is_some_and(|g| g.reason == GoAwayReason::TokenExpired);
        // A connection that lived long enough counts as a success and resets
        // the backoff; one that died young (a server crashing at startup, a
        // proxy accepting then closing) keeps it growing.
        let lived = self.connected_at.elapsed();
        let attempts = if lived >= Duration::from_millis(self.config.backoff_max_ms) {
            0
        } else {
            self.attempts_before
        };
        self.lost = Some(Lost {
            reason: reason.to_string(),
            next_attempt: Instant::now()
                + retry_delay(&self.config, &mut self.rng, attempts, goaway),
            redirect: goaway.and_then(redirect_of),
            attempts,
        });
    }

    /// Waits until `deadline` for the answer to a request just sent: each
    /// frame goes to `take`, which keeps the answer (or a part of it) and
    /// hands back any other frame, handled as unsolicited.
    pub(super) fn await_answer<T>(
        &mut self,
        deadline: Instant,
        what: &'static str,
        mut take: impl FnMut(Inbound) -> Answer<T>,
    ) -> Result<T, ClientError> {
        loop {
            match self.recv(Some(deadline))? {
                Some(inbound) => match take(inbound) {
                    Answer::Done(answer) => return Ok(answer),
                    Answer::Partial => {}
                    Answer::NotOurs(other) => self.handle_unsolicited(other),
                },
                None => return Err(self.request_timed_out(what)),
            }
        }
    }

    pub(super) fn request_timed_out(&mut self, what: &'static str) -> ClientError {
        // The request may still be answered later; the connection's state is
        // unknown, so start over on a fresh one.
        let e = ClientError::Timeout(what);
        self.connection_lost(&e);
        e
    }

    /// A fresh request id; never 0, which TOPIC_CLOSED reserves for the
    /// notice to subscribers.
    pub(super) fn take_request_id(&mut self) -> u32 {
        if self.next_request_id == 0 {
            self.next_request_id = 1;
        }
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        request_id
    }

    pub(super) fn request_deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.request_timeout_ms)
    }

    // -- frames ---------------------------------------------------------------

    pub(super) fn send(&mut self, frame: &Frame<'_>) -> Result<(), ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(ClientError::Closed);
        };
        if let Err(e) = conn.send(frame) {
            self.connection_lost(&e);
            return Err(e);
        }
        Ok(())
    }

    /// The next frame the caller must look at (`None`: deadline). A frame
    /// that ends the connection (GOAWAY, ERROR) and every read failure are
    /// recorded as a loss and returned as the error.
    pub(super) fn recv(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Inbound>, ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(ClientError::Closed);
        };
        let err = match conn.recv(deadline) {
            Ok(Some(Inbound::GoAway(g))) => ClientError::GoAway(g),
            Ok(Some(Inbound::Error { code, message })) => ClientError::Server { code, message },
            Ok(other) => return Ok(other),
            Err(e) => e,
        };
        self.connection_lost(&err);
        Err(err)
    }

    /// A frame nobody in particular waits for.
    pub(super) fn handle_unsolicited(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Event(e) => {
                if self.accept_event(&e) {
                    self.queue.push_back(Delivery::Event(e));
                }
            }
            // The topic was closed: the subscription has ended, and must not
            // be resumed on a reconnect. Events already queued came before
            // the close and stay deliverable.
            Inbound::TopicClosed(c) if c.request_id == 0 => {
                if self.subs.remove(&c.topic).is_some() {
                    self.queue.push_back(Delivery::Closed {
                        topic: c.topic,
                        last_seq: c.last_seq,
                    });
                }
            }
            // Answers to requests that timed out on an earlier connection
            // cannot reach us (we drop the connection on timeout), so these
            // are harmless server quirks: ignore them.
            Inbound::PublishAck(_)
            | Inbound::Subscribed(_)
            | Inbound::Unsubscribed(_)
            | Inbound::TopicClosed(_)
            | Inbound::Path(_) => {}
            // `recv` turns these into errors; listed for completeness.
            Inbound::GoAway(_) | Inbound::Error { .. } => {}
        }
    }

    /// Updates the topic's resume point; false for an event to drop: a
    /// duplicate (seq already seen in this epoch) or a topic no longer
    /// subscribed.
    fn accept_event(&mut self, e: &OwnedEvent) -> bool {
        let Some(state) = self.subs.get_mut(&e.topic) else {
            return false;
        };
        if e.epoch == state.epoch && e.seq <= state.last_seq {
            return false;
        }
        state.epoch = e.epoch;
        state.last_seq = e.seq;
        true
    }

    pub(super) fn check_topic(&self, topic: &str) -> Result<(), ClientError> {
        let limits = Limits {
            topic_bytes_max: self.welcome.topic_bytes_max,
            ..self.config.limits
        };
        if valid_topic(topic.as_bytes(), &limits) {
            Ok(())
        } else {
            Err(ClientError::InvalidInput(format!(
                "invalid topic {topic:?}: 1 to {} bytes of A-Z a-z 0-9 _ . : -",
                limits.topic_bytes_max
            )))
        }
    }
}

/// What [`Client::await_answer`]'s `take` made of one frame.
pub(super) enum Answer<T> {
    /// The whole answer.
    Done(T),
    /// A part of the answer (a PATH frame before the last): wait on.
    Partial,
    /// Not the answer: handled as unsolicited.
    NotOurs(Inbound),
}

/// A request's status: 0 is success, anything else the server's refusal.
pub(super) fn status_ok(status: u16) -> Result<(), ClientError> {
    if status == 0 {
        Ok(())
    } else {
        Err(ClientError::Refused(status))
    }
}

/// Resume point right after SUBSCRIBED: the highest sequence the client
/// must NOT be given again. Too low is harmless (only duplicates would slip
/// through, and a fresh subscription has none); too high would drop events.
pub(super) fn state_after_subscribed(
    s: &OwnedSubscribed,
    mode: StartMode,
    asked_epoch: u64,
    asked_last_seq: u64,
) -> SubState {
    let last_seq = match mode {
        // Live starts after the newest event at subscription time.
        StartMode::Live => s.last_seq,
        // Resume in the same epoch (0 = "current"): replay follows from
        // what we asked for (or from oldest_seq if that is gone).
        StartMode::Resume
            if s.status != SubscribeStatus::EpochChanged
                && (asked_epoch == 0 || asked_epoch == s.epoch) =>
        {
            asked_last_seq
        }
        // A new epoch: its sequences restart, accept everything.
        StartMode::Resume => 0,
    };
    SubState {
        epoch: s.epoch,
        last_seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::SubscribeStatus;

    fn subscribed(status: SubscribeStatus, epoch: u64, oldest: u64, last: u64) -> OwnedSubscribed {
        OwnedSubscribed {
            topic: "t".into(),
            status,
            epoch,
            oldest_seq: oldest,
            last_seq: last,
        }
    }

    #[test]
    fn resume_point_after_subscribed() {
        use SubscribeStatus::*;
        let live = state_after_subscribed(&subscribed(Ok, 7, 1, 50), StartMode::Live, 0, 0);
        assert_eq!((live.epoch, live.last_seq), (7, 50));
        // From(10) on the current epoch: replay 10.. is expected.
        let from = state_after_subscribed(&subscribed(Ok, 7, 1, 50), StartMode::Resume, 0, 9);
        assert_eq!((from.epoch, from.last_seq), (7, 9));
        let gone = state_after_subscribed(
            &subscribed(NotRecovered, 7, 30, 50),
            StartMode::Resume,
            7,
            9,
        );
        assert_eq!((gone.epoch, gone.last_seq), (7, 9));
        let reset =
            state_after_subscribed(&subscribed(EpochChanged, 8, 1, 3), StartMode::Resume, 7, 9);
        assert_eq!((reset.epoch, reset.last_seq), (8, 0));
    }
}
