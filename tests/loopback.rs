//! The appliance end to end over loopback: fan-out correctness at scale,
//! resume, hostile input, and a graceful drain.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluecast_proto::client::{Client, ClientConfig};
use cluecast_proto::{ErrorCode, Frame, GoAwayReason, Publish, StartMode};
use common::{RawClient, Server};

/// Publishes `count` events round-robin over `topics` from one connection,
/// pipelined, and waits for every acknowledgement.
fn publish_all(
    addr: SocketAddr,
    topics: &[String],
    count: usize,
    payload_of: impl Fn(usize) -> String,
) {
    let mut publisher = RawClient::open(addr);
    let mut acked = 0;
    for i in 0..count {
        let payload = payload_of(i);
        publisher.send(&Frame::Publish(Publish {
            request_id: i as u32,
            topic: topics[i % topics.len()].as_bytes(),
            payload: payload.as_bytes(),
        }));
        // Keep a bounded window in flight, as a real publisher would.
        while i + 1 - acked > 256 {
            publisher.expect(|f| matches!(f, Frame::PublishAck(a) if a.status == 0));
            acked += 1;
        }
    }
    while acked < count {
        publisher.expect(|f| matches!(f, Frame::PublishAck(a) if a.status == 0));
        acked += 1;
    }
}

#[test]
fn two_thousand_subscribers_get_every_event_of_their_topic_once_in_order() {
    let server = Server::start(&["--shards", "2"]);
    let topics: Vec<String> = (0..20).map(|t| format!("hunt-{t}")).collect();
    let mut subscribers: Vec<(usize, RawClient)> = (0..2000)
        .map(|i| {
            let mut c = RawClient::open(server.addr);
            c.subscribe(&topics[i % 20], StartMode::Live, 0, 0);
            (i % 20, c)
        })
        .collect();
    let events = 10_000;
    publish_all(server.addr, &topics, events, |i| format!("e{i}"));

    // Readers on several threads; kernel buffers hold the rest meanwhile.
    let per_topic = events / topics.len();
    let chunks: Vec<Vec<(usize, RawClient)>> = {
        let mut chunks: Vec<Vec<_>> = (0..8).map(|_| Vec::new()).collect();
        for (i, s) in subscribers.drain(..).enumerate() {
            chunks[i % 8].push(s);
        }
        chunks
    };
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            std::thread::spawn(move || {
                for (topic, mut client) in chunk {
                    let mut payloads = HashSet::new();
                    for expected_seq in 1..=per_topic as u64 {
                        let (seq, payload) = client
                            .recv(|f| match f {
                                Frame::Event(e) => {
                                    (e.seq, String::from_utf8(e.payload.to_vec()).unwrap())
                                }
                                other => panic!("expected EVENT, got {other:?}"),
                            })
                            .expect("closed early");
                        assert_eq!(
                            seq, expected_seq,
                            "topic {topic}: gap, duplicate or reorder"
                        );
                        let n: usize = payload[1..].parse().unwrap();
                        assert_eq!(n % 20, topic, "an event of another topic");
                        assert!(payloads.insert(n), "payload delivered twice");
                    }
                    assert_eq!(payloads.len(), per_topic);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a reader found a delivery error");
    }
}

#[test]
fn a_cut_connection_resumes_from_history_without_gap_or_duplicate() {
    let server = Server::start(&["--shards", "2"]);
    let topic = vec!["clue-drops".to_string()];
    let mut sub = RawClient::open(server.addr);
    let (no_epoch, _) = sub.subscribe(&topic[0], StartMode::Live, 0, 0);
    assert_eq!(no_epoch, 0, "a topic without events has no epoch yet");
    publish_all(server.addr, &topic, 50, |i| format!("p{i}"));
    // The resume point is what the events said (section 4 of the protocol).
    let (mut epoch, mut last) = (0, 0);
    for _ in 0..20 {
        (epoch, last) = sub
            .recv(|f| match f {
                Frame::Event(e) => (e.epoch, e.seq),
                other => panic!("{other:?}"),
            })
            .unwrap();
    }
    assert_ne!(epoch, 0);
    assert_eq!(last, 20);
    drop(sub); // cut mid-stream, 30 events unread
    publish_all(server.addr, &topic, 50, |i| format!("q{i}"));

    let mut again = RawClient::open(server.addr);
    let (same_epoch, newest) = again.subscribe(&topic[0], StartMode::Resume, epoch, last);
    assert_eq!((same_epoch, newest), (epoch, 100));
    for want in last + 1..=100 {
        let seq = again
            .recv(|f| match f {
                Frame::Event(e) => e.seq,
                other => panic!("{other:?}"),
            })
            .unwrap();
        assert_eq!(seq, want);
    }

    // `sub --from` started afresh replays the same range.
    let out = std::process::Command::new(common::BIN)
        .args([
            "sub",
            "--server",
            &server.addr.to_string(),
            "clue-drops",
            "--from",
            "95",
            "--count",
            "6",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| l.split('\t').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs, (95..=100).collect::<Vec<_>>());
    assert!(lines[5].ends_with("\tq49"), "{lines:?}");
}

#[test]
fn pub_and_sub_commands_round_trip() {
    let server = Server::start(&["--shards", "1"]);
    let addr = server.addr.to_string();
    let sub = std::process::Command::new(common::BIN)
        .args(["sub", "--server", &addr, "hunt-9", "--count", "2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The subscription is live once SUBSCRIBED arrives; give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    for (message, want_seq) in [("first clue", "1"), ("second clue", "2")] {
        let out = std::process::Command::new(common::BIN)
            .args(["pub", "--server", &addr, "hunt-9", message])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), want_seq);
    }
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "1\tfirst clue\n2\tsecond clue\n"
    );
}

fn assert_error_then_close(client: &mut RawClient, code: ErrorCode) {
    assert!(
        client.closed_within(Duration::from_secs(10)),
        "server did not close"
    );
    let frames = client.buffered_frames();
    let last = frames.last().expect("an ERROR frame before the close");
    match last {
        Frame::Error(e) => assert_eq!(
            e.code,
            code as u16,
            "{:?}",
            String::from_utf8_lossy(e.message)
        ),
        other => panic!("expected ERROR, got {other:?}"),
    }
}

#[test]
fn hostile_input_gets_error_then_close_and_disturbs_nobody() {
    let server = Server::start(&["--shards", "2", "--handshake-timeout-ms", "1000"]);
    let mut bystander = RawClient::open(server.addr);
    bystander.subscribe("calm", StartMode::Live, 0, 0);

    let mut garbage = RawClient::connect(server.addr);
    garbage
        .send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_error_then_close(&mut garbage, ErrorCode::FrameTooLarge);

    let mut oversized = RawClient::open(server.addr);
    oversized.send_raw(&[0x7f, 0xff, 0xff, 0xff]).unwrap();
    assert_error_then_close(&mut oversized, ErrorCode::FrameTooLarge);

    let mut unknown = RawClient::open(server.addr);
    unknown.send_raw(&[0, 0, 0, 1, 0x55]).unwrap();
    assert_error_then_close(&mut unknown, ErrorCode::UnknownFrameType);

    // A frame whose declared length ends inside a field.
    let mut truncated = RawClient::open(server.addr);
    truncated.send_raw(&[0, 0, 0, 3, 0x30, 1, 2]).unwrap();
    assert_error_then_close(&mut truncated, ErrorCode::Malformed);

    let mut no_hello = RawClient::connect(server.addr);
    no_hello.send(&Frame::Ping { nonce: 1 });
    assert_error_then_close(&mut no_hello, ErrorCode::UnexpectedFrame);

    // Slowloris: one byte of HELLO a second never finishes the handshake.
    let mut slow = RawClient::connect(server.addr);
    let hello = common::hello_bytes();
    let started = Instant::now();
    for &byte in hello.iter().take(3) {
        if slow.send_raw(&[byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_error_then_close(&mut slow, ErrorCode::HandshakeTimeout);
    assert!(started.elapsed() < Duration::from_secs(5));

    // The bystander still gets its events.
    publish_all(server.addr, &["calm".to_string()], 3, |i| format!("c{i}"));
    for want in 1..=3 {
        let seq = bystander
            .recv(|f| match f {
                Frame::Event(e) => e.seq,
                other => panic!("{other:?}"),
            })
            .unwrap();
        assert_eq!(seq, want);
    }
}

#[test]
fn sigterm_sends_goaway_to_every_client_and_exits_zero() {
    let mut server = Server::start(&["--shards", "2"]);
    let mut clients: Vec<RawClient> = (0..20).map(|_| RawClient::open(server.addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.subscribe(&format!("t{}", i % 3), StartMode::Live, 0, 0);
    }
    server.signal(libc::SIGTERM);
    for c in &mut clients {
        c.expect(|f| matches!(f, Frame::GoAway(g) if g.reason == GoAwayReason::Shutdown));
        assert!(c.closed_within(Duration::from_secs(5)));
    }
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    // The reference client can no longer connect.
    let mut config = ClientConfig::new(server.addr.to_string());
    config.reconnect = false;
    config.connect_timeout_ms = 500;
    config.connect_retry_ms = 0;
    assert!(Client::connect(config).is_err());
}

/// Publishes 400 events of 60 kB (24 MB: more than the kernel buffers, the
/// connection's queue bound and the topic's memory history together hold)
/// while `stalled` does not read and another subscriber keeps up.
fn overrun_a_stalled_reader(server: &Server, stalled: &mut RawClient) -> u64 {
    let (events, payload) = (400u64, 60_000);
    stalled.subscribe("big", StartMode::Live, 0, 0);
    let mut reader = RawClient::open(server.addr);
    reader.subscribe("big", StartMode::Live, 0, 0);
    let reading = std::thread::spawn(move || {
        for want in 1..=events {
            let seq = reader.recv(|f| match f {
                Frame::Event(e) => e.seq,
                other => panic!("{other:?}"),
            });
            assert_eq!(seq, Some(want), "the reader that keeps up misses nothing");
        }
    });
    // Paced at 12 MB/s, which a reader that keeps up easily follows.
    let body = vec![b'y'; payload];
    let mut publisher =
        common::publish_paced(server.addr, "big", events, &body, Duration::from_millis(5));
    for _ in 0..events {
        publisher.expect(|f| matches!(f, Frame::PublishAck(a) if a.status == 0));
    }
    reading.join().unwrap();
    stalled
        .stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    events
}

#[test]
fn a_stalled_reader_is_fed_from_disk_and_misses_nothing() {
    let server = Server::start(&["--shards", "1"]);
    let mut stalled = RawClient::open(server.addr);
    let events = overrun_a_stalled_reader(&server, &mut stalled);
    // Memory history went long ago; the log on disk fills the gap.
    for want in 1..=events {
        let seq = stalled.recv(|f| match f {
            Frame::Event(e) => e.seq,
            other => panic!("unexpected {other:?}"),
        });
        assert_eq!(
            seq,
            Some(want),
            "a gap or a stall in the catch-up from disk"
        );
    }
}

#[test]
fn without_a_log_a_reader_too_slow_for_the_history_gets_goaway_with_where_to_resume() {
    let server = Server::start(&["--shards", "1", "--durability", "memory"]);
    let mut stalled = RawClient::open(server.addr);
    let events = overrun_a_stalled_reader(&server, &mut stalled);
    // The stalled reader gets a gap-free prefix, then GOAWAY(SlowConsumer)
    // naming the last sequence it was given, so it resumes exactly there.
    let mut last = 0;
    let ending = loop {
        let frame = stalled.recv(|f| match f {
            Frame::Event(e) => Ok(e.seq),
            Frame::GoAway(g) => Err((g.reason, g.resume.first().map(|p| p.last_seq))),
            other => panic!("unexpected {other:?}"),
        });
        match frame {
            Some(Ok(seq)) => {
                assert_eq!(seq, last + 1, "a gap before the GOAWAY");
                last = seq;
            }
            Some(Err(goaway)) => break Some(goaway),
            None => break None,
        }
    };
    let (reason, resume_at) = ending.expect("the stalled reader got no GOAWAY");
    assert_eq!(reason, GoAwayReason::SlowConsumer);
    assert_eq!(
        resume_at,
        Some(last),
        "GOAWAY names the last sequence delivered"
    );
    assert!(
        last < events,
        "everything was kept for the stalled reader: no bound"
    );
    assert!(stalled.closed_within(Duration::from_secs(15)));
}

#[test]
fn sub_reconnects_by_itself_when_the_server_restarts() {
    let mut first = Server::start(&["--shards", "1"]);
    let addr = first.addr;
    let sub = std::process::Command::new(common::BIN)
        .args([
            "sub",
            "--server",
            &addr.to_string(),
            "hunt-r",
            "--count",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    publish_all(addr, &["hunt-r".to_string()], 1, |_| "before".into());

    // A restart: the old process drains, a new one takes the same port.
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(Duration::from_secs(10)), Some(0));
    let second = Server::start(&["--shards", "1", "--listen", &addr.to_string()]);
    assert_eq!(second.addr, addr);
    // The client backs off (jittered, honouring the GOAWAY's retry hint),
    // then resubscribes; publish once it is surely back.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = None;
    let mut sub = Some(sub);
    while Instant::now() < deadline {
        publish_all(addr, &["hunt-r".to_string()], 1, |_| "after".into());
        std::thread::sleep(Duration::from_millis(500));
        if let Some(child) = sub.as_mut() {
            if child.try_wait().unwrap().is_some() {
                out = Some(sub.take().unwrap().wait_with_output().unwrap());
                break;
            }
        }
    }
    let out = out.expect("sub did not come back after the restart");
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "1\tbefore");
    assert!(lines[1].ends_with("\tafter"), "{lines:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("reconnected"), "{stderr}");
    assert!(
        stderr.contains("history was reset"),
        "a new epoch is reported: {stderr}"
    );
}

#[test]
fn sigterm_does_not_wait_past_its_deadline_for_a_client_that_stopped_reading() {
    // Memory durability: 9 MB in 30 ms would fill the storage queue of a
    // host busy with other tests, and this test is about the drain.
    let mut server = Server::start(&[
        "--shards",
        "1",
        "--drain-timeout-ms",
        "1000",
        "--durability",
        "memory",
    ]);
    let mut stalled = RawClient::open(server.addr);
    stalled.subscribe("flood", StartMode::Live, 0, 0);
    // ~9 MB: more than the kernel buffers between us, so the server still
    // holds frames for this client when it is told to stop.
    let body = vec![b'z'; 60_000];
    let mut publisher =
        common::publish_paced(server.addr, "flood", 150, &body, Duration::from_micros(200));
    for _ in 0..150 {
        publisher.expect(|f| matches!(f, Frame::PublishAck(a) if a.status == 0));
    }
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    let took = started.elapsed();
    // The drain deadline (1 s), then at most a second for cancels and
    // closes, plus a tick or two.
    assert!(took < Duration::from_millis(2_500), "drain took {took:?}");
    drop(stalled);
}

#[test]
fn topics_past_the_limit_are_refused_and_the_connection_stays() {
    let server = Server::start(&["--shards", "1", "--topics-max", "3"]);
    let mut publisher = RawClient::open(server.addr);
    let mut statuses = Vec::new();
    for (i, topic) in ["a", "b", "c", "d", "a"].iter().enumerate() {
        publisher.send(&Frame::Publish(Publish {
            request_id: i as u32,
            topic: topic.as_bytes(),
            payload: b"x",
        }));
        statuses.push(
            publisher
                .recv(|f| match f {
                    Frame::PublishAck(a) => a.status,
                    other => panic!("{other:?}"),
                })
                .unwrap(),
        );
    }
    let overloaded = ErrorCode::Overloaded as u16;
    assert_eq!(
        statuses,
        vec![0, 0, 0, overloaded, 0],
        "a fourth topic is refused, known ones go on"
    );
}

#[test]
fn positions_are_validated_and_a_bad_one_is_refused() {
    let server = Server::start(&["--shards", "1"]);
    let mut phone = RawClient::open(server.addr);
    let fix = cluecast_proto::Position {
        lat_e7: -338_567_844,
        lon_e7: 1_512_152_967,
        accuracy_cm: 500,
        client_ts_ms: 1_700_000_000_000,
    };
    phone.send(&Frame::Position(fix));
    // Valid positions are not acknowledged; the connection carries on.
    phone.send(&Frame::Ping { nonce: 3 });
    phone.expect(|f| matches!(f, Frame::Pong { nonce: 3 }));
    phone.send(&Frame::Position(cluecast_proto::Position {
        lat_e7: 900_000_001,
        ..fix
    }));
    assert_error_then_close(&mut phone, ErrorCode::InvalidPosition);
}

#[test]
fn unsubscribe_stops_delivery_and_subscriptions_are_bounded() {
    let server = Server::start(&["--shards", "2", "--subscriptions-max", "2"]);
    let mut phone = RawClient::open(server.addr);
    phone.subscribe("u1", StartMode::Live, 0, 0);
    publish_all(server.addr, &["u1".to_string()], 1, |_| "one".into());
    phone.expect(|f| matches!(f, Frame::Event(e) if e.seq == 1));
    phone.send(&Frame::Unsubscribe { topic: b"u1" });
    phone.expect(|f| matches!(f, Frame::Unsubscribed { topic } if *topic == b"u1"));
    publish_all(server.addr, &["u1".to_string()], 1, |_| "two".into());
    // Nothing of u1 arrives any more: the next frame is the PONG.
    phone.send(&Frame::Ping { nonce: 7 });
    phone.expect(|f| matches!(f, Frame::Pong { nonce: 7 }));

    phone.subscribe("u2", StartMode::Live, 0, 0);
    phone.subscribe("u3", StartMode::Live, 0, 0);
    phone.send(&Frame::Subscribe(cluecast_proto::Subscribe {
        mode: StartMode::Live,
        epoch: 0,
        last_seq: 0,
        topic: b"u4",
    }));
    assert_error_then_close(&mut phone, ErrorCode::TooManySubscriptions);
}

#[test]
fn a_silent_connection_times_out_and_a_pinging_one_stays() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--heartbeat-ms",
        "100",
        "--idle-timeout-ms",
        "400",
    ]);
    let mut silent = RawClient::open(server.addr);
    let mut pinging = RawClient::open(server.addr);
    let started = Instant::now();
    for nonce in 0..10 {
        pinging.send(&Frame::Ping { nonce });
        pinging.expect(|f| matches!(f, Frame::Pong { .. }));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_error_then_close(&mut silent, ErrorCode::IdleTimeout);
    assert!(started.elapsed() >= Duration::from_millis(400));
    pinging.send(&Frame::Ping { nonce: 99 });
    pinging.expect(|f| matches!(f, Frame::Pong { nonce: 99 }));
}
