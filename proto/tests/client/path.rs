//! PATH_QUERY and its PATH answers: one answer over several frames with
//! other frames in between, refusals that keep the connection, and the
//! local checks and request timeout.

use super::*;

fn records(positions: &[Position]) -> Vec<u8> {
    positions.iter().flat_map(Position::to_bytes).collect()
}

fn path_frame(request_id: u32, status: u16, flags: u8, positions: &[u8]) -> Frame<'_> {
    Frame::Path(Path {
        request_id,
        status,
        flags,
        positions,
    })
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
        let mut p = greet(&l);
        p.subscribe_live("room", 5, 0, 0);
        let id = expect_path_query(&mut p, "phone-1", 0);
        // Out of client_ts_ms order on purpose: arrival order is kept.
        let first = records(&[fix(30), fix(10)]);
        let second = records(&[fix(20)]);
        p.event("room", 5, 1);
        p.send(path_frame(id, 0, 0, &first));
        p.event("room", 5, 2);
        // An answer to some other request is not ours.
        p.send(path_frame(
            id.wrapping_add(1000),
            0,
            PATH_FLAG_LAST,
            &records(&[fix(99)]),
        ));
        p.send(Frame::Ping { nonce: 3 });
        p.send(path_frame(
            id,
            0,
            PATH_FLAG_LAST | PATH_FLAG_CORRUPT,
            &second,
        ));
        p.event("room", 5, 3);
        p.expect(|f| assert_eq!(f, Frame::Pong { nonce: 3 }));

        // A truncated answer, then an empty path, in one frame each.
        let id2 = expect_path_query(&mut p, "phone-2", 1_700_000_000_000);
        assert_ne!(id, id2);
        p.send(path_frame(
            id2,
            0,
            PATH_FLAG_LAST | PATH_FLAG_TRUNCATED,
            &records(&[fix(1_700_000_000_001)]),
        ));
        let id3 = expect_path_query(&mut p, "nobody", 0);
        p.send(path_frame(id3, 0, PATH_FLAG_LAST, &[]));
        p.expect_closed();
    });
    let mut c = connect(&addr);
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
    finish(c, server);
}

#[test]
fn path_refused_status_is_an_error_and_the_connection_stays() {
    let (addr, server) = serve(|l| {
        let mut p = greet(&l);
        let id = expect_path_query(&mut p, "phone-1", 0);
        p.send(path_frame(
            id,
            ErrorCode::StorageFailed as u16,
            PATH_FLAG_LAST,
            &[],
        ));
        let id = expect_path_query(&mut p, "phone-1", 0);
        p.send(path_frame(
            id,
            ErrorCode::Overloaded as u16,
            PATH_FLAG_LAST,
            &[],
        ));
        // Still usable.
        let id = expect_path_query(&mut p, "phone-1", 7);
        p.send(path_frame(id, 0, PATH_FLAG_LAST, &records(&[fix(7)])));
        p.expect_closed();
    });
    let mut c = connect(&addr);
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
    finish(c, server);
}

#[test]
fn path_checks_the_player_and_times_out() {
    let (addr, server) = serve(|l| {
        let mut p = greet(&l);
        // Half an answer, then silence.
        let id = expect_path_query(&mut p, "phone-1", 0);
        p.send(path_frame(id, 0, 0, &records(&[fix(1)])));
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
