//! Sections 2, 3.15 and 9: the end of a connection, from either side.

use std::net::Shutdown;

use super::*;

#[test]
fn a_frame_cut_short_by_the_end_of_the_connection_is_discarded() {
    let server = start(&[]);
    let topic = b"hunt-2.cut";
    let mut subscriber = open(server.addr);
    subscribed(&mut subscriber, &live(topic));
    let mut publisher = open(server.addr);
    let (epoch, _) = published(&mut publisher, topic, b"one");

    let whole = publish(1, topic, b"cut short");
    // Cut inside the length prefix, then inside the payload; the client
    // shuts its side down, and the server closes without an answer.
    for cut in [2, whole.len() - 3] {
        let mut c = open(server.addr);
        c.send_raw(&whole[..cut]).unwrap();
        c.stream.shutdown(Shutdown::Write).unwrap();
        assert!(
            c.closed_within(Duration::from_secs(2)),
            "cut at {cut}: not closed"
        );
        let after = format!("{:?}", c.buffered_frames());
        assert_eq!(after, "[]", "cut at {cut}: answered");
    }
    // And a client that closes its socket outright.
    let mut c = open(server.addr);
    c.send_raw(&whole[..whole.len() - 1]).unwrap();
    drop(c);
    assert_eq!(published(&mut publisher, topic, b"two"), (epoch, 2));
    assert_eq!(next(&mut subscriber).event(), (1, epoch, b"one".to_vec()));
    assert_eq!(next(&mut subscriber).event(), (2, epoch, b"two".to_vec()));
    assert_open(&mut subscriber);
}

/// The GOAWAY's resume entries as (epoch, last_seq, topic), sorted, after
/// checking it is a Shutdown with a retry hint and that EOF follows.
fn goaway_resume(c: &mut RawClient) -> Vec<(u64, u64, Vec<u8>)> {
    let (reason, retry_after_ms, mut resume) = c
        .recv(|f| match f {
            Frame::GoAway(g) => (
                g.reason,
                g.retry_after_ms,
                g.resume
                    .iter()
                    .map(|r| (r.epoch, r.last_seq, r.topic.to_vec()))
                    .collect::<Vec<_>>(),
            ),
            other => panic!("expected GOAWAY, got {other:?}"),
        })
        .expect("closed without GOAWAY");
    assert_eq!(reason, GoAwayReason::Shutdown);
    assert!(retry_after_ms > 0, "a retry hint");
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "not closed after GOAWAY"
    );
    resume.sort();
    resume
}

#[test]
fn sigterm_sends_goaway_shutdown_with_each_subscriptions_resume_point() {
    let server = start(&[]);
    let mut publisher = open(server.addr);
    let (replayed, _) = published(&mut publisher, b"g.replayed", b"1");
    published(&mut publisher, b"g.replayed", b"2");
    let (quiet, _) = published(&mut publisher, b"g.quiet", b"1");
    published(&mut publisher, b"g.quiet", b"2");

    let mut subscriber = open(server.addr);
    subscribed(&mut subscriber, &resume(0, 0, b"g.replayed"));
    assert_eq!(seqs(&mut subscriber, 2), [1, 2]);
    published(&mut publisher, b"g.replayed", b"3");
    assert_eq!(seqs(&mut subscriber, 1), [3]);
    // Live, no event received yet: the SUBSCRIBED's epoch and last_seq.
    let answer = subscribed(&mut subscriber, &live(b"g.quiet"));
    assert_eq!(answer, (SubscribeStatus::Ok, quiet, 1, 2));
    // No events at all: (0, 0).
    subscribed(&mut subscriber, &live(b"g.empty"));
    let mut bystander = open(server.addr);

    server.signal(libc::SIGTERM);
    let mut want = vec![
        (replayed, 3, b"g.replayed".to_vec()),
        (quiet, 2, b"g.quiet".to_vec()),
        (0, 0, b"g.empty".to_vec()),
    ];
    want.sort();
    assert_eq!(goaway_resume(&mut subscriber), want);
    assert_eq!(goaway_resume(&mut bystander), []);
    assert_eq!(goaway_resume(&mut publisher), []);
}
