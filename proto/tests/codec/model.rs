//! An owned model of every frame, so proptest can generate the data a
//! borrowed `Frame` points into, and the strategies that generate it.

use cluecast_proto::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
pub(super) enum Model {
    Hello {
        vmin: u16,
        vmax: u16,
        client_id: Vec<u8>,
        token: Vec<u8>,
    },
    Welcome(Welcome),
    Subscribe {
        mode: StartMode,
        epoch: u64,
        last_seq: u64,
        topic: Vec<u8>,
    },
    Subscribed {
        status: SubscribeStatus,
        epoch: u64,
        oldest_seq: u64,
        last_seq: u64,
        topic: Vec<u8>,
    },
    Unsubscribe(Vec<u8>),
    Unsubscribed(Vec<u8>),
    Publish {
        request_id: u32,
        topic: Vec<u8>,
        payload: Vec<u8>,
    },
    PublishAck(PublishAck),
    Event {
        seq: u64,
        epoch: u64,
        publish_ts_ns: u64,
        topic: Vec<u8>,
        payload: Vec<u8>,
    },
    TopicClose {
        request_id: u32,
        topic: Vec<u8>,
    },
    TopicClosed {
        request_id: u32,
        status: u16,
        last_seq: u64,
        topic: Vec<u8>,
    },
    Position(Position),
    PathQuery {
        request_id: u32,
        since_ms: u64,
        player: Vec<u8>,
    },
    Path {
        request_id: u32,
        status: u16,
        flags: u8,
        positions: Vec<u8>,
    },
    Ping(u64),
    Pong(u64),
    GoAway {
        reason: GoAwayReason,
        retry_after_ms: u32,
        reconnect: Vec<u8>,
        resume: Vec<(u64, u64, Vec<u8>)>,
    },
    Error {
        code: u16,
        message: Vec<u8>,
    },
}

impl Model {
    pub(super) fn frame(&self) -> Frame<'_> {
        match self {
            Model::Hello {
                vmin,
                vmax,
                client_id,
                token,
            } => Frame::Hello(Hello {
                version_min: *vmin,
                version_max: *vmax,
                client_id,
                token,
            }),
            Model::Welcome(w) => Frame::Welcome(*w),
            Model::Subscribe {
                mode,
                epoch,
                last_seq,
                topic,
            } => Frame::Subscribe(Subscribe {
                mode: *mode,
                epoch: *epoch,
                last_seq: *last_seq,
                topic,
            }),
            Model::Subscribed {
                status,
                epoch,
                oldest_seq,
                last_seq,
                topic,
            } => Frame::Subscribed(Subscribed {
                status: *status,
                epoch: *epoch,
                oldest_seq: *oldest_seq,
                last_seq: *last_seq,
                topic,
            }),
            Model::Unsubscribe(topic) => Frame::Unsubscribe { topic },
            Model::Unsubscribed(topic) => Frame::Unsubscribed { topic },
            Model::Publish {
                request_id,
                topic,
                payload,
            } => Frame::Publish(Publish {
                request_id: *request_id,
                topic,
                payload,
            }),
            Model::PublishAck(a) => Frame::PublishAck(*a),
            Model::Event {
                seq,
                epoch,
                publish_ts_ns,
                topic,
                payload,
            } => Frame::Event(Event {
                seq: *seq,
                epoch: *epoch,
                publish_ts_ns: *publish_ts_ns,
                topic,
                payload,
            }),
            Model::TopicClose { request_id, topic } => Frame::TopicClose(TopicClose {
                request_id: *request_id,
                topic,
            }),
            Model::TopicClosed {
                request_id,
                status,
                last_seq,
                topic,
            } => Frame::TopicClosed(TopicClosed {
                request_id: *request_id,
                status: *status,
                last_seq: *last_seq,
                topic,
            }),
            Model::Position(p) => Frame::Position(*p),
            Model::PathQuery {
                request_id,
                since_ms,
                player,
            } => Frame::PathQuery(PathQuery {
                request_id: *request_id,
                since_ms: *since_ms,
                player,
            }),
            Model::Path {
                request_id,
                status,
                flags,
                positions,
            } => Frame::Path(Path {
                request_id: *request_id,
                status: *status,
                flags: *flags,
                positions,
            }),
            Model::Ping(nonce) => Frame::Ping { nonce: *nonce },
            Model::Pong(nonce) => Frame::Pong { nonce: *nonce },
            Model::GoAway {
                reason,
                retry_after_ms,
                reconnect,
                resume,
            } => Frame::GoAway(GoAway {
                reason: *reason,
                retry_after_ms: *retry_after_ms,
                reconnect,
                resume: resume
                    .iter()
                    .map(|(epoch, last_seq, topic)| ResumePoint {
                        epoch: *epoch,
                        last_seq: *last_seq,
                        topic,
                    })
                    .collect(),
            }),
            Model::Error { code, message } => Frame::Error(ErrorFrame {
                code: *code,
                message,
            }),
        }
    }
}

const TOPIC_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-";

fn topic() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(TOPIC_CHARS), 1..=64)
}

pub(super) fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

fn position() -> impl Strategy<Value = Position> {
    any::<(i32, i32, u32, u64)>().prop_map(|(lat_e7, lon_e7, accuracy_cm, client_ts_ms)| Position {
        lat_e7,
        lon_e7,
        accuracy_cm,
        client_ts_ms,
    })
}

pub(super) fn model() -> impl Strategy<Value = Model> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), bytes(64), bytes(600)).prop_map(
            |(vmin, vmax, client_id, token)| Model::Hello {
                vmin,
                vmax,
                client_id,
                token
            }
        ),
        (any::<(u16, u32, u32, u32, u32, u16, u8)>()).prop_map(|(a, b, c, d, e, f, g)| {
            Model::Welcome(Welcome {
                version: a,
                heartbeat_ms: b,
                idle_timeout_ms: c,
                frame_bytes_max: d,
                payload_bytes_max: e,
                subscriptions_max: f,
                topic_bytes_max: g,
            })
        }),
        (
            prop::sample::select(vec![StartMode::Live, StartMode::Resume]),
            any::<u64>(),
            any::<u64>(),
            topic()
        )
            .prop_map(|(mode, epoch, last_seq, topic)| Model::Subscribe {
                mode,
                epoch,
                last_seq,
                topic
            }),
        (
            prop::sample::select(vec![
                SubscribeStatus::Ok,
                SubscribeStatus::NotRecovered,
                SubscribeStatus::EpochChanged
            ]),
            any::<(u64, u64, u64)>(),
            topic()
        )
            .prop_map(
                |(status, (epoch, oldest_seq, last_seq), topic)| Model::Subscribed {
                    status,
                    epoch,
                    oldest_seq,
                    last_seq,
                    topic
                }
            ),
        topic().prop_map(Model::Unsubscribe),
        topic().prop_map(Model::Unsubscribed),
        (any::<u32>(), topic(), bytes(1000)).prop_map(|(request_id, topic, payload)| {
            Model::Publish {
                request_id,
                topic,
                payload,
            }
        }),
        any::<(u32, u16, u8, u64, u64)>().prop_map(|(request_id, status, flags, epoch, seq)| {
            Model::PublishAck(PublishAck {
                request_id,
                status,
                flags,
                epoch,
                seq,
            })
        }),
        (any::<(u64, u64, u64)>(), topic(), bytes(1000)).prop_map(
            |((seq, epoch, publish_ts_ns), topic, payload)| Model::Event {
                seq,
                epoch,
                publish_ts_ns,
                topic,
                payload
            }
        ),
        (any::<u32>(), topic())
            .prop_map(|(request_id, topic)| Model::TopicClose { request_id, topic }),
        (any::<(u32, u16, u64)>(), topic()).prop_map(|((request_id, status, last_seq), topic)| {
            Model::TopicClosed {
                request_id,
                status,
                last_seq,
                topic,
            }
        }),
        position().prop_map(Model::Position),
        (
            any::<u32>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 1..=64)
        )
            .prop_map(|(request_id, since_ms, player)| Model::PathQuery {
                request_id,
                since_ms,
                player
            }),
        (
            any::<(u32, u16, u8)>(),
            prop::collection::vec(position(), 0..8)
        )
            .prop_map(|((request_id, status, flags), positions)| Model::Path {
                request_id,
                status,
                flags,
                positions: positions.iter().flat_map(Position::to_bytes).collect(),
            }),
        any::<u64>().prop_map(Model::Ping),
        any::<u64>().prop_map(Model::Pong),
        (
            prop::sample::select(vec![
                GoAwayReason::Shutdown,
                GoAwayReason::SlowConsumer,
                GoAwayReason::ServerFull
            ]),
            any::<u32>(),
            bytes(255),
            prop::collection::vec((any::<u64>(), any::<u64>(), topic()), 0..8)
        )
            .prop_map(
                |(reason, retry_after_ms, reconnect, resume)| Model::GoAway {
                    reason,
                    retry_after_ms,
                    reconnect,
                    resume
                }
            ),
        (any::<u16>(), bytes(255)).prop_map(|(code, message)| Model::Error { code, message }),
    ]
}
