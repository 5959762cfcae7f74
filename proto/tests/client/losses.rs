//! A connection lost after the handshake: reconnecting and resuming every
//! subscription (duplicates dropped, SUBSCRIBED reported), GOAWAY's
//! retry_after and redirect, ERROR and garbage from the server, an expired
//! token, and what happens without `reconnect`.

use super::*;

#[test]
fn reconnect_resumes_and_drops_duplicates() {
    let (addr, server) = serve(|l| {
        let mut p = greet(&l);
        p.subscribe_live("game", 9, 1, 10);
        p.event("game", 9, 11);
        p.event("game", 9, 12);
        drop(p); // connection lost

        let mut p = greet(&l);
        p.resume(
            "game",
            (9, 12),
            subscribed(SubscribeStatus::Ok, 9, 1, 13, "game"),
        );
        p.event("game", 9, 12); // a server replaying one too many
        p.event("game", 9, 13);
        p.event("game", 9, 14);
        p.expect_closed();
    });
    let mut c = connect(&addr);
    c.subscribe("game", Start::Live).unwrap();
    assert_eq!(next_event(&mut c, "game"), (9, 11));
    assert_eq!(next_event(&mut c, "game"), (9, 12));
    let (reason, attempts) = next_reconnected(&mut c);
    assert_eq!(attempts, 1);
    assert_eq!(reason, "connection closed");
    let s = next_subscribed(&mut c);
    assert_eq!(
        (s.topic.as_str(), s.status, s.last_seq),
        ("game", SubscribeStatus::Ok, 13)
    );
    assert_eq!(next_event(&mut c, "game"), (9, 13));
    assert_eq!(next_event(&mut c, "game"), (9, 14));
    finish(c, server);
}

#[test]
fn live_subscription_without_events_resumes_from_subscribed() {
    let (addr, server) = serve(|l| {
        let mut p = greet(&l);
        p.subscribe_live("t", 3, 1, 7);
        drop(p);

        let mut p = greet(&l);
        // The server restarted: new epoch, sequences start again at 1.
        p.resume(
            "t",
            (3, 7),
            subscribed(SubscribeStatus::EpochChanged, 4, 1, 2, "t"),
        );
        p.event("t", 4, 1);
        p.event("t", 4, 2);
        p.expect_closed();
    });
    let mut c = connect(&addr);
    c.subscribe("t", Start::Live).unwrap();
    assert!(matches!(next(&mut c), Delivery::Reconnected { .. }));
    let s = next_subscribed(&mut c);
    assert_eq!((s.status, s.epoch), (SubscribeStatus::EpochChanged, 4));
    assert_eq!(next_event(&mut c, "t"), (4, 1));
    assert_eq!(next_event(&mut c, "t"), (4, 2));
    finish(c, server);
}

#[test]
fn goaway_retry_after_and_redirect_are_honoured() {
    let (goaway_tx, goaway_rx) = mpsc::channel::<Instant>();
    let (addr_b, server_b) = serve(move |l| {
        let mut p = accept(&l);
        let accepted = Instant::now();
        let sent = goaway_rx.recv_timeout(STEP).unwrap();
        let waited = accepted - sent;
        assert!(
            waited >= Duration::from_millis(300),
            "reconnected after {waited:?}"
        );
        assert!(
            waited < Duration::from_millis(2_000),
            "reconnected after {waited:?}"
        );
        p.handshake(30_000);
        p.resume("t", (1, 4), subscribed(SubscribeStatus::Ok, 1, 1, 4, "t"));
        p.event("t", 1, 5);
        p.expect_closed();
    });
    let redirect = addr_b.clone();
    let (addr_a, server_a) = serve(move |l| {
        let mut p = greet(&l);
        p.subscribe_live("t", 1, 1, 4);
        p.send(Frame::GoAway(GoAway {
            reason: GoAwayReason::Shutdown,
            retry_after_ms: 300,
            reconnect: redirect.as_bytes(),
            resume: vec![ResumePoint {
                epoch: 1,
                last_seq: 4,
                topic: b"t",
            }],
        }));
        goaway_tx.send(Instant::now()).unwrap();
        p.expect_closed();
    });
    let mut c = connect(&addr_a);
    c.subscribe("t", Start::Live).unwrap();
    let (reason, _) = next_reconnected(&mut c);
    assert!(reason.contains("GOAWAY"), "{reason}");
    assert!(matches!(next(&mut c), Delivery::Subscribed(_)));
    assert_eq!(next_event(&mut c, "t"), (1, 5));
    finish(c, server_a);
    server_b.join().unwrap();
}

#[test]
fn goaway_without_reconnect_is_returned() {
    let (addr, server) = serve(|l| {
        let mut p = greet(&l);
        p.send(goaway(GoAwayReason::SlowConsumer, 250));
        p.expect_closed();
    });
    let mut c = Client::connect(no_reconnect(&addr)).unwrap();
    match c.next_timeout(STEP) {
        Err(ClientError::GoAway(g)) => assert_eq!(
            (g.reason, g.retry_after_ms),
            (GoAwayReason::SlowConsumer, 250)
        ),
        other => panic!("{other:?}"),
    }
    assert!(!c.is_connected());
    assert!(matches!(c.next_timeout(STEP), Err(ClientError::Closed)));
    server.join().unwrap();
}

#[test]
fn without_reconnect_a_drop_is_an_error() {
    let (addr, server) = serve(|l| {
        drop(greet(&l));
    });
    let mut c = Client::connect(no_reconnect(&addr)).unwrap();
    assert!(matches!(
        c.next_timeout(STEP),
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    assert!(matches!(c.next_timeout(STEP), Err(ClientError::Closed)));
    assert!(matches!(c.publish("t", b"x"), Err(ClientError::Closed)));
    server.join().unwrap();
}

#[test]
fn garbage_from_the_server_is_a_protocol_error() {
    let (addr, server) = serve(|l| {
        let mut p = greet(&l);
        p.conn
            .stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .unwrap();
        p.expect_closed();
    });
    let mut c = Client::connect(no_reconnect(&addr)).unwrap();
    match c.next_timeout(STEP) {
        Err(ClientError::Protocol(m)) => assert!(m.contains("over the"), "{m}"),
        other => panic!("{other:?}"),
    }
    server.join().unwrap();
}

#[test]
fn server_error_reconnects_but_not_authorized_is_final() {
    let (addr, server) = serve(|l| {
        let mut p = greet(&l);
        p.send_error(ErrorCode::IdleTimeout, b"idle");
        drop(p);
        drop(greet(&l));
        let mut p = accept(&l);
        p.expect_hello();
        p.send_error(ErrorCode::NotAuthorized, b"token revoked");
    });
    let mut c = connect(&addr);
    let (reason, _) = next_reconnected(&mut c);
    assert!(reason.contains("IdleTimeout"), "{reason}");
    match c.next_timeout(STEP) {
        Err(ClientError::Server { code: 12, message }) => assert_eq!(message, "token revoked"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(c.next_timeout(STEP), Err(ClientError::Closed)));
    server.join().unwrap();
}

#[test]
fn an_expired_token_waits_for_a_new_one_then_resumes() {
    let (addr, server) = serve(|l| {
        let mut p = greet(&l);
        p.subscribe_live("game", 9, 1, 10);
        p.event("game", 9, 11);
        p.send(goaway(GoAwayReason::TokenExpired, 0));
        drop(p);

        // The client comes back only with the new token, and resumes.
        let mut p = accept(&l);
        p.expect(|f| match f {
            Frame::Hello(h) => assert_eq!(h.token, b"fresh"),
            other => panic!("expected HELLO, got {other:?}"),
        });
        p.send(Frame::Welcome(welcome(30_000)));
        p.resume(
            "game",
            (9, 11),
            subscribed(SubscribeStatus::Ok, 9, 1, 12, "game"),
        );
        p.event("game", 9, 12);
        p.expect_closed();
    });
    let mut c = connect(&addr);
    c.subscribe("game", Start::Live).unwrap();
    assert_eq!(next_event(&mut c, "game"), (9, 11));
    for _ in 0..2 {
        match c.next_timeout(Duration::from_secs(5)) {
            Err(ClientError::TokenExpired) => {}
            other => panic!("expected TokenExpired, got {other:?}"),
        }
    }
    c.set_token(b"fresh".to_vec()).unwrap();
    assert!(matches!(next(&mut c), Delivery::Reconnected { .. }));
    assert!(matches!(next(&mut c), Delivery::Subscribed(_)));
    assert_eq!(next_event(&mut c, "game"), (9, 12));
    finish(c, server);
}
