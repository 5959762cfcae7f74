//! Codec tests: property-based round trips and robustness, and targeted
//! error cases.

use cluecast_proto::*;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// An owned model of every frame, so proptest can generate the data a
// borrowed `Frame` points into.

#[derive(Clone, Debug)]
enum Model {
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
    fn frame(&self) -> Frame<'_> {
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

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
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

fn model() -> impl Strategy<Value = Model> {
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

fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out);
    out
}

/// A decoded frame re-encodes to exactly the bytes it came from (the
/// encoding is canonical), so decode accepted nothing it cannot produce.
fn assert_canonical(buf: &[u8], limits: &Limits) {
    if let Ok(Some((frame, used))) = decode(buf, limits) {
        assert!(used <= buf.len());
        assert_eq!(frame.encoded_len(), used);
        assert_eq!(encode(&frame), &buf[..used]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(m in model()) {
        let frame = m.frame();
        let bytes = encode(&frame);
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        let declared = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        prop_assert_eq!(declared + 4, bytes.len());
        prop_assert_eq!(bytes[4], frame.frame_type() as u8);

        let (decoded, used) = decode(&bytes, &Limits::DEFAULT).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(&decoded, &frame);

        // Followed by another frame: only the first is consumed.
        let mut two = bytes.clone();
        Frame::Ping { nonce: 5 }.encode(&mut two);
        let (first, used) = decode(&two, &Limits::DEFAULT).unwrap().unwrap();
        prop_assert_eq!(&first, &frame);
        prop_assert_eq!(decode(&two[used..], &Limits::DEFAULT).unwrap().unwrap().0, Frame::Ping { nonce: 5 });

        // encode_to_slice agrees with encode.
        let mut slice = vec![0u8; bytes.len() + 3];
        prop_assert_eq!(frame.encode_to_slice(&mut slice), bytes.len());
        prop_assert_eq!(&slice[..bytes.len()], &bytes[..]);
    }

    #[test]
    fn strict_prefixes_need_more(m in model()) {
        let frame = m.frame();
        let bytes = encode(&frame);
        let len = (bytes.len() - 4) as u32;

        // The limit exactly fits: every strict prefix asks for more bytes.
        let fits = Limits { frame_bytes_max: len, ..Limits::DEFAULT };
        for i in 0..bytes.len() {
            prop_assert_eq!(decode(&bytes[..i], &fits), Ok(None), "prefix of {} bytes", i);
        }
        prop_assert!(decode(&bytes, &fits).unwrap().is_some());

        // One byte below: refused as soon as the length is there, not before.
        let tight = Limits { frame_bytes_max: len - 1, ..Limits::DEFAULT };
        for i in 0..bytes.len() {
            let expected = if i < 4 {
                Ok(None)
            } else {
                Err(DecodeError::FrameTooLarge { len, max: len - 1 })
            };
            prop_assert_eq!(decode(&bytes[..i], &tight), expected, "prefix of {} bytes", i);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(buf in bytes(2048)) {
        assert_canonical(&buf, &Limits::DEFAULT);
        let small = Limits {
            frame_bytes_max: 300,
            payload_bytes_max: 8,
            topic_bytes_max: 3,
            client_id_bytes_max: 2,
            token_bytes_max: 2,
        };
        assert_canonical(&buf, &small);
    }

    #[test]
    fn arbitrary_body_after_valid_header_never_panics(
        type_byte in prop_oneof![
            prop::sample::select(FrameType::ALL.iter().map(|t| *t as u8).collect::<Vec<_>>()),
            any::<u8>(),
        ],
        body in bytes(600),
        extra in bytes(8),
    ) {
        let mut buf = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        buf.push(type_byte);
        buf.extend_from_slice(&body);
        let complete = buf.len();
        buf.extend_from_slice(&extra);
        match decode(&buf, &Limits::DEFAULT) {
            Ok(Some((_, used))) => prop_assert_eq!(used, complete),
            Ok(None) => prop_assert!(false, "a whole frame was present"),
            Err(_) => {}
        }
        assert_canonical(&buf, &Limits::DEFAULT);
    }

    #[test]
    fn corrupted_encodings_never_panic(m in model(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode(&m.frame());
        let i = at.index(bytes.len());
        bytes[i] = byte;
        assert_canonical(&bytes, &Limits::DEFAULT);
        bytes.truncate(i);
        assert_canonical(&bytes, &Limits::DEFAULT);
    }
}

// ---------------------------------------------------------------------------
// Targeted cases

const L: Limits = Limits::DEFAULT;

/// A frame with the given type and raw body.
fn raw(type_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(type_byte);
    v.extend_from_slice(body);
    v
}

fn malformed(buf: &[u8]) -> &'static str {
    match decode(buf, &L) {
        Err(DecodeError::Malformed(m)) => m,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

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

#[test]
fn several_frames_in_one_buffer() {
    let mut buf = Vec::new();
    Frame::Ping { nonce: 1 }.encode(&mut buf);
    Frame::Unsubscribed { topic: b"a" }.encode(&mut buf);
    Frame::Pong { nonce: 2 }.encode(&mut buf);
    buf.extend_from_slice(&[0, 0]); // start of a fourth
    let mut at = 0;
    let mut seen = Vec::new();
    while let Some((f, used)) = decode(&buf[at..], &L).unwrap() {
        seen.push(f.frame_type());
        at += used;
    }
    assert_eq!(
        seen,
        [FrameType::Ping, FrameType::Unsubscribed, FrameType::Pong]
    );
    assert_eq!(buf.len() - at, 2);
}

#[test]
fn decode_error_is_std_error() {
    fn takes(_: &dyn std::error::Error) {}
    takes(&DecodeError::InvalidTopic);
    assert!(DecodeError::InvalidTopic
        .to_string()
        .contains("invalid topic"));
}

fn path_query(player: &[u8]) -> Vec<u8> {
    encode(&Frame::PathQuery(PathQuery {
        request_id: 9,
        since_ms: 0,
        player,
    }))
}

#[test]
fn path_query_round_trip_and_player_limits() {
    let buf = path_query(b"phone-1");
    assert_eq!(buf.len(), 4 + 14 + 7);
    let (f, used) = decode(&buf, &L).unwrap().unwrap();
    assert_eq!(used, buf.len());
    assert_eq!(
        f,
        Frame::PathQuery(PathQuery {
            request_id: 9,
            since_ms: 0,
            player: b"phone-1"
        })
    );
    // 1 and 64 bytes (the default client_id_bytes_max) are fine.
    assert!(decode(&path_query(b"p"), &L).unwrap().is_some());
    assert!(decode(&path_query(&[b'p'; 64]), &L).unwrap().is_some());
    // Empty or over the limit: Malformed.
    assert_eq!(malformed(&path_query(b"")), "PATH_QUERY player is empty");
    assert_eq!(
        malformed(&path_query(&[b'p'; 65])),
        "PATH_QUERY player is over the limit"
    );
    assert_eq!(
        DecodeError::Malformed("PATH_QUERY player is empty").code(),
        ErrorCode::Malformed
    );
    // The limit is the configured client_id one.
    let narrow = Limits {
        client_id_bytes_max: 3,
        ..L
    };
    assert!(decode(&path_query(b"abc"), &narrow).unwrap().is_some());
    assert!(matches!(
        decode(&path_query(b"abcd"), &narrow),
        Err(DecodeError::Malformed(
            "PATH_QUERY player is over the limit"
        ))
    ));
    let wide = Limits {
        client_id_bytes_max: 255,
        ..L
    };
    assert!(decode(&path_query(&[b'p'; 255]), &wide).unwrap().is_some());
}

#[test]
fn path_query_lengths() {
    let buf = path_query(b"ab");
    // Cut inside since_ms, inside the player, or one byte too many.
    assert_eq!(
        malformed(&raw(0x21, &buf[5..12])),
        "PATH_QUERY body ends inside a field"
    );
    assert_eq!(
        malformed(&raw(0x21, &buf[5..buf.len() - 1])),
        "PATH_QUERY body ends inside a field"
    );
    let mut long = buf[5..].to_vec();
    long.push(b'x');
    assert_eq!(
        malformed(&raw(0x21, &long)),
        "PATH_QUERY body has bytes after its last field"
    );
}

#[test]
fn path_round_trip_and_lengths() {
    let a = Position {
        lat_e7: -338_567_844,
        lon_e7: 1_512_152_967,
        accuracy_cm: 500,
        client_ts_ms: 1_700_000_000_123,
    };
    let b = Position {
        lat_e7: 488_583_701,
        lon_e7: 22_944_813,
        accuracy_cm: 0,
        client_ts_ms: 1,
    };
    let records: Vec<u8> = [a, b, a].iter().flat_map(Position::to_bytes).collect();
    let path = Path {
        request_id: 9,
        status: 0,
        flags: PATH_FLAG_LAST | PATH_FLAG_TRUNCATED | PATH_FLAG_CORRUPT,
        positions: &records,
    };
    let buf = encode(&Frame::Path(path));
    // Length 8 + 20 x n.
    assert_eq!(&buf[..4], &(8u32 + 20 * 3).to_be_bytes());
    let Frame::Path(got) = decode(&buf, &L).unwrap().unwrap().0 else {
        panic!("not a PATH")
    };
    assert_eq!(got, path);
    assert_eq!(got.positions().collect::<Vec<_>>(), [a, b, a]);

    // No positions at all: an empty path, or a refusal.
    for status in [0, ErrorCode::StorageFailed as u16] {
        let empty = Path {
            request_id: 1,
            status,
            flags: PATH_FLAG_LAST,
            positions: &[],
        };
        let buf = encode(&Frame::Path(empty));
        assert_eq!(&buf[..4], &8u32.to_be_bytes());
        assert_eq!(decode(&buf, &L).unwrap().unwrap().0, Frame::Path(empty));
    }

    // Anything but 8 + a multiple of 20 is malformed.
    let header = &buf[5..12];
    for extra in [1, 19, 21, 39, 41] {
        let mut body = header.to_vec();
        body.resize(7 + extra, 0);
        assert_eq!(
            malformed(&raw(0x22, &body)),
            "PATH positions are not a whole number of 20-byte records",
            "{extra} bytes of positions"
        );
    }
    for n in [0, 1, 2, 40] {
        let mut body = header.to_vec();
        body.resize(7 + 20 * n, 0);
        assert!(decode(&raw(0x22, &body), &L).unwrap().is_some(), "{n}");
    }
    // Cut before the flags.
    assert_eq!(
        malformed(&raw(0x22, &header[..6])),
        "PATH body ends inside a field"
    );
}

#[test]
fn position_body_is_position_to_bytes() {
    let p = Position {
        lat_e7: -1,
        lon_e7: 2,
        accuracy_cm: 3,
        client_ts_ms: 4,
    };
    let buf = encode(&Frame::Position(p));
    assert_eq!(&buf[5..], &p.to_bytes()[..]);
    assert_eq!(buf.len(), 5 + POSITION_BYTES);
}

#[test]
fn topic_close_round_trip_and_lengths() {
    let close = Frame::TopicClose(TopicClose {
        request_id: 11,
        topic: b"game:42",
    });
    let buf = encode(&close);
    // Length 6 + t.
    assert_eq!(&buf[..4], &(6u32 + 7).to_be_bytes());
    assert_eq!(buf[4], 0x13);
    assert_eq!(decode(&buf, &L).unwrap().unwrap(), (close, buf.len()));
    // Cut inside the request_id or the topic, or one byte too many.
    assert_eq!(
        malformed(&raw(0x13, &buf[5..8])),
        "TOPIC_CLOSE body ends inside a field"
    );
    assert_eq!(
        malformed(&raw(0x13, &buf[5..buf.len() - 1])),
        "TOPIC_CLOSE body ends inside a field"
    );
    let mut long = buf[5..].to_vec();
    long.push(b'x');
    assert_eq!(
        malformed(&raw(0x13, &long)),
        "TOPIC_CLOSE body has bytes after its last field"
    );
}

#[test]
fn topic_closed_round_trip_and_lengths() {
    for (request_id, status, last_seq) in [
        (11, 0, 58),
        // The notice to subscribers.
        (0, 0, 58),
        // Nothing to close.
        (12, 0, 0),
        (13, ErrorCode::StorageFailed as u16, 0),
        (14, ErrorCode::Overloaded as u16, 0),
    ] {
        let closed = Frame::TopicClosed(TopicClosed {
            request_id,
            status,
            last_seq,
            topic: b"game:42",
        });
        let buf = encode(&closed);
        // Length 16 + t.
        assert_eq!(&buf[..4], &(16u32 + 7).to_be_bytes());
        assert_eq!(buf[4], 0x14);
        assert_eq!(decode(&buf, &L).unwrap().unwrap(), (closed, buf.len()));
    }
    let buf = encode(&Frame::TopicClosed(TopicClosed {
        request_id: 1,
        status: 0,
        last_seq: 1,
        topic: b"ab",
    }));
    // Cut inside last_seq, inside the topic, or one byte too many.
    assert_eq!(
        malformed(&raw(0x14, &buf[5..15])),
        "TOPIC_CLOSED body ends inside a field"
    );
    assert_eq!(
        malformed(&raw(0x14, &buf[5..buf.len() - 1])),
        "TOPIC_CLOSED body ends inside a field"
    );
    let mut long = buf[5..].to_vec();
    long.push(b'x');
    assert_eq!(
        malformed(&raw(0x14, &long)),
        "TOPIC_CLOSED body has bytes after its last field"
    );
}

#[test]
fn fixed_sizes_match_what_the_encoder_writes() {
    let ack = Frame::PublishAck(PublishAck {
        request_id: 1,
        status: 0,
        flags: ACK_FLAG_DURABLE,
        epoch: 2,
        seq: 3,
    });
    let mut out = Vec::new();
    ack.encode(&mut out);
    assert_eq!(out.len(), PublishAck::ENCODED_BYTES);

    let topic = [b't'; TOPIC_BYTES_HARD_MAX];
    let closed = Frame::TopicClosed(TopicClosed {
        request_id: 1,
        status: 0,
        last_seq: 9,
        topic: &topic,
    });
    out.clear();
    closed.encode(&mut out);
    assert_eq!(
        out.len(),
        TopicClosed::ENCODED_BYTES_BEFORE_TOPIC + TOPIC_BYTES_HARD_MAX
    );

    let longest = [b'e'; ErrorFrame::MESSAGE_BYTES_MAX];
    let error = Frame::Error(ErrorFrame {
        code: 1,
        message: &longest,
    });
    out.clear();
    error.encode(&mut out);
    let limits = Limits::DEFAULT;
    let Ok(Some((Frame::Error(back), _))) = decode(&out, &limits) else {
        panic!("the longest ERROR decodes");
    };
    assert_eq!(back.message.len(), ErrorFrame::MESSAGE_BYTES_MAX);
}
