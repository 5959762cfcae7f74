//! The size limits: client id, token, payload and GOAWAY resume count at
//! their limit and one past it, and the largest frames within the default
//! frame limit.

use super::*;

#[test]
fn client_id_and_token_limits() {
    let id64 = [b'i'; 64];
    let id65 = [b'i'; 65];
    let tok = vec![7u8; 4096];
    let tok_over = vec![7u8; 4097];
    let hello = |client_id: &[u8], token: &[u8]| {
        encode(&Frame::Hello(Hello {
            version_min: 1,
            version_max: 1,
            client_id,
            token,
        }))
    };
    assert!(decode(&hello(&id64, &tok), &L).unwrap().is_some());
    assert_eq!(
        malformed(&hello(&id65, b"")),
        "HELLO client_id is over the limit"
    );
    assert_eq!(
        malformed(&hello(b"", &tok_over)),
        "HELLO token is over the limit"
    );
}

#[test]
fn payload_limit() {
    let at = vec![0u8; 65_536];
    let over = vec![0u8; 65_537];
    let publish = |payload: &[u8]| {
        encode(&Frame::Publish(Publish {
            request_id: 1,
            topic: b"t",
            payload,
        }))
    };
    let event = |payload: &[u8]| {
        encode(&Frame::Event(Event {
            seq: 1,
            epoch: 1,
            publish_ts_ns: 0,
            topic: b"t",
            payload,
        }))
    };
    assert!(decode(&publish(&at), &L).unwrap().is_some());
    assert!(decode(&event(&at), &L).unwrap().is_some());
    let e = DecodeError::PayloadTooLarge {
        len: 65_537,
        max: 65_536,
    };
    assert_eq!(decode(&publish(&over), &L), Err(e.clone()));
    assert_eq!(decode(&event(&over), &L), Err(e.clone()));
    assert_eq!(e.code(), ErrorCode::PayloadTooLarge);
    assert_eq!(
        e.to_string(),
        "payload of 65537 bytes is over the 65536-byte limit"
    );
}

#[test]
fn largest_frames_fit_default_limits() {
    // A 255-byte topic needs a wider topic limit, but the frame limit
    // already covers it.
    let wide = Limits {
        topic_bytes_max: 255,
        client_id_bytes_max: 255,
        ..L
    };
    let topic = [b'a'; 255];
    let payload = vec![1u8; 65_536];
    let token = vec![2u8; 4096];
    for f in [
        Frame::Event(Event {
            seq: 1,
            epoch: 1,
            publish_ts_ns: 1,
            topic: &topic,
            payload: &payload,
        }),
        Frame::Publish(Publish {
            request_id: 1,
            topic: &topic,
            payload: &payload,
        }),
        Frame::Hello(Hello {
            version_min: 1,
            version_max: 1,
            client_id: &topic,
            token: &token,
        }),
        Frame::Subscribed(Subscribed {
            status: SubscribeStatus::Ok,
            epoch: 1,
            oldest_seq: 1,
            last_seq: 1,
            topic: &topic,
        }),
        Frame::TopicClosed(TopicClosed {
            request_id: 1,
            status: 0,
            last_seq: 1,
            topic: &topic,
        }),
    ] {
        let buf = encode(&f);
        assert!(buf.len() - 4 <= L.frame_bytes_max as usize);
        assert_eq!(decode(&buf, &wide).unwrap().unwrap().0, f);
    }
}

#[test]
fn goaway_count_limit() {
    // 1024 entries decode (with a frame limit that fits them)...
    let resume = vec![
        ResumePoint {
            epoch: 1,
            last_seq: 2,
            topic: b"t"
        };
        1024
    ];
    let buf = encode(&Frame::GoAway(GoAway {
        reason: GoAwayReason::SlowConsumer,
        retry_after_ms: 10,
        reconnect: b"h:1",
        resume,
    }));
    let big = Limits {
        frame_bytes_max: 1 << 20,
        ..L
    };
    let Frame::GoAway(g) = decode(&buf, &big).unwrap().unwrap().0 else {
        panic!()
    };
    assert_eq!(g.resume.len(), 1024);
    // ... 1025 do not, and the count alone is enough to say so.
    let mut body = vec![0u8, 0, 0, 0, 0, 0];
    body.extend_from_slice(&1025u16.to_be_bytes());
    assert_eq!(
        malformed(&raw(0x40, &body)),
        "GOAWAY resume count is over 1024"
    );
    // A count the body cannot hold is malformed, not a huge allocation.
    let mut body = vec![0u8, 0, 0, 0, 0, 0];
    body.extend_from_slice(&1024u16.to_be_bytes());
    assert_eq!(
        malformed(&raw(0x40, &body)),
        "GOAWAY body ends inside a field"
    );
}
