//! Admission limits with real processes: connections per source address,
//! handshakes in flight, accepts per second and publishes per connection.
//! Past each, a client gets the documented answer (GOAWAY ServerFull with a
//! retry hint, or PUBLISH_ACK Overloaded), the refusal is counted, and room
//! comes back when the cause goes.

mod common;

use std::net::SocketAddr;
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
    let mut c = RawClient::connect(addr);
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

/// Retries `try_open` until admitted (the server frees a slot once the
/// socket it belonged to is closed, which takes a moment).
fn open_within(addr: SocketAddr, within: Duration) -> RawClient {
    let deadline = Instant::now() + within;
    loop {
        match try_open(addr) {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(hint) => panic!("still refused (retry hint {hint} ms)"),
        }
    }
}

#[test]
fn one_source_gets_its_limit_across_shards_and_its_room_back() {
    // Loopback is not counted per source: connect over the host's address.
    let Some(host) = common::host_address() else {
        eprintln!("SKIPPED one_source_gets_its_limit...: this host has no non-loopback address");
        return;
    };
    let server = Server::start(&[
        "--listen",
        "0.0.0.0:0",
        "--insecure-no-auth",
        "--shards",
        "2",
        "--connections-per-source-max",
        "4",
    ]);
    let addr = SocketAddr::new(host, server.addr.port());
    let mut held: Vec<RawClient> = (0..4).map(|_| try_open(addr).unwrap()).collect();
    let hint = try_open(addr).err().expect("the fifth is refused");
    assert!(hint > 0, "a retry hint");
    held.pop();
    held.push(open_within(addr, Duration::from_secs(5)));
    assert!(try_open(addr).is_err(), "still at the limit");
    // This host itself (loopback) is not held to it.
    let local: Vec<RawClient> = (0..8).map(|_| try_open(server.addr).unwrap()).collect();
    assert_eq!(local.len(), 8);
}

#[test]
fn handshakes_in_flight_are_bounded() {
    let server = Server::start(&["--shards", "1", "--handshakes-max", "2"]);
    // Two connections that never say HELLO hold both places.
    let silent: Vec<RawClient> = (0..2).map(|_| RawClient::connect(server.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        try_open(server.addr).is_err(),
        "a third handshake is refused"
    );
    drop(silent);
    let _admitted = open_within(server.addr, Duration::from_secs(5));
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
