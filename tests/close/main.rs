//! Closing a topic (protocol section 8) with real processes: every
//! subscriber on every shard is told after the topic's last event and hears
//! nothing more of it; the name starts a new history (a new epoch, from 1);
//! the deleted history stays deleted across a clean restart and a kill -9;
//! the CLI closes topics and `sub` ends on a close; a close pipelined after
//! publishes waits for them; and in async durability a close followed at
//! once by a new history is stored as exactly that new history.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod pipelined;
mod restart;
mod subscribers;

use std::time::Duration;

use cluecast::shard::topic_owner;
use cluecast_proto::{Frame, Publish, StartMode, SubscribeStatus, TopicClose};
use common::{RawClient, Server, TempDir};

/// How long any one expected frame may take before the test fails.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// A frame from the server, owned, with what the tests look at.
#[derive(Clone, Debug, PartialEq, Eq)]
enum In {
    Event {
        topic: String,
        seq: u64,
        epoch: u64,
        payload: String,
    },
    Closed {
        request_id: u32,
        status: u16,
        last_seq: u64,
        topic: String,
    },
    Ack {
        request_id: u32,
        status: u16,
        flags: u8,
        epoch: u64,
        seq: u64,
    },
    Subscribed {
        topic: String,
        status: SubscribeStatus,
        epoch: u64,
        oldest_seq: u64,
        last_seq: u64,
    },
    Pong(u64),
    Other(String),
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl In {
    fn of(frame: Frame<'_>) -> In {
        match frame {
            Frame::Event(e) => In::Event {
                topic: text(e.topic),
                seq: e.seq,
                epoch: e.epoch,
                payload: text(e.payload),
            },
            Frame::TopicClosed(c) => In::Closed {
                request_id: c.request_id,
                status: c.status,
                last_seq: c.last_seq,
                topic: text(c.topic),
            },
            Frame::PublishAck(a) => In::Ack {
                request_id: a.request_id,
                status: a.status,
                flags: a.flags,
                epoch: a.epoch,
                seq: a.seq,
            },
            Frame::Subscribed(s) => In::Subscribed {
                topic: text(s.topic),
                status: s.status,
                epoch: s.epoch,
                oldest_seq: s.oldest_seq,
                last_seq: s.last_seq,
            },
            Frame::Pong { nonce } => In::Pong(nonce),
            other => In::Other(format!("{other:?}")),
        }
    }
}

/// The next frame; fails the test if none comes within `FRAME_WAIT`.
fn next(c: &mut RawClient) -> In {
    c.stream.set_read_timeout(Some(FRAME_WAIT)).unwrap();
    c.recv(In::of).expect("the server closed the connection")
}

fn event(topic: &str, seq: u64, epoch: u64, payload: &str) -> In {
    In::Event {
        topic: topic.into(),
        seq,
        epoch,
        payload: payload.into(),
    }
}

fn closed(request_id: u32, last_seq: u64, topic: &str) -> In {
    In::Closed {
        request_id,
        status: 0,
        last_seq,
        topic: topic.into(),
    }
}

/// The first `{prefix}-{i}` whose owner among `shards` is `owner`.
fn owned_by(prefix: &str, owner: usize, shards: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|name| topic_owner(name.as_bytes(), shards) == owner)
        .unwrap()
}

fn publish_frame(request_id: u32, topic: &str, payload: &str, into: &mut Vec<u8>) {
    Frame::Publish(Publish {
        request_id,
        topic: topic.as_bytes(),
        payload: payload.as_bytes(),
    })
    .encode(into);
}

fn close_frame(request_id: u32, topic: &str, into: &mut Vec<u8>) {
    Frame::TopicClose(TopicClose {
        request_id,
        topic: topic.as_bytes(),
    })
    .encode(into);
}

fn send_bytes(c: &mut RawClient, bytes: &[u8]) {
    c.send_raw(bytes).expect("send");
}

fn subscribe(c: &mut RawClient, topic: &str, mode: StartMode, epoch: u64, last_seq: u64) -> In {
    c.send(&Frame::Subscribe(cluecast_proto::Subscribe {
        mode,
        epoch,
        last_seq,
        topic: topic.as_bytes(),
    }));
    next(c)
}

fn subscribed(topic: &str, status: SubscribeStatus, epoch: u64, oldest: u64, last: u64) -> In {
    In::Subscribed {
        topic: topic.into(),
        status,
        epoch,
        oldest_seq: oldest,
        last_seq: last,
    }
}

fn take_ack(c: &mut RawClient, request_id: u32) -> (u16, u8, u64, u64) {
    match next(c) {
        In::Ack {
            request_id: id,
            status,
            flags,
            epoch,
            seq,
        } if id == request_id => (status, flags, epoch, seq),
        other => panic!("expected the ack of request {request_id}, got {other:?}"),
    }
}
