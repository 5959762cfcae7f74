//! Requests that change nothing on the client's subscriptions: PUBLISH and
//! its PUBLISH_ACK (events in between, refusals, never retried after a
//! drop), POSITION, and the local checks that refuse before sending.

use super::*;

#[test]
fn publish_and_ack_with_events_in_between() {
    let (addr, server) = serve(|l| {
        let mut p = greet(&l);
        p.subscribe_live("room", 5, 0, 0);
        let id = p.expect_publish(|x| {
            assert_eq!((x.topic, x.payload), (&b"room"[..], &b"e1"[..]));
            x.request_id
        });
        // Our own event arrives before the ack, and a stale ack is ignored.
        p.event("room", 5, 1);
        p.send(publish_ack(id.wrapping_add(1000), 0, 5, 99));
        p.send(publish_ack(id, 0, 5, 1));
        // Refused.
        let id2 = p.expect_publish(|x| x.request_id);
        assert_ne!(id, id2);
        p.send(publish_ack(id2, ErrorCode::Overloaded as u16, 5, 0));
        // Still usable.
        let id3 = p.expect_publish(|x| x.request_id);
        p.send(publish_ack(id3, 0, 5, 2));
        p.expect_closed();
    });
    let mut c = connect(&addr);
    let s = c.subscribe("room", Start::Live).unwrap();
    assert_eq!((s.status, s.epoch), (SubscribeStatus::Ok, 5));

    let ack = c.publish("room", b"e1").unwrap();
    assert_eq!((ack.epoch, ack.seq, ack.status), (5, 1, 0));
    assert_eq!(next_event(&mut c, "room"), (5, 1));

    match c.publish("room", b"e2") {
        Err(e @ ClientError::Refused(13)) => assert!(e.to_string().contains("Overloaded")),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.publish("room", b"e3").unwrap().seq, 2);
    assert!(c.is_connected());
    finish(c, server);
}

#[test]
fn publish_is_not_retried_after_a_drop() {
    let (addr, server) = serve(|l| {
        let mut p = greet(&l);
        p.expect(|f| assert!(matches!(f, Frame::Publish(x) if x.payload == b"first")));
        drop(p); // no ack

        let mut p = greet(&l);
        // The first publish is not sent again; the next frame is the second.
        let id = p.expect_publish(|x| {
            assert_eq!(x.payload, b"second");
            x.request_id
        });
        p.send(publish_ack(id, 0, 1, 2));
        p.expect_closed();
    });
    let mut c = connect(&addr);
    assert!(matches!(
        c.publish("t", b"first"),
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    assert_eq!(c.publish("t", b"second").unwrap().seq, 2);
    assert!(matches!(next(&mut c), Delivery::Reconnected { .. }));
    finish(c, server);
}

#[test]
fn positions_and_local_checks() {
    let (addr, server) = serve(|l| {
        let mut p = greet(&l);
        for topic in ["t", "a", "b", "c"] {
            p.subscribe_live(topic, 1, 0, 0);
        }
        p.expect(|f| match f {
            Frame::Position(pos) => assert_eq!(pos.lat_e7, 488_583_701),
            other => panic!("{other:?}"),
        });
        p.expect_closed();
    });
    let mut c = connect(&addr);
    c.subscribe("t", Start::Live).unwrap();
    // Refused locally, nothing sent (the server would close the connection).
    let invalid = |r: Result<_, ClientError>| matches!(r, Err(ClientError::InvalidInput(_)));
    assert!(invalid(c.publish("bad topic", b"").map(|_| ())));
    assert!(invalid(c.publish(&"x".repeat(33), b"").map(|_| ())));
    assert!(invalid(c.publish("t", &[0; 1_001]).map(|_| ())));
    assert!(invalid(c.subscribe("t", Start::Live).map(|_| ())));
    // WELCOME allows 4 subscriptions.
    for topic in ["a", "b", "c"] {
        c.subscribe(topic, Start::Live).unwrap();
    }
    assert!(invalid(c.subscribe("d", Start::Live).map(|_| ())));
    let bad = Position {
        lat_e7: 900_000_001,
        lon_e7: 0,
        accuracy_cm: 1,
        client_ts_ms: 1,
    };
    assert!(invalid(c.send_position(bad)));
    c.send_position(fix(1_700_000_000_000)).unwrap();
    assert!(c.is_connected());
    finish(c, server);
}
