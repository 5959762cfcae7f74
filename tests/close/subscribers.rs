//! A close on two full shards: every subscriber on either shard gets the
//! topic's last event then the notice, and nothing of it after; the name
//! starts a new history (a new epoch, from 1) that a resume of the old one
//! is moved to; topics without events close with last sequence 0.

use std::net::SocketAddr;
use std::time::Instant;

use cluecast_proto::{Filled, GoAwayReason, Hello};

use super::*;

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

    // Connections spread by the kernel's hash: with the default
    // incoming-cpu steering, a test thread the scheduler keeps on one CPU
    // (a busy host) would only ever reach that CPU's shard, full at five.
    let server = Server::start(&[
        "--shards",
        "2",
        "--steering",
        "off",
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
