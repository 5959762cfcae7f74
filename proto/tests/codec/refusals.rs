//! Input the decoder refuses, and with which error: lengths over the limit
//! or 0, unknown frame types and enum values, bodies cut short or with bytes
//! after their last field, invalid topics, a peer that does not speak the
//! protocol; and the errors' codes and messages.

use super::*;

#[test]
fn oversized_length_is_refused_with_only_four_bytes() {
    let max = L.frame_bytes_max;
    assert_eq!(
        decode(&(max + 1).to_be_bytes(), &L),
        Err(DecodeError::FrameTooLarge { len: max + 1, max })
    );
    // An HTTP client talking to the port.
    let err = decode(b"GET / HTTP/1.1\r\n", &L).unwrap_err();
    assert_eq!(
        err,
        DecodeError::FrameTooLarge {
            len: 0x4745_5420,
            max
        }
    );
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    assert_eq!(
        err.to_string(),
        format!("frame of 1195725856 bytes is over the {max}-byte limit")
    );
    // Exactly at the limit is fine: more bytes needed.
    assert_eq!(decode(&max.to_be_bytes(), &L), Ok(None));
    assert_eq!(
        decode(&u32::MAX.to_be_bytes(), &L),
        Err(DecodeError::FrameTooLarge { len: u32::MAX, max })
    );
}

#[test]
fn zero_length_is_malformed() {
    assert!(malformed(&[0, 0, 0, 0]).contains("length is 0"));
}

#[test]
fn unknown_type_is_refused_before_the_body() {
    assert_eq!(
        decode(&[0, 0, 1, 0, 0x99], &L),
        Err(DecodeError::UnknownFrameType(0x99))
    );
    assert_eq!(
        decode(&[0, 0, 0, 1, 0x00], &L),
        Err(DecodeError::UnknownFrameType(0))
    );
    assert_eq!(
        DecodeError::UnknownFrameType(0x99).code(),
        ErrorCode::UnknownFrameType
    );
    // Only the length so far: nothing to say yet.
    assert_eq!(decode(&[0, 0, 1, 0], &L), Ok(None));
}

#[test]
fn truncated_body_inside_declared_length_is_malformed() {
    // EVENT needs 25+ body bytes; the length covers only 10 (type + 9).
    let buf = raw(0x12, &[0; 9]);
    assert_eq!(buf[..4], [0, 0, 0, 10]);
    assert_eq!(malformed(&buf), "EVENT body ends inside a field");
    // A str8 length pointing past the end of the body.
    let mut body = vec![0u8; 24];
    body.push(200);
    body.extend_from_slice(b"abc");
    assert_eq!(
        malformed(&raw(0x12, &body)),
        "EVENT body ends inside a field"
    );
    // HELLO cut inside the token.
    let mut hello = encode(&Frame::Hello(Hello {
        version_min: 1,
        version_max: 1,
        client_id: b"c",
        token: b"token",
    }));
    hello.pop();
    let n = hello.len() as u32 - 4;
    hello[..4].copy_from_slice(&n.to_be_bytes());
    assert_eq!(malformed(&hello), "HELLO body ends inside a field");
    // Empty bodies.
    for t in FrameType::ALL {
        let buf = raw(t as u8, &[]);
        assert!(
            matches!(decode(&buf, &L), Err(DecodeError::Malformed(_))),
            "{t}"
        );
    }
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut body = 7u64.to_be_bytes().to_vec();
    body.push(0);
    assert_eq!(
        malformed(&raw(0x30, &body)),
        "PING body has bytes after its last field"
    );
    assert_eq!(
        malformed(&raw(0x05, b"\x01ax")),
        "UNSUBSCRIBE body has bytes after its last field"
    );
    // A GOAWAY with one entry more than its count.
    let g = encode(&Frame::GoAway(GoAway {
        reason: GoAwayReason::Shutdown,
        retry_after_ms: 0,
        reconnect: b"",
        resume: vec![
            ResumePoint {
                epoch: 1,
                last_seq: 1,
                topic: b"t"
            };
            2
        ],
    }));
    let mut body = g[5..].to_vec();
    body[7] = 1; // count 2 -> 1
    assert_eq!(
        malformed(&raw(0x40, &body)),
        "GOAWAY body has bytes after its last field"
    );
}

#[test]
fn payload_rest_is_not_trailing() {
    let buf = raw(0x10, b"\x00\x00\x00\x01\x01tanything after the topic");
    let (f, _) = decode(&buf, &L).unwrap().unwrap();
    assert_eq!(
        f,
        Frame::Publish(Publish {
            request_id: 1,
            topic: b"t",
            payload: b"anything after the topic"
        })
    );
}

#[test]
fn bad_topics_are_invalid_topic() {
    for topic in [
        &b"a b"[..],
        b"a/b",
        b"caf\xc3\xa9",
        b"a\nb",
        b"",
        &[b'a'; 65],
    ] {
        let buf = encode(&Frame::Unsubscribe { topic });
        assert_eq!(
            decode(&buf, &L),
            Err(DecodeError::InvalidTopic),
            "{topic:?}"
        );
        let buf = encode(&Frame::Event(Event {
            seq: 1,
            epoch: 1,
            publish_ts_ns: 1,
            topic,
            payload: b"",
        }));
        assert_eq!(
            decode(&buf, &L),
            Err(DecodeError::InvalidTopic),
            "{topic:?}"
        );
        let buf = encode(&Frame::Subscribe(Subscribe {
            mode: StartMode::Live,
            epoch: 0,
            last_seq: 0,
            topic,
        }));
        assert_eq!(
            decode(&buf, &L),
            Err(DecodeError::InvalidTopic),
            "{topic:?}"
        );
        let buf = encode(&Frame::TopicClose(TopicClose {
            request_id: 1,
            topic,
        }));
        assert_eq!(
            decode(&buf, &L),
            Err(DecodeError::InvalidTopic),
            "{topic:?}"
        );
        let buf = encode(&Frame::TopicClosed(TopicClosed {
            request_id: 0,
            status: 0,
            last_seq: 1,
            topic,
        }));
        assert_eq!(
            decode(&buf, &L),
            Err(DecodeError::InvalidTopic),
            "{topic:?}"
        );
    }
    assert_eq!(DecodeError::InvalidTopic.code(), ErrorCode::InvalidTopic);
    // The limit is the configured one, up to the wire's 255.
    let long = [b'a'; 255];
    let buf = encode(&Frame::Unsubscribed { topic: &long });
    let wide = Limits {
        topic_bytes_max: 255,
        ..L
    };
    assert!(decode(&buf, &wide).unwrap().is_some());
    // Resume entries are topics too.
    let buf = encode(&Frame::GoAway(GoAway {
        reason: GoAwayReason::Shutdown,
        retry_after_ms: 0,
        reconnect: b"",
        resume: vec![ResumePoint {
            epoch: 1,
            last_seq: 1,
            topic: b"no spaces",
        }],
    }));
    assert_eq!(decode(&buf, &L), Err(DecodeError::InvalidTopic));
}

#[test]
fn wrong_magic_says_not_cluecast() {
    let mut buf = encode(&Frame::Hello(Hello {
        version_min: 1,
        version_max: 1,
        client_id: b"c",
        token: b"",
    }));
    buf[5..9].copy_from_slice(b"HTTP");
    let m = malformed(&buf);
    assert!(m.contains("not speak the cluecast protocol"), "{m}");
    assert!(DecodeError::Malformed(m)
        .to_string()
        .starts_with("malformed frame: "));
}

#[test]
fn unknown_enum_values_are_malformed() {
    let mut sub = encode(&Frame::Subscribe(Subscribe {
        mode: StartMode::Live,
        epoch: 0,
        last_seq: 0,
        topic: b"t",
    }));
    sub[5] = 2;
    assert_eq!(
        malformed(&sub),
        "SUBSCRIBE mode is not 0 (Live) or 1 (Resume)"
    );
    let mut subd = encode(&Frame::Subscribed(Subscribed {
        status: SubscribeStatus::Ok,
        epoch: 0,
        oldest_seq: 0,
        last_seq: 0,
        topic: b"t",
    }));
    subd[5] = 4;
    assert_eq!(malformed(&subd), "SUBSCRIBED status is not 0 to 3");
    let mut g = encode(&Frame::GoAway(GoAway {
        reason: GoAwayReason::Shutdown,
        retry_after_ms: 0,
        reconnect: b"",
        resume: vec![],
    }));
    g[5] = 0xff;
    assert_eq!(malformed(&g), "GOAWAY reason is not 0 to 3");
}

#[test]
fn decode_error_is_std_error() {
    fn takes(_: &dyn std::error::Error) {}
    takes(&DecodeError::InvalidTopic);
    assert!(DecodeError::InvalidTopic
        .to_string()
        .contains("invalid topic"));
}
