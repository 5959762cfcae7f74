//! Admission limits with real processes: connections per source address,
//! handshakes in flight (evicted for newcomers, timed out sooner under
//! pressure), accepts per second and publishes per
//! connection. Past each, a client gets the documented answer (GOAWAY
//! ServerFull with a retry hint, ERROR HandshakeTimeout, or PUBLISH_ACK
//! Overloaded), and room comes back when the cause goes.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use cluecast_proto::{ErrorCode, Frame, GoAwayReason, Hello, Publish};
use common::{RawClient, Server};

fn hello_frame() -> Vec<u8> {
    let mut bytes = Vec::new();
    Frame::Hello(Hello {
        version_min: 1,
        version_max: 1,
        client_id: b"limits",
        token: b"",
    })
    .encode(&mut bytes);
    bytes
}

/// Connects and says HELLO: the admitted connection, or the retry hint of
/// the GOAWAY(ServerFull) that refused it.
fn try_open(addr: SocketAddr) -> Result<RawClient, u32> {
    say_hello(RawClient::connect(addr))
}

/// `try_open` from another source address.
fn try_open_from(source: IpAddr, addr: SocketAddr) -> Result<RawClient, u32> {
    say_hello(RawClient::connect_from(source, addr))
}

fn say_hello(mut c: RawClient) -> Result<RawClient, u32> {
    // A refused socket may be closed before HELLO arrives: not an error.
    let _ = c.send_raw(&hello_frame());
    let answer = c.recv(|f| match f {
        Frame::Welcome(_) => None,
        Frame::GoAway(g) => {
            assert_eq!(g.reason, GoAwayReason::ServerFull);
            Some(g.retry_after_ms)
        }
        other => panic!("expected WELCOME or GOAWAY, got {other:?}"),
    });
    match answer.expect("an answer before the close") {
        None => Ok(c),
        Some(retry_after_ms) => Err(retry_after_ms),
    }
}

/// Retries `open` until admitted (the server frees a slot once the socket
/// it belonged to is closed, which takes a moment).
fn open_within(open: impl Fn() -> Result<RawClient, u32>, within: Duration) -> RawClient {
    let deadline = Instant::now() + within;
    loop {
        match open() {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(hint) => panic!("still refused (retry hint {hint} ms)"),
        }
    }
}

#[test]
fn one_source_gets_its_limit_across_shards_and_its_room_back() {
    let server = Server::start(&["--shards", "2", "--connections-per-source-max", "4"]);
    // 127.0.0.2 is loopback, but not this host's own address: counted.
    let source = IpAddr::from([127, 0, 0, 2]);
    let open_from = || try_open_from(source, server.addr);
    let mut held: Vec<RawClient> = (0..4).map(|_| open_from().unwrap()).collect();
    let hint = open_from().err().expect("the fifth is refused");
    assert!(hint > 0, "a retry hint");
    held.pop();
    held.push(open_within(open_from, Duration::from_secs(5)));
    assert!(open_from().is_err(), "still at the limit");
    // This host itself (127.0.0.1) is not held to it.
    let local: Vec<RawClient> = (0..8).map(|_| try_open(server.addr).unwrap()).collect();
    assert_eq!(local.len(), 8);
}

#[test]
fn a_full_handshake_table_evicts_its_oldest_for_a_newcomer() {
    let server = Server::start(&["--shards", "1", "--handshakes-max", "2"]);
    // Two connections that never say HELLO fill the table.
    let mut oldest = RawClient::connect(server.addr);
    std::thread::sleep(Duration::from_millis(100));
    let mut younger = RawClient::connect(server.addr);
    std::thread::sleep(Duration::from_millis(100));
    // A newcomer is let in, and the oldest silent one makes room.
    assert!(try_open(server.addr).is_ok(), "the newcomer was refused");
    let hint = oldest.recv(|f| match f {
        Frame::GoAway(g) if g.reason == GoAwayReason::ServerFull => g.retry_after_ms,
        other => panic!("the evicted connection got {other:?}"),
    });
    assert!(
        hint.is_some_and(|ms| ms > 0),
        "GOAWAY ServerFull with a retry hint"
    );
    assert!(oldest.closed_within(Duration::from_secs(2)));
    // The younger one is still waiting, and may still finish its HELLO.
    younger.send_raw(&hello_frame()).unwrap();
    younger.expect(|f| matches!(f, Frame::Welcome(_)));
}

#[test]
fn silent_sockets_cannot_fill_a_shard() {
    let server = Server::start(&["--shards", "1", "--connections-max", "4"]);
    // At most half the shard may be handshakes: the third silent socket
    // evicts the first instead of taking the shard's last slots.
    let silent: Vec<RawClient> = (0..6).map(|_| RawClient::connect(server.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    assert!(try_open(server.addr).is_ok(), "the newcomer was refused");
    assert!(
        try_open(server.addr).is_ok(),
        "the second newcomer was refused"
    );
    drop(silent);
}

#[test]
fn under_pressure_the_handshake_timeout_shortens_and_says_so() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--handshakes-max",
        "4",
        "--handshake-timeout-ms",
        "5000",
        "--handshake-timeout-min-ms",
        "400",
    ]);
    let started = Instant::now();
    let mut silent: Vec<RawClient> = (0..4).map(|_| RawClient::connect(server.addr)).collect();
    // Full: the oldest goes after 400 ms, not 5 s. Then, with three in
    // flight, the timeout is back to 2.7 s, so the others stay.
    let code = silent[0].recv(|f| match f {
        Frame::Error(e) => e.code,
        other => panic!("expected ERROR, got {other:?}"),
    });
    let waited_ms = started.elapsed().as_millis();
    assert_eq!(code, Some(ErrorCode::HandshakeTimeout as u16));
    assert!(
        (400..1_000).contains(&waited_ms),
        "cut after {waited_ms} ms"
    );
    assert!(
        server.logged("handshake timeout shortened to", Duration::from_secs(2)),
        "the shortened timeout is logged"
    );
    for c in &mut silent[1..] {
        c.stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0u8; 1];
        let read = std::io::Read::read(&mut c.stream, &mut byte);
        assert!(read.is_err(), "a younger handshake was cut too: {read:?}");
    }
}

#[test]
fn accepts_past_the_rate_are_refused_then_admitted_again() {
    let server = Server::start(&["--shards", "1", "--accepts-per-s", "5"]);
    let outcomes: Vec<Result<RawClient, u32>> = (0..20).map(|_| try_open(server.addr)).collect();
    let admitted = outcomes.iter().filter(|o| o.is_ok()).count();
    // The burst of 5, and at most what refilled while they were opened.
    assert!((5..=8).contains(&admitted), "{admitted} of 20 admitted");
    std::thread::sleep(Duration::from_millis(1100));
    let again = (0..5).filter(|_| try_open(server.addr).is_ok()).count();
    assert_eq!(again, 5, "a second later the bucket is full again");
}

#[test]
fn the_last_of_the_accept_rate_is_kept_for_sources_with_no_handshake_open() {
    // 8 a second: a burst of 8, the last one kept for newcomers.
    let server = Server::start(&["--shards", "1", "--accepts-per-s", "8"]);
    let (busy, quiet) = (IpAddr::from([127, 0, 0, 4]), IpAddr::from([127, 0, 0, 5]));
    // A connection that never says HELLO keeps its source busy.
    let _silent = RawClient::connect_from(busy, server.addr);
    std::thread::sleep(Duration::from_millis(50));
    let outcomes: Vec<Result<RawClient, u32>> =
        (0..10).map(|_| try_open_from(busy, server.addr)).collect();
    let admitted = outcomes.iter().filter(|o| o.is_ok()).count();
    // 7 tokens left after the silent one: the busy source gets 6 of them
    // (and whatever refilled meanwhile, at one per 125 ms).
    assert!((6..=7).contains(&admitted), "{admitted} of 10 admitted");
    assert!(
        try_open_from(quiet, server.addr).is_ok(),
        "a newcomer got no room from the reserve"
    );
}

#[test]
fn publishes_past_a_connections_rate_are_refused_and_the_connection_stays() {
    let server = Server::start(&["--durability", "memory", "--publish-rate-max", "50"]);
    let mut c = try_open(server.addr).unwrap();
    let mut pipelined = Vec::new();
    for request_id in 0..200u32 {
        Frame::Publish(Publish {
            request_id,
            topic: b"hunt-r",
            payload: b"clue",
        })
        .encode(&mut pipelined);
    }
    let started = Instant::now();
    c.send_raw(&pipelined).unwrap();
    let mut statuses = Vec::new();
    while statuses.len() < 200 {
        let status = c
            .recv(|f| match f {
                Frame::PublishAck(a) => a.status,
                other => panic!("expected PUBLISH_ACK, got {other:?}"),
            })
            .expect("acks");
        statuses.push(status);
    }
    let elapsed_ms = started.elapsed().as_millis() as usize;
    let ok = statuses.iter().filter(|&&s| s == 0).count();
    let overloaded = statuses
        .iter()
        .filter(|&&s| s == ErrorCode::Overloaded as u16)
        .count();
    assert_eq!(ok + overloaded, 200, "only Ok or Overloaded");
    // The burst of 50, plus 50/s for the time the acks took.
    assert!(
        ok >= 50 && ok <= 51 + elapsed_ms * 50 / 1000,
        "{ok} published in {elapsed_ms} ms"
    );
    std::thread::sleep(Duration::from_millis(200));
    let mut one = Vec::new();
    Frame::Publish(Publish {
        request_id: 999,
        topic: b"hunt-r",
        payload: b"later",
    })
    .encode(&mut one);
    c.send_raw(&one).unwrap();
    c.expect(|f| matches!(f, Frame::PublishAck(a) if a.request_id == 999 && a.status == 0));
}
