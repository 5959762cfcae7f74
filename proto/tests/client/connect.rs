//! The first connection and keeping it alive: the handshake, a connect
//! refused by ERROR or GOAWAY or reaching nothing, heartbeats sent and
//! answered, and a silent server declared dead.

use super::*;

#[test]
fn handshake() {
    let (addr, server) = serve(|l| greet(&l).expect_closed());
    let mut c = connect(&addr);
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
        p.expect_hello();
        p.send_error(ErrorCode::NotAuthorized, b"bad token");
        drop(p);
        let mut p = accept(&l);
        p.expect_hello();
        p.send(goaway(GoAwayReason::ServerFull, 1_500));
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
