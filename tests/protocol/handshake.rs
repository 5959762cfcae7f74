//! Sections 1, 2, 3.1, 3.2, 10 and 11: framing, the handshake, the limits
//! WELCOME announces, and the handshake and idle timeouts.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use super::State::{BeforeHello, Open};
use super::*;

#[test]
fn every_frame_before_hello_gets_its_documented_answer() {
    let server = start(&[]);
    // The type lists below cover section 1's table.
    let listed: BTreeSet<u8> = server_only_frames()
        .iter()
        .chain(&client_frames())
        .map(|f| f[4])
        .chain([FrameType::Hello as u8])
        .collect();
    let all: BTreeSet<u8> = FrameType::ALL.iter().map(|&t| t as u8).collect();
    assert_eq!(listed, all);

    let err = Expect::Error;
    let welcome = || answer(Frame::Welcome(DEFAULT_WELCOME));
    let ok = hello(1, 1, b"phone-1", b"");
    let id = |n| vec![b'i'; n];
    let token = |n| vec![b't'; n];
    #[rustfmt::skip]
    let mut cases = vec![
        case("2, 3.1, 3.2, 11", BeforeHello, "HELLO 1..=1: WELCOME with the default limits", ok.clone(), welcome()),
        case("2, 3.1", BeforeHello, "HELLO 0..=65535: version 1 chosen", hello(0, u16::MAX, b"phone-1", b""), welcome()),
        case("2, 10", BeforeHello, "HELLO 2..=3", hello(2, 3, b"phone-1", b""), err(ErrorCode::UnsupportedVersion)),
        case("2, 10", BeforeHello, "HELLO 0..=0", hello(0, 0, b"phone-1", b""), err(ErrorCode::UnsupportedVersion)),
        case("2, 10", BeforeHello, "HELLO 1..=0, an empty range", hello(1, 0, b"phone-1", b""), err(ErrorCode::UnsupportedVersion)),
        case("2, 10", BeforeHello, "HELLO 65535..=65535", hello(u16::MAX, u16::MAX, b"phone-1", b""), err(ErrorCode::UnsupportedVersion)),
        // Magic "CLUF" instead of "CLUE".
        case("3.1, 10", BeforeHello, "HELLO with a wrong magic", poked(ok.clone(), 8, b'F'), err(ErrorCode::Malformed)),
        case("3.1", BeforeHello, "HELLO client_id empty", hello(1, 1, b"", b""), welcome()),
        case("3.1, 11", BeforeHello, "HELLO client_id of 64 bytes", hello(1, 1, &id(64), b""), welcome()),
        case("3.1, 10, 11", BeforeHello, "HELLO client_id of 65 bytes", hello(1, 1, &id(65), b""), err(ErrorCode::Malformed)),
        case("3.1, 11", BeforeHello, "HELLO token of 4096 bytes (no --auth-keys)", hello(1, 1, b"phone-1", &token(4096)), welcome()),
        case("3.1, 10, 11", BeforeHello, "HELLO token of 4097 bytes", hello(1, 1, b"phone-1", &token(4097)), err(ErrorCode::Malformed)),
        // One byte after the token, counted by the length prefix.
        case("1, 3.1, 10", BeforeHello, "HELLO with a trailing byte", reframed(ok.clone(), |b| b.push(0)), err(ErrorCode::Malformed)),
        // The token's length says 6, the frame ends after 5 of them.
        case("1, 3.1, 10", BeforeHello, "HELLO ending inside its token", reframed(hello(1, 1, b"phone-1", b"secret"), |b| { b.pop(); }), err(ErrorCode::Malformed)),
        // The frame ends after the magic.
        case("1, 3.1, 10", BeforeHello, "HELLO of the magic only", reframed(ok.clone(), |b| b.truncate(9)), err(ErrorCode::Malformed)),
        // A length prefix of 0 and nothing else: no type byte.
        case("1, 10", BeforeHello, "length 0", reframed(ok.clone(), |b| b.truncate(4)), err(ErrorCode::Malformed)),
        // The 4 length bytes only: the answer must not wait for a body.
        case("1, 10, 11", BeforeHello, "length 65818, over frame_bytes_max", 65_818u32.to_be_bytes().to_vec(), err(ErrorCode::FrameTooLarge)),
        // Mode 2 is no StartMode: a decoding error comes before the state check.
        case("1, 3.3, 10", BeforeHello, "SUBSCRIBE with mode 2", poked(live(b"game:42"), 5, 2), err(ErrorCode::Malformed)),
        case("1, 3.12, 10", BeforeHello, "PATH_QUERY with an empty player", path_query(9, 0, b""), err(ErrorCode::Malformed)),
        // Sections 4 and 10 answer these in any state (section 1's list of
        // decoding errors does not name InvalidTopic and PayloadTooLarge).
        case("1, 4, 10", BeforeHello, "SUBSCRIBE with an invalid topic", live(b"a b"), err(ErrorCode::InvalidTopic)),
        case("1, 5, 10", BeforeHello, "PUBLISH over payload_bytes_max", publish(1, b"game:42", &[0; 65_537]), err(ErrorCode::PayloadTooLarge)),
    ];
    for bytes in client_frames().into_iter().chain(server_only_frames()) {
        let what = format!("{} first", type_name(&bytes));
        cases.push(case(
            "2, 10",
            BeforeHello,
            what,
            bytes,
            err(ErrorCode::UnexpectedFrame),
        ));
    }
    for unknown in [0x00, 0x07, 0x15, 0x23, 0x32, 0x41, 0x7e, 0x80, 0xff] {
        // A PING whose type byte is not in section 1's table.
        let bytes = poked(enc(&Frame::Ping { nonce: 1 }), 4, unknown);
        let what = format!("unknown type 0x{unknown:02x}");
        cases.push(case(
            "1, 10",
            BeforeHello,
            what,
            bytes,
            err(ErrorCode::UnknownFrameType),
        ));
    }
    run_cases(server.addr, &cases);
}

#[test]
fn a_server_with_other_settings_announces_and_enforces_them() {
    let server = start(&[
        "--heartbeat-ms",
        "400",
        "--idle-timeout-ms",
        "1500",
        "--handshake-timeout-ms",
        "700",
        "--payload-bytes-max",
        "1000",
        "--topic-bytes-max",
        "10",
        "--subscriptions-max",
        "3",
    ]);
    let addr = server.addr;
    let err = Expect::Error;
    // The timeouts take seconds each: they run beside the other checks.
    let timeouts = [
        thread::spawn(move || silent_client_gets_handshake_timeout(addr)),
        thread::spawn(move || trickled_hello_gets_handshake_timeout(addr)),
        thread::spawn(move || silent_connection_gets_idle_timeout(addr)),
        thread::spawn(move || any_frame_keeps_a_connection_open(addr)),
    ];

    let welcome = Welcome {
        version: 1,
        heartbeat_ms: 400,
        idle_timeout_ms: 1500,
        // max(282, 281 + payload_bytes_max, 267 + token_bytes_max), section 11.
        frame_bytes_max: 4363,
        payload_bytes_max: 1000,
        subscriptions_max: 3,
        topic_bytes_max: 10,
    };
    let fresh = |topic: &[u8]| no_events(SubscribeStatus::Ok, topic);
    #[rustfmt::skip]
    let cases = [
        case("3.2, 11", BeforeHello, "HELLO: WELCOME with the configured limits", hello(1, 1, b"phone-1", b""), answer(Frame::Welcome(welcome))),
        case("4, 11", Open, "SUBSCRIBE of a topic of topic_bytes_max", live(b"abcdefghij"), fresh(b"abcdefghij")),
        case("4, 10, 11", Open, "SUBSCRIBE of a topic one over topic_bytes_max", live(b"abcdefghijk"), err(ErrorCode::InvalidTopic)),
        case("3.6, 10, 11", Open, "PUBLISH to a topic one over topic_bytes_max", publish(1, b"abcdefghijk", b""), err(ErrorCode::InvalidTopic)),
        case("3.6, 5, 10, 11", Open, "PUBLISH one byte over payload_bytes_max", publish(1, b"abc", &[7; 1001]), err(ErrorCode::PayloadTooLarge)),
        case("1, 10, 11", Open, "length 4364, over frame_bytes_max", 4364u32.to_be_bytes().to_vec(), err(ErrorCode::FrameTooLarge)),
        // A length of exactly frame_bytes_max is read as a frame: its
        // payload (4347 bytes) is what is refused.
        case("1, 3.6, 10, 11", Open, "PUBLISH of length frame_bytes_max", publish(1, b"abcdefghij", &[7; 4347]), err(ErrorCode::PayloadTooLarge)),
    ];
    run_cases(addr, &cases);

    let mut c = open(addr);
    let a = ack(&mut c, 5, b"abcdefghij", &[7; 1000]);
    assert_eq!(
        (a.status, a.seq),
        (0, 1),
        "a payload of payload_bytes_max is published"
    );
    for topic in [b"s1", b"s2", b"s3"] {
        let (status, ..) = subscribed(&mut c, &live(topic));
        assert_eq!(status, SubscribeStatus::Ok);
    }
    c.send_raw(&live(b"s4")).unwrap();
    expect_error(&mut c, ErrorCode::TooManySubscriptions);

    for t in timeouts {
        t.join().expect("a timeout check failed");
    }
}

/// Section 2: no HELLO within the handshake timeout (700 ms here).
fn silent_client_gets_handshake_timeout(addr: SocketAddr) {
    let started = Instant::now();
    let mut c = RawClient::connect(addr);
    expect_error(&mut c, ErrorCode::HandshakeTimeout);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(4),
        "HandshakeTimeout after {took:?}, the timeout is 700 ms"
    );
}

/// Section 2: the timeout is for the whole HELLO, not between its bytes.
fn trickled_hello_gets_handshake_timeout(addr: SocketAddr) {
    let bytes = hello(1, 1, b"a-phone-on-a-very-slow-link", b"");
    let mut c = RawClient::connect(addr);
    // One byte per 100 ms (about 4 s for the whole HELLO) until an answer
    // is there to peek at.
    c.stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut sent = 0;
    while sent < bytes.len() {
        match c.stream.peek(&mut [0u8; 1]) {
            Ok(_) => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading: {e}"),
        }
        c.send_raw(&bytes[sent..=sent]).unwrap();
        sent += 1;
    }
    c.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(
        sent < bytes.len(),
        "the whole trickled HELLO went out before any answer"
    );
    expect_error(&mut c, ErrorCode::HandshakeTimeout);
}

/// Section 2: nothing received for idle_timeout_ms (1500 ms here). The
/// server does not ping on its own: ERROR is the first frame, though
/// heartbeat_ms (400) passes several times before.
fn silent_connection_gets_idle_timeout(addr: SocketAddr) {
    let mut c = open(addr);
    let started = Instant::now();
    expect_error(&mut c, ErrorCode::IdleTimeout);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1300) && took < Duration::from_secs(6),
        "IdleTimeout after {took:?}, the timeout is 1500 ms"
    );
}

/// Section 2: any frame counts against the idle timeout, not only PING;
/// PONGs from the client are taken silently (3.14).
fn any_frame_keeps_a_connection_open(addr: SocketAddr) {
    let mut c = open(addr);
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(200));
        c.send_raw(&enc(&Frame::Pong { nonce: 7 })).unwrap();
    }
    assert_open(&mut c);
}
