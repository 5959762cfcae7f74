//! The codec's unit tests: limits, topics, error texts, enum tables,
//! positions, PATH records and the encoder's refusals.

use super::*;

#[test]
fn default_limits_are_consistent() {
    assert_eq!(Limits::default(), Limits::DEFAULT);
    assert_eq!(Limits::DEFAULT.frame_bytes_max, 281 + 65_536);
    Limits::DEFAULT.validate().unwrap();
}

#[test]
fn frame_bytes_for_covers_the_largest_frames() {
    // Small payloads: SUBSCRIBED with a 255-byte topic is the largest frame.
    assert_eq!(Limits::frame_bytes_for(0, 0), 282);
    // Large tokens: HELLO dominates.
    assert_eq!(Limits::frame_bytes_for(0, 60_000), 267 + 60_000);
    assert_eq!(Limits::frame_bytes_for(u32::MAX, 0), u32::MAX);

    // Check the arithmetic against the encoder.
    let topic = [b'a'; 255];
    let payload = vec![0u8; 1000];
    let event = Frame::Event(Event {
        seq: 1,
        epoch: 1,
        publish_ts_ns: 1,
        topic: &topic,
        payload: &payload,
    });
    assert_eq!(
        event.encoded_len() - 4,
        Limits::frame_bytes_for(1000, 0) as usize
    );
    let token = vec![0u8; 5000];
    let hello = Frame::Hello(Hello {
        version_min: 1,
        version_max: 1,
        client_id: &topic,
        token: &token,
    });
    assert_eq!(
        hello.encoded_len() - 4,
        Limits::frame_bytes_for(0, 5000) as usize
    );
    let subscribed = Frame::Subscribed(Subscribed {
        status: SubscribeStatus::Ok,
        epoch: 1,
        oldest_seq: 1,
        last_seq: 1,
        topic: &topic,
    });
    assert_eq!(
        subscribed.encoded_len() - 4,
        Limits::frame_bytes_for(0, 0) as usize
    );
}

#[test]
fn validate_names_the_field() {
    let mut l = Limits::DEFAULT;
    l.topic_bytes_max = 0;
    assert!(l.validate().unwrap_err().contains("topic_bytes_max"));
    let mut l = Limits::DEFAULT;
    l.frame_bytes_max -= 1;
    assert!(l.validate().unwrap_err().contains("frame_bytes_max"));
    let mut l = Limits::DEFAULT;
    l.payload_bytes_max = u32::MAX;
    l.frame_bytes_max = u32::MAX;
    assert!(l.validate().unwrap_err().contains("payload_bytes_max"));
}

#[test]
fn topics() {
    let l = Limits::DEFAULT;
    assert!(valid_topic(b"game:42.round_1-a", &l));
    assert!(valid_topic(&[b'x'; 64], &l));
    assert!(!valid_topic(&[b'x'; 65], &l));
    assert!(!valid_topic(b"", &l));
    for bad in [&b"a b"[..], b"a/b", b"caf\xc3\xa9", b"a\0", b"a*"] {
        assert!(!valid_topic(bad, &l), "{bad:?}");
    }
}

#[test]
fn display_is_readable() {
    let e = DecodeError::FrameTooLarge {
        len: 1_195_725_856,
        max: 70_000,
    };
    assert_eq!(
        e.to_string(),
        "frame of 1195725856 bytes is over the 70000-byte limit"
    );
    assert_eq!(
        DecodeError::UnknownFrameType(0xab).to_string(),
        "unknown frame type 0xab"
    );
    assert_eq!(e.code(), ErrorCode::FrameTooLarge);
}

#[test]
fn error_codes_round_trip() {
    for c in ErrorCode::ALL {
        assert_eq!(ErrorCode::try_from(c as u16), Ok(c));
    }
    assert_eq!(ErrorCode::try_from(0), Err(0));
    assert_eq!(ErrorCode::try_from(16), Err(16));
    assert_eq!(ErrorCode::name_of(7), "TooManySubscriptions");
    assert_eq!(ErrorCode::name_of(999), "unknown");
}

#[test]
fn frame_types_round_trip() {
    for t in FrameType::ALL {
        assert_eq!(FrameType::from_u8(t as u8), Some(t));
    }
    let known = (0..=255u8)
        .filter(|b| FrameType::from_u8(*b).is_some())
        .count();
    assert_eq!(known, FrameType::ALL.len());
}

#[test]
fn frame_directions() {
    use FrameType::*;
    let client: Vec<_> = FrameType::ALL
        .into_iter()
        .filter(|t| t.sent_by_client())
        .collect();
    let server: Vec<_> = FrameType::ALL
        .into_iter()
        .filter(|t| t.sent_by_server())
        .collect();
    assert_eq!(
        client,
        [
            Hello,
            Subscribe,
            Unsubscribe,
            Publish,
            TopicClose,
            Position,
            PathQuery,
            Ping,
            Pong
        ]
    );
    assert_eq!(
        server,
        [
            Welcome,
            Subscribed,
            Unsubscribed,
            PublishAck,
            Event,
            TopicClosed,
            Path,
            Ping,
            Pong,
            GoAway,
            Error
        ]
    );
}

#[test]
fn position_ranges() {
    let ok = Position {
        lat_e7: 900_000_000,
        lon_e7: -1_800_000_000,
        accuracy_cm: 10_000_000,
        client_ts_ms: 1,
    };
    assert_eq!(ok.validate(), Ok(()));
    let bad = [
        Position {
            lat_e7: 900_000_001,
            ..ok
        },
        Position {
            lat_e7: -900_000_001,
            ..ok
        },
        Position {
            lon_e7: 1_800_000_001,
            ..ok
        },
        Position {
            lon_e7: i32::MIN,
            ..ok
        },
        Position {
            accuracy_cm: 10_000_001,
            ..ok
        },
        Position {
            client_ts_ms: 0,
            ..ok
        },
    ];
    for p in bad {
        assert_eq!(p.validate(), Err(ErrorCode::InvalidPosition), "{p:?}");
    }
}

#[test]
fn position_bytes_are_the_position_body() {
    let p = Position {
        lat_e7: -338_567_844,
        lon_e7: 1_512_152_967,
        accuracy_cm: 500,
        client_ts_ms: 1_700_000_000_123,
    };
    let b = p.to_bytes();
    assert_eq!(
        b,
        [
            0xeb, 0xd1, 0xdd, 0x5c, 0x5a, 0x21, 0x9f, 0x87, 0, 0, 1, 0xf4, 0, 0, 1, 0x8b, 0xcf,
            0xe5, 0x68, 0x7b
        ]
    );
    assert_eq!(Position::from_bytes(&b), p);
    let mut v = Vec::new();
    Frame::Position(p).encode(&mut v);
    assert_eq!(&v[HEADER_BYTES..], &b[..]);
    let extremes = Position {
        lat_e7: i32::MIN,
        lon_e7: i32::MAX,
        accuracy_cm: u32::MAX,
        client_ts_ms: u64::MAX,
    };
    assert_eq!(Position::from_bytes(&extremes.to_bytes()), extremes);
}

#[test]
fn path_positions_iterates_the_records() {
    let a = Position {
        lat_e7: 1,
        lon_e7: -2,
        accuracy_cm: 3,
        client_ts_ms: 4,
    };
    let b = Position {
        client_ts_ms: 5,
        ..a
    };
    let mut records = a.to_bytes().to_vec();
    records.extend_from_slice(&b.to_bytes());
    let path = Path {
        request_id: 1,
        status: 0,
        flags: PATH_FLAG_LAST,
        positions: &records,
    };
    assert_eq!(path.positions().collect::<Vec<_>>(), [a, b]);
    let empty = Path {
        positions: &[],
        ..path
    };
    assert_eq!(empty.positions().count(), 0);
    assert_eq!(
        Frame::Path(path).encoded_len(),
        HEADER_BYTES + 7 + 2 * POSITION_BYTES
    );
}

#[test]
#[should_panic(expected = "not a multiple of 20")]
fn encode_refuses_partial_path_record() {
    let mut v = Vec::new();
    Frame::Path(Path {
        request_id: 1,
        status: 0,
        flags: PATH_FLAG_LAST,
        positions: &[0; 21],
    })
    .encode(&mut v);
}

#[test]
fn topic_close_lengths() {
    let close = Frame::TopicClose(TopicClose {
        request_id: 1,
        topic: b"game:42",
    });
    assert_eq!(close.encoded_len(), HEADER_BYTES + 4 + 1 + 7);
    assert_eq!(close.frame_type(), FrameType::TopicClose);
    let closed = Frame::TopicClosed(TopicClosed {
        request_id: 1,
        status: 0,
        last_seq: 58,
        topic: b"game:42",
    });
    assert_eq!(closed.encoded_len(), HEADER_BYTES + 4 + 2 + 8 + 1 + 7);
    assert_eq!(closed.frame_type(), FrameType::TopicClosed);
    assert_eq!(FrameType::TopicClose.name(), "TOPIC_CLOSE");
    assert_eq!(FrameType::TopicClosed.name(), "TOPIC_CLOSED");
}

#[test]
#[should_panic(expected = "str8")]
fn encode_refuses_long_topic_closed_topic() {
    let mut v = Vec::new();
    Frame::TopicClosed(TopicClosed {
        request_id: 1,
        status: 0,
        last_seq: 0,
        topic: &[b'a'; 256],
    })
    .encode(&mut v);
}

#[test]
#[should_panic(expected = "PATH_QUERY player")]
fn encode_refuses_long_player() {
    let mut v = Vec::new();
    Frame::PathQuery(PathQuery {
        request_id: 1,
        since_ms: 0,
        player: &[b'p'; 256],
    })
    .encode(&mut v);
}

#[test]
fn encode_to_slice_matches_encode() {
    let f = Frame::Publish(Publish {
        request_id: 7,
        topic: b"t",
        payload: b"hello",
    });
    let mut v = Vec::new();
    f.encode(&mut v);
    let mut buf = [0xEEu8; 64];
    let n = f.encode_to_slice(&mut buf);
    assert_eq!(n, v.len());
    assert_eq!(&buf[..n], &v[..]);
    assert!(
        buf[n..].iter().all(|&b| b == 0xEE),
        "wrote past encoded_len"
    );
}

#[test]
#[should_panic(expected = "str8")]
fn encode_refuses_long_topic() {
    let topic = [b'a'; 256];
    let mut v = Vec::new();
    Frame::Unsubscribe { topic: &topic }.encode(&mut v);
}

#[test]
#[should_panic(expected = "1024")]
fn encode_refuses_long_goaway() {
    let resume = vec![
        ResumePoint {
            epoch: 1,
            last_seq: 1,
            topic: b"t"
        };
        1025
    ];
    let mut v = Vec::new();
    Frame::GoAway(GoAway {
        reason: GoAwayReason::Shutdown,
        retry_after_ms: 0,
        reconnect: b"",
        resume,
    })
    .encode(&mut v);
}

#[test]
#[should_panic(expected = "encode_to_slice")]
fn encode_to_slice_refuses_short_buffer() {
    let mut buf = [0u8; 12];
    Frame::Ping { nonce: 1 }.encode_to_slice(&mut buf);
}
