//! Reference client against a scripted server on a std::net thread.
//!
//! Every blocking step has a timeout, so a broken client fails the test
//! instead of hanging it.

use cluecast_proto::client::*;
use cluecast_proto::*;
use std::io::{ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

#[path = "client/retry.rs"]
mod retry;

/// Longest any single step may take before the test fails.
const STEP: Duration = Duration::from_secs(5);

fn welcome(heartbeat_ms: u32) -> Welcome {
    Welcome {
        version: 1,
        heartbeat_ms,
        idle_timeout_ms: 90_000,
        frame_bytes_max: Limits::DEFAULT.frame_bytes_max,
        payload_bytes_max: 1_000,
        subscriptions_max: 4,
        topic_bytes_max: 32,
    }
}

fn config(addr: &str) -> ClientConfig {
    let mut c = ClientConfig::new(addr);
    c.client_id = "test-client".into();
    c.token = b"tok".to_vec();
    c.connect_timeout_ms = 2_000;
    c.request_timeout_ms = 2_000;
    c.backoff_min_ms = 10;
    c.backoff_max_ms = 50;
    c
}

fn no_reconnect(addr: &str) -> ClientConfig {
    ClientConfig {
        reconnect: false,
        ..config(addr)
    }
}

/// Runs `script` on a thread with a fresh listener; returns its address.
fn serve<T: Send + 'static>(
    script: impl FnOnce(TcpListener) -> T + Send + 'static,
) -> (String, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (addr, thread::spawn(move || script(listener)))
}

/// The server side of one connection.
struct Peer {
    conn: FrameConn<TcpStream>,
}

fn accept(listener: &TcpListener) -> Peer {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + STEP;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(STEP)).unwrap();
                stream.set_nodelay(true).unwrap();
                return Peer::new(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("no connection from the client: {e}"),
        }
    }
}

const SERVER_LIMITS: Limits = Limits::DEFAULT;

impl Peer {
    fn new(stream: TcpStream) -> Peer {
        Peer {
            conn: FrameConn::new(stream, SERVER_LIMITS),
        }
    }

    /// One read from the client, which must bring bytes.
    fn fill(&mut self) {
        match self.conn.fill().expect("read from client") {
            Filled::Bytes(_) => {}
            Filled::Closed => panic!("client closed the connection"),
            Filled::NotYet => panic!("read from client: nothing within the read timeout"),
        }
    }

    /// The next frame, whatever it is, to `check`.
    fn recv<R>(&mut self, check: impl FnOnce(Frame<'_>) -> R) -> R {
        loop {
            if let Some(frame) = self.conn.next_frame().unwrap() {
                return check(frame);
            }
            self.fill();
        }
    }

    /// The next frame other than PING (answered with PONG), to `check`.
    fn expect<R>(&mut self, check: impl FnOnce(Frame<'_>) -> R) -> R {
        loop {
            match self.conn.next_frame().unwrap() {
                Some(Frame::Ping { nonce }) => self.send(Frame::Pong { nonce }),
                Some(frame) => return check(frame),
                None => self.fill(),
            }
        }
    }

    fn send(&mut self, frame: Frame<'_>) {
        self.conn.send(&frame).unwrap();
    }

    fn handshake(&mut self, heartbeat_ms: u32) {
        self.expect(|f| match f {
            Frame::Hello(h) => {
                assert_eq!((h.version_min, h.version_max), (1, 1));
                assert_eq!(h.client_id, b"test-client");
                assert_eq!(h.token, b"tok");
            }
            other => panic!("expected HELLO, got {other:?}"),
        });
        self.send(Frame::Welcome(welcome(heartbeat_ms)));
    }

    /// The usual start: SUBSCRIBE Live to "game", at sequence 10 of epoch 9.
    fn subscribe_live_game(&mut self) {
        let answer = subscribed(SubscribeStatus::Ok, 9, 1, 10, "game");
        self.subscribe(StartMode::Live, 0, 0, "game", answer);
    }

    /// Expects SUBSCRIBE with these values, answers SUBSCRIBED.
    fn subscribe(
        &mut self,
        mode: StartMode,
        epoch: u64,
        last_seq: u64,
        topic: &str,
        answer: Subscribed<'_>,
    ) {
        self.expect(|f| {
            assert_eq!(
                f,
                Frame::Subscribe(Subscribe {
                    mode,
                    epoch,
                    last_seq,
                    topic: topic.as_bytes()
                })
            )
        });
        self.send(Frame::Subscribed(answer));
    }

    fn event(&mut self, topic: &str, epoch: u64, seq: u64) {
        self.send(Frame::Event(Event {
            seq,
            epoch,
            publish_ts_ns: 1_000 + seq,
            topic: topic.as_bytes(),
            payload: format!("e{seq}").as_bytes(),
        }));
    }

    /// Waits for the client to close (EOF or reset).
    fn expect_closed(&mut self) {
        loop {
            match self.conn.fill() {
                Ok(Filled::Closed) => return,
                Ok(Filled::Bytes(_)) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                Ok(Filled::NotYet) => {
                    panic!("client did not close: nothing within the read timeout")
                }
                Err(e) => panic!("client did not close: {e}"),
            }
        }
    }
}

fn subscribed(
    status: SubscribeStatus,
    epoch: u64,
    oldest_seq: u64,
    last_seq: u64,
    topic: &str,
) -> Subscribed<'_> {
    Subscribed {
        status,
        epoch,
        oldest_seq,
        last_seq,
        topic: topic.as_bytes(),
    }
}

fn next(c: &mut Client) -> Delivery {
    c.next_timeout(STEP)
        .unwrap()
        .expect("a delivery within the step timeout")
}

/// The next delivery must be an event; returns (epoch, seq).
fn next_event(c: &mut Client, topic: &str) -> (u64, u64) {
    match next(c) {
        Delivery::Event(e) => {
            assert_eq!(e.topic, topic);
            assert_eq!(e.payload, format!("e{}", e.seq).as_bytes());
            (e.epoch, e.seq)
        }
        other => panic!("expected an event, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------

#[test]
fn handshake() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        p.expect_closed();
    });
    let mut c = Client::connect(config(&addr)).unwrap();
    assert_eq!(c.welcome(), &welcome(30_000));
    assert!(c.is_connected());
    c.close();
    assert!(matches!(
        c.next_timeout(Duration::from_millis(10)),
        Err(ClientError::Closed)
    ));
    server.join().unwrap();
}

#[test]
fn connect_fails_on_error_or_goaway() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.expect(|f| assert!(matches!(f, Frame::Hello(_))));
        p.send(Frame::Error(ErrorFrame {
            code: ErrorCode::NotAuthorized as u16,
            message: b"bad token",
        }));
        drop(p);
        let mut p = accept(&l);
        p.expect(|f| assert!(matches!(f, Frame::Hello(_))));
        p.send(Frame::GoAway(GoAway {
            reason: GoAwayReason::ServerFull,
            retry_after_ms: 1_500,
            reconnect: b"",
            resume: vec![],
        }));
    });
    match Client::connect(config(&addr)) {
        Err(e @ ClientError::Server { code: 12, .. }) => {
            assert_eq!(e.to_string(), "server error NotAuthorized (12): bad token")
        }
        other => panic!("{:?}", other.err()),
    }
    // connect_retry_ms 0: the refusal is returned, not waited out.
    let at_once = ClientConfig {
        connect_retry_ms: 0,
        ..config(&addr)
    };
    match Client::connect(at_once) {
        Err(e @ ClientError::GoAway(_)) => assert_eq!(
            e.to_string(),
            "server full (GOAWAY ServerFull, retry after 1500 ms)"
        ),
        other => panic!("{:?}", other.err()),
    }
    server.join().unwrap();
}

#[test]
fn publish_and_ack_with_events_in_between() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        p.subscribe(
            StartMode::Live,
            0,
            0,
            "room",
            subscribed(SubscribeStatus::Ok, 5, 0, 0, "room"),
        );
        let id = p.expect(|f| match f {
            Frame::Publish(x) => {
                assert_eq!((x.topic, x.payload), (&b"room"[..], &b"e1"[..]));
                x.request_id
            }
            other => panic!("{other:?}"),
        });
        // Our own event arrives before the ack, and a stale ack is ignored.
        p.event("room", 5, 1);
        let ack = |request_id, status, seq| PublishAck {
            request_id,
            status,
            flags: 0,
            epoch: 5,
            seq,
        };
        p.send(Frame::PublishAck(ack(id.wrapping_add(1000), 0, 99)));
        p.send(Frame::PublishAck(ack(id, 0, 1)));
        // Refused.
        let id2 = p.expect(|f| match f {
            Frame::Publish(x) => x.request_id,
            other => panic!("{other:?}"),
        });
        assert_ne!(id, id2);
        p.send(Frame::PublishAck(ack(id2, ErrorCode::Overloaded as u16, 0)));
        // Still usable.
        let id3 = p.expect(|f| match f {
            Frame::Publish(x) => x.request_id,
            other => panic!("{other:?}"),
        });
        p.send(Frame::PublishAck(ack(id3, 0, 2)));
        p.expect_closed();
    });
    let mut c = Client::connect(config(&addr)).unwrap();
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
    c.close();
    server.join().unwrap();
}

#[test]
fn subscribe_from_and_resume_send_the_right_request() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        // From(5): any epoch, last_seq 4.
        p.subscribe(
            StartMode::Resume,
            0,
            4,
            "a",
            subscribed(SubscribeStatus::Ok, 2, 1, 6, "a"),
        );
        p.event("a", 2, 5);
        p.event("a", 2, 6);
        p.event("a", 2, 4); // below the resume point: a duplicate
        p.event("a", 2, 6); // duplicate
        p.event("a", 2, 7);
        p.subscribe(
            StartMode::Resume,
            2,
            3,
            "b",
            subscribed(SubscribeStatus::NotRecovered, 2, 10, 12, "b"),
        );
        p.event("b", 2, 10);
        p.expect_closed();
    });
    let mut c = Client::connect(config(&addr)).unwrap();
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
    c.close();
    server.join().unwrap();
}

#[test]
fn reconnect_resumes_and_drops_duplicates() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        p.subscribe_live_game();
        p.event("game", 9, 11);
        p.event("game", 9, 12);
        drop(p); // connection lost

        let mut p = accept(&l);
        p.handshake(30_000);
        p.subscribe(
            StartMode::Resume,
            9,
            12,
            "game",
            subscribed(SubscribeStatus::Ok, 9, 1, 13, "game"),
        );
        p.event("game", 9, 12); // a server replaying one too many
        p.event("game", 9, 13);
        p.event("game", 9, 14);
        p.expect_closed();
    });
    let mut c = Client::connect(config(&addr)).unwrap();
    c.subscribe("game", Start::Live).unwrap();
    assert_eq!(next_event(&mut c, "game"), (9, 11));
    assert_eq!(next_event(&mut c, "game"), (9, 12));
    match next(&mut c) {
        Delivery::Reconnected { reason, attempts } => {
            assert_eq!(attempts, 1);
            assert_eq!(reason, "connection closed");
        }
        other => panic!("{other:?}"),
    }
    match next(&mut c) {
        Delivery::Subscribed(s) => {
            assert_eq!(
                (s.topic.as_str(), s.status, s.last_seq),
                ("game", SubscribeStatus::Ok, 13)
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next_event(&mut c, "game"), (9, 13));
    assert_eq!(next_event(&mut c, "game"), (9, 14));
    c.close();
    server.join().unwrap();
}

#[test]
fn live_subscription_without_events_resumes_from_subscribed() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        p.subscribe(
            StartMode::Live,
            0,
            0,
            "t",
            subscribed(SubscribeStatus::Ok, 3, 1, 7, "t"),
        );
        drop(p);

        let mut p = accept(&l);
        p.handshake(30_000);
        // The server restarted: new epoch, sequences start again at 1.
        p.subscribe(
            StartMode::Resume,
            3,
            7,
            "t",
            subscribed(SubscribeStatus::EpochChanged, 4, 1, 2, "t"),
        );
        p.event("t", 4, 1);
        p.event("t", 4, 2);
        p.expect_closed();
    });
    let mut c = Client::connect(config(&addr)).unwrap();
    c.subscribe("t", Start::Live).unwrap();
    assert!(matches!(next(&mut c), Delivery::Reconnected { .. }));
    match next(&mut c) {
        Delivery::Subscribed(s) => {
            assert_eq!((s.status, s.epoch), (SubscribeStatus::EpochChanged, 4))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next_event(&mut c, "t"), (4, 1));
    assert_eq!(next_event(&mut c, "t"), (4, 2));
    c.close();
    server.join().unwrap();
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
        p.subscribe(
            StartMode::Resume,
            1,
            4,
            "t",
            subscribed(SubscribeStatus::Ok, 1, 1, 4, "t"),
        );
        p.event("t", 1, 5);
        p.expect_closed();
    });
    let redirect = addr_b.clone();
    let (addr_a, server_a) = serve(move |l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        p.subscribe(
            StartMode::Live,
            0,
            0,
            "t",
            subscribed(SubscribeStatus::Ok, 1, 1, 4, "t"),
        );
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
    let mut c = Client::connect(config(&addr_a)).unwrap();
    c.subscribe("t", Start::Live).unwrap();
    match next(&mut c) {
        Delivery::Reconnected { reason, .. } => assert!(reason.contains("GOAWAY"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(next(&mut c), Delivery::Subscribed(_)));
    assert_eq!(next_event(&mut c, "t"), (1, 5));
    c.close();
    server_a.join().unwrap();
    server_b.join().unwrap();
}

#[test]
fn goaway_without_reconnect_is_returned() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        p.send(Frame::GoAway(GoAway {
            reason: GoAwayReason::SlowConsumer,
            retry_after_ms: 250,
            reconnect: b"",
            resume: vec![],
        }));
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
fn heartbeat_pings_when_idle_and_answers_server_pings() {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (addr, server) = serve(move |l| {
        let mut p = accept(&l);
        p.handshake(200);
        let welcomed = Instant::now();
        for _ in 0..2 {
            let nonce = p.recv(|f| {
                let Frame::Ping { nonce } = f else {
                    panic!("expected PING, got {f:?}")
                };
                nonce
            });
            p.send(Frame::Pong { nonce });
        }
        // Two periods of 200 ms, with slack for a slow machine.
        let took = welcomed.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_millis(2_000), "{took:?}");
        // The client answers our PING.
        p.send(Frame::Ping { nonce: 77 });
        loop {
            let pong = p.recv(|f| match f {
                Frame::Pong { nonce } => Some(nonce),
                Frame::Ping { .. } => None,
                other => panic!("{other:?}"),
            });
            if let Some(nonce) = pong {
                assert_eq!(nonce, 77);
                break;
            }
        }
        done_tx.send(()).unwrap();
        p.expect_closed();
    });
    let mut c = Client::connect(no_reconnect(&addr)).unwrap();
    let deadline = Instant::now() + STEP;
    while done_rx.try_recv().is_err() {
        assert!(Instant::now() < deadline, "server script did not finish");
        assert_eq!(c.next_timeout(Duration::from_millis(50)).unwrap(), None);
    }
    assert!(c.is_connected());
    c.close();
    server.join().unwrap();
}

#[test]
fn silent_server_is_declared_dead() {
    // heartbeat 200 ms: dead after 2 x 200 ms + 5 s without a byte.
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(200);
        p.conn
            .stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Read the PINGs, never answer.
        p.expect_closed();
    });
    let mut c = Client::connect(no_reconnect(&addr)).unwrap();
    let start = Instant::now();
    match c.next_timeout(Duration::from_secs(10)) {
        Err(ClientError::Timeout(_)) => {}
        other => panic!("{other:?}"),
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(5_300), "{took:?}");
    assert!(took < Duration::from_millis(7_000), "{took:?}");
    server.join().unwrap();
}

#[test]
fn without_reconnect_a_drop_is_an_error() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        drop(p);
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
fn publish_is_not_retried_after_a_drop() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        p.expect(|f| assert!(matches!(f, Frame::Publish(x) if x.payload == b"first")));
        drop(p); // no ack

        let mut p = accept(&l);
        p.handshake(30_000);
        // The first publish is not sent again; the next frame is the second.
        let id = p.expect(|f| match f {
            Frame::Publish(x) => {
                assert_eq!(x.payload, b"second");
                x.request_id
            }
            other => panic!("{other:?}"),
        });
        p.send(Frame::PublishAck(PublishAck {
            request_id: id,
            status: 0,
            flags: 0,
            epoch: 1,
            seq: 2,
        }));
        p.expect_closed();
    });
    let mut c = Client::connect(config(&addr)).unwrap();
    assert!(matches!(
        c.publish("t", b"first"),
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    assert_eq!(c.publish("t", b"second").unwrap().seq, 2);
    assert!(matches!(next(&mut c), Delivery::Reconnected { .. }));
    c.close();
    server.join().unwrap();
}

#[test]
fn garbage_from_the_server_is_a_protocol_error() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
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
        let mut p = accept(&l);
        p.handshake(30_000);
        p.send(Frame::Error(ErrorFrame {
            code: ErrorCode::IdleTimeout as u16,
            message: b"idle",
        }));
        drop(p);
        let mut p = accept(&l);
        p.handshake(30_000);
        drop(p);
        let mut p = accept(&l);
        p.expect(|f| assert!(matches!(f, Frame::Hello(_))));
        p.send(Frame::Error(ErrorFrame {
            code: ErrorCode::NotAuthorized as u16,
            message: b"token revoked",
        }));
    });
    let mut c = Client::connect(config(&addr)).unwrap();
    match next(&mut c) {
        Delivery::Reconnected { reason, .. } => assert!(reason.contains("IdleTimeout"), "{reason}"),
        other => panic!("{other:?}"),
    }
    match c.next_timeout(STEP) {
        Err(ClientError::Server { code: 12, message }) => assert_eq!(message, "token revoked"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(c.next_timeout(STEP), Err(ClientError::Closed)));
    server.join().unwrap();
}

#[test]
fn unsubscribe_stops_delivery() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        p.subscribe(
            StartMode::Live,
            0,
            0,
            "t",
            subscribed(SubscribeStatus::Ok, 1, 0, 0, "t"),
        );
        p.event("t", 1, 1);
        p.expect(|f| assert_eq!(f, Frame::Unsubscribe { topic: b"t" }));
        p.event("t", 1, 2); // in flight
        p.send(Frame::Unsubscribed { topic: b"t" });
        p.expect_closed();
    });
    let mut c = Client::connect(config(&addr)).unwrap();
    c.subscribe("t", Start::Live).unwrap();
    c.unsubscribe("t").unwrap();
    assert_eq!(c.next_timeout(Duration::from_millis(100)).unwrap(), None);
    assert_eq!(c.resume_point("t"), None);
    assert!(matches!(
        c.unsubscribe("t"),
        Err(ClientError::InvalidInput(_))
    ));
    c.close();
    server.join().unwrap();
}

#[test]
fn positions_and_local_checks() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        for topic in ["t", "a", "b", "c"] {
            p.subscribe(
                StartMode::Live,
                0,
                0,
                topic,
                subscribed(SubscribeStatus::Ok, 1, 0, 0, topic),
            );
        }
        p.expect(|f| match f {
            Frame::Position(pos) => assert_eq!(pos.lat_e7, 488_583_701),
            other => panic!("{other:?}"),
        });
        p.expect_closed();
    });
    let mut c = Client::connect(config(&addr)).unwrap();
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
    c.send_position(Position {
        lat_e7: 488_583_701,
        lon_e7: 22_944_813,
        accuracy_cm: 500,
        client_ts_ms: 1_700_000_000_000,
    })
    .unwrap();
    assert!(c.is_connected());
    c.close();
    server.join().unwrap();
}

fn fix(client_ts_ms: u64) -> Position {
    Position {
        lat_e7: 488_583_701,
        lon_e7: 22_944_813,
        accuracy_cm: 500,
        client_ts_ms,
    }
}

fn records(positions: &[Position]) -> Vec<u8> {
    positions.iter().flat_map(Position::to_bytes).collect()
}

/// Expects PATH_QUERY for `player` from `since_ms`; returns its request id.
fn expect_path_query(p: &mut Peer, player: &str, since_ms: u64) -> u32 {
    p.expect(|f| match f {
        Frame::PathQuery(q) => {
            assert_eq!((q.player, q.since_ms), (player.as_bytes(), since_ms));
            q.request_id
        }
        other => panic!("expected PATH_QUERY, got {other:?}"),
    })
}

#[test]
fn path_answer_over_two_frames_with_events_in_between() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        p.subscribe(
            StartMode::Live,
            0,
            0,
            "room",
            subscribed(SubscribeStatus::Ok, 5, 0, 0, "room"),
        );
        let id = expect_path_query(&mut p, "phone-1", 0);
        // Out of client_ts_ms order on purpose: arrival order is kept.
        let first = records(&[fix(30), fix(10)]);
        let second = records(&[fix(20)]);
        p.event("room", 5, 1);
        p.send(Frame::Path(Path {
            request_id: id,
            status: 0,
            flags: 0,
            positions: &first,
        }));
        p.event("room", 5, 2);
        // An answer to some other request is not ours.
        p.send(Frame::Path(Path {
            request_id: id.wrapping_add(1000),
            status: 0,
            flags: PATH_FLAG_LAST,
            positions: &records(&[fix(99)]),
        }));
        p.send(Frame::Ping { nonce: 3 });
        p.send(Frame::Path(Path {
            request_id: id,
            status: 0,
            flags: PATH_FLAG_LAST | PATH_FLAG_CORRUPT,
            positions: &second,
        }));
        p.event("room", 5, 3);
        p.expect(|f| assert_eq!(f, Frame::Pong { nonce: 3 }));

        // A truncated answer, then an empty path, in one frame each.
        let id2 = expect_path_query(&mut p, "phone-2", 1_700_000_000_000);
        assert_ne!(id, id2);
        p.send(Frame::Path(Path {
            request_id: id2,
            status: 0,
            flags: PATH_FLAG_LAST | PATH_FLAG_TRUNCATED,
            positions: &records(&[fix(1_700_000_000_001)]),
        }));
        let id3 = expect_path_query(&mut p, "nobody", 0);
        p.send(Frame::Path(Path {
            request_id: id3,
            status: 0,
            flags: PATH_FLAG_LAST,
            positions: &[],
        }));
        p.expect_closed();
    });
    let mut c = Client::connect(config(&addr)).unwrap();
    c.subscribe("room", Start::Live).unwrap();

    let answer = c.path("phone-1", 0).unwrap();
    assert_eq!(
        answer,
        PathAnswer {
            positions: vec![fix(30), fix(10), fix(20)],
            truncated: false,
            corrupt: true,
        }
    );
    // The events that came meanwhile are all delivered, in order.
    assert_eq!(next_event(&mut c, "room"), (5, 1));
    assert_eq!(next_event(&mut c, "room"), (5, 2));
    assert_eq!(next_event(&mut c, "room"), (5, 3));

    let answer = c.path("phone-2", 1_700_000_000_000).unwrap();
    assert_eq!(answer.positions, [fix(1_700_000_000_001)]);
    assert!(answer.truncated && !answer.corrupt);
    let answer = c.path("nobody", 0).unwrap();
    assert!(answer.positions.is_empty() && !answer.truncated && !answer.corrupt);
    assert!(c.is_connected());
    c.close();
    server.join().unwrap();
}

#[test]
fn path_refused_status_is_an_error_and_the_connection_stays() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        let id = expect_path_query(&mut p, "phone-1", 0);
        p.send(Frame::Path(Path {
            request_id: id,
            status: ErrorCode::StorageFailed as u16,
            flags: PATH_FLAG_LAST,
            positions: &[],
        }));
        let id = expect_path_query(&mut p, "phone-1", 0);
        p.send(Frame::Path(Path {
            request_id: id,
            status: ErrorCode::Overloaded as u16,
            flags: PATH_FLAG_LAST,
            positions: &[],
        }));
        // Still usable.
        let id = expect_path_query(&mut p, "phone-1", 7);
        p.send(Frame::Path(Path {
            request_id: id,
            status: 0,
            flags: PATH_FLAG_LAST,
            positions: &records(&[fix(7)]),
        }));
        p.expect_closed();
    });
    let mut c = Client::connect(config(&addr)).unwrap();
    match c.path("phone-1", 0) {
        Err(e @ ClientError::Refused(15)) => {
            assert_eq!(e.to_string(), "refused by the server: StorageFailed (15)")
        }
        other => panic!("{other:?}"),
    }
    match c.path("phone-1", 0) {
        Err(e @ ClientError::Refused(13)) => assert!(e.to_string().contains("Overloaded")),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.path("phone-1", 7).unwrap().positions, [fix(7)]);
    assert!(c.is_connected());
    c.close();
    server.join().unwrap();
}

#[test]
fn path_checks_the_player_and_times_out() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        // Half an answer, then silence.
        let id = expect_path_query(&mut p, "phone-1", 0);
        p.send(Frame::Path(Path {
            request_id: id,
            status: 0,
            flags: 0,
            positions: &records(&[fix(1)]),
        }));
        p.expect_closed();
    });
    let mut c = Client::connect(no_reconnect(&addr)).unwrap();
    // Refused locally, nothing sent (the server would close the connection).
    for player in [String::new(), "p".repeat(65)] {
        assert!(matches!(
            c.path(&player, 0),
            Err(ClientError::InvalidInput(_))
        ));
    }
    let start = Instant::now();
    assert!(matches!(
        c.path("phone-1", 0),
        Err(ClientError::Timeout("PATH"))
    ));
    // request_timeout_ms is 2 s.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(1_900), "{took:?}");
    assert!(took < STEP, "{took:?}");
    assert!(!c.is_connected());
    server.join().unwrap();
}

#[test]
fn connect_to_nothing_fails_fast_or_at_the_deadline() {
    // Bind then drop: nothing listens on that port now.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let start = Instant::now();
    let at_once = ClientConfig {
        connect_retry_ms: 0,
        ..config(&addr)
    };
    assert!(matches!(Client::connect(at_once), Err(ClientError::Io(_))));
    assert!(start.elapsed() < STEP);
    // Refused is retried (with backoff) until the deadline.
    let start = Instant::now();
    let for_a_while = ClientConfig {
        connect_retry_ms: 300,
        ..config(&addr)
    };
    match Client::connect(for_a_while) {
        Err(ClientError::GaveUp { attempts, last, .. }) => {
            assert!(attempts > 1 && matches!(*last, ClientError::Io(_)));
        }
        other => panic!("{:?}", other.err()),
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < STEP,
        "{took:?}"
    );
    // A configuration error is not retried.
    let mut bad = config(&addr);
    bad.client_id = "x".repeat(65);
    assert!(matches!(
        Client::connect(bad),
        Err(ClientError::InvalidInput(_))
    ));
}

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
        let mut p = accept(&l);
        p.handshake(30_000);
        p.subscribe(
            StartMode::Live,
            0,
            0,
            "room",
            subscribed(SubscribeStatus::Ok, 5, 1, 0, "room"),
        );
        p.subscribe(
            StartMode::Live,
            0,
            0,
            "game:42",
            subscribed(SubscribeStatus::Ok, 3, 1, 57, "game:42"),
        );
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
    let mut c = Client::connect(config(&addr)).unwrap();
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
    c.close();
    server.join().unwrap();
}

#[test]
fn closed_topic_ends_the_subscription_and_is_not_resumed() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        p.subscribe(
            StartMode::Live,
            0,
            0,
            "chat",
            subscribed(SubscribeStatus::Ok, 1, 0, 0, "chat"),
        );
        p.subscribe(
            StartMode::Live,
            0,
            0,
            "game",
            subscribed(SubscribeStatus::Ok, 9, 1, 10, "game"),
        );
        p.event("game", 9, 11);
        p.send(topic_closed(0, 0, 11, "game"));
        // A server quirk: nothing of the topic may follow; dropped.
        p.event("game", 9, 12);
        // A notice for a topic this client does not hold: ignored.
        p.send(topic_closed(0, 0, 3, "other"));
        p.event("chat", 1, 1);
        drop(p); // connection lost

        let mut p = accept(&l);
        p.handshake(30_000);
        // Only "chat" is resumed.
        p.subscribe(
            StartMode::Resume,
            1,
            1,
            "chat",
            subscribed(SubscribeStatus::Ok, 1, 1, 1, "chat"),
        );
        p.event("chat", 1, 2);
        // The next frame is the publish, not a SUBSCRIBE of "game".
        let id = p.expect(|f| match f {
            Frame::Publish(pb) => {
                assert_eq!(pb.topic, b"chat");
                pb.request_id
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        });
        p.send(Frame::PublishAck(PublishAck {
            request_id: id,
            status: 0,
            flags: 0,
            epoch: 1,
            seq: 3,
        }));
        p.expect_closed();
    });
    let mut c = Client::connect(config(&addr)).unwrap();
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
    match next(&mut c) {
        Delivery::Subscribed(s) => {
            assert_eq!((s.topic.as_str(), s.status), ("chat", SubscribeStatus::Ok))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next_event(&mut c, "chat"), (1, 2));
    assert_eq!(c.publish("chat", b"x").unwrap().seq, 3);
    assert_eq!(c.resume_point("game"), None);
    c.close();
    server.join().unwrap();
}

#[test]
fn an_expired_token_waits_for_a_new_one_then_resumes() {
    let (addr, server) = serve(|l| {
        let mut p = accept(&l);
        p.handshake(30_000);
        p.subscribe_live_game();
        p.event("game", 9, 11);
        p.send(Frame::GoAway(GoAway {
            reason: GoAwayReason::TokenExpired,
            retry_after_ms: 0,
            reconnect: b"",
            resume: vec![],
        }));
        drop(p);

        // The client comes back only with the new token, and resumes.
        let mut p = accept(&l);
        p.expect(|f| match f {
            Frame::Hello(h) => assert_eq!(h.token, b"fresh"),
            other => panic!("expected HELLO, got {other:?}"),
        });
        p.send(Frame::Welcome(welcome(30_000)));
        p.subscribe(
            StartMode::Resume,
            9,
            11,
            "game",
            subscribed(SubscribeStatus::Ok, 9, 1, 12, "game"),
        );
        p.event("game", 9, 12);
        p.expect_closed();
    });
    let mut c = Client::connect(config(&addr)).unwrap();
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
    c.close();
    server.join().unwrap();
}
