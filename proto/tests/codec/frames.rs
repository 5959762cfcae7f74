//! Fixed frames, byte for byte: several frames in one buffer, the lengths
//! and cuts of PATH_QUERY, PATH, POSITION, TOPIC_CLOSE and TOPIC_CLOSED, and
//! the crate's fixed sizes (PUBLISH_ACK, TOPIC_CLOSED before its topic, the
//! longest ERROR message) against what the encoder writes.

use super::*;

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
