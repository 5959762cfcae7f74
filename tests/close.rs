//! Closing a topic (protocol section 8) with real processes: every
//! subscriber on every shard is told after the topic's last event and hears
//! nothing more of it; the name starts a new history (a new epoch, from 1);
//! the deleted history stays deleted across a clean restart and a kill -9;
//! the CLI closes topics and `sub` ends on a close; a close pipelined after
//! publishes waits for them; and in async durability a close followed at
//! once by a new history is stored as exactly that new history.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cluecast::shard::topic_owner;
use cluecast_proto::client::{Client, ClientConfig, Delivery, Start};
use cluecast_proto::{
    ErrorCode, Filled, Frame, GoAwayReason, Hello, Publish, StartMode, SubscribeStatus, TopicClose,
    ACK_FLAG_DURABLE,
};
use common::{RawClient, Server, TempDir};

/// How long any one expected frame may take before the test fails.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// A frame from the server, owned, with what the tests look at.
#[derive(Clone, Debug, PartialEq, Eq)]
enum In {
    Event {
        topic: String,
        seq: u64,
        epoch: u64,
        payload: String,
    },
    Closed {
        request_id: u32,
        status: u16,
        last_seq: u64,
        topic: String,
    },
    Ack {
        request_id: u32,
        status: u16,
        flags: u8,
        epoch: u64,
        seq: u64,
    },
    Subscribed {
        topic: String,
        status: SubscribeStatus,
        epoch: u64,
        oldest_seq: u64,
        last_seq: u64,
    },
    Pong(u64),
    Other(String),
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl In {
    fn of(frame: Frame<'_>) -> In {
        match frame {
            Frame::Event(e) => In::Event {
                topic: text(e.topic),
                seq: e.seq,
                epoch: e.epoch,
                payload: text(e.payload),
            },
            Frame::TopicClosed(c) => In::Closed {
                request_id: c.request_id,
                status: c.status,
                last_seq: c.last_seq,
                topic: text(c.topic),
            },
            Frame::PublishAck(a) => In::Ack {
                request_id: a.request_id,
                status: a.status,
                flags: a.flags,
                epoch: a.epoch,
                seq: a.seq,
            },
            Frame::Subscribed(s) => In::Subscribed {
                topic: text(s.topic),
                status: s.status,
                epoch: s.epoch,
                oldest_seq: s.oldest_seq,
                last_seq: s.last_seq,
            },
            Frame::Pong { nonce } => In::Pong(nonce),
            other => In::Other(format!("{other:?}")),
        }
    }
}

/// The next frame; fails the test if none comes within `FRAME_WAIT`.
fn next(c: &mut RawClient) -> In {
    c.stream.set_read_timeout(Some(FRAME_WAIT)).unwrap();
    c.recv(In::of).expect("the server closed the connection")
}

fn event(topic: &str, seq: u64, epoch: u64, payload: &str) -> In {
    In::Event {
        topic: topic.into(),
        seq,
        epoch,
        payload: payload.into(),
    }
}

fn closed(request_id: u32, last_seq: u64, topic: &str) -> In {
    In::Closed {
        request_id,
        status: 0,
        last_seq,
        topic: topic.into(),
    }
}

/// The first `{prefix}-{i}` whose owner among `shards` is `owner`.
fn owned_by(prefix: &str, owner: usize, shards: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|name| topic_owner(name.as_bytes(), shards) == owner)
        .unwrap()
}

fn publish_frame(request_id: u32, topic: &str, payload: &str, into: &mut Vec<u8>) {
    Frame::Publish(Publish {
        request_id,
        topic: topic.as_bytes(),
        payload: payload.as_bytes(),
    })
    .encode(into);
}

fn close_frame(request_id: u32, topic: &str, into: &mut Vec<u8>) {
    Frame::TopicClose(TopicClose {
        request_id,
        topic: topic.as_bytes(),
    })
    .encode(into);
}

fn send_bytes(c: &mut RawClient, bytes: &[u8]) {
    c.send_raw(bytes).expect("send");
}

/// A connection the server admitted (WELCOME). A shard at its
/// `--connections-max` answers GOAWAY(ServerFull) and closes; such
/// connections are simply tried again, so once a test holds
/// `shards × connections-max` connections every shard holds exactly
/// `connections-max` of them, wherever the kernel's reuseport hash put each.
fn open_admitted(addr: SocketAddr) -> RawClient {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut hello = Vec::new();
    Frame::Hello(Hello {
        version_min: 1,
        version_max: 1,
        client_id: b"close-test",
        token: b"",
    })
    .encode(&mut hello);
    let mut refusals = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "no shard admitted a connection ({refusals} refusals)"
        );
        let mut c = RawClient::connect(addr);
        if c.send_raw(&hello).is_ok() {
            loop {
                match c.next_frame() {
                    Ok(Some(Frame::Welcome(_))) => return c,
                    Ok(Some(Frame::GoAway(_))) | Err(_) => break,
                    Ok(Some(other)) => panic!("expected WELCOME or GOAWAY, got {other:?}"),
                    Ok(None) => match c.fill() {
                        Ok(Filled::Bytes(_)) => {}
                        _ => break, // refused: EOF or reset
                    },
                }
            }
        }
        refusals += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn subscribe(c: &mut RawClient, topic: &str, mode: StartMode, epoch: u64, last_seq: u64) -> In {
    c.send(&Frame::Subscribe(cluecast_proto::Subscribe {
        mode,
        epoch,
        last_seq,
        topic: topic.as_bytes(),
    }));
    next(c)
}

fn subscribed(topic: &str, status: SubscribeStatus, epoch: u64, oldest: u64, last: u64) -> In {
    In::Subscribed {
        topic: topic.into(),
        status,
        epoch,
        oldest_seq: oldest,
        last_seq: last,
    }
}

fn reference_client(server: &Server) -> Client {
    let mut config = ClientConfig::new(server.addr.to_string());
    config.reconnect = false;
    Client::connect(config).expect("connect")
}

#[test]
fn closing_a_topic_ends_it_for_every_subscriber_and_starts_a_new_history() {
    const SHARDS: usize = 2;
    const PER_SHARD: usize = 5;
    // T and its barrier share an owner: on every shard T's events and
    // closes arrive before the barrier's event, from the same place.
    let t = owned_by("hunt-t", 0, SHARDS);
    let barrier = owned_by("barrier", 0, SHARDS);
    let u = owned_by("hunt-u", 1, SHARDS);
    let never = [owned_by("never", 0, SHARDS), owned_by("never", 1, SHARDS)];

    let server = Server::start(&[
        "--shards",
        "2",
        "--durability",
        "memory",
        "--connections-max",
        &PER_SHARD.to_string(),
    ]);
    // Ten connections fill both shards: each holds exactly five, so with
    // four that are not T subscribers every shard has at least one.
    let mut conns: Vec<RawClient> = (0..SHARDS * PER_SHARD)
        .map(|_| open_admitted(server.addr))
        .collect();
    // Both shards are full now (so each holds five of them).
    let mut extra = RawClient::connect(server.addr);
    extra.expect(|f| matches!(f, Frame::GoAway(g) if g.reason == GoAwayReason::ServerFull));
    drop(extra);
    let mut resumer = conns.pop().unwrap();
    let mut closer = conns.pop().unwrap();
    let mut publisher = conns.pop().unwrap();
    let mut u_sub = conns.pop().unwrap();
    let mut t_subs = conns;
    assert_eq!(t_subs.len(), 6);

    for s in &mut t_subs {
        // A topic without any event has epoch 0.
        let got = subscribe(s, &t, StartMode::Live, 0, 0);
        assert_eq!(got, subscribed(&t, SubscribeStatus::Ok, 0, 0, 0));
    }
    let got = subscribe(&mut u_sub, &u, StartMode::Live, 0, 0);
    assert_eq!(got, subscribed(&u, SubscribeStatus::Ok, 0, 0, 0));

    // 50 events to T and 5 to U, pipelined.
    let mut bytes = Vec::new();
    for i in 1..=50u32 {
        publish_frame(i, &t, &format!("t{i}"), &mut bytes);
        if i % 10 == 0 {
            publish_frame(100 + i / 10, &u, &format!("u{}", i / 10), &mut bytes);
        }
    }
    send_bytes(&mut publisher, &bytes);
    let (mut t_epoch, mut u_epoch) = (None, None);
    for _ in 0..55 {
        match next(&mut publisher) {
            In::Ack {
                request_id,
                status: 0,
                epoch,
                seq,
                ..
            } => {
                let (topic_epoch, want_seq) = if request_id <= 50 {
                    (&mut t_epoch, u64::from(request_id))
                } else {
                    (&mut u_epoch, u64::from(request_id - 100))
                };
                assert_eq!(seq, want_seq, "ack of request {request_id}");
                assert_ne!(epoch, 0);
                assert_eq!(*topic_epoch.get_or_insert(epoch), epoch, "one epoch");
            }
            other => panic!("expected a successful PUBLISH_ACK, got {other:?}"),
        }
    }
    let (t_epoch, u_epoch) = (t_epoch.unwrap(), u_epoch.unwrap());

    // The closer is subscribed to nothing: its answer is the next frame.
    let mut bytes = Vec::new();
    close_frame(7, &t, &mut bytes);
    send_bytes(&mut closer, &bytes);
    assert_eq!(next(&mut closer), closed(7, 50, &t));
    let line = format!("topic {t:?} closed after sequence 50");
    assert!(
        server.logged(&line, Duration::from_secs(5)),
        "no log line {line:?}"
    );

    // Every T subscriber, on both shards: 1..=50, then the notice.
    for (n, s) in t_subs.iter_mut().enumerate() {
        for i in 1..=50u64 {
            assert_eq!(
                next(s),
                event(&t, i, t_epoch, &format!("t{i}")),
                "T subscriber {n}"
            );
        }
        assert_eq!(next(s), closed(0, 50, &t), "T subscriber {n}");
    }
    for j in 1..=5u64 {
        assert_eq!(next(&mut u_sub), event(&u, j, u_epoch, &format!("u{j}")));
    }

    // A barrier every connection but the closer waits for.
    let mut barrier_subs: Vec<&mut RawClient> = t_subs.iter_mut().collect();
    barrier_subs.push(&mut u_sub);
    barrier_subs.push(&mut resumer);
    for s in barrier_subs.iter_mut() {
        let got = subscribe(s, &barrier, StartMode::Live, 0, 0);
        assert_eq!(got, subscribed(&barrier, SubscribeStatus::Ok, 0, 0, 0));
    }

    // The name starts a new history: seq 1 in a new, non-zero epoch.
    let mut bytes = Vec::new();
    publish_frame(200, &t, "again", &mut bytes);
    publish_frame(201, &barrier, "barrier", &mut bytes);
    send_bytes(&mut publisher, &bytes);
    let In::Ack {
        request_id: 200,
        status: 0,
        epoch: new_epoch,
        seq: 1,
        ..
    } = next(&mut publisher)
    else {
        panic!("the first publish after the close is not seq 1");
    };
    assert_ne!(new_epoch, 0);
    assert_ne!(new_epoch, t_epoch, "a new history needs a new epoch");
    let ack = next(&mut publisher);
    assert!(
        matches!(
            ack,
            In::Ack {
                request_id: 201,
                status: 0,
                seq: 1,
                ..
            }
        ),
        "{ack:?}"
    );
    let barrier_epoch = match ack {
        In::Ack { epoch, .. } => epoch,
        _ => unreachable!(),
    };
    // Nothing of T reaches its former subscribers (the new event was
    // published before the barrier), and U's subscriber heard nothing of
    // T's close.
    for (n, s) in barrier_subs.iter_mut().enumerate() {
        assert_eq!(
            next(s),
            event(&barrier, 1, barrier_epoch, "barrier"),
            "connection {n}: something came before the barrier"
        );
    }

    // Resuming the old history: EpochChanged, then the new history.
    let got = subscribe(&mut resumer, &t, StartMode::Resume, t_epoch, 50);
    assert_eq!(
        got,
        subscribed(&t, SubscribeStatus::EpochChanged, new_epoch, 1, 1)
    );
    assert_eq!(next(&mut resumer), event(&t, 1, new_epoch, "again"));

    // Topics that never had an event close with last_seq 0, on either owner.
    let mut bytes = Vec::new();
    close_frame(8, &never[0], &mut bytes);
    close_frame(9, &never[1], &mut bytes);
    send_bytes(&mut closer, &bytes);
    let mut answers = vec![next(&mut closer), next(&mut closer)];
    answers.sort_by_key(|a| format!("{a:?}"));
    assert_eq!(
        answers,
        vec![closed(8, 0, &never[0]), closed(9, 0, &never[1])]
    );

    // The second history closes too, after its one event.
    let mut bytes = Vec::new();
    close_frame(10, &t, &mut bytes);
    send_bytes(&mut closer, &bytes);
    assert_eq!(next(&mut closer), closed(10, 1, &t));
    assert_eq!(next(&mut resumer), closed(0, 1, &t));
}

/// Publishes pipelined (a window of `window` in flight) and returns the
/// acks as (status, flags, epoch, seq), in request order.
fn publish_pipelined(
    c: &mut RawClient,
    topic: &str,
    payloads: &[String],
    window: usize,
) -> Vec<(u16, u8, u64, u64)> {
    let mut acks = Vec::new();
    let mut bytes = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        bytes.clear();
        publish_frame(i as u32 + 1, topic, payload, &mut bytes);
        send_bytes(c, &bytes);
        while i + 1 - acks.len() > window {
            acks.push(take_ack(c, acks.len() as u32 + 1));
        }
    }
    while acks.len() < payloads.len() {
        acks.push(take_ack(c, acks.len() as u32 + 1));
    }
    acks
}

fn take_ack(c: &mut RawClient, request_id: u32) -> (u16, u8, u64, u64) {
    match next(c) {
        In::Ack {
            request_id: id,
            status,
            flags,
            epoch,
            seq,
        } if id == request_id => (status, flags, epoch, seq),
        other => panic!("expected the ack of request {request_id}, got {other:?}"),
    }
}

/// The startup line saying how many topics the data directory held.
fn recovered(server: &Server) -> String {
    server
        .startup_log
        .iter()
        .find(|l| l.contains("topic(s) recovered"))
        .cloned()
        .unwrap_or_else(|| panic!("no recovery line in {:?}", server.startup_log))
}

#[test]
fn a_closed_topic_is_gone_from_disk_after_a_restart() {
    let data = TempDir::new("close-restart");
    let args = ["--data-dir", data.path_str(), "--shards", "2"];
    let t = owned_by("hunt-t", 0, 2);
    let u = owned_by("hunt-u", 1, 2);
    const N: u64 = 200;

    // Run 1: T gets N events and is closed; U keeps 5.
    let mut server = Server::start(&args);
    assert!(recovered(&server).ends_with(": 0 topic(s) recovered"));
    let mut t_sub = RawClient::open(server.addr);
    subscribe(&mut t_sub, &t, StartMode::Live, 0, 0);
    let mut publisher = RawClient::open(server.addr);
    let payloads: Vec<String> = (1..=N).map(|i| format!("t{i}")).collect();
    let acks = publish_pipelined(&mut publisher, &t, &payloads, 64);
    let t_epoch = acks[0].2;
    for (i, &(status, flags, epoch, seq)) in acks.iter().enumerate() {
        assert_eq!((status, epoch, seq), (0, t_epoch, i as u64 + 1));
        assert_eq!(
            flags & ACK_FLAG_DURABLE,
            ACK_FLAG_DURABLE,
            "sync durability"
        );
    }
    let u_payloads: Vec<String> = (1..=5).map(|i| format!("u{i}")).collect();
    let u_acks = publish_pipelined(&mut publisher, &u, &u_payloads, 64);
    let u_epoch = u_acks[0].2;
    assert!(u_acks.iter().all(|a| a.0 == 0 && a.2 == u_epoch));
    assert_eq!(reference_client(&server).close_topic(&t).unwrap(), N);
    for i in 1..=N {
        assert_eq!(next(&mut t_sub), event(&t, i, t_epoch, &format!("t{i}")));
    }
    assert_eq!(next(&mut t_sub), closed(0, N, &t));
    drop((t_sub, publisher));
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    drop(server);

    // Run 2, after a clean stop: only U is on disk.
    let server = Server::start(&args);
    assert!(
        recovered(&server).ends_with(": 1 topic(s) recovered"),
        "{}",
        recovered(&server)
    );
    let mut c = reference_client(&server);
    let s = c
        .subscribe(
            &t,
            Start::Resume {
                epoch: t_epoch,
                last_seq: N,
            },
        )
        .unwrap();
    assert_eq!(
        (s.status, s.epoch, s.oldest_seq, s.last_seq),
        (SubscribeStatus::EpochChanged, 0, 0, 0),
        "T has no history left"
    );
    let mut from_start = reference_client(&server);
    let s = from_start.subscribe(&t, Start::From(1)).unwrap();
    assert_eq!(
        (s.status, s.epoch, s.oldest_seq, s.last_seq),
        (SubscribeStatus::Ok, 0, 0, 0)
    );
    let nothing = from_start.next_timeout(Duration::from_millis(300)).unwrap();
    assert_eq!(nothing, None, "the closed history came back from disk");
    let ack = reference_client(&server).publish(&t, b"anew").unwrap();
    assert_eq!(ack.seq, 1);
    assert!(ack.epoch != 0 && ack.epoch != t_epoch, "{ack:?}");
    let t_epoch_2 = ack.epoch;
    for sub in [&mut c, &mut from_start] {
        match sub.next_timeout(FRAME_WAIT).unwrap() {
            Some(Delivery::Event(e)) => {
                assert_eq!(
                    (e.seq, e.epoch, &e.payload[..]),
                    (1, t_epoch_2, &b"anew"[..])
                )
            }
            other => panic!("expected the new history's first event, got {other:?}"),
        }
    }
    // U resumes from disk, its epoch and events as they were.
    let assert_u_kept = |server: &Server| {
        let mut c = reference_client(server);
        let s = c
            .subscribe(
                &u,
                Start::Resume {
                    epoch: u_epoch,
                    last_seq: 0,
                },
            )
            .unwrap();
        assert_eq!(
            (s.status, s.epoch, s.oldest_seq, s.last_seq),
            (SubscribeStatus::Ok, u_epoch, 1, 5)
        );
        for j in 1..=5u64 {
            match c.next_timeout(FRAME_WAIT).unwrap() {
                Some(Delivery::Event(e)) => assert_eq!(
                    (e.seq, e.epoch, e.payload),
                    (j, u_epoch, format!("u{j}").into_bytes())
                ),
                other => panic!("expected U's event {j}, got {other:?}"),
            }
        }
    };
    assert_u_kept(&server);

    // Close the new history and kill -9 at once: the answer came after the
    // deletion was synced, so it holds.
    assert_eq!(reference_client(&server).close_topic(&t).unwrap(), 1);
    for sub in [&mut c, &mut from_start] {
        assert_eq!(
            sub.next_timeout(FRAME_WAIT).unwrap(),
            Some(Delivery::Closed {
                topic: t.clone(),
                last_seq: 1
            })
        );
        assert_eq!(sub.resume_point(&t), None, "a closed topic is not resumed");
    }
    let mut server = server;
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(5));
    drop(server);

    // Run 3, after kill -9: still only U.
    let server = Server::start(&args);
    assert!(
        recovered(&server).ends_with(": 1 topic(s) recovered"),
        "{}",
        recovered(&server)
    );
    let mut c = reference_client(&server);
    let s = c
        .subscribe(
            &t,
            Start::Resume {
                epoch: t_epoch_2,
                last_seq: 1,
            },
        )
        .unwrap();
    assert_eq!(
        (s.status, s.epoch, s.oldest_seq, s.last_seq),
        (SubscribeStatus::EpochChanged, 0, 0, 0)
    );
    assert_u_kept(&server);
}

/// Runs the CLI to completion.
fn cli(args: &[&str]) -> std::process::Output {
    Command::new(common::BIN).args(args).output().unwrap()
}

#[test]
fn the_cli_closes_a_topic() {
    let server = Server::start(&["--shards", "2"]);
    let addr = server.addr.to_string();
    for i in 1..=3 {
        let out = cli(&["pub", "--server", &addr, "hunt-cli", &format!("clue {i}")]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{i}\n"));
    }
    let mut sub = Command::new(common::BIN)
        .args(["sub", "--server", &addr, "hunt-cli", "--from", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = sub.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut stderr = sub.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match lines.recv_timeout(FRAME_WAIT) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = sub.kill();
                panic!("sub printed only {seen:?}");
            }
        }
    }

    let out = cli(&["topic", "close", "--server", &addr, "hunt-cli"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "3\n");

    let deadline = Instant::now() + FRAME_WAIT;
    let status = loop {
        if let Some(status) = sub.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = sub.kill();
            let _ = sub.wait();
            panic!("sub did not exit after the close");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "sub: {status:?}: {stderr}");
    assert!(
        stderr.contains("cluecast: the topic was closed after sequence 3"),
        "{stderr:?}"
    );
    seen.extend(lines.try_iter());
    assert_eq!(seen, ["1\tclue 1", "2\tclue 2", "3\tclue 3"]);

    // Closing it again: nothing left, last sequence 0.
    let out = cli(&["topic", "close", "--server", &addr, "hunt-cli"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "0\n");
}

#[test]
fn a_close_waits_for_events_published_before_it() {
    const BEFORE: u32 = 250;
    const AFTER: u32 = 20;
    // One topic per owner: the publisher's shard sequences one of them
    // itself and forwards the other.
    let topics = [owned_by("hunt-a", 0, 2), owned_by("hunt-b", 1, 2)];
    let barriers = [owned_by("barrier", 0, 2), owned_by("barrier", 1, 2)];
    let server = Server::start(&["--shards", "2", "--durability", "sync"]);
    let mut sub = RawClient::open(server.addr);
    for name in topics.iter().chain(&barriers) {
        subscribe(&mut sub, name, StartMode::Live, 0, 0);
    }

    // Request ids: topic k's publishes before the close are k*10000 + i,
    // after it k*10000 + 5000 + j; its close is 90000 + k.
    let mut bytes = Vec::new();
    for i in 1..=BEFORE {
        for (k, name) in topics.iter().enumerate() {
            publish_frame(k as u32 * 10_000 + i, name, &format!("h1-{i}"), &mut bytes);
        }
    }
    for (k, name) in topics.iter().enumerate() {
        close_frame(90_000 + k as u32, name, &mut bytes);
    }
    for j in 1..=AFTER {
        for (k, name) in topics.iter().enumerate() {
            let id = k as u32 * 10_000 + 5_000 + j;
            publish_frame(id, name, &format!("h2-{j}"), &mut bytes);
        }
    }
    let mut publisher = RawClient::open(server.addr);
    send_bytes(&mut publisher, &bytes);

    let answers_due = 2 * (BEFORE + AFTER + 1) as usize;
    let frames: Vec<In> = (0..answers_due).map(|_| next(&mut publisher)).collect();
    let overloaded = ErrorCode::Overloaded as u16;
    let mut histories = Vec::new();
    for (k, name) in topics.iter().enumerate() {
        let k = k as u32;
        let position = |want: &dyn Fn(&In) -> bool| frames.iter().position(want);
        let close_at =
            position(&|f| matches!(f, In::Closed { request_id, .. } if *request_id == 90_000 + k))
                .unwrap_or_else(|| panic!("{name}: no answer to the close"));
        let In::Closed {
            status, last_seq, ..
        } = frames[close_at].clone()
        else {
            unreachable!()
        };
        assert_eq!(status, 0, "{name}: the close was refused");

        // (request, position among the answers, status, epoch, seq, payload)
        let ack_of = |id: u32, payload: String| {
            let at = position(&|f| matches!(f, In::Ack { request_id, .. } if *request_id == id))
                .unwrap_or_else(|| panic!("{name}: no ack for request {id}"));
            let In::Ack {
                status,
                flags,
                epoch,
                seq,
                ..
            } = frames[at]
            else {
                unreachable!()
            };
            assert!(
                status == 0 || status == overloaded,
                "{name}: request {id} got status {status}"
            );
            if status == 0 {
                assert_eq!(flags & ACK_FLAG_DURABLE, ACK_FLAG_DURABLE);
            }
            (at, status, epoch, seq, payload)
        };
        let before: Vec<_> = (1..=BEFORE)
            .map(|i| ack_of(k * 10_000 + i, format!("h1-{i}")))
            .collect();
        let after: Vec<_> = (1..=AFTER)
            .map(|j| ack_of(k * 10_000 + 5_000 + j, format!("h2-{j}")))
            .collect();

        // Everything published before the close is answered before it,
        // and the close's last sequence is the highest of them.
        let ok_before: Vec<_> = before.iter().filter(|a| a.1 == 0).collect();
        for a in &before {
            assert!(
                a.0 < close_at,
                "{name}: an ack came after the close's answer"
            );
        }
        let epoch_1 = ok_before.first().map_or(0, |a| a.2);
        for (n, a) in ok_before.iter().enumerate() {
            assert_eq!((a.2, a.3), (epoch_1, n as u64 + 1), "{name}: contiguous");
        }
        assert_eq!(last_seq, ok_before.len() as u64, "{name}: close's last_seq");
        // What was published after it starts a new history (or is refused
        // while the close is under way).
        let ok_after: Vec<_> = after.iter().filter(|a| a.1 == 0).collect();
        let epoch_2 = ok_after.first().map_or(0, |a| a.2);
        for (n, a) in ok_after.iter().enumerate() {
            assert!(a.0 > close_at, "{name}: a new event acked before the close");
            assert_eq!((a.2, a.3), (epoch_2, n as u64 + 1), "{name}: new history");
        }
        if !ok_after.is_empty() {
            assert!(
                epoch_2 != 0 && epoch_2 != epoch_1,
                "{name}: same epoch again"
            );
        }
        let refused_after_close_answer = after.iter().filter(|a| a.1 != 0 && a.0 > close_at);
        eprintln!(
            "{name}: {} of {BEFORE} before the close published ({} overloaded), close at \
             answer {close_at} with last_seq {last_seq}; {} of {AFTER} after it published, \
             {} refused after the close's answer",
            ok_before.len(),
            BEFORE as usize - ok_before.len(),
            ok_after.len(),
            refused_after_close_answer.count(),
        );
        histories.push((
            name.clone(),
            epoch_1,
            ok_before.iter().map(|a| a.4.clone()).collect::<Vec<_>>(),
            epoch_2,
            ok_after.iter().map(|a| a.4.clone()).collect::<Vec<_>>(),
        ));
    }

    // Once the close is answered the name takes events again (a publish
    // pipelined behind the close may have been refused while it was under
    // way): they continue the second history, or start it.
    for (k, (name, epoch_1, _, epoch_2, second)) in histories.iter_mut().enumerate() {
        let id = 95_000 + k as u32;
        let mut bytes = Vec::new();
        publish_frame(id, name, "h2-late", &mut bytes);
        send_bytes(&mut publisher, &bytes);
        let (status, _, epoch, seq) = take_ack(&mut publisher, id);
        assert_eq!((status, seq), (0, second.len() as u64 + 1), "{name}");
        if second.is_empty() {
            assert!(epoch != 0 && epoch != *epoch_1, "{name}: same epoch again");
            *epoch_2 = epoch;
        }
        assert_eq!(epoch, *epoch_2, "{name}");
        second.push("h2-late".into());
    }

    // The subscriber saw each first history whole, then the notice, and
    // nothing of the second history before the barriers.
    let mut bytes = Vec::new();
    for (k, name) in barriers.iter().enumerate() {
        publish_frame(99_000 + k as u32, name, "barrier", &mut bytes);
    }
    send_bytes(&mut publisher, &bytes);
    for _ in &barriers {
        assert!(matches!(next(&mut publisher), In::Ack { status: 0, .. }));
    }
    let mut per_topic: Vec<Vec<In>> = vec![Vec::new(); 2];
    let mut barriers_seen = 0;
    while barriers_seen < 2 {
        match next(&mut sub) {
            In::Event { topic, .. } if barriers.contains(&topic) => barriers_seen += 1,
            f @ (In::Event { .. } | In::Closed { .. }) => {
                let topic = match &f {
                    In::Event { topic, .. } | In::Closed { topic, .. } => topic.clone(),
                    _ => unreachable!(),
                };
                let k = topics.iter().position(|n| *n == topic).unwrap();
                per_topic[k].push(f);
            }
            other => panic!("subscriber: unexpected {other:?}"),
        }
    }
    for (k, (name, epoch_1, first, epoch_2, second)) in histories.iter().enumerate() {
        let mut want: Vec<In> = first
            .iter()
            .enumerate()
            .map(|(n, p)| event(name, n as u64 + 1, *epoch_1, p))
            .collect();
        want.push(closed(0, first.len() as u64, name));
        assert_eq!(per_topic[k], want, "{name}: the subscriber's view");

        // Whatever is stored now is the second history only.
        let mut fresh = RawClient::open(server.addr);
        let got = subscribe(&mut fresh, name, StartMode::Resume, 0, 0);
        let (oldest, last) = if second.is_empty() {
            (0, 0)
        } else {
            (1, second.len() as u64)
        };
        assert_eq!(
            got,
            subscribed(name, SubscribeStatus::Ok, *epoch_2, oldest, last)
        );
        for (n, p) in second.iter().enumerate() {
            assert_eq!(next(&mut fresh), event(name, n as u64 + 1, *epoch_2, p));
        }
    }
}

#[test]
fn in_async_durability_a_close_and_the_next_history_survive_a_restart() {
    // Async durability does not hold the close for the disk: the old
    // history, its deletion and the new history's first events reach the
    // writer back to back (usually in one batch).
    let data = TempDir::new("close-async");
    let args = [
        "--data-dir",
        data.path_str(),
        "--shards",
        "2",
        "--durability",
        "async",
    ];
    let t = owned_by("hunt-t", 1, 2);
    let u = owned_by("hunt-u", 0, 2);
    let mut server = Server::start(&args);
    let mut publisher = RawClient::open(server.addr);
    let mut bytes = Vec::new();
    for i in 1..=200u32 {
        publish_frame(i, &t, &format!("h1-{i}"), &mut bytes);
    }
    close_frame(1_000, &t, &mut bytes);
    for j in 1..=20u32 {
        publish_frame(2_000 + j, &t, &format!("h2-{j}"), &mut bytes);
    }
    for j in 1..=5u32 {
        publish_frame(3_000 + j, &u, &format!("u{j}"), &mut bytes);
    }
    send_bytes(&mut publisher, &bytes);
    let (mut epoch_1, mut epoch_2, mut u_epoch) = (0, 0, 0);
    let mut close_seen = false;
    for _ in 0..226 {
        match next(&mut publisher) {
            In::Closed {
                request_id: 1_000,
                status: 0,
                last_seq,
                ..
            } => {
                assert_eq!(last_seq, 200);
                close_seen = true;
            }
            In::Ack {
                request_id,
                status: 0,
                epoch,
                seq,
                ..
            } => {
                let (history, want_seq) = match request_id {
                    1..=200 => {
                        assert!(!close_seen, "ack {request_id} after the close's answer");
                        (&mut epoch_1, u64::from(request_id))
                    }
                    2_001..=2_020 => {
                        assert!(close_seen, "ack {request_id} before the close's answer");
                        (&mut epoch_2, u64::from(request_id - 2_000))
                    }
                    _ => (&mut u_epoch, u64::from(request_id - 3_000)),
                };
                assert_eq!(seq, want_seq, "request {request_id}");
                if *history == 0 {
                    *history = epoch;
                }
                assert_eq!(epoch, *history, "request {request_id}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(close_seen);
    assert!(epoch_2 != 0 && epoch_2 != epoch_1);
    drop(publisher);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    drop(server);

    let server = Server::start(&args);
    assert!(
        recovered(&server).ends_with(": 2 topic(s) recovered"),
        "{}",
        recovered(&server)
    );
    // T holds exactly its second history, U is untouched.
    for (topic, epoch, payloads) in [
        (
            &t,
            epoch_2,
            (1..=20).map(|j| format!("h2-{j}")).collect::<Vec<_>>(),
        ),
        (&u, u_epoch, (1..=5).map(|j| format!("u{j}")).collect()),
    ] {
        let mut c = RawClient::open(server.addr);
        let got = subscribe(&mut c, topic, StartMode::Resume, 0, 0);
        let last = payloads.len() as u64;
        assert_eq!(got, subscribed(topic, SubscribeStatus::Ok, epoch, 1, last));
        for (n, p) in payloads.iter().enumerate() {
            assert_eq!(next(&mut c), event(topic, n as u64 + 1, epoch, p));
        }
    }
    let mut c = RawClient::open(server.addr);
    let got = subscribe(&mut c, &t, StartMode::Resume, epoch_1, 200);
    assert_eq!(
        got,
        subscribed(&t, SubscribeStatus::EpochChanged, epoch_2, 1, 20)
    );
    assert_eq!(next(&mut c), event(&t, 1, epoch_2, "h2-1"));
}
