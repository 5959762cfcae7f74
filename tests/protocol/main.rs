//! docs/PROTOCOL.md checked against a real `cluecast run`: every client
//! frame, and every server-only frame sent by a client, in each state the
//! document describes and with the boundary values it states, gets exactly
//! the answer the document promises: the frame and its fields, the error
//! code, and whether the connection stays open. Section numbers in the
//! cases and test comments are the document's.
//!
//! "Stays open" is proven by a PING with a fresh nonce answered by its
//! PONG; "closed" by the ERROR (or GOAWAY) followed by EOF.

#[path = "../common/mod.rs"]
mod common;

mod frames;
mod handshake;
mod lifecycle;
mod memory;
mod paths;
mod publish;
mod subscribe;

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluecast_proto::{
    decode, ErrorCode, ErrorFrame, Event, Frame, FrameType, GoAway, GoAwayReason, Hello, Limits,
    Path, PathQuery, Position, Publish, PublishAck, ResumePoint, StartMode, Subscribe,
    SubscribeStatus, Subscribed, TopicClose, TopicClosed, Welcome, ACK_FLAG_DURABLE,
    PATH_FLAG_LAST,
};
use common::{RawClient, Server};

/// Every server here runs one shard, whatever the host: a connection then
/// receives frames in the order the server handled what caused them, so a
/// PING answered with no EVENT before its PONG proves no EVENT is coming.
fn start(args: &[&str]) -> Server {
    let mut all = vec!["--shards", "1"];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// The WELCOME of a server started with default settings (section 11).
const DEFAULT_WELCOME: Welcome = Welcome {
    version: 1,
    heartbeat_ms: 30_000,
    idle_timeout_ms: 90_000,
    frame_bytes_max: 65_817,
    payload_bytes_max: 65_536,
    subscriptions_max: 64,
    topic_bytes_max: 64,
};

// ---- frames, encoded by the codec ---------------------------------------

fn enc(frame: &Frame<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    frame.encode(&mut bytes);
    bytes
}

fn hello(version_min: u16, version_max: u16, client_id: &[u8], token: &[u8]) -> Vec<u8> {
    enc(&Frame::Hello(Hello {
        version_min,
        version_max,
        client_id,
        token,
    }))
}

fn subscribe(mode: StartMode, epoch: u64, last_seq: u64, topic: &[u8]) -> Vec<u8> {
    enc(&Frame::Subscribe(Subscribe {
        mode,
        epoch,
        last_seq,
        topic,
    }))
}

fn live(topic: &[u8]) -> Vec<u8> {
    subscribe(StartMode::Live, 0, 0, topic)
}

fn resume(epoch: u64, last_seq: u64, topic: &[u8]) -> Vec<u8> {
    subscribe(StartMode::Resume, epoch, last_seq, topic)
}

fn publish(request_id: u32, topic: &[u8], payload: &[u8]) -> Vec<u8> {
    enc(&Frame::Publish(Publish {
        request_id,
        topic,
        payload,
    }))
}

fn topic_close(request_id: u32, topic: &[u8]) -> Vec<u8> {
    enc(&Frame::TopicClose(TopicClose { request_id, topic }))
}

fn position(lat_e7: i32, lon_e7: i32, accuracy_cm: u32, client_ts_ms: u64) -> Vec<u8> {
    enc(&Frame::Position(Position {
        lat_e7,
        lon_e7,
        accuracy_cm,
        client_ts_ms,
    }))
}

fn path_query(request_id: u32, since_ms: u64, player: &[u8]) -> Vec<u8> {
    enc(&Frame::PathQuery(PathQuery {
        request_id,
        since_ms,
        player,
    }))
}

/// `bytes` changed by `edit`, with the length prefix then set to what
/// follows it: a body made too long or too short on purpose.
fn reframed(mut bytes: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    edit(&mut bytes);
    let len = u32::try_from(bytes.len() - 4).unwrap();
    bytes[..4].copy_from_slice(&len.to_be_bytes());
    bytes
}

/// `bytes` with the byte at `offset` replaced, the length prefix kept.
fn poked(mut bytes: Vec<u8>, offset: usize, value: u8) -> Vec<u8> {
    bytes[offset] = value;
    bytes
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// One frame of every type only the server sends (section 1): a client
/// sending any of them gets `UnexpectedFrame`.
fn server_only_frames() -> Vec<Vec<u8>> {
    let topic = b"game:42";
    let fix = Position {
        lat_e7: -338_567_844,
        lon_e7: 1_512_152_967,
        accuracy_cm: 500,
        client_ts_ms: 1_700_000_000_123,
    };
    vec![
        enc(&Frame::Welcome(DEFAULT_WELCOME)),
        enc(&Frame::Subscribed(Subscribed {
            status: SubscribeStatus::Ok,
            epoch: 3,
            oldest_seq: 1,
            last_seq: 57,
            topic,
        })),
        enc(&Frame::Unsubscribed { topic }),
        enc(&Frame::PublishAck(PublishAck {
            request_id: 7,
            status: 0,
            flags: ACK_FLAG_DURABLE,
            epoch: 3,
            seq: 58,
        })),
        enc(&Frame::Event(Event {
            seq: 42,
            epoch: 3,
            publish_ts_ns: 1_700_000_000_123_456_789,
            topic,
            payload: b"hi!",
        })),
        enc(&Frame::TopicClosed(TopicClosed {
            request_id: 11,
            status: 0,
            last_seq: 58,
            topic,
        })),
        enc(&Frame::Path(Path {
            request_id: 9,
            status: 0,
            flags: PATH_FLAG_LAST,
            positions: &fix.to_bytes(),
        })),
        enc(&Frame::GoAway(GoAway {
            reason: GoAwayReason::Shutdown,
            retry_after_ms: 2_500,
            reconnect: b"10.0.0.2:7000",
            resume: vec![ResumePoint {
                epoch: 3,
                last_seq: 58,
                topic,
            }],
        })),
        enc(&Frame::Error(ErrorFrame {
            code: ErrorCode::InvalidTopic as u16,
            message: b"bad topic",
        })),
    ]
}

/// One valid frame of every type a client sends, HELLO aside.
fn client_frames() -> Vec<Vec<u8>> {
    vec![
        subscribe(StartMode::Live, 0, 0, b"game:42"),
        enc(&Frame::Unsubscribe { topic: b"game:42" }),
        publish(7, b"game:42", b"hi!"),
        topic_close(11, b"game:42"),
        position(-338_567_844, 1_512_152_967, 500, 1_700_000_000_123),
        path_query(9, 0, b"phone-1"),
        enc(&Frame::Ping { nonce: 1 }),
        enc(&Frame::Pong { nonce: 1 }),
    ]
}

/// The PROTOCOL.md name of an encoded frame's type.
fn type_name(bytes: &[u8]) -> &'static str {
    FrameType::from_u8(bytes[4]).map_or("unknown", FrameType::name)
}

// ---- answers -------------------------------------------------------------

/// The frames a test looks at, owned (a decoded frame borrows the buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Subscribed {
        status: SubscribeStatus,
        epoch: u64,
        oldest_seq: u64,
        last_seq: u64,
        topic: Vec<u8>,
    },
    Unsubscribed(Vec<u8>),
    Ack(PublishAck),
    Event {
        seq: u64,
        epoch: u64,
        publish_ts_ns: u64,
        topic: Vec<u8>,
        payload: Vec<u8>,
    },
    TopicClosed {
        request_id: u32,
        status: u16,
        last_seq: u64,
        topic: Vec<u8>,
    },
    Path {
        request_id: u32,
        status: u16,
        flags: u8,
        positions: Vec<Position>,
    },
    Other(String),
}

impl Got {
    fn of(frame: &Frame<'_>) -> Got {
        match frame {
            Frame::Subscribed(s) => Got::Subscribed {
                status: s.status,
                epoch: s.epoch,
                oldest_seq: s.oldest_seq,
                last_seq: s.last_seq,
                topic: s.topic.to_vec(),
            },
            Frame::Unsubscribed { topic } => Got::Unsubscribed(topic.to_vec()),
            Frame::PublishAck(a) => Got::Ack(*a),
            Frame::Event(e) => Got::Event {
                seq: e.seq,
                epoch: e.epoch,
                publish_ts_ns: e.publish_ts_ns,
                topic: e.topic.to_vec(),
                payload: e.payload.to_vec(),
            },
            Frame::TopicClosed(t) => Got::TopicClosed {
                request_id: t.request_id,
                status: t.status,
                last_seq: t.last_seq,
                topic: t.topic.to_vec(),
            },
            Frame::Path(p) => Got::Path {
                request_id: p.request_id,
                status: p.status,
                flags: p.flags,
                positions: p.positions().collect(),
            },
            Frame::Error(e) => Got::Other(format!(
                "ERROR {} {:?}",
                ErrorCode::name_of(e.code),
                String::from_utf8_lossy(e.message)
            )),
            other => Got::Other(format!("{other:?}")),
        }
    }

    /// (seq, epoch, payload) of an EVENT; panics on anything else.
    fn event(self) -> (u64, u64, Vec<u8>) {
        match self {
            Got::Event {
                seq,
                epoch,
                payload,
                ..
            } => (seq, epoch, payload),
            other => panic!("expected EVENT, got {other:?}"),
        }
    }
}

/// The next frame; panics on EOF.
fn next(c: &mut RawClient) -> Got {
    c.recv(|f| Got::of(&f))
        .expect("the server closed the connection")
}

/// Sends `bytes` and returns the next frame, which must be SUBSCRIBED
/// (section 3.4: before any EVENT of the subscription), as (status, epoch,
/// oldest_seq, last_seq).
fn subscribed(c: &mut RawClient, bytes: &[u8]) -> (SubscribeStatus, u64, u64, u64) {
    c.send_raw(bytes).unwrap();
    match next(c) {
        Got::Subscribed {
            status,
            epoch,
            oldest_seq,
            last_seq,
            ..
        } => (status, epoch, oldest_seq, last_seq),
        other => panic!("expected SUBSCRIBED first, got {other:?}"),
    }
}

/// The sequence numbers of the next `n` frames, which must be EVENTs.
fn seqs(c: &mut RawClient, n: usize) -> Vec<u64> {
    (0..n).map(|_| next(c).event().0).collect()
}

/// Publishes and returns the PUBLISH_ACK, which must be the next frame.
fn ack(c: &mut RawClient, request_id: u32, topic: &[u8], payload: &[u8]) -> PublishAck {
    c.send_raw(&publish(request_id, topic, payload)).unwrap();
    match next(c) {
        Got::Ack(a) if a.request_id == request_id => a,
        other => panic!("expected PUBLISH_ACK {request_id}, got {other:?}"),
    }
}

/// A published event's (epoch, seq); panics unless the ack says published.
fn published(c: &mut RawClient, topic: &[u8], payload: &[u8]) -> (u64, u64) {
    let a = ack(c, 1, topic, payload);
    assert_eq!(a.status, 0, "PUBLISH refused: {a:?}");
    (a.epoch, a.seq)
}

/// Connects and completes the handshake as `client_id`.
fn open_as(addr: SocketAddr, client_id: &str) -> RawClient {
    let mut c = RawClient::connect(addr);
    c.send_raw(&hello(1, 1, client_id.as_bytes(), b"")).unwrap();
    match c.recv(|f| matches!(f, Frame::Welcome(_))) {
        Some(true) => c,
        _ => panic!("no WELCOME"),
    }
}

fn open(addr: SocketAddr) -> RawClient {
    open_as(addr, "protocol-test")
}

/// ERROR with `code`, then EOF within a couple of seconds and nothing else.
fn expect_error(c: &mut RawClient, code: ErrorCode) {
    let (got, what) = c
        .recv(|f| match f {
            Frame::Error(e) => (
                Some(e.code),
                format!(
                    "ERROR {} {:?}",
                    ErrorCode::name_of(e.code),
                    String::from_utf8_lossy(e.message)
                ),
            ),
            other => (None, format!("{other:?}")),
        })
        .expect("the server closed without an ERROR");
    assert_eq!(got, Some(code as u16), "got {what}, expected ERROR {code}");
    assert!(
        c.closed_within(Duration::from_secs(2)),
        "the connection stays open after {what}"
    );
    let after = format!("{:?}", c.buffered_frames());
    assert_eq!(after, "[]", "frames after the ERROR");
}

/// Proves the connection open, with nothing waiting on it: a PING with a
/// fresh nonce is answered by its PONG, and no frame comes before it.
fn assert_open(c: &mut RawClient) {
    static NONCE: AtomicU64 = AtomicU64::new(0x5eed_0000_0000_0001);
    let nonce = NONCE.fetch_add(1, Ordering::Relaxed);
    c.send_raw(&enc(&Frame::Ping { nonce }))
        .expect("PING not sent: the connection is closed");
    let got = c
        .recv(|f| match f {
            Frame::Pong { nonce: n } if n == nonce => None,
            other => Some(Got::of(&other)),
        })
        .expect("the connection closed instead of answering PING");
    assert_eq!(got, None, "a frame came before the PONG");
}

// ---- tables of cases -----------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum State {
    /// Connected, no HELLO sent.
    BeforeHello,
    /// WELCOME received.
    Open,
}

enum Expect {
    /// ERROR with this code, then the server closes.
    Error(ErrorCode),
    /// This frame (encoded), then the connection stays open.
    Answer(Vec<u8>),
    /// No answer; the connection stays open.
    Silence,
}

struct Case {
    /// The sections of PROTOCOL.md that promise the answer.
    section: &'static str,
    state: State,
    what: String,
    send: Vec<u8>,
    expect: Expect,
}

/// The answer `frame`, then the connection stays open.
fn answer(frame: Frame<'_>) -> Expect {
    Expect::Answer(enc(&frame))
}

/// SUBSCRIBED for a topic without events: no epoch, nothing held, no
/// sequence yet (section 3.4).
fn no_events(status: SubscribeStatus, topic: &[u8]) -> Expect {
    answer(Frame::Subscribed(Subscribed {
        status,
        epoch: 0,
        oldest_seq: 0,
        last_seq: 0,
        topic,
    }))
}

fn case(
    section: &'static str,
    state: State,
    what: impl Into<String>,
    send: Vec<u8>,
    expect: Expect,
) -> Case {
    Case {
        section,
        state,
        what: what.into(),
        send,
        expect,
    }
}

/// Runs each case on a connection of its own, then fails listing every case
/// whose answer is not the one PROTOCOL.md promises.
fn run_cases(addr: SocketAddr, cases: &[Case]) {
    let failed: Vec<String> = cases
        .iter()
        .filter(|case| catch_unwind(AssertUnwindSafe(|| run_case(addr, case))).is_err())
        .map(|case| format!("[{}] {:?}: {}", case.section, case.state, case.what))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} cases are not answered as PROTOCOL.md says (details above):\n  {}",
        failed.len(),
        cases.len(),
        failed.join("\n  ")
    );
}

fn run_case(addr: SocketAddr, case: &Case) {
    let mut c = match case.state {
        State::BeforeHello => RawClient::connect(addr),
        State::Open => open(addr),
    };
    c.send_raw(&case.send).unwrap();
    match &case.expect {
        Expect::Error(code) => expect_error(&mut c, *code),
        Expect::Answer(want) => {
            let got = c
                .recv(|f| enc(&f))
                .expect("the server closed instead of answering");
            let show = |b: &[u8]| match decode(b, &Limits::DEFAULT) {
                Ok(Some((frame, _))) => format!("{frame:?}"),
                other => format!("{other:?}"),
            };
            assert!(got == *want, "got {}, expected {}", show(&got), show(want));
            assert_open(&mut c);
        }
        Expect::Silence => assert_open(&mut c),
    }
}
