//! A server keeping history in memory only (`--durability memory`) with a
//! small window (`--history-events-max 3`): sections 3.7 and 5 (acks not
//! durable), 4 (NotRecovered) and 7 (no paths).

use super::*;

#[test]
fn a_server_keeping_history_in_memory_only() {
    let server = start(&["--durability", "memory", "--history-events-max", "3"]);
    let topic = b"hunt-9";
    let mut publisher = open(server.addr);
    let acks: Vec<PublishAck> = (1..=6)
        .map(|request_id| ack(&mut publisher, request_id, topic, b"x"))
        .collect();
    let epoch = acks[0].epoch;
    for (a, seq) in acks.iter().zip(1..) {
        let want = PublishAck {
            request_id: seq as u32,
            status: 0,
            flags: 0,
            epoch,
            seq,
        };
        assert_eq!(*a, want, "bit 0 (durable) clear, the others 0");
    }

    // Only 4..=6 are held: resuming below them is NotRecovered, delivery
    // starts at oldest_seq.
    for (resume_epoch, last_seq, status) in [
        (epoch, 1, SubscribeStatus::NotRecovered),
        (epoch, 2, SubscribeStatus::NotRecovered),
        (epoch, 3, SubscribeStatus::Ok),
        (0, 0, SubscribeStatus::NotRecovered),
    ] {
        let mut c = open(server.addr);
        let answer = subscribed(&mut c, &resume(resume_epoch, last_seq, topic));
        let what = format!("Resume ({resume_epoch}, {last_seq})");
        assert_eq!(answer, (status, epoch, 4, 6), "{what}");
        assert_eq!(seqs(&mut c, 3), [4, 5, 6]);
        assert_open(&mut c);
    }

    let mut c = open(server.addr);
    c.send_raw(&path_query(4, 0, b"phone-1")).unwrap();
    let refused = Got::Path {
        request_id: 4,
        status: ErrorCode::StorageFailed as u16,
        flags: PATH_FLAG_LAST,
        positions: vec![],
    };
    assert_eq!(next(&mut c), refused);
    assert_open(&mut c);
}
