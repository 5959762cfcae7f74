//! Connecting to a fake server that refuses: GOAWAY ServerFull or Shutdown
//! instead of WELCOME is waited out for exactly its `retry_after_ms` (at the
//! first connect and on a reconnect alike), a connection closed before
//! WELCOME gets jittered backoff, and the first connect's deadline
//! (`connect_retry_ms`) is kept.

use super::*;

/// GOAWAY `reason` in answer to the next HELLO, then close; returns when
/// it was sent.
fn refuse(p: &mut Peer, reason: GoAwayReason, retry_after_ms: u32) -> Instant {
    p.expect_hello();
    p.send(goaway(reason, retry_after_ms));
    Instant::now()
}

/// What the observer was told: (attempt, delay, the failure in words).
type Told = Vec<(u32, Duration, String)>;

fn connect_telling(config: ClientConfig) -> (Result<Client, ClientError>, Told) {
    let mut told = Vec::new();
    let result = Client::connect_observed(config, |r| {
        told.push((r.attempt, r.delay, r.error.to_string()))
    });
    (result, told)
}

use GoAwayReason::{ServerFull, Shutdown};

#[test]
fn server_full_is_waited_out_for_its_retry_after() {
    const REFUSALS: [(GoAwayReason, u32); 3] = [(ServerFull, 40), (Shutdown, 90), (ServerFull, 60)];
    let (addr, server) = serve(|l| {
        let mut refused_at = None;
        for (reason, retry_after_ms) in REFUSALS {
            let mut p = accept(&l);
            if let Some((at, ms)) = refused_at {
                let waited = Instant::now() - at;
                assert!(waited >= Duration::from_millis(ms), "back after {waited:?}");
            }
            let at = refuse(&mut p, reason, retry_after_ms);
            refused_at = Some((at, u64::from(retry_after_ms)));
        }
        let mut p = accept(&l);
        let (at, ms) = refused_at.unwrap();
        assert!(Instant::now() - at >= Duration::from_millis(ms));
        p.handshake(30_000);
        p.expect_closed();
    });
    let (result, told) = connect_telling(config(&addr));
    let mut client = result.unwrap();
    assert!(client.is_connected());
    let want: Told = (2..)
        .zip(REFUSALS)
        .map(|(attempt, (reason, ms))| {
            let words = match reason {
                ServerFull => "server full",
                _ => "server shutting down",
            };
            let error = format!("{words} (GOAWAY {reason:?}, retry after {ms} ms)");
            (attempt, Duration::from_millis(u64::from(ms)), error)
        })
        .collect();
    assert_eq!(told, want);
    client.close();
    server.join().unwrap();
}

#[test]
fn a_connection_closed_before_welcome_is_retried_with_backoff() {
    let (addr, server) = serve(|l| {
        for _ in 0..2 {
            accept(&l).expect_hello();
        }
        greet(&l).expect_closed();
    });
    let (result, told) = connect_telling(config(&addr));
    result.unwrap().close();
    // backoff_min_ms 10: after n failures the window is 10 × 2^n ms.
    assert_eq!(told.len(), 2, "{told:?}");
    for (failures, (attempt, delay, _)) in (1u32..).zip(&told) {
        assert_eq!(*attempt, failures + 1);
        assert!(*delay <= Duration::from_millis(10 << failures), "{told:?}");
    }
    server.join().unwrap();
}

#[test]
fn a_server_full_past_the_deadline_is_given_up_at_the_deadline() {
    const DEADLINE_MS: u64 = 500;
    const RETRY_AFTER_MS: u32 = 400;
    let (done_tx, done) = mpsc::channel::<()>();
    let (addr, server) = serve(move |l| {
        // Refuses every attempt until the client is done.
        l.set_nonblocking(true).unwrap();
        let mut refused = 0u32;
        while done.try_recv().is_err() {
            match l.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(STEP)).unwrap();
                    let mut p = Peer::new(stream);
                    refuse(&mut p, ServerFull, RETRY_AFTER_MS);
                    refused += 1;
                }
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
        refused
    });
    let config = ClientConfig {
        connect_retry_ms: DEADLINE_MS,
        ..config(&addr)
    };
    let started = Instant::now();
    let (result, told) = connect_telling(config);
    let elapsed = started.elapsed();
    done_tx.send(()).unwrap();
    let refused = server.join().unwrap();
    let deadline = Duration::from_millis(DEADLINE_MS);
    assert!(elapsed >= deadline, "gave up after {elapsed:?}");
    // Attempts at 0 and 400 ms; the next, at 800, would be past the deadline:
    // the wait is cut to it.
    assert!(
        elapsed < deadline + Duration::from_millis(200),
        "{elapsed:?}"
    );
    let e = result.err().expect("no connection");
    match &e {
        ClientError::GaveUp {
            attempts,
            elapsed_ms,
            last,
        } => {
            assert_eq!((*attempts, refused, told.len()), (2, 2, 1), "{e}");
            assert!(*elapsed_ms >= DEADLINE_MS, "{e}");
            assert!(
                matches!(**last, ClientError::GoAway(ref g) if g.reason == GoAwayReason::ServerFull)
            );
        }
        other => panic!("{other}"),
    }
    let text = e.to_string();
    assert!(
        text.starts_with("server full (GOAWAY ServerFull, retry after 400 ms); gave up after 2 "),
        "{text}"
    );
}

#[test]
fn a_reconnect_waits_out_server_full_the_same_way() {
    let (addr, server) = serve(|l| {
        drop(greet(&l)); // the connection is lost without a word
        let mut p = accept(&l);
        let refused_at = refuse(&mut p, ServerFull, 300);
        let mut p = accept(&l);
        let waited = Instant::now() - refused_at;
        assert!(
            waited >= Duration::from_millis(300),
            "back after {waited:?}"
        );
        p.handshake(30_000);
        p.expect_closed();
    });
    let mut client = connect(&addr);
    let started = Instant::now();
    let (_, attempts) = next_reconnected(&mut client);
    assert_eq!(attempts, 2);
    // Told as soon as it is up, not with the next frame.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    finish(client, server);
}
