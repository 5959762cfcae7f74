//! What a close leaves on disk: the deleted history stays deleted across a
//! clean restart and a kill -9, other topics untouched; in async
//! durability a close followed at once by a new history is stored as
//! exactly that new history.

use cluecast_proto::client::{Client, ClientConfig, Delivery, Start};
use cluecast_proto::ACK_FLAG_DURABLE;

use super::*;

fn reference_client(server: &Server) -> Client {
    let mut config = ClientConfig::new(server.addr.to_string());
    config.reconnect = false;
    Client::connect(config).expect("connect")
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
