//! A connection's protocol life: HELLO and its token, frame dispatch,
//! ERROR and GOAWAY (with resume points), the handshake and idle timers,
//! the drain on SIGTERM, and the metrics copy. `net` reaches the protocol
//! only through the three events here: `on_frames`, `on_sent` and
//! `on_closing`.

use super::*;

/// How long a closing connection may take to flush its last frames (at most
/// one send's worth and a GOAWAY or ERROR): long enough for a phone on a poor
/// link, short enough that a peer that stopped reading cannot hold the slot.
const LINGER_MS: u64 = 10_000;

/// How often the queue gauges walk every connection (a read of each).
const QUEUE_WALK_INTERVAL_MS: u64 = 1_000;

impl Core {
    /// Handles the whole frames at the front of `input`; returns how many
    /// bytes they took, or None once the connection stopped reading.
    pub(super) fn on_frames(&mut self, index: u32, input: &[u8]) -> Option<usize> {
        let mut at = 0;
        while at < input.len() {
            match decode(&input[at..], &self.limits) {
                Ok(Some((frame, used))) => {
                    let raw = &input[at..at + used];
                    at += used;
                    self.on_frame(index, frame, raw);
                    let state = self.conns[index as usize].state;
                    if !matches!(state, ConnState::Handshake | ConnState::Open) {
                        return None;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    self.error_close(index, err.code(), &err.to_string());
                    return None;
                }
            }
        }
        Some(at)
    }

    fn on_frame(&mut self, index: u32, frame: Frame<'_>, raw: &[u8]) {
        let state = self.conns[index as usize].state;
        match (state, frame) {
            (ConnState::Handshake, Frame::Hello(hello)) => {
                if hello.version_min > PROTOCOL_VERSION || hello.version_max < PROTOCOL_VERSION {
                    let message = format!(
                        "this server speaks protocol version {PROTOCOL_VERSION} only, the client \
                         offered {}..={}",
                        hello.version_min, hello.version_max
                    );
                    self.error_close(index, ErrorCode::UnsupportedVersion, &message);
                    return;
                }
                if let Some(keys) = &self.keys {
                    let now_s = self.wall_ns / 1_000_000_000;
                    match keys.verify(hello.token, now_s) {
                        Ok(grant) => {
                            // The token's clock is the wall's; timers run on
                            // the shard's.
                            let left_ms = (grant.expires_s - now_s).saturating_mul(1000);
                            let conn = &mut self.conns[index as usize];
                            conn.token_deadline_ms = self.now_ms.saturating_add(left_ms);
                            conn.player = grant.subject.clone();
                            conn.grant = Some(Box::new(grant));
                        }
                        Err(refusal) => {
                            self.stats.not_authorized += 1;
                            let message = refusal.to_string();
                            self.error_close(index, ErrorCode::NotAuthorized, &message);
                            return;
                        }
                    }
                }
                let welcome = Frame::Welcome(Welcome {
                    version: PROTOCOL_VERSION,
                    heartbeat_ms: self.heartbeat_ms,
                    idle_timeout_ms: self.idle_timeout_ms,
                    frame_bytes_max: self.limits.frame_bytes_max,
                    payload_bytes_max: self.limits.payload_bytes_max,
                    subscriptions_max: self.subscriptions_max as u16,
                    topic_bytes_max: self.limits.topic_bytes_max,
                });
                self.handshakes.leave(index);
                let conn = &mut self.conns[index as usize];
                conn.state = ConnState::Open;
                if conn.grant.is_none() {
                    conn.player = hello.client_id.into();
                }
                let deadline =
                    (self.now_ms + self.idle_timeout_ms as u64).min(conn.token_deadline_ms);
                self.timers.schedule(index, deadline);
                self.queue_control(index, &welcome);
            }
            (ConnState::Handshake, _) => {
                self.error_close(
                    index,
                    ErrorCode::UnexpectedFrame,
                    "the first frame must be HELLO",
                );
            }
            (_, Frame::Subscribe(subscribe)) => self.subscribe(index, subscribe),
            (_, Frame::Unsubscribe { topic }) => {
                if let Some(t) = self.topics.find(topic) {
                    self.unsubscribe(index, t);
                }
                self.queue_control(index, &Frame::Unsubscribed { topic });
            }
            (_, Frame::Publish(publish)) => self.publish(index, publish, raw),
            (_, Frame::TopicClose(close)) => self.close_topic(index, close, raw),
            (_, Frame::Position(position)) => {
                if let Err(code) = position.validate() {
                    self.error_close(index, code, "position out of range");
                    return;
                }
                self.store_position(index, &position);
            }
            (_, Frame::PathQuery(query)) => self.path_query(index, &query),
            (_, Frame::Ping { nonce }) => {
                self.queue_control(index, &Frame::Pong { nonce });
            }
            (_, Frame::Pong { .. }) => {}
            (_, other) => {
                let message = format!(
                    "{:?} frames are sent by the server only",
                    other.frame_type()
                );
                self.error_close(index, ErrorCode::UnexpectedFrame, &message);
            }
        }
    }

    /// Whether the connection's token allows what `right` checks (always,
    /// when the appliance checks no tokens); a refusal is counted.
    pub(super) fn allowed(&mut self, index: u32, right: impl Fn(&Grant) -> bool) -> bool {
        let grant = self.conns[index as usize].grant.as_deref();
        let allowed = grant.is_none_or(right);
        if !allowed {
            self.stats.not_authorized += 1;
        }
        allowed
    }

    /// Queues `frame` as the connection's last, stops reading, and closes once
    /// it is sent (or after a linger, if the client does not read).
    fn send_then_close(&mut self, index: u32, frame: &Frame<'_>) {
        self.unsubscribe_all(index);
        self.conns[index as usize].drop_unsent(&mut self.arena, |_| {});
        if !self.queue_control(index, frame) {
            return;
        }
        self.handshakes.leave(index);
        let conn = &mut self.conns[index as usize];
        conn.state = ConnState::Flushing;
        if conn.recv_armed {
            let token = self.token(OpKind::Recv, index);
            self.outbox.push(
                Op::Cancel { target: token },
                Token::new(OpKind::Cancel, 0, index).encode(),
            );
        }
        self.timers.schedule(index, self.now_ms + LINGER_MS);
    }

    pub(super) fn error_close(&mut self, index: u32, code: ErrorCode, message: &str) {
        self.stats.errors_sent += 1;
        // Cut to what an ERROR carries, on a character boundary.
        let end = (0..=message.len().min(ErrorFrame::MESSAGE_BYTES_MAX))
            .rev()
            .find(|&i| message.is_char_boundary(i))
            .unwrap_or(0);
        let message = &message.as_bytes()[..end];
        crate::debug!(
            "shard {}: closing connection {index}: {code:?}: {}",
            self.id,
            String::from_utf8_lossy(message)
        );
        let frame = Frame::Error(ErrorFrame {
            code: code as u16,
            message,
        });
        self.send_then_close(index, &frame);
    }

    /// GOAWAY naming where each subscription stands (a subscriber that fell
    /// behind the history window, a token that expired, a drain): the client
    /// reconnects and resumes (and learns what it missed) from there.
    pub(super) fn goaway_resume(&mut self, index: u32, reason: GoAwayReason, retry_after_ms: u32) {
        // Frames not yet handed to the kernel are not delivered: each
        // subscription resumes after the last sequence that was.
        let mut undelivered: Vec<(u64, Vec<u8>)> = Vec::new();
        let limits = self.limits;
        self.conns[index as usize].drop_unsent(&mut self.arena, |bytes| {
            if let Ok(Some((Frame::Event(e), _))) = decode(bytes, &limits) {
                undelivered.push((e.seq, e.topic.to_vec()));
            }
        });
        // The list is cut short rather than exceed the frame limit.
        let mut room = self.limits.frame_bytes_max as usize - 64;
        let mut points: Vec<(u64, u64, Box<[u8]>)> = Vec::new();
        for (t, next) in self.subscribed(index) {
            let topic = self.topics.get(t);
            let first_undelivered = undelivered
                .iter()
                .filter(|(_, name)| name[..] == topic.name[..])
                .map(|(seq, _)| *seq)
                .min()
                .unwrap_or(next);
            let entry_bytes = 8 + 8 + 1 + topic.name.len();
            if entry_bytes > room {
                break;
            }
            room -= entry_bytes;
            points.push((topic.epoch, first_undelivered - 1, topic.name.clone()));
        }
        let frame = Frame::GoAway(GoAway {
            reason,
            retry_after_ms,
            reconnect: b"",
            resume: points
                .iter()
                .map(|(epoch, last_seq, name)| ResumePoint {
                    epoch: *epoch,
                    last_seq: *last_seq,
                    topic: name,
                })
                .collect(),
        });
        self.send_then_close(index, &frame);
    }

    /// A connection that leaves without finishing HELLO frees its place.
    /// net's event: a send of the connection completed, so its queue has
    /// room again: subscriptions catching up are fed from history.
    pub(super) fn on_sent(&mut self, index: u32) {
        let open = self.conns[index as usize].state == ConnState::Open;
        if open && self.subscriptions.catching_up(index) {
            self.refill(index);
        }
    }

    /// net's event: the connection is closing. It leaves its topics, the
    /// handshake table and the timers.
    pub(super) fn on_closing(&mut self, index: u32) {
        self.unsubscribe_all(index);
        self.handshakes.leave(index);
        self.timers.cancel(index);
    }

    /// Copies the counters into the shard's shared block (see `metrics`).
    pub(super) fn publish_metrics(&mut self, stats: &ShardStats) {
        if self.now_ms >= self.queue_walk_at_ms {
            self.queue_walk_at_ms = self.now_ms + QUEUE_WALK_INTERVAL_MS;
            let (mut total, mut deepest) = (0, 0);
            for (_, conn) in self.conns.iter() {
                total += conn.queued_bytes() as u64;
                deepest = deepest.max(conn.queued_bytes() as u64);
            }
            self.queue_gauges = (total, deepest);
        }
        let gauges = Gauges {
            connections: self.conns.len() as u64,
            subscriptions: self.subscriptions.total(),
            topics: self.topics.count() as u64,
            queued_bytes: self.queue_gauges.0,
            queue_deepest_bytes: self.queue_gauges.1,
            handshakes: self.handshakes.count() as u64,
            handshake_timeout_ms: self.handshakes.timeout_ms() as u64,
        };
        let wall_ms = self.wall_ns / 1_000_000;
        self.recorder.publish(self.now_ms, wall_ms, stats, gauges);
    }

    pub(super) fn expire_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        // The timeout is for the whole HELLO: bytes trickling in do not
        // extend it.
        let timeout_ms = self.handshakes.timeout_ms();
        self.handshakes.expire(self.now_ms, &mut fired);
        for &index in &fired {
            self.stats.handshakes_timed_out += 1;
            let message = format!("no HELLO within {timeout_ms} ms");
            self.error_close(index, ErrorCode::HandshakeTimeout, &message);
        }
        fired.clear();
        self.report_handshake_pressure();
        self.timers.expire(self.now_ms, &mut fired);
        for &index in &fired {
            let conn = &self.conns[index as usize];
            match conn.state {
                ConnState::Open => {
                    let deadline = conn.last_rx_ms + self.idle_timeout_ms as u64;
                    if self.now_ms >= conn.token_deadline_ms {
                        self.stats.tokens_expired += 1;
                        self.goaway_resume(index, GoAwayReason::TokenExpired, 0);
                    } else if self.now_ms >= deadline {
                        let message = format!("nothing received for {} ms", self.idle_timeout_ms);
                        self.error_close(index, ErrorCode::IdleTimeout, &message);
                    } else {
                        let deadline = deadline.min(conn.token_deadline_ms);
                        self.timers.schedule(index, deadline);
                    }
                }
                // The client would not take its last frames within the linger.
                ConnState::Flushing => self.abort(index),
                // Handshakes expire through their table.
                ConnState::Handshake | ConnState::Closing => {}
            }
        }
        fired.clear();
        self.fired = fired;
    }

    fn report_handshake_pressure(&mut self) {
        match self.handshakes.report(self.now_ms) {
            Some(PressureReport::Under {
                count,
                max,
                timeout_ms,
                evicted,
                timed_out,
            }) => crate::warn!(
                "shard {}: {count} of {max} handshakes in flight: handshake timeout shortened \
                 to {timeout_ms} ms; since the last report {evicted} evicted for newcomers, \
                 {timed_out} timed out",
                self.id
            ),
            Some(PressureReport::Over) => crate::info!(
                "shard {}: handshake pressure over: handshake timeout back to {} ms",
                self.id,
                self.handshakes.timeout_ms()
            ),
            None => {}
        }
    }

    /// SIGTERM/SIGINT: stop accepting, tell every client to go away, and give
    /// them the drain deadline to receive it.
    pub(super) fn start_drain(&mut self) {
        self.drain_deadline_ms = Some(self.now_ms + self.drain_timeout_ms as u64);
        self.close_door();
        let open: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, ConnState::Handshake | ConnState::Open))
            .map(|(i, _)| i as u32)
            .collect();
        for index in open {
            let retry_after_ms = self.jittered_retry();
            self.goaway_resume(index, GoAwayReason::Shutdown, retry_after_ms);
        }
    }

    /// True once a drain has sent everything it could and every connection
    /// is gone (or the deadline passed and stragglers were cut).
    pub(super) fn drained(&mut self) -> bool {
        let Some(deadline) = self.drain_deadline_ms else {
            return false;
        };
        if self.now_ms >= deadline {
            let left: Vec<u32> = self
                .conns
                .iter()
                .filter(|(_, c)| c.state != ConnState::Closing)
                .map(|(i, _)| i as u32)
                .collect();
            for index in left {
                self.abort(index);
            }
        }
        self.conns.is_empty() || self.now_ms >= deadline + DRAIN_GRACE_MS
    }
}
