//! Sections 3.11 to 3.13, 6 and 7: the positions a player sends come back
//! to PATH_QUERY in time order, and one query is answered at a time.

use std::thread;
use std::time::Instant;

use super::*;

/// The positions of the answer to PATH_QUERY `request_id`: its PATH frames
/// up to LAST, each with the request_id and status 0.
fn path_answer(c: &mut RawClient, request_id: u32) -> Vec<Position> {
    let mut positions = vec![];
    loop {
        match next(c) {
            Got::Path {
                request_id: r,
                status: 0,
                flags,
                positions: more,
            } if r == request_id => {
                positions.extend(more);
                if flags & PATH_FLAG_LAST != 0 {
                    assert_eq!(flags, PATH_FLAG_LAST, "neither TRUNCATED nor CORRUPT");
                    return positions;
                }
            }
            other => panic!("expected PATH {request_id}, got {other:?}"),
        }
    }
}

fn query(c: &mut RawClient, request_id: u32, since_ms: u64, player: &str) -> Vec<Position> {
    c.send_raw(&path_query(request_id, since_ms, player.as_bytes()))
        .unwrap();
    path_answer(c, request_id)
}

#[test]
fn a_players_positions_come_back_in_time_order() {
    let server = start(&[]);
    let player = "walker-7";
    let t0 = now_ns() / 1_000_000 - 60_000;
    let fix = |ms, n: i32| Position {
        lat_e7: n,
        lon_e7: -10 * n,
        accuracy_cm: 100 * n as u32,
        client_ts_ms: t0 + ms,
    };
    // Sent out of time order; two share a time and keep their arrival order.
    let sent = [fix(3000, 3), fix(1000, 1), fix(2000, 21), fix(2000, 22)];
    let mut phone = open_as(server.addr, player);
    let mut batch: Vec<u8> = sent
        .iter()
        .flat_map(|p| enc(&Frame::Position(*p)))
        .collect();
    batch.extend(path_query(1, 0, player.as_bytes()));
    phone.send_raw(&batch).unwrap();
    // "Visibility": a query sees the positions sent before it on its own
    // connection, without asking again.
    assert_eq!(
        path_answer(&mut phone, 1),
        [sent[1], sent[2], sent[3], sent[0]]
    );

    // From another connection a position is visible once stored: ask
    // again until it appears.
    let mut backend = open(server.addr);
    let late = fix(2500, 25);
    phone.send_raw(&enc(&Frame::Position(late))).unwrap();
    let sent_at = Instant::now();
    let mut queries = 0;
    let path = loop {
        queries += 1;
        let path = query(&mut backend, 10 + queries, 0, player);
        if path.contains(&late) || sent_at.elapsed() > Duration::from_secs(5) {
            break path;
        }
        thread::sleep(Duration::from_millis(1));
    };
    eprintln!(
        "a position sent on another connection was visible to PATH_QUERY after {:?} \
         ({queries} queries)",
        sent_at.elapsed()
    );
    assert_eq!(path, [sent[1], sent[2], sent[3], late, sent[0]]);
    let lats = |path: Vec<Position>| path.iter().map(|p| p.lat_e7).collect::<Vec<_>>();
    assert_eq!(
        lats(query(&mut backend, 2, t0 + 2000, player)),
        [21, 22, 25, 3]
    );
    assert_eq!(lats(query(&mut backend, 3, t0 + 2001, player)), [25, 3]);
    assert_eq!(lats(query(&mut backend, 4, t0 + 3001, player)), []);
    assert_open(&mut backend);
    assert_open(&mut phone);
}

#[test]
fn a_second_path_query_in_flight_is_overloaded() {
    let server = start(&[]);
    let mut c = open(server.addr);
    // Repeated: the refusal must not depend on timing.
    for round in 0..20u32 {
        let (first, second) = (2 * round + 1, 2 * round + 2);
        let mut both = path_query(first, 0, b"nobody");
        both.extend(path_query(second, 0, b"nobody"));
        c.send_raw(&both).unwrap();
        let mut answers = vec![];
        while answers.len() < 2 {
            match next(&mut c) {
                Got::Path {
                    request_id,
                    status,
                    flags: PATH_FLAG_LAST,
                    positions,
                } if positions.is_empty() => answers.push((request_id, status)),
                other => panic!("round {round}: {other:?}"),
            }
        }
        answers.sort();
        let overloaded = ErrorCode::Overloaded as u16;
        assert_eq!(answers, [(first, 0), (second, overloaded)], "round {round}");
    }
    assert_open(&mut c);
}
