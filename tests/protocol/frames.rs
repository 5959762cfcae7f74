//! Every client frame after WELCOME, with the boundary values of sections 3,
//! 4, 6, 7 and 11, and every frame a client must not send then (sections 1,
//! 2, 10). Each case runs on a connection of its own.

use super::State::Open;
use super::*;

#[test]
fn every_frame_after_welcome_gets_its_documented_answer() {
    let server = start(&[]);
    let err = Expect::Error;
    let fresh = |topic: &[u8]| no_events(SubscribeStatus::Ok, topic);
    // Section 4: the history a client knew is gone, none has begun.
    let changed = |topic: &[u8]| no_events(SubscribeStatus::EpochChanged, topic);
    let no_path = |request_id| {
        answer(Frame::Path(Path {
            request_id,
            status: 0,
            flags: PATH_FLAG_LAST,
            positions: &[],
        }))
    };
    let closed = |request_id, topic: &[u8]| {
        answer(Frame::TopicClosed(TopicClosed {
            request_id,
            status: 0,
            last_seq: 0,
            topic,
        }))
    };
    let unsubscribe = |topic: &[u8]| enc(&Frame::Unsubscribe { topic });
    let ping = |nonce| enc(&Frame::Ping { nonce });
    let long = |n| vec![b'x'; n];
    let (lat, lon, acc) = (900_000_000, 1_800_000_000, 10_000_000);
    let ts = 1_700_000_000_123;

    #[rustfmt::skip]
    let mut cases = vec![
        case("2, 10", Open, "a second HELLO", hello(1, 1, b"phone-1", b""), err(ErrorCode::UnexpectedFrame)),
        // A length prefix of 0 and nothing else: no type byte.
        case("1, 10", Open, "length 0", reframed(ping(1), |b| b.truncate(4)), err(ErrorCode::Malformed)),
        // The 4 length bytes only: the answer must not wait for a body.
        case("1, 10, 11", Open, "length 65818, over frame_bytes_max", 65_818u32.to_be_bytes().to_vec(), err(ErrorCode::FrameTooLarge)),
        // Length exactly frame_bytes_max is read as a frame; its payload of
        // 65747 bytes is what is refused.
        case("1, 3.6, 10", Open, "PUBLISH of length frame_bytes_max", publish(1, &long(64), &long(65_747)), err(ErrorCode::PayloadTooLarge)),

        // 3.3, 4: SUBSCRIBE. The mode byte is at offset 5.
        case("3.3, 10", Open, "SUBSCRIBE mode 2", poked(live(b"game:42"), 5, 2), err(ErrorCode::Malformed)),
        case("3.3, 10", Open, "SUBSCRIBE mode 255", poked(live(b"game:42"), 5, 255), err(ErrorCode::Malformed)),
        case("3.3, 4, 10", Open, "SUBSCRIBE topic empty", live(b""), err(ErrorCode::InvalidTopic)),
        case("3.3, 4, 10, 11", Open, "SUBSCRIBE topic of 65 bytes", live(&long(65)), err(ErrorCode::InvalidTopic)),
        case("3.3, 4, 11", Open, "SUBSCRIBE topic of 64 bytes", live(&long(64)), fresh(&long(64))),
        case("3.4, 4", Open, "SUBSCRIBE Live (u64::MAX, u64::MAX), no events", subscribe(StartMode::Live, u64::MAX, u64::MAX, b"extreme"), fresh(b"extreme")),
        case("3.4, 4", Open, "SUBSCRIBE Resume (u64::MAX, u64::MAX), no events", resume(u64::MAX, u64::MAX, b"extreme"), changed(b"extreme")),
        case("3.3, 4", Open, "SUBSCRIBE topic of every allowed class", live(b"AZaz09_.:-"), fresh(b"AZaz09_.:-")),
        case("1, 3.3, 10", Open, "SUBSCRIBE with a trailing byte", reframed(live(b"game:42"), |b| b.push(b'x')), err(ErrorCode::Malformed)),
        // The topic's length says 7, the frame ends after 6 of them.
        case("1, 3.3, 10", Open, "SUBSCRIBE ending inside its topic", reframed(live(b"game:42"), |b| { b.pop(); }), err(ErrorCode::Malformed)),

        // 3.5: UNSUBSCRIBE.
        case("3.5", Open, "UNSUBSCRIBE of a topic not subscribed", unsubscribe(b"game:42"), answer(Frame::Unsubscribed { topic: b"game:42" })),
        case("3.5, 4, 10", Open, "UNSUBSCRIBE topic empty", unsubscribe(b""), err(ErrorCode::InvalidTopic)),
        case("3.5, 4, 10", Open, "UNSUBSCRIBE topic of 65 bytes", unsubscribe(&long(65)), err(ErrorCode::InvalidTopic)),
        case("1, 3.5, 10", Open, "UNSUBSCRIBE with a trailing byte", reframed(unsubscribe(b"game:42"), |b| b.push(b'x')), err(ErrorCode::Malformed)),

        // 3.6, 5: PUBLISH (accepted ones in publish.rs).
        case("3.6, 4, 10", Open, "PUBLISH topic empty", publish(1, b"", b"hi"), err(ErrorCode::InvalidTopic)),
        case("3.6, 4, 10", Open, "PUBLISH topic of 65 bytes", publish(1, &long(65), b"hi"), err(ErrorCode::InvalidTopic)),
        case("3.6, 5, 10, 11", Open, "PUBLISH payload of 65537 bytes", publish(1, b"game:42", &long(65_537)), err(ErrorCode::PayloadTooLarge)),
        // The frame ends inside request_id.
        case("1, 3.6, 10", Open, "PUBLISH ending inside request_id", reframed(publish(1, b"game:42", b""), |b| b.truncate(7)), err(ErrorCode::Malformed)),

        // 3.9, 3.10, 8: TOPIC_CLOSE of a topic without events.
        case("3.10, 8", Open, "TOPIC_CLOSE of a topic without events", topic_close(5, b"never-used"), closed(5, b"never-used")),
        case("3.10, 8", Open, "TOPIC_CLOSE request_id u32::MAX", topic_close(u32::MAX, b"never-used"), closed(u32::MAX, b"never-used")),
        case("3.9, 8", Open, "TOPIC_CLOSE request_id 0: answered with 0", topic_close(0, b"never-used"), closed(0, b"never-used")),
        case("3.9, 8, 10", Open, "TOPIC_CLOSE topic empty", topic_close(5, b""), err(ErrorCode::InvalidTopic)),
        case("3.9, 8, 10", Open, "TOPIC_CLOSE topic of 65 bytes", topic_close(5, &long(65)), err(ErrorCode::InvalidTopic)),
        case("1, 3.9, 10", Open, "TOPIC_CLOSE with a trailing byte", reframed(topic_close(5, b"game:42"), |b| b.push(b'x')), err(ErrorCode::Malformed)),

        // 3.11, 6: POSITION, each range at its limit and one over.
        case("3.11, 6", Open, "POSITION lat +90°", position(lat, 0, 0, ts), Expect::Silence),
        case("3.11, 6", Open, "POSITION lat -90°", position(-lat, 0, 0, ts), Expect::Silence),
        case("3.11, 6, 10", Open, "POSITION lat +900000001", position(lat + 1, 0, 0, ts), err(ErrorCode::InvalidPosition)),
        case("3.11, 6, 10", Open, "POSITION lat -900000001", position(-lat - 1, 0, 0, ts), err(ErrorCode::InvalidPosition)),
        case("3.11, 6", Open, "POSITION lon +180°", position(0, lon, 0, ts), Expect::Silence),
        case("3.11, 6", Open, "POSITION lon -180°", position(0, -lon, 0, ts), Expect::Silence),
        case("3.11, 6, 10", Open, "POSITION lon +1800000001", position(0, lon + 1, 0, ts), err(ErrorCode::InvalidPosition)),
        case("3.11, 6, 10", Open, "POSITION lon -1800000001", position(0, -lon - 1, 0, ts), err(ErrorCode::InvalidPosition)),
        case("3.11, 6, 10", Open, "POSITION lat i32::MIN", position(i32::MIN, 0, 0, ts), err(ErrorCode::InvalidPosition)),
        case("3.11, 6, 10", Open, "POSITION lon i32::MAX", position(0, i32::MAX, 0, ts), err(ErrorCode::InvalidPosition)),
        case("3.11, 6", Open, "POSITION accuracy 100 km", position(0, 0, acc, ts), Expect::Silence),
        case("3.11, 6, 10", Open, "POSITION accuracy 10000001 cm", position(0, 0, acc + 1, ts), err(ErrorCode::InvalidPosition)),
        case("3.11, 6, 10", Open, "POSITION accuracy u32::MAX", position(0, 0, u32::MAX, ts), err(ErrorCode::InvalidPosition)),
        case("3.11, 6", Open, "POSITION client_ts_ms 1", position(0, 0, 0, 1), Expect::Silence),
        case("3.11, 6", Open, "POSITION client_ts_ms u64::MAX", position(0, 0, 0, u64::MAX), Expect::Silence),
        case("3.11, 6, 10", Open, "POSITION client_ts_ms 0", position(0, 0, 0, 0), err(ErrorCode::InvalidPosition)),
        case("1, 3.11, 10", Open, "POSITION one byte short", reframed(position(0, 0, 0, ts), |b| { b.pop(); }), err(ErrorCode::Malformed)),
        case("1, 3.11, 10", Open, "POSITION with a trailing byte", reframed(position(0, 0, 0, ts), |b| b.push(0)), err(ErrorCode::Malformed)),

        // 3.12, 3.13, 7: PATH_QUERY (stored paths in paths.rs).
        case("3.12, 7, 10", Open, "PATH_QUERY player empty", path_query(9, 0, b""), err(ErrorCode::Malformed)),
        case("3.12, 7, 10, 11", Open, "PATH_QUERY player of 65 bytes", path_query(9, 0, &long(65)), err(ErrorCode::Malformed)),
        case("3.12, 3.13, 7", Open, "PATH_QUERY player of 64 bytes, no path", path_query(9, 0, &long(64)), no_path(9)),
        case("3.13, 7", Open, "PATH_QUERY request_id 0, no path", path_query(0, 0, b"nobody"), no_path(0)),
        case("3.13, 7", Open, "PATH_QUERY request_id u32::MAX, since u64::MAX", path_query(u32::MAX, u64::MAX, b"nobody"), no_path(u32::MAX)),
        case("1, 3.12, 10", Open, "PATH_QUERY with a trailing byte", reframed(path_query(9, 0, b"phone-1"), |b| b.push(0)), err(ErrorCode::Malformed)),

        // 3.14: PING and PONG.
        case("3.14", Open, "PING nonce 0", ping(0), answer(Frame::Pong { nonce: 0 })),
        case("3.14", Open, "PING nonce u64::MAX", ping(u64::MAX), answer(Frame::Pong { nonce: u64::MAX })),
        case("3.14", Open, "PONG from the client", enc(&Frame::Pong { nonce: 3 }), Expect::Silence),
        case("1, 3.14, 10", Open, "PING one byte short", reframed(ping(1), |b| { b.pop(); }), err(ErrorCode::Malformed)),
    ];
    for class in ["Z", "z", "9", "_", ".", ":", "-"] {
        let what = format!("SUBSCRIBE topic {class:?}");
        let topic = class.as_bytes();
        cases.push(case("3.3, 4", Open, what, live(topic), fresh(topic)));
    }
    for bad in [b' ', b'/', b'*', b'#', b'+', 0x00, 0x7f, 0xc3] {
        let topic = [b'a', bad, b'b'];
        let what = |frame| format!("{frame} topic with byte 0x{bad:02x}");
        let invalid = || err(ErrorCode::InvalidTopic);
        cases.push(case(
            "4, 10",
            Open,
            what("SUBSCRIBE"),
            live(&topic),
            invalid(),
        ));
        cases.push(case(
            "4, 10",
            Open,
            what("UNSUBSCRIBE"),
            unsubscribe(&topic),
            invalid(),
        ));
        cases.push(case(
            "4, 10",
            Open,
            what("PUBLISH"),
            publish(1, &topic, b""),
            invalid(),
        ));
        cases.push(case(
            "4, 10",
            Open,
            what("TOPIC_CLOSE"),
            topic_close(1, &topic),
            invalid(),
        ));
    }
    for bytes in server_only_frames() {
        let what = format!("{} from the client", type_name(&bytes));
        cases.push(case(
            "2, 10",
            Open,
            what,
            bytes,
            err(ErrorCode::UnexpectedFrame),
        ));
    }
    for unknown in [0x00, 0x07, 0x32, 0x80, 0xff] {
        // A PING whose type byte is not in section 1's table.
        let bytes = poked(ping(1), 4, unknown);
        let what = format!("unknown type 0x{unknown:02x}");
        cases.push(case(
            "1, 10",
            Open,
            what,
            bytes,
            err(ErrorCode::UnknownFrameType),
        ));
    }
    run_cases(server.addr, &cases);
}
