//! Checks the test vectors in docs/PROTOCOL.md against the codec, reading
//! the document itself: every vector must encode to exactly its bytes and
//! decode back to its frame, and every vector listed here must be in the
//! document (and the other way round).
//!
//! To regenerate the blocks after changing a vector here:
//! `cargo test -p cluecast-proto --test vectors -- --ignored --nocapture`.

mod doc;

use cluecast_proto::*;
use doc::{blocks, doc};

/// Every vector, in document order.
const NAMES: &[&str] = &[
    "hello",
    "welcome",
    "subscribe_live",
    "subscribe_resume",
    "subscribed",
    "subscribed_not_recovered",
    "unsubscribe",
    "unsubscribed",
    "publish",
    "publish_ack",
    "publish_ack_refused",
    "event",
    "topic_close",
    "topic_closed",
    "position",
    "path_query",
    "path",
    "ping",
    "pong",
    "goaway",
    "error",
];

/// The fix of the `position` vector (Sydney Opera House).
const OPERA_HOUSE: Position = Position {
    lat_e7: -338_567_844,
    lon_e7: 1_512_152_967,
    accuracy_cm: 500,
    client_ts_ms: 1_700_000_000_123,
};

/// A second fix, 5 s later (Sydney Harbour Bridge).
const HARBOUR_BRIDGE: Position = Position {
    lat_e7: -338_523_063,
    lon_e7: 1_512_107_871,
    accuracy_cm: 800,
    client_ts_ms: 1_700_000_005_123,
};

/// The positions of the `path` vector, as PATH carries them.
static PATH_POSITIONS: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    [OPERA_HOUSE, HARBOUR_BRIDGE]
        .iter()
        .flat_map(Position::to_bytes)
        .collect()
});

/// The frame each vector encodes.
fn expected(name: &str) -> Option<Frame<'static>> {
    Some(match name {
        "hello" => Frame::Hello(Hello {
            version_min: 1,
            version_max: 1,
            client_id: b"phone-1",
            token: b"secret",
        }),
        "welcome" => Frame::Welcome(Welcome {
            version: 1,
            heartbeat_ms: 30_000,
            idle_timeout_ms: 90_000,
            frame_bytes_max: 65_817,
            payload_bytes_max: 65_536,
            subscriptions_max: 64,
            topic_bytes_max: 64,
        }),
        "subscribe_live" => Frame::Subscribe(Subscribe {
            mode: StartMode::Live,
            epoch: 0,
            last_seq: 0,
            topic: b"game:42",
        }),
        "subscribe_resume" => Frame::Subscribe(Subscribe {
            mode: StartMode::Resume,
            epoch: 3,
            last_seq: 41,
            topic: b"game:42",
        }),
        "subscribed" => Frame::Subscribed(Subscribed {
            status: SubscribeStatus::Ok,
            epoch: 3,
            oldest_seq: 1,
            last_seq: 57,
            topic: b"game:42",
        }),
        "subscribed_not_recovered" => Frame::Subscribed(Subscribed {
            status: SubscribeStatus::NotRecovered,
            epoch: 3,
            oldest_seq: 20,
            last_seq: 57,
            topic: b"game:42",
        }),
        "unsubscribe" => Frame::Unsubscribe { topic: b"game:42" },
        "unsubscribed" => Frame::Unsubscribed { topic: b"game:42" },
        "publish" => Frame::Publish(Publish {
            request_id: 7,
            topic: b"game:42",
            payload: b"hi!",
        }),
        "publish_ack" => Frame::PublishAck(PublishAck {
            request_id: 7,
            status: 0,
            flags: 0,
            epoch: 3,
            seq: 58,
        }),
        "publish_ack_refused" => Frame::PublishAck(PublishAck {
            request_id: 8,
            status: ErrorCode::Overloaded as u16,
            flags: 0,
            epoch: 0,
            seq: 0,
        }),
        "event" => Frame::Event(Event {
            seq: 42,
            epoch: 3,
            publish_ts_ns: 1_700_000_000_123_456_789,
            topic: b"game:42",
            payload: b"hi!",
        }),
        "topic_close" => Frame::TopicClose(TopicClose {
            request_id: 11,
            topic: b"game:42",
        }),
        "topic_closed" => Frame::TopicClosed(TopicClosed {
            request_id: 11,
            status: 0,
            last_seq: 58,
            topic: b"game:42",
        }),
        "position" => Frame::Position(OPERA_HOUSE),
        "path_query" => Frame::PathQuery(PathQuery {
            request_id: 9,
            since_ms: 1_700_000_000_000,
            player: b"phone-1",
        }),
        "path" => Frame::Path(Path {
            request_id: 9,
            status: 0,
            flags: PATH_FLAG_LAST,
            positions: &PATH_POSITIONS,
        }),
        "ping" => Frame::Ping { nonce: 1 },
        "pong" => Frame::Pong { nonce: 1 },
        "goaway" => Frame::GoAway(GoAway {
            reason: GoAwayReason::Shutdown,
            retry_after_ms: 2_500,
            reconnect: b"10.0.0.2:7000",
            resume: vec![
                ResumePoint {
                    epoch: 3,
                    last_seq: 58,
                    topic: b"game:42",
                },
                ResumePoint {
                    epoch: 1,
                    last_seq: 9,
                    topic: b"chat",
                },
            ],
        }),
        "error" => Frame::Error(ErrorFrame {
            code: ErrorCode::InvalidTopic as u16,
            message: b"bad topic",
        }),
        _ => return None,
    })
}

#[test]
fn document_vectors_match_the_codec() {
    let vectors = blocks(&doc(), "vector");
    // A broken parser must not pass by finding nothing.
    assert_eq!(vectors.len(), 21, "number of vectors in docs/PROTOCOL.md");
    assert_eq!(NAMES.len(), 21);

    let found: Vec<&str> = vectors.iter().map(|v| v.name.as_str()).collect();
    for name in NAMES {
        assert!(
            found.contains(name),
            "vector {name} is missing from docs/PROTOCOL.md"
        );
    }
    for v in &vectors {
        assert_eq!(
            found.iter().filter(|n| **n == v.name).count(),
            1,
            "vector {} appears twice",
            v.name
        );
    }

    let limits = Limits::DEFAULT;
    let mut types = std::collections::BTreeSet::new();
    for v in &vectors {
        let frame = expected(&v.name).unwrap_or_else(|| {
            panic!(
                "vector {} (line {}) has no frame in tests/vectors.rs",
                v.name, v.line
            )
        });
        types.insert(frame.frame_type() as u8);

        let mut encoded = Vec::new();
        frame.encode(&mut encoded);
        assert_eq!(
            encoded, v.bytes,
            "vector {}: encode differs from the document",
            v.name
        );

        let (decoded, used) = decode(&v.bytes, &limits)
            .unwrap_or_else(|e| panic!("vector {}: {e}", v.name))
            .unwrap_or_else(|| panic!("vector {}: incomplete", v.name));
        assert_eq!(used, v.bytes.len(), "vector {}", v.name);
        assert_eq!(decoded, frame, "vector {}", v.name);
    }
    assert_eq!(
        types.len(),
        FrameType::ALL.len(),
        "every frame type has a vector"
    );
}

#[test]
fn parser_reads_continuation_lines() {
    let doc = "x\n<!-- vector: a -->\n```text\nframe: Ping\nhex: 00 00\n     00 09\n```\n";
    let v = blocks(doc, "vector");
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].name, "a");
    assert_eq!(v[0].bytes, [0, 0, 0, 9]);
}

/// Prints the document blocks for every vector (16 bytes per hex line).
#[test]
#[ignore]
fn print_vectors() {
    for name in NAMES {
        let frame = expected(name).unwrap();
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        println!(
            "{}",
            doc::block("vector", name, &format!("{frame:?}"), &bytes)
        );
    }
}
