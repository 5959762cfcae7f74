//! What the client hands out: where a subscription starts ([`Start`]),
//! [`Delivery`] and the owned copies of the server's frames in it, and
//! [`PathAnswer`].

use crate::frame::*;
use std::fmt;

/// Where a new subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Only events published from now on.
    Live,
    /// From this sequence of the topic's current epoch, whatever it is
    /// (sends Resume with epoch 0 and `last_seq = seq - 1`).
    From(u64),
    /// Everything after `last_seq` of `epoch`, e.g. a point saved by the app.
    Resume { epoch: u64, last_seq: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedEvent {
    pub topic: String,
    pub seq: u64,
    pub epoch: u64,
    pub publish_ts_ns: u64,
    pub payload: Vec<u8>,
}

impl From<Event<'_>> for OwnedEvent {
    fn from(e: Event<'_>) -> OwnedEvent {
        OwnedEvent {
            topic: topic_string(e.topic),
            seq: e.seq,
            epoch: e.epoch,
            publish_ts_ns: e.publish_ts_ns,
            payload: e.payload.to_vec(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedSubscribed {
    pub topic: String,
    pub status: SubscribeStatus,
    pub epoch: u64,
    pub oldest_seq: u64,
    pub last_seq: u64,
}

impl From<Subscribed<'_>> for OwnedSubscribed {
    fn from(s: Subscribed<'_>) -> OwnedSubscribed {
        OwnedSubscribed {
            topic: topic_string(s.topic),
            status: s.status,
            epoch: s.epoch,
            oldest_seq: s.oldest_seq,
            last_seq: s.last_seq,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedResumePoint {
    pub topic: String,
    pub epoch: u64,
    pub last_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedGoAway {
    pub reason: GoAwayReason,
    pub retry_after_ms: u32,
    /// `host:port` to reconnect to; empty for "the same server".
    pub reconnect: String,
    pub resume: Vec<OwnedResumePoint>,
}

impl From<&GoAway<'_>> for OwnedGoAway {
    fn from(g: &GoAway<'_>) -> OwnedGoAway {
        OwnedGoAway {
            reason: g.reason,
            retry_after_ms: g.retry_after_ms,
            reconnect: String::from_utf8_lossy(g.reconnect).into_owned(),
            resume: g
                .resume
                .iter()
                .map(|p| OwnedResumePoint {
                    topic: topic_string(p.topic),
                    epoch: p.epoch,
                    last_seq: p.last_seq,
                })
                .collect(),
        }
    }
}

/// The reason in words, then its name: "server full (GOAWAY ServerFull)".
impl fmt::Display for OwnedGoAway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (GOAWAY {:?})",
            goaway_words(self.reason),
            self.reason
        )
    }
}

/// What a GOAWAY's reason means, for messages people read.
pub(super) fn goaway_words(reason: GoAwayReason) -> &'static str {
    match reason {
        GoAwayReason::Shutdown => "server shutting down",
        GoAwayReason::SlowConsumer => "reading too slowly for the server",
        GoAwayReason::ServerFull => "server full",
        GoAwayReason::TokenExpired => "token expired",
    }
}

/// The answer to [`Client::path`](super::Client::path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathAnswer {
    /// In stored order (the order they arrived at the server), which is not
    /// necessarily `client_ts_ms` order.
    pub positions: Vec<Position>,
    /// The server stopped at its limit: call again with `since_ms` = the
    /// last position's `client_ts_ms + 1` for the rest.
    pub truncated: bool,
    /// Some stored positions could not be read and are missing.
    pub corrupt: bool,
}

/// What [`Client::next`](super::Client::next) hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// An event of a subscribed topic, never one already delivered.
    Event(OwnedEvent),
    /// A subscription re-established after a reconnect. `status` other than
    /// `Ok` means events were lost (NotRecovered: delivery restarts at
    /// `oldest_seq`; EpochChanged: the topic's history was reset): reload
    /// whatever state the app derives from the topic.
    Subscribed(OwnedSubscribed),
    /// The connection was lost because of `reason` and a new one is up after
    /// `attempts` connection attempts. One `Subscribed` per topic follows.
    Reconnected { reason: String, attempts: u32 },
    /// The topic was closed (TOPIC_CLOSED): its history is deleted, the
    /// subscription has ended and no event of it follows. `last_seq` was
    /// its last sequence. The client no longer resumes it; events published
    /// to the same name later start a new history (subscribe again to get
    /// them).
    Closed { topic: String, last_seq: u64 },
}

/// Topics are checked ASCII by the decoder, so this never loses anything.
pub(super) fn topic_string(topic: &[u8]) -> String {
    String::from_utf8_lossy(topic).into_owned()
}
