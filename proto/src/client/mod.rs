//! A blocking reference client for protocol v1, on `std::net` only.
//!
//! It is meant to be read and ported (Swift, Kotlin, ...): one TCP
//! connection, no threads, every wait done with socket read timeouts.
//!
//! What it does for the caller:
//! * handshake (HELLO → WELCOME), heartbeats (PING when idle, a connection
//!   that stays silent too long is dead) and answering server PINGs;
//! * per-topic resume state `(epoch, last_seq)`, updated by SUBSCRIBED and by
//!   every EVENT, used to drop duplicates;
//! * a first connection refused (GOAWAY ServerFull or Shutdown instead of
//!   WELCOME) or failed is tried again for a while (`connect_retry_ms`,
//!   `crate::retry`), each wait shown to the caller's observer;
//! * on a lost connection (EOF, I/O error, GOAWAY, ERROR, missed heartbeats):
//!   exponential backoff with full jitter, reconnect, re-SUBSCRIBE every
//!   topic with Resume, and report each new SUBSCRIBED so the caller sees
//!   gaps ([`Delivery::Subscribed`]).
//! * a topic closed by the server (TOPIC_CLOSED notice) ends its
//!   subscription ([`Delivery::Closed`]) and is not resumed afterwards.
//!
//! A publish is never retried on a new connection: the first one may have
//! been sequenced already, and retrying would publish it twice.
//!
//! Modules: [`Client`] and its public calls here; `session` its life across
//! connections (reconnect, resume, duplicates); `conn` one connection
//! (handshake, heartbeats); `stream` TCP or TLS under it; `config`
//! [`ClientConfig`]; `delivery` what the client hands out; `errors`
//! [`ClientError`]; `rng` the jitter's randomness.

mod config;
mod conn;
mod delivery;
mod errors;
mod rng;
mod session;
mod stream;

#[cfg(feature = "tls")]
pub use config::tls_trusting;
pub use config::ClientConfig;
pub use delivery::{
    Delivery, OwnedEvent, OwnedGoAway, OwnedResumePoint, OwnedSubscribed, PathAnswer, Start,
};
pub use errors::ClientError;
pub(crate) use rng::Rng;

use self::conn::{Conn, Inbound};
use self::session::{state_after_subscribed, status_ok, Answer};
use crate::frame::*;
use crate::retry::connect_with_retry;
pub use crate::retry::ConnectRetry;
pub use crate::tls_error::TlsError;
use std::collections::{BTreeMap, VecDeque};
use std::net::Shutdown;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// The client

/// Resume state of one subscription: the last event delivered (or, before
/// any, where the server said the subscription starts).
#[derive(Clone, Copy, Debug)]
struct SubState {
    epoch: u64,
    last_seq: u64,
}

/// Bookkeeping while disconnected.
struct Lost {
    /// Why the last connection ended (reported in `Delivery::Reconnected`).
    reason: String,
    next_attempt: Instant,
    /// GOAWAY's `reconnect` address, tried once.
    redirect: Option<String>,
    /// Connection attempts so far, drives the backoff.
    attempts: u32,
}

pub struct Client {
    config: ClientConfig,
    /// `None` while disconnected (then `lost` says what to do) or closed.
    conn: Option<Conn>,
    welcome: Welcome,
    subs: BTreeMap<String, SubState>,
    queue: VecDeque<Delivery>,
    next_request_id: u32,
    rng: Rng,
    lost: Option<Lost>,
    /// When the current connection was made, and how many attempts it took:
    /// a connection that dies young keeps the backoff growing.
    connected_at: Instant,
    attempts_before: u32,
    closed: bool,
    /// The server said the token expired: no reconnect until `set_token`.
    token_expired: bool,
}

impl Client {
    /// Connects and completes the handshake. A server that refuses (GOAWAY
    /// ServerFull or Shutdown instead of WELCOME) or cannot be reached is
    /// tried again until `connect_retry_ms` has passed, then
    /// [`ClientError::GaveUp`]; with 0, the first failure is returned. Errors
    /// that retrying cannot fix (NotAuthorized, UnsupportedVersion, TLS, bad
    /// configuration) are returned at once.
    pub fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        Client::connect_observed(config, |_| {})
    }

    /// [`Client::connect`], telling `on_retry` about each wait before it
    /// happens (the attempt that follows, the failure, the delay), so the
    /// caller can show it.
    pub fn connect_observed(
        config: ClientConfig,
        mut on_retry: impl FnMut(&ConnectRetry<'_>),
    ) -> Result<Client, ClientError> {
        config
            .limits
            .validate()
            .map_err(ClientError::InvalidInput)?;
        let mut rng = Rng::seeded();
        let (conn, welcome) = connect_with_retry(&config, &mut rng, &mut on_retry, |addr| {
            Conn::open(addr, &config)
        })?;
        Ok(Client {
            config,
            conn: Some(conn),
            welcome,
            subs: BTreeMap::new(),
            queue: VecDeque::new(),
            next_request_id: 1,
            rng,
            lost: None,
            connected_at: Instant::now(),
            attempts_before: 0,
            closed: false,
            token_expired: false,
        })
    }

    /// The WELCOME of the current (or last) connection.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Replaces the token sent in HELLO from the next connection on. After
    /// [`ClientError::TokenExpired`], the next call then reconnects and
    /// resumes with it.
    pub fn set_token(&mut self, token: Vec<u8>) -> Result<(), ClientError> {
        ClientError::check_length("token", token.len(), self.config.limits.token_bytes_max)?;
        self.config.token = token;
        self.token_expired = false;
        Ok(())
    }

    /// `(epoch, last_seq)` the client would resume `topic` from: save it to
    /// resume with [`Start::Resume`] after the app restarts.
    pub fn resume_point(&self, topic: &str) -> Option<(u64, u64)> {
        self.subs.get(topic).map(|s| (s.epoch, s.last_seq))
    }

    /// Closes the connection; every later call fails with `Closed`.
    pub fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.frames.stream.tcp().shutdown(Shutdown::Both);
        }
        self.closed = true;
    }

    /// Publishes one event and waits for its PUBLISH_ACK. Events that
    /// arrive meanwhile are kept for [`Client::next`].
    ///
    /// Not retried if the connection drops before the ack: the error is
    /// returned, and the event may or may not have been published.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<PublishAck, ClientError> {
        self.check_topic(topic)?;
        let max = self.welcome.payload_bytes_max;
        if payload.len() as u64 > u64::from(max) {
            return Err(ClientError::InvalidInput(format!(
                "payload of {} bytes is over the server's {max}-byte limit",
                payload.len()
            )));
        }
        self.ensure_connected(None)?;
        let request_id = self.take_request_id();
        self.send(&Frame::Publish(Publish {
            request_id,
            topic: topic.as_bytes(),
            payload,
        }))?;
        let ack = self.await_answer(
            self.request_deadline(),
            "PUBLISH_ACK",
            |inbound| match inbound {
                Inbound::PublishAck(ack) if ack.request_id == request_id => Answer::Done(ack),
                other => Answer::NotOurs(other),
            },
        )?;
        status_ok(ack.status)?;
        Ok(ack)
    }

    /// Closes `topic` and waits for its TOPIC_CLOSED: the server deletes the
    /// topic's whole history, and every subscriber (this client too, if
    /// subscribed) gets [`Delivery::Closed`]. Returns the topic's last
    /// sequence when it was closed (0 if it had no events). Events that
    /// arrive meanwhile are kept for [`Client::next`].
    ///
    /// A non-zero status is [`ClientError::Refused`] (e.g. `StorageFailed`,
    /// `Overloaded`). Not retried if the connection drops before the answer;
    /// calling again is safe (closing a topic with no events answers 0).
    pub fn close_topic(&mut self, topic: &str) -> Result<u64, ClientError> {
        self.check_topic(topic)?;
        self.ensure_connected(None)?;
        let request_id = self.take_request_id();
        self.send(&Frame::TopicClose(TopicClose {
            request_id,
            topic: topic.as_bytes(),
        }))?;
        let closed =
            self.await_answer(
                self.request_deadline(),
                "TOPIC_CLOSED",
                |inbound| match inbound {
                    Inbound::TopicClosed(c) if c.request_id == request_id => Answer::Done(c),
                    other => Answer::NotOurs(other),
                },
            )?;
        status_ok(closed.status)?;
        Ok(closed.last_seq)
    }

    /// Reads the stored path of `player` (the `client_id` its phone sent in
    /// HELLO): every position with `client_ts_ms >= since_ms` (0: the whole
    /// path), collected from the PATH frames of the answer. Events that
    /// arrive meanwhile are kept for [`Client::next`].
    ///
    /// A non-zero status is [`ClientError::Refused`] (`StorageFailed`: the
    /// server keeps no paths or cannot read them; `Overloaded`: a query of
    /// this connection is still being answered). The whole answer must
    /// arrive within `request_timeout_ms`. Not retried if the connection
    /// drops meanwhile; calling again is safe (a query changes nothing).
    pub fn path(&mut self, player: &str, since_ms: u64) -> Result<PathAnswer, ClientError> {
        let max = self.config.limits.client_id_bytes_max;
        if player.is_empty() || player.len() > usize::from(max) {
            return Err(ClientError::InvalidInput(format!(
                "player {player:?} must be 1 to {max} bytes"
            )));
        }
        self.ensure_connected(None)?;
        let request_id = self.take_request_id();
        self.send(&Frame::PathQuery(PathQuery {
            request_id,
            since_ms,
            player: player.as_bytes(),
        }))?;
        let mut answer = PathAnswer {
            positions: Vec::new(),
            truncated: false,
            corrupt: false,
        };
        self.await_answer(self.request_deadline(), "PATH", |inbound| match inbound {
            Inbound::Path(p) if p.request_id == request_id => {
                if let Err(refused) = status_ok(p.status) {
                    return Answer::Done(Err(refused));
                }
                answer.positions.extend(p.positions);
                answer.corrupt |= p.flags & PATH_FLAG_CORRUPT != 0;
                if p.flags & PATH_FLAG_LAST != 0 {
                    answer.truncated = p.flags & PATH_FLAG_TRUNCATED != 0;
                    Answer::Done(Ok(()))
                } else {
                    Answer::Partial
                }
            }
            other => Answer::NotOurs(other),
        })??;
        Ok(answer)
    }

    /// Subscribes to `topic` and waits for SUBSCRIBED. Replayed events (for
    /// `From` / `Resume`) follow through [`Client::next`].
    pub fn subscribe(&mut self, topic: &str, start: Start) -> Result<OwnedSubscribed, ClientError> {
        self.check_topic(topic)?;
        if self.subs.contains_key(topic) {
            return Err(ClientError::InvalidInput(format!(
                "already subscribed to {topic}; unsubscribe first"
            )));
        }
        self.ensure_connected(None)?;
        let max = usize::from(self.welcome.subscriptions_max);
        if self.subs.len() >= max {
            return Err(ClientError::InvalidInput(format!(
                "the server allows {max} subscriptions per connection"
            )));
        }
        let (mode, epoch, last_seq) = match start {
            Start::Live => (StartMode::Live, 0, 0),
            Start::From(seq) => (StartMode::Resume, 0, seq.saturating_sub(1)),
            Start::Resume { epoch, last_seq } => (StartMode::Resume, epoch, last_seq),
        };
        self.send(&Frame::Subscribe(Subscribe {
            mode,
            epoch,
            last_seq,
            topic: topic.as_bytes(),
        }))?;
        let s = self.await_answer(
            self.request_deadline(),
            "SUBSCRIBED",
            |inbound| match inbound {
                Inbound::Subscribed(s) if s.topic == topic => Answer::Done(s),
                other => Answer::NotOurs(other),
            },
        )?;
        if s.status == SubscribeStatus::NotAuthorized {
            return Err(ClientError::Refused(ErrorCode::NotAuthorized as u16));
        }
        let state = state_after_subscribed(&s, mode, epoch, last_seq);
        self.subs.insert(s.topic.clone(), state);
        Ok(s)
    }

    /// Ends a subscription. No event of `topic` is delivered after this
    /// returns, even one already received. While disconnected this only
    /// forgets the topic (the next connection will not subscribe it).
    pub fn unsubscribe(&mut self, topic: &str) -> Result<(), ClientError> {
        if self.subs.remove(topic).is_none() {
            return Err(ClientError::InvalidInput(format!(
                "not subscribed to {topic}"
            )));
        }
        self.queue
            .retain(|d| !matches!(d, Delivery::Event(e) if e.topic == topic));
        if self.conn.is_none() {
            return Ok(());
        }
        self.send(&Frame::Unsubscribe {
            topic: topic.as_bytes(),
        })?;
        self.await_answer(
            self.request_deadline(),
            "UNSUBSCRIBED",
            |inbound| match inbound {
                Inbound::Unsubscribed(t) if t == topic => Answer::Done(()),
                other => Answer::NotOurs(other),
            },
        )
    }

    /// Sends a position fix. The server does not acknowledge it.
    pub fn send_position(&mut self, position: Position) -> Result<(), ClientError> {
        if position.validate().is_err() {
            return Err(ClientError::InvalidInput(format!(
                "position out of range: {position:?}"
            )));
        }
        self.ensure_connected(None)?;
        self.send(&Frame::Position(position))
    }

    /// Blocks until the next delivery. Reconnects (when configured) as
    /// often as needed; returns an error only when the client gives up.
    // Not `Iterator::next`: it blocks and can fail, and the name is the
    // one client ports use.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Delivery, ClientError> {
        loop {
            if let Some(d) = self.next_until(None)? {
                return Ok(d);
            }
        }
    }

    /// Like [`Client::next`], but returns `Ok(None)` after `timeout`. A
    /// reconnect attempt already started is finished first, so the call can
    /// overrun by up to `connect_timeout_ms` + `request_timeout_ms`.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Delivery>, ClientError> {
        self.next_until(Some(Instant::now() + timeout))
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Result<Option<Delivery>, ClientError> {
        loop {
            if let Some(d) = self.queue.pop_front() {
                return Ok(Some(d));
            }
            if !self.ensure_connected(deadline)? {
                return Ok(None);
            }
            // A reconnect queues its deliveries: hand them out before waiting.
            if !self.queue.is_empty() {
                continue;
            }
            match self.recv(deadline) {
                Ok(Some(inbound)) => self.handle_unsolicited(inbound),
                Ok(None) => return Ok(None),
                // `recv` has recorded the loss; the next turn reconnects.
                Err(e) if self.closed => return Err(e),
                Err(_) => {}
            }
        }
    }
}
