//! Subscriptions: the SUBSCRIBE each start sends, duplicates below the
//! resume point dropped, and UNSUBSCRIBE ending delivery.

use super::*;

#[test]
fn subscribe_from_and_resume_send_the_right_request() {
    let (addr, server) = serve(|l| {
        let mut p = greet(&l);
        // From(5): any epoch, last_seq 4.
        p.resume("a", (0, 4), subscribed(SubscribeStatus::Ok, 2, 1, 6, "a"));
        p.event("a", 2, 5);
        p.event("a", 2, 6);
        p.event("a", 2, 4); // below the resume point: a duplicate
        p.event("a", 2, 6); // duplicate
        p.event("a", 2, 7);
        p.resume(
            "b",
            (2, 3),
            subscribed(SubscribeStatus::NotRecovered, 2, 10, 12, "b"),
        );
        p.event("b", 2, 10);
        p.expect_closed();
    });
    let mut c = connect(&addr);
    c.subscribe("a", Start::From(5)).unwrap();
    let s = c
        .subscribe(
            "b",
            Start::Resume {
                epoch: 2,
                last_seq: 3,
            },
        )
        .unwrap();
    assert_eq!(
        (s.status, s.oldest_seq),
        (SubscribeStatus::NotRecovered, 10)
    );
    assert_eq!(next_event(&mut c, "a"), (2, 5));
    assert_eq!(next_event(&mut c, "a"), (2, 6));
    assert_eq!(next_event(&mut c, "a"), (2, 7));
    assert_eq!(next_event(&mut c, "b"), (2, 10));
    assert_eq!(c.resume_point("a"), Some((2, 7)));
    assert_eq!(c.resume_point("b"), Some((2, 10)));
    assert_eq!(c.next_timeout(Duration::from_millis(50)).unwrap(), None);
    finish(c, server);
}

#[test]
fn unsubscribe_stops_delivery() {
    let (addr, server) = serve(|l| {
        let mut p = greet(&l);
        p.subscribe_live("t", 1, 0, 0);
        p.event("t", 1, 1);
        p.expect(|f| assert_eq!(f, Frame::Unsubscribe { topic: b"t" }));
        p.event("t", 1, 2); // in flight
        p.send(Frame::Unsubscribed { topic: b"t" });
        p.expect_closed();
    });
    let mut c = connect(&addr);
    c.subscribe("t", Start::Live).unwrap();
    c.unsubscribe("t").unwrap();
    assert_eq!(c.next_timeout(Duration::from_millis(100)).unwrap(), None);
    assert_eq!(c.resume_point("t"), None);
    assert!(matches!(
        c.unsubscribe("t"),
        Err(ClientError::InvalidInput(_))
    ));
    finish(c, server);
}
