//! Frames of every type with their fields' values in layout order, for
//! `layout.rs` to encode and walk: empty and long strings, zero and extreme
//! integers, positions and resume entries.

use cluecast_proto::*;

use super::Value;

fn int(v: impl Into<i128>) -> Value {
    Value::Int(v.into())
}

fn bytes(b: &[u8]) -> Value {
    Value::Bytes(b.to_vec())
}

/// Every sample, a frame and its fields' values.
pub fn all() -> Vec<(Frame<'static>, Vec<Value>)> {
    let long: &'static [u8] = Box::leak(vec![b'x'; 255].into_boxed_slice());
    let token: &'static [u8] = Box::leak(vec![b'k'; 4096].into_boxed_slice());
    let fix = Position {
        lat_e7: -900_000_000,
        lon_e7: 1_800_000_000,
        accuracy_cm: 10_000_000,
        client_ts_ms: u64::MAX,
    };
    let fixes: &'static [u8] = Box::leak(
        [fix, fix, fix]
            .iter()
            .flat_map(Position::to_bytes)
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let mut out = Vec::new();
    for (c, k) in [(&b""[..], &b""[..]), (long, token)] {
        out.push((
            Frame::Hello(Hello {
                version_min: 1,
                version_max: 65535,
                client_id: c,
                token: k,
            }),
            vec![bytes(b"CLUE"), int(1), int(65535), bytes(c), bytes(k)],
        ));
    }
    out.push((
        Frame::Welcome(Welcome {
            version: 1,
            heartbeat_ms: 30_000,
            idle_timeout_ms: u32::MAX,
            frame_bytes_max: 65_817,
            payload_bytes_max: 65_536,
            subscriptions_max: 64,
            topic_bytes_max: 255,
        }),
        [1, 30_000, u32::MAX as i128, 65_817, 65_536, 64, 255]
            .map(int)
            .to_vec(),
    ));
    for t in [&b"a"[..], long] {
        out.push((
            Frame::Subscribe(Subscribe {
                mode: StartMode::Resume,
                epoch: u64::MAX,
                last_seq: 7,
                topic: t,
            }),
            vec![int(1), int(u64::MAX), int(7), bytes(t)],
        ));
        out.push((
            Frame::Subscribed(Subscribed {
                status: SubscribeStatus::EpochChanged,
                epoch: 3,
                oldest_seq: 1,
                last_seq: u64::MAX,
                topic: t,
            }),
            vec![int(2), int(3), int(1), int(u64::MAX), bytes(t)],
        ));
        out.push((Frame::Unsubscribe { topic: t }, vec![bytes(t)]));
        out.push((Frame::Unsubscribed { topic: t }, vec![bytes(t)]));
        out.push((
            Frame::TopicClose(TopicClose {
                request_id: u32::MAX,
                topic: t,
            }),
            vec![int(u32::MAX), bytes(t)],
        ));
        out.push((
            Frame::TopicClosed(TopicClosed {
                request_id: 0,
                status: 15,
                last_seq: 9,
                topic: t,
            }),
            vec![int(0), int(15), int(9), bytes(t)],
        ));
        for p in [&b""[..], long] {
            out.push((
                Frame::Publish(Publish {
                    request_id: 5,
                    topic: t,
                    payload: p,
                }),
                vec![int(5), bytes(t), bytes(p)],
            ));
            out.push((
                Frame::Event(Event {
                    seq: 1,
                    epoch: 2,
                    publish_ts_ns: 3,
                    topic: t,
                    payload: p,
                }),
                vec![int(1), int(2), int(3), bytes(t), bytes(p)],
            ));
        }
    }
    out.push((
        Frame::PublishAck(PublishAck {
            request_id: 1,
            status: 13,
            flags: 1,
            epoch: 4,
            seq: 5,
        }),
        [1, 13, 1, 4, 5].map(int).to_vec(),
    ));
    out.push((
        Frame::Position(fix),
        vec![
            int(fix.lat_e7),
            int(fix.lon_e7),
            int(fix.accuracy_cm),
            int(fix.client_ts_ms),
        ],
    ));
    for p in [&b"p"[..], long] {
        out.push((
            Frame::PathQuery(PathQuery {
                request_id: 3,
                since_ms: 0,
                player: p,
            }),
            vec![int(3), int(0), bytes(p)],
        ));
    }
    for positions in [&b""[..], fixes] {
        out.push((
            Frame::Path(Path {
                request_id: 3,
                status: 0,
                flags: 3,
                positions,
            }),
            vec![int(3), int(0), int(3), bytes(positions)],
        ));
    }
    out.push((Frame::Ping { nonce: 0 }, vec![int(0)]));
    out.push((Frame::Pong { nonce: u64::MAX }, vec![int(u64::MAX)]));
    let resume: Vec<ResumePoint<'static>> = [&b"a"[..], long, b"hunt-42"]
        .iter()
        .enumerate()
        .map(|(i, topic)| ResumePoint {
            epoch: i as u64 + 1,
            last_seq: 100 + i as u64,
            topic,
        })
        .collect();
    for (reconnect, resume) in [(&b""[..], vec![]), (&b"10.0.0.2:7000"[..], resume)] {
        let entries = resume
            .iter()
            .map(|p| vec![int(p.epoch), int(p.last_seq), bytes(p.topic)])
            .collect();
        let values = vec![
            int(2),
            int(1900),
            bytes(reconnect),
            int(resume.len() as u16),
            Value::Entries(entries),
        ];
        out.push((
            Frame::GoAway(GoAway {
                reason: GoAwayReason::ServerFull,
                retry_after_ms: 1900,
                reconnect,
                resume,
            }),
            values,
        ));
    }
    for m in [&b""[..], long] {
        out.push((
            Frame::Error(ErrorFrame {
                code: 1,
                message: m,
            }),
            vec![int(1), bytes(m)],
        ));
    }
    out
}
