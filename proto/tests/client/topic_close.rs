//! TOPIC_CLOSE and TOPIC_CLOSED: a close answered (or refused) while
//! other frames arrive, and a closed topic ending its subscription, never
//! resumed after a reconnect.

use super::*;

/// Expects TOPIC_CLOSE for `topic`; returns its request_id.
fn expect_topic_close(p: &mut Peer, topic: &str) -> u32 {
    p.expect(|f| match f {
        Frame::TopicClose(c) => {
            assert_eq!(c.topic, topic.as_bytes());
            assert_ne!(c.request_id, 0, "request_id 0 is the subscriber notice");
            c.request_id
        }
        other => panic!("expected TOPIC_CLOSE, got {other:?}"),
    })
}

fn topic_closed(request_id: u32, status: u16, last_seq: u64, topic: &str) -> Frame<'_> {
    Frame::TopicClosed(TopicClosed {
        request_id,
        status,
        last_seq,
        topic: topic.as_bytes(),
    })
}

#[test]
fn close_topic_is_answered_and_a_refusal_keeps_the_connection() {
    let (addr, server) = serve(|l| {
        let mut p = greet(&l);
        p.subscribe_live("room", 5, 1, 0);
        p.subscribe_live("game:42", 3, 1, 57);
        let id = expect_topic_close(&mut p, "game:42");
        // Frames before the answer: an event, the last one of the topic,
        // the notice to this subscriber, and a stale answer.
        p.event("room", 5, 1);
        p.event("game:42", 3, 58);
        p.send(topic_closed(0, 0, 58, "game:42"));
        p.send(topic_closed(id.wrapping_add(100), 0, 7, "game:42"));
        p.send(topic_closed(id, 0, 58, "game:42"));
        // Refused.
        let id = expect_topic_close(&mut p, "game:43");
        p.send(topic_closed(
            id,
            ErrorCode::StorageFailed as u16,
            0,
            "game:43",
        ));
        // A topic without events.
        let id = expect_topic_close(&mut p, "empty");
        p.send(topic_closed(id, 0, 0, "empty"));
        p.expect_closed();
    });
    let mut c = connect(&addr);
    c.subscribe("room", Start::Live).unwrap();
    c.subscribe("game:42", Start::Live).unwrap();
    // Refused locally, nothing sent (the server would close the connection).
    assert!(matches!(
        c.close_topic("no spaces"),
        Err(ClientError::InvalidInput(_))
    ));

    assert_eq!(c.close_topic("game:42").unwrap(), 58);
    // This client was subscribed too: the event before the close, then the
    // end of the subscription.
    assert_eq!(next_event(&mut c, "room"), (5, 1));
    assert_eq!(next_event(&mut c, "game:42"), (3, 58));
    assert_eq!(
        next(&mut c),
        Delivery::Closed {
            topic: "game:42".into(),
            last_seq: 58
        }
    );
    assert_eq!(c.resume_point("game:42"), None);
    assert_eq!(c.resume_point("room"), Some((5, 1)));

    match c.close_topic("game:43") {
        Err(e @ ClientError::Refused(15)) => assert!(e.to_string().contains("StorageFailed")),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.close_topic("empty").unwrap(), 0);
    assert!(c.is_connected());
    assert!(c.next_timeout(Duration::from_millis(50)).unwrap().is_none());
    finish(c, server);
}

#[test]
fn closed_topic_ends_the_subscription_and_is_not_resumed() {
    let (addr, server) = serve(|l| {
        let mut p = greet(&l);
        p.subscribe_live("chat", 1, 0, 0);
        p.subscribe_live("game", 9, 1, 10);
        p.event("game", 9, 11);
        p.send(topic_closed(0, 0, 11, "game"));
        // A server quirk: nothing of the topic may follow; dropped.
        p.event("game", 9, 12);
        // A notice for a topic this client does not hold: ignored.
        p.send(topic_closed(0, 0, 3, "other"));
        p.event("chat", 1, 1);
        drop(p); // connection lost

        let mut p = greet(&l);
        // Only "chat" is resumed.
        p.resume(
            "chat",
            (1, 1),
            subscribed(SubscribeStatus::Ok, 1, 1, 1, "chat"),
        );
        p.event("chat", 1, 2);
        // The next frame is the publish, not a SUBSCRIBE of "game".
        let id = p.expect_publish(|pb| {
            assert_eq!(pb.topic, b"chat");
            pb.request_id
        });
        p.send(publish_ack(id, 0, 1, 3));
        p.expect_closed();
    });
    let mut c = connect(&addr);
    c.subscribe("chat", Start::Live).unwrap();
    c.subscribe("game", Start::Live).unwrap();
    assert_eq!(next_event(&mut c, "game"), (9, 11));
    assert_eq!(
        next(&mut c),
        Delivery::Closed {
            topic: "game".into(),
            last_seq: 11
        }
    );
    assert_eq!(c.resume_point("game"), None);
    assert_eq!(next_event(&mut c, "chat"), (1, 1));
    assert!(matches!(next(&mut c), Delivery::Reconnected { .. }));
    let s = next_subscribed(&mut c);
    assert_eq!((s.topic.as_str(), s.status), ("chat", SubscribeStatus::Ok));
    assert_eq!(next_event(&mut c, "chat"), (1, 2));
    assert_eq!(c.publish("chat", b"x").unwrap().seq, 3);
    assert_eq!(c.resume_point("game"), None);
    finish(c, server);
}
