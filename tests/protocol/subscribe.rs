//! Sections 3.3 to 3.5 and 4: where delivery starts for each kind of
//! SUBSCRIBE, the subscription limit, and UNSUBSCRIBE.

use super::*;
use SubscribeStatus as Status;

#[test]
fn each_subscribe_starts_delivery_where_section_4_says() {
    let server = start(&[]);
    let addr = server.addr;
    let topic = b"hunt-4.clues";
    let mut publisher = open(addr);
    let (epoch, _) = published(&mut publisher, topic, b"1");
    published(&mut publisher, topic, b"2");
    published(&mut publisher, topic, b"3");
    let stale = epoch.wrapping_add(1).max(1);

    // Each connection subscribes once; SUBSCRIBED must come first, before
    // any replayed EVENT (`subscribed` fails on anything else).
    let subscriber = |request: Vec<u8>, answer: (Status, u64, u64, u64), replayed: &[u64]| {
        let mut c = open(addr);
        assert_eq!(subscribed(&mut c, &request), answer);
        assert_eq!(seqs(&mut c, replayed.len()), replayed);
        c
    };
    // Live ignores the epoch and last_seq it carries.
    let mut live_ = subscriber(
        subscribe(StartMode::Live, 999, 1, topic),
        (Status::Ok, epoch, 1, 3),
        &[],
    );
    let mut all = subscriber(resume(0, 0, topic), (Status::Ok, epoch, 1, 3), &[1, 2, 3]);
    let mut after_2 = subscriber(resume(epoch, 2, topic), (Status::Ok, epoch, 1, 3), &[3]);
    let mut other_epoch = subscriber(
        resume(stale, 2, topic),
        (Status::EpochChanged, epoch, 1, 3),
        &[1, 2, 3],
    );
    // A client ahead of the server (section 4): Ok, SUBSCRIBED's last_seq
    // below the request's, and delivery starts after the request's.
    let mut ahead = subscriber(resume(epoch, 5, topic), (Status::Ok, epoch, 1, 3), &[]);
    // A repeated SUBSCRIBE restarts the subscription with a new SUBSCRIBED.
    let mut again = subscriber(live(topic), (Status::Ok, epoch, 1, 3), &[]);
    assert_eq!(
        subscribed(&mut again, &resume(0, 1, topic)),
        (Status::Ok, epoch, 1, 3)
    );
    assert_eq!(seqs(&mut again, 2), [2, 3]);

    // Topic names are case-sensitive: this is another topic, without events.
    let mut upper = subscriber(live(b"HUNT-4.CLUES"), (Status::Ok, 0, 0, 0), &[]);

    for payload in [b"4", b"5", b"6"] {
        published(&mut publisher, topic, payload);
    }
    for c in [
        &mut live_,
        &mut all,
        &mut after_2,
        &mut other_epoch,
        &mut again,
    ] {
        assert_eq!(seqs(c, 3), [4, 5, 6]);
    }
    assert_eq!(
        seqs(&mut ahead, 1),
        [6],
        "events 4 and 5 are not sent to it"
    );
    for c in [
        &mut live_,
        &mut all,
        &mut after_2,
        &mut other_epoch,
        &mut again,
        &mut ahead,
        &mut upper,
    ] {
        assert_open(c);
    }
}

#[test]
fn a_topic_without_events_is_resumed_as_section_4_says() {
    let server = start(&[]);
    let topic = b"hunt-4.empty";
    let zeros = |status| (status, 0, 0, 0);
    // The history the client knew is gone and none has begun.
    let mut gone = open(server.addr);
    assert_eq!(
        subscribed(&mut gone, &resume(77, 5, topic)),
        zeros(Status::EpochChanged)
    );
    let mut from_1 = open(server.addr);
    assert_eq!(
        subscribed(&mut from_1, &resume(0, 0, topic)),
        zeros(Status::Ok)
    );
    let mut from_3 = open(server.addr);
    assert_eq!(
        subscribed(&mut from_3, &resume(0, 2, topic)),
        zeros(Status::Ok)
    );

    let mut publisher = open(server.addr);
    let (epoch, _) = published(&mut publisher, topic, b"1");
    assert_ne!(epoch, 0, "the first event brings an epoch");
    published(&mut publisher, topic, b"2");
    published(&mut publisher, topic, b"3");
    assert_eq!(next(&mut gone).event(), (1, epoch, b"1".to_vec()));
    assert_eq!(seqs(&mut gone, 2), [2, 3]);
    assert_eq!(seqs(&mut from_1, 3), [1, 2, 3]);
    assert_eq!(seqs(&mut from_3, 1), [3]);
    for c in [&mut gone, &mut from_1, &mut from_3] {
        assert_open(c);
    }
}

#[test]
fn a_connection_holds_subscriptions_max_subscriptions_at_once() {
    let server = start(&[]);
    let mut c = open(server.addr);
    let topic = |i| format!("limit-{i}").into_bytes();
    let requests: Vec<u8> = (0..64).flat_map(|i| live(&topic(i))).collect();
    c.send_raw(&requests).unwrap();
    for i in 0..64 {
        match next(&mut c) {
            Got::Subscribed {
                status: Status::Ok,
                topic: t,
                ..
            } if t == topic(i) => {}
            other => panic!("subscription {i}: {other:?}"),
        }
    }
    // Section 4: a repeated SUBSCRIBE replaces a subscription, it is no 65th.
    assert_eq!(subscribed(&mut c, &live(&topic(0))).0, Status::Ok);
    // Room comes back with UNSUBSCRIBE.
    c.send_raw(&enc(&Frame::Unsubscribe { topic: &topic(1) }))
        .unwrap();
    assert_eq!(next(&mut c), Got::Unsubscribed(topic(1)));
    assert_eq!(subscribed(&mut c, &live(&topic(64))).0, Status::Ok);
    c.send_raw(&live(&topic(65))).unwrap();
    expect_error(&mut c, ErrorCode::TooManySubscriptions);
}

#[test]
fn no_event_follows_unsubscribed() {
    let server = start(&[]);
    let topic = b"hunt-3.5";
    let mut subscriber = open(server.addr);
    subscribed(&mut subscriber, &live(topic));
    let mut publisher = open(server.addr);
    published(&mut publisher, topic, b"1");
    assert_eq!(seqs(&mut subscriber, 1), [1]);

    let unsubscribe = enc(&Frame::Unsubscribe { topic });
    subscriber.send_raw(&unsubscribe).unwrap();
    assert_eq!(next(&mut subscriber), Got::Unsubscribed(topic.to_vec()));
    published(&mut publisher, topic, b"2");
    assert_open(&mut subscriber);
    // No longer subscribed: answered all the same.
    subscriber.send_raw(&unsubscribe).unwrap();
    assert_eq!(next(&mut subscriber), Got::Unsubscribed(topic.to_vec()));
    assert_open(&mut subscriber);
}
