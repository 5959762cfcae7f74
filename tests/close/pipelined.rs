//! A close pipelined behind publishes on one connection waits for them:
//! each publish before it is answered before the close is, and the close's
//! last sequence is the highest of those published; what follows the close
//! starts a new history (or is refused while the close is under way), and a
//! subscriber sees the first history whole, then the notice.

use cluecast_proto::{ErrorCode, ACK_FLAG_DURABLE};

use super::*;

#[test]
fn a_close_waits_for_events_published_before_it() {
    const BEFORE: u32 = 250;
    const AFTER: u32 = 20;
    // One topic per owner: the publisher's shard sequences one of them
    // itself and forwards the other.
    let topics = [owned_by("hunt-a", 0, 2), owned_by("hunt-b", 1, 2)];
    let barriers = [owned_by("barrier", 0, 2), owned_by("barrier", 1, 2)];
    let server = Server::start(&["--shards", "2", "--durability", "sync"]);
    let mut sub = RawClient::open(server.addr);
    for name in topics.iter().chain(&barriers) {
        subscribe(&mut sub, name, StartMode::Live, 0, 0);
    }

    // Request ids: topic k's publishes before the close are k*10000 + i,
    // after it k*10000 + 5000 + j; its close is 90000 + k.
    let mut bytes = Vec::new();
    for i in 1..=BEFORE {
        for (k, name) in topics.iter().enumerate() {
            publish_frame(k as u32 * 10_000 + i, name, &format!("h1-{i}"), &mut bytes);
        }
    }
    for (k, name) in topics.iter().enumerate() {
        close_frame(90_000 + k as u32, name, &mut bytes);
    }
    for j in 1..=AFTER {
        for (k, name) in topics.iter().enumerate() {
            let id = k as u32 * 10_000 + 5_000 + j;
            publish_frame(id, name, &format!("h2-{j}"), &mut bytes);
        }
    }
    let mut publisher = RawClient::open(server.addr);
    send_bytes(&mut publisher, &bytes);

    let answers_due = 2 * (BEFORE + AFTER + 1) as usize;
    let frames: Vec<In> = (0..answers_due).map(|_| next(&mut publisher)).collect();
    let overloaded = ErrorCode::Overloaded as u16;
    let mut histories = Vec::new();
    for (k, name) in topics.iter().enumerate() {
        let k = k as u32;
        let position = |want: &dyn Fn(&In) -> bool| frames.iter().position(want);
        let close_at =
            position(&|f| matches!(f, In::Closed { request_id, .. } if *request_id == 90_000 + k))
                .unwrap_or_else(|| panic!("{name}: no answer to the close"));
        let In::Closed {
            status, last_seq, ..
        } = frames[close_at].clone()
        else {
            unreachable!()
        };
        assert_eq!(status, 0, "{name}: the close was refused");

        // (request, position among the answers, status, epoch, seq, payload)
        let ack_of = |id: u32, payload: String| {
            let at = position(&|f| matches!(f, In::Ack { request_id, .. } if *request_id == id))
                .unwrap_or_else(|| panic!("{name}: no ack for request {id}"));
            let In::Ack {
                status,
                flags,
                epoch,
                seq,
                ..
            } = frames[at]
            else {
                unreachable!()
            };
            assert!(
                status == 0 || status == overloaded,
                "{name}: request {id} got status {status}"
            );
            if status == 0 {
                assert_eq!(flags & ACK_FLAG_DURABLE, ACK_FLAG_DURABLE);
            }
            (at, status, epoch, seq, payload)
        };
        let before: Vec<_> = (1..=BEFORE)
            .map(|i| ack_of(k * 10_000 + i, format!("h1-{i}")))
            .collect();
        let after: Vec<_> = (1..=AFTER)
            .map(|j| ack_of(k * 10_000 + 5_000 + j, format!("h2-{j}")))
            .collect();

        // Everything published before the close is answered before it,
        // and the close's last sequence is the highest of them.
        let ok_before: Vec<_> = before.iter().filter(|a| a.1 == 0).collect();
        for a in &before {
            assert!(
                a.0 < close_at,
                "{name}: an ack came after the close's answer"
            );
        }
        let epoch_1 = ok_before.first().map_or(0, |a| a.2);
        for (n, a) in ok_before.iter().enumerate() {
            assert_eq!((a.2, a.3), (epoch_1, n as u64 + 1), "{name}: contiguous");
        }
        assert_eq!(last_seq, ok_before.len() as u64, "{name}: close's last_seq");
        // What was published after it starts a new history (or is refused
        // while the close is under way).
        let ok_after: Vec<_> = after.iter().filter(|a| a.1 == 0).collect();
        let epoch_2 = ok_after.first().map_or(0, |a| a.2);
        for (n, a) in ok_after.iter().enumerate() {
            assert!(a.0 > close_at, "{name}: a new event acked before the close");
            assert_eq!((a.2, a.3), (epoch_2, n as u64 + 1), "{name}: new history");
        }
        if !ok_after.is_empty() {
            assert!(
                epoch_2 != 0 && epoch_2 != epoch_1,
                "{name}: same epoch again"
            );
        }
        let refused_after_close_answer = after.iter().filter(|a| a.1 != 0 && a.0 > close_at);
        eprintln!(
            "{name}: {} of {BEFORE} before the close published ({} overloaded), close at \
             answer {close_at} with last_seq {last_seq}; {} of {AFTER} after it published, \
             {} refused after the close's answer",
            ok_before.len(),
            BEFORE as usize - ok_before.len(),
            ok_after.len(),
            refused_after_close_answer.count(),
        );
        histories.push((
            name.clone(),
            epoch_1,
            ok_before.iter().map(|a| a.4.clone()).collect::<Vec<_>>(),
            epoch_2,
            ok_after.iter().map(|a| a.4.clone()).collect::<Vec<_>>(),
        ));
    }

    // Once the close is answered the name takes events again (a publish
    // pipelined behind the close may have been refused while it was under
    // way): they continue the second history, or start it.
    for (k, (name, epoch_1, _, epoch_2, second)) in histories.iter_mut().enumerate() {
        let id = 95_000 + k as u32;
        let mut bytes = Vec::new();
        publish_frame(id, name, "h2-late", &mut bytes);
        send_bytes(&mut publisher, &bytes);
        let (status, _, epoch, seq) = take_ack(&mut publisher, id);
        assert_eq!((status, seq), (0, second.len() as u64 + 1), "{name}");
        if second.is_empty() {
            assert!(epoch != 0 && epoch != *epoch_1, "{name}: same epoch again");
            *epoch_2 = epoch;
        }
        assert_eq!(epoch, *epoch_2, "{name}");
        second.push("h2-late".into());
    }

    // The subscriber saw each first history whole, then the notice, and
    // nothing of the second history before the barriers.
    let mut bytes = Vec::new();
    for (k, name) in barriers.iter().enumerate() {
        publish_frame(99_000 + k as u32, name, "barrier", &mut bytes);
    }
    send_bytes(&mut publisher, &bytes);
    for _ in &barriers {
        assert!(matches!(next(&mut publisher), In::Ack { status: 0, .. }));
    }
    let mut per_topic: Vec<Vec<In>> = vec![Vec::new(); 2];
    let mut barriers_seen = 0;
    while barriers_seen < 2 {
        match next(&mut sub) {
            In::Event { topic, .. } if barriers.contains(&topic) => barriers_seen += 1,
            f @ (In::Event { .. } | In::Closed { .. }) => {
                let topic = match &f {
                    In::Event { topic, .. } | In::Closed { topic, .. } => topic.clone(),
                    _ => unreachable!(),
                };
                let k = topics.iter().position(|n| *n == topic).unwrap();
                per_topic[k].push(f);
            }
            other => panic!("subscriber: unexpected {other:?}"),
        }
    }
    for (k, (name, epoch_1, first, epoch_2, second)) in histories.iter().enumerate() {
        let mut want: Vec<In> = first
            .iter()
            .enumerate()
            .map(|(n, p)| event(name, n as u64 + 1, *epoch_1, p))
            .collect();
        want.push(closed(0, first.len() as u64, name));
        assert_eq!(per_topic[k], want, "{name}: the subscriber's view");

        // Whatever is stored now is the second history only.
        let mut fresh = RawClient::open(server.addr);
        let got = subscribe(&mut fresh, name, StartMode::Resume, 0, 0);
        let (oldest, last) = if second.is_empty() {
            (0, 0)
        } else {
            (1, second.len() as u64)
        };
        assert_eq!(
            got,
            subscribed(name, SubscribeStatus::Ok, *epoch_2, oldest, last)
        );
        for (n, p) in second.iter().enumerate() {
            assert_eq!(next(&mut fresh), event(name, n as u64 + 1, *epoch_2, p));
        }
    }
}
